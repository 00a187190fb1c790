//! Declares an attention, fills a paged KV cache through the append kernel
//! and runs the decode kernel on the CPU (checked mode), then compares the
//! result with the f64 reference.
//!
//! Run: `cargo run --example 01_cpu_decode`

use attnforge::prelude::*;
use attnforge::runtime::cpu::{CpuDevice, Mode};
use attnforge::runtime::device::Cpu;
use attnforge::runtime::reference;
use half::f16;

// Model code declares its shapes; invalid combinations do not compile.
#[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = f16, order = NHD)]
pub struct TinyKv;

#[attention(kv = TinyKv, q_heads = 8, causal)]
pub struct Tiny;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = Tiny::SPEC;
    let device = CpuDevice::new();
    // The wave32 kernel, exactly as a GPU gets it, under the sanitizer.
    let cpu = Cpu {
        device: &device,
        target: Arch::Gfx1030.target(),
        mode: Mode::Checked,
    };
    let mut cache = Tiny::new_cache::<f16>(1, 64)?;
    let mut x = 7u64;
    let mut rnd = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        f16::from_f64((x >> 40) as f64 / (1u64 << 24) as f64 - 0.5)
    };

    // Two sequences: prompts of 40 and 9 tokens.
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    let row = (spec.kv.kv_heads * spec.kv.head_dim) as usize;
    for (s, n) in seqs.iter().zip([40, 9]) {
        let slots = cache.append_tokens(*s, n)?; // pages allocated here
        let k: Vec<f16> = (0..n * row).map(|_| rnd()).collect();
        let v: Vec<f16> = (0..n * row).map(|_| rnd()).collect();
        Tiny::append(&cpu, &mut cache, 0, &slots, &k, &v)?;
    }

    // One query token per sequence.
    let q: Vec<f16> = (0..2 * 8 * 64).map(|_| rnd()).collect();
    let mut out = vec![f16::ZERO; q.len()];
    Tiny::decode(&cpu, &mut cache, 0, &seqs, &q, &mut out)?;

    // The same attention in plain f64.
    let table = cache.page_table(&seqs)?;
    let (k, v) = cache.layer(0)?;
    let f = |x: &[f16]| x.iter().map(|e| e.to_f64()).collect::<Vec<_>>();
    let want = reference::decode(&spec, &f(&q), &f(k), &f(v), &table);
    let worst = f(&out)
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!(
        "decoded 2 sequences ({} and {} tokens) over {} pages; largest difference from the f64 reference: {worst:.2e}",
        cache.seq_len(seqs[0])?,
        cache.seq_len(seqs[1])?,
        cache.allocator().used_pages()
    );
    Ok(())
}
