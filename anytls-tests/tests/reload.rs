//! Reloading a running server (`Server::reload_handle`), for every client and
//! server runtime pair: a byte-exact transfer of a kept user runs across a
//! reload that adds one user and removes another (the removed user's session
//! is closed, the added user connects), a changed password works and the old
//! one is refused, and a reload looping while 50 new connections arrive
//! loses none of them. A connection accepted before a reload that removed its
//! user, authenticating after it, is closed as soon as it authenticates.
//! A reload's padding scheme reaches new sessions (the server sends it to
//! clients that have another) while a session from before carries on, and
//! a reload's fallback gets the new connections that fail authentication.
//! Every wait is bounded; nothing is timed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anytls_io::core::{Command, Frame, PaddingScheme, PasswordHash, StreamId};
use anytls_io::tls;
use anytls_io::{Client, ClientConfig, Identity, Server, ServerConfig, Verification};
use anytls_tests::TestRuntime;
use anytls_tests::targets::{ECHO_MAX_CONNS, join, payload, sleep, tcp_echo, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::io::{Read, Write};
use std::net::TcpStream;

// The end-to-end suite's fixtures (a server with its handles, a fallback,
// raw TLS clients); each suite uses its own part.
#[allow(dead_code)]
#[path = "e2e/support.rs"]
mod support;

use support::{fallback_target, identity, localhost0, raw_tls, read_all, start_server};

const STEP: Duration = Duration::from_secs(10);

anytls_tests::suite!(
    a_transfer_runs_across_a_reload_that_adds_and_removes_users,
    a_reload_racing_new_connections_loses_none,
    a_removed_user_accepted_before_the_reload_is_closed_once_authenticated,
    a_reloaded_padding_scheme_reaches_new_sessions_and_an_old_one_carries_on,
    a_reloaded_fallback_gets_the_new_connections_that_fail_authentication
);

fn client<C: TestRuntime>(addr: SocketAddr, pin: [u8; 32], password: &str) -> Client<C> {
    let mut cfg = ClientConfig::new(addr.to_string(), password);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    Client::<C>::new(cfg).unwrap()
}

fn users(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect()
}

/// One echo of `size` bytes through a new stream; an error if anything fails.
async fn echo<C: TestRuntime>(
    c: &Client<C>,
    target: SocketAddr,
    i: u32,
    size: usize,
) -> std::io::Result<()> {
    let mut s = c.connect(target).await?;
    s.established().await?;
    let data = payload(i, size);
    let mut back = vec![0u8; size];
    s.write_all(&data).await?;
    s.read_exact(&mut back).await?;
    if back != data {
        return Err(std::io::Error::other(format!("echo {i} corrupted")));
    }
    s.close().await
}

async fn a_transfer_runs_across_a_reload_that_adds_and_removes_users<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let mut cfg = ServerConfig::new("unused", id);
    cfg.users = users(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let server = Server::<S>::bind("127.0.0.1:0", cfg.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    let reload = server.reload_handle();
    let stats = server.stats_handle();
    S::spawn(async move {
        let _ = server.serve().await;
    });
    let target = tcp_echo();

    // alice's transfer: the first half before the reload.
    let alice = client::<C>(addr, pin, "alice-pw");
    let mut a = within::<C, _>(STEP, "alice connect", alice.connect(target))
        .await
        .unwrap();
    let data = payload(1, 600_000);
    let (first, second) = data.split_at(300_000);
    let mut back = vec![0u8; data.len()];
    within::<C, _>(STEP, "alice first half", async {
        a.write_all(first).await.unwrap();
        a.read_exact(&mut back[..first.len()]).await.unwrap();
    })
    .await;
    // bob has a stream open too.
    let bob = client::<C>(addr, pin, "bob-pw");
    let mut b = within::<C, _>(STEP, "bob connect", bob.connect(target))
        .await
        .unwrap();
    within::<C, _>(STEP, "bob echo", async {
        b.write_all(b"hello").await.unwrap();
        let mut five = [0u8; 5];
        b.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello");
    })
    .await;

    // An invalid configuration changes nothing.
    let mut bad = cfg.clone();
    bad.users = users(&[("alice", "alice-pw")]);
    bad.handshake_timeout = Duration::ZERO;
    assert!(
        reload.reload(bad).is_err(),
        "a zero handshake timeout is refused"
    );

    // Reload: bob removed, carol added, alice kept.
    let mut next = cfg.clone();
    next.users = users(&[("alice", "alice-pw"), ("carol", "carol-pw")]);
    let closed = reload.reload(next.clone()).unwrap();
    assert_eq!(closed, 1, "bob's session is closed ({})", S::NAME);

    // bob's stream ends (EOF or error), and bob cannot come back.
    let mut buf = [0u8; 16];
    let r = within::<C, _>(STEP, "bob's stream ends", b.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "bob's stream still reads: {r:?}"
    );
    let bob2 = client::<C>(addr, pin, "bob-pw");
    let r = within::<C, _>(STEP, "bob again", echo(&bob2, target, 2, 100)).await;
    assert!(r.is_err(), "a removed user is refused");
    bob2.close();

    // alice's transfer: the second half after the reload, byte-exact.
    within::<C, _>(STEP, "alice second half", async {
        a.write_all(second).await.unwrap();
        a.read_exact(&mut back[first.len()..]).await.unwrap();
    })
    .await;
    assert!(back == data, "alice's transfer corrupted ({})", S::NAME);
    within::<C, _>(STEP, "alice close", a.close())
        .await
        .unwrap();

    // carol, added by the reload, connects.
    let carol = client::<C>(addr, pin, "carol-pw");
    within::<C, _>(STEP, "carol", echo(&carol, target, 3, 50_000))
        .await
        .unwrap();

    // A new password for alice: the old one is refused, the new one works.
    next.users = users(&[("alice", "alice-new"), ("carol", "carol-pw")]);
    reload.reload(next).unwrap();
    let old = client::<C>(addr, pin, "alice-pw");
    let r = within::<C, _>(STEP, "old password", echo(&old, target, 4, 100)).await;
    assert!(r.is_err(), "the old password is refused");
    old.close();
    let new = client::<C>(addr, pin, "alice-new");
    within::<C, _>(STEP, "new password", echo(&new, target, 5, 100))
        .await
        .unwrap();
    // carol's pooled session was kept: her next stream still works.
    within::<C, _>(STEP, "carol again", echo(&carol, target, 6, 100))
        .await
        .unwrap();

    // Per-user counters go on: carol's bytes are hers.
    let snap = stats.snapshot();
    let c = snap.user("carol").unwrap();
    assert_eq!(c.bytes_received, 50_100, "{snap:#?}");
    assert!(snap.user("bob").is_some(), "bob's counters stay: {snap:#?}");
    for c in [alice, bob, carol, new] {
        c.close();
    }
    stop.shutdown();
}

async fn a_reload_racing_new_connections_loses_none<C: TestRuntime, S: TestRuntime>() {
    const CONNECTIONS: usize = 50;
    const RELOADS: usize = 20;
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let mut cfg = ServerConfig::new("pw", id);
    cfg.users = users(&[("u", "pw")]);
    let server = Server::<S>::bind("127.0.0.1:0", cfg.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    let reload = server.reload_handle();
    S::spawn(async move {
        let _ = server.serve().await;
    });
    // Each echo target serves ECHO_MAX_CONNS connections.
    let targets: Vec<SocketAddr> = (0..CONNECTIONS.div_ceil(ECHO_MAX_CONNS))
        .map(|_| tcp_echo())
        .collect();

    let done = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    for i in 0..CONNECTIONS {
        let (done, failures, targets) = (done.clone(), failures.clone(), targets.clone());
        C::spawn(async move {
            // A client each: every stream is a new connection.
            let c = client::<C>(addr, pin, "pw");
            let target = targets[i % targets.len()];
            let r = anytls_io::timeout::<C, _>(STEP, echo(&c, target, i as u32, 2_000)).await;
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => failures.lock().unwrap().push(format!("{i}: {e}")),
                None => failures.lock().unwrap().push(format!("{i}: timed out")),
            }
            c.close();
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Reload while they connect: "u" is kept throughout, others come and go.
    for r in 0..RELOADS {
        let mut next = cfg.clone();
        let extra = format!("extra-{r}");
        next.users = users(&[("u", "pw"), (&extra, "x")]);
        let closed = reload.reload(next).unwrap();
        assert_eq!(closed, 0, "no session of u is closed");
        sleep::<S>(Duration::from_millis(2)).await;
    }
    let start = Instant::now();
    while done.load(Ordering::SeqCst) < CONNECTIONS {
        assert!(
            start.elapsed() < 3 * STEP,
            "{} of {CONNECTIONS} done",
            done.load(Ordering::SeqCst)
        );
        sleep::<S>(Duration::from_millis(20)).await;
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "lost connections ({}): {failures:?}",
        S::NAME
    );
    stop.shutdown();
}

type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

async fn a_removed_user_accepted_before_the_reload_is_closed_once_authenticated<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let mut cfg = ServerConfig::new("unused", id);
    cfg.users = users(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    // Longer than the client's read timeout: only the reload ends bob's session.
    cfg.handshake_timeout = 6 * STEP;
    let server = Server::<S>::bind("127.0.0.1:0", cfg.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    let reload = server.reload_handle();
    let stats = server.stats_handle();
    S::spawn(async move {
        let _ = server.serve().await;
    });

    // A raw TLS client finishes its handshake: the server has accepted the
    // connection, under the configuration with bob in it.
    let hello = std::thread::spawn(move || {
        let cfg = tls::client_config(&Verification::Pin(pin), &[]).unwrap();
        let name = tls::server_name("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let tcp = TcpStream::connect_timeout(&addr, STEP).unwrap();
        tcp.set_read_timeout(Some(STEP)).unwrap();
        tcp.set_write_timeout(Some(STEP)).unwrap();
        let mut raw: RawTls = rustls::StreamOwned::new(conn, tcp);
        while raw.conn.is_handshaking() {
            raw.conn.complete_io(&mut raw.sock).unwrap();
        }
        raw
    });
    let mut raw = join::<C, _>(hello, STEP, "TLS handshake").await;

    // bob is removed; then his preamble arrives.
    let mut next = cfg.clone();
    next.users = users(&[("alice", "alice-pw")]);
    reload.reload(next).unwrap();
    let bye = std::thread::spawn(move || {
        // The preamble and the client's Settings: a whole session handshake,
        // which a kept user's session would answer and stay open after.
        let mut pre = Vec::new();
        pre.extend_from_slice(PasswordHash::of("bob-pw").as_bytes());
        pre.extend_from_slice(&0u16.to_be_bytes());
        let settings = format!(
            "v=2\nclient=anytls-tests\npadding-md5={}",
            PaddingScheme::default_scheme().md5_hex()
        );
        Frame::new(Command::Settings, StreamId(0), settings.into_bytes())
            .encode(&mut pre)
            .unwrap();
        raw.write_all(&pre).unwrap();
        raw.flush().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match raw.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    });
    let end = join::<C, _>(bye, 2 * STEP, "the session's end").await;
    if let Err(e) = &end {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "bob's session stayed open ({})",
            S::NAME
        );
    }
    // It authenticated (under the configuration it was accepted with), and
    // was closed: not an authentication failure.
    let start = Instant::now();
    loop {
        let snap = stats.snapshot();
        let bob = snap.user("bob").unwrap();
        if bob.sessions_total == 1 && bob.sessions_open == 0 {
            assert_eq!(snap.auth_failures, 0, "{snap:#?}");
            break;
        }
        assert!(start.elapsed() < STEP, "{snap:#?}");
        sleep::<S>(Duration::from_millis(20)).await;
    }
    stop.shutdown();
}

/// Waits until `c`'s padding scheme (the one its new sessions start with)
/// is `want`.
async fn wait_for_scheme<C: TestRuntime>(c: &Client<C>, want: &PaddingScheme, what: &str) {
    let start = Instant::now();
    while c.padding_scheme().md5() != want.md5() {
        assert!(
            start.elapsed() < STEP,
            "{what}: the client's scheme is md5 {}, not {} ({})",
            c.padding_scheme().md5_hex(),
            want.md5_hex(),
            C::NAME
        );
        sleep::<C>(Duration::from_millis(10)).await;
    }
}

async fn a_reloaded_padding_scheme_reaches_new_sessions_and_an_old_one_carries_on<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let first = PaddingScheme::parse("stop=3\n0=30-30\n1=100-400\n2=400-500").unwrap();
    let second = PaddingScheme::parse("stop=4\n0=40-40\n1=200-300\n2=300-600\n3=50-90").unwrap();
    let default = PaddingScheme::default_scheme();
    assert!(first.md5() != default.md5() && second.md5() != default.md5());
    let (id, pin) = identity();
    let mut cfg = ServerConfig::new("pw", id);
    cfg.padding = first.clone();
    let srv = start_server::<S>(localhost0(), cfg.clone()).await;
    let target = tcp_echo();

    // A session under the first scheme, with a stream kept open.
    let old = client::<C>(srv.addr, pin, "pw");
    let mut s = within::<C, _>(STEP, "old session", old.connect(target))
        .await
        .unwrap();
    let data = payload(7, 200_000);
    let (before, after) = data.split_at(100_000);
    let mut back = vec![0u8; data.len()];
    within::<C, _>(STEP, "old session, before", async {
        s.write_all(before).await.unwrap();
        s.read_exact(&mut back[..before.len()]).await.unwrap();
    })
    .await;
    wait_for_scheme(&old, &first, "the server's first scheme").await;

    let mut next = cfg.clone();
    next.padding = second.clone();
    assert_eq!(srv.reload.reload(next).unwrap(), 0, "no session is closed");

    // A new client's session gets the second scheme.
    let fresh = client::<C>(srv.addr, pin, "pw");
    within::<C, _>(STEP, "new client", echo(&fresh, target, 8, 5_000))
        .await
        .unwrap();
    wait_for_scheme(&fresh, &second, "a new client after the reload").await;

    // The old session was told nothing (the server does not push a scheme
    // to live sessions) and its stream carries on, byte-exact.
    within::<C, _>(STEP, "old session, after", async {
        s.write_all(after).await.unwrap();
        s.read_exact(&mut back[before.len()..]).await.unwrap();
    })
    .await;
    assert!(
        back == data,
        "the old session's stream corrupted ({})",
        S::NAME
    );
    assert_eq!(
        old.padding_scheme().md5(),
        first.md5(),
        "the old session got a scheme after the reload ({})",
        S::NAME
    );
    // The same client's next stream needs a new session (its only one is
    // busy, and the pool keeps no spare by default): it announces the first
    // scheme and is sent the second.
    within::<C, _>(
        STEP,
        "the old client's new session",
        echo(&old, target, 9, 5_000),
    )
    .await
    .unwrap();
    wait_for_scheme(&old, &second, "the old client's new session").await;
    within::<C, _>(STEP, "old stream close", s.close())
        .await
        .unwrap();
    for c in [old, fresh] {
        c.close();
    }
    srv.handle.shutdown();
}

/// A TLS client that is no AnyTLS client, on a std thread: sends `req` and
/// returns what came back until the connection ended.
async fn probe<C: TestRuntime>(addr: SocketAddr, pin: [u8; 32], req: &'static [u8]) -> Vec<u8> {
    let raw = std::thread::spawn(move || {
        let mut tls = raw_tls(pin, addr);
        tls.write_all(req).unwrap();
        tls.flush().unwrap();
        read_all(&mut tls).0
    });
    join::<C, _>(raw, 2 * STEP, "the raw TLS client").await
}

async fn a_reloaded_fallback_gets_the_new_connections_that_fail_authentication<
    C: TestRuntime,
    S: TestRuntime,
>() {
    const OLD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold";
    const NEW: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew";
    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (old_fallback, old_got) = fallback_target(OLD);
    let (new_fallback, new_got) = fallback_target(NEW);
    let (id, pin) = identity();
    let mut cfg = ServerConfig::new("pw", id);
    cfg.fallback = Some(old_fallback.addr);
    let srv = start_server::<S>(localhost0(), cfg.clone()).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let got = probe::<C>(srv.addr, pin, REQ).await;
    assert_eq!(
        text(&got),
        text(OLD),
        "the first fallback answers ({})",
        S::NAME
    );
    // Each fallback reports a request before it answers it.
    assert_eq!(old_got.try_recv().unwrap(), REQ);

    let mut next = cfg.clone();
    next.fallback = Some(new_fallback.addr);
    srv.reload.reload(next).unwrap();

    let got = probe::<C>(srv.addr, pin, REQ).await;
    assert_eq!(
        text(&got),
        text(NEW),
        "the new fallback answers ({})",
        S::NAME
    );
    assert_eq!(new_got.try_recv().unwrap(), REQ);
    assert!(
        old_got.try_recv().is_err(),
        "the first fallback got a connection after the reload ({})",
        S::NAME
    );
    // A client with the password is not sent there.
    let c = client::<C>(srv.addr, pin, "pw");
    within::<C, _>(
        STEP,
        "a client after the reload",
        echo(&c, tcp_echo(), 10, 1_000),
    )
    .await
    .unwrap();
    c.close();
    srv.handle.shutdown();
}
