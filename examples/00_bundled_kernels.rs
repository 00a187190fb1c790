//! Lists the bundled model specs: for each, the kernel it owns, its symbol,
//! its launch shape, and the code object hipcc built for every arch.
//!
//! Run: `cargo run --example 00_bundled_kernels` (`scripts/run.sh` does it).

use attnforge::codegen::kernels::{generate, symbol, KernelSpec};
use attnforge::{Arch, HipKernels};

fn main() {
    println!(
        "attnforge: {} bundled spec items\n",
        attnforge::kernels::ALL.len()
    );
    for b in attnforge::kernels::ALL {
        let shape = match &b.kernel {
            KernelSpec::Append(l) => format!(
                "page {} tokens, {} kv heads, head_dim {}, {}, {}",
                l.page_size,
                l.kv_heads,
                l.head_dim,
                l.dtype,
                l.order.name()
            ),
            _ => match b.kernel.attention() {
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
        };
        println!("{} ({})", b.name, shape);
        for spec in b.kernels() {
            println!("  {} kernel `{}`", spec.kind(), symbol(&spec));
            if let Ok(k) = generate(&spec, Arch::Gfx90a.target()) {
                println!(
                    "    {} threads per block on wave64, grid {}",
                    k.block_dim(),
                    spec.grid_axes()
                );
            }
            match b.hip {
                HipKernels::Built(_) => {
                    let sizes: Vec<String> = Arch::ALL
                        .iter()
                        .map(|&arch| match b.hip.find(spec.kind(), arch) {
                            Ok(o) => format!("{} {} bytes", arch.name(), o.bytes.len()),
                            Err(e) => format!("{} missing: {e}", arch.name()),
                        })
                        .collect();
                    println!("    {}", sizes.join(", "));
                }
                HipKernels::NotBuilt(reason) => println!("    no code objects: {reason}"),
            }
        }
        println!();
    }
    println!(
        "{} distinct code objects, {} bytes in all",
        attnforge::kernels::CODE_OBJECTS.len(),
        attnforge::kernels::CODE_OBJECTS
            .iter()
            .map(|o| o.bytes.len())
            .sum::<usize>()
    );
}
