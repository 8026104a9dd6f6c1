//! A local SOCKS5 server (RFC 1928: CONNECT, no authentication) in front of a
//! [`Client`], and a small SOCKS5 client for tests and tools.
//!
//! * [`wire`]: the message formats, without I/O (usable by any runtime).
//! * [`serve_socks5`] / [`serve_socks5_with`]: accept loop; every CONNECT opens
//!   an AnyTLS stream with [`Client::connect`] and relays.
//! * [`socks5_connect`]: connect through a SOCKS5 proxy.
//!
//! # Replies and the server's verdict
//!
//! An AnyTLS v2 server answers a new stream with SYNACK (success or an error
//! text); v1 servers answer nothing and close refused streams.
//! [`Socks5Config::verdict_wait`] chooses when to reply:
//!
//! * zero (the default): reply "succeeded" as soon as the stream is opened,
//!   as Clash/mihomo do. A refused destination shows as a connection that closes
//!   at once. Fastest: no wait before the application's first bytes.
//! * a duration: wait up to that long for the server's SYNACK
//!   ([`AnyTlsStream::established`](crate::AnyTlsStream::established)) before
//!   replying; a refusal becomes the matching RFC 1928 failure reply
//!   (`connection refused`, `host unreachable`, ...), no verdict in time counts
//!   as success. Costs one round trip to the server plus its dial time on every
//!   connection to a v2 server, nothing more.
//!
//! # Closing
//!
//! AnyTLS has no half-close: FIN closes both directions. So, as the reference
//! client does, a connection ends as soon as either side ends: when the
//! application shuts down its sending side the stream is closed (an answer
//! still on its way is lost: applications that half-close and then wait for
//! the answer do not work over AnyTLS), and when the server side ends, the
//! application's connection is shut down and the session goes back to the
//! pool at once.

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use anytls_core::{Host, SocksAddr};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::AnyTlsStream;
use crate::client::Client;
use crate::relay::relay_stream;
use crate::runtime::{Runtime, sleep_until, timeout};

/// SOCKS5 messages (RFC 1928), without I/O.
pub mod wire {
    use super::*;

    /// Protocol version byte.
    pub const VERSION: u8 = 5;
    /// Method: no authentication.
    pub const METHOD_NO_AUTH: u8 = 0x00;
    /// Method: none of the offered methods is acceptable.
    pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
    /// Command: CONNECT.
    pub const CMD_CONNECT: u8 = 0x01;

    /// The reply field of a SOCKS5 reply.
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
    pub enum Reply {
        /// 0x00.
        Succeeded,
        /// 0x01 general SOCKS server failure.
        GeneralFailure,
        /// 0x02 connection not allowed by ruleset.
        NotAllowed,
        /// 0x03 network unreachable.
        NetworkUnreachable,
        /// 0x04 host unreachable.
        HostUnreachable,
        /// 0x05 connection refused.
        ConnectionRefused,
        /// 0x06 TTL expired.
        TtlExpired,
        /// 0x07 command not supported.
        CommandNotSupported,
        /// 0x08 address type not supported.
        AddressTypeNotSupported,
        /// Any other value.
        Unassigned(u8),
    }

    impl Reply {
        /// The wire value.
        pub fn code(self) -> u8 {
            match self {
                Reply::Succeeded => 0,
                Reply::GeneralFailure => 1,
                Reply::NotAllowed => 2,
                Reply::NetworkUnreachable => 3,
                Reply::HostUnreachable => 4,
                Reply::ConnectionRefused => 5,
                Reply::TtlExpired => 6,
                Reply::CommandNotSupported => 7,
                Reply::AddressTypeNotSupported => 8,
                Reply::Unassigned(c) => c,
            }
        }

        /// From the wire value.
        pub fn from_code(c: u8) -> Reply {
            match c {
                0 => Reply::Succeeded,
                1 => Reply::GeneralFailure,
                2 => Reply::NotAllowed,
                3 => Reply::NetworkUnreachable,
                4 => Reply::HostUnreachable,
                5 => Reply::ConnectionRefused,
                6 => Reply::TtlExpired,
                7 => Reply::CommandNotSupported,
                8 => Reply::AddressTypeNotSupported,
                c => Reply::Unassigned(c),
            }
        }

        /// The failure reply for a connect error: from the error kind, and for
        /// a server's refusal (whose text is all we get) from its wording.
        pub fn for_error(e: &io::Error) -> Reply {
            match e.kind() {
                io::ErrorKind::ConnectionRefused => {
                    // A SYNACK error text, e.g. "dial tcp 1.2.3.4:80: connect:
                    // connection refused"; or a local refusal.
                    let text = e.to_string().to_ascii_lowercase();
                    if text.contains("refused") {
                        Reply::ConnectionRefused
                    } else if text.contains("network is unreachable") {
                        Reply::NetworkUnreachable
                    } else if text.contains("unreachable")
                        || text.contains("no such host")
                        || text.contains("lookup")
                        || text.contains("timeout")
                        || text.contains("timed out")
                        || text.contains("name or service")
                        || text.contains("failed to lookup")
                    {
                        Reply::HostUnreachable
                    } else {
                        Reply::GeneralFailure
                    }
                }
                io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
                io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
                io::ErrorKind::PermissionDenied => Reply::NotAllowed,
                _ => Reply::GeneralFailure,
            }
        }
    }

    impl fmt::Display for Reply {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let text = match self {
                Reply::Succeeded => "succeeded",
                Reply::GeneralFailure => "general SOCKS server failure",
                Reply::NotAllowed => "connection not allowed by ruleset",
                Reply::NetworkUnreachable => "network unreachable",
                Reply::HostUnreachable => "host unreachable",
                Reply::ConnectionRefused => "connection refused",
                Reply::TtlExpired => "TTL expired",
                Reply::CommandNotSupported => "command not supported",
                Reply::AddressTypeNotSupported => "address type not supported",
                Reply::Unassigned(_) => "unassigned reply",
            };
            write!(f, "{text} (0x{:02x})", self.code())
        }
    }

    /// Why a message cannot be parsed; `reply` is what to answer, if anything.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct BadMessage {
        /// What is wrong.
        pub msg: String,
        /// The reply to send before closing (requests only).
        pub reply: Option<Reply>,
    }

    fn bad(msg: impl Into<String>, reply: Option<Reply>) -> BadMessage {
        BadMessage {
            msg: msg.into(),
            reply,
        }
    }

    /// Parses the client greeting (VER, NMETHODS, METHODS) from the front of
    /// `buf`: `Ok(None)` until it is complete, then whether "no authentication"
    /// is offered and the bytes used.
    pub fn parse_greeting(buf: &[u8]) -> Result<Option<(bool, usize)>, BadMessage> {
        let Some(&ver) = buf.first() else {
            return Ok(None);
        };
        if ver != VERSION {
            return Err(bad(format!("not SOCKS5 (version byte {ver:#04x})"), None));
        }
        let Some(&n) = buf.get(1) else {
            return Ok(None);
        };
        let total = 2 + usize::from(n);
        let Some(methods) = buf.get(2..total) else {
            return Ok(None);
        };
        Ok(Some((methods.contains(&METHOD_NO_AUTH), total)))
    }

    /// The server's method choice.
    pub fn encode_method(no_auth: bool) -> [u8; 2] {
        [
            VERSION,
            if no_auth {
                METHOD_NO_AUTH
            } else {
                METHOD_NONE_ACCEPTABLE
            },
        ]
    }

    /// A request: the command and the destination.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Request {
        /// CMD (0x01 CONNECT, 0x02 BIND, 0x03 UDP ASSOCIATE).
        pub command: u8,
        /// DST.ADDR and DST.PORT.
        pub dest: SocksAddr,
    }

    /// Parses a request (VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT) from the front
    /// of `buf`: `Ok(None)` until it is complete. Errors carry the reply to
    /// send (address type not supported, ...).
    pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, BadMessage> {
        if buf.len() < 4 {
            return Ok(None);
        }
        if buf[0] != VERSION {
            return Err(bad(
                format!("bad request version {:#04x}", buf[0]),
                Some(Reply::GeneralFailure),
            ));
        }
        let command = buf[1];
        match SocksAddr::decode(&buf[3..]) {
            Ok((dest, n)) => {
                if matches!(&dest.host, Host::Domain(d) if d.is_empty()) {
                    return Err(bad("empty domain name", Some(Reply::HostUnreachable)));
                }
                Ok(Some((Request { command, dest }, 3 + n)))
            }
            Err(anytls_core::AddrError::Truncated { .. }) => Ok(None),
            Err(anytls_core::AddrError::BadAddressType(t)) => Err(bad(
                format!("address type {t:#04x}"),
                Some(Reply::AddressTypeNotSupported),
            )),
            Err(e) => Err(bad(e.to_string(), Some(Reply::GeneralFailure))),
        }
    }

    /// A request for `dest` (client side).
    pub fn encode_request(command: u8, dest: &SocksAddr) -> Result<Vec<u8>, BadMessage> {
        let mut out = vec![VERSION, command, 0];
        dest.encode(&mut out)
            .map_err(|e| bad(e.to_string(), None))?;
        Ok(out)
    }

    /// A reply. The bound address is `0.0.0.0:0` unless given.
    pub fn encode_reply(reply: Reply, bound: Option<&SocksAddr>) -> Vec<u8> {
        let zero = SocksAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut out = vec![VERSION, reply.code(), 0];
        if bound.unwrap_or(&zero).encode(&mut out).is_err() {
            out.truncate(3);
            let _ = zero.encode(&mut out);
        }
        out
    }

    /// Parses a reply (client side): the reply field, the bound address and the
    /// bytes used; `Ok(None)` until complete.
    pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, SocksAddr, usize)>, BadMessage> {
        if buf.len() < 4 {
            return Ok(None);
        }
        if buf[0] != VERSION {
            return Err(bad(format!("bad reply version {:#04x}", buf[0]), None));
        }
        let reply = Reply::from_code(buf[1]);
        match SocksAddr::decode(&buf[3..]) {
            Ok((addr, n)) => Ok(Some((reply, addr, 3 + n))),
            Err(anytls_core::AddrError::Truncated { .. }) => Ok(None),
            Err(e) => Err(bad(format!("reply address: {e}"), None)),
        }
    }
}

use wire::{BadMessage, Reply};

/// SOCKS5 errors, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Socks5Error {
    /// I/O.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer does not speak SOCKS5 as expected.
    #[error("SOCKS5: {0}")]
    Protocol(String),
    /// Client side: the proxy answered with a failure.
    #[error("SOCKS5 proxy replied: {0}")]
    Reply(Reply),
    /// The handshake took too long.
    #[error("SOCKS5 handshake timed out")]
    Timeout,
}

impl From<BadMessage> for Socks5Error {
    fn from(b: BadMessage) -> Self {
        Socks5Error::Protocol(b.msg)
    }
}

impl From<Socks5Error> for io::Error {
    fn from(e: Socks5Error) -> io::Error {
        match e {
            Socks5Error::Io(e) => e,
            Socks5Error::Reply(Reply::ConnectionRefused) => {
                io::Error::new(io::ErrorKind::ConnectionRefused, e)
            }
            Socks5Error::Timeout => io::Error::new(io::ErrorKind::TimedOut, e),
            e => io::Error::other(e),
        }
    }
}

/// Settings of the SOCKS5 listener.
#[derive(Clone, Debug)]
pub struct Socks5Config {
    /// Greeting plus request time limit.
    pub handshake_timeout: Duration,
    /// How long to wait for the server's verdict before replying success (see
    /// the [module docs](self)); zero replies at once.
    pub verdict_wait: Duration,
}

impl Default for Socks5Config {
    fn default() -> Self {
        Socks5Config {
            handshake_timeout: Duration::from_secs(10),
            verdict_wait: Duration::ZERO,
        }
    }
}

/// Reads from `r` into `buf` until `parse` returns a message.
async fn read_message<R, T>(
    r: &mut R,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<T>, BadMessage>,
) -> Result<Result<T, BadMessage>, io::Error>
where
    R: AsyncRead + Unpin,
{
    loop {
        match parse(buf) {
            Ok(Some(t)) => return Ok(Ok(t)),
            Ok(None) => {}
            Err(b) => return Ok(Err(b)),
        }
        if buf.len() > 1024 {
            return Ok(Err(BadMessage {
                msg: "message too long".into(),
                reply: Some(Reply::GeneralFailure),
            }));
        }
        let mut chunk = [0u8; 512];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the SOCKS5 handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The server side of the handshake on `local`: returns the CONNECT
/// destination and any bytes the application sent early (after the request).
/// Failures are answered (method refusal, failure reply) before returning.
pub async fn accept_handshake<S>(local: &mut S) -> Result<(SocksAddr, Vec<u8>), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(64);
    let (no_auth, used) = read_message(local, &mut buf, wire::parse_greeting).await??;
    buf.drain(..used);
    local.write_all(&wire::encode_method(no_auth)).await?;
    if !no_auth {
        return Err(Socks5Error::Protocol(
            "the client offers no acceptable method (only \"no authentication\" is supported)"
                .into(),
        ));
    }
    let (req, used) = match read_message(local, &mut buf, wire::parse_request).await? {
        Ok(r) => r,
        Err(b) => {
            if let Some(reply) = b.reply {
                local.write_all(&wire::encode_reply(reply, None)).await?;
            }
            return Err(b.into());
        }
    };
    buf.drain(..used);
    if req.command != wire::CMD_CONNECT {
        local
            .write_all(&wire::encode_reply(Reply::CommandNotSupported, None))
            .await?;
        return Err(Socks5Error::Protocol(format!(
            "command {:#04x} is not supported (only CONNECT)",
            req.command
        )));
    }
    Ok((req.dest, buf))
}

/// Handles one SOCKS5 connection: handshake, `connect(dest)` (which opens the
/// AnyTLS stream, or fails with the error to reply with), reply, relay.
pub async fn handle_connection<R, F, Fut>(
    mut local: R::Tcp,
    cfg: &Socks5Config,
    connect: F,
) -> Result<(), Socks5Error>
where
    R: Runtime,
    F: FnOnce(SocksAddr) -> Fut,
    Fut: Future<Output = io::Result<AnyTlsStream>>,
{
    let (dest, early) = timeout::<R, _>(cfg.handshake_timeout, accept_handshake(&mut local))
        .await
        .ok_or(Socks5Error::Timeout)??;
    tracing::debug!(%dest, "socks5 CONNECT");
    let mut remote = match connect(dest.clone()).await {
        Ok(s) => s,
        Err(e) => {
            let reply = Reply::for_error(&e);
            tracing::debug!(%dest, "connect failed: {e}; replying {reply}");
            local.write_all(&wire::encode_reply(reply, None)).await?;
            return Err(e.into());
        }
    };
    // Bytes the application sent before our reply (optimistic clients) go first.
    if !early.is_empty() {
        remote.write_all(&early).await?;
    }
    local
        .write_all(&wire::encode_reply(Reply::Succeeded, None))
        .await?;
    // Until either side ends (see "Closing" in the module docs).
    relay_stream(&mut remote, &mut local).await?;
    Ok(())
}

/// Serves SOCKS5 on `listener`, every CONNECT through `client`, with default
/// settings. Runs until the task is dropped.
pub async fn serve_socks5<R: Runtime>(listener: R::Listener, client: Client<R>) -> io::Result<()> {
    serve_socks5_with(listener, client, Socks5Config::default()).await
}

/// [`serve_socks5`] with settings.
pub async fn serve_socks5_with<R: Runtime>(
    listener: R::Listener,
    client: Client<R>,
    cfg: Socks5Config,
) -> io::Result<()> {
    loop {
        let (tcp, peer) = match R::accept(&listener).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("socks5 accept failed: {e}");
                sleep_until::<R>(std::time::Instant::now() + Duration::from_millis(50)).await;
                continue;
            }
        };
        let client = client.clone();
        let cfg = cfg.clone();
        R::spawn(async move {
            let wait = cfg.verdict_wait;
            let res = handle_connection::<R, _, _>(tcp, &cfg, |dest| async move {
                // A failure here is about the session to the AnyTLS server,
                // not the destination: a general failure, whatever its kind.
                let mut stream = client
                    .connect(dest)
                    .await
                    .map_err(|e| io::Error::other(format!("AnyTLS session: {e}")))?;
                if !wait.is_zero() {
                    // The server's SYNACK: a refusal becomes the matching
                    // reply; no verdict in time counts as success.
                    if let Some(Err(e)) = timeout::<R, _>(wait, stream.established()).await {
                        return Err(e);
                    }
                }
                Ok(stream)
            })
            .await;
            if let Err(e) = res {
                tracing::debug!(%peer, "socks5 connection: {e}");
            }
        });
    }
}

/// The client side of the handshake on an open connection to a SOCKS5 proxy:
/// asks for `dest` (no authentication) and returns the bound address.
pub async fn connect_handshake<S>(proxy: &mut S, dest: &SocksAddr) -> Result<SocksAddr, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Greeting and request together: saves a round trip; the server reads them
    // in order.
    let mut msg = vec![wire::VERSION, 1, wire::METHOD_NO_AUTH];
    msg.extend(wire::encode_request(wire::CMD_CONNECT, dest)?);
    proxy.write_all(&msg).await?;
    let mut m = [0u8; 2];
    proxy.read_exact(&mut m).await?;
    if m != [wire::VERSION, wire::METHOD_NO_AUTH] {
        return Err(Socks5Error::Protocol(format!(
            "proxy chose method {:#04x}",
            m[1]
        )));
    }
    // Read the reply exactly, so no relayed byte is consumed.
    let mut head = [0u8; 5];
    proxy.read_exact(&mut head).await?;
    let rest = match head[3] {
        0x01 => 4 + 2 - 1,
        0x04 => 16 + 2 - 1,
        0x03 => usize::from(head[4]) + 2,
        t => {
            return Err(Socks5Error::Protocol(format!(
                "reply address type {t:#04x}"
            )));
        }
    };
    let mut buf = head.to_vec();
    buf.resize(5 + rest, 0);
    proxy.read_exact(&mut buf[5..]).await?;
    let (reply, bound, _) =
        wire::parse_reply(&buf)?.ok_or_else(|| Socks5Error::Protocol("short reply".into()))?;
    if reply != Reply::Succeeded {
        return Err(Socks5Error::Reply(reply));
    }
    Ok(bound)
}

/// Connects to `dest` through the SOCKS5 proxy at `proxy` (`host:port`).
/// The adapter crates wrap this with their runtime's socket type.
pub async fn socks5_connect<R: Runtime>(
    proxy: &str,
    dest: impl Into<SocksAddr>,
) -> Result<R::Tcp, Socks5Error> {
    let mut tcp = R::connect(proxy).await?;
    connect_handshake(&mut tcp, &dest.into()).await?;
    Ok(tcp)
}
