//! Timing helpers the bench scripts and `attnforge bench` share: medians
//! of repeated runs, and memcpy bandwidth measured in the same process, so
//! that a kernel's GB/s is always reported beside what the machine's memory
//! does at that moment.

use std::time::{Duration, Instant};

/// The median of `runs` timed calls of `f`, after one untimed warm-up call
/// (which also JIT-compiles what it launches).
pub fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut t: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

/// The medians of `runs` timed calls of each of `fs`, the calls alternated
/// (f0, f1, ..., f0, f1, ...) after one untimed warm-up call each: on a
/// machine whose speed drifts (a shared VM), each ratio compares calls made
/// under the same conditions.
pub fn median_times_alternating(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
    for f in fs.iter_mut() {
        f();
    }
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); fs.len()];
    for _ in 0..runs.max(1) {
        for (f, times) in fs.iter_mut().zip(&mut t) {
            let s = Instant::now();
            f();
            times.push(s.elapsed());
        }
    }
    t.into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect()
}

/// memcpy bandwidth over a buffer of a given size.
#[derive(Clone, Copy, Debug)]
pub struct Memcpy {
    /// GB/s with one thread copying.
    pub one_thread: f64,
    /// GB/s with every thread copying its share, as kernels run.
    pub all_threads: f64,
    /// The threads of `all_threads`.
    pub threads: usize,
}

/// Copies `bytes` bytes ten times on one thread and ten times split over
/// every available thread; medians, in GB/s.
pub fn memcpy(bytes: usize) -> Memcpy {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let src = vec![1u8; bytes.max(1)];
    let mut dst = vec![0u8; bytes.max(1)];
    let one = median_time(10, || dst.copy_from_slice(&src));
    std::hint::black_box(&dst);
    let chunk = src.len().div_ceil(threads);
    let all = median_time(10, || {
        std::thread::scope(|sc| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                sc.spawn(move || d.copy_from_slice(s));
            }
        })
    });
    std::hint::black_box(&dst);
    let gbs = |d: Duration| src.len() as f64 / d.as_secs_f64().max(1e-12) / 1e9;
    Memcpy {
        one_thread: gbs(one),
        all_threads: gbs(all),
        threads,
    }
}

/// Measured f32 fused multiply-add throughput of this CPU, every thread
/// busy: the ceiling a compute-bound kernel (prefill) is compared with.
#[derive(Clone, Copy, Debug)]
pub struct FmaPeak {
    /// GFLOP/s (an FMA counts as two flops).
    pub gflops: f64,
    /// The vectors it was measured with: `"avx512"` or `"avx2"`.
    pub isa: &'static str,
    /// The threads that ran.
    pub threads: usize,
}

/// Runs independent chains of vector FMAs on every thread (the widest
/// vectors the CPU has: AVX-512, else AVX2 with FMA) and returns the
/// median of five runs of about 100 ms. `None` on a CPU without either
/// (or not x86-64).
pub fn fma_peak() -> Option<FmaPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (isa, lanes, run): (_, u64, fn(u64) -> f32) =
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F was detected on this CPU just above.
                ("avx512", 16, |n| unsafe { fma::chains_512(n) })
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: AVX2 and FMA were detected on this CPU just above.
                ("avx2", 8, |n| unsafe { fma::chains_256(n) })
            } else {
                return None;
            };
        // About 100 ms per thread at 4 GHz and two FMA pipes.
        let iters = 400_000_000 / (fma::CHAINS as u64 * lanes);
        let t = median_time(5, || {
            std::thread::scope(|sc| {
                for _ in 0..threads {
                    sc.spawn(move || std::hint::black_box(run(iters)));
                }
            })
        });
        let flops = 2.0 * (fma::CHAINS as u64 * lanes * iters * threads as u64) as f64;
        Some(FmaPeak {
            gflops: flops / t.as_secs_f64() / 1e9,
            isa,
            threads,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The FMA chains of [`fma_peak`]: enough independent accumulators to
/// cover the FMA latency on every pipe (4 cycles × 2 pipes on current
/// x86 cores), each `x = x * a + b`.
#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub fn chains_512(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn chains_256(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
        // SAFETY: `lanes` holds exactly the 8 floats the store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}
