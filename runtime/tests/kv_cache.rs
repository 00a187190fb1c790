//! The KV cache's behaviours, under the names they had in the seed, and
//! the newer ones (fork with copy-on-write, sliding windows, tables).

use attnforge_codegen::{DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::{AllocError, CacheError, KvCache};

fn layout(page_size: u32) -> KvLayoutSpec {
    KvLayoutSpec {
        page_size,
        kv_heads: 2,
        head_dim: 8,
        dtype: DType::F32,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    }
}

fn cache(page_size: u32, max_pages: u32) -> KvCache<f32> {
    KvCache::new(layout(page_size), 2, max_pages).unwrap()
}

fn capacity_exceeded(e: CacheError) -> bool {
    matches!(
        e,
        CacheError::Alloc {
            source: AllocError::CapacityExceeded { .. },
            ..
        }
    )
}

#[test]
fn test_kv_cache_empty_initial_state() {
    let c = cache(16, 8);
    assert_eq!(c.sequences().count(), 0);
    assert_eq!(c.allocator().free_pages(), 8);
    assert_eq!(c.allocator().used_pages(), 0);
    assert_eq!(c.allocator().evictable_pages(), 0);
    let (k, v) = c.layer(1).unwrap();
    assert_eq!(k.len(), 8 * 16 * 2 * 8);
    assert_eq!(v.len(), k.len());
    c.check_invariants().unwrap();
}

#[test]
fn test_kv_cache_single_token() {
    let mut c = cache(16, 8);
    let s = c.add_sequence();
    let slots = c.append_tokens(s, 1).unwrap();
    let page = c.seq_pages(s).unwrap()[0];
    assert_eq!(slots, vec![page as i64 * 16]);
    assert_eq!(c.seq_len(s).unwrap(), 1);
    assert_eq!(c.allocator().used_pages(), 1);
    let t = c.page_table(&[s]).unwrap();
    assert_eq!(
        (t.indptr, t.indices, t.last_page_len),
        (vec![0, 1], vec![page as i32], vec![1])
    );
    c.check_invariants().unwrap();
}

#[test]
fn test_kv_cache_eviction_at_capacity() {
    // max_pages 3: three allocations succeed, the fourth is CapacityExceeded
    // and nothing is evicted to make room.
    let mut c = cache(4, 3);
    let seqs: Vec<_> = (0..4).map(|_| c.add_sequence()).collect();
    for &s in &seqs[..3] {
        c.append_tokens(s, 4).unwrap();
    }
    let err = c.append_tokens(seqs[3], 1).unwrap_err();
    assert!(capacity_exceeded(err.clone()), "{err}");
    assert!(
        err.to_string().contains("1 page(s) requested, 0 free of 3"),
        "{err}"
    );
    for &s in &seqs[..3] {
        assert_eq!(c.seq_len(s).unwrap(), 4);
        assert_eq!(c.seq_pages(s).unwrap().len(), 1);
    }
    assert_eq!(c.seq_len(seqs[3]).unwrap(), 0);
    c.check_invariants().unwrap();
}

#[test]
fn test_kv_cache_cross_sequence_isolation() {
    let mut c = cache(4, 8);
    let (a, b) = (c.add_sequence(), c.add_sequence());
    let sa = c.append_tokens(a, 6).unwrap();
    let sb = c.append_tokens(b, 5).unwrap();
    assert!(
        sa.iter().all(|x| !sb.contains(x)),
        "slots overlap: {sa:?} {sb:?}"
    );
    let pa = c.seq_pages(a).unwrap().to_vec();
    assert!(pa.iter().all(|p| !c.seq_pages(b).unwrap().contains(p)));
    c.remove(a).unwrap();
    assert_eq!(c.seq_len(b).unwrap(), 5);
    assert_eq!(c.seq_pages(b).unwrap().len(), 2);
    assert_eq!(c.seq_len(a), Err(CacheError::UnknownSequence(a)));
    c.check_invariants().unwrap();
}

#[test]
fn test_kv_cache_sequence_reuse() {
    let mut c = cache(4, 4);
    let a = c.add_sequence();
    c.append_tokens(a, 8).unwrap();
    let freed = c.seq_pages(a).unwrap().to_vec();
    assert_eq!(c.remove(a).unwrap(), 2);
    // A new sequence reuses the freed pages, the most recently freed first
    // (pages are released tail first, so the head comes back first).
    let b = c.add_sequence();
    c.append_tokens(b, 8).unwrap();
    assert_eq!(c.seq_pages(b).unwrap(), &freed[..]);
    assert_ne!(a, b, "ids are never reused");
    c.check_invariants().unwrap();
}

#[test]
fn test_token_appending() {
    // Page size 4, max_pages 1: the fifth token fails.
    let mut c = cache(4, 1);
    let s = c.add_sequence();
    for i in 0..4 {
        assert_eq!(c.append_tokens(s, 1).unwrap(), vec![i]);
    }
    let err = c.append_tokens(s, 1).unwrap_err();
    assert!(capacity_exceeded(err));
    assert_eq!(c.seq_len(s).unwrap(), 4);
    c.check_invariants().unwrap();
}

#[test]
fn test_capacity_limit() {
    // max_pages 2: the third allocation fails and no sequence was evicted.
    let mut c = cache(4, 2);
    let (a, b, d) = (c.add_sequence(), c.add_sequence(), c.add_sequence());
    c.append_tokens(a, 1).unwrap();
    c.append_tokens(b, 1).unwrap();
    assert!(capacity_exceeded(c.append_tokens(d, 1).unwrap_err()));
    assert_eq!(c.sequences().collect::<Vec<_>>(), vec![a, b, d]);
    assert_eq!((c.seq_len(a).unwrap(), c.seq_len(b).unwrap()), (1, 1));
    // An append that needs two pages when one is free fails whole.
    c.remove(b).unwrap();
    assert!(capacity_exceeded(c.append_tokens(a, 8).unwrap_err()));
    assert_eq!(c.seq_len(a).unwrap(), 1);
    assert_eq!(c.allocator().free_pages(), 1);
    c.check_invariants().unwrap();
}

#[test]
fn fork_shares_full_pages_and_copies_the_partial_one_on_write() {
    let mut c = cache(4, 8);
    let a = c.add_sequence();
    c.append_tokens(a, 6).unwrap();
    // Mark the data: token 5 (page 1, offset 1), layer 1, every element.
    let pa = c.seq_pages(a).unwrap().to_vec();
    {
        let (k, _) = c.layer_mut(1).unwrap();
        let at = (pa[1] as usize * 4 + 1) * 16;
        k[at..at + 16].fill(7.0);
    }
    let b = c.fork(a).unwrap();
    assert_eq!(c.seq_pages(b).unwrap(), &pa[..]);
    assert_eq!(c.allocator().ref_count(pa[1]).unwrap(), 2);
    c.check_invariants().unwrap();
    // b appends into the shared partial page: it gets a copy.
    let slots = c.append_tokens(b, 1).unwrap();
    let pb = c.seq_pages(b).unwrap().to_vec();
    assert_eq!(pb[0], pa[0], "the full page stays shared");
    assert_ne!(pb[1], pa[1], "the partial page was copied");
    assert_eq!(slots, vec![pb[1] as i64 * 4 + 2]);
    let (k, _) = c.layer(1).unwrap();
    let at = (pb[1] as usize * 4 + 1) * 16;
    assert!(
        k[at..at + 16].iter().all(|&x| x == 7.0),
        "the copy holds the data"
    );
    assert_eq!(c.allocator().ref_count(pa[1]).unwrap(), 1);
    c.check_invariants().unwrap();
}

#[test]
fn sliding_window_releases_pages_wholly_outside_it() {
    let mut c = KvCache::<f32>::new(layout(4), 1, 8)
        .unwrap()
        .with_sliding_window(Some(6))
        .unwrap();
    let s = c.add_sequence();
    // Tokens 0..9 at once (a prefill): the first of them sees page 0.
    c.append_tokens(s, 9).unwrap();
    assert_eq!(c.seq_pages(s).unwrap().len(), 3);
    // Tokens 9 and 10: token 9 sees 4..9, so page 0 (tokens 0..3) goes.
    c.append_tokens(s, 2).unwrap();
    assert_eq!(c.seq_pages(s).unwrap().len(), 2);
    assert_eq!(c.allocator().used_pages(), 2);
    let t = c.page_table(&[s]).unwrap();
    assert_eq!(t.seq_len(0, 4), 7, "tokens 4..11 held");
    c.check_invariants().unwrap();
}

#[test]
fn lru_eviction_and_cleanup_are_explicit() {
    let mut c = cache(4, 8);
    let ids: Vec<_> = (0..4).map(|_| c.add_sequence()).collect();
    for &s in &ids {
        c.append_tokens(s, 4).unwrap();
    }
    c.touch(ids[0]).unwrap();
    let gone = c.evict_lru_sequences(2).unwrap();
    assert_eq!(
        gone.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![ids[1], ids[2]]
    );
    assert_eq!(gone[0].1.len(), 1);
    c.mark_completed(ids[3]).unwrap();
    assert_eq!(c.cleanup_completed().unwrap(), vec![ids[3]]);
    assert_eq!(c.sequences().collect::<Vec<_>>(), vec![ids[0]]);
    let bt = c.block_table(&[ids[0]]).unwrap();
    assert_eq!((bt.width, bt.lens.clone()), (1, vec![4]));
    assert_eq!(
        c.layer(2).unwrap_err(),
        CacheError::NoLayer {
            layer: 2,
            layers: 2
        }
    );
    c.check_invariants().unwrap();
}
