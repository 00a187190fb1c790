//! The CUDA device where no GPU is needed: the driver's library is looked
//! for and says whether there is a device (a typed error, never a panic);
//! NVRTC compiles generated kernels into sm_80 and sm_90 cubins, cached on
//! disk, a damaged or foreign entry rebuilt. NVRTC must be found (run
//! scripts/setup.sh first): without it these tests fail, they do not skip.
//! The launch test skips, with a printed reason, when there is no device.
#![cfg(feature = "cuda")]

use attnforge_codegen::cubin::parse_cubin;
use attnforge_codegen::kernels::{generate, symbol, KernelSpec};
use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::cuda::{rtc, CudaDevice, CudaError};
use attnforge_runtime::driver::cuda::CudaDriver;

fn spec() -> AttentionSpec {
    AttentionSpec {
        kv: KvLayoutSpec {
            page_size: 16,
            kv_heads: 3,
            head_dim: 64,
            dtype: DType::F16,
            order: Order::Nhd,
            scale: KvScale::Unscaled,
        },
        q_heads: 9,
        scale: None,
        causal: true,
        sliding_window: None,
        logits_soft_cap: Some(30.0),
        q_dtype: None,
        alibi: None,
        sinks: false,
    }
}

/// The "no device" answer: there is no NVIDIA driver here (no libcuda), or
/// it has no device; either way a message, not a panic.
fn assert_no_device(e: CudaError) {
    match e {
        CudaError::NoDevice(why) => {
            println!("no CUDA device: {why}");
            assert!(
                why.contains("libcuda") || why.contains("CUDA_ERROR_NO_DEVICE"),
                "{why}"
            );
        }
        e => panic!("unexpected: {e}"),
    }
}

#[test]
fn the_cuda_device_reports_whether_there_is_one() {
    match CudaDevice::new(0) {
        Ok(d) => println!(
            "CUDA device 0: {} ({}, {} SMs)",
            d.name(),
            d.arch(),
            d.compute_units()
        ),
        Err(e) => assert_no_device(e),
    }
    assert!(matches!(CudaDevice::new(-1), Err(CudaError::NoDevice(_))));
}

#[test]
fn the_cuda_driver_reports_whether_there_is_a_device() {
    match CudaDriver::new(0, None) {
        Ok(d) => println!("CUDA driver on {}", d.device().name()),
        Err(e) => assert_no_device(e),
    }
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn nvrtc_compiles_generated_kernels_into_cubins_and_caches_them() {
    let dir = std::env::temp_dir().join(format!("attnforge-nvrtc-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cubins = Vec::new();
    for (ks, arch, sm) in [
        (KernelSpec::Decode(spec()), Arch::Sm90, 90),
        (KernelSpec::Append(spec().kv), Arch::Sm80, 80),
    ] {
        let source = generate(&ks, arch.target()).unwrap().to_string();
        let (bytes, compiled) =
            rtc::compile_cached(&source, arch, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled);
        let cubin = parse_cubin(&bytes).unwrap_or_else(|e| panic!("not a cubin: {e}"));
        assert_eq!(cubin.elf.machine, 190);
        assert_eq!(cubin.sm, sm);
        assert!(cubin.has_function(&symbol(&ks)), "{:?}", cubin.elf.symbols);
        let (again, compiled) = rtc::compile_cached(&source, arch, &dir).unwrap();
        assert!(!compiled, "the second call is served from the cache");
        assert_eq!(again, bytes);
        cubins.push((source, arch, bytes));
    }
    let files = cache_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(name.ends_with(".cubin") && !name.starts_with('.'), "{name}");
    }
    // A damaged entry, then a foreign one (a cubin for the other arch), are
    // rebuilt, not trusted.
    let (source, arch, bytes) = &cubins[0];
    let entry = files
        .iter()
        .find(|f| f.to_string_lossy().ends_with(".sm_90.cubin"))
        .unwrap();
    for junk in [&bytes[..bytes.len() / 2], &cubins[1].2[..]] {
        std::fs::write(entry, junk).unwrap();
        let (rebuilt, compiled) = rtc::compile_cached(source, *arch, &dir).unwrap();
        assert!(compiled, "a bad cache entry must be rebuilt");
        assert_eq!(parse_cubin(&rebuilt).unwrap().sm, 90);
        assert_eq!(std::fs::read(entry).unwrap(), rebuilt);
    }
    assert_eq!(cache_files(&dir).len(), 2, "no temporary file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every kernel of a few specs that reach the printer's other paths (fp8
/// scales, bf16 queries, sinks, ALiBi, a sliding window, a head dim of 40)
/// compiles with NVRTC, for both archs.
#[test]
fn nvrtc_compiles_every_kernel_kind() {
    use attnforge_codegen::Alibi;
    let fp8 = |head_dim, scale| KvLayoutSpec {
        page_size: 16,
        kv_heads: 8,
        head_dim,
        dtype: DType::F8E4M3,
        order: Order::Nhd,
        scale,
    };
    let specs = [
        spec(),
        AttentionSpec {
            causal: true,
            q_dtype: Some(DType::F16),
            sinks: true,
            alibi: Some(Alibi::Computed),
            ..AttentionSpec::new(fp8(128, KvScale::PerHead), 32)
        },
        AttentionSpec {
            causal: true,
            q_dtype: Some(DType::BF16),
            sliding_window: Some(64),
            alibi: Some(Alibi::Given),
            ..AttentionSpec::new(fp8(40, KvScale::PerTensor), 8)
        },
    ];
    for s in specs {
        for ks in [
            KernelSpec::Decode(s),
            KernelSpec::DecodeSplit(s),
            KernelSpec::DecodeMerge(s),
            KernelSpec::Prefill(s),
            KernelSpec::Append(s.kv),
        ] {
            for arch in [Arch::Sm80, Arch::Sm90] {
                let source = generate(&ks, arch.target()).unwrap().to_string();
                let bytes = rtc::compile(&source, arch)
                    .unwrap_or_else(|e| panic!("{} for {arch}: {e}", symbol(&ks)));
                assert!(parse_cubin(&bytes).unwrap().has_function(&symbol(&ks)));
            }
        }
    }
}

#[test]
fn nvrtc_errors_carry_the_log_and_options() {
    let err = rtc::compile("this is not C++", Arch::Sm90).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("nvrtcCompileProgram") && text.contains("-arch=sm_90"),
        "{text}"
    );
}

#[test]
fn the_default_cache_is_apart_from_hiprtcs() {
    assert!(rtc::default_cache_dir().ends_with("nvrtc"));
}

/// Decode on the GPU against the CPU backend; skips without a device.
#[cfg(feature = "cpu")]
#[test]
fn decode_on_a_cuda_device_matches_the_cpu() {
    use attnforge_runtime::cpu::{CpuDevice, Mode};
    use attnforge_runtime::device::Device;
    use attnforge_runtime::driver::Driver;
    use attnforge_runtime::launch::Gpu;
    use attnforge_runtime::PageTable;
    use half::f16;
    let device = match CudaDriver::new(0, None) {
        Ok(d) => Gpu::new(d),
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    let s = spec();
    let pages = 4usize;
    let k: Vec<f16> = (0..pages * 16 * 3 * 64)
        .map(|i| f16::from_f32(((i % 13) as f32 - 6.0) / 6.0))
        .collect();
    let v: Vec<f16> = (0..k.len())
        .map(|i| f16::from_f32(((i % 7) as f32 - 3.0) / 3.0))
        .collect();
    let table = PageTable::from_sequences(16, [(&[2, 0][..], 20), (&[3][..], 5)]);
    let q: Vec<f16> = (0..2 * 9 * 64)
        .map(|i| f16::from_f32(((i % 5) as f32 - 2.0) / 2.0))
        .collect();
    let (mut gpu, mut cpu) = (vec![f16::ZERO; q.len()], vec![f16::ZERO; q.len()]);
    device.decode(&s, &q, &k, &v, &table, &mut gpu).unwrap();
    let target = device.driver().target();
    CpuDevice::new()
        .decode(&s, target, Mode::Checked, &q, &k, &v, &table, &mut cpu)
        .unwrap();
    let err: f32 = gpu
        .iter()
        .zip(&cpu)
        .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-2, "GPU and CPU differ by {err}");
}
