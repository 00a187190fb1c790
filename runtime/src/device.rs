//! One launch API for every device.
//!
//! [`Device`] is what the CPU and HIP devices have in common: the decode and
//! append kernels of a spec, with the same arguments and the same
//! validation before anything is launched. [`KvCache`] launches through any
//! `Device`, so an engine's step reads the same whatever runs it.

use attnforge_codegen::{Attention, AttentionSpec, KvLayoutSpec};

use crate::cache::{CacheError, KvCache, SeqId};
use crate::cpu::Element;
use crate::table::PageTable;
use crate::RuntimeError;

/// A device that runs attnforge's kernels.
pub trait Device {
    /// Decode attention: `q`/`out` are [batch][q_heads][head_dim] in the
    /// spec's query dtype, `k`/`v` whole arenas in the layout's dtype,
    /// `table` the batch's page table.
    #[allow(clippy::too_many_arguments)]
    fn decode<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError>;

    /// KV append: row i of `k_new`/`v_new` goes to slot `slots[i]`.
    #[allow(clippy::too_many_arguments)]
    fn append<T: Element>(
        &self,
        layout: &KvLayoutSpec,
        k_new: &[T],
        v_new: &[T],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError>;
}

/// The CPU device with a chosen target and mode.
#[cfg(feature = "cpu")]
pub struct Cpu<'a> {
    /// The device (and its kernel cache).
    pub device: &'a crate::cpu::CpuDevice,
    /// Which kernel variant to run (`Arch::Host` for speed, a GPU arch to
    /// run exactly the GPU's kernel).
    pub target: attnforge_codegen::Target,
    /// Fast or checked.
    pub mode: crate::cpu::Mode,
}

#[cfg(feature = "cpu")]
impl Device for Cpu<'_> {
    fn decode<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.device
            .decode(spec, self.target, self.mode, q, k, v, table, out)
    }

    fn append<T: Element>(
        &self,
        layout: &KvLayoutSpec,
        k_new: &[T],
        v_new: &[T],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        self.device
            .append(layout, self.target, self.mode, k_new, v_new, slots, k, v)
    }
}

#[cfg(feature = "hip")]
impl Device for crate::hip::HipDevice {
    fn decode<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        crate::hip::HipDevice::decode(self, spec, None, q, k, v, table, out)
    }

    fn append<T: Element>(
        &self,
        layout: &KvLayoutSpec,
        k_new: &[T],
        v_new: &[T],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        crate::hip::HipDevice::append(self, layout, None, k_new, v_new, slots, k, v)
    }
}

impl<T: Element + Default> KvCache<T> {
    /// Writes new K/V rows of one layer at `slots` (from
    /// [`KvCache::append_tokens`]) on `device`.
    pub fn append_with<D: Device>(
        &mut self,
        device: &D,
        layer: u32,
        slots: &[i64],
        k_new: &[T],
        v_new: &[T],
    ) -> Result<(), RuntimeError> {
        let layout = *self.layout();
        let (k, v) = self.layer_mut(layer)?;
        device.append(&layout, k_new, v_new, slots, k, v)
    }

    /// Decode for a batch of sequences at one layer on `device`.
    pub fn decode_with<D: Device, Q: Element>(
        &mut self,
        device: &D,
        spec: &AttentionSpec,
        layer: u32,
        batch: &[SeqId],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        same_layout(spec, self.layout())?;
        let table = self.page_table(batch)?;
        let (k, v) = self.layer(layer)?;
        device.decode(spec, q, k, v, &table, out)
    }
}

/// Launches through the `#[attention]` item itself, on any device:
/// `Llama3::decode(&device, &mut cache, layer, &batch, &q, &mut out)`.
/// Implemented for every [`Attention`]; in `attnforge::prelude`.
pub trait AttentionHandle: Attention {
    /// A KV cache for this attention: its layout, `layers` layers of
    /// `max_pages` pages, and its sliding window (pages that fall out of it
    /// are released).
    fn new_cache<T: Copy + Default>(layers: u32, max_pages: u32) -> Result<KvCache<T>, CacheError> {
        Ok(KvCache::new(Self::SPEC.kv, layers, max_pages)?
            .with_sliding_window(Self::SPEC.sliding_window))
    }

    /// Writes new K/V rows of one layer at `slots` (from
    /// [`KvCache::append_tokens`]); the cache must have this attention's
    /// layout.
    fn append<D: Device, T: Element + Default>(
        device: &D,
        cache: &mut KvCache<T>,
        layer: u32,
        slots: &[i64],
        k_new: &[T],
        v_new: &[T],
    ) -> Result<(), RuntimeError> {
        same_layout(&Self::SPEC, cache.layout())?;
        cache.append_with(device, layer, slots, k_new, v_new)
    }

    /// Decode attention for a batch of sequences at one layer.
    fn decode<D: Device, Q: Element, T: Element + Default>(
        device: &D,
        cache: &mut KvCache<T>,
        layer: u32,
        batch: &[SeqId],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        cache.decode_with(device, &Self::SPEC, layer, batch, q, out)
    }
}

impl<A: Attention + ?Sized> AttentionHandle for A {}

fn same_layout(spec: &AttentionSpec, cache: &KvLayoutSpec) -> Result<(), RuntimeError> {
    if spec.kv != *cache {
        return Err(RuntimeError::Shape(format!(
            "the attention's layout {:?} is not the cache's {cache:?}",
            spec.kv
        )));
    }
    Ok(())
}
