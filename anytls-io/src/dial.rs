//! How the client reaches its server: the dialer seam.
//!
//! By default the client connects TCP to `ClientConfig::server` with the
//! runtime (Nagle off). A [`Dialer`] replaces that: connect through another
//! proxy, from a bound interface or address, with socket options, over a Unix
//! socket, or through anything else that yields a byte stream. TLS and AnyTLS
//! run on top of whatever it returns.

use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_io::{AsyncRead, AsyncWrite};
use socket2::{Domain, Protocol, Socket, Type};

use crate::runtime::Runtime;

/// A connected byte stream under a client's TLS: anything `futures-io`
/// readable and writable (tokio streams: wrap them in `anytls_tokio::TokioIo`).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A boxed [`Transport`].
pub type BoxTransport = Box<dyn Transport>;

/// A dial in progress.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxTransport>> + Send>>;

/// Connects the client to its server. Implemented for every
/// `Fn(String) -> impl Future<Output = io::Result<impl Transport>>`, which
/// is called with `ClientConfig::server` (`host:port`).
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `server`. The client bounds the dial and the TLS
    /// handshake together with `ClientConfig::connect_timeout`.
    fn dial(&self, server: &str) -> DialFuture;
}

impl<F, Fut, S> Dialer for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: Transport,
{
    fn dial(&self, server: &str) -> DialFuture {
        let fut = self(server.to_owned());
        Box::pin(async move { Ok(Box::new(fut.await?) as BoxTransport) })
    }
}

/// Which addresses of the server's name the built-in dialer tries, in
/// which order (sing-box's `domain_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DomainStrategy {
    /// In the resolver's order.
    #[default]
    AsIs,
    /// IPv4 addresses first, then IPv6.
    PreferIpv4,
    /// IPv6 addresses first, then IPv4.
    PreferIpv6,
    /// IPv4 addresses only.
    Ipv4Only,
    /// IPv6 addresses only.
    Ipv6Only,
}

impl DomainStrategy {
    /// Orders (and filters) resolved addresses; an error when none is left.
    fn arrange(self, host: &str, mut addrs: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
        match self {
            DomainStrategy::AsIs => {}
            DomainStrategy::PreferIpv4 => addrs.sort_by_key(|a| a.is_ipv6()),
            DomainStrategy::PreferIpv6 => addrs.sort_by_key(|a| a.is_ipv4()),
            DomainStrategy::Ipv4Only => addrs.retain(|a| a.is_ipv4()),
            DomainStrategy::Ipv6Only => addrs.retain(|a| a.is_ipv6()),
        }
        if addrs.is_empty() {
            let family = match self {
                DomainStrategy::Ipv4Only => " IPv4",
                DomainStrategy::Ipv6Only => " IPv6",
                _ => "",
            };
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no{family} address"),
            ));
        }
        Ok(addrs)
    }
}

/// Socket options and address choice of the client's built-in dialer
/// (sing-box's dial fields). The default dials as the runtime does: the
/// first address of the name that answers, Nagle off, nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DialOptions {
    /// Bind the socket to this network interface (`SO_BINDTODEVICE`; Linux,
    /// usually needs `CAP_NET_RAW`).
    pub bind_interface: Option<String>,
    /// Local address for IPv4 connections.
    pub bind_address_v4: Option<Ipv4Addr>,
    /// Local address for IPv6 connections.
    pub bind_address_v6: Option<Ipv6Addr>,
    /// Firewall mark (`SO_MARK`; Linux, needs `CAP_NET_ADMIN`).
    pub routing_mark: Option<u32>,
    /// `SO_REUSEADDR` before binding a local address.
    pub reuse_addr: bool,
    /// TCP Fast Open on connect (`TCP_FASTOPEN_CONNECT`; Linux; the kernel
    /// falls back to a normal handshake without a cookie or support). With
    /// a cookie cached, connect returns before the handshake, so a dead
    /// address shows only at the first write: the other addresses of the
    /// name are then not tried.
    pub tcp_fast_open: bool,
    /// Multipath TCP (Linux 5.6+); plain TCP where the kernel has no MPTCP.
    pub tcp_multi_path: bool,
    /// Which addresses to try, in which order.
    pub domain_strategy: DomainStrategy,
    /// With addresses of both families: how long the first family gets
    /// before the other is tried alongside (RFC 8305 "Happy Eyeballs";
    /// default 300 ms; at once when the first family has failed). Used
    /// when any option here is set; with all defaults the runtime's own
    /// connect tries the addresses one after another.
    pub fallback_delay: Option<Duration>,
}

impl DialOptions {
    /// Whether these are the defaults (the runtime's own connect is used).
    pub fn is_default(&self) -> bool {
        *self == DialOptions::default()
    }
}

/// Default Happy Eyeballs delay (sing-box's and Go's).
const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// The built-in dialer: `server` (`host:port`) with `opts`.
pub(crate) async fn dial_tcp<R: Runtime>(server: &str, opts: &DialOptions) -> io::Result<R::Tcp> {
    if opts.is_default() {
        return R::connect(server).await;
    }
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let addrs = R::resolve(server).await?;
    let addrs = opts.domain_strategy.arrange(host, addrs)?;
    let first_v6 = addrs[0].is_ipv6();
    let (primary, secondary): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    if secondary.is_empty() {
        return connect_each::<R>(primary, opts).await;
    }
    let delay = opts.fallback_delay.unwrap_or(FALLBACK_DELAY);
    let mut first = Box::pin(connect_each::<R>(primary, opts));
    // The other family starts after the delay, or at once when the first
    // one has failed (RFC 8305).
    let mut timer = R::timer(Instant::now() + delay);
    let mut secondary = Some(secondary);
    let mut second = None;
    // The first success wins; an error waits for the other attempt.
    let mut failed: [Option<io::Error>; 2] = [None, None];
    poll_fn(|cx| {
        if failed[0].is_none() {
            if let Poll::Ready(r) = first.as_mut().poll(cx) {
                match r {
                    Ok(s) => return Poll::Ready(Ok(s)),
                    Err(e) => failed[0] = Some(e),
                }
            }
        }
        if second.is_none() && (failed[0].is_some() || Pin::new(&mut timer).poll(cx).is_ready()) {
            let addrs = secondary.take().unwrap_or_default();
            second = Some(Box::pin(connect_each::<R>(addrs, opts)));
        }
        if let (Some(fut), None) = (second.as_mut(), &failed[1]) {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                match r {
                    Ok(s) => return Poll::Ready(Ok(s)),
                    Err(e) => failed[1] = Some(e),
                }
            }
        }
        if failed.iter().all(Option::is_some) {
            let e = failed[0]
                .take()
                .unwrap_or_else(|| io::Error::other("no address"));
            return Poll::Ready(Err(e));
        }
        Poll::Pending
    })
    .await
}

/// Tries `addrs` one after another; the last error when all fail.
async fn connect_each<R: Runtime>(
    addrs: Vec<SocketAddr>,
    opts: &DialOptions,
) -> io::Result<R::Tcp> {
    let mut last = None;
    for addr in addrs {
        match connect_one::<R>(addr, opts).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(%addr, "connect failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address")))
}

/// One socket, its options, a non-blocking connect finished by the runtime.
async fn connect_one<R: Runtime>(addr: SocketAddr, opts: &DialOptions) -> io::Result<R::Tcp> {
    let sock = socket(addr, opts)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if connect_in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    R::finish_connect(sock.into()).await
}

fn connect_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

/// A non-blocking socket for `addr` with the options set.
fn socket(addr: SocketAddr, opts: &DialOptions) -> io::Result<Socket> {
    let domain = Domain::for_address(addr);
    let sock = if opts.tcp_multi_path {
        multipath_socket(domain)?
    } else {
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?
    };
    sock.set_nonblocking(true)?;
    if opts.reuse_addr {
        sock.set_reuse_address(true)?;
    }
    let option = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Some(iface) = &opts.bind_interface {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        sock.bind_device(Some(iface.as_bytes()))
            .map_err(|e| option(&format!("bind_interface {iface}"), e))?;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return Err(option(
            &format!("bind_interface {iface}"),
            io::Error::new(io::ErrorKind::Unsupported, "only on Linux"),
        ));
    }
    if let Some(mark) = opts.routing_mark {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        sock.set_mark(mark)
            .map_err(|e| option(&format!("routing_mark {mark:#x}"), e))?;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return Err(option(
            &format!("routing_mark {mark:#x}"),
            io::Error::new(io::ErrorKind::Unsupported, "only on Linux"),
        ));
    }
    let local = match addr {
        SocketAddr::V4(_) => opts.bind_address_v4.map(IpAddr::V4),
        SocketAddr::V6(_) => opts.bind_address_v6.map(IpAddr::V6),
    };
    if let Some(ip) = local {
        sock.bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| option(&format!("bind address {ip}"), e))?;
    }
    if opts.tcp_fast_open {
        #[cfg(target_os = "linux")]
        if let Err(e) = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::TcpFastOpenConnect,
            &true,
        ) {
            tracing::debug!("TCP Fast Open unavailable ({e}): a normal handshake");
        }
    }
    // Nagle is turned off by `finish_connect`.
    Ok(sock)
}

/// An MPTCP socket, or a TCP one where the kernel has no MPTCP (as Go does).
fn multipath_socket(domain: Domain) -> io::Result<Socket> {
    #[cfg(target_os = "linux")]
    match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
        Ok(s) => return Ok(s),
        Err(e) => tracing::debug!("MPTCP unavailable ({e}): plain TCP"),
    }
    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
}
