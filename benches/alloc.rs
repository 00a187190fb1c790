//! Microbenchmarks (criterion): page allocator and KV cache bookkeeping.
//!
//! Run: `cargo bench --bench alloc` (BENCHMARKS.md).
//! - an allocate + free pair: attnforge's `PageAllocator` beside a naive
//!   baseline written here (the `RwLock<HashMap>` design of older engines:
//!   a map of page states, a locked vector of free pages), both with half
//!   of 65,536 pages held;
//! - `append_tokens`, one token per call, round-robin over 64 sequences with
//!   pages of 16 (a page allocated every 16th call per sequence).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use attnforge::runtime::{KvCache, PageAllocator};
use attnforge::{DType, KvLayoutSpec, KvScale, Order};
use criterion::{criterion_group, criterion_main, Criterion};

/// The naive design: page states in a locked hash map, free pages in a
/// locked vector.
struct Naive {
    state: RwLock<HashMap<u32, u32>>, // page -> refs
    free: RwLock<Vec<u32>>,
}

impl Naive {
    fn new(n: u32) -> Naive {
        Naive {
            state: RwLock::new((0..n).map(|p| (p, 0)).collect()),
            free: RwLock::new((0..n).rev().collect()),
        }
    }
    fn allocate(&self) -> Option<u32> {
        let p = self.free.write().ok()?.pop()?;
        self.state.write().ok()?.insert(p, 1);
        Some(p)
    }
    fn release(&self, p: u32) -> bool {
        let mut st = self.state.write().unwrap();
        match st.get_mut(&p) {
            Some(r) if *r > 0 => {
                *r -= 1;
                if *r == 0 {
                    self.free.write().unwrap().push(p);
                }
                true
            }
            _ => false,
        }
    }
}

const PAGES: u32 = 65_536;

fn allocate_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate+free pair");
    let mut a = PageAllocator::new(PAGES);
    // Half the pages in use, so the lists are not trivially empty.
    let held = a.allocate_pages(PAGES as usize / 2).unwrap();
    g.bench_function("attnforge PageAllocator", |b| {
        b.iter(|| {
            let p = a.allocate_page().unwrap();
            a.release(black_box(p)).unwrap();
        })
    });
    black_box(&held);
    let n = Naive::new(PAGES);
    for _ in 0..PAGES / 2 {
        n.allocate();
    }
    g.bench_function("naive RwLock<HashMap>", |b| {
        b.iter(|| {
            let p = n.allocate().unwrap();
            assert!(n.release(black_box(p)));
        })
    });
    g.finish();
}

fn append_tokens(c: &mut Criterion) {
    let layout = KvLayoutSpec {
        page_size: 16,
        kv_heads: 8,
        head_dim: 128,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    // 64 sequences × 1024 tokens fill 4096 pages; a fresh cache (untimed)
    // every 1024 rounds keeps every timed call a real append.
    let (seqs, rounds) = (64usize, 1024usize);
    c.bench_function("append_tokens(seq, 1), 64 sequences", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let mut cache = KvCache::<u16>::new(layout, 1, 4096).unwrap();
                let ids: Vec<u64> = (0..seqs).map(|_| cache.add_sequence()).collect();
                let calls = left.min(seqs * rounds);
                let s = Instant::now();
                for i in 0..calls {
                    black_box(cache.append_tokens(ids[i % seqs], 1).unwrap());
                }
                timed += s.elapsed();
                left -= calls;
            }
            timed
        })
    });
}

criterion_group!(benches, allocate_free, append_tokens);
criterion_main!(benches);
