//! Thread per core: [`ThreadPerCore`].

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

use crate::TokioIo;

/// Thread per core: several single-threaded tokio runtimes (one on the
/// thread that calls [`block_on`](Self::block_on), the others on threads of
/// their own), each accepted connection pinned to one of them.
///
/// With tokio's work-stealing runtime a connection's tasks (the session
/// driver, each stream's relay) wake each other across worker threads: every
/// chunk of a bulk transfer costs futex calls, eventfd writes and context
/// switches. Here a connection and everything it spawns run on the thread it
/// was given, and different connections use different cores.
///
/// [`Tokio::spawn_connection`](crate::Tokio) (called by the server and the
/// local proxy for every accepted socket) consults the runtime of the calling
/// thread: inside a [`ThreadPerCore`] it moves the socket to the thread with
/// the fewest live connections (ties in turn), or, for the local proxy, to
/// the thread that drives the idle session the connection will most likely
/// get (`near`, unless that thread is already well ahead); anywhere else it
/// is `tokio::spawn`. A client on a `ThreadPerCore` gives a new stream a
/// session driven on the caller's thread when one is free, and starts the
/// session dialled for a stream on the caller's thread.
///
/// On a thread, a stream's work runs in its session's task, beside the
/// driver: the server runs each stream's handler there, and a local proxy
/// connection moves there once its stream is open (see
/// [`anytls_io::movable`]). What the relay and the driver hand each other
/// is then taken on within the same poll, still in the CPU caches, instead
/// of waiting behind every other ready task in the thread's run queue.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let rt = anytls_tokio::ThreadPerCore::new(2)?;
/// let answer = rt.block_on(async {
///     // Serve here: `Server::bind(..).await?.serve().await`, a local proxy...
///     40 + 2
/// });
/// assert_eq!(answer, 42);
/// # Ok(())
/// # }
/// ```
///
/// Drop it (or call [`shutdown_timeout`](Self::shutdown_timeout)) outside
/// async code: it joins its threads.
pub struct ThreadPerCore {
    /// The first runtime, run by `block_on` on the caller's thread (`None`
    /// once shut down).
    home: Option<Runtime>,
    shared: Arc<Shared>,
    workers: Vec<Worker>,
}

struct Worker {
    stop: Option<oneshot::Sender<Duration>>,
    thread: Option<JoinHandle<()>>,
}

/// What every thread of a [`ThreadPerCore`] knows.
struct Shared {
    handles: Vec<Handle>,
    /// Live accepted connections per thread.
    load: Vec<AtomicUsize>,
    /// Whether each thread still runs its runtime (a thread that ended gets
    /// nothing more: its runtime would drop every task at once).
    alive: Vec<AtomicBool>,
    /// Where the search for the least busy thread starts: ties go in turn.
    next: AtomicUsize,
    /// Thread `i` is executor `base + i` ([`executor`]): unique in the
    /// process, so that a client shared by two `ThreadPerCore`s never takes
    /// a thread of one for a thread of the other.
    base: usize,
}

/// The executor number the next `ThreadPerCore`'s first thread gets.
static NEXT_EXECUTOR: AtomicUsize = AtomicUsize::new(0);

/// How many connections more than the least busy thread a thread may have
/// and still get one that asked for it (`near`): a burst of local
/// connections all near the same idle session is spread once it is this far
/// ahead (only one of them gets that session anyway).
const NEAR_SLACK: usize = 2;

thread_local! {
    /// The [`ThreadPerCore`] this thread belongs to, and which of its threads
    /// it is.
    static HOME: RefCell<Option<(Arc<Shared>, usize)>> = const { RefCell::new(None) };
}

impl std::fmt::Debug for ThreadPerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPerCore")
            .field("threads", &self.threads())
            .finish()
    }
}

/// Sets this thread's [`HOME`] until dropped, then puts back what was there
/// (also when the future of a `block_on` panics).
struct HomeGuard(Option<(Arc<Shared>, usize)>);

impl HomeGuard {
    fn set(home: Option<(Arc<Shared>, usize)>) -> HomeGuard {
        HomeGuard(HOME.with(|h| h.replace(home)))
    }
}

impl Drop for HomeGuard {
    fn drop(&mut self) {
        let before = self.0.take();
        HOME.with(|h| *h.borrow_mut() = before);
    }
}

/// Marks a worker thread dead when it ends, however it ends.
struct AliveGuard(Arc<Shared>, usize);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive[self.1].store(false, Ordering::Relaxed);
    }
}

impl ThreadPerCore {
    /// `threads` single-threaded runtimes (at least one), I/O and timers
    /// enabled; all but the first get a thread of their own now
    /// (`anytls-worker-N`).
    pub fn new(threads: usize) -> io::Result<ThreadPerCore> {
        let threads = threads.max(1);
        let mut runtimes = (0..threads)
            .map(|_| Builder::new_current_thread().enable_all().build())
            .collect::<io::Result<Vec<Runtime>>>()?;
        let shared = Arc::new(Shared {
            handles: runtimes.iter().map(|rt| rt.handle().clone()).collect(),
            load: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            alive: (0..threads).map(|_| AtomicBool::new(true)).collect(),
            base: NEXT_EXECUTOR.fetch_add(threads, Ordering::Relaxed),
            next: AtomicUsize::new(0),
        });
        let home = runtimes.remove(0);
        let mut pool = ThreadPerCore {
            home: Some(home),
            shared: shared.clone(),
            workers: Vec::with_capacity(threads - 1),
        };
        for (i, rt) in runtimes.into_iter().enumerate() {
            let index = i + 1;
            let (stop, stopped) = oneshot::channel::<Duration>();
            let mine = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("anytls-worker-{index}"))
                .spawn(move || {
                    let _alive = AliveGuard(mine.clone(), index);
                    let _home = HomeGuard::set(Some((mine, index)));
                    // A dropped sender stops the thread too.
                    let grace = rt.block_on(stopped).unwrap_or(Duration::ZERO);
                    rt.shutdown_timeout(grace);
                });
            match thread {
                Ok(t) => pool.workers.push(Worker {
                    stop: Some(stop),
                    thread: Some(t),
                }),
                Err(e) => {
                    shared.alive[index].store(false, Ordering::Relaxed);
                    // The threads made so far stop with `pool`.
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// How many threads (runtimes) serve connections.
    pub fn threads(&self) -> usize {
        self.shared.handles.len()
    }

    /// Runs `fut` to completion on the calling thread (the first runtime);
    /// what it spawns runs there, accepted connections on all threads.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let _home = HomeGuard::set(Some((self.shared.clone(), 0)));
        match &self.home {
            Some(rt) => rt.block_on(fut),
            // Only `shutdown_timeout` (by value) and `drop` take it.
            None => unreachable!("a ThreadPerCore is used after its shutdown"),
        }
    }

    /// Stops every runtime: first the other threads' (together, each
    /// waiting at most `grace` for the tasks it drops, as tokio's
    /// `Runtime::shutdown_timeout`), then the calling thread's (at most
    /// `grace` again).
    pub fn shutdown_timeout(mut self, grace: Duration) {
        self.stop_workers(grace);
        if let Some(rt) = self.home.take() {
            rt.shutdown_timeout(grace);
        }
    }

    fn stop_workers(&mut self, grace: Duration) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(grace);
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for ThreadPerCore {
    fn drop(&mut self) {
        self.stop_workers(Duration::ZERO);
        // Without waiting for blocking tasks (a hung name lookup), and
        // allowed in async code, unlike dropping a runtime.
        if let Some(rt) = self.home.take() {
            rt.shutdown_background();
        }
    }
}

impl Shared {
    /// The live thread with the fewest connections; ties in turn.
    fn pick(&self) -> usize {
        let n = self.handles.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.alive[i].load(Ordering::Relaxed))
            .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The thread of executor `near` while it lives and is not
    /// [`NEAR_SLACK`] connections ahead of the least busy; else the least
    /// busy.
    fn pick_near(&self, near: Option<usize>) -> usize {
        let least = self.pick();
        match near.and_then(|e| e.checked_sub(self.base)) {
            Some(i)
                if i < self.handles.len()
                    && self.alive[i].load(Ordering::Relaxed)
                    && self.load[i].load(Ordering::Relaxed)
                        <= self.load[least].load(Ordering::Relaxed) + NEAR_SLACK =>
            {
                i
            }
            _ => least,
        }
    }
}

/// One live accepted connection on thread `.1`, until dropped.
struct Load(Arc<Shared>, usize);

impl Load {
    fn new(shared: &Arc<Shared>, thread: usize) -> Load {
        shared.load[thread].fetch_add(1, Ordering::Relaxed);
        Load(shared.clone(), thread)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.load[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`Tokio::executor`](crate::Tokio): the caller's thread of its
/// [`ThreadPerCore`], if it has one.
pub(crate) fn executor() -> Option<usize> {
    HOME.with(|h| h.borrow().as_ref().map(|(s, i)| s.base + *i))
}

/// [`Tokio::spawn_balanced`](crate::Tokio): on the least busy thread of the
/// caller's [`ThreadPerCore`], or `tokio::spawn` outside one. (Only accepted
/// connections count as load: a session follows the connections that use
/// it.)
pub(crate) fn spawn_balanced<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match HOME.with(|h| h.borrow().clone()) {
        Some((shared, _)) => {
            shared.handles[shared.pick()].spawn(fut);
        }
        None => {
            tokio::spawn(fut);
        }
    }
}

/// [`Tokio::spawn_connection`](crate::Tokio): pinned to thread `near` or
/// the least busy thread of the caller's [`ThreadPerCore`] (see
/// [`Shared::pick_near`]), or `tokio::spawn` outside one.
pub(crate) fn spawn_connection<S, F>(tcp: crate::TokioTcp, near: Option<usize>, serve: S)
where
    S: FnOnce(crate::TokioTcp) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Some((shared, here)) = HOME.with(|h| h.borrow().clone()) else {
        tokio::spawn(serve(tcp));
        return;
    };
    let to = shared.pick_near(near);
    let load = Load::new(&shared, to);
    // Movable: a local proxy connection moves beside its session's driver
    // (see `anytls_io::movable`), its load count with it.
    if to == here {
        tokio::spawn(anytls_io::movable(async move {
            let _load = load;
            serve(tcp).await
        }));
        return;
    }
    // The socket leaves this thread's reactor and joins the other's.
    let std = match tcp.0.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot move an accepted connection to another thread: {e}");
            return;
        }
    };
    shared.handles[to].spawn(anytls_io::movable(async move {
        let _load = load;
        match tokio::net::TcpStream::from_std(std) {
            Ok(tcp) => serve(TokioIo(tcp)).await,
            Err(e) => tracing::warn!("cannot register an accepted connection: {e}"),
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Accepted connections spread over the threads, one each while they
    /// live; each connection's task runs on the thread it was given.
    #[test]
    fn connections_spread_over_the_threads_and_stay_there() {
        let rt = ThreadPerCore::new(3).unwrap();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen2 = seen.clone();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(8);
            let mut clients = Vec::new();
            for _ in 0..3 {
                clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
                let (tcp, _) = listener.accept().await.unwrap();
                let seen = seen2.clone();
                let done = done_tx.clone();
                spawn_connection(TokioIo(tcp), None, move |mut tcp| async move {
                    use tokio::io::AsyncReadExt;
                    let first = std::thread::current().name().unwrap_or("").to_owned();
                    // Still this thread after waiting on the socket.
                    let mut b = [0u8; 1];
                    let _ = tcp.0.read(&mut b).await;
                    let later = std::thread::current().name().unwrap_or("").to_owned();
                    seen.lock().unwrap().push((first, later));
                    let _ = done.send(()).await;
                });
            }
            for c in &mut clients {
                use tokio::io::AsyncWriteExt;
                c.write_all(b"x").await.unwrap();
            }
            for _ in 0..3 {
                tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
                    .await
                    .unwrap();
            }
        });
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        for (first, later) in &seen {
            assert_eq!(first, later);
        }
        let threads: std::collections::BTreeSet<_> = seen.iter().map(|s| s.0.clone()).collect();
        assert_eq!(threads.len(), 3, "{seen:?}");
        assert!(threads.contains("anytls-worker-1"), "{threads:?}");
        assert!(threads.contains("anytls-worker-2"), "{threads:?}");
        // Ended connections no longer count.
        let load = |rt: &ThreadPerCore| -> usize {
            rt.shared
                .load
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .sum()
        };
        for _ in 0..200 {
            if load(&rt) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(load(&rt), 0);
        rt.shutdown_timeout(Duration::from_millis(100));
    }

    /// Tasks spawned balanced go to the threads in turn while none has
    /// connections.
    #[test]
    fn balanced_tasks_take_turns() {
        let rt = ThreadPerCore::new(3).unwrap();
        let mut names = rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(3);
            for _ in 0..3 {
                let tx = tx.clone();
                spawn_balanced(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    let _ = tx.send((name, executor())).await;
                });
            }
            let mut got = Vec::new();
            for _ in 0..3 {
                let one = tokio::time::timeout(Duration::from_secs(10), rx.recv());
                got.push(one.await.unwrap().unwrap());
            }
            got
        });
        names.sort_by_key(|n| n.1);
        let executors: Vec<_> = names.iter().map(|n| n.1).collect();
        let b = rt.shared.base;
        assert_eq!(executors, [Some(b), Some(b + 1), Some(b + 2)]);
        assert_eq!(names[2].0.as_deref(), Some("anytls-worker-2"));
    }

    /// Shutting down drops the connections moved to other threads (their
    /// sockets close) within the grace time, and a panic in `block_on`
    /// leaves the thread as it was.
    #[test]
    fn shutdown_closes_moved_connections_and_a_panic_restores_the_thread() {
        use std::io::Read;
        let rt = ThreadPerCore::new(2).unwrap();
        let one = rt.shared.base + 1;
        let client = rt.block_on(async {
            let (c, tcp) = socket_pair().await;
            let (tx, rx) = oneshot::channel();
            // Near thread 1: moved there; waits for ever.
            spawn_connection(TokioIo(tcp), Some(one), move |mut tcp| async move {
                use tokio::io::AsyncReadExt;
                let _ = tx.send(executor());
                let mut b = [0u8; 1];
                let _ = tcp.0.read(&mut b).await;
            });
            assert_eq!(rx.await.unwrap(), Some(one));
            c.into_std().unwrap()
        });
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async { panic!("a failing future") })
        }));
        assert!(caught.is_err());
        assert_eq!(executor(), None, "the thread's HOME was restored");
        rt.shutdown_timeout(Duration::from_millis(100));
        let mut client = client;
        client.set_nonblocking(false).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0, "closed by the shutdown");
    }

    /// A connected client socket and its accepted end, on 127.0.0.1.
    async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (c, listener.accept().await.unwrap().0)
    }

    /// A connection with a `near` thread goes there, whatever the load;
    /// a `near` of another `ThreadPerCore` (executor numbers are unique in
    /// the process) is no thread here.
    #[test]
    fn a_connection_goes_near_its_session() {
        let rt = ThreadPerCore::new(3).unwrap();
        let other = ThreadPerCore::new(3).unwrap();
        let (two, elsewhere) = (rt.shared.base + 2, other.shared.base + 2);
        assert_ne!(two, elsewhere);
        let got = rt.block_on(async {
            let (_c, tcp) = socket_pair().await;
            let (tx, rx) = oneshot::channel();
            spawn_connection(TokioIo(tcp), Some(two), move |_tcp| async move {
                let _ = tx.send((std::thread::current().name().map(str::to_owned), executor()));
            });
            rx.await.unwrap()
        });
        assert_eq!(got, (Some("anytls-worker-2".to_owned()), Some(two)));
    }

    /// A server on 127.0.0.1 with password "pw" and a self-signed
    /// certificate, and a client configuration that pins it.
    #[cfg(feature = "self-signed")]
    async fn pinned_server() -> (crate::Server, crate::ClientConfig) {
        use crate::{ClientConfig, Identity, Server, ServerConfig, Verification};
        let identity = Identity::self_signed(&["localhost".into()]).unwrap();
        let pin = identity.leaf_sha256().unwrap();
        let server = Server::bind("127.0.0.1:0", ServerConfig::new("pw", identity))
            .await
            .unwrap();
        let mut cfg = ClientConfig::new(server.local_addr().unwrap().to_string(), "pw");
        cfg.verification = Verification::Pin(pin);
        (server, cfg)
    }

    /// A client on a `ThreadPerCore` gives a new stream the session driven
    /// on the caller's thread, not the newest idle one; sessions dialled for
    /// a stream are driven where the stream was asked for.
    #[cfg(feature = "self-signed")]
    #[test]
    fn a_client_stream_gets_the_session_of_its_thread() {
        use crate::Client;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let rt = ThreadPerCore::new(2).unwrap();
        rt.block_on(async {
            let (server, cfg) = pinned_server().await;
            // Every stream is answered with the client's address of its
            // session: which session it got.
            tokio::spawn(server.serve_with(Duration::from_secs(1), |req| async move {
                let peer = req.peer_addr().to_string();
                let mut s = req.accept();
                let _ = s.write_all(peer.as_bytes()).await;
            }));
            let client = Client::new(cfg).unwrap();
            let dest = crate::SocksAddr::domain("example.test", 80);
            let home = HOME.with(|h| h.borrow().clone()).unwrap().0;
            // On thread `i`: a stream, held until `hold` resolves; its
            // session's client address.
            let on = |i: usize, hold: Option<Arc<tokio::sync::Barrier>>| {
                let (client, dest) = (client.clone(), dest.clone());
                home.handles[i].spawn(async move {
                    let mut s = client.connect(dest).await.unwrap();
                    let mut peer = String::new();
                    s.read_to_string(&mut peer).await.unwrap();
                    if let Some(b) = hold {
                        b.wait().await;
                    }
                    peer
                })
            };
            let limit = Duration::from_secs(10);
            // Two streams at once: two sessions, one dialled from each thread.
            let both = Arc::new(tokio::sync::Barrier::new(2));
            let first = tokio::time::timeout(limit, async {
                let (a, b) = (on(0, Some(both.clone())), on(1, Some(both.clone())));
                (a.await.unwrap(), b.await.unwrap())
            })
            .await
            .unwrap();
            assert_ne!(first.0, first.1);
            // Both idle now; whichever is newest, each thread gets its own,
            // in either order.
            let both_idle = || async {
                for _ in 0..500 {
                    if client.stats().idle == 2 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("sessions not back in the pool: {:?}", client.stats());
            };
            both_idle().await;
            for order in [[0, 1], [1, 0], [0, 0], [1, 1]] {
                for i in order {
                    let got = tokio::time::timeout(limit, on(i, None))
                        .await
                        .unwrap()
                        .unwrap();
                    let want = if i == 0 { &first.0 } else { &first.1 };
                    assert_eq!(&got, want, "thread {i}, order {order:?}");
                    both_idle().await;
                }
            }
            assert_eq!(client.stats().dials, 2);
        });
        rt.shutdown_timeout(Duration::from_millis(100));
    }

    /// On a `ThreadPerCore` the server runs each stream's handler beside its
    /// session's driver, and the local proxy's connections move beside
    /// theirs (`anytls_io::movable`); every byte arrives, in order.
    #[cfg(feature = "self-signed")]
    #[test]
    fn streams_run_beside_their_sessions() {
        use crate::Client;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const STREAMS: usize = 8;
        const BYTES: usize = 1 << 20;
        let byte = |i: usize| (i % 251) as u8;
        let rt = ThreadPerCore::new(2).unwrap();
        rt.block_on(async {
            let (server, cfg) = pinned_server().await;
            // Each stream asks for a length and gets that many bytes.
            tokio::spawn(
                server.serve_with(Duration::from_secs(1), move |req| async move {
                    let mut s = req.accept();
                    let mut len = [0u8; 8];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let data: Vec<u8> = (0..u64::from_be_bytes(len) as usize).map(byte).collect();
                    let _ = s.write_all(&data).await;
                }),
            );
            let client = Client::new(cfg).unwrap();
            let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = local.local_addr().unwrap();
            let config = crate::proxy::ProxyConfig::default();
            tokio::spawn(crate::proxy::serve_proxy(local, client, config));
            let (adopted, moved) = anytls_io::beside_counts();
            // All streams open before any is done: each gets a session of
            // its own, dialled on its thread (none is back in the pool).
            let all_open = Arc::new(tokio::sync::Barrier::new(STREAMS));
            let streams = (0..STREAMS).map(|_| {
                let all_open = all_open.clone();
                tokio::spawn(async move {
                    let dest = crate::SocksAddr::domain("example.test", 80);
                    let mut s = crate::socks5::socks5_connect(proxy, dest).await.unwrap();
                    all_open.wait().await;
                    s.write_all(&(BYTES as u64).to_be_bytes()).await.unwrap();
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    got
                })
            });
            let all = tokio::time::timeout(Duration::from_secs(20), async {
                let mut all = Vec::new();
                for s in streams.collect::<Vec<_>>() {
                    all.push(s.await.unwrap());
                }
                all
            })
            .await
            .unwrap();
            for got in all {
                assert_eq!(got.len(), BYTES);
                assert!(got.iter().enumerate().all(|(i, b)| *b == byte(i)));
            }
            let (adopted_now, moved_now) = anytls_io::beside_counts();
            // Every local connection moved (each dialled its own session on
            // its own thread); the server adopted their handlers too.
            assert!(moved_now - moved >= STREAMS, "{moved} -> {moved_now}");
            assert!(
                adopted_now - adopted >= 2 * STREAMS,
                "{adopted} -> {adopted_now}"
            );
        });
        rt.shutdown_timeout(Duration::from_millis(100));
    }

    /// On a `ThreadPerCore` a server session ends (it stops counting as
    /// active, its connection slot goes) when its connection does, though a
    /// stream handler beside its driver still runs.
    #[cfg(feature = "self-signed")]
    #[test]
    fn a_session_ends_with_its_connection_while_a_handler_lingers() {
        use crate::Client;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let rt = ThreadPerCore::new(1).unwrap();
        rt.block_on(async {
            let (server, cfg) = pinned_server().await;
            let handle = server.shutdown_handle();
            tokio::spawn(server.serve_with(Duration::from_secs(1), |req| async move {
                let mut s = req.accept();
                let _ = s.write_all(b"x").await;
                drop(s);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }));
            let client = Client::new(cfg).unwrap();
            let dest = crate::SocksAddr::domain("example.test", 80);
            let mut s = client.connect(dest).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(handle.active_sessions(), 1);
            client.close();
            for _ in 0..200 {
                if handle.active_sessions() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the session still counts: {}", handle.active_sessions());
        });
        rt.shutdown_timeout(Duration::from_millis(100));
    }

    /// Outside a `ThreadPerCore`, a connection runs on the caller's runtime.
    #[test]
    fn outside_it_is_a_plain_spawn() {
        let rt = Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (_c, tcp) = socket_pair().await;
            let (tx, rx) = oneshot::channel();
            let here = std::thread::current().id();
            spawn_connection(TokioIo(tcp), None, move |_tcp| async move {
                let _ = tx.send(std::thread::current().id());
            });
            assert_eq!(rx.await.unwrap(), here);
        });
    }
}
