//! An AnyTLS client with no async runtime: one thread, std `TcpStream`s,
//! rustls driven by hand, and one [`anytls_core::ClientEndpoint`]: the whole
//! client (session pool, sessions, streams) as a sans-IO state machine.
//!
//! ```text
//! cargo run -p anytls-core --example blocking_client
//! ```
//!
//! It is self-contained: on 127.0.0.1 it starts an HTTP-ish echo target and
//! an AnyTLS server (helper threads, rustls `ServerConnection`,
//! `Session::server`, a fresh self-signed certificate). The client, with
//! `ensure_idle_session = 2`, `min_idle_session = 1` and a heartbeat every
//! second, pre-warms two sessions; sends three requests one after another
//! (each on the newest idle session: no dial) and three at once (the two idle
//! sessions and one dial on demand); idles until heartbeats have been
//! answered; closes everything and exits, after about a second.
//!
//! # How to read it
//!
//! **Read [`Client`] first** (part 1): the endpoint's driving contract for a
//! program that owns blocking sockets, in two methods.
//!
//! ```text
//! Client::drain()       after EVERY input or command, until nothing moves:
//!   ep.poll_action()      Dial{conn}: TCP connect + TLS handshake, then
//!                           ep.handle_connected(conn) or ep.handle_dial_failed(conn)
//!                         Close{conn}: close that socket
//!   ep.poll_transmit()    (conn, bytes): ONE TLS write of exactly those bytes,
//!                           flushed to the socket at once
//!   ep.poll_event()       kept for the application
//!
//! Client::turn(until)   one round of waiting:
//!   for each connection, while ep.wants_read(conn):
//!     take what came (non-blocking socket read, TLS decryption)
//!     ep.handle_input / handle_eof / handle_transport_error; drain()
//!   nothing came: sleep until the earliest of ep.poll_timeout(), `until`
//!     and POLL_SLICE from now
//!   if ep.poll_timeout() <= now: ep.handle_timeout(now); drain()
//!   return the events
//!
//! application           ep.open_stream / write_bytes / read / release, drain();
//!                       turn() again until its work is done
//! ```
//!
//! Part 2 is the demo application, part 3 one TLS connection on one socket,
//! part 4 the demo's server and target.
//!
//! Two shortcuts keep the loop short. std cannot wait on several sockets at
//! once, so `turn` polls non-blocking sockets and sleeps [`POLL_SLICE`]
//! between polls (a real program waits on all of them with epoll/mio, or
//! uses `anytls-tokio`). And a dial blocks the loop until its TLS handshake
//! is done, at most [`IO_TIMEOUT`] (a real program dials in the background
//! and reports the outcome later, which the endpoint allows). The clock is
//! read in one place, [`now`]: the core never reads it.

// This file is an adapter: it owns sockets, which `anytls-core/clippy.toml`
// bans in the core itself.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anytls_core::{
    Action, Authenticator, ClientConfig, ClientEndpoint, ClientEvent, EndpointStats, Event,
    PoolConfig, ServerConfig, ServerSession, Session, SessionError, SessionSeq, SocksAddr,
    StreamError, StreamHandle, StreamId, TransportError,
};
use bytes::{Bytes, BytesMut};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Bound on connecting, on a TLS handshake, and on every socket write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the whole client run and on each demo server connection.
const RUN_TIME: Duration = Duration::from_secs(20);
/// How long the loops sleep when no socket had anything (std cannot wait on
/// several sockets at once).
const POLL_SLICE: Duration = Duration::from_millis(2);
/// Largest chunk of TLS plaintext handed to the core at once.
const READ_CHUNK: usize = 64 * 1024;
/// Response bytes kept per request (the rest is read and dropped).
const MAX_RESPONSE: usize = 64 * 1024;
/// Sessions the pool keeps idle and pre-warmed (`ensure_idle_session`).
const PREWARM: usize = 2;
/// Heartbeat interval of every session.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The demo idles until this many heartbeats have been answered.
const HEARTBEATS_WANTED: usize = 3;
/// Password of the local demo server.
const DEMO_PASSWORD: &str = "blocking-demo";

/// The only place this file reads the clock. The core never does: every `now`
/// it is given comes from here.
#[allow(clippy::disallowed_methods)] // reading the clock is the adapter's job
fn now() -> Instant {
    Instant::now()
}

/// Sleeps: the helper threads poll their listeners with it, and the client
/// loop waits with it when it has no connection to read.
#[allow(clippy::disallowed_methods)] // the adapter may block; the core may not
fn pause(d: Duration) {
    thread::sleep(d)
}

/// A seed from rustls' cryptographic RNG (the core never seeds anything).
fn seed() -> io::Result<[u8; 32]> {
    let mut s = [0u8; 32];
    let random = provider().secure_random;
    random
        .fill(&mut s)
        .map_err(|_| io::Error::other("no randomness"))?;
    Ok(s)
}

/// The rustls crypto provider used everywhere: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ==== Part 1 -- READ THIS FIRST: the client loop that drives the endpoint ====

/// Where and how the client dials: the AnyTLS server's address, the name
/// sent as SNI and checked against its certificate, the TLS settings.
pub struct Dialer {
    pub server: SocketAddr,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// The whole client: the endpoint (all the protocol) plus the sockets it
/// asked for. The application calls the endpoint's commands on [`Client::ep`]
/// and then [`Client::drain`]; it waits with [`Client::turn`].
pub struct Client {
    /// Pool, sessions and streams: the application's commands go here.
    pub ep: ClientEndpoint,
    /// One TLS connection per live session, named as the endpoint names them.
    links: BTreeMap<SessionSeq, TlsSocket>,
    dialer: Dialer,
    /// Plaintext of the transmit being written (the endpoint appends to it).
    out: BytesMut,
    /// Events drained since the application last took them.
    events: Vec<ClientEvent>,
}

impl Client {
    /// A client around `ep`. The endpoint queued its pre-warm dials when it
    /// was made; the first drain carries them out.
    pub fn new(ep: ClientEndpoint, dialer: Dialer) -> Client {
        let mut client = Client {
            ep,
            links: BTreeMap::new(),
            dialer,
            out: BytesMut::new(),
            events: Vec::new(),
        };
        client.drain();
        client
    }

    /// Contract: after every input or command, drain the outputs, in this
    /// order, until none is left (carrying out an action is an input again).
    ///
    /// 1. `poll_action`: dial or close a connection.
    /// 2. `poll_transmit`: bytes for a connection. A *shaped* transmit (the
    ///    preamble, padding-phase packets) carries a packet size of the
    ///    padding scheme: it MUST be one TLS write of exactly its bytes,
    ///    flushed before the next. Unshaped ones MAY be merged into fuller
    ///    records (anytls-io does); writing each on its own, as here, is
    ///    always right.
    /// 3. `poll_event`: kept for the application ([`Client::turn`] returns
    ///    them).
    pub fn drain(&mut self) {
        loop {
            let mut moved = false;
            while let Some(action) = self.ep.poll_action() {
                moved = true;
                match action {
                    Action::Dial { conn } => self.dial(conn),
                    Action::Close { conn, reason } => self.close_link(conn, &reason),
                    _ => {}
                }
            }
            while let Some((conn, t)) = self.ep.poll_transmit(now(), &mut self.out) {
                moved = true;
                // Transmits are only for live connections, which have a link.
                if let Some(link) = self.links.get_mut(&conn) {
                    if let Err(e) = link.send(&self.out[..t.len]) {
                        let err = TransportError::from_io(&e);
                        self.ep.handle_transport_error(now(), conn, err);
                    }
                }
                self.out.clear();
            }
            while let Some(ev) = self.ep.poll_event() {
                moved = true;
                self.events.push(ev);
            }
            if !moved {
                return;
            }
        }
    }

    /// `Action::Dial`: TCP connect and TLS handshake (blocking, bounded by
    /// [`IO_TIMEOUT`]), then tell the endpoint how it went. Its session
    /// starts on `handle_connected`; streams waiting for it open at once.
    fn dial(&mut self, conn: SessionSeq) {
        let started = now();
        match TlsSocket::connect(&self.dialer) {
            Ok(link) => {
                let took = now() - started;
                println!("[client] dial #{}: TCP + TLS up in {took:?}", conn.0);
                self.links.insert(conn, link);
                self.ep.handle_connected(now(), conn);
            }
            Err(e) => {
                println!("[client] dial #{} failed: {e}", conn.0);
                self.ep.handle_dial_failed(now(), conn, &e);
            }
        }
    }

    /// `Action::Close`: the session is over; close its connection
    /// (close_notify, best effort). Nothing more will be sent on it.
    fn close_link(&mut self, conn: SessionSeq, reason: &SessionError) {
        if let Some(link) = self.links.remove(&conn) {
            println!("[client] session #{} over ({reason}): closing it", conn.0);
            link.close();
        }
    }

    /// Contract: one round of waiting. Takes what came on each connection
    /// whose session `wants_read`, hands it to the endpoint and drains after
    /// each input; if nothing came, sleeps until the endpoint's next deadline
    /// (or `until`, or one [`POLL_SLICE`]); then, if that deadline has passed,
    /// `handle_timeout` and drain. Returns the events drained since the last
    /// call.
    ///
    /// A connection whose session does not want to read (its receive buffers
    /// are full until the application reads its streams) is not read at all:
    /// its bytes wait in rustls and in the kernel, which is the backpressure.
    pub fn turn(&mut self, until: Instant) -> Vec<ClientEvent> {
        let mut got = false;
        let conns: Vec<SessionSeq> = self.links.keys().copied().collect();
        for conn in conns {
            // One socket read per connection and turn, then what rustls has
            // decrypted from it.
            let mut read_socket = true;
            while self.ep.wants_read(conn) {
                let Some(link) = self.links.get_mut(&conn) else {
                    break; // closed by the last drain
                };
                match link.next_input(std::mem::take(&mut read_socket)) {
                    Ok(None) => break,
                    Ok(Some(Input::Data(data))) => self.ep.handle_input(now(), conn, data),
                    Ok(Some(Input::Eof)) => self.ep.handle_eof(now(), conn),
                    Err(e) => {
                        let err = TransportError::from_io(&e);
                        self.ep.handle_transport_error(now(), conn, err);
                    }
                }
                got = true;
                self.drain();
            }
        }
        if !got {
            let wake = self.ep.poll_timeout().map_or(until, |t| t.min(until));
            pause(wake.saturating_duration_since(now()).min(POLL_SLICE));
        }
        let t = now();
        if self.ep.poll_timeout().is_some_and(|deadline| deadline <= t) {
            // Pool maintenance, heartbeats, every session's timers. Afterwards
            // `poll_timeout` is later than `t`, so this never spins.
            self.ep.handle_timeout(t);
            self.drain();
        }
        std::mem::take(&mut self.events)
    }
}

// ==== Part 2 -- the demo application on top of the loop ======================

/// One request and its response, on one stream.
#[derive(Debug)]
pub struct Exchange {
    /// The path asked for.
    pub path: String,
    /// The session that carried it (known at once when it took an idle one).
    pub session: Option<SessionSeq>,
    /// Dials the endpoint had started once the stream was opened.
    pub dials_at_open: u64,
    /// The target's answer (at most [`MAX_RESPONSE`] bytes).
    pub response: Vec<u8>,
    stream: StreamHandle,
    /// Request bytes the endpoint has not taken yet.
    unsent: Bytes,
    done: bool,
}

impl Exchange {
    /// Opens a stream (on the newest idle session, or the endpoint asks for
    /// a dial) for an HTTP/1.0 request.
    fn start(client: &mut Client, dest: &SocksAddr, path: &str) -> io::Result<Exchange> {
        let stream = client.ep.open_stream(now(), dest)?;
        let session = client.ep.stream_session(stream);
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut x = Exchange {
            path: path.to_owned(),
            session,
            dials_at_open: 0,
            response: Vec::new(),
            stream,
            unsent: Bytes::from(request),
            done: false,
        };
        x.advance(&mut client.ep)?;
        client.drain(); // after the commands; carries out the dial, if one was asked for
        let dials = client.ep.stats().pool.dials;
        x.dials_at_open = dials;
        let on = session.map_or("no idle session, dialled one".into(), |s| {
            format!("on idle session #{}, no dial", s.0)
        });
        println!("[client] GET {path}: {on} (dials so far: {dials})");
        Ok(x)
    }

    /// Moves the exchange on, after any event about its stream: writes what
    /// the endpoint takes of the request (`Blocked`: no session yet, or full;
    /// `StreamWritable` follows), then reads until `Blocked` (readiness is
    /// edge-triggered). At the end of the response (the server's FIN) the
    /// stream is released, which gives its session back to the pool. A
    /// refused or reset stream reports why on `read`.
    fn advance(&mut self, ep: &mut ClientEndpoint) -> io::Result<()> {
        self.session = self.session.or(ep.stream_session(self.stream));
        while !self.unsent.is_empty() {
            match ep.write_bytes(self.stream, &mut self.unsent) {
                Ok(_) => {}
                Err(StreamError::Blocked) => break,
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match ep.read(now(), self.stream) {
                Ok(Some(data)) => {
                    let keep = data.len().min(MAX_RESPONSE - self.response.len());
                    self.response.extend_from_slice(&data[..keep]);
                }
                Ok(None) => {
                    ep.release(now(), self.stream);
                    self.done = true;
                    return Ok(());
                }
                Err(StreamError::Blocked) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What a client run saw.
#[derive(Debug)]
pub struct Report {
    /// Idle sessions after the pre-warm dials, before any stream (newest first).
    pub prewarmed: Vec<SessionSeq>,
    /// Dials started before the first stream (all of them pre-warm dials).
    pub dials_before_streams: u64,
    /// The exchanges, in the order the requests were sent.
    pub exchanges: Vec<Exchange>,
    /// Answered heartbeats: session and round-trip time.
    pub heartbeat_acks: Vec<(SessionSeq, Duration)>,
    /// Idle sessions at the end (newest first).
    pub idle_at_end: Vec<SessionSeq>,
    /// The endpoint's counters at the end, before it was closed.
    pub stats_at_end: EndpointStats,
    /// Live sessions after the endpoint was closed and drained.
    pub sessions_after_close: usize,
}

/// The application: the client and what it has seen.
struct Demo {
    client: Client,
    dest: SocksAddr,
    deadline: Instant,
    /// Sessions whose server has told its version (ServerSettings).
    versions: usize,
    acks: Vec<(SessionSeq, Duration)>,
}

impl Demo {
    /// One turn of the loop: wait, then hand each event about a stream to
    /// its exchange; their reads and writes are commands, so drain afterwards.
    fn step(&mut self, exchanges: &mut [Exchange]) -> io::Result<()> {
        if now() >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "demo too slow"));
        }
        for ev in self.client.turn(self.deadline) {
            let stream = match ev {
                ClientEvent::PeerVersion { conn, version } => {
                    println!("[client] session #{}: server speaks v{version}", conn.0);
                    self.versions += 1;
                    None
                }
                ClientEvent::HeartbeatAck { conn, rtt } => {
                    println!("[client] heartbeat on #{} answered in {rtt:?}", conn.0);
                    self.acks.push((conn, rtt));
                    None
                }
                ClientEvent::StreamConnected(h)
                | ClientEvent::StreamWritable(h)
                | ClientEvent::StreamReadable(h)
                | ClientEvent::StreamFinished(h)
                | ClientEvent::StreamRefused { stream: h, .. }
                | ClientEvent::StreamReset { stream: h, .. } => Some(h),
                _ => None,
            };
            let mine = exchanges.iter_mut().find(|x| Some(x.stream) == stream);
            if let Some(x) = mine.filter(|x| !x.done) {
                x.advance(&mut self.client.ep)?;
            }
        }
        self.client.drain();
        Ok(())
    }

    /// Sends a request per path, all at once, and waits for every answer.
    fn fetch(&mut self, paths: &[String]) -> io::Result<Vec<Exchange>> {
        let mut xs = Vec::new();
        for path in paths {
            xs.push(Exchange::start(&mut self.client, &self.dest, path)?);
        }
        while xs.iter().any(|x| !x.done) {
            self.step(&mut xs)?;
        }
        for x in &xs {
            let text = String::from_utf8_lossy(&x.response);
            let status = text.lines().next().unwrap_or_default();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim_end();
            let (path, seq) = (&x.path, x.session.map_or(0, |s| s.0));
            println!("[client] GET {path} <- session #{seq}: {status} | {body}");
        }
        Ok(xs)
    }
}

/// Runs the client against `dialer`'s server, asking for `dest`.
pub fn run_client(dialer: Dialer, password: &str, dest: SocksAddr) -> io::Result<Report> {
    // Pre-warm dials happen at once; `min_idle` protects the newest idle
    // session from the idle sweep (every `check_interval`, 30 s: after this
    // demo); every session sends a heartbeat every second.
    let mut pool = PoolConfig::default();
    pool.ensure_idle = PREWARM;
    pool.min_idle = 1;
    pool.heartbeat = Some(HEARTBEAT);
    let ep = ClientEndpoint::new(ClientConfig::new(password), pool, seed()?, now())
        .map_err(io::Error::other)?;
    let mut demo = Demo {
        client: Client::new(ep, dialer),
        dest,
        deadline: now() + RUN_TIME,
        versions: 0,
        acks: Vec::new(),
    };

    // 1. Pre-warm: the endpoint asked for PREWARM dials as it was made, and
    //    this loop dials synchronously, so they are done. Wait until the
    //    server has answered on each (ServerSettings: it speaks v2).
    while demo.versions < PREWARM {
        demo.step(&mut [])?;
    }
    let prewarmed = idle(&demo.client.ep);
    let dials = demo.client.ep.stats().pool.dials;
    println!(
        "[client] pre-warmed, before any stream: {}",
        pool_line(&demo.client.ep)
    );

    // 2. One after another: each takes the newest idle session.
    let mut exchanges = Vec::new();
    for i in 1..=3 {
        exchanges.extend(demo.fetch(&[format!("/one-by-one/{i}")])?);
    }
    // 3. Three at once: the two idle sessions, and one dial on demand.
    let at_once: Vec<String> = (1..=3).map(|i| format!("/at-once/{i}")).collect();
    exchanges.extend(demo.fetch(&at_once)?);

    // 4. Idle until heartbeats have been answered.
    while demo.acks.len() < HEARTBEATS_WANTED {
        demo.step(&mut [])?;
    }

    // 5. The pool now; then close everything.
    let (idle_at_end, end) = (idle(&demo.client.ep), demo.client.ep.stats());
    println!("[client] at the end: {}", pool_line(&demo.client.ep));
    demo.client.ep.close(now());
    demo.client.drain();
    Ok(Report {
        prewarmed,
        dials_before_streams: dials,
        exchanges,
        heartbeat_acks: demo.acks,
        idle_at_end,
        stats_at_end: end,
        sessions_after_close: demo.client.ep.stats().sessions,
    })
}

fn idle(ep: &ClientEndpoint) -> Vec<SessionSeq> {
    ep.idle_sessions().into_iter().map(|(s, _)| s).collect()
}

/// The endpoint's idle sessions and counters, in one line.
fn pool_line(ep: &ClientEndpoint) -> String {
    let (s, idle) = (ep.stats(), idle(ep));
    let idle: Vec<String> = idle.iter().map(|s| format!("#{}", s.0)).collect();
    let p = &s.pool;
    format!(
        "idle [{}]; live {}; dials {} (pre-warm {}); reused {}; heartbeats {} (answered {})",
        idle.join(", "),
        s.sessions,
        p.dials,
        p.prewarm_dials,
        p.reused,
        p.heartbeats,
        p.heartbeat_acks
    )
}

// ==== Part 3 -- one TLS connection on one socket =============================

/// A TCP connection with rustls on it: a blocking handshake, then a
/// non-blocking socket. Reads never wait; writes wait (in [`POLL_SLICE`]s,
/// at most [`IO_TIMEOUT`]) until the kernel takes the bytes.
struct TlsSocket {
    sock: TcpStream,
    tls: rustls::Connection,
    /// Plaintext taken out of rustls.
    inb: Box<[u8]>,
}

/// Something that came in on a connection.
enum Input {
    /// TLS plaintext.
    Data(BytesMut),
    /// The peer closed the connection cleanly (close_notify).
    Eof,
}

impl TlsSocket {
    /// Connects to the server and completes the TLS handshake.
    fn connect(d: &Dialer) -> io::Result<TlsSocket> {
        let sock = TcpStream::connect_timeout(&d.server, IO_TIMEOUT)?;
        let tls = rustls::ClientConnection::new(d.tls.clone(), d.server_name.clone())
            .map_err(io::Error::other)?;
        TlsSocket::handshake(sock, tls.into())
    }

    /// Completes a TLS handshake (client or server side), every socket
    /// operation bounded by [`IO_TIMEOUT`] and the whole by a deadline.
    fn handshake(mut sock: TcpStream, mut tls: rustls::Connection) -> io::Result<TlsSocket> {
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        sock.set_nodelay(true)?;
        let deadline = now() + IO_TIMEOUT;
        while tls.is_handshaking() {
            if now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"));
            }
            tls.complete_io(&mut sock)?;
        }
        // Every write is flushed to the socket at once and is bounded by the
        // core's caps, so rustls' own send-buffer cap is not needed (with it,
        // `write_all` of a large transmit would stop short).
        tls.set_buffer_limit(None);
        sock.set_nonblocking(true)?;
        let inb = vec![0; READ_CHUNK].into_boxed_slice();
        let mut link = TlsSocket { sock, tls, inb };
        link.write_records()?; // what is left (a server's session tickets)
        Ok(link)
    }

    /// Writes one transmit: one TLS write of exactly its bytes (its own
    /// records), sent to the socket at once.
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.tls.writer().write_all(data)?;
        self.write_records()
    }

    fn write_records(&mut self) -> io::Result<()> {
        let deadline = now() + IO_TIMEOUT;
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && now() < deadline => {
                    pause(POLL_SLICE) // the kernel's send buffer is full
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// The next input without waiting, `None` if there is none: plaintext
    /// rustls already holds, else (if `read_socket`) what one socket read
    /// brings.
    fn next_input(&mut self, read_socket: bool) -> io::Result<Option<Input>> {
        if let Some(input) = self.take_plaintext()? {
            return Ok(Some(input));
        }
        if !read_socket {
            return Ok(None);
        }
        match self.tls.read_tls(&mut self.sock) {
            // Ok(0) is TCP EOF: rustls notes it, and `take_plaintext` reports
            // it after the data before it.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        let processed = self.tls.process_new_packets();
        // rustls may have something to send: an alert, a KeyUpdate answer.
        let written = self.write_records();
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        written?;
        self.take_plaintext()
    }

    /// Up to [`READ_CHUNK`] bytes of decrypted plaintext, or the clean end
    /// of the connection. A TCP EOF without close_notify is an
    /// `UnexpectedEof` error.
    fn take_plaintext(&mut self) -> io::Result<Option<Input>> {
        match self.tls.reader().read(&mut self.inb) {
            Ok(0) => Ok(Some(Input::Eof)),
            Ok(n) => Ok(Some(Input::Data(BytesMut::from(&self.inb[..n])))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends close_notify (best effort) and closes the socket.
    fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.write_records();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// Whether a read ended because its timeout expired (`WouldBlock` on Unix,
/// `TimedOut` on Windows).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ==== Part 4 -- the demo's AnyTLS server and target (helper threads) =========

/// Calls `serve` with each connection to the non-blocking `listener` until
/// `stop` is set (or [`RUN_TIME`] has passed).
fn accept_until_stop(
    listener: &TcpListener,
    stop: &AtomicBool,
    mut serve: impl FnMut(TcpStream) -> io::Result<()>,
) -> io::Result<()> {
    let deadline = now() + RUN_TIME;
    while !stop.load(Ordering::Relaxed) && now() < deadline {
        match listener.accept() {
            Ok((sock, _)) => {
                sock.set_nonblocking(false)?;
                serve(sock)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => pause(POLL_SLICE),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The target: answers each request with its request line, and closes.
fn serve_target(mut sock: TcpStream) -> io::Result<()> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8 * 1024 {
        match sock.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let body = format!("you asked for {:?}\n", String::from_utf8_lossy(line));
    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    sock.write_all((head + &body).as_bytes())
}

/// A stream's connection to its destination.
struct Upstream {
    sock: TcpStream,
    /// Read from the destination, not yet taken by the session.
    pending: Bytes,
    eof: bool,
}

impl Upstream {
    fn new(sock: TcpStream) -> io::Result<Upstream> {
        sock.set_read_timeout(Some(Duration::from_millis(1)))?; // polled by `relay`
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let (pending, eof) = (Bytes::new(), false);
        Ok(Upstream { sock, pending, eof })
    }
}

/// Serves one AnyTLS connection with one server session until it closes,
/// relaying each stream to its destination (127.0.0.1 only). The same
/// contract as the client's, for one session: drain after every input or
/// command, wait for input or the session's deadline, then the timer.
fn serve_anytls(
    sock: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    cfg: Arc<ServerConfig>,
) -> io::Result<()> {
    let deadline = now() + RUN_TIME;
    let conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut link = TlsSocket::handshake(sock, conn.into())?;
    let mut s = Session::server(cfg, seed()?, now()).map_err(io::Error::other)?;
    let (mut ups, mut out) = (BTreeMap::new(), BytesMut::new());
    loop {
        server_drain(&mut s, &mut link, &mut out, &mut ups);
        if s.is_closed() {
            return Ok(());
        }
        if now() >= deadline {
            return Err(io::Error::other("demo server: connection lasted too long"));
        }
        // Full (`wants_read` false): the relay below reads the streams.
        let input = match s.wants_read() {
            true => link.next_input(true),
            false => Ok(None),
        };
        if matches!(input, Ok(None)) {
            let wake = s.poll_timeout().map_or(deadline, |t| t.min(deadline));
            pause(wake.saturating_duration_since(now()).min(POLL_SLICE));
        }
        match input {
            Ok(Some(Input::Data(data))) => s.handle_input(now(), data),
            Ok(Some(Input::Eof)) => s.handle_eof(now()),
            Ok(None) => {}
            Err(e) => s.handle_transport_error(now(), TransportError::from_io(&e)),
        }
        server_drain(&mut s, &mut link, &mut out, &mut ups);
        if s.poll_timeout().is_some_and(|t| t <= now()) {
            s.handle_timeout(now());
            server_drain(&mut s, &mut link, &mut out, &mut ups);
        }
        relay(&mut s, &mut ups); // commands: drained at the top
    }
}

/// Drains one server session: transmits (each its own TLS write), then
/// events, acting on each (a command, which may queue transmits again).
/// Stream data is moved by [`relay`], which runs on every turn of the loop
/// (so `StreamReadable` needs no answer here).
fn server_drain(
    s: &mut ServerSession,
    link: &mut TlsSocket,
    out: &mut BytesMut,
    ups: &mut BTreeMap<StreamId, Upstream>,
) {
    loop {
        while let Some(t) = s.poll_transmit(now(), out) {
            if let Err(e) = link.send(&out[..t.len]) {
                s.handle_transport_error(now(), TransportError::from_io(&e));
            }
            out.clear();
        }
        let Some(ev) = s.poll_event() else {
            return;
        };
        match ev {
            Event::Authenticated { user } => println!("[server] client authenticated ({user:?})"),
            Event::StreamOpened { id, dest } => {
                // A demo server: it connects to 127.0.0.1 only.
                let addr = dest.socket_addr().filter(|a| a.ip().is_loopback());
                let addr = addr.ok_or_else(|| io::Error::other("not 127.0.0.1"));
                let connected = addr.and_then(|addr| TcpStream::connect_timeout(&addr, IO_TIMEOUT));
                let verdict = connected.and_then(Upstream::new).map(|up| {
                    ups.insert(id, up);
                });
                let _ = s.accept_stream(id, verdict.map_err(|e| e.to_string()));
            }
            Event::Closed { reason } => println!("[server] session closed: {reason:?}"),
            _ => {}
        }
    }
}

/// One pass over the streams: the client's data goes to the destination,
/// the destination's to the client (what the session takes). The client's
/// FIN releases the stream; the destination's close finishes it (FIN after
/// the data).
fn relay(s: &mut ServerSession, ups: &mut BTreeMap<StreamId, Upstream>) {
    let mut buf = [0u8; 16 * 1024];
    ups.retain(|&id, up| {
        loop {
            match s.read(now(), id) {
                Ok(Some(data)) if up.sock.write_all(&data).is_ok() => {}
                Err(StreamError::Blocked) => break,
                _ => {
                    let _ = s.finish(id);
                    return false;
                }
            }
        }
        if up.pending.is_empty() && !up.eof {
            match up.sock.read(&mut buf) {
                Ok(0) => up.eof = true,
                Ok(n) => up.pending = Bytes::copy_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => up.eof = true,
            }
        }
        let written = match up.pending.is_empty() {
            true => Ok(0),
            false => s.write_bytes(id, &mut up.pending),
        };
        let ended = up.eof && up.pending.is_empty();
        if ended {
            let _ = s.finish(id);
        }
        !ended && matches!(written, Ok(_) | Err(StreamError::Blocked))
    });
}

/// Runs the whole demo on 127.0.0.1: the target and the AnyTLS server on
/// helper threads (the server: one more per connection), the client on this
/// one.
#[allow(clippy::disallowed_methods)] // the demo's helper threads; the core spawns nothing
pub fn run_local_demo() -> io::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let target = TcpListener::bind("127.0.0.1:0")?;
    let server = TcpListener::bind("127.0.0.1:0")?;
    let (target_addr, server_addr) = (target.local_addr()?, server.local_addr()?);
    target.set_nonblocking(true)?;
    server.set_nonblocking(true)?;

    // TLS: a fresh self-signed certificate for "localhost", which the client
    // trusts and nothing else.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(io::Error::other)?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(io::Error::other)?;
    let mut roots = RootCertStore::empty();
    roots.add(cert).map_err(io::Error::other)?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let stop_target = stop.clone();
    let target_thread =
        thread::spawn(move || accept_until_stop(&target, &stop_target, serve_target));
    let tls = Arc::new(server_tls);
    let cfg = Arc::new(ServerConfig::new(Authenticator::single(DEMO_PASSWORD)));
    let stop_server = stop.clone();
    let server_thread = thread::spawn(move || {
        let mut conns = Vec::new();
        accept_until_stop(&server, &stop_server, |sock| {
            let (tls, cfg) = (tls.clone(), cfg.clone());
            conns.push(thread::spawn(move || serve_anytls(sock, tls, cfg)));
            Ok(())
        })?;
        conns.into_iter().try_for_each(joined)
    });
    println!("[demo] target on {target_addr}, AnyTLS server on {server_addr}");

    let dialer = Dialer {
        server: server_addr,
        server_name: ServerName::try_from("localhost").map_err(io::Error::other)?,
        tls: Arc::new(client_tls),
    };
    let report = run_client(dialer, DEMO_PASSWORD, SocksAddr::from(target_addr));

    // The client has closed its connections (or dropped them, after an
    // error), so the server's connection threads end; `stop` ends the rest.
    stop.store(true, Ordering::Relaxed);
    joined(server_thread)?;
    joined(target_thread)?;
    report
}

/// A helper thread's outcome (a panic is an error too).
fn joined(t: thread::JoinHandle<io::Result<()>>) -> io::Result<()> {
    t.join()
        .unwrap_or_else(|_| Err(io::Error::other("a demo thread panicked")))
}

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("usage: blocking_client   (a self-contained demo on 127.0.0.1)");
        return ExitCode::from(2);
    }
    match run_local_demo() {
        Ok(report) => {
            let (n, acks) = (report.exchanges.len(), report.heartbeat_acks.len());
            println!("[demo] done: {n} responses, {acks} heartbeats answered");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
