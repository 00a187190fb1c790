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
