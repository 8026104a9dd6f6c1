//! Two-peer simulation harness in virtual time.
//!
//! `Pair` connects a client and a server `Session` through two `Pipe`s that
//! delay, re-chunk at random points, stall and end. `step()` drains both
//! sessions (transmits, then events, handled by a small `App` per side), delivers
//! what is due, and otherwise jumps virtual time to the next deadline or
//! delivery. Everything is seeded: the same seed gives the same run.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_core::error::RefuseReason;
use anytls_core::session::{ClientSession, ServerSession, SessionRole};
use anytls_core::{
    Authenticator, ClientConfig, Event, PaddingScheme, ServerConfig, Session, SessionSeq,
    SocksAddr, StreamError, StreamId,
};
use bytes::{Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

pub const PASSWORD: &str = "letmein";

/// The one clock read of the test suite: virtual time starts here.
#[allow(clippy::disallowed_methods)]
pub fn epoch() -> Instant {
    Instant::now()
}

pub fn dest() -> SocksAddr {
    SocksAddr::domain("example.com", 443)
}

pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new(PASSWORD);
    c.client_name = "anytls/0.0.13".into();
    c
}

pub fn server_config() -> ServerConfig {
    ServerConfig::new(Authenticator::single(PASSWORD))
}

/// A one-way byte pipe: each transmit becomes an in-flight record delivered
/// after `latency`, then handed to the receiver in random-size pieces.
pub struct Pipe {
    in_flight: VecDeque<(Instant, Bytes)>,
    pub latency: Duration,
    /// Largest piece handed to `handle_input` at once.
    pub max_piece: usize,
    /// Nothing is delivered while stalled (a dead or silent path).
    pub stalled: bool,
    /// Deliver EOF once the pipe is empty.
    pub eof: bool,
    eof_delivered: bool,
    /// Sizes of every transmit sent into the pipe, in order.
    pub transmits: Vec<usize>,
    /// Every byte sent into the pipe, in order.
    pub log: Vec<u8>,
    pub keep_log: bool,
}

impl Pipe {
    fn new(latency: Duration) -> Pipe {
        Pipe {
            in_flight: VecDeque::new(),
            latency,
            max_piece: 1500,
            stalled: false,
            eof: false,
            eof_delivered: false,
            transmits: Vec::new(),
            log: Vec::new(),
            keep_log: true,
        }
    }

    fn send(&mut self, now: Instant, data: Bytes) {
        self.transmits.push(data.len());
        if self.keep_log {
            self.log.extend_from_slice(&data);
        }
        self.in_flight.push_back((now + self.latency, data));
    }

    fn next_delivery(&self) -> Option<Instant> {
        if self.stalled {
            return None;
        }
        self.in_flight.front().map(|(t, _)| *t)
    }

    /// Delivers what is due. Returns whether anything happened.
    fn deliver<R: SessionRole>(
        &mut self,
        now: Instant,
        to: &mut Session<R>,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        if self.stalled {
            return false;
        }
        let mut progress = false;
        while let Some((t, _)) = self.in_flight.front() {
            if *t > now || !to.wants_read() {
                break;
            }
            let Some((t, mut data)) = self.in_flight.pop_front() else {
                break;
            };
            while !data.is_empty() && to.wants_read() {
                let n = (rng.next_u32() as usize % self.max_piece.max(1)) + 1;
                let piece = data.split_to(n.min(data.len()));
                to.handle_input(now, BytesMut::from(&piece[..]));
                progress = true;
            }
            if !data.is_empty() {
                self.in_flight.push_front((t, data));
                break;
            }
        }
        if self.eof && !self.eof_delivered && self.in_flight.is_empty() {
            self.eof_delivered = true;
            to.handle_eof(now);
            progress = true;
        }
        progress
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// What only one role can do, for owners written once for both roles.
pub trait RoleOps {
    /// Server: the verdict on a stream from `Event::StreamOpened` (a client
    /// never reports one).
    fn answer(&mut self, id: StreamId, verdict: Result<(), String>) -> Result<(), StreamError>;
    /// Client: opens a stream to [`dest`]; `None` on a server.
    fn try_open(&mut self, now: Instant) -> Option<Result<StreamId, StreamError>>;
}

impl RoleOps for ServerSession {
    fn answer(&mut self, id: StreamId, verdict: Result<(), String>) -> Result<(), StreamError> {
        self.accept_stream(id, verdict)
    }

    fn try_open(&mut self, _: Instant) -> Option<Result<StreamId, StreamError>> {
        None
    }
}

impl RoleOps for ClientSession {
    fn answer(&mut self, id: StreamId, _: Result<(), String>) -> Result<(), StreamError> {
        panic!("a client session reported StreamOpened for {id:?}");
    }

    fn try_open(&mut self, now: Instant) -> Option<Result<StreamId, StreamError>> {
        Some(self.open_stream(now, &dest()))
    }
}

/// What one side's application does with its session's events.
#[derive(Default)]
pub struct App {
    pub events: Vec<Event>,
    pub received: BTreeMap<StreamId, Vec<u8>>,
    pub eof: BTreeSet<StreamId>,
    pub opened: Vec<(StreamId, SocksAddr)>,
    pub refused: Vec<(StreamId, RefuseReason)>,
    pending_out: BTreeMap<StreamId, VecDeque<Bytes>>,
    finish_after_flush: BTreeSet<StreamId>,
    /// Server: answer StreamOpened with this verdict (None: leave it to the test).
    pub auto_accept: Option<Result<(), String>>,
    /// Write back everything read.
    pub echo: bool,
    /// Release (finish) streams once their EOF is read.
    pub finish_on_eof: bool,
    /// Do not read streams (a stalled application).
    pub paused: bool,
}

impl App {
    pub fn closed_reason(&self) -> Option<&anytls_core::SessionError> {
        self.events.iter().find_map(|e| match e {
            Event::Closed { reason } => Some(reason),
            _ => None,
        })
    }

    /// Queues data for a stream and writes as much as the session takes.
    pub fn send<R: SessionRole>(
        &mut self,
        s: &mut Session<R>,
        id: StreamId,
        data: impl Into<Bytes>,
    ) {
        self.pending_out
            .entry(id)
            .or_default()
            .push_back(data.into());
        self.flush(s, id);
    }

    /// Finishes a stream once all queued data is written.
    pub fn finish_when_flushed<R: SessionRole>(&mut self, s: &mut Session<R>, id: StreamId) {
        self.finish_after_flush.insert(id);
        self.flush(s, id);
    }

    /// Writes queued data until the session takes no more (a partial write
    /// is followed by one that reports `Blocked`, which arms
    /// `StreamWritable`).
    fn flush<R: SessionRole>(&mut self, s: &mut Session<R>, id: StreamId) {
        let q = self.pending_out.entry(id).or_default();
        while let Some(b) = q.front_mut() {
            match s.write_bytes(id, b) {
                Ok(_) if b.is_empty() => {
                    q.pop_front();
                }
                Ok(_) => {}
                Err(StreamError::Blocked) => return,
                Err(_) => {
                    q.clear();
                    break;
                }
            }
        }
        if self.finish_after_flush.remove(&id) {
            let _ = s.finish(id);
        }
    }

    pub fn read_all<R: SessionRole>(&mut self, s: &mut Session<R>, id: StreamId) {
        loop {
            match s.read(s.now(), id) {
                Ok(Some(b)) => {
                    self.received.entry(id).or_default().extend_from_slice(&b);
                    if self.echo {
                        self.send(s, id, b);
                    }
                }
                Ok(None) => {
                    if self.eof.insert(id) && self.finish_on_eof {
                        if self.echo {
                            self.finish_when_flushed(s, id);
                        } else {
                            let _ = s.finish(id);
                        }
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn handle<R: SessionRole>(&mut self, s: &mut Session<R>, ev: Event)
    where
        Session<R>: RoleOps,
    {
        match &ev {
            Event::StreamOpened { id, dest } => {
                self.opened.push((*id, dest.clone()));
                if let Some(v) = self.auto_accept.clone() {
                    s.answer(*id, v).unwrap();
                }
                if !self.paused {
                    self.read_all(s, *id);
                }
            }
            Event::StreamReadable { id } if !self.paused => self.read_all(s, *id),
            Event::StreamWritable { id } => self.flush(s, *id),
            Event::StreamRefused { id, reason } => self.refused.push((*id, reason.clone())),
            _ => {}
        }
        self.events.push(ev);
    }

    /// Reads every readable stream (after un-pausing).
    pub fn resume<R: SessionRole>(&mut self, s: &mut Session<R>) {
        self.paused = false;
        let ids: Vec<StreamId> = self
            .opened
            .iter()
            .map(|(id, _)| *id)
            .chain(self.received.keys().copied())
            .collect();
        for id in ids {
            self.read_all(s, id);
        }
    }
}

pub struct Pair {
    pub client: ClientSession,
    pub server: ServerSession,
    pub capp: App,
    pub sapp: App,
    pub c2s: Pipe,
    pub s2c: Pipe,
    pub now: Instant,
    pub epoch: Instant,
    pub rng: ChaCha8Rng,
    pub steps: u64,
}

impl Pair {
    /// A client and a server with the default configs, 10 ms one-way latency.
    pub fn new(seed: u64) -> Pair {
        Pair::with(seed, client_config(), server_config())
    }

    pub fn with(seed: u64, ccfg: ClientConfig, scfg: ServerConfig) -> Pair {
        let now = epoch();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cseed = [0u8; 32];
        rng.fill_bytes(&mut cseed);
        let client = Session::client(
            Arc::new(ccfg),
            SessionSeq(1),
            Arc::new(PaddingScheme::default_scheme()),
            cseed,
            now,
        )
        .expect("valid client config");
        let server = Session::server(Arc::new(scfg), [7; 32], now).expect("valid server config");
        Pair::from_sessions(client, server, now, rng)
    }

    pub fn from_sessions(
        client: ClientSession,
        server: ServerSession,
        now: Instant,
        rng: ChaCha8Rng,
    ) -> Pair {
        let sapp = App {
            auto_accept: Some(Ok(())),
            echo: true,
            finish_on_eof: true,
            ..App::default()
        };
        let capp = App {
            finish_on_eof: true,
            ..App::default()
        };
        Pair {
            client,
            server,
            capp,
            sapp,
            c2s: Pipe::new(Duration::from_millis(10)),
            s2c: Pipe::new(Duration::from_millis(10)),
            now,
            epoch: now,
            rng,
            steps: 0,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Drains transmits then events of both sessions until quiet.
    pub fn drain(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            let mut buf = BytesMut::new();
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                assert_eq!(t.len, buf.len());
                self.c2s.send(self.now, buf.split().freeze());
                progress = true;
            }
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                assert_eq!(t.len, buf.len());
                self.s2c.send(self.now, buf.split().freeze());
                progress = true;
            }
            while let Some(ev) = self.client.poll_event() {
                self.capp.handle(&mut self.client, ev);
                progress = true;
            }
            while let Some(ev) = self.server.poll_event() {
                self.sapp.handle(&mut self.server, ev);
                progress = true;
            }
            if !progress {
                return;
            }
        }
        panic!("drain does not settle");
    }

    /// One step: drain, deliver what is due, or jump to the next deadline.
    /// Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        self.drain();
        let mut progress = self.c2s.deliver(self.now, &mut self.server, &mut self.rng);
        progress |= self.s2c.deliver(self.now, &mut self.client, &mut self.rng);
        if progress {
            return true;
        }
        let next = self.next_due();
        let Some(next) = next else {
            return false;
        };
        if next > self.now {
            self.now = next;
        }
        fire_timeout(&mut self.client, self.now);
        fire_timeout(&mut self.server, self.now);
        true
    }

    /// Steps until nothing is left or `max` steps; false on livelock.
    pub fn drive_bounded(&mut self, max: u64) -> bool {
        for _ in 0..max {
            if !self.step() {
                return true;
            }
        }
        false
    }

    pub fn drive(&mut self) {
        assert!(self.drive_bounded(200_000), "simulation did not settle");
    }

    /// Steps until virtual time reaches `until` (or nothing is left).
    pub fn drive_until(&mut self, until: Instant) {
        for _ in 0..200_000 {
            // Output first, so data just written counts as a delivery to come;
            // deliveries to a session that does not read are not due.
            self.drain();
            let next = self.next_due();
            match next {
                Some(t) if t <= until => {
                    if !self.step() {
                        break;
                    }
                }
                _ => {
                    self.drain();
                    if self.c2s.deliver(self.now, &mut self.server, &mut self.rng)
                        | self.s2c.deliver(self.now, &mut self.client, &mut self.rng)
                    {
                        continue;
                    }
                    break;
                }
            }
        }
        if until > self.now {
            self.now = until;
        }
        self.drain();
    }

    /// Advances virtual time by `d`, processing everything due meanwhile.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        self.drive_until(until);
    }

    /// Opens a stream on the client to the default destination.
    pub fn open(&mut self) -> StreamId {
        self.client.open_stream(self.now, &dest()).unwrap()
    }
}

/// Runs a session's expired deadlines, as the owner's timer does.
fn fire_timeout<R: SessionRole>(s: &mut Session<R>, now: Instant) {
    if s.poll_timeout().is_some_and(|t| t <= now) {
        s.handle_timeout(now);
        if let Some(t) = s.poll_timeout() {
            assert!(
                t > now,
                "poll_timeout stuck in the past after handle_timeout"
            );
        }
    }
}

/// Decodes a byte log into frames (for checking what went over the wire).
pub fn frames_of(bytes: &[u8]) -> Vec<anytls_core::Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut dec = anytls_core::FrameDecoder::new(anytls_core::FrameLimits::UNLIMITED);
    let mut out = Vec::new();
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        out.push(f);
    }
    out
}

impl Pair {
    /// The earliest time something is due: a delivery its receiver takes now,
    /// or a session deadline (what `step` would jump to).
    pub fn next_due(&self) -> Option<Instant> {
        [
            self.c2s
                .next_delivery()
                .filter(|_| self.server.wants_read()),
            self.s2c
                .next_delivery()
                .filter(|_| self.client.wants_read()),
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
