//! How the client reaches its server: the dialer seam.
//!
//! By default the client connects TCP to `ClientConfig::server` with the
//! runtime (Nagle off). A [`Dialer`] replaces that: connect through another
//! proxy, from a bound interface or address, with socket options, over a Unix
//! socket, or through anything else that yields a byte stream. TLS and AnyTLS
//! run on top of whatever it returns.

use std::future::Future;
use std::io;
use std::pin::Pin;

use futures_io::{AsyncRead, AsyncWrite};

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
