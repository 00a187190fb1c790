//! Checked mode: the runtime side of the sanitizer the lowering calls into.

use std::ffi::c_void;
use std::fmt;

use super::lower::op;
use crate::ir::{Kernel, Space};

pub(crate) type CheckFn = unsafe extern "C" fn(*mut c_void, u32, u32, i64, u32, i32) -> u32;

/// What checked mode found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// An access past either end of a buffer.
    OutOfBounds {
        /// The buffer.
        buffer: String,
        /// First element index accessed.
        index: i64,
        /// Elements accessed.
        lanes: u32,
        /// Elements in the buffer.
        len: u64,
        /// Whether it was a store.
        write: bool,
    },
    /// A vector access whose index is not a multiple of its lanes.
    Misaligned {
        /// The buffer.
        buffer: String,
        /// Element index.
        index: i64,
        /// Lanes.
        lanes: u32,
    },
    /// Two threads touched one shared element between two barriers, at
    /// least one of them writing.
    SharedRace {
        /// The shared buffer.
        buffer: String,
        /// The element.
        index: i64,
        /// The thread that touched it first.
        other_thread: u32,
        /// Whether the first access was a write.
        other_write: bool,
        /// Whether this access is a write.
        write: bool,
    },
    /// A condition around a barrier differed between threads of the block.
    BarrierDivergence,
    /// A condition around a warp collective differed between lanes of a warp.
    WarpDivergence,
}

/// One problem found in checked mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The kernel.
    pub kernel: String,
    /// The block (x, y, z).
    pub block: [u32; 3],
    /// The thread in the block.
    pub thread: u32,
    /// What happened.
    pub kind: FindingKind,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [x, y, z] = self.block;
        write!(
            f,
            "kernel `{}`, block ({x}, {y}, {z}), thread {}: ",
            self.kernel, self.thread
        )?;
        match &self.kind {
            FindingKind::OutOfBounds {
                buffer,
                index,
                lanes,
                len,
                write,
            } => write!(
                f,
                "{} of {lanes} element(s) at `{buffer}`[{index}] is out of bounds ({len} elements)",
                if *write { "store" } else { "load" }
            ),
            FindingKind::Misaligned { buffer, index, lanes } => write!(
                f,
                "{lanes}-lane vector access at `{buffer}`[{index}] is not aligned to {lanes} elements"
            ),
            FindingKind::SharedRace {
                buffer,
                index,
                other_thread,
                other_write,
                write,
            } => write!(
                f,
                "race on shared `{buffer}`[{index}]: {} here, {} by thread {other_thread} with no barrier between",
                if *write { "write" } else { "read" },
                if *other_write { "write" } else { "read" }
            ),
            FindingKind::BarrierDivergence => {
                f.write_str("barrier divergence: a condition around a barrier differs from thread 0's")
            }
            FindingKind::WarpDivergence => f.write_str(
                "warp divergence: a condition around a warp collective differs from lane 0's",
            ),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Shadow {
    w_epoch: u32,
    writer: u32,
    r_epoch: u32,
    reader: u32,
    // A second, different reader in the same interval, if any.
    reader2: Option<u32>,
}

/// Per-worker checking state; the generated code passes it back to
/// [`callback`] on every checked operation.
pub(crate) struct BlockState<'k> {
    kernel: &'k Kernel,
    global_lens: &'k [u64],
    shadow: Vec<Vec<Shadow>>,
    epoch: u32,
    block: [u32; 3],
    findings: Vec<Finding>,
    count: usize,
}

const KEEP: usize = 64;

impl<'k> BlockState<'k> {
    pub fn new(kernel: &'k Kernel, global_lens: &'k [u64]) -> Self {
        let shadow = kernel
            .buffers
            .iter()
            .map(|b| match b.space {
                Space::Shared => vec![Shadow::default(); b.len as usize],
                // Local arrays are per thread (no races) and proven in
                // bounds by the verifier: never checked at run time.
                Space::Global | Space::Local => Vec::new(),
            })
            .collect();
        BlockState {
            kernel,
            global_lens,
            shadow,
            epoch: 0,
            block: [0; 3],
            findings: Vec::new(),
            count: 0,
        }
    }

    pub fn start_block(&mut self, block: [u32; 3]) {
        self.block = block;
        self.epoch = self.epoch.wrapping_add(1);
    }

    pub fn into_findings(self) -> (Vec<Finding>, usize) {
        (self.findings, self.count)
    }

    fn report(&mut self, thread: i32, kind: FindingKind) {
        self.count += 1;
        if self.findings.len() < KEEP {
            self.findings.push(Finding {
                kernel: self.kernel.name.clone(),
                block: self.block,
                thread: thread.max(0) as u32,
                kind,
            });
        }
    }

    /// Returns whether the access may go ahead.
    fn check(&mut self, code: u32, buf: u32, index: i64, lanes: u32, tid: i32) -> bool {
        match code {
            op::BARRIER => {
                self.epoch = self.epoch.wrapping_add(1);
                true
            }
            op::DIVERGENT_BLOCK => {
                self.report(tid, FindingKind::BarrierDivergence);
                true
            }
            op::DIVERGENT_WARP => {
                self.report(tid, FindingKind::WarpDivergence);
                true
            }
            op::LOAD_GLOBAL | op::STORE_GLOBAL | op::LOAD_SHARED | op::STORE_SHARED => {
                let write = code == op::STORE_GLOBAL || code == op::STORE_SHARED;
                let Some(b) = self.kernel.buffers.get(buf as usize) else {
                    return false;
                };
                let len = match b.space {
                    Space::Global => {
                        let bytes = self.global_lens.get(buf as usize).copied().unwrap_or(0);
                        bytes / b.elem.size_bytes() as u64
                    }
                    Space::Shared | Space::Local => b.len as u64,
                };
                let name = b.name.clone();
                let end = index.checked_add(lanes as i64);
                if index < 0 || end.is_none_or(|e| e as u64 > len) {
                    self.report(
                        tid,
                        FindingKind::OutOfBounds {
                            buffer: name,
                            index,
                            lanes,
                            len,
                            write,
                        },
                    );
                    return false;
                }
                if lanes > 1 && index % lanes as i64 != 0 {
                    self.report(
                        tid,
                        FindingKind::Misaligned {
                            buffer: name.clone(),
                            index,
                            lanes,
                        },
                    );
                }
                if b.space == Space::Shared {
                    self.track(buf as usize, &name, index, lanes, tid.max(0) as u32, write);
                }
                true
            }
            _ => true,
        }
    }

    fn track(&mut self, buf: usize, name: &str, index: i64, lanes: u32, t: u32, write: bool) {
        let epoch = self.epoch;
        for i in index..index + lanes as i64 {
            let Some(s) = self.shadow[buf].get_mut(i as usize) else {
                continue;
            };
            let mut race = None;
            if s.w_epoch == epoch && s.writer != t {
                race = Some((s.writer, true));
            } else if write && s.r_epoch == epoch {
                let other = if s.reader != t {
                    Some(s.reader)
                } else {
                    s.reader2
                };
                race = other.map(|o| (o, false));
            }
            if write {
                s.w_epoch = epoch;
                s.writer = t;
            } else if s.r_epoch != epoch {
                s.r_epoch = epoch;
                s.reader = t;
                s.reader2 = None;
            } else if s.reader != t && s.reader2.is_none() {
                s.reader2 = Some(t);
            }
            if let Some((other_thread, other_write)) = race {
                self.report(
                    t as i32,
                    FindingKind::SharedRace {
                        buffer: name.to_string(),
                        index: i,
                        other_thread,
                        other_write,
                        write,
                    },
                );
            }
        }
    }
}

/// The function the generated code calls in checked mode.
///
/// # Safety
/// `state` must be the `BlockState` the launcher passed to the block function.
pub(crate) unsafe extern "C" fn callback(
    state: *mut c_void,
    code: u32,
    buf: u32,
    index: i64,
    lanes: u32,
    tid: i32,
) -> u32 {
    // SAFETY: the launcher passes a pointer to this worker's live BlockState,
    // used by one thread at a time.
    let st = unsafe { &mut *state.cast::<BlockState<'_>>() };
    st.check(code, buf, index, lanes, tid) as u32
}
