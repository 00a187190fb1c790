//! `attnforge emit`: a kernel of the spec, printed as HIP C++.

use attnforge::codegen::kernels::{generate, symbol};

use crate::spec::{self, KernelChoice, SpecArgs};
use crate::{table, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// The GPU arch: gfx90a, gfx940, gfx1030 (HIP) or sm_80, sm_90 (CUDA).
    #[arg(long)]
    arch: String,
    /// The kernel; every kernel of the spec when left out.
    #[arg(long, value_enum)]
    kernel: Option<KernelChoice>,
    /// One JSON object per kernel (symbol, kind, arch, block size, source).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<(), Failure> {
    let spec = a.spec.resolve()?;
    let archs = spec::archs(&a.arch, false)?;
    let [arch] = archs[..] else {
        return Err(Failure::Usage(format!(
            "--arch {}: emit prints one arch; name one",
            a.arch
        )));
    };
    let mut all = Vec::new();
    for k in spec.select(a.kernel)? {
        let g = generate(&k, arch.target())?;
        if a.json {
            all.push(serde_json::json!({
                "symbol": symbol(&k),
                "kind": k.kind().name(),
                "arch": arch.name(),
                "block_threads": g.block_dim(),
                "grid": k.grid_axes(),
                "source": g.to_string(),
            }));
        } else {
            table::out(&g.to_string());
        }
    }
    if a.json {
        table::json(&serde_json::Value::Array(all));
    }
    Ok(())
}
