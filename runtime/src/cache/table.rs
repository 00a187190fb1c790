//! Page tables in CSR form, validated before any launch.
//!
//! ```text
//! kv_indptr:        [batch + 1]  sequence b owns indices[indptr[b] .. indptr[b+1]]
//! kv_indices:       [pages]      page ids, in token order
//! kv_last_page_len: [batch]      tokens in b's last page, 1..=page_size (0 if it has no page)
//! length of b = (pages_b - 1) · page_size + last_page_len[b]
//! ```

use attnforge_codegen::KvLayoutSpec;

/// Why a page table or slot mapping was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `kv_indptr` must have batch + 1 entries and `kv_last_page_len` batch.
    #[error(
        "kv_indptr has {indptr} entries and kv_last_page_len {last}: expected batch + 1 and batch"
    )]
    Shape {
        /// Entries in kv_indptr.
        indptr: usize,
        /// Entries in kv_last_page_len.
        last: usize,
    },
    /// `kv_indptr` must start at 0, never decrease and end at the number of indices.
    #[error("kv_indptr[{at}] = {value} breaks the rule: start at 0, never decrease, end at {indices} (the number of page indices)")]
    Indptr {
        /// Position in kv_indptr.
        at: usize,
        /// Its value.
        value: i32,
        /// Number of page indices.
        indices: usize,
    },
    /// A page id outside the arena.
    #[error(
        "sequence {seq}: page {page} (at kv_indices[{at}]) is not below max_pages = {max_pages}"
    )]
    Page {
        /// The sequence.
        seq: usize,
        /// Position in kv_indices.
        at: usize,
        /// The page id.
        page: i32,
        /// Pages in the arena.
        max_pages: u64,
    },
    /// A last-page length outside 1..=page_size.
    #[error("sequence {seq}: kv_last_page_len = {len} is not in 1..={page_size} (or 0 for a sequence without pages)")]
    LastPageLen {
        /// The sequence.
        seq: usize,
        /// The length.
        len: i32,
        /// The layout's page size.
        page_size: u32,
    },
    /// A slot outside the arena.
    #[error("token {token}: slot {slot} is not below max_pages · page_size = {slots}")]
    Slot {
        /// The token.
        token: usize,
        /// Its slot.
        slot: i64,
        /// Slots in the arena.
        slots: u64,
    },
}

/// A batch's page table in CSR form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageTable {
    /// Offsets into `indices`, batch + 1 of them.
    pub indptr: Vec<i32>,
    /// Page ids of every sequence, in token order.
    pub indices: Vec<i32>,
    /// Tokens in each sequence's last page.
    pub last_page_len: Vec<i32>,
}

impl PageTable {
    /// Builds the table of sequences given as (page ids, length in tokens).
    pub fn from_sequences<'a>(
        page_size: u32,
        seqs: impl IntoIterator<Item = (&'a [i32], usize)>,
    ) -> PageTable {
        let mut t = PageTable {
            indptr: vec![0],
            ..PageTable::default()
        };
        for (pages, len) in seqs {
            t.indices.extend_from_slice(pages);
            t.indptr.push(t.indices.len() as i32);
            let last = if len == 0 {
                0
            } else {
                (len - 1) % page_size as usize + 1
            };
            t.last_page_len.push(last as i32);
        }
        t
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.last_page_len.len()
    }

    /// Length of sequence `b` in tokens (of a validated table; 0 for a
    /// sequence a malformed table does not describe, never a panic).
    pub fn seq_len(&self, b: usize, page_size: u32) -> usize {
        let (Some(&lo), Some(&hi), Some(&last)) = (
            self.indptr.get(b),
            self.indptr.get(b.wrapping_add(1)),
            self.last_page_len.get(b),
        ) else {
            return 0;
        };
        let pages = (i64::from(hi) - i64::from(lo)).max(0) as usize;
        match pages {
            0 => 0,
            n => (n - 1)
                .saturating_mul(page_size as usize)
                .saturating_add(last.max(0) as usize),
        }
    }

    /// Checks the table against a layout and an arena of `max_pages` pages.
    pub fn validate(&self, layout: &KvLayoutSpec, max_pages: u64) -> Result<(), TableError> {
        let batch = self.last_page_len.len();
        if self.indptr.len() != batch + 1 {
            return Err(TableError::Shape {
                indptr: self.indptr.len(),
                last: batch,
            });
        }
        let n = self.indices.len();
        for (at, w) in self.indptr.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(TableError::Indptr {
                    at: at + 1,
                    value: w[1],
                    indices: n,
                });
            }
        }
        if self.indptr[0] != 0 || self.indptr[batch] as usize != n {
            let at = if self.indptr[0] != 0 { 0 } else { batch };
            return Err(TableError::Indptr {
                at,
                value: self.indptr[at],
                indices: n,
            });
        }
        for seq in 0..batch {
            let (a, b) = (self.indptr[seq] as usize, self.indptr[seq + 1] as usize);
            for at in a..b {
                let page = self.indices[at];
                if page < 0 || page as u64 >= max_pages {
                    return Err(TableError::Page {
                        seq,
                        at,
                        page,
                        max_pages,
                    });
                }
            }
            let len = self.last_page_len[seq];
            let ok = if a == b {
                len == 0
            } else {
                len >= 1 && len as u32 <= layout.page_size
            };
            if !ok {
                return Err(TableError::LastPageLen {
                    seq,
                    len,
                    page_size: layout.page_size,
                });
            }
        }
        Ok(())
    }
}

/// Checks a slot mapping (negative slots are padding and skipped).
pub fn validate_slots(
    slots: &[i64],
    layout: &KvLayoutSpec,
    max_pages: u64,
) -> Result<(), TableError> {
    let total = max_pages * layout.page_size as u64;
    for (token, &slot) in slots.iter().enumerate() {
        if slot >= 0 && slot as u64 >= total {
            return Err(TableError::Slot {
                token,
                slot,
                slots: total,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnforge_codegen::{DType, KvScale, Order};

    fn layout() -> KvLayoutSpec {
        KvLayoutSpec {
            page_size: 4,
            kv_heads: 1,
            head_dim: 8,
            dtype: DType::F32,
            order: Order::Nhd,
            scale: KvScale::Unscaled,
        }
    }

    #[test]
    fn lengths_and_validation() {
        let t = PageTable::from_sequences(4, [(&[3, 1][..], 5), (&[][..], 0), (&[0][..], 4)]);
        assert_eq!(t.indptr, vec![0, 2, 2, 3]);
        assert_eq!(t.last_page_len, vec![1, 0, 4]);
        assert_eq!(t.seq_len(0, 4), 5);
        assert_eq!(t.seq_len(2, 4), 4);
        assert_eq!(t.validate(&layout(), 4), Ok(()));
        assert!(matches!(
            t.validate(&layout(), 3),
            Err(TableError::Page {
                seq: 0,
                page: 3,
                ..
            })
        ));
        let mut bad = t.clone();
        bad.last_page_len[2] = 5;
        assert!(matches!(
            bad.validate(&layout(), 4),
            Err(TableError::LastPageLen { seq: 2, .. })
        ));
        let mut bad = t.clone();
        bad.indptr[1] = 3;
        assert!(matches!(
            bad.validate(&layout(), 4),
            Err(TableError::Indptr { .. })
        ));
        let mut bad = t;
        bad.indptr.pop();
        assert!(matches!(
            bad.validate(&layout(), 4),
            Err(TableError::Shape { .. })
        ));
        assert!(validate_slots(&[0, -1, 15], &layout(), 4).is_ok());
        assert!(matches!(
            validate_slots(&[16], &layout(), 4),
            Err(TableError::Slot { token: 0, .. })
        ));
    }
}
