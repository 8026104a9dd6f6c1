//! Faults on 127.0.0.1: a server process killed with SIGKILL in the middle of
//! a download and restarted, a SOCKS5 client process killed with streams open
//! and restarted, destinations that refuse or reset, and a stream whose
//! destination never reads.
//!
//! Not repeated here (see `anytls-tests/tests/e2e.rs`):
//! `server_restart_fails_in_flight_streams_and_pool_recovers` (an in-process
//! server shut down cleanly and restarted) and
//! `heartbeat_deadline_kills_silent_sessions_and_ensure_replaces_them` (a path
//! that goes silent, detected by the heartbeat deadline). Here the processes
//! die without a word: their sockets are closed by the kernel.
//!
//! Every wait is bounded by a timeout and every loop by a count; child
//! processes are killed when a test fails.

mod common;
#[path = "faults/support.rs"]
mod support;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anytls_tokio::config::AnytlsUri;
use anytls_tokio::tls::hex32;
use anytls_tokio::{Client, PoolConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{
    PASSWORD, Proc, RESET_SEED, SOURCE_SEED, STEP, blackhole_target, check_pattern, client_config,
    closed_port, echo_round, echo_target, free_port, identity, open, path_str, read_pattern,
    reset_target, source_target, start_server, wait_until, write_identity,
};

const MIB: u64 = 1024 * 1024;

/// `anytls server` with a fixed port, the password and a certificate given by
/// flags; waits for its share URI (printed once it listens) and checks it.
fn spawn_server_process(listen: &str, cert: &str, key: &str, port: u16) -> Proc {
    let mut p = Proc::spawn(&[
        "server",
        "--listen",
        listen,
        "--password",
        PASSWORD,
        "--cert",
        cert,
        "--key",
        key,
    ]);
    let uri = p.wait_stdout("share URI:", STEP);
    let parsed = AnytlsUri::parse(&uri).unwrap();
    assert_eq!(parsed.password.as_deref(), Some(PASSWORD), "{uri}");
    assert_eq!((parsed.host.as_str(), parsed.port), ("127.0.0.1", port));
    assert!(
        !parsed.insecure,
        "a given certificate is not self-signed by us"
    );
    p
}

/// A server process dies (SIGKILL) while a download streams through it: the
/// download fails with the session's end as an error (not a short, silent
/// EOF), the pool drops both dead sessions (the busy and the pre-warmed idle
/// one), and once a new process listens on the same port the pool pre-warms
/// again and downloads are byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_process_killed_mid_transfer() {
    let (id, pin) = identity();
    let (cert, key) = write_identity("kill-server", &id);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = spawn_server_process(&listen, path_str(&cert), path_str(&key), port);
    let source = source_target().await;

    let mut cfg = client_config(&listen, pin);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.ensure_idle = 1;
        c.check_interval = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(60);
        c.dial_backoff = Duration::from_millis(100);
        c.max_dial_backoff = Duration::from_millis(500);
        c
    };
    let client = Client::new(cfg).unwrap();
    wait_until(STEP, "a pre-warmed session", || client.stats().idle == 1).await;

    // An endless download (a 1 TiB request) on the pre-warmed session.
    let mut dl = open(&client, source.addr).await;
    dl.write_all(&(1u64 << 40).to_be_bytes()).await.unwrap();
    let mut offset = 0;
    tokio::time::timeout(STEP, read_pattern(&mut dl, SOURCE_SEED, offset, 4 * MIB))
        .await
        .expect("download hung")
        .unwrap();
    offset += 4 * MIB;
    // Ensure replaces the idle session the download took.
    wait_until(STEP, "one busy and one idle session", || {
        let s = client.stats();
        (s.busy, s.idle) == (1, 1)
    })
    .await;
    tokio::time::timeout(STEP, read_pattern(&mut dl, SOURCE_SEED, offset, 4 * MIB))
        .await
        .expect("download hung")
        .unwrap();
    offset += 4 * MIB;
    let before = client.stats();
    assert_eq!(before.died, 0, "{before:?}");

    server.kill9();
    let killed = Instant::now();

    // Whatever was buffered may still arrive (checked byte for byte); then
    // the read fails: the session's end, not a silent EOF.
    let mut buf = vec![0u8; 64 * 1024];
    let mut after_kill = 0u64;
    let err = tokio::time::timeout(STEP, async {
        // Bounded: a 1 TiB download cannot finish.
        for _ in 0..1_000_000 {
            match dl.read(&mut buf).await {
                Ok(0) => panic!(
                    "silent EOF after {} bytes: the download lost its end without an error",
                    offset + after_kill
                ),
                Ok(n) => {
                    check_pattern(SOURCE_SEED, offset + after_kill, &buf[..n]);
                    after_kill += n as u64;
                }
                Err(e) => return e,
            }
        }
        panic!("the download went on after the server process died")
    })
    .await
    .expect("the download hung after the server process died");
    let err_after = killed.elapsed();
    eprintln!(
        "download error {err_after:?} after kill -9, {after_kill} bytes after the kill: {err:?}"
    );
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(err.to_string(), "connection closed by peer", "{err:?}");
    // Writes fail alike.
    let werr = dl
        .write_all(b"more")
        .await
        .expect_err("write after the end");
    assert_eq!(werr.kind(), io::ErrorKind::UnexpectedEof, "{werr}");
    drop(dl);

    // Both sessions leave the pool as dead; pre-warm dials fail while nothing
    // listens.
    let gone = wait_until(STEP, "the pool to drop both dead sessions", || {
        let s = client.stats();
        s.busy == 0 && s.idle == 0 && s.died >= before.died + 2
    })
    .await;
    wait_until(STEP, "a refused pre-warm dial", || {
        client.stats().dial_failures > before.dial_failures
    })
    .await;
    let down = client.stats();
    eprintln!("dead sessions dropped within {gone:?}; while down: {down:?}");

    // A new process on the same port: the pool pre-warms a session again.
    let _server2 = spawn_server_process(&listen, path_str(&cert), path_str(&key), port);
    let restarted = Instant::now();
    wait_until(STEP, "a fresh pre-warmed session", || {
        let s = client.stats();
        s.idle == 1 && s.established > down.established
    })
    .await;
    eprintln!(
        "pool warm again {:?} after the restart",
        restarted.elapsed()
    );
    for i in 0..3u64 {
        let len = MIB + i * 4099;
        let mut s = open(&client, source.addr).await;
        s.write_all(&len.to_be_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(STEP, s.read_to_end(&mut got))
            .await
            .expect("download after the restart hung")
            .unwrap_or_else(|e| panic!("download {i} after the restart: {e}"));
        assert_eq!(got.len() as u64, len, "download {i}");
        check_pattern(SOURCE_SEED, 0, &got);
    }
    let after = client.stats();
    eprintln!("after: {after:?}");
    assert!(after.died >= 2, "{after:?}");
    assert!(after.established > down.established, "{after:?}");
    assert!(after.dial_failures >= 1, "{after:?}");
    client.close();
}

/// A SOCKS5 client process dies (SIGKILL) with three streams open: the server
/// notices (its sessions end), its relays close their destination
/// connections, and a new client process works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_process_restarted() {
    let (id, pin) = identity();
    let (addr, handle) = start_server(id).await;
    let echo = echo_target().await;
    let pin = hex32(&pin);
    let server = addr.to_string();
    let client_args = [
        "client",
        "--server",
        &server,
        "--password",
        PASSWORD,
        "--pin",
        &pin,
        "--sni",
        "localhost",
        "--listen",
        "127.0.0.1:0",
    ];
    let mut c1 = Proc::spawn(&client_args);
    let socks = c1.wait_stdout("SOCKS5 proxy listening on", STEP);

    let mut streams = Vec::new();
    for i in 0..3u8 {
        let mut s = tokio::time::timeout(
            STEP,
            anytls_tokio::socks5::socks5_connect(socks.as_str(), echo.addr),
        )
        .await
        .expect("SOCKS5 connect hung")
        .unwrap();
        echo_round(
            &mut s,
            i,
            1024,
            STEP,
            "echo through the first client process",
        )
        .await;
        streams.push(s);
    }
    // One stream per session (the default): three sessions, three relays.
    wait_until(STEP, "3 sessions on the server", || {
        handle.active_sessions() == 3
    })
    .await;
    assert_eq!(echo.open.load(Ordering::SeqCst), 3);

    c1.kill9();
    let sessions_gone = wait_until(STEP, "the server to end the sessions", || {
        handle.active_sessions() == 0
    })
    .await;
    let relays_gone = wait_until(STEP, "the relays to close their destinations", || {
        echo.open.load(Ordering::SeqCst) == 0
    })
    .await;
    eprintln!(
        "after kill -9 of the client: sessions ended within {sessions_gone:?}, \
         destination connections closed within {relays_gone:?}"
    );
    // The local SOCKS5 connections end too.
    for s in &mut streams {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(STEP, s.read(&mut b))
            .await
            .expect("SOCKS5 connection of a dead proxy hung");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    drop(streams);

    let mut c2 = Proc::spawn(&client_args);
    let socks = c2.wait_stdout("SOCKS5 proxy listening on", STEP);
    for i in 0..3u8 {
        let mut s = tokio::time::timeout(
            STEP,
            anytls_tokio::socks5::socks5_connect(socks.as_str(), echo.addr),
        )
        .await
        .expect("SOCKS5 connect hung")
        .unwrap();
        echo_round(
            &mut s,
            10 + i,
            4096,
            STEP,
            "echo through the new client process",
        )
        .await;
    }
    assert!(handle.active_sessions() >= 1);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 6);
    handle.shutdown();
}

/// Destinations that fail affect only their own stream: a refused dial is a
/// `ConnectionRefused` error on the stream (from `established()` and from the
/// first read alike), a destination that resets (RST) after sending data ends
/// its stream after every byte sent before, and another stream on the same
/// session goes on; the session survives both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_refuses_or_resets() {
    const RESET_AFTER: usize = 256 * 1024;
    let (id, pin) = identity();
    let (addr, handle) = start_server(id).await;
    let echo = echo_target().await;
    let resetter = reset_target(RESET_AFTER).await;
    let closed = closed_port();
    let mut cfg = client_config(&addr.to_string(), pin);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.max_streams_per_session = 8;
        c
    };
    let client = Client::new(cfg).unwrap();

    // A stream that stays open throughout, on the only session.
    let mut keeper = open(&client, echo.addr).await;
    echo_round(&mut keeper, 1, 1024, STEP, "echo on the kept stream").await;

    // Refused: established() reports the server's verdict...
    let mut refused = open(&client, closed).await;
    let err = tokio::time::timeout(STEP, refused.established())
        .await
        .expect("verdict hung")
        .expect_err("a closed port must be refused");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("remote: dial tcp {closed}: ")),
        "{err}"
    );
    drop(refused);
    // ...and so does the first read, without established().
    let mut refused = open(&client, closed).await;
    let err = tokio::time::timeout(STEP, refused.read(&mut [0u8; 16]))
        .await
        .expect("read of a refused stream hung")
        .expect_err("read of a refused stream");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains("dial tcp"), "{err}");
    drop(refused);
    echo_round(&mut keeper, 2, 1024, STEP, "echo on the kept stream").await;

    // Reset: all bytes sent before arrive; then the stream ends.
    let mut rs = open(&client, resetter.addr).await;
    tokio::time::timeout(
        STEP,
        read_pattern(&mut rs, RESET_SEED, 0, RESET_AFTER as u64),
    )
    .await
    .expect("read before the reset hung")
    .unwrap();
    rs.write_all(b"R").await.unwrap();
    let mut b = [0u8; 16];
    let end = tokio::time::timeout(STEP, rs.read(&mut b))
        .await
        .expect("the stream of a reset destination hung");
    eprintln!("stream after the destination's reset: {end:?}");
    // AnyTLS has no reset frame: the server's relay ends the stream with FIN,
    // which arrives as a clean end of stream.
    assert_eq!(end.ok(), Some(0), "the reset stream ends");
    let werr = rs.write_all(b"x").await.expect_err("write after the end");
    assert_eq!(werr.kind(), io::ErrorKind::BrokenPipe, "{werr}");
    drop(rs);

    // The session survived everything: the keeper echoes, a new stream rides
    // the same session.
    echo_round(&mut keeper, 3, 64 * 1024, STEP, "echo on the kept stream").await;
    let mut another = open(&client, echo.addr).await;
    echo_round(&mut another, 4, 1024, STEP, "echo on a new stream").await;
    let st = client.stats();
    assert_eq!((st.dials, st.died, st.dial_failures), (1, 0, 0), "{st:?}");
    assert_eq!(handle.active_sessions(), 1);
    client.close();
    handle.shutdown();
}

/// Stream A's destination never reads while the client pushes 64 MiB into A;
/// stream B on the same session keeps echoing with bounded latency (each
/// 1 KiB round trip under 2 s), and a stream on another session works too.
/// A itself either stays blocked or is ended with an error (a server resets a
/// stream that falls too far behind); it never takes all 64 MiB. Needs
/// per-stream backpressure in the core: when a full stream pauses the whole
/// session, B stalls behind A and this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_reader_stalls_only_its_own_stream() {
    const PUSH: u64 = 64 * MIB;
    let (id, pin) = identity();
    let (addr, handle) = start_server(id).await;
    let echo = echo_target().await;
    let hole = blackhole_target(Duration::from_secs(30)).await;
    let mut cfg = client_config(&addr.to_string(), pin);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.max_streams_per_session = 2;
        c
    };
    let client = Client::new(cfg).unwrap();

    let mut a = open(&client, hole.addr).await;
    tokio::time::timeout(STEP, a.established())
        .await
        .expect("verdict on A hung")
        .unwrap();
    let mut b = open(&client, echo.addr).await;
    echo_round(&mut b, 1, 1024, STEP, "first echo on B").await;
    let st = client.stats();
    assert_eq!(
        (st.dials, st.reused, st.busy),
        (1, 1, 1),
        "A and B share a session: {st:?}"
    );

    // Push into A until it blocks or is reset (bounded by time and size).
    let pushed = Arc::new(AtomicU64::new(0));
    let p = pushed.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x41u8; 64 * 1024];
        let res = tokio::time::timeout(Duration::from_secs(20), async {
            while p.load(Ordering::SeqCst) < PUSH {
                a.write_all(&chunk).await?;
                p.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            io::Result::Ok(())
        })
        .await;
        (res, a)
    });
    // A makes no progress for 500 ms: blocked, or ended by an error.
    let start = Instant::now();
    let mut last = (0, Instant::now());
    wait_until(STEP, "the push into A to stop", || {
        let n = pushed.load(Ordering::SeqCst);
        if n != last.0 {
            last = (n, Instant::now());
        }
        n > 0 && last.1.elapsed() > Duration::from_millis(500)
    })
    .await;
    let stopped_at = pushed.load(Ordering::SeqCst);
    eprintln!(
        "A stopped taking data after {} KiB ({:?})",
        stopped_at / 1024,
        start.elapsed()
    );
    assert!(stopped_at < PUSH, "{stopped_at}");
    // From here on A stays open: a finished writer's output (with A) stays in
    // its task until joined, a blocked writer keeps running.

    // B, on the same session, still round-trips.
    let mut worst = Duration::ZERO;
    for i in 0..10u8 {
        let what = format!("echo {i} on B (same session as the stalled A)");
        let took = echo_round(&mut b, 10 + i, 1024, Duration::from_secs(2), &what).await;
        worst = worst.max(took);
    }
    eprintln!("B: 10 echoes of 1 KiB, slowest {worst:?}");

    // A third stream needs another session; it works as well.
    let mut c = open(&client, echo.addr).await;
    let took = echo_round(&mut c, 30, 1024, Duration::from_secs(2), "echo on C").await;
    eprintln!("C on another session: {took:?}");
    let st = client.stats();
    assert_eq!(st.dials, 2, "{st:?}");
    assert_eq!(handle.active_sessions(), 2);

    // A either is still blocked or was ended with an error (the server resets
    // a stream that falls too far behind); it never took all 64 MiB.
    if writer.is_finished() {
        let (res, _a) = writer.await.unwrap();
        match res {
            Ok(Ok(())) => panic!("64 MiB went into a stream nobody reads"),
            Ok(Err(e)) => eprintln!("A ended with {:?}: {e}", e.kind()),
            Err(_) => eprintln!("A blocked for 20 s"),
        }
    } else {
        eprintln!("A still blocked");
        writer.abort();
    }
    client.close();
    handle.shutdown();
}
