//! # attnforge-llama
//!
//! A llama-architecture model read from a GGUF file, generating text with
//! attnforge's paged KV cache and generated kernels: every token's K/V goes
//! into a [`KvCache`] through the append kernel, and attention is the decode
//! kernel of the attention spec the caller declares. The GGUF file is read
//! with candle; Q4_1 and Q8_0 matrix products are this crate's, written to
//! reproduce llama.cpp's x86 arithmetic exactly (other weight types go
//! through candle's `QMatMul`); norms, RoPE and sampling are plain Rust.
//! The tokenizer is Hugging Face's `tokenizers`, built from the GGUF's own
//! vocabulary, merges and token types ([`tokenizer`]).
//!
//! The model's attention is declared by the caller, as model code does; a
//! GGUF whose heads or head_dim differ from the declaration is refused with
//! [`LlamaError::SpecMismatch`].
//!
//! Attention runs on attnforge's launch path ([`attnforge_runtime::launch`])
//! over any [`Driver`]: the engine holds a [`Gpu`], a stream, the
//! attention's kernels (loaded once), a cache whose arenas live in the
//! device's memory, a workspace and the activations' device buffers
//! ([`DeviceState`]). Each step is planned once (its page table and slots
//! uploaded in one copy), then every layer queues one append and one
//! attention launch and reads its output back. A batch of prompts runs as
//! one ragged batch: a sequence in its prompt feeds all of it at once (one
//! prefill per layer), one generating feeds its last token; a step where
//! every sequence feeds one token is a decode.
//!
//! ```no_run
//! use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
//! use attnforge_llama::{Engine, Model};
//! use attnforge_runtime::cpu::Mode;
//! use attnforge_runtime::driver::cpu::CpuDriver;
//! use attnforge_runtime::launch::Gpu;
//!
//! let kv = KvLayoutSpec { page_size: 16, kv_heads: 3, head_dim: 64, dtype: DType::F16, order: Order::Nhd, scale: KvScale::Unscaled };
//! let spec = AttentionSpec { causal: true, q_dtype: Some(DType::F32), ..AttentionSpec::new(kv, 9) };
//! let model = Model::load(&attnforge_llama::default_model_path()).unwrap();
//! // The CPU driver: the same launch path a GPU's driver gets.
//! let gpu = Gpu::new(CpuDriver::new(Arch::Host.target(), Mode::Fast));
//! let mut engine = Engine::<f32, half::f16, _>::new(&model, spec, gpu, 256).unwrap();
//! let prompt = model.tokenizer.encode("The capital of France is", true);
//! let out = engine.generate(&[prompt], 16, |_, _| {}).unwrap();
//! println!("{}", model.tokenizer.decode(&out.tokens[0]));
//! ```

mod gguf;
mod model;
mod quant;
pub mod tokenizer;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use attnforge_codegen::AttentionSpec;
use attnforge_runtime::driver::Driver;
use attnforge_runtime::launch::{DeviceArena, Element, Gpu};
use attnforge_runtime::{CacheError, KvCache, RuntimeError, SeqId};

pub use model::{Config, DeviceState, Model, Rows};
pub use tokenizer::{TextStream, TokenId, Tokenizer};

/// The file name of the SmolLM2 model the set-up script installs.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the set-up script puts the SmolLM2 model:
/// `$ATTNFORGE_MODEL_DIR`, else `$XDG_CACHE_HOME/attnforge/models`, else
/// `~/.cache/attnforge/models`.
pub fn default_model_path() -> PathBuf {
    let dir = if let Some(d) = std::env::var_os("ATTNFORGE_MODEL_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("attnforge/models")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache/attnforge/models")
    };
    dir.join(SMOLLM2_FILE)
}

/// Why loading or generating failed.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// The model file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// candle could not parse or load the GGUF file.
    #[error("GGUF: {0}")]
    Gguf(#[from] candle_core::Error),
    /// A metadata key the model needs is absent.
    #[error("the GGUF file has no metadata key {0:?}")]
    MissingKey(String),
    /// A metadata key has the wrong type.
    #[error("GGUF metadata key {0:?}: {1}")]
    BadKey(String, String),
    /// A weight the model needs is absent.
    #[error("the GGUF file has no tensor {0:?}")]
    MissingTensor(String),
    /// The file is a model this runner does not handle.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The declared attention spec does not describe this model.
    #[error(
        "the model does not match the declared attention: its {field} is {gguf}, the spec says {declared}"
    )]
    SpecMismatch {
        /// The spec field.
        field: &'static str,
        /// The model's value.
        gguf: u32,
        /// The declared value.
        declared: u32,
    },
    /// The K/V element type is not the spec's dtype.
    #[error("the spec stores K/V as {spec}, but the engine was built for {given}")]
    DType {
        /// The spec's dtype.
        spec: attnforge_codegen::DType,
        /// The element type's dtype.
        given: attnforge_codegen::DType,
    },
    /// The spec's cache is fp8: the engine writes K/V in the cache's own
    /// dtype and has no scales to quantize with.
    #[error(
        "the spec's KV cache is {0}: the engine supports f32, f16 and bf16 caches (fp8 \
         needs scales it does not have)"
    )]
    Fp8Cache(attnforge_codegen::DType),
    /// Tokenizer data is malformed, or a token is out of range.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A prompt had no tokens.
    #[error("prompt {0} has no tokens")]
    EmptyPrompt(usize),
    /// A forward step's rows do not fit together.
    #[error("forward step: {0}")]
    Shape(String),
    /// The KV cache refused an operation (when full: raise `max_pages`).
    #[error("KV cache: {0} (when it is full, raise max_pages)")]
    Cache(#[from] CacheError),
    /// A kernel launch failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Tokens generated per prompt, with timings.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Generated tokens per prompt (EOS included when it ended the text).
    pub tokens: Vec<Vec<TokenId>>,
    /// Prompt tokens fed.
    pub prompt_tokens: usize,
    /// Time in steps that fed prompt tokens only.
    pub prompt_time: Duration,
    /// Generated tokens fed back (the first of each prompt comes from the
    /// prompt's last step).
    pub gen_tokens: usize,
    /// Time in the other steps.
    pub gen_time: Duration,
    /// Most pages in use at once.
    pub peak_pages: usize,
}

/// A model with its KV cache, kernels, workspace and activation buffers on
/// a device.
pub struct Engine<'m, Q, T, D: Driver> {
    model: &'m Model,
    dev: DeviceState<Q, T, D>,
}

struct Live {
    seq: SeqId,
    prompt: Vec<TokenId>,
    pos: usize,
    done: bool,
}

impl<'m, Q: Element, T: Element, D: Driver> Engine<'m, Q, T, D> {
    /// An engine on `gpu` whose cache holds `max_pages` pages per layer:
    /// a stream, the spec's kernels (loaded here, once), the cache, a
    /// workspace and the activations' buffers (grown when a step needs
    /// more). Fails if the spec does not describe the model, its cache is
    /// fp8, or `T`/`Q` are not the spec's KV/query dtypes.
    pub fn new(
        model: &'m Model,
        spec: AttentionSpec,
        gpu: Gpu<D>,
        max_pages: u32,
    ) -> Result<Self, LlamaError> {
        model.config.check_spec(&spec)?;
        let dev = DeviceState::new(gpu, spec, model.config.layers, max_pages)?;
        Ok(Engine { model, dev })
    }

    /// The cache (for page counts).
    pub fn cache(&self) -> &KvCache<T, DeviceArena<T, D>> {
        self.dev.cache()
    }

    /// The device side: GPU, stream, kernels, cache, workspace, buffers.
    pub fn device_state(&self) -> &DeviceState<Q, T, D> {
        &self.dev
    }

    /// Greedy generation of up to `max_new` tokens for each prompt, all in
    /// one batch through one cache; stops a prompt at EOS. `on_token(i, t)`
    /// is called as prompt `i` produces token `t`. Every sequence is removed
    /// from the cache before returning, on error too.
    pub fn generate(
        &mut self,
        prompts: &[Vec<TokenId>],
        max_new: usize,
        mut on_token: impl FnMut(usize, TokenId),
    ) -> Result<Output, LlamaError> {
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(LlamaError::EmptyPrompt(i));
        }
        // Room for the largest step up front: the first feeds every prompt
        // whole.
        let rows: usize = prompts.iter().map(Vec::len).sum();
        let max_pages = self.dev.cache().max_pages();
        self.dev.reserve(prompts.len(), max_pages, rows)?;
        let cache = self.dev.cache_mut();
        let mut live: Vec<Live> = prompts
            .iter()
            .map(|p| Live {
                seq: cache.add_sequence(),
                prompt: p.clone(),
                pos: 0,
                done: max_new == 0,
            })
            .collect();
        let mut out = Output {
            tokens: vec![Vec::new(); prompts.len()],
            ..Output::default()
        };
        let r = self.run(&mut live, max_new, &mut out, &mut on_token);
        // Every sequence leaves, whatever happened; the first error wins.
        let mut cleanup = Ok(());
        let cache = self.dev.cache_mut();
        for l in &live {
            if cache.seq_len(l.seq).is_ok() {
                if let Err(e) = cache.remove(l.seq) {
                    cleanup = cleanup.and(Err(e));
                }
            }
        }
        r?;
        cleanup?;
        Ok(out)
    }

    fn run(
        &mut self,
        live: &mut [Live],
        max_new: usize,
        out: &mut Output,
        on_token: &mut impl FnMut(usize, TokenId),
    ) -> Result<(), LlamaError> {
        let eos = self.model.tokenizer.eos;
        loop {
            let rows: Vec<usize> = (0..live.len()).filter(|&i| !live[i].done).collect();
            if rows.is_empty() {
                return Ok(());
            }
            // A sequence in its prompt feeds all of it at once (one prefill
            // per layer); one generating feeds its last token.
            let (mut seqs, mut q_lens, mut tokens, mut positions, mut slots) =
                (vec![], vec![], vec![], vec![], vec![]);
            let (mut want, mut produced) = (vec![], vec![]);
            let mut prompt_only = true;
            for &i in &rows {
                let l = &live[i];
                let new: Vec<TokenId> = if l.pos < l.prompt.len() {
                    out.prompt_tokens += l.prompt.len() - l.pos;
                    l.prompt[l.pos..].to_vec()
                } else {
                    prompt_only = false;
                    out.gen_tokens += 1;
                    vec![*out.tokens[i]
                        .last()
                        .expect("past the prompt, a token exists")]
                };
                // Logits of the sequence's last row, once its prompt is in:
                // its next token.
                if l.pos + new.len() >= l.prompt.len() {
                    want.push(tokens.len() + new.len() - 1);
                    produced.push(i);
                }
                seqs.push(l.seq);
                q_lens.push(new.len() as u32);
                positions.extend(l.pos..l.pos + new.len());
                let cache = self.dev.cache_mut();
                slots.extend(cache.append_tokens(l.seq, new.len())?);
                tokens.extend(new);
                cache.touch(l.seq)?;
            }
            out.peak_pages = out
                .peak_pages
                .max(self.dev.cache().allocator().used_pages());
            // Planned once, after every append_tokens and touch of the step.
            let t0 = Instant::now();
            let logits = self.model.forward(
                &mut self.dev,
                &Rows {
                    seqs: &seqs,
                    q_lens: &q_lens,
                    tokens: &tokens,
                    positions: &positions,
                    slots: &slots,
                },
                &want,
            )?;
            let dt = t0.elapsed();
            if prompt_only {
                out.prompt_time += dt;
            } else {
                out.gen_time += dt;
            }
            let vocab = self.model.tokenizer.vocab_size();
            for (w, &i) in produced.iter().enumerate() {
                let row = &logits[w * vocab..(w + 1) * vocab];
                let next = argmax(row);
                out.tokens[i].push(next);
                on_token(i, next);
                if Some(next) == eos || out.tokens[i].len() >= max_new {
                    live[i].done = true;
                    self.dev.cache_mut().remove(live[i].seq)?;
                }
            }
            for (&i, &n) in rows.iter().zip(&q_lens) {
                live[i].pos += n as usize;
            }
        }
    }
}

/// The index of the largest value (the first, on ties).
pub fn argmax(xs: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as TokenId
}
