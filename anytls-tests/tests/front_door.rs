//! The mixed local port (`anytls_io::proxy::serve_proxy`) end to end on
//! 127.0.0.1: application -> mixed port (SOCKS5, SOCKS4/4a, HTTP) -> Client
//! -> Server -> TCP or UDP target or HTTP origin, for every runtime pair (C
//! runs the client and its listeners, S the server). Our own minimal
//! clients and origins; every wait is bounded, nothing is timed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anytls_io::proxy::http::{self, BodyDecoder, Framing, RequestHead, ResponseHead};
use anytls_io::proxy::{Protocols, ProxyConfig, ProxyUser, socks4};
use anytls_io::socks5::wire::{self, Reply};
use anytls_io::socks5::{Socks5Error, socks5_connect_with};
use anytls_io::{Client, SocksAddr};
use anytls_tests::TestRuntime;
use anytls_tests::fixture::{Pair, pair, proxy};
use anytls_tests::targets::{closed_port, join, payload, tcp_echo, udp_echo, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

struct Fixture<C: TestRuntime> {
    /// Client and server (closed and shut down when dropped).
    pair: Pair<C>,
    /// Mixed port, no authentication.
    open: SocketAddr,
    /// Mixed port, user [`USER`] with [`PASSWORD`].
    auth: SocketAddr,
}

async fn fixture<C: TestRuntime, S: TestRuntime>() -> Fixture<C> {
    let pair = pair::<C, S>("front-pw").await;
    let open = proxy::<C>(&pair.client, ProxyConfig::default()).await;
    let users = [ProxyUser::new(USER, PASSWORD)];
    let auth = proxy::<C>(&pair.client, ProxyConfig::default().with_users(users)).await;
    Fixture { pair, open, auth }
}

/// A listener with `edit` applied to the default settings.
async fn proxy_with<C: TestRuntime>(
    client: &Client<C>,
    edit: impl FnOnce(&mut ProxyConfig),
) -> SocketAddr {
    let mut cfg = ProxyConfig::default();
    edit(&mut cfg);
    proxy::<C>(client, cfg).await
}

// ----- bounded socket steps on the client runtime -----

async fn connect<C: TestRuntime>(addr: SocketAddr) -> C::Tcp {
    within::<C, _>(STEP, "connect", C::connect(&addr.to_string()))
        .await
        .unwrap()
}

async fn send<C: TestRuntime>(s: &mut C::Tcp, data: &[u8]) {
    within::<C, _>(STEP, "write", s.write_all(data))
        .await
        .unwrap();
}

async fn recv_exact<C: TestRuntime>(s: &mut C::Tcp, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    within::<C, _>(STEP, "read", s.read_exact(&mut v))
        .await
        .unwrap();
    v
}

/// Everything until the proxy closes the connection (a reset ends it too).
async fn recv_to_end<C: TestRuntime>(s: &mut C::Tcp) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = within::<C, _>(STEP, "the proxy closing", s.read_to_end(&mut out)).await;
    out
}

/// 1 KiB through an echo target and back.
async fn echo<C: TestRuntime>(s: &mut C::Tcp, seed: u8) {
    let data: Vec<u8> = (0..1024u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    send::<C>(s, &data).await;
    assert_eq!(recv_exact::<C>(s, data.len()).await, data, "echo differs");
}

/// A SOCKS5 CONNECT with the library's client.
async fn socks5_try<C: TestRuntime>(
    proxy: SocketAddr,
    dest: SocketAddr,
    auth: Option<(&str, &str)>,
) -> Result<C::Tcp, Socks5Error> {
    let proxy = proxy.to_string();
    within::<C, _>(
        STEP,
        "SOCKS5 connect",
        socks5_connect_with::<C>(&proxy, dest, auth),
    )
    .await
}

async fn socks5_echo<C: TestRuntime>(proxy: SocketAddr, auth: Option<(&str, &str)>, seed: u8) {
    let mut s = socks5_try::<C>(proxy, tcp_echo(), auth).await.unwrap();
    echo::<C>(&mut s, seed).await;
}

fn connect_request(dest: SocketAddr, extra: &str) -> Vec<u8> {
    format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n{extra}\r\n").into_bytes()
}

/// An HTTP CONNECT tunnel to an echo target, with bytes sent along.
async fn http_connect_echo<C: TestRuntime>(proxy: SocketAddr, extra: &str, seed: u8) {
    let target = tcp_echo();
    let mut s = connect::<C>(proxy).await;
    let mut req = connect_request(target, extra);
    req.extend_from_slice(b"early");
    send::<C>(&mut s, &req).await;
    let head = recv_exact::<C>(&mut s, http::CONNECT_ESTABLISHED.len()).await;
    assert_eq!(head, http::CONNECT_ESTABLISHED);
    assert_eq!(recv_exact::<C>(&mut s, 5).await, b"early");
    echo::<C>(&mut s, seed).await;
}

/// The listener still serves SOCKS5 and HTTP.
async fn still_serves<C: TestRuntime>(proxy: SocketAddr) {
    socks5_echo::<C>(proxy, None, 7).await;
    http_connect_echo::<C>(proxy, "", 8).await;
}

// ----- a minimal HTTP client -----

/// A response: head and raw body (chunked framing included).
struct Response {
    head: ResponseHead,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.head
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads more bytes onto `buf`; 0 at EOF.
async fn fill<C: TestRuntime>(s: &mut C::Tcp, buf: &mut Vec<u8>) -> usize {
    let mut chunk = vec![0u8; 16 * 1024];
    let n = within::<C, _>(STEP, "read", s.read(&mut chunk))
        .await
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Reads one final response to a `method` request (interim ones skipped);
/// `buf` keeps what follows it.
async fn read_response<C: TestRuntime>(
    s: &mut C::Tcp,
    buf: &mut Vec<u8>,
    method: &str,
) -> Response {
    let head = loop {
        let Some(n) = http::head_len(buf, 0) else {
            assert!(
                fill::<C>(s, buf).await > 0,
                "closed before a response head: {:?}",
                String::from_utf8_lossy(buf)
            );
            continue;
        };
        let head = http::parse_response(&buf[..n]).unwrap();
        buf.drain(..n);
        if head.code >= 200 {
            break head;
        }
    };
    let framing = if method == "CONNECT" && head.code == 200 {
        Framing::None
    } else {
        http::response_framing(method, &head).unwrap()
    };
    let mut dec = BodyDecoder::new(framing);
    let mut body = Vec::new();
    loop {
        let k = dec.feed(buf).unwrap();
        body.extend(buf.drain(..k));
        if dec.is_done() {
            break;
        }
        if fill::<C>(s, buf).await == 0 {
            assert!(dec.is_close_delimited(), "closed within a body");
            break;
        }
    }
    Response { head, body }
}

/// Sends `req` on `s` and reads the response.
async fn exchange<C: TestRuntime>(s: &mut C::Tcp, buf: &mut Vec<u8>, req: &[u8]) -> Response {
    send::<C>(s, req).await;
    let method = String::from_utf8_lossy(req)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_owned();
    read_response::<C>(s, buf, &method).await
}

// ----- an HTTP origin on std threads -----

/// The chunked body the origin sends for `/chunked`, as on the wire.
fn chunked_answer(name: &str) -> String {
    let tail = format!(" from {name}");
    format!(
        "5\r\nhello\r\n{:x};ext=1\r\n{tail}\r\n0\r\nX-Done: 1\r\n\r\n",
        tail.len()
    )
}

/// An HTTP/1.1 origin named `name`: for `/chunked` a chunked answer, for
/// `/close` a close-delimited one, for `/continue` a `100 Continue` first,
/// else 200 with `Content-Length` and the body `name`, LF, the request head
/// as received, then its body as received. Keeps connections alive unless
/// asked not to; every connection ends after [`STEP`] of silence.
fn origin(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..64 {
            let Ok((s, _)) = l.accept() else {
                return;
            };
            std::thread::spawn(move || serve_origin(name, s));
        }
    });
    addr
}

fn serve_origin(name: &str, mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(STEP));
    let _ = s.set_write_timeout(Some(STEP));
    let mut buf = Vec::new();
    let more = |s: &mut TcpStream, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    loop {
        let n = loop {
            if let Some(n) = http::head_len(&buf, 0) {
                break n;
            }
            if !more(&mut s, &mut buf) {
                return;
            }
        };
        let head = buf[..n].to_vec();
        buf.drain(..n);
        let req = http::parse_request(&head).unwrap();
        let mut dec = BodyDecoder::new(http::request_framing(&req).unwrap());
        let mut body = Vec::new();
        loop {
            let k = dec.feed(&buf).unwrap();
            body.extend(buf.drain(..k));
            if dec.is_done() {
                break;
            }
            if !more(&mut s, &mut buf) {
                return;
            }
        }
        if s.write_all(&answer(name, &req, &head, &body)).is_err()
            || req.target == "/close"
            || !http::wants_keep_alive(&req)
        {
            return;
        }
    }
}

fn answer(name: &str, req: &RequestHead, head: &[u8], body: &[u8]) -> Vec<u8> {
    match req.target.as_str() {
        "/chunked" => format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: {name}\r\n\r\n{}",
            chunked_answer(name)
        )
        .into_bytes(),
        "/close" => {
            format!("HTTP/1.1 200 OK\r\nX-Origin: {name}\r\n\r\n{name} until close").into_bytes()
        }
        target => {
            let mut out = Vec::new();
            if target == "/continue" {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            let mut content = format!("{name}\n").into_bytes();
            content.extend_from_slice(head);
            content.extend_from_slice(body);
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: {name}\r\n\
                     Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
                    content.len()
                )
                .as_bytes(),
            );
            if req.method != "HEAD" {
                out.extend_from_slice(&content);
            }
            out
        }
    }
}

fn get(origin: SocketAddr, path: &str, extra: &str) -> Vec<u8> {
    format!("GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n{extra}\r\n").into_bytes()
}

// ----- the suites -----

/// SOCKS5 without authentication, SOCKS4 (IPv4) and SOCKS4a (a name) on
/// one port; SOCKS4 BIND is rejected.
async fn socks_without_auth<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    socks5_echo::<C>(f.open, None, 1).await;
    let target = tcp_echo();
    let dests = [
        SocksAddr::from(target),
        SocksAddr::domain("127.0.0.1", target.port()),
    ];
    for (i, dest) in dests.iter().enumerate() {
        let mut s = connect::<C>(f.open).await;
        let mut req = socks4::encode_request(socks4::CMD_CONNECT, dest, b"someone").unwrap();
        req.extend_from_slice(b"early");
        send::<C>(&mut s, &req).await;
        assert_eq!(
            recv_exact::<C>(&mut s, 8).await,
            socks4::encode_reply(socks4::GRANTED),
            "{dest}"
        );
        assert_eq!(recv_exact::<C>(&mut s, 5).await, b"early");
        echo::<C>(&mut s, i as u8).await;
    }
    let mut s = connect::<C>(f.open).await;
    send::<C>(
        &mut s,
        &socks4::encode_request(socks4::CMD_BIND, &dests[0], b"").unwrap(),
    )
    .await;
    assert_eq!(
        recv_to_end::<C>(&mut s).await,
        socks4::encode_reply(socks4::REJECTED)
    );
}

/// SOCKS5 with RFC 1929 authentication: good and bad credentials, no
/// method offered; SOCKS4 refused when authentication is on.
async fn socks_with_auth<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let target = tcp_echo();
    socks5_echo::<C>(f.auth, Some((USER, PASSWORD)), 1).await;
    for auth in [Some((USER, "wrong")), Some(("bob", PASSWORD)), None] {
        match socks5_try::<C>(f.auth, target, auth).await {
            Err(Socks5Error::Auth(_)) => {}
            other => panic!(
                "{auth:?}: expected an auth failure, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // On the wire: method 0x02 chosen, status 0x01, closed.
    let mut s = connect::<C>(f.auth).await;
    let mut msg = vec![5, 1, wire::METHOD_USER_PASS];
    msg.extend(wire::encode_user_pass(USER.as_bytes(), b"nope").unwrap());
    send::<C>(&mut s, &msg).await;
    assert_eq!(recv_to_end::<C>(&mut s).await, [5, 2, 1, 1]);
    // Only "no authentication" offered: no acceptable method.
    let mut s = connect::<C>(f.auth).await;
    send::<C>(&mut s, &[5, 1, 0]).await;
    assert_eq!(recv_to_end::<C>(&mut s).await, [5, 0xff]);
    // SOCKS4 carries no password.
    let mut s = connect::<C>(f.auth).await;
    let req = socks4::encode_request(socks4::CMD_CONNECT, &SocksAddr::from(target), b"alice");
    send::<C>(&mut s, &req.unwrap()).await;
    assert_eq!(
        recv_to_end::<C>(&mut s).await,
        socks4::encode_reply(socks4::REJECTED)
    );
    // Without users, credentials are not asked for (and not accepted).
    assert!(matches!(
        socks5_try::<C>(f.open, target, Some((USER, PASSWORD))).await,
        Err(Socks5Error::Auth(_))
    ));
    socks5_echo::<C>(f.auth, Some((USER, PASSWORD)), 2).await;
}

/// HTTP CONNECT, without and with authentication: 407 with the challenge,
/// the retry on the same connection.
async fn http_connect<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    http_connect_echo::<C>(f.open, "", 1).await;
    let creds = format!(
        "Proxy-Authorization: {}\r\n",
        http::basic_auth_value(USER, PASSWORD)
    );
    http_connect_echo::<C>(f.auth, &creds, 2).await;

    let target = tcp_echo();
    let mut s = connect::<C>(f.auth).await;
    let mut buf = Vec::new();
    for extra in [
        String::new(),
        format!(
            "Proxy-Authorization: {}\r\n",
            http::basic_auth_value(USER, "wrong")
        ),
    ] {
        let r = exchange::<C>(&mut s, &mut buf, &connect_request(target, &extra)).await;
        assert_eq!(r.head.code, 407, "{extra}");
        assert_eq!(
            r.header("proxy-authenticate").as_deref(),
            Some("Basic realm=\"anytls\"")
        );
        assert_eq!(r.header("connection"), None, "kept open for the retry");
    }
    let r = exchange::<C>(&mut s, &mut buf, &connect_request(target, &creds)).await;
    assert_eq!(r.head.code, 200);
    echo::<C>(&mut s, 3).await;
}

/// Absolute-form requests to two origins on one keep-alive connection:
/// Content-Length, chunked, HEAD, an interim 100, pipelining; then a
/// close-delimited answer ends the connection.
async fn http_forward_keep_alive<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let (a, b) = (origin("A"), origin("B"));
    let mut s = connect::<C>(f.open).await;
    let mut buf = Vec::new();

    let extra = "Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                 Keep-Alive: 30\r\nX-Custom: yes\r\n";
    let r = exchange::<C>(&mut s, &mut buf, &get(a, "/len?x=1", extra)).await;
    assert_eq!(
        (r.head.code, r.header("x-origin").as_deref()),
        (200, Some("A"))
    );
    let seen = r.text();
    assert!(
        seen.starts_with(&format!("A\nGET /len?x=1 HTTP/1.1\r\nHost: {a}\r\n")),
        "{seen}"
    );
    assert!(seen.contains("X-Custom: yes\r\n"), "{seen}");
    assert!(seen.contains("Connection: close\r\n"), "{seen}");
    for dropped in ["Proxy-", "X-Hop", "Keep-Alive", "keep-alive"] {
        assert!(!seen.contains(dropped), "{dropped} forwarded: {seen}");
    }
    // The origin's hop-by-hop fields are not passed on either.
    assert_eq!(r.header("connection"), None);
    assert_eq!(r.header("keep-alive"), None);

    let r = exchange::<C>(&mut s, &mut buf, &get(b, "/chunked", "")).await;
    assert_eq!(r.header("x-origin").as_deref(), Some("B"));
    assert_eq!(r.text(), chunked_answer("B"), "chunked body byte for byte");

    let head = format!("HEAD http://{a}/len HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let r = exchange::<C>(&mut s, &mut buf, head.as_bytes()).await;
    assert_eq!(r.head.code, 200);
    assert!(r.header("content-length").is_some() && r.body.is_empty());

    let r = exchange::<C>(&mut s, &mut buf, &get(a, "/continue", "")).await;
    assert!(r.text().starts_with("A\nGET /continue "), "{}", r.text());

    // Two requests in one write: answered in order.
    let mut two = get(b, "/one", "");
    two.extend(get(a, "/two", ""));
    send::<C>(&mut s, &two).await;
    let r1 = read_response::<C>(&mut s, &mut buf, "GET").await;
    let r2 = read_response::<C>(&mut s, &mut buf, "GET").await;
    assert!(r1.text().starts_with("B\nGET /one "), "{}", r1.text());
    assert!(r2.text().starts_with("A\nGET /two "), "{}", r2.text());

    // A close-delimited answer: the proxy says so and closes.
    let r = exchange::<C>(&mut s, &mut buf, &get(b, "/close", "")).await;
    assert_eq!(r.text(), "B until close");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(buf.is_empty());
    assert_eq!(recv_to_end::<C>(&mut s).await, b"");

    // HTTP/1.0 without keep-alive: one request, then closed.
    let mut s = connect::<C>(f.open).await;
    let req = format!("GET http://{a}/old HTTP/1.0\r\n\r\n");
    let r = exchange::<C>(&mut s, &mut Vec::new(), req.as_bytes()).await;
    assert!(
        r.text().starts_with("A\nGET /old HTTP/1.0\r\n"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(recv_to_end::<C>(&mut s).await, b"");
}

/// POST bodies (Content-Length and chunked) forwarded byte for byte, with
/// authentication; a refused request with a body closes the connection.
async fn http_post_bodies<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let a = origin("A");
    let creds = format!(
        "Proxy-Authorization: {}\r\n",
        http::basic_auth_value(USER, PASSWORD)
    );
    let mut s = connect::<C>(f.auth).await;
    let mut buf = Vec::new();

    let body = payload(1, 100 * 1024);
    let mut req = format!(
        "POST http://{a}/upload HTTP/1.1\r\nHost: {a}\r\n{creds}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = exchange::<C>(&mut s, &mut buf, &req).await;
    assert_eq!(r.head.code, 200);
    assert!(r.body.ends_with(&body), "Content-Length body differs");
    let seen = String::from_utf8_lossy(&r.body[..r.body.len() - body.len()]).into_owned();
    assert!(!seen.contains("Proxy-Authorization"), "{seen}");

    let mut chunked = Vec::new();
    for (i, size) in [1usize, 4096, 17, 30_000].into_iter().enumerate() {
        chunked.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        chunked.extend(payload(i as u32 + 10, size.max(4))[..size].iter());
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Sum: 1\r\n\r\n");
    let mut req = format!(
        "POST http://{a}/chunks HTTP/1.1\r\nHost: {a}\r\n{creds}Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&chunked);
    let r = exchange::<C>(&mut s, &mut buf, &req).await;
    assert!(r.body.ends_with(&chunked), "chunked body differs");
    assert!(r.text().contains("Transfer-Encoding: chunked\r\n"));

    // Still alive after both bodies.
    let r = exchange::<C>(&mut s, &mut buf, &get(a, "/after", &creds)).await;
    assert!(r.text().starts_with("A\nGET /after "), "{}", r.text());

    // No credentials and a body: 407, and the connection is closed.
    let req = format!("POST http://{a}/x HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\n\r\nhello");
    let r = exchange::<C>(&mut s, &mut buf, req.as_bytes()).await;
    assert_eq!(r.head.code, 407);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(recv_to_end::<C>(&mut s).await, b"");
}

/// A SOCKS5 UDP ASSOCIATE handshake (std socket): the control connection
/// and the relay's address.
fn associate(proxy: SocketAddr, auth: Option<(&str, &str)>) -> (TcpStream, SocketAddr) {
    let mut c = TcpStream::connect_timeout(&proxy, STEP).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.set_write_timeout(Some(STEP)).unwrap();
    let method = if auth.is_some() {
        wire::METHOD_USER_PASS
    } else {
        wire::METHOD_NO_AUTH
    };
    c.write_all(&[wire::VERSION, 1, method]).unwrap();
    let mut m = [0u8; 2];
    c.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, method]);
    if let Some((user, password)) = auth {
        c.write_all(&wire::encode_user_pass(user.as_bytes(), password.as_bytes()).unwrap())
            .unwrap();
        c.read_exact(&mut m).unwrap();
        assert_eq!(m, wire::encode_auth_status(true));
    }
    let any = SocksAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
    c.write_all(&wire::encode_request(wire::CMD_UDP_ASSOCIATE, &any).unwrap())
        .unwrap();
    let mut rep = [0u8; 10];
    c.read_exact(&mut rep).unwrap();
    let (reply, bound, _) = wire::parse_reply(&rep).unwrap().unwrap();
    assert_eq!(reply, Reply::Succeeded);
    (c, bound.socket_addr().expect("an IP address"))
}

/// UDP ASSOCIATE through the mixed port, without and with authentication.
async fn udp_associate_on_the_mixed_port<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    for (proxy, auth) in [(f.open, None), (f.auth, Some((USER, PASSWORD)))] {
        let echo = udp_echo(STEP);
        let target = echo.addr;
        let h = std::thread::spawn(move || {
            let (_control, relay) = associate(proxy, auth);
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(STEP)).unwrap();
            for i in 0..3u32 {
                let data = payload(i, 100 + i as usize * 500);
                let mut d = Vec::new();
                wire::encode_udp_header(&SocksAddr::from(target), &mut d).unwrap();
                d.extend_from_slice(&data);
                s.send_to(&d, relay).unwrap();
                let mut back = vec![0u8; 65_536];
                let (n, from) = s.recv_from(&mut back).unwrap();
                assert_eq!(from, relay);
                let (h, at) = wire::parse_udp_header(&back[..n]).unwrap();
                assert_eq!(h.addr, SocksAddr::from(target));
                assert_eq!(&back[at..n], &data[..], "datagram {i}");
            }
        });
        join::<C, _>(h, STEP * 3, "the UDP ASSOCIATE client").await;
    }
}

/// Bad input closes only its own connection, with the protocol's failure
/// reply where there is one; the listener goes on serving.
async fn bad_input_closes_only_that_connection<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let strict = proxy_with::<C>(&f.pair.client, |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.max_header_bytes = 8 * 1024;
    })
    .await;
    let raw = |msg: Vec<u8>| async move {
        let mut s = connect::<C>(strict).await;
        send::<C>(&mut s, &msg).await;
        recv_to_end::<C>(&mut s).await
    };
    let status = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .chars()
            .take(12)
            .collect::<String>()
    };

    // Not a protocol we know (a TLS ClientHello): closed without a reply.
    assert_eq!(raw(vec![0x16, 3, 1, 0, 5, 1]).await, b"");
    still_serves::<C>(strict).await;

    // An HTTP head over the cap: 431.
    let mut big = b"GET http://127.0.0.1:1/ HTTP/1.1\r\n".to_vec();
    while big.len() < 16 * 1024 {
        big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    big.extend_from_slice(b"\r\n");
    let out = raw(big).await;
    assert_eq!(status(&out), "HTTP/1.1 431");
    still_serves::<C>(strict).await;

    // A head that never ends (slowloris): 408 once the time is up.
    let out = raw(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n".to_vec()).await;
    assert_eq!(status(&out), "HTTP/1.1 408");
    // An incomplete SOCKS5 greeting: closed once the time is up.
    assert_eq!(raw(vec![5, 2, 0]).await, b"");
    still_serves::<C>(strict).await;

    // Malformed SOCKS5 request (address type 5): "address type not supported".
    assert_eq!(
        raw(vec![5, 1, 0, 5, 1, 0, 5, 1, 2, 3, 4]).await,
        [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    // SOCKS5 request with a bad version byte: general failure.
    assert_eq!(
        raw(vec![5, 1, 0, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80]).await,
        [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    // Malformed SOCKS4 requests (destination 0.0.0.0, endless user id).
    assert_eq!(
        raw(vec![4, 1, 0, 80, 0, 0, 0, 0, 0]).await,
        socks4::encode_reply(socks4::REJECTED)
    );
    let mut endless = vec![4, 1, 0, 80, 127, 0, 0, 1];
    endless.extend([b'u'; 300]);
    assert_eq!(raw(endless).await, socks4::encode_reply(socks4::REJECTED));
    still_serves::<C>(strict).await;

    // Malformed HTTP: 400.
    for bad in [
        "GET http://127.0.0.1:1/ HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET https://127.0.0.1:1/ HTTP/1.1\r\n\r\n",
        "CONNECT nowhere HTTP/1.1\r\n\r\n",
        "POST http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        let out = raw(bad.as_bytes().to_vec()).await;
        assert_eq!(status(&out), "HTTP/1.1 400", "{bad:?}");
    }
    still_serves::<C>(strict).await;
}

/// The AnyTLS side failing: 502 for HTTP, 91 for SOCKS4.
async fn gateway_errors<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let verdict = proxy_with::<C>(&f.pair.client, |c| c.verdict_wait = STEP / 2).await;
    let closed = closed_port();
    let mut s = connect::<C>(verdict).await;
    let r = exchange::<C>(&mut s, &mut Vec::new(), &connect_request(closed, "")).await;
    assert_eq!(r.head.code, 502, "{}", r.text());
    let mut s = connect::<C>(f.open).await;
    let r = exchange::<C>(&mut s, &mut Vec::new(), &get(closed, "/", "")).await;
    assert_eq!(r.head.code, 502, "{}", r.text());
    let mut s = connect::<C>(verdict).await;
    let req = socks4::encode_request(socks4::CMD_CONNECT, &SocksAddr::from(closed), b"");
    send::<C>(&mut s, &req.unwrap()).await;
    assert_eq!(
        recv_to_end::<C>(&mut s).await,
        socks4::encode_reply(socks4::REJECTED)
    );
    still_serves::<C>(verdict).await;
    still_serves::<C>(f.open).await;
}

/// A listener serves only the protocols it is configured for.
async fn protocol_selection<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let http_only = proxy_with::<C>(&f.pair.client, |c| c.protocols = Protocols::Http).await;
    let socks_only = proxy_with::<C>(&f.pair.client, |c| c.protocols = Protocols::Socks).await;
    let target = tcp_echo();
    let mut s = connect::<C>(http_only).await;
    send::<C>(&mut s, &[5, 1, 0]).await;
    assert_eq!(recv_to_end::<C>(&mut s).await, b"");
    let mut s = connect::<C>(socks_only).await;
    send::<C>(&mut s, &connect_request(target, "")).await;
    assert_eq!(recv_to_end::<C>(&mut s).await, b"");
    http_connect_echo::<C>(http_only, "", 1).await;
    socks5_echo::<C>(socks_only, None, 2).await;
}

// ----- found by review: framing, auth, timeouts, replies -----

/// Reads whatever comes within `limit` (until EOF, a reset or the time).
async fn recv_for<C: TestRuntime>(s: &mut C::Tcp, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let r = anytls_io::timeout::<C, _>(limit, async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    // true: the connection ended within `limit`.
    (out, r.is_some())
}

/// A raw origin: every connection gets `response` once its head arrived
/// (the body is not read), then is closed after a short while.
fn raw_origin(response: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..16 {
            let Ok((mut s, _)) = l.accept() else { return };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while http::head_len(&buf, 0).is_none() {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(response);
                std::thread::sleep(Duration::from_millis(500));
            });
        }
    });
    addr
}

/// F1 (request side): a header named in `Connection` is dropped, even
/// `Content-Length` / `Transfer-Encoding`, while the proxy still frames the
/// body by it: the origin sees a bodiless POST and the body as a second
/// request.
async fn connection_header_cannot_strip_request_framing<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let a = origin("A");
    let mut s = connect::<C>(f.open).await;
    let req = format!(
        "POST http://{a}/len HTTP/1.1\r\nHost: {a}\r\nConnection: content-length\r\n\
         Content-Length: 5\r\n\r\nhello"
    );
    let r = exchange::<C>(&mut s, &mut Vec::new(), req.as_bytes()).await;
    let seen = r.text();
    assert!(
        seen.contains("Content-Length: 5") && seen.ends_with("hello"),
        "the origin got no framing for the body the proxy sent:\n{seen:?}"
    );
}

/// F1 (response side): an origin's `Connection: content-length` drops the
/// length from the forwarded head, yet the proxy keeps the connection:
/// the client sees an unframed (read-until-close) response, and the next
/// (pipelined) response, from another origin, becomes part of its body.
async fn connection_header_cannot_strip_response_framing<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let evil = raw_origin(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 4\r\n\r\nevil",
    );
    let a = origin("A");
    let mut s = connect::<C>(f.open).await;
    let mut two = get(evil, "/", "");
    two.extend(get(a, "/secret", ""));
    send::<C>(&mut s, &two).await;
    let (out, _) = recv_for::<C>(&mut s, Duration::from_secs(2)).await;
    let n = http::head_len(&out, 0).expect("a response head");
    let head = http::parse_response(&out[..n]).unwrap();
    let framing = http::response_framing("GET", &head).unwrap();
    assert_ne!(
        framing,
        Framing::Close,
        "the proxy kept the connection but its head has no framing; a client \
         reads this all as one body:\n{}",
        String::from_utf8_lossy(&out)
    );
}

/// F2: with users configured, a UDP association made by an authenticated
/// client serves whichever process on the same IP sends first, even when
/// the request named the client's own address and port.
async fn udp_association_serves_only_the_address_the_client_named<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let f = fixture::<C, S>().await;
    let auth = f.auth;
    let echo = udp_echo(STEP);
    let target = echo.addr;
    let h = std::thread::spawn(move || {
        let legit = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect_timeout(&auth, STEP).unwrap();
        c.set_read_timeout(Some(STEP)).unwrap();
        c.write_all(&[5, 1, wire::METHOD_USER_PASS]).unwrap();
        let mut m = [0u8; 2];
        c.read_exact(&mut m).unwrap();
        c.write_all(&wire::encode_user_pass(USER.as_bytes(), PASSWORD.as_bytes()).unwrap())
            .unwrap();
        c.read_exact(&mut m).unwrap();
        assert_eq!(m, [1, 0]);
        // A well-behaved client: DST.ADDR/DST.PORT is where it sends from.
        let me = SocksAddr::from(legit.local_addr().unwrap());
        c.write_all(&wire::encode_request(wire::CMD_UDP_ASSOCIATE, &me).unwrap())
            .unwrap();
        let mut rep = [0u8; 10];
        c.read_exact(&mut rep).unwrap();
        let (reply, bound, _) = wire::parse_reply(&rep).unwrap().unwrap();
        assert_eq!(reply, Reply::Succeeded);
        let relay = bound.socket_addr().unwrap();
        // Another local process, no credentials, sends first.
        let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
        intruder
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut d = Vec::new();
        wire::encode_udp_header(&SocksAddr::from(target), &mut d).unwrap();
        d.extend_from_slice(b"unauthenticated");
        intruder.send_to(&d, relay).unwrap();
        let mut back = [0u8; 2048];
        let got = intruder.recv_from(&mut back);
        drop(c);
        assert!(
            got.is_err(),
            "the unauthenticated intruder's datagram was relayed and answered"
        );
    });
    join::<C, _>(h, STEP * 3, "the UDP hijack client").await;
}

/// F3: a CRLF after a request body (RFC 9112 2.2 robustness) makes an idle
/// keep-alive connection get an unsolicited 408 after the handshake
/// timeout, instead of waiting the keep-alive timeout quietly.
async fn an_idle_keep_alive_connection_gets_no_unsolicited_408<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let strict = proxy_with::<C>(&f.pair.client, |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.keep_alive_timeout = STEP;
    })
    .await;
    let a = origin("A");
    let mut s = connect::<C>(strict).await;
    let mut buf = Vec::new();
    let req =
        format!("POST http://{a}/x HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\n\r\nhello\r\n");
    let r = exchange::<C>(&mut s, &mut buf, req.as_bytes()).await;
    assert_eq!(r.head.code, 200);
    let (out, _) = recv_for::<C>(&mut s, Duration::from_millis(1500)).await;
    assert!(
        out.is_empty(),
        "idle keep-alive connection got: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// F4: an origin that answers before the request body is in: the response
/// goes out as persistent (no `Connection: close`), then the proxy closes.
async fn an_early_response_announces_the_close<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let early = raw_origin(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n");
    let mut s = connect::<C>(f.open).await;
    let mut buf = Vec::new();
    let req = format!(
        "POST http://{early}/up HTTP/1.1\r\nHost: {early}\r\nExpect: 100-continue\r\n\
         Content-Length: 10\r\n\r\n"
    );
    let r = exchange::<C>(&mut s, &mut buf, req.as_bytes()).await;
    assert_eq!(r.head.code, 417);
    let (rest, closed) = recv_for::<C>(&mut s, Duration::from_secs(3)).await;
    assert!(rest.is_empty() && closed, "the proxy closes after it");
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "the response announced a persistent connection the proxy then closed"
    );
}

/// F5: the request body has no time limit at all (neither handshake nor
/// keep-alive timeout): a client that sends a head announcing a body and
/// then nothing holds the connection and an AnyTLS stream indefinitely.
async fn a_stalled_request_body_is_timed_out<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let strict = proxy_with::<C>(&f.pair.client, |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.keep_alive_timeout = Duration::from_millis(300);
    })
    .await;
    // An origin that waits for the body (reads it) before answering.
    let a = origin("A");
    let mut s = connect::<C>(strict).await;
    let req = format!("POST http://{a}/x HTTP/1.1\r\nHost: {a}\r\nContent-Length: 10\r\n\r\nx");
    send::<C>(&mut s, req.as_bytes()).await;
    let (out, closed) = recv_for::<C>(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed,
        "still open after 10x the handshake and keep-alive timeouts (got {:?})",
        String::from_utf8_lossy(&out)
    );
}

/// F6: the AnyTLS server unreachable: what SOCKS5, SOCKS4 and HTTP answer.
// No server at all: `S` is unused, the suite runs every pair.
#[allow(clippy::extra_unused_type_parameters)]
async fn an_unreachable_server_is_a_general_failure_not_a_refusal<
    C: TestRuntime,
    S: TestRuntime,
>() {
    let dead = closed_port();
    let mut cfg = anytls_io::ClientConfig::new(dead.to_string(), "pw");
    cfg.sni = Some("localhost".into());
    let client = Client::<C>::new(cfg).unwrap();
    let p = proxy::<C>(&client, ProxyConfig::default()).await;
    let target = tcp_echo();
    let r = socks5_try::<C>(p, target, None).await;
    let code = match r {
        Err(Socks5Error::Reply(r)) => r,
        other => panic!("expected a failure reply, got {:?}", other.map(|_| ())),
    };
    let mut s = connect::<C>(p).await;
    let r = exchange::<C>(&mut s, &mut Vec::new(), &connect_request(target, "")).await;
    eprintln!(
        "dead server: SOCKS5 reply {code}; HTTP CONNECT {} {:?}",
        r.head.code,
        r.text()
    );
    assert_eq!(r.head.code, 502);
    assert_ne!(
        code,
        Reply::ConnectionRefused,
        "the AnyTLS server being down is reported as the destination refusing"
    );
    client.close();
}

/// Checked fine: no request is served without credentials, pipelined after
/// a 407 or not, CONNECT or forward, and SOCKS5 offering both methods must
/// authenticate.
async fn no_request_is_served_without_credentials<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let a = origin("A");
    let target = tcp_echo();
    let mut s = connect::<C>(f.auth).await;
    let mut all = get(a, "/1", "");
    all.extend(get(a, "/2", "Proxy-Authorization: Basic Og==\r\n"));
    all.extend(get(a, "/3", "Proxy-Authorization: Basic YWxpY2U6\r\n"));
    all.extend(get(a, "/4", "Proxy-Authorization: Digest x\r\n"));
    all.extend(get(
        a,
        "/5",
        "Proxy-Authorization: Basic YWxpY2U6czNjcmV0eA==\r\n",
    ));
    all.extend(connect_request(target, ""));
    send::<C>(&mut s, &all).await;
    let mut buf = Vec::new();
    for i in 0..6 {
        let method = if i == 5 { "CONNECT" } else { "GET" };
        let r = read_response::<C>(&mut s, &mut buf, method).await;
        assert_eq!(r.head.code, 407, "request {i}");
    }
    // Offering no-auth and user/pass: user/pass is chosen.
    let mut s = connect::<C>(f.auth).await;
    send::<C>(&mut s, &[5, 2, 0, 2]).await;
    assert_eq!(recv_exact::<C>(&mut s, 2).await, [5, 2]);
    // Skipping the sub-negotiation (a request right away): closed.
    let mut req = wire::encode_request(wire::CMD_CONNECT, &SocksAddr::from(target)).unwrap();
    req.extend_from_slice(b"x");
    send::<C>(&mut s, &req).await;
    assert_eq!(recv_to_end::<C>(&mut s).await, b"");
    // UDP ASSOCIATE without credentials: method refused.
    let mut s = connect::<C>(f.auth).await;
    let mut msg = vec![5, 1, 0];
    msg.extend(wire::encode_request(wire::CMD_UDP_ASSOCIATE, &SocksAddr::from(target)).unwrap());
    send::<C>(&mut s, &msg).await;
    assert_eq!(recv_to_end::<C>(&mut s).await, [5, 0xff]);
}

/// Checked fine: smuggling-shaped heads get a 400 and nothing reaches the
/// origin.
async fn smuggling_shapes_get_400<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let a = origin("A");
    for bad in [
        format!("POST http://{a}/ HTTP/1.1\r\nContent-Length: 3\r\n Content-Length: 4\r\n\r\nabcd"),
        format!("POST http://{a}/ HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc"),
        format!("POST http://{a}/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        format!(
            "POST http://{a}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
        ),
        format!("POST http://{a}/ HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        format!("POST http://{a}/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!(
            "POST http://{a}/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3 \r\nContent-Length: 03,4\r\n\r\nabc"
        ),
        format!(
            "POST http://{a}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
        ),
        format!(
            "POST http://{a}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n"
        ),
        format!(
            "POST http://{a}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n"
        ),
        format!("GET http://{a}/ HTTP/1.1\r\nX: a\rY: b\r\n\r\n"),
        format!("GET http://{a}/ HTTP/1.1\r\nX: \x01\r\n\r\n"),
    ] {
        let mut s = connect::<C>(f.open).await;
        send::<C>(&mut s, bad.as_bytes()).await;
        let out = recv_to_end::<C>(&mut s).await;
        let txt = String::from_utf8_lossy(&out);
        assert!(txt.starts_with("HTTP/1.1 400"), "{bad:?} -> {txt:?}");
    }
}

/// Checked fine: arbitrary bytes on every protocol close only their
/// connection.
async fn random_bytes_close_only_their_connection<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let strict = proxy_with::<C>(&f.pair.client, |c| {
        c.handshake_timeout = Duration::from_millis(200);
    })
    .await;
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..60 {
        let len = (rnd() % 700) as usize;
        let mut msg: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        let first = [5u8, 4, b'G', b'C', b'P'][i % 5];
        msg.insert(0, first);
        if i % 3 == 0 {
            // Mostly text after an HTTP-looking start.
            for b in msg.iter_mut().skip(1) {
                *b = b" :\r\nGEThttp/1.0Content-Length0123456789chunked"[(*b as usize) % 45];
            }
        }
        let mut s = connect::<C>(strict).await;
        let _ = within::<C, _>(STEP, "write", s.write_all(&msg)).await;
        let _ = recv_to_end::<C>(&mut s).await;
    }
    still_serves::<C>(strict).await;
}

/// F9: a 407 to a request with `Content-Length: 0` closes the connection
/// (only `Framing::None` counts as bodiless); curl's --proxy-anyauth POST
/// shows what clients send.
async fn a_407_on_an_empty_body_keeps_the_connection<C: TestRuntime, S: TestRuntime>() {
    let f = fixture::<C, S>().await;
    let a = origin("A");
    let auth = f.auth;
    let h = std::thread::spawn(move || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-v", "--max-time", "10", "--proxy-anyauth", "-U"])
            .arg(format!("{USER}:{PASSWORD}"))
            .arg("-x")
            .arg(format!("http://{auth}"))
            .args(["-d", "x=1"])
            .arg(format!("http://{a}/post"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    });
    let e = join::<C, _>(h, STEP * 2, "curl").await;
    eprintln!("{e}");
    let mut s = connect::<C>(f.auth).await;
    let req = format!("POST http://{a}/x HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0\r\n\r\n");
    let r = exchange::<C>(&mut s, &mut Vec::new(), req.as_bytes()).await;
    assert_eq!(r.head.code, 407);
    assert_eq!(
        r.header("connection"),
        None,
        "closed although nothing is left to read"
    );
}

anytls_tests::suite!(
    socks_without_auth,
    socks_with_auth,
    http_connect,
    http_forward_keep_alive,
    http_post_bodies,
    udp_associate_on_the_mixed_port,
    bad_input_closes_only_that_connection,
    gateway_errors,
    protocol_selection,
    connection_header_cannot_strip_request_framing,
    connection_header_cannot_strip_response_framing,
    udp_association_serves_only_the_address_the_client_named,
    an_idle_keep_alive_connection_gets_no_unsolicited_408,
    an_early_response_announces_the_close,
    a_stalled_request_body_is_timed_out,
    an_unreachable_server_is_a_general_failure_not_a_refusal,
    no_request_is_served_without_credentials,
    smuggling_shapes_get_400,
    random_bytes_close_only_their_connection,
    a_407_on_an_empty_body_keeps_the_connection,
);
