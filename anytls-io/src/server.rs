//! The AnyTLS server: TLS accept, authentication, streams handed to a handler,
//! fallback for failed authentication, graceful shutdown, reload.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anytls_core::{
    Authenticator, Event, PaddingScheme, PasswordHash, SessionLimits, SocksAddr, StreamId,
};
use futures_lite::AsyncWriteExt;

use crate::beside::{Companions, adopt_or_spawn, run_beside};
use crate::budget::IoBudget;
use crate::conn::{AnyTlsStream, Conn, DriveEnd, drive};
use crate::relay::{relay, relay_stream_with};
use crate::runtime::{Runtime, Switch, lock, sleep_until, timeout};
use crate::stats::{StatsHandle, StatsSnapshot, StreamGuard, UserCounters};
use crate::tls::{Identity, ServerTls, TlsError, TlsOptions};
use crate::tls_io::{Tls, TlsIo};
use crate::uot::{UdpConfig, relay_uot};

/// Server settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Users: name and password.
    pub users: Vec<(String, String)>,
    /// The certificate (one identity, a resolver, or your whole rustls
    /// configuration).
    pub tls: ServerTls,
    /// ALPN protocols to accept (not applied to [`ServerTls::Rustls`]).
    pub alpn: Vec<String>,
    /// TLS versions and cipher suites (not applied to [`ServerTls::Rustls`]).
    pub tls_options: TlsOptions,
    /// The padding scheme clients are told to use.
    pub padding: PaddingScheme,
    /// Where connections that fail authentication go (with every byte they
    /// sent), e.g. a local web server. `None`: close them.
    pub fallback: Option<SocketAddr>,
    /// TLS handshake time limit.
    pub tls_handshake_timeout: Duration,
    /// Preamble plus client Settings time limit, after TLS.
    pub handshake_timeout: Duration,
    /// Outbound connect time limit of the built-in relay.
    pub connect_timeout: Duration,
    /// Connections served at once, from accept to close (TLS handshakes and
    /// fallbacks included). Connections beyond it are closed at accept.
    pub max_connections: usize,
    /// Per-session buffer caps.
    pub limits: SessionLimits,
    /// UDP over TCP (streams to `sp.v2.udp-over-tcp.arpa` and the legacy
    /// `sp.udp-over-tcp.arpa`) in the built-in relay.
    pub udp: UdpConfig,
    /// Large-I/O slots of the server's TLS connections and relays (default:
    /// shared by the whole process; see [`IoBudget`]).
    pub io_budget: IoBudget,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field(
                "users",
                &self.users.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("tls", &self.tls)
            .field("padding", &self.padding)
            .field("fallback", &self.fallback)
            .field("udp", &self.udp)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults: one user `default`, default padding scheme, no fallback.
    pub fn new(password: impl Into<String>, identity: Identity) -> ServerConfig {
        ServerConfig::with_tls(password, ServerTls::Identity(identity))
    }

    /// Like [`new`](Self::new), with the TLS configuration given otherwise:
    /// a certificate resolver (SNI, ACME) or a whole `rustls::ServerConfig`.
    pub fn with_tls(password: impl Into<String>, tls: impl Into<ServerTls>) -> ServerConfig {
        ServerConfig {
            users: vec![("default".into(), password.into())],
            tls: tls.into(),
            alpn: Vec::new(),
            tls_options: TlsOptions::default(),
            padding: PaddingScheme::default_scheme(),
            fallback: None,
            tls_handshake_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            limits: SessionLimits::default(),
            udp: UdpConfig::default(),
            io_budget: IoBudget::default(),
        }
    }
}

/// A new stream and its destination, waiting for the handler's verdict.
/// Dropping it without a verdict refuses the stream.
pub struct IncomingStream<R> {
    conn: Arc<Conn>,
    id: StreamId,
    dest: SocksAddr,
    user: Arc<str>,
    peer: SocketAddr,
    budget: IoBudget,
    decided: bool,
    /// The stream in its user's counters (handed to the accepted stream).
    account: Option<StreamGuard>,
    _runtime: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for IncomingStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id.0)
            .field("dest", &self.dest)
            .field("user", &self.user)
            .field("peer", &self.peer)
            .finish()
    }
}

impl<R> IncomingStream<R> {
    /// Where the client wants to go.
    pub fn destination(&self) -> &SocksAddr {
        &self.dest
    }

    /// The authenticated user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's address (the TCP peer of the session).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Accepts the stream (SYNACK success for v2 clients).
    pub fn accept(mut self) -> AnyTlsStream {
        self.decided = true;
        let mut g = self.conn.lock();
        let _ = g.session.accept_stream(self.id, Ok(()));
        g.kick();
        drop(g);
        AnyTlsStream::new(self.conn.clone(), self.id, self.account.take())
    }

    /// Refuses the stream with a message (SYNACK error for v2 clients, then FIN).
    pub fn reject(mut self, message: &str) {
        self.decided = true;
        self.refuse(message);
    }

    fn refuse(&self, message: &str) {
        let mut g = self.conn.lock();
        let _ = g.session.accept_stream(self.id, Err(message.to_owned()));
        g.kick();
    }
}

impl<R> Drop for IncomingStream<R> {
    fn drop(&mut self) {
        if !self.decided {
            self.refuse("refused");
        }
    }
}

/// The built-in handler: dial the destination over TCP and relay both ways;
/// UDP-over-TCP streams are relayed by [`relay_uot`] with the default
/// [`UdpConfig`] (see [`relay_tcp_with`]).
pub async fn relay_tcp<R: Runtime>(req: IncomingStream<R>, connect_timeout: Duration) {
    relay_tcp_with(req, connect_timeout, UdpConfig::default()).await
}

/// The built-in handler with UDP-over-TCP settings: a UoT destination
/// (`sp.v2.udp-over-tcp.arpa`, legacy `sp.udp-over-tcp.arpa`) is accepted at
/// once and relayed by [`relay_uot`] (refused if `udp.enabled` is off); any
/// other is dialled over TCP and relayed both ways.
pub async fn relay_tcp_with<R: Runtime>(
    req: IncomingStream<R>,
    connect_timeout: Duration,
    udp: UdpConfig,
) {
    if let Some(version) = anytls_core::uot::uot_version(req.destination()) {
        if !udp.enabled {
            req.reject("UDP over TCP is disabled");
            return;
        }
        let stream = req.accept();
        let id = stream.id().0;
        let report = relay_uot::<R>(stream, version, &udp).await;
        tracing::debug!(stream = id, ?version, stats = ?report.stats, "UoT stream ended: {:?}", report.end);
        return;
    }
    let dest = req.destination().clone();
    let target = match &dest.host {
        anytls_core::Host::Domain(d) => format!("{d}:{}", dest.port),
        _ => dest.to_string(),
    };
    let dialed = timeout::<R, _>(connect_timeout, R::connect(&target)).await;
    let mut tcp = match dialed {
        Some(Ok(tcp)) => tcp,
        Some(Err(e)) => {
            tracing::debug!("dial tcp {target}: {e}");
            req.reject(&format!("dial tcp {target}: {e}"));
            return;
        }
        None => {
            req.reject(&format!("dial tcp {target}: i/o timeout"));
            return;
        }
    };
    let budget = req.budget.clone();
    let mut stream = req.accept();
    let _ = relay_stream_with(&mut stream, &mut tcp, &budget).await;
}

/// What a connection is served with: taken once at accept, so every
/// connection sees either the configuration before a reload or the one
/// after, never a mix.
struct Live {
    tls: Arc<rustls::ServerConfig>,
    core: Arc<anytls_core::ServerConfig>,
    fallback: Option<SocketAddr>,
    tls_handshake_timeout: Duration,
    /// Each user's password hash, to tell on reload whose credentials went.
    passwords: HashMap<String, PasswordHash>,
    /// The ACME manager of the certificate, whose TLS-ALPN-01 challenges
    /// are answered on this port.
    #[cfg(feature = "acme")]
    acme: Option<crate::acme::Acme>,
}

impl Live {
    /// Validates `cfg` and builds what connections need from it.
    fn build(cfg: &ServerConfig) -> io::Result<Live> {
        let tls = cfg
            .tls
            .build_with(&cfg.alpn, &cfg.tls_options)
            .map_err(io::Error::other)?;
        let mut users = Authenticator::default();
        let mut passwords = HashMap::new();
        for (name, pw) in &cfg.users {
            let hash = PasswordHash::of(pw);
            users.add_user(name.clone(), hash.clone());
            passwords.insert(name.clone(), hash);
        }
        let mut core = anytls_core::ServerConfig::new(users);
        core.padding = Arc::new(cfg.padding.clone());
        core.handshake_timeout = cfg.handshake_timeout;
        // rustls hands over whole records: decide as the Go servers do.
        core.decide_on_first_input = true;
        core.limits = cfg.limits.clone();
        core.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if let Err(e) = cfg.padding.validate_strict() {
            tracing::warn!("padding scheme fails the strict rules of newer clients: {e}");
        }
        Ok(Live {
            tls,
            core: Arc::new(core),
            fallback: cfg.fallback,
            tls_handshake_timeout: cfg.tls_handshake_timeout,
            passwords,
            #[cfg(feature = "acme")]
            acme: match &cfg.tls {
                ServerTls::Acme(a) => Some(a.clone()),
                _ => None,
            },
        })
    }

    /// Whether `user`, authenticated under `old`, may stay under `self`:
    /// the same name with the same password.
    fn keeps(&self, old: &Live, user: &str) -> bool {
        match (old.passwords.get(user), self.passwords.get(user)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// A live connection and the configuration it was accepted with.
type Entry = (Weak<Conn>, Arc<Live>);

/// The state [`Server`], [`ReloadHandle`] and the connections share.
struct State {
    /// The configuration new connections get (one `Arc` swapped by reload).
    live: Mutex<Arc<Live>>,
    /// Every connection past its TLS handshake, for shutdown and reload.
    conns: Mutex<Vec<Entry>>,
    stats: StatsHandle,
    /// Starts an ACME manager on the server's runtime while `serve_with`
    /// runs (a reload may bring a new manager). Locked after `live`.
    #[cfg(feature = "acme")]
    start_acme: Mutex<Option<fn(&crate::acme::Acme)>>,
}

impl State {
    fn current(&self) -> Arc<Live> {
        lock(&self.live).clone()
    }

    /// After a reload: a new ACME manager starts (if the server serves), the
    /// one no longer used stops.
    #[cfg(feature = "acme")]
    fn switch_acme(&self, old: &Live, new: &Live) {
        let same = match (&old.acme, &new.acme) {
            (Some(a), Some(b)) => a.ptr_eq(b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        // Only while serving (`start_acme` set): the old manager's use ends
        // first, so that a port its order holds (HTTP-01) is free for the
        // new one.
        let Some(start) = *lock(&self.start_acme) else {
            return;
        };
        if let Some(a) = &old.acme {
            a.release();
        }
        if let Some(a) = &new.acme {
            start(a);
        }
    }
}

/// The name of the user `conn`'s session authenticated as, if it did.
fn session_user(conn: &Conn, live: &Live) -> Option<String> {
    let id = conn.lock().session.user()?;
    live.core.users.user_name(id).map(str::to_owned)
}

/// Reloads a server's configuration while it runs; obtained from
/// [`Server::reload_handle`] (cheap to clone, usable from any thread).
///
/// What a reload changes, for connections accepted after it: users and
/// passwords, the TLS configuration (certificate, ALPN, TLS options), the
/// padding scheme, the fallback, the TLS and AnyTLS handshake timeouts and
/// the session limits. What it does not change: the listening socket,
/// `max_connections`, `connect_timeout` and `udp` (the handler given to
/// `serve` keeps its own), and the `io_budget`.
///
/// Live sessions keep the configuration they were accepted with, and their
/// streams carry on, with one exception: the sessions of a user who was
/// removed, or whose password changed, are closed (with their streams).
/// Removing a user or changing a password is how access is revoked (a
/// leaked password, a customer who left); a session that outlived the
/// revocation would keep that access for as long as its client keeps it
/// open, which with pooled, heartbeating sessions can be days.
#[derive(Clone)]
pub struct ReloadHandle {
    state: Arc<State>,
}

impl fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle")
            .field("users", &self.state.current().passwords.len())
            .finish_non_exhaustive()
    }
}

impl ReloadHandle {
    /// Validates `cfg` and, if it is valid, serves new connections with it
    /// (see the [type](Self) for what changes). On error nothing changes.
    /// Returns how many sessions were closed because their user was removed
    /// or their password changed.
    pub fn reload(&self, cfg: ServerConfig) -> io::Result<usize> {
        let new = Arc::new(Live::build(&cfg)?);
        for (name, _) in &cfg.users {
            // New users show in the counters at zero at once.
            self.state.stats.user(name);
        }
        // The swap first, the sweep after: a session that authenticates under
        // the old configuration after the sweep checks the new one itself
        // (see `serve_connection`).
        {
            let mut live = lock(&self.state.live);
            let old = std::mem::replace(&mut *live, new.clone());
            // Under the lock: serve_with starting or ending sees one side.
            #[cfg(feature = "acme")]
            self.state.switch_acme(&old, &new);
            drop(old);
        }
        let conns: Vec<(Arc<Conn>, Arc<Live>)> = {
            let mut r = lock(&self.state.conns);
            r.retain(|(c, _)| c.strong_count() > 0);
            r.iter()
                .filter_map(|(c, l)| Some((c.upgrade()?, l.clone())))
                .collect()
        };
        let mut closed = 0;
        for (conn, old) in conns {
            if let Some(user) = session_user(&conn, &old) {
                if !new.keeps(&old, &user) {
                    tracing::info!(
                        user,
                        "reload: user removed or password changed: closing their session"
                    );
                    conn.close();
                    closed += 1;
                }
            }
        }
        Ok(closed)
    }
}

/// Stops a running server, and observes it once [`Server::serve`] owns it.
#[derive(Clone)]
pub struct ShutdownHandle {
    stop: Arc<Switch>,
    active: Arc<AtomicUsize>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("stopped", &self.stop.is_set())
            .field("active_sessions", &self.active_sessions())
            .finish()
    }
}

impl ShutdownHandle {
    /// Sessions open now (TLS established, not yet ended), as
    /// [`Server::active_sessions`].
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Stops accepting connections; open sessions are closed after the grace
    /// period given to [`Server::serve_with`] (or at once with a zero grace).
    pub fn shutdown(&self) {
        self.stop.set();
    }
}

/// A bound AnyTLS server on runtime `R`.
pub struct Server<R: Runtime> {
    listener: R::Listener,
    state: Arc<State>,
    cfg: ServerConfig,
    shutdown: Arc<Switch>,
    active: Arc<AtomicUsize>,
    stats: StatsHandle,
}

impl<R: Runtime> fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &R::local_addr(&self.listener).ok())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<R: Runtime> Server<R> {
    /// Binds the listening socket to the first address `addr` (`host:port`,
    /// or a `SocketAddr`) resolves to; names are resolved by the runtime,
    /// without blocking. A bind error names the address.
    pub async fn bind(addr: impl fmt::Display, cfg: ServerConfig) -> io::Result<Server<R>> {
        let text = addr.to_string();
        let addr = match text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => R::resolve(&text).await?.into_iter().next().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{text}: no address to bind to"),
                )
            })?,
        };
        let listener = R::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        Server::with_listener(listener, cfg)
    }

    /// Serves on a listener you bound yourself (std): socket activation, a
    /// port shared with other services, socket options of your choice.
    pub fn from_std(listener: std::net::TcpListener, cfg: ServerConfig) -> io::Result<Server<R>> {
        Server::with_listener(R::listener_from_std(listener)?, cfg)
    }

    /// Serves on a listener of the runtime you bound yourself.
    pub fn from_listener(listener: R::Listener, cfg: ServerConfig) -> io::Result<Server<R>> {
        Server::with_listener(listener, cfg)
    }

    fn with_listener(listener: R::Listener, cfg: ServerConfig) -> io::Result<Server<R>> {
        let live = Live::build(&cfg)?;
        let stats = StatsHandle::new(cfg.users.iter().map(|(n, _)| n.as_str()));
        let state = Arc::new(State {
            live: Mutex::new(Arc::new(live)),
            conns: Mutex::default(),
            stats: stats.clone(),
            #[cfg(feature = "acme")]
            start_acme: Mutex::new(None),
        });
        Ok(Server {
            listener,
            state,
            cfg,
            shutdown: Arc::default(),
            active: Arc::new(AtomicUsize::new(0)),
            stats,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        R::local_addr(&self.listener)
    }

    /// A handle that stops [`serve`](Self::serve).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: self.shutdown.clone(),
            active: self.active.clone(),
        }
    }

    /// A handle that changes the configuration of the running server (see
    /// [`ReloadHandle`]), usable after [`serve`](Self::serve) took the
    /// server.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            state: self.state.clone(),
        }
    }

    /// Sessions open now.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The server's counters (per-user bytes, sessions and streams;
    /// authentication failures), usable after [`serve`](Self::serve) took
    /// the server. See [`crate::stats`] for what is counted.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// The counters now (as [`StatsHandle::snapshot`]).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Serves with the built-in relay ([`relay_tcp_with`]: TCP, and UDP over
    /// TCP as `cfg.udp` says) until shut down.
    pub async fn serve(self) -> io::Result<()> {
        let limit = self.cfg.connect_timeout;
        let udp = self.cfg.udp;
        self.serve_with(Duration::from_secs(5), move |req| {
            relay_tcp_with(req, limit, udp)
        })
        .await
    }

    /// Serves, handing every stream to `handler`, until shut down; then waits up
    /// to `grace` for sessions to finish before closing them.
    pub async fn serve_with<H, F>(self, grace: Duration, handler: H) -> io::Result<()>
    where
        H: Fn(IncomingStream<R>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let open_connections = Arc::new(AtomicUsize::new(0));
        #[cfg(feature = "acme")]
        {
            let live = lock(&self.state.live);
            *lock(&self.state.start_acme) = Some(crate::acme::Acme::start::<R>);
            if let Some(a) = &live.acme {
                a.start::<R>();
            }
        }
        while !self.shutdown.is_set() {
            let accepted =
                futures_lite::future::or(async { Some(R::accept(&self.listener).await) }, async {
                    self.shutdown.wait().await;
                    None
                })
                .await;
            let Some(res) = accepted else { break };
            let (tcp, peer) = match res {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off a little, keep serving.
                    tracing::warn!("accept failed: {e}");
                    sleep_until::<R>(Instant::now() + Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open_connections.load(Ordering::Relaxed) >= self.cfg.max_connections {
                tracing::debug!(%peer, "connection limit reached: closed at accept");
                drop(tcp);
                continue;
            }
            let guard = ConnectionSlot::take(&open_connections);
            // One configuration per connection, taken here.
            let live = self.state.current();
            let (budget, handler) = (self.cfg.io_budget.clone(), handler.clone());
            let (active, state) = (self.active.clone(), self.state.clone());
            R::spawn_connection(tcp, None, move |tcp| {
                serve_connection(guard, tcp, peer, live, budget, handler, active, state)
            });
        }
        drop(self.listener);
        #[cfg(feature = "acme")]
        {
            let live = lock(&self.state.live);
            *lock(&self.state.start_acme) = None;
            if let Some(a) = &live.acme {
                a.release();
            }
        }
        let deadline = Instant::now() + grace;
        while self.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            sleep_until::<R>(Instant::now() + Duration::from_millis(20)).await;
        }
        let open: Vec<Arc<Conn>> = lock(&self.state.conns)
            .iter()
            .filter_map(|(c, _)| c.upgrade())
            .collect();
        for c in open {
            c.close();
        }
        Ok(())
    }
}

/// One of `max_connections`, held by a connection's task until it ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(count: &Arc<AtomicUsize>) -> ConnectionSlot {
        count.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot(count.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<R, H, F>(
    connection: ConnectionSlot,
    tcp: R::Tcp,
    peer: SocketAddr,
    live: Arc<Live>,
    io_budget: IoBudget,
    handler: Arc<H>,
    active: Arc<AtomicUsize>,
    state: Arc<State>,
) where
    R: Runtime,
    H: Fn(IncomingStream<R>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let stats = state.stats.clone();
    let (core, fallback) = (live.core.clone(), live.fallback);
    let tls_handshake_timeout = live.tls_handshake_timeout;
    let accept = async {
        #[cfg(feature = "acme")]
        let tcp = match &live.acme {
            // The ClientHello decides: a TLS-ALPN-01 validation gets the
            // challenge certificate and nothing else.
            Some(acme) => {
                let mut tcp = tcp;
                let (seen, challenge) = crate::acme::read_client_hello(&mut tcp).await?;
                if challenge {
                    crate::acme::answer_challenge(tcp, seen, acme).await?;
                    return Ok(None);
                }
                let session = Tls::server(live.tls.clone())?;
                let mut tls = TlsIo::with_input(tcp, session, &io_budget, seen);
                tls.handshake().await?;
                return Ok(Some(tls));
            }
            None => tcp,
        };
        let session = Tls::server(live.tls.clone())?;
        let mut tls = TlsIo::with_budget(tcp, session, &io_budget);
        tls.handshake().await?;
        io::Result::Ok(Some(tls))
    };
    // Boxed futures here and below: the task's own state stays small, and
    // each phase's memory is freed when the phase ends (an idle session keeps
    // only the driver's).
    let tls = match timeout::<R, _>(tls_handshake_timeout, Box::pin(accept)).await {
        Some(Ok(Some(tls))) => tls,
        // An ACME validation, answered.
        Some(Ok(None)) => return,
        Some(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        None => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        // No padding randomness: refuse to serve rather than pad predictably.
        tracing::error!(%peer, "no OS randomness for the session: {e}; closing the connection");
        return;
    }
    // The configuration was validated in `bind`.
    let session = match anytls_core::Session::server(core.clone(), seed, Instant::now()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("server session configuration: {e}");
            return;
        }
    };
    let conn = Conn::new(session);
    {
        let mut r = lock(&state.conns);
        r.retain(|(c, _)| c.strong_count() > 0);
        r.push((Arc::downgrade(&conn), live.clone()));
    }
    active.fetch_add(1, Ordering::Relaxed);
    // The user's counters, looked up once (by whichever of the stream task
    // and the observer below needs them first).
    let account: Arc<OnceLock<Arc<UserCounters>>> = Arc::default();
    // On a thread-per-core runtime the streams' handlers run in this task,
    // beside the driver (see `beside.rs`); elsewhere each is a task.
    let companions = R::executor().map(|_| Companions::new());
    {
        let beside = companions.clone();
        let conn = conn.clone();
        let users = core.users.clone();
        let budget = io_budget.clone();
        let stats = stats.clone();
        let account = account.clone();
        // Ends when the session does (next_incoming returns None).
        let incoming = async move {
            // Streams exist only after authentication: the session knows its
            // user by the time the first one arrives.
            let mut user: Option<Arc<str>> = None;
            while let Some((id, dest)) = conn.next_incoming().await {
                let user = user
                    .get_or_insert_with(|| {
                        let id = conn.lock().session.user();
                        Arc::from(id.and_then(|u| users.user_name(u)).unwrap_or(""))
                    })
                    .clone();
                let counters = account.get_or_init(|| stats.user(&user));
                tracing::debug!(%peer, stream = id.0, %dest, "new stream");
                let req = IncomingStream {
                    conn: conn.clone(),
                    id,
                    dest,
                    user,
                    peer,
                    budget: budget.clone(),
                    decided: false,
                    account: Some(counters.stream_opened()),
                    _runtime: PhantomData,
                };
                match &beside {
                    Some(c) => adopt_or_spawn::<R>(c, Box::pin(handler(req))),
                    None => R::spawn(handler(req)),
                }
            }
        };
        match &companions {
            Some(c) => adopt_or_spawn::<R>(c, Box::pin(incoming)),
            None => R::spawn(incoming),
        }
    }
    let users = core.users.clone();
    let this = conn.clone();
    // The session ends when the driver does, even while stream handlers
    // beside it still finish (their own outbound sockets are not this
    // connection): the session's counters and, unless a fallback takes the
    // connection over, its connection slot go then.
    // The TLS state boxed first: the block keeps room for what it captures.
    let tls = Box::new(tls);
    let driver = Box::pin(async move {
        // The user's open session, from authentication until the driver ends.
        let mut session = None;
        let slot = &mut session;
        let end = drive::<R, _>(conn, tls, move |ev| match ev {
            Event::Authenticated { user: id } => {
                let name = users.user_name(*id).unwrap_or("");
                tracing::debug!(%peer, user = name, "authenticated");
                let counters = account.get_or_init(|| stats.user(name));
                *slot = Some(counters.session_opened());
                // Accepted before a reload that revoked this user, and
                // authenticated after its sweep: the sweep missed it.
                let now = state.current();
                if !Arc::ptr_eq(&now, &live) && !now.keeps(&live, name) {
                    log_revoked(peer, name);
                    this.close();
                }
            }
            Event::AuthRejected { .. } => stats.auth_failed(peer.ip(), Instant::now()),
            _ => {}
        })
        .await;
        drop(session);
        active.fetch_sub(1, Ordering::Relaxed);
        let slot = match end {
            DriveEnd::Closed(_) => None,
            DriveEnd::Fallback { .. } => Some(connection),
        };
        (end, slot)
    });
    let (end, _connection) = match &companions {
        // Boxed: elsewhere the task keeps no room for its state.
        Some(c) => Box::pin(run_beside(driver, c)).await,
        None => driver.await,
    };
    match end {
        DriveEnd::Closed(reason) => tracing::debug!(%peer, "session ended: {reason}"),
        DriveEnd::Fallback { mut tls, replay } => match fallback {
            Some(addr) => {
                tracing::debug!(%peer, "authentication failed: handing over to fallback {addr}");
                let relay = async {
                    let mut fb = R::connect(&addr.to_string()).await?;
                    fb.write_all(&replay).await?;
                    relay(&mut tls, &mut fb).await?;
                    io::Result::Ok(())
                };
                if let Err(e) = Box::pin(relay).await {
                    tracing::debug!(%peer, "fallback relay ended: {e}");
                }
            }
            None => {
                tracing::debug!(%peer, "authentication failed: closing");
                // A clean TLS close (close_notify), as Go's tls.Conn.Close in
                // the reference; no AnyTLS byte is sent.
                let _ = timeout::<R, _>(Duration::from_secs(1), tls.close()).await;
            }
        },
    }
}

/// A session of a user that a reload revoked while it authenticated.
fn log_revoked(peer: SocketAddr, user: &str) {
    tracing::info!(%peer, user, "reload: user removed or password changed: closing their session");
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> Self {
        io::Error::other(e)
    }
}
