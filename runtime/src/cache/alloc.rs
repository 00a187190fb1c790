//! The capacity-checked page allocator.
//!
//! ```text
//! pages: [ meta 0 | meta 1 | ... | meta max_pages-1 ]   (flat, allocated once)
//!            prev/next indices thread two intrusive lists through it:
//! free list       head -> most recently freed ... -> least recently freed
//! evictable list  head -> least recently used ... -> most recently used
//!                 (cached pages nobody references: content kept, revivable)
//! ```
//!
//! The rules:
//! - `max_pages` is strict. When no page is free, `allocate_page` returns
//!   [`AllocError::CapacityExceeded`] and changes nothing.
//! - The allocator never evicts on its own. Cached pages are evicted only by
//!   [`PageAllocator::evict_lru`].
//! - A freed page is reused before any other, the most recently freed first.
//! - Allocating, freeing and evicting are O(1) list operations.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A page id: an index into the KV arenas.
pub type PageId = u32;

const NIL: u32 = u32::MAX;

/// Why an allocator call failed. A failed call changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Not enough free pages; nothing was evicted or allocated.
    #[error(
        "capacity exceeded: {requested} page(s) requested, {free} free of {max_pages} \
         ({evictable} cached page(s) could be evicted with evict_lru)"
    )]
    CapacityExceeded {
        /// Pages asked for.
        requested: usize,
        /// Pages free.
        free: usize,
        /// Unreferenced cached pages that `evict_lru` could free.
        evictable: usize,
        /// The allocator's capacity.
        max_pages: usize,
    },
    /// The page id is not below `max_pages`.
    #[error("page {page} does not exist (max_pages = {max_pages})")]
    InvalidPage {
        /// The page.
        page: PageId,
        /// The allocator's capacity.
        max_pages: usize,
    },
    /// The page is not in use: released twice, or never allocated.
    #[error("page {page} is not in use (double free, or never allocated)")]
    DoubleFree {
        /// The page.
        page: PageId,
    },
    /// Only a page that is in use can be shared or registered.
    #[error("page {page} is not in use")]
    NotInUse {
        /// The page.
        page: PageId,
    },
}

/// The chained hash of a full page of tokens, for prefix caching: it covers
/// the parent page's hash, so equal hashes mean equal prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// The hash of `tokens` following the page hashed `parent` (None for
    /// the first page), with an optional salt (a LoRA id, a cache tag).
    pub fn new(parent: Option<BlockHash>, tokens: &[u32], salt: Option<&[u8]>) -> BlockHash {
        let mut h = Sha256::new();
        match parent {
            Some(p) => {
                h.update([1]);
                h.update(p.0);
            }
            None => h.update([0]),
        }
        h.update((tokens.len() as u64).to_le_bytes());
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        match salt {
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s);
            }
            None => h.update([0]),
        }
        BlockHash(h.finalize().into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Free,
    Evictable,
    None,
}

#[derive(Clone, Debug)]
struct Meta {
    prev: u32,
    next: u32,
    list: List,
    refs: u32,
    hash: Option<BlockHash>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Ends {
    head: u32,
    tail: u32,
    len: usize,
}

/// Fixed-capacity, reference-counted page allocator with prefix caching.
#[derive(Clone, Debug)]
pub struct PageAllocator {
    meta: Vec<Meta>,
    free: Ends,
    evictable: Ends,
    cached: HashMap<BlockHash, PageId>,
}

impl PageAllocator {
    /// An allocator of `max_pages` pages, all free; page 0 is handed out first.
    pub fn new(max_pages: u32) -> PageAllocator {
        let n = max_pages.min(NIL - 1);
        let mut a = PageAllocator {
            meta: vec![
                Meta {
                    prev: NIL,
                    next: NIL,
                    list: List::None,
                    refs: 0,
                    hash: None,
                };
                n as usize
            ],
            free: Ends {
                head: NIL,
                tail: NIL,
                len: 0,
            },
            evictable: Ends {
                head: NIL,
                tail: NIL,
                len: 0,
            },
            cached: HashMap::new(),
        };
        for p in (0..n).rev() {
            a.push_front(List::Free, p);
        }
        a
    }

    /// Pages in all.
    pub fn max_pages(&self) -> usize {
        self.meta.len()
    }

    /// Pages free now.
    pub fn free_pages(&self) -> usize {
        self.free.len
    }

    /// Unreferenced cached pages (freeable with [`Self::evict_lru`]).
    pub fn evictable_pages(&self) -> usize {
        self.evictable.len
    }

    /// Pages referenced by someone.
    pub fn used_pages(&self) -> usize {
        self.meta.len() - self.free.len - self.evictable.len
    }

    /// References held on a page (0 when free or evictable).
    pub fn ref_count(&self, page: PageId) -> Result<u32, AllocError> {
        Ok(self.get(page)?.refs)
    }

    /// The hash a page is cached under, if any.
    pub fn hash_of(&self, page: PageId) -> Result<Option<BlockHash>, AllocError> {
        Ok(self.get(page)?.hash)
    }

    fn get(&self, page: PageId) -> Result<&Meta, AllocError> {
        self.meta.get(page as usize).ok_or(AllocError::InvalidPage {
            page,
            max_pages: self.meta.len(),
        })
    }

    fn ends(&mut self, l: List) -> &mut Ends {
        match l {
            List::Free => &mut self.free,
            List::Evictable => &mut self.evictable,
            List::None => unreachable!("pages in use are on no list"),
        }
    }

    fn push_front(&mut self, l: List, p: u32) {
        let head = self.ends(l).head;
        let m = &mut self.meta[p as usize];
        (m.prev, m.next, m.list) = (NIL, head, l);
        if head != NIL {
            self.meta[head as usize].prev = p;
        }
        let e = self.ends(l);
        e.head = p;
        if e.tail == NIL {
            e.tail = p;
        }
        e.len += 1;
    }

    fn push_back(&mut self, l: List, p: u32) {
        let tail = self.ends(l).tail;
        let m = &mut self.meta[p as usize];
        (m.prev, m.next, m.list) = (tail, NIL, l);
        if tail != NIL {
            self.meta[tail as usize].next = p;
        }
        let e = self.ends(l);
        e.tail = p;
        if e.head == NIL {
            e.head = p;
        }
        e.len += 1;
    }

    fn unlink(&mut self, p: u32) {
        let (prev, next, l) = {
            let m = &self.meta[p as usize];
            (m.prev, m.next, m.list)
        };
        if prev != NIL {
            self.meta[prev as usize].next = next;
        } else {
            self.ends(l).head = next;
        }
        if next != NIL {
            self.meta[next as usize].prev = prev;
        } else {
            self.ends(l).tail = prev;
        }
        self.ends(l).len -= 1;
        let m = &mut self.meta[p as usize];
        (m.prev, m.next, m.list) = (NIL, NIL, List::None);
    }

    fn take_free(&mut self) -> PageId {
        let p = self.free.head;
        self.unlink(p);
        self.meta[p as usize].refs = 1;
        p
    }

    pub(crate) fn exceeded(&self, requested: usize) -> AllocError {
        AllocError::CapacityExceeded {
            requested,
            free: self.free.len,
            evictable: self.evictable.len,
            max_pages: self.meta.len(),
        }
    }

    /// One page, the most recently freed first; never evicts.
    pub fn allocate_page(&mut self) -> Result<PageId, AllocError> {
        if self.free.len == 0 {
            return Err(self.exceeded(1));
        }
        Ok(self.take_free())
    }

    /// `n` pages, or none: on failure nothing changed.
    pub fn allocate_pages(&mut self, n: usize) -> Result<Vec<PageId>, AllocError> {
        if self.free.len < n {
            return Err(self.exceeded(n));
        }
        Ok((0..n).map(|_| self.take_free()).collect())
    }

    /// Adds a reference to a page in use (sharing it, as a fork does).
    pub fn retain(&mut self, page: PageId) -> Result<(), AllocError> {
        if self.get(page)?.refs == 0 {
            return Err(AllocError::NotInUse { page });
        }
        self.meta[page as usize].refs += 1;
        Ok(())
    }

    /// Drops a reference. At zero, a cached page becomes evictable (its
    /// content kept) and any other page goes to the front of the free list.
    pub fn release(&mut self, page: PageId) -> Result<(), AllocError> {
        if self.get(page)?.refs == 0 {
            return Err(AllocError::DoubleFree { page });
        }
        let m = &mut self.meta[page as usize];
        m.refs -= 1;
        if m.refs == 0 {
            if m.hash.is_some() {
                self.push_back(List::Evictable, page);
            } else {
                self.push_front(List::Free, page);
            }
        }
        Ok(())
    }

    /// Releases pages in reverse order, so that a sequence's tail is reused
    /// (and, when cached, evicted) before its head.
    pub fn release_all(&mut self, pages: &[PageId]) -> Result<(), AllocError> {
        // Check first, so that a bad id changes nothing.
        let mut counts: HashMap<PageId, u32> = HashMap::new();
        for &p in pages {
            *counts.entry(p).or_default() += 1;
        }
        for (&p, &n) in &counts {
            if self.get(p)?.refs < n {
                return Err(AllocError::DoubleFree { page: p });
            }
        }
        for &p in pages.iter().rev() {
            self.release(p)?;
        }
        Ok(())
    }

    /// Registers a full page in use under `hash`. Returns the page already
    /// cached under it if there is one (the caller may share that instead).
    pub fn register(
        &mut self,
        page: PageId,
        hash: BlockHash,
    ) -> Result<Option<PageId>, AllocError> {
        if self.get(page)?.refs == 0 {
            return Err(AllocError::NotInUse { page });
        }
        if let Some(&existing) = self.cached.get(&hash) {
            if existing != page {
                return Ok(Some(existing));
            }
            return Ok(None);
        }
        if let Some(old) = self.meta[page as usize].hash.replace(hash) {
            self.cached.remove(&old);
        }
        self.cached.insert(hash, page);
        Ok(None)
    }

    /// Looks a prefix page up by hash and takes a reference to it, reviving
    /// it if it was evictable. `None` if nothing is cached under `hash`.
    pub fn lookup(&mut self, hash: &BlockHash) -> Option<PageId> {
        let page = *self.cached.get(hash)?;
        if self.meta[page as usize].list == List::Evictable {
            self.unlink(page);
        }
        self.meta[page as usize].refs += 1;
        Some(page)
    }

    /// Evicts up to `n` unreferenced cached pages, least recently released
    /// first; they become free. Returns them.
    pub fn evict_lru(&mut self, n: usize) -> Vec<PageId> {
        let mut out = Vec::with_capacity(n.min(self.evictable.len));
        while out.len() < n && self.evictable.head != NIL {
            let p = self.evictable.head;
            self.unlink(p);
            if let Some(h) = self.meta[p as usize].hash.take() {
                self.cached.remove(&h);
            }
            self.push_front(List::Free, p);
            out.push(p);
        }
        out
    }

    /// Checks every invariant; the error says which one broke.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.meta.len();
        let mut seen = vec![false; n];
        for (l, ends) in [(List::Free, &self.free), (List::Evictable, &self.evictable)] {
            let (mut p, mut prev, mut len) = (ends.head, NIL, 0usize);
            while p != NIL {
                let m = self
                    .meta
                    .get(p as usize)
                    .ok_or(format!("{l:?} list holds page {p}"))?;
                if std::mem::replace(&mut seen[p as usize], true) {
                    return Err(format!("page {p} is twice on the lists"));
                }
                if m.list != l || m.prev != prev || m.refs != 0 {
                    return Err(format!("page {p} on the {l:?} list: {m:?}"));
                }
                if (l == List::Free) != m.hash.is_none() {
                    return Err(format!("page {p} on the {l:?} list has hash {:?}", m.hash));
                }
                len += 1;
                if len > n {
                    return Err(format!("{l:?} list has a cycle"));
                }
                (prev, p) = (p, m.next);
            }
            if ends.tail != prev || ends.len != len {
                return Err(format!(
                    "{l:?} list: ends {ends:?}, walked {len} ending at {prev}"
                ));
            }
        }
        for (p, m) in self.meta.iter().enumerate() {
            if !seen[p] && (m.refs == 0 || m.list != List::None) {
                return Err(format!("page {p} is on no list but has {m:?}"));
            }
            if let Some(h) = m.hash {
                if self.cached.get(&h) != Some(&(p as u32)) {
                    return Err(format!("page {p}'s hash is not in the cache map"));
                }
            }
        }
        for (h, &p) in &self.cached {
            if self.meta.get(p as usize).and_then(|m| m.hash) != Some(*h) {
                return Err(format!(
                    "cache map names page {p} for a hash it does not hold"
                ));
            }
        }
        if self.free.len + self.evictable.len + self.used_pages() != n {
            return Err("free + evictable + used != max_pages".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_is_lifo_and_capacity_is_strict() {
        let mut a = PageAllocator::new(3);
        let (p0, p1, p2) = (
            a.allocate_page().unwrap(),
            a.allocate_page().unwrap(),
            a.allocate_page().unwrap(),
        );
        assert_eq!((p0, p1, p2), (0, 1, 2));
        let err = a.allocate_page().unwrap_err();
        assert_eq!(
            err,
            AllocError::CapacityExceeded {
                requested: 1,
                free: 0,
                evictable: 0,
                max_pages: 3
            }
        );
        a.release(p0).unwrap();
        a.release(p2).unwrap();
        assert_eq!(a.allocate_page().unwrap(), p2, "most recently freed first");
        assert_eq!(a.allocate_page().unwrap(), p0);
        a.check_invariants().unwrap();
    }

    #[test]
    fn all_or_nothing_and_typed_errors() {
        let mut a = PageAllocator::new(4);
        let got = a.allocate_pages(3).unwrap();
        let before = a.clone();
        assert!(matches!(
            a.allocate_pages(2),
            Err(AllocError::CapacityExceeded {
                requested: 2,
                free: 1,
                ..
            })
        ));
        assert_eq!(format!("{:?}", a), format!("{:?}", before));
        a.release(got[0]).unwrap();
        assert_eq!(
            a.release(got[0]),
            Err(AllocError::DoubleFree { page: got[0] })
        );
        assert_eq!(a.release(3), Err(AllocError::DoubleFree { page: 3 }));
        assert_eq!(
            a.release(9),
            Err(AllocError::InvalidPage {
                page: 9,
                max_pages: 4
            })
        );
        assert_eq!(
            a.release_all(&[got[1], got[1]]),
            Err(AllocError::DoubleFree { page: got[1] })
        );
        assert_eq!(
            a.ref_count(got[1]).unwrap(),
            1,
            "a failed release_all changes nothing"
        );
        a.check_invariants().unwrap();
    }

    #[test]
    fn cached_pages_are_evicted_only_when_asked() {
        let mut a = PageAllocator::new(2);
        let h1 = BlockHash::new(None, &[1, 2, 3, 4], None);
        let h2 = BlockHash::new(Some(h1), &[5, 6, 7, 8], None);
        assert_ne!(h1, BlockHash::new(None, &[1, 2, 3, 4], Some(b"lora-7")));
        let (p, q) = (a.allocate_page().unwrap(), a.allocate_page().unwrap());
        a.register(p, h1).unwrap();
        a.register(q, h2).unwrap();
        a.release(p).unwrap();
        a.release(q).unwrap();
        assert_eq!((a.free_pages(), a.evictable_pages()), (0, 2));
        // Full: the allocator does not evict by itself.
        assert!(matches!(
            a.allocate_page(),
            Err(AllocError::CapacityExceeded { evictable: 2, .. })
        ));
        // A lookup revives a cached page with its content.
        assert_eq!(a.lookup(&h2), Some(q));
        assert_eq!(a.ref_count(q).unwrap(), 1);
        // Explicit eviction, least recently used first.
        assert_eq!(a.evict_lru(5), vec![p]);
        assert_eq!(a.lookup(&h1), None);
        assert_eq!(a.allocate_page().unwrap(), p);
        a.check_invariants().unwrap();
    }
}
