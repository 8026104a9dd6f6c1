//! AnyTLS client and server on [smol](https://docs.rs/smol) and rustls,
//! driving the sans-IO `anytls-core`.
//!
//! The same API as `anytls-tokio`, under the same names:
//!
//! * [`Client`]: a pool of AnyTLS sessions to one server;
//!   [`Client::connect`] returns an [`AnyTlsStream`]
//!   (`futures::io::AsyncRead + AsyncWrite`).
//! * [`Server`]: accepts TLS, authenticates, and hands each stream to a handler
//!   (by default [`relay_tcp`], which dials the destination and relays).
//! * [`socks5`]: a local SOCKS5 server in front of a [`Client`].
//! * [`proxy`]: the local mixed port (SOCKS5, SOCKS4/4a and HTTP) in front
//!   of a [`Client`].
//! * [`config`]: sing-box JSON options, Go durations and `anytls://` URIs.
//!
//! Tasks run on smol's global executor ([`smol::spawn`]), timers are
//! `async-io` timers and sockets are `smol::net` sockets; so a program only
//! needs to drive its own futures with [`smol::block_on`] (or any executor:
//! the spawned tasks make progress on smol's global executor threads).
//! That executor runs one thread unless `SMOL_THREADS` says otherwise: a busy
//! server should set it to the number of cores.
//!
//! ```no_run
//! use anytls_smol::{Client, ClientConfig, SocksAddr, Verification};
//! use futures_lite::{AsyncReadExt, AsyncWriteExt};
//!
//! # fn main() -> std::io::Result<()> {
//! smol::block_on(async {
//!     let mut cfg = ClientConfig::new("proxy.example.com:443", "password");
//!     cfg.verification = Verification::WebPki;
//!     let client = Client::new(cfg).map_err(std::io::Error::other)?;
//!     let mut stream = client.connect(SocksAddr::domain("example.com", 80)).await?;
//!     stream.write_all(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n").await?;
//!     let mut page = Vec::new();
//!     stream.read_to_end(&mut page).await?;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! The client and server are written once, for any runtime, in `anytls-io`;
//! this crate supplies smol ([`Smol`]) and names the types for it. All
//! protocol logic lives in `anytls-core`.

#![warn(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

#[cfg(feature = "acme")]
pub use anytls_io::acme;
#[cfg(feature = "config")]
pub use anytls_io::config;
pub use anytls_io::core;
pub use anytls_io::{
    AnyTlsStream, AnyTlsUdp, AnyTlsUdpReceiver, AnyTlsUdpSender, BoxTransport, ClientConfig,
    ClientError, DialFuture, DialOptions, Dialer, DomainStrategy, Host, Identity, IoBudget,
    PoolConfig, PoolStats, ReloadHandle, ServerConfig, ServerTls, ShutdownHandle, SocksAddr,
    StatsHandle, StatsSnapshot, TlsError, TlsOptions, TlsVersion, Transport, UdpConfig, UotEnd,
    UotReport, UotStats, UserStats, Verification, relay, relay_stream, relay_stream_with,
    relay_tcp_with, relay_uot, stats, tls,
};

/// The smol runtime, for `anytls-io`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

/// An `async-io` timer resolving to `()`.
#[derive(Debug)]
pub struct SmolTimer(smol::Timer);

impl Future for SmolTimer {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl anytls_io::Runtime for Smol {
    type Tcp = smol::net::TcpStream;
    type Listener = smol::net::TcpListener;
    type Timer = SmolTimer;

    fn spawn<F>(fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(fut).detach();
    }

    fn timer(deadline: Instant) -> Self::Timer {
        SmolTimer(smol::Timer::at(deadline))
    }

    fn reset_timer(timer: &mut Self::Timer, deadline: Instant) {
        timer.0.set_at(deadline);
    }

    async fn connect(addr: &str) -> io::Result<Self::Tcp> {
        let tcp = smol::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn finish_connect(stream: std::net::TcpStream) -> io::Result<Self::Tcp> {
        let tcp = smol::Async::new(stream)?;
        tcp.writable().await?;
        if let Some(e) = tcp.get_ref().take_error()? {
            return Err(e);
        }
        tcp.get_ref().peer_addr()?;
        let tcp = smol::net::TcpStream::from(tcp);
        // Not fatal: MPTCP sockets of older kernels (before 5.17) refuse it.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn bind(addr: SocketAddr) -> io::Result<Self::Listener> {
        // std's listen backlog is 128; a server taking bursts of connections
        // wants tokio's 1024.
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        smol::net::TcpListener::try_from(std::net::TcpListener::from(socket))
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Tcp, SocketAddr)> {
        let (tcp, peer) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        Ok((tcp, peer))
    }

    fn listener_from_std(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        smol::net::TcpListener::try_from(listener)
    }

    fn local_addr(listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    type Udp = smol::net::UdpSocket;

    async fn bind_udp(addr: SocketAddr) -> io::Result<Self::Udp> {
        smol::net::UdpSocket::bind(addr).await
    }

    fn send_to<'a>(
        socket: &'a Self::Udp,
        datagram: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        socket.send_to(datagram, to)
    }

    fn recv_from<'a>(
        socket: &'a Self::Udp,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        socket.recv_from(buf)
    }

    fn udp_local_addr(socket: &Self::Udp) -> io::Result<SocketAddr> {
        socket.local_addr()
    }

    async fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
        smol::net::resolve(addr).await
    }
}

/// An AnyTLS client on smol. See [`anytls_io::Client`].
pub type Client = anytls_io::Client<Smol>;
/// An AnyTLS server on smol. See [`anytls_io::Server`].
pub type Server = anytls_io::Server<Smol>;
/// A new stream on a smol server. See [`anytls_io::IncomingStream`].
pub type IncomingStream = anytls_io::IncomingStream<Smol>;

/// The built-in handler: dial the destination over TCP and relay both ways.
pub async fn relay_tcp(req: IncomingStream, connect_timeout: std::time::Duration) {
    anytls_io::relay_tcp(req, connect_timeout).await
}

pub mod socks5 {
    //! A local SOCKS5 server in front of a [`Client`](crate::Client); see
    //! [`anytls_io::socks5`].
    pub use anytls_io::socks5::*;

    use anytls_io::SocksAddr;
    use smol::net::{AsyncToSocketAddrs, TcpStream};

    /// Connects to `dest` through the SOCKS5 proxy at `proxy`.
    pub async fn socks5_connect(
        proxy: impl AsyncToSocketAddrs,
        dest: impl Into<SocksAddr>,
    ) -> Result<TcpStream, Socks5Error> {
        let mut tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        connect_handshake(&mut tcp, &dest.into()).await?;
        Ok(tcp)
    }

    /// [`socks5_connect`] with username/password authentication (RFC 1929)
    /// when `auth` is `Some((username, password))`.
    pub async fn socks5_connect_with(
        proxy: impl AsyncToSocketAddrs,
        dest: impl Into<SocksAddr>,
        auth: Option<(&str, &str)>,
    ) -> Result<TcpStream, Socks5Error> {
        let mut tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        connect_handshake_with(&mut tcp, &dest.into(), auth).await?;
        Ok(tcp)
    }
}

pub mod proxy {
    //! The local mixed proxy port (SOCKS5, SOCKS4/4a, HTTP) in front of a
    //! [`Client`](crate::Client); see [`anytls_io::proxy`].
    pub use anytls_io::proxy::*;

    /// Serves the protocols of `cfg` on `listener`, every destination
    /// through `client`; see [`anytls_io::proxy::serve_proxy`].
    pub async fn serve_proxy(
        listener: smol::net::TcpListener,
        client: crate::Client,
        cfg: ProxyConfig,
    ) -> std::io::Result<()> {
        anytls_io::proxy::serve_proxy::<crate::Smol>(listener, client, cfg).await
    }
}
