//! One AnyTLS session (one TLS connection) as a deterministic state machine, in
//! the client or the server role.
//!
//! # Driving a session
//!
//! * Feed received TLS plaintext with [`Session::handle_input`] (only while
//!   [`Session::wants_read`]), the end of the connection with
//!   [`Session::handle_eof`], and expired deadlines with
//!   [`Session::handle_timeout`].
//! * After every input or command, drain in this order: [`Session::poll_transmit`]
//!   until `None` (a shaped [`Transmit`] is ONE TLS write: never merge or
//!   split it; unshaped ones may be coalesced into full TLS records), then
//!   [`Session::poll_event`] until
//!   `None`, then re-arm one timer at [`Session::poll_timeout`].
//! * [`Event::Closed`] is always the last event; then [`Session::is_closed`] is
//!   true and the connection should be dropped.
//!
//! A client session must be given its first stream (if it has one) with
//! [`Session::open_stream`] before the first `poll_transmit`, so that Settings,
//! SYN and the destination go out as one shaped write ("packet 1"), as the
//! reference client does. A session created without a stream (a pre-warmed pool
//! session) sends its Settings alone, which every server accepts.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use tracing::{debug, warn};

use crate::addr::{MAX_ENCODED_LEN, SocksAddr};
use crate::auth::{AuthVerdict, UserId, encode_preamble};
use crate::config::{ClientConfig, ServerConfig, SessionLimits};
use crate::error::{
    AddrError, ConfigError, ProtocolError, RefuseReason, ResetReason, SessionError, StreamError,
    TransportError,
};
use crate::frame::{
    Command, Frame, FrameDecoder, FrameHeader, HEADER_LEN, MAX_FRAME_DATA, StreamId, encode_frame,
};
use crate::padding::{PaddingScheme, Record, Shaper};
use crate::settings::{ClientSettings, PROTOCOL_VERSION, ReceivedClientSettings, StringMap};
use crate::stream::{ChunkQueue, Phase, Stream};
use crate::timer::TimerTable;

/// The Alert text a server sends when a SYN arrives before Settings.
pub const ALERT_NO_SETTINGS: &str = "client did not send its settings";
/// Data taken from one stream per round-robin turn when assembling a write:
/// with its header, a frame fills two full TLS records (2^14 bytes of
/// plaintext each) exactly, so bulk data goes out in whole records. Frames
/// may span records; a bigger frame means fewer frames per byte for the
/// peer (a Go peer writes each PSH payload to its socket in one write).
const CHUNK: usize = 2 * 16 * 1024 - HEADER_LEN;

/// Stream data per PSH frame at most (32 761 bytes). A writer that queues
/// stream data in multiples of it gets only full frames: a socket relay
/// reading 64 KiB at a time would otherwise send frames of 32 761, 32 761
/// and 14 bytes, and a Go peer makes one socket write per frame (three
/// instead of two per 64 KiB).
pub const MAX_PSH_DATA: usize = CHUNK;

/// Whether writes are queued in whole frames' worth (see `write_room`):
/// only when a stream's send buffer holds at least a frame's data, or a
/// write could never be taken.
fn whole_frames(limits: &SessionLimits) -> bool {
    limits.stream_send_buffer >= CHUNK
}

/// Received stream data shorter than this is copied out of the owner's read
/// block instead of being kept as a view into it (see `on_psh`).
const MIN_SHARED_CHUNK: usize = 4 * 1024;

/// Sequence number of a client session, from the pool's counter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct SessionSeq(pub u64);

/// One TLS write: `len` bytes were appended to the caller's buffer.
///
/// A `shaped` transmit (the client's preamble and every packet of the padding
/// phase) must become its own TLS write: its size is part of the traffic
/// shape. Other transmits carry no shape: the caller may coalesce consecutive
/// ones into full-size TLS records and fewer socket writes.
#[must_use]
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transmit {
    /// Number of bytes appended.
    pub len: usize,
    /// Encrypt these bytes on their own (their own TLS record(s)), not
    /// together with neighbouring transmits.
    pub shaped: bool,
}

/// Where [`Session::poll_transmit`] appends a transmit's bytes.
///
/// `BytesMut` and `Vec<u8>` are one. A driver that seals TLS records itself
/// may implement it to have frames written straight into its records: one
/// copy per byte fewer than staging them in a buffer first.
pub trait TransmitBuf {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl TransmitBuf for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl TransmitBuf for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl<T: TransmitBuf + ?Sized> TransmitBuf for &mut T {
    fn put(&mut self, bytes: &[u8]) {
        (**self).put(bytes);
    }
}

/// A [`TransmitBuf`] that counts what went in.
struct Counted<'a, B: ?Sized> {
    buf: &'a mut B,
    len: usize,
}

impl<B: TransmitBuf + ?Sized> Counted<'_, B> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf.put(bytes);
        self.len += bytes.len();
    }

    /// Appends a frame header.
    fn header(&mut self, header: FrameHeader) {
        let mut h = [0u8; HEADER_LEN];
        header.encode(&mut &mut h[..]);
        self.put(&h);
    }
}

/// Something the owner of a session must know about.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// Server: the preamble matched this user.
    Authenticated {
        /// The user.
        user: UserId,
    },
    /// Server: the preamble was wrong. `replay` holds every byte received, to be
    /// handed to a fallback server together with the rest of the connection.
    /// `Closed` follows.
    AuthRejected {
        /// The bytes to replay.
        replay: Bytes,
    },
    /// Client: Settings went out; the session can carry streams and heartbeats.
    /// Server: the client's Settings arrived.
    Established {
        /// The peer's version as known now (a client learns it later, see
        /// [`Event::PeerVersion`]).
        peer_version: u8,
    },
    /// Client: ServerSettings announced the server's version.
    PeerVersion {
        /// The version.
        version: u8,
    },
    /// Server: a new stream with its destination. Answer with
    /// [`Session::accept_stream`].
    StreamOpened {
        /// The stream.
        id: StreamId,
        /// Where the client wants to go (IP literals in domain form are parsed).
        dest: SocksAddr,
    },
    /// Client: the server connected the stream: a SYNACK without error (v2
    /// servers), or, from a v1 server (which sends no SYNACK), implicitly:
    /// data arrived on the stream, or the server showed it is v1 (a stream
    /// frame, PSH or FIN, came before any ServerSettings, or ServerSettings
    /// said v1, or `stream_open_timeout` passed without ServerSettings; a
    /// ServerSettings announcing v2 after that timeout still counts, for
    /// streams opened later). A refusal (a SYNACK with an error) can still
    /// follow a connection guessed from the timeout.
    StreamConnected {
        /// The stream.
        id: StreamId,
    },
    /// The stream was refused: a client got a SYNACK with this error, or a
    /// server refused a stream whose destination does not parse. The stream is
    /// gone. (SYNs over the stream cap are refused before the owner ever sees
    /// them, so they raise no event; see `SessionStats::streams_refused`.)
    StreamRefused {
        /// The stream.
        id: StreamId,
        /// Why.
        reason: RefuseReason,
    },
    /// The stream was reset because its reader fell behind by more than
    /// `SessionLimits::stream_recv_limit` while it could not pause the session.
    /// FIN went to the peer; the stream is gone and its unread data dropped.
    StreamReset {
        /// The stream.
        id: StreamId,
        /// Why.
        reason: ResetReason,
    },
    /// The stream has data (or its EOF) to read.
    ///
    /// Edge-triggered: raised once when a stream goes from nothing to read to
    /// something to read (data or EOF), and not again until a read found the
    /// stream empty (`read` returned `Err(Blocked)`). An owner that stops
    /// reading while data is left gets no new event for it: it must read
    /// until `Blocked` (or EOF) before waiting for the next one.
    StreamReadable {
        /// The stream.
        id: StreamId,
    },
    /// A write that returned `Blocked` may be retried.
    StreamWritable {
        /// The stream.
        id: StreamId,
    },
    /// The peer closed the stream (FIN). Reads end with EOF after the data
    /// already received; writes fail. Call [`Session::finish`] to release it.
    StreamFinished {
        /// The stream.
        id: StreamId,
    },
    /// A HeartResponse answered our oldest outstanding HeartRequest.
    HeartbeatAck {
        /// Time from the request to the response.
        rtt: Duration,
    },
    /// Client: the server sent a new padding scheme; later sessions of this
    /// client should start with it.
    PaddingSchemeUpdated(Arc<PaddingScheme>),
    /// The session is over. Always the last event.
    Closed {
        /// Why.
        reason: SessionError,
    },
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// TLS plaintext bytes handed in.
    pub bytes_received: u64,
    /// TLS plaintext bytes handed out in transmits.
    pub bytes_sent: u64,
    /// Transmits handed out.
    pub transmits: u64,
    /// Streams opened (client) or accepted from SYNs (server).
    pub streams_opened: u64,
    /// Streams a server refused (bad address, cap, owner's error).
    pub streams_refused: u64,
    /// HeartRequests sent.
    pub heartbeats_sent: u64,
}

struct ClientData {
    cfg: Arc<ClientConfig>,
    seq: SessionSeq,
    padding: Arc<PaddingScheme>,
    shaper: Shaper,
    preamble: Option<Bytes>,
    next_id: u32,
    settings_flushed: bool,
    /// The server's version is known: ServerSettings arrived, or it showed it
    /// is v1.
    version_known: bool,
    /// ... only because no ServerSettings came within the SYNACK wait.
    version_guessed: bool,
    /// A frame of a known command arrived from the server.
    answered: bool,
}

struct ServerData {
    cfg: Arc<ServerConfig>,
    padding_md5: String,
    user: Option<UserId>,
    settings_received: bool,
}

enum Role {
    Client(Box<ClientData>),
    Server(Box<ServerData>),
}

mod sealed {
    pub trait Sealed {}
}

/// The role of a [`Session`] as a type: [`Client`] or [`Server`]. Methods that
/// only make sense in one role exist only on that role's sessions.
pub trait SessionRole: sealed::Sealed + Send + Sync + 'static {
    /// Whether this is the client role.
    const IS_CLIENT: bool;
}

/// The client role: a [`ClientSession`] opens streams.
#[derive(Debug)]
pub enum Client {}
/// The server role: a [`ServerSession`] authenticates and accepts streams.
#[derive(Debug)]
pub enum Server {}
impl sealed::Sealed for Client {}
impl sealed::Sealed for Server {}
impl SessionRole for Client {
    const IS_CLIENT: bool = true;
}
impl SessionRole for Server {
    const IS_CLIENT: bool = false;
}

/// A client session (one TLS connection to a server).
pub type ClientSession = Session<Client>;
/// A server session (one TLS connection from a client).
pub type ServerSession = Session<Server>;

/// A session's deadlines (the stall deadline is derived from the input state,
/// see `stall_deadline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Server: preamble and Settings must have arrived.
    Handshake,
    /// Any frame must arrive (after a HeartRequest with a timeout).
    Liveness,
    /// Client: a stream's SYNACK wait.
    StreamOpen(StreamId),
    /// Client: the server must say something (any frame of a known
    /// command) after the session's first stream.
    Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Server: waiting for the preamble.
    Auth,
    /// Frames flow.
    Open,
    /// Flushing control frames (an Alert), then closing with the reason.
    Draining(SessionError),
    Closed,
}

struct ShapedWrite {
    data: Bytes,
    offset: usize,
    records: VecDeque<Record>,
}

impl ShapedWrite {
    /// Appends the next record of the plan; false when none is left.
    fn put_next<B: TransmitBuf + ?Sized>(&mut self, buf: &mut Counted<'_, B>) -> bool {
        let Some(rec) = self.records.pop_front() else {
            return false;
        };
        let mut payload = &self.data[self.offset..];
        let mut shaped = BytesMut::with_capacity(rec.len());
        rec.encode(&mut payload, &mut shaped);
        buf.put(&shaped);
        self.offset += rec.payload;
        true
    }
}

fn stream_mut(
    streams: &mut BTreeMap<StreamId, Stream>,
    id: StreamId,
) -> Result<&mut Stream, StreamError> {
    streams.get_mut(&id).ok_or(StreamError::UnknownStream(id.0))
}

/// An AnyTLS session in role `R` ([`ClientSession`] or [`ServerSession`]).
/// See the [module docs](self) for how to drive it.
pub struct Session<R: SessionRole> {
    role: Role,
    _role: PhantomData<fn() -> R>,
    limits: SessionLimits,
    state: State,
    now: Instant,
    rng: ChaCha8Rng,
    recv_buf: BytesMut,
    decoder: FrameDecoder,
    streams: BTreeMap<StreamId, Stream>,
    /// Received bytes buffered in all streams.
    recv_total: usize,
    /// Bytes queued in all streams' send queues.
    send_total: usize,
    /// A stream whose receive buffer went over its cap: input is paused until
    /// it drains below (if it is the only stream and may pause).
    blocked_on: Option<StreamId>,
    /// Since when input has been paused on `blocked_on` without its reader
    /// making progress.
    stalled_since: Option<Instant>,
    /// Streams with data or a FIN to send, in round-robin order.
    ready: VecDeque<StreamId>,
    /// Encoded control frames, sent before any data.
    control: BytesMut,
    current: Option<ShapedWrite>,
    events: VecDeque<Event>,
    peer_version: u8,
    /// Every deadline but the stall deadline.
    timers: TimerTable<Timer>,
    /// The peer closed the connection while input was paused: the session
    /// ends once the buffered frames are processed.
    peer_eof: bool,
    /// After the peer closed the connection cleanly: data of streams it had
    /// finished (FIN), still readable. Nothing is lost that the peer sent
    /// and ended before it closed.
    finished_data: BTreeMap<StreamId, ChunkQueue>,
    /// When the oldest unanswered HeartRequest was sent (for the RTT).
    heartbeat_sent_at: Option<Instant>,
    stats: SessionStats,
}

impl<R: SessionRole> fmt::Debug for Session<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &if R::IS_CLIENT { "client" } else { "server" })
            .field("state", &self.state)
            .field("peer_version", &self.peer_version)
            .field("streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<R: SessionRole> Session<R> {
    fn new(role: Role, limits: SessionLimits, state: State, seed: [u8; 32], now: Instant) -> Self {
        Session {
            role,
            _role: PhantomData,
            decoder: FrameDecoder::new(limits.frames),
            limits,
            state,
            now,
            rng: ChaCha8Rng::from_seed(seed),
            recv_buf: BytesMut::new(),
            streams: BTreeMap::new(),
            recv_total: 0,
            send_total: 0,
            blocked_on: None,
            stalled_since: None,
            ready: VecDeque::new(),
            control: BytesMut::new(),
            current: None,
            events: VecDeque::new(),
            peer_version: 1,
            timers: TimerTable::default(),
            peer_eof: false,
            finished_data: BTreeMap::new(),
            heartbeat_sent_at: None,
            stats: SessionStats::default(),
        }
    }

    // ----- getters -----

    /// Whether this is a client session.
    pub fn is_client(&self) -> bool {
        R::IS_CLIENT
    }

    /// The peer's protocol version as known so far (1 until shown otherwise).
    pub fn peer_version(&self) -> u8 {
        self.peer_version
    }

    /// Number of streams the session holds (open, or not yet released).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Whether the session is over (after `Event::Closed`).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the owner should read from the connection. False while receive
    /// buffers or the control queue are full, and once the session is closing.
    pub fn wants_read(&self) -> bool {
        matches!(self.state, State::Auth | State::Open) && !self.input_paused() && !self.peer_eof
    }

    /// The earliest deadline, if any. After `handle_timeout(now)` it is later
    /// than `now` or `None`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Closed) {
            return None;
        }
        match (self.timers.next(), self.stall_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The latest `now` the session was given.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether events are waiting for [`poll_event`](Self::poll_event).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- inputs -----

    fn advance_clock(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Received TLS plaintext. Errors close the session (`Event::Closed`).
    pub fn handle_input(&mut self, now: Instant, data: BytesMut) {
        self.advance_clock(now);
        if !matches!(self.state, State::Auth | State::Open) || data.is_empty() {
            return;
        }
        let first = self.stats.bytes_received == 0;
        self.stats.bytes_received += data.len() as u64;
        let mut data = data;
        // Partial PSH data left by a pause goes first, without a copy.
        if !self.recv_buf.is_empty() && self.state == State::Open {
            self.process_input();
        }
        // Leftover input (a partial frame header, or part of a control frame)
        // is completed with just the bytes it needs, so the bulk of `data`
        // becomes the buffer as it is: stream data is never copied here.
        while !self.recv_buf.is_empty()
            && !data.is_empty()
            && self.state == State::Open
            && !self.input_paused()
        {
            let need = self.decoder.bytes_needed(self.recv_buf.len()).max(1);
            let part = data.split_to(need.min(data.len()));
            self.recv_buf.extend_from_slice(&part);
            self.process_input();
        }
        if self.recv_buf.is_empty() {
            self.recv_buf = data;
        } else {
            self.recv_buf.extend_from_slice(&data);
        }
        if first && self.state == State::Auth && self.recv_buf.len() < crate::auth::HASH_LEN {
            if let Role::Server(srv) = &self.role {
                if srv.cfg.decide_on_first_input {
                    debug!("first read shorter than the password hash: rejected");
                    let replay = self.recv_buf.split().freeze();
                    self.events.push_back(Event::AuthRejected { replay });
                    self.close_with(SessionError::AuthFailed);
                    return;
                }
            }
        }
        self.process_input();
    }

    /// The peer closed the connection.
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.state == State::Auth && !self.recv_buf.is_empty() {
            // A probe that half-closes after its request still gets the
            // fallback's answer, as from a plain web server.
            let replay = self.recv_buf.split().freeze();
            self.events.push_back(Event::AuthRejected { replay });
        }
        if self.state == State::Open && !self.recv_buf.is_empty() {
            // Input is paused with frames still buffered (a reader behind):
            // they are processed first, then the session ends (nothing the
            // peer sent before it closed is lost).
            self.peer_eof = true;
            self.process_input();
            return;
        }
        if matches!(self.state, State::Auth | State::Open) {
            self.close_with(SessionError::PeerEof);
        }
    }

    /// Everything buffered is processed: a pending EOF ends the session.
    fn end_of_input(&mut self) {
        if self.peer_eof && self.state == State::Open {
            self.close_with(SessionError::PeerEof);
        }
    }

    /// The transport under the session failed: the session ends (every
    /// stream with it). A peer that closed or reset the connection
    /// ([`TransportError::is_peer_closed`]) is an EOF ([`SessionError::PeerEof`],
    /// see [`handle_eof`](Self::handle_eof)); anything else ends it with
    /// [`SessionError::Transport`].
    pub fn handle_transport_error(&mut self, now: Instant, error: TransportError) {
        if error.is_peer_closed() {
            self.handle_eof(now);
            return;
        }
        self.advance_clock(now);
        if self.state != State::Closed {
            self.close_with(SessionError::Transport(error));
        }
    }

    /// Deadlines up to `now` expire. Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_clock(now);
        let now = self.now;
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.timers.is_expired(Timer::Handshake, now) {
            self.timers.clear(Timer::Handshake);
            if self.state == State::Auth {
                // Also with nothing read: a silent prober is handed to the
                // fallback, whose own idle timeout then decides, as a plain
                // web server's would.
                let replay = self.recv_buf.split().freeze();
                self.events.push_back(Event::AuthRejected { replay });
            }
            debug!("session handshake timed out");
            self.close_with(SessionError::HandshakeTimeout);
            return;
        }
        if self.timers.is_expired(Timer::Liveness, now) {
            debug!("no frame since heartbeat: closing session");
            self.close_with(SessionError::HeartbeatTimeout);
            return;
        }
        if self.stall_deadline().is_some_and(|t| t <= now) {
            // The reader is stuck: stop pausing the session for it (streams
            // behind it may be waiting); it is reset if it overflows.
            self.stalled_since = None;
            if let Some(id) = self.blocked_on {
                debug!(stream = id.0, "stream reader stalled: input resumes");
                if let Some(s) = self.streams.get_mut(&id) {
                    s.may_pause = false;
                }
            }
            self.resume_input();
        }
        let mut unanswered = false;
        while let Some((timer, _)) = self.timers.pop_expired(now) {
            let id = match timer {
                Timer::StreamOpen(id) => id,
                Timer::Answer => {
                    unanswered = true;
                    continue;
                }
                // Handshake and liveness were handled above.
                _ => continue,
            };
            let waiting = self
                .streams
                .get(&id)
                .is_some_and(|s| s.phase == Phase::Opening);
            if waiting && !self.version_known() {
                // No ServerSettings within the SYNACK wait: a v2 server sends
                // it at once, so this is a v1 server, which sends no SYNACK.
                debug!("no ServerSettings in time: the server is v1");
                self.learn_v1(true);
                continue;
            }
            if waiting && self.peer_version >= 2 && self.timers.get(Timer::Liveness).is_none() {
                debug!(
                    stream = id.0,
                    "SYNACK is slow: probing the session with a heartbeat"
                );
                let timeout = match &self.role {
                    Role::Client(c) => c.cfg.heartbeat_timeout.unwrap_or(c.cfg.stream_open_timeout),
                    Role::Server(_) => continue,
                };
                self.queue_heartbeat(now, Some(timeout));
            }
        }
        // After the v1 guess of the same instant, if any.
        if unanswered {
            debug!("no frame from the server since the first stream: closing session");
            self.close_with(SessionError::NoAnswer);
        }
    }

    // ----- commands -----

    /// Queues as much of `data` as fits under the stream's and the session's
    /// send caps (copied once); returns how much it took. `Err(Blocked)` when
    /// nothing fits: `Event::StreamWritable` follows when there is room.
    ///
    /// Bulk writes are taken in whole frames: when a write of at least
    /// [`MAX_PSH_DATA`] bytes does not fit under the stream's cap, the stream
    /// takes a multiple of `MAX_PSH_DATA` (`Blocked` while less than that
    /// fits), so the data goes out in full frames rather than a full frame
    /// and a small one (a Go peer writes each frame to its socket on its own).
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let room = self.write_room(id, data.len())?;
        self.queue_send(id, Bytes::copy_from_slice(&data[..room]));
        Ok(room)
    }

    /// Like [`write`](Self::write), without copying: takes the longest
    /// prefix of `data` that [`write`](Self::write) would take (a view,
    /// shared with the caller's buffer) and advances `data` past it.
    pub fn write_bytes(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, StreamError> {
        let room = self.write_room(id, data.len())?;
        let head = data.split_to(room);
        self.queue_send(id, head);
        Ok(room)
    }

    /// Bytes of a `len`-byte write the stream can take now (`len` when 0).
    fn write_room(&mut self, id: StreamId, len: usize) -> Result<usize, StreamError> {
        if self.state != State::Open {
            return Err(StreamError::SessionClosed);
        }
        let stream = stream_mut(&mut self.streams, id)?;
        if stream.local_fin || stream.peer_fin {
            return Err(StreamError::Closed);
        }
        if len == 0 {
            return Ok(0);
        }
        if matches!(stream.phase, Phase::AwaitingAddress | Phase::AwaitingAccept) {
            // Server: no data before the SYNACK (`StreamWritable` follows accept).
            stream.write_blocked = true;
            return Err(StreamError::Blocked);
        }
        let stream_room = self
            .limits
            .stream_send_buffer
            .saturating_sub(stream.send.len());
        let session_room = self
            .limits
            .session_send_buffer
            .saturating_sub(self.send_total);
        let room = stream_room.min(session_room);
        if room == 0 {
            stream.write_blocked = true;
            return Err(StreamError::Blocked);
        }
        if len > room && len >= CHUNK && stream_room <= session_room && whole_frames(&self.limits) {
            // The stream's own cap cuts the write: take whole frames' worth
            // (see `MAX_PSH_DATA`), or wait for room for one (its queue
            // drains; `signal_writable` waits for the same). Where the
            // session's cap, shared with the other streams, is what cuts,
            // the write takes what fits: waiting for a frame's worth there
            // would let smaller writers of other streams go first for good.
            if room < CHUNK {
                stream.write_blocked = true;
                return Err(StreamError::Blocked);
            }
            return Ok(room / CHUNK * CHUNK);
        }
        Ok(room.min(len))
    }

    fn queue_send(&mut self, id: StreamId, data: Bytes) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        self.send_total += data.len();
        stream.send.push(data);
        if !stream.queued {
            stream.queued = true;
            self.ready.push_back(id);
        }
    }

    /// Reads the next chunk of a stream: `Ok(Some(data))`, `Ok(None)` at EOF
    /// (the peer sent FIN and everything before it was read), or
    /// `Err(Blocked)` until `Event::StreamReadable`. Taking data may resume
    /// paused input, which is then processed at `now`.
    pub fn read(&mut self, now: Instant, id: StreamId) -> Result<Option<Bytes>, StreamError> {
        self.advance_clock(now);
        if let Some(q) = self.finished_data.get_mut(&id) {
            let chunk = q.pop();
            if chunk.is_none() {
                self.finished_data.remove(&id);
            }
            return Ok(chunk);
        }
        let stream = stream_mut(&mut self.streams, id)?;
        if stream.local_fin {
            return Err(StreamError::Closed);
        }
        if matches!(stream.phase, Phase::AwaitingAddress) {
            return Err(StreamError::Blocked);
        }
        match stream.recv.pop() {
            Some(b) => {
                self.recv_total -= b.len();
                if self.blocked_on == Some(id) {
                    // The reader made progress: a pause restarts its clock.
                    self.stalled_since = None;
                }
                self.resume_input();
                Ok(Some(b))
            }
            None if stream.peer_fin => Ok(None),
            None => {
                stream.readable_signaled = false;
                Err(StreamError::Blocked)
            }
        }
    }

    /// Bytes ready to read on a stream.
    pub fn readable_len(&self, id: StreamId) -> usize {
        match self.finished_data.get(&id) {
            Some(q) => q.len(),
            None => self.streams.get(&id).map_or(0, |s| s.recv.len()),
        }
    }

    /// Closes a stream (FIN is a full close in AnyTLS). Queued data still goes
    /// out, then FIN; data received from now on is dropped. After the peer's
    /// FIN this just releases the stream (no FIN is echoed).
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        if self.finished_data.remove(&id).is_some() {
            return Ok(());
        }
        let stream = stream_mut(&mut self.streams, id)?;
        if stream.peer_fin || self.state != State::Open {
            self.remove_stream(id);
            return Ok(());
        }
        if stream.local_fin {
            return Ok(());
        }
        stream.local_fin = true;
        self.recv_total -= stream.recv.clear();
        self.timers.clear(Timer::StreamOpen(id));
        if !stream.queued {
            stream.queued = true;
            self.ready.push_back(id);
        }
        self.resume_input();
        Ok(())
    }

    /// Sends a HeartRequest (sid 0). With `timeout`, and if the peer speaks v2,
    /// the session is closed with `HeartbeatTimeout` when no frame at all
    /// arrives within it.
    pub fn send_heartbeat(&mut self, now: Instant, timeout: Option<Duration>) {
        self.advance_clock(now);
        if self.state == State::Open {
            self.queue_heartbeat(self.now, timeout);
        }
    }

    /// Closes the session at once: no FINs, nothing more is sent.
    pub fn close(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.state != State::Closed {
            self.close_with(SessionError::LocallyClosed);
        }
    }

    // ----- output -----

    /// The next TLS write, appended to `buf` (normally empty). Returns `None`
    /// when there is nothing to send.
    pub fn poll_transmit<B: TransmitBuf + ?Sized>(
        &mut self,
        now: Instant,
        buf: &mut B,
    ) -> Option<Transmit> {
        self.advance_clock(now);
        let mut out = Counted { buf, len: 0 };
        let shaped = self.fill_transmit(&mut out);
        let len = out.len;
        // A drained control queue may let paused input continue.
        self.resume_input();
        if len == 0 {
            if let State::Draining(reason) = &self.state {
                let reason = reason.clone();
                self.close_with(reason);
            }
            return None;
        }
        self.stats.bytes_sent += len as u64;
        self.stats.transmits += 1;
        Some(Transmit { len, shaped })
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) may have something to
    /// send (queued control frames, stream data or FINs, the rest of a shaped
    /// write, the preamble). False means it has nothing until the next input
    /// or command.
    pub fn has_output(&self) -> bool {
        match self.state {
            State::Closed => false,
            State::Draining(_) => true,
            State::Auth | State::Open => {
                !self.control.is_empty()
                    || self.current.is_some()
                    || (self.state == State::Open && !self.ready.is_empty())
                    || matches!(&self.role, Role::Client(c) if c.preamble.is_some())
            }
        }
    }

    /// Whether a transmit may still be shaped ([`Transmit::shaped`]): a
    /// client before its padding phase is over. Once false, it stays false:
    /// a driver may then write transmits straight into full-size records.
    pub fn may_shape(&self) -> bool {
        match &self.role {
            Role::Client(c) => {
                c.preamble.is_some() || self.current.is_some() || !c.shaper.is_done()
            }
            Role::Server(_) => false,
        }
    }

    /// Appends the next transmit; returns whether it is shaped (see
    /// [`Transmit::shaped`]).
    fn fill_transmit<B: TransmitBuf + ?Sized>(&mut self, buf: &mut Counted<'_, B>) -> bool {
        if matches!(self.state, State::Closed | State::Auth) {
            return false;
        }
        if let Role::Client(c) = &mut self.role {
            // Packet 0: the preamble, alone.
            if let Some(pre) = c.preamble.take() {
                buf.put(&pre);
                return true;
            }
        }
        if let Some(cur) = &mut self.current {
            if cur.put_next(buf) {
                return true;
            }
            self.current = None;
        }
        let data_allowed = self.state == State::Open;
        let shaping = match &self.role {
            Role::Client(c) => !c.shaper.is_done(),
            Role::Server(_) => false,
        };
        if !shaping {
            if !self.control.is_empty() {
                buf.put(&self.control.split());
            }
            if data_allowed {
                let budget = self.limits.max_write;
                self.gather_data(buf, budget);
            }
            return false;
        }
        // While shaping, control frames and data never share a write, so that
        // packet 1 is exactly Settings + SYN + destination, as in the reference.
        let mut write = BytesMut::new();
        if !self.control.is_empty() {
            write = self.control.split();
        } else if data_allowed {
            let budget = self.limits.max_write;
            self.gather_data(
                &mut Counted {
                    buf: &mut write,
                    len: 0,
                },
                budget,
            );
        }
        if write.is_empty() {
            return false;
        }
        let Role::Client(c) = &mut self.role else {
            return false;
        };
        if !c.settings_flushed {
            c.settings_flushed = true;
            self.events.push_back(Event::Established {
                peer_version: self.peer_version,
            });
        }
        let plan = c.shaper.plan(&c.padding, write.len(), &mut self.rng);
        let mut cur = ShapedWrite {
            data: write.freeze(),
            offset: 0,
            records: plan.into(),
        };
        cur.put_next(buf);
        self.current = Some(cur);
        true
    }

    /// Appends PSH and FIN frames from ready streams, round robin, until `out`
    /// holds about `budget` bytes.
    fn gather_data<B: TransmitBuf + ?Sized>(&mut self, out: &mut Counted<'_, B>, budget: usize) {
        let start = out.len;
        let mut freed = false;
        while out.len - start < budget {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let room = (budget - (out.len - start)).clamp(1, CHUNK);
            if room < CHUNK && s.send.len() > room && out.len > start && budget >= CHUNK {
                // The rest of this transmit would cut the stream's data to a
                // short frame: it goes first in the next transmit instead,
                // as a full one (see `MAX_PSH_DATA`).
                self.ready.push_front(id);
                break;
            }
            // One frame of up to `room` bytes, from as many queued chunks as
            // it takes: the bytes are copied into the transmit anyway, and a
            // Go receiver writes each frame's payload to its socket on its
            // own (small frames cost it a syscall each).
            let len = s.send.len().min(room);
            if len > 0 {
                debug_assert!(len <= MAX_FRAME_DATA);
                out.header(FrameHeader {
                    cmd: Command::Psh,
                    stream_id: id,
                    len: len as u16,
                });
                let mut left = len;
                while let Some(chunk) = s.send.pop_up_to(left) {
                    out.put(&chunk);
                    left -= chunk.len();
                    if left == 0 {
                        break;
                    }
                }
                debug_assert_eq!(left, 0);
                self.send_total -= len;
                freed = true;
            }
            if s.send.is_empty() && s.local_fin {
                out.header(FrameHeader {
                    cmd: Command::Fin,
                    stream_id: id,
                    len: 0,
                });
                self.remove_stream(id);
                continue;
            }
            if s.has_output() {
                self.ready.push_back(id);
            } else {
                s.queued = false;
            }
        }
        if freed {
            self.signal_writable();
        }
    }

    fn signal_writable(&mut self) {
        if self.send_total >= self.limits.session_send_buffer {
            return;
        }
        let cap = self.limits.stream_send_buffer;
        // Room for a whole frame, when writes wait for that (`write_room`).
        let need = if whole_frames(&self.limits) { CHUNK } else { 1 };
        for (id, s) in &mut self.streams {
            if s.write_blocked && s.send.len() + need <= cap {
                s.write_blocked = false;
                self.events.push_back(Event::StreamWritable { id: *id });
            }
        }
    }

    // ----- internals -----

    fn push_control(&mut self, cmd: Command, id: StreamId, data: &[u8]) {
        // Callers pass at most MAX_FRAME_DATA bytes.
        let _ = encode_frame(&mut self.control, cmd, id, data);
    }

    fn queue_heartbeat(&mut self, now: Instant, timeout: Option<Duration>) {
        self.push_control(Command::HeartRequest, StreamId::SESSION, &[]);
        self.stats.heartbeats_sent += 1;
        if self.heartbeat_sent_at.is_none() {
            self.heartbeat_sent_at = Some(now);
        }
        if let Some(t) = timeout.filter(|_| self.peer_version >= 2) {
            if self.timers.get(Timer::Liveness).is_none() {
                self.timers.set(Timer::Liveness, now + t);
            }
        }
    }

    /// Client: whether the server's version is known yet.
    fn version_known(&self) -> bool {
        match &self.role {
            Role::Client(c) => c.version_known,
            Role::Server(_) => true,
        }
    }

    /// Client: the server is v1 (`guess`: only because no ServerSettings
    /// came in time; a late one still counts). It sends no SYNACK, so every
    /// stream still waiting for one is connected now.
    fn learn_v1(&mut self, guess: bool) {
        let Role::Client(c) = &mut self.role else {
            return;
        };
        if c.version_known {
            if !guess {
                c.version_guessed = false;
            }
            return;
        }
        c.version_known = true;
        c.version_guessed = guess;
        self.peer_version = 1;
        self.events.push_back(Event::PeerVersion { version: 1 });
        let opening: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.phase == Phase::Opening)
            .map(|(id, _)| *id)
            .collect();
        for id in opening {
            self.connect_stream(id);
        }
    }

    /// Client: a stream waiting for the server's verdict is connected.
    fn connect_stream(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.phase == Phase::Opening {
                s.phase = Phase::Open;
                self.timers.clear(Timer::StreamOpen(id));
                self.events.push_back(Event::StreamConnected { id });
            }
        }
    }

    fn input_paused(&self) -> bool {
        self.recv_total >= self.limits.session_recv_buffer
            || self.control.len() >= self.limits.control_queue
            || self.paused_on_stream()
    }

    /// Input waits for one stream's reader: the stream is over its receive cap
    /// and is the session's only stream (with others, pausing would stall
    /// them; it buffers up to `stream_recv_limit` instead).
    fn paused_on_stream(&self) -> bool {
        self.streams.len() == 1
            && self.blocked_on.is_some_and(|id| {
                self.streams
                    .get(&id)
                    .is_some_and(|s| s.may_pause && s.recv.len() >= self.limits.stream_recv_buffer)
            })
    }

    /// When a pause on a stream's reader stops being honoured.
    fn stall_deadline(&self) -> Option<Instant> {
        let since = self.stalled_since?;
        self.paused_on_stream()
            .then(|| since + self.limits.stalled_stream_timeout)
    }

    /// Received bytes a stream may hold before it is reset.
    fn stream_hard_limit(&self) -> usize {
        self.limits
            .stream_recv_limit
            .max(self.limits.stream_recv_buffer + MAX_FRAME_DATA)
    }

    /// Resets a stream whose reader fell behind (see `stream_recv_limit`).
    fn reset_stream(&mut self, id: StreamId, reason: ResetReason) {
        debug!(stream = id.0, "{reason}: resetting the stream");
        if !self.streams.get(&id).is_some_and(|s| s.peer_fin) {
            self.push_control(Command::Fin, id, &[]);
        }
        self.remove_stream(id);
        self.events.push_back(Event::StreamReset { id, reason });
    }

    fn resume_input(&mut self) {
        // With the peer gone, an empty buffer still has its EOF to process.
        if (!self.recv_buf.is_empty() || self.peer_eof) && !self.input_paused() {
            self.process_input();
        }
    }

    fn process_input(&mut self) {
        loop {
            if self.input_paused() {
                if self.paused_on_stream() && self.stalled_since.is_none() {
                    self.stalled_since = Some(self.now);
                }
                return;
            }
            match self.state {
                State::Auth => {
                    if !self.authenticate() {
                        return;
                    }
                }
                State::Open => match self.decoder.decode(&mut self.recv_buf) {
                    Ok(Some(frame)) => self.handle_frame(frame),
                    Ok(None) if !self.recv_buf.is_empty() => {
                        // Part of a PSH frame: deliver what is here now.
                        let Some((id, data)) = self.decoder.take_partial_data(&mut self.recv_buf)
                        else {
                            self.end_of_input();
                            return;
                        };
                        self.timers.clear(Timer::Liveness);
                        self.on_psh(id, data);
                    }
                    Ok(None) => {
                        if self.recv_buf.is_empty() {
                            // Let go of the owner's read block: an idle session
                            // must not pin it (frames keep their own views).
                            self.recv_buf = BytesMut::new();
                        }
                        self.end_of_input();
                        return;
                    }
                    Err(e) => {
                        debug!("undecodable input: {e}");
                        self.close_with(ProtocolError::Frame(e).into());
                        return;
                    }
                },
                State::Draining(_) | State::Closed => {
                    self.recv_buf.clear();
                    return;
                }
            }
        }
    }

    /// Server: checks the preamble. Returns whether frames may follow.
    fn authenticate(&mut self) -> bool {
        let Role::Server(srv) = &mut self.role else {
            return false;
        };
        match srv.cfg.users.verify(&mut self.recv_buf) {
            AuthVerdict::Accepted { user, .. } => {
                srv.user = Some(user);
                self.state = State::Open;
                self.events.push_back(Event::Authenticated { user });
                true
            }
            AuthVerdict::NeedMore { .. } => false,
            AuthVerdict::Rejected { replay, .. } => {
                debug!("preamble rejected");
                self.events.push_back(Event::AuthRejected { replay });
                self.close_with(SessionError::AuthFailed);
                false
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame) {
        // Any frame shows the peer is alive.
        self.timers.clear(Timer::Liveness);
        let Frame {
            cmd,
            stream_id: id,
            data,
        } = frame;
        if let Role::Client(c) = &mut self.role {
            // Bytes that merely parse as frames (a web server's answer) do
            // not count: only a command a server sends does.
            let known = matches!(
                cmd,
                Command::Psh
                    | Command::Fin
                    | Command::Alert
                    | Command::UpdatePaddingScheme
                    | Command::SynAck
                    | Command::HeartRequest
                    | Command::HeartResponse
                    | Command::ServerSettings
            );
            if known && !c.answered {
                c.answered = true;
                self.timers.clear(Timer::Answer);
            }
        }
        if !self.version_known() && matches!(cmd, Command::Psh | Command::Fin) {
            // A v2 server sends ServerSettings before any stream frame; a
            // stream frame first means a v1 server.
            self.learn_v1(false);
        }
        match cmd {
            Command::Psh => self.on_psh(id, data),
            Command::Syn => self.on_syn(id),
            Command::Fin => self.on_fin(id),
            Command::Settings if !data.is_empty() => self.on_settings(&data),
            Command::Alert if !data.is_empty() => {
                let text = String::from_utf8_lossy(&data).into_owned();
                warn!("alert from peer: {text}");
                self.close_with(SessionError::Alert(text));
            }
            Command::UpdatePaddingScheme if !data.is_empty() => self.on_padding_update(data),
            Command::SynAck => self.on_synack(id, &data),
            Command::HeartRequest => self.push_control(Command::HeartResponse, id, &[]),
            Command::HeartResponse => {
                if let Some(sent) = self.heartbeat_sent_at.take() {
                    let rtt = self.now.saturating_duration_since(sent);
                    self.events.push_back(Event::HeartbeatAck { rtt });
                }
            }
            Command::ServerSettings if !data.is_empty() => {
                if let Role::Client(c) = &mut self.role {
                    // Decided already, unless only guessed from a timeout.
                    if c.version_known && !c.version_guessed {
                        return;
                    }
                    let version = crate::settings::server_version(&StringMap::parse(&data));
                    match version {
                        Some(v) if v >= 2 => {
                            // Streams already connected by the guess stay so;
                            // new ones wait for their SYNACK again.
                            c.version_known = true;
                            c.version_guessed = false;
                            self.peer_version = v;
                            self.events.push_back(Event::PeerVersion { version: v });
                        }
                        _ => self.learn_v1(false),
                    }
                }
            }
            // Waste, unknown commands, empty Settings/Alert/Update/ServerSettings:
            // the data (if any) is consumed and ignored.
            _ => {}
        }
    }

    fn on_psh(&mut self, id: StreamId, data: Bytes) {
        if data.is_empty() {
            return;
        }
        // Stream data is a view into the owner's read block. A small view
        // would keep a whole block (tens of KiB) alive while counting only its
        // own bytes against the receive caps: a peer sending tiny frames on
        // many streams could pin far more memory than the caps allow. Small
        // chunks are copied out, so a queued chunk pins at most a few times
        // its size; bulk data (large chunks) is still never copied.
        let data = if data.len() < MIN_SHARED_CHUNK {
            Bytes::copy_from_slice(&data)
        } else {
            data
        };
        let hard_limit = self.stream_hard_limit();
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.local_fin || s.peer_fin {
            return;
        }
        self.recv_total += data.len();
        s.recv.push(data);
        let buffered = s.recv.len();
        if buffered > hard_limit {
            self.reset_stream(id, ResetReason::ReceiveOverflow);
            return;
        }
        if buffered >= self.limits.stream_recv_buffer && self.blocked_on != Some(id) {
            self.blocked_on = Some(id);
            self.stalled_since = None;
        }
        if s.phase == Phase::AwaitingAddress {
            self.parse_destination(id);
            return;
        }
        // Data from the server: the stream was accepted (a v2 server sends
        // its SYNACK first; a v1 server sends none).
        self.connect_stream(id);
        self.signal_readable(id);
    }

    fn signal_readable(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.readable_signaled && s.phase != Phase::AwaitingAddress {
                s.readable_signaled = true;
                self.events.push_back(Event::StreamReadable { id });
            }
        }
    }

    fn on_syn(&mut self, id: StreamId) {
        let Role::Server(srv) = &self.role else {
            // Clients never accept streams; the rewrite ignores such SYNs too.
            return;
        };
        if !srv.settings_received {
            debug!("SYN before Settings: alert and close");
            self.push_control(
                Command::Alert,
                StreamId::SESSION,
                ALERT_NO_SETTINGS.as_bytes(),
            );
            self.state = State::Draining(ProtocolError::SynBeforeSettings.into());
            self.recv_buf.clear();
            return;
        }
        if self.streams.contains_key(&id) {
            return;
        }
        self.stats.streams_opened += 1;
        if self.streams.len() >= self.limits.max_streams {
            debug!(stream = id.0, "stream cap reached: refusing");
            self.stats.streams_refused += 1;
            if self.peer_version >= 2 {
                self.push_control(Command::SynAck, id, b"too many streams");
            }
            self.push_control(Command::Fin, id, &[]);
            return;
        }
        self.streams.insert(id, Stream::new(Phase::AwaitingAddress));
    }

    fn parse_destination(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let head = s.recv.peek(MAX_ENCODED_LEN);
        match SocksAddr::decode(&head) {
            Ok((dest, n)) => {
                s.recv.skip(n);
                self.recv_total -= n;
                s.phase = Phase::AwaitingAccept;
                let has_data = !s.recv.is_empty();
                self.events.push_back(Event::StreamOpened {
                    id,
                    dest: dest.normalized(),
                });
                if has_data {
                    self.signal_readable(id);
                }
            }
            Err(AddrError::Truncated { .. }) => {}
            Err(e) => self.refuse(
                id,
                &format!("bad destination: {e}"),
                Some(RefuseReason::BadDestination(e)),
            ),
        }
    }

    /// Server: refuses a stream: SYNACK with the message (v2), FIN, forget it.
    fn refuse(&mut self, id: StreamId, msg: &str, event: Option<RefuseReason>) {
        self.stats.streams_refused += 1;
        if self.peer_version >= 2 {
            let mut end = msg
                .len()
                .min(self.limits.frames.max_synack_message.min(MAX_FRAME_DATA));
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            // An empty message would read as success.
            let text = if end == 0 { "refused" } else { &msg[..end] };
            self.push_control(Command::SynAck, id, text.as_bytes());
        }
        // A FIN from the client is never answered with a FIN (4.3).
        if !self.streams.get(&id).is_some_and(|s| s.peer_fin) {
            self.push_control(Command::Fin, id, &[]);
        }
        self.remove_stream(id);
        if let Some(reason) = event {
            self.events.push_back(Event::StreamRefused { id, reason });
        }
    }

    fn on_fin(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.local_fin || s.phase == Phase::AwaitingAddress {
            // Both sides are done, or the owner never saw the stream.
            self.remove_stream(id);
            return;
        }
        s.peer_fin = true;
        // Writes now fail: no StreamWritable for this stream.
        s.write_blocked = false;
        let freed = s.send.clear();
        self.send_total -= freed;
        self.timers.clear(Timer::StreamOpen(id));
        self.events.push_back(Event::StreamFinished { id });
        self.signal_readable(id);
        if freed > 0 {
            // The dropped queue may make room for streams blocked on the
            // session's send cap.
            self.signal_writable();
        }
    }

    fn on_settings(&mut self, data: &[u8]) {
        let Role::Server(srv) = &mut self.role else {
            return;
        };
        let received = ReceivedClientSettings::from_map(&StringMap::parse(data));
        let first = !srv.settings_received;
        srv.settings_received = true;
        self.timers.clear(Timer::Handshake);
        let update = received
            .needs_padding_update(&srv.padding_md5)
            .then(|| srv.cfg.padding.raw().clone());
        if let Some(raw) = update {
            self.push_control(Command::UpdatePaddingScheme, StreamId::SESSION, &raw);
        }
        if received.is_v2() {
            self.peer_version = PROTOCOL_VERSION;
            let text = crate::settings::server_settings_text();
            self.push_control(Command::ServerSettings, StreamId::SESSION, &text);
        }
        if first {
            self.events.push_back(Event::Established {
                peer_version: self.peer_version,
            });
        }
    }

    fn on_padding_update(&mut self, data: Bytes) {
        let Role::Client(c) = &mut self.role else {
            return;
        };
        match PaddingScheme::parse(data) {
            Ok(scheme) => {
                if scheme.validate_strict().is_err() {
                    debug!("server's padding scheme fails the strict rules; using it anyway");
                }
                let scheme = Arc::new(scheme);
                c.padding = scheme.clone();
                self.events.push_back(Event::PaddingSchemeUpdated(scheme));
            }
            Err(e) => warn!("ignoring invalid padding scheme from server: {e}"),
        }
    }

    fn on_synack(&mut self, id: StreamId, data: &[u8]) {
        if !R::IS_CLIENT {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        self.timers.clear(Timer::StreamOpen(id));
        if data.is_empty() {
            self.connect_stream(id);
            return;
        }
        let reason = String::from_utf8_lossy(data).into_owned();
        debug!(stream = id.0, "stream refused by server: {reason}");
        if !s.local_fin && !s.peer_fin {
            // The reference client closes the stream, which sends FIN (unless
            // the server's FIN already ended it: FIN is never answered, 4.3).
            self.push_control(Command::Fin, id, &[]);
        }
        self.remove_stream(id);
        self.events.push_back(Event::StreamRefused {
            id,
            reason: RefuseReason::Server(reason),
        });
    }

    fn remove_stream(&mut self, id: StreamId) {
        if let Some(mut s) = self.streams.remove(&id) {
            self.recv_total -= s.recv.clear();
            let freed = s.send.clear();
            self.send_total -= freed;
            self.timers.clear(Timer::StreamOpen(id));
            if self.blocked_on == Some(id) {
                self.blocked_on = None;
                self.stalled_since = None;
            }
            if freed > 0 {
                // Room on the session's send cap for blocked streams.
                self.signal_writable();
            }
        }
    }

    /// Checks internal accounting and memory caps (fuzzing and tests).
    /// `max_input` is the largest chunk ever passed to `handle_input`.
    #[cfg(any(test, feature = "_fuzz"))]
    pub(crate) fn assert_invariants(&self, max_input: usize) {
        let l = &self.limits;
        let recv: usize = self.streams.values().map(|s| s.recv.len()).sum();
        let send: usize = self.streams.values().map(|s| s.send.len()).sum();
        assert_eq!(recv, self.recv_total, "receive accounting");
        assert_eq!(send, self.send_total, "send accounting");
        assert!(self.streams.len() <= l.max_streams, "stream cap");
        // Caps are soft by one frame.
        assert!(self.recv_total <= l.session_recv_buffer + MAX_FRAME_DATA);
        for s in self.streams.values() {
            assert!(s.recv.len() <= self.stream_hard_limit());
        }
        // One frame processed past the cap can add at most a padding scheme and
        // a ServerSettings (server) or one small answer.
        assert!(self.control.len() <= l.control_queue + l.frames.max_padding_scheme + 64);
        // Unprocessed input: at most a partial frame plus the last chunk handed in
        // (or, before authentication, the preamble plus one chunk).
        assert!(self.recv_buf.len() <= HEADER_LEN + MAX_FRAME_DATA + 34 + max_input);
        let kept: usize = self.finished_data.values().map(ChunkQueue::len).sum();
        assert!(
            kept <= l.session_recv_buffer + MAX_FRAME_DATA,
            "data kept after close"
        );
        if self.state == State::Closed {
            assert!(self.streams.is_empty() && self.control.is_empty());
            assert!(self.poll_timeout().is_none());
        }
    }

    fn close_with(&mut self, reason: SessionError) {
        debug!("session closed: {reason}");
        self.state = State::Closed;
        if reason == SessionError::PeerEof {
            // A clean end: what the peer sent and finished before it stays
            // readable (a client that FINs its upload and closes at once
            // loses nothing on its way to the target).
            for (id, s) in std::mem::take(&mut self.streams) {
                if s.peer_fin && !s.local_fin && s.phase == Phase::Open && !s.recv.is_empty() {
                    self.finished_data.insert(id, s.recv);
                }
            }
        }
        self.streams.clear();
        self.ready.clear();
        self.recv_total = 0;
        self.send_total = 0;
        self.recv_buf = BytesMut::new();
        self.control = BytesMut::new();
        self.current = None;
        self.timers.clear_all();
        if let Role::Client(c) = &mut self.role {
            c.preamble = None;
        }
        self.events.push_back(Event::Closed { reason });
    }
}

impl Session<Client> {
    /// A client session on a freshly established TLS connection. `padding` is
    /// the client's current scheme (the default one, or the last one a server
    /// sent); `seed` seeds the padding RNG and must come from a cryptographic
    /// source. The preamble and the Settings frame are queued at once.
    /// A configuration that fails [`ClientConfig::validate`] is refused.
    pub fn client(
        cfg: Arc<ClientConfig>,
        seq: SessionSeq,
        padding: Arc<PaddingScheme>,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<ClientSession, ConfigError> {
        cfg.validate()?;
        let limits = cfg.limits.clone();
        let mut s = Session::new(
            Role::Client(Box::new(ClientData {
                cfg: cfg.clone(),
                seq,
                padding: padding.clone(),
                shaper: Shaper::new(),
                preamble: None,
                next_id: 1,
                settings_flushed: false,
                version_known: false,
                version_guessed: false,
                answered: false,
            })),
            limits,
            State::Open,
            seed,
            now,
        );
        let pad = padding.preamble_padding_len(&mut s.rng);
        let mut pre = BytesMut::with_capacity(34 + usize::from(pad));
        encode_preamble(&cfg.password, pad, &mut pre);
        let settings = ClientSettings {
            version: PROTOCOL_VERSION,
            client: cfg.client_name.clone(),
            padding_md5: padding.md5_hex(),
        };
        // The client name is configured; a name with a newline would corrupt
        // the text, so it is dropped rather than sent.
        let text = settings.encode().unwrap_or_else(|_| {
            ClientSettings {
                client: String::new(),
                ..settings
            }
            .encode()
            .unwrap_or_default()
        });
        s.push_control(Command::Settings, StreamId::SESSION, &text);
        if let Role::Client(c) = &mut s.role {
            c.preamble = Some(pre.freeze());
        }
        Ok(s)
    }

    /// The session's sequence number (its key in a client endpoint or pool).
    pub fn seq(&self) -> SessionSeq {
        match &self.role {
            Role::Client(c) => c.seq,
            Role::Server(_) => SessionSeq(0),
        }
    }

    /// The padding scheme this session uses now.
    pub fn padding_scheme(&self) -> &Arc<PaddingScheme> {
        match &self.role {
            Role::Client(c) => &c.padding,
            Role::Server(s) => &s.cfg.padding,
        }
    }

    /// Whether the server's protocol version is known: ServerSettings
    /// arrived, or the server showed it is v1 (see `Event::StreamConnected`).
    pub fn peer_version_known(&self) -> bool {
        self.version_known()
    }

    /// Client: whether the server has sent a frame of a known command (it
    /// speaks AnyTLS). Until then a session with a stream is closed with
    /// [`SessionError::NoAnswer`] after `stream_open_timeout` +
    /// `answer_timeout`.
    pub fn server_answered(&self) -> bool {
        match &self.role {
            Role::Client(c) => c.answered,
            Role::Server(_) => true,
        }
    }

    /// Client: opens a stream to `dest`. Queues SYN and the destination; data can
    /// be written at once.
    pub fn open_stream(&mut self, now: Instant, dest: &SocksAddr) -> Result<StreamId, StreamError> {
        self.advance_clock(now);
        if self.state != State::Open {
            return Err(StreamError::SessionClosed);
        }
        if self.streams.len() >= self.limits.max_streams {
            return Err(StreamError::TooManyStreams);
        }
        let Role::Client(c) = &mut self.role else {
            return Err(StreamError::SessionClosed);
        };
        if c.next_id == 0 {
            return Err(StreamError::IdsExhausted);
        }
        let mut addr = Vec::with_capacity(dest.encoded_len());
        dest.encode(&mut addr)?;
        let id = StreamId(c.next_id);
        c.next_id = c.next_id.wrapping_add(1);
        if c.version_known && self.peer_version < 2 {
            // A v1 server sends no SYNACK: the stream is connected at once.
            self.streams.insert(id, Stream::new(Phase::Open));
            self.events.push_back(Event::StreamConnected { id });
        } else {
            let deadline = self.now + c.cfg.stream_open_timeout;
            self.timers.set(Timer::StreamOpen(id), deadline);
            self.streams.insert(id, Stream::new(Phase::Opening));
        }
        if !c.answered && self.timers.get(Timer::Answer).is_none() {
            let deadline = self.now + c.cfg.stream_open_timeout + c.cfg.answer_timeout;
            self.timers.set(Timer::Answer, deadline);
        }
        self.push_control(Command::Syn, id, &[]);
        self.push_control(Command::Psh, id, &addr);
        self.stats.streams_opened += 1;
        Ok(id)
    }
}

impl Session<Server> {
    /// A server session on a freshly accepted TLS connection. The handshake
    /// deadline starts now. A configuration that fails
    /// [`ServerConfig::validate`] is refused.
    pub fn server(
        cfg: Arc<ServerConfig>,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<ServerSession, ConfigError> {
        cfg.validate()?;
        let limits = cfg.limits.clone();
        let deadline = now + cfg.handshake_timeout;
        let mut s = Session::new(
            Role::Server(Box::new(ServerData {
                padding_md5: cfg.padding.md5_hex(),
                cfg,
                user: None,
                settings_received: false,
            })),
            limits,
            State::Auth,
            seed,
            now,
        );
        s.timers.set(Timer::Handshake, deadline);
        Ok(s)
    }

    /// The authenticated user (after `Event::Authenticated`).
    pub fn user(&self) -> Option<UserId> {
        match &self.role {
            Role::Server(s) => s.user,
            Role::Client(_) => None,
        }
    }

    /// Server: the owner's verdict on a stream from `Event::StreamOpened`.
    /// `Ok` sends a success SYNACK (v2 clients); `Err(message)` sends SYNACK with
    /// the message (v2 clients), then FIN (unless the client already sent FIN),
    /// and forgets the stream.
    pub fn accept_stream(
        &mut self,
        id: StreamId,
        result: Result<(), String>,
    ) -> Result<(), StreamError> {
        if self.state != State::Open {
            return Err(StreamError::SessionClosed);
        }
        let stream = stream_mut(&mut self.streams, id)?;
        if stream.phase != Phase::AwaitingAccept {
            return Err(StreamError::Closed);
        }
        match result {
            Ok(()) => {
                stream.phase = Phase::Open;
                let writable = std::mem::take(&mut stream.write_blocked);
                if self.peer_version >= 2 {
                    self.push_control(Command::SynAck, id, &[]);
                }
                if writable {
                    self.events.push_back(Event::StreamWritable { id });
                }
            }
            Err(msg) => self.refuse(id, &msg, None),
        }
        Ok(())
    }
}
