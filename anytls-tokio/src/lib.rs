//! AnyTLS client and server on tokio, driving the sans-IO `anytls-core`.
//!
//! Not yet implemented: this crate is a placeholder in the workspace until the
//! adapter lands. Use `anytls_core` directly for now.

#![warn(missing_docs)]

pub use anytls_core as core;
