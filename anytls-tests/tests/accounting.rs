//! Per-user accounting (`Server::stats_handle`), for every client and server
//! runtime pair: two users move known numbers of bytes through an echo
//! target, and the server's counters show exactly those bytes per user
//! (stream payload: what the server's streams read from and queued for the
//! clients), the streams they opened, sessions and streams open returning to
//! 0 once the clients close, and a wrong password counted as an
//! authentication failure from 127.0.0.1. Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anytls_io::stats::StatsSnapshot;
use anytls_io::{Client, ClientConfig, Identity, Server, ServerConfig, StatsHandle, Verification};
use anytls_tests::TestRuntime;
use anytls_tests::targets::{closed_port, payload, sleep, tcp_echo, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

anytls_tests::suite!(bytes_sessions_streams_and_auth_failures_are_counted_per_user);

fn client<C: TestRuntime>(addr: SocketAddr, pin: [u8; 32], password: &str) -> Client<C> {
    let mut cfg = ClientConfig::new(addr.to_string(), password);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    Client::<C>::new(cfg).unwrap()
}

/// Sends `size` bytes through a new stream to the echo target, reads them
/// back, and closes the stream.
async fn echo<C: TestRuntime>(c: &Client<C>, target: SocketAddr, i: u32, size: usize) {
    let mut s = within::<C, _>(STEP, "connect", c.connect(target))
        .await
        .unwrap();
    let data = payload(i, size);
    let mut back = vec![0u8; size];
    within::<C, _>(STEP, "echo", async {
        s.write_all(&data).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
    })
    .await;
    assert!(back == data, "echo {i} corrupted");
    s.close().await.unwrap();
}

/// Waits (bounded) until `done` holds for a snapshot; returns it.
async fn wait_for<R: TestRuntime>(
    stats: &StatsHandle,
    what: &str,
    done: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    let start = Instant::now();
    loop {
        let s = stats.snapshot();
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < STEP, "{what}: {s:#?} ({})", R::NAME);
        sleep::<R>(Duration::from_millis(20)).await;
    }
}

async fn bytes_sessions_streams_and_auth_failures_are_counted_per_user<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let mut cfg = ServerConfig::new("unused", id);
    cfg.users = vec![
        ("alice".into(), "alice-pw".into()),
        ("bob".into(), "bob-pw".into()),
    ];
    let server = Server::<S>::bind("127.0.0.1:0", cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    let stats = server.stats_handle();
    let before = server.stats();
    assert_eq!(before.users.len(), 2, "configured users start at zero");
    assert!(
        before
            .users
            .iter()
            .all(|u| u.bytes_received == 0 && u.sessions_total == 0 && u.streams_total == 0)
    );
    S::spawn(async move {
        let _ = server.serve().await;
    });
    let target = tcp_echo();

    // alice: three streams, one after another; bob: two at once.
    let alice = client::<C>(addr, pin, "alice-pw");
    let alice_sizes = [1_000usize, 70_000, 12_345];
    for (i, size) in alice_sizes.iter().enumerate() {
        echo(&alice, target, i as u32, *size).await;
    }
    let bob = client::<C>(addr, pin, "bob-pw");
    let bob_sizes = [40_000usize, 333];
    futures_lite::future::zip(
        echo(&bob, target, 10, bob_sizes[0]),
        echo(&bob, target, 11, bob_sizes[1]),
    )
    .await;
    // A refused stream counts as a stream, with no bytes.
    let mut refused = within::<C, _>(STEP, "connect", bob.connect(closed_port()))
        .await
        .unwrap();
    let verdict = within::<C, _>(STEP, "verdict", refused.established()).await;
    assert!(verdict.is_err(), "nothing listens there");
    drop(refused);

    // A wrong password: no session, one failure from 127.0.0.1.
    let mallory = client::<C>(addr, pin, "wrong");
    let r = within::<C, _>(STEP, "wrong password", async {
        let mut s = mallory.connect(target).await?;
        s.established().await
    })
    .await;
    assert!(r.is_err(), "a wrong password gets no stream");
    mallory.close();

    alice.close();
    bob.close();
    let snap = wait_for::<S>(&stats, "everything closed", |s| {
        s.auth_failures >= 1
            && s.users
                .iter()
                .all(|u| u.sessions_open == 0 && u.streams_open == 0)
    })
    .await;
    let a = snap.user("alice").unwrap();
    let b = snap.user("bob").unwrap();
    let alice_bytes: u64 = alice_sizes.iter().map(|&n| n as u64).sum();
    let bob_bytes: u64 = bob_sizes.iter().map(|&n| n as u64).sum();
    assert_eq!(a.bytes_received, alice_bytes, "{snap:#?}");
    assert_eq!(a.bytes_sent, alice_bytes, "{snap:#?}");
    assert_eq!(b.bytes_received, bob_bytes, "{snap:#?}");
    assert_eq!(b.bytes_sent, bob_bytes, "{snap:#?}");
    assert_eq!(a.streams_total, 3, "{snap:#?}");
    assert_eq!(
        b.streams_total, 3,
        "two echoes and the refused one: {snap:#?}"
    );
    assert!(a.sessions_total >= 1 && b.sessions_total >= 1, "{snap:#?}");
    assert_eq!(snap.auth_failures, 1, "{snap:#?}");
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(snap.auth_failures_by_peer.len(), 1, "{snap:#?}");
    assert_eq!(snap.auth_failures_by_peer[0].addr, local);
    assert_eq!(snap.auth_failures_by_peer[0].count, 1);
    let text = snap.to_prometheus();
    assert!(
        text.contains(&format!(
            "anytls_user_bytes_received_total{{user=\"alice\"}} {alice_bytes}\n"
        )),
        "{text}"
    );
    assert!(text.contains("anytls_auth_failures_total 1\n"), "{text}");
    stop.shutdown();
}
