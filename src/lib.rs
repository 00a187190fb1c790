//! attnforge
