//! Every generated kernel against the f64 [`reference`], on random paged
//! inputs: the numeric tests and `attnforge check` both run this.
//!
//! Inputs are seeded ([`Rng`], SplitMix64): the same seed gives the same
//! cases on every machine. Each sequence's pages are scattered over an
//! arena half again as large, and everything outside the sequences is NaN,
//! so a kernel that reads a page it does not own produces NaN. Attention
//! results are compared by relative L2 error against [`tolerance`] of the
//! spec's dtypes; appends must be bit-exact.
//!
//! ```
//! use attnforge_codegen::kernels::KernelSpec;
//! use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
//! use attnforge_runtime::check::{check_kernel, Cases};
//! use attnforge_runtime::cpu::{CpuDevice, Mode};
//!
//! let kv = KvLayoutSpec { page_size: 4, kv_heads: 1, head_dim: 8, dtype: DType::F32, order: Order::Nhd, scale: KvScale::Unscaled };
//! let spec = AttentionSpec { causal: true, ..AttentionSpec::new(kv, 2) };
//! let cases = Cases { lens: &[&[5, 9]], archs: &[Arch::Host], modes: &[Mode::Fast] };
//! let outcomes = check_kernel(&CpuDevice::new(), &KernelSpec::Decode(spec), 7, &cases).unwrap();
//! assert!(outcomes.iter().all(|o| o.passed()), "{}", outcomes[0]);
//! ```

use std::fmt;

use attnforge_codegen::kernels::KernelSpec;
use attnforge_codegen::{Arch, DType, KernelKind, KvLayoutSpec, Order};
use half::{bf16, f16};

use crate::cpu::{CpuDevice, Element, Mode};
use crate::launch::with_elements;
use crate::{PageTable, RuntimeError, Split};

mod run;
use run::{append, append_fp8, Batch};

#[path = "../../../tests/support/splitmix.rs"]
mod splitmix;
pub use splitmix::Rng;

/// Context lengths per batch: one token; a partly filled last page; a mixed
/// batch; several thousand tokens (past a 4096-token window).
pub const CASES: &[&[usize]] = &[&[1], &[13], &[1, 17, 100, 33, 2], &[4100, 2500]];

/// The archs every kernel is checked at: a wave64 GPU, a wave32 GPU and the
/// host's own schedule.
pub const ARCHS: &[Arch] = &[Arch::Gfx90a, Arch::Gfx1030, Arch::Host];

/// The archs `kernel` is checked at: [`ARCHS`], gfx90a (added if missing)
/// and sm_90 where its kernel there runs on the matrix unit (MFMA, mma.sync).
/// gfx940's matrix-core kernels are gfx90a's, and sm_80's are sm_90's
/// (tests/snapshots.rs and codegen/tests/mma_kernels.rs check that).
pub fn archs_for(kernel: &KernelSpec, archs: &[Arch]) -> Vec<Arch> {
    let mut out = archs.to_vec();
    for arch in [Arch::Gfx90a, Arch::Sm90] {
        let matrix = attnforge_codegen::kernels::generate(kernel, arch.target())
            .is_ok_and(|k| k.uses_matrix_unit());
        if matrix && !out.contains(&arch) {
            out.push(arch);
        }
    }
    out
}

/// What [`check_kernel`] runs: batches of context lengths, at archs, in modes.
#[derive(Clone, Copy, Debug)]
pub struct Cases<'a> {
    /// Context lengths, one list per batch.
    pub lens: &'a [&'a [usize]],
    /// The targets' archs.
    pub archs: &'a [Arch],
    /// CPU modes (long prefill cases run fast only: see [`check_kernel`]).
    pub modes: &'a [Mode],
}

impl Default for Cases<'_> {
    fn default() -> Self {
        Cases {
            lens: CASES,
            archs: ARCHS,
            modes: &[Mode::Fast, Mode::Checked],
        }
    }
}

/// Arenas with every sequence's pages scattered, K/V random, everything else NaN.
pub struct PagedInputs<T> {
    /// The K arena.
    pub k: Vec<T>,
    /// The V arena.
    pub v: Vec<T>,
    /// The sequences' pages.
    pub table: PageTable,
}

/// Random paged K/V for sequences of `lens` tokens (values in [-1, 1)).
pub fn paged_inputs<T: Element>(l: &KvLayoutSpec, lens: &[usize], rng: &mut Rng) -> PagedInputs<T> {
    let p = l.page_size as usize;
    let need: usize = lens.iter().map(|n| n.div_ceil(p)).sum();
    let max_pages = need + need / 2 + 3;
    let mut ids: Vec<i32> = (0..max_pages as i32).collect();
    rng.shuffle(&mut ids);
    let nan = T::from_f64(f64::NAN);
    let elems = max_pages * l.page_elems() as usize;
    let (mut k, mut v) = (vec![nan; elems], vec![nan; elems]);
    let mut next = 0;
    let mut seqs = Vec::new();
    for &len in lens {
        let pages = &ids[next..next + len.div_ceil(p)];
        next += pages.len();
        for t in 0..len {
            for h in 0..l.kv_heads as u64 {
                let at = l.offset(pages[t / p] as u64, (t % p) as u64, h) as usize;
                for i in 0..l.head_dim as usize {
                    k[at + i] = T::from_f64(rng.uniform());
                    v[at + i] = T::from_f64(rng.uniform());
                }
            }
        }
        seqs.push((pages, len));
    }
    let table = PageTable::from_sequences(l.page_size, seqs.iter().map(|(pg, n)| (*pg, *n)));
    PagedInputs { k, v, table }
}

/// Random K and V scales for a scaled (fp8) layout: one or one per KV
/// head, in [0.25, 2]; none for an unscaled one.
pub fn kv_scales(l: &KvLayoutSpec, rng: &mut Rng) -> Option<(Vec<f32>, Vec<f32>)> {
    let n = l.scale.len(l.kv_heads);
    let mut one = || {
        (0..n)
            .map(|_| (1.125 + 0.875 * rng.uniform()) as f32)
            .collect()
    };
    (n > 0).then(|| (one(), one()))
}

/// An arena's values in f64, times its KV head's scale when scaled.
pub fn dequantize<T: Element>(l: &KvLayoutSpec, x: &[T], scales: Option<&[f32]>) -> Vec<f64> {
    let (d, h, p) = (
        l.head_dim as usize,
        l.kv_heads as usize,
        l.page_size as usize,
    );
    x.iter()
        .enumerate()
        .map(|(i, e)| {
            let head = match l.order {
                Order::Nhd => (i / d) % h,
                Order::Hnd => (i / (d * p)) % h,
            };
            match scales {
                Some(s) => e.to_f64() * f64::from(s[if s.len() == 1 { 0 } else { head }]),
                None => e.to_f64(),
            }
        })
        .collect()
}

/// Which launch a check ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Run {
    /// Decode, one query per sequence, with a split policy.
    Decode(Split),
    /// Prefill, with some new query tokens per sequence (see [`q_lens`]).
    Prefill,
    /// KV append of new rows into shuffled slots (one padding slot).
    Append,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Run::Decode(Split::Off) => f.write_str("decode"),
            Run::Decode(Split::Fixed { chunk_tokens }) => {
                write!(f, "split-K decode, chunks of {chunk_tokens}")
            }
            Run::Decode(s) => write!(f, "split-K decode, {s:?}"),
            Run::Prefill => f.write_str("prefill"),
            Run::Append => f.write_str("append"),
        }
    }
}

/// New query tokens per sequence for prefill: whole short prompts, and a
/// few dozen new tokens after a cached prefix for longer ones.
pub fn q_lens(lens: &[usize]) -> Vec<usize> {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            if len <= 64 {
                len
            } else {
                1 + (len * 7 + i * 13) % 48
            }
        })
        .collect()
}

/// A split that cuts the longest context into about four chunks, so the
/// mixed batches also have empty chunks.
pub fn fixed_split(lens: &[usize]) -> Split {
    let longest = lens.iter().copied().max().unwrap_or(1);
    Split::Fixed {
        chunk_tokens: (longest / 4).max(5) as u32,
    }
}

/// One launch compared with the reference.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The kernel checked.
    pub kind: KernelKind,
    /// The launch.
    pub run: Run,
    /// The target's arch.
    pub arch: Arch,
    /// Fast or checked.
    pub mode: Mode,
    /// The batch's context lengths (empty for an append).
    pub lens: Vec<usize>,
    /// Relative L2 error (attention; infinite when an output is not
    /// finite), or the fraction of arena elements that differ from the
    /// reference's (append).
    pub error: f64,
    /// The largest error allowed.
    pub tolerance: f64,
}

impl Outcome {
    /// Whether the error is within the tolerance (a NaN error is not).
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) @{} {:?} lens {:?}: error {:.2e}, tolerance {:.0e}, {}",
            self.kind,
            self.run,
            self.arch,
            self.mode,
            self.lens,
            self.error,
            self.tolerance,
            if self.passed() { "ok" } else { "FAILED" }
        )
    }
}

/// A launch that failed, with what was being checked.
#[derive(Debug, thiserror::Error)]
#[error("{kind} ({run}) @{arch} {mode:?} lens {lens:?}: {source}")]
pub struct CheckError {
    /// The kernel.
    pub kind: KernelKind,
    /// The launch.
    pub run: Run,
    /// The target's arch.
    pub arch: Arch,
    /// Fast or checked.
    pub mode: Mode,
    /// The batch's context lengths.
    pub lens: Vec<usize>,
    /// Why the launch failed.
    #[source]
    pub source: Box<RuntimeError>,
}

/// Runs `kernel` on every case, arch and mode, and compares each result
/// with the reference. Split-K kernels run through a fixed split of each
/// batch (split-K decode and its merge together). Prefill over more than
/// 50,000 (query, key) pairs runs fast only: checked mode tracks every
/// shared-memory access and would take minutes.
pub fn check_kernel(
    device: &CpuDevice,
    kernel: &KernelSpec,
    seed: u64,
    cases: &Cases<'_>,
) -> Result<Vec<Outcome>, CheckError> {
    let mut out = Vec::new();
    let a = match kernel {
        KernelSpec::Append(l) => {
            for &arch in cases.archs {
                for &mode in cases.modes {
                    out.push(match l.dtype {
                        DType::F32 => append::<f32>(device, l, arch, mode, seed),
                        DType::F16 => append::<f16>(device, l, arch, mode, seed),
                        DType::BF16 => append::<bf16>(device, l, arch, mode, seed),
                        DType::F8E4M3 => append_fp8(device, l, arch, mode, seed),
                    }?);
                }
            }
            return Ok(out);
        }
        KernelSpec::Decode(a)
        | KernelSpec::Prefill(a)
        | KernelSpec::DecodeSplit(a)
        | KernelSpec::DecodeMerge(a) => a,
    };
    for (case, lens) in cases.lens.iter().enumerate() {
        let run = match kernel {
            KernelSpec::Prefill(_) => Run::Prefill,
            KernelSpec::DecodeSplit(_) | KernelSpec::DecodeMerge(_) => {
                Run::Decode(fixed_split(lens))
            }
            _ => Run::Decode(Split::Off),
        };
        let batch = Batch {
            device,
            kind: kernel.kind(),
            spec: a,
            run,
            seed,
            case,
            lens,
            cases,
            out: &mut out,
        };
        with_elements(a.query_dtype(), a.kv.dtype, batch)?;
    }
    Ok(out)
}
