//! The whole AnyTLS client as one sans-IO state machine: the pool policy, the
//! current padding scheme, every client session and every stream.
//!
//! [`ClientEndpoint`] is to [`ClientSession`] what quinn-proto's `Endpoint`
//! is to its `Connection`s: together they are the complete client, and the
//! owner only moves bytes, wakes tasks and keeps the clock.
//!
//! # Driving an endpoint
//!
//! Connections (one TCP + TLS connection each, one session on it) are named
//! by the [`SessionSeq`] the endpoint gives them; streams by a
//! [`StreamHandle`].
//!
//! * Commands: [`open_stream`](ClientEndpoint::open_stream) (it picks an idle
//!   session or asks for a dial), [`write`](ClientEndpoint::write) /
//!   [`write_bytes`](ClientEndpoint::write_bytes) (take what fits, as quinn's
//!   `write` does), [`read`](ClientEndpoint::read),
//!   [`finish`](ClientEndpoint::finish), [`release`](ClientEndpoint::release),
//!   [`close`](ClientEndpoint::close).
//! * Inputs about connections: [`handle_connected`](ClientEndpoint::handle_connected)
//!   (TLS is up) or [`handle_dial_failed`](ClientEndpoint::handle_dial_failed),
//!   then [`handle_input`](ClientEndpoint::handle_input) (TLS plaintext, only
//!   while [`wants_read`](ClientEndpoint::wants_read)),
//!   [`handle_eof`](ClientEndpoint::handle_eof),
//!   [`handle_transport_error`](ClientEndpoint::handle_transport_error); and
//!   [`handle_timeout`](ClientEndpoint::handle_timeout) for everything.
//! * Outputs, drained after every input or command:
//!   [`poll_action`](ClientEndpoint::poll_action) (dial or close a
//!   connection), [`poll_transmit`](ClientEndpoint::poll_transmit) (bytes for
//!   a connection; a shaped one is one TLS write), then
//!   [`poll_event`](ClientEndpoint::poll_event), then one timer at
//!   [`poll_timeout`](ClientEndpoint::poll_timeout).
//!
//! A program with one task per connection can instead pull each connection's
//! transmits with [`poll_transmit_on`](ClientEndpoint::poll_transmit_on).
//!
//! # Streams
//!
//! A stream's [`StreamState`] can be queried until its owner calls
//! [`release`](ClientEndpoint::release): nothing vanishes. `Opening` until the
//! server's verdict (a SYNACK, or for a v1 server the implicit acceptance
//! decided by the session), then `Connected`; or `Refused` with a
//! [`RefuseReason`] (the server's SYNACK text, a failed dial, a session that
//! died first); `Reset` with a [`ResetReason`] when an open stream ends
//! abnormally; `Finished` once either side sent FIN.
//!
//! Data can be written as soon as the stream has a session
//! ([`stream_session`](ClientEndpoint::stream_session)); before that, writes
//! return `Blocked` and [`ClientEvent::StreamWritable`] follows when the dial
//! completes. Readiness events are edge-triggered, as
//! [`Event::StreamReadable`] of the session.
//!
//! # Pool
//!
//! The [`Pool`] policy runs inside: each new stream takes the newest idle
//! session or a new dial; a stream's session goes back to the pool when the
//! owner finishes or releases the stream; `ensure_idle_session` pre-warm
//! dials, `min_idle_session` survivors, heartbeats on every session (answered
//! ones reported as [`ClientEvent::HeartbeatAck`], unanswered ones closing
//! the session), lifetimes, and back-off after failed pre-warm dials are all
//! decided here from `now` and the inputs. A user's dial that fails refuses
//! its stream at once (no retry: the caller decides).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use crate::addr::SocksAddr;
use crate::config::ClientConfig;
use crate::error::{
    ConfigError, RefuseReason, ResetReason, SessionError, StreamError, TransportError,
};
use crate::frame::StreamId;
use crate::padding::PaddingScheme;
use crate::pool::{Checkout, CloseReason, Pool, PoolAction, PoolConfig, PoolStats};
use crate::session::{ClientSession, Event, Session, SessionSeq, Transmit, TransmitBuf};
use crate::timer::TimerTable;

/// A stream of a [`ClientEndpoint`], unique for the endpoint's life.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct StreamHandle(pub u64);

/// Where a stream is in its life. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamState {
    /// Waiting for its session's dial, or for the server's verdict.
    Opening,
    /// The server accepted it (SYNACK, or implicitly for a v1 server).
    Connected,
    /// It never carried data both ways.
    Refused(RefuseReason),
    /// It ended abnormally after it was open.
    Reset(ResetReason),
    /// FIN was sent or received: the stream is over (data received before
    /// the peer's FIN can still be read).
    Finished,
}

impl StreamState {
    /// Whether the stream is over (refused, reset or finished).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, StreamState::Opening | StreamState::Connected)
    }
}

/// What the owner must do with a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Connect a transport (TCP + TLS) for this session, then report
    /// [`ClientEndpoint::handle_connected`] or
    /// [`ClientEndpoint::handle_dial_failed`].
    Dial {
        /// The connection.
        conn: SessionSeq,
    },
    /// The connection's session is over: close the transport (a dial in
    /// progress may be abandoned; if it completes anyway, the endpoint asks
    /// for its close again). Nothing more will be sent on it.
    Close {
        /// The connection.
        conn: SessionSeq,
        /// Why its session ended.
        reason: SessionError,
    },
}

/// Something the owner of a [`ClientEndpoint`] may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The session's Settings went out: it can carry streams and heartbeats.
    SessionEstablished {
        /// The connection.
        conn: SessionSeq,
    },
    /// The server told its protocol version (or showed it is v1).
    PeerVersion {
        /// The connection.
        conn: SessionSeq,
        /// The version.
        version: u8,
    },
    /// A heartbeat on this connection was answered.
    HeartbeatAck {
        /// The connection.
        conn: SessionSeq,
        /// Time from the HeartRequest to the HeartResponse.
        rtt: Duration,
    },
    /// A session ended before the server sent a single AnyTLS frame: the
    /// server does not speak AnyTLS to this client. It closed right after
    /// the preamble (`SessionError::PeerEof`: a wrong password, or a server
    /// that is not AnyTLS), sent bytes that are not AnyTLS
    /// (`SessionError::Protocol`: not an AnyTLS server, or the fallback web
    /// site a server hands a wrong password to), or said nothing
    /// (`SessionError::NoAnswer`). Sessions the client closed itself are not
    /// reported.
    SessionUnanswered {
        /// The connection.
        conn: SessionSeq,
        /// How it ended.
        reason: SessionError,
    },
    /// A server sent a new padding scheme; sessions dialled from now on use it.
    PaddingSchemeUpdated(Arc<PaddingScheme>),
    /// The stream is connected.
    StreamConnected(StreamHandle),
    /// The stream has data or its EOF to read (edge-triggered).
    StreamReadable(StreamHandle),
    /// A write that returned `Blocked` may be retried.
    StreamWritable(StreamHandle),
    /// The server sent FIN on the stream.
    StreamFinished(StreamHandle),
    /// The stream was refused.
    StreamRefused {
        /// The stream.
        stream: StreamHandle,
        /// Why.
        reason: RefuseReason,
    },
    /// The stream was reset.
    StreamReset {
        /// The stream.
        stream: StreamHandle,
        /// Why.
        reason: ResetReason,
    },
}

/// How a stream ends abnormally.
enum Outcome {
    Refused(RefuseReason),
    Reset(ResetReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EpTimer {
    Pool,
    Session(SessionSeq),
}

enum Conn {
    /// The owner is dialling; these streams wait for it (`user`: a stream's
    /// own dial, not a pre-warm one; the pool counts it busy).
    Dialing {
        waiting: Vec<StreamHandle>,
        user: bool,
    },
    Live(Box<ClientSession>),
}

#[derive(Debug)]
struct StreamEntry {
    conn: SessionSeq,
    /// Its id on the session, once it has one (and while the session knows it).
    id: Option<StreamId>,
    /// Kept until the stream is opened on its session.
    dest: Option<SocksAddr>,
    state: StreamState,
    /// The pool was told the stream is done.
    checked_in: bool,
    /// The owner finished the stream, or read its EOF: nothing it has not
    /// seen is lost when the session ends.
    done: bool,
}

/// Counters of a [`ClientEndpoint`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The pool's counters and gauges.
    pub pool: PoolStats,
    /// Sessions with a live transport.
    pub sessions: usize,
    /// Streams not yet released.
    pub streams: usize,
    /// Streams opened, ever.
    pub streams_opened: u64,
    /// Streams refused (any reason), ever.
    pub streams_refused: u64,
    /// Streams reset, ever.
    pub streams_reset: u64,
}

/// The whole AnyTLS client. See the [module docs](self).
pub struct ClientEndpoint {
    cfg: Arc<ClientConfig>,
    pool: Pool,
    padding: Arc<PaddingScheme>,
    conns: BTreeMap<SessionSeq, Conn>,
    streams: BTreeMap<StreamHandle, StreamEntry>,
    by_id: BTreeMap<(SessionSeq, StreamId), StreamHandle>,
    /// Sessions out of service that close once their streams are done.
    retiring: BTreeMap<SessionSeq, SessionError>,
    /// Live connections that may have output: every input or command on a
    /// session adds it, `poll_transmit` drops it once it has nothing to send.
    sending: BTreeSet<SessionSeq>,
    next_handle: u64,
    timers: TimerTable<EpTimer>,
    actions: VecDeque<Action>,
    events: VecDeque<ClientEvent>,
    rng: ChaCha8Rng,
    /// Where `poll_transmit` continues (round robin over connections).
    cursor: SessionSeq,
    now: Instant,
    closed: bool,
    stats: EndpointStats,
}

impl std::fmt::Debug for ClientEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEndpoint")
            .field("conns", &self.conns.len())
            .field("streams", &self.streams.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ClientEndpoint {
    /// A client starting at `now`. Both configurations are validated. `seed`
    /// (from a cryptographic source) seeds every session's padding RNG and
    /// the pool's jitter. Pre-warm dials (`ensure_idle`) are queued at once.
    pub fn new(
        session: ClientConfig,
        pool: PoolConfig,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<ClientEndpoint, ConfigError> {
        session.validate()?;
        if session.limits.max_streams < pool.max_streams_per_session {
            // The pool would hand out sessions that refuse the stream.
            return Err(ConfigError::TooSmall {
                name: "limits.max_streams (below the pool's max_streams_per_session)",
                value: session.limits.max_streams,
                min: pool.max_streams_per_session,
            });
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        let mut pool_seed = [0u8; 32];
        rng.fill_bytes(&mut pool_seed);
        let pool = Pool::new(pool, pool_seed, now)?;
        let mut ep = ClientEndpoint {
            cfg: Arc::new(session),
            pool,
            padding: Arc::new(PaddingScheme::default_scheme()),
            conns: BTreeMap::new(),
            streams: BTreeMap::new(),
            by_id: BTreeMap::new(),
            retiring: BTreeMap::new(),
            sending: BTreeSet::new(),
            next_handle: 1,
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            cursor: SessionSeq(0),
            now,
            closed: false,
            stats: EndpointStats::default(),
        };
        ep.pool_actions();
        Ok(ep)
    }

    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    // ----- getters -----

    /// The session configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The pool configuration.
    pub fn pool_config(&self) -> &PoolConfig {
        self.pool.config()
    }

    /// The padding scheme new sessions start with (the default one, or the
    /// last one a server sent).
    pub fn padding_scheme(&self) -> &Arc<PaddingScheme> {
        &self.padding
    }

    /// The state of a stream, until it is released.
    pub fn stream_state(&self, stream: StreamHandle) -> Option<&StreamState> {
        self.streams.get(&stream).map(|e| &e.state)
    }

    /// The connection a stream is on, once it has a live session.
    pub fn stream_session(&self, stream: StreamHandle) -> Option<SessionSeq> {
        let (conn, _) = self.locate(stream)?;
        self.is_live(conn).then_some(conn)
    }

    /// The connection a stream is on or waits for: unlike
    /// [`stream_session`](Self::stream_session), also while that connection
    /// is being dialled (its [`Action::Dial`] names it).
    pub fn stream_connection(&self, stream: StreamHandle) -> Option<SessionSeq> {
        self.streams.get(&stream).map(|e| e.conn)
    }

    /// The stream's id on its session, once it has one.
    pub fn stream_id(&self, stream: StreamHandle) -> Option<StreamId> {
        self.streams.get(&stream)?.id
    }

    /// Bytes ready to read on a stream.
    pub fn readable_len(&self, stream: StreamHandle) -> usize {
        self.locate(stream)
            .and_then(|(conn, id)| self.session(conn).map(|s| s.readable_len(id)))
            .unwrap_or(0)
    }

    /// The session of a live connection (read-only: statistics, version).
    pub fn session(&self, conn: SessionSeq) -> Option<&ClientSession> {
        match self.conns.get(&conn)? {
            Conn::Live(s) => Some(s),
            Conn::Dialing { .. } => None,
        }
    }

    /// Whether `conn` is a live connection (dialled and not yet closed).
    pub fn is_live(&self, conn: SessionSeq) -> bool {
        matches!(self.conns.get(&conn), Some(Conn::Live(_)))
    }

    /// Connections with a live session, in order.
    pub fn live_sessions(&self) -> impl Iterator<Item = SessionSeq> + '_ {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c, Conn::Live(_)))
            .map(|(seq, _)| *seq)
    }

    /// Idle sessions (newest first) with the time each became idle.
    pub fn idle_sessions(&self) -> Vec<(SessionSeq, Instant)> {
        self.pool.idle_sessions()
    }

    /// Whether the owner should read from `conn` now (false while its
    /// session's receive buffers are full, and once it is closed).
    pub fn wants_read(&self, conn: SessionSeq) -> bool {
        self.session(conn).is_some_and(|s| s.wants_read())
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Counters and gauges.
    pub fn stats(&self) -> EndpointStats {
        let mut s = self.stats.clone();
        s.pool = self.pool.stats();
        s.sessions = self.live_sessions().count();
        s.streams = self.streams.len();
        s
    }

    /// The earliest deadline of the pool and of every session. After
    /// `handle_timeout(now)` it is later than `now` or `None`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next thing to do with a connection.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    // ----- stream commands -----

    /// Opens a stream to `dest`: on the newest idle session, or on a new
    /// one (an [`Action::Dial`] follows). Data can be written once the
    /// stream has a session.
    pub fn open_stream(
        &mut self,
        now: Instant,
        dest: &SocksAddr,
    ) -> Result<StreamHandle, StreamError> {
        self.open_stream_preferring(now, dest, |_| true)
    }

    /// The idle session [`open_stream`](Self::open_stream) would put a
    /// stream on now, if any (see [`Pool::next_reuse`](crate::pool::Pool::next_reuse)).
    pub fn next_reuse(&self) -> Option<SessionSeq> {
        self.pool.next_reuse()
    }

    /// [`open_stream`](Self::open_stream) preferring, among the sessions
    /// that could take the stream, the newest one `prefer` accepts (else the
    /// newest, as `open_stream`; a dial only when none can take it). For an
    /// event loop that drives its sessions on several threads: give the
    /// stream a session on the caller's thread when there is one. See
    /// [`Pool::checkout_preferring`](crate::pool::Pool::checkout_preferring).
    pub fn open_stream_preferring(
        &mut self,
        now: Instant,
        dest: &SocksAddr,
        prefer: impl Fn(SessionSeq) -> bool,
    ) -> Result<StreamHandle, StreamError> {
        let now = self.advance(now);
        if self.closed {
            return Err(StreamError::SessionClosed);
        }
        // A destination that cannot be encoded fails here, not on a session.
        dest.encode(&mut Vec::with_capacity(dest.encoded_len()))?;
        let handle = StreamHandle(self.next_handle);
        self.next_handle += 1;
        self.stats.streams_opened += 1;
        // Each turn either succeeds, dials, or takes a session out of the
        // pool for good, so this ends.
        loop {
            match self.pool.checkout_preferring(now, &prefer) {
                Checkout::Reuse(conn) => {
                    let opened = match self.conns.get_mut(&conn) {
                        Some(Conn::Live(s)) => Some(s.open_stream(now, dest)),
                        _ => None,
                    };
                    match opened {
                        Some(Ok(id)) => {
                            self.streams.insert(
                                handle,
                                StreamEntry {
                                    conn,
                                    id: Some(id),
                                    dest: None,
                                    state: StreamState::Opening,
                                    checked_in: false,
                                    done: false,
                                },
                            );
                            self.by_id.insert((conn, id), handle);
                            self.after_session(conn);
                            return Ok(handle);
                        }
                        Some(Err(e)) => {
                            // It can take no more streams (ids used up):
                            // out of the pool; it ends with its last stream.
                            debug!(seq = conn.0, "session takes no new stream ({e}): retired");
                            self.pool.session_closed(now, conn);
                            self.retire(conn, SessionError::LocallyClosed);
                        }
                        None => self.pool.session_closed(now, conn),
                    }
                }
                Checkout::Dial(conn) => {
                    self.conns.insert(
                        conn,
                        Conn::Dialing {
                            waiting: vec![handle],
                            user: true,
                        },
                    );
                    self.streams.insert(
                        handle,
                        StreamEntry {
                            conn,
                            id: None,
                            dest: Some(dest.clone()),
                            state: StreamState::Opening,
                            checked_in: false,
                            done: false,
                        },
                    );
                    self.actions.push_back(Action::Dial { conn });
                    return Ok(handle);
                }
            }
        }
    }

    fn locate(&self, stream: StreamHandle) -> Option<(SessionSeq, StreamId)> {
        let e = self.streams.get(&stream)?;
        Some((e.conn, e.id?))
    }

    /// The error for an operation on a stream that is over or has no session.
    fn stream_error(&self, stream: StreamHandle) -> StreamError {
        match self.streams.get(&stream).map(|e| &e.state) {
            None => StreamError::UnknownStream(stream.0 as u32),
            Some(StreamState::Refused(r)) => StreamError::Refused(r.clone()),
            Some(StreamState::Reset(r)) => StreamError::Reset(r.clone()),
            Some(StreamState::Finished) => StreamError::Closed,
            Some(StreamState::Opening | StreamState::Connected) => StreamError::Blocked,
        }
    }

    fn with_session<T>(
        &mut self,
        stream: StreamHandle,
        f: impl FnOnce(&mut ClientSession, StreamId) -> Result<T, StreamError>,
    ) -> Result<T, StreamError> {
        let Some((conn, id)) = self.locate(stream) else {
            return Err(self.stream_error(stream));
        };
        let res = match self.conns.get_mut(&conn) {
            Some(Conn::Live(s)) => f(s, id),
            _ => return Err(self.stream_error(stream)),
        };
        self.after_session(conn);
        match res {
            Err(StreamError::UnknownStream(_) | StreamError::SessionClosed) => {
                Err(self.stream_error(stream))
            }
            other => other,
        }
    }

    /// Queues as much of `data` as fits (copied once; bulk writes in whole
    /// frames, see [`Session::write`](crate::Session::write)); returns how
    /// much. `Err(Blocked)` when nothing fits or the stream has no session
    /// yet: [`ClientEvent::StreamWritable`] follows.
    pub fn write(&mut self, stream: StreamHandle, data: &[u8]) -> Result<usize, StreamError> {
        self.with_session(stream, |s, id| s.write(id, data))
    }

    /// Like [`write`](Self::write) without a copy: takes the longest prefix
    /// of `data` that fits and advances `data` past it.
    pub fn write_bytes(
        &mut self,
        stream: StreamHandle,
        data: &mut Bytes,
    ) -> Result<usize, StreamError> {
        self.with_session(stream, |s, id| s.write_bytes(id, data))
    }

    /// The next chunk of received data: `Ok(Some(data))`, `Ok(None)` at EOF,
    /// `Err(Blocked)` until [`ClientEvent::StreamReadable`], or the stream's
    /// refusal or reset.
    pub fn read(
        &mut self,
        now: Instant,
        stream: StreamHandle,
    ) -> Result<Option<Bytes>, StreamError> {
        let now = self.advance(now);
        let res = self.with_session(stream, |s, id| s.read(now, id));
        let res = match res {
            // The session forgot a finished stream (both FINs): EOF.
            Err(StreamError::Closed)
                if self.stream_state(stream) == Some(&StreamState::Finished) =>
            {
                Ok(None)
            }
            other => other,
        };
        if let (Ok(None), Some(e)) = (&res, self.streams.get_mut(&stream)) {
            e.done = true;
        }
        res
    }

    /// Closes the stream: queued data goes out, then FIN (a full close in
    /// AnyTLS); data received from now on is dropped. Its session goes back
    /// to the pool at once (a new stream may share it while the FIN is still
    /// queued); a session the pool then closes sends its queued data and FINs
    /// first. The state stays queryable until [`release`](Self::release).
    pub fn finish(&mut self, now: Instant, stream: StreamHandle) {
        self.advance(now);
        let Some(e) = self.streams.get_mut(&stream) else {
            return;
        };
        let conn = e.conn;
        e.done = true;
        if !e.state.is_terminal() {
            e.state = StreamState::Finished;
        }
        if let Some(id) = e.id {
            if let Some(Conn::Live(s)) = self.conns.get_mut(&conn) {
                let _ = s.finish(id);
            }
            self.check_in(conn, stream);
            self.after_session(conn);
        }
    }

    /// Forgets the stream (finishing it first if it is still open). Its
    /// handle is unknown from now on.
    pub fn release(&mut self, now: Instant, stream: StreamHandle) {
        self.finish(now, stream);
        if let Some(e) = self.streams.remove(&stream) {
            if let Some(id) = e.id {
                self.by_id.remove(&(e.conn, id));
            }
            if let Some(Conn::Dialing { waiting, .. }) = self.conns.get_mut(&e.conn) {
                waiting.retain(|h| *h != stream);
            }
        }
    }

    /// The stream is done with its session: the pool gets it back (once).
    fn check_in(&mut self, conn: SessionSeq, stream: StreamHandle) {
        if let Some(e) = self.streams.get_mut(&stream) {
            if !e.checked_in {
                e.checked_in = true;
                self.pool.checkin(self.now, conn);
            }
        }
    }

    /// Closes every session and refuses streams still waiting for a dial.
    /// Later `open_stream` calls fail.
    pub fn close(&mut self, now: Instant) {
        let now = self.advance(now);
        if self.closed {
            return;
        }
        self.closed = true;
        self.pool.shutdown(now);
        self.pool_actions();
        // Whatever the pool did not own (retired sessions) goes too.
        let rest: Vec<SessionSeq> = self.conns.keys().copied().collect();
        for conn in rest {
            self.end_conn(conn, SessionError::LocallyClosed);
        }
        self.timers.clear_all();
    }

    // ----- connection inputs -----

    /// The transport of `conn` is up (TCP connected, TLS handshake done):
    /// its session starts, and the streams waiting for it are opened on it
    /// before anything is sent (so the first one's SYN rides in the first
    /// packet with Settings).
    pub fn handle_connected(&mut self, now: Instant, conn: SessionSeq) {
        let now = self.advance(now);
        match self.conns.get(&conn) {
            Some(Conn::Dialing { .. }) => {}
            // Reported twice: the session runs already.
            Some(Conn::Live(_)) => return,
            None => {
                // Not a dial we asked for, or abandoned: close it.
                self.actions.push_back(Action::Close {
                    conn,
                    reason: SessionError::LocallyClosed,
                });
                return;
            }
        }
        let Some(Conn::Dialing { waiting, user }) = self.conns.remove(&conn) else {
            return;
        };
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let session = match Session::client(self.cfg.clone(), conn, self.padding.clone(), seed, now)
        {
            Ok(s) => s,
            Err(e) => {
                // Cannot happen: the configuration was validated in `new`.
                self.conns.insert(conn, Conn::Dialing { waiting, user });
                self.handle_dial_failed(now, conn, e.to_string());
                return;
            }
        };
        self.conns.insert(conn, Conn::Live(Box::new(session)));
        self.pool.established(now, conn);
        let mut opened_any = false;
        for handle in waiting {
            let Some(e) = self.streams.get_mut(&handle) else {
                continue;
            };
            let Some(dest) = e.dest.take() else {
                continue;
            };
            if e.state.is_terminal() {
                // Finished before its session came: nothing to open.
                continue;
            }
            let opened = match self.conns.get_mut(&conn) {
                Some(Conn::Live(s)) => s.open_stream(now, &dest),
                _ => Err(StreamError::SessionClosed),
            };
            match opened {
                Ok(id) => {
                    e.id = Some(id);
                    opened_any = true;
                    self.by_id.insert((conn, id), handle);
                    self.events.push_back(ClientEvent::StreamWritable(handle));
                }
                Err(err) => {
                    let reason = RefuseReason::DialFailed(err.to_string().into());
                    self.refuse(handle, reason);
                }
            }
        }
        if user && !opened_any {
            // The stream it was dialled for is gone (finished or released
            // while dialling): the session goes back to the pool unused.
            self.pool.checkin(now, conn);
        }
        self.pool_actions();
        self.after_session(conn);
    }

    /// The dial of `conn` failed (`reason` describes how). Streams waiting
    /// for it are refused with [`RefuseReason::DialFailed`]; a failed
    /// pre-warm dial backs off the next ones.
    pub fn handle_dial_failed(
        &mut self,
        now: Instant,
        conn: SessionSeq,
        error: impl Into<TransportError>,
    ) {
        let reason: TransportError = error.into();
        let now = self.advance(now);
        if !matches!(self.conns.get(&conn), Some(Conn::Dialing { .. })) {
            // Not dialling (reported twice, or live already): nothing failed.
            return;
        }
        let Some(Conn::Dialing { waiting, .. }) = self.conns.remove(&conn) else {
            return;
        };
        debug!(seq = conn.0, "dial failed: {reason}");
        self.pool.dial_failed(now, conn);
        for handle in waiting {
            self.refuse(handle, RefuseReason::DialFailed(reason.clone()));
        }
        self.pool_actions();
    }

    /// TLS plaintext received on `conn`.
    pub fn handle_input(&mut self, now: Instant, conn: SessionSeq, data: BytesMut) {
        let now = self.advance(now);
        if let Some(Conn::Live(s)) = self.conns.get_mut(&conn) {
            s.handle_input(now, data);
            self.after_session(conn);
        }
    }

    /// The server closed `conn` (TLS close_notify or TCP EOF).
    pub fn handle_eof(&mut self, now: Instant, conn: SessionSeq) {
        let now = self.advance(now);
        if let Some(Conn::Live(s)) = self.conns.get_mut(&conn) {
            s.handle_eof(now);
            self.after_session(conn);
        }
    }

    /// The transport of `conn` failed. Its session ends; its streams are
    /// refused (not yet connected) or reset (connected) with the error, once,
    /// here.
    pub fn handle_transport_error(
        &mut self,
        now: Instant,
        conn: SessionSeq,
        error: TransportError,
    ) {
        let now = self.advance(now);
        match self.conns.get_mut(&conn) {
            Some(Conn::Live(s)) => {
                s.handle_transport_error(now, error);
                self.after_session(conn);
            }
            Some(Conn::Dialing { .. }) => self.handle_dial_failed(now, conn, error),
            None => {}
        }
    }

    /// Deadlines up to `now` expire: pool maintenance, heartbeats, and
    /// every session's timers. Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        while let Some((timer, _)) = self.timers.pop_expired(now) {
            match timer {
                EpTimer::Pool => {
                    self.pool.handle_timeout(now);
                    self.pool_actions();
                }
                EpTimer::Session(conn) => {
                    if let Some(Conn::Live(s)) = self.conns.get_mut(&conn) {
                        s.handle_timeout(now);
                        self.after_session(conn);
                    }
                }
            }
        }
    }

    // ----- output -----

    /// The next TLS write for any connection, appended to `buf`, with the
    /// connection it is for. Connections take turns.
    pub fn poll_transmit<B: TransmitBuf + ?Sized>(
        &mut self,
        now: Instant,
        buf: &mut B,
    ) -> Option<(SessionSeq, Transmit)> {
        let now = self.advance(now);
        // Only connections that may have output are asked (see `sending`).
        let n = self.sending.len();
        let mut at = self.cursor;
        for _ in 0..n {
            let next = self
                .sending
                .range((Bound::Excluded(at), Bound::Unbounded))
                .next()
                .or_else(|| self.sending.iter().next())
                .copied()?;
            at = next;
            if let Some(t) = self.poll_transmit_on(now, next, buf) {
                self.cursor = next;
                return Some((next, t));
            }
            if !self.session(next).is_some_and(ClientSession::has_output) {
                self.sending.remove(&next);
            }
        }
        None
    }

    /// The next TLS write for `conn`, appended to `buf` (for owners that
    /// drive each connection from its own task).
    pub fn poll_transmit_on<B: TransmitBuf + ?Sized>(
        &mut self,
        now: Instant,
        conn: SessionSeq,
        buf: &mut B,
    ) -> Option<Transmit> {
        let now = self.advance(now);
        let retiring = self.retiring.contains_key(&conn);
        let Some(Conn::Live(s)) = self.conns.get_mut(&conn) else {
            return None;
        };
        let t = s.poll_transmit(now, buf);
        // A retiring session closes once its last FIN is out.
        let drained = retiring && s.stream_count() == 0;
        if s.has_events() || s.is_closed() || drained {
            self.after_session(conn);
        } else {
            // Sending may resume paused input, which may move deadlines.
            let deadline = s.poll_timeout();
            self.timers.set_or_clear(EpTimer::Session(conn), deadline);
        }
        t
    }

    /// Whether a transmit of `conn` may still be shaped (see
    /// [`Session::may_shape`]).
    pub fn may_shape_on(&self, conn: SessionSeq) -> bool {
        match self.conns.get(&conn) {
            Some(Conn::Live(s)) => s.may_shape(),
            _ => false,
        }
    }

    // ----- internals -----

    /// Takes in what a session did: its events, its deadline, its end.
    fn after_session(&mut self, conn: SessionSeq) {
        let now = self.now;
        if self.is_live(conn) {
            self.sending.insert(conn);
        }
        let mut ended = None;
        loop {
            let ev = match self.conns.get_mut(&conn) {
                Some(Conn::Live(s)) => s.poll_event(),
                _ => None,
            };
            let Some(ev) = ev else {
                break;
            };
            // Released streams get no events.
            let handle = |id: &StreamId| {
                self.by_id
                    .get(&(conn, *id))
                    .copied()
                    .filter(|h| self.streams.contains_key(h))
            };
            match ev {
                Event::Established { .. } => {
                    self.events
                        .push_back(ClientEvent::SessionEstablished { conn });
                }
                Event::PeerVersion { version } => {
                    self.events
                        .push_back(ClientEvent::PeerVersion { conn, version });
                }
                Event::StreamConnected { id } => {
                    if let Some(h) = handle(&id) {
                        if self.set_state(h, StreamState::Connected) {
                            self.events.push_back(ClientEvent::StreamConnected(h));
                        }
                    }
                }
                Event::StreamReadable { id } => {
                    if let Some(h) = handle(&id) {
                        self.events.push_back(ClientEvent::StreamReadable(h));
                    }
                }
                Event::StreamWritable { id } => {
                    if let Some(h) = handle(&id) {
                        self.events.push_back(ClientEvent::StreamWritable(h));
                    }
                }
                Event::StreamFinished { id } => {
                    if let Some(h) = handle(&id) {
                        self.set_state(h, StreamState::Finished);
                        self.events.push_back(ClientEvent::StreamFinished(h));
                    }
                }
                Event::StreamRefused { id, reason } => {
                    if let Some(h) = self.by_id.remove(&(conn, id)) {
                        self.forget_id(conn, h);
                        self.refuse(h, reason);
                    }
                }
                Event::StreamReset { id, reason } => {
                    if let Some(h) = self.by_id.remove(&(conn, id)) {
                        self.forget_id(conn, h);
                        self.reset(h, reason);
                    }
                }
                Event::HeartbeatAck { rtt } => {
                    self.pool.heartbeat_ack(conn, rtt);
                    self.events
                        .push_back(ClientEvent::HeartbeatAck { conn, rtt });
                }
                Event::PaddingSchemeUpdated(scheme) => {
                    debug!(
                        "server sent a new padding scheme (md5 {})",
                        scheme.md5_hex()
                    );
                    self.padding = scheme.clone();
                    self.events
                        .push_back(ClientEvent::PaddingSchemeUpdated(scheme));
                }
                Event::Closed { reason } => ended = Some(reason),
                // Server-role events never come from a client session.
                _ => {}
            }
        }
        match ended {
            Some(reason) => {
                self.pool.session_closed(now, conn);
                self.end_conn(conn, reason);
            }
            None => self.close_if_drained(conn),
        }
        let deadline = self.session(conn).and_then(ClientSession::poll_timeout);
        self.timers.set_or_clear(EpTimer::Session(conn), deadline);
        self.pool_actions();
    }

    /// Moves a stream that is not over yet to `state`; whether it did.
    fn set_state(&mut self, stream: StreamHandle, state: StreamState) -> bool {
        match self.streams.get_mut(&stream) {
            Some(e) if !e.state.is_terminal() => {
                e.state = state;
                true
            }
            _ => false,
        }
    }

    /// The session no longer knows the stream (refused or reset): the stream
    /// is done with its session, which stays healthy.
    fn forget_id(&mut self, conn: SessionSeq, stream: StreamHandle) {
        if let Some(e) = self.streams.get_mut(&stream) {
            e.id = None;
        }
        self.check_in(conn, stream);
    }

    fn refuse(&mut self, stream: StreamHandle, reason: RefuseReason) {
        if let Some(e) = self.streams.get_mut(&stream) {
            e.dest = None;
        }
        self.conclude(stream, Outcome::Refused(reason));
    }

    fn reset(&mut self, stream: StreamHandle, reason: ResetReason) {
        self.conclude(stream, Outcome::Reset(reason));
    }

    /// Ends a stream that is not over yet (or, for a reset, whose unread data
    /// is lost: see `end_conn`) and tells the owner, once.
    fn conclude(&mut self, stream: StreamHandle, outcome: Outcome) {
        let Some(e) = self.streams.get_mut(&stream) else {
            return;
        };
        let open = matches!(e.state, StreamState::Opening | StreamState::Connected);
        let unread = e.state == StreamState::Finished && !e.done;
        match outcome {
            Outcome::Refused(reason) if open => {
                e.state = StreamState::Refused(reason.clone());
                self.stats.streams_refused += 1;
                self.events
                    .push_back(ClientEvent::StreamRefused { stream, reason });
            }
            Outcome::Reset(reason) if open || unread => {
                e.state = StreamState::Reset(reason.clone());
                self.stats.streams_reset += 1;
                self.events
                    .push_back(ClientEvent::StreamReset { stream, reason });
            }
            _ => {}
        }
    }

    /// A connection is over: its streams get their outcome, the owner is told
    /// to close it.
    fn end_conn(&mut self, conn: SessionSeq, reason: SessionError) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.retiring.remove(&conn);
        self.sending.remove(&conn);
        self.timers.clear(EpTimer::Session(conn));
        if self.cursor == conn {
            self.cursor = SessionSeq(conn.0.saturating_sub(1));
        }
        debug!(seq = conn.0, "session over: {reason}");
        match c {
            Conn::Dialing { waiting, .. } => {
                let why = if self.closed {
                    RefuseReason::EndpointClosed
                } else {
                    RefuseReason::SessionClosed(reason.clone())
                };
                for h in waiting {
                    self.refuse(h, why.clone());
                }
            }
            Conn::Live(mut s) => {
                let ours = matches!(reason, SessionError::LocallyClosed | SessionError::Pool(_));
                let unanswered = !s.server_answered() && !ours && !self.closed;
                if unanswered {
                    self.events.push_back(ClientEvent::SessionUnanswered {
                        conn,
                        reason: reason.clone(),
                    });
                }
                s.close(self.now);
                let on_conn: Vec<(StreamId, StreamHandle)> = self
                    .by_id
                    .range((conn, StreamId(0))..=(conn, StreamId(u32::MAX)))
                    .map(|((_, id), h)| (*id, *h))
                    .collect();
                for (id, h) in on_conn {
                    self.by_id.remove(&(conn, id));
                    let Some(e) = self.streams.get_mut(&h) else {
                        continue;
                    };
                    e.id = None;
                    // Not yet connected: refused. Connected, or finished by
                    // the server with data still unread (lost now, which is
                    // no clean end): reset.
                    if e.state == StreamState::Opening {
                        let why = if unanswered {
                            RefuseReason::Unanswered(reason.clone())
                        } else {
                            RefuseReason::SessionClosed(reason.clone())
                        };
                        self.refuse(h, why);
                    } else {
                        self.reset(h, ResetReason::SessionClosed(reason.clone()));
                    }
                }
            }
        }
        self.actions.push_back(Action::Close { conn, reason });
    }

    /// Takes a session out of service: no new streams; it closes (with
    /// `reason`) once its streams have sent everything, FINs included.
    fn retire(&mut self, conn: SessionSeq, reason: SessionError) {
        if self.is_live(conn) {
            self.retiring.entry(conn).or_insert(reason);
            self.close_if_drained(conn);
        }
    }

    /// A retiring session whose streams are all done closes.
    fn close_if_drained(&mut self, conn: SessionSeq) {
        let drained = self.session(conn).is_some_and(|s| s.stream_count() == 0);
        if drained {
            if let Some(reason) = self.retiring.remove(&conn) {
                self.end_conn(conn, reason);
            }
        }
    }

    /// Carries out what the pool decided.
    fn pool_actions(&mut self) {
        let now = self.now;
        while let Some(a) = self.pool.poll_action() {
            match a {
                PoolAction::Dial { seq } => {
                    self.conns.insert(
                        seq,
                        Conn::Dialing {
                            waiting: Vec::new(),
                            user: false,
                        },
                    );
                    self.actions.push_back(Action::Dial { conn: seq });
                }
                PoolAction::Close { seq, reason } => {
                    debug!(seq = seq.0, "pool closes session: {reason:?}");
                    if reason == CloseReason::Shutdown || !self.is_live(seq) {
                        self.end_conn(seq, SessionError::Pool(reason));
                    } else {
                        // Streams that just ended may still have data and a
                        // FIN to send: the session closes once they are out.
                        self.retire(seq, SessionError::Pool(reason));
                    }
                }
                PoolAction::Heartbeat { seq, timeout } => {
                    if let Some(Conn::Live(s)) = self.conns.get_mut(&seq) {
                        s.send_heartbeat(now, timeout);
                        self.after_session(seq);
                    }
                }
            }
        }
        self.timers
            .set_or_clear(EpTimer::Pool, self.pool.poll_timeout());
    }
}
