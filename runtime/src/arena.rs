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
    /// (the ranges do not overlap: whole, distinct pages).
    fn copy_within(&mut self, src: usize, dst: usize, n: usize) -> Result<(), String>;

    /// Elements `range` of K and of V, copied to host memory.
    fn to_host(&self, range: std::ops::Range<usize>) -> Result<(Vec<T>, Vec<T>), String>;
}

/// K and V in host memory.
#[derive(Clone, Debug)]
pub struct HostArena<T> {
    pub(crate) k: Vec<T>,
    pub(crate) v: Vec<T>,
}

impl<T: Copy + Default> HostArena<T> {
    /// Two zeroed arenas of `len` elements.
    pub fn zeroed(len: usize) -> HostArena<T> {
        HostArena {
            k: vec![T::default(); len],
            v: vec![T::default(); len],
        }
    }
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
        self.k.copy_within(src..src + n, dst);
        self.v.copy_within(src..src + n, dst);
        Ok(())
    }

    fn to_host(&self, range: std::ops::Range<usize>) -> Result<(Vec<T>, Vec<T>), String> {
        Ok((self.k[range.clone()].to_vec(), self.v[range].to_vec()))
    }
}
