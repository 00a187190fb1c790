//! `attnforge check`: every kernel of the spec on the CPU backend against
//! the f64 reference (`attnforge::runtime::check`, the numeric tests' own
//! harness).

use attnforge::codegen::kernels::{symbol, KernelSpec};
use attnforge::runtime::check::{check_kernel, Cases, CASES};
use attnforge::runtime::cpu::{CpuDevice, Mode};
use indicatif::{ProgressBar, ProgressStyle};

use crate::spec::{self, KernelChoice, SpecArgs};
use crate::{table, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// The kernel; every kernel of the spec when left out.
    #[arg(long, value_enum)]
    kernel: Option<KernelChoice>,
    /// Targets to run the kernels at (their warp size and schedule, on the
    /// CPU): comma-separated, or `all`.
    #[arg(long, default_value = "gfx90a,gfx1030,host")]
    arch: String,
    /// fast, checked (the sanitizer: bounds, shared-memory races,
    /// divergence), or both.
    #[arg(long, value_enum, default_value = "both")]
    mode: ModeChoice,
    /// The inputs' seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// JSON: one object per launch.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeChoice {
    Fast,
    Checked,
    Both,
}

pub fn run(a: Args) -> Result<(), Failure> {
    let spec = a.spec.resolve()?;
    let archs = spec::archs(&a.arch, true)?;
    let modes: &[Mode] = match a.mode {
        ModeChoice::Fast => &[Mode::Fast],
        ModeChoice::Checked => &[Mode::Checked],
        ModeChoice::Both => &[Mode::Fast, Mode::Checked],
    };
    let mut kernels = spec.select(a.kernel)?;
    // Split-K decode is checked together with its merge: one of them runs.
    if kernels
        .iter()
        .any(|k| matches!(k, KernelSpec::DecodeSplit(_)))
    {
        kernels.retain(|k| !matches!(k, KernelSpec::DecodeMerge(_)));
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let device = CpuDevice::new();
    let bar = ProgressBar::new((kernels.len() * archs.len()) as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let mut outcomes = Vec::new();
    for k in &kernels {
        for &arch in &archs {
            bar.set_message(format!("{} @{arch}", symbol(k)));
            let cases = Cases {
                lens: CASES,
                archs: &[arch],
                modes,
            };
            let got = check_kernel(&device, k, seed, &cases).map_err(|e| {
                bar.finish_and_clear();
                Failure::Step(format!("{}: {e} (seed {seed})", symbol(k)))
            })?;
            outcomes.extend(got.into_iter().map(|o| (symbol(k), o)));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let failed = outcomes.iter().filter(|(_, o)| !o.passed()).count();
    if a.json {
        table::json(&serde_json::json!({
            "seed": seed,
            "launches": outcomes.iter().map(|(s, o)| serde_json::json!({
                "symbol": s,
                "kind": o.kind.name(),
                "run": o.run.to_string(),
                "arch": o.arch.name(),
                "mode": format!("{:?}", o.mode).to_lowercase(),
                "lens": o.lens,
                "error": o.error,
                "tolerance": o.tolerance,
                "passed": o.passed(),
            })).collect::<Vec<_>>(),
            "failed": failed,
        }));
    } else {
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .map(|(s, o)| {
                vec![
                    s.clone(),
                    o.run.to_string(),
                    o.arch.name().to_string(),
                    format!("{:?}", o.mode).to_lowercase(),
                    if o.lens.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:?}", o.lens)
                    },
                    format!("{:.2e}", o.error),
                    format!("{:.0e}", o.tolerance),
                    if o.passed() { "ok" } else { "FAILED" }.to_string(),
                ]
            })
            .collect();
        table::print(
            &[
                "kernel",
                "launch",
                "arch",
                "mode",
                "context lengths",
                ">error",
                ">tolerance",
                "result",
            ],
            &rows,
        );
        table::out(&format!(
            "\n{} launches, {} within tolerance, {failed} beyond; seed {seed} (--seed {seed} reruns them)",
            outcomes.len(),
            outcomes.len() - failed
        ));
    }
    if failed > 0 {
        return Err(Failure::Step(format!(
            "{failed} of {} launches beyond their tolerance (seed {seed})",
            outcomes.len()
        )));
    }
    Ok(())
}
