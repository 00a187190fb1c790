//! Defects found from outside, each pinned by the call that used to panic,
//! abort or pass: every one is now a typed error that changes nothing.

use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order, F8E4M3};
use attnforge_runtime::arena::{Arena, HostArena};
use attnforge_runtime::cpu::{CpuDevice, Mode};
use attnforge_runtime::device::{Cpu, Device};
use attnforge_runtime::{
    AllocError, CacheError, KvCache, KvScales, PageTable, Params, RuntimeError,
};

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

fn capacity_exceeded(e: &CacheError) -> bool {
    matches!(
        e,
        CacheError::Alloc {
            source: AllocError::CapacityExceeded { .. },
            ..
        }
    )
}

#[test]
fn appending_more_tokens_than_usize_holds_is_capacity_exceeded() {
    let mut c = KvCache::<f32>::new(layout(4), 1, 8).unwrap();
    let s = c.add_sequence();
    c.append_tokens(s, 1).unwrap();
    for n in [usize::MAX, usize::MAX - 1, usize::MAX / 2, 1 << 40] {
        let e = c.append_tokens(s, n).unwrap_err();
        assert!(capacity_exceeded(&e), "{n}: {e}");
        assert_eq!(c.seq_len(s).unwrap(), 1);
        assert_eq!(c.allocator().free_pages(), 7);
        c.check_invariants().unwrap();
    }
}

#[test]
fn a_sliding_window_of_zero_tokens_is_refused() {
    let c = KvCache::<f32>::new(layout(4), 1, 8).unwrap();
    let e = c.with_sliding_window(Some(0)).unwrap_err();
    assert!(
        matches!(&e, CacheError::Spec(s) if s.field == "sliding_window"),
        "{e}"
    );
    // The smallest window keeps every slot it hands out in a held page.
    let mut c = KvCache::<f32>::new(layout(4), 1, 8)
        .unwrap()
        .with_sliding_window(Some(1))
        .unwrap();
    let s = c.add_sequence();
    c.append_tokens(s, 3).unwrap();
    for slot in c.append_tokens(s, 2).unwrap() {
        let page = (slot / 4) as u32;
        assert!(c.seq_pages(s).unwrap().contains(&page), "slot {slot}");
        assert_eq!(c.allocator().ref_count(page).unwrap(), 1, "slot {slot}");
    }
    c.check_invariants().unwrap();
}

#[test]
fn an_arena_beyond_memory_is_too_large_not_an_abort() {
    let e = KvCache::<f32>::new(layout(16), 1 << 20, 1 << 20).unwrap_err();
    assert!(matches!(e, CacheError::TooLarge { .. }), "{e}");
    // Through a device too.
    let dev = CpuDevice::new();
    let cpu = Cpu {
        device: &dev,
        target: Arch::Host.target(),
        mode: Mode::Fast,
    };
    let e = KvCache::<f32>::new_on(&cpu, layout(16), 1 << 20, 1 << 20).unwrap_err();
    assert!(
        matches!(e, RuntimeError::Cache(CacheError::TooLarge { .. })),
        "{e}"
    );
    assert!(HostArena::<f32>::zeroed(1 << 60).is_err());
}

fn spec() -> AttentionSpec {
    AttentionSpec::new(layout(4), 4)
}

#[test]
fn an_empty_batch_checks_qo_indptr_too() {
    let dev = CpuDevice::new();
    let table = PageTable::from_sequences(4, std::iter::empty());
    let row = 4 * 8;
    let (k, v) = (vec![0f32; 4 * 2 * 8], vec![0f32; 4 * 2 * 8]);
    for (indptr, rows) in [
        (vec![-1], 0),
        (vec![3], 3),
        (vec![i32::MIN], 0),
        (vec![1], 0),
    ] {
        let q = vec![1f32; rows * row];
        let mut out = vec![7f32; rows * row];
        let e = dev
            .prefill(
                &spec(),
                Arch::Host.target(),
                Mode::Fast,
                &Params::default(),
                &q,
                &indptr,
                &k,
                &v,
                &table,
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(&e, RuntimeError::Shape(m) if m.contains("qo_indptr[0]")),
            "{indptr:?}: {e}"
        );
        assert!(out.iter().all(|&x| x == 7.0));
    }
    // The well-formed empty batch is fine, and writes nothing.
    let mut out: Vec<f32> = Vec::new();
    dev.prefill(
        &spec(),
        Arch::Host.target(),
        Mode::Fast,
        &Params::default(),
        &[],
        &[0],
        &k,
        &v,
        &table,
        &mut out,
    )
    .unwrap();
}

#[test]
fn host_arena_ranges_past_the_end_are_errors() {
    let mut a = HostArena::<f32>::zeroed(64).unwrap();
    assert!(a.copy_within(0, 60, 8).is_err());
    assert!(a.copy_within(60, 0, 8).is_err());
    assert!(a.copy_within(usize::MAX, 0, 2).is_err());
    assert!(a.copy_within(0, 8, usize::MAX).is_err());
    a.copy_within(0, 32, 32).unwrap();
    assert!(a.to_host(60..70).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 9..3;
    assert!(a.to_host(backwards).is_err());
    assert_eq!(a.to_host(8..16).unwrap().0.len(), 8);
}

#[test]
fn a_layer_range_off_a_page_boundary_is_refused() {
    let dev = CpuDevice::new();
    let cpu = Cpu {
        device: &dev,
        target: Arch::Host.target(),
        mode: Mode::Fast,
    };
    let page = layout(4).page_elems() as usize;
    let mut arena = HostArena::<f32>::zeroed(4 * page).unwrap();
    let table = PageTable::from_sequences(4, [(&[0][..], 2usize)]);
    let q = vec![1f32; 4 * 8];
    let mut out = vec![0f32; 4 * 8];
    for range in [1..1 + 2 * page, 0..page + 3, 2 * page..5 * page] {
        let e = cpu
            .decode_in::<f32, f32>(
                &spec(),
                &Params::default(),
                &q,
                &arena,
                range.clone(),
                &table,
                &mut out,
            )
            .unwrap_err();
        assert!(e.to_string().contains("page boundary"), "{range:?}: {e}");
        let e = cpu
            .append_in::<f32, f32>(
                &layout(4),
                None,
                &[0.0; 16],
                &[0.0; 16],
                &[0],
                &mut arena,
                range.clone(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("page boundary"), "{range:?}: {e}");
    }
    // A whole-page range that starts on a boundary runs.
    cpu.decode_in::<f32, f32>(
        &spec(),
        &Params::default(),
        &q,
        &arena,
        page..3 * page,
        &table,
        &mut out,
    )
    .unwrap();
}

/// An fp8 cache remembers the scales each layer was written with: decode
/// without them uses them, and different ones are refused.
#[test]
fn fp8_scales_live_with_the_cache() {
    let kv = KvLayoutSpec {
        dtype: DType::F8E4M3,
        scale: KvScale::PerHead,
        ..layout(4)
    };
    let spec = AttentionSpec {
        q_dtype: Some(DType::F32),
        ..AttentionSpec::new(kv, 4)
    };
    let dev = CpuDevice::new();
    let cpu = Cpu {
        device: &dev,
        target: Arch::Host.target(),
        mode: Mode::Fast,
    };
    let mut c = KvCache::<F8E4M3, _>::new_on(&cpu, kv, 2, 4).unwrap();
    let s = c.add_sequence();
    let slots = c.append_tokens(s, 3).unwrap();
    let rows: Vec<f32> = (0..3 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    let (a, b) = ([0.5f32, 0.25], [0.125f32, 1.0]);
    let first = KvScales { k: &a, v: &b };
    // A layer with no scales yet cannot be appended to without them.
    assert!(c
        .append_ext_with(&cpu, 0, None, &slots, &rows, &rows)
        .is_err());
    c.append_ext_with(&cpu, 0, Some(first), &slots, &rows, &rows)
        .unwrap();
    assert_eq!(c.kv_scales(0), Some((&a[..], &b[..])));
    assert_eq!(c.kv_scales(1), None);
    // Other scales on the same layer: refused, for appends and attention.
    let other = KvScales { k: &b, v: &a };
    let e = c
        .append_ext_with(&cpu, 0, Some(other), &slots, &rows, &rows)
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::Cache(CacheError::ScalesMismatch { layer: 0 })
        ),
        "{e}"
    );
    let q: Vec<f32> = (0..4 * 8).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut out = vec![0f32; 4 * 8];
    let with = |scales| Params {
        kv_scales: scales,
        ..Params::default()
    };
    let e = c
        .decode_ext_with(&cpu, &spec, &with(Some(other)), 0, &[s], &q, &mut out)
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::Cache(CacheError::ScalesMismatch { layer: 0 })
        ),
        "{e}"
    );
    // The stored scales are the ones used when none are given.
    let mut given = vec![0f32; 4 * 8];
    c.decode_ext_with(&cpu, &spec, &with(Some(first)), 0, &[s], &q, &mut given)
        .unwrap();
    c.decode_ext_with(&cpu, &spec, &with(None), 0, &[s], &q, &mut out)
        .unwrap();
    assert_eq!(out, given);
    assert!(out.iter().any(|&x| x != 0.0));
    // Set up front, a layer's scales need not be passed to its appends.
    c.set_kv_scales(1, first).unwrap();
    c.append_ext_with(&cpu, 1, None, &slots, &rows, &rows)
        .unwrap();
    assert!(matches!(
        c.set_kv_scales(1, other).unwrap_err(),
        RuntimeError::Cache(CacheError::ScalesMismatch { layer: 1 })
    ));
    assert!(c.set_kv_scales(9, first).is_err());
}
