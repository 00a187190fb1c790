//! Each code object's resources, whichever vendor: AMD's from the code
//! object's metadata note (VGPRs, AGPRs, SGPRs, spills, scratch, LDS,
//! waves per SIMD), NVIDIA's from ptxas's report kept beside each cubin
//! (registers, spill bytes, stack, shared memory, warps per SM). `attnforge
//! build` prints them for one spec; `attnforge resources` for every
//! bundled kernel, failing when any spills.

use attnforge::codegen::build::{
    find_hipcc, find_nvcc, user_cache_dir, Build, BuildReport, BuiltObject,
};
use attnforge::codegen::codeobj::{occupancy, parse_elf};
use attnforge::codegen::cubin::{nvidia_occupancy, parse_cubin, parse_ptxas_log};
use attnforge::codegen::kernels::{generate, KernelSpec};
use attnforge::codegen::Vendor;
use attnforge::Arch;

use crate::spec;
use crate::{table, Failure};

/// One code object's row.
pub struct Resources {
    pub object: BuiltObject,
    pub vendor: Vendor,
    /// Whether it spills (registers to scratch or local memory).
    pub spills: bool,
    /// The table cells after kernel and arch (vendor-specific).
    pub cells: Vec<String>,
    pub json: serde_json::Value,
}

const AMD_HEADER: &[&str] = &[
    "kernel",
    "arch",
    ">threads",
    ">VGPRs",
    ">AGPRs",
    ">SGPRs",
    ">spills v/s",
    ">scratch",
    ">LDS bytes",
    ">waves/SIMD",
    ">bytes",
    "hipcc",
];

const NVIDIA_HEADER: &[&str] = &[
    "kernel",
    "arch",
    ">threads",
    ">registers",
    ">spill st/ld bytes",
    ">stack",
    ">shared bytes",
    ">warps/SM",
    ">bytes",
    "nvcc",
];

/// The resources of every object of `report` whose kernel is in `kernels`.
pub fn collect(report: &BuildReport, kernels: &[KernelSpec]) -> Result<Vec<Resources>, Failure> {
    let mut out = Vec::new();
    for o in &report.objects {
        let Some(kernel) = kernels
            .iter()
            .find(|k| attnforge::codegen::kernels::symbol(k) == o.symbol)
        else {
            continue;
        };
        let bytes = std::fs::read(&o.path)?;
        let block = generate(kernel, o.arch.target())?.block_dim();
        let how = if o.compiled { "compiled" } else { "cached" }.to_string();
        let row = match o.arch.vendor() {
            Some(Vendor::Nvidia) => {
                let cubin = parse_cubin(&bytes)?;
                let log_path = o.log.as_ref().ok_or_else(|| {
                    Failure::Step(format!(
                        "{}: the {} cubin has no ptxas log",
                        o.symbol, o.arch
                    ))
                })?;
                let log = std::fs::read_to_string(log_path)?;
                let r = parse_ptxas_log(&log)
                    .into_iter()
                    .find(|r| r.name == o.symbol)
                    .ok_or_else(|| {
                        Failure::Step(format!(
                            "{}: ptxas reported nothing for it ({})",
                            o.symbol,
                            log_path.display()
                        ))
                    })?;
                let warps = nvidia_occupancy(o.arch.name(), &r, block);
                Resources {
                    object: o.clone(),
                    vendor: Vendor::Nvidia,
                    spills: r.spill_stores > 0 || r.spill_loads > 0,
                    cells: vec![
                        block.to_string(),
                        r.registers.to_string(),
                        format!("{}/{}", r.spill_stores, r.spill_loads),
                        r.stack_bytes.to_string(),
                        r.shared_bytes.to_string(),
                        warps.map_or("?".into(), |w| w.to_string()),
                        bytes.len().to_string(),
                        how,
                    ],
                    json: serde_json::json!({
                        "symbol": o.symbol, "kind": o.kind.name(), "arch": o.arch.name(),
                        "vendor": "nvidia", "sm": cubin.sm, "block_threads": block,
                        "registers": r.registers, "spill_stores": r.spill_stores,
                        "spill_loads": r.spill_loads, "stack_bytes": r.stack_bytes,
                        "shared_bytes": r.shared_bytes, "warps_per_sm": warps,
                        "bytes": bytes.len(), "compiled": o.compiled,
                    }),
                }
            }
            _ => {
                let elf = parse_elf(&bytes)?;
                let r = elf.kernel_resources(&o.symbol).ok_or_else(|| {
                    Failure::Step(format!(
                        "{}: the {} code object has no metadata for its kernel",
                        o.symbol, o.arch
                    ))
                })?;
                let occ = occupancy(o.arch.name(), r, block);
                Resources {
                    object: o.clone(),
                    vendor: Vendor::Amd,
                    spills: r.vgpr_spills > 0 || r.sgpr_spills > 0,
                    cells: vec![
                        block.to_string(),
                        r.vgprs.to_string(),
                        r.agprs.to_string(),
                        r.sgprs.to_string(),
                        format!("{}/{}", r.vgpr_spills, r.sgpr_spills),
                        r.scratch_bytes.to_string(),
                        r.lds_bytes.to_string(),
                        occ.map_or("?".into(), |w| w.to_string()),
                        bytes.len().to_string(),
                        how,
                    ],
                    json: serde_json::json!({
                        "symbol": o.symbol, "kind": o.kind.name(), "arch": o.arch.name(),
                        "vendor": "amd", "block_threads": block, "vgprs": r.vgprs,
                        "agprs": r.agprs, "sgprs": r.sgprs, "vgpr_spills": r.vgpr_spills,
                        "sgpr_spills": r.sgpr_spills, "scratch_bytes": r.scratch_bytes,
                        "lds_bytes": r.lds_bytes, "waves_per_simd": occ, "bytes": bytes.len(),
                        "compiled": o.compiled,
                    }),
                }
            }
        };
        out.push(row);
    }
    Ok(out)
}

/// Prints one table per vendor (AMD first), or one JSON array.
pub fn print(rows: &[Resources], json: bool, report: &BuildReport) {
    if json {
        table::json(&serde_json::Value::Array(
            rows.iter().map(|r| r.json.clone()).collect(),
        ));
        return;
    }
    let mut first = true;
    for (vendor, header) in [(Vendor::Amd, AMD_HEADER), (Vendor::Nvidia, NVIDIA_HEADER)] {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .filter(|r| r.vendor == vendor)
            .map(|r| {
                let mut c = vec![r.object.symbol.clone(), r.object.arch.name().to_string()];
                c.extend(r.cells.iter().cloned());
                c
            })
            .collect();
        if cells.is_empty() {
            continue;
        }
        if !first {
            table::out("");
        }
        first = false;
        table::print(header, &cells);
    }
    let n = report.objects.len();
    table::out(&format!(
        "\n{n} code object{}: {} compiled, {} from the cache",
        if n == 1 { "" } else { "s" },
        report.compiled(),
        report.cached()
    ));
}

/// The archs of an `--arch` list: with `all`, the archs of a vendor whose
/// compiler is not installed are left out, with a note on stderr; named
/// archs are kept (their build then says what is missing).
pub fn available(text: &str, archs: Vec<Arch>) -> Vec<Arch> {
    if !text.split(',').any(|a| a.trim() == "all") {
        return archs;
    }
    let mut out = archs;
    for (vendor, found, how) in [
        (
            Vendor::Amd,
            find_hipcc().is_some(),
            "hipcc is not installed (scripts/setup.sh installs it)",
        ),
        (
            Vendor::Nvidia,
            find_nvcc().is_some(),
            "nvcc is not installed (scripts/setup.sh installs it from PyPI)",
        ),
    ] {
        if !found && out.iter().any(|a| a.vendor() == Some(vendor)) {
            eprintln!("note: --arch all leaves out the {vendor} archs: {how}");
            out.retain(|a| a.vendor() != Some(vendor));
        }
    }
    out
}

/// Configures `build` for `archs`: hipcc for the AMD ones, nvcc for the
/// NVIDIA ones, the user's shared object cache.
pub fn configure(build: &mut Build, archs: &[Arch]) {
    let has = |v| archs.iter().any(|a| a.vendor() == Some(v));
    build
        .archs(archs)
        .hip(has(Vendor::Amd))
        .cuda(has(Vendor::Nvidia));
    if let Some(dir) = user_cache_dir() {
        build.shared_cache(dir.join("objects"));
    }
}

/// `attnforge resources`: every bundled kernel's resources at every arch.
#[derive(clap::Args)]
pub struct Args {
    /// GPU archs: comma-separated (gfx90a, gfx940, gfx1030, sm_80, sm_90) or `all`.
    #[arg(long, default_value = "all")]
    arch: String,
    /// JSON: one object per code object.
    #[arg(long)]
    json: bool,
}

/// The bundled specs, as the kernels crate's build script reads them.
const BUNDLED_SPECS: &str = include_str!("../../../kernels-generated/src/specs.rs");

pub fn run(a: Args) -> Result<(), Failure> {
    let archs = available(&a.arch, spec::archs(&a.arch, false)?);
    let scratch = crate::build::Scratch::new("resources")?;
    let file = scratch.0.join("specs.rs");
    std::fs::write(&file, BUNDLED_SPECS)?;
    let mut build = Build::new();
    build.file(&file).out_dir(scratch.0.join("out"));
    configure(&mut build, &archs);
    let report = crate::build::with_spinner(
        &format!(
            "compiling the bundled kernels for {}",
            archs
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        || build.compile(),
    )?;
    let kernels: Vec<KernelSpec> = report
        .items
        .iter()
        .flat_map(|i| i.kernels.clone())
        .collect();
    let rows = collect(&report, &kernels)?;
    print(&rows, a.json, &report);
    let spilling: Vec<String> = rows
        .iter()
        .filter(|r| r.spills)
        .map(|r| format!("{} at {}", r.object.symbol, r.object.arch))
        .collect();
    if spilling.is_empty() {
        Ok(())
    } else {
        Err(Failure::Step(format!("spills: {}", spilling.join(", "))))
    }
}
