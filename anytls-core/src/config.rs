//! Session configuration: limits, timeouts and identities.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Authenticator, PasswordHash};
use crate::error::ConfigError;
use crate::frame::FrameLimits;
use crate::padding::PaddingScheme;

/// Caps on what one session may buffer. AnyTLS has no flow control, so these
/// are the only backpressure: a full receive buffer stops the session reading
/// (`wants_read() == false`); a full send buffer makes writes return `Blocked`.
///
/// Receive caps are soft by at most one frame (65535 bytes): a frame is
/// accepted whole, then reading pauses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// Longest accepted timeout: ten years (longer ones would overflow deadline
/// arithmetic and are surely mistakes).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub(crate) fn check_duration(name: &'static str, value: Duration) -> Result<(), ConfigError> {
    let min = Duration::from_millis(1);
    if value < min {
        return Err(ConfigError::TooShort { name, value, min });
    }
    if value > MAX_TIMEOUT {
        return Err(ConfigError::TooLong {
            name,
            value,
            max: MAX_TIMEOUT,
        });
    }
    Ok(())
}

fn check_size(name: &'static str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::TooSmall { name, value, min });
    }
    Ok(())
}

impl SessionLimits {
    /// Checks that no cap would stall a session: every buffer, the stream
    /// count and the write size at least 1 (a zero send cap would block every
    /// write forever, a zero `max_write` would never send data, a zero control
    /// queue would never read), the control queue large enough for one
    /// control frame, the stall timeout non-zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_size("stream_recv_buffer", self.stream_recv_buffer, 1)?;
        check_size("session_recv_buffer", self.session_recv_buffer, 1)?;
        check_size("stream_send_buffer", self.stream_send_buffer, 1)?;
        check_size("session_send_buffer", self.session_send_buffer, 1)?;
        check_size("control_queue", self.control_queue, MIN_CONTROL_QUEUE)?;
        check_size("max_streams", self.max_streams, 1)?;
        check_size("max_write", self.max_write, 1)?;
        check_size("stream_recv_limit", self.stream_recv_limit, 1)?;
        check_size(
            "frames.max_settings",
            self.frames.max_settings,
            MIN_SETTINGS_TEXT,
        )?;
        check_duration("stalled_stream_timeout", self.stalled_stream_timeout)
    }
}

/// Smallest control queue: room for a few control frames (SYN and address,
/// FIN, SYNACK, heartbeats); smaller would pause input for good.
pub const MIN_CONTROL_QUEUE: usize = 1024;
/// Smallest accepted cap on Settings text: the peer's real Settings must fit.
pub const MIN_SETTINGS_TEXT: usize = 256;

/// Configuration of client sessions.
#[derive(Clone)]
#[non_exhaustive]
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
    /// How much longer than `stream_open_timeout` a session may go without
    /// any frame from the server once it carries a stream, before it is
    /// closed with `SessionError::NoAnswer` (its streams fail). A v2 server
    /// answers at once (ServerSettings); a TLS server that is not AnyTLS
    /// says nothing; a v1 server answers with the first stream's data, so a
    /// v1 server whose first destination stays silent that long loses the
    /// session too. Default 7 s (10 s in all with the default SYNACK wait).
    pub answer_timeout: Duration,
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
            .field("answer_timeout", &self.answer_timeout)
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
            answer_timeout: Duration::from_secs(7),
            limits: SessionLimits::default(),
        }
    }

    /// Checks the timeouts and the limits (see [`SessionLimits::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration("stream_open_timeout", self.stream_open_timeout)?;
        check_duration("answer_timeout", self.answer_timeout)?;
        if let Some(t) = self.heartbeat_timeout {
            check_duration("heartbeat_timeout", t)?;
        }
        self.limits.validate()
    }
}

/// Configuration of server sessions.
#[derive(Clone, Debug)]
#[non_exhaustive]
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

    /// Checks the handshake timeout and the limits (see
    /// [`SessionLimits::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration("handshake_timeout", self.handshake_timeout)?;
        self.limits.validate()
    }
}
