//! SOCKS5 end to end through the library on 127.0.0.1: application -> SOCKS5
//! listener -> Client -> Server -> TCP target, for every runtime pair (C runs
//! the client and its SOCKS5 listener, S the server). Every wait is bounded.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anytls_io::socks5::wire::{self, Reply};
use anytls_io::socks5::{Socks5Config, Socks5Error, serve_socks5};
use anytls_io::{Host, SocksAddr, timeout};
use anytls_tests::TestRuntime;
use anytls_tests::fixture::{Pair, pair, socks5};
use anytls_tests::targets::{closed_port, tcp_echo as echo_target};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

struct Fixture<C: TestRuntime> {
    /// Client and server (closed and shut down when dropped).
    pair: Pair<C>,
    /// SOCKS5 with the default settings (reply at once).
    socks: SocketAddr,
    /// SOCKS5 waiting up to 5 s for the server's verdict.
    socks_verdict: SocketAddr,
}

async fn fixture<C: TestRuntime, S: TestRuntime>() -> Fixture<C> {
    let pair = pair::<C, S>("socks-pw").await;
    let client = &pair.client;

    let l = C::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let socks = C::local_addr(&l).unwrap();
    let c = client.clone();
    C::spawn(async move {
        let _ = serve_socks5(l, c).await;
    });

    let cfg = Socks5Config {
        verdict_wait: Duration::from_secs(5),
        ..Socks5Config::default()
    };
    let socks_verdict = socks5::<C>(client, cfg).await;
    Fixture {
        pair,
        socks,
        socks_verdict,
    }
}

/// Connects through the SOCKS5 proxy at `socks` with the client runtime's
/// sockets (the library's own SOCKS5 client), within [`STEP`].
async fn socks5_connect<C: TestRuntime>(
    socks: SocketAddr,
    dest: impl Into<SocksAddr>,
) -> Result<C::Tcp, Socks5Error> {
    timeout::<C, _>(
        STEP,
        anytls_io::socks5::socks5_connect::<C>(&socks.to_string(), dest),
    )
    .await
    .expect("SOCKS5 connect timed out")
}

/// A plain connection to the SOCKS5 listener, for raw bytes.
async fn raw_connect<C: TestRuntime>(socks: SocketAddr) -> C::Tcp {
    timeout::<C, _>(STEP, C::connect(&socks.to_string()))
        .await
        .expect("connect timed out")
        .unwrap()
}

async fn echo_1k<C: TestRuntime>(mut s: C::Tcp, seed: u8) {
    let data: Vec<u8> = (0..1024u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut back = vec![0u8; data.len()];
    timeout::<C, _>(STEP, async {
        s.write_all(&data).await?;
        s.read_exact(&mut back).await
    })
    .await
    .expect("echo timed out")
    .unwrap();
    assert_eq!(back, data, "echo differs");
}

/// Greeting, request and 1 KiB of data in one write (an optimistic client),
/// then the 12-byte method choice and reply, then the echo.
async fn pipelined_echo_1k<C: TestRuntime>(socks: SocketAddr, dest: &SocksAddr, seed: u8) {
    let data: Vec<u8> = (0..1024u32).map(|k| (k as u8) ^ seed).collect();
    let mut s = raw_connect::<C>(socks).await;
    let mut msg = vec![5, 1, 0];
    msg.extend(wire::encode_request(wire::CMD_CONNECT, dest).unwrap());
    msg.extend_from_slice(&data);
    let mut head = [0u8; 12];
    let mut back = vec![0u8; data.len()];
    let t = Instant::now();
    timeout::<C, _>(STEP, async {
        s.write_all(&msg).await?;
        s.read_exact(&mut head).await?;
        s.read_exact(&mut back).await
    })
    .await
    .expect("timed out")
    .unwrap();
    assert_eq!(head, [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0], "{dest}");
    assert_eq!(back, data, "{dest}");
    // With a verdict wait, the target's first bytes end the wait at once.
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the wait should end early ({dest}: {:?})",
        t.elapsed()
    );
}

async fn connect_ipv4_ipv6_and_domain_destinations<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let target = echo_target();
    let port = target.port();
    let dests = [
        // ATYP 0x01.
        SocksAddr::from(target),
        // ATYP 0x04: an IPv4-mapped IPv6 address, which the server dials as
        // 127.0.0.1 (no IPv6 needed).
        SocksAddr {
            host: Host::Ipv6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            port,
        },
        // ATYP 0x03: a name; an IP literal, so no resolver is involved.
        SocksAddr::domain("127.0.0.1", port),
    ];
    for (i, dest) in dests.iter().enumerate() {
        let s = socks5_connect::<C>(f.socks, dest.clone())
            .await
            .unwrap_or_else(|e| panic!("{dest}: {e}"));
        echo_1k::<C>(s, i as u8).await;
    }
    // With a verdict wait, data the application sends along with the request
    // (optimistic clients) reaches the target, and the target's first bytes
    // end the wait at once.
    for (i, dest) in dests.iter().enumerate() {
        pipelined_echo_1k::<C>(f.socks_verdict, dest, i as u8).await;
    }
    // Sessions were reused across the requests.
    let st = f.pair.client.stats();
    assert!(st.reused >= 1, "{st:?}");
    assert_eq!(st.dial_failures, 0, "{st:?}");
}

async fn refused_destination_gets_a_failure_reply<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let closed = closed_port();
    match socks5_connect::<C>(f.socks_verdict, closed).await {
        Err(Socks5Error::Reply(Reply::ConnectionRefused)) => {}
        other => panic!(
            "expected a 'connection refused' reply, got {:?}",
            other.map(|_| "a connection")
        ),
    }
    // Without a verdict wait the reply is "succeeded" and the connection then
    // ends without data.
    let mut s = socks5_connect::<C>(f.socks, closed).await.unwrap();
    let mut buf = [0u8; 16];
    let n = timeout::<C, _>(STEP, s.read(&mut buf))
        .await
        .expect("the connection should end")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The listener still works afterwards.
    let target = echo_target();
    pipelined_echo_1k::<C>(f.socks_verdict, &SocksAddr::from(target), 7).await;
    let s = socks5_connect::<C>(f.socks, target).await.unwrap();
    echo_1k::<C>(s, 8).await;
}

/// Raw bytes: the exact replies of RFC 1928 for the cases we refuse.
async fn protocol_replies_on_the_wire<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let socks = f.socks;
    let raw = |msg: Vec<u8>| async move {
        let mut s = raw_connect::<C>(socks).await;
        s.write_all(&msg).await.unwrap();
        let mut out = Vec::new();
        let _ = timeout::<C, _>(STEP, s.read_to_end(&mut out))
            .await
            .expect("the listener should close the connection");
        out
    };
    // Only username/password offered: "no acceptable methods".
    assert_eq!(raw(vec![5, 1, 2]).await, [5, 0xff]);
    // BIND: command not supported.
    assert_eq!(
        raw(vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).await,
        [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    // ATYP 0x05: address type not supported.
    assert_eq!(
        raw(vec![5, 1, 0, 5, 1, 0, 5, 1, 2, 3, 4]).await,
        [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    // Not SOCKS5 at all: closed without a reply.
    assert_eq!(raw(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await, b"");

    // A success reply is 10 bytes with a bound address, then the data flows.
    let target = echo_target();
    let mut s = raw_connect::<C>(f.socks).await;
    let mut req = vec![5, 1, 0];
    req.extend(wire::encode_request(wire::CMD_CONNECT, &SocksAddr::from(target)).unwrap());
    req.extend_from_slice(b"early bytes");
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 12];
    timeout::<C, _>(STEP, s.read_exact(&mut head))
        .await
        .expect("no reply in time")
        .unwrap();
    assert_eq!(head, [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let mut echoed = [0u8; 11];
    timeout::<C, _>(STEP, s.read_exact(&mut echoed))
        .await
        .expect("no echo in time")
        .unwrap();
    assert_eq!(&echoed, b"early bytes");
}

anytls_tests::suite!(
    connect_ipv4_ipv6_and_domain_destinations,
    refused_destination_gets_a_failure_reply,
    protocol_replies_on_the_wire,
);

// Runtime-free: the message formats and the error-to-reply mapping.

#[test]
fn wire_parsers_handle_partial_input() {
    let msg = [5u8, 2, 0, 2];
    assert_eq!(wire::parse_greeting(&msg[..1]), Ok(None));
    assert_eq!(wire::parse_greeting(&msg[..3]), Ok(None));
    assert_eq!(wire::parse_greeting(&msg), Ok(Some((true, 4))));
    assert_eq!(wire::parse_greeting(&[5, 1, 2]), Ok(Some((false, 3))));
    assert!(wire::parse_greeting(&[4, 1, 0]).is_err());

    let dests = [
        SocksAddr::from(SocketAddr::from(([10, 1, 2, 3], 443))),
        SocksAddr::from(SocketAddr::from((Ipv6Addr::LOCALHOST, 8443))),
        SocksAddr::domain("example.com", 80),
    ];
    for dest in dests {
        let req = wire::encode_request(wire::CMD_CONNECT, &dest).unwrap();
        for cut in 0..req.len() {
            assert_eq!(
                wire::parse_request(&req[..cut]),
                Ok(None),
                "{dest} cut {cut}"
            );
        }
        let (r, used) = wire::parse_request(&req).unwrap().unwrap();
        assert_eq!((r.command, &r.dest, used), (1, &dest, req.len()));
        let reply = wire::encode_reply(Reply::HostUnreachable, Some(&dest));
        let (code, bound, used) = wire::parse_reply(&reply).unwrap().unwrap();
        assert_eq!(
            (code, bound, used),
            (Reply::HostUnreachable, dest, reply.len())
        );
    }
    let e = wire::parse_request(&[5, 1, 0, 3, 0, 0, 80]).unwrap_err();
    assert_eq!(e.reply, Some(Reply::HostUnreachable));
    for c in 0..=255u8 {
        assert_eq!(Reply::from_code(c).code(), c);
    }
}

#[test]
fn errors_map_to_replies() {
    use std::io::{Error, ErrorKind};
    let refused = |msg: &str| Reply::for_error(&Error::new(ErrorKind::ConnectionRefused, msg));
    assert_eq!(
        refused("remote: dial tcp 127.0.0.1:9: Connection refused (os error 111)"),
        Reply::ConnectionRefused
    );
    assert_eq!(
        refused("remote: dial tcp: lookup nowhere.invalid: no such host"),
        Reply::HostUnreachable
    );
    assert_eq!(
        refused("remote: dial tcp 10.0.0.1:80: i/o timeout"),
        Reply::HostUnreachable
    );
    assert_eq!(
        refused("remote: connect: network is unreachable"),
        Reply::NetworkUnreachable
    );
    assert_eq!(refused("remote: blocked"), Reply::GeneralFailure);
    assert_eq!(
        Reply::for_error(&Error::new(ErrorKind::TimedOut, "x")),
        Reply::GeneralFailure
    );
}
