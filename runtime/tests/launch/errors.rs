//! Every typed error of the launch path, checked before anything is
//! queued (nothing queued, nothing written), and the asynchrony rules:
//! memory dropped while queued work uses it is freed only after that work,
//! memory busy on one stream is refused on another, a dropped stream waits.

use attnforge_runtime::{RuntimeError, Split};

use super::*;

/// A decode-ready setup: two sequences with a token each appended.
fn ready() -> (Setup, [SeqId; 2], Vec<i64>) {
    let mut s = setup(WorkspaceLimits::new(2, 8, 16));
    let seqs = [s.cache.add_sequence(), s.cache.add_sequence()];
    let mut slots = Vec::new();
    for &seq in &seqs {
        slots.extend(s.cache.append_tokens(seq, 5).unwrap());
    }
    (s, seqs, slots)
}

/// Runs `f`; checks that it failed with what `want` accepts and that it
/// queued nothing.
fn refused(
    s: &Setup,
    want: impl Fn(&RuntimeError) -> bool,
    f: impl FnOnce() -> Result<(), RuntimeError>,
) {
    let (mark, queued) = (s.gpu.driver().calls(), s.gpu.driver().queued());
    let e = f().expect_err("refused");
    assert!(want(&e), "unexpected error: {e}");
    assert_eq!(s.gpu.driver().queued(), queued, "{e}: something was queued");
    let calls = s.gpu.driver().trace_since(mark);
    assert!(calls.is_empty(), "{e}: calls made: {calls:?}");
}

#[test]
fn every_launch_error_is_typed_and_queues_nothing() {
    let (mut s, seqs, slots) = ready();
    let plan = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[spec()], &seqs, &[5, 5], &slots)
        .unwrap();
    let q = buffer(&s, &values(10 * Q_ROW, 1));
    let sentinel = vec![f16::from_f32(7.0); 10 * Q_ROW];
    let mut out = buffer(&s, &sentinel);
    let p = no_params();
    let (c, k, st) = (&s.cache, &s.kernels, &s.stream);
    let shape = |e: &RuntimeError| matches!(e, RuntimeError::Shape(_));
    let stale = |e: &RuntimeError| matches!(e, RuntimeError::StalePlan(_));

    // A view too small, and a view of the wrong element type.
    let short = q.view().slice(0..10 * Q_ROW - 1).unwrap();
    refused(&s, shape, || {
        c.prefill_step(k, st, &plan, 0, &p, short, out.view_mut())
    });
    let f32s = s.gpu.upload(st, &vec![0f32; 10 * Q_ROW]).unwrap();
    let mut f32_out = s.gpu.alloc::<f32>(10 * Q_ROW).unwrap();
    st.synchronize().unwrap();
    refused(
        &s,
        |e| {
            matches!(
                e,
                RuntimeError::ViewDType {
                    given: DType::F32,
                    ..
                }
            )
        },
        || c.prefill_step(k, st, &plan, 0, &p, f32s.view(), f32_out.view_mut()),
    );
    // A variant buffer the spec does not use.
    let sinks = s.gpu.upload(st, &[0f32; 4]).unwrap();
    st.synchronize().unwrap();
    let with_sinks = LaunchParams {
        sinks: Some(sinks.view()),
        ..no_params()
    };
    refused(
        &s,
        |e| matches!(e, RuntimeError::Param { param: "sinks", .. }),
        || c.prefill_step(k, st, &plan, 0, &with_sinks, q.view(), out.view_mut()),
    );
    // A prefill plan run as a decode; a layer the cache does not have.
    refused(&s, stale, || {
        c.decode_step(k, st, &plan, 0, &p, q.view(), out.view_mut())
    });
    refused(
        &s,
        |e| matches!(e, RuntimeError::Cache(_)),
        || c.prefill_step(k, st, &plan, LAYERS, &p, q.view(), out.view_mut()),
    );

    // A plan for another spec (same layout, no window).
    let other = AttentionSpec {
        sliding_window: None,
        ..spec()
    };
    let plan_other = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[other], &seqs, &[5, 5], &slots)
        .unwrap();
    let (c, k, st) = (&s.cache, &s.kernels, &s.stream);
    refused(&s, stale, || {
        c.prefill_step(k, st, &plan_other, 0, &p, q.view(), out.view_mut())
    });
    // The first plan is stale: its workspace was planned again.
    refused(&s, stale, || {
        c.prefill_step(k, st, &plan, 0, &p, q.view(), out.view_mut())
    });
    // A plan made before the cache changed.
    s.cache.append_tokens(seqs[0], 1).unwrap();
    let (c, k, st) = (&s.cache, &s.kernels, &s.stream);
    refused(&s, stale, || {
        c.prefill_step(k, st, &plan_other, 0, &p, q.view(), out.view_mut())
    });
    // Nothing was written.
    assert_eq!(out.read(&s.stream).unwrap(), sentinel);
}

#[test]
fn a_step_that_does_not_fit_its_workspace_names_what_is_short() {
    let (mut s, seqs, slots) = ready();
    let short = |what: &'static str| move |e: &RuntimeError| matches!(e, RuntimeError::Workspace { what: w, .. } if *w == what);
    let specs = [spec()];
    for (limits, what) in [
        (WorkspaceLimits::new(1, 8, 16), "batch"),
        (WorkspaceLimits::new(2, 3, 16), "pages"),
        (WorkspaceLimits::new(2, 8, 1), "new tokens"),
        (
            WorkspaceLimits {
                max_splits: 1,
                ..WorkspaceLimits::new(2, 8, 16)
            },
            "splits",
        ),
    ] {
        let mut ws = Workspace::new(&s.gpu, &specs, limits).unwrap();
        let split = Split::Fixed { chunk_tokens: 2 };
        let (mark, queued) = (s.gpu.driver().calls(), s.gpu.driver().queued());
        let e = s
            .cache
            .plan_decode(&mut ws, &s.stream, &specs, &seqs, &slots, split)
            .unwrap_err();
        assert!(short(what)(&e), "{what}: {e}");
        assert!(e.to_string().contains(what), "{e}");
        assert_eq!(s.gpu.driver().queued(), queued);
        assert!(s.gpu.driver().trace_since(mark).is_empty());
    }
    // The same step fits the setup's workspace.
    let plan = s
        .cache
        .plan_decode(&mut s.ws, &s.stream, &specs, &seqs, &slots, Split::Auto);
    plan.unwrap();
}

#[test]
fn objects_of_another_device_are_refused() {
    let (mut s, seqs, slots) = ready();
    let other = gpu(1);
    let stream1 = other.stream().unwrap();
    let wrong = |e: &RuntimeError| {
        matches!(
            e,
            RuntimeError::WrongDevice {
                found: 0,
                expected: 1,
                ..
            }
        )
    };
    let e = s
        .cache
        .plan_decode(&mut s.ws, &stream1, &[spec()], &seqs, &slots, Split::Auto)
        .unwrap_err();
    assert!(wrong(&e), "{e}");
    // A view of device 1 in a launch on device 0.
    let plan = s
        .cache
        .plan_decode(&mut s.ws, &s.stream, &[spec()], &seqs, &slots, Split::Auto)
        .unwrap();
    let q1 = other.upload(&stream1, &values(2 * Q_ROW, 2)).unwrap();
    let mut out = s.gpu.alloc::<f16>(2 * Q_ROW).unwrap();
    let (c, k, st) = (&s.cache, &s.kernels, &s.stream);
    refused(
        &s,
        |e| {
            matches!(
                e,
                RuntimeError::WrongDevice {
                    found: 1,
                    expected: 0,
                    ..
                }
            )
        },
        || c.decode_step(k, st, &plan, 0, &no_params(), q1.view(), out.view_mut()),
    );
}

#[test]
fn queued_work_keeps_its_memory_and_other_streams_wait_for_it() {
    let (mut s, seqs, slots) = ready();
    // Give the sequences their K/V, then plan a decode step.
    let plan = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[spec()], &seqs, &[5, 5], &slots)
        .unwrap();
    let (kn, vn) = (
        buffer(&s, &values(10 * ROW, 3)),
        buffer(&s, &values(10 * ROW, 4)),
    );
    s.cache
        .append_step(&s.kernels, &s.stream, &plan, 0, kn.view(), vn.view())
        .unwrap();
    let plan = s
        .cache
        .plan_decode(&mut s.ws, &s.stream, &[spec()], &seqs, &[], Split::Auto)
        .unwrap();
    s.stream.synchronize().unwrap();
    let q_host = values(2 * Q_ROW, 5);
    let q = buffer(&s, &q_host);
    let mut out = s.gpu.alloc::<f16>(2 * Q_ROW).unwrap();
    s.cache
        .decode_step(
            &s.kernels,
            &s.stream,
            &plan,
            0,
            &no_params(),
            q.view(),
            out.view_mut(),
        )
        .unwrap();

    // Another stream may not touch q or out while the decode is queued.
    let other = s.gpu.stream().unwrap();
    let busy = |e: &RuntimeError| matches!(e, RuntimeError::Busy { .. });
    let e = out.read(&other).unwrap_err();
    assert!(busy(&e), "{e}");
    // Dropping q frees nothing while the decode is queued ...
    let (live, _) = s.gpu.driver().allocated();
    let mark = s.gpu.driver().calls();
    drop(q);
    assert_eq!(s.gpu.driver().allocated().0, live);
    assert!(!s.gpu.driver().trace_since(mark).contains(&Call::Free));
    // ... and once the stream has run it, q is freed and out is right.
    let host = out.read(&s.stream).unwrap();
    assert_eq!(s.gpu.driver().allocated().0, live - 1);
    let err = decode_error(&mut s.cache, 0, &seqs, &q_host, &host);
    assert!(err <= reference::tolerance(DType::F16), "{err:.1e}");
    // Free again: the other stream may use it now.
    out.read(&other).unwrap();

    // A stream dropped with work queued runs it first.
    let q = buffer(&s, &q_host);
    let lone = s.gpu.stream().unwrap();
    let mut out2 = s.gpu.alloc::<f16>(2 * Q_ROW).unwrap();
    s.cache
        .decode_step(
            &s.kernels,
            &lone,
            &plan,
            0,
            &no_params(),
            q.view(),
            out2.view_mut(),
        )
        .unwrap();
    assert!(s.gpu.driver().queued() > 0);
    drop(lone);
    assert_eq!(out2.read(&s.stream).unwrap(), host);
}

use attnforge_codegen::DType;
use attnforge_runtime::reference;

/// A view made from a raw device pointer (memory an engine's own allocator
/// owns) launches like a tracked one and gives the same bits.
#[test]
fn a_raw_pointer_view_launches_like_a_tracked_one() {
    use attnforge_runtime::launch::{View, ViewMut};
    let (mut s, seqs, slots) = ready();
    let plan = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[spec()], &seqs, &[5, 5], &slots)
        .unwrap();
    let (kn, vn) = (
        buffer(&s, &values(10 * ROW, 3)),
        buffer(&s, &values(10 * ROW, 4)),
    );
    s.cache
        .append_step(&s.kernels, &s.stream, &plan, 0, kn.view(), vn.view())
        .unwrap();
    let q = buffer(&s, &values(10 * Q_ROW, 5));
    let mut tracked = s.gpu.alloc::<f16>(10 * Q_ROW).unwrap();
    let p = no_params();
    let (c, k, st) = (&s.cache, &s.kernels, &s.stream);
    c.prefill_step(k, st, &plan, 0, &p, q.view(), tracked.view_mut())
        .unwrap();
    let want = tracked.read(st).unwrap();
    // The "engine's own" memory: the addresses of buffers kept alive here.
    let own_q = buffer(&s, &values(10 * Q_ROW, 5));
    let own_out = s.gpu.alloc::<f16>(10 * Q_ROW).unwrap();
    // SAFETY: both addresses are live allocations of this device holding
    // 10 · Q_ROW f16s, kept alive (and untouched elsewhere) until the
    // stream is synchronized below.
    let (rq, ro) = unsafe {
        (
            View::<f16, _>::from_raw(&s.gpu, own_q.view().ptr(), 10 * Q_ROW),
            ViewMut::<f16, _>::from_raw(&s.gpu, own_out.view().ptr(), 10 * Q_ROW),
        )
    };
    c.prefill_step(k, st, &plan, 0, &p, rq, ro).unwrap();
    st.synchronize().unwrap();
    assert_eq!(own_out.read(st).unwrap(), want);
    // A raw view too short is refused like any other.
    // SAFETY: as above (a shorter range of the same allocation).
    let short = unsafe { View::<f16, _>::from_raw(&s.gpu, own_q.view().ptr(), 10 * Q_ROW - 1) };
    // SAFETY: as above.
    let ro = unsafe { ViewMut::<f16, _>::from_raw(&s.gpu, own_out.view().ptr(), 10 * Q_ROW) };
    let e = c.prefill_step(k, st, &plan, 0, &p, short, ro).unwrap_err();
    assert!(matches!(e, RuntimeError::Shape(_)), "{e}");
}

/// Memory of another driver that poses as the same device is in no
/// allocation of this one: the launch fails when its stream runs it, and
/// the stream stays failed (work queued behind it never passes as done).
#[test]
fn a_foreign_address_fails_its_stream_and_the_failure_sticks() {
    let (mut s, seqs, slots) = ready();
    let plan = s
        .cache
        .plan_prefill(&mut s.ws, &s.stream, &[spec()], &seqs, &[5, 5], &slots)
        .unwrap();
    s.stream.synchronize().unwrap();
    let other = gpu(0);
    let foreign = other
        .upload(&other.default_stream(), &values(10 * Q_ROW, 1))
        .unwrap();
    other.default_stream().synchronize().unwrap();
    let mut out = s.gpu.alloc::<f16>(10 * Q_ROW).unwrap();
    let (c, k, st) = (&s.cache, &s.kernels, &s.stream);
    c.prefill_step(
        k,
        st,
        &plan,
        0,
        &no_params(),
        foreign.view(),
        out.view_mut(),
    )
    .unwrap();
    let e = st.synchronize().unwrap_err();
    assert!(e.to_string().contains("in no allocation"), "{e}");
    let e = out.read(st).unwrap_err();
    assert!(e.to_string().contains("earlier failure"), "{e}");
}
