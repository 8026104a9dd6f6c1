//! An AnyTLS client with no async runtime at all: a blocking
//! `std::net::TcpStream`, rustls driven by hand, and one
//! [`anytls_core::Session`] in a single-threaded loop whose only timer is the
//! socket's read timeout.
//!
//! ```text
//! cargo run -p anytls-core --example blocking_client
//! cargo run -p anytls-core --example blocking_client -- HOST:PORT PASSWORD [DEST]
//! ```
//!
//! Without arguments it is self-contained: it starts, on 127.0.0.1 only, a tiny
//! HTTP-ish target and an AnyTLS server (written the same way: blocking
//! sockets, a rustls `ServerConnection` and `Session::server`, with a fresh
//! self-signed certificate that the client trusts and nothing else), then
//! connects through the server to the target.
//!
//! With arguments it connects to a real AnyTLS server WITHOUT verifying its
//! certificate (see [`InsecureVerifier`]; good for trying a test server, not
//! for real use) and requests `http://DEST/` (default `example.com:80`).
//!
//! Either way the client opens one stream, sends an HTTP/1.0 request, prints
//! the response, sends one heartbeat (v2 servers), prints its round-trip time
//! and exits.
//!
//! The part to read is [`Conn`]: it owns a session, its TLS connection and its
//! socket, and implements the core's driving contract (see the crate docs of
//! `anytls_core`) in three methods: [`Conn::drain`], [`Conn::step`] and
//! [`Conn::shutdown`]. Everything else is application code on top of them.

// This file is an adapter: it owns sockets, which `anytls-core/clippy.toml`
// bans in the core itself.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anytls_core::{
    Authenticator, ClientConfig, Event, PaddingScheme, ServerConfig, Session, SessionSeq,
    SocksAddr, StreamError, StreamId,
};
use bytes::{Bytes, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Bound on connecting, on the TLS handshake's reads and writes, and on every
/// socket write: nothing in this file blocks without a limit.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a whole client run and on the demo server's connection.
const RUN_TIME: Duration = Duration::from_secs(20);
/// Largest chunk of TLS plaintext handed to the session at once.
const READ_CHUNK: usize = 64 * 1024;
/// Response bytes kept (the rest is read and dropped).
const MAX_RESPONSE: usize = 1024 * 1024;
/// Destination when none is given on the command line.
const DEFAULT_DEST: &str = "example.com:80";
/// Password of the local demo server.
const DEMO_PASSWORD: &str = "blocking-demo";

// ---------------------------------------------------------------------------
// The adapter's clock and randomness: the core takes both as parameters.
// ---------------------------------------------------------------------------

/// The only place this file reads the clock. The core never does: every `now`
/// it is given comes from here.
#[allow(clippy::disallowed_methods)] // reading the clock is the adapter's job
fn now() -> Instant {
    Instant::now()
}

/// A seed for a session's padding RNG, from rustls' cryptographic RNG (the core
/// never seeds anything itself).
fn seed() -> io::Result<[u8; 32]> {
    let mut s = [0u8; 32];
    provider()
        .secure_random
        .fill(&mut s)
        .map_err(|_| io::Error::other("no secure randomness available"))?;
    Ok(s)
}

/// The rustls crypto provider used everywhere: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// The blocking driver: one socket, one TLS connection, one session.
// ---------------------------------------------------------------------------

/// One TLS connection carrying one AnyTLS session, driven by blocking calls
/// from a single thread.
///
/// The owner's loop, client or server, is always:
///
/// ```text
/// loop {
///     for ev in conn.step(max_wait) { ... }   // wait for input or a deadline
///     conn.session.<command>(..);             // open_stream, write, read, finish, ...
///     conn.drain();                           // after EVERY command
/// }
/// conn.shutdown();
/// ```
///
/// A few commands in a row (reading a stream chunk by chunk) may share one
/// `drain`: their outputs wait in the session. What must never happen is
/// handing in the next input, or starting to wait, before that drain.
pub struct Conn {
    /// The AnyTLS state machine. The owner calls its commands directly and then
    /// [`Conn::drain`].
    pub session: Session,
    tls: rustls::Connection,
    sock: TcpStream,
    /// Plaintext of the transmit being written (the core appends to it).
    out: BytesMut,
    /// Plaintext taken out of rustls.
    inb: Vec<u8>,
    /// Events drained since the owner last collected them with [`Conn::step`].
    events: Vec<Event>,
    /// The I/O error that ended the session, if one did.
    pub io_error: Option<io::Error>,
}

/// One input for the session.
enum Input {
    /// TLS plaintext.
    Data(BytesMut),
    /// The peer closed the connection (close_notify, or TCP EOF without one).
    Eof,
    /// Nothing arrived before the deadline.
    Nothing,
}

/// Completes the TLS handshake on a blocking socket (every read and write
/// bounded by [`IO_TIMEOUT`]). The session is created afterwards, on the
/// established connection, as `Session::client` and `Session::server` expect.
fn handshake(
    mut sock: TcpStream,
    mut tls: rustls::Connection,
) -> io::Result<(TcpStream, rustls::Connection)> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    let deadline = now() + IO_TIMEOUT;
    while tls.is_handshaking() {
        if now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
        tls.complete_io(&mut sock)?;
    }
    // Whatever is left (a server's session tickets) goes out now.
    while tls.wants_write() {
        tls.write_tls(&mut sock)?;
    }
    // `drain` flushes after every transmit and a transmit is at most
    // `SessionLimits::max_write` (64 KiB), so rustls' own send-buffer cap is
    // not needed; with it, `write_all` of a 64 KiB transmit would stop short.
    tls.set_buffer_limit(None);
    Ok((sock, tls))
}

impl Conn {
    /// A driver for `session` over an established TLS connection.
    pub fn new(session: Session, tls: rustls::Connection, sock: TcpStream) -> Conn {
        Conn {
            session,
            tls,
            sock,
            out: BytesMut::with_capacity(16 * 1024),
            inb: vec![0; READ_CHUNK],
            events: Vec::new(),
            io_error: None,
        }
    }

    /// Contract: after every input or command, drain the outputs in order.
    ///
    /// 1. `poll_transmit` until `None`. Each [`anytls_core::Transmit`] is ONE
    ///    TLS write: its plaintext goes to `writer().write_all` in one call
    ///    (rustls seals it in its own record(s), never sharing a record with
    ///    the next write), and the records are written to the socket before
    ///    the next transmit is polled. Merging or splitting transmits would
    ///    lose the padding scheme's record sizes.
    /// 2. `poll_event` until `None`. The events are kept for the owner, who
    ///    gets them from the next [`Conn::step`]. `Event::Closed` is always
    ///    the last one.
    /// 3. Re-arming the timer needs no code here: [`Conn::step`] reads
    ///    `poll_timeout` each time it is about to wait.
    pub fn drain(&mut self) {
        while let Some(t) = self.session.poll_transmit(now(), &mut self.out) {
            let res = self.write_transmit(t.len);
            self.out.clear();
            if let Err(e) = res {
                // The session closes, so the next poll_transmit returns None.
                self.fail(e);
            }
        }
        while let Some(ev) = self.session.poll_event() {
            self.events.push(ev);
        }
    }

    /// Writes one transmit's plaintext as one TLS write and flushes it.
    fn write_transmit(&mut self, len: usize) -> io::Result<()> {
        self.tls.writer().write_all(&self.out[..len])?;
        self.flush_tls()
    }

    /// Writes every sealed TLS record to the socket (blocking, bounded by the
    /// socket's write timeout).
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    /// Contract: wait for ONE input, feed it, handle expired deadlines, and
    /// drain after each of these. Returns every event drained since the last
    /// call (including those from the owner's `drain` calls).
    ///
    /// 1. The wait ends at the session's deadline (`poll_timeout`) or after
    ///    `max_wait`, whichever comes first: the socket read timeout is the
    ///    timer.
    /// 2. Input is read only while `wants_read()` is true. When it is false
    ///    (the session's receive buffers are full), `step` does not wait: the
    ///    owner must read its streams to make room, which turns it true again.
    /// 3. Plaintext goes to `handle_input`; the end of the connection to
    ///    `handle_eof`; an I/O error ends the session ([`Conn::fail`]).
    /// 4. If the deadline has passed, `handle_timeout(now)`. (Calling it early
    ///    would be a harmless no-op; after it, `poll_timeout` is in the future
    ///    or `None`, so this loop never spins.)
    pub fn step(&mut self, max_wait: Duration) -> Vec<Event> {
        if !self.session.is_closed() && self.session.wants_read() {
            let limit = now() + max_wait;
            let wake_at = self.session.poll_timeout().map_or(limit, |t| t.min(limit));
            match self.next_input(wake_at) {
                Ok(Input::Data(data)) => self.session.handle_input(now(), data),
                Ok(Input::Eof) => self.session.handle_eof(now()),
                Ok(Input::Nothing) => {}
                Err(e) => self.fail(e),
            }
            self.drain();
        }
        let t = now();
        if self.session.poll_timeout().is_some_and(|d| d <= t) {
            self.session.handle_timeout(t);
            self.drain();
        }
        std::mem::take(&mut self.events)
    }

    /// Gets the next input, waiting at most until `wake_at`.
    fn next_input(&mut self, wake_at: Instant) -> io::Result<Input> {
        // Plaintext rustls has already decrypted (one socket read can bring
        // several records, and the handshake's last read may bring the first
        // data) is taken first, without blocking.
        if let Some(input) = self.take_plaintext()? {
            return Ok(input);
        }
        let wait = wake_at.saturating_duration_since(now());
        if wait.is_zero() {
            return Ok(Input::Nothing);
        }
        // The timer: the read returns when bytes arrive or the deadline is due.
        self.sock.set_read_timeout(Some(wait))?;
        match self.tls.read_tls(&mut self.sock) {
            // Ok(0) is TCP EOF: rustls notes it and `take_plaintext` reports
            // it once the data before it has been taken.
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Ok(Input::Nothing),
            Err(e) => return Err(e),
        }
        let processed = self.tls.process_new_packets();
        // rustls may have something to send: an alert after an error, an
        // answer to a KeyUpdate.
        let flushed = self.flush_tls();
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        flushed?;
        Ok(self.take_plaintext()?.unwrap_or(Input::Nothing))
    }

    /// Takes up to [`READ_CHUNK`] bytes of decrypted plaintext, if rustls has
    /// any, or the end of the connection.
    fn take_plaintext(&mut self) -> io::Result<Option<Input>> {
        match self.tls.reader().read(&mut self.inb) {
            Ok(0) => Ok(Some(Input::Eof)),
            Ok(n) => Ok(Some(Input::Data(BytesMut::from(&self.inb[..n])))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // TCP closed without close_notify: an EOF all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(Input::Eof)),
            Err(e) => Err(e),
        }
    }

    /// Ends the session after an I/O error, as the tokio adapter does: a peer
    /// that went away is an EOF, anything else a local close. The caller
    /// drains afterwards, which yields `Event::Closed`.
    fn fail(&mut self, e: io::Error) {
        use io::ErrorKind::*;
        if matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        ) {
            self.session.handle_eof(now());
        } else {
            self.session.close(now());
        }
        self.io_error = Some(e);
    }

    /// Closes the session (no FINs: the core's `close`), then the TLS
    /// connection (close_notify, best effort) and the socket. Returns the last
    /// events, ending with `Event::Closed` unless it was seen before.
    pub fn shutdown(mut self) -> Vec<Event> {
        self.session.close(now());
        self.drain();
        self.tls.send_close_notify();
        let _ = self.flush_tls();
        let _ = self.sock.shutdown(Shutdown::Write);
        self.events
    }
}

/// The error of a session that ended: the I/O error behind it, if any, else
/// the session's reason.
fn closed_error(conn: &Conn, reason: anytls_core::SessionError) -> io::Error {
    match &conn.io_error {
        Some(e) => io::Error::new(e.kind(), format!("{reason} ({e})")),
        None => reason.into(),
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

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

// ---------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------

/// Where and how the client connects.
pub struct ClientSetup {
    /// The AnyTLS server.
    pub server: SocketAddr,
    /// Name sent as SNI and checked against the certificate (an IP address
    /// sends no SNI).
    pub server_name: ServerName<'static>,
    /// TLS settings, including how the certificate is verified.
    pub tls: Arc<rustls::ClientConfig>,
    /// The AnyTLS password.
    pub password: String,
    /// Where the stream goes.
    pub dest: SocksAddr,
}

/// What a client run saw.
#[derive(Debug)]
pub struct Report {
    /// The destination's answer (at most [`MAX_RESPONSE`] bytes).
    pub response: Vec<u8>,
    /// The heartbeat's round-trip time (`None`: a v1 server, which does not
    /// answer heartbeats).
    pub heartbeat_rtt: Option<Duration>,
    /// The server's protocol version.
    pub peer_version: u8,
}

/// Connects, sends `request` on one stream, reads the whole response (until
/// the server's FIN), sends one heartbeat and closes. Bounded by [`RUN_TIME`].
pub fn run_client(setup: &ClientSetup, request: &[u8]) -> io::Result<Report> {
    let deadline = now() + RUN_TIME;

    // TCP and TLS first; the session starts on the established connection.
    let sock = TcpStream::connect_timeout(&setup.server, IO_TIMEOUT)?;
    let tls = rustls::ClientConnection::new(setup.tls.clone(), setup.server_name.clone())
        .map_err(io::Error::other)?;
    let (sock, tls) = handshake(sock, tls.into())?;
    println!("[client] TLS established with {}", setup.server);

    // The first stream and its request are queued before the first
    // poll_transmit, so that Settings, SYN and the destination leave together
    // as the reference client's shaped "packet 1".
    let mut session = Session::client(
        Arc::new(ClientConfig::new(&setup.password)),
        SessionSeq(1),
        Arc::new(PaddingScheme::default_scheme()),
        seed()?,
        now(),
    );
    let id = session.open_stream(now(), &setup.dest)?;
    session.write(id, Bytes::copy_from_slice(request))?;
    let mut conn = Conn::new(session, tls, sock);
    conn.drain();

    // 1. Request and response: read the stream until its EOF.
    let mut response = Vec::new();
    let mut done = false;
    while !done {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return Err(timed_out("no complete response in time"));
        }
        for ev in conn.step(left) {
            match ev {
                Event::Established { .. } => println!("[client] Settings sent"),
                Event::PeerVersion { version } => {
                    println!("[client] server speaks protocol v{version}")
                }
                Event::StreamConnected { id } => {
                    println!("[client] stream {} connected to {}", id.0, setup.dest)
                }
                Event::StreamRefused { reason, .. } => {
                    return Err(io::Error::other(format!("stream refused: {reason}")));
                }
                Event::StreamReadable { id } => done |= read_stream(&mut conn, id, &mut response)?,
                Event::Closed { reason } => return Err(closed_error(&conn, reason)),
                _ => {}
            }
        }
    }
    println!("[client] response complete: {} bytes", response.len());

    // 2. One heartbeat. v1 servers do not answer HeartRequest, so only v2.
    let peer_version = conn.session.peer_version();
    let mut heartbeat_rtt = None;
    if peer_version >= 2 {
        conn.session.send_heartbeat(now(), Some(IO_TIMEOUT));
        conn.drain();
        while heartbeat_rtt.is_none() {
            let left = deadline.saturating_duration_since(now());
            if left.is_zero() {
                return Err(timed_out("no heartbeat answer in time"));
            }
            for ev in conn.step(left) {
                match ev {
                    Event::HeartbeatAck { rtt } => {
                        println!("[client] heartbeat answered in {rtt:?}");
                        heartbeat_rtt = Some(rtt);
                    }
                    Event::Closed { reason } => return Err(closed_error(&conn, reason)),
                    _ => {}
                }
            }
        }
    } else {
        println!("[client] v1 server: heartbeats are not answered, none sent");
    }

    // 3. Done: close the session and the connection.
    conn.shutdown();
    println!("[client] closed");
    Ok(Report {
        response,
        heartbeat_rtt,
        peer_version,
    })
}

/// Reads everything a stream has now. Returns true at its EOF (the server's
/// FIN, after all data), when the stream has also been released.
fn read_stream(conn: &mut Conn, id: StreamId, response: &mut Vec<u8>) -> io::Result<bool> {
    let eof = loop {
        match conn.session.read(id) {
            Ok(Some(data)) => {
                let keep = data.len().min(MAX_RESPONSE - response.len());
                response.extend_from_slice(&data[..keep]);
            }
            Ok(None) => {
                // After the peer's FIN, `finish` only releases the stream.
                conn.session.finish(id)?;
                break true;
            }
            Err(StreamError::Blocked) => break false,
            Err(e) => return Err(e.into()),
        }
    };
    // Reading is a command: it may resume paused input, so drain.
    conn.drain();
    Ok(eof)
}

/// An HTTP/1.0 request for `/` (the server closes after its answer, which ends
/// the stream).
pub fn http_request(host: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: anytls-rs-blocking-example\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// The demo's AnyTLS server: the same driver in the server role.
// ---------------------------------------------------------------------------

/// A stream's connection to its destination.
struct Upstream {
    sock: TcpStream,
    /// Data read from the destination that the session refused (`Blocked`);
    /// retried on each pass, and nothing more is read until it goes.
    pending: Option<Bytes>,
}

/// How often the server loop wakes while streams are open. A std-only loop
/// cannot wait on the TLS socket and the destinations' sockets at once, so it
/// takes turns; a real server waits on all of them with mio/epoll (or uses
/// `anytls-tokio`).
const TICK: Duration = Duration::from_millis(10);
/// How long one pass waits for a destination's data.
const UPSTREAM_POLL: Duration = Duration::from_millis(1);

/// Serves one AnyTLS connection until its session closes, relaying each stream
/// to its destination (127.0.0.1 only: this is a demo server).
fn serve_connection(
    sock: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    cfg: Arc<ServerConfig>,
) -> io::Result<()> {
    let deadline = now() + RUN_TIME;
    let tls = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    let (sock, tls) = handshake(sock, tls.into())?;
    let mut conn = Conn::new(Session::server(cfg, seed()?, now()), tls, sock);
    let mut upstreams: BTreeMap<StreamId, Upstream> = BTreeMap::new();
    while !conn.session.is_closed() {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            conn.shutdown();
            return Err(timed_out("demo server: connection lasted too long"));
        }
        let max_wait = if upstreams.is_empty() { left } else { TICK };
        for ev in conn.step(max_wait) {
            match ev {
                Event::Authenticated { user } => {
                    println!("[server] client authenticated ({user:?})")
                }
                Event::AuthRejected { .. } => {
                    // A real server hands the replay bytes to a fallback web server.
                    println!("[server] wrong password: closing")
                }
                Event::StreamOpened { id, dest } => {
                    open_upstream(&mut conn, &mut upstreams, id, &dest)
                }
                Event::StreamReadable { id } => to_upstream(&mut conn, &mut upstreams, id),
                Event::Closed { reason } => println!("[server] session closed: {reason}"),
                _ => {}
            }
        }
        from_upstreams(&mut conn, &mut upstreams);
    }
    Ok(())
}

/// Answers `StreamOpened`: connects to the destination and accepts the stream
/// (SYNACK), or refuses it with the error.
fn open_upstream(
    conn: &mut Conn,
    upstreams: &mut BTreeMap<StreamId, Upstream>,
    id: StreamId,
    dest: &SocksAddr,
) {
    let connected = match dest.socket_addr() {
        Some(addr) if addr.ip().is_loopback() => TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .and_then(|sock| {
                sock.set_read_timeout(Some(UPSTREAM_POLL))?;
                sock.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(sock)
            }),
        _ => Err(io::Error::other(
            "this demo server only connects to 127.0.0.1",
        )),
    };
    let verdict = match connected {
        Ok(sock) => {
            println!("[server] stream {} -> {dest}", id.0);
            upstreams.insert(
                id,
                Upstream {
                    sock,
                    pending: None,
                },
            );
            Ok(())
        }
        Err(e) => {
            println!("[server] stream {} -> {dest} refused: {e}", id.0);
            Err(e.to_string())
        }
    };
    let _ = conn.session.accept_stream(id, verdict);
    conn.drain();
}

/// Answers `StreamReadable`: client data goes to the destination. At the
/// stream's EOF (the client's FIN) the stream is released and the destination
/// closed.
fn to_upstream(conn: &mut Conn, upstreams: &mut BTreeMap<StreamId, Upstream>, id: StreamId) {
    let Some(up) = upstreams.get_mut(&id) else {
        return;
    };
    let end = loop {
        match conn.session.read(id) {
            Ok(Some(data)) => {
                if up.sock.write_all(&data).is_err() {
                    break true;
                }
            }
            Ok(None) => break true,
            Err(StreamError::Blocked) => break false,
            Err(_) => break true,
        }
    };
    if end {
        // FIN to the client (or, after its FIN, just the release).
        let _ = conn.session.finish(id);
        let _ = up.sock.shutdown(Shutdown::Both);
        upstreams.remove(&id);
    }
    conn.drain();
}

/// One pass over the destinations: their data goes to the client; a
/// destination that closed gets its stream finished (FIN after the data).
fn from_upstreams(conn: &mut Conn, upstreams: &mut BTreeMap<StreamId, Upstream>) {
    let mut ended = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    for (&id, up) in upstreams.iter_mut() {
        if let Some(data) = up.pending.take() {
            match conn.session.write(id, data.clone()) {
                Ok(()) => {}
                Err(StreamError::Blocked) => {
                    up.pending = Some(data);
                    continue;
                }
                Err(_) => {
                    ended.push(id);
                    continue;
                }
            }
        }
        match up.sock.read(&mut buf) {
            Ok(0) => ended.push(id),
            Ok(n) => match conn.session.write(id, Bytes::copy_from_slice(&buf[..n])) {
                Ok(()) => {}
                Err(StreamError::Blocked) => up.pending = Some(Bytes::copy_from_slice(&buf[..n])),
                Err(_) => ended.push(id),
            },
            Err(e) if is_timeout(&e) => {}
            Err(_) => ended.push(id),
        }
    }
    for id in ended {
        let _ = conn.session.finish(id);
        upstreams.remove(&id);
    }
    conn.drain();
}

/// A tiny HTTP-ish server for one request: reads the request head, answers with
/// a short text and closes.
fn serve_http_once(listener: TcpListener) -> io::Result<()> {
    let (mut sock, _) = listener.accept()?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8 * 1024 {
            return Err(io::Error::other("target: request head too long"));
        }
        match sock.read(&mut buf)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let body = format!(
        "hello from the local target; you asked for {:?}\n",
        String::from_utf8_lossy(line)
    );
    println!("[target] answering {:?}", String::from_utf8_lossy(line));
    let answer = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(answer.as_bytes())
}

// ---------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------

/// Runs the whole demo on 127.0.0.1: a target and an AnyTLS server, each for
/// one connection on its own thread, and the client through them.
#[allow(clippy::disallowed_methods)] // spawns the demo's helper threads: the adapter may, the core may not
pub fn run_local_demo() -> io::Result<Report> {
    // The destination.
    let target = TcpListener::bind("127.0.0.1:0")?;
    let target_addr = target.local_addr()?;
    let target_thread = thread::spawn(move || serve_http_once(target));

    // The AnyTLS server, with a fresh self-signed certificate for "localhost".
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
    let server_cfg = ServerConfig::new(Authenticator::single(DEMO_PASSWORD));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server_addr = listener.local_addr()?;
    let server_thread = thread::spawn(move || {
        let (sock, _) = listener.accept()?;
        serve_connection(sock, Arc::new(server_tls), Arc::new(server_cfg))
    });
    println!("[demo] target on {target_addr}, AnyTLS server on {server_addr}");

    // The client trusts that one certificate and nothing else.
    let mut roots = RootCertStore::empty();
    roots.add(cert).map_err(io::Error::other)?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let setup = ClientSetup {
        server: server_addr,
        server_name: ServerName::try_from("localhost").map_err(io::Error::other)?,
        tls: Arc::new(client_tls),
        password: DEMO_PASSWORD.to_owned(),
        dest: SocksAddr::from(target_addr),
    };
    let report = run_client(&setup, &http_request("127.0.0.1"))?;

    // Both helpers end on their own once the client is done (the server sees
    // the client's close_notify); their errors are the demo's errors.
    for (name, t) in [("server", server_thread), ("target", target_thread)] {
        t.join()
            .map_err(|_| io::Error::other(format!("{name} thread panicked")))??;
    }
    Ok(report)
}

/// Connects to a real AnyTLS server at `server` (`HOST:PORT`) and requests
/// `http://dest/`. The server's certificate is NOT verified.
pub fn run_remote(server: &str, password: &str, dest: &str) -> io::Result<Report> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let (host, _) = server
        .rsplit_once(':')
        .ok_or_else(|| bad("server must be HOST:PORT"))?;
    let addr = server
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad("server name resolves to nothing"))?;
    let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|_| bad("invalid server name"))?;
    let (dest_host, dest_port) = dest
        .rsplit_once(':')
        .ok_or_else(|| bad("DEST must be HOST:PORT"))?;
    let dest_port: u16 = dest_port.parse().map_err(|_| bad("invalid DEST port"))?;

    println!("[client] WARNING: the server's certificate is NOT verified (example only)");
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(InsecureVerifier(provider)))
        .with_no_client_auth();
    let setup = ClientSetup {
        server: addr,
        server_name,
        tls: Arc::new(tls),
        password: password.to_owned(),
        dest: SocksAddr::domain(dest_host, dest_port),
    };
    run_client(&setup, &http_request(dest_host.trim_matches(['[', ']'])))
}

/// INSECURE: accepts any server certificate for any name (handshake signatures
/// are still checked, so the peer holds the key of the certificate it sent,
/// but nothing says that certificate is the right one). For trying the example
/// against a test server only; a real client verifies the certificate or pins
/// it, as `anytls-tokio` does.
#[derive(Debug)]
pub struct InsecureVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => run_local_demo(),
        [server, password] => run_remote(server, password, DEFAULT_DEST),
        [server, password, dest] => run_remote(server, password, dest),
        _ => {
            eprintln!("usage: blocking_client [HOST:PORT PASSWORD [DEST]]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(report) => {
            println!("--- response ---");
            let shown = &report.response[..report.response.len().min(2048)];
            print!("{}", String::from_utf8_lossy(shown));
            if shown.len() < report.response.len() {
                println!("\n[... {} more bytes]", report.response.len() - shown.len());
            }
            println!("----------------");
            match report.heartbeat_rtt {
                Some(rtt) => println!("heartbeat RTT: {rtt:?} (server v{})", report.peer_version),
                None => println!(
                    "heartbeat: not answered by a v{} server",
                    report.peer_version
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
