//! # attnforge-runtime
//!
//! The runtime layer: what an inference engine holds between kernel
//! launches (page allocator, KV cache, sequences, page tables) and the
//! devices that launch generated kernels (CPU through an LLVM JIT, AMD GPUs
//! through HIP).
//!
//! **Not written yet.** The foundation defines the specs and kernels this
//! crate will serve; the allocator, the KV cache and both devices are
//! separate pieces of work and nothing here pretends otherwise.
