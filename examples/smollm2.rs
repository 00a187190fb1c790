//! SmolLM2-135M-Instruct generating text with attnforge's paged KV cache and
//! generated kernels on the CPU.
//!
//! The model's attention is declared below with the macros, as model code
//! would; the GGUF file is checked against it on load. Every token's K/V
//! goes into a `KvCache` through the append kernel; a prompt's attention is
//! one prefill per layer and each generated token's one decode per layer,
//! JIT-compiled for this CPU. Matrix multiplies reproduce llama.cpp's
//! quantized arithmetic (see `attnforge-llama`).
//!
//! Run: `scripts/run.sh --prompt "The capital of France is"` (it installs the
//! model first and builds in release), or
//! `cargo run --release --example smollm2 -- --help`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use attnforge::prelude::*;
use attnforge::runtime::cpu::Mode;
use attnforge::runtime::driver::cpu::CpuDriver;
use attnforge::runtime::launch::Gpu;
use attnforge_llama::{default_model_path, Engine, Model, TextStream};
use clap::Parser;
use half::f16;

/// SmolLM2's KV cache: 3 KV heads of 64, f16, pages of 16 tokens.
#[kv_layout(page_size = 16, kv_heads = 3, head_dim = 64, dtype = f16, order = NHD)]
pub struct SmolKv;

/// SmolLM2's attention: 9 query heads (GQA groups of 3), causal, queries and
/// outputs in f32 over the f16 cache (llama.cpp's precision).
#[attention(kv = SmolKv, q_heads = 9, causal, q_dtype = f32)]
pub struct SmolLM2;

#[derive(Parser)]
#[command(about = "Greedy text generation with SmolLM2-135M on attnforge's kernels (CPU)")]
struct Args {
    /// The prompt. Special tokens such as <|im_start|> are recognised.
    #[arg(long, default_value = "The capital of France is")]
    prompt: String,
    /// Wrap the prompt in SmolLM2's chat template (a user turn, then the
    /// assistant's).
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate (generation also stops at end of text).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// The GGUF file [default: the one scripts/fetch-model.sh installs].
    #[arg(long)]
    model: Option<PathBuf>,
    /// KV cache pages per layer (16 tokens each).
    #[arg(long, default_value_t = 256)]
    max_pages: u32,
    /// Run the kernels in checked mode (bounds, races, divergence).
    #[arg(long)]
    checked: bool,
    /// Print one JSON object (prompt_tokens, generated_tokens, text) instead
    /// of streaming text; logs go to stderr either way.
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let path = args.model.clone().unwrap_or_else(default_model_path);
    let t0 = Instant::now();
    let model = Model::load(&path).map_err(|e| {
        format!("{e}\n(scripts/fetch-model.sh installs SmolLM2; --model PATH picks another file)")
    })?;
    eprintln!(
        "loaded {} in {:.2?}: {} layers, {} query / {} KV heads of {}",
        path.display(),
        t0.elapsed(),
        model.config.layers,
        model.config.q_heads,
        model.config.kv_heads,
        model.config.head_dim
    );
    let mode = if args.checked {
        Mode::Checked
    } else {
        Mode::Fast
    };
    // The launch path on the CPU driver: one stream, the kernels loaded
    // once, the cache, a workspace and the activations' buffers in its
    // memory; each step planned once, one append and one attention launch
    // per layer.
    let gpu = Gpu::new(CpuDriver::new(Arch::Host.target(), mode));
    let mut engine = Engine::<f32, f16, _>::new(&model, SmolLM2::SPEC, gpu, args.max_pages)?;
    let text = if args.chat {
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            args.prompt
        )
    } else {
        args.prompt.clone()
    };
    let prompt = model.tokenizer.encode(&text, true);
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    // A throw-away two-token prompt and one generated token JIT-compile (or
    // load from the cache) the append, prefill and decode kernels, so the
    // timings below are the model's, not LLVM's.
    let t0 = Instant::now();
    engine.generate(&[vec![prompt[0]; 2]], 2, |_, _| {})?;
    eprintln!(
        "prompt: {} tokens; kernels JIT-compiled in {:.2?}",
        prompt.len(),
        t0.elapsed()
    );

    let mut stream = TextStream::default();
    let stdout = std::io::stdout();
    let streaming = !args.json;
    if streaming {
        print!("{}", args.prompt);
        if args.chat {
            println!();
        }
    }
    let out = engine.generate(
        std::slice::from_ref(&prompt),
        args.max_new_tokens,
        |_, t| {
            if streaming {
                let piece = stream.push(&model.tokenizer, t);
                let mut lock = stdout.lock();
                let _ = write!(lock, "{piece}");
                let _ = lock.flush();
            }
        },
    )?;
    if streaming {
        print!("{}", stream.finish());
    }
    let generated = &out.tokens[0];
    let text = model.tokenizer.decode(generated);
    if args.json {
        let obj = serde_json::json!({
            "prompt_tokens": prompt,
            "generated_tokens": generated,
            "text": text,
        });
        println!("{obj}");
    } else {
        println!();
    }
    let per_s = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    eprintln!(
        "prompt: {} tokens in {:.2?} ({:.1} tokens/s, one prefill per layer); \
         generation: {} tokens in {:.2?} ({:.1} tokens/s); {} KV pages at most",
        out.prompt_tokens,
        out.prompt_time,
        per_s(out.prompt_tokens, out.prompt_time),
        out.gen_tokens,
        out.gen_time,
        per_s(out.gen_tokens, out.gen_time),
        out.peak_pages
    );
    Ok(())
}
