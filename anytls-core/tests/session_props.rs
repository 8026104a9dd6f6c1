//! Property tests of sessions: a client and a server driven through random
//! interleavings of commands, time and transport behaviour in virtual time
//! (`common::Pair`), and single sessions fed arbitrary peer input.
//!
//! What the two-peer properties check, for every stream and direction A -> B:
//!
//! * `written` = the bytes A's session took (what `write` returned `Ok(n)`
//!   for), in order.
//! * At all times the PSH data A put on the wire is a prefix of `written` (the
//!   client's first bytes being the destination), and what B's application read
//!   is a prefix of that: nothing is lost in the middle, reordered, duplicated or
//!   invented.
//! * FIN is a full close: after B finishes a stream it drops what arrives, and a
//!   FIN from B clears what A had queued. So if B never finished the stream
//!   itself, B reads exactly `written` once everything has settled, whether or
//!   not A finished it (A's queued data goes out before its FIN). If B did finish
//!   it, only the prefix property holds.
//! * At most one FIN per stream and direction, only from a side that called
//!   `finish`, and no PSH after it (a received FIN is never echoed).
//! * A write returns `Blocked` exactly when the stream's or the session's send
//!   queue is at its cap, and otherwise takes exactly what fits under both
//!   caps; a blocked stream gets `StreamWritable` once there is room: the
//!   test's application only retries after that event, so a lost wake-up
//!   leaves data unwritten at the end and fails the run.
//! * Memory: receive buffers stay within their caps plus one frame, a buffer at
//!   its cap means `wants_read() == false`, and after a drain input is paused
//!   only by such a buffer; send queues stay within their caps.
//! * Neither session closes unless the test closes it (then exactly one
//!   `Closed`, last); after `handle_timeout(t)`, `poll_timeout()` is `None` or
//!   later than `t`; once the client has finished every stream, neither side
//!   holds one.
//!
//! The single-session properties feed a client (after a valid server
//! handshake) or a server (after a valid preamble and Settings) arbitrary
//! frames and bytes while its owner acts: no panic, the same caps, and either
//! the session stays open or its last event is its only `Closed`.
//!
//! Heartbeat timeouts are set far beyond the longest run (a peer whose
//! application stops reading for longer than the timeout does look dead), and no
//! single jump of virtual time reaches them.
//!
//! Case counts keep the file at a few seconds in a debug build.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_core::auth::{PasswordHash, encode_preamble};
use anytls_core::config::MIN_CONTROL_QUEUE;
use anytls_core::frame::{MAX_FRAME_DATA, encode_frame};
use anytls_core::session::SessionRole;
use anytls_core::settings::ClientSettings;
use anytls_core::{
    ClientConfig, Command, Event, Frame, FrameDecoder, FrameLimits, MAX_PSH_DATA, PaddingScheme,
    ServerConfig, Session, SessionError, SessionLimits, SessionSeq, SocksAddr, StreamError,
    StreamId,
};
use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Heartbeat timeouts: longer than any run, so heartbeats never close a session
/// whose peer only paused.
const HORIZON: Duration = Duration::from_secs(600);
/// The largest single jump of virtual time an operation makes.
const MAX_JUMP: Duration = Duration::from_secs(3);
/// Streams a run opens at most.
const MAX_OPENS: usize = 8;
/// The largest single write.
const MAX_WRITE: usize = 70_000;
/// Bounds on loops that must settle.
const MAX_STEPS: usize = 200_000;

/// Limits by number: 0 the defaults; 1 small stream caps under larger session
/// caps; 2 a small session receive cap under the stream caps, so that either
/// cap is the one that stops input, and the smallest control queue accepted.
/// Limits for the simulations. These properties check lossless delivery while
/// readers pause, so no stream is ever reset for falling behind
/// (`stream_recv_limit` out of reach: the session cap pauses input first);
/// resets are covered by `session_rules.rs`.
fn limits(which: u8) -> SessionLimits {
    let mut l = SessionLimits::default();
    l.stream_recv_limit = usize::MAX;
    match which {
        0 => {}
        1 => {
            l.stream_recv_buffer = 4096;
            l.session_recv_buffer = 16 * 1024;
            l.stream_send_buffer = 4096;
            l.session_send_buffer = 16 * 1024;
            l.control_queue = MIN_CONTROL_QUEUE;
            l.max_streams = 16;
        }
        3 => {
            // Whole-frame writes (stream cap over a frame's data) under a
            // session cap shared by the streams, between one and two frames.
            l.stream_send_buffer = 40_000;
            l.session_send_buffer = 48_000;
        }
        _ => {
            l.stream_recv_buffer = 16 * 1024;
            l.session_recv_buffer = 6000;
            l.stream_send_buffer = 16 * 1024;
            l.session_send_buffer = 8 * 1024;
            l.control_queue = MIN_CONTROL_QUEUE;
            l.max_streams = 16;
        }
    }
    l
}

/// Runs `$body` with `$s` bound to the client's (`$client`) or the server's
/// session of a `Pair`: their types differ, so the body is compiled for each.
macro_rules! on_side {
    ($pair:expr, $client:expr, |$s:ident| $body:expr) => {
        if $client {
            let $s = &mut $pair.client;
            $body
        } else {
            let $s = &mut $pair.server;
            $body
        }
    };
}

/// Cheap non-repeating filler (SplitMix64), so that any reordering or
/// duplication of stream bytes shows.
fn fill(seed: &mut u64, n: usize) -> Bytes {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(n);
    Bytes::from(v)
}

/// `a == b` without printing megabytes on failure.
fn assert_same(a: &[u8], b: &[u8], what: &str) {
    if a != b {
        let at = a.iter().zip(b).position(|(x, y)| x != y);
        panic!(
            "{what}: lengths {} vs {}, first difference at {at:?}",
            a.len(),
            b.len()
        );
    }
}

// ---------------------------------------------------------------------------
// Two sessions against each other

#[derive(Clone, Debug)]
enum At {
    Now,
    Before(u64),
    Deadline,
    AfterDeadline(u64),
    After(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Open,
    Write {
        client: bool,
        stream: Index,
        size: usize,
    },
    Finish {
        client: bool,
        stream: Index,
    },
    Heartbeat {
        client: bool,
        timeout: bool,
    },
    Advance {
        ms: u64,
    },
    Step {
        n: u8,
    },
    Timeout {
        client: bool,
        at: At,
    },
    Pause {
        client: bool,
    },
    Resume {
        client: bool,
    },
    Pipe {
        c2s: bool,
        max_piece: usize,
        latency_ms: u64,
    },
}

fn write_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0..200usize,
        3 => 0..5000usize,
        2 => 0..MAX_WRITE,
        // Sums that land exactly on the send caps.
        1 => prop_oneof![Just(1024usize), Just(2048), Just(4096)],
    ]
}

impl At {
    /// The time a `handle_timeout` call gets, with the session's deadline
    /// (if it is within one jump).
    fn time(&self, now: Instant, deadline: Option<Instant>) -> Instant {
        let deadline = deadline.filter(|t| *t <= now + MAX_JUMP);
        let ms = Duration::from_millis;
        match self {
            At::Now => now,
            At::Before(d) => now.checked_sub(ms(*d)).unwrap_or(now),
            At::Deadline => deadline.unwrap_or(now),
            At::AfterDeadline(d) => deadline.map_or(now, |t| t + ms(*d)),
            At::After(d) => now + ms(*d),
        }
    }
}

/// `handle_timeout(t)`; then the next deadline must be later than `t`.
fn handle_timeout_at<R: SessionRole>(s: &mut Session<R>, t: Instant) {
    s.handle_timeout(t);
    if let Some(next) = s.poll_timeout() {
        assert!(
            next > t,
            "poll_timeout {next:?} not after handle_timeout({t:?})"
        );
    }
}

fn max_piece() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 1..16usize, 4 => 1..2000usize]
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        Just(At::Now),
        (0..3000u64).prop_map(At::Before),
        Just(At::Deadline),
        (0..2000u64).prop_map(At::AfterDeadline),
        (0..3000u64).prop_map(At::After),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Open),
        6 => (any::<bool>(), any::<Index>(), write_size())
            .prop_map(|(client, stream, size)| Op::Write { client, stream, size }),
        1 => (any::<bool>(), any::<Index>()).prop_map(|(client, stream)| Op::Finish { client, stream }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(client, timeout)| Op::Heartbeat { client, timeout }),
        3 => (0..3000u64).prop_map(|ms| Op::Advance { ms }),
        3 => (1..20u8).prop_map(|n| Op::Step { n }),
        2 => (any::<bool>(), at()).prop_map(|(client, at)| Op::Timeout { client, at }),
        1 => any::<bool>().prop_map(|client| Op::Pause { client }),
        1 => any::<bool>().prop_map(|client| Op::Resume { client }),
        1 => (any::<bool>(), max_piece(), 0..50u64)
            .prop_map(|(c2s, max_piece, latency_ms)| Op::Pipe { c2s, max_piece, latency_ms }),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    seed: u64,
    echo: bool,
    /// See [`limits`].
    limits: u8,
    open_timeout_ms: u64,
    c2s: (usize, u64),
    s2c: (usize, u64),
    /// 0: stay open; 1: the client closes at the end; 2: the server does.
    close: u8,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<u64>(),
        any::<bool>(),
        0..4u8,
        prop_oneof![10..200u64, 200..3000u64],
        (max_piece(), 0..50u64),
        (max_piece(), 0..50u64),
        0..3u8,
    )
        .prop_map(
            |(seed, echo, limits, open_timeout_ms, c2s, s2c, close)| Setup {
                seed,
                echo,
                limits,
                open_timeout_ms,
                c2s,
                s2c,
                close,
            },
        )
}

/// One direction of one stream: what the sending side did.
#[derive(Default)]
struct Dir {
    /// Bytes the sender's session accepted, in order.
    written: Vec<u8>,
    /// Bytes the application still wants to write (after `Blocked`).
    backlog: VecDeque<Bytes>,
    /// A write returned `Blocked`; no retry before `StreamWritable`.
    blocked: bool,
    /// PSH data bytes of this direction on the wire (without the destination).
    wire: usize,
    /// Destination bytes still expected at the start of the client's PSH data.
    addr_left: usize,
    fin_on_wire: bool,
    /// The sender's `finish` returned `Ok`.
    explicit_fin: bool,
    /// Bytes of the receiving application's data checked so far.
    checked: usize,
}

#[derive(Default)]
struct Track {
    /// Client to server.
    c: Dir,
    /// Server to client.
    s: Dir,
}

fn dir(t: &mut Track, client: bool) -> &mut Dir {
    if client { &mut t.c } else { &mut t.s }
}

/// Incremental frame reader over a pipe's log.
struct Wire {
    pos: usize,
    buf: BytesMut,
    dec: FrameDecoder,
    /// The client's preamble is still to be skipped.
    preamble: bool,
}

impl Wire {
    fn new(preamble: bool) -> Wire {
        Wire {
            pos: 0,
            buf: BytesMut::new(),
            dec: FrameDecoder::new(FrameLimits::UNLIMITED),
            preamble,
        }
    }

    fn frames(&mut self, log: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(&log[self.pos..]);
        self.pos = log.len();
        if self.preamble {
            if self.buf.len() < 34 {
                return Vec::new();
            }
            let n = 34 + usize::from(u16::from_be_bytes([self.buf[32], self.buf[33]]));
            if self.buf.len() < n {
                return Vec::new();
            }
            let _ = self.buf.split_to(n);
            self.preamble = false;
        }
        let mut out = Vec::new();
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return out,
                Err(e) => panic!("a session sent undecodable bytes: {e}"),
            }
        }
    }
}

/// How many bytes of `d.written` are still in the sender's queue, as far as
/// the public API tells: 0 once the stream is gone or the peer's FIN dropped
/// the queue. Exact between drains (no shaped write in progress).
fn queued<R: SessionRole>(s: &mut Session<R>, id: StreamId, d: &Dir) -> usize {
    // An empty write has no effect; its result tells the stream's state.
    let live = match s.write(id, &[]) {
        Ok(_) => true,
        // Finished locally, FIN not sent yet: the queue still goes out.
        Err(StreamError::Closed) => d.explicit_fin,
        Err(_) => false,
    };
    if live { d.written.len() - d.wire } else { 0 }
}

/// Receive buffers of one side: within their caps plus one frame, a
/// session at its cap does not read, and after a drain input is paused only
/// by a buffer at its cap.
fn check_recv_bounds<R: SessionRole>(
    s: &Session<R>,
    client: bool,
    ids: &[StreamId],
    l: &SessionLimits,
    drained: bool,
) {
    let mut total = 0;
    let mut stream_full = false;
    let lone = s.stream_count() == 1;
    for id in ids {
        let n = s.readable_len(*id);
        // Only a lone stream pauses input for its own cap (with others, or
        // once its reader stalled, it may grow: the session cap below bounds
        // it).
        if n >= l.stream_recv_buffer && lone {
            stream_full = true;
        }
        total += n;
    }
    if drained && !s.is_closed() && !s.wants_read() {
        assert!(
            stream_full || total >= l.session_recv_buffer,
            "client={client}: input paused, buffers under their caps ({total} bytes)"
        );
    }
    assert!(
        total < l.session_recv_buffer + MAX_FRAME_DATA,
        "recv {total}"
    );
    if total >= l.session_recv_buffer {
        assert!(!s.wants_read(), "session over its cap, still reading");
    }
    assert!(s.stream_count() <= l.max_streams);
}

struct Sim {
    p: Pair,
    echo: bool,
    limits: SessionLimits,
    streams: BTreeMap<StreamId, Track>,
    c2s: Wire,
    s2c: Wire,
    seen_c: usize,
    seen_s: usize,
    fill_seed: u64,
    addr: Vec<u8>,
    may_close: bool,
}

impl Sim {
    fn new(st: &Setup, limits: SessionLimits) -> Sim {
        let mut ccfg = client_config();
        ccfg.limits = limits.clone();
        ccfg.heartbeat_timeout = Some(HORIZON);
        ccfg.stream_open_timeout = Duration::from_millis(st.open_timeout_ms);
        let mut scfg = server_config();
        scfg.limits = limits.clone();
        let mut p = Pair::with(st.seed, ccfg, scfg);
        p.sapp.echo = st.echo;
        p.c2s.max_piece = st.c2s.0;
        p.c2s.latency = Duration::from_millis(st.c2s.1);
        p.s2c.max_piece = st.s2c.0;
        p.s2c.latency = Duration::from_millis(st.s2c.1);
        let mut addr = Vec::new();
        dest().encode(&mut addr).unwrap();
        Sim {
            p,
            echo: st.echo,
            limits,
            streams: BTreeMap::new(),
            c2s: Wire::new(true),
            s2c: Wire::new(false),
            seen_c: 0,
            seen_s: 0,
            fill_seed: st.seed ^ 0x5555,
            addr,
            may_close: false,
        }
    }

    /// Whether the test knows every write of this side (the echo server's
    /// application writes on its own).
    fn knows_writes(&self, client: bool) -> bool {
        client || !self.echo
    }

    /// Checks everything that happened since the last call.
    fn sync(&mut self) {
        self.scan_wire();
        self.scan_events();
        self.scan_received();
        self.check_bounds(false);
        if !self.may_close {
            assert!(!self.p.client.is_closed(), "client session closed");
            assert!(!self.p.server.is_closed(), "server session closed");
        }
    }

    /// `sync` right after a drain: the control queues are empty, so input may
    /// be paused only by a receive buffer at its cap.
    fn sync_drained(&mut self) {
        self.sync();
        self.check_bounds(true);
    }

    fn scan_wire(&mut self) {
        let frames = self.c2s.frames(&self.p.c2s.log);
        for f in frames {
            self.on_wire_frame(true, f);
        }
        let frames = self.s2c.frames(&self.p.s2c.log);
        for f in frames {
            self.on_wire_frame(false, f);
        }
    }

    fn on_wire_frame(&mut self, client: bool, f: Frame) {
        let id = f.stream_id;
        match f.cmd {
            Command::Syn => {
                assert!(client, "SYN from the server");
                assert!(self.streams.contains_key(&id), "SYN for {id} never opened");
                return;
            }
            Command::Psh | Command::Fin => {}
            _ => return,
        }
        let knows = self.knows_writes(client);
        let t = self
            .streams
            .get_mut(&id)
            .unwrap_or_else(|| panic!("{:?} for stream {id} never opened", f.cmd));
        let d = dir(t, client);
        assert!(!d.fin_on_wire, "{:?} on {id} after FIN", f.cmd);
        if f.cmd == Command::Fin {
            assert!(d.explicit_fin, "FIN on {id} without finish (echoed FIN?)");
            d.fin_on_wire = true;
            return;
        }
        let mut data = &f.data[..];
        if d.addr_left > 0 {
            let n = d.addr_left.min(data.len());
            let from = self.addr.len() - d.addr_left;
            assert_same(&data[..n], &self.addr[from..from + n], "destination");
            d.addr_left -= n;
            data = &data[n..];
        }
        let at = d.wire;
        let src: &[u8] = if knows {
            &d.written
        } else {
            // The echo server writes back what its application read.
            self.p.sapp.received.get(&id).map_or(&[], Vec::as_slice)
        };
        assert!(
            src.len() >= at + data.len(),
            "stream {id}: more data on the wire than was written"
        );
        assert_same(data, &src[at..at + data.len()], "wire data vs written");
        d.wire += data.len();
    }

    fn scan_events(&mut self) {
        for client in [true, false] {
            loop {
                let app = if client { &self.p.capp } else { &self.p.sapp };
                let seen = if client { self.seen_c } else { self.seen_s };
                let Some(ev) = app.events.get(seen).cloned() else {
                    break;
                };
                if client {
                    self.seen_c += 1;
                } else {
                    self.seen_s += 1;
                }
                match ev {
                    Event::Closed { reason } => {
                        assert!(self.may_close, "client={client} closed: {reason}")
                    }
                    Event::StreamRefused { id, reason } => {
                        panic!("client={client}: stream {id} refused: {reason}")
                    }
                    Event::StreamWritable { id } => {
                        if let Some(t) = self.streams.get_mut(&id) {
                            dir(t, client).blocked = false;
                            self.flush_backlog(client, id);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn scan_received(&mut self) {
        for (id, t) in &mut self.streams {
            if let Some(r) = self.p.sapp.received.get(id) {
                let d = &mut t.c;
                assert!(r.len() <= d.wire, "server read more than was sent on {id}");
                assert_same(
                    &r[d.checked..],
                    &d.written[d.checked..r.len()],
                    "server's data",
                );
                d.checked = r.len();
            }
            if let Some(r) = self.p.capp.received.get(id) {
                let d = &mut t.s;
                assert!(r.len() <= d.wire, "client read more than was sent on {id}");
                let src: &[u8] = if self.echo {
                    self.p.sapp.received.get(id).map_or(&[], Vec::as_slice)
                } else {
                    &d.written
                };
                assert_same(&r[d.checked..], &src[d.checked..r.len()], "client's data");
                d.checked = r.len();
            }
        }
    }

    /// Send queues of one side: per stream and in all.
    fn queues(&mut self, client: bool) -> (BTreeMap<StreamId, usize>, usize) {
        let mut per = BTreeMap::new();
        let mut total = 0;
        for (id, t) in &self.streams {
            let d = if client { &t.c } else { &t.s };
            let q = on_side!(self.p, client, |s| queued(s, *id, d));
            per.insert(*id, q);
            total += q;
        }
        (per, total)
    }

    fn check_bounds(&mut self, drained: bool) {
        let l = self.limits.clone();
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for client in [true, false] {
            on_side!(self.p, client, |s| check_recv_bounds(
                s, client, &ids, &l, drained
            ));
            if self.knows_writes(client) {
                // Writes take only what fits: the caps are never exceeded.
                let (per, total) = self.queues(client);
                for (id, q) in per {
                    assert!(q <= l.stream_send_buffer, "stream {id} send {q}");
                }
                assert!(total <= l.session_send_buffer, "send {total}");
            }
        }
    }

    /// The application writes what it can of its backlog (only after
    /// `StreamWritable` if a write returned `Blocked`).
    fn flush_backlog(&mut self, client: bool, id: StreamId) {
        self.scan_wire();
        let knows = self.knows_writes(client);
        let (cap, scap) = (
            self.limits.stream_send_buffer,
            self.limits.session_send_buffer,
        );
        loop {
            let Some(t) = self.streams.get(&id) else {
                return;
            };
            let d = if client { &t.c } else { &t.s };
            if d.blocked {
                return;
            }
            let Some(b) = d.backlog.front().cloned() else {
                return;
            };
            // What fits under both send caps (when the test knows the queues):
            // a write that the stream's own cap cuts is taken in whole frames'
            // worth (`MAX_PSH_DATA`) when that cap holds a frame.
            let room = knows.then(|| {
                let (per, total) = self.queues(client);
                let (own, shared) = (cap.saturating_sub(per[&id]), scap.saturating_sub(total));
                let room = own.min(shared);
                let whole = cap >= MAX_PSH_DATA && own <= shared;
                match b.len() > room && b.len() >= MAX_PSH_DATA && whole {
                    true => room / MAX_PSH_DATA * MAX_PSH_DATA,
                    false => room,
                }
            });
            let r = on_side!(self.p, client, |s| s.write(id, &b));
            let d = dir(self.streams.get_mut(&id).unwrap(), client);
            match r {
                Ok(n) => {
                    assert_ne!(room, Some(0), "write accepted over the send caps");
                    if let Some(room) = room {
                        assert_eq!(n, b.len().min(room), "a write takes what fits");
                    }
                    d.written.extend_from_slice(&b[..n]);
                    if n == b.len() {
                        d.backlog.pop_front();
                    } else {
                        // The rest waits: the next write reports `Blocked`.
                        d.backlog[0] = b.slice(n..);
                    }
                }
                Err(StreamError::Blocked) => {
                    assert!(
                        room.is_none_or(|r| r == 0),
                        "write blocked under the send caps"
                    );
                    d.blocked = true;
                    return;
                }
                Err(_) => {
                    // The stream is closed: the application gives up.
                    d.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Streams a side may still write to or finish.
    fn candidates(&self, client: bool) -> Vec<StreamId> {
        self.streams
            .iter()
            .filter(|(id, t)| {
                let d = if client { &t.c } else { &t.s };
                !d.explicit_fin && (client || self.p.sapp.opened.iter().any(|(o, _)| o == *id))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn resume(&mut self, client: bool) {
        // The server's application knows the streams it was told about (it
        // could read one whose StreamOpened is still queued, and would then
        // accept a stream it already released).
        let ids: Vec<StreamId> = if client {
            self.streams.keys().copied().collect()
        } else {
            self.p.sapp.opened.iter().map(|(id, _)| *id).collect()
        };
        if client {
            self.p.capp.paused = false;
            for id in ids {
                self.p.capp.read_all(&mut self.p.client, id);
            }
        } else {
            self.p.sapp.paused = false;
            for id in ids {
                self.p.sapp.read_all(&mut self.p.server, id);
            }
        }
    }

    /// One step of the simulation, if it does not jump further than `MAX_JUMP`.
    fn step(&mut self) {
        if self
            .p
            .next_due()
            .is_some_and(|t| t <= self.p.now + MAX_JUMP)
        {
            self.p.step();
            self.sync();
        } else {
            self.p.drain();
            self.sync_drained();
        }
    }

    /// Advances virtual time by `d`, checking after every step.
    fn advance(&mut self, d: Duration) {
        let until = self.p.now + d;
        for _ in 0..MAX_STEPS {
            self.p.drain();
            self.sync_drained();
            match self.p.next_due() {
                Some(t) if t <= until => {
                    self.p.step();
                    self.sync();
                }
                _ => {
                    self.p.now = self.p.now.max(until);
                    self.p.drain();
                    self.sync_drained();
                    return;
                }
            }
        }
        panic!("virtual time does not advance (livelock)");
    }

    /// Steps until nothing is left to happen.
    fn settle(&mut self) {
        for _ in 0..MAX_STEPS {
            let more = self.p.step();
            if !more {
                // `step` drained and found nothing to do.
                self.sync_drained();
                return;
            }
            self.sync();
        }
        panic!("simulation does not settle (livelock)");
    }

    fn open(&mut self) -> Option<StreamId> {
        if self.streams.len() >= MAX_OPENS {
            return None;
        }
        let id = self.p.open();
        let t = self.streams.entry(id).or_default();
        t.c.addr_left = self.addr.len();
        Some(id)
    }

    /// The application writes `size` new bytes (after its backlog).
    fn write(&mut self, client: bool, id: StreamId, size: usize) {
        if size == 0 {
            return;
        }
        let data = fill(&mut self.fill_seed, size);
        dir(self.streams.get_mut(&id).unwrap(), client)
            .backlog
            .push_back(data);
        self.flush_backlog(client, id);
    }

    fn finish(&mut self, client: bool, id: StreamId) {
        let ok = on_side!(self.p, client, |s| s.finish(id).is_ok());
        let d = dir(self.streams.get_mut(&id).unwrap(), client);
        // What was not written yet never will be.
        d.backlog.clear();
        d.explicit_fin |= ok;
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Open => {
                self.open();
            }
            Op::Write {
                client,
                stream,
                size,
            } => {
                // The echo server's application writes on its own.
                let client = *client || self.echo;
                let ids = self.candidates(client);
                if ids.is_empty() || *size == 0 {
                    return;
                }
                self.write(client, ids[stream.index(ids.len())], *size);
            }
            Op::Finish { client, stream } => {
                let ids = self.candidates(*client);
                if ids.is_empty() {
                    return;
                }
                self.finish(*client, ids[stream.index(ids.len())]);
            }
            Op::Heartbeat { client, timeout } => {
                let now = self.p.now;
                on_side!(self.p, *client, |s| s
                    .send_heartbeat(now, timeout.then_some(HORIZON)));
            }
            Op::Advance { ms } => self.advance(Duration::from_millis(*ms)),
            Op::Step { n } => {
                for _ in 0..*n {
                    self.step();
                }
            }
            Op::Timeout { client, at } => {
                let now = self.p.now;
                let t = on_side!(self.p, *client, |s| {
                    let t = at.time(now, s.poll_timeout());
                    handle_timeout_at(s, t);
                    t
                });
                self.p.now = now.max(t);
            }
            Op::Pause { client } => {
                if *client {
                    self.p.capp.paused = true;
                } else {
                    self.p.sapp.paused = true;
                }
            }
            Op::Resume { client } => self.resume(*client),
            Op::Pipe {
                c2s,
                max_piece,
                latency_ms,
            } => {
                let pipe = if *c2s {
                    &mut self.p.c2s
                } else {
                    &mut self.p.s2c
                };
                pipe.max_piece = *max_piece;
                pipe.latency = Duration::from_millis(*latency_ms);
            }
        }
        self.sync();
    }

    /// Resumes both applications, lets everything settle and checks the
    /// end-to-end properties.
    fn finish_run(&mut self, close: u8) {
        assert!(self.p.elapsed() < HORIZON / 2, "run too long for HORIZON");
        self.resume(true);
        self.resume(false);
        self.settle();
        assert!(
            self.p.elapsed() < HORIZON,
            "a heartbeat horizon was reached"
        );

        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in &ids {
            let t = &self.streams[id];
            let rs = self.p.sapp.received.get(id).map_or(&[][..], Vec::as_slice);
            let rc = self.p.capp.received.get(id).map_or(&[][..], Vec::as_slice);
            if !t.s.explicit_fin {
                assert_same(rs, &t.c.written, "server did not get all the client wrote");
            }
            if self.echo {
                if !t.c.explicit_fin && !t.s.explicit_fin {
                    assert_same(rc, rs, "client did not get the whole echo");
                }
            } else if !t.c.explicit_fin {
                assert_same(rc, &t.s.written, "client did not get all the server wrote");
            }
            for client in [true, false] {
                let pending = !dir(self.streams.get_mut(id).unwrap(), client)
                    .backlog
                    .is_empty();
                let (writable, unread) = on_side!(self.p, client, |s| (
                    s.write(*id, &[]).is_ok(),
                    s.readable_len(*id)
                ));
                assert!(
                    !(pending && writable),
                    "client={client} stream {id}: Blocked, room now, no StreamWritable"
                );
                assert_eq!(unread, 0, "unread data");
            }
        }

        // The client releases every stream: nothing stays behind on either side.
        for id in &ids {
            if self.p.client.finish(*id).is_ok() {
                self.streams.get_mut(id).unwrap().c.explicit_fin = true;
            }
        }
        self.settle();
        assert_eq!(self.p.client.stream_count(), 0, "client streams leaked");
        assert_eq!(self.p.server.stream_count(), 0, "server streams leaked");

        if close == 0 {
            return;
        }
        // Explicit close: the closing side ends its transport.
        self.may_close = true;
        let now = self.p.now;
        if close == 1 {
            self.p.client.close(now);
            self.p.c2s.eof = true;
        } else {
            self.p.server.close(now);
            self.p.s2c.eof = true;
        }
        self.settle();
        let (mine, theirs) = if close == 1 {
            (&self.p.capp, &self.p.sapp)
        } else {
            (&self.p.sapp, &self.p.capp)
        };
        for (app, reason) in [
            (mine, SessionError::LocallyClosed),
            (theirs, SessionError::PeerEof),
        ] {
            let closed: Vec<&Event> = app
                .events
                .iter()
                .filter(|e| matches!(e, Event::Closed { .. }))
                .collect();
            assert_eq!(closed, vec![&Event::Closed { reason }]);
            assert!(matches!(app.events.last(), Some(Event::Closed { .. })));
        }
        assert!(self.p.client.is_closed() && self.p.server.is_closed());
        assert_eq!(self.p.client.poll_timeout(), None);
        assert_eq!(self.p.server.poll_timeout(), None);
    }
}

fn run(st: &Setup, limits: SessionLimits, ops: &[Op]) {
    let mut sim = Sim::new(st, limits);
    // The handshake: Settings reach the server before its deadline.
    sim.advance(Duration::from_millis(200));
    for op in ops {
        sim.apply(op);
    }
    sim.finish_run(st.close);
}

proptest! {
    #![proptest_config(config(192))]

    /// Random interleavings of streams, writes, finishes, heartbeats, time,
    /// transport and application pauses: no panic, no lost or reordered byte,
    /// caps hold, no unexpected close.
    #[test]
    fn random_interleavings_keep_streams_intact(
        st in setup(),
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        run(&st, limits(st.limits), &ops);
    }
}

fn backpressure_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Open),
        6 => (any::<bool>(), any::<Index>(), prop_oneof![
            3 => 1000..MAX_WRITE,
            // Exactly at the caps of `limits(1)`.
            1 => prop_oneof![Just(2048usize), Just(4096), Just(8192)],
        ])
            .prop_map(|(client, stream, size)| Op::Write { client, stream, size }),
        1 => (any::<bool>(), any::<Index>())
            .prop_map(|(client, stream)| Op::Finish { client, stream }),
        3 => (0..500u64).prop_map(|ms| Op::Advance { ms }),
        2 => (1..20u8).prop_map(|n| Op::Step { n }),
        1 => any::<bool>().prop_map(|client| Op::Pause { client }),
        1 => any::<bool>().prop_map(|client| Op::Resume { client }),
    ]
}

proptest! {
    #![proptest_config(config(64))]

    /// Small caps and large writes while one application stops reading: the
    /// receiving session stops taking input, senders get `Blocked` and later
    /// `StreamWritable`, and every byte still arrives.
    #[test]
    fn backpressure_with_a_paused_reader(
        st in setup(),
        paused_client in any::<bool>(),
        ops in proptest::collection::vec(backpressure_op(), 4..32),
    ) {
        let mut sim = Sim::new(&st, limits(1 + st.limits % 2));
        sim.advance(Duration::from_millis(200));
        sim.apply(&Op::Open);
        sim.apply(&Op::Open);
        sim.apply(&Op::Pause { client: paused_client });
        for op in &ops {
            sim.apply(op);
        }
        sim.finish_run(st.close);
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// A paused application releases streams the peer wrote to and finished,
    /// without reading them: the buffered data is dropped and its room given
    /// back, so later streams still flow.
    #[test]
    fn releasing_unread_finished_streams_frees_their_buffers(
        st in setup(),
        reader_is_client in any::<bool>(),
        sizes in proptest::collection::vec(1..4000usize, 1..MAX_OPENS),
    ) {
        // Both sides write directly.
        let st = Setup { echo: false, ..st };
        let mut sim = Sim::new(&st, limits(1 + st.limits % 2));
        sim.advance(Duration::from_millis(200));
        sim.apply(&Op::Pause { client: reader_is_client });
        let writer = !reader_is_client;
        for size in sizes {
            let id = sim.open().unwrap();
            sim.advance(Duration::from_millis(200));
            sim.write(writer, id, size);
            sim.finish(writer, id);
            sim.advance(Duration::from_secs(1));
            // The data and the FIN are in the reader's buffers; release.
            sim.finish(reader_is_client, id);
            sim.advance(Duration::from_millis(200));
        }
        // A last stream: data still flows both ways.
        sim.apply(&Op::Resume { client: reader_is_client });
        if let Some(id) = sim.open() {
            sim.advance(Duration::from_millis(200));
            sim.write(true, id, 3000);
            sim.write(false, id, 3000);
        }
        sim.finish_run(st.close);
    }
}

/// Found by `backpressure_with_a_paused_reader`: a peer FIN that drops a
/// stream's send queue makes room on the session's send cap, so streams
/// blocked on that cap must get `StreamWritable` (nothing else would wake
/// them once their own queues are empty).
#[test]
fn peer_fin_dropping_a_queue_wakes_blocked_writers() {
    let mut ccfg = client_config();
    // Input pauses after b's frame (20 000 bytes of data, one frame), with
    // a's FIN, sent right behind that frame, in the same read.
    ccfg.limits = limits(1);
    ccfg.limits.session_recv_buffer = 12 * 1024;
    // One stream's queue fills the session's send cap.
    ccfg.limits.session_send_buffer = ccfg.limits.stream_send_buffer;
    let mut p = Pair::with(1, ccfg, server_config());
    p.s2c.max_piece = 1 << 20;
    p.sapp.echo = false;
    let a = p.open();
    let b = p.open();
    p.drive();
    // The client's application stops reading; the server fills b, then
    // finishes a: the FIN waits behind b's data.
    p.capp.paused = true;
    assert_eq!(p.server.write(b, &[7u8; 20_000]), Ok(20_000));
    p.server.finish(a).unwrap();
    p.drive();
    assert!(!p.client.wants_read());
    // The application acts in one go: a write fills the session's send cap,
    // b is blocked, then reading b lets the FIN in, which drops a's queue.
    assert_eq!(p.client.write(a, &[1u8; 20_000]), Ok(4096));
    assert_eq!(p.client.write(b, b"x"), Err(StreamError::Blocked));
    while let Ok(Some(_)) = p.client.read(p.now, b) {}
    // Before any transmit (which would free room by sending a's queue): the
    // FIN made the room.
    let events: Vec<Event> = std::iter::from_fn(|| p.client.poll_event()).collect();
    assert!(events.contains(&Event::StreamFinished { id: a }));
    assert!(events.contains(&Event::StreamWritable { id: b }));
    assert!(!events.contains(&Event::StreamWritable { id: a }));
    assert_eq!(p.client.write(b, b"x"), Ok(1));
}

// ---------------------------------------------------------------------------
// One session fed arbitrary peer input

#[derive(Clone, Debug)]
enum Payload {
    Empty,
    Fill(usize),
    Text(String),
    /// A valid destination followed by `extra` bytes.
    Addr(usize),
}

#[derive(Clone, Debug)]
enum Chunk {
    Frame {
        cmd: u8,
        sid: u32,
        data: Payload,
    },
    /// A header announcing `announced` bytes, followed by `actual` bytes.
    Lying {
        cmd: u8,
        sid: u32,
        announced: u16,
        actual: usize,
    },
    Raw(usize),
    /// SYN, then PSH with a valid destination and `extra` bytes.
    Open {
        sid: u32,
        extra: usize,
    },
}

fn text() -> impl Strategy<Value = String> {
    let scheme_line =
        "(stop=[0-9]{1,3}|[0-9]{1,2}=(c|[0-9]{1,5}-[0-9]{1,5})(,(c|[0-9]{1,5}-[0-9]{1,5})){0,3})";
    prop_oneof![
        "[ -~\n]{0,40}",
        Just("v=2".to_string()),
        Just("v=1".to_string()),
        Just("v=x\nv=3".to_string()),
        proptest::collection::vec(scheme_line, 1..6).prop_map(|l| l.join("\n")),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        3 => Just(Payload::Empty),
        3 => (0..64usize).prop_map(Payload::Fill),
        1 => (0..5000usize).prop_map(Payload::Fill),
        1 => (60_000..=MAX_FRAME_DATA).prop_map(Payload::Fill),
        3 => text().prop_map(Payload::Text),
        2 => (0..100usize).prop_map(Payload::Addr),
    ]
}

/// Known commands, Alert (fatal with data) rarely, and any value.
fn cmd() -> impl Strategy<Value = u8> {
    prop_oneof![
        40 => (0u8..10).prop_map(|c| if c >= 5 { c + 1 } else { c }),
        1 => Just(5u8),
        6 => any::<u8>(),
    ]
}

fn sid() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..4, 1 => any::<u32>()]
}

fn data_len() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1..2000usize, 1 => 1..=MAX_FRAME_DATA]
}

fn chunk() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        16 => (cmd(), sid(), payload()).prop_map(|(cmd, sid, data)| Chunk::Frame { cmd, sid, data }),
        // A server-side stream: SYN, then the destination with some data.
        6 => (1..6u32, 0..300usize).prop_map(|(sid, extra)| Chunk::Open { sid, extra }),
        8 => (1..6u32, data_len()).prop_map(|(sid, n)| Chunk::Frame {
            cmd: 2,
            sid,
            data: Payload::Fill(n),
        }),
        2 => (1..6u32).prop_map(|sid| Chunk::Frame { cmd: 3, sid, data: Payload::Empty }),
        1 => (cmd(), sid(), any::<u16>(), 0..200usize)
            .prop_map(|(cmd, sid, announced, actual)| Chunk::Lying { cmd, sid, announced, actual }),
        1 => (0..300usize).prop_map(Chunk::Raw),
    ]
}

fn encode_chunks(chunks: &[Chunk], seed: &mut u64, out: &mut Vec<u8>, sids: &mut BTreeSet<u32>) {
    for c in chunks {
        match c {
            Chunk::Frame { cmd, sid, data } => {
                let data: Bytes = match data {
                    Payload::Empty => Bytes::new(),
                    Payload::Fill(n) => fill(seed, *n),
                    Payload::Text(t) => Bytes::from(t.clone().into_bytes()),
                    Payload::Addr(extra) => {
                        let mut v = Vec::new();
                        SocksAddr::domain("fuzz.example", 80)
                            .encode(&mut v)
                            .unwrap();
                        v.extend_from_slice(&fill(seed, *extra));
                        Bytes::from(v)
                    }
                };
                encode_frame(out, Command::from_u8(*cmd), StreamId(*sid), &data).unwrap();
                sids.insert(*sid);
            }
            Chunk::Lying {
                cmd,
                sid,
                announced,
                actual,
            } => {
                out.push(*cmd);
                out.extend_from_slice(&sid.to_be_bytes());
                out.extend_from_slice(&announced.to_be_bytes());
                out.extend_from_slice(&fill(seed, *actual));
                sids.insert(*sid);
            }
            Chunk::Raw(n) => out.extend_from_slice(&fill(seed, *n)),
            Chunk::Open { sid, extra } => {
                encode_frame(out, Command::Syn, StreamId(*sid), b"").unwrap();
                let mut v = Vec::new();
                SocksAddr::domain("fuzz.example", 80)
                    .encode(&mut v)
                    .unwrap();
                v.extend_from_slice(&fill(seed, *extra));
                encode_frame(out, Command::Psh, StreamId(*sid), &v).unwrap();
                sids.insert(*sid);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum FOp {
    Feed(usize),
    Open,
    Write(Index, usize),
    ReadAll,
    Finish(Index),
    Heartbeat(bool),
    Timeout(At),
}

fn fop() -> impl Strategy<Value = FOp> {
    prop_oneof![
        8 => (1..4096usize).prop_map(FOp::Feed),
        1 => Just(FOp::Open),
        2 => (any::<Index>(), 0..20_000usize).prop_map(|(i, n)| FOp::Write(i, n)),
        2 => Just(FOp::ReadAll),
        1 => any::<Index>().prop_map(FOp::Finish),
        1 => any::<bool>().prop_map(FOp::Heartbeat),
        2 => at().prop_map(FOp::Timeout),
    ]
}

/// The owner of one session fed arbitrary input.
struct Owner {
    now: Instant,
    closed: bool,
    /// Streams the owner knows (opened, announced, or named by the input).
    ids: BTreeSet<StreamId>,
    rng: ChaCha8Rng,
    limits: SessionLimits,
    fill_seed: u64,
}

impl Owner {
    /// Drains transmits and events; checks the event contract and the caps.
    fn drain<R: SessionRole>(&mut self, s: &mut Session<R>)
    where
        Session<R>: RoleOps,
    {
        let mut out = BytesMut::new();
        for _ in 0..1000 {
            let mut progress = false;
            for _ in 0..100_000 {
                out.clear();
                match s.poll_transmit(self.now, &mut out) {
                    Some(t) => {
                        assert!(!self.closed, "transmit after Closed");
                        assert_eq!(t.len, out.len());
                        progress = true;
                    }
                    None => break,
                }
            }
            while let Some(ev) = s.poll_event() {
                assert!(!self.closed, "event after Closed: {ev:?}");
                progress = true;
                match ev {
                    Event::Closed { .. } => self.closed = true,
                    Event::StreamOpened { id, .. } => {
                        self.ids.insert(id);
                        let verdict = if self.rng.next_u32() % 4 == 0 {
                            Err("refused by owner".into())
                        } else {
                            Ok(())
                        };
                        // Fails only if the session closed meanwhile.
                        let _ = s.answer(id, verdict);
                    }
                    Event::StreamReadable { id } if self.rng.next_u32() % 2 == 0 => {
                        self.read(s, id)
                    }
                    _ => {}
                }
            }
            if !progress {
                break;
            }
        }
        assert_eq!(s.is_closed(), self.closed, "is_closed() vs Event::Closed");
        self.check_bounds(s);
    }

    fn read<R: SessionRole>(&mut self, s: &mut Session<R>, id: StreamId) {
        for _ in 0..10_000 {
            match s.read(self.now, id) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = s.finish(id);
                    return;
                }
                Err(_) => return,
            }
        }
        panic!("reading stream {id} does not end");
    }

    fn read_all<R: SessionRole>(&mut self, s: &mut Session<R>) {
        let ids: Vec<StreamId> = self.ids.iter().copied().collect();
        for id in ids {
            self.read(s, id);
        }
    }

    fn check_bounds<R: SessionRole>(&self, s: &Session<R>) {
        let l = &self.limits;
        let mut total = 0;
        for id in &self.ids {
            // A lone stream over its cap pauses input until its reader stalls
            // for `stalled_stream_timeout`; with others it may grow: streams
            // are bounded by the session cap below.
            total += s.readable_len(*id);
        }
        assert!(total < l.session_recv_buffer + MAX_FRAME_DATA);
        if total >= l.session_recv_buffer {
            assert!(!s.wants_read());
        }
        assert!(s.stream_count() <= l.max_streams);
        if self.closed {
            assert!(!s.wants_read());
            assert_eq!(s.poll_timeout(), None);
            assert_eq!(s.stream_count(), 0);
        }
    }

    fn apply<R: SessionRole>(&mut self, s: &mut Session<R>, op: &FOp, rest: &mut &[u8])
    where
        Session<R>: RoleOps,
    {
        match op {
            FOp::Feed(n) => {
                if !rest.is_empty() && s.wants_read() {
                    let (piece, tail) = rest.split_at((*n).min(rest.len()));
                    *rest = tail;
                    s.handle_input(self.now, BytesMut::from(piece));
                }
            }
            FOp::Open => {
                if let Some(Ok(id)) = s.try_open(self.now) {
                    self.ids.insert(id);
                }
            }
            FOp::Write(i, n) => {
                let ids: Vec<StreamId> = self.ids.iter().copied().collect();
                if !ids.is_empty() {
                    let data = fill(&mut self.fill_seed, *n);
                    let _ = s.write(ids[i.index(ids.len())], &data);
                }
            }
            FOp::ReadAll => self.read_all(s),
            FOp::Finish(i) => {
                let ids: Vec<StreamId> = self.ids.iter().copied().collect();
                if !ids.is_empty() {
                    let _ = s.finish(ids[i.index(ids.len())]);
                }
            }
            FOp::Heartbeat(timeout) => {
                s.send_heartbeat(self.now, timeout.then_some(Duration::from_secs(5)));
            }
            FOp::Timeout(at) => {
                let t = at.time(self.now, s.poll_timeout());
                self.now = self.now.max(t);
                handle_timeout_at(s, t);
            }
        }
        self.drain(s);
    }

    /// Runs the operations, then feeds the rest of the input, then EOF.
    fn run<R: SessionRole>(&mut self, s: &mut Session<R>, input: &[u8], ops: &[FOp])
    where
        Session<R>: RoleOps,
    {
        let mut rest = input;
        self.drain(s);
        for op in ops {
            self.apply(s, op, &mut rest);
        }
        for _ in 0..100_000 {
            if rest.is_empty() || self.closed {
                break;
            }
            if !s.wants_read() {
                // The owner catches up; then input must be taken again.
                self.read_all(s);
                self.drain(s);
                assert!(
                    s.wants_read() || self.closed,
                    "input stays paused after the owner read everything"
                );
                continue;
            }
            let n = 1 + self.rng.next_u32() as usize % 8192;
            self.apply(s, &FOp::Feed(n), &mut rest);
        }
        assert!(rest.is_empty() || self.closed, "input not consumed");
        s.handle_eof(self.now);
        self.drain(s);
        // Frames buffered behind a paused reader are processed first (an EOF
        // never discards what arrived before it): the owner catches up.
        for _ in 0..1000 {
            if self.closed {
                break;
            }
            self.read_all(s);
            self.drain(s);
        }
        assert!(self.closed && s.is_closed(), "EOF must close the session");
        // After Closed everything is a no-op.
        let later = self.now + Duration::from_secs(1);
        s.handle_input(later, BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0][..]));
        s.handle_timeout(later);
        s.handle_eof(later);
        s.send_heartbeat(later, None);
        s.close(later);
        assert!(s.try_open(later).is_none_or(|r| r.is_err()));
        for id in self.ids.clone() {
            assert!(s.write(id, b"x").is_err());
        }
        let mut out = BytesMut::new();
        assert!(s.poll_transmit(later, &mut out).is_none());
        assert_eq!(s.poll_event(), None, "event after Closed");
        assert!(s.is_closed());
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A client that completed its handshake, then gets arbitrary server input
    /// while its owner opens, writes, reads, finishes and lets time pass.
    #[test]
    fn client_survives_arbitrary_server_input(
        seed in any::<u64>(),
        which in 0..3u8,
        update_scheme in any::<bool>(),
        chunks in proptest::collection::vec(chunk(), 0..24),
        ops in proptest::collection::vec(fop(), 0..48),
    ) {
        let epoch = epoch();
        let limits = limits(which);
        let mut cfg = ClientConfig::new(PASSWORD);
        cfg.limits = limits.clone();
        cfg.heartbeat_timeout = Some(Duration::from_secs(5));
        let mut s = Session::client(
            Arc::new(cfg),
            SessionSeq(1),
            Arc::new(PaddingScheme::default_scheme()),
            [3; 32],
            epoch,
        )
        .expect("valid config");
        let mut owner = Owner {
            now: epoch,
            closed: false,
            ids: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            limits,
            fill_seed: seed,
        };
        owner.ids.insert(s.open_stream(epoch, &dest()).unwrap());
        // A valid server handshake: ServerSettings, maybe a new padding
        // scheme, SYNACK for stream 1.
        let mut input = Vec::new();
        encode_frame(&mut input, Command::ServerSettings, StreamId(0), b"v=2").unwrap();
        if update_scheme {
            let scheme = b"stop=3\n0=10-20\n1=50-60,c,70-80\n2=1-65535";
            encode_frame(&mut input, Command::UpdatePaddingScheme, StreamId(0), scheme).unwrap();
        }
        encode_frame(&mut input, Command::SynAck, StreamId(1), b"").unwrap();
        let handshake = input.len();
        let mut sids = BTreeSet::new();
        let mut fill_seed = seed ^ 1;
        encode_chunks(&chunks, &mut fill_seed, &mut input, &mut sids);
        owner.ids.extend(sids.into_iter().map(StreamId));
        owner.drain(&mut s);
        s.handle_input(epoch, BytesMut::from(&input[..handshake]));
        owner.drain(&mut s);
        prop_assert!(!owner.closed, "the valid handshake closed the client");
        prop_assert_eq!(s.peer_version(), 2);
        owner.run(&mut s, &input[handshake..], &ops);
    }

    /// A server that got a valid preamble and Settings, then arbitrary client
    /// input while its owner accepts, refuses, reads, writes and lets time pass.
    #[test]
    fn server_survives_arbitrary_client_input(
        seed in any::<u64>(),
        which in 0..3u8,
        v2 in any::<bool>(),
        pad in 0u16..600,
        chunks in proptest::collection::vec(chunk(), 0..24),
        ops in proptest::collection::vec(fop(), 0..48),
    ) {
        let epoch = epoch();
        let limits = limits(which);
        let mut cfg = ServerConfig::new(anytls_core::Authenticator::single(PASSWORD));
        cfg.limits = limits.clone();
        let mut s = Session::server(Arc::new(cfg), [4; 32], epoch).expect("valid config");
        let mut owner = Owner {
            now: epoch,
            closed: false,
            ids: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            limits,
            fill_seed: seed,
        };
        let mut input = Vec::new();
        encode_preamble(&PasswordHash::of(PASSWORD), pad, &mut input);
        let settings = ClientSettings {
            version: if v2 { 2 } else { 1 },
            client: "props".into(),
            padding_md5: PaddingScheme::default_scheme().md5_hex(),
        }
        .encode()
        .unwrap();
        encode_frame(&mut input, Command::Settings, StreamId(0), &settings).unwrap();
        let handshake = input.len();
        let mut sids = BTreeSet::new();
        let mut fill_seed = seed ^ 2;
        encode_chunks(&chunks, &mut fill_seed, &mut input, &mut sids);
        owner.ids.extend(sids.into_iter().map(StreamId));
        s.handle_input(epoch, BytesMut::from(&input[..handshake]));
        owner.drain(&mut s);
        prop_assert!(!owner.closed, "the valid handshake closed the server");
        prop_assert_eq!(s.peer_version(), if v2 { 2 } else { 1 });
        owner.run(&mut s, &input[handshake..], &ops);
    }
}
