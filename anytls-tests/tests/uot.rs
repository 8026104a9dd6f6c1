//! UDP over TCP end to end on 127.0.0.1, for every runtime pair (C runs the
//! client and its SOCKS5 listener, S the server): `Client::udp` /
//! `Client::udp_connect` against a UDP echo target, and SOCKS5 UDP ASSOCIATE
//! driven by std sockets. Every wait is bounded.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anytls_io::socks5::Socks5Config;
use anytls_io::socks5::wire::{self, Reply};
use anytls_io::{
    AnyTlsUdp, Client, ClientConfig, Identity, Server, ServerConfig, SocksAddr, Verification,
    timeout,
};
use anytls_tests::TestRuntime;
use anytls_tests::fixture::{Pair as Fixture, pair, pair_serving, socks5};
use anytls_tests::targets::{self, check, join, payload, sleep, udp_echo, within};

/// Bound of one step (a receive, a connect, one wait).
const STEP: Duration = Duration::from_secs(10);
/// Datagrams a test keeps in flight: far below what loopback buffers hold, so
/// none is lost.
const WINDOW: usize = 16;
/// Largest payload of the many-datagram tests.
const MAX_SIZE: usize = 8 * 1024;
/// Largest UDP payload over IPv4.
const UDP_MAX: usize = 65_507;

/// Size of datagram `i`: pseudo-random in 4..=MAX_SIZE.
fn size_of(i: u32) -> usize {
    targets::size_of(i, MAX_SIZE)
}

/// Runs `fut` for at most [`STEP`], panicking with `what` when it runs out.
async fn bounded<R: TestRuntime, F: std::future::Future>(what: &str, fut: F) -> F::Output {
    within::<R, _>(STEP, what, fut).await
}

async fn fixture<C: TestRuntime, S: TestRuntime>() -> Fixture<C> {
    pair::<C, S>("uot-pw").await
}

/// Sends datagrams `0..count` to `dest` with [`WINDOW`] in flight and checks
/// every echo (source and bytes).
async fn echo_many<C: TestRuntime>(udp: &mut AnyTlsUdp, dest: SocketAddr, count: u32) {
    let mut buf = vec![0u8; 65_536];
    let mut seen = HashSet::new();
    let mut next = 0u32;
    while next < count.min(WINDOW as u32) {
        let p = payload(next, size_of(next));
        bounded::<C, _>("send", udp.send_to(&p, dest))
            .await
            .unwrap();
        next += 1;
    }
    while seen.len() < count as usize {
        let (n, from) = bounded::<C, _>(
            &format!("datagram {} of {count}", seen.len()),
            udp.recv_from(&mut buf),
        )
        .await
        .unwrap();
        assert_eq!(from, SocksAddr::from(dest), "source of an answer");
        check(&buf[..n], MAX_SIZE, &mut seen);
        if next < count {
            let p = payload(next, size_of(next));
            bounded::<C, _>("send", udp.send_to(&p, dest))
                .await
                .unwrap();
            next += 1;
        }
    }
}

/// (a) 500 datagrams of up to 8 KiB through one association, all back intact.
async fn udp_many_datagrams<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let echo = udp_echo(STEP);
    let mut udp = bounded::<C, _>("udp()", f.client.udp()).await.unwrap();
    assert!(udp.peer().is_none());
    echo_many::<C>(&mut udp, echo.addr, 500).await;
    bounded::<C, _>("verdict", udp.established()).await.unwrap();
}

/// Empty and maximum-size datagrams, two targets on one association, an IP
/// literal given as a name, and the send-side errors.
async fn udp_edges_and_two_targets<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let (a, b) = (udp_echo(STEP), udp_echo(STEP));
    let mut udp = bounded::<C, _>("udp()", f.client.udp()).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let big = payload(7, UDP_MAX);
    for (data, to) in [
        (&[][..], a.addr),
        (&big[..], b.addr),
        (&b"to a"[..], a.addr),
        (&b"to b"[..], b.addr),
    ] {
        bounded::<C, _>("send", udp.send_to(data, to))
            .await
            .unwrap();
        let (n, from) = bounded::<C, _>("recv", udp.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((&buf[..n], from), (data, SocksAddr::from(to)));
    }
    // A name the server resolves (an IP literal: no resolver involved).
    let named = SocksAddr::domain("127.0.0.1", a.addr.port());
    bounded::<C, _>("send", udp.send_to(b"named", named))
        .await
        .unwrap();
    let (n, from) = bounded::<C, _>("recv", udp.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"named"[..], SocksAddr::from(a.addr)));
    // Truncation to the caller's buffer, as UDP does; the next datagram is whole.
    bounded::<C, _>("send", udp.send_to(b"0123456789", a.addr))
        .await
        .unwrap();
    bounded::<C, _>("send", udp.send_to(b"next", a.addr))
        .await
        .unwrap();
    let mut small = [0u8; 4];
    let (n, _) = bounded::<C, _>("recv", udp.recv_from(&mut small))
        .await
        .unwrap();
    assert_eq!(&small[..n], b"0123");
    let (n, _) = bounded::<C, _>("recv", udp.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"next");
    // Errors that send nothing and leave the association usable.
    let e = udp.send_to(&vec![0; 65_536], a.addr).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e = udp.send(b"x").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    echo_many::<C>(&mut udp, b.addr, 20).await;
}

/// Connect mode: one destination, `send`/`recv`, split halves on two futures.
async fn udp_connect_mode<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let (echo, other) = (udp_echo(STEP), udp_echo(STEP));
    let mut udp = bounded::<C, _>("udp_connect()", f.client.udp_connect(echo.addr))
        .await
        .unwrap();
    assert_eq!(udp.peer(), Some(&SocksAddr::from(echo.addr)));
    let e = udp.send_to(b"x", other.addr).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    bounded::<C, _>("send", udp.send(b"hello")).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = bounded::<C, _>("recv", udp.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"hello");
    // The halves, concurrently: 300 datagrams, WINDOW in flight.
    let (mut tx, mut rx) = udp.split();
    let count = 300u32;
    let received = std::sync::atomic::AtomicU32::new(0);
    let send = async {
        for i in 0..count {
            for _ in 0..(STEP.as_millis() / 2) {
                if i < received.load(Ordering::Acquire) + WINDOW as u32 {
                    break;
                }
                sleep::<C>(Duration::from_millis(2)).await;
            }
            tx.send(&payload(i, size_of(i))).await.unwrap();
        }
        tx
    };
    let recv = async {
        let mut seen = HashSet::new();
        while seen.len() < count as usize {
            let n = bounded::<C, _>("recv", rx.recv(&mut buf)).await.unwrap();
            check(&buf[..n], MAX_SIZE, &mut seen);
            received.fetch_add(1, Ordering::Release);
        }
    };
    let limit = STEP * 3;
    timeout::<C, _>(limit, futures_lite::future::zip(send, recv))
        .await
        .expect("connect-mode echo timed out");
}

/// A server with UDP disabled refuses the stream: the association reports it.
async fn udp_refused_by_server<C: TestRuntime, S: TestRuntime>() {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let server = Server::<S>::bind("127.0.0.1:0", ServerConfig::new("uot-pw", id))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    S::spawn(async move {
        let udp = anytls_io::UdpConfig {
            enabled: false,
            ..anytls_io::UdpConfig::default()
        };
        let _ = server
            .serve_with(Duration::ZERO, move |req| {
                anytls_io::relay_tcp_with(req, STEP, udp)
            })
            .await;
    });
    let mut cfg = ClientConfig::new(addr.to_string(), "uot-pw");
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    let client = Client::<C>::new(cfg).unwrap();
    // The refusal shows on `udp()` itself when it arrives before the request
    // is queued, else on the verdict and on every receive.
    match bounded::<C, _>("udp()", client.udp()).await {
        Ok(mut udp) => {
            let e = bounded::<C, _>("verdict", udp.established())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
            let mut buf = [0u8; 16];
            let e = bounded::<C, _>("recv", udp.recv_from(&mut buf))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
    }
    client.close();
    stop.shutdown();
}

// ----- SOCKS5 UDP ASSOCIATE with std sockets (on their own threads) -----

/// A UDP ASSOCIATE handshake on a fresh control connection: the control
/// connection and the relay's address.
fn associate(socks: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut c = TcpStream::connect_timeout(&socks, STEP).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.set_write_timeout(Some(STEP)).unwrap();
    let mut msg = vec![wire::VERSION, 1, wire::METHOD_NO_AUTH];
    let any = SocksAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
    msg.extend(wire::encode_request(wire::CMD_UDP_ASSOCIATE, &any).unwrap());
    c.write_all(&msg).unwrap();
    let mut rep = [0u8; 12];
    c.read_exact(&mut rep).unwrap();
    assert_eq!(rep[..2], [5, 0], "method");
    let (reply, bound, used) = wire::parse_reply(&rep[2..]).unwrap().unwrap();
    assert_eq!((reply, used), (Reply::Succeeded, 10), "{rep:?}");
    let relay = bound.socket_addr().expect("an IP address");
    assert_eq!(
        relay.ip(),
        socks.ip(),
        "the relay is on the address reached"
    );
    assert_ne!(relay.port(), 0);
    (c, relay)
}

fn socks_datagram(to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    wire::encode_udp_header(&SocksAddr::from(to), &mut d).unwrap();
    d.extend_from_slice(payload);
    d
}

/// Receives one datagram from the relay and parses it: source and payload.
fn socks_recv(s: &UdpSocket, relay: SocketAddr) -> io::Result<(SocksAddr, Vec<u8>)> {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = s.recv_from(&mut buf)?;
    assert_eq!(from, relay, "answers come from the relay");
    let (h, at) = wire::parse_udp_header(&buf[..n]).unwrap();
    assert_eq!(h.frag, 0);
    Ok((h.addr, buf[at..n].to_vec()))
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s
}

/// (b) Many datagrams through SOCKS5 UDP ASSOCIATE, none lost or corrupted;
/// datagrams from another port and fragments are dropped.
async fn socks5_udp_associate<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let socks = socks5::<C>(&f.client, Socks5Config::default()).await;
    let echo = udp_echo(STEP);
    let target = echo.addr;
    let h = std::thread::spawn(move || {
        let (_control, relay) = associate(socks);
        let s = udp_client();
        let count = 400u32;
        let mut seen = HashSet::new();
        let mut next = 0u32;
        while next < WINDOW as u32 {
            s.send_to(
                &socks_datagram(target, &payload(next, size_of(next))),
                relay,
            )
            .unwrap();
            next += 1;
        }
        while seen.len() < count as usize {
            let (src, data) = socks_recv(&s, relay)
                .unwrap_or_else(|e| panic!("datagram {} of {count}: {e}", seen.len()));
            assert_eq!(src, SocksAddr::from(target));
            check(&data, MAX_SIZE, &mut seen);
            if next < count {
                s.send_to(
                    &socks_datagram(target, &payload(next, size_of(next))),
                    relay,
                )
                .unwrap();
                next += 1;
            }
        }
        // A stranger's port, a fragment, a malformed header: dropped. The
        // marker sent after them is the next answer.
        let other = udp_client();
        other
            .send_to(&socks_datagram(target, b"from another port"), relay)
            .unwrap();
        let mut frag = socks_datagram(target, b"fragment");
        frag[2] = 1;
        s.send_to(&frag, relay).unwrap();
        s.send_to(&[0, 0, 0, 9, 1], relay).unwrap();
        s.send_to(&socks_datagram(target, b"marker"), relay)
            .unwrap();
        let (_, data) = socks_recv(&s, relay).unwrap();
        assert_eq!(data, b"marker");
        // The largest UDP payload that fits with the 10-byte header.
        let big = payload(9, UDP_MAX - 10);
        s.send_to(&socks_datagram(target, &big), relay).unwrap();
        let (_, data) = socks_recv(&s, relay).unwrap();
        assert!(data == big, "large datagram corrupted");
    });
    join::<C, _>(h, STEP * 6, "the SOCKS5 UDP client").await;
}

/// (c) Closing the control connection ends the association: the relay port
/// closes (the kernel answers ICMP port unreachable).
async fn socks5_udp_ends_with_control<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let socks = socks5::<C>(&f.client, Socks5Config::default()).await;
    let echo = udp_echo(STEP);
    let target = echo.addr;
    let h = std::thread::spawn(move || {
        let (control, relay) = associate(socks);
        let s = udp_client();
        s.connect(relay).unwrap();
        s.send(&socks_datagram(target, b"ping")).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        assert!(buf[..n].ends_with(b"ping"));
        drop(control);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < STEP,
                "the relay still answers after the control connection closed"
            );
            let _ = s.send(&socks_datagram(target, b"ping"));
            match s.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    join::<C, _>(h, STEP * 2, "the SOCKS5 UDP client").await;
}

/// An idle association ends and closes its control connection; with UDP
/// ASSOCIATE turned off the request is refused.
async fn socks5_udp_idle_and_disabled<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let idle = socks5::<C>(
        &f.client,
        Socks5Config {
            udp_idle_timeout: Duration::from_millis(300),
            ..Socks5Config::default()
        },
    )
    .await;
    let off = socks5::<C>(
        &f.client,
        Socks5Config {
            udp_associate: false,
            ..Socks5Config::default()
        },
    )
    .await;
    let h = std::thread::spawn(move || {
        let (mut control, _relay) = associate(idle);
        let start = Instant::now();
        let mut b = [0u8; 8];
        // The relay closes the control connection (EOF or reset).
        let n = control.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0);
        assert!(start.elapsed() < STEP);

        let mut c = TcpStream::connect_timeout(&off, STEP).unwrap();
        c.set_read_timeout(Some(STEP)).unwrap();
        c.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
            .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert_eq!(out, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    });
    join::<C, _>(h, STEP * 2, "the SOCKS5 UDP client").await;
}

/// A server that closes idle UoT streams after 200 ms; the client side on `C`.
async fn fixture_short_udp_idle<C: TestRuntime, S: TestRuntime>() -> Fixture<C> {
    pair_serving::<C, S, _, _>("uot-pw", |server| async move {
        let udp = anytls_io::UdpConfig {
            idle_timeout: Duration::from_millis(200),
            ..anytls_io::UdpConfig::default()
        };
        let _ = server
            .serve_with(Duration::ZERO, move |req| {
                anytls_io::relay_tcp_with(req, STEP, udp)
            })
            .await;
    })
    .await
}

/// The server ends the UoT stream (its idle timeout): the association lives
/// on, and the next datagram goes out on a new stream.
async fn socks5_udp_survives_stream_end<C: TestRuntime, S: TestRuntime>() {
    let f = fixture_short_udp_idle::<C, S>().await;
    let socks = socks5::<C>(&f.client, Socks5Config::default()).await;
    let echo = udp_echo(STEP);
    let target = echo.addr;
    let h = std::thread::spawn(move || {
        let (mut control, relay) = associate(socks);
        let s = udp_client();
        for round in 0..3u8 {
            let msg = [b'r', round];
            s.send_to(&socks_datagram(target, &msg), relay).unwrap();
            let (src, data) = socks_recv(&s, relay).unwrap();
            assert_eq!((src, data), (SocksAddr::from(target), msg.to_vec()));
            // Past the server's idle timeout: it closes the stream.
            std::thread::sleep(Duration::from_millis(600));
        }
        // The control connection is still open (a read times out).
        control
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 1];
        let e = control.read(&mut b).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
    });
    join::<C, _>(h, STEP * 2, "the SOCKS5 UDP client").await;
}

anytls_tests::suite!(
    socks5_udp_survives_stream_end,
    udp_many_datagrams,
    udp_edges_and_two_targets,
    udp_connect_mode,
    udp_refused_by_server,
    socks5_udp_associate,
    socks5_udp_ends_with_control,
    socks5_udp_idle_and_disabled,
);
