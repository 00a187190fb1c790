//! Launching through the `#[attention]` item: `Item::new_cache`,
//! `Item::append`, `Item::prefill` and `Item::decode`, against the f64
//! reference.
use attnforge::prelude::*;
use attnforge::runtime::cpu::{CpuDevice, Mode};
use attnforge::runtime::device::Cpu;
use attnforge::runtime::{reference, CacheError, KvCache};

#[kv_layout(page_size = 4, kv_heads = 2, head_dim = 16, dtype = f32)]
pub struct SmallKv;

#[attention(kv = SmallKv, q_heads = 4, causal, sliding_window = 6)]
pub struct Small;

#[kv_layout(page_size = 8, kv_heads = 2, head_dim = 16, dtype = f32)]
pub struct OtherKv;

#[test]
fn the_attention_item_appends_and_decodes_through_its_cache() {
    let device = CpuDevice::new();
    let cpu = Cpu {
        device: &device,
        target: Arch::Gfx90a.target(),
        mode: Mode::Checked,
    };
    let mut cache = Small::new_cache::<f32>(2, 16).unwrap();
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    let row = 2 * 16;
    let mut x = 0.25f32;
    let mut next = move || {
        x = (x * 3.7 + 0.11).fract();
        x - 0.5
    };
    let f = |x: &[f32]| x.iter().map(|&e| e as f64).collect::<Vec<_>>();
    let close = |got: &[f32], want: &[f64], what: &str| {
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{what}: {a} vs {b}");
        }
    };
    let append = |cache: &mut KvCache<f32>, lens: [usize; 2], next: &mut dyn FnMut() -> f32| {
        for (s, n) in seqs.iter().zip(lens) {
            let slots = cache.append_tokens(*s, n).unwrap();
            for layer in 0..2 {
                let k: Vec<f32> = (0..n * row).map(|_| next()).collect();
                let v: Vec<f32> = (0..n * row).map(|_| next()).collect();
                Small::append(&cpu, cache, layer, &slots, &k, &v).unwrap();
            }
        }
    };
    // Prefill: prompts of 11 and 3 tokens, causal, in a window of 6.
    append(&mut cache, [11, 3], &mut next);
    // The first prompt token sees the first page: nothing was released yet.
    assert_eq!(cache.seq_pages(seqs[0]).unwrap().len(), 3);
    let params = Params::default();
    let q: Vec<f32> = (0..14 * 4 * 16).map(|_| next()).collect();
    for layer in 0..2 {
        let mut out = vec![f32::NAN; q.len()];
        Small::prefill(
            &cpu,
            &mut cache,
            &params,
            layer,
            &seqs,
            &[11, 3],
            &q,
            &mut out,
        )
        .unwrap();
        let table = cache.page_table(&seqs).unwrap();
        let (k, v) = cache.layer(layer).unwrap();
        let want = reference::prefill_with(
            &Small::SPEC,
            &reference::Variants::default(),
            &f(&q),
            &[0, 11, 14],
            &f(k),
            &f(v),
            &table,
        );
        close(&out, &want, &format!("prefill layer {layer}"));
    }
    // A decode step: one token each; the window of 6 now releases the first
    // page (4 tokens) of the long sequence.
    append(&mut cache, [1, 1], &mut next);
    assert_eq!(cache.seq_pages(seqs[0]).unwrap().len(), 2);
    let q: Vec<f32> = (0..2 * 4 * 16).map(|_| next()).collect();
    for layer in 0..2 {
        let mut out = vec![f32::NAN; q.len()];
        Small::decode(&cpu, &mut cache, layer, &seqs, &q, &mut out).unwrap();
        let table = cache.page_table(&seqs).unwrap();
        let (k, v) = cache.layer(layer).unwrap();
        let want = reference::decode(&Small::SPEC, &f(&q), &f(k), &f(v), &table);
        close(&out, &want, &format!("decode layer {layer}"));
    }
    // A cache of another layout is refused before any launch.
    let mut other = KvCache::<f32>::new(OtherKv::SPEC, 1, 4).unwrap();
    let s = other.add_sequence();
    let slots = other.append_tokens(s, 1).unwrap();
    let e = Small::append(&cpu, &mut other, 0, &slots, &[0.0; 32], &[0.0; 32]).unwrap_err();
    assert!(e.to_string().contains("is not the cache's"), "{e}");
}

#[kv_layout(page_size = 4, kv_heads = 2, head_dim = 32, dtype = fp8_e4m3, kv_scale = per_head)]
pub struct Fp8Kv;

#[attention(kv = Fp8Kv, q_heads = 4, causal, q_dtype = f32)]
pub struct Fp8;

/// An fp8 cache end to end: f32 rows quantized by the append kernel with
/// per-head scales, then decode through the cache. Checked against the
/// reference on the dequantized cache (tight), and on the f32 rows before
/// quantization (the error fp8 costs, within the 5e-2 bound).
#[test]
fn an_fp8_cache_quantizes_on_append_and_decodes_with_its_scales() {
    use attnforge::runtime::{KvScales, RuntimeError};
    let device = CpuDevice::new();
    let cpu = Cpu {
        device: &device,
        target: Arch::Gfx1030.target(),
        mode: Mode::Checked,
    };
    let mut cache = Fp8::new_cache::<F8E4M3>(1, 8).unwrap();
    let seq = cache.add_sequence();
    let (ks, vs) = ([0.01f32, 0.02], [0.015f32, 0.005]);
    let scales = Some(KvScales { k: &ks, v: &vs });
    let (n, row) = (13, 2 * 32);
    let mut x = 0.3f32;
    let mut next = move || {
        x = (x * 3.7 + 0.11).fract();
        x - 0.5
    };
    let k: Vec<f32> = (0..n * row).map(|_| next()).collect();
    let v: Vec<f32> = (0..n * row).map(|_| next()).collect();
    let slots = cache.append_tokens(seq, n).unwrap();
    cache
        .append_ext_with(&cpu, 0, scales, &slots, &k, &v)
        .unwrap();
    let q: Vec<f32> = (0..4 * 32).map(|_| 4.0 * next()).collect();
    let params = Params {
        kv_scales: scales,
        ..Params::default()
    };
    let mut out = vec![f32::NAN; q.len()];
    Fp8::decode_ext(&cpu, &mut cache, &params, 0, &[seq], &q, &mut out).unwrap();

    let table = cache.page_table(&[seq]).unwrap();
    let f = |x: &[f32]| x.iter().map(|&e| e as f64).collect::<Vec<_>>();
    // NHD: element i of an arena belongs to head (i / 32) % 2.
    let deq = |a: &[F8E4M3], s: &[f32]| -> Vec<f64> {
        a.iter()
            .enumerate()
            .map(|(i, e)| e.to_f64() * f64::from(s[(i / 32) % 2]))
            .collect()
    };
    let (ka, va) = cache.layer(0).unwrap();
    let want = reference::decode(&Fp8::SPEC, &f(&q), &deq(ka, &ks), &deq(va, &vs), &table);
    let got = f(&out);
    let err = reference::rel_l2(&got, &want);
    assert!(err < 1e-5, "against the dequantized cache: {err:e}");
    // The same decode over the unquantized rows (one sequence, its pages
    // in order: the rows map to the arena through the table).
    let (mut kf, mut vf) = (vec![0.0; ka.len()], vec![0.0; va.len()]);
    for (t, &slot) in slots.iter().enumerate() {
        let (page, off) = (slot as usize / 4, slot as usize % 4);
        let dst = (page * 4 + off) * row;
        kf[dst..dst + row].copy_from_slice(&f(&k[t * row..(t + 1) * row]));
        vf[dst..dst + row].copy_from_slice(&f(&v[t * row..(t + 1) * row]));
    }
    let exact = reference::decode(&Fp8::SPEC, &f(&q), &kf, &vf, &table);
    let err = reference::rel_l2(&got, &exact);
    assert!(err < 5e-2, "against the f32 rows: {err:e}");
    println!("fp8 (per-head scales) vs the f32 rows: relative L2 {err:.2e}");

    // The cache keeps the scales its data was written with: decode without
    // them uses them, and other scales are refused.
    let mut again = vec![0f32; out.len()];
    Fp8::decode(&cpu, &mut cache, 0, &[seq], &q, &mut again).unwrap();
    assert_eq!(again, out);
    let swapped = Params {
        kv_scales: Some(KvScales { k: &vs, v: &ks }),
        ..Params::default()
    };
    let e = Fp8::decode_ext(&cpu, &mut cache, &swapped, 0, &[seq], &q, &mut again).unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::Cache(CacheError::ScalesMismatch { layer: 0 })
        ),
        "{e}"
    );
    // Misshapen scales and a wrong source dtype are typed errors.
    let bad = Params {
        kv_scales: Some(KvScales {
            k: &ks[..1],
            v: &vs,
        }),
        ..Params::default()
    };
    let e = Fp8::decode_ext(&cpu, &mut cache, &bad, 0, &[seq], &q, &mut out).unwrap_err();
    assert!(e.to_string().contains("1 K scales"), "{e}");
    let slots = cache.append_tokens(seq, 1).unwrap();
    let half = vec![half::f16::ZERO; row];
    let e = cache
        .append_ext_with(&cpu, 0, scales, &slots, &half, &half)
        .unwrap_err();
    assert!(matches!(e, RuntimeError::DType { .. }), "{e}");
}

/// The same item on the launch path (the CPU driver running exactly the
/// gfx90a kernels): its kernels loaded once, one plan per step, per layer
/// an append and an attention launch, against the reference.
#[test]
fn the_attention_item_plans_once_per_step_on_the_launch_path() {
    use attnforge::runtime::driver::cpu::CpuDriver;
    let gpu = Gpu::new(CpuDriver::new(Arch::Gfx90a.target(), Mode::Checked));
    let stream = gpu.stream().unwrap();
    let kernels = Small::kernels(&gpu).unwrap();
    let mut cache = Small::new_cache_on_gpu::<_, f32>(&gpu, &stream, 2, 16).unwrap();
    let mut ws = Workspace::new(&gpu, &[Small::SPEC], WorkspaceLimits::new(2, 16, 16)).unwrap();
    let (row, q_row) = (2 * 16, 4 * 16);
    let vals = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0 - 0.5)
            .collect()
    };
    let f = |x: &[f32]| x.iter().map(|&e| e as f64).collect::<Vec<_>>();
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    // A prompt step (9 and 4 tokens), then a decode step.
    for (step, lens) in [[9usize, 4], [1, 1]].into_iter().enumerate() {
        let mut slots = Vec::new();
        for (s, n) in seqs.iter().zip(lens) {
            slots.extend(cache.append_tokens(*s, n).unwrap());
        }
        let q_lens = lens.map(|n| n as u32);
        let plan = if step == 0 {
            Small::plan_prefill(&mut cache, &mut ws, &stream, &seqs, &q_lens, &slots)
        } else {
            Small::plan_decode(&mut cache, &mut ws, &stream, &seqs, &slots, Split::Auto)
        }
        .unwrap();
        let rows = lens[0] + lens[1];
        for layer in 0..2 {
            let k = gpu
                .upload(&stream, &vals(rows * row, layer as usize))
                .unwrap();
            let v = gpu
                .upload(&stream, &vals(rows * row, 5 + layer as usize))
                .unwrap();
            cache
                .append_step(&kernels, &stream, &plan, layer, k.view(), v.view())
                .unwrap();
            let q_host = vals(rows * q_row, 9 + step);
            let q = gpu.upload(&stream, &q_host).unwrap();
            let mut out = gpu.alloc::<f32>(rows * q_row).unwrap();
            let p = LaunchParams::default();
            let (qv, ov) = (q.view(), out.view_mut());
            if step == 0 {
                cache
                    .prefill_step(&kernels, &stream, &plan, layer, &p, qv, ov)
                    .unwrap();
            } else {
                cache
                    .decode_step(&kernels, &stream, &plan, layer, &p, qv, ov)
                    .unwrap();
            }
            let got = out.read(&stream).unwrap();
            let table = cache.page_table(&seqs).unwrap();
            let (kh, vh) = cache.layer_to_host(layer).unwrap();
            let qo = [0, lens[0] as i32, rows as i32];
            let want = reference::prefill_with(
                &Small::SPEC,
                &reference::Variants::default(),
                &f(&q_host),
                &qo,
                &f(&kh),
                &f(&vh),
                &table,
            );
            let err = reference::rel_l2(&f(&got), &want);
            assert!(err < 1e-5, "step {step}, layer {layer}: {err:.1e}");
        }
    }
}
