//! Session configuration: limits, timeouts and identities.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Authenticator, PasswordHash};
use crate::frame::FrameLimits;
use crate::padding::PaddingScheme;

/// Caps on what one session may buffer. AnyTLS has no flow control, so these
/// are the only backpressure: a full receive buffer stops the session reading
/// (`wants_read() == false`); a full send buffer makes writes return `Blocked`.
///
/// Receive caps are soft by at most one frame (65535 bytes): a frame is
/// accepted whole, then reading pauses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Received bytes buffered per stream before the session stops reading.
    pub stream_recv_buffer: usize,
    /// Received bytes buffered over all streams before the session stops reading.
    pub session_recv_buffer: usize,
    /// Bytes queued for sending per stream before writes return `Blocked`.
    pub stream_send_buffer: usize,
    /// Bytes queued for sending over all streams before writes return `Blocked`.
    pub session_send_buffer: usize,
    /// Encoded control frames (answers, SYNACKs, FINs) queued before the session
    /// stops reading, so a peer cannot grow them by never reading its side.
    pub control_queue: usize,
    /// Concurrently open streams. A server refuses extra SYNs (SYNACK error to
    /// v2 clients, then FIN) and keeps the session.
    pub max_streams: usize,
    /// Caps on received control frame data.
    pub frames: FrameLimits,
    /// Largest write (TLS plaintext handed over at once) once shaping is over.
    pub max_write: usize,
    /// Received bytes a stream may buffer when it does not pause the session:
    /// it shares the session with other streams (pausing would stall them:
    /// AnyTLS has no per-stream flow control), or its reader made no progress
    /// for `stalled_stream_timeout`. Past this the stream is reset (FIN to the
    /// peer, [`Event::StreamReset`](crate::Event::StreamReset) to the owner), so
    /// a reader that stops stalls only its own stream.
    pub stream_recv_limit: usize,
    /// How long a lone stream over `stream_recv_buffer` may pause the session
    /// without its reader making progress; then the pause is lifted (see
    /// `stream_recv_limit`). Bounds how long a dead reader can hold up streams
    /// the session has not seen yet.
    pub stalled_stream_timeout: std::time::Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            stream_recv_buffer: 128 * 1024,
            session_recv_buffer: 2 * 1024 * 1024,
            stream_send_buffer: 64 * 1024,
            session_send_buffer: 1024 * 1024,
            control_queue: 64 * 1024,
            max_streams: 1024,
            frames: FrameLimits::default(),
            max_write: 32 * 1024,
            stream_recv_limit: 1024 * 1024,
            stalled_stream_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Configuration of client sessions.
#[derive(Clone)]
pub struct ClientConfig {
    /// SHA-256 of the password.
    pub password: PasswordHash,
    /// Value of the `client=` setting. sing-box sends an empty one by default.
    pub client_name: String,
    /// How long a new stream may wait for its SYNACK (v2 servers) before the
    /// session is probed with a HeartRequest. The stream is not failed by this.
    pub stream_open_timeout: Duration,
    /// How long to wait for any frame after a HeartRequest before declaring the
    /// session dead. Only applied when the server announced v2 (v1 servers do not
    /// answer heartbeats). `None`: owner-requested heartbeats have no deadline;
    /// the probe sent for a slow SYNACK then waits `stream_open_timeout`.
    pub heartbeat_timeout: Option<Duration>,
    /// Buffer caps.
    pub limits: SessionLimits,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("password", &self.password)
            .field("client_name", &self.client_name)
            .field("stream_open_timeout", &self.stream_open_timeout)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ClientConfig {
    /// Defaults for a password: `client=anytls-rs/<version>`, 3 s stream-open
    /// watchdog (the reference's value), 10 s heartbeat response timeout.
    pub fn new(password: &str) -> ClientConfig {
        ClientConfig {
            password: PasswordHash::of(password),
            client_name: concat!("anytls-rs/", env!("CARGO_PKG_VERSION")).to_owned(),
            stream_open_timeout: Duration::from_secs(3),
            heartbeat_timeout: Some(Duration::from_secs(10)),
            limits: SessionLimits::default(),
        }
    }
}

/// Configuration of server sessions.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The users.
    pub users: Authenticator,
    /// The scheme clients are told to use (sent when their MD5 differs).
    pub padding: Arc<PaddingScheme>,
    /// Time from the session's start (after TLS) until the preamble and the
    /// client's Settings must have arrived.
    pub handshake_timeout: Duration,
    /// Decide authentication on the first input, as the Go servers do: when it
    /// holds fewer than the 32 bytes of the password hash, reject at once
    /// instead of waiting for more. An adapter that hands over whole TLS records
    /// (the first record of every real client carries at least the hash) should
    /// turn this on, so that a probe sending a short request reaches the
    /// fallback at once, like any other wrong preamble, and timing reveals
    /// nothing. Off by default (a preamble split anywhere is accepted).
    pub decide_on_first_input: bool,
    /// Buffer caps.
    pub limits: SessionLimits,
}

impl ServerConfig {
    /// Defaults for a set of users: default padding scheme, 10 s handshake timeout.
    pub fn new(users: Authenticator) -> ServerConfig {
        ServerConfig {
            users,
            padding: Arc::new(PaddingScheme::default_scheme()),
            handshake_timeout: Duration::from_secs(10),
            decide_on_first_input: false,
            limits: SessionLimits::default(),
        }
    }
}
