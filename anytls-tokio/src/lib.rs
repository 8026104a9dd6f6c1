//! AnyTLS client and server on tokio and rustls, driving the sans-IO
//! `anytls-core`.
//!
//! * [`Client`]: a pool of AnyTLS sessions to one server;
//!   [`Client::connect`] returns an [`AnyTlsStream`] (`AsyncRead + AsyncWrite`).
//! * [`Server`]: accepts TLS, authenticates, and hands each stream to a handler
//!   (by default [`relay_tcp`], which dials the destination and relays).
//! * [`socks5`]: a local SOCKS5 server in front of a [`Client`] (and a SOCKS5
//!   client helper).
//! * [`config`]: sing-box JSON options, Go durations and `anytls://` URIs,
//!   converted to [`ClientConfig`] / [`ServerConfig`].
//!
//! The `anytls` program (`src/bin/anytls.rs`) puts these together.
//!
//! One task per TLS connection drives its `Session`; the pool policy runs in its
//! own task. All protocol logic lives in `anytls-core`.

#![warn(missing_docs)]

mod client;
pub mod config;
mod conn;
mod server;
pub mod socks5;
pub mod tls;

pub use anytls_core as core;
pub use anytls_core::pool::{PoolConfig, PoolStats};
pub use anytls_core::{Host, SocksAddr};
pub use client::{Client, ClientConfig, ClientError};
pub use conn::AnyTlsStream;
pub use server::{IncomingStream, Server, ServerConfig, ShutdownHandle, relay_tcp};
pub use tls::{Identity, TlsError, Verification};
