//! `flood`: what one stuck stream costs. Everything runs on 127.0.0.1,
//! ephemeral ports.
//!
//! * Upload: our client pushes up to 1 GiB on a stream whose target never
//!   reads. Backpressure (the target's socket, our server's receive cap, the
//!   TLS connection, the client's send cap) blocks the client's writes;
//!   reported: the bytes they accepted until then and where those sit.
//! * Download: a target writes to our server as fast as it can, for a client
//!   stream that is never read, until its writes block; the same figures.
//! * In both, once the stream is stuck, a second stream (on a second
//!   session: the stuck session is busy) echoes through the same client and
//!   server; its latency is reported.
//! * The writer keeps waiting for up to `--stall` (default 8 s): longer than
//!   `SessionLimits::stalled_stream_timeout` (5 s), after which the side that
//!   cannot deliver lifts its pause, buffers up to `stream_recv_limit` and
//!   resets the stream; how the stream ended is reported, and the peak RSS
//!   (VmHWM, reset by writing `5` to `/proc/<pid>/clear_refs` just before the
//!   flood) of our server and our client over the whole run, next to the
//!   caps.
//!
//! Our server and our client run in child processes of this binary (`flood
//! --role server|client`, driven over stdin/stdout, one command per line,
//! exiting when stdin closes), so each has its own RSS. The parent runs the
//! targets and measures. `--quick` waits 1 s, so it sees the blocked phase
//! but not the reset.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anytls_core::SessionLimits;
use anytls_tokio::tls::{Identity, Verification, hex32, parse_pin};
use anytls_tokio::{AnyTlsStream, Client, ClientConfig, SocksAddr};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

use anytls_benches::procs::{self, ChildArgs, Res, control_loop, need, os, reset_hwm, status_kib};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Bound of any single step (a control command, a wait, an echo).
const STEP: Duration = Duration::from_secs(20);
/// Fixed and local.
const PASSWORD: &str = "flood-bench-Pw_1";
/// Writes of the pushing side.
const WRITE: usize = 64 * 1024;
/// Size of one echo on the second session.
const ECHO: usize = 1024;

/// Backpressure bench of anytls-rs on 127.0.0.1: one stream whose other end
/// never reads, the bytes accepted before the writer blocks, the peak RSS of
/// our server and client, and a second session's echo latency meanwhile.
#[derive(Parser)]
#[command(name = "flood")]
struct Cli {
    /// A run of a few seconds: writers give up after 1 s without progress
    /// (before any reset), 5 echo rounds.
    #[arg(long)]
    quick: bool,
    /// MiB the client offers on the stuck upload stream [default: 1024].
    #[arg(long, value_name = "MIB")]
    mib: Option<u64>,
    /// Seconds a writer waits without progress before it gives up
    /// [default: stalled_stream_timeout + 3 = 8; --quick: 1].
    #[arg(long, value_name = "SECS")]
    stall: Option<f64>,
    /// Echoes on the second session while the stream is stuck
    /// [default: 20; --quick: 5].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,

    // Child process roles (internal).
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    #[command(flatten)]
    child: ChildArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Our AnyTLS server with the built-in TCP relay, default settings.
    Server,
    /// Our AnyTLS client, default settings, driven by commands.
    Client,
}

fn main() {
    let cli = Cli::parse();
    let rt = procs::runtime(
        "flood",
        1,
        None,
        match cli.role {
            Some(Role::Server) => anytls_tokio::RuntimeMode::PerCore,
            _ => anytls_tokio::RuntimeMode::WorkStealing,
        },
    );
    let res = rt.block_on(async {
        match cli.role {
            Some(Role::Server) => procs::role_server(&cli.child, PASSWORD).await,
            Some(Role::Client) => role_client(&cli).await,
            None => bench(&cli).await,
        }
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = res {
        eprintln!("flood: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// A writer that pushes until it is done, blocked or reset.

/// A write that makes no progress for this long has hit backpressure.
const PROBE: Duration = Duration::from_millis(500);
const NEVER: u64 = u64::MAX;

/// Progress of one pushing writer, shared with whoever watches it.
struct Push {
    started: Instant,
    /// Bytes its writes accepted.
    bytes: AtomicU64,
    /// Microseconds from `started` to the last write that made progress.
    last_us: AtomicU64,
    /// Bytes accepted when a write first made no progress for `PROBE`
    /// (`NEVER` until then), and when the last progress before it was.
    first_block_bytes: AtomicU64,
    first_block_us: AtomicU64,
    done: AtomicBool,
    /// Microseconds from `started` to the end.
    end_us: AtomicU64,
    /// It stopped because no write made progress for the stall time.
    blocked: AtomicBool,
    /// It stopped on this write error (the stream was reset, ...).
    error: Mutex<Option<String>>,
}

impl Push {
    fn new() -> Arc<Push> {
        Arc::new(Push {
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            first_block_bytes: AtomicU64::new(NEVER),
            first_block_us: AtomicU64::new(0),
            done: AtomicBool::new(false),
            end_us: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            error: Mutex::new(None),
        })
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Writes up to `total` bytes to `w`, `WRITE` at a time, until a write
    /// makes no progress for `stall` or fails.
    async fn run<W: AsyncWriteExt + Unpin>(&self, w: &mut W, total: u64, stall: Duration) {
        let buf = vec![0x5au8; WRITE];
        let probe = PROBE.min(stall);
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(WRITE as u64) as usize;
            let write = w.write(&buf[..n]);
            tokio::pin!(write);
            let res = match timeout(probe, &mut write).await {
                Ok(r) => Some(r),
                Err(_) => {
                    if self.first_block_bytes.load(Ordering::Relaxed) == NEVER {
                        let last = self.last_us.load(Ordering::Relaxed);
                        self.first_block_us.store(last, Ordering::Relaxed);
                        self.first_block_bytes.store(sent, Ordering::Relaxed);
                    }
                    timeout(stall - probe, &mut write).await.ok()
                }
            };
            match res {
                None => {
                    self.blocked.store(true, Ordering::Relaxed);
                    break;
                }
                Some(Ok(0)) => {
                    self.fail("write accepted nothing".into());
                    break;
                }
                Some(Ok(k)) => {
                    sent += k as u64;
                    self.bytes.store(sent, Ordering::Relaxed);
                    self.last_us.store(self.now_us(), Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    self.fail(e.to_string());
                    break;
                }
            }
        }
        self.end_us.store(self.now_us(), Ordering::Relaxed);
        self.done.store(true, Ordering::Release);
    }

    fn fail(&self, e: String) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// `PROGRESS key=value ...` (the error with `_` for blanks).
    fn report(&self) -> String {
        let err = self
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "-".into())
            .replace(char::is_whitespace, "_");
        let first = self.first_block_bytes.load(Ordering::Relaxed);
        format!(
            "PROGRESS bytes={} last_us={} first_block_bytes={} first_block_us={} done={} \
             end_us={} blocked={} err={err}",
            self.bytes.load(Ordering::Relaxed),
            self.last_us.load(Ordering::Relaxed),
            if first == NEVER {
                "-".to_string()
            } else {
                first.to_string()
            },
            self.first_block_us.load(Ordering::Relaxed),
            u8::from(self.done.load(Ordering::Acquire)),
            self.end_us.load(Ordering::Relaxed),
            u8::from(self.blocked.load(Ordering::Relaxed)),
        )
    }
}

/// `key=value` pairs of a line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// Child roles.

/// One echo of `ECHO` bytes on a new stream: from `connect` to the last
/// byte back.
async fn echo_once(client: &Client, target: SocketAddr) -> Res<Duration> {
    let data: Vec<u8> = (0..ECHO).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let run = async {
        let mut s = client.connect(SocksAddr::from(target)).await?;
        s.write_all(&data).await?;
        let mut back = vec![0u8; ECHO];
        s.read_exact(&mut back).await?;
        std::io::Result::Ok(back)
    };
    let back = timeout(STEP, run).await.map_err(|_| "echo timed out")??;
    let took = start.elapsed();
    if back != data {
        return Err("echo came back different".into());
    }
    Ok(took)
}

async fn role_client(cli: &Cli) -> Res<()> {
    let pin = parse_pin(need(&cli.child.pin, "pin")?)?;
    let mut cfg = ClientConfig::new(need(&cli.child.server, "server")?.clone(), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    let client = Client::new(cfg)?;
    // Streams kept open (never read) until `release`.
    let held: Arc<Mutex<Vec<AnyTlsStream>>> = Arc::default();
    let mut push: Option<Arc<Push>> = None;
    println!("READY {}", need(&cli.child.server, "server")?);
    control_loop(async |cmd| {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        match args.as_slice() {
            ["push", target, bytes, stall_ms] => {
                let target: SocketAddr = target.parse()?;
                let total: u64 = bytes.parse()?;
                let stall = Duration::from_millis(stall_ms.parse()?);
                let mut s = timeout(STEP, client.connect(SocksAddr::from(target)))
                    .await
                    .map_err(|_| "connect timed out")??;
                let p = Push::new();
                push = Some(p.clone());
                let held = held.clone();
                tokio::spawn(async move {
                    p.run(&mut s, total, stall).await;
                    held.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                });
                Ok("OK".into())
            }
            ["progress"] => Ok(push.as_ref().ok_or("no push")?.report()),
            ["hold", target] => {
                let target: SocketAddr = target.parse()?;
                let s = timeout(STEP, client.connect(SocksAddr::from(target)))
                    .await
                    .map_err(|_| "connect timed out")??;
                held.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                Ok("OK".into())
            }
            ["echo", target] => {
                let took = echo_once(&client, target.parse()?).await?;
                Ok(format!("ECHO us={}", took.as_micros()))
            }
            ["release"] => {
                held.lock().unwrap_or_else(|e| e.into_inner()).clear();
                Ok("OK".into())
            }
            ["stats"] => {
                let s = client.stats();
                Ok(format!(
                    "STATS dials={} idle={} busy={} reused={}",
                    s.dials, s.idle, s.busy, s.reused
                ))
            }
            _ => Err(format!("unknown command {cmd:?}").into()),
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Child processes, from the parent's side.

struct Proc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Proc {
    /// Starts `flood --role ...` and reads its `READY <addr>`.
    async fn start(name: &str, args: Vec<OsString>) -> Res<(Proc, String)> {
        let mut child = procs::spawn_self(args)?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut p = Proc {
            name: name.to_owned(),
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let line = p.line().await?;
        let addr = line
            .strip_prefix("READY ")
            .ok_or_else(|| format!("{name}: expected READY, got {line:?}"))?
            .to_owned();
        Ok((p, addr))
    }

    fn pid(&self) -> Res<u32> {
        self.child
            .id()
            .ok_or_else(|| format!("{} has exited", self.name).into())
    }

    async fn line(&mut self) -> Res<String> {
        procs::answer_line(&self.name, &mut self.lines, STEP).await
    }

    async fn request(&mut self, cmd: &str) -> Res<String> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.line().await
    }

    /// `key=value` pairs of an answer.
    async fn fields(&mut self, cmd: &str) -> Res<HashMap<String, String>> {
        Ok(fields(&self.request(cmd).await?))
    }

    async fn number(&mut self, cmd: &str, key: &str) -> Res<u64> {
        let f = self.fields(cmd).await?;
        f.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{}: no {key} in the answer to {cmd}", self.name).into())
    }
}

/// Bytes queued in the kernel (Recv-Q + Send-Q of both ends) on the
/// established TCP connections to or from `ports`, from `ss`.
async fn kernel_queued(ports: &[u16]) -> Option<u64> {
    let out = Command::new("ss").arg("-tnH").output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0] != "ESTAB" {
            continue;
        }
        let ours = f[3..5].iter().any(|a| {
            a.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_some_and(|p| ports.contains(&p))
        });
        if ours {
            total += f[1].parse::<u64>().unwrap_or(0) + f[2].parse::<u64>().unwrap_or(0);
        }
    }
    Some(total)
}

// ---------------------------------------------------------------------------
// Targets (in the parent).

/// Accepts connections and holds them, never reading.
async fn stuck_target() -> Res<(SocketAddr, Arc<Mutex<Vec<TcpStream>>>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            h.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        }
    });
    Ok((addr, held))
}

/// Writes to every connection until a write makes no progress for `stall`
/// (progress in the returned `Push`, of the latest connection), then holds it.
async fn source_target(stall: Duration) -> Res<(SocketAddr, Arc<Mutex<Option<Arc<Push>>>>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let slot: Arc<Mutex<Option<Arc<Push>>>> = Arc::default();
    let s2 = slot.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let p = Push::new();
            *s2.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
            tokio::spawn(async move {
                p.run(&mut s, u64::MAX, stall).await;
                // Held (not read, not closed) until the bench ends.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(s);
            });
        }
    });
    Ok((addr, slot))
}

async fn echo_target() -> Res<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------
// The bench.

struct Settings {
    offer: u64,
    stall: Duration,
    rounds: usize,
}

/// How the stuck stream ended.
enum End {
    /// The writer made no progress for the stall time and gave up.
    Blocked,
    /// A write failed: the stream (or the target connection) was reset.
    Reset(String),
    /// Everything offered was accepted: no backpressure.
    Completed,
}

/// The figures of one scenario.
struct Outcome {
    /// Bytes accepted when the writer first blocked (`None`: it never did).
    first_block: Option<u64>,
    /// When it last made progress before that.
    first_block_at: Duration,
    /// Bytes accepted in all, and when the writer stopped.
    accepted: u64,
    ended_at: Duration,
    end: End,
    /// Kernel socket queues of the TLS and target connections when blocked.
    kernel: Option<u64>,
    /// First echo on the second session (a dial), then the others.
    echo_first: Option<Duration>,
    echoes: Vec<Duration>,
    dials: u64,
    server_sessions: u64,
    server: Rss,
    client: Rss,
}

struct Rss {
    start_kib: u64,
    peak_kib: u64,
    reset: bool,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn bytes(b: u64) -> String {
    if b >= MIB {
        format!("{:.2} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / KIB as f64)
    }
}

fn dur(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", d.as_micros())
    }
}

/// Directions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// The client pushes; the target never reads.
    Upload,
    /// The target pushes; the client never reads.
    Download,
}

struct Ctx {
    cert: PathBuf,
    key: PathBuf,
    pin: [u8; 32],
    echo: SocketAddr,
}

async fn bench(cli: &Cli) -> Res<()> {
    let started = Instant::now();
    let q = cli.quick;
    let reset_after = SessionLimits::default().stalled_stream_timeout;
    let s = Settings {
        offer: cli.mib.unwrap_or(1024).max(1) * MIB,
        stall: cli.stall.map_or(
            if q {
                Duration::from_secs(1)
            } else {
                reset_after + Duration::from_secs(3)
            },
            |v| Duration::from_secs_f64(v.max(0.2)),
        ),
        rounds: cli.rounds.unwrap_or(if q { 5 } else { 20 }).max(1),
    };
    let dir = std::env::temp_dir().join(format!("anytls-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let limit = Duration::from_secs(if q { 120 } else { 600 });
    let res = tokio::select! {
        r = timeout(limit, run_all(&s, &dir, started)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("the bench did not finish within {limit:?}").into()),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    res
}

async fn run_all(s: &Settings, dir: &Path, started: Instant) -> Res<()> {
    let identity = Identity::self_signed(&["localhost".into()])?;
    let pin = identity.leaf_sha256().ok_or("no certificate")?;
    let (cert_pem, key_pem) = identity.to_pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, cert_pem)?;
    std::fs::write(&key, key_pem)?;
    let ctx = Ctx {
        cert,
        key,
        pin,
        echo: echo_target().await?,
    };

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let l = SessionLimits::default();
    println!("anytls-rs flood bench: 127.0.0.1 only, {cpus} CPUs, {build} build");
    println!(
        "  one stream whose other end never reads; its writer gives up after {} without \
         progress; {} echoes of {ECHO} bytes on a second session once it is stuck",
        dur(s.stall),
        s.rounds
    );
    println!(
        "caps (SessionLimits defaults, per session): receive {} per stream / {} in all; \
         a lone stream over it pauses the session for {}, then buffers up to {} and is reset; \
         send {} per stream / {} in all; control frames {}; writes of {}",
        bytes(l.stream_recv_buffer as u64),
        bytes(l.session_recv_buffer as u64),
        dur(l.stalled_stream_timeout),
        bytes(l.stream_recv_limit as u64),
        bytes(l.stream_send_buffer as u64),
        bytes(l.session_send_buffer as u64),
        bytes(l.control_queue as u64),
        bytes(l.max_write as u64),
    );
    println!();

    let up = scenario(Dir::Upload, s, &ctx).await?;
    let down = scenario(Dir::Download, s, &ctx).await?;
    let problems = print_table(s, &l, &up, &down);
    if !problems.is_empty() {
        println!();
        println!("problems");
        for p in &problems {
            println!("  {p}");
        }
    }
    println!();
    println!("done in {}", dur(started.elapsed()));
    Ok(())
}

/// The writer's progress, from the client process (upload) or the target.
async fn progress(
    dir: Dir,
    client: &mut Proc,
    source: &Mutex<Option<Arc<Push>>>,
) -> Res<HashMap<String, String>> {
    Ok(match dir {
        Dir::Upload => client.fields("progress").await?,
        Dir::Download => {
            let p = source.lock().unwrap_or_else(|e| e.into_inner()).clone();
            fields(&p.map_or_else(|| "PROGRESS".into(), |p| p.report()))
        }
    })
}

/// One flood with fresh server and client processes.
async fn scenario(dir: Dir, s: &Settings, ctx: &Ctx) -> Res<Outcome> {
    let (mut server, server_addr) = Proc::start(
        "our server",
        os(&[
            &"--role", &"server", &"--cert", &ctx.cert, &"--key", &ctx.key,
        ]),
    )
    .await?;
    let (mut client, _) = Proc::start(
        "our client",
        os(&[
            &"--role",
            &"client",
            &"--server",
            &server_addr,
            &"--pin",
            &hex32(&ctx.pin),
        ]),
    )
    .await?;
    let server_port: u16 = server_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or("server address")?;
    let echo = ctx.echo.to_string();

    // One echo first: code paged in, and a session for the flood to reuse.
    client.request(&format!("echo {echo}")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dials_before = client.number("stats", "dials").await?;
    let pids = [server.pid()?, client.pid()?];
    let reset = pids.map(reset_hwm);
    let start_kib = pids.map(|p| status_kib(p, "VmRSS:").unwrap_or(0));

    // The flood.
    let (stuck, held) = stuck_target().await?;
    let (source_addr, source) = source_target(s.stall).await?;
    let target_port = match dir {
        Dir::Upload => {
            let cmd = format!("push {stuck} {} {}", s.offer, s.stall.as_millis());
            client.request(&cmd).await?;
            stuck.port()
        }
        Dir::Download => {
            client.request(&format!("hold {source_addr}")).await?;
            source_addr.port()
        }
    };
    let mut kernel = None;
    let mut echo_first = None;
    let mut echoes = Vec::new();
    // At 10 MiB/s or more, unless it blocks.
    let deadline = Instant::now() + STEP + 2 * s.stall + Duration::from_secs(s.offer / (10 * MIB));
    let p = loop {
        let p = progress(dir, &mut client, &source).await?;
        let done = p.get("done").is_some_and(|v| v == "1");
        let stuck_now = p.get("first_block_bytes").is_some_and(|v| v != "-");
        if stuck_now && echo_first.is_none() && !done {
            // While it is stuck: the kernel's share, then a second session.
            kernel = kernel_queued(&[server_port, target_port]).await;
            for _ in 0..s.rounds {
                let us = client.number(&format!("echo {echo}"), "us").await?;
                let d = Duration::from_micros(us);
                if echo_first.is_none() {
                    echo_first = Some(d);
                } else {
                    echoes.push(d);
                }
            }
            continue;
        }
        if done {
            break p;
        }
        if Instant::now() > deadline {
            return Err(format!("the flood neither blocked nor finished: {p:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let num = |k: &str| p.get(k).and_then(|v| v.parse::<u64>().ok());
    let us = |k: &str| Duration::from_micros(num(k).unwrap_or(0));
    let end = match p.get("err").filter(|e| *e != "-") {
        Some(e) => End::Reset(e.replace('_', " ")),
        None if p.get("blocked").is_some_and(|v| v == "1") => End::Blocked,
        None => End::Completed,
    };
    let out = Outcome {
        first_block: num("first_block_bytes"),
        first_block_at: us("first_block_us"),
        accepted: num("bytes").unwrap_or(0),
        ended_at: us("end_us"),
        end,
        kernel,
        echo_first,
        echoes,
        dials: client.number("stats", "dials").await? - dials_before,
        server_sessions: server.number("stats", "active").await?,
        server: rss(pids[0], start_kib[0], reset[0]),
        client: rss(pids[1], start_kib[1], reset[1]),
    };
    client.request("release").await?;
    drop(held);
    drop(client);
    drop(server);
    Ok(out)
}

fn rss(pid: u32, start_kib: u64, reset: bool) -> Rss {
    Rss {
        start_kib,
        peak_kib: status_kib(pid, "VmHWM:").unwrap_or(0),
        reset,
    }
}

fn rss_cell(r: &Rss) -> String {
    let how = if r.reset { "" } else { " (VmHWM not reset)" };
    format!(
        "{} (from {}, +{}){how}",
        mib(r.peak_kib),
        mib(r.start_kib),
        mib(r.peak_kib.saturating_sub(r.start_kib))
    )
}

/// Prints the table; returns what went wrong.
fn print_table(s: &Settings, l: &SessionLimits, up: &Outcome, down: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, o) in [("upload", up), ("download", down)] {
        if o.first_block.is_none() || matches!(o.end, End::Completed) {
            problems.push(format!(
                "{name}: the writer never blocked ({} accepted)",
                bytes(o.accepted)
            ));
        }
        if o.echo_first.is_none() {
            problems.push(format!("{name}: no echo ran while the stream was stuck"));
        }
        if o.dials != 1 {
            problems.push(format!(
                "{name}: the client dialed {} sessions for the echoes, not 1",
                o.dials
            ));
        }
        // The writer waits `stall` for each write: an error that surfaces
        // just then was there before, and nothing woke the writer.
        let own_deadline = o.first_block_at + s.stall;
        if matches!(o.end, End::Reset(_))
            && o.ended_at >= own_deadline
            && o.ended_at < own_deadline + Duration::from_millis(200)
        {
            problems.push(format!(
                "{name}: the write error surfaced only when the writer's own {} wait ran \
                 out (at {}): the blocked write was not woken when its stream was reset",
                dur(s.stall),
                dur(o.ended_at)
            ));
        }
        if o.server_sessions != 2 {
            problems.push(format!(
                "{name}: {} sessions open at the server at the end, not 2 (stuck + echo)",
                o.server_sessions
            ));
        }
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "never".into(), bytes);
    let echo = |o: &Outcome| {
        let mut v = o.echoes.clone();
        v.sort();
        match (v.get(v.len() / 2), v.last()) {
            (Some(m), Some(x)) => format!("{} / {} (of {})", dur(*m), dur(*x), v.len()),
            _ => "-".into(),
        }
    };
    let kernel = |o: &Outcome| o.kernel.map_or_else(|| "- (no ss)".into(), bytes);
    // Approximate: the kernel queues hold TLS records and frame headers too.
    let held = |o: &Outcome| match (o.kernel, o.first_block) {
        (Some(k), Some(b)) => format!("~{}", bytes(b.saturating_sub(k))),
        _ => "-".into(),
    };
    let end = |o: &Outcome, who: &str| match &o.end {
        End::Blocked => format!("no progress for {}: gave up", dur(s.stall)),
        End::Reset(e) => format!("{who} after {} ({e})", dur(o.ended_at)),
        End::Completed => "never blocked".into(),
    };
    let rows: Vec<(&str, String, String)> = vec![
        (
            "offered by the writer",
            bytes(s.offer),
            "unbounded (the target writes)".into(),
        ),
        (
            "accepted before the writer blocked",
            opt(up.first_block),
            opt(down.first_block),
        ),
        (
            "time of the last progress before that",
            dur(up.first_block_at),
            dur(down.first_block_at),
        ),
        ("in kernel socket queues then", kernel(up), kernel(down)),
        ("held in our two processes then", held(up), held(down)),
        (
            "echo on a second session: first (dial)",
            up.echo_first.map_or_else(|| "-".into(), dur),
            down.echo_first.map_or_else(|| "-".into(), dur),
        ),
        (
            "echo on a second session: median / max",
            echo(up),
            echo(down),
        ),
        (
            "sessions dialed for the echoes",
            up.dials.to_string(),
            down.dials.to_string(),
        ),
        (
            "how the stuck stream ended",
            end(up, "reset by the server"),
            end(down, "reset by the client"),
        ),
        ("accepted in all", bytes(up.accepted), bytes(down.accepted)),
        (
            "server: sessions open at the end",
            up.server_sessions.to_string(),
            down.server_sessions.to_string(),
        ),
        (
            "server peak RSS (VmHWM)",
            rss_cell(&up.server),
            rss_cell(&down.server),
        ),
        (
            "client peak RSS (VmHWM)",
            rss_cell(&up.client),
            rss_cell(&down.client),
        ),
        (
            "caps for the stuck stream (server)",
            format!(
                "receive {}, {} after {}",
                bytes(l.stream_recv_buffer as u64),
                bytes(l.stream_recv_limit as u64),
                dur(l.stalled_stream_timeout)
            ),
            format!("send {} + one write", bytes(l.stream_send_buffer as u64)),
        ),
        (
            "caps for the stuck stream (client)",
            format!("send {} + one write", bytes(l.stream_send_buffer as u64)),
            format!(
                "receive {}, {} after {}",
                bytes(l.stream_recv_buffer as u64),
                bytes(l.stream_recv_limit as u64),
                dur(l.stalled_stream_timeout)
            ),
        ),
    ];
    let h = (
        "figure",
        "upload: target never reads",
        "download: client never reads",
    );
    let width = |f: fn(&(&str, String, String)) -> usize, min: &str| {
        rows.iter()
            .map(f)
            .max()
            .unwrap_or(0)
            .max(min.chars().count())
    };
    let w0 = width(|r| r.0.chars().count(), h.0);
    let w1 = width(|r| r.1.chars().count(), h.1);
    let w2 = width(|r| r.2.chars().count(), h.2);
    let line = |a: &str, b: &str, c: &str| println!("| {a:<w0$} | {b:<w1$} | {c:<w2$} |");
    line(h.0, h.1, h.2);
    println!(
        "|{}|{}|{}|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for (a, b, c) in &rows {
        line(a, b, c);
    }
    problems
}
