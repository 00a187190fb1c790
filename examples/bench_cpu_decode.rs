//! Bench script: decode attention on the CPU backend, in GB/s of K/V read,
//! beside this machine's memcpy bandwidth measured in the same run (JIT
//! compile times: `bench_jit`).
//!
//! Run: `cargo run --release --example bench_cpu_decode` (BENCHMARKS.md).
//! Shape: Llama-3-8B (32 query / 8 KV heads, head_dim 128, f16), 16
//! sequences of 2048 tokens, pages of 16 scattered over the arena
//! (`AF_SEQS` and `AF_LEN` change the count and the length; `AF_CACHED=1`
//! puts every sequence on the same 32 pages, `AF_HOST_ONLY=1` leaves the
//! GPU-shaped kernels out, `AF_ORDER=hnd` stores the pages head-major,
//! `AF_LAYERS=n` gives each of n layers its own pages and times a decode
//! of every layer in turn, so that a small batch's K/V is not read from
//! cache as it would not be in a model; the figures are per layer).

use attnforge::kernels::specs::Llama3;
use attnforge::runtime::bench::median_time;
use attnforge::runtime::cpu::{CpuDevice, Mode};
use attnforge::runtime::{KvScales, PageTable, Params};
use attnforge::{Arch, Attention, AttentionSpec, DType, KvLayoutSpec, KvScale, F8E4M3};
use half::{bf16, f16};

fn main() {
    let mut spec = Llama3::SPEC;
    // `AF_ORDER=hnd`: the same shape with head-major pages.
    if std::env::var("AF_ORDER").is_ok_and(|v| v.eq_ignore_ascii_case("hnd")) {
        spec.kv.order = attnforge::Order::Hnd;
    }
    let l = spec.kv;
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (seqs, len) = (env("AF_SEQS", 16), env("AF_LEN", 2048));
    // `AF_CACHED=1`: every sequence on the same 32 pages (2 MiB of K and
    // V), so the K/V stay in cache: the kernel's compute-bound rate.
    let cached = env("AF_CACHED", 0) == 1;
    let layers = env("AF_LAYERS", 1).max(1);
    let pages_per_seq = len / l.page_size as usize;
    let max_pages = seqs * pages_per_seq;
    // Scatter pages: a fixed permutation (multiplicative hash) of 0..max_pages.
    let ids: Vec<i32> = (0..max_pages)
        .map(|i| match cached {
            true => (i % 32) as i32,
            false => ((i * 7919) % max_pages) as i32,
        })
        .collect();
    let elems = layers * max_pages * l.page_elems() as usize;
    let k: Vec<f16> = (0..elems)
        .map(|i| f16::from_f32(((i % 251) as f32 - 125.0) / 125.0))
        .collect();
    let v: Vec<f16> = (0..elems)
        .map(|i| f16::from_f32(((i % 241) as f32 - 120.0) / 120.0))
        .collect();
    // Layer i's pages: the same permutation, i · max_pages further on.
    let tables: Vec<PageTable> = (0..layers)
        .map(|layer| {
            let ids: Vec<i32> = ids.iter().map(|p| p + (layer * max_pages) as i32).collect();
            PageTable::from_sequences(l.page_size, ids.chunks(pages_per_seq).map(|c| (c, len)))
        })
        .collect();
    // The median time of a decode of every layer, per layer.
    let per_layer = |f: &mut dyn FnMut(&PageTable)| {
        median_time(5, || tables.iter().for_each(&mut *f)) / layers as u32
    };
    let q: Vec<f16> = (0..seqs * 32 * 128)
        .map(|i| f16::from_f32((i % 17) as f32 / 17.0))
        .collect();
    let mut out = vec![f16::ZERO; q.len()];
    let kv_bytes = 2 * elems * 2 / layers;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {threads} threads; K+V read per decode: {:.1} MiB, {layers} layer(s)",
        kv_bytes as f64 / (1 << 20) as f64
    );

    // memcpy of the same number of bytes (every layer's), same run.
    let m = attnforge::runtime::bench::memcpy(kv_bytes * layers);
    let (memcpy1, memcpy) = (m.one_thread, m.all_threads);
    println!("memcpy: {memcpy1:.2} GB/s on 1 thread, {memcpy:.2} GB/s on {threads} threads");

    let device = CpuDevice::new();
    // `AF_HOST_ONLY=1` leaves the GPU-shaped kernels out (they take seconds).
    let host_only = std::env::var("AF_HOST_ONLY").is_ok_and(|v| v == "1");
    for arch in [Arch::Gfx90a, Arch::Gfx1030, Arch::Host] {
        if host_only && arch != Arch::Host {
            continue;
        }
        let target = arch.target();
        let d = per_layer(&mut |table| {
            device
                .decode(&spec, target, Mode::Fast, &q, &k, &v, table, &mut out)
                .expect("decode")
        });
        let gbs = kv_bytes as f64 / d.as_secs_f64() / 1e9;
        println!(
            "decode {} (warp {}): {:.1} ms, {gbs:.2} GB/s of K/V = {:.0}% of {threads}-thread memcpy",
            arch,
            target.warp_size,
            d.as_secs_f64() * 1e3,
            100.0 * gbs / memcpy
        );
    }

    // The host kernel over the same values stored as bf16 and as fp8 e4m3
    // (per-head scales; half the bytes), same run as the memcpy above.
    let target = Arch::Host.target();
    let bf = AttentionSpec {
        kv: KvLayoutSpec {
            dtype: DType::BF16,
            ..l
        },
        ..spec
    };
    let (kb, vb): (Vec<bf16>, Vec<bf16>) = (
        k.iter().map(|x| bf16::from_f32(x.to_f32())).collect(),
        v.iter().map(|x| bf16::from_f32(x.to_f32())).collect(),
    );
    let qb: Vec<bf16> = q.iter().map(|x| bf16::from_f32(x.to_f32())).collect();
    let mut outb = vec![bf16::ZERO; qb.len()];
    let d = per_layer(&mut |table| {
        device
            .decode(&bf, target, Mode::Fast, &qb, &kb, &vb, table, &mut outb)
            .expect("decode")
    });
    let gbs = kv_bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "decode host, bf16 cache: {:.1} ms, {gbs:.2} GB/s of K/V = {:.0}% of {threads}-thread memcpy",
        d.as_secs_f64() * 1e3,
        100.0 * gbs / memcpy
    );
    let fp8 = AttentionSpec {
        kv: KvLayoutSpec {
            dtype: DType::F8E4M3,
            scale: KvScale::PerHead,
            ..l
        },
        q_dtype: Some(DType::F16),
        ..spec
    };
    let quantize = |x: &[f16]| -> Vec<F8E4M3> {
        x.iter()
            .map(|e| F8E4M3::from_f32(e.to_f32() * 64.0))
            .collect()
    };
    let (k8, v8) = (quantize(&k), quantize(&v));
    let scale = vec![1.0f32 / 64.0; l.kv_heads as usize];
    // Planned as the f16 and bf16 decodes above are (`Split::Auto`).
    let params = Params {
        kv_scales: Some(KvScales {
            k: &scale,
            v: &scale,
        }),
        ..Params::default()
    };
    let d8 = per_layer(&mut |table| {
        device
            .decode_ext(
                &fp8,
                target,
                Mode::Fast,
                &params,
                &q,
                &k8,
                &v8,
                table,
                &mut out,
            )
            .expect("decode")
    });
    println!(
        "decode host, fp8 e4m3 cache (per-head scales): {:.1} ms, {:.2} GB/s of K/V ({} MiB, half of f16's)",
        d8.as_secs_f64() * 1e3,
        (k8.len() + v8.len()) as f64 / layers as f64 / d8.as_secs_f64() / 1e9,
        ((k8.len() + v8.len()) / layers) >> 20
    );
}
