//! The build half (feature `cpu`): every case on the CPU backend at sm_90
//! (warp 32: the GPU's own kernels), its outputs and the f64 reference's
//! written into the pack, and the manifest.

use std::path::Path;
use std::time::Instant;

use attnforge_codegen::Arch;
use attnforge_runtime::cpu::{CpuDevice, Mode};
use attnforge_runtime::device::Cpu;

use crate::compare;
use crate::error::{write, write_json, Error};
use crate::exec::{execute, reference_append};
use crate::manifest::{Case, FileRef, Kind, Manifest, PACK_SCHEMA};
use crate::raw::Array;
use crate::speed::SpeedConfig;

/// The arch the expected outputs are computed at.
pub const EXPECTED_ARCH: Arch = Arch::Sm90;

fn put(pack: &Path, case: &Case, name: &str, a: &Array) -> Result<FileRef, Error> {
    let file = format!("expected/{}.{name}.bin", case.id);
    write(&pack.join(&file), &a.bytes)?;
    Ok(FileRef {
        name: name.to_string(),
        file,
        ty: a.ty,
        count: a.len(),
    })
}

/// Runs one case on the CPU backend and records its expected outputs.
pub fn expect(device: &CpuDevice, pack: &Path, mut case: Case) -> Result<Case, Error> {
    let cpu = Cpu {
        device,
        target: EXPECTED_ARCH.target(),
        mode: Mode::Fast,
    };
    let run = execute(&cpu, &case, true)?;
    case.inputs_sha256 = Some(run.sha256.clone());
    case.expected.clear();
    for a in &run.outputs {
        let f = put(pack, &case, &format!("cpu.{}", a.name), a)?;
        case.expected.push(f);
    }
    case.cpu_vs_reference = Some(match (&run.reference, case.kind) {
        (Some(r), _) => {
            let as_f32: Vec<f32> = r.iter().map(|&x| x as f32).collect();
            let f = put(pack, &case, "ref.out", &Array::new("ref.out", &as_f32))?;
            case.expected.push(f);
            compare::against_reference(&run.outputs[0], r, case.tolerance).error
        }
        (None, Kind::Append) => {
            let l = case
                .spec
                .to_layout()
                .map_err(|m| Error::bad_case(&case.id, m))?;
            let (k, v) = reference_append(&l, &run.inputs)
                .ok_or_else(|| Error::bad_case(&case.id, "the append's inputs are incomplete"))?;
            compare::append(&run.outputs, &[k, v]).error
        }
        (None, _) => return Err(Error::bad_case(&case.id, "no reference output")),
    });
    Ok(case)
}

/// Builds the pack's cases into `pack`: expected outputs under
/// `pack/expected`, then `pack/manifest.json`. Prints a line per case.
pub fn build(pack: &Path, cases: Vec<Case>, speed: SpeedConfig) -> Result<Manifest, Error> {
    let device = CpuDevice::new();
    let mut done = Vec::with_capacity(cases.len());
    let start = Instant::now();
    let n = cases.len();
    for (i, case) in cases.into_iter().enumerate() {
        let t = Instant::now();
        let c = expect(&device, pack, case)?;
        let err = c.cpu_vs_reference.unwrap_or(f64::NAN);
        let flag = if err <= c.tolerance {
            ""
        } else {
            "  BEYOND TOLERANCE"
        };
        eprintln!(
            "[{:3}/{n}] {:58} cpu vs ref {err:.2e} (tol {:.0e}) {:6.2}s{flag}",
            i + 1,
            c.id,
            c.tolerance,
            t.elapsed().as_secs_f64()
        );
        done.push(c);
    }
    let manifest = Manifest {
        schema: PACK_SCHEMA.into(),
        expected_by: format!("the CPU backend at {}, fast mode", EXPECTED_ARCH.target()),
        cases: done,
        speed,
    };
    write_json(&pack.join("manifest.json"), &manifest)?;
    eprintln!("{n} cases in {:.1}s", start.elapsed().as_secs_f64());
    Ok(manifest)
}
