//! A deterministic virtual-time world around one [`ClientEndpoint`]: the
//! driver every endpoint test and the `endpoint` fuzz body share.
//!
//! One in-memory [`ServerSession`] per connection (it accepts or refuses
//! streams with a text, echoes their data, answers heartbeats), two pipes
//! with latency between them, dials that take 10-500 ms and can fail,
//! server-side kills (EOF, transport error, peer reset, silence), outages
//! and server verdicts. Everything is seeded. The driver answers every
//! `Action`, drains every output after every input (transmits round robin
//! or per connection) and asserts the endpoint's invariants after every
//! step ([`World::check`]); every loop is bounded:
//!
//! * streams: every handle stays queryable until released; a terminal state
//!   never changes (except Finished by the server's FIN, unread, then Reset
//!   when its session dies); exactly one `StreamRefused`/`StreamReset` event
//!   for a refused/reset stream, none otherwise; at most one
//!   `StreamConnected`; a dial that completes gives its waiting streams their
//!   session, a failed one refuses them with `DialFailed(error)`;
//! * connections: every `Dial` names a new connection and is answered once;
//!   transmits only for live connections, starting with the preamble;
//!   a `Close` only for a connection the driver has (or for an abandoned
//!   dial that completed anyway); every live session is idle or carries a
//!   stream its owner has not finished (no orphans);
//! * pool: `stats()` agree with the driver's bookkeeping (sessions == live
//!   connections, dials in flight, streams, outcome counters); idle sessions
//!   are live; idle + pre-warm dials stay within `max(ensure_idle, K) + R`
//!   (the formulation (a) of `pool_sim.rs`: K what the last maintenance run
//!   left, R sessions returned since; the literal `max(ensure_idle,
//!   min_idle) + R` is only counted); unused pre-warmed sessions + pre-warm
//!   dials never exceed `ensure_idle`; a sweep never closes (IdleTimeout) one
//!   of the newest `min_idle` idle sessions nor a session idle for less than
//!   `idle_timeout`, and keeps at most `min_idle` + the fresh ones;
//! * timers: after `handle_timeout(now)`, `poll_timeout()` is `None` or later
//!   than `now`; with `strict_timing` (time only moves to the next deadline)
//!   every heartbeat the pool decides goes out at once on its live session,
//!   once per interval, the first 80-100 % of an interval after the dial
//!   (other HeartRequests are the session's probes of a slow SYNACK);
//! * data: what a stream reads back is what it wrote.
//!
//! Compiled into the integration tests (whose crate roots `use
//! anytls_core::*`) and into the library's `fuzz_endpoint` module (feature
//! `_fuzz`), so it names the library as `crate`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::auth::PasswordHash;
use crate::frame::{Command, FrameDecoder, FrameLimits, StreamId};
use crate::pool::{CloseReason, PoolConfig};
use crate::session::ServerSession;
use crate::{
    Action, Authenticator, ClientConfig, ClientEndpoint, ClientEvent, Event, RefuseReason,
    ResetReason, ServerConfig, Session, SessionError, SessionSeq, SocksAddr, StreamError,
    StreamHandle, StreamState, TransportError,
};

pub const PASSWORD: &str = "endpoint-world";

#[path = "../pool_presets/mod.rs"]
mod pool_presets;
#[allow(unused_imports)] // each includer uses a part
pub use pool_presets::{mins, ms, pool_config, preset, secs};

/// What streams write: byte `i` of a stream is `(31 * handle + i) % 251`,
/// read from this table in slices of up to `CHUNK` bytes.
const PERIOD: usize = 251;
const CHUNK: usize = 16 * 1024;
static PATTERN: [u8; PERIOD + CHUNK] = {
    let mut t = [0; PERIOD + CHUNK];
    let mut i = 0;
    while i < t.len() {
        t[i] = (i % PERIOD) as u8;
        i += 1;
    }
    t
};

/// `len <= CHUNK` bytes of a stream's pattern from `offset` (the echo must
/// return them).
fn pattern(stream: StreamHandle, offset: usize, len: usize) -> &'static [u8] {
    let start = (stream.0.wrapping_mul(31).wrapping_add(offset as u64) % PERIOD as u64) as usize;
    &PATTERN[start..start + len]
}

/// Seeded randomness for latencies and traffic.
pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        ms(lo + self.0.next_u64() % (hi - lo + 1))
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponentially distributed with this mean.
    pub fn exp(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(-(1.0 - self.unit()).ln())
            .max(Duration::from_nanos(1))
    }
}

/// One direction of a connection: each write arrives whole after the
/// latency, in order.
#[derive(Default)]
struct Pipe {
    in_flight: VecDeque<(Instant, Bytes)>,
}

impl Pipe {
    fn push(&mut self, now: Instant, latency: Duration, data: Bytes) {
        let at = self
            .in_flight
            .back()
            .map_or(now + latency, |b| b.0.max(now + latency));
        self.in_flight.push_back((at, data));
    }

    fn next(&self) -> Option<Instant> {
        self.in_flight.front().map(|f| f.0)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        if self.next()? <= now {
            self.in_flight.pop_front().map(|f| f.1)
        } else {
            None
        }
    }
}

/// Reads what the client sends on one connection: the preamble (with the
/// right password hash), then frames; counts HeartRequests.
struct Tap {
    buf: BytesMut,
    preamble_done: bool,
    dec: FrameDecoder,
    beats: Vec<Instant>,
}

impl Tap {
    fn new() -> Tap {
        Tap {
            buf: BytesMut::new(),
            preamble_done: false,
            dec: FrameDecoder::new(FrameLimits::UNLIMITED),
            beats: Vec::new(),
        }
    }

    fn feed(&mut self, now: Instant, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if !self.preamble_done {
            if self.buf.len() < 34 {
                return;
            }
            assert_eq!(
                &self.buf[..32],
                PasswordHash::of(PASSWORD).as_bytes(),
                "the connection starts with the preamble"
            );
            let pad = usize::from(u16::from_be_bytes([self.buf[32], self.buf[33]]));
            if self.buf.len() < 34 + pad {
                return;
            }
            self.buf.advance(34 + pad);
            self.preamble_done = true;
        }
        while let Some(f) = self
            .dec
            .decode(&mut self.buf)
            .expect("the client sends frames")
        {
            if f.cmd == Command::HeartRequest {
                self.beats.push(now);
            }
        }
    }
}

/// A live connection: the server's session and both directions.
pub struct Link {
    pub server: ServerSession,
    c2s: Pipe,
    s2c: Pipe,
    latency: Duration,
    /// Nothing is delivered any more, either way (a dead path).
    pub silent: bool,
    /// The server closed: EOF reaches the client once `s2c` is empty.
    eof: bool,
    pub connected_at: Instant,
    /// Dialled by the pool (not for a stream).
    pub prewarm: bool,
    /// A stream was opened on it.
    pub used: bool,
    tap: Tap,
    /// The last HeartRequest the pool had sent (strict timing).
    pub last_beat: Option<Instant>,
    /// HeartRequests the session sent by itself (probing a slow SYNACK).
    pub probes: usize,
    /// Server side: data read and not yet echoed.
    echo: BTreeMap<StreamId, VecDeque<Bytes>>,
}

pub enum DConn {
    Dialing {
        due: Instant,
        prewarm: bool,
        /// The endpoint closed it while it was being dialled.
        abandoned: bool,
    },
    Live(Box<Link>),
}

/// How a server-side kill reaches the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// The server closes the connection: EOF after what is in flight.
    Eof,
    /// The transport fails: reported at once.
    Reset,
    /// The peer resets the connection (`TransportError::PeerClosed`, which
    /// the core treats as an EOF): reported at once.
    PeerReset,
    /// Nothing arrives any more (a dead path): only a heartbeat notices.
    Silent,
}

/// What the server side does.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Dials fail.
    pub down: bool,
    /// Refuse every stream with this text.
    pub refuse: Option<String>,
    /// Otherwise refuse a stream with this probability ("no route").
    pub refuse_rate: f64,
    /// A dial fails with this probability even when the server is up.
    pub dial_fail_rate: f64,
    /// Dial duration range (ms).
    pub dial_ms: (u64, u64),
    /// One-way latency range of a connection (ms).
    pub link_ms: (u64, u64),
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            down: false,
            refuse: None,
            refuse_rate: 0.0,
            dial_fail_rate: 0.0,
            dial_ms: (10, 500),
            link_ms: (5, 80),
        }
    }
}

/// What the driver knows about a stream it opened.
#[derive(Debug)]
pub struct Track {
    /// Its connection (the dial it waits for, or its session).
    pub conn: Option<SessionSeq>,
    /// The state last seen.
    pub state: StreamState,
    /// The `StreamRefused`/`StreamReset` event, once.
    pub outcome: Option<ClientEvent>,
    /// `StreamConnected` events (at most one).
    pub connected: u32,
    pub user_finished: bool,
    pub released: bool,
    /// Its end was counted as a possible return to the pool.
    pub returned: bool,
    /// Bytes the owner wants to send (auto mode), sent, read back.
    pub to_send: usize,
    pub sent: usize,
    pub received: usize,
    pub eof: bool,
}

#[derive(Default, Debug)]
pub struct Counters {
    pub steps: u64,
    pub opened: u64,
    pub open_errors: u64,
    pub refused: u64,
    pub reset: u64,
    pub connected: u64,
    pub released: u64,
    pub dials: u64,
    pub prewarm_dials: u64,
    pub dials_ok: u64,
    pub dials_failed: u64,
    pub abandoned_dials: u64,
    /// HeartRequests on the wire: the pool's, and the session's own probes
    /// of a slow SYNACK (`probes`, counted with strict timing).
    pub heartbeats: u64,
    pub probes: u64,
    pub acks: u64,
    pub closes: BTreeMap<String, u64>,
    pub maintenance: u64,
    pub max_idle: usize,
    pub bytes_echoed: u64,
    /// Server sessions that ended by themselves, per reason.
    pub server_closed: BTreeMap<String, u64>,
    /// Steps where idle > max(ensure, min_idle) + returns since the last run
    /// (the literal bound, which does not hold by design; see pool_sim.rs).
    pub literal_bound_exceeded: u64,
    /// `StreamConnected` for a stream the owner had already finished.
    pub connected_after_finish: u64,
    /// Streams Finished by the server's FIN, then reset with their session
    /// (data the owner had not read was lost).
    pub late_resets: u64,
    /// Runs of `run_until` that hit the step budget (fuzzing: time jumped).
    pub budget_exhausted: u64,
}

pub struct World {
    pub ep: ClientEndpoint,
    pub cfg: PoolConfig,
    pub epoch: Instant,
    pub now: Instant,
    pub rng: Rng,
    pub server: Behaviour,
    pub conns: BTreeMap<SessionSeq, DConn>,
    /// Connections that ended (closed by the endpoint or never established).
    pub gone: BTreeSet<SessionSeq>,
    /// Connections whose dial succeeded.
    pub ever_live: BTreeSet<SessionSeq>,
    pub streams: BTreeMap<StreamHandle, Track>,
    /// The owner writes and reads by itself on readiness events.
    pub auto: bool,
    /// Transmits are pulled per connection (`poll_transmit_on`), as by one
    /// task per connection.
    pub per_conn_transmit: bool,
    /// Time only ever moves to the next deadline: heartbeat timing is exact.
    pub strict_timing: bool,
    /// Keep every event in `events` (scenario tests).
    pub keep_events: bool,
    pub events: Vec<(Instant, ClientEvent)>,
    /// Every `Action::Close`: when, which, why.
    pub closes: Vec<(Instant, SessionSeq, SessionError)>,
    /// Every `Action::Dial`: when, which, pre-warm.
    pub dials: Vec<(Instant, SessionSeq, bool)>,
    /// Every dial answer: when, which, success.
    pub answers: Vec<(Instant, SessionSeq, bool)>,
    /// Steps `run_until` may take before it gives up (and jumps).
    pub step_budget: u64,
    pub n: Counters,
    /// The next maintenance run of the pool.
    next_tick: Option<Instant>,
    /// (a): idle + pre-warm dials <= bound_base + returns since the last run.
    bound_base: usize,
    returns_since: usize,
    /// The stream whose dial the next `Action::Dial` is.
    opening: Option<StreamHandle>,
    /// The next command passes a `now` this much before the latest.
    stale: Duration,
    closed: bool,
}

impl World {
    pub fn new(cfg: PoolConfig, client: ClientConfig, seed: u64, epoch: Instant) -> World {
        let mut ep_seed = [0u8; 32];
        ep_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let ep = ClientEndpoint::new(client, cfg.clone(), ep_seed, epoch).expect("valid config");
        let ensure = if cfg.disable_reuse {
            0
        } else {
            cfg.ensure_idle
        };
        let mut w = World {
            ep,
            next_tick: Some(epoch + cfg.check_interval),
            cfg,
            epoch,
            now: epoch,
            rng: Rng::new(seed ^ 0x5eed),
            server: Behaviour::default(),
            conns: BTreeMap::new(),
            gone: BTreeSet::new(),
            ever_live: BTreeSet::new(),
            streams: BTreeMap::new(),
            auto: true,
            per_conn_transmit: false,
            strict_timing: true,
            keep_events: false,
            events: Vec::new(),
            closes: Vec::new(),
            dials: Vec::new(),
            answers: Vec::new(),
            step_budget: 10_000_000,
            n: Counters::default(),
            bound_base: ensure,
            returns_since: 0,
            opening: None,
            stale: Duration::ZERO,
            closed: false,
        };
        w.drain();
        w.check();
        w
    }

    /// A world with the client configuration of the tests.
    pub fn with_pool(cfg: PoolConfig, seed: u64, epoch: Instant) -> World {
        World::new(cfg, ClientConfig::new(PASSWORD), seed, epoch)
    }

    /// Time since the start.
    pub fn t(&self) -> Duration {
        self.now - self.epoch
    }

    /// The `now` to pass with the next command (earlier after `stale`).
    fn at(&mut self) -> Instant {
        let at = self.now.checked_sub(self.stale).unwrap_or(self.now);
        self.stale = Duration::ZERO;
        at
    }

    /// The next command passes a `now` this much before the latest one.
    pub fn set_stale(&mut self, d: Duration) {
        self.stale = d;
    }

    pub fn live(&self) -> impl Iterator<Item = SessionSeq> + '_ {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c, DConn::Live(_)))
            .map(|(s, _)| *s)
    }

    pub fn link(&self, conn: SessionSeq) -> Option<&Link> {
        match self.conns.get(&conn) {
            Some(DConn::Live(l)) => Some(l),
            _ => None,
        }
    }

    fn link_mut(&mut self, conn: SessionSeq) -> Option<&mut Link> {
        match self.conns.get_mut(&conn) {
            Some(DConn::Live(l)) => Some(l),
            _ => None,
        }
    }

    /// Dials in flight: (conn, due, pre-warm, abandoned).
    pub fn pending_dials(&self) -> Vec<(SessionSeq, Instant, bool, bool)> {
        self.conns
            .iter()
            .filter_map(|(s, c)| match c {
                DConn::Dialing {
                    due,
                    prewarm,
                    abandoned,
                } => Some((*s, *due, *prewarm, *abandoned)),
                DConn::Live(_) => None,
            })
            .collect()
    }

    /// Streams not yet released.
    pub fn open_streams(&self) -> Vec<StreamHandle> {
        self.streams
            .iter()
            .filter(|(_, t)| !t.released)
            .map(|(h, _)| *h)
            .collect()
    }

    pub fn idle(&self) -> usize {
        self.ep.idle_sessions().len()
    }

    pub fn beats(&self, conn: SessionSeq) -> &[Instant] {
        self.link(conn).map_or(&[], |l| &l.tap.beats)
    }

    pub fn closes_with(&self, reason: &SessionError) -> Vec<SessionSeq> {
        self.closes
            .iter()
            .filter(|c| &c.2 == reason)
            .map(|c| c.1)
            .collect()
    }

    // ----- owner commands -----

    /// Opens a stream (auto mode: `to_send` bytes are written and read back).
    pub fn open(&mut self, to_send: usize) -> Option<StreamHandle> {
        let at = self.at();
        let dest = SocksAddr::domain("example.com", 443);
        let h = match self.ep.open_stream(at, &dest) {
            Ok(h) => h,
            Err(e) => {
                assert!(self.closed, "open_stream failed: {e}");
                assert_eq!(e, StreamError::SessionClosed);
                self.n.open_errors += 1;
                return None;
            }
        };
        self.n.opened += 1;
        let conn = self.ep.stream_session(h);
        if let Some(c) = conn {
            let link = self.link_mut(c).expect("a stream on a live connection");
            link.used = true;
        }
        assert!(
            !self.streams.contains_key(&h),
            "handle {h:?} given out twice"
        );
        self.streams.insert(
            h,
            Track {
                conn,
                state: StreamState::Opening,
                outcome: None,
                connected: 0,
                user_finished: false,
                released: false,
                returned: false,
                to_send,
                sent: 0,
                received: 0,
                eof: false,
            },
        );
        self.opening = (conn.is_none()).then_some(h);
        self.drain();
        assert!(
            self.opening.is_none(),
            "a stream without a session or a dial"
        );
        assert!(self.streams[&h].conn.is_some());
        if self.auto {
            self.pump_writes(h);
            self.drain();
        }
        self.check();
        Some(h)
    }

    /// A destination that cannot be encoded fails at once, without a handle.
    pub fn open_bad(&mut self) {
        let dest = SocksAddr::domain("x".repeat(300), 1);
        let before = self.ep.stats().streams_opened;
        let at = self.at();
        assert!(self.ep.open_stream(at, &dest).is_err());
        assert_eq!(self.ep.stats().streams_opened, before);
        self.drain();
        self.check();
    }

    /// Writes `len` bytes of the stream's pattern (what fits).
    pub fn write(&mut self, h: StreamHandle, len: usize) {
        let Some(t) = self.streams.get_mut(&h) else {
            return;
        };
        t.to_send = t.to_send.max(t.sent + len);
        self.pump_writes(h);
        self.drain();
        self.check();
    }

    fn pump_writes(&mut self, h: StreamHandle) {
        for _ in 0..64 {
            let Some(t) = self.streams.get(&h) else {
                return;
            };
            if t.released || t.sent >= t.to_send {
                return;
            }
            let n = (t.to_send - t.sent).min(CHUNK);
            let data = pattern(h, t.sent, n);
            // Odd handles write without a copy.
            let res = if h.0 % 2 == 1 {
                let mut b = Bytes::from_static(data);
                let res = self.ep.write_bytes(h, &mut b);
                if let Ok(k) = res {
                    assert_eq!(b.len(), n - k, "write_bytes advances past what it took");
                }
                res
            } else {
                self.ep.write(h, data)
            };
            match res {
                Ok(k) => {
                    assert!(k <= n && k > 0, "write took {k} of {n}");
                    if let Some(t) = self.streams.get_mut(&h) {
                        t.sent += k;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Reads until `Blocked` or EOF; checks the echo.
    pub fn read(&mut self, h: StreamHandle) {
        self.read_all(h);
        self.drain();
        self.check();
    }

    fn read_all(&mut self, h: StreamHandle) {
        for _ in 0..10_000 {
            if self.streams.get(&h).is_none_or(|t| t.released) {
                return;
            }
            match self.ep.read(self.now, h) {
                Ok(Some(data)) => {
                    let t = self.streams.get_mut(&h).expect("tracked");
                    assert!(!t.eof, "data after EOF on {h:?}");
                    for (i, piece) in data.chunks(CHUNK).enumerate() {
                        let want = pattern(h, t.received + i * CHUNK, piece.len());
                        assert!(piece == want, "echo of {h:?} corrupted");
                    }
                    t.received += data.len();
                    assert!(t.received <= t.sent, "read back more than written");
                    self.n.bytes_echoed += data.len() as u64;
                }
                Ok(None) => {
                    if let Some(t) = self.streams.get_mut(&h) {
                        t.eof = true;
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    }

    pub fn finish(&mut self, h: StreamHandle) {
        let at = self.at();
        self.ep.finish(at, h);
        if let Some(t) = self.streams.get_mut(&h) {
            if !t.released {
                t.user_finished = true;
                let s = self.ep.stream_state(h).expect("finished, not released");
                assert!(s.is_terminal(), "finish left {h:?} {s:?}");
            }
        }
        self.drain();
        self.check();
    }

    pub fn release(&mut self, h: StreamHandle) {
        let at = self.at();
        self.ep.release(at, h);
        assert_eq!(self.ep.stream_state(h), None, "released, still known");
        if let Some(t) = self.streams.get_mut(&h) {
            if !t.released {
                t.released = true;
                t.user_finished = true;
                self.n.released += 1;
            }
        }
        self.drain();
        self.check();
    }

    /// Closes the endpoint: every stream ends, every session closes.
    pub fn close(&mut self) {
        let at = self.at();
        self.ep.close(at);
        self.closed = true;
        self.drain();
        for (h, t) in &self.streams {
            if !t.released {
                let s = self.ep.stream_state(*h).expect("not released");
                assert!(s.is_terminal(), "{h:?} {s:?} after close");
            }
        }
        assert_eq!(
            self.ep.poll_timeout(),
            None,
            "a closed endpoint has no deadline"
        );
        self.check();
    }

    // ----- the network -----

    /// Answers a dial now (not at its due time).
    pub fn answer_dial(&mut self, conn: SessionSeq, ok: bool) {
        let Some(DConn::Dialing {
            prewarm, abandoned, ..
        }) = self.conns.remove(&conn)
        else {
            panic!("{conn:?} is not being dialled");
        };
        let at = self.at();
        self.answers.push((self.now, conn, ok));
        // Streams waiting for this dial, not yet over.
        let waiting: Vec<StreamHandle> = self
            .streams
            .iter()
            .filter(|(_, t)| t.conn == Some(conn) && !t.released && !t.state.is_terminal())
            .map(|(h, _)| *h)
            .collect();
        if abandoned {
            assert!(waiting.is_empty(), "streams wait for an abandoned dial");
        }
        if ok {
            self.n.dials_ok += 1;
            self.ever_live.insert(conn);
            let cfg = Arc::new(ServerConfig::new(Authenticator::single(PASSWORD)));
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&self.rng.u64().to_le_bytes());
            let server = Session::server(cfg, seed, self.now).expect("valid server config");
            let latency = self.rng.ms(self.server.link_ms.0, self.server.link_ms.1);
            let used = !prewarm;
            self.conns.insert(
                conn,
                DConn::Live(Box::new(Link {
                    server,
                    c2s: Pipe::default(),
                    s2c: Pipe::default(),
                    latency,
                    silent: false,
                    eof: false,
                    connected_at: self.now,
                    prewarm,
                    used,
                    tap: Tap::new(),
                    last_beat: None,
                    probes: 0,
                    echo: BTreeMap::new(),
                })),
            );
            self.ep.handle_connected(at, conn);
            if abandoned {
                // The endpoint asks for its close again.
                let closes = self.closes.len();
                self.drain();
                assert!(
                    self.closes[closes..].iter().any(|c| c.1 == conn),
                    "an abandoned dial completed and was not closed"
                );
            } else {
                for h in &waiting {
                    assert_eq!(
                        self.ep.stream_session(*h),
                        Some(conn),
                        "{h:?} did not get the session it waited for"
                    );
                }
                if self.auto {
                    for h in &waiting {
                        self.pump_writes(*h);
                    }
                }
            }
        } else {
            self.n.dials_failed += 1;
            self.gone.insert(conn);
            let error = TransportError::Failed(format!("dial {} failed", conn.0));
            self.ep.handle_dial_failed(at, conn, error.clone());
            let refused = StreamState::Refused(RefuseReason::DialFailed(error));
            for h in &waiting {
                assert_eq!(
                    self.ep.stream_state(*h),
                    Some(&refused),
                    "{h:?} waited for a failed dial"
                );
            }
        }
        self.drain();
        self.check();
    }

    /// The server kills a live connection.
    pub fn kill(&mut self, conn: SessionSeq, how: Kill) {
        let now = self.now;
        let at = self.at();
        let Some(link) = self.link_mut(conn) else {
            return;
        };
        match how {
            Kill::Eof => {
                link.server.close(now);
                link.eof = true;
                self.pump_server(conn);
            }
            Kill::Silent => link.silent = true,
            Kill::Reset | Kill::PeerReset => {
                link.silent = true;
                let error = match how {
                    Kill::Reset => TransportError::Failed("connection reset".into()),
                    _ => TransportError::PeerClosed,
                };
                self.ep.handle_transport_error(at, conn, error);
            }
        }
        self.drain();
        self.check();
    }

    /// EOF reaches the client now (whatever is still in flight is lost).
    pub fn eof_now(&mut self, conn: SessionSeq) {
        let at = self.at();
        if let Some(link) = self.link_mut(conn) {
            link.silent = true;
            self.ep.handle_eof(at, conn);
        }
        self.drain();
        self.check();
    }

    /// Server outage: dials fail; when it starts, every session dies (`how`
    /// picks the way for each; `None`: at random).
    pub fn outage(&mut self, on: bool, how: Option<Kill>) {
        self.server.down = on;
        if on {
            let live: Vec<SessionSeq> = self.live().collect();
            for conn in live {
                let k = how.unwrap_or_else(|| match self.rng.below(4) {
                    0 => Kill::Eof,
                    1 => Kill::Reset,
                    2 => Kill::PeerReset,
                    _ => Kill::Silent,
                });
                self.kill(conn, k);
            }
        }
        self.check();
    }

    // ----- time -----

    /// `handle_timeout` now (possibly early, possibly stale).
    pub fn timeout(&mut self) {
        let at = self.at();
        self.handle_timeout(at);
        self.check();
    }

    fn handle_timeout(&mut self, at: Instant) {
        let now = self.now.max(at);
        let maintenance = !self.closed && self.next_tick.is_some_and(|t| t <= now);
        let idle_before = self.ep.idle_sessions();
        let closes = self.closes.len();
        let returns = self.returns_since;
        self.ep.handle_timeout(at);
        if let Some(t) = self.ep.poll_timeout() {
            assert!(
                t > now,
                "poll_timeout {:?} not after handle_timeout({:?})",
                t - self.epoch,
                now - self.epoch
            );
        }
        self.drain();
        self.count_returns();
        if maintenance {
            self.maintenance(now, &idle_before, closes, self.returns_since - returns);
        }
    }

    /// Invariants of one maintenance run ((b), and the base of (a)).
    fn maintenance(
        &mut self,
        now: Instant,
        idle_before: &[(SessionSeq, Instant)],
        closes: usize,
        returns: usize,
    ) {
        self.n.maintenance += 1;
        let ci = self.cfg.check_interval;
        let tick = self.next_tick.expect("maintenance is scheduled");
        let mut next = tick + ci;
        if next <= now {
            next = now + ci;
        }
        self.next_tick = Some(next);
        let cfg = &self.cfg;
        let expire = now.checked_sub(cfg.idle_timeout);
        let protected: Vec<SessionSeq> =
            idle_before.iter().take(cfg.min_idle).map(|x| x.0).collect();
        let swept: Vec<SessionSeq> = self.closes[closes..]
            .iter()
            .filter(|c| c.2 == SessionError::Pool(CloseReason::IdleTimeout))
            .map(|c| c.1)
            .collect();
        let other_closes = self.closes.len() - closes - swept.len();
        for seq in &swept {
            assert!(!protected.contains(seq), "protected {seq:?} swept");
            let since = idle_before
                .iter()
                .find(|x| x.0 == *seq)
                .expect("swept sessions were idle")
                .1;
            assert!(
                expire.is_some_and(|x| since < x),
                "{seq:?} swept before its idle timeout"
            );
        }
        let fresh = idle_before
            .iter()
            .filter(|x| expire.is_none_or(|e| x.1 >= e))
            .count();
        let idle_after = self.idle();
        assert!(
            idle_after <= cfg.min_idle + fresh + returns,
            "the sweep kept {idle_after} (min_idle {}, fresh {fresh}, returned {returns})",
            cfg.min_idle
        );
        assert!(
            idle_after + other_closes >= cfg.min_idle.min(idle_before.len()),
            "the sweep kept fewer than min_idle"
        );
        let ensure = if cfg.disable_reuse {
            0
        } else {
            cfg.ensure_idle
        };
        self.bound_base = ensure.max(idle_after + self.prewarm_dialing());
        self.returns_since = 0;
    }

    /// The earliest thing that happens next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.ep.poll_timeout();
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for (seq, c) in &self.conns {
            match c {
                DConn::Dialing { due, .. } => at(Some(*due)),
                DConn::Live(l) if !l.silent => {
                    if l.server.wants_read() {
                        at(l.c2s.next());
                    }
                    if self.ep.wants_read(*seq) {
                        at(l.s2c.next());
                    }
                    if l.eof && l.s2c.next().is_none() {
                        at(Some(self.now));
                    }
                    if !l.server.is_closed() {
                        at(l.server.poll_timeout());
                    }
                }
                DConn::Live(_) => {}
            }
        }
        next
    }

    /// Does everything due at `t` (not before `now`).
    pub fn advance_to(&mut self, t: Instant) {
        assert!(t >= self.now, "time goes backwards");
        self.now = t;
        let now = t;
        self.n.steps += 1;
        // Dials that complete.
        let due: Vec<(SessionSeq, bool)> = self
            .conns
            .iter()
            .filter_map(|(s, c)| match c {
                DConn::Dialing { due, abandoned, .. } if *due <= now => Some((*s, *abandoned)),
                _ => None,
            })
            .collect();
        for (conn, abandoned) in due {
            let fail = self.server.down
                || (self.server.dial_fail_rate > 0.0
                    && self.rng.chance(self.server.dial_fail_rate));
            // An abandoned dial: the driver reports it anyway (either way).
            let give_up = abandoned && self.rng.chance(0.5);
            let ok = !(fail || give_up);
            self.answer_dial(conn, ok);
        }
        // Deliveries and server timers.
        let conns: Vec<SessionSeq> = self.live().collect();
        for conn in conns {
            self.deliver(conn);
        }
        if self.ep.poll_timeout().is_some_and(|d| d <= now) {
            self.handle_timeout(now);
        }
        self.drain();
        self.check();
    }

    fn deliver(&mut self, conn: SessionSeq) {
        let now = self.now;
        let Some(l) = self.link_mut(conn) else {
            return;
        };
        if l.silent {
            return;
        }
        // Client to server.
        let mut server_moved = false;
        while l.server.wants_read() {
            let Some(data) = l.c2s.pop_due(now) else {
                break;
            };
            l.server.handle_input(now, BytesMut::from(&data[..]));
            server_moved = true;
        }
        if l.server.poll_timeout().is_some_and(|t| t <= now) {
            l.server.handle_timeout(now);
            assert!(
                l.server.poll_timeout().is_none_or(|t| t > now),
                "server poll_timeout in the past"
            );
            server_moved = true;
        }
        if server_moved {
            self.pump_server(conn);
        }
        // Server to client.
        for _ in 0..100_000 {
            if !self.ep.wants_read(conn) {
                break;
            }
            let Some(data) = self.link_mut(conn).and_then(|l| l.s2c.pop_due(now)) else {
                break;
            };
            self.ep.handle_input(now, conn, BytesMut::from(&data[..]));
            self.drain();
        }
        if let Some(l) = self.link_mut(conn) {
            if l.eof && l.s2c.next().is_none() && !l.silent {
                l.silent = true;
                self.ep.handle_eof(now, conn);
                self.drain();
            }
        }
    }

    /// The server's output and its reactions: verdicts, echo, FIN.
    fn pump_server(&mut self, conn: SessionSeq) {
        let now = self.now;
        let refuse = self.server.refuse.clone();
        let rate = self.server.refuse_rate;
        let mut roll = || rate > 0.0 && self.rng.chance(rate);
        let Some(DConn::Live(l)) = self.conns.get_mut(&conn) else {
            return;
        };
        let l: &mut Link = l;
        let mut buf = BytesMut::new();
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(ev) = l.server.poll_event() {
                moved = true;
                match ev {
                    Event::StreamOpened { id, .. } => {
                        let verdict = match &refuse {
                            Some(text) => Err(text.clone()),
                            None if roll() => Err("no route".to_owned()),
                            None => Ok(()),
                        };
                        let _ = l.server.accept_stream(id, verdict);
                    }
                    Event::StreamReadable { id } => loop {
                        match l.server.read(now, id) {
                            Ok(Some(data)) => l.echo.entry(id).or_default().push_back(data),
                            Ok(None) => {
                                l.echo.remove(&id);
                                let _ = l.server.finish(id);
                                break;
                            }
                            Err(_) => break,
                        }
                    },
                    Event::StreamFinished { id } => {
                        l.echo.remove(&id);
                        let _ = l.server.finish(id);
                    }
                    Event::Closed { reason } => {
                        *self.n.server_closed.entry(close_kind(&reason)).or_default() += 1;
                    }
                    _ => {}
                }
            }
            // Echo what fits.
            for (id, q) in l.echo.iter_mut() {
                while let Some(front) = q.front_mut() {
                    match l.server.write(*id, front) {
                        Ok(k) if k == front.len() => {
                            q.pop_front();
                        }
                        Ok(k) => {
                            front.advance(k);
                            break;
                        }
                        Err(StreamError::Blocked) => break,
                        Err(_) => {
                            q.clear();
                            break;
                        }
                    }
                }
            }
            l.echo.retain(|_, q| !q.is_empty());
            while let Some(t) = l.server.poll_transmit(now, &mut buf) {
                moved = true;
                let data = buf.split_to(t.len).freeze();
                if !l.silent {
                    l.s2c.push(now, l.latency, data);
                }
            }
            if l.server.is_closed() {
                l.eof = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the server session does not settle");
    }

    /// Does what is due next, if that is not after `until`.
    pub fn step(&mut self, until: Instant) -> bool {
        match self.next_deadline() {
            Some(t) if t <= until => {
                let t = t.max(self.now);
                self.advance_to(t);
                true
            }
            _ => false,
        }
    }

    /// Runs every deadline up to `until`, then sets the clock to it. Returns
    /// false when the step budget ran out (time then jumps to `until`, one
    /// late `handle_timeout` catching up).
    pub fn run_until(&mut self, until: Instant) -> bool {
        for _ in 0..self.step_budget {
            if !self.step(until) {
                self.now = self.now.max(until);
                return true;
            }
        }
        assert!(!self.strict_timing, "no quiescence: step budget exhausted");
        self.n.budget_exhausted += 1;
        self.jump_to(until);
        false
    }

    pub fn run_for(&mut self, d: Duration) -> bool {
        let until = self.now + d;
        self.run_until(until)
    }

    /// Time passes without any timer firing (a suspended process), then one
    /// `handle_timeout`.
    pub fn jump_to(&mut self, t: Instant) {
        assert!(!self.strict_timing, "no jumps in strict timing");
        self.now = self.now.max(t);
        let now = self.now;
        self.handle_timeout(now);
        self.check();
    }

    /// Jumps to the endpoint's deadline (plus `late`) and handles it.
    pub fn run_to_deadline(&mut self, late: Duration) {
        assert!(!self.strict_timing, "no jumps in strict timing");
        if let Some(t) = self.ep.poll_timeout() {
            self.now = self.now.max(t + late);
        }
        let now = self.now;
        self.handle_timeout(now);
        self.check();
    }

    /// Answers every dial in flight (waiting until they are due), so that
    /// every `Dial` got its answer.
    pub fn settle_dials(&mut self) {
        let last = self.pending_dials().iter().map(|d| d.1).max();
        if let Some(t) = last {
            self.run_until(t.max(self.now));
        }
        let pending: Vec<SessionSeq> = self.pending_dials().iter().map(|d| d.0).collect();
        for conn in pending {
            self.answer_dial(conn, !self.server.down);
        }
        assert!(self.pending_dials().is_empty());
        assert_eq!(
            self.answers.len(),
            self.dials.len(),
            "every Dial is answered once"
        );
        let answered: BTreeSet<SessionSeq> = self.answers.iter().map(|a| a.1).collect();
        assert_eq!(answered.len(), self.answers.len(), "a dial answered twice");
    }

    // ----- outputs -----

    /// Drains actions, transmits and events until nothing moves.
    pub fn drain(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(a) = self.ep.poll_action() {
                moved = true;
                self.action(a);
            }
            let mut buf = BytesMut::new();
            if self.per_conn_transmit {
                // One task per connection: each pulls its own (a dialling
                // connection has nothing).
                let conns: Vec<SessionSeq> = self.conns.keys().copied().collect();
                for conn in conns {
                    while let Some(t) = self.ep.poll_transmit_on(self.now, conn, &mut buf) {
                        moved = true;
                        let data = buf.split_to(t.len).freeze();
                        self.transmitted(conn, data);
                    }
                }
            }
            while let Some((conn, t)) = self.ep.poll_transmit(self.now, &mut buf) {
                moved = true;
                let data = buf.split_to(t.len).freeze();
                self.transmitted(conn, data);
            }
            while let Some(ev) = self.ep.poll_event() {
                moved = true;
                self.event(ev);
            }
            if !moved {
                return;
            }
        }
        panic!("the endpoint does not settle");
    }

    /// A transmit for `conn`: into its pipe, through the tap (preamble,
    /// frames, heartbeat schedule).
    fn transmitted(&mut self, conn: SessionSeq, data: Bytes) {
        let now = self.now;
        let (strict, interval) = (self.strict_timing, self.cfg.heartbeat);
        let Some(DConn::Live(l)) = self.conns.get_mut(&conn) else {
            panic!("a transmit for {conn:?}, which is not live");
        };
        let before = l.tap.beats.len();
        l.tap.feed(now, &data);
        let mut beats = l.tap.beats.len() - before;
        self.n.heartbeats += beats as u64;
        if beats > 0 {
            if strict {
                // The pool's: once per interval, the first 80-100 % of
                // one after the dial.
                let gap = now - l.last_beat.unwrap_or(l.connected_at);
                let on_schedule = match (interval, l.last_beat) {
                    (None, _) => false,
                    (Some(h), None) => gap > h * 4 / 5 && gap <= h,
                    (Some(h), Some(_)) => gap == h,
                };
                if on_schedule {
                    l.last_beat = Some(now);
                    beats -= 1;
                }
                // Others are the session's probes of a slow SYNACK.
                let opening = self
                    .streams
                    .values()
                    .any(|t| t.conn == Some(conn) && t.state == StreamState::Opening);
                assert!(
                    beats == 0 || opening,
                    "{conn:?}: heartbeat off schedule ({gap:?} after the last), beats {:?}",
                    l.tap
                        .beats
                        .iter()
                        .map(|b| *b - l.connected_at)
                        .collect::<Vec<_>>()
                );
                l.probes += beats;
                self.n.probes += beats as u64;
            } else {
                l.last_beat = Some(now);
            }
        }
        if !l.silent {
            l.c2s.push(now, l.latency, data);
        }
    }

    fn action(&mut self, a: Action) {
        match a {
            Action::Dial { conn } => {
                assert!(!self.closed, "a dial after close");
                assert!(
                    !self.conns.contains_key(&conn) && !self.gone.contains(&conn),
                    "Dial of {conn:?}, which is not new"
                );
                let prewarm = match self.opening.take() {
                    Some(h) => {
                        self.streams.get_mut(&h).expect("tracked").conn = Some(conn);
                        false
                    }
                    None => true,
                };
                self.n.dials += 1;
                if prewarm {
                    self.n.prewarm_dials += 1;
                }
                self.dials.push((self.now, conn, prewarm));
                let due = self.now + self.rng.ms(self.server.dial_ms.0, self.server.dial_ms.1);
                self.conns.insert(
                    conn,
                    DConn::Dialing {
                        due,
                        prewarm,
                        abandoned: false,
                    },
                );
            }
            Action::Close { conn, reason } => {
                *self.n.closes.entry(close_kind(&reason)).or_default() += 1;
                self.closes.push((self.now, conn, reason));
                match self.conns.get_mut(&conn) {
                    Some(DConn::Dialing { abandoned, .. }) => {
                        assert!(!*abandoned, "{conn:?} closed twice while dialling");
                        *abandoned = true;
                        self.n.abandoned_dials += 1;
                    }
                    Some(DConn::Live(_)) => {
                        self.conns.remove(&conn);
                        self.gone.insert(conn);
                    }
                    None => {
                        // Only an abandoned dial that completed anyway.
                        let answered_now = self.answers.last().is_some_and(|a| a.1 == conn);
                        assert!(
                            answered_now,
                            "Close of {conn:?}, which the driver does not have"
                        );
                        self.gone.insert(conn);
                    }
                }
            }
            #[allow(unreachable_patterns)] // `Action` is non-exhaustive outside the crate.
            _ => {}
        }
    }

    fn event(&mut self, ev: ClientEvent) {
        if self.keep_events {
            self.events.push((self.now, ev.clone()));
        }
        match &ev {
            ClientEvent::StreamConnected(h) => {
                self.n.connected += 1;
                if let Some(t) = self.streams.get_mut(h) {
                    t.connected += 1;
                    assert_eq!(t.connected, 1, "{h:?} connected twice");
                    assert!(t.outcome.is_none(), "{h:?} connected after its outcome");
                    if self.ep.stream_state(*h) != Some(&StreamState::Connected) {
                        // The owner finished it before the SYNACK came.
                        self.n.connected_after_finish += 1;
                    }
                }
                if self.auto {
                    self.pump_writes(*h);
                }
            }
            ClientEvent::StreamWritable(h) if self.auto => self.pump_writes(*h),
            ClientEvent::StreamReadable(h) | ClientEvent::StreamFinished(h) if self.auto => {
                self.read_all(*h)
            }
            ClientEvent::StreamRefused { stream, .. } | ClientEvent::StreamReset { stream, .. } => {
                if matches!(ev, ClientEvent::StreamRefused { .. }) {
                    self.n.refused += 1;
                } else {
                    self.n.reset += 1;
                }
                let t = self
                    .streams
                    .get_mut(stream)
                    .expect("an outcome for a stream never opened");
                assert!(
                    t.outcome.is_none(),
                    "{stream:?}: second outcome {ev:?} after {:?}",
                    t.outcome
                );
                assert!(!t.released, "an outcome after release");
                t.outcome = Some(ev.clone());
            }
            ClientEvent::HeartbeatAck { conn, .. }
            | ClientEvent::SessionEstablished { conn }
            | ClientEvent::PeerVersion { conn, .. } => {
                if matches!(ev, ClientEvent::HeartbeatAck { .. }) {
                    self.n.acks += 1;
                }
                let connected = self.ever_live.contains(conn);
                assert!(connected, "{ev:?} for a connection never connected");
            }
            _ => {}
        }
    }

    fn prewarm_dialing(&self) -> usize {
        self.pending_dials().iter().filter(|d| d.2 && !d.3).count()
    }

    /// (a) Counts the streams that ended on a live session since the last
    /// look: each may have returned its session to the pool.
    fn count_returns(&mut self) {
        for t in self.streams.values_mut() {
            if t.returned || !(t.released || t.user_finished || t.outcome.is_some()) {
                continue;
            }
            let Some(conn) = t.conn else { continue };
            match self.conns.get(&conn) {
                // Returned when the dial completes.
                Some(DConn::Dialing { .. }) => continue,
                Some(DConn::Live(_)) => self.returns_since += 1,
                None => {}
            }
            t.returned = true;
        }
        self.streams.retain(|_, t| !(t.released && t.returned));
    }

    // ----- invariants -----

    pub fn check(&mut self) {
        self.count_returns();
        let st = self.ep.stats();
        // Streams.
        let mut unreleased = 0;
        for (h, t) in self.streams.iter_mut() {
            let got = self.ep.stream_state(*h);
            if t.released {
                assert!(got.is_none(), "{h:?} released, still queryable");
                continue;
            }
            unreleased += 1;
            let got = got
                .unwrap_or_else(|| panic!("{h:?} vanished before its release"))
                .clone();
            if t.state.is_terminal() && got != t.state {
                // The one change allowed: the server's FIN made it Finished,
                // the owner neither finished it nor read its EOF, and its
                // session ended: the unread data is lost, a reset.
                let late_reset = t.state == StreamState::Finished
                    && !t.user_finished
                    && !t.eof
                    && matches!(got, StreamState::Reset(ResetReason::SessionClosed(_)));
                assert!(
                    late_reset,
                    "{h:?}: terminal state {:?} changed to {got:?}",
                    t.state
                );
                self.n.late_resets += 1;
            }
            match (&got, &t.outcome) {
                (StreamState::Refused(r), Some(ClientEvent::StreamRefused { reason, .. })) => {
                    assert_eq!(r, reason)
                }
                (StreamState::Reset(r), Some(ClientEvent::StreamReset { reason, .. })) => {
                    assert_eq!(r, reason)
                }
                (StreamState::Refused(_) | StreamState::Reset(_), _) | (_, Some(_)) => {
                    panic!("{h:?}: state {got:?} but outcome event {:?}", t.outcome)
                }
                _ => {}
            }
            t.state = got;
        }
        assert_eq!(st.streams, unreleased, "streams not released");
        assert_eq!(st.streams_opened, self.n.opened);
        assert_eq!(st.streams_refused, self.n.refused);
        assert_eq!(st.streams_reset, self.n.reset);
        // Connections.
        let live: Vec<SessionSeq> = self.live().collect();
        assert_eq!(st.sessions, live.len(), "sessions vs live connections");
        for conn in &live {
            assert!(self.ep.is_live(*conn), "{conn:?} live for the driver only");
        }
        for (conn, _, _, abandoned) in self.pending_dials() {
            assert!(!self.ep.is_live(conn));
            let _ = abandoned;
        }
        let dialing = self.pending_dials().iter().filter(|d| !d.3).count();
        assert_eq!(st.pool.dialing, dialing, "dials in flight");
        let idle = self.ep.idle_sessions();
        assert_eq!(st.pool.idle, idle.len());
        assert!(
            idle.windows(2).all(|w| w[0].0 > w[1].0),
            "idle sessions newest first"
        );
        for (conn, since) in &idle {
            assert!(self.link(*conn).is_some(), "idle {conn:?} is not live");
            assert!(*since <= self.now);
        }
        assert!(st.pool.idle + st.pool.busy <= st.sessions);
        // No orphans: a live session is idle or carries an unfinished stream.
        let busy: BTreeSet<SessionSeq> = self
            .streams
            .values()
            .filter(|t| {
                !t.user_finished
                    && !matches!(t.state, StreamState::Refused(_) | StreamState::Reset(_))
            })
            .filter_map(|t| t.conn)
            .collect();
        let idle_set: BTreeSet<SessionSeq> = idle.iter().map(|i| i.0).collect();
        for conn in &live {
            assert!(
                idle_set.contains(conn) || busy.contains(conn),
                "{conn:?} is live, not idle, and carries no unfinished stream (orphaned)"
            );
        }
        self.n.max_idle = self.n.max_idle.max(idle.len());
        // (a) The idle bound, and no pre-warm overshoot.
        if !self.closed {
            let cfg = &self.cfg;
            let prewarm = self.prewarm_dialing();
            assert!(
                idle.len() + prewarm <= self.bound_base + self.returns_since,
                "idle {} + pre-warm dials {prewarm} > {} + {} returned",
                idle.len(),
                self.bound_base,
                self.returns_since
            );
            if idle.len() > cfg.ensure_idle.max(cfg.min_idle) + self.returns_since {
                self.n.literal_bound_exceeded += 1;
            }
            let unused = idle
                .iter()
                .filter(|(c, _)| self.link(*c).is_some_and(|l| l.prewarm && !l.used))
                .count();
            if !cfg.disable_reuse {
                assert!(
                    unused + prewarm <= cfg.ensure_idle,
                    "ensure overshoot: {unused} unused pre-warmed + {prewarm} dialling"
                );
            }
        }
        // Heartbeats: every live session beats once per interval.
        if self.strict_timing {
            // Every heartbeat the pool decided on went out at once.
            assert_eq!(self.n.heartbeats - self.n.probes, st.pool.heartbeats);
        }
        if let (Some(h), true) = (self.cfg.heartbeat, self.strict_timing) {
            for conn in &live {
                let l = self.link(*conn).expect("live");
                let last = l.last_beat.unwrap_or(l.connected_at);
                assert!(last + h > self.now, "{conn:?} missed a heartbeat");
            }
        }
        if let Some(t) = self.ep.poll_timeout() {
            assert!(
                t + secs(3600 * 24 * 365 * 20) > self.now,
                "a deadline far in the past"
            );
        }
    }
}

fn close_kind(reason: &SessionError) -> String {
    match reason {
        SessionError::Pool(r) => format!("{r:?}"),
        SessionError::Transport(_) => "Transport".into(),
        other => {
            let s = format!("{other:?}");
            s.split(['(', ' ', '{']).next().unwrap_or("").to_owned()
        }
    }
}

// ---------------------------------------------------------------------------
// Random operations (proptest and the fuzz body)

/// One step of a random run; indices pick among what exists (modulo).
#[derive(Clone, Debug)]
pub enum Op {
    /// Open a stream (with this many bytes to write in auto mode).
    Open(u16),
    /// Open a stream to a destination that cannot be encoded.
    OpenBad,
    Write(u8, u16),
    Read(u8),
    Finish(u8),
    Release(u8),
    /// Answer a dial in flight now: success or failure.
    AnswerDial(u8, bool),
    /// The server kills a live connection.
    Kill(u8, Kill),
    /// EOF reaches the client at once.
    Eof(u8),
    /// Server verdict for new streams: accept, or refuse with this text.
    Verdict(Option<String>),
    /// Outage starts (dials fail, sessions die) or ends.
    Outage(bool),
    /// Dials fail with this probability (percent).
    DialFailures(u8),
    /// Time passes (ms) through every deadline.
    Advance(u32),
    /// Time jumps to the endpoint's deadline, plus this (ms).
    ToDeadline(u16),
    /// Time passes (ms) without timers, then one late `handle_timeout`.
    Jump(u32),
    /// `handle_timeout(now)` (an early call does nothing).
    Timeout,
    /// The next command passes a `now` this many ms before the latest.
    Stale(u16),
    /// The owner toggles reading and writing on readiness by itself.
    Auto(bool),
    /// Transmits pulled per connection, or round robin.
    PerConn(bool),
    Close,
}

/// Streams a random run keeps open at most.
const MAX_OPEN: usize = 32;

fn nth<T: Copy>(list: &[T], i: u8) -> Option<T> {
    (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
}

impl World {
    /// A world for random runs: strict timing off, a step budget per call.
    pub fn for_ops(cfg: PoolConfig, client: ClientConfig, seed: u64, epoch: Instant) -> World {
        let mut w = World::new(cfg, client, seed, epoch);
        w.strict_timing = false;
        w.step_budget = 5_000;
        w
    }

    pub fn apply(&mut self, op: &Op) {
        let streams = self.open_streams();
        let live: Vec<SessionSeq> = self.live().collect();
        match op {
            // Bounded, to keep a run cheap (each stream may have a session).
            Op::Open(n) if streams.len() < MAX_OPEN => {
                self.open(usize::from(*n));
            }
            Op::Open(_) => {}
            Op::OpenBad => self.open_bad(),
            Op::Write(i, n) => {
                if let Some(h) = nth(&streams, *i) {
                    self.write(h, usize::from(*n));
                }
            }
            Op::Read(i) => {
                if let Some(h) = nth(&streams, *i) {
                    self.read(h);
                }
            }
            Op::Finish(i) => {
                if let Some(h) = nth(&streams, *i) {
                    self.finish(h);
                }
            }
            Op::Release(i) => {
                if let Some(h) = nth(&streams, *i) {
                    self.release(h);
                }
            }
            Op::AnswerDial(i, ok) => {
                let dials: Vec<SessionSeq> = self.pending_dials().iter().map(|d| d.0).collect();
                if let Some(conn) = nth(&dials, *i) {
                    self.answer_dial(conn, *ok);
                }
            }
            Op::Kill(i, how) => {
                if let Some(conn) = nth(&live, *i) {
                    self.kill(conn, *how);
                }
            }
            Op::Eof(i) => {
                if let Some(conn) = nth(&live, *i) {
                    self.eof_now(conn);
                }
            }
            Op::Verdict(v) => self.server.refuse = v.clone(),
            Op::Outage(on) => self.outage(*on, None),
            Op::DialFailures(p) => self.server.dial_fail_rate = f64::from(*p % 101) / 100.0,
            Op::Advance(d) => {
                self.run_for(ms(u64::from(*d)));
            }
            Op::ToDeadline(late) => self.run_to_deadline(ms(u64::from(*late))),
            Op::Jump(d) => {
                let t = self.now + ms(u64::from(*d));
                self.jump_to(t);
            }
            Op::Timeout => self.timeout(),
            Op::Stale(d) => self.set_stale(ms(u64::from(*d))),
            Op::Auto(on) => self.auto = *on,
            Op::PerConn(on) => self.per_conn_transmit = *on,
            Op::Close => self.close(),
        }
    }

    /// The end of a random run: every dial answered, then the endpoint
    /// closed; nothing is left.
    pub fn finish_ops(&mut self) {
        self.settle_dials();
        self.close();
        self.settle_dials();
        assert_eq!(self.ep.stats().sessions, 0);
        assert!(self.conns.is_empty(), "connections left after close");
        for h in self.open_streams() {
            self.release(h);
        }
        assert_eq!(self.ep.stats().streams, 0);
    }
}
