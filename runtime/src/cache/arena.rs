//! Where a [`crate::KvCache`] keeps its K and V: host memory
//! ([`HostArena`], for the CPU device) or device memory
//! ([`crate::hip::HipArena`], for the HIP device). The cache's bookkeeping
//! (pages, sequences, tables) is the same for both; only the bytes live
//! elsewhere, and launches on a device read and write its arena in place.

use crate::cache::CacheError;

/// The K and V storage of a cache: two arenas of the same length, in
/// elements, laid out `[layer][page][page elements]`.
pub trait Arena<T>: Sized {
    /// Elements in each of K and V.
    fn len(&self) -> usize;

    /// Whether the arenas hold no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies elements `src..src + n` to `dst..dst + n` in both K and V
    /// (the ranges do not overlap: whole, distinct pages); a range past the
    /// arena is an error, and nothing is copied.
    fn copy_within(&mut self, src: usize, dst: usize, n: usize) -> Result<(), String>;

    /// Elements `range` of K and of V, copied to host memory (a range past
    /// the arena is an error).
    fn to_host(&self, range: std::ops::Range<usize>) -> Result<(Vec<T>, Vec<T>), String>;

    /// Keeps a layer's fp8 scales where its launches read them (device
    /// memory, for a device arena), once, when the cache first stores them.
    fn store_scales(&mut self, _layer: u32, _k: &[f32], _v: &[f32]) -> Result<(), String> {
        Ok(())
    }
}

/// K and V in host memory.
#[derive(Clone, Debug)]
pub struct HostArena<T> {
    pub(crate) k: Vec<T>,
    pub(crate) v: Vec<T>,
}

impl<T: Copy + Default> HostArena<T> {
    /// Two zeroed arenas of `len` elements, or [`CacheError::OutOfMemory`]
    /// when the allocator refuses them (never an abort).
    pub fn zeroed(len: usize) -> Result<HostArena<T>, CacheError> {
        let oom = || CacheError::OutOfMemory {
            bytes: 2 * len as u128 * std::mem::size_of::<T>() as u128,
        };
        let mut halves = [Vec::new(), Vec::new()];
        for h in &mut halves {
            h.try_reserve_exact(len).map_err(|_| oom())?;
            h.resize(len, T::default());
        }
        let [k, v] = halves;
        Ok(HostArena { k, v })
    }
}

/// `n` elements from `start` as a range of an arena of `len`, if they lie
/// inside it.
fn span(start: usize, n: usize, len: usize) -> Option<std::ops::Range<usize>> {
    let end = start.checked_add(n)?;
    (end <= len).then_some(start..end)
}

impl<T> HostArena<T> {
    /// Elements `range` of K and V.
    pub fn slices(&self, range: std::ops::Range<usize>) -> Result<(&[T], &[T]), CacheError> {
        let n = self.k.len();
        match (self.k.get(range.clone()), self.v.get(range.clone())) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(CacheError::Arena(format!(
                "elements {range:?} of an arena of {n}"
            ))),
        }
    }

    /// Elements `range` of K and V, writable.
    pub fn slices_mut(
        &mut self,
        range: std::ops::Range<usize>,
    ) -> Result<(&mut [T], &mut [T]), CacheError> {
        let n = self.k.len();
        match (self.k.get_mut(range.clone()), self.v.get_mut(range.clone())) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(CacheError::Arena(format!(
                "elements {range:?} of an arena of {n}"
            ))),
        }
    }
}

impl<T: Copy> Arena<T> for HostArena<T> {
    fn len(&self) -> usize {
        self.k.len()
    }

    fn copy_within(&mut self, src: usize, dst: usize, n: usize) -> Result<(), String> {
        let len = self.k.len();
        let (Some(from), Some(_)) = (span(src, n, len), span(dst, n, len)) else {
            return Err(format!(
                "copy of {n} elements from {src} to {dst} in an arena of {len}"
            ));
        };
        self.k.copy_within(from.clone(), dst);
        self.v.copy_within(from, dst);
        Ok(())
    }

    fn to_host(&self, range: std::ops::Range<usize>) -> Result<(Vec<T>, Vec<T>), String> {
        let (k, v) = self.slices(range).map_err(|e| e.to_string())?;
        Ok((k.to_vec(), v.to_vec()))
    }
}
