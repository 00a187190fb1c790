//! Launch-time parameters of an attention, and the split-K decode planner.
//!
//! Split-K decode (flash-decoding) cuts each sequence's context into chunks
//! of `chunk_tokens`, one block per (KV head, sequence, chunk), and a second
//! kernel merges the partial outputs. It pays when a batch has too few
//! (sequence, KV head) pairs to fill the device and long contexts: a batch
//! of one 32k-token sequence with 8 KV heads keeps 8 blocks busy without it.
//!
//! [`plan_decode`] picks the split: [`Split::Auto`] from the batch, the
//! heads and the device's compute units; [`Split::Fixed`] from a fixed
//! chunk size only, so a sequence's output has the same bits whatever batch
//! it is in (deterministic mode); [`Split::Off`] never splits.
//!
//! On a GPU, [`Split::Auto`] splits only when the (sequence, KV head)
//! blocks are fewer than the compute units. At the host target a block
//! serves every KV head of its tokens, so that it reads whole pages (see
//! [`decode_kv_heads_per_block`]); there a batch of fewer than four
//! sequences per core is cut into chunks of whole pages until every core
//! has four such blocks, so that one long sequence keeps every core
//! streaming.

use attnforge_codegen::kernels::decode_kv_heads_per_block;
use attnforge_codegen::{Alibi, AttentionSpec, KvLayoutSpec, KvScale, Target};

use crate::RuntimeError;

/// How decode may split long contexts across blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// The planner decides from the batch, the target and the device (the
    /// default). Contexts shorter than [`MIN_CHUNK_TOKENS`] twice over never
    /// split. The bits of a sequence's output may depend on the rest of the
    /// batch; use [`Split::Fixed`] where they must not.
    #[default]
    Auto,
    /// Always the split kernels, with this many tokens per chunk: the
    /// result for a sequence does not depend on the rest of the batch.
    Fixed {
        /// Tokens per chunk, at least 1.
        chunk_tokens: u32,
    },
    /// One block per (KV head, sequence), as the plain decode kernel does.
    Off,
}

/// The smallest chunk [`Split::Auto`] makes.
pub const MIN_CHUNK_TOKENS: u32 = 256;
/// The most chunks [`Split::Auto`] makes per sequence.
pub const MAX_SPLITS: u32 = 64;
/// The most chunks any split makes per sequence: the grid's z extent on
/// HIP and CUDA. A [`Split::Fixed`] chunk that cuts a context finer is
/// refused, not silently widened (that would change the bits it promises).
pub const MAX_FIXED_SPLITS: u32 = 65_535;
/// The largest [`Split::Fixed`] chunk: the kernels take it as an `i32`.
pub const MAX_CHUNK_TOKENS: u32 = i32::MAX as u32;

/// Values an attention's variants need at launch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Params<'a> {
    /// One sink logit per query head, for a spec with `sinks`.
    pub sinks: Option<&'a [f32]>,
    /// One ALiBi slope per query head, for a spec with `alibi = given`.
    pub alibi_slopes: Option<&'a [f32]>,
    /// How decode may split long contexts.
    pub split: Split,
    /// The K and V scales of an fp8 cache.
    pub kv_scales: Option<KvScales<'a>>,
}

/// The scales of an fp8 cache ([`KvScale`]): a stored `x` of KV head `h`
/// means `x · k[h]` in K (`k[0]` per tensor), `x · v[h]` in V.
#[derive(Clone, Copy, Debug)]
pub struct KvScales<'a> {
    /// K's scales: one, or one per KV head.
    pub k: &'a [f32],
    /// V's scales: as many as K's.
    pub v: &'a [f32],
}

impl KvScales<'_> {
    /// Checks the scales against a layout: given exactly for a scaled
    /// layout, as many as [`KvScale::len`] says, each positive and finite.
    pub fn validate(scales: Option<&Self>, kv: &KvLayoutSpec) -> Result<(), RuntimeError> {
        let err = |message: String| RuntimeError::Param {
            param: "kv_scales",
            message,
        };
        let want = kv.scale.len(kv.kv_heads);
        match scales {
            None if kv.scale == KvScale::Unscaled => Ok(()),
            None => Err(err(format!(
                "the cache is {} with {} scales: pass {want} K and {want} V scale(s)",
                kv.dtype,
                kv.scale.name()
            ))),
            Some(_) if kv.scale == KvScale::Unscaled => Err(err(format!(
                "given, but a {} cache has no scales",
                kv.dtype
            ))),
            Some(s) => {
                for (name, v) in [("K", s.k), ("V", s.v)] {
                    if v.len() != want {
                        return Err(err(format!(
                            "{} {name} scales for a {} layout of {} KV heads: {want} needed",
                            v.len(),
                            kv.scale.name(),
                            kv.kv_heads
                        )));
                    }
                    if let Some((h, x)) = v
                        .iter()
                        .enumerate()
                        .find(|(_, x)| !(x.is_finite() && **x > 0.0))
                    {
                        return Err(err(format!(
                            "{name} scale {h} is {x}: scales must be positive and finite"
                        )));
                    }
                }
                Ok(())
            }
        }
    }
}

impl Params<'_> {
    /// Checks the parameters against the spec: each variant that needs a
    /// buffer has one of `q_heads` entries, and no buffer is given that the
    /// spec does not use (a likely mix-up of specs).
    pub fn validate(&self, spec: &AttentionSpec) -> Result<(), RuntimeError> {
        let q_heads = spec.q_heads as usize;
        let check =
            |name: &'static str, used: bool, buf: Option<&[f32]>, why: &str| match (used, buf) {
                (true, None) => Err(RuntimeError::Param {
                    param: name,
                    message: format!("the spec has {why}: pass one f32 per query head ({q_heads})"),
                }),
                (false, Some(_)) => Err(RuntimeError::Param {
                    param: name,
                    message: format!("given, but the spec has no {why}"),
                }),
                (true, Some(b)) if b.len() != q_heads => Err(RuntimeError::Param {
                    param: name,
                    message: format!("{} values for {q_heads} query heads", b.len()),
                }),
                _ => Ok(()),
            };
        check("sinks", spec.sinks, self.sinks, "attention sinks")?;
        check(
            "alibi_slopes",
            spec.alibi == Some(Alibi::Given),
            self.alibi_slopes,
            "ALiBi with given slopes",
        )?;
        KvScales::validate(self.kv_scales.as_ref(), &spec.kv)?;
        validate_split(self.split)
    }
}

/// The checks on a [`Split`] that need no context lengths.
fn validate_split(split: Split) -> Result<(), RuntimeError> {
    match split {
        Split::Fixed { chunk_tokens: 0 } => Err(RuntimeError::Param {
            param: "split",
            message: "a fixed split needs at least 1 token per chunk".into(),
        }),
        Split::Fixed { chunk_tokens } if chunk_tokens > MAX_CHUNK_TOKENS => {
            Err(RuntimeError::Param {
                param: "split",
                message: format!(
                    "a fixed split of {chunk_tokens} tokens per chunk: at most \
                         {MAX_CHUNK_TOKENS}"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// How one decode launch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    /// Chunks per sequence (the split kernel's grid z); 1 with `split` off.
    pub splits: u32,
    /// Tokens per chunk (of the tokens a query sees).
    pub chunk_tokens: u32,
    /// Whether the split and merge kernels run (else the plain decode kernel).
    pub split: bool,
    /// The KV heads each decode block serves: 1 except at the host target
    /// (see [`decode_kv_heads_per_block`]); the launch's grid is
    /// `KernelSpec::grid_serving(batch, splits, kv_heads_per_block)`.
    pub kv_heads_per_block: u32,
}

/// Plans a decode launch for sequences of `kv_lens` tokens on a device with
/// `compute_units` compute units (CUs on a GPU, cores on the CPU) running
/// `target`'s kernels.
///
/// Fails only for a [`Split::Fixed`] that [`Params::validate`] refuses, or
/// whose chunk cuts the longest context into more than
/// [`MAX_FIXED_SPLITS`] chunks.
pub fn plan_decode(
    spec: &AttentionSpec,
    target: Target,
    kv_lens: impl IntoIterator<Item = usize>,
    split: Split,
    compute_units: u32,
) -> Result<DecodePlan, RuntimeError> {
    // What a query sees: the window, when there is one.
    let visible = |len: usize| match spec.sliding_window {
        Some(w) => len.min(w as usize),
        None => len,
    };
    let (mut batch, mut longest) = (0u64, 0u64);
    for len in kv_lens {
        batch += 1;
        longest = longest.max(visible(len) as u64);
    }
    let mut plan = plan_split(spec, batch, longest, split, compute_units)?;
    if split == Split::Auto {
        if let Some(whole) = host_whole_page_split(spec, target, batch, longest, compute_units) {
            if batch * (plan.splits as u64) < 4 * compute_units.max(1) as u64 {
                plan = whole;
            }
        }
    }
    let per_kv_head = batch * plan.splits as u64;
    plan.kv_heads_per_block = decode_kv_heads_per_block(spec, target, per_kv_head, compute_units);
    Ok(plan)
}

/// [`Split::Auto`]'s split at the host target for a batch too small to
/// give every core four blocks that read whole pages (every KV head of a
/// sequence; see [`decode_kv_heads_per_block`]): each sequence is cut into
/// enough chunks of whole pages, at least [`MIN_CHUNK_TOKENS`] each, that
/// the launch has four such blocks per core (with a sliding window the
/// chunks start where the window does, which may be inside a page). A single 16k-token sequence
/// of Llama-3-8B's shape decodes about 1.5× faster so (BENCHMARKS.md).
/// `None` where blocks cannot serve every KV head (HND pages, GPU targets,
/// groups too large) or the contexts are too short for four blocks per core,
/// and where [`MAX_SPLITS`] chunks of whole pages cannot cover them with
/// four blocks per core (from 16 cores on: one sequence of 16,385 tokens
/// needs 65 chunks of 256, or 61 of 272); those keep one KV head per
/// block.
fn host_whole_page_split(
    spec: &AttentionSpec,
    target: Target,
    batch: u64,
    longest: u64,
    compute_units: u32,
) -> Option<DecodePlan> {
    let wanted = 4 * compute_units.max(1) as u64;
    if batch == 0 || decode_kv_heads_per_block(spec, target, wanted, compute_units) <= 1 {
        return None;
    }
    let splits = wanted
        .div_ceil(batch)
        .min(longest / MIN_CHUNK_TOKENS as u64)
        .min(MAX_SPLITS as u64);
    if splits < 2 {
        return None;
    }
    // Whole pages per chunk: rounded down (a chunk more, rather than one
    // fewer than wanted) unless that makes more than MAX_SPLITS chunks.
    let page = spec.kv.page_size as u64;
    let min_chunk = (MIN_CHUNK_TOKENS as u64).div_ceil(page) * page;
    let down = (longest / splits / page * page).max(min_chunk);
    let chunk = match longest.div_ceil(down) <= MAX_SPLITS as u64 {
        true => down,
        false => longest.div_ceil(splits).div_ceil(page) * page,
    };
    let splits = longest.div_ceil(chunk);
    (splits >= 2 && batch * splits >= wanted).then_some(DecodePlan {
        splits: splits as u32,
        chunk_tokens: chunk as u32,
        split: true,
        kv_heads_per_block: 1,
    })
}

/// [`plan_decode`]'s split for `batch` sequences whose longest visible
/// context is `longest` tokens, with one KV head per block.
fn plan_split(
    spec: &AttentionSpec,
    batch: u64,
    longest: u64,
    split: Split,
    compute_units: u32,
) -> Result<DecodePlan, RuntimeError> {
    let off = DecodePlan {
        splits: 1,
        chunk_tokens: longest.clamp(1, u32::MAX as u64) as u32,
        split: false,
        kv_heads_per_block: 1,
    };
    match split {
        Split::Off => Ok(off),
        Split::Fixed { chunk_tokens } => {
            validate_split(split)?;
            let chunk = chunk_tokens as u64;
            let splits = longest.div_ceil(chunk).max(1);
            if splits > MAX_FIXED_SPLITS as u64 {
                return Err(RuntimeError::Param {
                    param: "split",
                    message: format!(
                        "a fixed split of {chunk_tokens} tokens per chunk cuts a \
                         {longest}-token context into {splits} chunks: at most \
                         {MAX_FIXED_SPLITS}; use a larger chunk"
                    ),
                });
            }
            Ok(DecodePlan {
                splits: splits as u32,
                chunk_tokens,
                split: true,
                kv_heads_per_block: 1,
            })
        }
        Split::Auto => {
            let per_seq = spec.kv.kv_heads * attnforge_codegen::kernels::decode_head_blocks(spec).0;
            let blocks = batch * per_seq as u64;
            let cus = compute_units.max(1) as u64;
            if blocks == 0 || blocks >= cus || longest < 2 * MIN_CHUNK_TOKENS as u64 {
                return Ok(off);
            }
            let wanted = cus.div_ceil(blocks);
            let splits = wanted
                .min(longest / MIN_CHUNK_TOKENS as u64)
                .min(MAX_SPLITS as u64)
                .max(1);
            if splits == 1 {
                return Ok(off);
            }
            // Whole pages per chunk, so a chunk's tokens share their pages.
            let page = spec.kv.page_size as u64;
            let chunk = longest.div_ceil(splits).div_ceil(page) * page;
            Ok(DecodePlan {
                splits: longest.div_ceil(chunk) as u32,
                chunk_tokens: chunk as u32,
                split: true,
                kv_heads_per_block: 1,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnforge_codegen::{Arch, DType, KvLayoutSpec, KvScale, Order};

    const GPU: Target = Arch::Gfx90a.target();
    const HOST: Target = Arch::Host.target();

    fn spec() -> AttentionSpec {
        let kv = KvLayoutSpec {
            page_size: 16,
            kv_heads: 8,
            head_dim: 128,
            dtype: DType::F16,
            order: Order::Nhd,
            scale: KvScale::Unscaled,
        };
        AttentionSpec::new(kv, 32)
    }

    #[test]
    fn auto_splits_only_small_batches_with_long_contexts() {
        // 1 sequence x 8 KV heads on 104 CUs, 32k tokens: 13 chunks of whole pages.
        let p = plan_decode(&spec(), GPU, [32768], Split::Auto, 104).unwrap();
        assert!(p.split);
        assert_eq!(p.chunk_tokens % 16, 0);
        assert!(p.splits as u64 * p.chunk_tokens as u64 >= 32768);
        assert!((p.splits - 1) as u64 * (p.chunk_tokens as u64) < 32768);
        assert_eq!(p.splits, 13);
        // A full device, or short contexts: no split.
        assert!(
            !plan_decode(&spec(), GPU, vec![32768; 16], Split::Auto, 104)
                .unwrap()
                .split
        );
        assert!(
            !plan_decode(&spec(), GPU, [300], Split::Auto, 104)
                .unwrap()
                .split
        );
        // A window bounds what is split.
        let w = AttentionSpec {
            sliding_window: Some(512),
            ..spec()
        };
        let p = plan_decode(&w, GPU, [32768], Split::Auto, 104).unwrap();
        assert!(p.split && p.splits == 2 && p.chunk_tokens == 256);
    }

    #[test]
    fn fixed_splits_do_not_depend_on_the_batch_or_the_device() {
        let alone =
            plan_decode(&spec(), GPU, [1000], Split::Fixed { chunk_tokens: 128 }, 4).unwrap();
        let batch = plan_decode(
            &spec(),
            GPU,
            [1000, 5000],
            Split::Fixed { chunk_tokens: 128 },
            200,
        )
        .unwrap();
        assert_eq!(alone.chunk_tokens, batch.chunk_tokens);
        assert!(alone.split && batch.split);
        assert_eq!((alone.splits, batch.splits), (8, 40));
        assert!(
            !plan_decode(&spec(), GPU, [1 << 20], Split::Off, 1000)
                .unwrap()
                .split
        );
    }

    #[test]
    fn fixed_splits_that_the_kernels_cannot_run_are_refused() {
        let err = |chunk_tokens, len| {
            plan_decode(&spec(), GPU, [len], Split::Fixed { chunk_tokens }, 4).unwrap_err()
        };
        for e in [err(0, 10), err(u32::MAX, 10), err(1, 70_000)] {
            assert!(
                matches!(e, RuntimeError::Param { param: "split", .. }),
                "{e}"
            );
        }
        assert!(err(1, 70_000).to_string().contains("70000 chunks"));
        // The largest allowed values still plan.
        let p = plan_decode(
            &spec(),
            GPU,
            [10],
            Split::Fixed {
                chunk_tokens: MAX_CHUNK_TOKENS,
            },
            4,
        );
        assert_eq!(p.unwrap().splits, 1);
        let p = plan_decode(&spec(), GPU, [65_535], Split::Fixed { chunk_tokens: 1 }, 4);
        assert_eq!(p.unwrap().splits, 65_535);
        let params = Params {
            split: Split::Fixed {
                chunk_tokens: 1 << 31,
            },
            ..Params::default()
        };
        assert!(params.validate(&spec()).is_err());
    }

    #[test]
    fn host_blocks_serve_every_kv_head_only_while_every_core_keeps_four() {
        let per_block = |s: &AttentionSpec, target, lens: &[usize], split, cores| {
            plan_decode(s, target, lens.iter().copied(), split, cores)
                .unwrap()
                .kv_heads_per_block
        };
        let s = spec();
        // 16 sequences on 2 cores: every KV head of a sequence in one block.
        assert_eq!(per_block(&s, HOST, &[2048; 16], Split::Auto, 2), 8);
        assert_eq!(per_block(&s, HOST, &[100; 8], Split::Off, 2), 8);
        // GPU targets: always one.
        assert_eq!(per_block(&s, GPU, &[2048; 16], Split::Auto, 2), 1);
        // Fewer than four sequences per core: one head per block.
        assert_eq!(per_block(&s, HOST, &[100; 7], Split::Off, 2), 1);
        assert_eq!(per_block(&s, HOST, &[100], Split::Off, 2), 1);
        // Split chunks count as blocks: 16 chunks of one sequence.
        let p = plan_decode(&s, HOST, [4096], Split::Fixed { chunk_tokens: 256 }, 2).unwrap();
        assert_eq!((p.splits, p.kv_heads_per_block), (16, 8));
        // Query rows past 4096 elements (a block keeps them and their
        // accumulators in f32): one head per block
        // (128 query heads of 128).
        let big = AttentionSpec::new(s.kv, 128);
        assert_eq!(per_block(&big, HOST, &[2048; 16], Split::Auto, 2), 1);
        // HND pages keep one head per block.
        let hnd = AttentionSpec {
            kv: KvLayoutSpec {
                order: Order::Hnd,
                ..s.kv
            },
            ..s
        };
        assert_eq!(per_block(&hnd, HOST, &[2048; 16], Split::Auto, 2), 1);
        // The grid divides the KV heads between the blocks.
        let ks = attnforge_codegen::kernels::KernelSpec::Decode(s);
        assert_eq!(ks.grid_serving(16, 1, 8), [1, 16, 1]);
        assert_eq!(ks.grid_serving(16, 1, 1), ks.grid(16, 1));
        // A share that does not divide the heads gives the one-head grid.
        assert_eq!(ks.grid_serving(16, 1, 3), ks.grid(16, 1));
    }

    #[test]
    fn auto_cuts_a_small_host_batch_into_chunks_whose_blocks_read_whole_pages() {
        let s = spec();
        let plan = |s: &AttentionSpec, target, lens: &[usize], cores| {
            plan_decode(s, target, lens.iter().copied(), Split::Auto, cores).unwrap()
        };
        // One 16k-token sequence on 2 cores: 8 chunks of 2048, every KV
        // head in each chunk's block.
        let p = plan(&s, HOST, &[16384], 2);
        assert_eq!(
            (p.split, p.splits, p.chunk_tokens, p.kv_heads_per_block),
            (true, 8, 2048, 8)
        );
        // Three sequences: three chunks of 682 tokens wanted each, cut
        // into whole pages of 16: four chunks of 672 (12 blocks).
        let p = plan(&s, HOST, &[2048, 100, 2000], 2);
        assert_eq!(
            (p.splits, p.chunk_tokens, p.kv_heads_per_block),
            (4, 672, 8)
        );
        // A length that 32 chunks of whole pages do not cover: 33 of them
        // (rounding the chunk up would give 31, too few for 8 cores).
        let p = plan(&s, HOST, &[8193], 8);
        assert_eq!(
            (p.splits, p.chunk_tokens, p.kv_heads_per_block),
            (33, 256, 8)
        );
        // Chunks of at least MIN_CHUNK_TOKENS: 1792 tokens are too short
        // for 8 blocks, so the plain kernel, one KV head per block, as
        // before; a token more makes 8 chunks of 256.
        let p = plan(&s, HOST, &[1792], 2);
        assert_eq!((p.split, p.kv_heads_per_block), (false, 1));
        let p = plan(&s, HOST, &[1793], 2);
        assert_eq!(
            (p.splits, p.chunk_tokens, p.kv_heads_per_block),
            (8, 256, 8)
        );
        // Four sequences per core already: no split.
        let p = plan(&s, HOST, &[16384; 8], 2);
        assert_eq!((p.split, p.kv_heads_per_block), (false, 8));
        // More cores want more chunks, at most MAX_SPLITS: on 16 cores, 64;
        // on 64 cores 256 would be needed, so the one-head split (8 chunks
        // of 8 heads, a block per core).
        let p = plan(&s, HOST, &[1 << 20], 16);
        assert_eq!((p.splits, p.kv_heads_per_block), (64, 8));
        let p = plan(&s, HOST, &[1 << 20], 64);
        assert_eq!((p.splits, p.kv_heads_per_block), (8, 1));
        // A window bounds the context that is cut.
        let w = AttentionSpec {
            sliding_window: Some(2048),
            ..s
        };
        assert_eq!(plan(&w, HOST, &[16384], 2).chunk_tokens, 256);
        // Blocks that cannot serve every KV head keep the GPU planner's
        // split: HND pages, GPU targets, Fixed and Off.
        let hnd = AttentionSpec {
            kv: KvLayoutSpec {
                order: Order::Hnd,
                ..s.kv
            },
            ..s
        };
        assert!(!plan(&hnd, HOST, &[16384], 2).split);
        assert!(!plan(&s, GPU, &[16384], 2).split);
        let off = plan_decode(&s, HOST, [16384], Split::Off, 2).unwrap();
        assert_eq!((off.split, off.kv_heads_per_block), (false, 1));
    }
}
