//! Property tests: random operation sequences against a naive model of the
//! allocator's rules. After every step the results agree with the model, a
//! failed call leaves the allocator exactly as it was, and the invariants hold.

use std::collections::{HashMap, VecDeque};

use attnforge_runtime::{AllocError, BlockHash, PageAllocator, PageId};
use proptest::prelude::*;

/// The rules, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    max: usize,
    refs: Vec<u32>,
    free: Vec<PageId>, // top = most recently freed
    evictable: VecDeque<PageId>,
    hash: Vec<Option<u8>>,
    cached: HashMap<u8, PageId>,
}

impl Model {
    fn new(max: usize) -> Model {
        Model {
            max,
            refs: vec![0; max],
            free: (0..max as PageId).rev().collect(),
            hash: vec![None; max],
            ..Model::default()
        }
    }
    fn exceeded(&self, requested: usize) -> AllocError {
        AllocError::CapacityExceeded {
            requested,
            free: self.free.len(),
            evictable: self.evictable.len(),
            max_pages: self.max,
        }
    }
    fn allocate(&mut self, n: usize) -> Result<Vec<PageId>, AllocError> {
        if self.free.len() < n {
            return Err(self.exceeded(n));
        }
        Ok((0..n)
            .map(|_| {
                let p = self.free.pop().unwrap();
                self.refs[p as usize] = 1;
                p
            })
            .collect())
    }
    fn release(&mut self, p: PageId) -> Result<(), AllocError> {
        if p as usize >= self.max {
            return Err(AllocError::InvalidPage {
                page: p,
                max_pages: self.max,
            });
        }
        if self.refs[p as usize] == 0 {
            return Err(AllocError::DoubleFree { page: p });
        }
        self.refs[p as usize] -= 1;
        if self.refs[p as usize] == 0 {
            if self.hash[p as usize].is_some() {
                self.evictable.push_back(p);
            } else {
                self.free.push(p);
            }
        }
        Ok(())
    }
    fn retain(&mut self, p: PageId) -> Result<(), AllocError> {
        if p as usize >= self.max {
            return Err(AllocError::InvalidPage {
                page: p,
                max_pages: self.max,
            });
        }
        if self.refs[p as usize] == 0 {
            return Err(AllocError::NotInUse { page: p });
        }
        self.refs[p as usize] += 1;
        Ok(())
    }
    fn register(&mut self, p: PageId, h: u8) -> Result<Option<PageId>, AllocError> {
        if p as usize >= self.max {
            return Err(AllocError::InvalidPage {
                page: p,
                max_pages: self.max,
            });
        }
        if self.refs[p as usize] == 0 {
            return Err(AllocError::NotInUse { page: p });
        }
        if let Some(&e) = self.cached.get(&h) {
            return Ok((e != p).then_some(e));
        }
        if let Some(old) = self.hash[p as usize].replace(h) {
            self.cached.remove(&old);
        }
        self.cached.insert(h, p);
        Ok(None)
    }
    fn lookup(&mut self, h: u8) -> Option<PageId> {
        let p = *self.cached.get(&h)?;
        if let Some(i) = self.evictable.iter().position(|&x| x == p) {
            self.evictable.remove(i);
        }
        self.refs[p as usize] += 1;
        Some(p)
    }
    fn evict(&mut self, n: usize) -> Vec<PageId> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(p) = self.evictable.pop_front() else {
                break;
            };
            let h = self.hash[p as usize].take().unwrap();
            self.cached.remove(&h);
            self.free.push(p);
            out.push(p);
        }
        out
    }
}

#[derive(Clone, Debug)]
enum Op {
    Allocate(usize),
    Release(u32),
    Retain(u32),
    Register(u32, u8),
    Lookup(u8),
    Evict(usize),
}

fn op(max: u32) -> impl Strategy<Value = Op> {
    // Page ids range a little past max_pages to exercise invalid ids.
    // Extreme arguments too: counts of 0 and usize::MAX, ids of u32::MAX.
    let huge = || {
        prop_oneof![
            Just(usize::MAX),
            Just(usize::MAX / 2),
            Just(u32::MAX as usize + 1)
        ]
    };
    let far = || {
        prop_oneof![
            Just(u32::MAX),
            Just(u32::MAX - 1),
            Just(i32::MAX as u32 + 1)
        ]
    };
    prop_oneof![
        3 => (0..4usize).prop_map(Op::Allocate),
        1 => huge().prop_map(Op::Allocate),
        3 => (0..max + 2).prop_map(Op::Release),
        1 => far().prop_map(Op::Release),
        1 => (0..max + 1).prop_map(Op::Retain),
        1 => far().prop_map(Op::Retain),
        2 => ((0..max), 0..6u8).prop_map(|(p, h)| Op::Register(p, h)),
        1 => (far(), 0..6u8).prop_map(|(p, h)| Op::Register(p, h)),
        2 => (0..6u8).prop_map(Op::Lookup),
        1 => (0..4usize).prop_map(Op::Evict),
        1 => huge().prop_map(Op::Evict),
    ]
}

fn hash(h: u8) -> BlockHash {
    BlockHash::new(None, &[h as u32], None)
}

proptest! {
    // Seeded: the same 10,000 cases every run.
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xa110c),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn allocator_follows_the_rules(max in 1u32..9, ops in proptest::collection::vec(op(8), 1..60)) {
        let mut a = PageAllocator::new(max);
        let mut m = Model::new(max as usize);
        for (i, o) in ops.iter().enumerate() {
            let before = format!("{a:?}");
            let failed = match *o {
                Op::Allocate(n) => {
                    let (got, want) = (a.allocate_pages(n), m.allocate(n));
                    prop_assert_eq!(&got, &want, "step {}: {:?}", i, o);
                    got.is_err()
                }
                Op::Release(p) => {
                    let (got, want) = (a.release(p), m.release(p));
                    prop_assert_eq!(&got, &want, "step {}: {:?}", i, o);
                    got.is_err()
                }
                Op::Retain(p) => {
                    let (got, want) = (a.retain(p), m.retain(p));
                    prop_assert_eq!(&got, &want, "step {}: {:?}", i, o);
                    got.is_err()
                }
                Op::Register(p, h) => {
                    let (got, want) = (a.register(p, hash(h)), m.register(p, h));
                    prop_assert_eq!(&got, &want, "step {}: {:?}", i, o);
                    got.is_err()
                }
                Op::Lookup(h) => {
                    prop_assert_eq!(a.lookup(&hash(h)), m.lookup(h), "step {}: {:?}", i, o);
                    false
                }
                Op::Evict(n) => {
                    prop_assert_eq!(a.evict_lru(n), m.evict(n), "step {}: {:?}", i, o);
                    false
                }
            };
            if failed {
                prop_assert_eq!(format!("{a:?}"), before, "step {}: a failed {:?} changed the allocator", i, o);
            }
            prop_assert_eq!(a.check_invariants(), Ok(()), "step {}: {:?}", i, o);
            prop_assert_eq!(
                (a.free_pages(), a.evictable_pages()),
                (m.free.len(), m.evictable.len()),
                "step {}", i
            );
        }
    }
}
