//! AnyTLS client and server on tokio and rustls, driving the sans-IO
//! `anytls-core`.
//!
//! * [`Client`]: a pool of AnyTLS sessions to one server;
//!   [`Client::connect`] returns an [`AnyTlsStream`] (tokio's and futures'
//!   `AsyncRead + AsyncWrite`).
//! * [`Server`]: accepts TLS, authenticates, and hands each stream to a handler
//!   (by default [`relay_tcp`], which dials the destination and relays).
//! * [`socks5`]: a local SOCKS5 server in front of a [`Client`] (and a SOCKS5
//!   client helper).
//! * [`proxy`]: the local mixed port (SOCKS5, SOCKS4/4a and HTTP) in front
//!   of a [`Client`].
//! * [`config`]: sing-box JSON and mihomo YAML options, Go durations and `anytls://` URIs,
//!   converted to [`ClientConfig`] / [`ServerConfig`].
//!
//! The `anytls` program (`src/bin/anytls.rs`) puts these together.
//!
//! The client and server are written once, for any runtime, in `anytls-io`;
//! this crate supplies tokio ([`Tokio`]) and names the types for it.
//! `anytls-smol` does the same for smol, with the same names. All protocol
//! logic lives in `anytls-core`.
//!
//! # Use it as a library
//!
//! Without default features (`default-features = false`) this crate has no
//! command-line, config-file or certificate-generation dependencies; `config`
//! and `self-signed` turn those parts on. Your TLS settings, your sockets and
//! your routing plug in as below (each example runs against a local server).
//!
//! ## A client with your own `rustls::ClientConfig`
//!
//! ```
//! # use std::sync::Arc;
//! # use anytls_tokio::{Client, ClientConfig, Identity, Server, ServerConfig, SocksAddr};
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let identity = Identity::self_signed(&["localhost".into()])?;
//! # let ca = identity.certs[0].clone();
//! # let server = Server::bind("127.0.0.1:0", ServerConfig::new("password", identity)).await?;
//! # let server_addr = server.local_addr()?;
//! # tokio::spawn(server.serve());
//! # let echo = echo_target().await?;
//! // Your roots (here: the server's self-signed certificate), client
//! // certificates, ALPN, key log...
//! let mut roots = rustls::RootCertStore::empty();
//! roots.add(ca)?;
//! let tls = rustls::ClientConfig::builder()
//!     .with_root_certificates(roots)
//!     .with_no_client_auth();
//!
//! let mut cfg = ClientConfig::new(server_addr.to_string(), "password");
//! cfg.sni = Some("localhost".into());
//! cfg.tls_config = Some(Arc::new(tls));
//! let client = Client::new(cfg)?;
//!
//! let mut stream = client.connect(SocksAddr::from(echo)).await?;
//! stream.write_all(b"hello").await?;
//! let mut back = [0u8; 5];
//! stream.read_exact(&mut back).await?;
//! assert_eq!(&back, b"hello");
//! # Ok(())
//! # }
//! # async fn echo_target() -> std::io::Result<std::net::SocketAddr> {
//! #     let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! #     let addr = l.local_addr()?;
//! #     tokio::spawn(async move {
//! #         while let Ok((mut s, _)) = l.accept().await {
//! #             tokio::spawn(async move {
//! #                 let (mut r, mut w) = s.split();
//! #                 let _ = tokio::io::copy(&mut r, &mut w).await;
//! #             });
//! #         }
//! #     });
//! #     Ok(addr)
//! # }
//! ```
//!
//! ## A server that routes some destinations itself and relays the rest
//!
//! ```
//! # use std::time::Duration;
//! # use anytls_tokio::{
//! #     Client, ClientConfig, Host, Identity, IncomingStream, Server, ServerConfig, SocksAddr,
//! #     TokioIo, Verification,
//! # };
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let identity = Identity::self_signed(&["localhost".into()])?;
//! # let pin = identity.leaf_sha256().unwrap();
//! /// `status.internal` is answered here; everything else is dialled and
//! /// relayed (the user and the client's address are known for every stream).
//! async fn route(req: IncomingStream) {
//!     let internal = matches!(&req.destination().host, Host::Domain(d) if d == "status.internal");
//!     if !internal {
//!         return anytls_tokio::relay_tcp(req, Duration::from_secs(10)).await;
//!     }
//!     let greeting = format!("hello {} from {}\n", req.user(), req.peer_addr().ip());
//!     let mut stream = req.accept();
//!     let _ = stream.write_all(greeting.as_bytes()).await;
//! }
//!
//! let server = Server::bind("127.0.0.1:0", ServerConfig::new("password", identity)).await?;
//! let addr = server.local_addr()?;
//! tokio::spawn(server.serve_with(Duration::from_secs(5), route));
//! # let mut cfg = ClientConfig::new(addr.to_string(), "password");
//! # cfg.verification = Verification::Pin(pin);
//! # let client = Client::new(cfg)?;
//!
//! // A client asking for the internal destination gets the handler's answer.
//! let mut stream = client.connect(SocksAddr::domain("status.internal", 80)).await?;
//! let mut answer = String::new();
//! stream.read_to_string(&mut answer).await?;
//! assert_eq!(answer, "hello default from 127.0.0.1\n");
//!
//! // Anything else is relayed: here to a local TCP listener.
//! let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let mut stream = client.connect(SocksAddr::from(target.local_addr()?)).await?;
//! stream.write_all(b"ping").await?;
//! let (mut accepted, _) = target.accept().await?;
//! let mut got = [0u8; 4];
//! accepted.read_exact(&mut got).await?;
//! assert_eq!(&got, b"ping");
//! # let _ = TokioIo(());
//! # Ok(())
//! # }
//! ```
//!
//! Custom handlers reuse the built-in relays: [`relay_stream`] copies between
//! an accepted stream and any byte stream (wrap tokio ones in [`TokioIo`]),
//! [`relay_tcp`] dials and relays, [`relay_uot`] serves UDP over TCP.
//!
//! ## A client that dials through your own path
//!
//! A [`Dialer`] (any `Fn(String) -> impl Future<Output = io::Result<_>>`)
//! replaces the TCP connect to the server: another proxy, a bound interface or
//! address, socket options, a Unix socket.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use anytls_tokio::{Client, ClientConfig, Identity, Server, ServerConfig, SocksAddr, TokioIo, Verification};
//! # use tokio::io::AsyncWriteExt;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let identity = Identity::self_signed(&["localhost".into()])?;
//! # let pin = identity.leaf_sha256().unwrap();
//! # let server = Server::bind("127.0.0.1:0", ServerConfig::new("password", identity)).await?;
//! # let server_addr = server.local_addr()?;
//! # tokio::spawn(server.serve());
//! # let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let dials = Arc::new(AtomicUsize::new(0));
//! let counter = dials.clone();
//! let mut cfg = ClientConfig::new(server_addr.to_string(), "password");
//! # cfg.verification = Verification::Pin(pin);
//! cfg.dialer = Some(Arc::new(move |server: String| {
//!     counter.fetch_add(1, Ordering::Relaxed);
//!     async move {
//!         // Your path: a socket bound to a source address, options, a proxy...
//!         let socket = tokio::net::TcpSocket::new_v4()?;
//!         socket.bind("127.0.0.1:0".parse().unwrap())?;
//!         let tcp = socket.connect(server.parse().unwrap()).await?;
//!         tcp.set_nodelay(true)?;
//!         Ok(TokioIo(tcp))
//!     }
//! }));
//! let client = Client::new(cfg)?;
//! let mut stream = client.connect(SocksAddr::from(target.local_addr()?)).await?;
//! stream.write_all(b"through my own socket").await?;
//! assert_eq!(dials.load(Ordering::Relaxed), 1);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
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

mod per_core;
pub use per_core::ThreadPerCore;

/// The tokio runtime, for `anytls-io`. Accepted connections run where
/// [`ThreadPerCore`] puts them when the accepting thread belongs to one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokio;

impl anytls_io::Runtime for Tokio {
    type Tcp = TokioTcp;
    type Listener = tokio::net::TcpListener;
    type Timer = Pin<Box<tokio::time::Sleep>>;

    fn spawn<F>(fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(fut);
    }

    fn spawn_connection<S, F>(tcp: Self::Tcp, near: Option<usize>, serve: S)
    where
        S: FnOnce(Self::Tcp) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        per_core::spawn_connection(tcp, near, serve)
    }

    fn executor() -> Option<usize> {
        per_core::executor()
    }

    fn spawn_balanced<F>(fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        per_core::spawn_balanced(fut)
    }

    fn timer(deadline: Instant) -> Self::Timer {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn reset_timer(timer: &mut Self::Timer, deadline: Instant) {
        timer.as_mut().reset(deadline.into());
    }

    async fn connect(addr: &str) -> io::Result<Self::Tcp> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(TokioIo(tcp))
    }

    async fn finish_connect(stream: std::net::TcpStream) -> io::Result<Self::Tcp> {
        let tcp = tokio::net::TcpStream::from_std(stream)?;
        tcp.writable().await?;
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
        // Writable without an error can still be a refused connect on some
        // systems: the peer address tells.
        tcp.peer_addr()?;
        // Not fatal: MPTCP sockets of older kernels (before 5.17) refuse it.
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo(tcp))
    }

    async fn bind(addr: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Tcp, SocketAddr)> {
        let (tcp, peer) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        Ok((TokioIo(tcp), peer))
    }

    fn listener_from_std(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    fn local_addr(listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    type Udp = tokio::net::UdpSocket;

    async fn bind_udp(addr: SocketAddr) -> io::Result<Self::Udp> {
        tokio::net::UdpSocket::bind(addr).await
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
        Ok(tokio::net::lookup_host(addr).await?.collect())
    }
}

/// A tokio byte stream (a `TcpStream`, a `UnixStream`, a stream from your
/// own proxy chain...) as a `futures-io` one, with vectored writes (a relay
/// hands several queued chunks to one `writev`; tokio-util's `Compat` would
/// write them one syscall each). Return one from a client's
/// [`Dialer`].
#[derive(Debug)]
pub struct TokioIo<T>(pub T);

/// A tokio TCP socket as a `futures-io` byte stream.
pub type TokioTcp = TokioIo<tokio::net::TcpStream>;

impl<T> TokioIo<T> {
    /// The tokio stream.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: tokio::io::AsyncRead + Unpin> futures_io::AsyncRead for TokioIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        std::task::ready!(tokio::io::AsyncRead::poll_read(
            Pin::new(&mut self.get_mut().0),
            cx,
            &mut rb
        ))?;
        std::task::Poll::Ready(Ok(rb.filled().len()))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> futures_io::AsyncWrite for TokioIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write_vectored(Pin::new(&mut self.get_mut().0), cx, bufs)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_close(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().0), cx)
    }
}

/// The runtime the `anytls` program runs on: `threads` threads (one per
/// core when `None`), shared as `mode` says; I/O and timers enabled. One
/// thread is a current-thread runtime in either mode.
pub fn runtime(threads: Option<usize>, mode: RuntimeMode) -> io::Result<AppRuntime> {
    Ok(match (mode, threads) {
        (RuntimeMode::PerCore, _) => {
            let n = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            AppRuntime::PerCore(ThreadPerCore::new(n)?)
        }
        (RuntimeMode::WorkStealing, Some(1)) => AppRuntime::WorkStealing(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        ),
        (RuntimeMode::WorkStealing, n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                b.worker_threads(n.max(1));
            }
            AppRuntime::WorkStealing(b.enable_all().build()?)
        }
    })
}

/// How a program's connections share its threads (see [`runtime`]). The
/// `anytls` program runs `server` per core and `client` and `demo` on the
/// work-stealing pool unless told otherwise (`--runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum RuntimeMode {
    /// Every accepted connection (with its session and its streams) stays on
    /// one single-threaded runtime ([`ThreadPerCore`]): no cross-thread
    /// wakeups, the cheapest per byte for a server. A client's local
    /// connections start where the session they will get is driven, and its
    /// sessions where the connection that asked for them runs.
    PerCore,
    /// tokio's shared work-stealing pool: one connection's tasks may run on
    /// any thread.
    WorkStealing,
}

/// A [`ThreadPerCore`] or a tokio runtime, as [`runtime`] made it.
#[derive(Debug)]
pub enum AppRuntime {
    /// Connections pinned to threads.
    PerCore(ThreadPerCore),
    /// A tokio runtime (current-thread for one thread, else work-stealing).
    WorkStealing(tokio::runtime::Runtime),
}

impl AppRuntime {
    /// Runs `fut` to completion on the calling thread.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        match self {
            AppRuntime::PerCore(rt) => rt.block_on(fut),
            AppRuntime::WorkStealing(rt) => rt.block_on(fut),
        }
    }

    /// Stops the runtime, waiting at most `grace` for the tasks it drops.
    pub fn shutdown_timeout(self, grace: std::time::Duration) {
        match self {
            AppRuntime::PerCore(rt) => rt.shutdown_timeout(grace),
            AppRuntime::WorkStealing(rt) => rt.shutdown_timeout(grace),
        }
    }
}

/// An AnyTLS client on tokio. See [`anytls_io::Client`].
pub type Client = anytls_io::Client<Tokio>;
/// An AnyTLS server on tokio. See [`anytls_io::Server`].
pub type Server = anytls_io::Server<Tokio>;
/// A new stream on a tokio server. See [`anytls_io::IncomingStream`].
pub type IncomingStream = anytls_io::IncomingStream<Tokio>;

/// The built-in handler: dial the destination over TCP and relay both ways.
pub async fn relay_tcp(req: IncomingStream, connect_timeout: std::time::Duration) {
    anytls_io::relay_tcp(req, connect_timeout).await
}

pub mod socks5 {
    //! A local SOCKS5 server in front of a [`Client`](crate::Client); see
    //! [`anytls_io::socks5`].
    pub use anytls_io::socks5::*;

    use anytls_io::SocksAddr;
    use tokio::net::{TcpStream, ToSocketAddrs};

    use crate::TokioIo;

    /// Connects to `dest` through the SOCKS5 proxy at `proxy`.
    pub async fn socks5_connect(
        proxy: impl ToSocketAddrs,
        dest: impl Into<SocksAddr>,
    ) -> Result<TcpStream, Socks5Error> {
        let mut tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        connect_handshake(&mut TokioIo(&mut tcp), &dest.into()).await?;
        Ok(tcp)
    }

    /// [`socks5_connect`] with username/password authentication (RFC 1929)
    /// when `auth` is `Some((username, password))`.
    pub async fn socks5_connect_with(
        proxy: impl ToSocketAddrs,
        dest: impl Into<SocksAddr>,
        auth: Option<(&str, &str)>,
    ) -> Result<TcpStream, Socks5Error> {
        let mut tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        connect_handshake_with(&mut TokioIo(&mut tcp), &dest.into(), auth).await?;
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
        listener: tokio::net::TcpListener,
        client: crate::Client,
        cfg: ProxyConfig,
    ) -> std::io::Result<()> {
        anytls_io::proxy::serve_proxy::<crate::Tokio>(listener, client, cfg).await
    }
}
