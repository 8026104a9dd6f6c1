//! Fixtures of the end-to-end suite: our server on runtime `S`, client
//! settings, bounded waits on any runtime, and runtime-free peers on std
//! threads (TCP targets, a pausable proxy, raw TLS clients, a TLS server that
//! records every record).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anytls_io::core::{Command, FrameDecoder, FrameLimits, StreamId};
use anytls_io::tls::{self, Identity, Verification};
use anytls_io::{
    AnyTlsStream, Client, ClientConfig, ReloadHandle, Runtime, Server, ServerConfig,
    ShutdownHandle, SocksAddr, relay_tcp,
};
use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const PASSWORD: &str = "e2e-Password_1";
/// Bound of a single step (connect, echo, one wait).
pub const STEP: Duration = Duration::from_secs(10);
pub const MIB: usize = 1024 * 1024;
/// Connections a test listener accepts before it stops.
const MAX_ACCEPTS: usize = 1000;
/// Read/write timeout of the sockets of the std-thread peers: a peer that
/// hears nothing for this long gives up.
const PEER_IDLE: Duration = Duration::from_secs(30);

// ----- our server and client settings -----

pub fn identity() -> (Identity, [u8; 32]) {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    (id, pin)
}

/// A running server on runtime `S` with the built-in relay and a zero
/// shutdown grace.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    /// For the reload suite (`reload.rs`), which shares these fixtures.
    #[allow(dead_code)]
    pub reload: ReloadHandle,
    /// What `serve_with` returned, once it did.
    ended: Arc<Mutex<Option<io::Result<()>>>>,
}

impl TestServer {
    /// Waits (on runtime `R`) for `serve_with` to return, and returns its result.
    pub async fn stopped<R: Runtime>(&self, limit: Duration) -> io::Result<()> {
        wait_until::<R>(limit, "the server to stop", || {
            self.ended.lock().unwrap().is_some()
        })
        .await;
        self.ended.lock().unwrap().take().unwrap()
    }
}

pub async fn start_server<S: Runtime>(bind: SocketAddr, cfg: ServerConfig) -> TestServer {
    let server = Server::<S>::bind(bind, cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let reload = server.reload_handle();
    let ended = Arc::new(Mutex::new(None));
    let slot = ended.clone();
    S::spawn(async move {
        let res = server
            .serve_with(Duration::ZERO, |req| relay_tcp(req, Duration::from_secs(5)))
            .await;
        *slot.lock().unwrap() = Some(res);
    });
    TestServer {
        addr,
        handle,
        reload,
        ended,
    }
}

pub async fn default_server<S: Runtime>() -> (TestServer, [u8; 32]) {
    let (id, pin) = identity();
    let srv = start_server::<S>(localhost0(), ServerConfig::new(PASSWORD, id)).await;
    (srv, pin)
}

pub fn localhost0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn client_config(server: SocketAddr, pin: [u8; 32]) -> ClientConfig {
    let mut cfg = ClientConfig::new(server.to_string(), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

// ----- bounded waits on any runtime -----

pub async fn sleep<R: Runtime>(d: Duration) {
    anytls_io::sleep_until::<R>(Instant::now() + d).await;
}

/// Polls `cond` every 20 ms (timers of `R`) until it holds; panics with
/// `what` after `limit`.
pub async fn wait_until<R: Runtime>(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    for _ in 0..(limit.as_millis() / 20 + 1) {
        if cond() {
            return;
        }
        if start.elapsed() > limit {
            break;
        }
        sleep::<R>(Duration::from_millis(20)).await;
    }
    assert!(cond(), "timed out after {limit:?} waiting for {what}");
}

/// Polls `f` every 20 ms until it gives a value; panics with `what` after
/// `limit`.
pub async fn wait_for<R: Runtime, T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let mut out = None;
    wait_until::<R>(limit, what, || {
        out = out.take().or_else(&mut f);
        out.is_some()
    })
    .await;
    out.unwrap()
}

/// Waits for a std thread without blocking the runtime; its panic, if any,
/// becomes ours.
pub async fn join_thread<R: Runtime, T>(h: JoinHandle<T>, limit: Duration, what: &str) -> T {
    wait_until::<R>(limit, what, || h.is_finished()).await;
    match h.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

// ----- runtime-free TCP peers on std threads -----

/// A listener on 127.0.0.1 served by a std thread; stops accepting when
/// dropped.
pub struct Target {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocked accept, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Accepts up to [`MAX_ACCEPTS`] connections, each handed to `per_conn` on its
/// own thread (sockets with [`PEER_IDLE`] timeouts).
fn spawn_acceptor(per_conn: impl Fn(TcpStream) + Send + Sync + 'static) -> Target {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let per_conn = Arc::new(per_conn);
    thread::spawn(move || {
        for _ in 0..MAX_ACCEPTS {
            let Ok((s, _)) = l.accept() else {
                return;
            };
            if flag.load(Ordering::Acquire) {
                return;
            }
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(PEER_IDLE));
            let _ = s.set_write_timeout(Some(PEER_IDLE));
            let f = per_conn.clone();
            thread::spawn(move || f(s));
        }
    });
    Target { addr, stop }
}

/// Echoes every byte back.
pub fn echo_target() -> Target {
    spawn_acceptor(|mut s| {
        if let Ok(mut r) = s.try_clone() {
            let _ = io::copy(&mut r, &mut s);
        }
    })
}

/// A port with nothing listening.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub const DOWNLOAD_SEED: u64 = 0xd0;
pub const UPLOAD_SEED: u64 = 0x0b;

/// Sends `len` pattern bytes to every connection, then closes it.
pub fn source_target(len: usize) -> Target {
    spawn_acceptor(move |mut s| {
        let _ = write_pattern_sync(&mut s, DOWNLOAD_SEED, len);
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Reads `len` bytes from every connection, checks them against the pattern and
/// answers `OK` or `BAD <reason>`.
pub fn sink_target(len: usize) -> Target {
    spawn_acceptor(move |mut s| {
        let verdict = match read_pattern_exact_sync(&mut s, UPLOAD_SEED, len) {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("BAD {e}"),
        };
        let _ = s.write_all(verdict.as_bytes());
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Reads `len` pattern bytes from every connection and reports whether they
/// all arrived intact (the verdict goes to the channel: the client may have
/// closed its stream already).
pub fn reporting_sink(len: usize) -> (Target, mpsc::Receiver<io::Result<()>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let target = spawn_acceptor(move |mut s| {
        let _ = s.set_read_timeout(Some(STEP));
        let verdict = read_pattern_exact_sync(&mut s, UPLOAD_SEED, len);
        let _ = tx.lock().unwrap().send(verdict);
    });
    (target, rx)
}

/// A one-shot HTTP-ish fallback: reads a request up to the blank line, reports
/// exactly what it received, answers and closes.
pub fn fallback_target(reply: &'static [u8]) -> (Target, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let target = spawn_acceptor(move |mut s| {
        let _ = s.set_read_timeout(Some(STEP));
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") && req.len() < 64 * 1024 {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let _ = tx.send(req);
        let _ = s.write_all(reply);
        let _ = s.shutdown(Shutdown::Write);
    });
    (target, rx)
}

/// A TCP proxy whose forwarding can be paused: bytes already read are held,
/// nothing is dropped or closed (a silent black hole while paused).
pub struct PausableProxy {
    target: Target,
    paused: Arc<(Mutex<bool>, Condvar)>,
}

impl PausableProxy {
    pub fn start(upstream: SocketAddr) -> PausableProxy {
        let paused = Arc::new((Mutex::new(false), Condvar::new()));
        let p = paused.clone();
        let target = spawn_acceptor(move |down| {
            let Ok(up) = TcpStream::connect_timeout(&upstream, STEP) else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = up.set_read_timeout(Some(PEER_IDLE));
            let _ = up.set_write_timeout(Some(PEER_IDLE));
            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                return;
            };
            let p2 = p.clone();
            thread::spawn(move || pump(up2, down2, &p2));
            pump(down, up, &p);
        });
        PausableProxy { target, paused }
    }

    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    pub fn set_paused(&self, p: bool) {
        *self.paused.0.lock().unwrap() = p;
        self.paused.1.notify_all();
    }
}

/// Forwards `r` to `w`, holding what it read while paused (at most
/// [`PEER_IDLE`] per pause).
fn pump(mut r: TcpStream, mut w: TcpStream, paused: &(Mutex<bool>, Condvar)) {
    let mut buf = vec![0u8; 32 * 1024];
    for _ in 0..1_000_000 {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let guard = paused.0.lock().unwrap();
        let (guard, _) = paused
            .1
            .wait_timeout_while(guard, PEER_IDLE, |p| *p)
            .unwrap();
        if *guard {
            return;
        }
        drop(guard);
        if w.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = w.shutdown(Shutdown::Write);
}

// ----- a deterministic byte pattern, checked byte by byte -----

const BLOCK: usize = 64 * 1024;

/// Block `k` of the pattern for `seed`: pseudo-random bytes that differ per
/// block (the block number is mixed into every word), so lost, duplicated,
/// reordered or corrupted bytes all show up.
fn pattern_block(seed: u64, k: u64, out: &mut [u8; BLOCK]) {
    let mut x = seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    for w in out.chunks_exact_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// Writes `len` bytes of the pattern (blocking).
fn write_pattern_sync(w: &mut impl Write, seed: u64, len: usize) -> io::Result<()> {
    let mut block = Box::new([0u8; BLOCK]);
    let mut sent = 0;
    let mut k = 0;
    while sent < len {
        pattern_block(seed, k, &mut block);
        let n = BLOCK.min(len - sent);
        w.write_all(&block[..n])?;
        sent += n;
        k += 1;
    }
    w.flush()
}

/// Writes `len` bytes of the pattern.
pub async fn write_pattern(
    w: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: usize,
) -> io::Result<()> {
    let mut block = Box::new([0u8; BLOCK]);
    let mut sent = 0;
    let mut k = 0;
    while sent < len {
        pattern_block(seed, k, &mut block);
        let n = BLOCK.min(len - sent);
        w.write_all(&block[..n]).await?;
        sent += n;
        k += 1;
    }
    w.flush().await
}

/// Checks bytes against the pattern as they arrive.
struct Checker {
    seed: u64,
    pos: u64,
    block: Box<[u8; BLOCK]>,
}

impl Checker {
    fn new(seed: u64) -> Checker {
        let mut block = Box::new([0u8; BLOCK]);
        pattern_block(seed, 0, &mut block);
        Checker {
            seed,
            pos: 0,
            block,
        }
    }

    /// Checks the next bytes; an error naming the first wrong byte on mismatch.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let off = (self.pos % BLOCK as u64) as usize;
            let n = data.len().min(BLOCK - off);
            if data[..n] != self.block[off..off + n] {
                let i = (0..n)
                    .find(|&i| data[i] != self.block[off + i])
                    .unwrap_or(0);
                let at = self.pos + i as u64;
                return Err(io::Error::other(format!("pattern mismatch at byte {at}")));
            }
            self.pos += n as u64;
            data = &data[n..];
            if self.pos % BLOCK as u64 == 0 {
                pattern_block(self.seed, self.pos / BLOCK as u64, &mut self.block);
            }
        }
        Ok(())
    }
}

fn eof_after(got: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("EOF after {got} of {len} bytes"),
    )
}

/// Reads exactly `len` bytes, checking every byte (blocking).
fn read_pattern_exact_sync(r: &mut impl Read, seed: u64, len: usize) -> io::Result<()> {
    let mut c = Checker::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < len {
        let want = buf.len().min(len - got);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(eof_after(got, len));
        }
        c.feed(&buf[..n])?;
        got += n;
    }
    Ok(())
}

/// Reads until EOF (at most `max` bytes), checking every byte; returns the
/// byte count.
pub async fn read_pattern_to_eof(
    r: &mut (impl AsyncRead + Unpin),
    seed: u64,
    max: usize,
) -> io::Result<u64> {
    let mut c = Checker::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    // Every read but the last returns at least one byte.
    for _ in 0..=max {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(c.pos);
        }
        c.feed(&buf[..n])?;
        if c.pos > max as u64 {
            break;
        }
    }
    Err(io::Error::other(format!("more than {max} bytes")))
}

/// Reads exactly `len` bytes, checking every byte.
pub async fn read_pattern_exact(
    r: &mut (impl AsyncRead + Unpin),
    seed: u64,
    len: usize,
) -> io::Result<()> {
    let mut c = Checker::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < len {
        let want = buf.len().min(len - got);
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(eof_after(got, len));
        }
        c.feed(&buf[..n])?;
        got += n;
    }
    Ok(())
}

/// Echoes `len` pattern bytes through `s` (writing and reading concurrently).
pub async fn echo_pattern(s: AnyTlsStream, seed: u64, len: usize) -> io::Result<()> {
    let (mut r, mut w) = futures_lite::io::split(s);
    let (wr, rd) = futures_lite::future::zip(
        write_pattern(&mut w, seed, len),
        read_pattern_exact(&mut r, seed, len),
    )
    .await;
    wr?;
    rd
}

/// Opens a stream to `target` (bounded).
pub async fn open<C: Runtime>(client: &Client<C>, target: SocketAddr) -> AnyTlsStream {
    anytls_io::timeout::<C, _>(STEP, client.connect(SocksAddr::from(target)))
        .await
        .expect("connect hung")
        .expect("connect")
}

/// Opens a stream to `target` and echoes `len` pattern bytes through it.
pub async fn echo_once<C: Runtime>(
    client: &Client<C>,
    target: SocketAddr,
    seed: u64,
    len: usize,
) -> io::Result<()> {
    let s = anytls_io::timeout::<C, _>(STEP, client.connect(SocksAddr::from(target)))
        .await
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect hung"))??;
    anytls_io::timeout::<C, _>(STEP, echo_pattern(s, seed, len))
        .await
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "echo hung"))?
}

// ----- raw TLS peers (rustls over blocking std sockets) -----

pub type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client pinned to the server's certificate; the handshake runs on the
/// first write.
pub fn raw_tls(pin: [u8; 32], addr: SocketAddr) -> RawTls {
    let cfg = tls::client_config(&Verification::Pin(pin), &[]).unwrap();
    let name = tls::server_name("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, STEP).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    tcp.set_write_timeout(Some(STEP)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads until EOF or an error: the bytes and how it ended (`Ok` after the
/// peer's close_notify; a read timeout is an error).
pub fn read_all(r: &mut impl Read) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        match r.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (out, Err(io::Error::new(io::ErrorKind::TimedOut, "hung")));
            }
            Err(e) => return (out, Err(e)),
        }
    }
    (out, Err(io::Error::other("too much data")))
}

/// A TLS server driven record by record: returns the ciphertext length and the
/// plaintext of each application record the client sent, until `done` says so.
pub fn record_server(
    l: TcpListener,
    id: Identity,
    done: impl Fn(&[(usize, Vec<u8>)]) -> bool,
) -> Vec<(usize, Vec<u8>)> {
    let cfg = Arc::new(tls::server_config(&id, &[]).unwrap());
    let (mut sock, _) = l.accept().unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    sock.set_write_timeout(Some(STEP)).unwrap();
    let mut conn = rustls::ServerConnection::new(cfg).unwrap();
    let mut records = Vec::new();
    for _ in 0..10_000 {
        for _ in 0..1000 {
            if !conn.wants_write() {
                break;
            }
            conn.write_tls(&mut sock).unwrap();
        }
        if done(&records) {
            break;
        }
        let mut header = [0u8; 5];
        sock.read_exact(&mut header).unwrap();
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut rec = header.to_vec();
        rec.resize(5 + len, 0);
        sock.read_exact(&mut rec[5..]).unwrap();
        let mut rd = &rec[..];
        for _ in 0..100 {
            if rd.is_empty() {
                break;
            }
            conn.read_tls(&mut rd).unwrap();
        }
        assert!(rd.is_empty(), "rustls took the whole record");
        let was_handshaking = conn.is_handshaking();
        conn.process_new_packets().unwrap();
        let mut plain = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..1000 {
            match conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        if !plain.is_empty() {
            assert!(!was_handshaking, "application data during the handshake");
            assert_eq!(header[0], 23, "application_data record");
            assert_eq!(
                conn.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            records.push((len, plain));
        }
    }
    records
}

/// Decodes the frames in the records after the preamble: the non-padding
/// commands, the data of stream 1, and whether the records ended on a frame
/// boundary.
pub fn decode_frames(records: &[(usize, Vec<u8>)]) -> (Vec<Command>, Vec<Vec<u8>>, bool) {
    let mut stream = BytesMut::new();
    for (_, p) in records.iter().skip(1) {
        stream.extend_from_slice(p);
    }
    let mut dec = FrameDecoder::new(FrameLimits::UNLIMITED);
    let mut cmds = Vec::new();
    let mut data = Vec::new();
    for _ in 0..10_000 {
        let Some(f) = dec.decode(&mut stream).unwrap() else {
            break;
        };
        if f.cmd == Command::Psh && f.stream_id == StreamId(1) {
            data.push(f.data.to_vec());
        }
        if f.cmd != Command::Waste {
            cmds.push(f.cmd);
        }
    }
    let whole = stream.is_empty() && dec.pending_header().is_none();
    (cmds, data, whole)
}
