//! A multi-layer, multi-step serving loop through the CPU driver in
//! checked mode: a ragged prefill, decodes with and without split-K, a
//! fork with copy-on-write, a sliding window releasing pages; every layer
//! of every step against the reference.

use attnforge_codegen::DType;
use attnforge_codegen::{AttentionSpec, KvLayoutSpec, KvScale};
use attnforge_runtime::{reference, KvCache, SeqId, Split};

use super::*;

#[test]
fn a_serving_loop_on_the_launch_path_matches_the_reference_at_every_step() {
    let mut s = setup(WorkspaceLimits::new(4, MAX_PAGES, 32));
    let tol = reference::tolerance(DType::F16);
    let mut k_buf = s.gpu.alloc::<f16>(32 * ROW).unwrap();
    let mut v_buf = s.gpu.alloc::<f16>(32 * ROW).unwrap();
    let mut q_buf = s.gpu.alloc::<f16>(32 * Q_ROW).unwrap();
    let mut out_buf = s.gpu.alloc::<f16>(32 * Q_ROW).unwrap();
    let mut seed = 1;
    let mut next = |n: usize| {
        seed += 1;
        values(n, seed)
    };

    // A ragged prefill of two prompts, one plan for both layers.
    let (a, b) = (s.cache.add_sequence(), s.cache.add_sequence());
    let mut slots = s.cache.append_tokens(a, 9).unwrap();
    slots.extend(s.cache.append_tokens(b, 5).unwrap());
    let plan = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[spec()], &[a, b], &[9, 5], &slots)
        .unwrap();
    let (n, nq) = (14 * ROW, 14 * Q_ROW);
    for layer in 0..LAYERS {
        k_buf
            .view_mut()
            .slice(0..n)
            .unwrap()
            .upload(&s.stream, &next(n))
            .unwrap();
        v_buf
            .view_mut()
            .slice(0..n)
            .unwrap()
            .upload(&s.stream, &next(n))
            .unwrap();
        let (kn, vn) = (
            k_buf.view().slice(0..n).unwrap(),
            v_buf.view().slice(0..n).unwrap(),
        );
        s.cache
            .append_step(&s.kernels, &s.stream, &plan, layer, kn, vn)
            .unwrap();
        let q = next(nq);
        q_buf
            .view_mut()
            .slice(0..nq)
            .unwrap()
            .upload(&s.stream, &q)
            .unwrap();
        let (qv, ov) = (
            q_buf.view().slice(0..nq).unwrap(),
            out_buf.view_mut().slice(0..nq).unwrap(),
        );
        s.cache
            .prefill_step(&s.kernels, &s.stream, &plan, layer, &no_params(), qv, ov)
            .unwrap();
        let mut out = vec![f16::ZERO; nq];
        out_buf
            .view()
            .slice(0..nq)
            .unwrap()
            .read_into(&s.stream, &mut out)
            .unwrap();
        let table = s.cache.page_table(&[a, b]).unwrap();
        let (k, v) = s.cache.layer_to_host(layer).unwrap();
        let want = reference::prefill_with(
            &spec(),
            &reference::Variants::default(),
            &f64s(&q),
            &[0, 9, 14],
            &f64s(&k),
            &f64s(&v),
            &table,
        );
        let err = reference::rel_l2(&f64s(&out), &want);
        assert!(err <= tol, "prefill, layer {layer}: {err:.1e}");
    }

    // Decode steps; a fork of `a` after the second shares its pages and
    // copies the partly filled last one when it appends.
    let mut batch: Vec<SeqId> = vec![a, b];
    let mut split_steps = 0;
    for step in 0..8 {
        if step == 2 {
            batch.push(s.cache.fork(a).unwrap());
        }
        let mut slots = Vec::new();
        for &seq in &batch {
            slots.extend(s.cache.append_tokens(seq, 1).unwrap());
        }
        let split = if step % 2 == 1 {
            Split::Fixed { chunk_tokens: 4 }
        } else {
            Split::Auto
        };
        let plan = s
            .cache
            .plan_decode(&mut s.ws, &s.stream, &[spec()], &batch, &slots, split)
            .unwrap();
        if plan.splits(&spec()).unwrap() > 1 {
            split_steps += 1;
        }
        let (n, nq) = (batch.len() * ROW, batch.len() * Q_ROW);
        for layer in 0..LAYERS {
            k_buf
                .view_mut()
                .slice(0..n)
                .unwrap()
                .upload(&s.stream, &next(n))
                .unwrap();
            v_buf
                .view_mut()
                .slice(0..n)
                .unwrap()
                .upload(&s.stream, &next(n))
                .unwrap();
            let (kn, vn) = (
                k_buf.view().slice(0..n).unwrap(),
                v_buf.view().slice(0..n).unwrap(),
            );
            s.cache
                .append_step(&s.kernels, &s.stream, &plan, layer, kn, vn)
                .unwrap();
            let q = next(nq);
            q_buf
                .view_mut()
                .slice(0..nq)
                .unwrap()
                .upload(&s.stream, &q)
                .unwrap();
            let (qv, ov) = (
                q_buf.view().slice(0..nq).unwrap(),
                out_buf.view_mut().slice(0..nq).unwrap(),
            );
            s.cache
                .decode_step(&s.kernels, &s.stream, &plan, layer, &no_params(), qv, ov)
                .unwrap();
            let mut out = vec![f16::ZERO; nq];
            out_buf
                .view()
                .slice(0..nq)
                .unwrap()
                .read_into(&s.stream, &mut out)
                .unwrap();
            let err = decode_error(&mut s.cache, layer, &batch, &q, &out);
            assert!(err <= tol, "decode step {step}, layer {layer}: {err:.1e}");
        }
    }
    assert_eq!(split_steps, 4, "every Fixed step splits, no Auto one does");
    // `a` holds 17 tokens; its first page left the 12-token window.
    assert_eq!(s.cache.seq_len(a).unwrap(), 17);
    assert!(s.cache.seq_pages(a).unwrap().len() < 17usize.div_ceil(4));
    s.cache.check_invariants().unwrap();
}

/// An fp8 cache on the launch path: its per-head scales uploaded once, when
/// set, and passed by the cache to the append (f32 rows quantized) and the
/// prefill; a layer without scales is refused before anything is queued.
#[test]
fn an_fp8_cache_keeps_its_scales_on_the_device() {
    use attnforge_codegen::F8E4M3;
    use attnforge_runtime::check::dequantize;
    use attnforge_runtime::{KvScales, RuntimeError};
    let kv = KvLayoutSpec {
        dtype: DType::F8E4M3,
        scale: KvScale::PerHead,
        ..spec().kv
    };
    let spec = AttentionSpec {
        kv,
        q_dtype: Some(DType::F16),
        sliding_window: None,
        ..spec()
    };
    let gpu = gpu(0);
    let stream = gpu.stream().unwrap();
    let kernels = Kernels::load(&gpu, &spec).unwrap();
    let mut cache = KvCache::<F8E4M3, _>::new_on_gpu(&gpu, &stream, kv, 2, 8).unwrap();
    let mut ws = Workspace::new(&gpu, &[spec], WorkspaceLimits::new(1, 8, 8)).unwrap();
    let seq = cache.add_sequence();
    let slots = cache.append_tokens(seq, 7).unwrap();
    let plan = cache
        .plan_prefill(&mut ws, &stream, &[spec], &[seq], &[7], &slots)
        .unwrap();
    let rows: Vec<f32> = values(7 * ROW, 11)
        .iter()
        .map(|x| 3.0 * x.to_f32())
        .collect();
    let k_new = gpu.upload(&stream, &rows).unwrap();
    let v_new = gpu
        .upload(&stream, &rows[..].iter().rev().copied().collect::<Vec<_>>())
        .unwrap();
    // Layer 1 has no scales yet: refused, nothing queued.
    cache
        .set_kv_scales(
            0,
            KvScales {
                k: &[1.5, 2.0],
                v: &[1.25, 1.75],
            },
        )
        .unwrap();
    stream.synchronize().unwrap();
    let queued = gpu.driver().queued();
    let e = cache
        .append_step(&kernels, &stream, &plan, 1, k_new.view(), v_new.view())
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::Param {
                param: "kv_scales",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(gpu.driver().queued(), queued);
    cache
        .append_step(&kernels, &stream, &plan, 0, k_new.view(), v_new.view())
        .unwrap();
    let q_host = values(7 * Q_ROW, 12);
    let q = gpu.upload(&stream, &q_host).unwrap();
    let mut out = gpu.alloc::<f16>(7 * Q_ROW).unwrap();
    cache
        .prefill_step(
            &kernels,
            &stream,
            &plan,
            0,
            &no_params(),
            q.view(),
            out.view_mut(),
        )
        .unwrap();
    let got = out.read(&stream).unwrap();
    let table = cache.page_table(&[seq]).unwrap();
    let (k, v) = cache.layer_to_host(0).unwrap();
    let want = reference::prefill_with(
        &spec,
        &reference::Variants::default(),
        &f64s(&q_host),
        &[0, 7],
        &dequantize(&kv, &k, Some(&[1.5, 2.0])),
        &dequantize(&kv, &v, Some(&[1.25, 1.75])),
        &table,
    );
    let err = reference::rel_l2(&f64s(&got), &want);
    assert!(err <= reference::tolerance(DType::F16), "{err:.1e}");
    // The append quantized x / scale (K head 0's first row, element 0).
    assert_eq!(k[slots[0] as usize * ROW], F8E4M3::from_f32(rows[0] / 1.5));
}
