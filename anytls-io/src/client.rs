//! The AnyTLS client: a session pool in front of one server.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anytls_core::pool::{Checkout, Pool, PoolAction, PoolConfig, PoolConfigError, PoolStats};
use anytls_core::{Event, PaddingScheme, SessionError, SessionLimits, SessionSeq, SocksAddr};

use crate::conn::{AnyTlsStream, Conn, DriveEnd, drive};
use crate::runtime::{Notify, Runtime, lock, timeout};
use crate::tls::{TlsError, Verification, client_config, server_name};
use crate::tls_io::TlsIo;

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Server address, `host:port`.
    pub server: String,
    /// The password.
    pub password: String,
    /// TLS server name; defaults to the host of `server`. An IP literal sends no SNI.
    pub sni: Option<String>,
    /// How the server certificate is checked.
    pub verification: Verification,
    /// ALPN protocols to offer.
    pub alpn: Vec<String>,
    /// The session pool.
    pub pool: PoolConfig,
    /// Value of the `client=` setting (empty, as sing-box sends by default, or a name).
    pub client_name: String,
    /// TCP connect plus TLS handshake time limit.
    pub connect_timeout: Duration,
    /// SYNACK wait before a session is probed (v2 servers).
    pub stream_open_timeout: Duration,
    /// Per-session buffer caps.
    pub limits: SessionLimits,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("password", &"<redacted>")
            .field("sni", &self.sni)
            .field("verification", &self.verification)
            .field("alpn", &self.alpn)
            .field("pool", &self.pool)
            .field("client_name", &self.client_name)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Defaults for a server and password: webpki verification, default pool.
    pub fn new(server: impl Into<String>, password: impl Into<String>) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            password: password.into(),
            sni: None,
            verification: Verification::WebPki,
            alpn: Vec::new(),
            pool: PoolConfig::default(),
            client_name: String::new(),
            connect_timeout: Duration::from_secs(10),
            stream_open_timeout: Duration::from_secs(3),
            limits: SessionLimits::default(),
        }
    }
}

/// Why a client cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Pool settings.
    #[error("pool: {0}")]
    Pool(#[from] PoolConfigError),
    /// The server address has no port.
    #[error("server address {0:?} must be host:port")]
    BadServer(String),
}

struct Inner {
    cfg: ClientConfig,
    core: Arc<anytls_core::ClientConfig>,
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    padding: Mutex<Arc<PaddingScheme>>,
    pool: Mutex<Pool>,
    sessions: Mutex<HashMap<SessionSeq, Arc<Conn>>>,
    kick: Arc<Notify>,
    closed: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last `Client` is gone: nobody can use the sessions any more.
        for conn in lock(&self.sessions).values() {
            conn.close();
        }
    }
}

/// An AnyTLS client on runtime `R`. Cheap to clone; all clones share one pool.
pub struct Client<R> {
    inner: Arc<Inner>,
    _runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for Client<R> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            _runtime: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.cfg.server)
            .field("stats", &lock(&self.inner.pool).stats())
            .finish()
    }
}

fn host_of(server: &str) -> Option<&str> {
    let (host, port) = server.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    if getrandom::fill(&mut s).is_err() {
        // No OS randomness: degrade to a time-based seed rather than fail.
        let t = Instant::now().elapsed().as_nanos() ^ std::process::id() as u128;
        s[..16].copy_from_slice(&t.to_le_bytes());
    }
    s
}

impl<R: Runtime> Client<R> {
    /// Builds the client and starts its pool (pre-warming if configured).
    /// Must be called where the runtime can spawn tasks (inside a tokio
    /// runtime for anytls-tokio).
    pub fn new(cfg: ClientConfig) -> Result<Client<R>, ClientError> {
        let host =
            host_of(&cfg.server).ok_or_else(|| ClientError::BadServer(cfg.server.clone()))?;
        let name = server_name(cfg.sni.as_deref().unwrap_or(host))?;
        let tls = client_config(&cfg.verification, &cfg.alpn)?;
        let mut core = anytls_core::ClientConfig::new(&cfg.password);
        core.client_name = cfg.client_name.clone();
        core.stream_open_timeout = cfg.stream_open_timeout;
        core.heartbeat_timeout = cfg.pool.heartbeat_timeout;
        core.limits = cfg.limits.clone();
        let pool = Pool::new(cfg.pool.clone(), seed(), Instant::now())?;
        let inner = Arc::new(Inner {
            tls: Arc::new(tls),
            name,
            core: Arc::new(core),
            padding: Mutex::new(Arc::new(PaddingScheme::default_scheme())),
            pool: Mutex::new(pool),
            sessions: Mutex::new(HashMap::new()),
            kick: Arc::new(Notify::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
            cfg,
        });
        R::spawn(pool_task::<R>(Arc::downgrade(&inner), inner.kick.clone()));
        Ok(Client {
            inner,
            _runtime: PhantomData,
        })
    }

    /// Opens a stream to `dest` on a pooled session (or a new one).
    pub async fn connect(&self, dest: impl Into<SocksAddr>) -> io::Result<AnyTlsStream> {
        let dest = dest.into();
        let inner = &self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "client closed"));
        }
        for _ in 0..4 {
            let co = lock(&inner.pool).checkout(Instant::now());
            let (seq, stream) = match co {
                Checkout::Reuse(seq) => {
                    let conn = lock(&inner.sessions).get(&seq).cloned();
                    match conn.map(|c| c.open_stream(&dest)) {
                        Some(Ok(s)) => (seq, s),
                        _ => {
                            // Died under us: forget it and try the next one.
                            lock(&inner.pool).session_closed(seq, Instant::now());
                            continue;
                        }
                    }
                }
                Checkout::Dial(seq) => match dial::<R>(inner, seq, Some(&dest)).await {
                    Ok(Some(s)) => (seq, s),
                    Ok(None) => unreachable!("a dial with a destination returns a stream"),
                    Err(e) => {
                        lock(&inner.pool).dial_failed(seq, Instant::now());
                        inner.kick.notify();
                        return Err(e);
                    }
                },
            };
            return Ok(with_checkin(inner, seq, stream));
        }
        Err(io::Error::other("no usable session"))
    }

    /// Pool statistics.
    pub fn stats(&self) -> PoolStats {
        lock(&self.inner.pool).stats()
    }

    /// The padding scheme new sessions start with (the server's, once it sent one).
    pub fn padding_scheme(&self) -> Arc<PaddingScheme> {
        lock(&self.inner.padding).clone()
    }

    /// Closes every session and stops the pool.
    pub fn close(&self) {
        let inner = &self.inner;
        inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        lock(&inner.pool).shutdown(Instant::now());
        for conn in lock(&inner.sessions).values() {
            conn.close();
        }
        inner.kick.notify();
    }
}

fn with_checkin(inner: &Arc<Inner>, seq: SessionSeq, mut s: AnyTlsStream) -> AnyTlsStream {
    let weak = Arc::downgrade(inner);
    s.set_on_close(move || {
        if let Some(inner) = weak.upgrade() {
            lock(&inner.pool).checkin(seq, Instant::now());
            inner.kick.notify();
        }
    });
    s
}

/// Dials a session; opens the first stream before anything is sent so that
/// Settings, SYN and the destination form packet 1.
async fn dial<R: Runtime>(
    inner: &Arc<Inner>,
    seq: SessionSeq,
    first: Option<&SocksAddr>,
) -> io::Result<Option<AnyTlsStream>> {
    let cfg = &inner.cfg;
    let tls = timeout::<R, _>(cfg.connect_timeout, async {
        let tcp = R::connect(&cfg.server).await?;
        let session =
            rustls::client::UnbufferedClientConnection::new(inner.tls.clone(), inner.name.clone())
                .map_err(io::Error::other)?;
        let mut tls = TlsIo::new(tcp, session);
        tls.handshake().await?;
        io::Result::Ok(tls)
    })
    .await
    .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect/TLS handshake timed out"))??;
    let padding = lock(&inner.padding).clone();
    let session =
        anytls_core::Session::client(inner.core.clone(), seq, padding, seed(), Instant::now());
    let conn = Conn::new(session);
    let stream = first.map(|d| conn.open_stream(d)).transpose()?;
    lock(&inner.sessions).insert(seq, conn.clone());
    lock(&inner.pool).established(seq, Instant::now());
    inner.kick.notify();
    let weak = Arc::downgrade(inner);
    let observer_weak = weak.clone();
    R::spawn(async move {
        // Boxed: the driver's state is allocated at its exact size.
        let end = Box::pin(drive::<R, _>(conn, Box::new(tls), move |ev| {
            let Some(inner) = observer_weak.upgrade() else {
                return;
            };
            match ev {
                Event::HeartbeatAck { rtt } => lock(&inner.pool).heartbeat_ack(seq, *rtt),
                Event::PaddingSchemeUpdated(s) => {
                    tracing::debug!("server sent a new padding scheme (md5 {})", s.md5_hex());
                    *lock(&inner.padding) = s.clone();
                }
                Event::Closed { reason } => {
                    tracing::debug!(seq = seq.0, "session closed: {reason}");
                    lock(&inner.pool).session_closed(seq, Instant::now());
                    lock(&inner.sessions).remove(&seq);
                    inner.kick.notify();
                }
                _ => {}
            }
        }))
        .await;
        if let Some(inner) = weak.upgrade() {
            lock(&inner.sessions).remove(&seq);
            lock(&inner.pool).session_closed(seq, Instant::now());
            inner.kick.notify();
        }
        if let DriveEnd::Closed(SessionError::PeerEof) = end {
            tracing::debug!(seq = seq.0, "server closed the session");
        }
    });
    Ok(stream)
}

async fn pool_task<R: Runtime>(weak: std::sync::Weak<Inner>, kick: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let (timeout, actions) = {
            let mut pool = lock(&inner.pool);
            let now = Instant::now();
            if pool.poll_timeout().is_some_and(|t| t <= now) {
                pool.handle_timeout(now);
            }
            let mut actions = Vec::new();
            while let Some(a) = pool.poll_action() {
                actions.push(a);
            }
            (pool.poll_timeout(), actions)
        };
        for a in actions {
            match a {
                PoolAction::Dial { seq } => {
                    let inner = inner.clone();
                    R::spawn(async move {
                        if let Err(e) = dial::<R>(&inner, seq, None).await {
                            tracing::debug!(seq = seq.0, "pre-warm dial failed: {e}");
                            lock(&inner.pool).dial_failed(seq, Instant::now());
                            inner.kick.notify();
                        }
                    });
                }
                PoolAction::Close { seq, reason } => {
                    tracing::debug!(seq = seq.0, "pool closes session: {reason:?}");
                    if let Some(c) = lock(&inner.sessions).remove(&seq) {
                        c.close();
                    }
                }
                PoolAction::Heartbeat { seq, timeout } => {
                    if let Some(c) = lock(&inner.sessions).get(&seq) {
                        c.heartbeat(timeout);
                    }
                }
            }
        }
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) && timeout.is_none() {
            return;
        }
        drop(inner);
        let kicked = kick.notified();
        match timeout {
            Some(t) => futures_lite::future::or(kicked, R::timer(t)).await,
            None => kicked.await,
        }
    }
}
