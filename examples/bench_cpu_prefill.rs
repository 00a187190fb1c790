//! Bench script: prefill and split-K decode on the CPU backend (host target).
//!
//! Run: `cargo run --release --example bench_cpu_prefill` (BENCHMARKS.md).
//! Shape: Llama-3-8B (32 query / 8 KV heads, head_dim 128, f16, causal).
//!
//! 1. A 1024-token prompt's attention: the prefill kernel against the decode
//!    kernel over one row per prompt token (what the serving simulations did
//!    before prefill existed), in attention TFLOP/s (4·d per visible pair)
//!    and as a share of the f32 FMA peak measured in the same run.
//! 2. Decode of one 16384-token sequence (8 blocks of work for 2 cores and
//!    more): the plain kernel against split-K with the planner's split and
//!    with a fixed split.
//! 3. The same decode over an fp8 e4m3 cache with per-head scales (f16
//!    queries): half the K/V bytes.

use attnforge::runtime::bench::{fma_peak, median_time, median_times_alternating};

use attnforge::kernels::specs::Llama3;
use attnforge::runtime::cpu::{CpuDevice, Mode};
use attnforge::runtime::{plan_decode, KvScales, PageTable, Params, Split};
use attnforge::{Arch, Attention, AttentionSpec, DType, KvLayoutSpec, KvScale, F8E4M3};
use half::f16;

/// One sequence of `len` tokens on scattered pages, with deterministic K/V.
fn arena(l: &KvLayoutSpec, len: usize) -> (Vec<f16>, Vec<f16>, Vec<i32>) {
    let pages = len.div_ceil(l.page_size as usize);
    let ids: Vec<i32> = (0..pages).map(|i| ((i * 7919) % pages) as i32).collect();
    let elems = pages * l.page_elems() as usize;
    let k = (0..elems)
        .map(|i| f16::from_f32(((i % 251) as f32 - 125.0) / 125.0))
        .collect();
    let v = (0..elems)
        .map(|i| f16::from_f32(((i % 241) as f32 - 120.0) / 120.0))
        .collect();
    (k, v, ids)
}

fn main() {
    let spec = Llama3::SPEC;
    let l = spec.kv;
    let device = CpuDevice::new();
    let target = Arch::Host.target();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {threads} threads; Llama-3-8B shape, f16, host target");
    let peak = fma_peak();
    match peak {
        Some(p) => println!(
            "f32 FMA peak, measured ({}, {} threads): {:.0} GFLOP/s",
            p.isa, p.threads, p.gflops
        ),
        None => println!("f32 FMA peak: not measured on this CPU"),
    }
    let of_peak = |flops_per_s: f64| {
        peak.map_or(String::new(), |p| {
            format!(
                ", {:.0}% of the FMA peak",
                flops_per_s / 1e9 / p.gflops * 100.0
            )
        })
    };

    // 1. Prefill of a 1024-token prompt.
    let n = 1024usize;
    let (k, v, ids) = arena(&l, n);
    let row = spec.q_heads as usize * l.head_dim as usize;
    let q: Vec<f16> = (0..n * row)
        .map(|i| f16::from_f32((i % 17) as f32 / 17.0 - 0.5))
        .collect();
    let (mut out_p, mut out_d) = (vec![f16::ZERO; q.len()], vec![f16::ZERO; q.len()]);
    let table = PageTable::from_sequences(l.page_size, [(&ids[..], n)]);
    let params = Params::default();
    let flops = 4.0 * l.head_dim as f64 * spec.q_heads as f64 * (n * (n + 1) / 2) as f64;
    let ps = l.page_size as usize;
    let rows = PageTable::from_sequences(
        l.page_size,
        (0..n).map(|i| (&ids[..(i + 1).div_ceil(ps)], i + 1)),
    );
    // The two alternated, so that a drifting machine slows both alike.
    let mut prefill = || {
        device
            .prefill(
                &spec,
                target,
                Mode::Fast,
                &params,
                &q,
                &[0, n as i32],
                &k,
                &v,
                &table,
                &mut out_p,
            )
            .unwrap()
    };
    let mut decode = || {
        device
            .decode(&spec, target, Mode::Fast, &q, &k, &v, &rows, &mut out_d)
            .unwrap()
    };
    let t = median_times_alternating(7, &mut [&mut prefill, &mut decode]);
    for (name, t) in [
        (format!("prefill kernel, {n}-token prompt"), t[0]),
        ("decode kernel, one row per prompt token".to_string(), t[1]),
    ] {
        println!(
            "{name}: {:.1} ms, {:.3} TFLOP/s{}",
            t.as_secs_f64() * 1e3,
            flops / t.as_secs_f64() / 1e12,
            of_peak(flops / t.as_secs_f64())
        );
    }
    println!(
        "prefill / decode row by row: {:.2}x faster (medians of 7 alternated runs)",
        t[1].as_secs_f64() / t[0].as_secs_f64()
    );

    // 2. Decode of one long sequence.
    let n = std::env::var("AF_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16384usize);
    let (k, v, ids) = arena(&l, n);
    let q: Vec<f16> = (0..row)
        .map(|i| f16::from_f32((i % 17) as f32 / 17.0 - 0.5))
        .collect();
    let mut out = vec![f16::ZERO; q.len()];
    let table = PageTable::from_sequences(l.page_size, [(&ids[..], n)]);
    let bytes = (k.len() + v.len()) * 2;
    for (name, split) in [
        ("plain decode", Split::Off),
        ("split-K, planner", Split::Auto),
        (
            "split-K, fixed 1024-token chunks",
            Split::Fixed { chunk_tokens: 1024 },
        ),
    ] {
        let params = Params {
            split,
            ..Params::default()
        };
        let plan = plan_decode(&spec, Arch::Host.target(), [n], split, threads as u32)
            .expect("a valid split");
        let t = median_time(5, || {
            device
                .decode_ext(
                    &spec,
                    target,
                    Mode::Fast,
                    &params,
                    &q,
                    &k,
                    &v,
                    &table,
                    &mut out,
                )
                .unwrap()
        });
        println!(
            "{name} ({} chunk(s) of {} tokens), {n} tokens: {:.2} ms, {:.2} GB/s of K/V",
            plan.splits,
            plan.chunk_tokens,
            t.as_secs_f64() * 1e3,
            bytes as f64 / t.as_secs_f64() / 1e9
        );
    }

    // 3. The same decode over an fp8 cache (the f16 values, quantized).
    let fp8 = AttentionSpec {
        kv: KvLayoutSpec {
            dtype: DType::F8E4M3,
            scale: KvScale::PerHead,
            ..l
        },
        q_dtype: Some(DType::F16),
        ..spec
    };
    let scale = vec![1.0f32 / 64.0; l.kv_heads as usize];
    let quantize = |x: &[f16]| -> Vec<F8E4M3> {
        x.iter()
            .map(|e| F8E4M3::from_f32(e.to_f32() * 64.0))
            .collect()
    };
    let (k8, v8) = (quantize(&k), quantize(&v));
    let params = Params {
        split: Split::Off,
        kv_scales: Some(KvScales {
            k: &scale,
            v: &scale,
        }),
        ..Params::default()
    };
    let t = median_time(5, || {
        device
            .decode_ext(
                &fp8,
                target,
                Mode::Fast,
                &params,
                &q,
                &k8,
                &v8,
                &table,
                &mut out,
            )
            .unwrap()
    });
    println!(
        "plain decode, fp8 e4m3 cache (per-head scales), {n} tokens: {:.2} ms, {:.2} GB/s of K/V",
        t.as_secs_f64() * 1e3,
        (k8.len() + v8.len()) as f64 / t.as_secs_f64() / 1e9
    );
}
