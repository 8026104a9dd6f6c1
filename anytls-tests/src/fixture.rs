//! Our server on runtime `S` and a client on runtime `C` pinned to it, on
//! 127.0.0.1, plus SOCKS5 and mixed-port listeners in front of the client.

use std::future::Future;
use std::net::SocketAddr;

use anytls_io::acme::Acme;
use anytls_io::proxy::{ProxyConfig, serve_proxy};
use anytls_io::socks5::Socks5Config;
use anytls_io::{
    Client, ClientConfig, Identity, ReloadHandle, Server, ServerConfig, ServerTls, ShutdownHandle,
    Verification,
};

use crate::TestRuntime;
use crate::targets::sleep;

/// A client and the server it is pinned to; closes the client and shuts the
/// server down when dropped.
pub struct Pair<C: TestRuntime> {
    /// Our client, on runtime `C`.
    pub client: Client<C>,
    /// The server's shutdown handle.
    pub stop: ShutdownHandle,
}

impl<C: TestRuntime> Drop for Pair<C> {
    fn drop(&mut self) {
        self.client.close();
        self.stop.shutdown();
    }
}

/// A [`Pair`] whose server (password `password`, self-signed for
/// `localhost`) runs `serve(server)` on runtime `S`.
pub async fn pair_serving<C, S, F, Fut>(password: &str, serve: F) -> Pair<C>
where
    C: TestRuntime,
    S: TestRuntime,
    F: FnOnce(Server<S>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let server = Server::<S>::bind("127.0.0.1:0", ServerConfig::new(password, id))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    S::spawn(serve(server));
    let mut cfg = ClientConfig::new(addr.to_string(), password);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    let client = Client::<C>::new(cfg).unwrap();
    Pair { client, stop }
}

/// A [`Pair`] with the server's default relay.
pub async fn pair<C: TestRuntime, S: TestRuntime>(password: &str) -> Pair<C> {
    pair_serving::<C, S, _, _>(password, |server| async move {
        let _ = server.serve().await;
    })
    .await
}

/// A SOCKS5 listener on runtime `C` in front of `client` (what
/// `serve_socks5_with` serves: [`proxy`] with SOCKS only).
pub async fn socks5<C: TestRuntime>(client: &Client<C>, cfg: Socks5Config) -> SocketAddr {
    proxy(client, ProxyConfig::from(cfg)).await
}

/// A mixed-port listener ([`serve_proxy`]) on runtime `C` in front of
/// `client`.
pub async fn proxy<C: TestRuntime>(client: &Client<C>, cfg: ProxyConfig) -> SocketAddr {
    let l = C::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = C::local_addr(&l).unwrap();
    let c = client.clone();
    C::spawn(async move {
        let _ = serve_proxy(l, c, cfg).await;
    });
    addr
}

/// A server on `R` (password `password`) with `acme`'s certificate, on a
/// std listener bound by the caller; not serving yet.
pub fn acme_server<R: TestRuntime>(
    listener: std::net::TcpListener,
    password: &str,
    acme: &Acme,
) -> Server<R> {
    listener.set_nonblocking(true).unwrap();
    Server::<R>::from_std(
        listener,
        ServerConfig::with_tls(password, ServerTls::Acme(acme.clone())),
    )
    .unwrap()
}

/// [`acme_server`], serving on `R`; its shutdown and reload handles.
pub fn serve_acme<R: TestRuntime>(
    listener: std::net::TcpListener,
    password: &str,
    acme: &Acme,
) -> (ShutdownHandle, ReloadHandle) {
    let server = acme_server::<R>(listener, password, acme);
    let handles = (server.shutdown_handle(), server.reload_handle());
    R::spawn(async move {
        let _ = server.serve().await;
    });
    handles
}

/// Whether `acme` has obtained `n` certificates within `limit`.
pub async fn acme_issued<R: TestRuntime>(
    acme: &Acme,
    n: u64,
    limit: std::time::Duration,
) -> Option<()> {
    anytls_io::timeout::<R, _>(limit, async {
        while acme.status().issued < n {
            sleep::<R>(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
}
