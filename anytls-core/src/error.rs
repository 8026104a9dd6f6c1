//! Error types, one enum per layer of the wire format.
//!
//! All of them are `Clone + PartialEq` so that state machines can keep a sticky copy
//! and tests can compare them, and `#[non_exhaustive]` so that new cases are not a
//! breaking change.

use crate::frame::Command;

/// The frame layer: bytes that cannot be framed or a frame that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A received frame announces more data than the receiver allows for its command.
    #[error("{cmd:?} frame announces {len} data bytes, more than the limit of {max}")]
    TooLarge {
        /// The command of the offending frame.
        cmd: Command,
        /// The announced data length.
        len: usize,
        /// The configured limit for this command.
        max: usize,
    },
    /// A frame to be sent carries more than 65535 data bytes (only PSH and Waste
    /// are split automatically).
    #[error("{cmd:?} frame data of {len} bytes does not fit the 16-bit length field")]
    DataTooLong {
        /// The command of the frame that was to be encoded.
        cmd: Command,
        /// The data length that was asked for.
        len: usize,
    },
}

/// The SOCKS-style destination address codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// The address type byte is not 0x01 (IPv4), 0x03 (domain) or 0x04 (IPv6).
    #[error("unknown address type 0x{0:02x}")]
    BadAddressType(u8),
    /// The input ends before the address does; `needed` is the total length the
    /// address needs, as far as it can be told from the bytes seen.
    #[error("address truncated: have {have} bytes, need at least {needed}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes needed (a lower bound while the domain length byte is missing).
        needed: usize,
    },
    /// A domain name longer than the 255 bytes its length byte can express.
    #[error("domain name of {0} bytes is longer than 255")]
    DomainTooLong(usize),
    /// A domain name that is not valid UTF-8.
    #[error("domain name is not valid UTF-8")]
    DomainNotUtf8,
}

/// The authentication preamble.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The password hash matches no configured user.
    #[error("unknown password")]
    UnknownPassword,
}

/// The settings text codec (`key=value` lines).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A key contains `=` or `\n`, or a value contains `\n`, so it cannot be encoded
    /// without changing its meaning.
    #[error("settings entry {0:?} cannot be encoded (key with '=' or newline in key/value)")]
    Unencodable(String),
    /// The encoded text would not fit one frame.
    #[error("settings text of {0} bytes does not fit one frame")]
    TooLong(usize),
}

/// Parsing or strictly validating a padding scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaddingError {
    /// The text holds no `key=value` line at all.
    #[error("padding scheme has no key=value line")]
    Empty,
    /// The `stop` key is absent.
    #[error("padding scheme has no stop= line")]
    MissingStop,
    /// The `stop` value is not a decimal integer.
    #[error("padding scheme stop value {0:?} is not an integer")]
    BadStop(String),
    /// The text is longer than the limit (8192 bytes strict, 65535 lenient).
    #[error("padding scheme of {len} bytes exceeds {max}")]
    TooLong {
        /// Length of the text.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// Strict rules: a line without `=` (this includes a trailing newline).
    #[error("line {0} has no '='")]
    LineWithoutEquals(usize),
    /// Strict rules: a key appears twice.
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    /// Strict rules: `stop` outside 1..=256.
    #[error("stop={0} is outside 1..=256")]
    StopOutOfRange(i64),
    /// Strict rules: a key that is neither `stop` nor a canonical packet number below 256.
    #[error("key {0:?} is not stop or a canonical packet number below 256")]
    BadKey(String),
    /// Strict rules: more than 16 items on a line.
    #[error("line {key:?} has {count} items, more than 16")]
    TooManyItems {
        /// The packet key.
        key: String,
        /// Number of items.
        count: usize,
    },
    /// Strict rules: an item that is neither `c` nor `min-max` with `0 < min <= max <= 65535`.
    #[error("line {key:?} has an invalid item {item:?}")]
    BadItem {
        /// The packet key.
        key: String,
        /// The offending item text.
        item: String,
    },
    /// Strict rules: the maxima of one line add up to more than 128 KiB.
    #[error("line {key:?} allows {sum} bytes, more than 131072")]
    LineTooLarge {
        /// The packet key.
        key: String,
        /// Sum of the maxima.
        sum: u64,
    },
    /// Strict rules: the maxima of all lines add up to more than 1 MiB.
    #[error("scheme allows {0} bytes in all, more than 1048576")]
    SchemeTooLarge(u64),
}

/// The UDP-over-TCP (sing UoT) codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UotError {
    /// An address inside the request or a datagram is malformed.
    #[error("UoT address: {0}")]
    Addr(#[from] AddrError),
    /// The `is_connect` byte is neither 0 nor 1.
    #[error("UoT request connect flag 0x{0:02x} is neither 0 nor 1")]
    BadConnectFlag(u8),
    /// A datagram address type outside the UoT table (0 IPv4, 1 IPv6, 2 domain).
    #[error("UoT datagram address type 0x{0:02x} is unknown")]
    BadAddressType(u8),
    /// The input ends before the item does.
    #[error("UoT item truncated: have {have} bytes, need at least {needed}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes needed (a lower bound).
        needed: usize,
    },
    /// A datagram longer than the configured (or 65535-byte) limit.
    #[error("UoT datagram of {len} bytes exceeds the limit of {max}")]
    DatagramTooLarge {
        /// The datagram's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The peer broke a rule of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The client opened a stream before sending Settings with data.
    #[error("client did not send its settings")]
    SynBeforeSettings,
    /// Bytes that cannot be framed (a control frame over its cap).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A stream operation that cannot be done (now).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Nothing to read yet, or the send buffers are full: wait for
    /// `StreamReadable` / `StreamWritable`.
    #[error("operation would block")]
    Blocked,
    /// No such stream (never opened, or already gone).
    #[error("unknown stream {0}")]
    UnknownStream(u32),
    /// The stream is closed: the peer sent FIN (writes), or it was finished
    /// locally.
    #[error("stream closed")]
    Closed,
    /// The stream was refused before it carried data both ways.
    #[error("{0}")]
    Refused(RefuseReason),
    /// The stream ended abnormally after it was open.
    #[error("stream reset: {0}")]
    Reset(ResetReason),
    /// The session allows no more concurrent streams.
    #[error("too many streams on this session")]
    TooManyStreams,
    /// The session is closed or closing.
    #[error("session closed")]
    SessionClosed,
    /// The destination cannot be encoded.
    #[error("bad destination: {0}")]
    BadAddress(#[from] AddrError),
    /// Stream ids are used up on this session (after 2^32 - 1 streams).
    #[error("stream ids exhausted")]
    IdsExhausted,
}

/// Why a stream was refused: it never carried data both ways.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The server answered the SYN with a SYNACK carrying this error text
    /// (verbatim, lossily decoded as UTF-8).
    #[error("remote: {0}")]
    Server(String),
    /// Server role: the destination address the client sent cannot be decoded.
    #[error("bad destination: {0}")]
    BadDestination(AddrError),
    /// Client endpoint: the connection the stream was waiting for could not be
    /// established (as the owner reported it).
    #[error("dial failed: {0}")]
    DialFailed(TransportError),
    /// The session ended before the stream was established.
    #[error("session closed before the stream was established: {0}")]
    SessionClosed(SessionError),
    /// Client: the session ended before the server sent a single AnyTLS
    /// frame (see `ClientEvent::SessionUnanswered`): a wrong password, or a
    /// server that does not speak AnyTLS.
    #[error("the server ended the session without an AnyTLS answer: {0}")]
    Unanswered(SessionError),
    /// The client endpoint was closed before the stream had a session.
    #[error("client closed")]
    EndpointClosed,
}

/// Why an open stream ended abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResetReason {
    /// Its reader fell behind by more than `SessionLimits::stream_recv_limit`
    /// while it could not pause the session; FIN went to the peer.
    #[error("receive buffer overflow: the reader fell behind")]
    ReceiveOverflow,
    /// The session carrying it ended.
    #[error("session closed: {0}")]
    SessionClosed(SessionError),
}

/// What a transport (TCP + TLS) under a session reported when it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed or reset the connection (EOF without close_notify,
    /// `ECONNRESET`, broken pipe).
    #[error("connection closed by peer")]
    PeerClosed,
    /// An I/O error, as [`std::io::Error`] reported it.
    #[error("{message}")]
    Io {
        /// Its kind.
        kind: std::io::ErrorKind,
        /// Its text.
        message: String,
    },
    /// Any other failure, described by the owner.
    #[error("transport failed: {0}")]
    Failed(String),
}

impl TransportError {
    /// Classifies an I/O error of a connection: EOF, reset, abort and broken
    /// pipe mean the peer closed it ([`TransportError::is_peer_closed`]);
    /// the kind and text are kept either way.
    pub fn from_io(e: &std::io::Error) -> TransportError {
        TransportError::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// Whether the peer closed or reset the connection (the session then
    /// ends as after an EOF).
    pub fn is_peer_closed(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            TransportError::PeerClosed => true,
            TransportError::Io { kind, .. } => matches!(
                kind,
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ),
            TransportError::Failed(_) => false,
        }
    }

    /// The `io::ErrorKind` this error stands for.
    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            TransportError::PeerClosed => std::io::ErrorKind::UnexpectedEof,
            TransportError::Io { kind, .. } => *kind,
            TransportError::Failed(_) => std::io::ErrorKind::Other,
        }
    }
}

impl From<String> for TransportError {
    fn from(message: String) -> Self {
        TransportError::Failed(message)
    }
}

impl From<&str> for TransportError {
    fn from(message: &str) -> Self {
        TransportError::Failed(message.to_owned())
    }
}

impl From<&std::io::Error> for TransportError {
    fn from(e: &std::io::Error) -> Self {
        TransportError::from_io(e)
    }
}

/// A configuration value that cannot work: it would stall, deadlock or
/// overflow. Returned where the configuration is used to build a state
/// machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size or count below its minimum.
    #[error("{name} of {value} is too small (minimum {min})")]
    TooSmall {
        /// The option.
        name: &'static str,
        /// The configured value.
        value: usize,
        /// The minimum.
        min: usize,
    },
    /// A duration that is zero (or below its minimum).
    #[error("{name} of {value:?} is too short (minimum {min:?})")]
    TooShort {
        /// The option.
        name: &'static str,
        /// The configured value.
        value: std::time::Duration,
        /// The minimum.
        min: std::time::Duration,
    },
    /// A duration too long to add to a point in time.
    #[error("{name} of {value:?} is too long (maximum {max:?})")]
    TooLong {
        /// The option.
        name: &'static str,
        /// The configured value.
        value: std::time::Duration,
        /// The maximum.
        max: std::time::Duration,
    },
    /// The pool settings.
    #[error("pool: {0}")]
    Pool(#[from] crate::pool::PoolConfigError),
}

/// Why a session ended. Carried by the last event, `Event::Closed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The preamble was wrong (server).
    #[error("authentication failed")]
    AuthFailed,
    /// The preamble or the client's Settings did not arrive in time (server).
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// An Alert with a reason arrived.
    #[error("alert from peer: {0}")]
    Alert(String),
    /// Nothing arrived within the timeout after a HeartRequest.
    #[error("no answer to heartbeat: session dead")]
    HeartbeatTimeout,
    /// Client: the server sent no AnyTLS frame within `answer_timeout` of
    /// the session's first stream (not an AnyTLS server, or a silent one).
    #[error("no answer from the server")]
    NoAnswer,
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    PeerEof,
    /// The owner closed the session.
    #[error("session closed locally")]
    LocallyClosed,
    /// The transport under the session failed (reported by its owner).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The client endpoint closed the session (see `CloseReason`).
    #[error("closed by the pool: {0:?}")]
    Pool(crate::pool::CloseReason),
}

/// The `io::ErrorKind` a session's end maps to.
fn session_error_kind(e: &SessionError) -> std::io::ErrorKind {
    use std::io::ErrorKind;
    match e {
        SessionError::PeerEof => ErrorKind::UnexpectedEof,
        SessionError::LocallyClosed | SessionError::Pool(_) => ErrorKind::NotConnected,
        SessionError::AuthFailed => ErrorKind::PermissionDenied,
        SessionError::HandshakeTimeout
        | SessionError::HeartbeatTimeout
        | SessionError::NoAnswer => ErrorKind::TimedOut,
        SessionError::Alert(_) => ErrorKind::ConnectionAborted,
        SessionError::Transport(t) => t.kind(),
        _ => ErrorKind::InvalidData,
    }
}

impl From<SessionError> for std::io::Error {
    fn from(e: SessionError) -> Self {
        std::io::Error::new(session_error_kind(&e), e)
    }
}

impl From<StreamError> for std::io::Error {
    fn from(e: StreamError) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            StreamError::Blocked => ErrorKind::WouldBlock,
            // The stream's end is the session's: report that, as a session
            // error would be.
            StreamError::Refused(RefuseReason::SessionClosed(s) | RefuseReason::Unanswered(s))
            | StreamError::Reset(ResetReason::SessionClosed(s)) => {
                return std::io::Error::new(session_error_kind(s), s.clone());
            }
            // A failed dial keeps the kind of its I/O error.
            StreamError::Refused(RefuseReason::DialFailed(t)) => t.kind(),
            StreamError::Refused(_) => ErrorKind::ConnectionRefused,
            StreamError::Reset(_) => ErrorKind::ConnectionReset,
            StreamError::Closed | StreamError::UnknownStream(_) => ErrorKind::BrokenPipe,
            StreamError::SessionClosed => ErrorKind::NotConnected,
            StreamError::BadAddress(_) => ErrorKind::InvalidInput,
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
