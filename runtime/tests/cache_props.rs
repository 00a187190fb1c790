//! Property and stress tests of the KV cache over random operation sequences.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use attnforge_codegen::{DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::{CacheError, KvCache, SeqId};
use proptest::prelude::*;

fn new_cache(page_size: u32, max_pages: u32, window: Option<u32>) -> KvCache<f32> {
    let l = KvLayoutSpec {
        page_size,
        kv_heads: 1,
        head_dim: 8,
        dtype: DType::F32,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    KvCache::new(l, 1, max_pages)
        .unwrap()
        .with_sliding_window(window)
        .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Add,
    Append(usize, usize),
    Fork(usize),
    Remove(usize),
    Complete(usize),
    Cleanup,
    Evict(usize),
    /// Every operation on an id no sequence has.
    Unknown,
}

fn op() -> impl Strategy<Value = Op> {
    // Extreme counts too: usize::MAX tokens, evicting usize::MAX sequences.
    let huge = || prop_oneof![Just(usize::MAX), Just(usize::MAX / 2), Just(1usize << 40)];
    prop_oneof![
        2 => Just(Op::Add),
        5 => (0..6usize, 0..7usize).prop_map(|(s, n)| Op::Append(s, n)),
        1 => (0..6usize, huge()).prop_map(|(s, n)| Op::Append(s, n)),
        1 => huge().prop_map(Op::Evict),
        1 => Just(Op::Unknown),
        1 => (0..6usize).prop_map(Op::Fork),
        1 => (0..6usize).prop_map(Op::Remove),
        1 => (0..6usize).prop_map(Op::Complete),
        1 => Just(Op::Cleanup),
        1 => (0..3usize).prop_map(Op::Evict),
    ]
}

proptest! {
    // Seeded: the same 10,000 cases every run.
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xcac4e),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn cache_keeps_its_invariants(
        page_size in prop_oneof![Just(1u32), Just(2), Just(4)],
        max_pages in 1u32..10,
        window in prop_oneof![Just(None), (1u32..9).prop_map(Some)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut c = new_cache(page_size, max_pages, window);
        // Sequences of one fork family may share pages; no others may.
        let mut family: HashMap<SeqId, usize> = HashMap::new();
        let mut families = 0;
        // The naive model of the sequences: id -> (length, completed, last
        // access), the clock ticking where the cache's rules say it does.
        let mut model: BTreeMap<SeqId, (usize, bool, u64)> = BTreeMap::new();
        let mut clock = 0u64;
        let mut next_id: SeqId = 0;
        for (i, o) in ops.iter().enumerate() {
            let live: Vec<SeqId> = c.sequences().collect();
            let pick = |k: usize| live.get(k % live.len().max(1)).copied();
            let before = format!("{c:?}");
            let ok = match *o {
                Op::Add => {
                    let s = c.add_sequence();
                    prop_assert_eq!(s, next_id);
                    next_id += 1;
                    clock += 1;
                    model.insert(s, (0, false, clock));
                    family.insert(s, families);
                    families += 1;
                    true
                }
                Op::Append(k, n) => match pick(k) {
                    Some(s) => {
                        let len = c.seq_len(s).unwrap();
                        match c.append_tokens(s, n) {
                            Ok(slots) => {
                                prop_assert_eq!(slots.len(), n);
                                prop_assert_eq!(c.seq_len(s).unwrap(), len + n);
                                clock += 1;
                                let m = model.get_mut(&s).unwrap();
                                m.0 += n;
                                m.2 = clock;
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    None => true,
                },
                Op::Fork(k) => match pick(k) {
                    Some(s) => {
                        let child = c.fork(s).unwrap();
                        prop_assert_eq!(child, next_id);
                        next_id += 1;
                        clock += 1;
                        let len = model[&s].0;
                        model.insert(child, (len, false, clock));
                        family.insert(child, family[&s]);
                        true
                    }
                    None => true,
                },
                Op::Remove(k) => {
                    if let Some(s) = pick(k) {
                        c.remove(s).unwrap();
                        model.remove(&s);
                    }
                    true
                }
                Op::Complete(k) => {
                    if let Some(s) = pick(k) {
                        c.mark_completed(s).unwrap();
                        model.get_mut(&s).unwrap().1 = true;
                    }
                    true
                }
                Op::Cleanup => {
                    let done = c.cleanup_completed().unwrap();
                    let want: Vec<SeqId> =
                        model.iter().filter(|(_, m)| m.1).map(|(&s, _)| s).collect();
                    prop_assert_eq!(&done, &want, "step {}: cleanup", i);
                    model.retain(|_, m| !m.1);
                    true
                }
                Op::Evict(n) => {
                    let gone = c.evict_lru_sequences(n).unwrap();
                    // The model's n least recently used, oldest first.
                    let mut by_age: Vec<(u64, SeqId)> =
                        model.iter().map(|(&s, m)| (m.2, s)).collect();
                    by_age.sort_unstable();
                    let want: Vec<SeqId> = by_age.iter().take(n).map(|&(_, s)| s).collect();
                    let got: Vec<SeqId> = gone.iter().map(|(s, _)| *s).collect();
                    prop_assert_eq!(&got, &want, "step {}: evicted", i);
                    for s in want {
                        model.remove(&s);
                    }
                    true
                }
                Op::Unknown => {
                    let id = SeqId::MAX;
                    let unknown = |e: CacheError| e == CacheError::UnknownSequence(id);
                    prop_assert!(unknown(c.append_tokens(id, 1).unwrap_err()));
                    prop_assert!(unknown(c.fork(id).unwrap_err()));
                    prop_assert!(unknown(c.remove(id).unwrap_err()));
                    prop_assert!(unknown(c.mark_completed(id).unwrap_err()));
                    prop_assert!(unknown(c.touch(id).unwrap_err()));
                    prop_assert!(unknown(c.page_table(&[id]).unwrap_err()));
                    false
                }
            };
            if !ok {
                prop_assert_eq!(format!("{c:?}"), before, "step {}: a failed {:?} changed the cache", i, o);
            }
            prop_assert_eq!(c.check_invariants(), Ok(()), "step {}: {:?}", i, o);
            // The cache's sequences and lengths are the model's.
            let lens: Vec<(SeqId, usize)> =
                c.sequences().map(|s| (s, c.seq_len(s).unwrap())).collect();
            let want: Vec<(SeqId, usize)> = model.iter().map(|(&s, m)| (s, m.0)).collect();
            prop_assert_eq!(lens, want, "step {}: {:?}", i, o);
            let mut owner: HashMap<u32, usize> = HashMap::new();
            for s in c.sequences() {
                for &p in c.seq_pages(s).unwrap() {
                    let f = family[&s];
                    let prev = *owner.entry(p).or_insert(f);
                    prop_assert_eq!(prev, f, "step {}: page {} held by two unrelated sequences", i, p);
                }
            }
        }
        let all: Vec<SeqId> = c.sequences().collect();
        for s in all {
            c.remove(s).unwrap();
        }
        prop_assert_eq!(c.allocator().free_pages(), max_pages as usize);
        prop_assert_eq!(c.check_invariants(), Ok(()));
    }
}

#[test]
fn shared_across_threads_the_cache_stays_consistent() {
    let cache = Arc::new(Mutex::new(new_cache(4, 64, None)));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let cache = cache.clone();
            s.spawn(move || {
                let mut rng = 0x9e37_79b9u64 ^ t;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine: Vec<SeqId> = Vec::new();
                for _ in 0..3000 {
                    let mut c = cache.lock().unwrap();
                    match next() % 5 {
                        0 => mine.push(c.add_sequence()),
                        1 | 2 if !mine.is_empty() => {
                            let s = mine[next() as usize % mine.len()];
                            let _ = c.append_tokens(s, (next() % 6) as usize);
                        }
                        3 if !mine.is_empty() => {
                            let s = mine[next() as usize % mine.len()];
                            mine.push(c.fork(s).unwrap());
                        }
                        _ if !mine.is_empty() => {
                            let s = mine.swap_remove(next() as usize % mine.len());
                            c.remove(s).unwrap();
                        }
                        _ => {}
                    }
                    c.check_invariants().unwrap();
                }
                let mut c = cache.lock().unwrap();
                for s in mine {
                    c.remove(s).unwrap();
                }
            });
        }
    });
    let c = cache.lock().unwrap();
    assert_eq!(c.sequences().count(), 0);
    assert_eq!(c.allocator().free_pages(), 64);
    c.check_invariants().unwrap();
}
