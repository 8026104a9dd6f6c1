//! The client's local "front door": one listening port serving SOCKS5,
//! SOCKS4/4a and HTTP proxy requests (a *mixed* port, as sing-box's `mixed`
//! inbound and mihomo's `mixed-port`), every destination reached through a
//! [`Client`].
//!
//! [`serve_proxy`] runs the accept loop; [`ProxyConfig`] chooses what is
//! served. The message formats are I/O-free in [`http`], [`socks4`] and
//! [`socks5::wire`].
//!
//! # What is served
//!
//! Each connection's protocol is detected from its first byte: `0x05` is
//! SOCKS5, `0x04` SOCKS4 or SOCKS4a, an ASCII letter an HTTP request (the
//! first letter of a method). Anything else, or a protocol that
//! [`ProxyConfig::protocols`] does not serve, closes that connection without
//! a reply (logged at debug).
//!
//! * **SOCKS5** (RFC 1928): CONNECT and UDP ASSOCIATE, as described in
//!   [`socks5`] (verdict wait, UDP relay, caps); BIND is
//!   answered "command not supported".
//! * **SOCKS4 / SOCKS4a**: CONNECT to an IPv4 address, or (4a) to a name
//!   resolved by the AnyTLS server; BIND and failures are answered 91
//!   ("rejected or failed"). The user id is ignored.
//! * **HTTP** (RFC 9110, RFC 9112), HTTP/1.0 and 1.1:
//!   * `CONNECT host:port`: `200 Connection established`, then a tunnel
//!     through one AnyTLS stream (bytes sent along with the request go
//!     first).
//!   * absolute-form requests (`GET http://host[:port]/path`): forwarded to
//!     the origin in origin-form, each on an AnyTLS stream of its own. The
//!     `Host` field is set to the URI's authority; hop-by-hop fields
//!     (`Connection` and the fields it names, `Keep-Alive`, `TE`, `Trailer`,
//!     `Upgrade`) and every `Proxy-*` field are dropped, and the origin is
//!     sent `Connection: close`. Upgrades (WebSocket over plain HTTP) are
//!     not supported: `Upgrade` is dropped, so the origin answers normally.
//!     Bodies are forwarded byte for byte, chunked framing included, in both
//!     directions at once (so `Expect: 100-continue` and early responses
//!     work). `https://` URIs and origin-form requests (a plain web request,
//!     not a proxy one) get a 400.
//!
//! # Keep-alive
//!
//! An HTTP client connection carries any number of requests, to the same or
//! other origins, one at a time (pipelined requests wait their turn). It
//! stays open after a response when the client wants it (HTTP/1.1 unless
//! `Connection: close`; HTTP/1.0 with `keep-alive`), the response's end was
//! known (`Content-Length`, chunked, or no body: HEAD, 1xx, 204, 304) and
//! the request body was read in full. A close-delimited response ends the
//! client connection. Since every request has its own AnyTLS stream, the
//! origin's own persistence does not matter. Between requests the connection
//! waits at most [`ProxyConfig::keep_alive_timeout`] for the next one (empty
//! lines between requests are skipped); a request body that stalls that long
//! gets 408 (or a close, once the response has begun). A response that comes
//! before the whole request body (an early 417 or 413) says
//! `Connection: close`. `Connection` cannot nominate `Content-Length`,
//! `Transfer-Encoding` or `Host` for removal. A CONNECT tunnel is the
//! connection's last request.
//!
//! # Authentication
//!
//! With [`ProxyConfig::users`] empty, nothing is asked. Otherwise:
//!
//! * SOCKS5 requires username/password (RFC 1929, method `0x02`); a client
//!   offering only "no authentication" gets `0xFF` (no acceptable method),
//!   wrong credentials get status `0x01`, and the connection is closed.
//! * SOCKS4 and SOCKS4a carry no password: refused (91).
//! * HTTP requires `Proxy-Authorization: Basic` (RFC 7617) on every request.
//!   Without it or with wrong credentials the answer is `407 Proxy
//!   Authentication Required` with `Proxy-Authenticate: Basic
//!   realm="anytls"`. The connection stays open for the retry when the
//!   client wants keep-alive and the request has no body; otherwise it is
//!   closed.
//!
//! Passwords are compared in constant time. A refused login (wrong
//! credentials, SOCKS4 or SOCKS5 without any) is logged at info; a request
//! without credentials is logged at debug only (browsers send one first, as
//! a matter of course).
//!
//! # Limits and timeouts
//!
//! * [`handshake_timeout`](ProxyConfig::handshake_timeout) (10 s): from
//!   accept to the end of the SOCKS greeting, authentication and request, or
//!   to the end of the first HTTP request head; for later HTTP requests,
//!   from their first byte to the end of their head. Slow clients are closed
//!   (HTTP: `408 Request Timeout` first).
//! * [`max_header_bytes`](ProxyConfig::max_header_bytes) (64 KiB): an HTTP
//!   request head that is longer gets `431 Request Header Fields Too Large`;
//!   an origin's response head that is longer, a 502. SOCKS messages are
//!   small by nature (at most about 1 KiB is read).
//! * [`http::MAX_HEADERS`] fields per head, chunk lines of at most
//!   [`http::MAX_CHUNK_LINE`] bytes and trailers of at most
//!   [`http::MAX_TRAILERS`].
//! * Malformed requests get their protocol's failure reply (SOCKS5 reply
//!   code, SOCKS4 91, HTTP 400; `Content-Length` together with
//!   `Transfer-Encoding` is a 400) and the connection is closed. HTTP error
//!   responses are followed by a short lingering close (our side shut, the
//!   client's further bytes read and dropped for up to [`LINGER`]), so the
//!   client reads the response rather than a reset.
//! * A request that cannot get an AnyTLS stream (no session to the server),
//!   or that the server refuses, gets SOCKS5's matching failure reply,
//!   SOCKS4's 91 or HTTP `502 Bad Gateway` (`504 Gateway Timeout` when the
//!   cause was a timeout). There is no timeout on the origin's response.
//!
//! One connection's failure never affects another: each runs in its own
//! task and every error ends only that connection.
//!
//! # Closing
//!
//! AnyTLS has no half-close (see [`socks5`](crate::socks5#closing)): a
//! tunnel (SOCKS CONNECT, HTTP CONNECT) ends as soon as either side ends.
//! A forwarded HTTP request's stream is closed once its response is
//! complete.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_core::SocksAddr;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use subtle::ConstantTimeEq;

use crate::AnyTlsStream;
use crate::beside::move_beside;
use crate::client::Client;
use crate::relay::relay_stream;
use crate::runtime::{Runtime, sleep_until, timeout};
use crate::socks5::{self, Socks5Config};

pub mod http;
mod http_conn;
pub mod socks4;

/// Which protocols a listener serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocols {
    /// SOCKS5, SOCKS4/4a and HTTP (the default).
    #[default]
    Mixed,
    /// SOCKS5 and SOCKS4/4a.
    Socks,
    /// HTTP only.
    Http,
}

impl Protocols {
    fn socks(self) -> bool {
        matches!(self, Protocols::Mixed | Protocols::Socks)
    }

    fn http(self) -> bool {
        matches!(self, Protocols::Mixed | Protocols::Http)
    }
}

impl FromStr for Protocols {
    type Err = String;

    /// `mixed`, `socks` (also `socks5`) or `http`, in any case.
    fn from_str(s: &str) -> Result<Protocols, String> {
        match s.to_ascii_lowercase().as_str() {
            "mixed" => Ok(Protocols::Mixed),
            "socks" | "socks5" => Ok(Protocols::Socks),
            "http" => Ok(Protocols::Http),
            _ => Err(format!(
                "unknown proxy protocols {s:?} (mixed, socks or http)"
            )),
        }
    }
}

/// A user of the local proxy. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUser {
    /// User name (SOCKS5 allows at most 255 bytes).
    pub username: String,
    /// Password (SOCKS5 allows at most 255 bytes).
    pub password: String,
}

impl ProxyUser {
    /// A user.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> ProxyUser {
        ProxyUser {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for ProxyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Whether `user` and `password` match one of `users`. Every entry is
/// compared, each in constant time.
pub(crate) fn check_user(users: &[ProxyUser], user: &[u8], password: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0);
    for u in users {
        ok |= u.username.as_bytes().ct_eq(user) & u.password.as_bytes().ct_eq(password);
    }
    ok.into()
}

/// Settings of a [`serve_proxy`] listener. Build it from
/// `ProxyConfig::default()` and set fields, or with the `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// What is served ([`Protocols::Mixed`] by default).
    pub protocols: Protocols,
    /// Who may use the proxy; empty (the default): anyone, no
    /// authentication. See [Authentication](self#authentication).
    pub users: Vec<ProxyUser>,
    /// Time for a SOCKS handshake or an HTTP request head (10 s; see
    /// [Limits and timeouts](self#limits-and-timeouts)).
    pub handshake_timeout: Duration,
    /// How long an HTTP connection waits for its next request, and how long
    /// a request body may stall (60 s).
    pub keep_alive_timeout: Duration,
    /// Largest HTTP request head, and origin response head (64 KiB).
    pub max_header_bytes: usize,
    /// How long a tunnel (SOCKS CONNECT, HTTP CONNECT) waits for the
    /// server's verdict before replying success; zero (the default) replies
    /// at once. See [`Socks5Config::verdict_wait`].
    pub verdict_wait: Duration,
    /// Whether SOCKS5 UDP ASSOCIATE is served (on by default); see
    /// [`Socks5Config::udp_associate`].
    pub udp_associate: bool,
    /// A UDP association with no datagram either way for this long ends
    /// (five minutes); see [`Socks5Config::udp_idle_timeout`].
    pub udp_idle_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            protocols: Protocols::Mixed,
            users: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            verdict_wait: Duration::ZERO,
            udp_associate: true,
            udp_idle_timeout: Duration::from_secs(300),
        }
    }
}

impl ProxyConfig {
    /// With `users` (replacing any).
    pub fn with_users(mut self, users: impl IntoIterator<Item = ProxyUser>) -> ProxyConfig {
        self.users = users.into_iter().collect();
        self
    }

    /// Serving `protocols`.
    pub fn with_protocols(mut self, protocols: Protocols) -> ProxyConfig {
        self.protocols = protocols;
        self
    }
}

impl From<Socks5Config> for ProxyConfig {
    /// SOCKS only ([`Protocols::Socks`]), no authentication, the same
    /// timeouts.
    fn from(c: Socks5Config) -> ProxyConfig {
        ProxyConfig {
            protocols: Protocols::Socks,
            handshake_timeout: c.handshake_timeout,
            verdict_wait: c.verdict_wait,
            udp_associate: c.udp_associate,
            udp_idle_timeout: c.udp_idle_timeout,
            ..ProxyConfig::default()
        }
    }
}

/// How long a connection is drained after an HTTP error response before it
/// is closed (see [Limits and timeouts](self#limits-and-timeouts)).
pub const LINGER: Duration = Duration::from_secs(1);
/// Most bytes drained in that time.
const LINGER_BYTES: usize = 256 * 1024;

/// Serves the protocols of `cfg` on `listener`, every destination through
/// `client` (see the [module docs](self)). Runs until the task is dropped;
/// accept errors are logged and retried.
pub async fn serve_proxy<R: Runtime>(
    listener: R::Listener,
    client: Client<R>,
    cfg: ProxyConfig,
) -> io::Result<()> {
    let listen_ip = R::local_addr(&listener).ok().map(|a| a.ip());
    let cfg = Arc::new(cfg);
    loop {
        let (tcp, peer) = match R::accept(&listener).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("proxy accept failed: {e}");
                sleep_until::<R>(Instant::now() + Duration::from_millis(50)).await;
                continue;
            }
        };
        let client = client.clone();
        let cfg = cfg.clone();
        // Where the session it will most likely get runs (thread per core).
        let near = client.next_executor();
        R::spawn_connection(tcp, near, move |tcp| async move {
            if let Err(e) = serve_connection::<R>(tcp, peer, listen_ip, &cfg, &client).await {
                tracing::debug!(%peer, "proxy connection: {e}");
            }
        });
    }
}

/// One connection: the first byte decides the protocol.
async fn serve_connection<R: Runtime>(
    mut tcp: R::Tcp,
    peer: SocketAddr,
    listen_ip: Option<IpAddr>,
    cfg: &ProxyConfig,
    client: &Client<R>,
) -> io::Result<()> {
    let deadline = Instant::now() + cfg.handshake_timeout;
    let mut first = [0u8; 512];
    let n = match timeout::<R, _>(cfg.handshake_timeout, tcp.read(&mut first)).await {
        Some(r) => r?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request in time",
            ));
        }
    };
    let buf = first[..n].to_vec();
    match buf.first() {
        None => Ok(()),
        Some(5) if cfg.protocols.socks() => {
            socks5::serve_connection::<R>(tcp, peer, listen_ip, buf, deadline, cfg, client)
                .await
                .map_err(io::Error::from)
        }
        Some(4) if cfg.protocols.socks() => {
            serve_socks4::<R>(tcp, peer, buf, deadline, cfg, client).await
        }
        Some(b) if b.is_ascii_alphabetic() && cfg.protocols.http() => {
            http_conn::serve::<R>(tcp, peer, buf, deadline, cfg, client).await
        }
        Some(b) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("first byte {b:#04x} is not a request this listener serves"),
        )),
    }
}

/// The time left until `deadline`.
pub(crate) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A handshake message that did not come in time.
pub(crate) fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// Opens a stream to `dest` through `client`. A failure to get one is about
/// the session to the AnyTLS server, not the destination: it keeps its kind
/// but says so. With a `verdict_wait`, waits up to that long for the
/// server's verdict: a refusal is the error, no verdict in time counts as
/// success.
pub(crate) async fn open_stream<R: Runtime>(
    client: &Client<R>,
    dest: SocksAddr,
    verdict_wait: Duration,
) -> io::Result<AnyTlsStream> {
    // A failure here is the session's, not the destination's: never a
    // "connection refused" by the destination (a SOCKS5 general failure,
    // HTTP 502), but a timeout stays one (HTTP 504).
    let mut stream = client.connect(dest).await.map_err(|e| {
        let kind = match e.kind() {
            io::ErrorKind::TimedOut => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("AnyTLS session: {e}"))
    })?;
    if !verdict_wait.is_zero() {
        if let Some(Err(e)) = timeout::<R, _>(verdict_wait, stream.established()).await {
            return Err(e);
        }
    }
    Ok(stream)
}

/// A tunnel: waits for `connect` (the AnyTLS stream), answers with
/// `reply(Ok)` or `reply(Err)`, sends the `early` bytes (those after the
/// request) first, then relays until either side ends. `here`: the executor
/// this runs on ([`Runtime::executor`]); if the stream's session is driven
/// there, the task moves beside its driver for the relay (see `beside.rs`).
pub(crate) async fn tunnel<S, F>(
    local: &mut S,
    early: &[u8],
    connect: F,
    reply: impl FnOnce(Result<(), &io::Error>) -> Vec<u8>,
    here: Option<usize>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = io::Result<AnyTlsStream>>,
{
    let mut remote = match connect.await {
        Ok(s) => s,
        Err(e) => {
            local.write_all(&reply(Err(&e))).await?;
            return Err(e);
        }
    };
    // Bytes the application sent before our reply (optimistic clients) go first.
    if !early.is_empty() {
        remote.write_all(early).await?;
    }
    local.write_all(&reply(Ok(()))).await?;
    move_beside(remote.companions(here)).await;
    // Until either side ends (see "Closing" in the module docs).
    relay_stream(&mut remote, local).await?;
    Ok(())
}

/// Reads from `r` into `buf` until `parse` returns a message; more than
/// `cap` bytes without one is `too_long()`. Errors: I/O, or an EOF first.
pub(crate) async fn read_message<R, T, E>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
    too_long: impl FnOnce() -> E,
) -> io::Result<Result<T, E>>
where
    R: AsyncRead + Unpin,
{
    loop {
        match parse(buf) {
            Ok(Some(t)) => return Ok(Ok(t)),
            Ok(None) => {}
            Err(b) => return Ok(Err(b)),
        }
        if buf.len() > cap {
            return Ok(Err(too_long()));
        }
        let mut chunk = [0u8; 512];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// After an error response: shuts our sending side, then reads and drops
/// what the client still sends, for at most [`LINGER`] and
/// [`LINGER_BYTES`], so that closing does not reset the connection before
/// the client read the response.
pub(crate) async fn linger_close<R: Runtime>(local: &mut R::Tcp) {
    let _ = local.close().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match local.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout::<R, _>(LINGER, drain).await;
}

/// One SOCKS4/4a connection (`buf` holds what was read).
async fn serve_socks4<R: Runtime>(
    mut local: R::Tcp,
    peer: SocketAddr,
    mut buf: Vec<u8>,
    deadline: Instant,
    cfg: &ProxyConfig,
    client: &Client<R>,
) -> io::Result<()> {
    let reject = socks4::encode_reply(socks4::REJECTED);
    let read = read_message(&mut local, &mut buf, 1024, socks4::parse_request, || {
        socks4::BadRequest("request too long".into())
    });
    let (req, used) = match timeout::<R, _>(left(deadline), read).await {
        None => return Err(timed_out("SOCKS4 request")),
        Some(r) => match r? {
            Ok(x) => x,
            Err(bad) => {
                local.write_all(&reject).await?;
                return Err(io::Error::new(io::ErrorKind::InvalidData, bad.0));
            }
        },
    };
    if !cfg.users.is_empty() {
        tracing::info!(%peer, "SOCKS4 request refused: authentication is required");
        local.write_all(&reject).await?;
        return Ok(());
    }
    if req.command != socks4::CMD_CONNECT {
        local.write_all(&reject).await?;
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("SOCKS4 command {} is not supported", req.command),
        ));
    }
    tracing::debug!(%peer, dest = %req.dest, "socks4 CONNECT");
    let connect = open_stream(client, req.dest, cfg.verdict_wait);
    let reply = |r: Result<(), &io::Error>| {
        socks4::encode_reply(if r.is_ok() {
            socks4::GRANTED
        } else {
            socks4::REJECTED
        })
        .to_vec()
    };
    tunnel(&mut local, &buf[used..], connect, reply, R::executor()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_config() {
        let users = [
            ProxyUser::new("alice", "secret"),
            ProxyUser::new("bob", "pw"),
        ];
        assert!(check_user(&users, b"alice", b"secret"));
        assert!(check_user(&users, b"bob", b"pw"));
        assert!(!check_user(&users, b"alice", b"pw"));
        assert!(!check_user(&users, b"alice", b"secret2"));
        assert!(!check_user(&users, b"", b""));
        assert!(!check_user(&[], b"", b""));
        assert!(!format!("{:?}", users[0]).contains("secret"));

        let cfg = ProxyConfig::default().with_users(users.clone());
        assert_eq!(cfg.users.len(), 2);
        assert_eq!(cfg.protocols, Protocols::Mixed);
        assert_eq!(cfg.handshake_timeout, Duration::from_secs(10));
        assert_eq!(cfg.max_header_bytes, 64 * 1024);
        assert!(!format!("{cfg:?}").contains("secret"));
        let from = ProxyConfig::from(Socks5Config::default());
        assert_eq!(from.protocols, Protocols::Socks);
        assert!(from.users.is_empty() && from.udp_associate);
        assert_eq!("HTTP".parse::<Protocols>(), Ok(Protocols::Http));
        assert!("ftp".parse::<Protocols>().is_err());
        assert!(Protocols::Mixed.socks() && Protocols::Mixed.http());
        assert!(!Protocols::Socks.http() && !Protocols::Http.socks());
    }
}
