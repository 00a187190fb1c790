//! The call trace of a step on the CPU driver: after planning, a layer's
//! decode is one launch (two with split-K), an append one, with no
//! allocation, copy or synchronization; the plan is one upload whatever
//! the number of layers. The predicate is shown to catch a path that
//! allocates and copies per launch.

use attnforge_codegen::kernels::{symbol, KernelSpec};
use attnforge_runtime::device::Device;
use attnforge_runtime::{reference, Split};

use super::*;

fn launch(spec: KernelSpec) -> String {
    symbol(&spec)
}

#[test]
fn after_planning_a_step_only_launches_and_plans_with_one_upload() {
    let mut s = setup(WorkspaceLimits::new(4, MAX_PAGES, 32));
    let seqs = [s.cache.add_sequence(), s.cache.add_sequence()];
    let mut slots = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        slots.extend(s.cache.append_tokens(seq, 6 + 3 * i).unwrap());
    }
    // The caller's own activations, uploaded before the step.
    let k = buffer(&s, &values(15 * ROW, 3));
    let v = buffer(&s, &values(15 * ROW, 4));
    let plan = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[spec()], &seqs, &[6, 9], &slots)
        .unwrap();
    for layer in 0..LAYERS {
        s.cache
            .append_step(&s.kernels, &s.stream, &plan, layer, k.view(), v.view())
            .unwrap();
    }
    s.stream.synchronize().unwrap();
    let q_host = values(2 * Q_ROW, 5);
    let q = buffer(&s, &q_host);
    let mut out = s.gpu.alloc::<f16>(2 * Q_ROW).unwrap();
    let (kd, vd) = (
        buffer(&s, &values(2 * ROW, 6)),
        buffer(&s, &values(2 * ROW, 7)),
    );

    for (split, launches_per_decode) in [(Split::Off, 1), (Split::Fixed { chunk_tokens: 4 }, 2)] {
        let mut slots = Vec::new();
        for &seq in &seqs {
            slots.extend(s.cache.append_tokens(seq, 1).unwrap());
        }
        let driver = s.gpu.driver();
        let mark = driver.calls();
        let plan = s
            .cache
            .plan_decode(&mut s.ws, &s.stream, &[spec()], &seqs, &slots, split)
            .unwrap();
        let planned = driver.trace_since(mark);
        assert!(
            matches!(planned[..], [Call::Upload(_)]),
            "a plan is one upload: {planned:?}"
        );
        for layer in 0..LAYERS {
            let mark = driver.calls();
            s.cache
                .append_step(&s.kernels, &s.stream, &plan, layer, kd.view(), vd.view())
                .unwrap();
            let appended = driver.trace_since(mark);
            assert_eq!(
                appended,
                [Call::Launch(
                    launch(KernelSpec::Append(spec().kv)),
                    [2, 1, 1]
                )]
            );
            let mark = driver.calls();
            s.cache
                .decode_step(
                    &s.kernels,
                    &s.stream,
                    &plan,
                    layer,
                    &no_params(),
                    q.view(),
                    out.view_mut(),
                )
                .unwrap();
            let decoded = driver.trace_since(mark);
            launches_only(&decoded).unwrap();
            assert_eq!(decoded.len(), launches_per_decode, "{split:?}: {decoded:?}");
            let want = if launches_per_decode == 1 {
                vec![launch(KernelSpec::Decode(spec()))]
            } else {
                vec![
                    launch(KernelSpec::DecodeSplit(spec())),
                    launch(KernelSpec::DecodeMerge(spec())),
                ]
            };
            let got: Vec<String> = decoded
                .iter()
                .map(|c| match c {
                    Call::Launch(name, _) => name.clone(),
                    c => format!("{c:?}"),
                })
                .collect();
            assert_eq!(got, want);
        }
        // The queued work computes what the reference does (the last layer).
        let host = out.read(&s.stream).unwrap();
        let err = decode_error(&mut s.cache, LAYERS - 1, &seqs, &q_host, &host);
        assert!(
            err <= reference::tolerance(DType::F16),
            "{split:?}: {err:.1e}"
        );
    }
}

/// The same predicate rejects a path that allocates, copies and waits per
/// launch (the host-slice convenience, planned per call, as the old HIP
/// launch path was): the trace test can fail.
#[test]
fn the_trace_check_catches_a_launch_that_allocates() {
    let s = setup(WorkspaceLimits::new(1, 1, 1));
    let mut cache = KvCache::<f16, _>::new_on(&s.gpu, spec().kv, 1, 4).unwrap();
    let seq = cache.add_sequence();
    let slots = cache.append_tokens(seq, 3).unwrap();
    cache
        .append_with(&s.gpu, 0, &slots, &values(3 * ROW, 8), &values(3 * ROW, 9))
        .unwrap();
    let table = cache.page_table(&[seq]).unwrap();
    let q = values(Q_ROW, 10);
    let mut out = vec![f16::ZERO; Q_ROW];
    let mark = s.gpu.driver().calls();
    let range = cache.layer_range(0).unwrap();
    s.gpu
        .decode_in(
            &spec(),
            &Default::default(),
            &q,
            cache.arena(),
            range,
            &table,
            &mut out,
        )
        .unwrap();
    let calls = s.gpu.driver().trace_since(mark);
    let err = launches_only(&calls).unwrap_err();
    assert!(err.contains("Allocate"), "{err}");
    assert!(calls.iter().any(|c| matches!(c, Call::Synchronize)));
    // And it computed the right thing.
    let (k, v) = cache.layer_to_host(0).unwrap();
    let want = reference::decode(&spec(), &f64s(&q), &f64s(&k), &f64s(&v), &table);
    assert!(reference::rel_l2(&f64s(&out), &want) <= reference::tolerance(DType::F16));
}

use attnforge_codegen::DType;
