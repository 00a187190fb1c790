//! [`DeviceArena`]: a [`crate::KvCache`]'s K and V (and each fp8 layer's
//! scales) in a device's memory, for any driver.

use std::collections::BTreeMap;
use std::ops::Range;

use attnforge_codegen::pod::Pod;

use super::kernels::Kernels;
use super::memory::{DeviceBuffer, Gpu, Stream, View};
use super::run::{KvView, KvViewMut, ScaleViews};
use super::step::StepPlan;
use super::Element;
use crate::arena::Arena;
use crate::driver::Driver;
use crate::RuntimeError;

/// K and V in device memory, with the stream the cache's own copies go on
/// (zeroing, copy-on-write page copies, scale uploads): launches through
/// the cache read and write them in place.
pub struct DeviceArena<T, D: Driver> {
    k: DeviceBuffer<T, D>,
    v: DeviceBuffer<T, D>,
    stream: Stream<D>,
    scales: BTreeMap<u32, [DeviceBuffer<f32, D>; 2]>,
    gpu: Gpu<D>,
}

impl<T, D: Driver> std::fmt::Debug for DeviceArena<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceArena")
            .field("elems", &self.k.len())
            .field("ordinal", &self.k.ordinal())
            .finish()
    }
}

impl<T: Pod, D: Driver> DeviceArena<T, D> {
    /// Two arenas of `len` elements each on `gpu`, zeroed on `stream` (the
    /// stream the cache's own copies go on).
    pub fn zeroed(
        gpu: &Gpu<D>,
        stream: &Stream<D>,
        len: usize,
    ) -> Result<DeviceArena<T, D>, RuntimeError> {
        stream.same_device("stream", gpu.ordinal())?;
        Ok(DeviceArena {
            k: gpu.alloc_zeroed(stream, len)?,
            v: gpu.alloc_zeroed(stream, len)?,
            stream: stream.clone(),
            scales: BTreeMap::new(),
            gpu: gpu.clone(),
        })
    }

    /// The ordinal of the device it lives on.
    pub fn ordinal(&self) -> u32 {
        self.k.ordinal()
    }

    /// The stream its own copies go on.
    pub fn stream(&self) -> &Stream<D> {
        &self.stream
    }

    /// Elements `range` of K and V (a layer), for a launch.
    pub fn layer(&self, range: Range<usize>) -> Result<KvView<'_, T, D>, RuntimeError> {
        Ok(KvView {
            k: self.k.view().slice(range.clone())?,
            v: self.v.view().slice(range)?,
        })
    }

    /// Elements `range` of K and V, writable (for the append kernel).
    pub fn layer_mut(&mut self, range: Range<usize>) -> Result<KvViewMut<'_, T, D>, RuntimeError> {
        Ok(KvViewMut {
            k: self.k.view_mut().slice(range.clone())?,
            v: self.v.view_mut().slice(range)?,
        })
    }

    /// Appends a plan's new rows into elements `range` (layer `layer`),
    /// with the layer's scales.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_layer<S: Element>(
        &mut self,
        kernels: &Kernels<D>,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        range: Range<usize>,
        layer: u32,
        k_new: View<'_, S, D>,
        v_new: View<'_, S, D>,
    ) -> Result<(), RuntimeError>
    where
        T: Element,
    {
        let kv = KvViewMut {
            k: self.k.view_mut().slice(range.clone())?,
            v: self.v.view_mut().slice(range)?,
        };
        let scales = self.scales.get(&layer).map(|[k, v]| (k.view(), v.view()));
        kernels.append(stream, plan, kv, scales, k_new, v_new)
    }

    /// A layer's fp8 scales on the device, once stored.
    pub fn scales(&self, layer: u32) -> Option<ScaleViews<'_, D>> {
        self.scales.get(&layer).map(|[k, v]| (k.view(), v.view()))
    }
}

impl<T: Pod + Default + Clone, D: Driver> Arena<T> for DeviceArena<T, D> {
    fn len(&self) -> usize {
        self.k.len()
    }

    fn copy_within(&mut self, src: usize, dst: usize, n: usize) -> Result<(), String> {
        let len = self.k.len();
        if src.max(dst).checked_add(n).is_none_or(|end| end > len) {
            return Err(format!(
                "copy of {n} elements from {src} to {dst} past {len}"
            ));
        }
        let size = std::mem::size_of::<T>();
        let _submit = self.stream.submit();
        for b in [&self.k, &self.v] {
            let arg = |r: Range<usize>| {
                b.view()
                    .slice(r)
                    .and_then(|v| v.arg(&self.stream, "arena").map(|_| v.ptr()))
                    .map_err(|e| e.to_string())
            };
            let (s, d) = (arg(src..src + n)?, arg(dst..dst + n)?);
            // SAFETY: both ranges lie in the live allocation (checked above),
            // which the stream keeps alive; they are distinct whole pages.
            unsafe {
                self.stream
                    .driver()
                    .copy(&self.stream.inner.raw, d, s, n * size)
                    .map_err(|e| e.to_string())?
            };
        }
        Ok(())
    }

    fn to_host(&self, range: Range<usize>) -> Result<(Vec<T>, Vec<T>), String> {
        let kv = self.layer(range.clone()).map_err(|e| e.to_string())?;
        let mut k = vec![T::default(); range.len()];
        let mut v = vec![T::default(); range.len()];
        kv.k.read_into(&self.stream, &mut k)
            .and_then(|_| kv.v.read_into(&self.stream, &mut v))
            .map_err(|e| e.to_string())?;
        Ok((k, v))
    }

    fn store_scales(&mut self, layer: u32, k: &[f32], v: &[f32]) -> Result<(), String> {
        let up = |h: &[f32]| self.gpu.upload(&self.stream, h).map_err(|e| e.to_string());
        let pair = [up(k)?, up(v)?];
        self.scales.insert(layer, pair);
        Ok(())
    }
}
