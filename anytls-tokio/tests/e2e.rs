//! End-to-end tests of the tokio adapter on 127.0.0.1: client -> server -> TCP
//! target through the library API (no SOCKS5), plus wire-level checks with raw
//! TLS peers. Every wait is bounded by a timeout and every loop by a count.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_tokio::core::{Command, FrameDecoder, FrameLimits, PasswordHash, StreamId};
use anytls_tokio::tls::{self, Identity, Verification};
use anytls_tokio::{
    Client, ClientConfig, PoolConfig, PoolStats, Server, ServerConfig, ShutdownHandle, SocksAddr,
    relay_tcp,
};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const PASSWORD: &str = "e2e-Password_1";
/// Bound of a single step (connect, echo, one wait).
const STEP: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;
/// Connections a test listener accepts before it stops.
const MAX_ACCEPTS: usize = 1000;

// ----- fixtures -----

fn identity() -> (Identity, [u8; 32]) {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    (id, pin)
}

/// A running server with the built-in relay and a zero shutdown grace.
struct TestServer {
    addr: SocketAddr,
    handle: ShutdownHandle,
    task: JoinHandle<io::Result<()>>,
}

async fn start_server(bind: SocketAddr, cfg: ServerConfig) -> TestServer {
    let server = Server::bind(bind, cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let task = tokio::spawn(
        server.serve_with(Duration::ZERO, |req| relay_tcp(req, Duration::from_secs(5))),
    );
    TestServer { addr, handle, task }
}

async fn default_server() -> (TestServer, [u8; 32]) {
    let (id, pin) = identity();
    let srv = start_server(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(PASSWORD, id),
    )
    .await;
    (srv, pin)
}

fn client_config(server: SocketAddr, pin: [u8; 32]) -> ClientConfig {
    let mut cfg = ClientConfig::new(server.to_string(), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    for _ in 0..(limit.as_millis() / 20 + 1) {
        if cond() {
            return;
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cond(), "timed out after {limit:?} waiting for {what}");
}

fn spawn_acceptor<F, Fut>(l: TcpListener, per_conn: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        for _ in 0..MAX_ACCEPTS {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(per_conn(s));
        }
    });
}

async fn local_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Echoes every byte back.
async fn echo_target() -> SocketAddr {
    let (l, addr) = local_listener().await;
    spawn_acceptor(l, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    addr
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

/// Writes `len` bytes of the pattern.
async fn write_pattern(w: &mut (impl AsyncWrite + Unpin), seed: u64, len: usize) -> io::Result<()> {
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

    /// Checks the next bytes; the offset of the first wrong byte on mismatch.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            let off = (self.pos % BLOCK as u64) as usize;
            let n = data.len().min(BLOCK - off);
            if data[..n] != self.block[off..off + n] {
                let i = (0..n)
                    .find(|&i| data[i] != self.block[off + i])
                    .unwrap_or(0);
                return Err(self.pos + i as u64);
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

/// Reads until EOF (at most `max` bytes), checking every byte; returns the
/// byte count.
async fn read_pattern_to_eof(
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
        c.feed(&buf[..n])
            .map_err(|at| io::Error::other(format!("pattern mismatch at byte {at}")))?;
        if c.pos > max as u64 {
            break;
        }
    }
    Err(io::Error::other(format!("more than {max} bytes")))
}

/// Reads exactly `len` bytes, checking every byte.
async fn read_pattern_exact(
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
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {got} of {len} bytes"),
            ));
        }
        c.feed(&buf[..n])
            .map_err(|at| io::Error::other(format!("pattern mismatch at byte {at}")))?;
        got += n;
    }
    Ok(())
}

const DOWNLOAD_SEED: u64 = 0xd0;
const UPLOAD_SEED: u64 = 0x0b;

/// Sends `len` pattern bytes to every connection, then closes it.
async fn source_target(len: usize) -> SocketAddr {
    let (l, addr) = local_listener().await;
    spawn_acceptor(l, move |mut s| async move {
        let _ = write_pattern(&mut s, DOWNLOAD_SEED, len).await;
        let _ = s.shutdown().await;
    });
    addr
}

/// Reads `len` bytes from every connection, checks them against the pattern and
/// answers `OK` or `BAD <reason>`.
async fn sink_target(len: usize) -> SocketAddr {
    let (l, addr) = local_listener().await;
    spawn_acceptor(l, move |mut s| async move {
        let verdict = match read_pattern_exact(&mut s, UPLOAD_SEED, len).await {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("BAD {e}"),
        };
        let _ = s.write_all(verdict.as_bytes()).await;
        let _ = s.shutdown().await;
    });
    addr
}

/// Echoes `len` pattern bytes through `s` (writing and reading concurrently).
async fn echo_pattern<S: AsyncRead + AsyncWrite>(s: S, seed: u64, len: usize) -> io::Result<()> {
    let (mut r, mut w) = tokio::io::split(s);
    let (wr, rd) = tokio::join!(
        write_pattern(&mut w, seed, len),
        read_pattern_exact(&mut r, seed, len)
    );
    wr?;
    rd
}

/// Opens a stream to `target` (bounded).
async fn open(client: &Client, target: SocketAddr) -> anytls_tokio::AnyTlsStream {
    timeout(STEP, client.connect(SocksAddr::from(target)))
        .await
        .expect("connect hung")
        .expect("connect")
}

async fn echo_once(client: &Client, target: SocketAddr, seed: u64, len: usize) -> io::Result<()> {
    let s = timeout(STEP, client.connect(SocksAddr::from(target)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect hung"))??;
    timeout(STEP, echo_pattern(s, seed, len))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "echo hung"))?
}

// ----- 1. byte-exact transfers -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_byte_exact() {
    let (srv, pin) = default_server().await;
    let client = Client::new(client_config(srv.addr, pin)).unwrap();

    // 1 KiB echo.
    let echo = echo_target().await;
    echo_once(&client, echo, 1, 1024).await.unwrap();

    let big = 64 * MIB;
    let limit = Duration::from_secs(30);

    // 64 MiB download.
    let start = Instant::now();
    let source = source_target(big).await;
    let mut s = open(&client, source).await;
    let got = timeout(limit, read_pattern_to_eof(&mut s, DOWNLOAD_SEED, big))
        .await
        .expect("download hung")
        .unwrap();
    assert_eq!(got, big as u64, "download length");
    drop(s);
    eprintln!("64 MiB download: {:?}", start.elapsed());

    // 64 MiB upload, verified by the target.
    let start = Instant::now();
    let sink = sink_target(big).await;
    let mut s = open(&client, sink).await;
    timeout(limit, write_pattern(&mut s, UPLOAD_SEED, big))
        .await
        .expect("upload hung")
        .unwrap();
    let mut verdict = Vec::new();
    timeout(STEP, s.read_to_end(&mut verdict))
        .await
        .expect("verdict hung")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&verdict), "OK");
    eprintln!("64 MiB upload: {:?}", start.elapsed());

    let st = client.stats();
    assert_eq!(st.dials, 1, "one session served everything: {st:?}");
    assert_eq!(st.reused, 2, "{st:?}");
    client.close();
    srv.handle.shutdown();
}

// ----- 2. concurrency -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams() {
    let (srv, pin) = default_server().await;
    let client = Client::new(client_config(srv.addr, pin)).unwrap();
    let echo = echo_target().await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { echo_once(&client, echo, 1000 + i, 32 * 1024).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        timeout(Duration::from_secs(30), t)
            .await
            .unwrap_or_else(|_| panic!("stream {i} hung"))
            .unwrap()
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
    }
    eprintln!("200 concurrent streams: {:?}", start.elapsed());
    let st = client.stats();
    assert!(st.dials >= 2, "the pool dialled sessions as needed: {st:?}");
    assert_eq!(st.dial_failures, 0, "{st:?}");
    assert_eq!(st.died, 0, "{st:?}");
    client.close();
    srv.handle.shutdown();
}

// ----- 3. server restart -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_fails_in_flight_streams_and_pool_recovers() {
    let (id, pin) = identity();
    let srv = start_server(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(PASSWORD, id.clone()),
    )
    .await;
    let addr = srv.addr;
    let echo = echo_target().await;
    let client = Client::new(client_config(addr, pin)).unwrap();

    for i in 0..3 {
        echo_once(&client, echo, i, 4096).await.unwrap();
    }
    // Two sessions: one idle, one carrying a stream that stays open.
    let idle = open(&client, echo).await;
    let mut in_flight = open(&client, echo).await;
    drop(idle);
    in_flight.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(STEP, in_flight.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    let before = client.stats();
    assert_eq!((before.idle, before.busy), (1, 1), "{before:?}");

    // Stop the server; its sessions are closed at once (zero grace).
    srv.handle.shutdown();
    timeout(STEP, srv.task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();

    // The in-flight stream fails with an error, it does not hang.
    let err = timeout(STEP, in_flight.read(&mut buf))
        .await
        .expect("in-flight read hung after the server went away")
        .expect_err("in-flight read must fail");
    eprintln!("in-flight stream error: {err:?}");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("closed by peer"), "{err}");
    let err = timeout(STEP, in_flight.write_all(b"more"))
        .await
        .expect("write hung")
        .expect_err("write fails");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    drop(in_flight);
    wait_until(STEP, "the pool to drop the dead sessions", || {
        let s = client.stats();
        s.idle == 0 && s.busy == 0
    })
    .await;

    // While nothing listens: a clear error, no hang.
    let err = timeout(STEP, client.connect(SocksAddr::from(echo)))
        .await
        .expect("connect hung while the server is down")
        .expect_err("no server");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");

    // A new server on the same port: the pool recovers.
    let srv2 = start_server(addr, ServerConfig::new(PASSWORD, id)).await;
    assert_eq!(srv2.addr, addr);
    for i in 0..3 {
        echo_once(&client, echo, 100 + i, 4096)
            .await
            .unwrap_or_else(|e| panic!("request {i} after restart: {e}"));
    }
    let after = client.stats();
    assert!(after.died >= 2, "{after:?}");
    assert_eq!(after.idle, 1, "{after:?}");
    client.close();
    srv2.handle.shutdown();
}

// ----- 4. pre-warming -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_idle_prewarms_sessions_before_any_request() {
    let (srv, pin) = default_server().await;
    let echo = echo_target().await;
    let mut cfg = client_config(srv.addr, pin);
    cfg.pool = PoolConfig {
        ensure_idle: 3,
        // Only the start-up ensure runs during the test.
        check_interval: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..PoolConfig::default()
    };
    let client = Client::new(cfg).unwrap();
    let h = srv.handle.clone();
    wait_until(STEP, "3 sessions on the server", || {
        h.active_sessions() == 3
    })
    .await;
    wait_until(STEP, "3 idle sessions in the pool", || {
        client.stats().idle == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = client.stats();
    assert_eq!(h.active_sessions(), 3, "no overshoot");
    assert_eq!((st.prewarm_dials, st.dials, st.reused), (3, 3, 0), "{st:?}");

    echo_once(&client, echo, 7, 1024).await.unwrap();
    let st = client.stats();
    assert_eq!(
        st.reused, 1,
        "the first request used a pre-warmed session: {st:?}"
    );
    assert_eq!(st.dials, 3, "no dial for the request: {st:?}");
    assert_eq!(h.active_sessions(), 3, "no new session on the server");
    client.close();
    srv.handle.shutdown();
}

// ----- 5. heartbeats on idle sessions -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_answered_on_idle_prewarmed_sessions() {
    let (srv, pin) = default_server().await;
    let mut cfg = client_config(srv.addr, pin);
    cfg.pool = PoolConfig {
        ensure_idle: 2,
        heartbeat: Some(Duration::from_secs(1)),
        check_interval: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..PoolConfig::default()
    };
    let client = Client::new(cfg).unwrap();
    // Each session beats first after 0.8-1 s, then every second.
    wait_until(STEP, "3 heartbeat acks", || {
        client.stats().heartbeat_acks >= 3
    })
    .await;
    let st = client.stats();
    assert_eq!(
        (st.busy, st.reused, st.died),
        (0, 0, 0),
        "no stream was open: {st:?}"
    );
    assert_eq!(st.idle, 2, "{st:?}");
    assert!(st.heartbeats >= st.heartbeat_acks, "{st:?}");
    let rtt = st.heartbeat_rtt_last.expect("rtt recorded");
    assert!(rtt < Duration::from_secs(5), "{st:?}");
    assert!(st.heartbeat_rtt_min.is_some() && st.heartbeat_rtt_max.is_some());
    client.close();
    srv.handle.shutdown();
}

// ----- 6. heartbeat deadline -----

/// A TCP proxy whose forwarding can be paused: bytes already read are held,
/// nothing is dropped or closed (a silent black hole while paused).
struct PausableProxy {
    addr: SocketAddr,
    paused: watch::Sender<bool>,
}

impl PausableProxy {
    async fn start(upstream: SocketAddr) -> PausableProxy {
        let (l, addr) = local_listener().await;
        let (paused, rx) = watch::channel(false);
        tokio::spawn(async move {
            for _ in 0..MAX_ACCEPTS {
                let Ok((down, _)) = l.accept().await else {
                    return;
                };
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, rx.clone()));
                tokio::spawn(pump(ur, dw, rx.clone()));
            }
        });
        PausableProxy { addr, paused }
    }

    fn set_paused(&self, p: bool) {
        self.paused.send_replace(p);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    for _ in 0..1_000_000 {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_deadline_kills_silent_sessions_and_ensure_replaces_them() {
    let (srv, pin) = default_server().await;
    let proxy = PausableProxy::start(srv.addr).await;
    let echo = echo_target().await;
    let mut cfg = client_config(proxy.addr, pin);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.pool = PoolConfig {
        ensure_idle: 2,
        heartbeat: Some(Duration::from_secs(1)),
        heartbeat_timeout: Some(Duration::from_millis(500)),
        check_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        dial_backoff: Duration::from_millis(100),
        max_dial_backoff: Duration::from_millis(500),
        ..PoolConfig::default()
    };
    let client = Client::new(cfg).unwrap();
    wait_until(STEP, "2 idle sessions with answered heartbeats", || {
        let s = client.stats();
        s.idle == 2 && s.heartbeat_acks >= 2
    })
    .await;
    echo_once(&client, echo, 1, 1024).await.unwrap();
    let before = client.stats();

    // Black hole: heartbeats get no answer, the sessions die by the deadline.
    proxy.set_paused(true);
    let paused_at = Instant::now();
    wait_until(STEP, "both sessions to die", || {
        client.stats().died >= before.died + 2
    })
    .await;
    let died_after = paused_at.elapsed();
    eprintln!("sessions died {died_after:?} after the proxy went silent");
    // Next beat within 1 s, then 500 ms without an answer (plus slack).
    assert!(died_after < Duration::from_secs(4), "{died_after:?}");
    wait_until(STEP, "ensure to dial replacements", || {
        client.stats().dials > before.dials
    })
    .await;

    proxy.set_paused(false);
    wait_until(STEP, "2 fresh idle sessions", || client.stats().idle == 2).await;
    for i in 0..3 {
        echo_once(&client, echo, 10 + i, 1024)
            .await
            .unwrap_or_else(|e| panic!("request {i} after recovery: {e}"));
    }
    // (Under heavy load a heartbeat may also miss its deadline before the
    // pause; such extra deaths and dials only add to the counts.)
    let st: PoolStats = client.stats();
    assert!(
        st.established > before.established && st.dials > before.dials,
        "before: {before:?}\nafter: {st:?}"
    );
    client.close();
    srv.handle.shutdown();
}

// ----- raw TLS peers -----

fn raw_connector(pin: [u8; 32]) -> tokio_rustls::TlsConnector {
    let cfg = tls::client_config(&Verification::Pin(pin), &[]).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn raw_tls(pin: [u8; 32], addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tls::server_name("localhost").unwrap();
    timeout(STEP, raw_connector(pin).connect(name, tcp))
        .await
        .unwrap()
        .unwrap()
}

/// Reads until EOF or an error: the bytes and how it ended.
async fn read_all(r: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        match timeout(STEP, r.read(&mut buf)).await {
            Err(_) => return (out, Err(io::Error::new(io::ErrorKind::TimedOut, "hung"))),
            Ok(Ok(0)) => return (out, Ok(())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Err(e)),
        }
    }
    (out, Err(io::Error::other("too much data")))
}

// ----- 7. wrong password -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_without_a_byte() {
    let (srv, pin) = default_server().await;
    let echo = echo_target().await;

    // Our client: a clear error on the stream, not a hang.
    let mut cfg = client_config(srv.addr, pin);
    cfg.password = "not-the-password".into();
    let client = Client::new(cfg).unwrap();
    let start = Instant::now();
    let res = timeout(STEP, async {
        let mut s = client.connect(SocksAddr::from(echo)).await?;
        s.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await?;
        io::Result::Ok(buf)
    })
    .await
    .expect("a wrong password must not hang the client");
    let err = res.expect_err("a wrong password must fail");
    eprintln!("wrong password: {err:?} after {:?}", start.elapsed());
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("closed by peer"), "{err}");
    client.close();

    // A raw TLS client: after a wrong preamble the server sends nothing at all.
    let mut tls = raw_tls(pin, srv.addr).await;
    let mut pre = Vec::new();
    pre.extend_from_slice(PasswordHash::of("wrong").as_bytes());
    pre.extend_from_slice(&30u16.to_be_bytes());
    pre.extend_from_slice(&[0u8; 30]);
    assert_eq!(pre.len(), 64);
    tls.write_all(&pre).await.unwrap();
    tls.flush().await.unwrap();
    let (got, end) = read_all(&mut tls).await;
    assert!(got.is_empty(), "server sent {} bytes", got.len());
    // A clean EOF: close_notify, then the TCP close.
    end.expect("clean TLS close");
    srv.handle.shutdown();
}

// ----- 8. fallback -----

/// A one-shot HTTP-ish fallback: reads a request up to the blank line, reports
/// exactly what it received, answers and closes.
async fn fallback_target(
    reply: &'static [u8],
) -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let (l, addr) = local_listener().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    spawn_acceptor(l, move |mut s| {
        let tx = tx.clone();
        async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") && req.len() < 64 * 1024 {
                match timeout(STEP, s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = tx.send(req).await;
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_goes_to_the_fallback() {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let (fb_addr, mut received) = fallback_target(REPLY).await;
    let (id, pin) = identity();
    let mut cfg = ServerConfig::new(PASSWORD, id);
    cfg.fallback = Some(fb_addr);
    // A long deadline: every request must be decided by its first read.
    cfg.handshake_timeout = Duration::from_secs(30);
    let srv = start_server("127.0.0.1:0".parse().unwrap(), cfg).await;

    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\n\r\n"[..],
    ] {
        let start = Instant::now();
        let mut tls = raw_tls(pin, srv.addr).await;
        tls.write_all(req).await.unwrap();
        tls.flush().await.unwrap();
        let (got, end) = read_all(&mut tls).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(REPLY),
            "reply through the fallback (ended with {end:?})"
        );
        let seen = timeout(STEP, received.recv()).await.unwrap().unwrap();
        assert_eq!(seen, req, "the fallback got exactly the client's bytes");
        eprintln!(
            "fallback for a {}-byte request: {:?}",
            req.len(),
            start.elapsed()
        );
        // Decided on the first read whatever its length, not by the deadline:
        // timing does not tell a short probe from a wrong password.
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    }
    srv.handle.shutdown();
}

// ----- 9. one Transmit per TLS record -----

/// A TLS server driven record by record: returns the ciphertext length and the
/// plaintext of each application record the client sent, until `done` says so.
fn record_server(
    l: std::net::TcpListener,
    id: Identity,
    done: impl Fn(&[(usize, Vec<u8>)]) -> bool,
) -> Vec<(usize, Vec<u8>)> {
    let cfg = Arc::new(tls::server_config(&id, &[]).unwrap());
    let (mut sock, _) = l.accept().unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
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
fn decode_frames(records: &[(usize, Vec<u8>)]) -> (Vec<Command>, Vec<Vec<u8>>, bool) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transmit_is_one_tls_record_of_the_planned_size() {
    const PAYLOAD: usize = 3000;
    let (id, pin) = identity();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Until the destination and the whole payload arrived.
    let server = std::thread::spawn(move || {
        record_server(l, id, |recs| {
            let (_, data, whole) = decode_frames(recs);
            whole && data.iter().skip(1).map(Vec::len).sum::<usize>() >= PAYLOAD
        })
    });

    let client = Client::new(client_config(addr, pin)).unwrap();
    let dest = SocksAddr::domain("example.com", 443);
    let mut s = timeout(STEP, client.connect(dest.clone()))
        .await
        .unwrap()
        .unwrap();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    s.write_all(&payload).await.unwrap();
    let records = timeout(STEP, tokio::task::spawn_blocking(move || server.join()))
        .await
        .expect("record server hung")
        .unwrap()
        .unwrap();
    drop(s);
    client.close();

    let sizes: Vec<usize> = records.iter().map(|(_, p)| p.len()).collect();
    eprintln!("client record plaintext sizes: {sizes:?}");
    for (ct, p) in &records {
        // TLS 1.3: content type byte + 16-byte AEAD tag.
        assert_eq!(*ct, p.len() + 17, "ciphertext of a {}-byte record", p.len());
    }
    // Packet 0: the preamble alone, 64 bytes with the default scheme (0=30-30).
    let (_, pre) = &records[0];
    assert_eq!(pre.len(), 64);
    assert_eq!(&pre[..32], PasswordHash::of(PASSWORD).as_bytes());
    assert_eq!(&pre[32..34], &30u16.to_be_bytes());
    assert!(pre[34..].iter().all(|b| *b == 0));
    // Packet 1: Settings + SYN + destination, padded to 100..399 bytes.
    assert!((100..400).contains(&sizes[1]), "packet 1: {sizes:?}");
    // Packet 2 (the payload, 3007 bytes with its PSH header): 400..499, then
    // 500..999-byte records while data remains.
    assert!(
        (400..500).contains(&sizes[2]),
        "packet 2, record 1: {sizes:?}"
    );
    assert!(
        (500..1000).contains(&sizes[3]),
        "packet 2, record 2: {sizes:?}"
    );
    assert!(
        (500..1000).contains(&sizes[4]),
        "packet 2, record 3: {sizes:?}"
    );

    // Packet 1 alone holds Settings, SYN(1) and PSH(1, destination).
    let (cmds, data, whole) = decode_frames(&records[..2]);
    assert!(whole, "packet 1 ends on a frame boundary");
    assert_eq!(cmds, [Command::Settings, Command::Syn, Command::Psh]);
    let mut encoded = Vec::new();
    dest.encode(&mut encoded).unwrap();
    assert_eq!(data, [encoded]);
    // Then only the payload, byte-exact.
    let (cmds, data, whole) = decode_frames(&records);
    assert!(whole);
    assert!(cmds[3..].iter().all(|c| *c == Command::Psh), "{cmds:?}");
    assert_eq!(data[1..].concat(), payload);
}
