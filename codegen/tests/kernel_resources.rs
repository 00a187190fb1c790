//! Kernel resources from the metadata note, and `occupancy()`, against the
//! compiler's own account: hipcc's `-Rpass-analysis=kernel-resource-usage`
//! remarks for a generated decode kernel and small kernels written to push
//! registers (AGPRs too), spills and scratch, at gfx90a, gfx940 and
//! gfx1030 (one hipcc run per arch).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use attnforge_codegen::codeobj::{occupancy, parse_elf, KernelResources};
use attnforge_codegen::kernels::{generate, KernelSpec};
use attnforge_codegen::spec::{AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_codegen::Arch;

/// Three kernels beside the generated one: `af_probe_small` is limited by
/// wave slots alone. `af_probe_pressure` uses 61
/// VGPRs and 20 AGPRs on CDNA (84 in the unified file: 88 allocated, 5
/// waves; 6 with a granule of 4), 65 VGPRs on gfx1030 (80 allocated, 12
/// waves; 14 with a granule of 8), through inline-asm clobbers;
/// `af_probe_spill` is held to few VGPRs
/// (`amdgpu_num_vgpr`), so its 96 live floats spill.
const PROBES: &str = r#"
extern "C" __global__ void __launch_bounds__(256) af_probe_pressure(float* a) {
    __shared__ float s[1024];
    s[threadIdx.x] = a[threadIdx.x];
    __syncthreads();
    a[threadIdx.x + 1] = s[(threadIdx.x + 1) % 1024];
#if defined(__gfx90a__) || defined(__gfx940__)
    asm volatile("" ::: "v60", "a19");
#else
    asm volatile("" ::: "v64");
#endif
}

extern "C" __global__ void __launch_bounds__(128) __attribute__((amdgpu_num_vgpr(32)))
af_probe_spill(float* a, int n) {
    float v[96];
    #pragma unroll
    for (int i = 0; i < 96; i++) v[i] = a[threadIdx.x + i * 128];
    for (int k = 0; k < n; k++) {
        #pragma unroll
        for (int i = 0; i < 96; i++) v[i] = v[i] * v[(i + 1) % 96] + a[k];
    }
    float t = 0.0f;
    #pragma unroll
    for (int i = 0; i < 96; i++) t += v[i] * (float)i;
    a[threadIdx.x] = t;
}

extern "C" __global__ void __launch_bounds__(64) af_probe_small(float* a) {
    a[threadIdx.x] *= 2.0f;
}
"#;

fn hipcc() -> Option<String> {
    let hipcc = std::env::var("HIPCC").unwrap_or_else(|_| "hipcc".into());
    let found = Command::new(&hipcc).arg("--version").output().is_ok();
    if !found {
        println!("skipped: hipcc is not installed (the README's test command installs it)");
    }
    found.then_some(hipcc)
}

/// hipcc's resource-usage remarks: kernel name -> (field -> value).
fn remarks(stderr: &str) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut all: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut current = None;
    for line in stderr.lines() {
        let Some((_, rest)) = line.split_once("remark: ") else {
            continue;
        };
        let rest = rest.trim_end_matches("[-Rpass-analysis=kernel-resource-usage]");
        let (key, value) = rest.rsplit_once(':').expect("a `key: value` remark");
        let (key, value) = (key.trim(), value.trim());
        if key == "Function Name" {
            current = Some(value.to_owned());
            all.entry(value.to_owned()).or_default();
        } else {
            let kernel = current.clone().expect("a remark before any function name");
            let n = value.parse().unwrap_or_else(|_| panic!("remark {rest:?}"));
            all.get_mut(&kernel).unwrap().insert(key.to_owned(), n);
        }
    }
    all
}

fn decode_spec() -> KernelSpec {
    KernelSpec::Decode(AttentionSpec {
        kv: KvLayoutSpec {
            page_size: 16,
            kv_heads: 2,
            head_dim: 64,
            dtype: DType::F16,
            order: Order::Nhd,
            scale: KvScale::Unscaled,
        },
        q_heads: 8,
        scale: None,
        causal: false,
        sliding_window: None,
        logits_soft_cap: None,
        q_dtype: None,
        alibi: None,
        sinks: false,
    })
}

/// Compiles `source` for `arch`; the code object's bytes and the remarks.
fn compile(
    hipcc: &str,
    dir: &Path,
    arch: Arch,
    source: &str,
) -> (Vec<u8>, BTreeMap<String, BTreeMap<String, u32>>) {
    let src = dir.join(format!("{}.hip", arch.name()));
    let obj = dir.join(format!("{}.co", arch.name()));
    std::fs::write(&src, source).unwrap();
    let out = Command::new(hipcc)
        .arg("--genco")
        .arg(format!("--offload-arch={}", arch.name()))
        .args(["--no-gpu-bundle-output", "-O3"])
        .arg("-Rpass-analysis=kernel-resource-usage")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .env("TMPDIR", dir)
        .output()
        .expect("run hipcc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hipcc for {}:\n{stderr}", arch.name());
    (std::fs::read(&obj).unwrap(), remarks(&stderr))
}

#[test]
fn metadata_and_occupancy_match_hipcc_remarks() {
    let Some(hipcc) = hipcc() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut exact_occupancy, mut below_max, mut spilled) = (0, 0, 0);
    for arch in Arch::AMD {
        let decode = generate(&decode_spec(), arch.target()).unwrap();
        let source = format!("{decode}\n{PROBES}");
        let (bytes, remarks) = compile(&hipcc, dir.path(), arch, &source);
        let elf = parse_elf(&bytes).unwrap();
        assert_eq!(elf.arch(), Some(arch.name()));
        let names: Vec<&str> = elf.resources().iter().map(|r| r.name.as_str()).collect();
        let mut expected = vec![
            decode.symbol(),
            "af_probe_pressure",
            "af_probe_small",
            "af_probe_spill",
        ];
        expected.sort_unstable();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected, "{}", arch.name());
        assert_eq!(remarks.len(), 4, "{}: {remarks:?}", arch.name());
        for r in elf.resources() {
            let at = format!("{} at {}", r.name, arch.name());
            let remark = &remarks[&r.name];
            let get = |k: &str| *remark.get(k).unwrap_or_else(|| panic!("{at}: no {k:?}"));
            assert!(elf.has_kernel(&r.name), "{at}");
            assert_eq!(r.symbol, format!("{}.kd", r.name), "{at}");
            assert_eq!(r.sgprs, get("SGPRs"), "{at}: SGPRs");
            // The remark counts architectural VGPRs and AGPRs apart; the
            // metadata's count is the unified file's (VGPRs rounded up to
            // 4, then the AGPRs) on gfx90a and gfx940.
            let (vgprs, agprs) = match arch {
                Arch::Gfx1030 => (get("VGPRs"), 0),
                _ => (get("VGPRs"), get("AGPRs")),
            };
            let unified = match agprs {
                0 => vgprs,
                a => vgprs.next_multiple_of(4) + a,
            };
            assert_eq!((r.vgprs, r.agprs), (unified, agprs), "{at}: VGPRs, AGPRs");
            assert_eq!(r.vgpr_spills, get("VGPRs Spill"), "{at}: VGPR spills");
            assert_eq!(r.sgpr_spills, get("SGPRs Spill"), "{at}: SGPR spills");
            assert_eq!(r.lds_bytes, get("LDS Size [bytes/block]"), "{at}: LDS");
            assert_eq!(
                r.scratch_bytes,
                get("ScratchSize [bytes/lane]"),
                "{at}: scratch"
            );
            let wave = if arch == Arch::Gfx1030 { 32 } else { 64 };
            assert_eq!(r.wavefront_size, wave, "{at}");
            let block = r.max_flat_workgroup_size;
            let ours = occupancy(arch.name(), r, block).unwrap_or_else(|| panic!("{at}"));
            let theirs = get("Occupancy [waves/SIMD]");
            println!("{at}: {r:?}; occupancy {ours}, hipcc {theirs}");
            let no_lds = KernelResources {
                lds_bytes: 0,
                ..r.clone()
            };
            if occupancy(arch.name(), &no_lds, block) == Some(ours) {
                assert_eq!(ours, theirs, "{at}: occupancy, {r:?}");
                exact_occupancy += 1;
                below_max += usize::from(ours < if wave == 32 { 16 } else { 8 });
            } else {
                // LDS is the limit: LLVM 15 (this hipcc) counts its waves per
                // CU, not per SIMD, so it reports more (see `occupancy`).
                assert!(ours <= theirs, "{at}: occupancy {ours} > {theirs}");
            }
            if r.name == "af_probe_spill" {
                assert!(r.vgpr_spills > 0 && r.scratch_bytes > 0, "{at}: {r:?}");
                spilled += 1;
            }
            if r.name == "af_probe_pressure" && arch != Arch::Gfx1030 {
                assert!(r.agprs > 0, "{at}: {r:?}");
            }
        }
    }
    // Every kernel's occupancy was checked, and not only at the maximum.
    assert_eq!(exact_occupancy, 12);
    assert!(below_max >= 3, "{below_max}");
    assert_eq!(spilled, 3);
}
