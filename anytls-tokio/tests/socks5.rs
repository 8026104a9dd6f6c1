//! SOCKS5 end to end through the library on 127.0.0.1: application -> SOCKS5
//! listener -> Client -> Server -> TCP target. Every wait is bounded.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anytls_tokio::socks5::wire::{self, Reply};
use anytls_tokio::socks5::{
    Socks5Config, Socks5Error, serve_socks5, serve_socks5_with, socks5_connect,
};
use anytls_tokio::{
    Client, ClientConfig, Host, Identity, Server, ServerConfig, SocksAddr, Verification,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

async fn echo_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = timeout(STEP, tokio::io::copy(&mut r, &mut w)).await;
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Fixture {
    client: Client,
    /// SOCKS5 with the default settings (reply at once).
    socks: SocketAddr,
    /// SOCKS5 waiting up to 5 s for the server's verdict.
    socks_verdict: SocketAddr,
}

async fn fixture() -> Fixture {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let server = Server::bind("127.0.0.1:0", ServerConfig::new("socks-pw", id))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    let mut cfg = ClientConfig::new(addr.to_string(), "socks-pw");
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    let client = Client::new(cfg).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socks = l.local_addr().unwrap();
    tokio::spawn(serve_socks5(l, client.clone()));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socks_verdict = l.local_addr().unwrap();
    let cfg = Socks5Config {
        verdict_wait: Duration::from_secs(5),
        ..Socks5Config::default()
    };
    tokio::spawn(serve_socks5_with(l, client.clone(), cfg));
    Fixture {
        client,
        socks,
        socks_verdict,
    }
}

async fn echo_1k(mut s: TcpStream, seed: u8) {
    let data: Vec<u8> = (0..1024u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    s.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    timeout(STEP, s.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(back, data, "echo differs");
}

/// Greeting, request and 1 KiB of data in one write (an optimistic client),
/// then the 12-byte method choice and reply, then the echo.
async fn pipelined_echo_1k(socks: SocketAddr, dest: &SocksAddr, seed: u8) {
    let data: Vec<u8> = (0..1024u32).map(|k| (k as u8) ^ seed).collect();
    let mut s = TcpStream::connect(socks).await.unwrap();
    let mut msg = vec![5, 1, 0];
    msg.extend(wire::encode_request(wire::CMD_CONNECT, dest).unwrap());
    msg.extend_from_slice(&data);
    s.write_all(&msg).await.unwrap();
    let mut head = [0u8; 12];
    let mut back = vec![0u8; data.len()];
    let t = std::time::Instant::now();
    timeout(STEP, async {
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
        "the wait should end early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_ipv4_ipv6_and_domain_destinations() {
    let f = fixture().await;
    let target = echo_target().await;
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
        let s = timeout(STEP, socks5_connect(f.socks, dest.clone()))
            .await
            .expect("SOCKS5 connect timed out")
            .unwrap_or_else(|e| panic!("{dest}: {e}"));
        echo_1k(s, i as u8).await;
    }
    // With a verdict wait, data the application sends along with the request
    // (optimistic clients) reaches the target, and the target's first bytes
    // end the wait at once.
    for (i, dest) in dests.iter().enumerate() {
        pipelined_echo_1k(f.socks_verdict, dest, i as u8).await;
    }
    // Sessions were reused across the requests.
    let st = f.client.stats();
    assert!(st.reused >= 1, "{st:?}");
    assert_eq!(st.dial_failures, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destination_gets_a_failure_reply() {
    let f = fixture().await;
    let closed = closed_port().await;
    let res = timeout(STEP, socks5_connect(f.socks_verdict, closed))
        .await
        .expect("no reply in time");
    match res {
        Err(Socks5Error::Reply(Reply::ConnectionRefused)) => {}
        other => panic!("expected a 'connection refused' reply, got {other:?}"),
    }
    // Without a verdict wait the reply is "succeeded" and the connection then
    // ends without data.
    let mut s = timeout(STEP, socks5_connect(f.socks, closed))
        .await
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 16];
    let n = timeout(STEP, s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // The listener still works afterwards.
    let target = echo_target().await;
    pipelined_echo_1k(f.socks_verdict, &SocksAddr::from(target), 7).await;
    let s = timeout(STEP, socks5_connect(f.socks, target))
        .await
        .unwrap()
        .unwrap();
    echo_1k(s, 8).await;
}

/// Raw bytes: the exact replies of RFC 1928 for the cases we refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_replies_on_the_wire() {
    let f = fixture().await;
    let raw = |msg: Vec<u8>| async move {
        let mut s = TcpStream::connect(f.socks).await.unwrap();
        s.write_all(&msg).await.unwrap();
        let mut out = Vec::new();
        let _ = timeout(STEP, s.read_to_end(&mut out))
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
    let target = echo_target().await;
    let mut s = TcpStream::connect(f.socks).await.unwrap();
    let mut req = vec![5, 1, 0];
    req.extend(wire::encode_request(wire::CMD_CONNECT, &SocksAddr::from(target)).unwrap());
    req.extend_from_slice(b"early bytes");
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 12];
    timeout(STEP, s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head, [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let mut echoed = [0u8; 11];
    timeout(STEP, s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"early bytes");
}

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
