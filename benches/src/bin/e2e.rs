//! `e2e`: the end-to-end bench. Everything runs on 127.0.0.1, ephemeral ports.
//!
//! * Baseline: one raw TLS 1.3 connection (tokio-rustls, ring, self-signed
//!   certificate) moving N MiB each way.
//! * Ours: app -> SOCKS5 -> our client -> TLS -> our server -> TCP target, N MiB
//!   each way; the ratio to the baseline, measured in the same run (interleaved).
//! * Reference: the same processes and hops without AnyTLS and SOCKS5 (TCP ->
//!   TLS tunnel -> TCP), to show what the topology allows on the machine; and
//!   the whole machine's CPU time per GiB of every path.
//! * First-request latency through SOCKS5: cold (new pool, no pre-warm), warm
//!   (pre-warmed idle session, `ensure_idle_session=1`), reused (session back in
//!   the pool), with a check that a warm request dialed nothing.
//! * Parallel downloads: N downloads of M MiB at once through SOCKS5, one
//!   client and one server (fresh processes); wall time, aggregate MiB/s, CPU
//!   per GiB and the peak RSS of both processes during the run.
//! * Latency under load: small requests through a client while a bulk
//!   download runs through the same client; p50 and p99, with every process
//!   on one runtime thread and on the default.
//! * Memory per idle session: VmRSS growth of the client and the server
//!   processes over S idle sessions.
//! * Optionally other AnyTLS implementations given by path or command (shoes,
//!   anytls-go, ...), side by side, or an already running SOCKS5 client. With
//!   a peer, the single-stream, many-stream and under-load cases run in every
//!   pairing (ours > ours, ours > peer, peer > ours, peer > peer) and print a
//!   table per case with the CPU time per GiB of the client and the server
//!   process (`/proc/<pid>/stat`) and ratios to the peer's own pair.
//!
//! `--svg PATH` writes a chart of the figures (`e2e/svg.rs`, hand-written SVG).
//!
//! Our server, our client and the baseline TLS server each run in a child
//! process of this binary (`e2e --role server|client|tls-server|...`), so RSS is
//! per process and every implementation runs under the same conditions. The
//! parent runs the TCP target and the measuring application. Children are
//! driven over stdin/stdout (one command per line) and exit when stdin closes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_tokio::socks5::{serve_socks5, socks5_connect};
use anytls_tokio::tls::{self, Identity, Verification, hex32, parse_pin};
use anytls_tokio::{Client, ClientConfig, RuntimeMode};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use anytls_benches::procs::{self, ChildArgs, Res, control_loop, need, os};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// The crate root is this file, so the modules' paths are given.
#[path = "e2e/chart.rs"]
mod chart;
#[path = "e2e/load.rs"]
mod load;
#[path = "e2e/pairs.rs"]
mod pairs;
#[path = "e2e/parallel.rs"]
mod parallel;
#[path = "e2e/svg.rs"]
mod svg;

use parallel::print_parallel;

const MIB: u64 = 1024 * 1024;
/// Response size of a latency request.
const SMALL: u64 = 1024;
/// Bound of any single step (a control command, a wait, a small request).
const STEP: Duration = Duration::from_secs(20);
/// A transfer that makes no progress for this long has stalled.
const STALL: Duration = Duration::from_secs(10);
/// Fixed and local; no leading `-`, so no peer's CLI takes it for a flag.
const PASSWORD: &str = "e2e-bench-Pw_1";
/// Targets of the performance issue.
const TARGET_RATIO: f64 = 0.70;
const TARGET_KIB_PER_SESSION: f64 = 12.0;

/// The `--threads` of the parent, for its children.
static CHILD_THREADS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// The `--runtime` of the parent, for its children.
static CHILD_RUNTIME: std::sync::OnceLock<RuntimeMode> = std::sync::OnceLock::new();

/// The `--threads` of the parent, for its children (`None`: the default).
fn child_threads() -> Option<usize> {
    CHILD_THREADS.get().copied().flatten()
}

/// "1", or "one per core" for the default.
fn threads_desc(threads: Option<usize>) -> String {
    match threads {
        Some(n) => n.to_string(),
        None => "one per core".into(),
    }
}

/// The data sent is byte `i % 251` at offset `i`, in chunks of whole periods,
/// so the receiver checks any slice with one comparison.
const PERIOD: usize = 251;
const CHUNK: usize = PERIOD * 256;

/// End-to-end bench of anytls-rs on 127.0.0.1: throughput against raw TLS,
/// first-request latency, memory per idle session; optionally side by side
/// with other AnyTLS implementations.
#[derive(Parser)]
#[command(name = "e2e")]
struct Cli {
    /// A run of a few seconds: small transfers, few rounds, 100 idle sessions.
    #[arg(long)]
    quick: bool,
    /// Worker threads of every process the bench starts (our client and
    /// server, the raw TLS server, the reference tunnel); 1 runs each on a
    /// current-thread runtime [default: tokio's, one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// How the connections of every process the bench starts share its
    /// threads (as the `anytls` program's `--runtime`) [default: as the
    /// program: our server per core, everything else work-stealing].
    #[arg(long, value_enum, value_name = "MODE")]
    runtime: Option<RuntimeMode>,
    /// MiB moved each way per throughput run [default: 512; --quick: 8].
    #[arg(long, value_name = "MIB")]
    mib: Option<u64>,
    /// Throughput runs per path and direction; the median is reported
    /// [default: 5; --quick: 1].
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Samples per latency figure [default: 9; --quick: 3].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Idle sessions of the memory test; 0 skips it [default: 1000; --quick: 100].
    #[arg(long, value_name = "N")]
    sessions: Option<usize>,
    /// Parallel downloads: this many at once through SOCKS5, one client and
    /// one server (ours, and every pairing with a peer), with the CPU per GiB
    /// and the peak RSS of the client and the server; 0 skips them [default: 100; --quick: 20].
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    /// MiB per parallel download [default: 10; --quick: 1].
    #[arg(long, value_name = "MIB")]
    parallel_mib: Option<u64>,
    /// Runs of the parallel downloads per pairing, interleaved; the median
    /// MiB/s and CPU and the largest peak are reported [default: 3; --quick: 1].
    #[arg(long, value_name = "N")]
    parallel_reps: Option<usize>,
    /// Latency under load: small requests through a client while a bulk
    /// download runs through the same client, per pairing, with every process
    /// on one runtime thread and on the default; p50 and p99 over this many;
    /// 0 skips it [default: 200; --quick: 20].
    #[arg(long, value_name = "N")]
    load_requests: Option<usize>,
    /// Write a chart (SVG) of throughput, first-request latency and the
    /// parallel downloads' peak RSS to this file.
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    /// Also measure shoes (cfal/shoes, tested with 0.3.2) at this path: its
    /// client and server together, with ours, and its server's memory.
    #[arg(long, value_name = "PATH")]
    shoes: Option<PathBuf>,
    /// Another AnyTLS server: a shell command with the placeholders
    /// {server_port}, {password}, {cert}, {key} (PEM files of a self-signed
    /// certificate for "localhost"), {fallback} (a local address that
    /// accepts anything) and {threads} (the runtime threads the run asks
    /// for: 1, or the number of CPUs for the default; for Go programs write
    /// `env GOMAXPROCS={threads} PROGRAM ...`). The command is run as
    /// `sh -c "exec CMD"`, so its process is the program, whose CPU time is
    /// read from /proc.
    #[arg(long, value_name = "CMD")]
    compare_server: Option<String>,
    /// Another AnyTLS client with a SOCKS5 listener: a shell command with the
    /// placeholders {socks_port}, {server_port}, {password}, {threads}. It
    /// must accept the self-signed certificate (SNI "localhost").
    #[arg(long, value_name = "CMD")]
    compare_client: Option<String>,
    /// Name of the implementation given by --compare-server/--compare-client.
    #[arg(long, value_name = "NAME", default_value = "peer")]
    compare_name: String,
    /// Also measure through an already running SOCKS5 proxy (any client, any
    /// server) that can reach 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    peer_socks5: Option<SocketAddr>,

    // Child process roles (internal).
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    /// The AnyTLS password of a `--role server|client` child [default: the
    /// bench's].
    #[arg(long, hide = true)]
    password: Option<String>,
    #[command(flatten)]
    child: ChildArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Our AnyTLS server with the built-in TCP relay.
    Server,
    /// Our AnyTLS client with a SOCKS5 listener.
    Client,
    /// The baseline: a raw TLS server speaking the target protocol.
    TlsServer,
    /// Reference: plain TCP in, TLS out to `--server` (no SOCKS5, no AnyTLS).
    TunnelClient,
    /// Reference: TLS in, plain TCP out to `--server` (the target).
    TunnelServer,
}

fn main() {
    let cli = Cli::parse();
    let threads = if cli.role.is_some() {
        cli.child.child_threads
    } else {
        let _ = CHILD_THREADS.set(cli.threads.map(usize::from));
        None
    };
    let mode = match cli.role {
        // Our server as the `anytls` program runs it; the references as before.
        Some(Role::Server) => cli.child.child_runtime.unwrap_or(RuntimeMode::PerCore),
        Some(_) => cli.child.child_runtime.unwrap_or(RuntimeMode::WorkStealing),
        None => {
            if let Some(mode) = cli.runtime {
                let _ = CHILD_RUNTIME.set(mode);
            }
            RuntimeMode::WorkStealing
        }
    };
    let rt = procs::runtime("e2e", 1, threads, mode);
    let res = rt.block_on(async {
        match cli.role {
            Some(Role::Server) => {
                let password = cli.password.as_deref().unwrap_or(PASSWORD);
                procs::role_server(&cli.child, password).await
            }
            Some(Role::Client) => role_client(&cli).await,
            Some(Role::TlsServer) => role_tls_server(&cli).await,
            Some(Role::TunnelClient) => role_tunnel_client(&cli).await,
            Some(Role::TunnelServer) => role_tunnel_server(&cli).await,
            None => bench(&cli).await,
        }
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = res {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// The target protocol: a 9-byte request, `D` + u64 (send me n bytes, then
// close) or `U` + u64 (here come n bytes; answer `K`, then close).

fn pattern() -> Vec<u8> {
    (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

fn request(kind: u8, n: u64) -> [u8; 9] {
    let mut r = [0u8; 9];
    r[0] = kind;
    r[1..].copy_from_slice(&n.to_be_bytes());
    r
}

/// `fut`, or a "stalled" error after [`STALL`] without it finishing.
async fn no_stall<T>(what: &str, fut: impl std::future::Future<Output = io::Result<T>>) -> Res<T> {
    match timeout(STALL, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(format!("stalled: no progress for {STALL:?} ({what})").into()),
    }
}

async fn send_pattern<W: AsyncWrite + Unpin>(w: &mut W, pat: &[u8], n: u64) -> Res<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        no_stall("writing", w.write_all(&pat[..k])).await?;
        left -= k as u64;
    }
    no_stall("flushing", w.flush()).await
}

/// Reads exactly `n` pattern bytes, checking every one.
async fn recv_pattern<R: AsyncRead + Unpin>(r: &mut R, pat: &[u8], n: u64) -> Res<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got: u64 = 0;
    while got < n {
        let want = (n - got).min(buf.len() as u64) as usize;
        let k = no_stall("reading", r.read(&mut buf[..want])).await?;
        if k == 0 {
            return Err(format!("stream ended after {got} of {n} bytes").into());
        }
        for piece in buf[..k].chunks(CHUNK) {
            let start = (got % PERIOD as u64) as usize;
            if piece != &pat[start..start + piece.len()] {
                return Err(format!("corrupted data near offset {got}").into());
            }
            got += piece.len() as u64;
        }
    }
    Ok(())
}

/// Serves one target connection.
async fn serve_target<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, pat: &[u8]) -> Res<()> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[1..]);
    let n = u64::from_be_bytes(len);
    match h[0] {
        b'D' => send_pattern(&mut s, pat, n).await?,
        b'U' => {
            recv_pattern(&mut s, pat, n).await?;
            s.write_all(b"K").await?;
            s.flush().await?;
        }
        k => return Err(format!("unknown request {k:#04x}").into()),
    }
    s.shutdown().await?;
    Ok(())
}

async fn start_target() -> Res<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let pat: Arc<[u8]> = pattern().into();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let pat = pat.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let _ = timeout(Duration::from_secs(600), serve_target(s, &pat)).await;
            });
        }
    });
    Ok((addr, task))
}

/// Waits (untimed by the caller) for the end of a finished exchange, so the
/// next one finds the session back in the pool.
async fn drain_to_eof<S: AsyncRead + Unpin>(s: &mut S) {
    let mut b = [0u8; 64];
    let _ = timeout(STEP, async {
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Download: the time from sending the request to the last byte.
async fn download<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    pat: &[u8],
    n: u64,
) -> Res<Duration> {
    let t0 = Instant::now();
    s.write_all(&request(b'D', n)).await?;
    s.flush().await?;
    recv_pattern(&mut s, pat, n).await?;
    let dt = t0.elapsed();
    drain_to_eof(&mut s).await;
    Ok(dt)
}

/// Upload: the time from sending the request to the target's answer, which
/// it sends once it has all bytes.
async fn upload<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, pat: &[u8], n: u64) -> Res<Duration> {
    let t0 = Instant::now();
    s.write_all(&request(b'U', n)).await?;
    send_pattern(&mut s, pat, n).await?;
    let mut k = [0u8; 1];
    no_stall("waiting for the answer", s.read_exact(&mut k)).await?;
    if k != *b"K" {
        return Err("bad answer after the upload".into());
    }
    let dt = t0.elapsed();
    drain_to_eof(&mut s).await;
    Ok(dt)
}

/// One small request through a SOCKS5 proxy: from connecting until the last
/// byte of the 1 KiB answer.
async fn fetch(socks: SocketAddr, target: SocketAddr, pat: &[u8]) -> Res<Duration> {
    timeout(STEP, async {
        let t0 = Instant::now();
        let mut s = socks5_connect(socks, target).await?;
        s.write_all(&request(b'D', SMALL)).await?;
        recv_pattern(&mut s, pat, SMALL).await?;
        let dt = t0.elapsed();
        drain_to_eof(&mut s).await;
        Ok(dt)
    })
    .await
    .map_err(|_| "small request timed out")?
}

// ---------------------------------------------------------------------------
// Child roles.

async fn role_tls_server(cli: &Cli) -> Res<()> {
    let id = cli.child.identity()?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&id, &[])?));
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("READY {}", l.local_addr()?);
    let pat: Arc<[u8]> = pattern().into();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, pat) = (acceptor.clone(), pat.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = timeout(Duration::from_secs(600), serve_target(tls, &pat)).await;
                }
            });
        }
    });
    control_loop(async |cmd| Err(format!("unknown command {cmd:?}").into())).await
}

/// Relay buffers of the reference tunnel.
const TUNNEL_BUF: usize = 64 * 1024;

async fn role_tunnel_client(cli: &Cli) -> Res<()> {
    let server: SocketAddr = need(&cli.child.server, "server")?.parse()?;
    let pin = parse_pin(need(&cli.child.pin, "pin")?)?;
    let connector = TlsConnector::from(Arc::new(tls::client_config(&Verification::Pin(pin), &[])?));
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("READY {}", l.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(out) = TcpStream::connect(server).await else {
                    return;
                };
                let _ = out.set_nodelay(true);
                let name = tokio_rustls::rustls::pki_types::ServerName::from(server.ip());
                if let Ok(mut tls) = connector.connect(name, out).await {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut tcp, &mut tls, TUNNEL_BUF, TUNNEL_BUF,
                    )
                    .await;
                }
            });
        }
    });
    control_loop(async |cmd| Err(format!("unknown command {cmd:?}").into())).await
}

async fn role_tunnel_server(cli: &Cli) -> Res<()> {
    let target: SocketAddr = need(&cli.child.server, "server")?.parse()?;
    let id = cli.child.identity()?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&id, &[])?));
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("READY {}", l.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut out) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = out.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut tls, &mut out, TUNNEL_BUF, TUNNEL_BUF,
                )
                .await;
            });
        }
    });
    control_loop(async |cmd| Err(format!("unknown command {cmd:?}").into())).await
}

/// Our client process: a main client behind a SOCKS5 listener (replaced by
/// `reset`), plus clients that only hold idle sessions (`add`).
struct ClientRole {
    server: String,
    password: String,
    verification: Verification,
    main: Client,
    socks: JoinHandle<()>,
    extra: Vec<Client>,
}

/// A client with the bench's pool settings.
fn bench_client(
    server: &str,
    password: &str,
    verification: &Verification,
    ensure: usize,
) -> Res<Client> {
    let mut cfg = ClientConfig::new(server, password);
    cfg.sni = Some("localhost".into());
    cfg.verification = verification.clone();
    cfg.pool.ensure_idle = ensure;
    // Sessions stay idle for the whole run; pre-warm dials happen when the
    // client starts.
    cfg.pool.idle_timeout = Duration::from_secs(3600);
    cfg.pool.check_interval = Duration::from_secs(3600);
    Ok(Client::new(cfg)?)
}

impl ClientRole {
    /// The role's main client with a SOCKS5 listener on `bind`.
    async fn start(
        server: String,
        password: String,
        verification: Verification,
        bind: &str,
    ) -> Res<(ClientRole, SocketAddr)> {
        let main = bench_client(&server, &password, &verification, 0)?;
        let (addr, socks) = Self::listen(&main, bind).await?;
        let role = ClientRole {
            server,
            password,
            verification,
            main,
            socks,
            extra: Vec::new(),
        };
        Ok((role, addr))
    }

    fn client(&self, ensure: usize) -> Res<Client> {
        bench_client(&self.server, &self.password, &self.verification, ensure)
    }

    async fn listen(client: &Client, bind: &str) -> Res<(SocketAddr, JoinHandle<()>)> {
        let l = TcpListener::bind(bind).await?;
        let addr = l.local_addr()?;
        let client = client.clone();
        let task = tokio::spawn(async move {
            let _ = serve_socks5(l, client).await;
        });
        Ok((addr, task))
    }

    async fn reset(&mut self, ensure: usize) -> Res<String> {
        let client = self.client(ensure)?;
        let (addr, task) = Self::listen(&client, "127.0.0.1:0").await?;
        self.socks.abort();
        self.main.close();
        self.main = client;
        self.socks = task;
        Ok(format!("READY {addr}"))
    }

    fn stats(&self) -> String {
        let m = self.main.stats();
        let all: Vec<_> = std::iter::once(&self.main)
            .chain(&self.extra)
            .map(Client::stats)
            .collect();
        let idle: usize = all.iter().map(|s| s.idle).sum();
        let dialing: usize = all.iter().map(|s| s.dialing).sum();
        let failures: u64 = all.iter().map(|s| s.dial_failures).sum();
        format!(
            "STATS idle={} busy={} dialing={} dials={} prewarm={} reused={} \
             total_idle={idle} total_dialing={dialing} failures={failures}",
            m.idle, m.busy, m.dialing, m.dials, m.prewarm_dials, m.reused
        )
    }
}

async fn role_client(cli: &Cli) -> Res<()> {
    let verification = match &cli.child.pin {
        Some(p) => Verification::Pin(parse_pin(p)?),
        None => Verification::Insecure,
    };
    let server = need(&cli.child.server, "server")?.clone();
    let password = cli.password.clone().unwrap_or_else(|| PASSWORD.into());
    let bind = cli.child.listen.as_deref().unwrap_or("127.0.0.1:0");
    let (mut role, addr) = ClientRole::start(server, password, verification, bind).await?;
    println!("READY {addr}");
    if cli.child.listen.is_some() {
        // Stand-alone (a --compare peer): serve until killed.
        return std::future::pending().await;
    }
    control_loop(async |cmd| {
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match verb {
            "stats" => Ok(role.stats()),
            "reset" => role.reset(arg.parse()?).await,
            "add" => {
                let c = role.client(arg.parse()?)?;
                role.extra.push(c);
                Ok("OK".into())
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
    stdin: Option<ChildStdin>,
    lines: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
    log: Option<PathBuf>,
}

impl Proc {
    fn pid(&self) -> Res<u32> {
        self.child
            .id()
            .ok_or_else(|| format!("{} has exited", self.name).into())
    }

    fn rss_kib(&self) -> Res<u64> {
        let pid = self.pid()?;
        procs::status_kib(pid, "VmRSS:").ok_or_else(|| format!("no VmRSS for {}", self.name).into())
    }

    async fn line(&mut self) -> Res<String> {
        let lines = self.lines.as_mut().ok_or("no control channel")?;
        procs::answer_line(&self.name, lines, STEP).await
    }

    async fn request(&mut self, cmd: &str) -> Res<String> {
        let stdin = self.stdin.as_mut().ok_or("no control channel")?;
        stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        stdin.flush().await?;
        self.line().await
    }

    async fn stats(&mut self) -> Res<HashMap<String, u64>> {
        let line = self.request("stats").await?;
        procs::parse_stats(&self.name, &line)
    }

    /// Polls `stats` until `cond` holds.
    async fn wait_stats(
        &mut self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> Res<()> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.stats().await?;
            if cond(&s) {
                return Ok(());
            }
            if s.get("failures").copied().unwrap_or(0) > 0 {
                return Err(format!(
                    "{}: dials failed while waiting for {what}: {s:?}",
                    self.name
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("{}: timed out waiting for {what}: {s:?}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts `e2e --role ...` on `threads` runtime workers and reads its
    /// `READY <addr>`.
    async fn role(
        name: &str,
        mut args: Vec<OsString>,
        threads: Option<usize>,
    ) -> Res<(Proc, SocketAddr)> {
        if let Some(n) = threads {
            args.extend(["--child-threads".into(), n.to_string().into()]);
        }
        if let Some(&mode) = CHILD_RUNTIME.get() {
            let mode = clap::ValueEnum::to_possible_value(&mode).expect("not skipped");
            args.extend(["--child-runtime".into(), mode.get_name().into()]);
        }
        let mut child = procs::spawn_self(args)?;
        let stdin = child.stdin.take();
        let lines = child.stdout.take().map(|s| BufReader::new(s).lines());
        let mut p = Proc {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            log: None,
        };
        let line = p.line().await?;
        Ok((p, ready_addr(&line)?))
    }

    /// Starts an external program (`sh -c "exec CMD"`, so the pid is the
    /// program's) with its output in `log`, and waits until `port` accepts.
    async fn external(name: &str, cmd: &str, port: u16, log: PathBuf) -> Res<Proc> {
        let f = std::fs::File::create(&log)?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .kill_on_drop(true)
            .spawn()?;
        let mut p = Proc {
            name: name.to_owned(),
            child,
            stdin: None,
            lines: None,
            log: Some(log),
        };
        let deadline = Instant::now() + STEP;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("{name} exited ({status}); {}", p.log_tail()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("{name} never listened on {port}; {}", p.log_tail()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        format!(
            "log {}: {}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }
}

fn ready_addr(line: &str) -> Res<SocketAddr> {
    line.strip_prefix("READY ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("expected READY <addr>, got {line:?}").into())
}

async fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// The bench.

struct Settings {
    mib: u64,
    reps: usize,
    rounds: usize,
    sessions: usize,
    parallel: usize,
    parallel_mib: u64,
    parallel_reps: usize,
    load_requests: usize,
    batch: usize,
    settle: Duration,
}

/// Shared files and endpoints.
struct Ctx {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pin: [u8; 32],
    target: SocketAddr,
    pat: Arc<[u8]>,
}

impl Ctx {
    /// The reference tunnel (TCP > TLS > TCP to the target, no AnyTLS, one
    /// TLS connection per stream): its server, its client and the client's
    /// listening address.
    async fn tunnel(&self, threads: Option<usize>) -> Res<(Proc, Proc, SocketAddr)> {
        let (server, server_addr) = Proc::role(
            "tunnel server",
            os(&[
                &"--role",
                &"tunnel-server",
                &"--cert",
                &self.cert,
                &"--key",
                &self.key,
                &"--server",
                &self.target.to_string(),
            ]),
            threads,
        )
        .await?;
        let (client, addr) = Proc::role(
            "tunnel client",
            os(&[
                &"--role",
                &"tunnel-client",
                &"--server",
                &server_addr.to_string(),
                &"--pin",
                &hex32(&self.pin),
            ]),
            threads,
        )
        .await?;
        Ok((server, client, addr))
    }

    /// Our server process on `threads` runtime workers.
    async fn our_server(&self, threads: Option<usize>) -> Res<(Proc, SocketAddr)> {
        Proc::role(
            "our server",
            os(&[
                &"--role", &"server", &"--cert", &self.cert, &"--key", &self.key,
            ]),
            threads,
        )
        .await
    }

    /// Our client process against `server` on `threads` runtime workers;
    /// `pinned`: check our certificate.
    async fn our_client(
        &self,
        server: SocketAddr,
        pinned: bool,
        threads: Option<usize>,
    ) -> Res<(Proc, SocketAddr)> {
        let mut args = os(&[&"--role", &"client", &"--server", &server.to_string()]);
        if pinned {
            args.extend(os(&[&"--pin", &hex32(&self.pin)]));
        }
        Proc::role("our client", args, threads).await
    }
}

/// Another implementation.
enum Launch {
    Shoes(PathBuf),
    Shell(String),
}

struct Peer {
    name: String,
    server: Option<Launch>,
    client: Option<Launch>,
}

const SHOES_SERVER: &str = r#"- address: "127.0.0.1:@SPORT@"
  protocol:
    type: tls
    tls_targets:
      "localhost":
        cert: "@CERT@"
        key: "@KEY@"
        protocol:
          type: anytls
          users:
            - name: bench
              password: "@PASSWORD@"
    default_tls_target:
      cert: "@CERT@"
      key: "@KEY@"
      protocol:
        type: anytls
        users:
          - name: bench
            password: "@PASSWORD@"
"#;

const SHOES_CLIENT: &str = r#"- address: "127.0.0.1:@LPORT@"
  protocol:
    type: socks
  rules:
    - masks: "0.0.0.0/0"
      action: allow
      client_chain:
        address: "127.0.0.1:@SPORT@"
        protocol:
          type: tls
          verify: false
          sni_hostname: "localhost"
          protocol:
            type: anytls
            password: "@PASSWORD@"
"#;

/// The value of `{threads}`: the count asked for, or the number of CPUs for
/// the default (what Go's GOMAXPROCS and tokio default to).
fn threads_value(threads: Option<usize>) -> String {
    threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .to_string()
}

impl Peer {
    /// Whether the peer's runtime threads follow the run's setting (its
    /// commands have `{threads}`).
    fn follows_threads(&self) -> bool {
        [&self.server, &self.client]
            .into_iter()
            .flatten()
            .all(|l| matches!(l, Launch::Shell(t) if t.contains("{threads}")))
    }

    async fn start_server(
        &self,
        ctx: &Ctx,
        threads: Option<usize>,
    ) -> Res<Option<(Proc, SocketAddr)>> {
        let Some(launch) = &self.server else {
            return Ok(None);
        };
        let port = free_port().await?;
        let cmd = match launch {
            Launch::Shoes(bin) => {
                let yaml = ctx.dir.join(format!("shoes-server-{port}.yaml"));
                let text = SHOES_SERVER
                    .replace("@SPORT@", &port.to_string())
                    .replace("@CERT@", &ctx.cert.to_string_lossy())
                    .replace("@KEY@", &ctx.key.to_string_lossy())
                    .replace("@PASSWORD@", PASSWORD);
                std::fs::write(&yaml, text)?;
                format!(
                    "{} --no-reload {}",
                    shell_quote(&bin.to_string_lossy()),
                    shell_quote(&yaml.to_string_lossy())
                )
            }
            Launch::Shell(t) => t
                .replace("{server_port}", &port.to_string())
                .replace("{password}", &shell_quote(PASSWORD))
                .replace("{cert}", &shell_quote(&ctx.cert.to_string_lossy()))
                .replace("{key}", &shell_quote(&ctx.key.to_string_lossy()))
                .replace("{fallback}", &ctx.target.to_string())
                .replace("{threads}", &threads_value(threads)),
        };
        let name = format!("{} server", self.name);
        let log = ctx.dir.join(format!("{}-server-{port}.log", self.name));
        let p = Proc::external(&name, &cmd, port, log).await?;
        Ok(Some((p, SocketAddr::from(([127, 0, 0, 1], port)))))
    }

    async fn start_client(
        &self,
        ctx: &Ctx,
        server: SocketAddr,
        threads: Option<usize>,
    ) -> Res<Option<(Proc, SocketAddr)>> {
        let Some(launch) = &self.client else {
            return Ok(None);
        };
        let lport = free_port().await?;
        let cmd = match launch {
            Launch::Shoes(bin) => {
                let yaml = ctx.dir.join(format!("shoes-client-{lport}.yaml"));
                let text = SHOES_CLIENT
                    .replace("@LPORT@", &lport.to_string())
                    .replace("@SPORT@", &server.port().to_string())
                    .replace("@PASSWORD@", PASSWORD);
                std::fs::write(&yaml, text)?;
                format!(
                    "{} --no-reload {}",
                    shell_quote(&bin.to_string_lossy()),
                    shell_quote(&yaml.to_string_lossy())
                )
            }
            Launch::Shell(t) => t
                .replace("{socks_port}", &lport.to_string())
                .replace("{server_port}", &server.port().to_string())
                .replace("{password}", &shell_quote(PASSWORD))
                .replace("{threads}", &threads_value(threads)),
        };
        let name = format!("{} client", self.name);
        let log = ctx.dir.join(format!("{}-client-{lport}.log", self.name));
        let p = Proc::external(&name, &cmd, lport, log).await?;
        Ok(Some((p, SocketAddr::from(([127, 0, 0, 1], lport)))))
    }
}

/// One end of a pairing: ours or a peer's.
#[derive(Clone, Copy)]
enum End<'a> {
    Ours,
    Peer(&'a Peer),
}

impl End<'_> {
    fn name(&self) -> &str {
        match self {
            End::Ours => "ours",
            End::Peer(p) => &p.name,
        }
    }
}

/// A client implementation with a server implementation.
#[derive(Clone, Copy)]
struct Pairing<'a> {
    client: End<'a>,
    server: End<'a>,
}

/// The processes of a running pairing.
struct PairProcs {
    client: Proc,
    /// The client's SOCKS5 listener.
    socks: SocketAddr,
    server: Proc,
}

impl<'a> Pairing<'a> {
    /// Every pairing the peers' commands allow: ours > ours, then per peer
    /// ours > peer, peer > ours, peer > peer.
    fn all(peers: &'a [Peer]) -> Vec<Pairing<'a>> {
        let mut v = vec![Pairing {
            client: End::Ours,
            server: End::Ours,
        }];
        for p in peers {
            let (c, s) = (p.client.is_some(), p.server.is_some());
            let mut push = |client, server| v.push(Pairing { client, server });
            if s {
                push(End::Ours, End::Peer(p));
            }
            if c {
                push(End::Peer(p), End::Ours);
            }
            if c && s {
                push(End::Peer(p), End::Peer(p));
            }
        }
        v
    }

    /// "client > server", e.g. "ours > anytls-go".
    fn label(&self) -> String {
        format!("{} > {}", self.client.name(), self.server.name())
    }

    /// "our client > anytls-go server".
    fn long_label(&self) -> String {
        let side = |e: &End| match e {
            End::Ours => "our".to_owned(),
            End::Peer(p) => p.name.clone(),
        };
        format!(
            "{} client > {} server",
            side(&self.client),
            side(&self.server)
        )
    }

    /// The other implementation in this pairing, if any.
    fn peer(&self) -> Option<&'a Peer> {
        match (self.client, self.server) {
            (End::Peer(p), _) | (_, End::Peer(p)) => Some(p),
            _ => None,
        }
    }

    /// Fresh processes, every one on `threads` runtime workers (peers: with
    /// `{threads}` in their commands).
    async fn start(&self, ctx: &Ctx, threads: Option<usize>) -> Res<PairProcs> {
        let (server, addr) = match self.server {
            End::Ours => ctx.our_server(threads).await?,
            End::Peer(p) => p
                .start_server(ctx, threads)
                .await?
                .ok_or("no server command")?,
        };
        let (client, socks) = match self.client {
            // Our certificate is pinned; a peer's server may have its own.
            End::Ours => {
                let ours = matches!(self.server, End::Ours);
                ctx.our_client(addr, ours, threads).await?
            }
            End::Peer(p) => p
                .start_client(ctx, addr, threads)
                .await?
                .ok_or("no client command")?,
        };
        Ok(PairProcs {
            client,
            socks,
            server,
        })
    }
}

/// How the measuring application reaches the target on one path.
#[derive(Clone)]
enum Route {
    Tls(SocketAddr, TlsConnector),
    Tcp(SocketAddr),
    Socks(SocketAddr),
}

/// A throughput path and its samples (MiB/s), or why it failed.
struct PathRun {
    label: String,
    /// The label in the chart.
    short: String,
    route: Route,
    dl: Result<Vec<f64>, String>,
    ul: Result<Vec<f64>, String>,
    /// CPU seconds (whole machine) per GiB moved, both directions.
    cpu: Vec<f64>,
    /// The pairing ("ours > anytls-go") and its peer, for the pairing tables.
    pair: Option<(String, Option<String>)>,
    /// Client and server processes on the path, whose CPU time is read.
    pids: [Option<u32>; 2],
    /// CPU seconds per GiB of each process: `[download, upload][client, server]`.
    pcpu: [[Vec<f64>; 2]; 2],
}

impl PathRun {
    fn new(label: impl Into<String>, short: impl Into<String>, route: Route) -> PathRun {
        PathRun {
            label: label.into(),
            short: short.into(),
            route,
            dl: Ok(Vec::new()),
            ul: Ok(Vec::new()),
            cpu: Vec::new(),
            pair: None,
            pids: [None, None],
            pcpu: Default::default(),
        }
    }

    /// The client and server processes of the path (their CPU time is read).
    fn procs(mut self, client: Option<&Proc>, server: Option<&Proc>) -> PathRun {
        self.pids = [client, server].map(|p| p.and_then(|p| p.pid().ok()));
        self
    }

    /// A row of the pairing tables.
    fn pairing(mut self, p: &Pairing) -> PathRun {
        self.pair = Some((p.label(), p.peer().map(|x| x.name.clone())));
        self
    }
}

async fn open_and<F, Fut>(route: &Route, target: SocketAddr, f: F) -> Res<Duration>
where
    F: FnOnce(Box<dyn Stream>) -> Fut,
    Fut: std::future::Future<Output = Res<Duration>>,
{
    match route {
        Route::Tls(addr, connector) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = connector.connect(name, tcp).await?;
            f(Box::new(tls)).await
        }
        Route::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            f(Box::new(tcp)).await
        }
        Route::Socks(addr) => f(Box::new(socks5_connect(addr, target).await?)).await,
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Busy time of the whole machine (all CPUs, user + system + interrupts), in
/// clock ticks, from `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// Clock ticks per second of `/proc/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds per GiB from clock ticks spent moving `bytes`.
fn s_per_gib(ticks: u64, bytes: u64) -> f64 {
    ticks as f64 / TICKS_PER_SEC / (bytes as f64 / (1024.0 * MIB as f64))
}

/// CPU ticks of `pids` now, for [`cpu_since`].
fn cpu_now(pids: [Option<u32>; 2]) -> [Option<u64>; 2] {
    pids.map(|p| p.and_then(procs::cpu_ticks))
}

/// CPU seconds per GiB of each of `pids` since `before`, moving `bytes`.
fn cpu_since(pids: [Option<u32>; 2], before: [Option<u64>; 2], bytes: u64) -> [Option<f64>; 2] {
    let after = cpu_now(pids);
    [0, 1].map(|i| {
        before[i]
            .zip(after[i])
            .map(|(a, b)| s_per_gib(b.saturating_sub(a), bytes))
    })
}

/// One transfer on a path: MiB/s, CPU seconds (whole machine) per GiB and
/// CPU seconds per GiB of the client and the server process (`pids`).
async fn transfer(
    route: &Route,
    pids: [Option<u32>; 2],
    ctx: &Ctx,
    n: u64,
    up: bool,
) -> Res<(f64, Option<f64>, [Option<f64>; 2])> {
    let busy0 = machine_busy_ticks();
    let procs0 = cpu_now(pids);
    // At least 4 MiB/s, or it is a failure.
    let limit = STEP + Duration::from_secs(n / (4 * MIB));
    let pat = ctx.pat.clone();
    let dt = timeout(
        limit,
        open_and(route, ctx.target, move |s| async move {
            if up {
                upload(s, &pat, n).await
            } else {
                download(s, &pat, n).await
            }
        }),
    )
    .await
    .map_err(|_| format!("no result within {limit:?}"))??;
    let cpu = busy0
        .zip(machine_busy_ticks())
        .map(|(a, b)| s_per_gib(b.saturating_sub(a), n));
    let per_proc = cpu_since(pids, procs0, n);
    Ok((
        n as f64 / MIB as f64 / dt.as_secs_f64().max(1e-9),
        cpu,
        per_proc,
    ))
}

/// Interleaves the paths: every repetition runs each path once per direction.
async fn run_throughput(paths: &mut [PathRun], ctx: &Ctx, s: &Settings) {
    let n = s.mib * MIB;
    // Warm-up: a small exchange per path (sessions up, code paged in).
    for p in paths.iter_mut() {
        if let Err(e) = transfer(&p.route, p.pids, ctx, 64 * 1024, false).await {
            p.dl = Err(e.to_string());
            p.ul = Err(e.to_string());
        }
    }
    for rep in 0..s.reps {
        for up in [false, true] {
            for p in paths.iter_mut() {
                let slot = if up { &mut p.ul } else { &mut p.dl };
                let Ok(v) = slot else { continue };
                let res = transfer(&p.route, p.pids, ctx, n, up).await;
                let shown = match &res {
                    Ok((x, _, _)) => format!("{x:.1} MiB/s"),
                    Err(e) => format!("failed: {e}"),
                };
                eprintln!(
                    "  run {}/{} {} {:<42} {shown}",
                    rep + 1,
                    s.reps,
                    if up { "upload  " } else { "download" },
                    p.label
                );
                match res {
                    Ok((x, cpu, per_proc)) => {
                        v.push(x);
                        p.cpu.extend(cpu);
                        for (samples, c) in p.pcpu[usize::from(up)].iter_mut().zip(per_proc) {
                            samples.extend(c);
                        }
                    }
                    Err(e) => *slot = Err(e.to_string()),
                }
            }
        }
    }
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// First-request latency of our client (any server).
#[derive(Default)]
struct OurLatency {
    cold: Vec<Duration>,
    warm: Vec<Duration>,
    reused: Vec<Duration>,
    /// Warm requests that dialed a session (TCP + TLS) on their path.
    warm_dials: u64,
}

async fn latency_ours(client: &mut Proc, ctx: &Ctx, rounds: usize) -> Res<OurLatency> {
    let mut out = OurLatency::default();
    let idle = |s: &HashMap<String, u64>| s.get("idle").copied().unwrap_or(0) >= 1;
    for _ in 0..rounds {
        // Cold: a new pool, nothing pre-warmed. Reused: the next request, on
        // the session the first one returned.
        let socks = ready_addr(&client.request("reset 0").await?)?;
        out.cold.push(fetch(socks, ctx.target, &ctx.pat).await?);
        client
            .wait_stats("the session's return", STEP, idle)
            .await?;
        out.reused.push(fetch(socks, ctx.target, &ctx.pat).await?);
        // Warm: a new pool with ensure_idle_session=1, after its pre-warm.
        let socks = ready_addr(&client.request("reset 1").await?)?;
        client
            .wait_stats("the pre-warmed session", STEP, idle)
            .await?;
        out.warm.push(fetch(socks, ctx.target, &ctx.pat).await?);
        let s = client.stats().await?;
        let (dials, prewarm) = (s["dials"], s["prewarm"]);
        out.warm_dials += dials.saturating_sub(prewarm);
    }
    Ok(out)
}

/// Requests on a running client after one unmeasured request.
async fn latency_steady(socks: SocketAddr, ctx: &Ctx, rounds: usize) -> Res<Vec<Duration>> {
    fetch(socks, ctx.target, &ctx.pat).await?;
    let mut v = Vec::new();
    for _ in 0..rounds {
        // Give a pooling client time to take the session back.
        tokio::time::sleep(Duration::from_millis(5)).await;
        v.push(fetch(socks, ctx.target, &ctx.pat).await?);
    }
    Ok(v)
}

/// VmRSS of one process over the memory test.
struct MemSeries {
    label: String,
    /// (sessions, KiB)
    points: Vec<(usize, u64)>,
}

impl MemSeries {
    fn per_session(&self) -> Option<f64> {
        let (n0, r0) = *self.points.first()?;
        let (n1, r1) = *self.points.last()?;
        (n1 > n0).then(|| (r1 as f64 - r0 as f64) / (n1 - n0) as f64)
    }

    /// Growth per session over the second half.
    fn second_half(&self) -> Option<f64> {
        let k = self.points.len();
        if k < 3 {
            return None;
        }
        let (n0, r0) = self.points[k - 2];
        let (n1, r1) = self.points[k - 1];
        (n1 > n0).then(|| (r1 as f64 - r0 as f64) / (n1 - n0) as f64)
    }
}

/// Opens `s.sessions` idle sessions from our client process to `server` in
/// batches, reading both processes' VmRSS before, halfway and at the end.
/// `server_stats`: the server answers `stats` (ours), so wait for it too.
async fn idle_memory(
    client: &mut Proc,
    socks: SocketAddr,
    server: &mut Proc,
    server_stats: bool,
    ctx: &Ctx,
    s: &Settings,
) -> Res<(MemSeries, MemSeries)> {
    // One request first, so the TLS and relay code is paged in on both sides.
    fetch(socks, ctx.target, &ctx.pat).await?;
    let idle = |s: &HashMap<String, u64>| s.get("idle").copied().unwrap_or(0) >= 1;
    client
        .wait_stats("the session's return", STEP, idle)
        .await?;
    tokio::time::sleep(s.settle).await;
    let mut c = MemSeries {
        label: String::new(),
        points: vec![(0, client.rss_kib()?)],
    };
    let mut v = MemSeries {
        label: String::new(),
        points: vec![(0, server.rss_kib()?)],
    };
    let checkpoints = [s.sessions / 2, s.sessions];
    let mut added = 0;
    while added < s.sessions {
        let b = s.batch.min(s.sessions - added);
        client.request(&format!("add {b}")).await?;
        added += b;
        let want = (1 + added) as u64;
        client
            .wait_stats("idle sessions", STEP * 3, |st| {
                st.get("total_idle").copied().unwrap_or(0) >= want
                    && st.get("total_dialing").copied().unwrap_or(1) == 0
            })
            .await?;
        if server_stats {
            server
                .wait_stats("server sessions", STEP, |st| {
                    st.get("active").copied().unwrap_or(0) >= want
                })
                .await?;
        }
        if checkpoints.contains(&added) {
            tokio::time::sleep(s.settle).await;
            c.points.push((added, client.rss_kib()?));
            v.points.push((added, server.rss_kib()?));
            eprintln!("  {added} idle sessions");
        }
    }
    Ok((c, v))
}

async fn bench(cli: &Cli) -> Res<()> {
    let started = Instant::now();
    let q = cli.quick;
    let s = Settings {
        mib: cli.mib.unwrap_or(if q { 8 } else { 512 }).max(1),
        reps: cli.reps.unwrap_or(if q { 1 } else { 5 }).max(1),
        rounds: cli.rounds.unwrap_or(if q { 3 } else { 9 }).max(1),
        sessions: cli.sessions.unwrap_or(if q { 100 } else { 1000 }),
        parallel: cli.parallel.unwrap_or(if q { 20 } else { 100 }),
        parallel_mib: cli.parallel_mib.unwrap_or(if q { 1 } else { 10 }).max(1),
        parallel_reps: cli.parallel_reps.unwrap_or(if q { 1 } else { 3 }).max(1),
        load_requests: cli.load_requests.unwrap_or(if q { 20 } else { 200 }),
        batch: if q { 50 } else { 100 },
        settle: Duration::from_millis(if q { 100 } else { 500 }),
    };
    let mut peers = Vec::new();
    if let Some(bin) = &cli.shoes {
        peers.push(Peer {
            name: "shoes".into(),
            server: Some(Launch::Shoes(bin.clone())),
            client: Some(Launch::Shoes(bin.clone())),
        });
    }
    if cli.compare_server.is_some() || cli.compare_client.is_some() {
        peers.push(Peer {
            name: cli.compare_name.clone(),
            server: cli.compare_server.clone().map(Launch::Shell),
            client: cli.compare_client.clone().map(Launch::Shell),
        });
    }

    let dir = std::env::temp_dir().join(format!("anytls-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let limit = Duration::from_secs(if q { 300 } else { 1800 });
    // On Ctrl-C too, return normally: dropping the children kills them.
    let res = tokio::select! {
        r = timeout(limit, run_all(cli, &s, &peers, &dir, started)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("the bench did not finish within {limit:?}").into()),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    res
}

async fn run_all(cli: &Cli, s: &Settings, peers: &[Peer], dir: &Path, started: Instant) -> Res<()> {
    let identity = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
    let pin = identity.leaf_sha256().ok_or("no certificate")?;
    let (cert_pem, key_pem) = identity.to_pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, cert_pem)?;
    std::fs::write(&key, key_pem)?;
    let (target, _target_task) = start_target().await?;
    let ctx = Ctx {
        dir: dir.to_owned(),
        cert,
        key,
        pin,
        target,
        pat: pattern().into(),
    };

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("anytls-rs end-to-end bench: 127.0.0.1 only, {cpus} CPUs, {build} build");
    println!(
        "  {} MiB each way per throughput run, median of {}; latency median/min of {}; \
         {} x {} MiB parallel downloads, median of {}; {} requests under load; {} idle sessions",
        s.mib,
        s.reps,
        s.rounds,
        s.parallel,
        s.parallel_mib,
        s.parallel_reps,
        s.load_requests,
        s.sessions
    );

    // ---- processes for throughput and latency
    let threads = child_threads();
    let (tls_server, tls_addr) = Proc::role(
        "raw TLS server",
        os(&[
            &"--role",
            &"tls-server",
            &"--cert",
            &ctx.cert,
            &"--key",
            &ctx.key,
        ]),
        threads,
    )
    .await?;
    let (our_server, our_server_addr) = ctx.our_server(threads).await?;
    let (mut our_client, our_socks) = ctx.our_client(our_server_addr, true, threads).await?;
    let (tunnel_server, tunnel_client, tunnel_addr) = ctx.tunnel(threads).await?;

    let connector = TlsConnector::from(Arc::new(tls::client_config(&Verification::Pin(pin), &[])?));
    let suite = {
        let tcp = TcpStream::connect(tls_addr).await?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(name, tcp).await?;
        let (_, c) = tls.get_ref();
        format!(
            "{:?}, {:?}",
            c.protocol_version().ok_or("no TLS version")?,
            c.negotiated_cipher_suite()
                .ok_or("no cipher suite")?
                .suite()
        )
    };
    println!("  raw TLS and ours: rustls + ring, {suite}");

    let pairings = Pairing::all(peers);
    let mut paths = vec![
        PathRun::new(
            "raw TLS 1.3, one connection",
            "raw TLS (one connection)",
            Route::Tls(tls_addr, connector),
        )
        .procs(None, Some(&tls_server)),
        PathRun::new(
            "ours: SOCKS5>client>TLS>server>target",
            "ours > ours (SOCKS5, client, server)",
            Route::Socks(our_socks),
        )
        .procs(Some(&our_client), Some(&our_server))
        .pairing(&pairings[0]),
        PathRun::new(
            "reference: TCP>TLS tunnel>TCP, no AnyTLS",
            "reference TLS tunnel (no AnyTLS)",
            Route::Tcp(tunnel_addr),
        )
        .procs(Some(&tunnel_client), Some(&tunnel_server)),
        PathRun::new(
            "plain TCP, one connection (no TLS)",
            "plain TCP (one connection)",
            Route::Tcp(ctx.target),
        ),
    ];
    // The other pairings: processes kept alive for the throughput and
    // latency sections.
    let mut problems: Vec<String> = Vec::new();
    let mut running: Vec<(Pairing, PairProcs)> = Vec::new();
    for pairing in pairings.iter().skip(1) {
        match pairing.start(&ctx, threads).await {
            Ok(p) => {
                paths.push(
                    PathRun::new(pairing.long_label(), pairing.label(), Route::Socks(p.socks))
                        .procs(Some(&p.client), Some(&p.server))
                        .pairing(pairing),
                );
                running.push((*pairing, p));
            }
            Err(e) => problems.push(format!("{}: {e}", pairing.long_label())),
        }
    }
    // SOCKS5 endpoints of peers' clients: (label, socks).
    let mut steady: Vec<(String, SocketAddr)> = running
        .iter()
        .filter(|(p, _)| matches!(p.client, End::Peer(_)))
        .map(|(p, procs)| (p.label(), procs.socks))
        .collect();
    if let Some(socks) = cli.peer_socks5 {
        let label = format!("SOCKS5 {socks}");
        paths.push(PathRun::new(
            label.clone(),
            label.clone(),
            Route::Socks(socks),
        ));
        steady.push((label, socks));
    }

    eprintln!("throughput ...");
    run_throughput(&mut paths, &ctx, s).await;
    if let Err(e) = &paths[0].dl.as_ref().and(paths[0].ul.as_ref()) {
        return Err(format!("raw TLS baseline failed: {e}").into());
    }
    if let Err(e) = &paths[1].dl.as_ref().and(paths[1].ul.as_ref()) {
        return Err(format!("our path failed: {e}").into());
    }

    eprintln!("latency ...");
    let ours_lat = latency_ours(&mut our_client, &ctx, s.rounds).await?;
    let mut peer_lat = Vec::new();
    for (pairing, p) in &mut running {
        if matches!(pairing.client, End::Ours) {
            peer_lat.push((
                pairing.label(),
                latency_ours(&mut p.client, &ctx, s.rounds).await,
            ));
        }
    }
    let mut steady_lat = Vec::new();
    for (label, socks) in &steady {
        steady_lat.push((label.clone(), latency_steady(*socks, &ctx, s.rounds).await));
    }
    drop(running);
    drop(our_client);
    drop(our_server);
    drop(tls_server);
    drop(tunnel_client);
    drop(tunnel_server);

    // ---- parallel downloads: fresh processes for every pairing.
    let par = if s.parallel > 0 {
        parallel::parallel_pairings(&pairings, &ctx, s).await
    } else {
        Vec::new()
    };

    // ---- latency under load: fresh processes per pairing and runtime setting.
    let mut load = Vec::new();
    if s.load_requests > 0 {
        for threads in [Some(1), None] {
            load.push((
                threads,
                load::load_pairings(&pairings, &ctx, s, threads).await,
            ));
        }
    }

    // ---- memory: fresh processes that never moved bulk data.
    let mut mem = Vec::new();
    if s.sessions > 0 {
        eprintln!("memory: our client > our server ...");
        let (mut srv, srv_addr) = ctx.our_server(threads).await?;
        let (mut cl, socks) = ctx.our_client(srv_addr, true, threads).await?;
        let (mut c, mut v) = idle_memory(&mut cl, socks, &mut srv, true, &ctx, s).await?;
        c.label = "client (ours)".into();
        v.label = "server (ours)".into();
        mem.push(Ok(c));
        mem.push(Ok(v));
        drop(cl);
        drop(srv);
        for peer in peers.iter().filter(|p| p.server.is_some()) {
            eprintln!("memory: our client > {} server ...", peer.name);
            let label = format!("server ({})", peer.name);
            let r: Res<MemSeries> = async {
                let (mut srv, addr) = peer.start_server(&ctx, threads).await?.ok_or("no server")?;
                let (mut cl, socks) = ctx.our_client(addr, false, threads).await?;
                let (_, mut v) = idle_memory(&mut cl, socks, &mut srv, false, &ctx, s).await?;
                v.label = label.clone();
                Ok(v)
            }
            .await;
            mem.push(r.map_err(|e| format!("{label}: {e}")));
        }
    }

    // ---- report
    println!();
    println!(
        "throughput, MiB/s ({} MiB each way, median of {}; runtime threads per process: {})",
        s.mib,
        s.reps,
        threads_desc(child_threads())
    );
    println!(
        "  {:<42} {:>9} {:>9} {:>7} {:>7} {:>9}   target (ours vs raw TLS)",
        "path", "download", "upload", "dl/raw", "ul/raw", "CPU s/GiB"
    );
    let base_dl = paths[0].dl.as_deref().map(median_f).unwrap_or(f64::NAN);
    let base_ul = paths[0].ul.as_deref().map(median_f).unwrap_or(f64::NAN);
    for (i, p) in paths.iter().enumerate() {
        match (&p.dl, &p.ul) {
            (Ok(dl), Ok(ul)) => {
                let (d, u) = (median_f(dl), median_f(ul));
                let (rd, ru) = (d / base_dl, u / base_ul);
                let target = match i {
                    0 => "-".to_owned(),
                    1 => format!(
                        ">= {:.0} %  {}",
                        TARGET_RATIO * 100.0,
                        verdict(rd >= TARGET_RATIO && ru >= TARGET_RATIO)
                    ),
                    _ => String::new(),
                };
                let cpu = if p.cpu.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2}", median_f(&p.cpu))
                };
                println!(
                    "  {:<42} {:>9.1} {:>9.1} {:>6.0}% {:>6.0}% {:>9}   {target}",
                    p.label,
                    d,
                    u,
                    rd * 100.0,
                    ru * 100.0,
                    cpu
                );
            }
            (dl, ul) => {
                let show = |r: &Result<Vec<f64>, String>| match r {
                    Ok(v) => format!("{:.1}", median_f(v)),
                    Err(_) => "failed".into(),
                };
                println!("  {:<42} {:>9} {:>9}", p.label, show(dl), show(ul));
                for e in [dl, ul].into_iter().filter_map(|r| r.as_ref().err()) {
                    problems.push(format!("{}: {e}", p.label));
                }
            }
        }
    }
    if let (Ok(od), Ok(ou), Ok(rd), Ok(ru)) =
        (&paths[1].dl, &paths[1].ul, &paths[2].dl, &paths[2].ul)
    {
        println!(
            "  ours vs the reference tunnel (same processes and hops, no AnyTLS): download {:.0} %, upload {:.0} %",
            median_f(od) / median_f(rd) * 100.0,
            median_f(ou) / median_f(ru) * 100.0
        );
    }
    if !paths[0].cpu.is_empty() && !paths[3].cpu.is_empty() {
        // Our path crosses loopback TCP three times, raw TLS once: even a
        // relay that cost nothing in user space would add the kernel's work
        // for two more hops to raw TLS's.
        let raw = median_f(&paths[0].cpu);
        let hop = median_f(&paths[3].cpu);
        println!(
            "  ceiling of this topology: raw TLS + 2 plain hops = {:.2} + 2 x {:.2} CPU s/GiB, i.e. at most ~{:.0} % of raw TLS with the machine's cores saturated",
            raw,
            hop,
            raw / (raw + 2.0 * hop) * 100.0
        );
    }
    pairs::print_throughput(&paths, s);

    println!();
    println!(
        "first-request latency through SOCKS5, {SMALL}-byte answer (median, min of {})",
        s.rounds
    );
    println!(
        "  {:<7} {:<28} {:>9} {:>9}   on the path",
        "case", "client > server", "median", "min"
    );
    let lat_row = |case: &str, who: &str, v: &[Duration], note: &str| {
        println!(
            "  {case:<7} {who:<28} {:>9} {:>9}   {note}",
            ms(median_d(v)),
            ms(*v.iter().min().unwrap_or(&Duration::ZERO))
        );
    };
    let print_ours = |who: &str, l: &OurLatency, with_target: bool| {
        lat_row(
            "cold",
            who,
            &l.cold,
            "new pool: TCP + TLS + AnyTLS handshakes",
        );
        let mut note = format!(
            "pre-warmed idle session (ensure_idle_session=1); {} of {} dialed",
            l.warm_dials,
            l.warm.len()
        );
        if with_target {
            note += &format!(
                "; target: no TLS handshake on the path: {}",
                verdict(l.warm_dials == 0)
            );
        }
        lat_row("warm", who, &l.warm, &note);
        lat_row(
            "reused",
            who,
            &l.reused,
            "session back in the pool after a request",
        );
    };
    print_ours("ours > ours", &ours_lat, true);
    for (label, r) in &peer_lat {
        match r {
            Ok(l) => print_ours(label, l, false),
            Err(e) => problems.push(format!("latency {label}: {e}")),
        }
    }
    for (label, r) in &steady_lat {
        match r {
            Ok(v) => lat_row(
                "steady",
                label,
                v,
                "a request on a running client (new session unless it pools)",
            ),
            Err(e) => problems.push(format!("latency {label}: {e}")),
        }
    }

    if s.parallel > 0 {
        parallel::print_many(&par, s);
        print_parallel(&par, s, &mut problems);
    }
    if s.load_requests > 0 {
        let unthreaded: Vec<String> = peers
            .iter()
            .filter(|p| !p.follows_threads())
            .map(|p| p.name.clone())
            .collect();
        load::print_load(&load, s, &unthreaded, &mut problems);
    }

    if s.sessions > 0 {
        println!();
        println!(
            "memory per idle session: VmRSS growth over {} idle sessions (our client opens them)",
            s.sessions
        );
        println!(
            "  {:<22} {:>10} {:>10} {:>12} {:>14}   target",
            "process", "before", "after", "per session", "second half"
        );
        for m in &mem {
            match m {
                Ok(m) => {
                    let kib = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1} KiB"));
                    let per = m.per_session();
                    let target = if m.label.ends_with("(ours)") {
                        format!(
                            "<= {TARGET_KIB_PER_SESSION:.0} KiB  {}",
                            verdict(per.is_some_and(|x| x <= TARGET_KIB_PER_SESSION))
                        )
                    } else {
                        String::new()
                    };
                    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
                    println!(
                        "  {:<22} {:>10} {:>10} {:>12} {:>14}   {target}",
                        m.label,
                        mib(m.points.first().map_or(0, |p| p.1)),
                        mib(m.points.last().map_or(0, |p| p.1)),
                        kib(per),
                        kib(m.second_half()),
                    );
                }
                Err(e) => problems.push(e.clone()),
            }
        }
    }

    if let Some(path) = &cli.svg {
        let notes = [
            format!(
                "127.0.0.1, {cpus} CPUs, {build} build; raw TLS and ours: rustls + ring, {suite}"
            ),
            format!(
                "throughput: {} MiB each way, median of {}; latency: median of {}; \
                 parallel: {} x {} MiB at once",
                s.mib, s.reps, s.rounds, s.parallel, s.parallel_mib
            ),
        ];
        let panels = chart::panels(&paths, &ours_lat, &peer_lat, &steady_lat, &par, s);
        let text = svg::render("anytls-rs end-to-end bench", &notes, &panels);
        let written = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, text));
        match written {
            Ok(()) => {
                println!();
                println!("chart: {}", path.display());
            }
            Err(e) => problems.push(format!("chart {}: {e}", path.display())),
        }
    }

    if !problems.is_empty() {
        println!();
        println!("problems");
        for p in &problems {
            println!("  {p}");
        }
    }
    println!();
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
