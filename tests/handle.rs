//! Launching through the `#[attention]` item: `Item::new_cache`,
//! `Item::append` and `Item::decode`, against the f64 reference.
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
    for (s, n) in seqs.iter().zip([11, 3]) {
        let slots = cache.append_tokens(*s, n).unwrap();
        for layer in 0..2 {
            let k: Vec<f32> = (0..n * row).map(|_| next()).collect();
            let v: Vec<f32> = (0..n * row).map(|_| next()).collect();
            Small::append(&cpu, &mut cache, layer, &slots, &k, &v).unwrap();
        }
    }
    // The window of 6 released the first page (4 tokens) of the long sequence.
    assert_eq!(cache.seq_pages(seqs[0]).unwrap().len(), 2);
    let q: Vec<f32> = (0..2 * 4 * 16).map(|_| next()).collect();
    for layer in 0..2 {
        let mut out = vec![f32::NAN; q.len()];
        Small::decode(&cpu, &mut cache, layer, &seqs, &q, &mut out).unwrap();
        let table = cache.page_table(&seqs).unwrap();
        let (k, v) = cache.layer(layer).unwrap();
        let f = |x: &[f32]| x.iter().map(|&e| e as f64).collect::<Vec<_>>();
        let want = reference::decode(&Small::SPEC, &f(&q), &f(k), &f(v), &table);
        for (a, b) in out.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "layer {layer}: {a} vs {b}");
        }
    }
    // A cache of another layout is refused before any launch.
    let mut other = KvCache::<f32>::new(OtherKv::SPEC, 1, 4).unwrap();
    let s = other.add_sequence();
    let slots = other.append_tokens(s, 1).unwrap();
    let e = Small::append(&cpu, &mut other, 0, &slots, &[0.0; 32], &[0.0; 32]).unwrap_err();
    assert!(e.to_string().contains("is not the cache's"), "{e}");
}
