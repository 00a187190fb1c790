//! Microbenchmarks (criterion): the launch path's host-side cost, through
//! the CPU driver with kernel execution excluded (a dry-run driver drops
//! queued work at `synchronize`, outside the timed region).
//!
//! Run: `cargo bench --bench launch` (BENCHMARKS.md, "launch path").
//! - `plan_decode`: one step's plan (page table, lengths, split decision,
//!   its one upload) for 32 sequences of 512 tokens;
//! - `decode_step`, plain and split-K, and `append_step`: one layer's
//!   launch after planning, queued;
//! - and, printed: the driver calls per layer, from the driver's trace,
//!   beside the host-slice path that plans, allocates, copies and waits per
//!   call.

use std::hint::black_box;
use std::time::{Duration, Instant};

use attnforge::runtime::cpu::Mode;
use attnforge::runtime::device::Device;
use attnforge::runtime::driver::cpu::{Call, CpuDriver};
use attnforge::runtime::launch::{Gpu, Kernels, LaunchParams, Workspace, WorkspaceLimits};
use attnforge::runtime::{KvCache, Split};
use attnforge::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use criterion::{criterion_group, criterion_main, Criterion};
use half::f16;

const BATCH: usize = 32;
const TOKENS: usize = 512;

fn spec() -> AttentionSpec {
    let kv = KvLayoutSpec {
        page_size: 16,
        kv_heads: 8,
        head_dim: 128,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    AttentionSpec {
        causal: true,
        ..AttentionSpec::new(kv, 32)
    }
}

fn count(calls: &[Call]) -> String {
    let n = |f: fn(&Call) -> bool| calls.iter().filter(|c| f(c)).count();
    format!(
        "{} calls: {} launch, {} allocate, {} free, {} copy, {} synchronize",
        calls.len(),
        n(|c| matches!(c, Call::Launch(..))),
        n(|c| matches!(c, Call::Allocate(_))),
        n(|c| matches!(c, Call::Free)),
        n(|c| c.is_copy()),
        n(|c| matches!(c, Call::Synchronize))
    )
}

fn launch_path(c: &mut Criterion) {
    let spec = spec();
    let gpu = Gpu::new(CpuDriver::new(Arch::Host.target(), Mode::Fast).recording());
    let stream = gpu.stream().unwrap();
    let kernels = Kernels::load(&gpu, &spec).unwrap();
    let pages = (BATCH * TOKENS / 16 + BATCH) as u32;
    let mut cache = KvCache::<f16, _>::new_on_gpu(&gpu, &stream, spec.kv, 1, pages).unwrap();
    let mut ws = Workspace::new(&gpu, &[spec], WorkspaceLimits::new(64, pages, 64)).unwrap();
    let seqs: Vec<u64> = (0..BATCH).map(|_| cache.add_sequence()).collect();
    let mut slots = Vec::new();
    for &s in &seqs {
        cache.append_tokens(s, TOKENS - 1).unwrap();
        slots.extend(cache.append_tokens(s, 1).unwrap());
    }
    let row = BATCH * 32 * 128;
    let q = gpu.alloc::<f16>(row).unwrap();
    let mut out = gpu.alloc::<f16>(row).unwrap();
    let kn = gpu.alloc::<f16>(BATCH * 8 * 128).unwrap();
    let vn = gpu.alloc::<f16>(BATCH * 8 * 128).unwrap();
    stream.synchronize().unwrap();
    gpu.driver().set_dry_run(true);
    let params = LaunchParams::default();

    // Driver calls per layer, from the trace.
    let mark = gpu.driver().calls();
    let plan = cache
        .plan_decode(&mut ws, &stream, &[spec], &seqs, &slots, Split::Off)
        .unwrap();
    println!(
        "plan, once per step: {}",
        count(&gpu.driver().trace_since(mark))
    );
    let mark = gpu.driver().calls();
    cache
        .append_step(&kernels, &stream, &plan, 0, kn.view(), vn.view())
        .unwrap();
    cache
        .decode_step(
            &kernels,
            &stream,
            &plan,
            0,
            &params,
            q.view(),
            out.view_mut(),
        )
        .unwrap();
    println!(
        "per layer, append + decode: {}",
        count(&gpu.driver().trace_since(mark))
    );
    let split = cache
        .plan_decode(
            &mut ws,
            &stream,
            &[spec],
            &seqs,
            &slots,
            Split::Fixed { chunk_tokens: 128 },
        )
        .unwrap();
    let mark = gpu.driver().calls();
    cache
        .append_step(&kernels, &stream, &split, 0, kn.view(), vn.view())
        .unwrap();
    cache
        .decode_step(
            &kernels,
            &stream,
            &split,
            0,
            &params,
            q.view(),
            out.view_mut(),
        )
        .unwrap();
    println!(
        "per layer, append + split-K decode: {}",
        count(&gpu.driver().trace_since(mark))
    );
    stream.synchronize().unwrap();
    // The host-slice path: everything per call (what every launch did
    // before the plan/run split).
    let table = cache.page_table(&seqs).unwrap();
    let (qh, mut oh) = (vec![f16::ZERO; row], vec![f16::ZERO; row]);
    let (kh, vh) = (
        vec![f16::ZERO; BATCH * 8 * 128],
        vec![f16::ZERO; BATCH * 8 * 128],
    );
    let range = cache.layer_range(0).unwrap();
    let mark = gpu.driver().calls();
    gpu.append_in::<f16, f16>(
        &spec.kv,
        None,
        &kh,
        &vh,
        &slots,
        cache.arena_mut(),
        range.clone(),
    )
    .unwrap();
    let p = Default::default();
    gpu.decode_in(&spec, &p, &qh, cache.arena(), range, &table, &mut oh)
        .unwrap();
    println!(
        "per layer, append + decode through the host-slice Device methods: {}",
        count(&gpu.driver().trace_since(mark))
    );

    // Millions of timed calls follow: record none of them.
    gpu.driver().set_recording(false);
    let mut group = c.benchmark_group("launch path (host side, CPU driver, kernels not run)");
    group.measurement_time(Duration::from_secs(3));
    // Each sample's queued work is dropped outside the timed region.
    let timed = |iters: u64, mut f: Box<dyn FnMut() + '_>| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let e = t.elapsed();
        stream.synchronize().unwrap();
        e
    };
    group.bench_function(format!("plan_decode, {BATCH} sequences of {TOKENS}"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                Box::new(|| {
                    let p = cache.plan_decode(&mut ws, &stream, &[spec], &seqs, &slots, Split::Off);
                    black_box(p.unwrap());
                }),
            )
        })
    });
    let plan = cache
        .plan_decode(&mut ws, &stream, &[spec], &seqs, &slots, Split::Off)
        .unwrap();
    group.bench_function("decode_step (one launch)", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                Box::new(|| {
                    let r = cache.decode_step(
                        &kernels,
                        &stream,
                        &plan,
                        0,
                        &params,
                        q.view(),
                        out.view_mut(),
                    );
                    black_box(r).unwrap();
                }),
            )
        })
    });
    group.bench_function("append_step (one launch)", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                Box::new(|| {
                    let r = cache.append_step(&kernels, &stream, &plan, 0, kn.view(), vn.view());
                    black_box(r).unwrap();
                }),
            )
        })
    });
    let split = cache
        .plan_decode(
            &mut ws,
            &stream,
            &[spec],
            &seqs,
            &slots,
            Split::Fixed { chunk_tokens: 128 },
        )
        .unwrap();
    group.bench_function("decode_step, split-K (two launches)", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                Box::new(|| {
                    let r = cache.decode_step(
                        &kernels,
                        &stream,
                        &split,
                        0,
                        &params,
                        q.view(),
                        out.view_mut(),
                    );
                    black_box(r).unwrap();
                }),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, launch_path);
criterion_main!(benches);
