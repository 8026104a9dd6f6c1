//! Failures that explain themselves, on 127.0.0.1: a wrong password, a TLS
//! server that is not AnyTLS (answers with a web page, or says nothing), a
//! certificate that does not verify, a refused connection. The client
//! program logs one line saying why at the default log level, and the
//! waiting SOCKS5 request gets a failure reply; the library's `connect`
//! fails with the reason. Also the built-in dialer's options.
//!
//! Every wait is bounded; child processes are killed when a test fails.

mod common;
#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_tokio::tls::hex32;
use anytls_tokio::{Client, DialOptions, DomainStrategy, Identity, SocksAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{
    PASSWORD, Proc, STEP, client_config, echo_target, free_port, identity, start_server,
};

/// A TLS server that is not AnyTLS and answers the first bytes with a web
/// server's error page, then closes.
fn web_server(id: &Identity) -> SocketAddr {
    let page = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    scripted_server(id, page.to_vec(), true)
}

/// A TLS server that is not AnyTLS and says nothing (for up to 30 s).
fn silent_server(id: &Identity) -> SocketAddr {
    scripted_server(id, Vec::new(), false)
}

/// `anytls client` on a free local port with `args`; returns once its port
/// accepts connections.
fn spawn_client(args: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec!["client", "--listen", &listen];
    all.extend_from_slice(args);
    let p = Proc::spawn(&all);
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + STEP;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "client never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, addr)
}

/// A SOCKS5 CONNECT to `dest` through `proxy`: the reply code (0 = success).
fn socks5_reply(proxy: SocketAddr, dest: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    let SocketAddr::V4(d) = dest else {
        unreachable!()
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&d.ip().octets());
    req.extend_from_slice(&d.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .expect("a SOCKS5 reply, not a hang");
    reply[1]
}

/// The client's stderr once it is stopped.
fn stderr_of(mut p: Proc) -> String {
    let _ = p.child.kill();
    let _ = p.child.wait();
    let (_, err) = p.drain();
    err + &p.seen.join("\n")
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_request_and_says_so() {
    let (id, pin) = identity();
    let (server, _h) = start_server(id).await;
    let echo = echo_target().await;
    let (server, pin) = (server.to_string(), hex32(&pin));
    let (reply, err) = blocking(move || {
        let (p, proxy) = spawn_client(&[
            "--server",
            &server,
            "--password",
            "not-the-password",
            "--pin",
            &pin,
            "--sni",
            "localhost",
        ]);
        let reply = socks5_reply(proxy, echo.addr);
        (reply, stderr_of(p))
    });
    assert_ne!(reply, 0, "a failure reply; log:\n{err}");
    assert!(
        err.contains("closed the session right after authentication: wrong password"),
        "{err}"
    );
    // The library says the same.
    let (id, pin) = identity();
    let (server, _h) = start_server(id).await;
    let mut cfg = client_config(&server.to_string(), pin);
    cfg.password = "not-the-password".into();
    let client = Client::new(cfg).unwrap();
    let Err(e) = tokio::time::timeout(STEP, client.connect(SocksAddr::from(echo.addr)))
        .await
        .expect("connect hung")
    else {
        panic!("connect succeeded with a wrong password");
    };
    assert!(e.to_string().contains("wrong password"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_server_instead_of_anytls_fails_the_request_and_says_so() {
    let (id, pin) = identity();
    let web = web_server(&id).to_string();
    let pin = hex32(&pin);
    let (reply, err) = blocking(move || {
        let (p, proxy) = spawn_client(&[
            "--server",
            &web,
            "--password",
            PASSWORD,
            "--pin",
            &pin,
            "--sni",
            "localhost",
        ]);
        let reply = socks5_reply(proxy, "127.0.0.1:9".parse().unwrap());
        (reply, stderr_of(p))
    });
    assert_ne!(reply, 0, "a failure reply; log:\n{err}");
    assert!(err.contains("not an AnyTLS server"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_explained_with_a_hint() {
    let (id, _) = identity();
    let (server, _h) = start_server(id).await;
    let server = server.to_string();
    let (reply, err) = blocking(move || {
        // The Mozilla roots do not know a self-signed certificate.
        let (p, proxy) = spawn_client(&[
            "--server",
            &server,
            "--password",
            PASSWORD,
            "--sni",
            "localhost",
        ]);
        let reply = socks5_reply(proxy, "127.0.0.1:9".parse().unwrap());
        (reply, stderr_of(p))
    });
    assert_ne!(reply, 0);
    assert!(
        err.contains("TLS certificate verification failed") && err.contains("--pin"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_explained_with_the_address() {
    let closed = support::closed_port().to_string();
    let (reply, err) = blocking(move || {
        let (p, proxy) = spawn_client(&["--server", &closed, "--password", PASSWORD, "--insecure"]);
        let reply = socks5_reply(proxy, "127.0.0.1:9".parse().unwrap());
        (reply, stderr_of(p))
    });
    assert_ne!(reply, 0);
    assert!(err.contains("connection refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_server_is_given_up_within_the_answer_timeout() {
    let (id, pin) = identity();
    let silent = silent_server(&id);
    let mut cfg = client_config(&silent.to_string(), pin);
    cfg.stream_open_timeout = Duration::from_millis(200);
    cfg.answer_timeout = Duration::from_millis(600);
    let client = Client::new(cfg).unwrap();
    let start = Instant::now();
    // No ServerSettings: after the SYNACK wait it is taken for a v1 server...
    let mut s = tokio::time::timeout(STEP, client.connect(SocksAddr::from(silent)))
        .await
        .expect("connect hung")
        .expect("connect after the v1 guess");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // ... and given up when nothing at all comes.
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(STEP, s.read(&mut b))
        .await
        .expect("read hung");
    let Err(e) = r else {
        panic!("the stream of a silent server did not fail");
    };
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(start.elapsed() < STEP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_dialer_honours_its_options() {
    let (id, pin) = identity();
    let (server, _h) = start_server(id).await;
    let echo = echo_target().await;
    let mut cfg = client_config(&format!("localhost:{}", server.port()), pin);
    let mut dial = DialOptions::default();
    dial.bind_address_v4 = Some("127.0.0.1".parse().unwrap());
    dial.reuse_addr = true;
    dial.tcp_fast_open = true;
    dial.tcp_multi_path = true;
    dial.domain_strategy = DomainStrategy::Ipv4Only;
    dial.fallback_delay = Some(Duration::from_millis(50));
    cfg.dial = dial.clone();
    let client = Client::new(cfg).unwrap();
    let mut s = support::open(&client, echo.addr).await;
    support::echo_round(&mut s, 7, 1000, STEP, "echo with dial options").await;
    // An address family the name does not have is a clear dial error.
    let mut cfg = client_config(&server.to_string(), pin);
    dial.domain_strategy = DomainStrategy::Ipv6Only;
    dial.bind_address_v4 = None;
    cfg.dial = dial;
    let client = Client::new(cfg).unwrap();
    let Err(e) = tokio::time::timeout(STEP, client.connect(SocksAddr::from(echo.addr)))
        .await
        .expect("connect hung")
    else {
        panic!("an IPv6-only dial to 127.0.0.1 succeeded");
    };
    assert!(e.to_string().contains("no IPv6 address"), "{e}");
}

/// A TLS server that reads the client's first bytes, writes `reply` (raw
/// AnyTLS frames), then closes (`close`) or stays silent.
fn scripted_server(id: &Identity, reply: Vec<u8>, close: bool) -> SocketAddr {
    let cfg = Arc::new(anytls_tokio::tls::server_config(id, &[]).unwrap());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..64 {
            let Ok((tcp, _)) = l.accept() else { return };
            let cfg = cfg.clone();
            let reply = reply.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                if tls.read(&mut buf).is_err() {
                    return;
                }
                if !reply.is_empty() {
                    let _ = tls.write_all(&reply);
                }
                if close {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    return;
                }
                let _ = tls.flush();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

fn raw_frame(cmd: u8, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![cmd];
    b.extend_from_slice(&sid.to_be_bytes());
    b.extend_from_slice(&(data.len() as u16).to_be_bytes());
    b.extend_from_slice(data);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synack_without_server_settings_lets_connect_return() {
    let (id, pin) = identity();
    // SYNACK (cmd 7) for stream 1, no (or an empty) ServerSettings.
    let reply = [raw_frame(10, 0, b""), raw_frame(7, 1, b"")].concat();
    let srv = scripted_server(&id, reply, false);
    let mut cfg = client_config(&srv.to_string(), pin);
    cfg.stream_open_timeout = Duration::from_millis(200);
    cfg.answer_timeout = Duration::from_millis(600);
    let client = Client::new(cfg).unwrap();
    let r =
        tokio::time::timeout(Duration::from_secs(5), client.connect(SocksAddr::from(srv))).await;
    assert!(
        r.is_ok(),
        "connect still pending after 5 s (both timeouts are < 1 s)"
    );
    r.unwrap().expect("connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_answered_then_closed_is_not_blamed_on_the_password() {
    let (id, pin) = identity();
    // A v2 server: ServerSettings (so the password was right), then it closes.
    let srv = scripted_server(&id, raw_frame(10, 0, b"v=2"), true);
    let mut blamed = 0;
    let mut ok = 0;
    for _ in 0..20 {
        let client = Client::new(client_config(&srv.to_string(), pin)).unwrap();
        match tokio::time::timeout(STEP, client.connect(SocksAddr::from(srv)))
            .await
            .expect("connect hung")
        {
            Ok(_) => ok += 1,
            Err(e) => {
                if e.to_string().contains("wrong password") {
                    blamed += 1;
                }
                eprintln!("connect error: {e}");
            }
        }
    }
    eprintln!("ok {ok}, blamed on the password {blamed}");
    assert_eq!(blamed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dial_with_options_is_connection_refused() {
    let (_, pin) = identity();
    let port = free_port();
    let mut cfg = client_config(&format!("127.0.0.1:{port}"), pin);
    let mut dial = DialOptions::default();
    dial.reuse_addr = true;
    cfg.dial = dial;
    let client = Client::new(cfg).unwrap();
    let Err(e) = tokio::time::timeout(
        STEP,
        client.connect(SocksAddr::from(SocketAddr::from(([127, 0, 0, 1], 9)))),
    )
    .await
    .expect("hung") else {
        panic!("connected to a closed port");
    };
    eprintln!("{:?}: {e}", e.kind());
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// Tokio, but every name resolves to `[::1]:port` first, then `127.0.0.1:port`.
struct TwoFamilies;
impl anytls_io::Runtime for TwoFamilies {
    type Tcp = <anytls_tokio::Tokio as anytls_io::Runtime>::Tcp;
    type Listener = <anytls_tokio::Tokio as anytls_io::Runtime>::Listener;
    type Timer = <anytls_tokio::Tokio as anytls_io::Runtime>::Timer;
    type Udp = <anytls_tokio::Tokio as anytls_io::Runtime>::Udp;
    fn spawn<F>(fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        <anytls_tokio::Tokio as anytls_io::Runtime>::spawn(fut)
    }
    fn timer(d: Instant) -> Self::Timer {
        <anytls_tokio::Tokio as anytls_io::Runtime>::timer(d)
    }
    fn reset_timer(t: &mut Self::Timer, d: Instant) {
        <anytls_tokio::Tokio as anytls_io::Runtime>::reset_timer(t, d)
    }
    fn connect(a: &str) -> impl std::future::Future<Output = std::io::Result<Self::Tcp>> + Send {
        <anytls_tokio::Tokio as anytls_io::Runtime>::connect(a)
    }
    fn finish_connect(
        s: std::net::TcpStream,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Tcp>> + Send {
        <anytls_tokio::Tokio as anytls_io::Runtime>::finish_connect(s)
    }
    fn bind(
        a: SocketAddr,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Listener>> + Send {
        <anytls_tokio::Tokio as anytls_io::Runtime>::bind(a)
    }
    fn listener_from_std(l: std::net::TcpListener) -> std::io::Result<Self::Listener> {
        <anytls_tokio::Tokio as anytls_io::Runtime>::listener_from_std(l)
    }
    fn accept(
        l: &Self::Listener,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Tcp, SocketAddr)>> + Send {
        <anytls_tokio::Tokio as anytls_io::Runtime>::accept(l)
    }
    fn local_addr(l: &Self::Listener) -> std::io::Result<SocketAddr> {
        <anytls_tokio::Tokio as anytls_io::Runtime>::local_addr(l)
    }
    fn bind_udp(
        a: SocketAddr,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Udp>> + Send {
        <anytls_tokio::Tokio as anytls_io::Runtime>::bind_udp(a)
    }
    fn send_to<'a>(
        s: &'a Self::Udp,
        d: &'a [u8],
        to: SocketAddr,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        <anytls_tokio::Tokio as anytls_io::Runtime>::send_to(s, d, to)
    }
    fn recv_from<'a>(
        s: &'a Self::Udp,
        b: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<(usize, SocketAddr)>> + Send + 'a {
        <anytls_tokio::Tokio as anytls_io::Runtime>::recv_from(s, b)
    }
    fn udp_local_addr(s: &Self::Udp) -> std::io::Result<SocketAddr> {
        <anytls_tokio::Tokio as anytls_io::Runtime>::udp_local_addr(s)
    }
    fn resolve(
        a: &str,
    ) -> impl std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send {
        let port: u16 = a.rsplit_once(':').unwrap().1.parse().unwrap();
        async move {
            Ok(vec![
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                SocketAddr::from(([127, 0, 0, 1], port)),
            ])
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_eyeballs_starts_the_other_family_at_once_when_the_first_fails() {
    let (id, pin) = identity();
    let (server, _h) = start_server(id).await; // 127.0.0.1 only: [::1] is refused at once
    let echo = echo_target().await;
    let mut cfg = client_config(&format!("twofamilies.test:{}", server.port()), pin);
    let mut dial = DialOptions::default();
    dial.fallback_delay = Some(Duration::from_secs(1));
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.dial = dial;
    let client = anytls_io::Client::<TwoFamilies>::new(cfg).unwrap();
    let start = Instant::now();
    let _s = tokio::time::timeout(STEP, client.connect(SocksAddr::from(echo.addr)))
        .await
        .expect("hung")
        .expect("connect");
    let took = start.elapsed();
    eprintln!("connect took {took:?} (IPv6 refused within ms; fallback_delay 1 s)");
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn certificate_problems_are_reported_when_the_server_starts() {
    // Expired, and for another name than the one the server is told.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old.example.com".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let dir = std::env::temp_dir().join(format!("anytls-diagnose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let mut p = Proc::spawn(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--password",
        PASSWORD,
        "--cert",
        c.to_str().unwrap(),
        "--key",
        k.to_str().unwrap(),
        "--server-name",
        "vpn.example.com",
    ]);
    p.wait_stdout("share URI:", STEP);
    let err = stderr_of(p);
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        err.contains("the certificate expired on 2001-01-01"),
        "{err}"
    );
    assert!(
        err.contains("not valid for the server name \"vpn.example.com\""),
        "{err}"
    );
}
