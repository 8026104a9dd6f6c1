//! Thread per core: several single-threaded tokio runtimes, each accepted
//! connection pinned to one of them.
//!
//! With tokio's work-stealing runtime a connection's tasks (the session
//! driver, each stream's relay) wake each other across worker threads: every
//! chunk of a bulk transfer costs futex calls, eventfd writes and context
//! switches. Here a connection and everything it spawns run on the thread it
//! was given, and different connections use different cores.
//!
//! [`Tokio::spawn_connection`](crate::Tokio) (called by the server and the
//! local proxy for every accepted socket) consults the runtime of the calling
//! thread: inside a [`ThreadPerCore`] it moves the socket to the thread with
//! the fewest live connections (ties in turn); anywhere else it is
//! `tokio::spawn`.
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! let rt = anytls_tokio::ThreadPerCore::new(2)?;
//! let answer = rt.block_on(async {
//!     // Serve here: `Server::bind(..).await?.serve().await`, a local proxy...
//!     40 + 2
//! });
//! assert_eq!(answer, 42);
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

use crate::TokioIo;

/// Several single-threaded tokio runtimes (one on the thread that calls
/// [`block_on`](Self::block_on), the others on threads of their own), with
/// every accepted connection pinned to one of them. See the
/// [module docs](self).
pub struct ThreadPerCore {
    home: Runtime,
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
    /// Live connections per thread.
    load: Vec<AtomicUsize>,
    /// Where the search for the least busy thread starts: ties go in turn.
    next: AtomicUsize,
}

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
            next: AtomicUsize::new(0),
        });
        let home = runtimes.remove(0);
        let mut workers = Vec::with_capacity(threads - 1);
        for (i, rt) in runtimes.into_iter().enumerate() {
            let index = i + 1;
            let (stop, stopped) = oneshot::channel::<Duration>();
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("anytls-worker-{index}"))
                .spawn(move || {
                    HOME.with(|h| *h.borrow_mut() = Some((shared, index)));
                    // A dropped sender stops the thread too.
                    let grace = rt.block_on(stopped).unwrap_or(Duration::ZERO);
                    rt.shutdown_timeout(grace);
                    HOME.with(|h| h.borrow_mut().take());
                });
            match thread {
                Ok(t) => workers.push(Worker {
                    stop: Some(stop),
                    thread: Some(t),
                }),
                // The workers made so far stop when `workers` is dropped.
                Err(e) => return Err(e),
            }
        }
        Ok(ThreadPerCore {
            home,
            shared,
            workers,
        })
    }

    /// How many threads (runtimes) serve connections.
    pub fn threads(&self) -> usize {
        self.shared.handles.len()
    }

    /// Runs `fut` to completion on the calling thread (the first runtime);
    /// what it spawns runs there, accepted connections on all threads.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let before = HOME.with(|h| h.replace(Some((self.shared.clone(), 0))));
        let out = self.home.block_on(fut);
        HOME.with(|h| *h.borrow_mut() = before);
        out
    }

    /// Stops every runtime, waiting at most `grace` on each for the tasks
    /// it is dropping (see tokio's `Runtime::shutdown_timeout`).
    pub fn shutdown_timeout(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
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
        self.stop(Duration::ZERO);
    }
}

impl Shared {
    /// The thread with the fewest live connections; ties in turn.
    fn pick(&self) -> usize {
        let n = self.handles.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// One live connection on thread `.1`, until dropped.
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
    HOME.with(|h| h.borrow().as_ref().map(|(_, i)| *i))
}

/// Where a new connection's task goes: `None` outside a [`ThreadPerCore`]
/// (a plain `tokio::spawn`), else thread `near` if it has one, else the
/// least busy thread; counted as busier until the returned [`Load`] is
/// dropped; and whether that is this thread.
fn place(near: Option<usize>) -> Option<(Arc<Shared>, usize, Load, bool)> {
    let (shared, here) = HOME.with(|h| h.borrow().clone())?;
    let to = match near {
        Some(i) if i < shared.handles.len() => i,
        _ => shared.pick(),
    };
    let load = Load::new(&shared, to);
    Some((shared, to, load, to == here))
}

/// [`Tokio::spawn_balanced`](crate::Tokio): on the least busy thread of the
/// caller's [`ThreadPerCore`], or `tokio::spawn` outside one.
pub(crate) fn spawn_balanced<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let Some((shared, to, load, _)) = place(None) else {
        tokio::spawn(fut);
        return;
    };
    shared.handles[to].spawn(async move {
        let _load = load;
        fut.await
    });
}

/// [`Tokio::spawn_connection`](crate::Tokio): pinned to thread `near` or
/// the least busy thread of the caller's [`ThreadPerCore`], or
/// `tokio::spawn` outside one.
pub(crate) fn spawn_connection<S, F>(tcp: crate::TokioTcp, near: Option<usize>, serve: S)
where
    S: FnOnce(crate::TokioTcp) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Some((shared, to, load, here)) = place(near) else {
        tokio::spawn(serve(tcp));
        return;
    };
    if here {
        tokio::spawn(async move {
            let _load = load;
            serve(tcp).await
        });
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
    shared.handles[to].spawn(async move {
        let _load = load;
        match tokio::net::TcpStream::from_std(std) {
            Ok(tcp) => serve(TokioIo(tcp)).await,
            Err(e) => tracing::warn!("cannot register an accepted connection: {e}"),
        }
    });
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
        rt.shutdown_timeout(Duration::from_millis(100));
    }

    /// A connected client socket and its accepted end, on 127.0.0.1.
    async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (c, listener.accept().await.unwrap().0)
    }

    /// A connection with a `near` thread goes there, whatever the load.
    #[test]
    fn a_connection_goes_near_its_session() {
        let rt = ThreadPerCore::new(3).unwrap();
        let got = rt.block_on(async {
            let (_c, tcp) = socket_pair().await;
            let (tx, rx) = oneshot::channel();
            spawn_connection(TokioIo(tcp), Some(2), move |_tcp| async move {
                let _ = tx.send((std::thread::current().name().map(str::to_owned), executor()));
            });
            rx.await.unwrap()
        });
        assert_eq!(got, (Some("anytls-worker-2".to_owned()), Some(2)));
    }

    /// A client on a `ThreadPerCore` gives a new stream the session driven
    /// on the caller's thread, not the newest idle one; sessions dialled for
    /// a stream are driven where the stream was asked for.
    #[cfg(feature = "self-signed")]
    #[test]
    fn a_client_stream_gets_the_session_of_its_thread() {
        use crate::{Client, ClientConfig, Identity, Server, ServerConfig, Verification};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let rt = ThreadPerCore::new(2).unwrap();
        rt.block_on(async {
            let identity = Identity::self_signed(&["localhost".into()]).unwrap();
            let pin = identity.leaf_sha256().unwrap();
            let server = Server::bind("127.0.0.1:0", ServerConfig::new("pw", identity))
                .await
                .unwrap();
            let addr = server.local_addr().unwrap();
            // Every stream is answered with the client's address of its
            // session: which session it got.
            tokio::spawn(server.serve_with(Duration::from_secs(1), |req| async move {
                let peer = req.peer_addr().to_string();
                let mut s = req.accept();
                let _ = s.write_all(peer.as_bytes()).await;
            }));
            let mut cfg = ClientConfig::new(addr.to_string(), "pw");
            cfg.verification = Verification::Pin(pin);
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
            tokio::time::sleep(Duration::from_millis(50)).await;
            for order in [[0, 1], [1, 0], [0, 0], [1, 1]] {
                for i in order {
                    let got = tokio::time::timeout(limit, on(i, None))
                        .await
                        .unwrap()
                        .unwrap();
                    let want = if i == 0 { &first.0 } else { &first.1 };
                    assert_eq!(&got, want, "thread {i}, order {order:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            assert_eq!(client.stats().dials, 2);
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
