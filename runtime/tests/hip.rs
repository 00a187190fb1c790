//! The HIP device where no GPU is needed: the runtime is reached and says
//! whether it has a device; hiprtc compiles generated kernels into code
//! objects, cached on disk. Launch tests skip, with a printed reason, when
//! there is no device.
#![cfg(feature = "hip")]

use attnforge_codegen::codeobj::amdgpu_elf_objects;
use attnforge_codegen::kernels::{generate, symbol, KernelSpec};
use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::driver::hip::HipDriver;
use attnforge_runtime::driver::Driver;
use attnforge_runtime::hip::{rtc, HipDevice, HipError};
use attnforge_runtime::launch::Gpu;

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

#[test]
fn the_hip_runtime_is_reached_and_reports_whether_it_has_a_device() {
    match HipDevice::new(0) {
        Err(HipError::NoDevice(why)) => {
            println!("HIP runtime reached; no device: {why}");
            assert!(why.contains("hipErrorNoDevice"), "{why}");
        }
        Ok(d) => println!("HIP device 0: {} ({})", d.arch_name(), d.arch()),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[test]
fn hiprtc_compiles_generated_kernels_and_caches_them_atomically() {
    let dir = std::env::temp_dir().join(format!("attnforge-rtc-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (ks, arch) in [
        (KernelSpec::Decode(spec()), Arch::Gfx90a),
        (KernelSpec::Append(spec().kv), Arch::Gfx1030),
    ] {
        let source = generate(&ks, arch.target()).unwrap().to_string();
        let (bytes, compiled) =
            rtc::compile_cached(&source, arch, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled);
        let objects = amdgpu_elf_objects(&bytes).unwrap();
        assert!(!objects.is_empty(), "no AMDGPU ELF in hiprtc's output");
        for o in &objects {
            assert_eq!(o.arch(), Some(arch.name()));
            assert!(o.has_kernel(&symbol(&ks)), "{:?}", o.symbols);
        }
        let (again, compiled) = rtc::compile_cached(&source, arch, &dir).unwrap();
        assert!(!compiled, "the second call is served from the cache");
        assert_eq!(again, bytes);
    }
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".co") && !f.starts_with('.')),
        "{files:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hiprtc_errors_carry_the_log() {
    let err = rtc::compile("this is not C++", Arch::Gfx90a).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("hiprtcCompileProgram") && text.contains("--offload-arch=gfx90a"),
        "{text}"
    );
}

#[test]
fn decode_on_a_hip_device_matches_the_cpu() {
    let device = match HipDriver::new(0, None) {
        Ok(d) => Gpu::new(d),
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    use attnforge_runtime::cpu::{CpuDevice, Mode};
    use attnforge_runtime::device::Device;
    use attnforge_runtime::PageTable;
    use half::f16;
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
    CpuDevice::new()
        .decode(
            &s,
            device.driver().target(),
            Mode::Checked,
            &q,
            &k,
            &v,
            &table,
            &mut cpu,
        )
        .unwrap();
    let err: f32 = gpu
        .iter()
        .zip(&cpu)
        .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-2, "GPU and CPU differ by {err}");
}

/// A cache whose arenas live in GPU memory: prompts appended and prefilled,
/// a decode step, a fork that copies a partly filled page on the device;
/// every output and the arenas read back match the same steps on a CPU
/// cache. Skips without a device.
#[test]
fn a_gpu_resident_cache_matches_a_host_cache_step_for_step() {
    use attnforge_runtime::cpu::{CpuDevice, Mode};
    use attnforge_runtime::device::{Cpu, Device};
    use attnforge_runtime::{Arena, KvCache, Params};
    use half::f16;
    let s = spec();

    fn steps<D: Device>(d: &D, s: &AttentionSpec) -> (Vec<f16>, Vec<f16>, Vec<f16>, Vec<f16>) {
        let mut cache = KvCache::<f16>::new_on(d, s.kv, 2, 12).unwrap();
        let row = 3 * 64;
        let val = |i: usize| f16::from_f32(((i * 7919 % 29) as f32 - 14.0) / 14.0);
        let a = cache.add_sequence();
        let slots = cache.append_tokens(a, 21).unwrap();
        let k: Vec<f16> = (0..21 * row).map(val).collect();
        let v: Vec<f16> = (0..21 * row).map(|i| val(i + 5)).collect();
        for layer in 0..2 {
            cache.append_with(d, layer, &slots, &k, &v).unwrap();
        }
        let q: Vec<f16> = (0..21 * 9 * 64).map(|i| val(i + 11)).collect();
        let mut pre = vec![f16::ZERO; q.len()];
        cache
            .prefill_with(d, s, &Params::default(), 1, &[a], &[21], &q, &mut pre)
            .unwrap();
        // A fork shares the full page and copies the partly filled one
        // when it appends (on the device for a GPU arena).
        let b = cache.fork(a).unwrap();
        let slots = cache.append_tokens(b, 1).unwrap();
        for layer in 0..2 {
            cache
                .append_with(d, layer, &slots, &k[..row], &v[..row])
                .unwrap();
        }
        let q: Vec<f16> = (0..2 * 9 * 64).map(|i| val(i + 3)).collect();
        let mut dec = vec![f16::ZERO; q.len()];
        cache.decode_with(d, s, 0, &[a, b], &q, &mut dec).unwrap();
        let (ka, va) = cache.layer_to_host(0).unwrap();
        assert_eq!(cache.arena().len(), 2 * 12 * 16 * 3 * 64);
        (pre, dec, ka, va)
    }
    // The CPU half runs everywhere (it checks the steps themselves); the
    // GPU half needs a device.
    let host = CpuDevice::new();
    let arch = HipDevice::new(0).map_or(Arch::Gfx90a, |d| d.arch());
    let cpu = Cpu {
        device: &host,
        target: arch.target(),
        mode: Mode::Fast,
    };
    let cpu = steps(&cpu, &s);
    assert!(cpu.1.iter().all(|x| x.is_finite()) && cpu.0.iter().all(|x| x.is_finite()));
    let device = match HipDriver::new(0, None) {
        Ok(d) => Gpu::new(d),
        Err(e) => {
            println!("skipped the GPU half: {e}");
            return;
        }
    };
    let gpu = steps(&device, &s);
    assert!(gpu.2 == cpu.2 && gpu.3 == cpu.3, "the arenas differ");
    for (what, g, c) in [("prefill", &gpu.0, &cpu.0), ("decode", &gpu.1, &cpu.1)] {
        let err = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-2, "{what}: GPU and CPU differ by {err}");
    }
}
