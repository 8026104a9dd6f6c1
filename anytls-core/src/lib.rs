//! # anytls-core
//!
//! The sans-IO core of the [AnyTLS] proxy protocol. It does no I/O, reads no
//! clock, spawns nothing and picks no randomness of its own: bytes, time and
//! commands go in; bytes to write, deadlines and events come out. Drive it from
//! any runtime (see the `anytls-tokio` and `anytls-smol` crates) or from a
//! hand-written event loop.
//!
//! ## Layers
//!
//! * [`frame`]: the 7-byte frame header, [`Command`], an incremental zero-copy
//!   [`FrameDecoder`] and encoders that split data at 65535 bytes;
//! * [`addr`]: destination addresses in SOCKS form ([`SocksAddr`]);
//! * [`auth`]: the authentication preamble and the server's constant-time
//!   [`Authenticator`] (accepted / need more / rejected with the bytes to replay);
//! * [`settings`]: the `key=value` text of Settings and ServerSettings with the
//!   reference parser's quirks;
//! * [`padding`]: padding schemes (lenient parse, strict validation, MD5) and the
//!   record [`Shaper`] that turns one write into TLS-record-sized chunks;
//! * [`uot`]: the UDP-over-TCP request and datagram codecs;
//! * [`session`]: one AnyTLS session (one TLS connection) in the client or the
//!   server role, with its streams, limits and timers ([`Session`]);
//! * [`pool`]: the client's idle-session pool policy ([`Pool`]): idle timeout,
//!   `min_idle_session`, `ensure_idle_session`, heartbeats, lifetimes.
//!
//! ## Driving contract
//!
//! * Time comes in as `now: Instant` on every call that cares; a `now` earlier
//!   than one seen before is treated as the latest one.
//! * After every input (`handle_*`) or command, the owner MUST drain outputs:
//!   `poll_transmit` until `None`, then `poll_event` until `None`, then re-arm
//!   one timer at `poll_timeout`. After `handle_timeout(now)`, `poll_timeout` is
//!   later than `now` or `None`.
//! * Each *shaped* [`Transmit`] (`shaped: true`: the client's preamble and
//!   every packet of the padding phase, one [`padding::Record`] of a plan
//!   each) MUST reach the peer as its own TLS write (its own record(s)):
//!   never merge or split them, or the padding shapes are lost. Unshaped
//!   transmits carry no shape and MAY be coalesced with their neighbours into
//!   full-size TLS records and fewer socket writes (`anytls-io` does).
//! * Seeds for the padding RNG and pool jitter SHOULD come from a cryptographic
//!   source; the core never seeds anything itself.
//! * Every buffer has a cap ([`SessionLimits`]); a full receive buffer turns
//!   [`Session::wants_read`] false, and the owner SHOULD stop reading the
//!   connection until it turns true again.
//!
//! ## Example: a client and a server session in memory
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//!
//! use anytls_core::{
//!     Authenticator, ClientConfig, Event, PaddingScheme, ServerConfig, Session, SessionSeq,
//!     SocksAddr,
//! };
//! use bytes::{Bytes, BytesMut};
//!
//! let now = Instant::now(); // an adapter reads the clock; the core never does
//! let mut client = Session::client(
//!     Arc::new(ClientConfig::new("pw")),
//!     SessionSeq(1),
//!     Arc::new(PaddingScheme::default_scheme()),
//!     [1; 32], // seed: from the OS RNG in real use
//!     now,
//! );
//! let mut server = Session::server(
//!     Arc::new(ServerConfig::new(Authenticator::single("pw"))),
//!     [2; 32],
//!     now,
//! );
//! let id = client.open_stream(now, &SocksAddr::domain("example.com", 443)).unwrap();
//! client.write(id, Bytes::from_static(b"hello")).unwrap();
//!
//! // An adapter writes each transmit to TLS; here it goes straight to the server.
//! let mut buf = BytesMut::new();
//! while client.poll_transmit(now, &mut buf).is_some() {
//!     server.handle_input(now, buf.split());
//! }
//! let mut opened = None;
//! while let Some(ev) = server.poll_event() {
//!     if let Event::StreamOpened { id, dest } = ev {
//!         opened = Some((id, dest));
//!     }
//! }
//! let (sid, dest) = opened.unwrap();
//! assert_eq!(dest.to_string(), "example.com:443");
//! server.accept_stream(sid, Ok(())).unwrap(); // queues SYNACK for v2 clients
//! assert_eq!(&server.read(sid).unwrap().unwrap()[..], b"hello");
//! ```
//!
//! [AnyTLS]: https://github.com/anytls/anytls-go

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod addr;
pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod padding;
pub mod pool;
pub mod session;
pub mod settings;
mod stream;
pub mod timer;
pub mod uot;

#[cfg(any(test, feature = "_fuzz"))]
#[doc(hidden)]
pub mod fuzz_endpoint;
#[cfg(any(test, feature = "_fuzz"))]
#[doc(hidden)]
pub mod fuzzing;

pub use addr::{Host, SocksAddr};
pub use auth::{AuthVerdict, Authenticator, PasswordHash, UserId};
pub use config::{ClientConfig, ServerConfig, SessionLimits};
pub use endpoint::{Action, ClientEndpoint, ClientEvent, EndpointStats, StreamHandle, StreamState};
pub use error::{
    AddrError, AuthError, ConfigError, FrameError, PaddingError, ProtocolError, RefuseReason,
    ResetReason, SessionError, SettingsError, StreamError, TransportError, UotError,
};
pub use frame::{Command, Frame, FrameDecoder, FrameHeader, FrameLimits, StreamId};
pub use padding::{PaddingScheme, Record, Shaper};
pub use pool::{Checkout, CloseReason, Pool, PoolAction, PoolConfig, PoolConfigError, PoolStats};
pub use session::{
    ClientSession, Event, ServerSession, Session, SessionRole, SessionSeq, SessionStats, Transmit,
};
pub use settings::StringMap;
