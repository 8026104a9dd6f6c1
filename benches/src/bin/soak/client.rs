//! The client process: our client (pool with heartbeat and pre-warming)
//! connected through the cutting proxy, and the workload. Prints `READY`,
//! then answers `start` (run the workload in the background), `stats` and
//! `close` (close the client).
//!
//! # Attributing failures
//!
//! A stream that fails is "killed" (its session was cut) when every error it
//! saw is its session's end because the connection to the peer ended
//! (`SessionError::PeerEof`: EOF, reset or a truncated TLS record), or, while
//! the stream was being opened on a new session, the TLS handshake losing its
//! connection the same way. Whatever phase the stream was in counts: being
//! opened, its SYN in flight, mid-transfer, or waiting for the end.
//!
//! The proxy is the client's only peer. It ends a client connection only
//! when it cuts it, or after the server ended its side, which our server does
//! only when the client closed first (the pool closing a session). So a
//! `PeerEof` means a cut unless a session ended on its own, and the parent
//! checks that never happened, with two counts from different places: the
//! sessions the client lost (died or failed to dial) are at most the cuts,
//! and the connections the proxy saw end without a cut are at most the
//! sessions the pool closed. Everything else is unexpected: a wrong byte or
//! hash, a clean but early end of stream, a stall, a timeout, a refusal, a
//! reset stream, a session closed for any other reason (heartbeat timeout,
//! protocol error, local close).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anytls_tokio::core::pool::CloseReason;
use anytls_tokio::core::{SessionError, StreamError};
use anytls_tokio::tls::parse_pin;
use anytls_tokio::{Client, ClientConfig, PoolConfig, Verification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::control_loop;
use crate::proto::{
    DOWN, Fail, Header, PASSWORD, Rng, STALL, TRAILER_LEN, UP, bounded, mix, recv_pattern,
    send_pattern,
};
use crate::server::read_full;
use crate::{Cli, Res};

/// Pool timings: short, so that maintenance and heartbeats run many times.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole stream, however slow the machine.
const STREAM_LIMIT: Duration = Duration::from_secs(180);
/// Streams per worker (far more than a run can start).
const MAX_STREAMS: u64 = 10_000_000;
/// Unexpected failures printed (the rest are counted).
const MAX_REPORTS: u64 = 30;
const CLIENT_CHUNKS: u64 = 4;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Causes of unexpected failures, as reported in `stats`.
pub const CAUSES: [&str; 6] = [
    "corrupt",
    "early_eof",
    "stream_reset",
    "stalled",
    "session_closed",
    "other",
];

/// The cause (index into [`CAUSES`]) of an unexpected failure.
fn cause(fails: &[Fail]) -> usize {
    if fails.iter().any(Fail::is_corruption) {
        return 0;
    }
    if fails.iter().any(|f| matches!(f, Fail::EarlyEof { .. })) {
        return 1;
    }
    fn inner(f: &Fail) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        f.io().and_then(|e| e.get_ref())
    }
    if fails.iter().any(|f| {
        inner(f)
            .is_some_and(|i| matches!(i.downcast_ref::<StreamError>(), Some(StreamError::Reset(_))))
    }) {
        return 2;
    }
    if fails.iter().any(|f| matches!(f, Fail::Stalled(_))) {
        return 3;
    }
    if fails
        .iter()
        .any(|f| inner(f).is_some_and(|i| i.downcast_ref::<SessionError>().is_some()))
    {
        return 4;
    }
    5
}

/// Where a stream was when it failed.
const CONNECT: u8 = 0;
/// Opened, no answer byte yet.
const OPENED: u8 = 1;
/// Answer bytes arriving.
const TRANSFER: u8 = 2;
/// Everything received, waiting for the end of stream.
const TAIL: u8 = 3;
pub const PHASES: [&str; 4] = ["connect", "opened", "transfer", "tail"];

#[derive(Default)]
struct Counters {
    workers: AtomicU64,
    /// [short, long].
    started: [AtomicU64; 2],
    completed: [AtomicU64; 2],
    killed: [AtomicU64; 2],
    /// Killed streams per phase.
    killed_in: [AtomicU64; 4],
    unexpected: AtomicU64,
    /// Unexpected failures by their first cause, per [`cause`].
    causes: [AtomicU64; CAUSES.len()],
    corrupt: AtomicU64,
    /// Verified payload of completed streams.
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Stream handles alive.
    handles: AtomicU64,
}

struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn new(a: &'a AtomicU64) -> Gauge<'a> {
        a.fetch_add(1, Ordering::Relaxed);
        Gauge(a)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn pool_config(cli: &Cli) -> PoolConfig {
    {
        let mut c = PoolConfig::default();
        c.check_interval = CHECK_INTERVAL;
        c.idle_timeout = IDLE_TIMEOUT;
        c.min_idle = cli.ensure_idle;
        c.ensure_idle = cli.ensure_idle;
        c.heartbeat = Some(HEARTBEAT);
        c.heartbeat_timeout = Some(HEARTBEAT_TIMEOUT);
        c.max_streams_per_session = cli.streams_per_session as usize;
        c.dial_backoff = Duration::from_millis(100);
        c.max_dial_backoff = Duration::from_secs(2);
        c
    }
}

pub async fn run(cli: &Cli) -> Res<()> {
    let server = cli.server.clone().ok_or("--role client needs --server")?;
    let pin = parse_pin(cli.pin.as_deref().ok_or("--role client needs --pin")?)?;
    let seed = cli.seed.ok_or("--role client needs --seed")?;
    let mut cfg = ClientConfig::new(server, PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    cfg.pool = pool_config(cli);
    cfg.limits = crate::limits(cli);
    let client = Client::new(cfg)?;
    let counters = Arc::new(Counters::default());
    let work = Work {
        seed,
        seconds: cli.seconds,
        short: cli.short_workers,
        long: cli.long_workers,
        long_max_mib: cli.long_max_mib.max(1),
        slow_readers: cli.streams_per_session == 1,
    };
    println!("READY");
    control_loop(|cmd| match cmd {
        "start" => {
            start(&client, &counters, &work);
            Ok("OK".into())
        }
        "stats" => Ok(stats_line(&client, &counters)),
        "close" => {
            client.close();
            Ok("OK".into())
        }
        _ => Err(format!("unknown command {cmd:?}").into()),
    })
    .await
}

fn stats_line(client: &Client, c: &Counters) -> String {
    // First, and Acquire: with no worker left, the counts below are final.
    let workers = c.workers.load(Ordering::Acquire);
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let causes: Vec<String> = CAUSES
        .iter()
        .zip(&c.causes)
        .map(|(name, n)| format!("unexpected_{name}={}", g(n)))
        .collect();
    let p = client.stats();
    let closed_idle = p
        .closed
        .get(&CloseReason::IdleTimeout)
        .copied()
        .unwrap_or(0);
    let closed_all: u64 = p.closed.values().sum();
    format!(
        "STATS running={} started={} started_long={} completed={} completed_long={} \
         killed={} killed_long={} killed_connect={} killed_opened={} killed_transfer={} \
         killed_tail={} unexpected={} corrupt={} bytes_up={} bytes_down={} handles={} \
         idle={} busy={} dialing={} dials={} prewarm={} established={} reused={} died={} \
         dial_failures={} closed_idle={} closed_other={} heartbeats={} heartbeat_acks={} \
         rtt_max_us={} {}",
        workers,
        g(&c.started[0]) + g(&c.started[1]),
        g(&c.started[1]),
        g(&c.completed[0]) + g(&c.completed[1]),
        g(&c.completed[1]),
        g(&c.killed[0]) + g(&c.killed[1]),
        g(&c.killed[1]),
        g(&c.killed_in[0]),
        g(&c.killed_in[1]),
        g(&c.killed_in[2]),
        g(&c.killed_in[3]),
        g(&c.unexpected),
        g(&c.corrupt),
        g(&c.bytes_up),
        g(&c.bytes_down),
        g(&c.handles),
        p.idle,
        p.busy,
        p.dialing,
        p.dials,
        p.prewarm_dials,
        p.established,
        p.reused,
        p.died,
        p.dial_failures,
        closed_idle,
        closed_all - closed_idle,
        p.heartbeats,
        p.heartbeat_acks,
        p.heartbeat_rtt_max.map_or(0, |d| d.as_micros() as u64),
        causes.join(" "),
    )
}

#[derive(Clone, Copy)]
struct Work {
    seed: u64,
    seconds: u64,
    short: usize,
    long: usize,
    long_max_mib: u64,
    slow_readers: bool,
}

fn start(client: &Client, counters: &Arc<Counters>, work: &Work) {
    let deadline = Instant::now() + Duration::from_secs(work.seconds);
    let total = work.short + work.long;
    // Counted here, so `running` is non-zero as soon as `start` answers.
    counters.workers.fetch_add(total as u64, Ordering::Relaxed);
    for w in 0..total {
        let (client, counters, work) = (client.clone(), counters.clone(), *work);
        tokio::spawn(async move {
            worker(w, w >= work.short, &client, &counters, &work, deadline).await;
            // Release: whoever sees the worker gone sees its last counts.
            counters.workers.fetch_sub(1, Ordering::Release);
        });
    }
}

/// One stream's parameters.
struct Spec {
    hdr: Header,
    long: bool,
    write_chunk: usize,
    read_buf: usize,
    /// A slow reader: this pause every 8 reads.
    pause: Option<Duration>,
}

impl Spec {
    fn random(rng: &mut Rng, id: u64, long: bool, work: &Work) -> Spec {
        let small = |rng: &mut Rng, max: u64| match rng.range(0, 9) {
            0 => 0,
            1..=5 => rng.range(1, 512),
            6..=8 => rng.range(513, 8 * KIB),
            _ => rng.range(8 * KIB + 1, max),
        };
        let seed = rng.next_u64();
        if !long {
            let (up, down) = (small(rng, 32 * KIB), small(rng, 64 * KIB));
            return Spec {
                hdr: Header { id, seed, up, down },
                long,
                write_chunk: rng.pick(&[16, 256, 4096, 65536]),
                read_buf: rng.pick(&[64, 1024, 16384, 65536]),
                pause: None,
            };
        }
        let big = |rng: &mut Rng| rng.range(256 * KIB, work.long_max_mib * MIB);
        let (up, down) = match rng.range(0, 9) {
            0..=6 => (big(rng), big(rng)),
            7 => (big(rng), small(rng, 64 * KIB)),
            _ => (small(rng, 64 * KIB), big(rng)),
        };
        let slow = work.slow_readers && rng.percent(15);
        Spec {
            hdr: Header { id, seed, up, down },
            long,
            write_chunk: rng.pick(&[1024, 16384, 65536, 262_144]),
            read_buf: if slow {
                4096
            } else {
                rng.pick(&[4096, 32768, 262_144])
            },
            pause: slow.then_some(Duration::from_millis(2)),
        }
    }
}

async fn worker(
    index: usize,
    long: bool,
    client: &Client,
    c: &Counters,
    work: &Work,
    deadline: Instant,
) {
    let mut rng = Rng::new(mix(work.seed, 1000 + index as u64));
    let kind = usize::from(long);
    for k in 0..MAX_STREAMS {
        if Instant::now() >= deadline {
            break;
        }
        let spec = Spec::random(&mut rng, ((index as u64) << 32) | k, long, work);
        c.started[kind].fetch_add(1, Ordering::Relaxed);
        let phase = AtomicU8::new(CONNECT);
        let res =
            match tokio::time::timeout(STREAM_LIMIT, one_stream(client, &spec, &phase, c)).await {
                Ok(r) => r,
                Err(_) => Err(vec![Fail::Stalled("the whole stream")]),
            };
        match res {
            Ok(()) => {
                c.completed[kind].fetch_add(1, Ordering::Relaxed);
                c.bytes_up.fetch_add(spec.hdr.up, Ordering::Relaxed);
                c.bytes_down.fetch_add(spec.hdr.down, Ordering::Relaxed);
            }
            Err(fails) => {
                let p = phase.load(Ordering::Relaxed);
                if fails.iter().all(|f| is_cut(f, p)) {
                    c.killed[kind].fetch_add(1, Ordering::Relaxed);
                    c.killed_in[usize::from(p)].fetch_add(1, Ordering::Relaxed);
                } else {
                    if fails.iter().any(Fail::is_corruption) {
                        c.corrupt.fetch_add(1, Ordering::Relaxed);
                    }
                    c.causes[cause(&fails)].fetch_add(1, Ordering::Relaxed);
                    let n = c.unexpected.fetch_add(1, Ordering::Relaxed);
                    if n < MAX_REPORTS {
                        let list: Vec<String> = fails.iter().map(|f| f.to_string()).collect();
                        eprintln!(
                            "soak client: UNEXPECTED failure of stream {:#x} ({}, up {} B, down {} B, \
                             phase {}): {}",
                            spec.hdr.id,
                            if spec.long { "long" } else { "short" },
                            spec.hdr.up,
                            spec.hdr.down,
                            PHASES[usize::from(p)],
                            list.join("; ")
                        );
                    }
                }
            }
        }
        let think = if long {
            rng.range(0, 100)
        } else {
            rng.range(0, 20)
        };
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

/// Whether `f` is what a cut of the stream's session causes.
fn is_cut(f: &Fail, phase: u8) -> bool {
    let Some(e) = f.io() else {
        return false;
    };
    if let Some(se) = e.get_ref().and_then(|i| i.downcast_ref::<SessionError>()) {
        return matches!(se, SessionError::PeerEof);
    }
    // Opening the stream on a new session: its TLS handshake lost the
    // connection.
    use std::io::ErrorKind::*;
    phase == CONNECT
        && matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        )
}

/// One stream: open, send the header and the upload while reading the
/// download, the trailer and the end of stream. Every failure seen, if any.
async fn one_stream(
    client: &Client,
    spec: &Spec,
    phase: &AtomicU8,
    c: &Counters,
) -> Result<(), Vec<Fail>> {
    let hdr = spec.hdr;
    let stream = match tokio::time::timeout(STALL, client.connect(Header::dest(hdr.id))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(vec![Fail::Io("connect", e)]),
        Err(_) => return Err(vec![Fail::Stalled("connect")]),
    };
    // Declared before the halves: dropped after them.
    let _handle = Gauge::new(&c.handles);
    phase.store(OPENED, Ordering::Relaxed);
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        bounded("write header", w.write_all(&hdr.encode())).await?;
        let mut chunks = Rng::new(mix(hdr.seed, CLIENT_CHUNKS));
        send_pattern(
            &mut w,
            mix(hdr.seed, UP),
            hdr.up,
            spec.write_chunk,
            &mut chunks,
        )
        .await
    };
    let reader = async {
        recv_pattern(
            &mut r,
            "download",
            mix(hdr.seed, DOWN),
            hdr.down,
            spec.read_buf,
            |_| phase.store(TRANSFER, Ordering::Relaxed),
            spec.pause,
        )
        .await?;
        let mut t = [0u8; TRAILER_LEN];
        read_full(&mut r, &mut t, "trailer").await?;
        phase.store(TAIL, Ordering::Relaxed);
        let mut more = [0u8; 1];
        if bounded("end of stream", r.read(&mut more)).await? != 0 {
            return Err(Fail::Protocol("data after the trailer".into()));
        }
        Ok(t)
    };
    let (sent, got) = tokio::join!(writer, reader);
    match (sent, got) {
        (Ok(up_hash), Ok(t)) => {
            let mut h = [0u8; 8];
            h.copy_from_slice(&t[1..]);
            if t[0] != b'K' || u64::from_be_bytes(h) != up_hash {
                return Err(vec![Fail::Protocol(format!(
                    "trailer {t:02x?}: the server's hash of the upload is not ours ({up_hash:#018x})"
                ))]);
            }
            Ok(())
        }
        (sent, got) => Err([sent.err(), got.err()].into_iter().flatten().collect()),
    }
}
