//! Runtime-free peers of the flood tests: a target that accepts connections
//! and holds them without a byte either way, connections that stall the
//! server's handshakes, and the test process's memory figures.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anytls_io::tls::{self, Verification};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts up to `max` connections and holds them open, reading nothing
/// (one thread, no thread per connection).
pub struct HoldTarget {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl HoldTarget {
    pub fn start(max: usize) -> HoldTarget {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, held, accepted) = (stop.clone(), held.clone(), accepted.clone());
            thread::spawn(move || {
                for _ in 0..max {
                    let Ok((s, _)) = l.accept() else { return };
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let _ = s.set_nonblocking(true);
                    lock(&held).push(s);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        HoldTarget {
            addr,
            stop,
            held,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Held connections the other side has not closed yet.
    pub fn still_open(&self) -> usize {
        let held = lock(&self.held);
        let mut buf = [0u8; 1024];
        held.iter()
            .filter(|s| {
                // Whatever arrives is consumed; only EOF or an error ends it.
                let mut s: &TcpStream = s;
                for _ in 0..64 {
                    match s.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(_) => return false,
                    }
                }
                true
            })
            .count()
    }
}

impl Drop for HoldTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes a blocked accept, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        lock(&self.held).clear();
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A connection left hanging, and when it was established.
pub struct Stalled {
    pub sock: TcpStream,
    pub since: Instant,
    pub tls: bool,
}

/// `n` TCP connections that never send a byte (no TLS ClientHello), each
/// handed to `out` as soon as it is established.
pub fn open_silent(addr: SocketAddr, n: usize, out: &mpsc::Sender<Stalled>) {
    for i in 0..n {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("silent connection {i}: {e}"));
        let since = Instant::now();
        let _ = out.send(Stalled {
            sock,
            since,
            tls: false,
        });
    }
}

/// `n` connections that finish the TLS handshake and then send nothing (no
/// AnyTLS preamble), each handed to `out` as soon as it is established;
/// `opened` counts them.
pub fn open_tls_silent(
    addr: SocketAddr,
    pin: [u8; 32],
    n: usize,
    out: &mpsc::Sender<Stalled>,
    opened: &AtomicUsize,
) {
    let cfg = Arc::new(tls::client_config(&Verification::Pin(pin), &[]).unwrap());
    for i in 0..n {
        let s = tls_silent_one(addr, &cfg).unwrap_or_else(|e| panic!("TLS connection {i}: {e}"));
        opened.fetch_add(1, Ordering::Relaxed);
        let _ = out.send(s);
    }
}

fn tls_silent_one(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> io::Result<Stalled> {
    let name = tls::server_name("localhost").map_err(io::Error::other)?;
    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    // No Nagle delay on the handshake's last flight.
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    for _ in 0..100 {
        if !conn.is_handshaking() {
            break;
        }
        conn.complete_io(&mut sock)?;
    }
    for _ in 0..100 {
        if !conn.wants_write() {
            break;
        }
        conn.write_tls(&mut sock)?;
    }
    if conn.is_handshaking() {
        return Err(io::Error::other("handshake did not finish"));
    }
    // The rustls state is dropped: nothing more is ever sent.
    Ok(Stalled {
        sock,
        since: Instant::now(),
        tls: true,
    })
}

/// Watches stalled connections on its own thread as they are opened: when
/// the server closes each (EOF or reset; whatever else arrives is read and
/// dropped), and how many are open at once.
pub struct Watcher {
    /// Connections handed over and not closed yet.
    pub pending: Arc<AtomicUsize>,
    /// The most at once.
    pub peak: Arc<AtomicUsize>,
    handle: JoinHandle<Watched>,
}

/// What a watcher saw: per connection, whether it was TLS and how long it
/// stayed open; and how many were still open when it gave up.
pub struct Watched {
    pub closed: Vec<(bool, Duration)>,
    pub still_open: usize,
}

impl Watcher {
    /// Watches what arrives on `rx` until every sender is gone and every
    /// connection closed, or until nothing closed for `idle_limit`.
    pub fn start(rx: mpsc::Receiver<Stalled>, idle_limit: Duration) -> Watcher {
        let pending = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let handle = {
            let (pending, peak) = (pending.clone(), peak.clone());
            thread::spawn(move || watch(&rx, &pending, &peak, idle_limit))
        };
        Watcher {
            pending,
            peak,
            handle,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub fn join(self) -> Watched {
        match self.handle.join() {
            Ok(w) => w,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

fn watch(
    rx: &mpsc::Receiver<Stalled>,
    pending: &AtomicUsize,
    peak: &AtomicUsize,
    idle_limit: Duration,
) -> Watched {
    let mut open: Vec<Stalled> = Vec::new();
    let mut closed = Vec::new();
    let mut senders_gone = false;
    let mut last_change = Instant::now();
    let mut buf = [0u8; 4096];
    for _ in 0..1_000_000 {
        loop {
            match rx.try_recv() {
                Ok(s) => {
                    s.sock.set_nonblocking(true).unwrap();
                    open.push(s);
                    last_change = Instant::now();
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    senders_gone = true;
                    break;
                }
            }
        }
        peak.fetch_max(open.len(), Ordering::Relaxed);
        let before = open.len();
        open.retain(|c| {
            let mut s: &TcpStream = &c.sock;
            for _ in 0..64 {
                match s.read(&mut buf) {
                    Ok(0) => {}
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => {}
                }
                // The time it is seen closed: never earlier than the close.
                closed.push((c.tls, c.since.elapsed()));
                return false;
            }
            true
        });
        pending.store(open.len(), Ordering::Relaxed);
        if open.len() != before {
            last_change = Instant::now();
        }
        if senders_gone && open.is_empty() {
            break;
        }
        if last_change.elapsed() > idle_limit {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    pending.store(open.len(), Ordering::Relaxed);
    Watched {
        closed,
        still_open: open.len(),
    }
}

/// A `kB` field of `/proc/self/status`, in KiB.
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets this process's peak RSS (VmHWM) to its current RSS.
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
