//! The launch layer every device shares, written once against the
//! [`crate::driver::Driver`] seam:
//! - [`Element`] and the validation a launch runs before anything is
//!   queued (no CPU backend, no GPU runtime: a GPU-only build needs no
//!   LLVM);
//! - device memory, views and streams ([`Gpu`], [`DeviceBuffer`],
//!   [`View`], [`ViewMut`], [`Stream`]) and how queued work never outlives
//!   the memory it uses;
//! - an attention's kernels loaded once ([`Kernels`]);
//! - plan once per step into a [`Workspace`] ([`StepPlan`]), run once per
//!   layer ([`Kernels::decode`], [`Kernels::prefill`], [`Kernels::append`],
//!   and the cache's `*_step` methods over a [`DeviceArena`]);
//! - the host-slice convenience ([`crate::device::Device`] for any `Gpu`).
//!
//! # An engine's step
//! ```
//! # #[cfg(feature = "cpu")] {
//! use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
//! use attnforge_runtime::cpu::Mode;
//! use attnforge_runtime::driver::cpu::CpuDriver;
//! use attnforge_runtime::launch::{Gpu, Kernels, LaunchParams, Workspace, WorkspaceLimits};
//! use attnforge_runtime::{KvCache, Split};
//!
//! let kv = KvLayoutSpec { page_size: 4, kv_heads: 1, head_dim: 8, dtype: DType::F32, order: Order::Nhd, scale: KvScale::Unscaled };
//! let spec = AttentionSpec { causal: true, ..AttentionSpec::new(kv, 2) };
//! // Set-up, once: the device (here the CPU driver: the same calls a GPU
//! // gets), a stream, the kernels, a cache and a workspace.
//! let gpu = Gpu::new(CpuDriver::new(Arch::Host.target(), Mode::Fast));
//! let stream = gpu.stream()?;
//! let kernels = Kernels::load(&gpu, &spec)?;
//! let (layers, max_pages) = (2, 8);
//! let mut cache = KvCache::<f32, _>::new_on_gpu(&gpu, &stream, kv, layers, max_pages)?;
//! let mut ws = Workspace::new(&gpu, &[spec], WorkspaceLimits::new(4, 8, 16))?;
//! // The engine's activations, in device memory (or its own, through the
//! // `unsafe` View::from_raw).
//! let q = gpu.upload(&stream, &[1.0f32; 16])?;
//! let mut out = gpu.alloc::<f32>(16)?;
//! let (k_new, v_new) = (gpu.upload(&stream, &[0.5f32; 8])?, gpu.upload(&stream, &[1.0f32; 8])?);
//!
//! // One decode step: bookkeeping, one plan, then per layer an append and
//! // a decode, all queued on the stream.
//! let seq = cache.add_sequence();
//! let slots = cache.append_tokens(seq, 1)?;
//! let plan = cache.plan_decode(&mut ws, &stream, &[spec], &[seq], &slots, Split::Auto)?;
//! for layer in 0..layers {
//!     cache.append_step(&kernels, &stream, &plan, layer, k_new.view(), v_new.view())?;
//!     let params = LaunchParams::default();
//!     cache.decode_step(&kernels, &stream, &plan, layer, &params, q.view(), out.view_mut())?;
//! }
//! // Reading back is a separate, explicit call (it synchronizes).
//! assert_eq!(out.read(&stream)?, vec![1.0; 16]);
//! # }
//! # Ok::<(), attnforge_runtime::RuntimeError>(())
//! ```

mod arena;
mod cache;
mod element;
mod host;
mod kernels;
mod memory;
mod run;
mod step;
mod validate;

pub use arena::DeviceArena;
pub use element::{with_elements, Element, WithElements};
pub use kernels::Kernels;
pub(crate) use memory::next_id;
pub use memory::{DeviceBuffer, Gpu, Stream, View, ViewMut};
pub use run::{KvView, KvViewMut, LaunchParams, ScaleViews};
pub use step::{StepPlan, Workspace, WorkspaceLimits};
#[cfg(feature = "cpu")]
pub(crate) use validate::query_tiles;
pub use validate::{validate_append, validate_decode, validate_prefill};
