//! `soak`: our client and our server under a long random workload, with
//! connections cut on purpose, every byte checked and memory watched.
//!
//! ```text
//! cargo run --release -p anytls-benches --bin soak -- --seconds 600 [--seed N]
//! ```
//!
//! Three processes, all on 127.0.0.1:
//!
//! * `soak --role server` (child): our [`Server`](anytls_tokio::Server) with a
//!   handler speaking the soak protocol (`soak/proto.rs`): it checks every
//!   uploaded byte against the stream's seeded pattern, sends the download,
//!   then the hash of what it received.
//! * this process: the cutting proxy (`soak/proxy.rs`) between client and
//!   server, which cuts a random connection every `--cut-every-ms` (on
//!   average) by reset, by close, or one side first; the monitor (RSS of both
//!   children every 10 s) and the verdict.
//! * `soak --role client` (child): our [`Client`](anytls_tokio::Client) (pool
//!   with `ensure_idle`, `min_idle`, heartbeat, idle sweeps every second)
//!   connected to the proxy, and the workload (`soak/client.rs`): workers
//!   that open streams one after the other, many short ones (small
//!   request/response) and a few long ones (MiBs both ways at once, some with
//!   a slow reader), sizes and pauses drawn from a seeded generator (the seed
//!   is printed; `--seed` replays the same workload, though not the same
//!   timing).
//!
//! Failures are "killed on purpose" when the stream's session was cut (see
//! `soak/client.rs` for how that is told) and "unexpected" otherwise. After
//! the workload the run goes quiet: sessions must settle to the pool's idle
//! target with no stream left open on either side, and after the client
//! closes, no session may be left on the server or the proxy. PASS needs zero
//! unexpected failures and every check to hold; the exit code is 1 otherwise.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

// The crate root is this file, so the modules' paths are given.
#[path = "soak/client.rs"]
mod client;
#[path = "soak/procs.rs"]
mod procs;
#[path = "soak/proto.rs"]
mod proto;
#[path = "soak/proxy.rs"]
mod proxy;
#[path = "soak/report.rs"]
mod report;
#[path = "soak/server.rs"]
mod server;

use procs::{Proc, get};
use proto::{Rng, mix};
use proxy::Proxy;
use report::{Monitor, Snapshot};

use anytls_benches::procs::Res;

/// Workload streams may still be finishing this long after `--seconds`.
const WORKLOAD_GRACE: Duration = Duration::from_secs(240);
/// The quiet period: at least an idle timeout and two sweeps, at most this.
const QUIET_MIN: Duration = Duration::from_secs(5);
const QUIET_MAX: Duration = Duration::from_secs(60);
/// Sessions gone after the client closes.
const CLOSE_MAX: Duration = Duration::from_secs(20);
/// Percentage of new connections cut 0..30 ms after they arrive.
const ARRIVAL_CUTS: u64 = 15;
/// How often the monitor looks (and reports every 10 s).
const TICK: Duration = Duration::from_millis(250);
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Soak test of anytls-rs on 127.0.0.1: our client and server under a random
/// workload through a proxy that cuts connections, every byte checked, RSS
/// watched, a leak check at the end.
#[derive(Parser, Clone, Debug)]
#[command(name = "soak")]
pub struct Cli {
    /// How long the workload runs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Workload seed (decimal or 0x hex) [default: random, printed].
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Workers opening short streams (up to 32 KiB up, 64 KiB down).
    #[arg(long, default_value_t = 32)]
    short_workers: usize,
    /// Workers opening long streams (256 KiB up to --long-max-mib each way).
    #[arg(long, default_value_t = 4)]
    long_workers: usize,
    /// Largest long stream, MiB each way.
    #[arg(long, default_value_t = 8)]
    long_max_mib: u64,
    /// Mean time between cuts, ms (each wait is drawn from 50..150 % of it);
    /// 0: no cuts.
    #[arg(long, default_value_t = 500)]
    cut_every_ms: u64,
    /// The pool's max_streams_per_session (1 is the default of the library
    /// and of the reference implementations).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    streams_per_session: u64,
    /// The pool's ensure_idle_session and min_idle_session.
    #[arg(long, default_value_t = 3)]
    ensure_idle: usize,
    /// Both sides' `SessionLimits::stream_recv_limit`, MiB [default: the
    /// library's]. A stream that shares its session and whose reader falls
    /// this far behind is reset by design (its peer sees a FIN); with more
    /// than one stream per session, raise it above --long-max-mib to soak the
    /// multiplexing itself.
    #[arg(long, value_name = "MIB")]
    stream_recv_limit_mib: Option<u64>,

    // Child process roles (internal).
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    #[arg(long, hide = true)]
    server: Option<String>,
    #[arg(long, hide = true)]
    pin: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Server,
    Client,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad seed {s:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let rt = anytls_benches::procs::runtime(
        "soak",
        2,
        None,
        // Both roles per core: the server as the program runs it, the
        // client on its opt-in mode (session affinity, moved sockets).
        match cli.role {
            Some(_) => anytls_tokio::RuntimeMode::PerCore,
            None => anytls_tokio::RuntimeMode::WorkStealing,
        },
    );
    let res = rt.block_on(async {
        match cli.role {
            Some(Role::Server) => server::run(&cli).await.map(|()| true),
            Some(Role::Client) => client::run(&cli).await.map(|()| true),
            None => soak(&cli).await,
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    match res {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            if cli.role.is_none() {
                println!("FAIL: {e}");
            }
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    proto::splitmix(t ^ (u64::from(std::process::id()) << 40))
}

/// The parent: starts everything, cuts, monitors, checks.
async fn soak(cli: &Cli) -> Res<bool> {
    let began = Instant::now();
    let seed = cli.seed.unwrap_or_else(random_seed);
    let cuts_on = cli.cut_every_ms > 0;
    println!(
        "soak: seed {seed:#018x} (replay the workload with --seed {seed:#x}), workload {} s",
        cli.seconds
    );
    println!(
        "  streams: {} short-stream workers (0..32 KiB up, 0..64 KiB down), {} long-stream \
         workers (256 KiB..{} MiB each way, both at once), every byte checked",
        cli.short_workers, cli.long_workers, cli.long_max_mib
    );
    println!(
        "  pool: ensure_idle {e}, min_idle {e}, sweep every {:?}, idle timeout {:?}, heartbeat \
         every {:?} (timeout {:?}), {} stream(s) per session",
        client::CHECK_INTERVAL,
        client::IDLE_TIMEOUT,
        client::HEARTBEAT,
        client::HEARTBEAT_TIMEOUT,
        cli.streams_per_session,
        e = cli.ensure_idle,
    );
    if cuts_on {
        println!(
            "  cuts: one connection every {}..{} ms through the proxy, and {ARRIVAL_CUTS} % of new \
             connections 0..30 ms after they arrive (RST, FIN, server side first, client side \
             first)",
            cli.cut_every_ms / 2,
            cli.cut_every_ms * 3 / 2
        );
    } else {
        println!("  cuts: none (--cut-every-ms 0)");
    }

    let mut limit = Vec::new();
    if let Some(mib) = cli.stream_recv_limit_mib {
        limit = os(&["--stream-recv-limit-mib", &mib.to_string()]);
        println!("  stream_recv_limit: {mib} MiB on both sides");
    }
    let mut args = os(&["--role", "server"]);
    args.extend(limit.iter().cloned());
    let (mut server, first) = Proc::spawn("server", args).await?;
    let (server_addr, pin) = parse_ready(&first)?;
    let proxy = Proxy::start(server_addr).await?;
    let mut args = os(&[
        "--role",
        "client",
        "--server",
        &proxy.addr.to_string(),
        "--pin",
        &pin,
        "--seed",
        &seed.to_string(),
        "--seconds",
        &cli.seconds.to_string(),
        "--short-workers",
        &cli.short_workers.to_string(),
        "--long-workers",
        &cli.long_workers.to_string(),
        "--long-max-mib",
        &cli.long_max_mib.to_string(),
        "--streams-per-session",
        &cli.streams_per_session.to_string(),
        "--ensure-idle",
        &cli.ensure_idle.to_string(),
    ]);
    args.extend(limit);
    let (mut client, first) = Proc::spawn("client", args).await?;
    if first != "READY" {
        return Err(format!("client: expected READY, got {first:?}").into());
    }

    let mut mon = Monitor::new(cli);
    // The pool pre-warms before the workload starts (bounded: 30 s).
    for _ in 0..1500 {
        let s = client.stats().await?;
        if get(&s, "idle") >= cli.ensure_idle as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = Snapshot::take(&mut client, &mut server, &proxy).await?;
    mon.start(&snap);
    mon.header();
    mon.row(Duration::ZERO, &snap, "start");

    client.request("start").await?;
    let t0 = Instant::now();
    let run_end = t0 + Duration::from_secs(cli.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    if cuts_on {
        proxy.set_arrival_cuts(ARRIVAL_CUTS, mix(seed, 8));
    }
    let cutter = cuts_on.then(|| {
        tokio::spawn(cut_loop(
            proxy.clone(),
            Rng::new(mix(seed, 7)),
            cli.cut_every_ms,
            run_end,
            stop.clone(),
        ))
    });

    // The workload: report every 10 s until every worker is done.
    let hard = run_end + WORKLOAD_GRACE;
    let mut next_report = t0 + REPORT_EVERY;
    let mut finished = false;
    let mut last = snap;
    let ticks = (cli.seconds + WORKLOAD_GRACE.as_secs() + 10) * 1000 / TICK.as_millis() as u64;
    for _ in 0..ticks {
        tokio::time::sleep(TICK).await;
        last = Snapshot::take(&mut client, &mut server, &proxy).await?;
        let now = Instant::now();
        if now >= next_report {
            mon.row(now - t0, &last, "");
            next_report += REPORT_EVERY;
        }
        if get(&last.client, "running") == 0 {
            finished = true;
            break;
        }
        if now > hard {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    proxy.set_arrival_cuts(0, 0);
    if let Some(c) = cutter {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    if !finished {
        mon.fail(format!(
            "the workload did not finish within {:?} after its {} s",
            WORKLOAD_GRACE, cli.seconds
        ));
    }
    mon.row(t0.elapsed(), &last, "workload done");
    let work = last;

    // Quiet: sessions settle, no stream left open.
    let quiet_start = Instant::now();
    let mut settled = None;
    let mut snap = Snapshot::take(&mut client, &mut server, &proxy).await?;
    for _ in 0..(QUIET_MAX.as_millis() / TICK.as_millis()) {
        tokio::time::sleep(TICK).await;
        snap = Snapshot::take(&mut client, &mut server, &proxy).await?;
        if quiet_start.elapsed() >= QUIET_MIN && mon.settled(&snap) {
            settled = Some(quiet_start.elapsed());
            break;
        }
    }
    mon.row(t0.elapsed(), &snap, "quiet");
    let quiet = snap;

    // Close the client: every session must go.
    client.request("close").await?;
    let close_start = Instant::now();
    let mut closed = None;
    let mut snap = Snapshot::take(&mut client, &mut server, &proxy).await?;
    for _ in 0..(CLOSE_MAX.as_millis() / 50) {
        if get(&snap.server, "active") == 0 && snap.proxy.live == 0 {
            closed = Some(close_start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        snap = Snapshot::take(&mut client, &mut server, &proxy).await?;
    }
    proxy.stop();
    let pass = mon.summary(&work, &quiet, settled, &snap, closed, began.elapsed());
    client.finish().await;
    server.finish().await;
    Ok(pass)
}

/// Cuts a connection every `mean_ms` on average until `until` (or `stop`),
/// then ends the arrival cuts too.
async fn cut_loop(proxy: Proxy, mut rng: Rng, mean_ms: u64, until: Instant, stop: Arc<AtomicBool>) {
    let max = mean_ms * 3 / 2;
    // Bounded: each pass waits at least mean/2 (>= 1 ms), and the time is.
    for _ in 0..10_000_000u64 {
        let wait = Duration::from_millis(rng.range((mean_ms / 2).max(1), max.max(1)));
        let at = Instant::now() + wait;
        if at >= until {
            tokio::time::sleep_until(until.into()).await;
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        proxy.cut_one(&mut rng);
    }
    proxy.set_arrival_cuts(0, 0);
}

/// The session limits of both sides.
fn limits(cli: &Cli) -> anytls_tokio::core::SessionLimits {
    let mut l = anytls_tokio::core::SessionLimits::default();
    if let Some(mib) = cli.stream_recv_limit_mib {
        l.stream_recv_limit = (mib.max(1) as usize) << 20;
    }
    l
}

fn parse_ready(line: &str) -> Res<(SocketAddr, String)> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some("READY"), Some(addr), Some(pin)) => Ok((addr.parse()?, pin.to_owned())),
        _ => Err(format!("server: expected READY <addr> <pin>, got {line:?}").into()),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}
