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
//!   `min_idle_session`, `ensure_idle_session`, heartbeats, lifetimes;
//! * [`endpoint`]: the whole client ([`ClientEndpoint`]): the pool, the padding
//!   scheme, every client session and stream, one input/output surface;
//! * [`timer`]: the [`TimerTable`] every state machine keeps its deadlines in.
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
//! ## The whole client in one loop
//!
//! [`ClientEndpoint`] is the complete client: the pool (`min_idle_session`,
//! `ensure_idle_session`, heartbeats, idle sweep, lifetimes, dial back-off),
//! the current padding scheme, every session and every stream. The owner's
//! loop only moves bytes, dials and closes connections, and keeps one timer.
//! Here the "network" is in memory: each connection the endpoint dials is a
//! [`ServerSession`] (a real program connects TCP + TLS instead, see
//! `examples/blocking_client.rs`).
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! use anytls_core::{
//!     Action, Authenticator, ClientConfig, ClientEndpoint, ClientEvent, Event, PoolConfig,
//!     ServerConfig, ServerSession, Session, SocksAddr, StreamState,
//! };
//! use bytes::BytesMut;
//!
//! let mut now = Instant::now(); // the owner keeps the clock; the core never reads it
//! let mut pool = PoolConfig::default();
//! pool.ensure_idle = 2; // two sessions pre-warmed
//! pool.min_idle = 1; // the newest idle session survives the idle sweep
//! pool.heartbeat = Some(Duration::from_secs(10));
//! let mut ep = ClientEndpoint::new(ClientConfig::new("pw"), pool, [1; 32], now)?;
//! let server_cfg = Arc::new(ServerConfig::new(Authenticator::single("pw")));
//! let mut conns: BTreeMap<_, ServerSession> = BTreeMap::new(); // "sockets"
//! let mut buf = BytesMut::new();
//! let mut heartbeats_answered = 0;
//!
//! let mut stream = None;
//! for round in 0..200 {
//!     // 1. Connections: dial or close what the endpoint asks for.
//!     while let Some(action) = ep.poll_action() {
//!         match action {
//!             Action::Dial { conn } => {
//!                 // Real code: TCP connect + TLS handshake, then:
//!                 conns.insert(conn, Session::server(server_cfg.clone(), [2; 32], now)?);
//!                 ep.handle_connected(now, conn); // or handle_dial_failed(now, conn, why)
//!             }
//!             Action::Close { conn, .. } => drop(conns.remove(&conn)),
//!             _ => {}
//!         }
//!     }
//!     // 2. Bytes out, tagged with their connection (a shaped transmit is one TLS write).
//!     while let Some((conn, t)) = ep.poll_transmit(now, &mut buf) {
//!         let bytes = buf.split_to(t.len);
//!         conns.get_mut(&conn).map(|s| s.handle_input(now, bytes));
//!     }
//!     // 3. Bytes in (here: what each server answers; a real loop reads TLS
//!     //    while `ep.wants_read(conn)`, EOF -> handle_eof, errors ->
//!     //    handle_transport_error).
//!     for (&conn, server) in conns.iter_mut() {
//!         while let Some(ev) = server.poll_event() {
//!             if let Event::StreamOpened { id, .. } = ev {
//!                 server.accept_stream(id, Ok(()))?;
//!                 let _ = server.write(id, b"hello from the target");
//!             }
//!         }
//!         while let Some(t) = server.poll_transmit(now, &mut buf) {
//!             ep.handle_input(now, conn, buf.split_to(t.len));
//!         }
//!     }
//!     // 4. Events: stream readiness, heartbeats, padding updates.
//!     while let Some(ev) = ep.poll_event() {
//!         if let ClientEvent::HeartbeatAck { .. } = ev {
//!             heartbeats_answered += 1;
//!         }
//!     }
//!     // The application: once two sessions are warm, one request.
//!     if stream.is_none() && ep.idle_sessions().len() == 2 {
//!         let s = ep.open_stream(now, &SocksAddr::domain("example.com", 80))?;
//!         assert!(ep.stream_session(s).is_some()); // a pre-warmed session: no dial
//!         ep.write(s, b"GET / HTTP/1.0\r\n\r\n")?;
//!         stream = Some(s);
//!     }
//!     if let Some(s) = stream {
//!         if let Ok(Some(data)) = ep.read(now, s) {
//!             assert_eq!(&data[..], b"hello from the target");
//!             assert_eq!(ep.stream_state(s), Some(&StreamState::Connected));
//!             ep.release(now, s); // its session goes back to the pool
//!         }
//!     }
//!     // 5. One timer for everything: sleep until it, then handle_timeout.
//!     if round % 10 == 9 {
//!         now = ep.poll_timeout().expect("the pool always has a next check");
//!         ep.handle_timeout(now);
//!     }
//! }
//! assert!(heartbeats_answered > 0);
//! let pool = ep.stats().pool;
//! assert_eq!(pool.dials, pool.prewarm_dials); // the request needed no dial of its own
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## One session in memory
//!
//! [`Session`] is one TLS connection in either role; the endpoint drives
//! its client sessions, a server drives one [`ServerSession`] per accepted
//! connection:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//!
//! use anytls_core::{
//!     Authenticator, ClientConfig, Event, PaddingScheme, ServerConfig, Session, SessionSeq,
//!     SocksAddr,
//! };
//! use bytes::BytesMut;
//!
//! let now = Instant::now(); // an adapter reads the clock; the core never does
//! let mut client = Session::client(
//!     Arc::new(ClientConfig::new("pw")),
//!     SessionSeq(1),
//!     Arc::new(PaddingScheme::default_scheme()),
//!     [1; 32], // seed: from the OS RNG in real use
//!     now,
//! )?;
//! let mut server = Session::server(
//!     Arc::new(ServerConfig::new(Authenticator::single("pw"))),
//!     [2; 32],
//!     now,
//! )?;
//! let id = client.open_stream(now, &SocksAddr::domain("example.com", 443))?;
//! assert_eq!(client.write(id, b"hello")?, 5); // takes what fits under the send cap
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
//! server.accept_stream(sid, Ok(()))?; // queues SYNACK for v2 clients
//! assert_eq!(&server.read(now, sid)?.unwrap()[..], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
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
    ClientSession, Event, MAX_PSH_DATA, ServerSession, Session, SessionRole, SessionSeq,
    SessionStats, Transmit, TransmitBuf,
};
pub use settings::StringMap;
pub use timer::TimerTable;
