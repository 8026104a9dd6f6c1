//! The HTTP side of the mixed port: the I/O around [`super::http`].

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use anytls_core::SocksAddr;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::http::{self, BodyDecoder, Framing, HttpError, RequestHead, Target};
use super::{ProxyConfig, check_user, left, linger_close, open_stream, tunnel};
use crate::client::Client;
use crate::runtime::{Runtime, timeout};

/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;

/// 407s one connection gets before it is closed (a few retries, not an
/// endless guessing session).
const MAX_REFUSALS: u32 = 8;

/// What to do after a request.
enum Next {
    /// Read the next request.
    Request,
    /// Close the connection.
    Close,
}

/// Serves one HTTP client connection (`buf` holds what was read; its first
/// request head is due by `deadline`) until it closes, goes idle, or a
/// response cannot be delimited.
pub(super) async fn serve<R: Runtime>(
    mut local: R::Tcp,
    peer: SocketAddr,
    mut buf: Vec<u8>,
    mut deadline: Instant,
    cfg: &ProxyConfig,
    client: &Client<R>,
) -> io::Result<()> {
    let mut refused = 0;
    loop {
        let read = read_head_bytes(&mut local, &mut buf, cfg.max_header_bytes);
        let len = match timeout::<R, _>(left(deadline), read).await {
            // Nothing of a head: close quietly.
            None if buf.is_empty() => return Ok(()),
            None => {
                let e = HttpError::new(408, "the request head did not come in time");
                return Err(fail::<R>(&mut local, e).await);
            }
            Some(r) => match r? {
                HeadRead::Head(n) => n,
                HeadRead::Eof => return Ok(()),
                HeadRead::TooLarge => {
                    let e = HttpError::new(
                        431,
                        format!("request head over {} bytes", cfg.max_header_bytes),
                    );
                    return Err(fail::<R>(&mut local, e).await);
                }
            },
        };
        let req = match http::parse_request(&buf[..len]) {
            Ok(r) => r,
            Err(e) => return Err(fail::<R>(&mut local, e).await),
        };
        buf.drain(..len);
        match handle_request::<R>(&mut local, &mut buf, req, peer, cfg, client, &mut refused)
            .await?
        {
            Next::Request => {}
            Next::Close => return Ok(()),
        }
        // The next request: idle for up to the keep-alive timeout (empty
        // lines between requests do not count, RFC 9112 section 2.2), then
        // its head within the handshake timeout.
        let idle_until = Instant::now() + cfg.keep_alive_timeout;
        loop {
            let empty = http::leading_empty_lines(&buf);
            buf.drain(..empty);
            if !buf.is_empty() {
                break;
            }
            match timeout::<R, _>(left(idle_until), read_more(&mut local, &mut buf)).await {
                None | Some(Ok(0)) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        }
        deadline = Instant::now() + cfg.handshake_timeout;
    }
}

/// Answers `e` (closing the connection, see [`linger_close`]); the error
/// to return.
async fn fail<R: Runtime>(local: &mut R::Tcp, e: HttpError) -> io::Error {
    let _ = local
        .write_all(&http::error_response(e.status, &e.msg, true))
        .await;
    linger_close::<R>(local).await;
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP {e}"))
}

/// The answer when the AnyTLS side fails: 504 for a timeout, else 502.
fn gateway_error(e: &io::Error) -> HttpError {
    // The AnyTLS server reports its own dial timeouts as a refusal's text
    // ("dial tcp ...: i/o timeout").
    let text = e.to_string().to_ascii_lowercase();
    let timed_out = e.kind() == io::ErrorKind::TimedOut
        || text.contains("timeout")
        || text.contains("timed out");
    let status = if timed_out { 504 } else { 502 };
    HttpError::new(status, e.to_string())
}

/// Reads up to [`READ_CHUNK`] more bytes onto `buf`; 0 at EOF. Cancelled
/// (a timeout, or the end of an exchange), it leaves `buf` as it was.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    /// Cuts the buffer back to its filled part, also when the read is
    /// dropped half-way.
    struct Filled<'a> {
        buf: &'a mut Vec<u8>,
        len: usize,
    }
    impl Drop for Filled<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.len);
        }
    }
    let len = buf.len();
    let mut g = Filled { buf, len };
    g.buf.resize(len + READ_CHUNK, 0);
    let n = s.read(&mut g.buf[len..]).await?;
    g.len = len + n;
    Ok(n)
}

/// The outcome of [`read_head_bytes`].
enum HeadRead {
    /// A head of this many bytes is at the front of the buffer.
    Head(usize),
    /// EOF before any byte of a head.
    Eof,
    /// More than the cap without the end of a head.
    TooLarge,
}

/// Reads until `buf` starts with a whole head (empty lines before it are
/// dropped) of at most `max` bytes. An EOF within a head is an error.
async fn read_head_bytes<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<HeadRead> {
    let mut scanned = 0;
    loop {
        let empty = http::leading_empty_lines(buf);
        if empty > 0 {
            buf.drain(..empty);
            scanned = 0;
        }
        if let Some(n) = http::head_len(buf, scanned) {
            return Ok(if n > max {
                HeadRead::TooLarge
            } else {
                HeadRead::Head(n)
            });
        }
        if buf.len() > max {
            return Ok(HeadRead::TooLarge);
        }
        scanned = buf.len();
        if read_more(s, buf).await? == 0 {
            if buf.is_empty() {
                return Ok(HeadRead::Eof);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in the middle of a head",
            ));
        }
    }
}

/// One request, its head read: authentication, then a tunnel or a
/// forwarded exchange.
#[allow(clippy::too_many_arguments)]
async fn handle_request<R: Runtime>(
    local: &mut R::Tcp,
    buf: &mut Vec<u8>,
    req: RequestHead,
    peer: SocketAddr,
    cfg: &ProxyConfig,
    client: &Client<R>,
    refused: &mut u32,
) -> io::Result<Next> {
    let keep_alive = http::wants_keep_alive(&req);
    if !cfg.users.is_empty() {
        let creds = http::basic_credentials(&req.headers);
        if !creds
            .as_ref()
            .is_some_and(|(u, p)| check_user(&cfg.users, u, p))
        {
            match &creds {
                Some((u, _)) => tracing::info!(
                    %peer,
                    "HTTP proxy authentication refused: wrong credentials for user {:?}",
                    String::from_utf8_lossy(u)
                ),
                None => tracing::debug!(%peer, "HTTP proxy request without credentials: 407"),
            }
            // The connection stays for a retry if nothing of this request
            // is left to read, up to MAX_REFUSALS refusals.
            *refused += 1;
            let bodiless = matches!(
                http::request_framing(&req),
                Ok(Framing::None | Framing::Length(0))
            );
            let keep = keep_alive && bodiless && *refused < MAX_REFUSALS;
            local.write_all(&http::auth_required(!keep)).await?;
            if keep {
                return Ok(Next::Request);
            }
            linger_close::<R>(local).await;
            return Ok(Next::Close);
        }
    }
    let target = match http::parse_target(&req.method, &req.target) {
        Ok(t) => t,
        Err(e) => return Err(fail::<R>(local, e).await),
    };
    match target {
        Target::Tunnel(dest) => {
            tracing::debug!(%peer, %dest, "HTTP CONNECT");
            let early = std::mem::take(buf);
            let connect = open_stream(client, dest, cfg.verdict_wait);
            let mut refused_tunnel = false;
            let reply = |r: Result<(), &io::Error>| match r {
                Ok(()) => http::CONNECT_ESTABLISHED.to_vec(),
                Err(e) => {
                    refused_tunnel = true;
                    let e = gateway_error(e);
                    http::error_response(e.status, &e.msg, true)
                }
            };
            let r = tunnel(local, &early, connect, reply, R::executor()).await;
            if refused_tunnel {
                // So that the client reads the error before the close.
                linger_close::<R>(local).await;
            }
            r?;
            Ok(Next::Close)
        }
        Target::Forward {
            dest,
            authority,
            path,
        } => {
            let head = http::forward_request_head(&req, &authority, &path);
            tracing::debug!(%peer, %dest, method = %req.method, "HTTP forward");
            forward::<R>(local, buf, &req, dest, head, keep_alive, cfg, client).await
        }
    }
}

/// Why an exchange stopped.
enum Failure {
    /// The client's connection failed or ended: nothing to answer.
    Client(io::Error),
    /// Answer this, unless the response has begun.
    Answer(HttpError),
}

/// A forwarded request: a stream of its own, the head, then the request
/// body up and the response down at the same time.
#[allow(clippy::too_many_arguments)]
async fn forward<R: Runtime>(
    local: &mut R::Tcp,
    buf: &mut Vec<u8>,
    req: &RequestHead,
    dest: SocksAddr,
    head: Vec<u8>,
    keep_alive: bool,
    cfg: &ProxyConfig,
    client: &Client<R>,
) -> io::Result<Next> {
    let framing = match http::request_framing(req) {
        Ok(f) => f,
        Err(e) => return Err(fail::<R>(local, e).await),
    };
    let mut upstream = match open_stream(client, dest, Duration::ZERO).await {
        Ok(s) => s,
        Err(e) => return Err(fail::<R>(local, gateway_error(&e)).await),
    };
    if let Err(e) = upstream.write_all(&head).await {
        return Err(fail::<R>(local, gateway_error(&e)).await);
    }
    let started = AtomicBool::new(false);
    let body_done = AtomicBool::new(false);
    let (sent, result) = {
        let (mut lr, mut lw) = futures_lite::io::split(&mut *local);
        let (mut ur, mut uw) = futures_lite::io::split(&mut upstream);
        let idle = cfg.keep_alive_timeout;
        let upload = send_body(
            &mut lr,
            &mut uw,
            buf,
            framing,
            || R::timer(Instant::now() + idle),
            &body_done,
        );
        let download = send_response(
            &mut ur,
            &mut lw,
            &req.method,
            keep_alive,
            req.minor_version,
            cfg.max_header_bytes,
            &started,
            &body_done,
        );
        exchange(upload, download).await
    };
    match result {
        // The next request can be read only after this one's whole body.
        Ok(true) if sent => Ok(Next::Request),
        Ok(_) => {
            linger_close::<R>(local).await;
            Ok(Next::Close)
        }
        Err(Failure::Client(e)) => Err(e),
        Err(Failure::Answer(e)) if !started.load(Ordering::Acquire) => {
            Err(fail::<R>(local, e).await)
        }
        Err(Failure::Answer(e)) => Err(io::Error::other(format!("HTTP response cut short: {e}"))),
    }
}

/// Runs `upload` (true: the whole body went up) and `download` (the
/// response; true: the connection may carry another request) together
/// until `download` ends or `upload` fails: whether the body went up in
/// full, and the outcome.
async fn exchange<U, D>(upload: U, download: D) -> (bool, Result<bool, Failure>)
where
    U: Future<Output = Result<bool, Failure>>,
    D: Future<Output = Result<bool, Failure>>,
{
    let mut upload = pin!(upload);
    let mut download = pin!(download);
    let mut up_done = false;
    let mut sent = false;
    poll_fn(|cx| {
        if !up_done {
            match upload.as_mut().poll(cx) {
                Poll::Ready(Ok(all)) => {
                    up_done = true;
                    sent = all;
                }
                Poll::Ready(Err(e)) => return Poll::Ready((false, Err(e))),
                Poll::Pending => {}
            }
        }
        download.as_mut().poll(cx).map(|r| (sent, r))
    })
    .await
}

/// Copies the request body (framed by `framing`; `buf` holds bytes read
/// already, and keeps those after the body) from `client` to `upstream`,
/// and says when it is all in (`done`). `Ok(false)` when `upstream` stopped
/// taking it (the response tells why). A client silent for `idle` in the
/// middle of a body gets 408 (or a close, once the response has begun).
async fn send_body<C, U, T>(
    client: &mut C,
    upstream: &mut U,
    buf: &mut Vec<u8>,
    framing: Framing,
    mut idle: impl FnMut() -> T,
    done: &AtomicBool,
) -> Result<bool, Failure>
where
    C: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
    T: Future<Output = ()>,
{
    let mut body = BodyDecoder::new(framing);
    loop {
        if body.is_done() {
            done.store(true, Ordering::Release);
            return Ok(true);
        }
        if buf.is_empty() {
            let timer = idle();
            let read =
                futures_lite::future::or(async { Some(read_more(client, buf).await) }, async {
                    timer.await;
                    None
                });
            let Some(read) = read.await else {
                return Err(Failure::Answer(HttpError::new(
                    408,
                    "the request body stalled",
                )));
            };
            match read {
                Ok(0) => {
                    return Err(Failure::Client(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed in the middle of a request body",
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(Failure::Client(e)),
            }
        }
        let n = body.feed(buf).map_err(Failure::Answer)?;
        if upstream.write_all(&buf[..n]).await.is_err() {
            return Ok(false);
        }
        buf.drain(..n);
    }
}

/// Copies the response from `upstream` to `client`: interim (1xx) heads,
/// then the final head (rewritten, see [`http::forward_response_head`]) and
/// its body. Ok: whether the client connection may carry another request
/// (not if the response comes before the whole request body: `body_done`).
#[allow(clippy::too_many_arguments)]
async fn send_response<U, C>(
    upstream: &mut U,
    client: &mut C,
    method: &str,
    keep_alive: bool,
    client_minor: u8,
    max: usize,
    started: &AtomicBool,
    body_done: &AtomicBool,
) -> Result<bool, Failure>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let origin = |msg: String| Failure::Answer(HttpError::new(502, msg));
    let mut rbuf = Vec::new();
    let (resp, framing) = loop {
        let len = match read_head_bytes(upstream, &mut rbuf, max).await {
            Ok(HeadRead::Head(n)) => n,
            Ok(HeadRead::Eof) => return Err(origin("no response from the origin".into())),
            Ok(HeadRead::TooLarge) => {
                return Err(origin(format!("response head over {max} bytes")));
            }
            Err(e) => return Err(Failure::Answer(gateway_error(&e))),
        };
        let resp = http::parse_response(&rbuf[..len]).map_err(Failure::Answer)?;
        rbuf.drain(..len);
        if resp.code == 101 {
            return Err(origin(
                "the origin switched protocols (not supported)".into(),
            ));
        }
        if (100..200).contains(&resp.code) {
            // Interim responses go to HTTP/1.1 clients only (RFC 9110
            // section 15.2).
            if client_minor >= 1 {
                let head = http::forward_response_head(&resp, true, client_minor);
                client.write_all(&head).await.map_err(Failure::Client)?;
                started.store(true, Ordering::Release);
            }
            continue;
        }
        let framing = http::response_framing(method, &resp).map_err(Failure::Answer)?;
        break (resp, framing);
    };
    let keep = keep_alive && framing != Framing::Close && body_done.load(Ordering::Acquire);
    let head = http::forward_response_head(&resp, keep, client_minor);
    client.write_all(&head).await.map_err(Failure::Client)?;
    started.store(true, Ordering::Release);
    let mut body = BodyDecoder::new(framing);
    loop {
        if !rbuf.is_empty() {
            let n = body
                .feed(&rbuf)
                .map_err(|e| origin(format!("origin's body: {}", e.msg)))?;
            client
                .write_all(&rbuf[..n])
                .await
                .map_err(Failure::Client)?;
            // Anything after the end is not ours to forward.
            rbuf.clear();
        }
        if body.is_done() {
            client.flush().await.map_err(Failure::Client)?;
            return Ok(keep);
        }
        match read_more(upstream, &mut rbuf).await {
            Ok(0) if body.is_close_delimited() => {
                client.flush().await.map_err(Failure::Client)?;
                return Ok(false);
            }
            Ok(0) => return Err(origin("the origin closed in the middle of the body".into())),
            Ok(_) => {}
            Err(e) => return Err(Failure::Answer(gateway_error(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};
    use std::pin::Pin;
    use std::task::Context;

    /// A reader that never has data.
    struct Never;

    impl AsyncRead for Never {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    /// A destination timeout reported by the AnyTLS server
    /// (its SYNACK text) is a 502, not the documented 504.
    #[test]
    fn a_server_side_timeout_is_504() {
        let e = io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "dial tcp 10.255.255.1:80: i/o timeout",
        );
        assert_eq!(gateway_error(&e).status, 504);
    }

    #[test]
    fn a_cancelled_read_leaves_the_buffer() {
        let mut buf = b"abc".to_vec();
        assert!(block_on(poll_once(read_more(&mut Never, &mut buf))).is_none());
        assert_eq!(buf, b"abc");
        let mut src = futures_lite::io::Cursor::new(b"def".to_vec());
        assert_eq!(block_on(read_more(&mut src, &mut buf)).unwrap(), 3);
        assert_eq!(buf, b"abcdef");
    }

    #[test]
    fn bodies_go_up_exactly_and_the_rest_stays() {
        // Part of a chunked body already read, the rest and a pipelined
        // request on the socket.
        let done = AtomicBool::new(false);
        let never = futures_lite::future::pending::<()>;
        let mut buf = b"3\r\nab".to_vec();
        let mut client = futures_lite::io::Cursor::new(b"c\r\n0\r\n\r\nGET next".to_vec());
        let mut up = Vec::new();
        let r = block_on(send_body(
            &mut client,
            &mut up,
            &mut buf,
            Framing::Chunked,
            never,
            &done,
        ));
        assert!(matches!(r, Ok(true)));
        assert_eq!(up, b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(buf, b"GET next");
        assert!(done.load(Ordering::Acquire));
        // A client that ends mid-body, a malformed body.
        let mut short = futures_lite::io::Cursor::new(b"ab".to_vec());
        let r = block_on(send_body(
            &mut short,
            &mut Vec::new(),
            &mut Vec::new(),
            Framing::Length(5),
            never,
            &done,
        ));
        assert!(matches!(r, Err(Failure::Client(_))));
        let mut bad = futures_lite::io::Cursor::new(b"zz\r\n".to_vec());
        let r = block_on(send_body(
            &mut bad,
            &mut Vec::new(),
            &mut Vec::new(),
            Framing::Chunked,
            never,
            &done,
        ));
        assert!(matches!(r, Err(Failure::Answer(e)) if e.status == 400));
    }

    #[test]
    fn responses_are_rewritten_and_delimited() {
        // The request body is all in (else no keep-alive is announced).
        let all_in = AtomicBool::new(true);
        let origin = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
                       Connection: keep-alive\r\n\r\nhiEXTRA"
            .to_vec();
        let run = |method: &str, minor: u8, keep: bool| {
            let mut up = futures_lite::io::Cursor::new(origin.clone());
            let mut out = Vec::new();
            let started = AtomicBool::new(false);
            let r = block_on(send_response(
                &mut up, &mut out, method, keep, minor, 1024, &started, &all_in,
            ));
            (r.ok(), String::from_utf8(out).unwrap())
        };
        let (keep, out) = run("GET", 1, true);
        assert_eq!(keep, Some(true));
        assert_eq!(
            out,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        );
        // HTTP/1.0: no interim response; HEAD: no body.
        let (keep, out) = run("HEAD", 0, true);
        assert_eq!(keep, Some(true));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
        let (keep, out) = run("GET", 1, false);
        assert_eq!(keep, Some(false));
        assert!(out.ends_with("Connection: close\r\n\r\nhi"), "{out}");
        // Close-delimited; cut short; nothing at all.
        let mut up = futures_lite::io::Cursor::new(b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec());
        let mut out = Vec::new();
        let started = AtomicBool::new(false);
        let r = block_on(send_response(
            &mut up, &mut out, "GET", true, 1, 1024, &started, &all_in,
        ));
        assert!(matches!(r, Ok(false)));
        assert!(out.ends_with(b"Connection: close\r\n\r\nall of it"));
        for (text, begun) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf"[..],
                true,
            ),
            (b"", false),
        ] {
            let mut up = futures_lite::io::Cursor::new(text.to_vec());
            let started = AtomicBool::new(false);
            let r = block_on(send_response(
                &mut up,
                &mut Vec::new(),
                "GET",
                true,
                1,
                1024,
                &started,
                &all_in,
            ));
            assert!(matches!(r, Err(Failure::Answer(e)) if e.status == 502));
            assert_eq!(started.load(Ordering::Acquire), begun);
        }
    }
}
