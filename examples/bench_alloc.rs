//! Bench script: page allocator and KV cache bookkeeping.
//!
//! Run: `cargo run --release --example bench_alloc` (BENCHMARKS.md).
//! - allocate+free pairs per second: attnforge's PageAllocator beside a
//!   naive baseline written here (the `RwLock<HashMap>` design of older
//!   engines: a map of page states, a scan for a free page);
//! - `append_tokens` throughput: tokens per second, one token per call, over
//!   64 sequences with pages of 16 (a page allocated every 16th call).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::time::Instant;

use attnforge::runtime::{KvCache, PageAllocator};
use attnforge::{DType, KvLayoutSpec, KvScale, Order};

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

fn main() {
    let n = 10_000_000u32;
    let pages = 65_536;

    let mut a = PageAllocator::new(pages);
    // Keep half the pages in use so the lists are not trivially empty.
    let held = a.allocate_pages(pages as usize / 2).unwrap();
    let s = Instant::now();
    for _ in 0..n {
        let p = a.allocate_page().unwrap();
        a.release(black_box(p)).unwrap();
    }
    let ours = s.elapsed().as_secs_f64() / n as f64 * 1e9;
    black_box(&held);

    let b = Naive::new(pages);
    for _ in 0..pages / 2 {
        b.allocate();
    }
    let m = n / 10;
    let s = Instant::now();
    for _ in 0..m {
        let p = b.allocate().unwrap();
        assert!(b.release(black_box(p)));
    }
    let naive = s.elapsed().as_secs_f64() / m as f64 * 1e9;
    println!("allocate+free pair: attnforge {ours:.1} ns ({:.1} M pairs/s); naive RwLock<HashMap> {naive:.1} ns ({:.1} M pairs/s)",
        1e3 / ours, 1e3 / naive);

    let layout = KvLayoutSpec {
        page_size: 16,
        kv_heads: 8,
        head_dim: 128,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    let mut cache = KvCache::<u16>::new(layout, 1, 8192).unwrap();
    let seqs: Vec<u64> = (0..64).map(|_| cache.add_sequence()).collect();
    let steps = 1024;
    let s = Instant::now();
    for _ in 0..steps {
        for &q in &seqs {
            black_box(cache.append_tokens(q, 1).unwrap());
        }
    }
    let per = s.elapsed().as_secs_f64() / (steps * seqs.len()) as f64 * 1e9;
    println!(
        "append_tokens(seq, 1): {per:.0} ns per call ({:.1} M tokens/s)",
        1e3 / per
    );
}
