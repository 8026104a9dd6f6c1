//! Floods on 127.0.0.1 against our server, run with the server on tokio and
//! on smol (the client side is either a raw AnyTLS client on std threads or
//! our `Client` on the server's runtime):
//!
//! * 10 000 SYNs with destinations, as fast as a raw client can send them, on
//!   one session: the stream cap holds (streams past it are refused with a
//!   SYNACK error and a FIN), the session survives, the server's memory stays
//!   bounded and it keeps serving.
//! * 2 000 connections that stall the handshake (half never start TLS, half
//!   never send the preamble): real requests are served meanwhile with normal
//!   latency, and every stalled connection is closed at its deadline.
//!
//! The tests take a lock so that they run one at a time: they measure
//! latency and the process's memory, and each uses a few thousand sockets.
//! Every wait is bounded by a timeout and every loop by a count.

#[allow(dead_code)]
#[path = "e2e/support.rs"]
mod support;

#[path = "floods/peers.rs"]
mod peers;
#[path = "floods/raw.rs"]
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anytls_io::core::{Command, SessionLimits};
use anytls_io::{Client, ServerConfig};
use anytls_tests::TestRuntime;

use peers::{HoldTarget, open_silent, open_tls_silent, reset_hwm, status_kib};
use raw::{Incoming, RawClient, empty_frame, open_frames};
use support::{
    PASSWORD, STEP, client_config, default_server, echo_once, echo_target, identity, join_thread,
    localhost0, start_server, wait_until,
};

/// One flood test at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

macro_rules! server_runtimes {
    ($($name:ident),* $(,)?) => {
        mod tokio_server {
            $(
                #[test]
                fn $name() {
                    let _serial = super::serial();
                    anytls_tests::run::<anytls_tests::Tokio, anytls_tests::Tokio, _>(
                        super::$name::<anytls_tests::Tokio>(),
                    )
                }
            )*
        }
        mod smol_server {
            $(
                #[test]
                fn $name() {
                    let _serial = super::serial();
                    anytls_tests::run::<anytls_tests::Smol, anytls_tests::Smol, _>(
                        super::$name::<anytls_tests::Smol>(),
                    )
                }
            )*
        }
    };
}

server_runtimes!(
    ten_thousand_syns_on_one_session,
    stalled_handshakes_are_dropped_and_real_clients_served,
);

// ----- 1. a SYN flood on one session -----

const SYNS: u32 = 10_000;
/// Growth of the test process's peak RSS that counts as exploding. The
/// server holds at most `max_streams` relays (a few KiB each); the raw
/// client's bookkeeping is small.
const FLOOD_RSS_LIMIT_KIB: u64 = 128 * 1024;

/// What the raw client saw.
#[derive(Debug, Default)]
struct FloodReport {
    /// Time to hand all SYNs to the socket.
    sent_in: Duration,
    /// Time until every stream had its verdict.
    decided_in: Duration,
    /// Streams with a success SYNACK.
    accepted: BTreeSet<u32>,
    /// Streams refused, with the message.
    refused: BTreeMap<u32, String>,
    /// Streams the server closed with FIN.
    fins: BTreeSet<u32>,
    server_settings: bool,
    /// How the session ended, if it did.
    ended: Option<String>,
    /// Outbound connections the server made to the target.
    dialed: usize,
    /// Attempts until a stream opened after the flood echoed.
    later_attempts: u32,
}

async fn ten_thousand_syns_on_one_session<S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let max_streams = SessionLimits::default().max_streams;
    // A few more than the cap can ever dial.
    let hold = Arc::new(HoldTarget::start(max_streams + 64));
    let echo = echo_target();
    let baseline = srv.handle.active_sessions();
    let rss0 = status_kib("VmRSS:").unwrap_or(0);
    let hwm_reset = reset_hwm();

    let start = Instant::now();
    let (addr, h, echo_addr) = (srv.addr, hold.clone(), echo.addr);
    let flood = thread::spawn(move || flood_one_session(addr, pin, &h, echo_addr, max_streams));
    let rep = join_thread::<S, _>(flood, Duration::from_secs(90), "the flooding client").await;
    let hwm = status_kib("VmHWM:").unwrap_or(0);
    let too_many = rep
        .refused
        .values()
        .filter(|m| *m == "too many streams")
        .count();
    eprintln!(
        "{}: {SYNS} SYNs sent in {:?}, all decided after {:?}: {} accepted, {} refused \
         ({too_many} over the cap), {} FINs, {} dials; later stream echoed at attempt {}; \
         whole test thread {:?}",
        S::NAME,
        rep.sent_in,
        rep.decided_in,
        rep.accepted.len(),
        rep.refused.len(),
        rep.fins.len(),
        rep.dialed,
        rep.later_attempts,
        start.elapsed(),
    );

    // The session is gone with the raw client; the server is back to normal.
    wait_until::<S>(STEP, "the flooded session to end", || {
        srv.handle.active_sessions() == baseline
    })
    .await;
    let client = Client::<S>::new(client_config(srv.addr, pin)).unwrap();
    echo_once(&client, echo.addr, 7, 64 * 1024)
        .await
        .expect("a normal client after the flood");
    client.close();

    let growth = hwm.saturating_sub(rss0);
    eprintln!(
        "{}: test process VmRSS {} KiB before, peak {} KiB (+{} KiB; peak {})",
        S::NAME,
        rss0,
        hwm,
        growth,
        if hwm_reset {
            "reset at the start"
        } else {
            "NOT reset: the process's lifetime peak"
        }
    );
    if hwm_reset {
        assert!(
            growth < FLOOD_RSS_LIMIT_KIB,
            "peak RSS grew by {growth} KiB during the flood"
        );
    }
    srv.handle.shutdown();
    drop(hold);
}

/// The raw client's side of the SYN flood; panics on what the server must
/// not do.
fn flood_one_session(
    addr: SocketAddr,
    pin: [u8; 32],
    hold: &HoldTarget,
    echo: SocketAddr,
    max_streams: usize,
) -> FloodReport {
    let mut rep = FloodReport::default();
    let mut c = RawClient::connect(addr, pin).expect("TLS");
    c.handshake(PASSWORD).expect("preamble and Settings");

    // As fast as the socket takes them, 16 KiB records of SYN + destination.
    let start = Instant::now();
    let mut buf = Vec::with_capacity(16 * 1024);
    for id in 1..=SYNS {
        open_frames(&mut buf, id, hold.addr);
        if buf.len() > 16 * 1024 - 64 {
            c.send(&buf).expect("flood write");
            buf.clear();
        }
    }
    c.send(&buf).expect("flood write");
    rep.sent_in = start.elapsed();

    // Every stream gets a verdict (the client said v=2): success, or an error
    // followed by FIN.
    let deadline = Instant::now() + Duration::from_secs(45);
    let decided = |r: &FloodReport| {
        r.accepted.len() + r.refused.len() == SYNS as usize
            && r.refused.keys().all(|id| r.fins.contains(id))
    };
    for _ in 0..10_000_000 {
        if decided(&rep) || Instant::now() > deadline {
            break;
        }
        match c.next(Duration::from_millis(500)) {
            Some(Incoming::Frame(f)) => note_frame(&mut rep, f.cmd, f.stream_id.0, &f.data),
            Some(Incoming::End(how)) => {
                rep.ended = Some(how);
                break;
            }
            None => {}
        }
    }
    rep.decided_in = start.elapsed();
    assert!(rep.server_settings, "no ServerSettings: {rep:?}");
    assert_eq!(
        rep.ended, None,
        "the server ended the session during the flood"
    );
    assert!(
        decided(&rep),
        "not every stream was decided within 45 s: {} accepted, {} refused, {} FINs",
        rep.accepted.len(),
        rep.refused.len(),
        rep.fins.len()
    );

    // The cap: never more than max_streams streams at once. Nothing closed a
    // stream during the flood, so every stream over the first max_streams is
    // refused for the cap (unless a dial failed and freed a slot).
    let other: Vec<_> = rep
        .refused
        .iter()
        .filter(|(_, m)| *m != "too many streams")
        .collect();
    assert!(
        rep.accepted.len() <= max_streams,
        "{} streams accepted at once, cap {max_streams}",
        rep.accepted.len()
    );
    if other.is_empty() {
        let first: BTreeSet<u32> = (1..=max_streams as u32).collect();
        assert_eq!(
            rep.accepted, first,
            "the first {max_streams} streams are the ones accepted"
        );
    } else {
        eprintln!(
            "{} streams refused for another reason, e.g. {:?}",
            other.len(),
            other[0]
        );
        assert!(rep.accepted.len() + other.len() >= max_streams, "{other:?}");
    }
    let accepted_fins: Vec<_> = rep.accepted.intersection(&rep.fins).collect();
    assert!(
        accepted_fins.is_empty(),
        "accepted streams got FIN: {accepted_fins:?}"
    );
    // The server dialed no more than the cap.
    let wait = Instant::now() + STEP;
    while hold.accepted() < rep.accepted.len() && Instant::now() < wait {
        thread::sleep(Duration::from_millis(20));
    }
    rep.dialed = hold.accepted();
    // (The target may not have accepted every dialed connection yet on a
    // loaded machine: only the cap is checked.)
    assert!(
        rep.dialed <= max_streams + other.len(),
        "{} outbound connections for {} accepted streams",
        rep.dialed,
        rep.accepted.len()
    );

    // FIN every accepted stream: the server closes every outbound connection.
    let mut fins = Vec::new();
    for &id in &rep.accepted {
        empty_frame(&mut fins, Command::Fin, id);
    }
    c.send(&fins).expect("FINs");
    let wait = Instant::now() + Duration::from_secs(20);
    let mut open = hold.still_open();
    while open > 0 && Instant::now() < wait {
        thread::sleep(Duration::from_millis(50));
        drain(&c, &mut rep);
        open = hold.still_open();
    }
    assert_eq!(
        open, 0,
        "outbound connections left open after the client's FINs"
    );
    assert_eq!(rep.ended, None, "the session ended after the FINs");

    // The session survived: a new stream on it works end to end.
    rep.later_attempts = later_stream_echoes(&mut c, &mut rep, echo);
    c.close();
    rep
}

fn note_frame(rep: &mut FloodReport, cmd: Command, id: u32, data: &[u8]) {
    match cmd {
        Command::SynAck if data.is_empty() => {
            assert!(rep.accepted.insert(id), "two SYNACKs for stream {id}");
            assert!(
                !rep.refused.contains_key(&id),
                "stream {id} accepted after refusal"
            );
        }
        Command::SynAck => {
            let msg = String::from_utf8_lossy(data).into_owned();
            assert!(
                !rep.accepted.contains(&id),
                "stream {id} refused after acceptance"
            );
            assert!(
                rep.refused.insert(id, msg).is_none(),
                "two refusals of stream {id}"
            );
        }
        Command::Fin => {
            assert!(rep.fins.insert(id), "two FINs for stream {id}");
        }
        Command::ServerSettings => rep.server_settings = true,
        Command::Alert => panic!("alert: {}", String::from_utf8_lossy(data)),
        _ => {}
    }
}

/// Notes whatever arrived, without waiting.
fn drain(c: &RawClient, rep: &mut FloodReport) {
    for _ in 0..100_000 {
        match c.next(Duration::ZERO) {
            Some(Incoming::Frame(f)) => note_frame(rep, f.cmd, f.stream_id.0, &f.data),
            Some(Incoming::End(how)) => {
                rep.ended = Some(how);
                return;
            }
            None => return,
        }
    }
}

/// Opens streams after the flood until one is accepted (the server releases
/// the FINed streams as their relays end), and echoes a message through it.
/// Returns the attempts it took.
fn later_stream_echoes(c: &mut RawClient, rep: &mut FloodReport, echo: SocketAddr) -> u32 {
    const MSG: &[u8] = b"still serving after 10k SYNs";
    for attempt in 1..=50u32 {
        let id = SYNS + attempt;
        let mut f = Vec::new();
        open_frames(&mut f, id, echo);
        c.send(&f).expect("SYN after the flood");
        let deadline = Instant::now() + STEP;
        let mut verdict: Option<Result<(), String>> = None;
        while verdict.is_none() && Instant::now() < deadline {
            match c.next(Duration::from_millis(200)) {
                Some(Incoming::Frame(fr)) if fr.stream_id.0 == id && fr.cmd == Command::SynAck => {
                    verdict = Some(if fr.data.is_empty() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&fr.data).into_owned())
                    });
                }
                Some(Incoming::Frame(fr)) if fr.stream_id.0 == id => {}
                Some(Incoming::Frame(fr)) => note_frame(rep, fr.cmd, fr.stream_id.0, &fr.data),
                Some(Incoming::End(how)) => panic!("session ended after the flood: {how}"),
                None => {}
            }
        }
        match verdict {
            None => panic!("no verdict on stream {id} within {STEP:?}"),
            Some(Err(m)) if m == "too many streams" => {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Some(Err(m)) => panic!("stream {id} refused: {m}"),
            Some(Ok(())) => {}
        }
        let mut f = Vec::new();
        anytls_io::core::frame::encode_data(&mut f, anytls_io::core::StreamId(id), MSG);
        c.send(&f).expect("data after the flood");
        let mut back = Vec::new();
        let deadline = Instant::now() + STEP;
        while back.len() < MSG.len() && Instant::now() < deadline {
            match c.next(Duration::from_millis(200)) {
                Some(Incoming::Frame(fr)) if fr.stream_id.0 == id && fr.cmd == Command::Psh => {
                    back.extend_from_slice(&fr.data);
                }
                Some(Incoming::Frame(fr)) if fr.stream_id.0 == id => {
                    panic!("{:?} on the echo stream", fr.cmd)
                }
                Some(Incoming::Frame(_)) | None => {}
                Some(Incoming::End(how)) => panic!("session ended during the echo: {how}"),
            }
        }
        assert_eq!(back, MSG, "echo after the flood");
        let mut f = Vec::new();
        empty_frame(&mut f, Command::Fin, id);
        c.send(&f).expect("FIN");
        return attempt;
    }
    panic!("no stream accepted after the flood in 50 attempts");
}

// ----- 2. stalled handshakes -----

/// `tls_handshake_timeout` and `handshake_timeout` of the server: short,
/// but long enough for many connections of both kinds to hang at once on a
/// busy 2-core machine, where 1000 TLS handshakes of a debug build take
/// seconds.
const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections of each kind.
const STALLED: usize = 1000;
/// Connections hanging at once that count as "under the flood" (most of
/// `STALLED`: on a loaded 2-core machine the first ones may time out before
/// the last ones are open).
const HANGING: usize = STALLED * 3 / 4;
/// Threads opening the TLS connections.
const TLS_OPENERS: usize = 4;
/// Threads opening the silent TCP connections: several, so that a SYN the
/// server's full accept queue dropped (1 s until it is sent again) does not
/// hold up the others.
const TCP_OPENERS: usize = 8;
/// No real request may take this long while connections are stalled: it
/// would have waited for a stalled handshake's deadline.
const REQUEST_LIMIT: Duration = STALL_TIMEOUT;
/// The median request while connections are stalled stays below this (or
/// below ten times the median before, on a very slow machine).
const MEDIAN_LIMIT: Duration = Duration::from_millis(250);
/// Late closes still count (a loaded machine), up to this past the deadline.
const CLOSE_SLACK: Duration = Duration::from_secs(4);

/// A cold request: a new client (TCP + TLS + AnyTLS) and a 1 KiB echo.
async fn cold_request<R: TestRuntime>(
    server: SocketAddr,
    pin: [u8; 32],
    echo: SocketAddr,
    seed: u64,
) -> Duration {
    let start = Instant::now();
    let client = Client::<R>::new(client_config(server, pin)).unwrap();
    echo_once(&client, echo, seed, 1024)
        .await
        .unwrap_or_else(|e| panic!("request {seed}: {e}"));
    client.close();
    start.elapsed()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn span(v: impl IntoIterator<Item = Duration>) -> (Duration, Duration) {
    v.into_iter()
        .fold((Duration::MAX, Duration::ZERO), |(lo, hi), d| {
            (lo.min(d), hi.max(d))
        })
}

async fn stalled_handshakes_are_dropped_and_real_clients_served<S: TestRuntime>() {
    let (id, pin) = identity();
    let mut cfg = ServerConfig::new(PASSWORD, id);
    cfg.tls_handshake_timeout = STALL_TIMEOUT;
    cfg.handshake_timeout = STALL_TIMEOUT;
    let srv = start_server::<S>(localhost0(), cfg).await;
    let echo = echo_target();
    let baseline = srv.handle.active_sessions();
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(cold_request::<S>(srv.addr, pin, echo.addr, i).await);
    }

    // TLS connections without a preamble from a few threads; once they are
    // up (the last ones still hang: the first may have timed out already on
    // a slow machine), the silent TCP connections, so that both kinds hang
    // at the server together. A watcher sees each one close.
    let (tx, rx) = mpsc::channel();
    let watcher = peers::Watcher::start(rx, STALL_TIMEOUT + CLOSE_SLACK);
    let tls_opened = Arc::new(AtomicUsize::new(0));
    let addr = srv.addr;
    let started = Instant::now();
    let mut openers = Vec::new();
    for _ in 0..TLS_OPENERS {
        let (tx, opened) = (tx.clone(), tls_opened.clone());
        openers.push(thread::spawn(move || {
            open_tls_silent(addr, pin, STALLED / TLS_OPENERS, &tx, &opened);
        }));
    }
    for _ in 0..TCP_OPENERS {
        let (tx, opened) = (tx.clone(), tls_opened.clone());
        openers.push(thread::spawn(move || {
            for _ in 0..6000 {
                if opened.load(Ordering::Relaxed) >= STALLED {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            open_silent(addr, STALLED / TCP_OPENERS, &tx);
        }));
    }
    drop(tx);

    // Real requests, one after the other, while they are opened and hang,
    // and right after the last one is open (the most hang then), as long as
    // at least STALLED of them hang.
    let mut during = Vec::new();
    let mut after_opening = 0;
    for seed in 100..1100 {
        let all_open = openers.iter().all(|h| h.is_finished());
        let pending = watcher.pending.load(Ordering::Relaxed);
        let took = cold_request::<S>(srv.addr, pin, echo.addr, seed).await;
        let pending_after = watcher.pending.load(Ordering::Relaxed);
        during.push((pending.min(pending_after), took));
        if all_open {
            after_opening += 1;
            if after_opening >= 5 || pending_after < HANGING {
                break;
            }
        } else {
            support::sleep::<S>(Duration::from_millis(50)).await;
        }
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    for (i, h) in openers.into_iter().enumerate() {
        join_thread::<S, _>(h, STEP, &format!("opener {i}")).await;
    }
    let opening = started.elapsed();
    let peak = watcher.peak.load(Ordering::Relaxed);
    let loaded: Vec<Duration> = during
        .iter()
        .filter(|(p, _)| *p >= HANGING)
        .map(|(_, d)| *d)
        .collect();
    let (bmin, bmax) = span(before.iter().copied());
    let (dmin, dmax) = span(during.iter().map(|(_, d)| *d));
    let (lmed, bmed) = (median(&loaded), median(&before));
    eprintln!(
        "{}: {} stalled connections opened in {opening:?}, up to {peak} hanging at once; \
         cold requests before: {bmin:?}..{bmax:?} (median {bmed:?}); {} while they were \
         opened: {dmin:?}..{dmax:?}, {} of them with >= {HANGING} hanging (median {lmed:?})",
        S::NAME,
        2 * STALLED,
        during.len(),
        loaded.len(),
    );
    assert!(
        peak >= HANGING,
        "never {HANGING} stalled connections at once: {peak}"
    );
    assert!(
        loaded.len() >= 3,
        "only {} requests ran with >= {HANGING} stalled connections",
        loaded.len()
    );
    assert!(
        dmax < REQUEST_LIMIT,
        "a request took {dmax:?} while handshakes were stalled (before: {bmax:?})"
    );
    assert!(
        lmed < MEDIAN_LIMIT.max(10 * bmed),
        "median request {lmed:?} with >= {HANGING} stalled connections (before: {bmed:?})"
    );

    // The server closes every one of them at its deadline.
    let wait = STALL_TIMEOUT + CLOSE_SLACK + STEP;
    wait_until::<S>(wait, "the watcher", || watcher.is_finished()).await;
    let seen = watcher.join();
    assert_eq!(
        seen.still_open, 0,
        "stalled connections the server never closed"
    );
    assert_eq!(seen.closed.len(), 2 * STALLED);
    for tls in [false, true] {
        let (min, max) = span(seen.closed.iter().filter(|c| c.0 == tls).map(|c| c.1));
        eprintln!(
            "{}: {STALLED} {} connections closed by the server after {min:?}..{max:?}",
            S::NAME,
            if tls {
                "TLS-without-preamble"
            } else {
                "silent TCP"
            }
        );
        // The deadline starts at the server's accept (or the end of its
        // handshake), after our timestamp, give or take our scheduling.
        assert!(
            min + Duration::from_millis(250) >= STALL_TIMEOUT,
            "closed after {min:?}, before the {STALL_TIMEOUT:?} deadline"
        );
        assert!(
            max <= STALL_TIMEOUT + CLOSE_SLACK,
            "closed only after {max:?}, deadline {STALL_TIMEOUT:?}"
        );
    }
    wait_until::<S>(STEP, "active sessions back to the baseline", || {
        srv.handle.active_sessions() == baseline
    })
    .await;
    let last = cold_request::<S>(srv.addr, pin, echo.addr, 1).await;
    eprintln!("{}: request after the stalls: {last:?}", S::NAME);
    srv.handle.shutdown();
}
