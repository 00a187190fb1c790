//! Fuzzing the GGUF reading the llama crate does: a tiny, valid llama
//! model written with candle's GGUF writer, then damaged (bits flipped,
//! fields overwritten with extreme integers, bytes cut off) in 10,000
//! seeded ways. Each load is a model or a typed error: never a panic, and
//! never an abort on a length the file cannot hold.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use attnforge_llama::Model;

#[path = "../../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// A llama model with one layer, hidden size 32 and 40 tokens.
fn tiny_model() -> Vec<u8> {
    let (hidden, vocab) = (32usize, 40usize);
    let tokens: Vec<String> = (0..vocab)
        .map(|i| match i {
            0 => "<|endoftext|>".to_string(),
            i => ((b'a' + (i % 26) as u8) as char)
                .to_string()
                .repeat(1 + i / 26),
        })
        .collect();
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(hidden as u32)),
        ("llama.attention.head_count", Value::U32(1)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(hidden as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.context_length", Value::U32(64)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("a a".into())]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1); vocab]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    let dev = Device::Cpu;
    let mut seed = 1u64;
    let mut tensor = |rows: usize, cols: usize, dtype: GgmlDType| {
        let n = rows * cols;
        let xs: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let shape: Vec<usize> = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        let t = Tensor::from_vec(xs, shape, &dev).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            tensor(vocab, hidden, GgmlDType::Q8_0),
        ),
        (
            "output_norm.weight".into(),
            tensor(1, hidden, GgmlDType::F32),
        ),
    ];
    for name in [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ] {
        tensors.push((
            format!("blk.0.{name}.weight"),
            tensor(hidden, hidden, GgmlDType::Q4_1),
        ));
    }
    for name in ["attn_norm", "ffn_norm"] {
        tensors.push((
            format!("blk.0.{name}.weight"),
            tensor(1, hidden, GgmlDType::F32),
        ));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
    out.into_inner()
}

/// Damaged bytes, mostly in the header and metadata (where the lengths
/// are) and sometimes anywhere.
fn damage(r: &mut Rng, good: &[u8], header: usize) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..1 + r.below(3) {
        let span = if r.below(4) == 0 {
            b.len()
        } else {
            header.min(b.len())
        };
        if span == 0 {
            break;
        }
        let i = r.below(span);
        match r.below(4) {
            0 => b[i] ^= 1 << r.below(8),
            1 => {
                let x = [u64::MAX, u64::MAX / 2, 1 << 40, u32::MAX as u64, 0, 5][r.below(6)];
                let width = [4, 8][r.below(2)];
                for (j, byte) in x.to_le_bytes().into_iter().take(width).enumerate() {
                    if let Some(slot) = b.get_mut(i + j) {
                        *slot = byte;
                    }
                }
            }
            2 => b.truncate(i),
            _ => b[i] = r.next() as u8,
        }
    }
    b
}

#[test]
fn damaged_gguf_files_are_typed_errors_not_panics_or_aborts() {
    let good = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, &good).unwrap();
    // The undamaged file is a model.
    let m = Model::load(&path).unwrap_or_else(|e| panic!("the tiny model does not load: {e}"));
    assert_eq!(m.config.layers, 1);
    // The header and metadata: everything before the first tensor's data.
    let header = good.len() - 40 * 34 - 7 * 32 * 20 - 3 * 32 * 4;
    let mut r = Rng(0x990f);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..10_000 {
        let bytes = damage(&mut r, &good, header);
        std::fs::write(&path, &bytes).unwrap();
        match std::panic::catch_unwind(|| Model::load(&path)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
            Err(_) => panic!("case {case}: loading panicked"),
        }
    }
    assert!(refused > 5_000, "{ok} loaded, {refused} refused");
}
