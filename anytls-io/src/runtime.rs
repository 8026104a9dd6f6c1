//! What an async runtime provides to the client and server: spawning, timers
//! and TCP. `anytls-tokio` and `anytls-smol` implement [`Runtime`]; everything
//! else is written once, here.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_io::{AsyncRead, AsyncWrite};

/// An async runtime, as the AnyTLS client and server use it.
///
/// Implemented by a zero-sized marker type (`anytls_tokio::Tokio`,
/// `anytls_smol::Smol`); every method is an associated function, so the
/// generic types ([`Client<R>`](crate::Client), [`Server<R>`](crate::Server))
/// carry no runtime handle.
pub trait Runtime: Send + Sync + Sized + 'static {
    /// A connected TCP socket (Nagle off).
    type Tcp: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A listening TCP socket.
    type Listener: Send + Sync + 'static;
    /// A resettable one-shot timer.
    type Timer: Future<Output = ()> + Unpin + Send + 'static;

    /// Runs `fut` in the background, detached.
    fn spawn<F>(fut: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Runs the task of a newly accepted connection: `serve(tcp)`, detached.
    ///
    /// The server and the local proxy call this for every accepted socket,
    /// and everything the connection's task spawns (its session driver, its
    /// streams' relays, their outbound sockets) is spawned from within it.
    /// By default it is [`spawn`](Self::spawn). A runtime made of several
    /// single-threaded executors (thread per core) moves the socket to the
    /// least busy one instead, so that a connection and all its tasks stay on
    /// one thread: no cross-thread wakeups on the data path.
    ///
    /// `near`: the executor (see [`executor`](Self::executor)) the
    /// connection will work with, if known (the local proxy: where the
    /// session it will most likely get is driven); else the least busy.
    fn spawn_connection<S, F>(tcp: Self::Tcp, near: Option<usize>, serve: S)
    where
        S: FnOnce(Self::Tcp) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let _ = near;
        Self::spawn(serve(tcp))
    }

    /// Runs a task that makes and carries a connection of its own, detached:
    /// a client session the pool dials by itself (pre-warmed, replaced); a
    /// session dialled for a stream starts where the stream was asked for.
    /// By default it is [`spawn`](Self::spawn); a thread-per-core runtime
    /// starts it on its least busy thread.
    fn spawn_balanced<F>(fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self::spawn(fut)
    }

    /// Which of the runtime's single-threaded executors runs the caller
    /// (thread per core), or `None` (the default: one shared executor). The
    /// client gives a new stream a session driven on the caller's executor
    /// when one is free.
    fn executor() -> Option<usize> {
        None
    }

    /// A timer that fires at `deadline`.
    fn timer(deadline: Instant) -> Self::Timer;

    /// Moves `timer` to fire at `deadline` (also after it fired).
    fn reset_timer(timer: &mut Self::Timer, deadline: Instant);

    /// Connects to `addr` (`host:port`, names resolved by the runtime) and
    /// turns Nagle's algorithm off.
    fn connect(addr: &str) -> impl Future<Output = io::Result<Self::Tcp>> + Send;

    /// Finishes a connect the caller started: `stream` is a non-blocking
    /// socket whose `connect` returned "in progress" (or succeeded). Waits
    /// until it is connected, returns the connect's error if it failed, and
    /// turns Nagle off. (The client's built-in dialer makes its sockets
    /// itself, to set options the runtime's own connect does not.)
    fn finish_connect(
        stream: std::net::TcpStream,
    ) -> impl Future<Output = io::Result<Self::Tcp>> + Send;

    /// Binds a listening socket.
    fn bind(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// A listener from a bound std socket (socket activation, a port shared
    /// with other services, options set by the caller).
    fn listener_from_std(listener: std::net::TcpListener) -> io::Result<Self::Listener>;

    /// Accepts a connection (Nagle off).
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Tcp, SocketAddr)>> + Send;

    /// The address `listener` is bound to.
    fn local_addr(listener: &Self::Listener) -> io::Result<SocketAddr>;

    /// A UDP socket.
    type Udp: Send + Sync + 'static;

    /// Binds a UDP socket.
    fn bind_udp(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Udp>> + Send;

    /// Sends one datagram.
    fn send_to<'a>(
        socket: &'a Self::Udp,
        datagram: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Receives one datagram (truncated to `buf`).
    fn recv_from<'a>(
        socket: &'a Self::Udp,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// The address a UDP socket is bound to.
    fn udp_local_addr(socket: &Self::Udp) -> io::Result<SocketAddr>;

    /// Resolves `host:port` (names through the system resolver).
    fn resolve(addr: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// Waits until `deadline`.
pub async fn sleep_until<R: Runtime>(deadline: Instant) {
    R::timer(deadline).await
}

/// Runs `fut` for at most `limit`; `None` if the time ran out first.
pub async fn timeout<R: Runtime, F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let timer = R::timer(Instant::now() + limit);
    futures_lite::future::or(async { Some(fut.await) }, async {
        timer.await;
        None
    })
    .await
}

/// A wake-up flag for one waiting task: [`notify`](Self::notify) sets it,
/// [`notified`](Self::notified) waits for it and clears it. A notification
/// sent while nobody waits is kept, so none is lost.
#[derive(Default)]
pub(crate) struct Notify {
    state: Mutex<(bool, Option<Waker>)>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        let mut s = lock(&self.state);
        s.0 = true;
        if let Some(w) = s.1.take() {
            w.wake();
        }
    }

    pub(crate) fn notified(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            let mut s = lock(&self.state);
            if std::mem::take(&mut s.0) {
                return Poll::Ready(());
            }
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

/// A one-way switch many tasks can wait on (shutdown).
#[derive(Default)]
pub(crate) struct Switch {
    state: Mutex<(bool, Vec<Waker>)>,
}

impl Switch {
    pub(crate) fn set(&self) {
        let mut s = lock(&self.state);
        s.0 = true;
        for w in s.1.drain(..) {
            w.wake();
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        lock(&self.state).0
    }

    /// Turns the switch back off (a manager started again).
    #[cfg(feature = "acme")]
    pub(crate) fn reset(&self) {
        lock(&self.state).0 = false;
    }

    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            let mut s = lock(&self.state);
            if s.0 {
                return Poll::Ready(());
            }
            if !s.1.iter().any(|w| w.will_wake(cx.waker())) {
                s.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// Locks, ignoring poisoning: a panic while holding a lock is a bug, and the
/// other sessions keep being served.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
