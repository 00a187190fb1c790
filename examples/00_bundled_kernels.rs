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
        let kernel = generate(&b.kernel, Arch::Gfx90a.target());
        let shape = match &b.kernel {
            KernelSpec::Decode(a) => format!(
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
            KernelSpec::Append(l) => format!(
                "page {} tokens, {} kv heads, head_dim {}, {}, {}",
                l.page_size,
                l.kv_heads,
                l.head_dim,
                l.dtype,
                l.order.name()
            ),
        };
        println!("{} ({})", b.name, shape);
        println!("  {} kernel `{}`", b.kernel.kind(), symbol(&b.kernel));
        if let Ok(k) = &kernel {
            let grid = match b.kernel {
                KernelSpec::Decode(_) => "grid (kv_heads, batch)",
                KernelSpec::Append(_) => "grid (new tokens)",
            };
            println!("  {} threads per block on wave64, {grid}", k.block_dim());
        }
        match b.hip {
            HipKernels::Built(_) => {
                for arch in Arch::ALL {
                    match b.hip.find(b.kernel.kind(), arch) {
                        Ok(o) => println!("  {:<8} {:>7} bytes", arch.name(), o.bytes.len()),
                        Err(e) => println!("  {:<8} missing: {e}", arch.name()),
                    }
                }
            }
            HipKernels::NotBuilt(reason) => println!("  no code objects: {reason}"),
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
