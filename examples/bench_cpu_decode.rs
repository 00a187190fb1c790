//! Bench script: decode attention on the CPU backend, in GB/s of K/V read,
//! beside this machine's memcpy bandwidth measured in the same run, and the
//! JIT compile time of every bundled kernel.
//!
//! Run: `cargo run --release --example bench_cpu_decode` (BENCHMARKS.md).
//! Shape: Llama-3-8B (32 query / 8 KV heads, head_dim 128, f16), 16
//! sequences of 2048 tokens, pages of 16 scattered over the arena
//! (`AF_SEQS` and `AF_LEN` change the count and the length).

use std::time::{Duration, Instant};

use attnforge::codegen::cpu::{compile, CpuOptions};
use attnforge::codegen::kernels::generate;
use attnforge::kernels::specs::Llama3;
use attnforge::runtime::cpu::{CpuDevice, Mode};
use attnforge::runtime::PageTable;
use attnforge::{Arch, Attention};
use half::f16;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let spec = Llama3::SPEC;
    let l = spec.kv;
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (seqs, len) = (env("AF_SEQS", 16), env("AF_LEN", 2048));
    let pages_per_seq = len / l.page_size as usize;
    let max_pages = seqs * pages_per_seq;
    // Scatter pages: a fixed permutation (multiplicative hash) of 0..max_pages.
    let ids: Vec<i32> = (0..max_pages)
        .map(|i| ((i * 7919) % max_pages) as i32)
        .collect();
    let elems = max_pages * l.page_elems() as usize;
    let k: Vec<f16> = (0..elems)
        .map(|i| f16::from_f32(((i % 251) as f32 - 125.0) / 125.0))
        .collect();
    let v: Vec<f16> = (0..elems)
        .map(|i| f16::from_f32(((i % 241) as f32 - 120.0) / 120.0))
        .collect();
    let table = PageTable::from_sequences(l.page_size, ids.chunks(pages_per_seq).map(|c| (c, len)));
    let q: Vec<f16> = (0..seqs * 32 * 128)
        .map(|i| f16::from_f32((i % 17) as f32 / 17.0))
        .collect();
    let mut out = vec![f16::ZERO; q.len()];
    let kv_bytes = 2 * elems * 2;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {threads} threads; K+V read per decode: {:.1} MiB",
        kv_bytes as f64 / (1 << 20) as f64
    );

    // memcpy of the same number of bytes, same run.
    let src = vec![1u8; kv_bytes];
    let mut dst = vec![0u8; kv_bytes];
    let mut t = Vec::new();
    for _ in 0..10 {
        let s = Instant::now();
        dst.copy_from_slice(&src);
        t.push(s.elapsed());
    }
    std::hint::black_box(&dst);
    let memcpy1 = kv_bytes as f64 / median(t).as_secs_f64() / 1e9;
    // And with every thread copying its share, as decode runs.
    let mut t = Vec::new();
    for _ in 0..10 {
        let s = Instant::now();
        let chunk = kv_bytes.div_ceil(threads);
        std::thread::scope(|sc| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                sc.spawn(move || d.copy_from_slice(s));
            }
        });
        t.push(s.elapsed());
    }
    std::hint::black_box(&dst);
    let memcpy = kv_bytes as f64 / median(t).as_secs_f64() / 1e9;
    println!("memcpy: {memcpy1:.2} GB/s on 1 thread, {memcpy:.2} GB/s on {threads} threads");

    let device = CpuDevice::new();
    for arch in [Arch::Gfx90a, Arch::Gfx1030, Arch::Host] {
        let target = arch.target();
        device
            .decode(&spec, target, Mode::Fast, &q, &k, &v, &table, &mut out)
            .expect("decode");
        let mut t = Vec::new();
        for _ in 0..5 {
            let s = Instant::now();
            device
                .decode(&spec, target, Mode::Fast, &q, &k, &v, &table, &mut out)
                .expect("decode");
            t.push(s.elapsed());
        }
        let d = median(t);
        let gbs = kv_bytes as f64 / d.as_secs_f64() / 1e9;
        println!(
            "decode {} (warp {}): {:.1} ms, {gbs:.2} GB/s of K/V = {:.0}% of {threads}-thread memcpy",
            arch,
            target.warp_size,
            d.as_secs_f64() * 1e3,
            100.0 * gbs / memcpy
        );
    }

    println!("\nJIT compile time per kernel (lower + optimise + machine code):");
    for b in attnforge::kernels::ALL {
        for arch in [Arch::Gfx90a, Arch::Gfx1030, Arch::Host] {
            let g = generate(&b.kernel, arch.target()).expect("generate");
            let c =
                compile(&g.kernel, &g.analysis, CpuOptions { checked: false }).expect("compile");
            println!(
                "  {:<18} {:<7} {:<8} {:>7.0} ms",
                b.name,
                b.kernel.kind().name(),
                arch.name(),
                c.compile_time().as_secs_f64() * 1e3
            );
        }
    }
}
