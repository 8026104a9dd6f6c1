//! Active probing: what a censor's prober sees when it talks to our server
//! without the password. Section 2.2 of the protocol reference: a failed
//! preamble goes to the fallback with every byte it sent replayed (no AnyTLS
//! byte is ever sent), or, without a fallback, the TLS connection is simply
//! closed; and the verdict comes at once, whatever the probe sent, so timing
//! tells nothing either.
//!
//! Written once as `async fn name<S: TestRuntime>()` for the server runtime
//! `S` (tokio and smol, see [`probing_suite!`]). The probes are raw TLS
//! clients (rustls over blocking std sockets) and the fallback is an
//! HTTP-like peer, both on std threads, so no client runtime is involved.
//! Everything runs on 127.0.0.1; every wait is bounded by a timeout and every
//! loop by a count.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anytls_io::core::PasswordHash;
use anytls_io::tls::{self, Identity, Verification};
use anytls_io::{Runtime, Server, ServerConfig, ShutdownHandle, relay_tcp};
use anytls_tests::TestRuntime;

/// Instantiates `async fn f<S>()` for the server on tokio and on smol
/// (modules `tokio_server` and `smol_server`); attributes written before a
/// name (e.g. `#[ignore]`) go on both of its tests.
macro_rules! probing_suite {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        probing_suite!(@server tokio_server, anytls_tests::Tokio; $($(#[$attr])* $name),*);
        probing_suite!(@server smol_server, anytls_tests::Smol; $($(#[$attr])* $name),*);
    };
    (@server $module:ident, $s:ty; $($(#[$attr:meta])* $name:ident),*) => {
        mod $module {
            $(
                #[test]
                $(#[$attr])*
                fn $name() {
                    anytls_tests::run::<$s, $s, _>(super::$name::<$s>())
                }
            )*
        }
    };
}

probing_suite!(
    probes_reach_the_fallback_byte_for_byte,
    probes_without_a_fallback_get_a_bare_close,
    close_time_does_not_depend_on_the_preamble,
    fallback_time_does_not_depend_on_the_preamble,
);

const PASSWORD: &str = "probing-Password_1";
/// Bound of one blocking socket operation and of one wait.
const STEP: Duration = Duration::from_secs(5);
/// The server's preamble deadline: short, so that a server that waits for it
/// stands out clearly from one that decides on the first record.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// What the fallback answers to everything.
const REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n\
Content-Length: 11\r\nConnection: close\r\n\r\nbad request";
/// Connections a test listener accepts before it stops.
const MAX_ACCEPTS: usize = 1000;
/// Most bytes a peer reads from one connection.
const MAX_READ: usize = 1024 * 1024;
/// Timing samples per variant.
const SAMPLES: usize = 20;
/// Every median below this...
const MEDIAN_LIMIT: Duration = Duration::from_millis(200);
/// ...and the slowest median at most this many times the fastest...
const MAX_RATIO: f64 = 3.0;
/// ...unless they are this close anyway: medians of about 1 ms differ
/// threefold on a busy machine (2 cores running 3 busy loops besides this
/// suite: medians 0.4 to 19 ms, spreads up to 11 ms), while a server that waits
/// for more input stands out by its whole handshake timeout (2 s).
const MAX_SPREAD: Duration = Duration::from_millis(25);

// ----- the server -----

struct TestServer {
    addr: SocketAddr,
    handle: ShutdownHandle,
    pin: [u8; 32],
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

async fn start_server<S: Runtime>(fallback: Option<SocketAddr>) -> TestServer {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let mut cfg = ServerConfig::new(PASSWORD, id);
    cfg.fallback = fallback;
    cfg.handshake_timeout = HANDSHAKE_TIMEOUT;
    cfg.tls_handshake_timeout = STEP;
    let server = Server::<S>::bind("127.0.0.1:0", cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    S::spawn(async move {
        let _ = server
            .serve_with(Duration::ZERO, |req| relay_tcp(req, STEP))
            .await;
    });
    TestServer { addr, handle, pin }
}

/// Runs `f` on a std thread and waits for it with the timers of `R` (the
/// runtime keeps serving meanwhile); its panic, if any, becomes ours.
async fn on_thread<R: Runtime, T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let h: JoinHandle<T> = thread::spawn(f);
    let start = Instant::now();
    let tick = Duration::from_millis(20);
    for _ in 0..(limit.as_millis() / tick.as_millis() + 2) {
        if h.is_finished() || start.elapsed() > limit {
            break;
        }
        anytls_io::sleep_until::<R>(Instant::now() + tick).await;
    }
    assert!(h.is_finished(), "{what} did not finish within {limit:?}");
    match h.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

// ----- the fallback: an HTTP-like peer on std threads -----

/// What the fallback saw on one connection.
#[derive(Debug)]
struct Seen {
    /// Every byte, in order, until EOF.
    bytes: Vec<u8>,
    /// The connection ended with EOF (not an error or a timeout).
    clean_eof: bool,
}

/// Records everything a connection sends; answers [`REPLY`] and closes its
/// sending side once it has the request (`expect` bytes, set by the test
/// before each probe) or EOF, then keeps reading until EOF and reports.
struct Fallback {
    addr: SocketAddr,
    expect: Arc<AtomicUsize>,
    seen: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
}

impl Drop for Fallback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocked accept, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

impl Fallback {
    fn start() -> Fallback {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let expect = Arc::new(AtomicUsize::new(usize::MAX));
        let (tx, seen) = mpsc::channel();
        let (flag, want) = (stop.clone(), expect.clone());
        thread::spawn(move || {
            for _ in 0..MAX_ACCEPTS {
                let Ok((s, _)) = l.accept() else { return };
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let want = want.load(Ordering::Acquire);
                let tx = tx.clone();
                thread::spawn(move || {
                    let _ = tx.send(serve_fallback(s, want));
                });
            }
        });
        Fallback {
            addr,
            expect,
            seen,
            stop,
        }
    }

    /// The request size the next connection should wait for.
    fn expect(&self, len: usize) {
        self.expect.store(len, Ordering::Release);
    }

    /// What the last connection saw (waits for its report).
    fn next_seen(&self) -> Seen {
        self.seen
            .recv_timeout(2 * STEP)
            .expect("the fallback reports its connection")
    }

    /// Nothing else reached the fallback.
    fn assert_idle(&self) {
        if let Ok(s) = self.seen.try_recv() {
            panic!("an unexpected fallback connection: {s:?}");
        }
    }
}

fn serve_fallback(mut s: TcpStream, expect: usize) -> Seen {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(STEP));
    let _ = s.set_write_timeout(Some(STEP));
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut answered = false;
    let mut clean_eof = false;
    for _ in 0..MAX_READ {
        if !answered && bytes.len() >= expect {
            answered = true;
            let _ = s.write_all(REPLY);
            let _ = s.shutdown(Shutdown::Write);
        }
        match s.read(&mut buf) {
            Ok(0) => {
                clean_eof = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if bytes.len() > MAX_READ {
            break;
        }
    }
    if !answered {
        // A request cut short: answered all the same, as a web server would.
        let _ = s.write_all(REPLY);
        let _ = s.shutdown(Shutdown::Write);
    }
    Seen { bytes, clean_eof }
}

// ----- probes: raw TLS clients -----

type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Makes TLS connections to the server, pinned to its certificate (no session
/// resumption: every probe is a full handshake, like a fresh prober).
struct Prober {
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
}

impl Prober {
    fn new(srv: &TestServer) -> Prober {
        let cfg = tls::client_config(&Verification::Pin(srv.pin), &[]).unwrap();
        Prober {
            addr: srv.addr,
            cfg: Arc::new(cfg),
        }
    }

    /// A TLS connection with the handshake done (before the clock starts).
    fn connect(&self) -> RawTls {
        let name = tls::server_name("localhost").unwrap();
        let conn = rustls::ClientConnection::new(self.cfg.clone(), name).unwrap();
        let tcp = TcpStream::connect_timeout(&self.addr, STEP).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(STEP)).unwrap();
        tcp.set_write_timeout(Some(STEP)).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        for _ in 0..100 {
            if !s.conn.is_handshaking() {
                break;
            }
            s.conn.complete_io(&mut s.sock).expect("TLS handshake");
        }
        assert!(!s.conn.is_handshaking(), "TLS handshake did not finish");
        // Our Finished goes out now, not with the probe.
        for _ in 0..100 {
            if !s.conn.wants_write() {
                break;
            }
            s.conn.write_tls(&mut s.sock).expect("TLS handshake");
        }
        s
    }

    /// Sends the probe, then reads until the server's close (or a read
    /// timeout); finally closes its own side too.
    fn run(&self, probe: &Probe) -> Outcome {
        let mut s = self.connect();
        let start = Instant::now();
        // A server that closes at once may make the later writes fail (with
        // a reset): noted, and the reads tell the rest.
        let mut send_error = None;
        for rec in &probe.records {
            // One write, one TLS record (all records here are < 16 KiB).
            if let Err(e) = s.write_all(rec).and_then(|()| s.flush()) {
                send_error = Some(e);
                break;
            }
        }
        if probe.half_close && send_error.is_none() {
            s.conn.send_close_notify();
            if let Err(e) = s.flush().and_then(|()| s.sock.shutdown(Shutdown::Write)) {
                send_error = Some(e);
            }
        }
        let mut got = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 4096];
        let mut end = Err(io::Error::other("too much data"));
        for _ in 0..MAX_READ {
            let r = s.read(&mut buf);
            first.get_or_insert_with(|| start.elapsed());
            match r {
                Ok(0) => {
                    end = Ok(End::CloseNotify);
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    end = Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                    break;
                }
                Err(e) => {
                    end = Ok(End::Error(e));
                    break;
                }
            }
            if got.len() > MAX_READ {
                break;
            }
        }
        // Our side ends too, so the fallback sees EOF and reports.
        if !probe.half_close {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = s.sock.shutdown(Shutdown::Both);
        Outcome {
            got,
            end,
            first_event: first.unwrap_or(Duration::MAX),
            send_error,
        }
    }
}

/// How the server ended a probe's connection.
#[derive(Debug)]
enum End {
    /// close_notify (read returned 0).
    CloseNotify,
    /// An error other than a timeout (e.g. TCP EOF without close_notify).
    Error(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::CloseNotify => f.write_str("close_notify"),
            End::Error(e) => write!(f, "error ({:?}: {e})", e.kind()),
        }
    }
}

/// How a probe's connection ended, for messages.
fn describe(end: &io::Result<End>) -> String {
    match end {
        Ok(e) => e.to_string(),
        Err(e) => format!("hung: {e}"),
    }
}

struct Outcome {
    /// Every application byte received.
    got: Vec<u8>,
    /// `Err` only when the read timed out (the server hung).
    end: io::Result<End>,
    /// From the probe's first write to the first read that returned anything
    /// (data, EOF or an error).
    first_event: Duration,
    /// Sending the probe (records, close_notify, half-close) failed.
    send_error: Option<io::Error>,
}

/// What a probe sends: TLS records written one by one, then optionally
/// close_notify and a TCP half-close.
struct Probe {
    name: String,
    records: Vec<Vec<u8>>,
    half_close: bool,
}

impl Probe {
    fn new(name: impl Into<String>, record: Vec<u8>) -> Probe {
        Probe {
            name: name.into(),
            records: vec![record],
            half_close: false,
        }
    }

    fn sent(&self) -> Vec<u8> {
        self.records.concat()
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so that failures repeat.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hash() -> [u8; 32] {
    *PasswordHash::of(PASSWORD).as_bytes()
}

/// A preamble-shaped record (hash field, length 30, 30 zero bytes: 64 bytes
/// like a real client's first record) whose hash field matches the real one
/// in exactly its first `k` bytes.
fn near_miss(k: usize, seed: u64) -> Vec<u8> {
    let real = hash();
    let mut field = noise(seed, 32);
    field[..k].copy_from_slice(&real[..k]);
    if k < 32 {
        field[k] = real[k] ^ 0x5a;
    }
    let mut rec = field;
    rec.extend_from_slice(&30u16.to_be_bytes());
    rec.extend_from_slice(&[0u8; 30]);
    rec
}

const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Mozilla/5.0\r\n\
Accept: */*\r\n\r\n";

/// The probes of sections 1 and 2.
fn functional_probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut wrong = PasswordHash::of("not-the-password").as_bytes().to_vec();
    wrong.extend_from_slice(&30u16.to_be_bytes());
    wrong.extend_from_slice(&[0u8; 30]);
    probes.push(Probe::new("wrong password preamble", wrong));
    for len in [1, 31, 32, 100, 5000] {
        probes.push(Probe::new(
            format!("{len} random bytes"),
            noise(len as u64, len),
        ));
    }
    probes.push(Probe::new("HTTP/1.1 GET", HTTP_GET.to_vec()));
    let mut p = Probe::new("HTTP/1.1 GET, then half-close", HTTP_GET.to_vec());
    p.half_close = true;
    probes.push(p);
    // Beyond the brief's list: later records must follow the replayed first
    // one, in order.
    let post = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3000\r\n\r\n";
    probes.push(Probe {
        name: "HTTP/1.1 POST in three records".into(),
        records: vec![post[..5].to_vec(), post[5..].to_vec(), noise(7, 3000)],
        half_close: false,
    });
    probes.push(Probe {
        name: "5000 random bytes, then half-close".into(),
        records: vec![noise(5000, 5000)],
        half_close: true,
    });
    probes
}

// ----- 1. with a fallback -----

async fn probes_reach_the_fallback_byte_for_byte<S: TestRuntime>() {
    let fallback = Fallback::start();
    let srv = start_server::<S>(Some(fallback.addr)).await;
    let prober = Prober::new(&srv);
    on_thread::<S, _>(Duration::from_secs(60), "the probes", move || {
        for probe in functional_probes() {
            let sent = probe.sent();
            fallback.expect(sent.len());
            let out = prober.run(&probe);
            let name = &probe.name;
            eprintln!(
                "[{}] fallback, {name}: reply after {:?}, ended with {}",
                S::NAME,
                out.first_event,
                describe(&out.end)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.got),
                String::from_utf8_lossy(REPLY),
                "{name}: the probe gets the fallback's reply and nothing else"
            );
            assert_eq!(out.got, REPLY, "{name}");
            if let Some(e) = &out.send_error {
                panic!("{name}: sending the probe failed: {e}");
            }
            let end = out.end.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(end, End::CloseNotify),
                "{name}: the fallback's close arrives as close_notify: {end:?}"
            );
            // Decided on the first record, not by the handshake deadline.
            assert!(
                out.first_event < HANDSHAKE_TIMEOUT / 2,
                "{name}: reply after {:?}",
                out.first_event
            );
            let seen = fallback.next_seen();
            assert!(
                seen.bytes == sent,
                "{name}: the fallback got {} bytes, the probe sent {} (first difference at {:?})",
                seen.bytes.len(),
                sent.len(),
                seen.bytes.iter().zip(&sent).position(|(a, b)| a != b)
            );
            assert!(
                seen.clean_eof,
                "{name}: the fallback's connection ends with EOF"
            );
            fallback.assert_idle();
        }
    })
    .await;
    drop(srv);
}

// ----- 2. without a fallback -----

async fn probes_without_a_fallback_get_a_bare_close<S: TestRuntime>() {
    let srv = start_server::<S>(None).await;
    let prober = Prober::new(&srv);
    on_thread::<S, _>(Duration::from_secs(60), "the probes", move || {
        for probe in functional_probes() {
            let out = prober.run(&probe);
            let name = &probe.name;
            eprintln!(
                "[{}] no fallback, {name}: closed after {:?} with {}{}",
                S::NAME,
                out.first_event,
                describe(&out.end),
                match &out.send_error {
                    Some(e) => format!(" (sending failed: {e})"),
                    None => String::new(),
                }
            );
            assert!(
                out.got.is_empty(),
                "{name}: the server sent {} application bytes: {:?}",
                out.got.len(),
                String::from_utf8_lossy(&out.got)
            );
            // close_notify or an error, not a hang.
            if let Err(e) = &out.end {
                panic!("{name}: {e}");
            }
            assert!(
                out.first_event < HANDSHAKE_TIMEOUT / 2,
                "{name}: closed after {:?}",
                out.first_event
            );
        }
    })
    .await;
    drop(srv);
}

// ----- 3. timing -----

/// The near misses: first records that share 0, 1, 16 or 31 leading bytes
/// with the real password hash, as whole 64-byte preambles and (1, 16, 31)
/// cut right after the shared prefix.
fn near_miss_probes() -> Vec<Probe> {
    let real = hash();
    let mut probes = Vec::new();
    for k in [0, 1, 16, 31] {
        probes.push(Probe::new(
            format!("64 bytes, {k:>2} right"),
            near_miss(k, 100 + k as u64),
        ));
    }
    for k in [1, 16, 31] {
        probes.push(Probe::new(format!("hash[..{k}] alone"), real[..k].to_vec()));
    }
    probes
}

/// Samples every probe `rounds` times, interleaved (each round starts with
/// the next variant), from the probe's write to the server's decision: the
/// close without a fallback, the fallback's first reply byte with one. Checks
/// every outcome on the way.
fn measure(
    prober: &Prober,
    fallback: Option<&Fallback>,
    probes: &[Probe],
    rounds: usize,
) -> Vec<Vec<Duration>> {
    let mut samples = vec![Vec::with_capacity(rounds); probes.len()];
    for round in 0..rounds {
        for i in 0..probes.len() {
            let v = (round + i) % probes.len();
            let probe = &probes[v];
            if let Some(f) = fallback {
                f.expect(probe.sent().len());
            }
            let out = prober.run(probe);
            let name = &probe.name;
            match fallback {
                Some(f) => {
                    assert!(out.send_error.is_none(), "{name}: {:?}", out.send_error);
                    assert_eq!(out.got, REPLY, "{name}: the fallback's reply, nothing else");
                    assert_eq!(f.next_seen().bytes, probe.sent(), "{name}: replayed");
                }
                None => {
                    assert!(out.got.is_empty(), "{name}: {} bytes sent", out.got.len());
                    if let Err(e) = &out.end {
                        panic!("{name}: {e}");
                    }
                }
            }
            samples[v].push(out.first_event);
        }
    }
    samples
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// Prints the distribution of every variant and checks that the medians do not
/// tell the variants apart (see [`MEDIAN_LIMIT`], [`MAX_RATIO`],
/// [`MAX_SPREAD`]).
fn assert_uniform(label: &str, probes: &[Probe], samples: &[Vec<Duration>]) {
    let mut medians = Vec::new();
    for (probe, s) in probes.iter().zip(samples) {
        let mut s = s.clone();
        s.sort();
        let median = percentile(&s, 50);
        eprintln!(
            "{label}: {:<34} n={:>2} min {:>9.3?} median {:>9.3?} p90 {:>9.3?} max {:>9.3?}",
            probe.name,
            s.len(),
            s[0],
            median,
            percentile(&s, 90),
            s[s.len() - 1]
        );
        medians.push(median);
    }
    let max = *medians.iter().max().unwrap();
    let min = *medians.iter().min().unwrap();
    let ratio = max.as_secs_f64() / min.as_secs_f64().max(1e-9);
    eprintln!(
        "{label}: medians {min:.3?} .. {max:.3?}, ratio {ratio:.2}, spread {:.3?}",
        max - min
    );
    assert!(
        max < MEDIAN_LIMIT,
        "{label}: a median of {max:?} (limit {MEDIAN_LIMIT:?})"
    );
    assert!(
        ratio < MAX_RATIO || max - min < MAX_SPREAD,
        "{label}: medians from {min:?} to {max:?} tell the probes apart"
    );
}

async fn timing<S: TestRuntime>(with_fallback: bool, probes: Vec<Probe>, rounds: usize) {
    let fallback = with_fallback.then(Fallback::start);
    let srv = start_server::<S>(fallback.as_ref().map(|f| f.addr)).await;
    let prober = Prober::new(&srv);
    let label = format!(
        "[{}] {}",
        S::NAME,
        if with_fallback {
            "to the fallback"
        } else {
            "to the close"
        }
    );
    // Every sample is bounded by the handshake deadline plus a read timeout.
    let limit = (HANDSHAKE_TIMEOUT + STEP) * (rounds * probes.len()) as u32;
    on_thread::<S, _>(limit, "the timing probes", move || {
        let samples = measure(&prober, fallback.as_ref(), &probes, rounds);
        assert_uniform(&label, &probes, &samples);
    })
    .await;
    drop(srv);
}

async fn close_time_does_not_depend_on_the_preamble<S: TestRuntime>() {
    timing::<S>(false, near_miss_probes(), SAMPLES).await;
}

async fn fallback_time_does_not_depend_on_the_preamble<S: TestRuntime>() {
    timing::<S>(true, near_miss_probes(), SAMPLES).await;
}
