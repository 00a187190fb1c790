//! `attnforge kernels`: the bundled model specs, their kernels, and the
//! code object hipcc built for every arch.

use attnforge::codegen::kernels::{generate, symbol, KernelSpec};
use attnforge::Arch;

use crate::{table, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// JSON: one object per spec item, with its kernels.
    #[arg(long)]
    json: bool,
}

/// The shape of a bundled item in words.
fn shape(kernel: &KernelSpec) -> String {
    match kernel {
        KernelSpec::Append(l) => format!(
            "page {} tokens, {} kv heads, head_dim {}, {}, {}",
            l.page_size,
            l.kv_heads,
            l.head_dim,
            l.dtype,
            l.order.name()
        ),
        _ => match kernel.attention() {
            Some(a) => format!(
                "{} q heads over {} kv heads, head_dim {}, {}, {}{}{}",
                a.q_heads,
                a.kv.kv_heads,
                a.kv.head_dim,
                a.kv.dtype,
                a.kv.order.name(),
                a.sliding_window
                    .map(|w| format!(", window {w}"))
                    .unwrap_or_default(),
                a.logits_soft_cap
                    .map(|c| format!(", soft-cap {c}"))
                    .unwrap_or_default(),
            ),
            None => String::new(),
        },
    }
}

pub fn run(a: Args) -> Result<(), Failure> {
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for b in attnforge::kernels::ALL {
        let mut kernels = Vec::new();
        for spec in b.kernels() {
            let block = generate(&spec, Arch::Gfx90a.target())?.block_dim();
            let objects: Vec<(Arch, Result<usize, String>)> = Arch::ALL
                .iter()
                .map(|&arch| {
                    let size = b.objects.find(spec.kind(), arch).map(|o| o.bytes.len());
                    (arch, size)
                })
                .collect();
            let sizes: Vec<String> = objects
                .iter()
                .map(|(arch, s)| match s {
                    Ok(n) => format!("{} {n}", arch.name()),
                    Err(_) => format!("{} -", arch.name()),
                })
                .collect();
            rows.push(vec![
                b.name.to_string(),
                spec.kind().name().to_string(),
                symbol(&spec),
                block.to_string(),
                spec.grid_axes().to_string(),
                sizes.join(", "),
            ]);
            kernels.push(serde_json::json!({
                "kind": spec.kind().name(),
                "symbol": symbol(&spec),
                "block_threads_wave64": block,
                "grid": spec.grid_axes(),
                "code_objects": objects.iter().map(|(arch, s)| serde_json::json!({
                    "arch": arch.name(),
                    "bytes": s.as_ref().ok(),
                    "missing": s.as_ref().err(),
                })).collect::<Vec<_>>(),
            }));
        }
        items.push(serde_json::json!({
            "item": b.name,
            "shape": shape(&b.kernel),
            "kernels": kernels,
        }));
    }
    if a.json {
        table::json(&serde_json::Value::Array(items));
        return Ok(());
    }
    table::out(&format!(
        "{} bundled spec items, {} distinct code objects ({} bytes)\n",
        attnforge::kernels::ALL.len(),
        attnforge::kernels::CODE_OBJECTS.len(),
        attnforge::kernels::CODE_OBJECTS
            .iter()
            .map(|o| o.bytes.len())
            .sum::<usize>()
    ));
    for b in attnforge::kernels::ALL {
        table::out(&format!("{:<16} {}", b.name, shape(&b.kernel)));
    }
    table::out("");
    table::print(
        &[
            "item",
            "kernel",
            "symbol",
            ">block (wave64)",
            "grid",
            "code object bytes",
        ],
        &rows,
    );
    Ok(())
}
