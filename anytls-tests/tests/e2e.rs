//! End-to-end tests on 127.0.0.1, written once and run for every client and
//! server runtime pair (see [`anytls_tests::suite!`]): client -> server -> TCP
//! target through the library API (no SOCKS5), plus wire-level checks with raw
//! TLS peers. The client runs on `C`, the server on `S`; targets, proxies and
//! raw TLS peers are runtime-free std threads, waited for with the timers of
//! the side they stand in for (a raw TLS client: `C`, a raw TLS server: `S`).
//! Every wait is bounded by a timeout and every loop by a count.

#[path = "e2e/support.rs"]
mod support;

use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anytls_io::core::{Command, PasswordHash};
use anytls_io::{Client, ClientConfig, Identity, PoolConfig, PoolStats, ServerConfig, SocksAddr};
use anytls_tests::TestRuntime;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use support::{
    DOWNLOAD_SEED, MIB, PASSWORD, PausableProxy, STEP, UPLOAD_SEED, client_config, closed_port,
    decode_frames, default_server, echo_once, echo_target, fallback_target, identity, join_thread,
    localhost0, open, raw_tls, read_all, read_pattern_to_eof, record_server, sink_target, sleep,
    source_target, start_server, wait_for, wait_until, write_pattern,
};

anytls_tests::suite!(
    echo_1k_and_reuse,
    established_reports_the_servers_verdict,
    transfers_are_byte_exact,
    two_hundred_concurrent_streams,
    server_restart_fails_in_flight_streams_and_pool_recovers,
    ensure_idle_prewarms_sessions_before_any_request,
    heartbeats_are_answered_on_idle_prewarmed_sessions,
    heartbeat_deadline_kills_silent_sessions_and_ensure_replaces_them,
    wrong_password_is_refused_without_a_byte,
    failed_authentication_goes_to_the_fallback,
    each_transmit_is_one_tls_record_of_the_planned_size,
    every_stream_knows_its_user_and_peer,
    a_stream_on_a_reused_session_is_sent_at_once,
    an_upload_ended_by_close_arrives_whole_without_reuse,
);

// ----- 0. smoke -----

async fn echo_1k_and_reuse<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let echo = echo_target();
    let client = Client::<C>::new(client_config(srv.addr, pin)).unwrap();
    for round in 0..3u32 {
        let mut s = open(&client, echo.addr).await;
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + round) as u8).collect();
        s.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        anytls_io::timeout::<C, _>(STEP, s.read_exact(&mut back))
            .await
            .expect("echo hung")
            .unwrap();
        assert_eq!(back, data);
        drop(s);
        sleep::<C>(Duration::from_millis(50)).await;
    }
    let st = client.stats();
    assert_eq!(st.dials, 1, "one session reused: {st:?}");
    assert_eq!(st.reused, 2, "{st:?}");
    client.close();
    srv.handle.shutdown();
}

async fn established_reports_the_servers_verdict<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let echo = echo_target();
    // A port with nothing listening: the server's dial is refused.
    let closed = closed_port();
    let client = Client::<C>::new(client_config(srv.addr, pin)).unwrap();
    let mut ok = open(&client, echo.addr).await;
    anytls_io::timeout::<C, _>(STEP, ok.established())
        .await
        .expect("verdict hung")
        .unwrap();
    drop(ok);
    let mut refused = open(&client, closed).await;
    let err = anytls_io::timeout::<C, _>(STEP, refused.established())
        .await
        .expect("verdict hung")
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains("dial tcp"), "{err}");
    client.close();
    srv.handle.shutdown();
}

#[test]
fn secrets_stay_out_of_debug() {
    // Runtime-independent: a plain test, not part of the suite.
    let secret = "hunter2-very-secret";
    let client = ClientConfig::new("127.0.0.1:1", secret);
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let server = ServerConfig::new(secret, id);
    let uri: anytls_io::config::AnytlsUri = format!("anytls://{secret}@127.0.0.1:8443/?sni=a")
        .parse()
        .unwrap();
    for dbg in [
        format!("{client:?}"),
        format!("{server:?}"),
        format!("{uri:?}"),
    ] {
        assert!(!dbg.contains(secret), "{dbg}");
    }
}

// ----- 1. byte-exact transfers -----

async fn transfers_are_byte_exact<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let client = Client::<C>::new(client_config(srv.addr, pin)).unwrap();

    // 1 KiB echo.
    let echo = echo_target();
    echo_once(&client, echo.addr, 1, 1024).await.unwrap();

    let big = 64 * MIB;
    let limit = Duration::from_secs(30);

    // 64 MiB download.
    let start = Instant::now();
    let source = source_target(big);
    let mut s = open(&client, source.addr).await;
    let got = anytls_io::timeout::<C, _>(limit, read_pattern_to_eof(&mut s, DOWNLOAD_SEED, big))
        .await
        .expect("download hung")
        .unwrap();
    assert_eq!(got, big as u64, "download length");
    drop(s);
    eprintln!(
        "{}/{}: {} MiB download: {:?}",
        C::NAME,
        S::NAME,
        big / MIB,
        start.elapsed()
    );

    // 64 MiB upload, verified by the target.
    let start = Instant::now();
    let sink = sink_target(big);
    let mut s = open(&client, sink.addr).await;
    anytls_io::timeout::<C, _>(limit, write_pattern(&mut s, UPLOAD_SEED, big))
        .await
        .expect("upload hung")
        .unwrap();
    let mut verdict = Vec::new();
    anytls_io::timeout::<C, _>(STEP, s.read_to_end(&mut verdict))
        .await
        .expect("verdict hung")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&verdict), "OK");
    eprintln!(
        "{}/{}: {} MiB upload: {:?}",
        C::NAME,
        S::NAME,
        big / MIB,
        start.elapsed()
    );

    let st = client.stats();
    assert_eq!(st.dials, 1, "one session served everything: {st:?}");
    assert_eq!(st.reused, 2, "{st:?}");
    client.close();
    srv.handle.shutdown();
}

// ----- 2. concurrency -----

async fn two_hundred_concurrent_streams<C: TestRuntime, S: TestRuntime>() {
    const STREAMS: usize = 200;
    let (srv, pin) = default_server::<S>().await;
    let client = Client::<C>::new(client_config(srv.addr, pin)).unwrap();
    let echo = echo_target();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..STREAMS {
        let client = client.clone();
        let tx = tx.clone();
        let addr = echo.addr;
        C::spawn(async move {
            let res = echo_once(&client, addr, 1000 + i as u64, 32 * 1024).await;
            let _ = tx.send((i, res));
        });
    }
    drop(tx);
    let mut done = [false; STREAMS];
    wait_until::<C>(Duration::from_secs(30), "200 echoes to finish", || {
        for (i, res) in rx.try_iter() {
            res.unwrap_or_else(|e| panic!("stream {i}: {e}"));
            done[i] = true;
        }
        done.iter().all(|d| *d)
    })
    .await;
    eprintln!(
        "{}/{}: 200 concurrent streams: {:?}",
        C::NAME,
        S::NAME,
        start.elapsed()
    );
    let st = client.stats();
    assert!(st.dials >= 2, "the pool dialled sessions as needed: {st:?}");
    assert_eq!(st.dial_failures, 0, "{st:?}");
    assert_eq!(st.died, 0, "{st:?}");
    client.close();
    srv.handle.shutdown();
}

// ----- 3. server restart -----

async fn server_restart_fails_in_flight_streams_and_pool_recovers<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let (id, pin) = identity();
    let srv = start_server::<S>(localhost0(), ServerConfig::new(PASSWORD, id.clone())).await;
    let addr = srv.addr;
    let echo = echo_target();
    let client = Client::<C>::new(client_config(addr, pin)).unwrap();

    for i in 0..3 {
        echo_once(&client, echo.addr, i, 4096).await.unwrap();
    }
    // Two sessions: one idle, one carrying a stream that stays open.
    let idle = open(&client, echo.addr).await;
    let mut in_flight = open(&client, echo.addr).await;
    drop(idle);
    in_flight.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    anytls_io::timeout::<C, _>(STEP, in_flight.read_exact(&mut buf))
        .await
        .expect("echo hung")
        .unwrap();
    assert_eq!(&buf, b"ping");
    let before = client.stats();
    assert_eq!((before.idle, before.busy), (1, 1), "{before:?}");

    // Stop the server; its sessions are closed at once (zero grace).
    srv.handle.shutdown();
    srv.stopped::<S>(STEP).await.unwrap();

    // The in-flight stream fails with an error, it does not hang.
    let err = anytls_io::timeout::<C, _>(STEP, in_flight.read(&mut buf))
        .await
        .expect("in-flight read hung after the server went away")
        .expect_err("in-flight read must fail");
    eprintln!("in-flight stream error: {err:?}");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("closed by peer"), "{err}");
    let err = anytls_io::timeout::<C, _>(STEP, in_flight.write_all(b"more"))
        .await
        .expect("write hung")
        .expect_err("write fails");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    drop(in_flight);
    wait_until::<C>(STEP, "the pool to drop the dead sessions", || {
        let s = client.stats();
        s.idle == 0 && s.busy == 0
    })
    .await;

    // While nothing listens: a clear error, no hang.
    let err = anytls_io::timeout::<C, _>(STEP, client.connect(SocksAddr::from(echo.addr)))
        .await
        .expect("connect hung while the server is down")
        .expect_err("no server");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");

    // A new server on the same port: the pool recovers.
    let srv2 = start_server::<S>(addr, ServerConfig::new(PASSWORD, id)).await;
    assert_eq!(srv2.addr, addr);
    for i in 0..3 {
        echo_once(&client, echo.addr, 100 + i, 4096)
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

async fn ensure_idle_prewarms_sessions_before_any_request<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let echo = echo_target();
    let mut cfg = client_config(srv.addr, pin);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.ensure_idle = 3;
        // Only the start-up ensure runs during the test.
        c.check_interval = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(60);
        c
    };
    let client = Client::<C>::new(cfg).unwrap();
    let h = srv.handle.clone();
    wait_until::<S>(STEP, "3 sessions on the server", || {
        h.active_sessions() == 3
    })
    .await;
    wait_until::<C>(STEP, "3 idle sessions in the pool", || {
        client.stats().idle == 3
    })
    .await;
    sleep::<C>(Duration::from_millis(200)).await;
    let st = client.stats();
    assert_eq!(h.active_sessions(), 3, "no overshoot");
    assert_eq!((st.prewarm_dials, st.dials, st.reused), (3, 3, 0), "{st:?}");

    echo_once(&client, echo.addr, 7, 1024).await.unwrap();
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

async fn heartbeats_are_answered_on_idle_prewarmed_sessions<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let mut cfg = client_config(srv.addr, pin);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.ensure_idle = 2;
        c.heartbeat = Some(Duration::from_secs(1));
        c.check_interval = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(60);
        c
    };
    let client = Client::<C>::new(cfg).unwrap();
    // Each session beats first after 0.8-1 s, then every second.
    wait_until::<C>(STEP, "3 heartbeat acks", || {
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

async fn heartbeat_deadline_kills_silent_sessions_and_ensure_replaces_them<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let (srv, pin) = default_server::<S>().await;
    let proxy = PausableProxy::start(srv.addr);
    let echo = echo_target();
    let mut cfg = client_config(proxy.addr(), pin);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.ensure_idle = 2;
        c.heartbeat = Some(Duration::from_secs(1));
        c.heartbeat_timeout = Some(Duration::from_millis(500));
        c.check_interval = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(60);
        c.dial_backoff = Duration::from_millis(100);
        c.max_dial_backoff = Duration::from_millis(500);
        c
    };
    let client = Client::<C>::new(cfg).unwrap();
    wait_until::<C>(STEP, "2 idle sessions with answered heartbeats", || {
        let s = client.stats();
        s.idle == 2 && s.heartbeat_acks >= 2
    })
    .await;
    echo_once(&client, echo.addr, 1, 1024).await.unwrap();
    let before = client.stats();

    // Black hole: heartbeats get no answer, the sessions die by the deadline.
    proxy.set_paused(true);
    let paused_at = Instant::now();
    wait_until::<C>(STEP, "both sessions to die", || {
        client.stats().died >= before.died + 2
    })
    .await;
    let died_after = paused_at.elapsed();
    eprintln!("sessions died {died_after:?} after the proxy went silent");
    // Next beat within 1 s, then 500 ms without an answer (plus slack).
    assert!(died_after < Duration::from_secs(4), "{died_after:?}");
    wait_until::<C>(STEP, "ensure to dial replacements", || {
        client.stats().dials > before.dials
    })
    .await;

    proxy.set_paused(false);
    wait_until::<C>(STEP, "2 fresh idle sessions", || client.stats().idle == 2).await;
    for i in 0..3 {
        echo_once(&client, echo.addr, 10 + i, 1024)
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

// ----- 7. wrong password -----

/// A stream opened on an idle, reused session goes out at once: a target
/// that speaks first (SMTP, FTP, MySQL...) answers without the client writing
/// anything. (Its SYN used to wait for an unrelated wake-up of the session's
/// driver; with a long SYNACK wait and no heartbeats, for ever.)
async fn a_stream_on_a_reused_session_is_sent_at_once<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let source = source_target(1024);
    let mut cfg = client_config(srv.addr, pin);
    cfg.stream_open_timeout = Duration::from_secs(600);
    let client = Client::<C>::new(cfg).unwrap();
    for round in 0..3 {
        let mut s = open(&client, source.addr).await;
        anytls_io::timeout::<C, _>(STEP, read_pattern_to_eof(&mut s, DOWNLOAD_SEED, 1024))
            .await
            .unwrap_or_else(|| panic!("round {round}: the target's first words never came"))
            .unwrap();
        drop(s);
        wait_until::<C>(STEP, "the session back in the pool", || {
            client.stats().idle == 1
        })
        .await;
    }
    assert_eq!(client.stats().dials, 1, "one session, reused");
    srv.handle.shutdown();
}

/// With `disable_reuse` the session closes when its stream is done: only
/// after the stream's last bytes and FIN went out.
async fn an_upload_ended_by_close_arrives_whole_without_reuse<C: TestRuntime, S: TestRuntime>() {
    const LEN: usize = 256 * 1024;
    let (srv, pin) = default_server::<S>().await;
    let (sink, verdicts) = support::reporting_sink(LEN);
    let mut cfg = client_config(srv.addr, pin);
    cfg.pool.disable_reuse = true;
    let client = Client::<C>::new(cfg).unwrap();
    for _ in 0..3 {
        let mut s = open(&client, sink.addr).await;
        write_pattern(&mut s, UPLOAD_SEED, LEN).await.unwrap();
        s.close().await.unwrap();
        drop(s);
        let verdict =
            wait_for::<C, _>(STEP, "the sink's verdict", || verdicts.try_recv().ok()).await;
        verdict.expect("every byte of the upload");
    }
    srv.handle.shutdown();
}

/// The handler sees the authenticated user and the client's address on every
/// stream, the first stream of a fresh session included (the user used to
/// reach the handler through an observer that could run after it, so a first
/// stream on a multi-thread runtime could see an empty name).
async fn every_stream_knows_its_user_and_peer<C: TestRuntime, S: TestRuntime>() {
    let (id, pin) = identity();
    let mut cfg = ServerConfig::new(PASSWORD, id);
    cfg.users = vec![
        ("alice".into(), "alice-Password_1".into()),
        ("bob".into(), PASSWORD.into()),
    ];
    let server = anytls_io::Server::<S>::bind(localhost0(), cfg)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let (tx, seen) = mpsc::channel();
    S::spawn(async move {
        let _ = server
            .serve_with(Duration::ZERO, move |req| {
                let _ = tx.send((req.user().to_owned(), req.peer_addr()));
                async move { req.reject("seen") }
            })
            .await;
    });
    const SESSIONS: usize = 20;
    for (user, password) in [("alice", "alice-Password_1"), ("bob", PASSWORD)] {
        let mut cfg = client_config(addr, pin);
        cfg.password = password.into();
        // A new session for every stream: each is the first of its session.
        cfg.pool.disable_reuse = true;
        let client = Client::<C>::new(cfg).unwrap();
        for _ in 0..SESSIONS {
            // The handler refuses: `connect` or `established` says so.
            let connected = anytls_io::timeout::<C, _>(
                STEP,
                client.connect(SocksAddr::domain("example.com", 80)),
            )
            .await
            .expect("connect hung");
            if let Ok(mut s) = connected {
                let verdict = anytls_io::timeout::<C, _>(STEP, s.established()).await;
                assert!(matches!(verdict, Some(Err(_))), "{verdict:?}");
            }
        }
        for _ in 0..SESSIONS {
            let (got, peer) =
                wait_for::<C, _>(STEP, "the handler's report", || seen.try_recv().ok()).await;
            assert_eq!(got, user, "a stream's user");
            assert!(peer.ip().is_loopback(), "{peer}");
            assert_ne!(peer.port(), addr.port());
        }
        client.close();
    }
    handle.shutdown();
}

async fn wrong_password_is_refused_without_a_byte<C: TestRuntime, S: TestRuntime>() {
    let (srv, pin) = default_server::<S>().await;
    let echo = echo_target();

    // Our client: a clear error on the stream, not a hang.
    let mut cfg = client_config(srv.addr, pin);
    cfg.password = "not-the-password".into();
    let client = Client::<C>::new(cfg).unwrap();
    let start = Instant::now();
    let res = anytls_io::timeout::<C, _>(STEP, async {
        let mut s = client.connect(SocksAddr::from(echo.addr)).await?;
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
    assert!(err.to_string().contains("wrong password"), "{err}");
    client.close();

    // A raw TLS client: after a wrong preamble the server sends nothing at all.
    let addr = srv.addr;
    let raw = thread::spawn(move || {
        let mut tls = raw_tls(pin, addr);
        let mut pre = Vec::new();
        pre.extend_from_slice(PasswordHash::of("wrong").as_bytes());
        pre.extend_from_slice(&30u16.to_be_bytes());
        pre.extend_from_slice(&[0u8; 30]);
        assert_eq!(pre.len(), 64);
        tls.write_all(&pre).unwrap();
        tls.flush().unwrap();
        read_all(&mut tls)
    });
    let (got, end) = join_thread::<C, _>(raw, 2 * STEP, "the raw TLS client").await;
    assert!(got.is_empty(), "server sent {} bytes", got.len());
    // A clean EOF: close_notify, then the TCP close.
    end.expect("clean TLS close");
    srv.handle.shutdown();
}

// ----- 8. fallback -----

async fn failed_authentication_goes_to_the_fallback<C: TestRuntime, S: TestRuntime>() {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let (fallback, received) = fallback_target(REPLY);
    let (id, pin) = identity();
    let mut cfg = ServerConfig::new(PASSWORD, id);
    cfg.fallback = Some(fallback.addr);
    // A long deadline: every request must be decided by its first read.
    cfg.handshake_timeout = Duration::from_secs(30);
    let srv = start_server::<S>(localhost0(), cfg).await;

    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\n\r\n"[..],
    ] {
        let start = Instant::now();
        let addr = srv.addr;
        let raw = thread::spawn(move || {
            let mut tls = raw_tls(pin, addr);
            tls.write_all(req).unwrap();
            tls.flush().unwrap();
            read_all(&mut tls)
        });
        let (got, end) = join_thread::<C, _>(raw, 2 * STEP, "the raw TLS client").await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(REPLY),
            "reply through the fallback (ended with {end:?})"
        );
        let seen =
            wait_for::<S, _>(STEP, "the fallback's report", || received.try_recv().ok()).await;
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

async fn each_transmit_is_one_tls_record_of_the_planned_size<C: TestRuntime, S: TestRuntime>() {
    const PAYLOAD: usize = 3000;
    let (id, pin) = identity();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Until the destination and the whole payload arrived.
    let server = thread::spawn(move || {
        record_server(l, id, |recs| {
            let (_, data, whole) = decode_frames(recs);
            whole && data.iter().skip(1).map(Vec::len).sum::<usize>() >= PAYLOAD
        })
    });

    let client = Client::<C>::new(client_config(addr, pin)).unwrap();
    let dest = SocksAddr::domain("example.com", 443);
    let mut s = anytls_io::timeout::<C, _>(STEP, client.connect(dest.clone()))
        .await
        .expect("connect hung")
        .unwrap();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    s.write_all(&payload).await.unwrap();
    let records = join_thread::<S, _>(server, STEP, "the record server").await;
    drop(s);
    client.close();

    let sizes: Vec<usize> = records.iter().map(|(_, p)| p.len()).collect();
    eprintln!("client record plaintext sizes: {sizes:?}");
    assert!(sizes.len() >= 5, "{sizes:?}");
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
