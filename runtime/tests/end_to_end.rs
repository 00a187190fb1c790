//! Tokens appended through the runtime (KvCache + append kernel), decoded
//! through the runtime (page tables + decode kernel), against the reference.
#![cfg(feature = "cpu")]

use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::cpu::{CpuDevice, Mode};
use attnforge_runtime::device::Cpu;
use attnforge_runtime::{reference, KvCache};
use half::f16;

/// One token's K and V rows.
type Rows = (Vec<f16>, Vec<f16>);

#[test]
fn append_then_decode_through_the_cache_matches_the_reference() {
    let kv = KvLayoutSpec {
        page_size: 4,
        kv_heads: 2,
        head_dim: 16,
        dtype: DType::F16,
        order: Order::Hnd,
        scale: KvScale::Unscaled,
    };
    let spec = AttentionSpec {
        kv,
        q_heads: 6,
        scale: None,
        causal: true,
        sliding_window: Some(9),
        logits_soft_cap: Some(20.0),
        q_dtype: None,
        alibi: None,
        sinks: false,
    };
    let layers = 2;
    let mut cache = KvCache::<f16>::new(kv, layers, 40)
        .unwrap()
        .with_sliding_window(spec.sliding_window)
        .unwrap();
    let device = CpuDevice::new();
    // Append with the wave32 kernel, decode with the wave64 one, both checked.
    let wave32 = Cpu {
        device: &device,
        target: Arch::Gfx1030.target(),
        mode: Mode::Checked,
    };
    let wave64 = Cpu {
        device: &device,
        target: Arch::Gfx90a.target(),
        mode: Mode::Checked,
    };
    let row = (kv.kv_heads * kv.head_dim) as usize;
    let mut x = 1u64;
    let mut rnd = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        f16::from_f64(((x >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0)
    };
    // Everything appended, per sequence and layer, in token order.
    let seqs: Vec<u64> = (0..3).map(|_| cache.add_sequence()).collect();
    let mut history: Vec<Vec<Vec<Rows>>> = vec![vec![Vec::new(); layers as usize]; 3];
    // A prompt of different lengths, then decode steps of one token each.
    for (step, counts) in [[7, 3, 12], [1, 1, 1], [1, 1, 1], [5, 1, 1], [1, 1, 1]]
        .iter()
        .enumerate()
    {
        for (i, &s) in seqs.iter().enumerate() {
            let slots = cache.append_tokens(s, counts[i]).unwrap();
            for layer in 0..layers {
                let k: Vec<f16> = (0..counts[i] * row).map(|_| rnd()).collect();
                let v: Vec<f16> = (0..counts[i] * row).map(|_| rnd()).collect();
                for t in 0..counts[i] {
                    history[i][layer as usize]
                        .push((k[t * row..][..row].to_vec(), v[t * row..][..row].to_vec()));
                }
                cache.append_with(&wave32, layer, &slots, &k, &v).unwrap();
            }
        }
        cache.check_invariants().unwrap();
        for layer in 0..layers {
            let q: Vec<f16> = (0..3 * 6 * 16).map(|_| rnd()).collect();
            let mut out = vec![f16::NAN; q.len()];
            cache
                .decode_with(&wave64, &spec, layer, &seqs, &q, &mut out)
                .unwrap();
            // Reference on a dense copy of each sequence's history.
            for (i, hist) in history.iter().enumerate() {
                let h = &hist[layer as usize];
                let dense = KvLayoutSpec {
                    page_size: h.len() as u32,
                    order: Order::Nhd,
                    scale: KvScale::Unscaled,
                    ..kv
                };
                let table = attnforge_runtime::PageTable::from_sequences(
                    dense.page_size,
                    [(&[0][..], h.len())],
                );
                let k: Vec<f64> = h
                    .iter()
                    .flat_map(|(k, _)| k.iter().map(|x| x.to_f64()))
                    .collect();
                let v: Vec<f64> = h
                    .iter()
                    .flat_map(|(_, v)| v.iter().map(|x| x.to_f64()))
                    .collect();
                let qi: Vec<f64> = q[i * 96..(i + 1) * 96].iter().map(|x| x.to_f64()).collect();
                let want =
                    reference::decode(&AttentionSpec { kv: dense, ..spec }, &qi, &k, &v, &table);
                let got: Vec<f64> = out[i * 96..(i + 1) * 96]
                    .iter()
                    .map(|x| x.to_f64())
                    .collect();
                let err = reference::rel_l2(&got, &want);
                assert!(
                    err < 2e-3,
                    "step {step} layer {layer} seq {i}: relative L2 error {err:e}"
                );
            }
        }
    }
    // The window released pages along the way.
    assert!(cache.seq_pages(seqs[2]).unwrap().len() < 20usize.div_ceil(4));
}
