//! The llama-architecture model: weights from a GGUF file, matrix multiplies
//! through candle's quantized kernels, everything around attention in plain
//! f32 Rust, and attention itself (KV append, then prefill for a prompt or
//! decode for a generated token) through attnforge.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use attnforge_codegen::AttentionSpec;
use attnforge_runtime::driver::Driver;
use attnforge_runtime::launch::{
    DeviceArena, DeviceBuffer, Element, Gpu, Kernels, LaunchParams, Stream, Workspace,
    WorkspaceLimits,
};
use attnforge_runtime::{KvCache, RuntimeError, SeqId, Split};
use candle_core::quantized::gguf_file;
use candle_core::Tensor;

use crate::quant::Weight;
use crate::tokenizer::Tokenizer;
use crate::LlamaError;

/// The hyper-parameters read from a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `general.architecture`.
    pub arch: String,
    /// Transformer blocks.
    pub layers: u32,
    /// Embedding width.
    pub hidden: usize,
    /// Query heads.
    pub q_heads: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// Feed-forward width.
    pub ffn: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RMS-norm epsilon.
    pub rms_eps: f32,
    /// Training context length.
    pub context: usize,
}

fn meta<'a>(c: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, LlamaError> {
    c.metadata
        .get(key)
        .ok_or_else(|| LlamaError::MissingKey(key.to_owned()))
}

fn meta_u32(c: &gguf_file::Content, key: &str) -> Result<u32, LlamaError> {
    let v = meta(c, key)?;
    v.to_u32()
        .or_else(|_| v.to_u64().map(|x| x as u32))
        .or_else(|_| v.to_i32().map(|x| x as u32))
        .map_err(|e| LlamaError::BadKey(key.to_owned(), e.to_string()))
}

fn meta_f32(c: &gguf_file::Content, key: &str) -> Result<f32, LlamaError> {
    meta(c, key)?
        .to_f32()
        .map_err(|e| LlamaError::BadKey(key.to_owned(), e.to_string()))
}

fn meta_str<'a>(c: &'a gguf_file::Content, key: &str) -> Result<&'a str, LlamaError> {
    meta(c, key)?
        .to_string()
        .map(String::as_str)
        .map_err(|e| LlamaError::BadKey(key.to_owned(), e.to_string()))
}

impl Config {
    fn from_gguf(c: &gguf_file::Content) -> Result<Config, LlamaError> {
        let arch = meta_str(c, "general.architecture")?.to_owned();
        if arch != "llama" {
            return Err(LlamaError::Unsupported(format!(
                "architecture {arch:?} (this runner knows llama)"
            )));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = meta_u32(c, &k("embedding_length"))? as usize;
        let q_heads = meta_u32(c, &k("attention.head_count"))?;
        let kv_heads = match meta_u32(c, &k("attention.head_count_kv")) {
            Err(LlamaError::MissingKey(_)) => q_heads,
            r => r?,
        };
        let head_dim = match meta_u32(c, &k("attention.key_length")) {
            Err(LlamaError::MissingKey(_)) if q_heads > 0 => hidden as u32 / q_heads,
            r => r?,
        };
        Ok(Config {
            layers: meta_u32(c, &k("block_count"))?,
            hidden,
            q_heads,
            kv_heads,
            head_dim,
            ffn: meta_u32(c, &k("feed_forward_length"))? as usize,
            rope_base: match meta_f32(c, &k("rope.freq_base")) {
                Err(LlamaError::MissingKey(_)) => 10_000.0,
                r => r?,
            },
            rms_eps: meta_f32(c, &k("attention.layer_norm_rms_epsilon"))?,
            context: meta_u32(c, &k("context_length"))? as usize,
            arch,
        })
    }

    /// Checks that a declared attention spec is this model's: a mismatch
    /// names the spec field and both values.
    pub fn check_spec(&self, spec: &AttentionSpec) -> Result<(), LlamaError> {
        let pairs = [
            ("q_heads", self.q_heads, spec.q_heads),
            ("kv_heads", self.kv_heads, spec.kv.kv_heads),
            ("head_dim", self.head_dim, spec.kv.head_dim),
        ];
        for (field, gguf, declared) in pairs {
            if gguf != declared {
                return Err(LlamaError::SpecMismatch {
                    field,
                    gguf,
                    declared,
                });
            }
        }
        if self.q_heads * self.head_dim != self.hidden as u32 {
            return Err(LlamaError::Unsupported(format!(
                "q_heads × head_dim = {} but the embedding is {} wide",
                self.q_heads * self.head_dim,
                self.hidden
            )));
        }
        if let Some(sc) = spec.scale {
            let want = 1.0 / (self.head_dim as f32).sqrt();
            if (sc - want).abs() > 1e-6 * want {
                return Err(LlamaError::Unsupported(format!(
                    "the spec's scale {sc} is not the model's 1/sqrt(head_dim) = {want}"
                )));
            }
        }
        if spec.sliding_window.is_some() || spec.logits_soft_cap.is_some() || !spec.causal {
            return Err(LlamaError::Unsupported(
                "a llama model's attention is causal, with no window and no soft-cap".into(),
            ));
        }
        Ok(())
    }
}

struct Block {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
}

/// The rows of one [`Model::forward`] step, grouped by sequence.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    /// The sequences, each once.
    pub seqs: &'a [SeqId],
    /// New rows per sequence, in `seqs`' order.
    pub q_lens: &'a [u32],
    /// The rows' tokens, sequence by sequence.
    pub tokens: &'a [u32],
    /// Their positions in their sequences.
    pub positions: &'a [usize],
    /// Their cache slots.
    pub slots: &'a [i64],
}

/// What [`Model::forward`] runs attention with, on a device: the GPU, the
/// stream every step's work goes on, the attention's kernels (loaded once),
/// the KV cache (its arenas in the device's memory), the workspace each step
/// is planned into, and the activations' device buffers (queries, new K/V
/// rows, attention output). The buffers and the workspace are reused by
/// every step and grown only when a step needs more than they hold
/// ([`DeviceState::reserve`]).
pub struct DeviceState<Q, T, D: Driver> {
    spec: AttentionSpec,
    gpu: Gpu<D>,
    stream: Stream<D>,
    kernels: Kernels<D>,
    cache: KvCache<T, DeviceArena<T, D>>,
    ws: Workspace<D>,
    bufs: Buffers<Q, T, D>,
}

/// A step's activations on the device, for up to `rows` rows.
struct Buffers<Q, T, D: Driver> {
    rows: usize,
    /// Queries, [rows][q_heads][head_dim].
    q: DeviceBuffer<Q, D>,
    /// New K and V rows, [rows][kv_heads][head_dim].
    k: DeviceBuffer<T, D>,
    v: DeviceBuffer<T, D>,
    /// Attention output, as `q`.
    out: DeviceBuffer<Q, D>,
}

/// Elements of one query row and of one K/V row of `spec`.
fn row_widths(spec: &AttentionSpec) -> (usize, usize) {
    let d = spec.kv.head_dim as usize;
    (spec.q_heads as usize * d, spec.kv.kv_heads as usize * d)
}

impl<Q: Element, T: Element, D: Driver> Buffers<Q, T, D> {
    fn new(gpu: &Gpu<D>, spec: &AttentionSpec, rows: usize) -> Result<Self, RuntimeError> {
        let (q_row, kv_row) = row_widths(spec);
        let n = |width: usize| {
            rows.checked_mul(width).ok_or_else(|| {
                RuntimeError::Shape(format!("{rows} rows of {width} elements overflow usize"))
            })
        };
        Ok(Buffers {
            rows,
            q: gpu.alloc(n(q_row)?)?,
            k: gpu.alloc(n(kv_row)?)?,
            v: gpu.alloc(n(kv_row)?)?,
            out: gpu.alloc(n(q_row)?)?,
        })
    }
}

impl<Q: Element, T: Element, D: Driver> DeviceState<Q, T, D> {
    /// `spec`'s attention on `gpu`: a stream, the kernels, a cache of
    /// `layers` layers of `max_pages` pages, a workspace and buffers (room
    /// for one page of rows to begin with). Fails if the spec's cache is
    /// fp8 (the model writes K/V in the cache's own dtype and has no scales
    /// to quantize with), or `T`/`Q` are not the spec's KV/query dtypes.
    pub fn new(
        gpu: Gpu<D>,
        spec: AttentionSpec,
        layers: u32,
        max_pages: u32,
    ) -> Result<Self, LlamaError> {
        if spec.kv.dtype.is_fp8() {
            return Err(LlamaError::Fp8Cache(spec.kv.dtype));
        }
        if T::DTYPE != spec.kv.dtype {
            return Err(LlamaError::DType {
                spec: spec.kv.dtype,
                given: T::DTYPE,
            });
        }
        if Q::DTYPE != spec.query_dtype() {
            return Err(LlamaError::DType {
                spec: spec.query_dtype(),
                given: Q::DTYPE,
            });
        }
        let stream = gpu.stream()?;
        let kernels = Kernels::load(&gpu, &spec)?;
        let cache = KvCache::<T, _>::new_on_gpu(&gpu, &stream, spec.kv, layers, max_pages)?;
        let rows = spec.kv.page_size as usize;
        let limits = WorkspaceLimits::new(1, max_pages, rows as u32);
        let ws = Workspace::new(&gpu, &[spec], limits)?;
        let bufs = Buffers::new(&gpu, &spec, rows)?;
        Ok(DeviceState {
            spec,
            gpu,
            stream,
            kernels,
            cache,
            ws,
            bufs,
        })
    }

    /// The attention spec.
    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu<D> {
        &self.gpu
    }

    /// The stream every step's work goes on.
    pub fn stream(&self) -> &Stream<D> {
        &self.stream
    }

    /// The KV cache.
    pub fn cache(&self) -> &KvCache<T, DeviceArena<T, D>> {
        &self.cache
    }

    /// The KV cache, for a step's bookkeeping (`add_sequence`,
    /// `append_tokens`, `touch`, `remove`).
    pub fn cache_mut(&mut self) -> &mut KvCache<T, DeviceArena<T, D>> {
        &mut self.cache
    }

    /// Makes room for a step of `batch` sequences whose page tables hold
    /// `pages` pages in all, bringing `rows` new rows: the buffers and the
    /// workspace are made anew (larger) only where they hold less.
    pub fn reserve(&mut self, batch: usize, pages: usize, rows: usize) -> Result<(), RuntimeError> {
        if rows > self.bufs.rows {
            self.bufs = Buffers::new(&self.gpu, &self.spec, rows)?;
        }
        let l = *self.ws.limits();
        let at_least = |n: usize, have: u32| {
            u32::try_from(n)
                .map(|n| n.max(have))
                .map_err(|_| RuntimeError::Shape(format!("a step of {n} sequences, pages or rows")))
        };
        let want = WorkspaceLimits {
            max_batch: at_least(batch, l.max_batch)?,
            max_pages: at_least(pages, l.max_pages)?,
            max_new_tokens: at_least(rows, l.max_new_tokens)?,
            ..l
        };
        if want != l {
            self.ws = Workspace::new(&self.gpu, &[self.spec], want)?;
        }
        Ok(())
    }
}

/// A loaded model: configuration, tokenizer and weights.
pub struct Model {
    /// Hyper-parameters.
    pub config: Config,
    /// The tokenizer built from the file's metadata.
    pub tokenizer: Tokenizer,
    embed: Vec<f32>,
    blocks: Vec<Block>,
    out_norm: Vec<f32>,
    output: Weight,
    /// RoPE's inverse frequencies base^(-2i/head_dim), i < head_dim/2.
    inv_freq: Vec<f64>,
}

fn load_qt<R: Read + Seek>(
    c: &gguf_file::Content,
    r: &mut R,
    name: &str,
) -> Result<candle_core::quantized::QTensor, LlamaError> {
    if !c.tensor_infos.contains_key(name) {
        return Err(LlamaError::MissingTensor(name.to_owned()));
    }
    Ok(c.tensor(r, name, &candle_core::Device::Cpu)?)
}

fn load_vec<R: Read + Seek>(
    c: &gguf_file::Content,
    r: &mut R,
    name: &str,
) -> Result<Vec<f32>, LlamaError> {
    tensor_vec(&load_qt(c, r, name)?.dequantize(&candle_core::Device::Cpu)?)
}

/// A norm's weights, which must hold `len` values.
fn norm<R: Read + Seek>(
    c: &gguf_file::Content,
    r: &mut R,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, LlamaError> {
    let v = load_vec(c, r, name)?;
    if v.len() != len {
        return Err(LlamaError::Unsupported(format!(
            "tensor {name:?} holds {} values, the model needs {len}",
            v.len()
        )));
    }
    Ok(v)
}

fn tensor_vec(t: &Tensor) -> Result<Vec<f32>, LlamaError> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl Model {
    /// Loads a GGUF file.
    pub fn load(path: &Path) -> Result<Model, LlamaError> {
        let io = |e| LlamaError::Io(path.display().to_string(), e);
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut r = BufReader::new(file);
        // Every declared length is checked against the file before candle
        // allocates for it (a damaged length would abort, not fail).
        crate::gguf::check(&mut r, len)?;
        Model::read(&mut r)
    }

    fn read<R: Read + Seek>(r: &mut R) -> Result<Model, LlamaError> {
        let content = gguf_file::Content::read(r)?;
        let config = Config::from_gguf(&content)?;
        let tokenizer = tokenizer_from_gguf(&content)?;
        let embd = load_qt(&content, r, "token_embd.weight")?;
        let embed = tensor_vec(&embd.dequantize(&candle_core::Device::Cpu)?)?;
        let out_norm = norm(&content, r, "output_norm.weight", config.hidden)?;
        // No capacity from the file's block count: a damaged count fails at
        // the first missing tensor, not in an allocation.
        let mut blocks = Vec::new();
        let kv_width = config
            .kv_heads
            .checked_mul(config.head_dim)
            .ok_or_else(|| LlamaError::Unsupported("kv_heads × head_dim overflows u32".into()))?;
        for i in 0..config.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let (h, kv, f) = (config.hidden, kv_width as usize, config.ffn);
            let mut mm = |s: &str, rows: usize, cols: usize| -> Result<Weight, LlamaError> {
                Weight::new(load_qt(&content, r, &n(s))?, &n(s), rows, cols)
            };
            blocks.push(Block {
                wq: mm("attn_q", h, h)?,
                wk: mm("attn_k", kv, h)?,
                wv: mm("attn_v", kv, h)?,
                wo: mm("attn_output", h, h)?,
                w_gate: mm("ffn_gate", f, h)?,
                w_up: mm("ffn_up", f, h)?,
                w_down: mm("ffn_down", h, f)?,
                attn_norm: norm(&content, r, &n("attn_norm"), h)?,
                ffn_norm: norm(&content, r, &n("ffn_norm"), h)?,
            });
        }
        // Tied embeddings (the tensor already read) when there is no
        // separate output matrix.
        let (out_name, out_t) = if content.tensor_infos.contains_key("output.weight") {
            ("output.weight", load_qt(&content, r, "output.weight")?)
        } else {
            ("token_embd.weight", embd)
        };
        let output = Weight::new(out_t, out_name, tokenizer.vocab_size(), config.hidden)?;
        if embed.len() != tokenizer.vocab_size() * config.hidden {
            return Err(LlamaError::Unsupported(format!(
                "token_embd holds {} values, not vocab {} × hidden {}",
                embed.len(),
                tokenizer.vocab_size(),
                config.hidden
            )));
        }
        let half = config.head_dim as usize / 2;
        let inv_freq = (0..half)
            .map(|i| (config.rope_base as f64).powf(-2.0 * i as f64 / config.head_dim as f64))
            .collect();
        Ok(Model {
            config,
            tokenizer,
            embed,
            blocks,
            out_norm,
            output,
            inv_freq,
        })
    }

    fn rms_norm(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        let n = w.len();
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let scale = 1.0 / ((ss / n as f64) as f32 + self.config.rms_eps).sqrt();
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                *o = v * scale * g;
            }
        }
    }

    /// RoPE's (sin, cos) of every pair for each position, row after row.
    fn rotations(&self, positions: &[usize]) -> Vec<(f32, f32)> {
        positions
            .iter()
            .flat_map(|&pos| {
                self.inv_freq.iter().map(move |&f| {
                    let theta = pos as f64 * f;
                    (theta.sin() as f32, theta.cos() as f32)
                })
            })
            .collect()
    }

    /// Rotates adjacent pairs (llama.cpp's "normal" RoPE, which GGUF llama
    /// weights are permuted for) of every head of every row, by
    /// [`Model::rotations`].
    fn rope(&self, x: &mut [f32], heads: usize, rot: &[(f32, f32)]) {
        let d = self.config.head_dim as usize;
        let pairs = self.inv_freq.len();
        for (row, rot) in x.chunks_exact_mut(heads * d).zip(rot.chunks_exact(pairs)) {
            for (i, &(s, c)) in rot.iter().enumerate() {
                for h in 0..heads {
                    let j = h * d + 2 * i;
                    let (a, b) = (row[j], row[j + 1]);
                    row[j] = a * c - b * s;
                    row[j + 1] = a * s + b * c;
                }
            }
        }
    }

    /// One step for a batch of sequences: sequence `rows.seqs[s]` feeds
    /// the next `rows.q_lens[s]` rows of `rows.tokens`, at `rows.positions`,
    /// into cache slots `rows.slots` (from [`KvCache::append_tokens`] on
    /// `dev`'s cache, called, with any `touch`, before this step: the step
    /// is planned once, from the cache as it is now). Per layer, K/V are
    /// appended and attention runs as one decode when every sequence feeds
    /// one token, else as one ragged prefill (causal, over each sequence's
    /// cached tokens and its new ones), on `dev`'s stream; the attention
    /// output is read back (a synchronization) for the layer's output
    /// projection. Returns the logits of the rows listed in `want_logits`
    /// (in that order), `vocab` values each.
    pub fn forward<Q: Element, T: Element, D: Driver>(
        &self,
        dev: &mut DeviceState<Q, T, D>,
        rows: &Rows<'_>,
        want_logits: &[usize],
    ) -> Result<Vec<f32>, LlamaError> {
        let Rows {
            seqs,
            q_lens,
            tokens,
            positions,
            slots,
        } = *rows;
        let total: usize = q_lens.iter().map(|&n| n as usize).sum();
        if seqs.len() != q_lens.len()
            || [tokens.len(), positions.len(), slots.len()]
                .iter()
                .any(|&n| n != total)
        {
            return Err(LlamaError::Shape(format!(
                "{} sequences with {} query lengths ({total} rows), {} tokens, {} positions, \
                 {} slots",
                seqs.len(),
                q_lens.len(),
                tokens.len(),
                positions.len(),
                slots.len()
            )));
        }
        self.config.check_spec(&dev.spec)?;
        if dev.cache.layers() as usize != self.blocks.len() {
            return Err(LlamaError::Shape(format!(
                "the cache has {} layers, the model {}",
                dev.cache.layers(),
                self.blocks.len()
            )));
        }
        let decode = q_lens.iter().all(|&n| n == 1);
        let c = &self.config;
        let (b, h) = (tokens.len(), c.hidden);
        let (qh, kvh, d) = (c.q_heads as usize, c.kv_heads as usize, c.head_dim as usize);
        let vocab = self.tokenizer.vocab_size();
        let mut x = Vec::with_capacity(b * h);
        for &t in tokens {
            let t = t as usize;
            if t >= vocab {
                return Err(LlamaError::Tokenizer(format!(
                    "token {t} is outside the vocabulary of {vocab}"
                )));
            }
            x.extend_from_slice(&self.embed[t * h..(t + 1) * h]);
        }
        // Room for the step, then its one plan: the page table, lengths and
        // slots go to the device once, whatever the number of layers.
        let pages = seqs
            .iter()
            .try_fold(0usize, |n, &s| dev.cache.seq_pages(s).map(|p| n + p.len()))?;
        dev.reserve(seqs.len(), pages, b)?;
        let DeviceState {
            spec,
            stream,
            kernels,
            cache,
            ws,
            bufs,
            ..
        } = dev;
        let specs = std::slice::from_ref(&*spec);
        let plan = if decode {
            cache.plan_decode(ws, stream, specs, seqs, slots, Split::Auto)?
        } else {
            cache.plan_prefill(ws, stream, specs, seqs, q_lens, slots)?
        };
        let params = LaunchParams::default();
        let (nq, nkv) = (b * qh * d, b * kvh * d);
        let mut xn = vec![0f32; b * h];
        let mut q_t = vec![Q::default(); nq];
        let mut k_t = vec![T::default(); nkv];
        let mut v_t = vec![T::default(); nkv];
        let mut attn_t = vec![Q::default(); nq];
        let rot = self.rotations(positions);
        fn convert<E: Element>(src: &[f32], dst: &mut [E]) {
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = E::from_f64(v as f64);
            }
        }
        for (layer, blk) in self.blocks.iter().enumerate() {
            let layer = layer as u32;
            self.rms_norm(&x, &blk.attn_norm, &mut xn);
            let mut q = blk.wq.matmul(&xn, b)?;
            let mut k = blk.wk.matmul(&xn, b)?;
            let v = blk.wv.matmul(&xn, b)?;
            self.rope(&mut q, qh, &rot);
            self.rope(&mut k, kvh, &rot);
            // llama.cpp multiplies K by the query converted to the cache's
            // dtype; so does this model, for the same tokens.
            for x in q.iter_mut() {
                *x = T::from_f64(*x as f64).to_f64() as f32;
            }
            convert(&q, &mut q_t);
            convert(&k, &mut k_t);
            convert(&v, &mut v_t);
            // The layer's rows go up (the host slices may be reused at
            // once), then its append and attention are queued.
            bufs.k.view_mut().slice(0..nkv)?.upload(stream, &k_t)?;
            bufs.v.view_mut().slice(0..nkv)?.upload(stream, &v_t)?;
            bufs.q.view_mut().slice(0..nq)?.upload(stream, &q_t)?;
            let (k_new, v_new) = (bufs.k.view().slice(0..nkv)?, bufs.v.view().slice(0..nkv)?);
            cache.append_step(kernels, stream, &plan, layer, k_new, v_new)?;
            let (qv, out) = (
                bufs.q.view().slice(0..nq)?,
                bufs.out.view_mut().slice(0..nq)?,
            );
            if decode {
                cache.decode_step(kernels, stream, &plan, layer, &params, qv, out)?;
            } else {
                cache.prefill_step(kernels, stream, &plan, layer, &params, qv, out)?;
            }
            // Reading back synchronizes the stream.
            bufs.out
                .view()
                .slice(0..nq)?
                .read_into(stream, &mut attn_t)?;
            let attn: Vec<f32> = attn_t.iter().map(|v| v.to_f64() as f32).collect();
            let o = blk.wo.matmul(&attn, b)?;
            for (xv, ov) in x.iter_mut().zip(&o) {
                *xv += ov;
            }
            self.rms_norm(&x, &blk.ffn_norm, &mut xn);
            let gate = blk.w_gate.matmul(&xn, b)?;
            let up = blk.w_up.matmul(&xn, b)?;
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = blk.w_down.matmul(&act, b)?;
            for (xv, dv) in x.iter_mut().zip(&down) {
                *xv += dv;
            }
        }
        if want_logits.is_empty() {
            return Ok(Vec::new());
        }
        let mut last = Vec::with_capacity(want_logits.len() * h);
        for &i in want_logits {
            last.extend_from_slice(&x[i * h..(i + 1) * h]);
        }
        let mut normed = vec![0f32; last.len()];
        self.rms_norm(&last, &self.out_norm, &mut normed);
        self.output.matmul(&normed, want_logits.len())
    }
}

fn tokenizer_from_gguf(c: &gguf_file::Content) -> Result<Tokenizer, LlamaError> {
    let model = meta_str(c, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(LlamaError::Unsupported(format!(
            "tokenizer model {model:?} (this runner knows gpt2-style byte-level BPE)"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>, LlamaError> {
        meta(c, key)?
            .to_vec()
            .map_err(|e| LlamaError::BadKey(key.to_owned(), e.to_string()))?
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| LlamaError::BadKey(key.to_owned(), e.to_string()))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types = match meta(c, "tokenizer.ggml.token_type") {
        Ok(v) => v
            .to_vec()
            .map_err(|e| LlamaError::BadKey("tokenizer.ggml.token_type".into(), e.to_string()))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        Err(_) => vec![1; tokens.len()],
    };
    let pre = meta_str(c, "tokenizer.ggml.pre").unwrap_or("default");
    let mut tok = Tokenizer::new(tokens, types, &merges, pre)?;
    tok.eos = meta_u32(c, "tokenizer.ggml.eos_token_id").ok();
    tok.bos = meta_u32(c, "tokenizer.ggml.bos_token_id").ok();
    tok.add_bos = meta(c, "tokenizer.ggml.add_bos_token")
        .ok()
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    Ok(tok)
}
