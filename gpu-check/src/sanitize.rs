//! One small launch of each kernel kind (decode, split-K decode, merge,
//! prefill, append) of the bundled Llama-3 spec, from its code objects:
//! what compute-sanitizer's memcheck and racecheck run over.

use attnforge_codegen::kernels::KernelSpec;
use attnforge_runtime::launch::Gpu;

use crate::drivers::{registry, Backend};
use crate::error::Error;
use crate::exec::execute;
use crate::manifest::{Case, Kind};

/// The cases: Llama-3's decode, split-K decode (split and merge), prefill
/// and its layout's append, on two short sequences.
pub fn cases() -> Vec<Case> {
    let b = attnforge_kernels::ALL
        .iter()
        .find(|b| b.name == "llama3_8b");
    let Some(KernelSpec::Decode(a)) = b.map(|b| b.kernel) else {
        return Vec::new();
    };
    let lens = [5, 40];
    [Kind::Decode, Kind::Split, Kind::Prefill, Kind::Append]
        .into_iter()
        .map(|k| {
            let id = format!("sanitize.{k:?}").to_lowercase();
            let seed = crate::cases::seed_of(&id);
            let mut c = Case::attention(id, "sanitizer".into(), k, &a, &lens, seed);
            if k == Kind::Split {
                c.split_chunk = Some(16);
            }
            c
        })
        .collect()
}

/// A case and its outcome: `Err` says what went wrong.
pub type Outcome = (Case, Result<(), String>);

/// Runs each case once; returns each with its outcome (an attention's
/// output must be finite).
pub fn run<B: Backend>(backend: &B) -> Result<Vec<Outcome>, Error> {
    let gpu = Gpu::new(backend.open(registry("llama3_8b"))?);
    let mut out = Vec::new();
    for c in cases() {
        let r = match execute(&gpu, &c, false) {
            Ok(_) if c.kind == Kind::Append => Ok(()),
            Ok(run) => match run.outputs[0].to_f64().iter().all(|x| x.is_finite()) {
                true => Ok(()),
                false => Err("a non-finite output".to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        out.push((c, r));
    }
    Ok(out)
}
