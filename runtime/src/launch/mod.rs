//! The launch layer every device shares: the host element types of the
//! dtypes ([`Element`]) and the validation a launch runs before anything is
//! queued. It needs neither the CPU backend nor a GPU runtime, so a
//! GPU-only build (`--no-default-features --features hip`) needs no LLVM.

mod element;
mod validate;

pub use element::{with_elements, Element, WithElements};
pub use validate::{validate_append, validate_decode, validate_prefill};
