//! AnyTLS client and server on tokio and rustls, driving the sans-IO
//! `anytls-core`.
//!
//! * [`Client`]: a pool of AnyTLS sessions to one server;
//!   [`Client::connect`] returns an [`AnyTlsStream`] (`AsyncRead + AsyncWrite`).
//! * [`Server`]: accepts TLS, authenticates, and hands each stream to a handler
//!   (by default [`relay_tcp`], which dials the destination and relays).
//!
//! One task per TLS connection drives its `Session`; the pool policy runs in its
//! own task. All protocol logic lives in `anytls-core`.

#![warn(missing_docs)]

mod client;
mod conn;
mod server;
pub mod tls;

pub use anytls_core as core;
pub use anytls_core::pool::{PoolConfig, PoolStats};
pub use anytls_core::{Host, SocksAddr};
pub use client::{Client, ClientConfig, ClientError};
pub use conn::AnyTlsStream;
pub use server::{IncomingStream, Server, ServerConfig, ShutdownHandle, relay_tcp};
pub use tls::{Identity, TlsError, Verification};
