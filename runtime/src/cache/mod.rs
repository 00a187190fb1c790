//! The cache bookkeeping layer: the page allocator ([`alloc`]), where K
//! and V live ([`arena`]), page tables and slot mappings ([`table`]), and
//! the KV cache itself: sequences, their pages, and the arenas holding
//! every layer.
//!
//! ```text
//! K arena: [layer][page][page_size · kv_heads · head_dim]  (the layout's order inside)
//! V arena: the same shape; page p of layer l is at the same offset in both
//! ```
//!
//! Every operation is all-or-nothing: when pages run out, it returns
//! [`CacheError::Alloc`] with the allocator's `CapacityExceeded` and nothing
//! changes. Nothing is evicted unless the caller asks for it
//! ([`KvCache::evict_lru_sequences`]).

use std::collections::BTreeMap;

use attnforge_codegen::KvLayoutSpec;

pub mod alloc;
pub mod arena;
pub mod table;

use alloc::{AllocError, PageAllocator, PageId};
use arena::{Arena, HostArena};
use table::PageTable;

use crate::plan::KvScales;

/// A layer's fp8 K and V scales.
pub(crate) type Scales = (Vec<f32>, Vec<f32>);

/// A sequence's id in a cache.
pub type SeqId = u64;

/// Why a cache operation failed. A failed operation changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// No live sequence has this id.
    #[error("sequence {0} does not exist (never added, or removed)")]
    UnknownSequence(SeqId),
    /// The allocator refused (capacity exceeded, or a bookkeeping error).
    #[error("sequence {seq}: {source}")]
    Alloc {
        /// The sequence the operation was for.
        seq: SeqId,
        /// The allocator's error.
        source: AllocError,
    },
    /// The arena would not fit in memory or in `usize` (also what an
    /// [`CacheError::OutOfMemory`] arena becomes in a cache's constructor).
    #[error(
        "an arena of {layers} layer(s) × {max_pages} page(s) × {page_bytes} bytes is too large"
    )]
    TooLarge {
        /// Layers.
        layers: u32,
        /// Pages.
        max_pages: u32,
        /// Bytes per page.
        page_bytes: u64,
    },
    /// A layer index past the cache's layers.
    #[error("layer {layer} does not exist (the cache has {layers})")]
    NoLayer {
        /// The layer asked for.
        layer: u32,
        /// Layers in the cache.
        layers: u32,
    },
    /// Memory for an arena could not be allocated (host memory: the
    /// allocator refused; the cache's constructors report it as
    /// [`CacheError::TooLarge`]).
    #[error("{bytes} bytes of memory for K and V could not be allocated")]
    OutOfMemory {
        /// Bytes asked for, K and V together.
        bytes: u128,
    },
    /// fp8 scales that differ from the ones a layer's data was written with.
    #[error(
        "layer {layer}: these K/V scales differ from the ones its fp8 data was written with \
         (set by KvCache::set_kv_scales or the layer's first append)"
    )]
    ScalesMismatch {
        /// The layer.
        layer: u32,
    },
    /// The spec is invalid.
    #[error("invalid layout: {0}")]
    Spec(#[from] attnforge_codegen::SpecError),
    /// The arena's memory failed (a device allocation or copy).
    #[error("arena: {0}")]
    Arena(String),
}

#[derive(Clone, Debug)]
struct Seq {
    /// Pages still held, in token order.
    pages: Vec<PageId>,
    /// Tokens appended in all.
    len: usize,
    /// Leading pages released because they left the sliding window.
    dropped: usize,
    completed: bool,
    last_access: u64,
}

/// A 2-D block table: one row of page ids per sequence, padded with -1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTable {
    /// Row-major, `batch × width` entries.
    pub pages: Vec<i32>,
    /// Entries per row (the longest sequence's page count).
    pub width: usize,
    /// Tokens held per sequence (after any sliding-window release).
    pub lens: Vec<i32>,
}

/// Paged KV storage for every layer of a model, with its sequences.
///
/// The arenas are host memory by default ([`KvCache::new`]), or a device's
/// memory ([`KvCache::new_on`]), where launches read and write them in
/// place.
#[derive(Clone, Debug)]
pub struct KvCache<T, A = HostArena<T>> {
    layout: KvLayoutSpec,
    layers: u32,
    window: Option<u32>,
    /// Each fp8 layer's K and V scales, as its data was written.
    scales: BTreeMap<u32, Scales>,
    alloc: PageAllocator,
    arena: A,
    seqs: BTreeMap<SeqId, Seq>,
    next_id: SeqId,
    clock: u64,
    /// A process-unique id (what a step plan records).
    cache_id: u64,
    /// Bumped by every change of sequences or pages (a step plan made
    /// before one is stale).
    version: u64,
    _t: std::marker::PhantomData<T>,
}

impl<T: Copy + Default> KvCache<T> {
    /// A cache of `max_pages` pages per layer for `layers` layers, all free,
    /// the arenas zeroed, in host memory.
    pub fn new(
        layout: KvLayoutSpec,
        layers: u32,
        max_pages: u32,
    ) -> Result<KvCache<T>, CacheError> {
        KvCache::with_arena(layout, layers, max_pages, HostArena::zeroed)
    }

    /// K and V of one layer: `max_pages` whole pages each.
    pub fn layer(&self, layer: u32) -> Result<(&[T], &[T]), CacheError> {
        let r = self.layer_range(layer)?;
        Ok((&self.arena.k[r.clone()], &self.arena.v[r]))
    }

    /// K and V of one layer, writable (for the append kernel).
    pub fn layer_mut(&mut self, layer: u32) -> Result<(&mut [T], &mut [T]), CacheError> {
        let r = self.layer_range(layer)?;
        Ok((&mut self.arena.k[r.clone()], &mut self.arena.v[r]))
    }
}

impl<T, A: Arena<T>> KvCache<T, A> {
    /// A cache over arenas that `make` allocates with the element count
    /// asked (checked against `usize` and the layout first).
    pub fn with_arena(
        layout: KvLayoutSpec,
        layers: u32,
        max_pages: u32,
        make: impl FnOnce(usize) -> Result<A, CacheError>,
    ) -> Result<KvCache<T, A>, CacheError> {
        layout.validate()?;
        if max_pages > i32::MAX as u32 {
            return Err(CacheError::TooLarge {
                layers,
                max_pages,
                page_bytes: layout.page_bytes(),
            });
        }
        let too_large = CacheError::TooLarge {
            layers,
            max_pages,
            page_bytes: layout.page_bytes(),
        };
        let elems = (layers as u64)
            .checked_mul(max_pages as u64)
            .and_then(|x| x.checked_mul(layout.page_elems()))
            .filter(|&x| x <= (isize::MAX as u64) / (2 * std::mem::size_of::<T>().max(1) as u64))
            .ok_or(too_large.clone())? as usize;
        let arena = make(elems).map_err(|e| match e {
            CacheError::OutOfMemory { .. } => too_large,
            e => e,
        })?;
        Ok(KvCache {
            layout,
            layers,
            window: None,
            scales: BTreeMap::new(),
            alloc: PageAllocator::new(max_pages),
            arena,
            seqs: BTreeMap::new(),
            next_id: 0,
            clock: 0,
            cache_id: crate::launch::next_id(),
            version: 0,
            _t: std::marker::PhantomData,
        })
    }

    /// The arenas (for launches on the device that holds them).
    pub fn arena(&self) -> &A {
        &self.arena
    }

    /// The arenas, writable (for the append kernel).
    pub fn arena_mut(&mut self) -> &mut A {
        &mut self.arena
    }

    /// K and V of one layer, copied to host memory (for any arena).
    pub fn layer_to_host(&self, layer: u32) -> Result<(Vec<T>, Vec<T>), CacheError> {
        let r = self.layer_range(layer)?;
        self.arena.to_host(r).map_err(CacheError::Arena)
    }

    /// Releases pages that fall wholly out of a sliding window of `w` tokens
    /// (the attention's `sliding_window`) as sequences grow. A window holds
    /// at least one token (the spec's rule): `Some(0)` is refused.
    pub fn with_sliding_window(mut self, w: Option<u32>) -> Result<Self, CacheError> {
        if let Some(w) = w {
            attnforge_codegen::spec::rules::sliding_window(u64::from(w))?;
        }
        self.window = w;
        Ok(self)
    }

    /// A layer's fp8 K and V scales, once set (by
    /// `KvCache::set_kv_scales` or the layer's first scaled append).
    pub fn kv_scales(&self, layer: u32) -> Option<(&[f32], &[f32])> {
        self.scales
            .get(&layer)
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Checks scales given for `layer` against the ones its data was
    /// written with (bit for bit; a layer with none stored passes), and with
    /// `remember` stores them when it has none. Allocates only to store.
    pub(crate) fn bind_scales(
        &mut self,
        layer: u32,
        (k, v): (&[f32], &[f32]),
        remember: bool,
    ) -> Result<(), CacheError> {
        self.layer_range(layer)?;
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        match self.scales.get(&layer) {
            Some((sk, sv)) if same(k, sk) && same(v, sv) => Ok(()),
            Some(_) => Err(CacheError::ScalesMismatch { layer }),
            None => {
                if remember {
                    self.arena
                        .store_scales(layer, k, v)
                        .map_err(CacheError::Arena)?;
                    self.scales.insert(layer, (k.to_vec(), v.to_vec()));
                }
                Ok(())
            }
        }
    }

    /// The arenas, writable, beside `layer`'s stored scales (an append
    /// needs both at once).
    pub(crate) fn arena_mut_and_scales(&mut self, layer: u32) -> (&mut A, Option<KvScales<'_>>) {
        let scales = self.scales.get(&layer).map(|(k, v)| KvScales { k, v });
        (&mut self.arena, scales)
    }

    /// The layout.
    pub fn layout(&self) -> &KvLayoutSpec {
        &self.layout
    }

    /// Layers.
    pub fn layers(&self) -> u32 {
        self.layers
    }

    /// The page allocator (read-only: counts, reference counts).
    pub fn allocator(&self) -> &PageAllocator {
        &self.alloc
    }

    /// Pages per layer arena.
    pub fn max_pages(&self) -> usize {
        self.alloc.max_pages()
    }

    /// Elements `layer` covers in each arena.
    pub fn layer_range(&self, layer: u32) -> Result<std::ops::Range<usize>, CacheError> {
        if layer >= self.layers {
            return Err(CacheError::NoLayer {
                layer,
                layers: self.layers,
            });
        }
        let n = self.max_pages() * self.layout.page_elems() as usize;
        let l = layer as usize;
        Ok(l * n..(l + 1) * n)
    }

    /// The cache's id and the version of its sequences and pages: a step
    /// plan is valid for exactly these.
    pub(crate) fn plan_key(&self) -> (u64, u64) {
        (self.cache_id, self.version)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn seq(&self, id: SeqId) -> Result<&Seq, CacheError> {
        self.seqs.get(&id).ok_or(CacheError::UnknownSequence(id))
    }

    /// Live sequences, in id order.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Tokens appended to a sequence in all.
    pub fn seq_len(&self, id: SeqId) -> Result<usize, CacheError> {
        Ok(self.seq(id)?.len)
    }

    /// Pages a sequence holds, in token order.
    pub fn seq_pages(&self, id: SeqId) -> Result<&[PageId], CacheError> {
        Ok(&self.seq(id)?.pages)
    }

    /// Adds an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = self.next_id;
        self.next_id += 1;
        self.version += 1;
        let t = self.tick();
        self.seqs.insert(
            id,
            Seq {
                pages: Vec::new(),
                len: 0,
                dropped: 0,
                completed: false,
                last_access: t,
            },
        );
        id
    }

    /// Makes room for `n` more tokens and returns their slots (page ·
    /// page_size + offset) for the append kernel. Allocates pages as needed,
    /// copying a shared, partly filled last page first; all or nothing.
    pub fn append_tokens(&mut self, id: SeqId, n: usize) -> Result<Vec<i64>, CacheError> {
        let p = self.layout.page_size as usize;
        let s = self.seq(id)?;
        let held = s.len - s.dropped * p; // tokens in the pages held
        let last = s.pages.last().copied();
        let npages = s.pages.len();
        let cow = n > 0
            && !held.is_multiple_of(p)
            && last.is_some_and(|pg| self.alloc.ref_count(pg).is_ok_and(|r| r > 1));
        // A request past usize (or past any capacity) asks for more pages
        // than exist: the allocator refuses it, and nothing changes.
        let new_pages = held.saturating_add(n).div_ceil(p) - npages;
        if s.len.checked_add(n).is_none() {
            return Err(CacheError::Alloc {
                seq: id,
                source: self.alloc.exceeded(usize::MAX),
            });
        }
        let mut fresh = self
            .alloc
            .allocate_pages(new_pages.saturating_add(cow as usize))
            .map_err(|source| CacheError::Alloc { seq: id, source })?;
        if cow {
            let copy = *fresh.last().expect("allocated above");
            let old = last.expect("a partly filled page exists");
            if let Err(e) = self.copy_page(old, copy) {
                // All or nothing: the new pages go back.
                let _ = self.alloc.release_all(&fresh);
                return Err(e);
            }
            fresh.pop();
            self.alloc
                .release(old)
                .map_err(|source| CacheError::Alloc { seq: id, source })?;
            let s = self.seqs.get_mut(&id).expect("checked above");
            *s.pages.last_mut().expect("partial implies a page") = copy;
        }
        let t = self.tick();
        self.version += 1;
        let s = self.seqs.get_mut(&id).expect("checked above");
        s.pages.extend(fresh);
        let slots = (held..held + n)
            .map(|pos| s.pages[pos / p] as i64 * p as i64 + (pos % p) as i64)
            .collect();
        let first_new = s.len;
        s.len += n;
        s.last_access = t;
        self.release_outside_window(id, first_new)?;
        Ok(slots)
    }

    /// Releases the pages no query from position `first_query` on can see.
    fn release_outside_window(&mut self, id: SeqId, first_query: usize) -> Result<(), CacheError> {
        let Some(w) = self.window else {
            return Ok(());
        };
        let p = self.layout.page_size as usize;
        let s = self.seqs.get_mut(&id).expect("caller checked");
        // The first new token (a prefill's first query; a decode step's only
        // one) sees tokens from first_query + 1 - w on, and later queries
        // see less: a page whose last token is before that is dead.
        let first_visible = (first_query + 1).saturating_sub(w as usize);
        let mut gone = Vec::new();
        while s.pages.len() > 1 && (s.dropped + 1) * p <= first_visible {
            gone.push(s.pages.remove(0));
            s.dropped += 1;
        }
        self.alloc
            .release_all(&gone)
            .map_err(|source| CacheError::Alloc { seq: id, source })
    }

    fn copy_page(&mut self, from: PageId, to: PageId) -> Result<(), CacheError> {
        let pe = self.layout.page_elems() as usize;
        let per_layer = self.max_pages() * pe;
        for l in 0..self.layers as usize {
            let (src, dst) = (
                l * per_layer + from as usize * pe,
                l * per_layer + to as usize * pe,
            );
            self.arena
                .copy_within(src, dst, pe)
                .map_err(CacheError::Arena)?;
        }
        Ok(())
    }

    /// A new sequence sharing every page of `id` (full pages stay shared; a
    /// partly filled last page is copied when either sequence appends to it).
    pub fn fork(&mut self, id: SeqId) -> Result<SeqId, CacheError> {
        let parent = self.seq(id)?.clone();
        for &pg in &parent.pages {
            self.alloc
                .retain(pg)
                .map_err(|source| CacheError::Alloc { seq: id, source })?;
        }
        let child = self.next_id;
        self.next_id += 1;
        self.version += 1;
        let t = self.tick();
        self.seqs.insert(
            child,
            Seq {
                completed: false,
                last_access: t,
                ..parent
            },
        );
        Ok(child)
    }

    /// Removes a sequence and releases its pages; returns how many pages
    /// became free (shared pages stay with their other holders).
    pub fn remove(&mut self, id: SeqId) -> Result<usize, CacheError> {
        let pages = self.seq(id)?.pages.clone();
        let before = self.alloc.free_pages() + self.alloc.evictable_pages();
        self.alloc
            .release_all(&pages)
            .map_err(|source| CacheError::Alloc { seq: id, source })?;
        self.seqs.remove(&id);
        self.version += 1;
        Ok(self.alloc.free_pages() + self.alloc.evictable_pages() - before)
    }

    /// Marks a sequence finished; [`Self::cleanup_completed`] removes it.
    pub fn mark_completed(&mut self, id: SeqId) -> Result<(), CacheError> {
        self.seqs
            .get_mut(&id)
            .ok_or(CacheError::UnknownSequence(id))?
            .completed = true;
        Ok(())
    }

    /// Removes every completed sequence; returns their ids.
    pub fn cleanup_completed(&mut self) -> Result<Vec<SeqId>, CacheError> {
        let done: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.completed)
            .map(|(&i, _)| i)
            .collect();
        for &id in &done {
            self.remove(id)?;
        }
        Ok(done)
    }

    /// Records an access (appends and tables record their own).
    pub fn touch(&mut self, id: SeqId) -> Result<(), CacheError> {
        // An unknown id changes nothing, the clock included.
        self.seq(id)?;
        let t = self.tick();
        if let Some(s) = self.seqs.get_mut(&id) {
            s.last_access = t;
        }
        Ok(())
    }

    /// Removes the `n` least recently used sequences; returns each with the
    /// pages it held. The only way sequences are ever evicted.
    pub fn evict_lru_sequences(
        &mut self,
        n: usize,
    ) -> Result<Vec<(SeqId, Vec<PageId>)>, CacheError> {
        let mut by_age: Vec<(u64, SeqId)> =
            self.seqs.iter().map(|(&i, s)| (s.last_access, i)).collect();
        by_age.sort_unstable();
        let mut out = Vec::new();
        for &(_, id) in by_age.iter().take(n) {
            let pages = self.seq(id)?.pages.clone();
            self.remove(id)?;
            out.push((id, pages));
        }
        Ok(out)
    }

    /// The CSR page table of a batch, recording an access.
    pub fn page_table(&mut self, batch: &[SeqId]) -> Result<PageTable, CacheError> {
        let p = self.layout.page_size as usize;
        let mut rows: Vec<(Vec<i32>, usize)> = Vec::with_capacity(batch.len());
        for &id in batch {
            let s = self.seq(id)?;
            // Page ids are below max_pages, which fits in i32 (checked in new).
            let pages = s.pages.iter().map(|&pg| pg as i32).collect();
            rows.push((pages, s.len - s.dropped * p));
        }
        for &id in batch {
            self.touch(id)?;
        }
        Ok(PageTable::from_sequences(
            self.layout.page_size,
            rows.iter().map(|(pg, n)| (&pg[..], *n)),
        ))
    }

    /// The 2-D block table of a batch, rows padded with -1.
    pub fn block_table(&mut self, batch: &[SeqId]) -> Result<BlockTable, CacheError> {
        let t = self.page_table(batch)?;
        let width = t
            .indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0);
        let mut pages = vec![-1; batch.len() * width];
        let mut lens = Vec::with_capacity(batch.len());
        for b in 0..batch.len() {
            let row = &t.indices[t.indptr[b] as usize..t.indptr[b + 1] as usize];
            pages[b * width..b * width + row.len()].copy_from_slice(row);
            lens.push(t.seq_len(b, self.layout.page_size) as i32);
        }
        Ok(BlockTable { pages, width, lens })
    }

    /// Checks the allocator's invariants and that every page's reference
    /// count equals the number of live sequences holding it.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.alloc.check_invariants()?;
        let mut holders = vec![0u32; self.max_pages()];
        let p = self.layout.page_size as usize;
        for (id, s) in &self.seqs {
            let held = s.len - s.dropped * p;
            if s.pages.len() != held.div_ceil(p) {
                return Err(format!(
                    "sequence {id}: {} pages for {held} tokens",
                    s.pages.len()
                ));
            }
            for &pg in &s.pages {
                holders[pg as usize] += 1;
            }
        }
        for (pg, &h) in holders.iter().enumerate() {
            let refs = self
                .alloc
                .ref_count(pg as PageId)
                .map_err(|e| e.to_string())?;
            if refs != h {
                return Err(format!("page {pg}: {refs} reference(s) but {h} holder(s)"));
            }
        }
        Ok(())
    }
}
