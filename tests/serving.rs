//! The per-model examples' serving simulation, small: requests through a
//! cache too small for all of them, so the engine must preempt, with every
//! decode step and every prompt's causal prefill checked against the
//! reference.
use attnforge::prelude::*;
use clap::Parser;
use half::f16;

#[path = "../examples/common/mod.rs"]
mod common;

#[kv_layout(page_size = 8, kv_heads = 2, head_dim = 32, dtype = f16)]
pub struct SimKv;

#[attention(kv = SimKv, q_heads = 6, causal, sliding_window = 40)]
pub struct SimLocal;

#[attention(kv = SimKv, q_heads = 6, causal)]
pub struct SimGlobal;

/// Small defaults; `extra` holds (flag, value) pairs that replace them.
fn args(extra: &[(&str, &str)]) -> common::Args {
    let mut pairs = vec![
        ("--requests", "10"),
        ("--max-batch", "4"),
        ("--max-pages", "24"),
        ("--prompt-min", "8"),
        ("--prompt-max", "60"),
        ("--output-min", "4"),
        ("--output-max", "40"),
        ("--check-every", "1"),
        ("--seed", "3"),
    ];
    for (k, v) in extra {
        pairs.retain(|(d, _)| d != k);
        pairs.push((k, v));
    }
    let flat = pairs.iter().flat_map(|(k, v)| [*k, *v]);
    common::Args::parse_from(std::iter::once("sim").chain(flat))
}

#[test]
fn a_full_cache_preempts_explicitly_and_every_step_matches_the_reference() {
    let specs = [SimLocal::SPEC, SimGlobal::SPEC];
    let s = common::run::<f16>("sim", 2, &specs, &args(&[])).unwrap();
    assert!(
        s.preemptions > 0,
        "the cache is small enough to force preemption: {s:?}"
    );
    // Every layer of every decode step, and of every admitted prompt's
    // causal prefill, was checked.
    assert!(s.checks > 2 * s.steps, "{s:?}");
    assert!(s.prefilled >= 10 * 8, "{s:?}");
    assert!(s.worst <= 2e-3, "{s:?}");
    // Every request's output was decoded at least once.
    assert!(s.decoded >= 10 * 4, "{s:?}");
}

#[test]
fn a_request_larger_than_the_cache_is_refused_up_front() {
    let e = common::run::<f16>("sim", 1, &[SimGlobal::SPEC], &args(&[("--max-pages", "4")]))
        .unwrap_err();
    assert!(e.to_string().contains("raise --max-pages"), "{e}");
}

#[test]
fn the_hip_backend_says_why_it_is_unavailable() {
    match common::run::<f16>("sim", 1, &[SimGlobal::SPEC], &args(&[("--backend", "hip")])) {
        Err(e) => assert!(
            e.to_string().contains("HIP backend is not available"),
            "{e}"
        ),
        Ok(_) => eprintln!("a HIP GPU is present: the simulation ran on it"),
    }
}

#[test]
fn a_nan_check_is_the_worst_error() {
    let mut s = common::Stats::default();
    s.record(1e-4);
    s.record(f64::NAN);
    s.record(1e-3);
    assert!(s.worst.is_nan() && s.checks == 3, "{s:?}");
}
