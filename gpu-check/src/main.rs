//! `attnforge-gpu-check`: the build half's and the run half's commands
//! (scripts/gpu-check.sh and the pack's run.sh call them; see README.md).

use std::path::PathBuf;
use std::process::ExitCode;

use attnforge_gpu_check::drivers::Backend;
use attnforge_gpu_check::manifest::Manifest;
use attnforge_gpu_check::{cases, check, error, sanitize, speed, Error};

const USAGE: &str = "usage:
  attnforge-gpu-check build PACK_DIR [--quick] [--only PATTERNS]   (feature cpu)
  attnforge-gpu-check check PACK_DIR SCRATCH_DIR RESULTS_DIR [--driver D] [--only PATTERNS] [--jobs N]
                      [--isolate [--group-seconds S]]   (each group of cases in a process of its own)
  attnforge-gpu-check speed PACK_DIR SCRATCH_DIR RESULTS_DIR [--driver D] [--quick]
  attnforge-gpu-check compile PACK_DIR RESULTS_DIR [--arch sm_90] [--jobs N]   (feature cuda: NVRTC)
  attnforge-gpu-check sanitize [--driver D]
  attnforge-gpu-check cases [--quick]
D is cuda or cpu (those this build has); PATTERNS: comma-separated parts of case ids.
exit status: 0 all passed, 1 something failed (the results say what), 2 bad usage or input";

/// The command line, parsed.
struct Args {
    positional: Vec<String>,
    driver: String,
    only: Option<String>,
    jobs: usize,
    quick: bool,
    arch: Option<String>,
    isolate: bool,
    group_seconds: u64,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, Error> {
    let mut a = Args {
        positional: Vec::new(),
        driver: if cfg!(feature = "cuda") {
            "cuda"
        } else {
            "cpu"
        }
        .into(),
        only: None,
        jobs: std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .min(12),
        quick: false,
        arch: None,
        isolate: false,
        group_seconds: 60,
    };
    while let Some(x) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value\n{USAGE}")))
        };
        match x.as_str() {
            "--driver" => a.driver = value("--driver")?,
            "--only" => a.only = Some(value("--only")?),
            "--jobs" => {
                let v = value("--jobs")?;
                a.jobs = v
                    .parse()
                    .map_err(|_| Error::Usage(format!("--jobs `{v}`: not a number")))?;
            }
            "--quick" => a.quick = true,
            "--isolate" => a.isolate = true,
            "--group-seconds" => {
                let v = value("--group-seconds")?;
                a.group_seconds = v
                    .parse()
                    .map_err(|_| Error::Usage(format!("--group-seconds `{v}`: not a number")))?;
            }
            "--arch" => a.arch = Some(value("--arch")?),
            "-h" | "--help" => a.positional.insert(0, "help".into()),
            s if s.starts_with("--") => {
                return Err(Error::Usage(format!("unknown option `{s}`\n{USAGE}")))
            }
            _ => a.positional.push(x),
        }
    }
    Ok(a)
}

/// Code run with whichever backend `--driver` names (none without a
/// driver feature: then every command but `cases` says so).
#[cfg_attr(not(any(feature = "cpu", feature = "cuda")), allow(dead_code))]
trait WithBackend {
    fn run<B: Backend>(self, b: &B) -> Result<u8, Error>;
}

fn with_backend<W: WithBackend>(name: &str, w: W) -> Result<u8, Error> {
    match name {
        #[cfg(feature = "cuda")]
        "cuda" => w.run(&attnforge_gpu_check::drivers::CudaBackend { ordinal: 0 }),
        #[cfg(feature = "cpu")]
        "cpu" => w.run(&attnforge_gpu_check::drivers::CpuBackend::sm90()),
        other => {
            let _ = w;
            Err(Error::Usage(format!(
                "driver `{other}` is not in this build (features: cpu {}, cuda {})",
                cfg!(feature = "cpu"),
                cfg!(feature = "cuda")
            )))
        }
    }
}

#[cfg_attr(not(any(feature = "cpu", feature = "cuda")), allow(dead_code))]
struct Check<'a>(&'a Args, [PathBuf; 3]);
impl WithBackend for Check<'_> {
    fn run<B: Backend>(self, b: &B) -> Result<u8, Error> {
        let [pack, scratch, results] = &self.1;
        let s = check::run(
            b,
            pack,
            scratch,
            results,
            self.0.only.as_deref(),
            self.0.jobs,
        )?;
        eprintln!(
            "{} passed, {} failed, {} did not run ({} driver)",
            s.passed,
            s.failed,
            s.errors,
            b.name()
        );
        Ok(u8::from(s.failed + s.errors > 0))
    }
}

#[cfg_attr(not(any(feature = "cpu", feature = "cuda")), allow(dead_code))]
struct Speed<'a>(&'a Args, [PathBuf; 3]);
impl WithBackend for Speed<'_> {
    fn run<B: Backend>(self, b: &B) -> Result<u8, Error> {
        let [pack, scratch, results] = &self.1;
        let cfg = if self.0.quick {
            speed::SpeedConfig::quick()
        } else {
            Manifest::load(pack)?.speed
        };
        let path = results.join("speed.json");
        let mut saved = Ok(());
        let report = speed::run(b, &cfg, Some(scratch), &mut |r| {
            saved = error::write_json(&path, r)
        });
        saved?;
        error::write_json(&path, &report)?;
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        eprintln!(
            "{} decode, {} prefill, {} paging figures; copy {} GB/s; {} errors",
            report.decode.len(),
            report.prefill.len(),
            report.paging.len(),
            report
                .copy
                .as_ref()
                .map_or("-".into(), |c| format!("{:.0}", c.gb_per_s)),
            report.errors.len()
        );
        Ok(u8::from(!report.errors.is_empty()))
    }
}

struct Sanitize;
impl WithBackend for Sanitize {
    fn run<B: Backend>(self, b: &B) -> Result<u8, Error> {
        let mut bad = 0;
        for (c, r) in sanitize::run(b)? {
            match r {
                Ok(()) => eprintln!("ok     {} ({})", c.id, c.kernels.join(", ")),
                Err(e) => {
                    bad += 1;
                    eprintln!("FAILED {} ({}): {e}", c.id, c.kernels.join(", "));
                }
            }
        }
        Ok(u8::from(bad > 0))
    }
}

fn isolated(a: &Args, [pack, scratch, results]: [PathBuf; 3]) -> Result<u8, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io(std::path::Path::new("/proc/self/exe"), e))?;
    let iso = attnforge_gpu_check::isolate::Isolation {
        exe: &exe,
        driver: &a.driver,
        group_seconds: a.group_seconds,
    };
    let s = attnforge_gpu_check::isolate::run(
        &iso,
        &pack,
        &scratch,
        &results,
        a.only.as_deref(),
        a.jobs,
    )?;
    eprintln!(
        "{} passed, {} failed, {} did not run ({} driver, a process per group)",
        s.passed, s.failed, s.errors, a.driver
    );
    Ok(u8::from(s.failed + s.errors > 0))
}

fn three(a: &Args) -> Result<[PathBuf; 3], Error> {
    match &a.positional[1..] {
        [p, s, r] => Ok([p.into(), s.into(), r.into()]),
        _ => Err(Error::Usage(format!(
            "needs PACK_DIR SCRATCH_DIR RESULTS_DIR\n{USAGE}"
        ))),
    }
}

fn build(a: &Args) -> Result<u8, Error> {
    let [_, pack] = &a.positional[..] else {
        return Err(Error::Usage(format!("build needs PACK_DIR\n{USAGE}")));
    };
    #[cfg(feature = "cpu")]
    {
        let mut set = if a.quick {
            cases::quick()
        } else {
            cases::all()
        };
        if let Some(p) = &a.only {
            set = cases::only(set, p);
        }
        let cfg = if a.quick {
            speed::SpeedConfig::quick()
        } else {
            speed::SpeedConfig::full()
        };
        let m = attnforge_gpu_check::pack::build(std::path::Path::new(pack), set, cfg)?;
        let beyond = m
            .cases
            .iter()
            .filter(|c| !c.cpu_vs_reference.is_some_and(|e| e <= c.tolerance))
            .count();
        if beyond > 0 {
            eprintln!("warning: {beyond} case(s) where the CPU backend itself is beyond tolerance");
        }
        Ok(0)
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = pack;
        Err(Error::Usage(
            "build needs the CPU backend: build with --features cpu".into(),
        ))
    }
}

/// NVRTC compiles of every kernel the pack needs that has no cubin.
fn compile(a: &Args) -> Result<u8, Error> {
    let [_, pack, results] = &a.positional[..] else {
        return Err(Error::Usage(format!(
            "compile needs PACK_DIR RESULTS_DIR\n{USAGE}"
        )));
    };
    #[cfg(feature = "cuda")]
    {
        use attnforge_gpu_check::compile;
        let arch = match &a.arch {
            Some(n) => attnforge_codegen::Arch::from_name(n)
                .ok_or_else(|| Error::Usage(format!("unknown arch `{n}`")))?,
            None => attnforge_runtime::cuda::CudaDevice::new(0)
                .map_err(|e| Error::Device {
                    driver: "CUDA",
                    message: e.to_string(),
                })?
                .arch(),
        };
        let m = Manifest::load(std::path::Path::new(pack))?;
        let cases = match &a.only {
            Some(p) => cases::only(m.cases, p),
            None => m.cases,
        };
        let kernels = compile::needed(&cases, &m.speed, arch)?;
        let t = std::time::Instant::now();
        let done = compile::compile(&kernels, arch, a.jobs);
        let seconds = t.elapsed().as_secs_f64();
        let failed = done.iter().filter(|c| c.error.is_some()).count();
        let json = serde_json::json!({"arch": arch.name(), "jobs": a.jobs, "seconds": seconds, "kernels": done});
        error::write_json(&std::path::Path::new(results).join("compile.json"), &json)?;
        eprintln!(
            "{} kernels in {seconds:.1}s on {} threads, {failed} failed",
            done.len(),
            a.jobs
        );
        Ok(u8::from(failed > 0))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (pack, results);
        Err(Error::Usage(
            "compile needs NVRTC: build with --features cuda".into(),
        ))
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = match args.positional.first().map(String::as_str) {
        Some("build") => build(&args),
        Some("check") if args.isolate => three(&args).and_then(|p| isolated(&args, p)),
        Some("check") => three(&args).and_then(|p| with_backend(&args.driver, Check(&args, p))),
        Some("speed") => three(&args).and_then(|p| with_backend(&args.driver, Speed(&args, p))),
        Some("compile") => compile(&args),
        Some("sanitize") => with_backend(&args.driver, Sanitize),
        Some("help") => {
            println!("{USAGE}");
            Ok(0)
        }
        Some("cases") => {
            for c in if args.quick {
                cases::quick()
            } else {
                cases::all()
            } {
                println!("{:60} {}", c.id, c.kernels.join(" "));
            }
            Ok(0)
        }
        _ => Err(Error::Usage(USAGE.into())),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
