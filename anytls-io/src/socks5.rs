//! A local SOCKS5 server (RFC 1928: CONNECT and UDP ASSOCIATE) in front of
//! a [`Client`], and a small SOCKS5 client for tests and tools.
//!
//! The server is one side of the mixed port ([`crate::proxy`]), which adds
//! username/password authentication (RFC 1929), SOCKS4/4a and HTTP;
//! [`serve_socks5`] is that port serving SOCKS only, without
//! authentication.
//!
//! * [`wire`]: the message formats, without I/O (usable by any runtime).
//! * [`serve_socks5`] / [`serve_socks5_with`]: accept loop; every CONNECT opens
//!   an AnyTLS stream with [`Client::connect`] and relays; every UDP ASSOCIATE
//!   relays datagrams over one UDP-over-TCP stream ([`Client::udp`]), see
//!   [UDP ASSOCIATE](#udp-associate).
//! * [`socks5_connect`] / [`socks5_connect_with`]: connect through a SOCKS5
//!   proxy (with username/password).
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
//!
//! # UDP ASSOCIATE
//!
//! RFC 1928 section 7, as [`serve_socks5_with`] implements it (unless
//! [`Socks5Config::udp_associate`] is off):
//!
//! * The relay socket is bound, port 0, on the IP address the client's control
//!   connection reached (the listener's address; for a wildcard listener, the
//!   local address the system routes to the client from), and the success
//!   reply carries that address and port. The association's AnyTLS side is
//!   one UoT stream ([`Client::udp`], non-connect mode), opened before the
//!   reply: a failure to reach the AnyTLS server is a "general failure"
//!   reply, and with a [`verdict_wait`](Socks5Config::verdict_wait) the
//!   server's refusal is one too.
//! * Datagrams are taken only from the control connection's IP address and
//!   one port: the port the request named (DST.PORT, with an IP address in
//!   DST.ADDR; its IP is not compared, behind NAT it is rarely what the
//!   relay sees), so that another process on the same host cannot use the
//!   association; or, when the request names port 0 (as most clients do),
//!   the port of the first datagram. Datagrams from other ports, fragments
//!   (FRAG != 0) and malformed headers are dropped. (With port 0, a process
//!   on the client's host that sends first takes the association: with
//!   authentication on, clients should name their port.) Each goes to its destination through the UoT stream; domain
//!   names are resolved by the AnyTLS server.
//! * Datagrams coming back are sent to the client with a header carrying
//!   their source address. Before the client's first datagram there is
//!   nobody to send them to: they are dropped.
//! * When the UoT stream ends (the AnyTLS server closed it, say after an idle
//!   timeout of its own, or the session died), the client's next datagram
//!   opens a new one; datagrams in flight on the old one are lost.
//! * The association ends when the control connection closes (any bytes on it
//!   are read and ignored), after
//!   [`udp_idle_timeout`](Socks5Config::udp_idle_timeout) without a datagram
//!   either way, when a new UoT stream cannot be opened, or when the relay
//!   socket fails; then the control connection is closed.
//!
//! Caps (UDP drops rather than waits, and so does the relay):
//!
//! * Datagram size: what a UDP datagram can carry (the receive buffer is
//!   [`UDP_RECV_BUFFER`] bytes, enough for any); payloads over the UoT limit
//!   (65 535 bytes) are dropped, as are answers too big for a SOCKS5 UDP
//!   datagram once the header is added.
//! * Towards the AnyTLS server: no queue of our own. While the session's send
//!   queue for the stream is full the relay waits, and the client's further
//!   datagrams wait in the relay socket's kernel buffer, which drops when
//!   full.
//! * Towards the client: at most [`UDP_QUEUE_DATAGRAMS`] datagrams and
//!   [`UDP_QUEUE_BYTES`] bytes wait to be sent; more are dropped. The UoT
//!   stream is always read, so a slow client never stalls the AnyTLS session.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anytls_core::{Host, SocksAddr};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::AnyTlsStream;
use crate::client::Client;
use crate::proxy::{self, ProxyConfig, ProxyUser};
use crate::runtime::{Notify, Runtime, lock, sleep_until, timeout};

/// SOCKS5 messages (RFC 1928), without I/O.
pub mod wire {
    use super::*;

    /// Protocol version byte.
    pub const VERSION: u8 = 5;
    /// Method: no authentication.
    pub const METHOD_NO_AUTH: u8 = 0x00;
    /// Method: username/password (RFC 1929).
    pub const METHOD_USER_PASS: u8 = 0x02;
    /// Version byte of the username/password sub-negotiation (RFC 1929).
    pub const AUTH_VERSION: u8 = 0x01;
    /// Method: none of the offered methods is acceptable.
    pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
    /// Command: CONNECT.
    pub const CMD_CONNECT: u8 = 0x01;
    /// Command: BIND (not supported by the server here).
    pub const CMD_BIND: u8 = 0x02;
    /// Command: UDP ASSOCIATE.
    pub const CMD_UDP_ASSOCIATE: u8 = 0x03;
    /// Longest header of a SOCKS5 UDP datagram: RSV, FRAG and the longest
    /// address (a 255-byte name).
    pub const MAX_UDP_HEADER: usize = 3 + anytls_core::addr::MAX_ENCODED_LEN;

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
        Ok(parse_greeting_methods(buf)?.map(|(m, n)| (m.contains(&METHOD_NO_AUTH), n)))
    }

    /// Parses the client greeting from the front of `buf`: `Ok(None)` until
    /// it is complete, then the methods offered and the bytes used.
    pub fn parse_greeting_methods(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, BadMessage> {
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
        Ok(Some((methods.to_vec(), total)))
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

    /// The server's choice of `method` ([`METHOD_NONE_ACCEPTABLE`] for none).
    pub fn encode_method_choice(method: u8) -> [u8; 2] {
        [VERSION, method]
    }

    /// Username and password of an RFC 1929 request. `Debug` does not show
    /// the password.
    #[derive(Clone, PartialEq, Eq)]
    pub struct UserPass {
        /// UNAME (1 to 255 bytes).
        pub username: Vec<u8>,
        /// PASSWD (1 to 255 bytes).
        pub password: Vec<u8>,
    }

    impl fmt::Debug for UserPass {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("UserPass")
                .field("username", &String::from_utf8_lossy(&self.username))
                .field("password", &"<redacted>")
                .finish()
        }
    }

    /// Parses an RFC 1929 request (VER 0x01, ULEN, UNAME, PLEN, PASSWD) from
    /// the front of `buf`: `Ok(None)` until it is complete. Empty fields are
    /// accepted here (they match only a user configured with empty ones).
    pub fn parse_user_pass(buf: &[u8]) -> Result<Option<(UserPass, usize)>, BadMessage> {
        let Some(&ver) = buf.first() else {
            return Ok(None);
        };
        if ver != AUTH_VERSION {
            return Err(bad(
                format!("bad username/password version {ver:#04x}"),
                None,
            ));
        }
        let Some(&ulen) = buf.get(1) else {
            return Ok(None);
        };
        let uend = 2 + usize::from(ulen);
        let Some(&plen) = buf.get(uend) else {
            return Ok(None);
        };
        let total = uend + 1 + usize::from(plen);
        let Some(password) = buf.get(uend + 1..total) else {
            return Ok(None);
        };
        let up = UserPass {
            username: buf[2..uend].to_vec(),
            password: password.to_vec(),
        };
        Ok(Some((up, total)))
    }

    /// An RFC 1929 request (client side); each field at most 255 bytes.
    pub fn encode_user_pass(username: &[u8], password: &[u8]) -> Result<Vec<u8>, BadMessage> {
        let (Ok(ulen), Ok(plen)) = (u8::try_from(username.len()), u8::try_from(password.len()))
        else {
            return Err(bad("username or password longer than 255 bytes", None));
        };
        let mut out = vec![AUTH_VERSION, ulen];
        out.extend_from_slice(username);
        out.push(plen);
        out.extend_from_slice(password);
        Ok(out)
    }

    /// The RFC 1929 status: success (0x00) or failure (0x01).
    pub fn encode_auth_status(ok: bool) -> [u8; 2] {
        [AUTH_VERSION, if ok { 0 } else { 1 }]
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

    /// The header of a SOCKS5 UDP datagram (RFC 1928 section 7).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UdpHeader {
        /// FRAG: the fragment number, 0 for a whole datagram.
        pub frag: u8,
        /// DST.ADDR and DST.PORT (client to relay), or the source of an
        /// answer (relay to client).
        pub addr: SocksAddr,
    }

    /// Parses the header of a SOCKS5 UDP datagram (RSV u16, FRAG, ATYP,
    /// DST.ADDR, DST.PORT); returns it and where the payload starts. RSV is not
    /// checked. A datagram is never split, so a short one is an error.
    pub fn parse_udp_header(datagram: &[u8]) -> Result<(UdpHeader, usize), BadMessage> {
        let Some(&frag) = datagram.get(2) else {
            return Err(bad(
                format!("UDP datagram of {} bytes has no header", datagram.len()),
                None,
            ));
        };
        match SocksAddr::decode(&datagram[3..]) {
            Ok((addr, n)) => Ok((UdpHeader { frag, addr }, 3 + n)),
            Err(e) => Err(bad(format!("UDP datagram header: {e}"), None)),
        }
    }

    /// Appends a SOCKS5 UDP header (RSV 0, FRAG 0) carrying `addr`. Nothing is
    /// written on error (a name over 255 bytes).
    pub fn encode_udp_header(
        addr: &SocksAddr,
        out: &mut impl bytes::BufMut,
    ) -> Result<(), BadMessage> {
        let mut a = Vec::with_capacity(addr.encoded_len());
        addr.encode(&mut a).map_err(|e| bad(e.to_string(), None))?;
        out.put_slice(&[0, 0, 0]);
        out.put_slice(&a);
        Ok(())
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
    /// Authentication failed: the proxy refused the credentials or the
    /// methods (client side), or the client did (server side).
    #[error("SOCKS5 authentication failed: {0}")]
    Auth(String),
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
            Socks5Error::Auth(_) => io::Error::new(io::ErrorKind::PermissionDenied, e),
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
    /// Whether UDP ASSOCIATE is served ([`serve_socks5_with`]); when off it is
    /// answered "command not supported". On by default.
    pub udp_associate: bool,
    /// A UDP association with no datagram either way for this long ends (see
    /// [UDP ASSOCIATE](self#udp-associate)). Five minutes by default.
    pub udp_idle_timeout: Duration,
}

impl Default for Socks5Config {
    fn default() -> Self {
        Socks5Config {
            handshake_timeout: Duration::from_secs(10),
            verdict_wait: Duration::ZERO,
            udp_associate: true,
            udp_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Size of a UDP association's receive buffer: any UDP datagram fits.
pub const UDP_RECV_BUFFER: usize = 65_536;
/// Datagrams from the AnyTLS server that may wait to be sent to the SOCKS5
/// client, per association; more are dropped.
pub const UDP_QUEUE_DATAGRAMS: usize = 256;
/// Bytes from the AnyTLS server that may wait to be sent to the SOCKS5 client,
/// per association; more are dropped.
pub const UDP_QUEUE_BYTES: usize = 1024 * 1024;

/// Largest SOCKS5 handshake message buffered.
const MAX_MESSAGE: usize = 1024;

/// Reads from `r` into `buf` until `parse` returns a message.
async fn read_message<R, T>(
    r: &mut R,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<T>, BadMessage>,
) -> Result<Result<T, BadMessage>, io::Error>
where
    R: AsyncRead + Unpin,
{
    proxy::read_message(r, buf, MAX_MESSAGE, parse, || BadMessage {
        msg: "message too long".into(),
        reply: Some(Reply::GeneralFailure),
    })
    .await
}

/// The server side of the handshake on `local`: returns the CONNECT
/// destination and any bytes the application sent early (after the request).
/// Failures are answered (method refusal, failure reply) before returning.
pub async fn accept_handshake<S>(local: &mut S) -> Result<(SocksAddr, Vec<u8>), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (req, early) = accept_request(local, Vec::new(), &[]).await?;
    if req.command != wire::CMD_CONNECT {
        return Err(unsupported(local, req.command).await);
    }
    Ok((req.dest, early))
}

/// Answers "command not supported"; the error to return.
async fn unsupported<S: AsyncWrite + Unpin>(local: &mut S, command: u8) -> Socks5Error {
    if let Err(e) = local
        .write_all(&wire::encode_reply(Reply::CommandNotSupported, None))
        .await
    {
        return e.into();
    }
    Socks5Error::Protocol(format!("command {command:#04x} is not supported"))
}

/// Greeting, method choice, with `users` username/password authentication
/// (RFC 1929), and request: the request and any bytes after it. `buf` holds
/// bytes read already. Failures are answered before returning; refused
/// authentication is [`Socks5Error::Auth`].
async fn accept_request<S>(
    local: &mut S,
    mut buf: Vec<u8>,
    users: &[ProxyUser],
) -> Result<(wire::Request, Vec<u8>), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (methods, used) = read_message(local, &mut buf, wire::parse_greeting_methods).await??;
    buf.drain(..used);
    let wanted = if users.is_empty() {
        wire::METHOD_NO_AUTH
    } else {
        wire::METHOD_USER_PASS
    };
    let offered = methods.contains(&wanted);
    let choice = if offered {
        wanted
    } else {
        wire::METHOD_NONE_ACCEPTABLE
    };
    local.write_all(&wire::encode_method_choice(choice)).await?;
    if !offered && users.is_empty() {
        return Err(Socks5Error::Protocol(
            "the client offers no acceptable method (only \"no authentication\" is supported)"
                .into(),
        ));
    }
    if !offered {
        return Err(Socks5Error::Auth(
            "the client does not offer username/password authentication".into(),
        ));
    }
    if !users.is_empty() {
        let (up, used) = read_message(local, &mut buf, wire::parse_user_pass).await??;
        buf.drain(..used);
        let ok = proxy::check_user(users, &up.username, &up.password);
        local.write_all(&wire::encode_auth_status(ok)).await?;
        if !ok {
            return Err(Socks5Error::Auth(format!(
                "wrong credentials for user {:?}",
                String::from_utf8_lossy(&up.username)
            )));
        }
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
    Ok((req, buf))
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
    connect_and_relay(&mut local, dest, &early, connect, R::executor()).await
}

/// CONNECT after the request: open the stream, reply, relay.
/// `here`: the executor this runs on ([`Runtime::executor`]).
async fn connect_and_relay<S, F, Fut>(
    local: &mut S,
    dest: SocksAddr,
    early: &[u8],
    connect: F,
    here: Option<usize>,
) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(SocksAddr) -> Fut,
    Fut: Future<Output = io::Result<AnyTlsStream>>,
{
    tracing::debug!(%dest, "socks5 CONNECT");
    let reply = |r: Result<(), &io::Error>| match r {
        Ok(()) => wire::encode_reply(Reply::Succeeded, None),
        Err(e) => {
            let reply = Reply::for_error(e);
            tracing::debug!(%dest, "connect failed: {e}; replying {reply}");
            wire::encode_reply(reply, None)
        }
    };
    proxy::tunnel(local, early, connect(dest.clone()), reply, here).await?;
    Ok(())
}

/// Serves SOCKS5 on `listener`, every CONNECT through `client`, with default
/// settings. Runs until the task is dropped.
///
/// Since the mixed port ([`serve_proxy`](crate::proxy::serve_proxy)) this is
/// its SOCKS-only form: SOCKS4/4a CONNECT is served too.
pub async fn serve_socks5<R: Runtime>(listener: R::Listener, client: Client<R>) -> io::Result<()> {
    serve_socks5_with(listener, client, Socks5Config::default()).await
}

/// [`serve_socks5`] with settings: [`serve_proxy`](crate::proxy::serve_proxy)
/// with [`Protocols::Socks`](crate::proxy::Protocols::Socks), no
/// authentication.
pub async fn serve_socks5_with<R: Runtime>(
    listener: R::Listener,
    client: Client<R>,
    cfg: Socks5Config,
) -> io::Result<()> {
    proxy::serve_proxy(listener, client, ProxyConfig::from(cfg)).await
}

/// One SOCKS5 connection of [`serve_proxy`](crate::proxy::serve_proxy)
/// (`buf` holds what was read; the handshake ends by `deadline`): CONNECT,
/// UDP ASSOCIATE (see the [module docs](self#udp-associate)).
pub(crate) async fn serve_connection<R: Runtime>(
    mut local: R::Tcp,
    peer: SocketAddr,
    listen_ip: Option<IpAddr>,
    buf: Vec<u8>,
    deadline: Instant,
    cfg: &ProxyConfig,
    client: &Client<R>,
) -> Result<(), Socks5Error> {
    let accept = accept_request(&mut local, buf, &cfg.users);
    let (req, early) = match timeout::<R, _>(proxy::left(deadline), accept).await {
        None => return Err(Socks5Error::Timeout),
        Some(Err(Socks5Error::Auth(why))) => {
            tracing::info!(%peer, "socks5 authentication refused: {why}");
            return Ok(());
        }
        Some(r) => r?,
    };
    match req.command {
        wire::CMD_CONNECT => {
            let wait = cfg.verdict_wait;
            connect_and_relay(
                &mut local,
                req.dest,
                &early,
                |dest| proxy::open_stream(client, dest, wait),
                R::executor(),
            )
            .await
        }
        wire::CMD_UDP_ASSOCIATE if cfg.udp_associate => {
            let ip = udp_bind_ip(listen_ip, peer);
            udp_associate::<R>(local, peer, ip, &req.dest, cfg, client).await
        }
        c => Err(unsupported(&mut local, c).await),
    }
}

/// The IP address `peer`'s connection reached: the listener's, or for a
/// wildcard listener the one the system routes to `peer` from (a connected
/// UDP socket's local address; no packet is sent).
fn udp_bind_ip(listen_ip: Option<IpAddr>, peer: SocketAddr) -> IpAddr {
    if let Some(ip) = listen_ip.filter(|ip| !ip.is_unspecified()) {
        return ip.to_canonical();
    }
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let any = match peer {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let routed = std::net::UdpSocket::bind(SocketAddr::new(any, 0))
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| a.ip());
    routed.unwrap_or(any)
}

/// Datagrams for the SOCKS5 client, bounded by [`UDP_QUEUE_DATAGRAMS`] and
/// [`UDP_QUEUE_BYTES`]; one consumer.
#[derive(Default)]
struct DropQueue {
    items: Mutex<Queued>,
    ready: Notify,
}

/// Datagrams with their destination, and their total size.
#[derive(Default)]
struct Queued(VecDeque<(SocketAddr, Vec<u8>)>, usize);

impl DropQueue {
    /// Queues `d` for `to`; false (and `d` dropped) when full.
    fn push(&self, to: SocketAddr, d: Vec<u8>) -> bool {
        let mut g = lock(&self.items);
        if g.0.len() >= UDP_QUEUE_DATAGRAMS || g.1 + d.len() > UDP_QUEUE_BYTES {
            return false;
        }
        g.1 += d.len();
        g.0.push_back((to, d));
        drop(g);
        self.ready.notify();
        true
    }

    async fn pop(&self) -> (SocketAddr, Vec<u8>) {
        loop {
            {
                let mut g = lock(&self.items);
                if let Some((to, d)) = g.0.pop_front() {
                    g.1 -= d.len();
                    return (to, d);
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Serves one UDP ASSOCIATE request on `control` (the request has been read).
async fn udp_associate<R: Runtime>(
    mut control: R::Tcp,
    peer: SocketAddr,
    ip: IpAddr,
    requested: &SocksAddr,
    cfg: &ProxyConfig,
    client: &Client<R>,
) -> Result<(), Socks5Error> {
    let failed = |reply: Reply| wire::encode_reply(reply, None);
    let sock = match R::bind_udp(SocketAddr::new(ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            control.write_all(&failed(Reply::GeneralFailure)).await?;
            return Err(e.into());
        }
    };
    let bound = R::udp_local_addr(&sock)?;
    let uot = match client.udp().await {
        Ok(u) => u,
        Err(e) => {
            control.write_all(&failed(Reply::GeneralFailure)).await?;
            return Err(io::Error::other(format!("AnyTLS session: {e}")).into());
        }
    };
    if !cfg.verdict_wait.is_zero() {
        if let Some(Err(e)) = timeout::<R, _>(cfg.verdict_wait, uot.established()).await {
            // The AnyTLS server refuses UDP: no reply says that better.
            control.write_all(&failed(Reply::GeneralFailure)).await?;
            return Err(e.into());
        }
    }
    let bound = SocksAddr {
        host: Host::from(bound.ip()),
        port: bound.port(),
    };
    control
        .write_all(&wire::encode_reply(Reply::Succeeded, Some(&bound)))
        .await?;
    tracing::debug!(%peer, relay = %bound, "socks5 UDP ASSOCIATE");

    let client_ip = peer.ip().to_canonical();
    // The client's address: the port its request named (another process on
    // the same host cannot take the association over), or else fixed by
    // its first datagram.
    let named = match requested.host {
        Host::Ipv4(_) | Host::Ipv6(_) if requested.port != 0 => {
            Some(SocketAddr::new(client_ip, requested.port))
        }
        _ => None,
    };
    let client_addr: Mutex<Option<SocketAddr>> = Mutex::new(named);
    let last_activity = Mutex::new(Instant::now());
    let queue = DropQueue::default();
    let sock = &sock;

    let control_closed = async {
        let mut b = [0u8; 512];
        loop {
            match control.read(&mut b).await {
                Ok(0) => return Ok("the control connection closed"),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    let idle = async {
        loop {
            let deadline = *lock(&last_activity) + cfg.udp_idle_timeout;
            if Instant::now() >= deadline {
                return Ok("idle timeout");
            }
            sleep_until::<R>(deadline).await;
        }
    };
    // Client datagrams to the UoT stream and its answers to the queue; a new
    // stream (opened by the next client datagram) when one ends.
    let relay = async {
        let mut buf = vec![0u8; UDP_RECV_BUFFER];
        let mut answer = vec![0u8; anytls_core::uot::MAX_DATAGRAM];
        let mut uot = Some(uot);
        let mut first = None;
        loop {
            let stream = match uot.take() {
                Some(u) => u,
                None => {
                    first = Some(
                        next_client_datagram::<R>(
                            sock,
                            client_ip,
                            &client_addr,
                            &last_activity,
                            &mut buf,
                        )
                        .await?,
                    );
                    client
                        .udp()
                        .await
                        .map_err(|e| io::Error::other(format!("AnyTLS session: {e}")))?
                }
            };
            let (mut tx, mut rx) = stream.split();
            let up = async {
                let mut next = first.take();
                loop {
                    let (dest, at) = match next.take() {
                        Some(d) => d,
                        None => {
                            next_client_datagram::<R>(
                                sock,
                                client_ip,
                                &client_addr,
                                &last_activity,
                                &mut buf,
                            )
                            .await?
                        }
                    };
                    match tx.send_to(&buf[at], dest).await {
                        Ok(()) => {}
                        // Too large for UoT: dropped, as an oversized datagram would be.
                        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                            tracing::trace!("socks5 UDP: {e}; dropped");
                        }
                        Err(e) => return Ok(e),
                    }
                }
            };
            let down = async {
                loop {
                    let (n, src) = match rx.recv_from(&mut answer).await {
                        Ok(x) => x,
                        Err(e) => return Ok(e),
                    };
                    *lock(&last_activity) = Instant::now();
                    let Some(to) = *lock(&client_addr) else {
                        tracing::trace!(%src, "socks5 UDP: answer before the client's first datagram dropped");
                        continue;
                    };
                    let mut d = Vec::with_capacity(wire::MAX_UDP_HEADER + n);
                    if wire::encode_udp_header(&src, &mut d).is_err() {
                        continue;
                    }
                    d.extend_from_slice(&answer[..n]);
                    if !queue.push(to, d) {
                        tracing::trace!("socks5 UDP: queue to the client full; dropped");
                    }
                }
            };
            // Ok: the stream ended; Err: the relay socket failed.
            let ended: io::Result<io::Error> = futures_lite::future::or(up, down).await;
            let e = ended?;
            tracing::debug!(%peer, "socks5 UDP: UoT stream ended ({e}); the next datagram opens another");
        }
    };
    let down_send = async {
        loop {
            let (to, d) = queue.pop().await;
            if let Err(e) = R::send_to(sock, &d, to).await {
                // EMSGSIZE and the like: that datagram is lost, as with UDP.
                tracing::trace!(%to, "socks5 UDP: send failed: {e}; dropped");
            }
        }
    };
    let end = futures_lite::future::or(
        futures_lite::future::or(control_closed, idle),
        futures_lite::future::or(relay, down_send),
    )
    .await;
    match end {
        Ok(why) => tracing::debug!(%peer, "socks5 UDP association ended: {why}"),
        Err(e) => tracing::debug!(%peer, "socks5 UDP association ended: {e}"),
    }
    Ok(())
}

/// Receives the client's next datagram into `buf`, dropping those from other
/// addresses, malformed ones and fragments (see the
/// [module docs](self#udp-associate)): its destination and where its payload
/// lies. Errors are the relay socket's.
async fn next_client_datagram<R: Runtime>(
    sock: &R::Udp,
    client_ip: IpAddr,
    client_addr: &Mutex<Option<SocketAddr>>,
    last_activity: &Mutex<Instant>,
    buf: &mut [u8],
) -> io::Result<(SocksAddr, std::ops::Range<usize>)> {
    loop {
        let (n, from) = R::recv_from(sock, buf).await?;
        if from.ip().to_canonical() != client_ip {
            tracing::trace!(%from, "socks5 UDP: datagram from a stranger dropped");
            continue;
        }
        {
            let mut c = lock(client_addr);
            match *c {
                None => *c = Some(from),
                Some(a) if a != from => {
                    tracing::trace!(%from, "socks5 UDP: datagram from another port dropped");
                    continue;
                }
                Some(_) => {}
            }
        }
        let (h, at) = match wire::parse_udp_header(&buf[..n]) {
            Ok(x) => x,
            Err(e) => {
                tracing::trace!("socks5 UDP: {}; dropped", e.msg);
                continue;
            }
        };
        if h.frag != 0 {
            tracing::trace!("socks5 UDP: fragment {} dropped", h.frag);
            continue;
        }
        *lock(last_activity) = Instant::now();
        return Ok((h.addr, at..n));
    }
}

/// The client side of the handshake on an open connection to a SOCKS5 proxy:
/// asks for `dest` (no authentication) and returns the bound address.
pub async fn connect_handshake<S>(proxy: &mut S, dest: &SocksAddr) -> Result<SocksAddr, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_handshake_with(proxy, dest, None).await
}

/// [`connect_handshake`] with username/password authentication (RFC 1929)
/// when `auth` is `Some((username, password))`. A refusal (no acceptable
/// method, wrong credentials) is [`Socks5Error::Auth`].
pub async fn connect_handshake_with<S>(
    proxy: &mut S,
    dest: &SocksAddr,
    auth: Option<(&str, &str)>,
) -> Result<SocksAddr, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = wire::encode_request(wire::CMD_CONNECT, dest)?;
    let method = match auth {
        Some(_) => wire::METHOD_USER_PASS,
        None => wire::METHOD_NO_AUTH,
    };
    let mut msg = vec![wire::VERSION, 1, method];
    match auth {
        // Credentials with the greeting; the request only once they are
        // accepted (a refused client must not leave unread bytes behind).
        Some((user, password)) => {
            msg.extend(wire::encode_user_pass(
                user.as_bytes(),
                password.as_bytes(),
            )?);
        }
        // Greeting and request together: saves a round trip; the server
        // reads them in order.
        None => msg.extend_from_slice(&request),
    }
    proxy.write_all(&msg).await?;
    let mut m = [0u8; 2];
    proxy.read_exact(&mut m).await?;
    if m == wire::encode_method_choice(wire::METHOD_NONE_ACCEPTABLE) {
        return Err(Socks5Error::Auth("no acceptable method".into()));
    }
    if m != wire::encode_method_choice(method) {
        return Err(Socks5Error::Protocol(format!(
            "proxy chose method {:#04x}",
            m[1]
        )));
    }
    if auth.is_some() {
        let mut status = [0u8; 2];
        proxy.read_exact(&mut status).await?;
        if status != wire::encode_auth_status(true) {
            return Err(Socks5Error::Auth(
                "the proxy refused the credentials".into(),
            ));
        }
        proxy.write_all(&request).await?;
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

/// [`socks5_connect`] with username/password authentication.
pub async fn socks5_connect_with<R: Runtime>(
    proxy: &str,
    dest: impl Into<SocksAddr>,
    auth: Option<(&str, &str)>,
) -> Result<R::Tcp, Socks5Error> {
    let mut tcp = R::connect(proxy).await?;
    connect_handshake_with(&mut tcp, &dest.into(), auth).await?;
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn udp_header_round_trip() {
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let cases = [
            (
                SocksAddr::from(SocketAddr::from(([1, 2, 3, 4], 53))),
                "0000000101020304003500ff",
            ),
            (SocksAddr::domain("a.b", 80), "00000003 03612e62 0050 00ff"),
            (
                SocksAddr::from(v6),
                "00000004 00000000000000000000000000000001 000900ff",
            ),
        ];
        for (addr, want) in cases {
            let mut v = Vec::new();
            encode_udp_header(&addr, &mut v).unwrap();
            v.extend_from_slice(&[0x00, 0xff]);
            assert_eq!(hex(&v), want.replace(' ', ""));
            let (h, at) = parse_udp_header(&v).unwrap();
            assert_eq!(h, UdpHeader { frag: 0, addr });
            assert_eq!(&v[at..], &[0x00, 0xff]);
            assert!(at <= MAX_UDP_HEADER);
        }
    }

    #[test]
    fn udp_header_fields_and_errors() {
        // FRAG is reported (the relay drops fragments); RSV is not checked.
        let (h, at) = parse_udp_header(&[0xaa, 0xbb, 3, 1, 10, 0, 0, 1, 0, 7, b'x']).unwrap();
        assert_eq!(h.frag, 3);
        assert_eq!(
            h.addr,
            SocksAddr::from(SocketAddr::from(([10, 0, 0, 1], 7)))
        );
        assert_eq!(at, 10);
        // An empty payload is a datagram too.
        let (_, at) = parse_udp_header(&[0, 0, 0, 1, 10, 0, 0, 1, 0, 7]).unwrap();
        assert_eq!(at, 10);
        // Too short, truncated address, unknown address type, bad name.
        for bad in [
            &[][..],
            &[0, 0],
            &[0, 0, 0],
            &[0, 0, 0, 1, 10, 0, 0],
            &[0, 0, 0, 3, 5, b'a'],
            &[0, 0, 0, 9, 1, 2, 3, 4, 5, 6],
            &[0, 0, 0, 3, 1, 0xff, 0, 1],
        ] {
            assert!(parse_udp_header(bad).is_err(), "{bad:?}");
        }
        // A name too long to encode writes nothing.
        let mut v = Vec::new();
        assert!(encode_udp_header(&SocksAddr::domain("a".repeat(256), 1), &mut v).is_err());
        assert!(v.is_empty());
        let longest = SocksAddr::domain("a".repeat(255), 1);
        encode_udp_header(&longest, &mut v).unwrap();
        assert_eq!(v.len(), MAX_UDP_HEADER);
    }

    #[test]
    fn user_pass_messages() {
        let msg = encode_user_pass(b"alice", b"pw").unwrap();
        assert_eq!(msg, b"\x01\x05alice\x02pw");
        for cut in 0..msg.len() {
            assert_eq!(parse_user_pass(&msg[..cut]), Ok(None), "cut {cut}");
        }
        let mut more = msg.clone();
        more.push(5);
        let (up, used) = parse_user_pass(&more).unwrap().unwrap();
        assert_eq!(
            (up.username.as_slice(), up.password.as_slice(), used),
            (&b"alice"[..], &b"pw"[..], msg.len())
        );
        assert!(!format!("{up:?}").contains("pw"));
        assert!(parse_user_pass(&[5, 1, b'a', 0]).is_err());
        assert!(encode_user_pass(&[b'a'; 256], b"").is_err());
        assert_eq!(encode_auth_status(true), [1, 0]);
        assert_eq!(encode_auth_status(false), [1, 1]);
        assert_eq!(
            parse_greeting_methods(&[5, 2, 0, 2]),
            Ok(Some((vec![0, 2], 4)))
        );
        // Never panics on arbitrary bytes.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_user_pass(&data);
            let _ = parse_greeting_methods(&data);
            let _ = parse_request(&data);
        }
    }

    #[test]
    fn bind_ip_is_the_reached_address() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(udp_bind_ip(Some(lo), peer), lo);
        // A wildcard listener: the address routed to the client.
        assert_eq!(
            udp_bind_ip(Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), peer),
            lo
        );
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(
            udp_bind_ip(Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), mapped),
            lo
        );
        assert_eq!(udp_bind_ip(None, peer), lo);
    }

    #[test]
    fn drop_queue_is_bounded() {
        let q = DropQueue::default();
        let to: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..UDP_QUEUE_DATAGRAMS {
            assert!(q.push(to, vec![0; 10]));
        }
        assert!(!q.push(to, vec![0; 10]));
        let q = DropQueue::default();
        assert!(q.push(to, vec![0; UDP_QUEUE_BYTES - 1]));
        assert!(!q.push(to, vec![0; 2]));
        assert!(q.push(to, vec![0; 1]));
        let (_, d) = futures_lite::future::block_on(q.pop());
        assert_eq!(d.len(), UDP_QUEUE_BYTES - 1);
        assert!(q.push(to, vec![0; 1000]));
    }

    #[test]
    fn udp_associate_is_on_by_default() {
        let cfg = Socks5Config::default();
        assert!(cfg.udp_associate);
        assert_eq!(cfg.udp_idle_timeout, Duration::from_secs(300));
    }
}
