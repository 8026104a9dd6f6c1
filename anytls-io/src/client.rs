//! The AnyTLS client: a session pool in front of one server.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use anytls_core::pool::{PoolConfig, PoolConfigError, PoolStats};
use anytls_core::{
    Action, ClientEndpoint, ClientEvent, ConfigError, Event, PaddingScheme, RefuseReason,
    SessionError, SessionLimits, SessionSeq, SocksAddr, StreamError, StreamHandle, StreamId,
    StreamState, Transmit, TransmitBuf, TransportError,
};
use bytes::{Bytes, BytesMut};

use crate::beside::{Companions, run_beside};
use crate::budget::IoBudget;
use crate::conn::{AnyTlsStream, DriveEnd, Link, Machine, StreamEnd, drive, read_chunks};
use crate::dial::{DialOptions, Dialer};
use crate::explain::{self, Reporter};
use crate::runtime::{Notify, Runtime, timeout};
use crate::tls::{TlsError, TlsOptions, Verification, client_config_with, server_name};
use crate::tls_io::{Tls, TlsIo};

/// Client settings.
#[derive(Clone)]
#[non_exhaustive]
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
    /// TLS versions, cipher suites and SNI.
    pub tls_options: TlsOptions,
    /// Your own rustls configuration (roots, client certificates, ALPN, key
    /// log...). When set, `verification`, `alpn` and `tls_options` are not used.
    /// `enable_secret_extraction` is turned on in a copy: after a TLS 1.3
    /// handshake the connection seals and opens its records itself (one copy
    /// per byte fewer than rustls); the secrets never leave it.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// How connections to the server are made. `None`: TCP to `server`
    /// with the socket options of `dial`, Nagle off.
    pub dialer: Option<Arc<dyn Dialer>>,
    /// Socket options and address choice of the built-in dialer (not used
    /// with your own `dialer`).
    pub dial: DialOptions,
    /// Large-I/O slots of the client's TLS connections (default: shared by
    /// the whole process; see [`IoBudget`]).
    pub io_budget: IoBudget,
    /// The session pool.
    pub pool: PoolConfig,
    /// Value of the `client=` setting (empty, as sing-box sends by default, or a name).
    pub client_name: String,
    /// TCP connect plus TLS handshake time limit.
    pub connect_timeout: Duration,
    /// SYNACK wait before a session is probed (v2 servers); also how long a
    /// server that sends no ServerSettings has before it is taken for a v1
    /// server.
    pub stream_open_timeout: Duration,
    /// A session with a stream is given up when the server has sent nothing
    /// AnyTLS for this long after `stream_open_timeout` (see
    /// [`Client::connect`]). Default 7 s: 10 s in all.
    pub answer_timeout: Duration,
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
            .field("tls_options", &self.tls_options)
            .field("dial", &self.dial)
            .field("tls_config", &self.tls_config.as_ref().map(|_| "custom"))
            .field("dialer", &self.dialer.as_ref().map(|_| "custom"))
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
            tls_options: TlsOptions::default(),
            tls_config: None,
            dialer: None,
            dial: DialOptions::default(),
            io_budget: IoBudget::default(),
            pool: PoolConfig::default(),
            client_name: String::new(),
            connect_timeout: Duration::from_secs(10),
            stream_open_timeout: Duration::from_secs(3),
            answer_timeout: Duration::from_secs(7),
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
    /// Session settings (limits, timeouts).
    #[error("session: {0}")]
    Session(ConfigError),
    /// The OS gave no randomness for the padding seed.
    #[error("no OS randomness: {0}")]
    Randomness(String),
    /// The server address has no port.
    #[error("server address {0:?} must be host:port")]
    BadServer(String),
}

/// Where a session's driver runs: its executor and its companions (see
/// `beside.rs`).
struct Driven {
    executor: usize,
    companions: Arc<Companions>,
}

/// What the driver tasks, the stream handles and the endpoint task share:
/// the core's client endpoint and the wakers of whoever waits on it.
struct Shared {
    ep: ClientEndpoint,
    read_wakers: HashMap<StreamHandle, Waker>,
    write_wakers: HashMap<StreamHandle, Waker>,
    /// Tasks waiting for a stream's session or verdict.
    open_wakers: HashMap<StreamHandle, Waker>,
    /// Each connection's driver task.
    drivers: HashMap<SessionSeq, Waker>,
    /// Connections the endpoint closed, with why (until their driver ends).
    closed: HashMap<SessionSeq, SessionError>,
    /// Where each live session's driver runs, on a runtime with several
    /// executors ([`Runtime::executor`]): new streams prefer their caller's,
    /// and local connections relaying over it move beside it.
    executors: HashMap<SessionSeq, Driven>,
    /// Dials the endpoint asked for, for the endpoint task to start (on a
    /// runtime with several executors, `connect` starts its stream's own).
    dials: Vec<SessionSeq>,
    /// The deadline the endpoint task sleeps until (`None`: no timer).
    armed: Option<Instant>,
    /// Failures explained in the log.
    reporter: Arc<Reporter>,
    /// The server (`host:port`), for those explanations.
    server: Arc<str>,
    /// How long a silent server has (`stream_open_timeout` + `answer_timeout`).
    answer_wait: Duration,
}

impl Shared {
    /// Carries out what the endpoint asked for after an input or command:
    /// dials (for the endpoint task), closes and wake-ups.
    fn after(&mut self, kick: &Notify) {
        while let Some(a) = self.ep.poll_action() {
            match a {
                Action::Dial { conn } => {
                    self.dials.push(conn);
                    kick.notify();
                }
                Action::Close { conn, reason } => {
                    tracing::debug!(seq = conn.0, "session closed: {reason}");
                    self.closed.insert(conn, reason);
                    self.wake_driver(conn);
                }
                _ => {}
            }
        }
        let wake = |m: &mut HashMap<StreamHandle, Waker>, h: &StreamHandle| {
            if let Some(w) = m.remove(h) {
                w.wake();
            }
        };
        while let Some(ev) = self.ep.poll_event() {
            match &ev {
                ClientEvent::StreamReadable(h) => {
                    wake(&mut self.read_wakers, h);
                    wake(&mut self.open_wakers, h);
                }
                ClientEvent::StreamWritable(h) => {
                    wake(&mut self.write_wakers, h);
                    wake(&mut self.open_wakers, h);
                }
                ClientEvent::StreamConnected(h) => wake(&mut self.open_wakers, h),
                // `connect` waits for the server's first word on a new session.
                // Only that session's streams: with many sessions opening
                // at once, waking every waiting `connect` was quadratic.
                ClientEvent::PeerVersion { conn, .. } => {
                    let ep = &self.ep;
                    self.open_wakers.retain(|h, w| {
                        if ep.stream_connection(*h) == Some(*conn) {
                            w.wake_by_ref();
                            return false;
                        }
                        true
                    });
                }
                ClientEvent::SessionUnanswered { reason, .. } => {
                    let d = explain::unanswered(&self.server, self.answer_wait, reason);
                    self.reporter.report(Instant::now(), &d);
                }
                ClientEvent::StreamFinished(h)
                | ClientEvent::StreamRefused { stream: h, .. }
                | ClientEvent::StreamReset { stream: h, .. } => {
                    wake(&mut self.read_wakers, h);
                    wake(&mut self.write_wakers, h);
                    wake(&mut self.open_wakers, h);
                }
                _ => {}
            }
        }
        // A deadline earlier than the one the endpoint task sleeps until
        // (a heartbeat's answer is due, a SYNACK wait): wake it.
        if let Some(t) = self.ep.poll_timeout() {
            if self.armed.is_none_or(|armed| t < armed) {
                self.armed = Some(t);
                kick.notify();
            }
        }
    }

    fn wake_driver(&mut self, conn: SessionSeq) {
        if let Some(w) = self.drivers.get(&conn) {
            w.wake_by_ref();
        }
    }

    fn wake_all_drivers(&self) {
        for w in self.drivers.values() {
            w.wake_by_ref();
        }
    }
}

struct Inner {
    cfg: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    /// The TLS name as the user wrote it (for messages).
    name_text: String,
    shared: Mutex<Shared>,
    /// Wakes the endpoint task: dials to start, a new deadline.
    kick: Arc<Notify>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock is a bug; keep serving the others.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Closes every session and stops the pool.
    fn close(&self) {
        let mut g = self.lock();
        g.ep.close(Instant::now());
        g.after(&self.kick);
        g.wake_all_drivers();
        self.kick.notify();
    }
}

/// Held by every `Client` clone (not by streams or tasks): when the last
/// one goes, the endpoint closes, as if [`Client::close`] was called.
struct Owner(Weak<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.close();
        }
    }
}

/// An AnyTLS client on runtime `R`. Cheap to clone; all clones share one pool.
///
/// The protocol and the pool live in the core's
/// [`ClientEndpoint`](anytls_core::ClientEndpoint); this type moves bytes:
/// one task per TLS connection, one task for the endpoint's timer and the
/// pool's own dials.
pub struct Client<R> {
    // Dropped first: when the last handle goes, the owner can still reach
    // the client to close it.
    _owner: Arc<Owner>,
    inner: Arc<Inner>,
    _runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for Client<R> {
    fn clone(&self) -> Self {
        Client {
            _owner: self._owner.clone(),
            inner: self.inner.clone(),
            _runtime: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.cfg.server)
            .field("stats", &self.inner.lock().ep.stats().pool)
            .finish()
    }
}

fn host_of(server: &str) -> Option<&str> {
    let (host, port) = server.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// The endpoint's seed (every session's padding RNG derives from it), from
/// the OS. Without OS randomness there is no client: padding from a
/// predictable seed would be a fingerprint.
fn seed() -> Result<[u8; 32], ClientError> {
    seed_from(getrandom::fill)
}

fn seed_from<E: fmt::Display>(
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<[u8; 32], ClientError> {
    let mut s = [0u8; 32];
    fill(&mut s).map_err(|e| ClientError::Randomness(e.to_string()))?;
    Ok(s)
}

impl<R: Runtime> Client<R> {
    /// Builds the client and starts its pool (pre-warming if configured).
    /// Must be called where the runtime can spawn tasks (inside a tokio
    /// runtime for anytls-tokio).
    pub fn new(cfg: ClientConfig) -> Result<Client<R>, ClientError> {
        let host =
            host_of(&cfg.server).ok_or_else(|| ClientError::BadServer(cfg.server.clone()))?;
        let name = server_name(cfg.sni.as_deref().unwrap_or(host))?;
        let tls = match &cfg.tls_config {
            Some(tls) => crate::tls::records_client(tls),
            None => Arc::new(client_config_with(
                &cfg.verification,
                &cfg.alpn,
                &cfg.tls_options,
            )?),
        };
        let mut core = anytls_core::ClientConfig::new(&cfg.password);
        core.client_name = cfg.client_name.clone();
        core.stream_open_timeout = cfg.stream_open_timeout;
        core.answer_timeout = cfg.answer_timeout;
        core.heartbeat_timeout = cfg.pool.heartbeat_timeout;
        core.limits = cfg.limits.clone();
        let ep =
            ClientEndpoint::new(core, cfg.pool.clone(), seed()?, Instant::now()).map_err(|e| {
                match e {
                    ConfigError::Pool(p) => ClientError::Pool(p),
                    other => ClientError::Session(other),
                }
            })?;
        let mut shared = Shared {
            ep,
            read_wakers: HashMap::new(),
            write_wakers: HashMap::new(),
            open_wakers: HashMap::new(),
            drivers: HashMap::new(),
            closed: HashMap::new(),
            executors: HashMap::new(),
            dials: Vec::new(),
            armed: None,
            reporter: Arc::new(Reporter::default()),
            server: cfg.server.as_str().into(),
            answer_wait: cfg.stream_open_timeout + cfg.answer_timeout,
        };
        let kick = Arc::new(Notify::default());
        shared.after(&kick);
        let inner = Arc::new(Inner {
            tls,
            name,
            name_text: cfg.sni.clone().unwrap_or_else(|| host.to_owned()),
            shared: Mutex::new(shared),
            kick: kick.clone(),
            cfg,
        });
        R::spawn(endpoint_task::<R>(Arc::downgrade(&inner), kick));
        Ok(Client {
            _owner: Arc::new(Owner(Arc::downgrade(&inner))),
            inner,
            _runtime: PhantomData,
        })
    }

    /// Opens a stream to `dest` on a pooled session (or a new one). Returns
    /// once the stream is on a session that has heard from the server; the
    /// server's verdict on the destination comes later (see
    /// [`AnyTlsStream::established`]).
    ///
    /// On a session that has heard from the server, that is at once. On a
    /// new one it is after the dial and the server's first answer: its
    /// ServerSettings, one round trip after the preamble (v2 servers, also
    /// on a pre-warmed session, which sends its preamble when dialled), or
    /// `stream_open_timeout` (3 s) of silence, after which the server is
    /// taken for a v1 server (those say nothing before the destination
    /// does): the first stream of every session to a v1 server pays that
    /// wait. So a wrong password or a server that is not AnyTLS fails
    /// here, with the reason (also logged), instead of giving a stream that
    /// closes. A server that stays silent `answer_timeout` longer loses the
    /// session, and its streams fail.
    pub async fn connect(&self, dest: impl Into<SocksAddr>) -> io::Result<AnyTlsStream> {
        let dest = dest.into();
        let inner = &self.inner;
        let here = R::executor();
        let (h, dial) = {
            let mut g = inner.lock();
            let h = match here {
                // A session driven on this thread, if one is free.
                Some(here) => {
                    let Shared { ep, executors, .. } = &mut *g;
                    ep.open_stream_preferring(Instant::now(), &dest, |c| {
                        executors.get(&c).is_some_and(|d| d.executor == here)
                    })
                }
                None => g.ep.open_stream(Instant::now(), &dest),
            };
            g.after(&inner.kick);
            let h = h?;
            // On an idle session the SYN is queued now: its driver sends it.
            let conn = g.ep.stream_session(h);
            if let Some(conn) = conn {
                g.wake_driver(conn);
            }
            // On a runtime with several executors, a session dialled for
            // this stream is started here rather than by the endpoint task:
            // its driver then runs where the caller does (the thread of the
            // local connection that asked), so the relay and the driver
            // share a thread. Elsewhere the endpoint task starts it, as every
            // other dial (the caller may not even be in a runtime context).
            let waits_for = here.and_then(|_| g.ep.stream_connection(h));
            let at = waits_for.and_then(|c| g.dials.iter().position(|&d| d == c));
            (h, at.map(|i| g.dials.swap_remove(i)))
        };
        if let Some(conn) = dial {
            R::spawn(dial_session::<R>(inner.clone(), conn));
        }
        let end = ClientEnd {
            inner: inner.clone(),
            h,
        };
        let id = poll_fn(|cx| {
            let mut g = inner.lock();
            let heard =
                g.ep.stream_session(h)
                    .and_then(|conn| g.ep.session(conn))
                    .is_some_and(|s| s.peer_version_known() || s.server_answered());
            if let Some(id) = g.ep.stream_id(h).filter(|_| heard) {
                return Poll::Ready(Ok(id));
            }
            match g.ep.stream_state(h) {
                Some(StreamState::Opening | StreamState::Connected)
                    if g.ep.stream_session(h).is_some() =>
                {
                    g.open_wakers.insert(h, cx.waker().clone());
                    Poll::Pending
                }
                // The session ended before the server said a word: that is
                // what connect reports.
                Some(StreamState::Refused(RefuseReason::Unanswered(reason))) => {
                    let d = explain::unanswered(&g.server, g.answer_wait, reason);
                    let kind = io::Error::from(reason.clone()).kind();
                    Poll::Ready(Err(io::Error::new(kind, d.text)))
                }
                Some(StreamState::Opening) => {
                    g.open_wakers.insert(h, cx.waker().clone());
                    Poll::Pending
                }
                // It never had a session: the dial failed, or the client
                // closed first.
                Some(StreamState::Refused(
                    RefuseReason::DialFailed(_) | RefuseReason::EndpointClosed,
                ))
                | None => Poll::Ready(Err(end_error(&g.ep, h))),
                // It was opened on a session and its end came quickly (a
                // fast refusal): the stream reports it, as it would a moment
                // later.
                Some(_) => Poll::Ready(Ok(StreamId::SESSION)),
            }
        })
        .await;
        match id {
            Ok(id) => Ok(AnyTlsStream::from_end(Box::new(end), id)),
            // Dropping the end releases the stream.
            Err(e) => Err(e),
        }
    }

    /// The executor ([`Runtime::executor`]) that drives the idle session a
    /// new stream would get now, if that is known.
    pub(crate) fn next_executor(&self) -> Option<usize> {
        R::executor()?;
        let g = self.inner.lock();
        g.ep.next_reuse()
            .and_then(|c| g.executors.get(&c))
            .map(|d| d.executor)
    }

    /// Pool statistics.
    pub fn stats(&self) -> PoolStats {
        self.inner.lock().ep.stats().pool
    }

    /// The padding scheme new sessions start with (the server's, once it sent one).
    pub fn padding_scheme(&self) -> Arc<PaddingScheme> {
        self.inner.lock().ep.padding_scheme().clone()
    }

    /// Closes every session and stops the pool.
    pub fn close(&self) {
        self.inner.close();
    }
}

/// The error a stream's handle reports once the stream is over.
fn end_error(ep: &ClientEndpoint, h: StreamHandle) -> io::Error {
    let e = match ep.stream_state(h) {
        Some(StreamState::Refused(r)) => StreamError::Refused(r.clone()),
        Some(StreamState::Reset(r)) => StreamError::Reset(r.clone()),
        Some(StreamState::Finished) => StreamError::Closed,
        _ => StreamError::SessionClosed,
    };
    e.into()
}

/// A stream of the client endpoint.
struct ClientEnd {
    inner: Arc<Inner>,
    h: StreamHandle,
}

impl ClientEnd {
    fn release(&mut self) {
        let mut g = self.command(|ep, h| ep.release(Instant::now(), h));
        g.read_wakers.remove(&self.h);
        g.write_wakers.remove(&self.h);
        g.open_wakers.remove(&self.h);
    }

    /// Runs a command that queues output on the stream's session (a FIN)
    /// and wakes that session's driver; returns the lock.
    fn command(&self, f: impl FnOnce(&mut ClientEndpoint, StreamHandle)) -> MutexGuard<'_, Shared> {
        let mut g = self.inner.lock();
        let conn = g.ep.stream_session(self.h);
        f(&mut g.ep, self.h);
        g.after(&self.inner.kick);
        if let Some(conn) = conn {
            g.wake_driver(conn);
        }
        g
    }

    /// Runs a stream operation under the lock; the stream's driver is woken
    /// when it may have output.
    fn op<T>(
        &mut self,
        f: impl FnOnce(&mut ClientEndpoint, StreamHandle) -> Result<T, StreamError>,
        write: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        let mut g = self.inner.lock();
        let conn = g.ep.stream_session(self.h);
        let was_reading = conn.is_some_and(|c| g.ep.wants_read(c));
        let res = f(&mut g.ep, self.h);
        g.after(&self.inner.kick);
        if let Some(conn) = conn {
            // After a write there is output; after a read, paused input may
            // have resumed: either way the driver has work.
            if (write && res.is_ok()) || !was_reading {
                g.wake_driver(conn);
            }
        }
        match res {
            Ok(v) => Poll::Ready(Ok(v)),
            Err(StreamError::Blocked) => {
                let waiters = if write {
                    &mut g.write_wakers
                } else {
                    &mut g.read_wakers
                };
                waiters.insert(self.h, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl StreamEnd for ClientEnd {
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        max_count: usize,
        sink: &mut dyn FnMut(Bytes),
    ) -> Poll<io::Result<bool>> {
        let now = Instant::now();
        let (count, _) = ready!(self.op(
            |ep, h| {
                let read = |ep: &mut ClientEndpoint| ep.read(now, h);
                read_chunks(
                    ep,
                    read,
                    |ep| ep.readable_len(h),
                    max_bytes,
                    max_count,
                    sink,
                )
            },
            false,
            cx,
        ))?;
        Poll::Ready(Ok(count > 0))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        self.op(|ep, h| ep.write_bytes(h, data), true, cx)
    }

    fn finish(&mut self) {
        drop(self.command(|ep, h| ep.finish(Instant::now(), h)));
    }

    fn poll_established(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.inner.lock();
        match g.ep.stream_state(self.h) {
            Some(StreamState::Connected | StreamState::Finished) => Poll::Ready(Ok(())),
            Some(StreamState::Opening) if g.ep.readable_len(self.h) > 0 => Poll::Ready(Ok(())),
            Some(StreamState::Opening) => {
                g.open_wakers.insert(self.h, cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(Err(end_error(&g.ep, self.h))),
        }
    }
    fn companions(&self, here: usize) -> Option<Arc<Companions>> {
        let g = self.inner.lock();
        let d = g.executors.get(&g.ep.stream_session(self.h)?)?;
        (d.executor == here).then(|| d.companions.clone())
    }
}

impl Drop for ClientEnd {
    fn drop(&mut self) {
        self.release();
    }
}

/// One connection of the endpoint, as its driver task sees it.
struct ConnLink {
    inner: Arc<Inner>,
    conn: SessionSeq,
}

struct ConnView<'a> {
    g: &'a mut Shared,
    kick: &'a Notify,
    conn: SessionSeq,
}

impl Link for ConnLink {
    fn with<T>(&self, f: impl FnOnce(&mut dyn Machine) -> T) -> T {
        let mut g = self.inner.lock();
        f(&mut ConnView {
            g: &mut g,
            kick: &self.inner.kick,
            conn: self.conn,
        })
    }
}

impl Machine for ConnView<'_> {
    fn handle_timeout(&mut self, _now: Instant) {
        // The endpoint task keeps every timer of the endpoint.
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut dyn TransmitBuf) -> Option<Transmit> {
        self.g.ep.poll_transmit_on(now, self.conn, buf)
    }
    fn may_shape(&self) -> bool {
        self.g.ep.may_shape_on(self.conn)
    }
    fn handle_input(&mut self, now: Instant, data: BytesMut) {
        self.g.ep.handle_input(now, self.conn, data);
    }
    fn handle_eof(&mut self, now: Instant) {
        self.g.ep.handle_eof(now, self.conn);
    }
    fn handle_transport_error(&mut self, now: Instant, error: TransportError) {
        self.g.ep.handle_transport_error(now, self.conn, error);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn wants_read(&self) -> bool {
        self.g.ep.wants_read(self.conn)
    }
    fn is_closed(&self) -> bool {
        !self.g.ep.is_live(self.conn)
    }
    fn closed_reason(&self) -> Option<SessionError> {
        self.g.closed.get(&self.conn).cloned()
    }
    fn dispatch(&mut self, _observed: &mut Vec<Event>) {
        self.g.after(self.kick);
    }
    fn set_driver_waker(&mut self, waker: &Waker) {
        let w = self
            .g
            .drivers
            .entry(self.conn)
            .or_insert_with(|| waker.clone());
        if !w.will_wake(waker) {
            *w = waker.clone();
        }
    }
}

/// Dials a connection the endpoint asked for (with the configured dialer, or
/// TCP through the runtime) and drives it until it ends.
async fn dial_session<R: Runtime>(inner: Arc<Inner>, conn: SessionSeq) {
    match inner.cfg.dialer.clone() {
        Some(dialer) => {
            let server = inner.cfg.server.clone();
            connect_and_drive::<R, _>(inner, conn, dialer.dial(&server)).await
        }
        None => {
            let server = inner.cfg.server.clone();
            let opts = inner.cfg.dial.clone();
            connect_and_drive::<R, _>(inner, conn, async move {
                crate::dial::dial_tcp::<R>(&server, &opts).await
            })
            .await
        }
    }
}

async fn connect_and_drive<R: Runtime, IO>(
    inner: Arc<Inner>,
    conn: SessionSeq,
    connect: impl Future<Output = io::Result<IO>> + Send,
) where
    IO: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &inner.cfg;
    // Boxed: the task lives as long as the connection, and its future keeps
    // the size of its largest state; the connect and handshake state goes
    // away once done.
    let handshake = Box::pin(async {
        let tcp = connect.await?;
        let session = Tls::client(inner.tls.clone(), inner.name.clone())?;
        let mut tls = TlsIo::with_budget(tcp, session, &inner.cfg.io_budget);
        tls.handshake().await?;
        io::Result::Ok(tls)
    });
    let tls = timeout::<R, _>(cfg.connect_timeout, handshake)
        .await
        .unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect/TLS handshake timed out",
            ))
        });
    let (tls, companions) = {
        let mut g = inner.lock();
        match tls {
            Ok(tls) => {
                g.ep.handle_connected(Instant::now(), conn);
                let companions = R::executor().map(|executor| {
                    let companions = Companions::new();
                    let driven = Driven {
                        executor,
                        companions: companions.clone(),
                    };
                    g.executors.insert(conn, driven);
                    companions
                });
                g.after(&inner.kick);
                (tls, companions)
            }
            Err(e) => {
                tracing::debug!(seq = conn.0, "dial failed: {e}");
                let d =
                    explain::dial_failure(&cfg.server, &inner.name_text, cfg.connect_timeout, &e);
                g.reporter.report(Instant::now(), &d);
                g.ep.handle_dial_failed(Instant::now(), conn, &e);
                g.after(&inner.kick);
                // A dial abandoned by a close left its reason here.
                g.closed.remove(&conn);
                return;
            }
        }
    };
    let link = ConnLink {
        inner: inner.clone(),
        conn,
    };
    // Boxed: the driver's state is allocated at its exact size (the TLS
    // state boxed first: the block keeps room for what it captures).
    let tls = Box::new(tls);
    let driver = Box::pin(async {
        let end = drive::<R, _>(link, tls, |_| {}).await;
        let mut g = inner.lock();
        g.drivers.remove(&conn);
        g.closed.remove(&conn);
        g.executors.remove(&conn);
        end
    });
    // The local connections that moved beside it end with their streams.
    let end = match &companions {
        // Boxed: elsewhere the task keeps no room for its state.
        Some(c) => Box::pin(run_beside(driver, c)).await,
        None => driver.await,
    };
    if let DriveEnd::Closed(SessionError::PeerEof) = end {
        tracing::debug!(seq = conn.0, "server closed the session");
    }
}

/// Keeps the endpoint's timer (pool maintenance, heartbeats, every
/// session's deadlines) and starts the dials it asks for.
async fn endpoint_task<R: Runtime>(weak: Weak<Inner>, kick: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let (deadline, dials, closed) = {
            let mut g = inner.lock();
            let now = Instant::now();
            if g.ep.poll_timeout().is_some_and(|t| t <= now) {
                g.ep.handle_timeout(now);
                g.after(&inner.kick);
                // Heartbeats and timeouts may have output on any connection.
                g.wake_all_drivers();
            }
            let dials = std::mem::take(&mut g.dials);
            g.armed = g.ep.poll_timeout();
            (g.armed, dials, g.ep.is_closed())
        };
        for conn in dials {
            R::spawn_balanced(dial_session::<R>(inner.clone(), conn));
        }
        if closed && deadline.is_none() {
            return;
        }
        drop(inner);
        let kicked = kick.notified();
        match deadline {
            Some(t) => futures_lite::future::or(kicked, R::timer(t)).await,
            None => kicked.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_os_randomness_is_an_error_not_a_predictable_seed() {
        let failed = seed_from(|_: &mut [u8]| Err("entropy source unavailable"));
        assert!(matches!(failed, Err(ClientError::Randomness(m)) if m.contains("unavailable")));
        let ok = seed_from(|b: &mut [u8]| {
            b.fill(7);
            Ok::<(), &str>(())
        });
        assert_eq!(ok.unwrap(), [7; 32]);
    }
}
