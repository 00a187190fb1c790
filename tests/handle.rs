//! Launching through the `#[attention]` item: `Item::new_cache`,
//! `Item::append`, `Item::prefill` and `Item::decode`, against the f64
//! reference.
use attnforge::prelude::*;
use attnforge::runtime::cpu::{CpuDevice, Mode};
use attnforge::runtime::device::Cpu;
use attnforge::runtime::{reference, KvCache};

#[kv_layout(page_size = 4, kv_heads = 2, head_dim = 16, dtype = f32)]
pub struct SmallKv;

#[attention(kv = SmallKv, q_heads = 4, causal, sliding_window = 6)]
pub struct Small;

#[kv_layout(page_size = 8, kv_heads = 2, head_dim = 16, dtype = f32)]
pub struct OtherKv;

#[test]
fn the_attention_item_appends_and_decodes_through_its_cache() {
    let device = CpuDevice::new();
    let cpu = Cpu {
        device: &device,
        target: Arch::Gfx90a.target(),
        mode: Mode::Checked,
    };
    let mut cache = Small::new_cache::<f32>(2, 16).unwrap();
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    let row = 2 * 16;
    let mut x = 0.25f32;
    let mut next = move || {
        x = (x * 3.7 + 0.11).fract();
        x - 0.5
    };
    let f = |x: &[f32]| x.iter().map(|&e| e as f64).collect::<Vec<_>>();
    let close = |got: &[f32], want: &[f64], what: &str| {
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{what}: {a} vs {b}");
        }
    };
    let append = |cache: &mut KvCache<f32>, lens: [usize; 2], next: &mut dyn FnMut() -> f32| {
        for (s, n) in seqs.iter().zip(lens) {
            let slots = cache.append_tokens(*s, n).unwrap();
            for layer in 0..2 {
                let k: Vec<f32> = (0..n * row).map(|_| next()).collect();
                let v: Vec<f32> = (0..n * row).map(|_| next()).collect();
                Small::append(&cpu, cache, layer, &slots, &k, &v).unwrap();
            }
        }
    };
    // Prefill: prompts of 11 and 3 tokens, causal, in a window of 6.
    append(&mut cache, [11, 3], &mut next);
    // The first prompt token sees the first page: nothing was released yet.
    assert_eq!(cache.seq_pages(seqs[0]).unwrap().len(), 3);
    let params = Params::default();
    let q: Vec<f32> = (0..14 * 4 * 16).map(|_| next()).collect();
    for layer in 0..2 {
        let mut out = vec![f32::NAN; q.len()];
        Small::prefill(
            &cpu,
            &mut cache,
            &params,
            layer,
            &seqs,
            &[11, 3],
            &q,
            &mut out,
        )
        .unwrap();
        let table = cache.page_table(&seqs).unwrap();
        let (k, v) = cache.layer(layer).unwrap();
        let want = reference::prefill_with(
            &Small::SPEC,
            &reference::Variants::default(),
            &f(&q),
            &[0, 11, 14],
            &f(k),
            &f(v),
            &table,
        );
        close(&out, &want, &format!("prefill layer {layer}"));
    }
    // A decode step: one token each; the window of 6 now releases the first
    // page (4 tokens) of the long sequence.
    append(&mut cache, [1, 1], &mut next);
    assert_eq!(cache.seq_pages(seqs[0]).unwrap().len(), 2);
    let q: Vec<f32> = (0..2 * 4 * 16).map(|_| next()).collect();
    for layer in 0..2 {
        let mut out = vec![f32::NAN; q.len()];
        Small::decode(&cpu, &mut cache, layer, &seqs, &q, &mut out).unwrap();
        let table = cache.page_table(&seqs).unwrap();
        let (k, v) = cache.layer(layer).unwrap();
        let want = reference::decode(&Small::SPEC, &f(&q), &f(k), &f(v), &table);
        close(&out, &want, &format!("decode layer {layer}"));
    }
    // A cache of another layout is refused before any launch.
    let mut other = KvCache::<f32>::new(OtherKv::SPEC, 1, 4).unwrap();
    let s = other.add_sequence();
    let slots = other.append_tokens(s, 1).unwrap();
    let e = Small::append(&cpu, &mut other, 0, &slots, &[0.0; 32], &[0.0; 32]).unwrap_err();
    assert!(e.to_string().contains("is not the cache's"), "{e}");
}
