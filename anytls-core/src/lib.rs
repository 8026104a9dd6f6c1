//! # anytls-core
//!
//! The sans-IO core of the [AnyTLS] proxy protocol. It does no I/O, reads no
//! clock, spawns nothing and picks no randomness of its own: bytes, time and
//! commands go in; bytes to write, deadlines and events come out. Drive it from
//! any runtime (see the `anytls-tokio` and `anytls-smol` crates) or from a
//! hand-written event loop.
//!
//! This release holds the wire layer:
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
//! * [`uot`]: the UDP-over-TCP request and datagram codecs.
//!
//! ## Driving contract for the shaper
//!
//! * Each [`padding::Record`] of a plan MUST reach the peer as its own TLS record:
//!   write it, then flush, before writing the next. Never merge or split records.
//! * The RNG passed to the shaper SHOULD be seeded from a cryptographic source per
//!   session; the core never seeds one itself.
//!
//! [AnyTLS]: https://github.com/anytls/anytls-go

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod addr;
pub mod auth;
pub mod config;
pub mod error;
pub mod frame;
pub mod padding;
pub mod pool;
pub mod session;
pub mod settings;
mod stream;
pub mod uot;

#[cfg(any(test, feature = "_fuzz"))]
#[doc(hidden)]
pub mod fuzzing;

pub use addr::{Host, SocksAddr};
pub use auth::{AuthVerdict, Authenticator, PasswordHash, UserId};
pub use config::{ClientConfig, ServerConfig, SessionLimits};
pub use error::{
    AddrError, AuthError, FrameError, PaddingError, ProtocolError, SessionError, SettingsError,
    StreamError, UotError,
};
pub use frame::{Command, Frame, FrameDecoder, FrameHeader, FrameLimits, StreamId};
pub use padding::{PaddingScheme, Record, Shaper};
pub use pool::{Checkout, CloseReason, Pool, PoolAction, PoolConfig, PoolConfigError, PoolStats};
pub use session::{Event, Session, SessionSeq, SessionStats, Transmit};
pub use settings::StringMap;
