//! The cutting proxy: a TCP relay between our client and our server that
//! cuts connections on command.
//!
//! Every connection the client makes is relayed to the server over a
//! connection of its own. [`Proxy::cut_one`] picks a live connection (at
//! random, the newest, or the one that moved the most bytes since the
//! previous cut) and cuts it in one of four ways: a reset of both sides, a
//! plain close of both sides, or the server's side closed first and the
//! client's a little later (or the reverse). With [`Proxy::set_arrival_cuts`]
//! some new connections are also cut 0..30 ms after they arrive: in their TLS
//! handshake, or while their first stream is being opened. A cut is counted
//! by the connection's task when it does it, so a connection that ended on
//! its own in the meantime is never counted.
//!
//! Connections end on their own when either side closes: the proxy passes
//! the end of stream on and waits (bounded) for the other side to finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::proto::Rng;

/// Once one direction has ended, the other must end within this.
const LINGER: Duration = Duration::from_secs(30);
/// No byte either way for this long: the connection is dead (heartbeats
/// cross every live session every second).
const IDLE: Duration = Duration::from_secs(60);
/// Dialing the server.
const DIAL: Duration = Duration::from_secs(20);
const BUF: usize = 32 * 1024;

/// How a connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Both sides reset (RST).
    Reset,
    /// Both sides closed (FIN), nothing more relayed.
    Close,
    /// The server's side closed first, the client's this many ms later.
    ServerFirst(u64),
    /// The client's side closed first, the server's this many ms later.
    ClientFirst(u64),
}

impl CutMode {
    fn index(self) -> usize {
        match self {
            CutMode::Reset => 0,
            CutMode::Close => 1,
            CutMode::ServerFirst(_) => 2,
            CutMode::ClientFirst(_) => 3,
        }
    }

    fn random(rng: &mut Rng) -> CutMode {
        match rng.range(0, 99) {
            0..=39 => CutMode::Reset,
            40..=69 => CutMode::Close,
            70..=84 => CutMode::ServerFirst(rng.range(1, 50)),
            _ => CutMode::ClientFirst(rng.range(1, 50)),
        }
    }
}

struct Entry {
    cut: Option<oneshot::Sender<CutMode>>,
    /// Bytes moved either way, ever.
    bytes: Arc<AtomicU64>,
    /// `bytes` when the cutter last looked.
    seen: u64,
}

#[derive(Default)]
struct Shared {
    conns: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    /// Per [`CutMode::index`].
    cuts: [AtomicU64; 4],
    /// Ended by one side closing (both directions done).
    ended: AtomicU64,
    /// The server could not be dialed.
    dial_errors: AtomicU64,
    /// The other direction did not end within [`LINGER`], or nothing moved
    /// for [`IDLE`].
    stuck: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    stopped: AtomicBool,
    /// Percentage of new connections cut soon after they arrive.
    arrival_cuts: AtomicU64,
    /// Seed of those decisions (one draw per connection id).
    arrival_seed: AtomicU64,
    /// Cuts that were arrival cuts.
    arrival_done: AtomicU64,
}

/// Counters of the proxy.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyCounts {
    pub accepted: u64,
    pub live: u64,
    pub cuts: [u64; 4],
    pub ended: u64,
    pub dial_errors: u64,
    pub stuck: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Of `cuts`, those made right after the connection arrived.
    pub arrival_cuts: u64,
}

impl ProxyCounts {
    pub fn total_cuts(&self) -> u64 {
        self.cuts.iter().sum()
    }
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (ephemeral port) and relays to `server`.
    pub async fn start(server: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        tokio::spawn(async move {
            // Ends when the proxy is stopped (checked per connection) or the
            // runtime shuts down.
            while !sh.stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                sh.accepted.fetch_add(1, Ordering::Relaxed);
                let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, server, sh.clone(), id));
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// Stops accepting new connections (the accept loop ends on the next one).
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
    }

    pub fn counts(&self) -> ProxyCounts {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyCounts {
            accepted: get(&s.accepted),
            live: s.conns.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            cuts: [
                get(&s.cuts[0]),
                get(&s.cuts[1]),
                get(&s.cuts[2]),
                get(&s.cuts[3]),
            ],
            ended: get(&s.ended),
            dial_errors: get(&s.dial_errors),
            stuck: get(&s.stuck),
            bytes_up: get(&s.bytes_up),
            bytes_down: get(&s.bytes_down),
            arrival_cuts: get(&s.arrival_done),
        }
    }

    /// From now on, `percent` % of new connections are cut 0..30 ms after
    /// they arrive (decided per connection from `seed`); 0 stops it.
    pub fn set_arrival_cuts(&self, percent: u64, seed: u64) {
        self.shared.arrival_seed.store(seed, Ordering::Relaxed);
        self.shared.arrival_cuts.store(percent, Ordering::Relaxed);
    }

    /// Orders a cut of one live connection: a third of the time the one that
    /// moved the most bytes since the previous look, a sixth of the time the
    /// newest (often still in its TLS handshake, or carrying its first
    /// stream), else one at random. Returns whether a connection was picked.
    pub fn cut_one(&self, rng: &mut Rng) -> bool {
        let mut conns = self.shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<u64> = conns
            .iter()
            .filter(|(_, e)| e.cut.is_some())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return false;
        }
        ids.sort_unstable();
        let mut pick = ids[(rng.next_u64() % ids.len() as u64) as usize];
        match rng.range(0, 5) {
            0 | 1 => {
                let mut most = 0;
                for id in &ids {
                    let e = &conns[id];
                    let delta = e.bytes.load(Ordering::Relaxed) - e.seen;
                    if delta > most {
                        most = delta;
                        pick = *id;
                    }
                }
            }
            2 => pick = ids[ids.len() - 1],
            _ => {}
        }
        for e in conns.values_mut() {
            e.seen = e.bytes.load(Ordering::Relaxed);
        }
        let mode = CutMode::random(rng);
        match conns.get_mut(&pick).and_then(|e| e.cut.take()) {
            Some(tx) => tx.send(mode).is_ok(),
            None => false,
        }
    }
}

enum End {
    /// Cut; true for an arrival cut.
    Cut(CutMode, bool),
    Ended,
    Stuck,
}

async fn serve(mut client: TcpStream, server: SocketAddr, sh: Arc<Shared>, id: u64) {
    let mut upstream = match timeout(DIAL, TcpStream::connect(server)).await {
        Ok(Ok(s)) => s,
        _ => {
            sh.dial_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (tx, rx) = oneshot::channel();
    let bytes = Arc::new(AtomicU64::new(0));
    let percent = sh.arrival_cuts.load(Ordering::Relaxed);
    let mut rng = Rng::new(crate::proto::mix(
        sh.arrival_seed.load(Ordering::Relaxed),
        id,
    ));
    let arrival = (percent > 0 && rng.percent(percent)).then(|| {
        (
            Duration::from_millis(rng.range(0, 30)),
            CutMode::random(&mut rng),
        )
    });
    sh.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id,
        Entry {
            cut: Some(tx),
            bytes: bytes.clone(),
            seen: 0,
        },
    );
    let end = relay(&mut client, &mut upstream, rx, arrival, &bytes, &sh).await;
    match end {
        End::Cut(mode, early) => {
            // Counted before the sockets close: whoever sees the cut's effect
            // later finds it counted.
            sh.cuts[mode.index()].fetch_add(1, Ordering::Relaxed);
            if early {
                sh.arrival_done.fetch_add(1, Ordering::Relaxed);
            }
            sh.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            match mode {
                CutMode::Reset => {
                    reset(&client);
                    reset(&upstream);
                    drop((client, upstream));
                }
                CutMode::Close => drop((client, upstream)),
                CutMode::ServerFirst(ms) => {
                    drop(upstream);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    drop(client);
                }
                CutMode::ClientFirst(ms) => {
                    drop(client);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    drop(upstream);
                }
            }
        }
        End::Ended | End::Stuck => {
            let counter = if matches!(end, End::Ended) {
                &sh.ended
            } else {
                &sh.stuck
            };
            counter.fetch_add(1, Ordering::Relaxed);
            sh.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
}

/// SO_LINGER 0: closing the socket sends RST.
#[allow(deprecated)] // set_zero_linger is newer than our minimum tokio
fn reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    mut cut: oneshot::Receiver<CutMode>,
    arrival: Option<(Duration, CutMode)>,
    bytes: &AtomicU64,
    sh: &Shared,
) -> End {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = pump(&mut cr, &mut sw, bytes, &sh.bytes_up);
    let down = pump(&mut sr, &mut cw, bytes, &sh.bytes_down);
    let early = async {
        match arrival {
            Some((after, mode)) => {
                tokio::time::sleep(after).await;
                mode
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(up, down, early);
    let mut cut_open = true;
    // Phase 1: both directions open; a cut applies. Bounded: each pass either
    // returns or closes the cut channel, which can happen once.
    let (up_done, first_ok) = loop {
        tokio::select! {
            m = &mut cut, if cut_open => match m {
                Ok(mode) => return End::Cut(mode, false),
                Err(_) => cut_open = false,
            },
            mode = &mut early => return End::Cut(mode, true),
            ok = &mut up => break (true, ok),
            ok = &mut down => break (false, ok),
        }
    };
    // Phase 2: one direction ended; the other must follow.
    let rest = if up_done {
        timeout(LINGER, &mut down).await
    } else {
        timeout(LINGER, &mut up).await
    };
    match rest {
        Ok(ok) if ok && first_ok => End::Ended,
        _ => End::Stuck,
    }
}

/// Copies `r` to `w` until `r` ends (then passes the end on). Returns false
/// if a read or a write made no progress for [`IDLE`]; I/O errors end it
/// normally (a side reset or closed).
async fn pump(
    r: &mut ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    conn: &AtomicU64,
    total: &AtomicU64,
) -> bool {
    let mut buf = vec![0u8; BUF];
    // Bounded by IDLE per pass and the connection's life.
    loop {
        match timeout(IDLE, r.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                let _ = timeout(LINGER, w.shutdown()).await;
                return true;
            }
            Ok(Ok(n)) => {
                match timeout(IDLE, w.write_all(&buf[..n])).await {
                    Ok(Ok(())) => {}
                    // The reader's side is gone.
                    Ok(Err(_)) => return true,
                    Err(_) => return false,
                }
                conn.fetch_add(n as u64, Ordering::Relaxed);
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}
