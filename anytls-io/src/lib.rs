//! The AnyTLS client and server over rustls, written once for any async
//! runtime. `anytls-tokio` and `anytls-smol` give them a [`Runtime`] and
//! re-export them under the same names; use one of those.
//!
//! * [`Client`]: a pool of AnyTLS sessions to one server;
//!   [`Client::connect`] returns an [`AnyTlsStream`] (`AsyncRead + AsyncWrite`).
//! * [`Server`]: accepts TLS, authenticates, and hands each stream to a handler
//!   (by default [`relay_tcp`], which dials the destination and relays, and
//!   relays UDP over TCP with [`relay_uot`]); [`Server::reload_handle`]
//!   changes its users, certificate, padding and fallback while it runs
//!   ([`ReloadHandle`]).
//! * [`socks5`]: a local SOCKS5 server in front of a [`Client`] (and a SOCKS5
//!   client helper).
//! * [`proxy`]: the local mixed port (SOCKS5, SOCKS4/4a and HTTP) in front
//!   of a [`Client`].
//! * [`acme`]: certificates from an ACME CA (Let's Encrypt, ZeroSSL, private
//!   CAs), obtained and renewed while the server runs ([`ServerTls::Acme`]).
//! * [`stats`]: a server's per-user counters ([`Server::stats_handle`]) and
//!   their Prometheus text.
//! * [`config`]: sing-box JSON and mihomo YAML options, Go durations and `anytls://` URIs,
//!   converted to [`ClientConfig`] / [`ServerConfig`].
//!
//! One task per TLS connection drives its `Session` (rustls driven directly
//! over the runtime's TCP socket, see `tls_io.rs`); the pool policy runs in its
//! own task. All protocol logic lives in `anytls-core`; what is here is I/O
//! plumbing that does not depend on the runtime.

#![warn(missing_docs)]

#[cfg(feature = "acme")]
pub mod acme;
mod beside;
mod budget;
mod client;
mod client_udp;
#[cfg(feature = "config")]
pub mod config;
mod conn;
mod dial;
mod explain;
pub mod proxy;
mod relay;
mod runtime;
mod server;
pub mod socks5;
pub mod stats;
pub mod tls;
mod tls_io;
mod uot;

pub use anytls_core as core;
pub use anytls_core::pool::{PoolConfig, PoolStats};
pub use anytls_core::{Host, SocksAddr};
pub use beside::{beside_counts, movable};
pub use budget::IoBudget;
pub use client::{Client, ClientConfig, ClientError};
pub use client_udp::{AnyTlsUdp, AnyTlsUdpReceiver, AnyTlsUdpSender};
pub use conn::AnyTlsStream;
pub use dial::{BoxTransport, DialFuture, DialOptions, Dialer, DomainStrategy, Transport};
pub use relay::{relay, relay_stream, relay_stream_with};
pub use runtime::{Runtime, sleep_until, timeout};
pub use server::{
    IncomingStream, ReloadHandle, Server, ServerConfig, ShutdownHandle, relay_tcp, relay_tcp_with,
};
pub use stats::{StatsHandle, StatsSnapshot, UserStats};
pub use tls::{Identity, ServerTls, TlsError, TlsOptions, TlsVersion, Verification};
pub use uot::{UdpConfig, UotEnd, UotReport, UotStats, relay_uot};
