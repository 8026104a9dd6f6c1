//! UDP over TCP interop with `shoes` 0.3.2 (installed by `.ci/run` into
//! `$ANYTLS_PEERS_DIR`, default `~/.cache/anytls-ci`; see `interop.rs`):
//!
//! * our client ([`Client::udp`], non-connect mode, and
//!   [`Client::udp_connect`], connect mode) through a shoes AnyTLS server
//!   (`udp_enabled: true`) to a UDP echo target;
//! * our SOCKS5 UDP ASSOCIATE in front of our client, through the shoes server;
//! * a shoes client (its SOCKS5 listener, UDP ASSOCIATE; shoes carries each
//!   destination as a connect-mode UoT v2 stream) through our server to the
//!   echo target.
//!
//! Our side runs on tokio or smol (modules `tokio` and `smol`); the echo
//! target and the SOCKS5 UDP client are std threads. Every datagram must come
//! back intact (loopback, at most [`WINDOW`] in flight: no loss expected).
//! Missing binaries skip the tests unless `ANYTLS_REQUIRE_PEERS=1`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anytls_io::socks5::wire::{self, Reply};
use anytls_io::{
    AnyTlsUdp, Client, ClientConfig, Identity, Server, ServerConfig, SocksAddr, Verification,
};
use anytls_tests::TestRuntime;
use anytls_tests::peers::{Proc, free_port, peer, spawn, temp_dir, wait_listening, write_identity};
use anytls_tests::targets::{self, check, join, size_of, udp_echo, within};

const PASSWORD: &str = "interop-Pw_1";
/// Bound of one step (a receive, a start-up, one wait).
const STEP: Duration = Duration::from_secs(15);
/// Datagrams in flight at most.
const WINDOW: usize = 16;
/// Datagrams in flight at most through shoes' SOCKS5 UDP relay: it keeps 4
/// writes pending per destination (`MAX_PENDING_REMOTE_WRITES_PER_SESSION` in
/// its UDP router) and drops datagrams beyond that, as UDP may; a window of 16
/// loses 11 of the first 16 on every run.
const SHOES_SOCKS_WINDOW: usize = 4;
/// Datagrams per direction and mode.
const COUNT: u32 = 300;
/// Largest payload of the many-datagram runs.
const MAX_SIZE: usize = 8 * 1024;

fn spawn_shoes(shoes: &Path, yaml: &Path) -> Proc {
    spawn(Command::new(shoes).arg("--no-reload").arg(yaml))
}

/// Runs `fut` for at most [`STEP`], panicking with `what` when it runs out.
async fn bounded<R: TestRuntime, F: std::future::Future>(what: &str, fut: F) -> F::Output {
    within::<R, _>(STEP, what, fut).await
}

/// Payload `i`: its index, then bytes derived from it; 4..=MAX_SIZE long.
fn payload(i: u32) -> Vec<u8> {
    targets::payload(i, size_of(i, MAX_SIZE))
}

/// [`COUNT`] datagrams through `udp` to `dest`, [`WINDOW`] in flight; every
/// echo checked (source and bytes). Connect mode uses `send`/`recv`.
async fn echo_many<R: TestRuntime>(udp: &mut AnyTlsUdp, dest: SocketAddr) {
    let connect = udp.peer().is_some();
    let mut buf = vec![0u8; 65_536];
    let mut seen = HashSet::new();
    let mut next = 0u32;
    while seen.len() < COUNT as usize {
        while next < COUNT && (next as usize) < seen.len() + WINDOW {
            let p = payload(next);
            let sent = if connect {
                bounded::<R, _>("send", udp.send(&p)).await
            } else {
                bounded::<R, _>("send_to", udp.send_to(&p, dest)).await
            };
            sent.unwrap();
            next += 1;
        }
        let what = format!("datagram {} of {COUNT}", seen.len());
        let (n, from) = bounded::<R, _>(&what, udp.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!(from, SocksAddr::from(dest), "source of an answer");
        check(&buf[..n], MAX_SIZE, &mut seen);
    }
}

/// Our client (both UoT modes) through a shoes server.
/// A shoes AnyTLS server with UDP over TCP; our client to it.
async fn shoes_server<R: TestRuntime>(shoes: &Path, name: &str) -> (Proc, Client<R>) {
    let dir = temp_dir::<R>("anytls-uot-interop", name);
    let (cert_path, key_path, _) = write_identity(&dir);
    let port = free_port();
    let yaml = format!(
        r#"# shoes 0.3.2: AnyTLS server with UDP over TCP on 127.0.0.1:{port}
- address: "127.0.0.1:{port}"
  protocol:
    type: tls
    tls_targets:
      "localhost":
        cert: "{cert}"
        key: "{key}"
        protocol:
          type: anytls
          users:
            - name: uot
              password: "{PASSWORD}"
          udp_enabled: true
"#,
        cert = cert_path.display(),
        key = key_path.display(),
    );
    let cfg_path = dir.join("server.yaml");
    std::fs::write(&cfg_path, yaml).unwrap();
    let mut p = spawn_shoes(shoes, &cfg_path);
    wait_listening::<R>(port, &mut p, "shoes").await;
    let mut cfg = ClientConfig::new(format!("127.0.0.1:{port}"), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Insecure;
    (p, Client::<R>::new(cfg).unwrap())
}

/// Our client (both UoT modes) through a shoes server.
async fn our_udp_client_with_shoes_server<R: TestRuntime>() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let (_shoes, client) = shoes_server::<R>(&shoes, "shoes-server").await;
    let echo = udp_echo(STEP);

    // Non-connect mode: every datagram carries its destination.
    let mut udp = bounded::<R, _>("udp()", client.udp()).await.unwrap();
    echo_many::<R>(&mut udp, echo.addr).await;
    // A name (an IP literal) the server resolves. (No empty datagram: shoes
    // 0.3.2 takes one for the end of the stream and relays nothing after it.)
    let mut buf = vec![0u8; 65_536];
    let named = SocksAddr::domain("127.0.0.1", echo.addr.port());
    bounded::<R, _>("send_to", udp.send_to(b"named", named))
        .await
        .unwrap();
    let (n, _) = bounded::<R, _>("recv_from", udp.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"named");
    drop(udp);

    // Connect mode: one destination, no addresses on the datagrams.
    let mut udp = bounded::<R, _>("udp_connect()", client.udp_connect(echo.addr))
        .await
        .unwrap();
    echo_many::<R>(&mut udp, echo.addr).await;
    drop(udp);
    client.close();
}

/// A UDP ASSOCIATE on the SOCKS5 proxy at `socks` (std sockets): the control
/// connection and the relay address.
fn associate(socks: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut c = TcpStream::connect_timeout(&socks, STEP).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.set_write_timeout(Some(STEP)).unwrap();
    c.write_all(&[wire::VERSION, 1, wire::METHOD_NO_AUTH])
        .unwrap();
    let mut m = [0u8; 2];
    c.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0], "method");
    let any = SocksAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
    c.write_all(&wire::encode_request(wire::CMD_UDP_ASSOCIATE, &any).unwrap())
        .unwrap();
    // The reply, read exactly (its address may be IPv4 or IPv6).
    let mut rep = vec![0u8; 5];
    c.read_exact(&mut rep).unwrap();
    let rest = match rep[3] {
        1 => 5,
        4 => 17,
        3 => usize::from(rep[4]) + 2,
        t => panic!("reply address type {t}"),
    };
    rep.resize(5 + rest, 0);
    c.read_exact(&mut rep[5..]).unwrap();
    let (reply, bound, _) = wire::parse_reply(&rep).unwrap().unwrap();
    assert_eq!(reply, Reply::Succeeded);
    let mut relay = bound.socket_addr().expect("an IP address");
    if relay.ip().is_unspecified() {
        relay.set_ip(socks.ip());
    }
    (c, relay)
}

/// A shoes client (SOCKS5 UDP ASSOCIATE) through our server.
async fn shoes_socks5_udp_with_our_server<R: TestRuntime>() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let dir = temp_dir::<R>("anytls-uot-interop", "shoes-client");
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let server = Server::<R>::bind("127.0.0.1:0", ServerConfig::new(PASSWORD, id))
        .await
        .unwrap();
    let sport = server.local_addr().unwrap().port();
    let stop = server.shutdown_handle();
    R::spawn(async move {
        let _ = server.serve().await;
    });
    let lport = free_port();
    let yaml = format!(
        r#"# shoes 0.3.2: SOCKS5 (with UDP ASSOCIATE) on 127.0.0.1:{lport} -> AnyTLS 127.0.0.1:{sport}
- address: "127.0.0.1:{lport}"
  protocol:
    type: socks
    udp_enabled: true
  rules:
    - masks: "0.0.0.0/0"
      action: allow
      client_chain:
        address: "127.0.0.1:{sport}"
        protocol:
          type: tls
          verify: false
          sni_hostname: "localhost"
          protocol:
            type: anytls
            password: "{PASSWORD}"
            udp_enabled: true
"#
    );
    let cfg_path = dir.join("client.yaml");
    std::fs::write(&cfg_path, yaml).unwrap();
    let mut p = spawn_shoes(&shoes, &cfg_path);
    wait_listening::<R>(lport, &mut p, "shoes").await;

    let (a, b) = (udp_echo(STEP), udp_echo(STEP));
    let (ta, tb) = (a.addr, b.addr);
    let socks = SocketAddr::from(([127, 0, 0, 1], lport));
    let h = std::thread::spawn(move || {
        let (_control, relay) = associate(socks);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let send = |to: SocketAddr, data: &[u8]| {
            let mut d = Vec::new();
            wire::encode_udp_header(&SocksAddr::from(to), &mut d).unwrap();
            d.extend_from_slice(data);
            s.send_to(&d, relay).unwrap();
        };
        let mut buf = vec![0u8; 65_536];
        let mut recv = || {
            let (n, _) = s.recv_from(&mut buf).expect("an answer in time");
            let (h, at) = wire::parse_udp_header(&buf[..n]).unwrap();
            (h.addr, buf[at..n].to_vec())
        };
        // Two destinations on one association (shoes: one UoT stream each).
        for to in [ta, tb] {
            send(to, b"hello");
            assert_eq!(recv(), (SocksAddr::from(to), b"hello".to_vec()));
        }
        let mut seen = HashSet::new();
        let mut next = 0u32;
        while seen.len() < COUNT as usize {
            while next < COUNT && (next as usize) < seen.len() + SHOES_SOCKS_WINDOW {
                send(ta, &payload(next));
                next += 1;
            }
            let (src, data) = recv();
            assert_eq!(src, SocksAddr::from(ta));
            check(&data, MAX_SIZE, &mut seen);
        }
    });
    join::<R, _>(h, STEP * 4, "the SOCKS5 UDP client").await;
    stop.shutdown();
}

/// Our SOCKS5 UDP ASSOCIATE (std sockets as its client) through our client
/// and a shoes server.
async fn our_socks5_udp_with_shoes_server<R: TestRuntime>() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let (_shoes, client) = shoes_server::<R>(&shoes, "shoes-server-socks").await;
    let l = R::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let socks = R::local_addr(&l).unwrap();
    let c = client.clone();
    R::spawn(async move {
        let _ = anytls_io::socks5::serve_socks5(l, c).await;
    });
    let echo = udp_echo(STEP);
    let target = echo.addr;
    let h = std::thread::spawn(move || {
        let (_control, relay) = associate(socks);
        assert_eq!(relay.ip(), socks.ip());
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let send = |data: &[u8]| {
            let mut d = Vec::new();
            wire::encode_udp_header(&SocksAddr::from(target), &mut d).unwrap();
            d.extend_from_slice(data);
            s.send_to(&d, relay).unwrap();
        };
        let mut buf = vec![0u8; 65_536];
        let mut seen = HashSet::new();
        let mut next = 0u32;
        while seen.len() < COUNT as usize {
            while next < COUNT && (next as usize) < seen.len() + WINDOW {
                send(&payload(next));
                next += 1;
            }
            let (n, from) = s.recv_from(&mut buf).expect("an answer in time");
            assert_eq!(from, relay);
            let (h, at) = wire::parse_udp_header(&buf[..n]).unwrap();
            assert_eq!(h.addr, SocksAddr::from(target));
            check(&buf[at..n], MAX_SIZE, &mut seen);
        }
    });
    join::<R, _>(h, STEP * 4, "the SOCKS5 UDP client").await;
    client.close();
}

// Our side on one runtime per test (no mixed pairs).
anytls_tests::one_runtime_suite!(
    our_udp_client_with_shoes_server,
    our_socks5_udp_with_shoes_server,
    shoes_socks5_udp_with_our_server,
);
