//! Parallel downloads: N downloads of M MiB at once through one SOCKS5
//! client process and its server process, for every pairing; wall time,
//! aggregate MiB/s, the CPU time of both processes per GiB and their peak RSS
//! during the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anytls_benches::procs::{reset_hwm, status_kib};
use tokio::task::JoinSet;

use super::pairs::{self, Cell, Row};
use super::{
    Ctx, MIB, Pairing, Proc, Res, Route, SMALL, STEP, Settings, child_threads, cpu_now, cpu_since,
    download, machine_busy_ticks, median_f, open_and, s_per_gib, threads_desc, verdict,
};

/// Peaks of anytls-go in the same test (the performance issue): ours must
/// stay below them.
pub const TARGET_CLIENT_PEAK_MIB: f64 = 27.0;
pub const TARGET_SERVER_PEAK_MIB: f64 = 22.0;
/// The configuration the targets were measured with.
pub const TARGET_COUNT: usize = 100;
pub const TARGET_MIB: u64 = 10;

/// Interval of the VmRSS sampling.
const SAMPLE: Duration = Duration::from_millis(5);

/// How a peak was measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PeakHow {
    /// VmHWM after resetting it (`5` into `/proc/<pid>/clear_refs`) just
    /// before the run.
    Hwm,
    /// The largest VmRSS seen, sampled every [`SAMPLE`] (the reset was
    /// refused).
    Sampled,
}

impl PeakHow {
    pub fn describe(self) -> String {
        match self {
            PeakHow::Hwm => "VmHWM, reset just before the run".into(),
            PeakHow::Sampled => format!(
                "largest VmRSS sampled every {} ms (VmHWM reset refused)",
                SAMPLE.as_millis()
            ),
        }
    }
}

/// RSS of one process over a run, KiB.
pub struct Peak {
    pub start_kib: u64,
    pub peak_kib: u64,
    pub how: PeakHow,
}

pub struct ParallelRun {
    /// "client > server".
    pub label: String,
    /// The peer in the pairing (`None`: ours > ours).
    pub peer: Option<String>,
    pub wall: Duration,
    pub mibps: f64,
    /// CPU seconds per GiB of the client and the server process.
    pub cpu: [Option<f64>; 2],
    /// CPU seconds per GiB of the whole machine (all processes, kernel
    /// included).
    pub machine: Option<f64>,
    pub client: Peak,
    pub server: Peak,
}

/// Samples the VmRSS of `pids` on its own thread (the runtime's workers are
/// busy checking bytes) until `stop` is set or `limit` has passed; returns
/// the largest value seen per pid.
fn sampler(
    pids: [u32; 2],
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<[u64; 2]> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut max = [0u64; 2];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for (m, pid) in max.iter_mut().zip(pids) {
                if let Some(k) = status_kib(pid, "VmRSS:") {
                    *m = (*m).max(k);
                }
            }
            std::thread::sleep(SAMPLE);
        }
        max
    })
}

/// `count` downloads of `mib` MiB each, all at once, by `route` (the SOCKS5
/// listener of `client`, or the reference tunnel's), through `client` and
/// `server`; every byte checked.
pub async fn parallel_run(
    label: &str,
    client: &Proc,
    route: &Route,
    server: &Proc,
    ctx: &Ctx,
    count: usize,
    mib: u64,
) -> Res<ParallelRun> {
    // One request first, so the TLS and relay code is paged in on both sides.
    let pat = ctx.pat.clone();
    tokio::time::timeout(
        STEP,
        open_and(route, ctx.target, move |s| async move {
            download(s, &pat, SMALL).await
        }),
    )
    .await
    .map_err(|_| "small request timed out")??;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pids = [client.pid()?, server.pid()?];
    let cpu0 = cpu_now(pids.map(Some));
    let busy0 = machine_busy_ticks();
    let reset = pids.map(reset_hwm);
    let start = pids.map(|p| status_kib(p, "VmRSS:").unwrap_or(0));
    let n = mib * MIB;
    // At least 4 MiB/s in all, or it is a failure.
    let limit = STEP + Duration::from_secs(count as u64 * n / (4 * MIB));
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(pids, stop.clone(), limit + STEP);

    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..count {
        let (pat, target, route) = (ctx.pat.clone(), ctx.target, route.clone());
        set.spawn(async move {
            open_and(&route, target, move |s| async move {
                download(s, &pat, n).await
            })
            .await
        });
    }
    let done = tokio::time::timeout(limit, async {
        let mut ok = 0usize;
        while let Some(r) = set.join_next().await {
            r.map_err(|e| format!("download task: {e}"))?
                .map_err(|e| format!("download {} of {count}: {e}", ok + 1))?;
            ok += 1;
        }
        Res::Ok(())
    })
    .await;
    let wall = t0.elapsed();
    let cpu = cpu_since(pids.map(Some), cpu0, count as u64 * n);
    let machine = busy0
        .zip(machine_busy_ticks())
        .map(|(a, b)| s_per_gib(b.saturating_sub(a), count as u64 * n));
    stop.store(true, Ordering::Relaxed);
    let sampled = sampling.join().map_err(|_| "the RSS sampler panicked")?;
    // Dropping the set aborts whatever is left after a failure.
    drop(set);
    done.map_err(|_| format!("{count} downloads not done within {limit:?}"))??;

    let peak = |i: usize| -> Peak {
        let hwm = if reset[i] {
            status_kib(pids[i], "VmHWM:")
        } else {
            None
        };
        match hwm {
            Some(h) => Peak {
                start_kib: start[i],
                peak_kib: h.max(sampled[i]),
                how: PeakHow::Hwm,
            },
            None => Peak {
                start_kib: start[i],
                peak_kib: sampled[i],
                how: PeakHow::Sampled,
            },
        }
    };
    Ok(ParallelRun {
        label: label.to_owned(),
        peer: None,
        wall,
        mibps: (count as u64 * mib) as f64 / wall.as_secs_f64().max(1e-9),
        cpu,
        machine,
        client: peak(0),
        server: peak(1),
    })
}

/// Label of the reference tunnel's row.
pub const TUNNEL_LABEL: &str = "TLS tunnel, no AnyTLS";

/// One set of processes the parallel downloads run through.
struct Subject {
    label: String,
    peer: Option<String>,
    client: Proc,
    route: Route,
    server: Proc,
}

/// The parallel downloads for every pairing, then for the reference tunnel
/// (TCP > TLS > TCP, one TLS connection per download, no AnyTLS and no
/// SOCKS5: what this topology allows any tunnel on the machine): fresh
/// processes for each, all started first, then `s.parallel_reps` runs of
/// each, interleaved.
pub async fn parallel_pairings(
    pairings: &[Pairing<'_>],
    ctx: &Ctx,
    s: &Settings,
) -> Vec<Result<ParallelRun, String>> {
    let (count, mib) = (s.parallel, s.parallel_mib);
    let mut subjects: Vec<Result<Subject, String>> = Vec::new();
    for p in pairings {
        subjects.push(match p.start(ctx, child_threads()).await {
            Ok(procs) => Ok(Subject {
                label: p.label(),
                peer: p.peer().map(|x| x.name.clone()),
                client: procs.client,
                route: Route::Socks(procs.socks),
                server: procs.server,
            }),
            Err(e) => Err(format!("parallel downloads, {}: {e}", p.label())),
        });
    }
    subjects.push(match ctx.tunnel(child_threads()).await {
        Ok((server, client, addr)) => Ok(Subject {
            label: TUNNEL_LABEL.into(),
            peer: None,
            client,
            route: Route::Tcp(addr),
            server,
        }),
        Err(e) => Err(format!("parallel downloads, {TUNNEL_LABEL}: {e}")),
    });
    let mut runs: Vec<Result<Vec<ParallelRun>, String>> = subjects
        .iter()
        .map(|x| x.as_ref().map(|_| Vec::new()).map_err(Clone::clone))
        .collect();
    for rep in 0..s.parallel_reps {
        for (subject, slot) in subjects.iter().zip(runs.iter_mut()) {
            let (Ok(x), Ok(_)) = (subject, &*slot) else {
                continue;
            };
            eprintln!(
                "parallel downloads: {count} x {mib} MiB, {}, run {}/{} ...",
                x.label,
                rep + 1,
                s.parallel_reps
            );
            let r = parallel_run(&x.label, &x.client, &x.route, &x.server, ctx, count, mib).await;
            if let Ok(r) = &r {
                let cpu = |c: Option<f64>| c.map_or("-".into(), |x| format!("{x:.2}"));
                eprintln!(
                    "  {:.1} MiB/s, CPU s/GiB client {} server {}",
                    r.mibps,
                    cpu(r.cpu[0]),
                    cpu(r.cpu[1])
                );
            }
            match (r, slot) {
                (Ok(mut r), Ok(v)) => {
                    r.peer = x.peer.clone();
                    v.push(r);
                }
                (Err(e), slot) => *slot = Err(format!("parallel downloads, {}: {e}", x.label)),
                (Ok(_), Err(_)) => {}
            }
        }
    }
    runs.into_iter()
        .map(|r| r.and_then(|v| combine(v).ok_or_else(|| "no runs".to_owned())))
        .collect()
}

/// Several runs of one pairing as one: the run of the median MiB/s, the
/// median CPU per GiB, the largest peaks.
fn combine(mut runs: Vec<ParallelRun>) -> Option<ParallelRun> {
    let cpu = [0, 1].map(|i| {
        let v: Vec<f64> = runs.iter().filter_map(|r| r.cpu[i]).collect();
        (!v.is_empty()).then(|| median_f(&v))
    });
    let machine: Vec<f64> = runs.iter().filter_map(|r| r.machine).collect();
    let machine = (!machine.is_empty()).then(|| median_f(&machine));
    let max_peak = |f: fn(&ParallelRun) -> &Peak| runs.iter().map(|r| f(r).peak_kib).max();
    let (client_peak, server_peak) = (max_peak(|r| &r.client)?, max_peak(|r| &r.server)?);
    let (client_start, server_start) = (runs[0].client.start_kib, runs[0].server.start_kib);
    runs.sort_by(|a, b| a.mibps.total_cmp(&b.mibps));
    let k = runs.len() / 2;
    let mut r = runs.swap_remove(k);
    r.cpu = cpu;
    r.machine = machine;
    r.client.peak_kib = client_peak;
    r.server.peak_kib = server_peak;
    r.client.start_kib = client_start;
    r.server.start_kib = server_start;
    Some(r)
}

/// The many-stream case as a pairing table: MiB/s, CPU per GiB of the
/// client, the server and everything else, and the ceiling that everything
/// else sets.
pub fn print_many(par: &[Result<ParallelRun, String>], s: &Settings) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let rows: Vec<Row> = par
        .iter()
        .flatten()
        .map(|r| {
            let [c, v] = r.cpu;
            let sum = c.zip(v).map(|(a, b)| a + b);
            let others = r.machine.zip(sum).map(|(m, b)| (m - b).max(0.0));
            let ceiling = others.filter(|o| *o > 0.0).map(|o| cpus / o * 1024.0);
            Row {
                pair: r.label.clone(),
                peer: r.peer.clone(),
                cells: vec![
                    Cell::num(Some(r.mibps), 1),
                    Cell::num(c, 2),
                    Cell::num(v, 2),
                    Cell::num(sum, 2),
                    Cell::num(others, 2),
                    Cell::num(ceiling, 0),
                ],
            }
        })
        .collect();
    pairs::print_table(
        &format!(
            "many streams: {} downloads of {} MiB at once through one client, median of {} \
             (runtime threads per process: {}); CPU s/GiB per process\n  \
             others: the whole machine's CPU per GiB less the client's and the server's (the \
             bench's target and downloaders, their kernel work, anything else running);\n  \
             ceiling: MiB/s with every CPU busy if the client and the server cost nothing \
             (CPUs / others);\n  \
             {TUNNEL_LABEL}: the same downloads through a TCP > TLS > TCP tunnel (rustls, \
             one TLS connection per download, no SOCKS5): what any tunnel of this topology \
             gets on this machine",
            s.parallel,
            s.parallel_mib,
            s.parallel_reps,
            threads_desc(child_threads())
        ),
        &pairs::MANY_COLS,
        &rows,
    );
}

pub fn mib_of(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The parallel downloads' table.
pub fn print_parallel(
    par: &[Result<ParallelRun, String>],
    s: &Settings,
    problems: &mut Vec<String>,
) {
    println!();
    let mut head = format!(
        "parallel downloads: {} x {} MiB at once through SOCKS5 (fresh client and server processes, every byte checked; largest peak of {} runs)",
        s.parallel, s.parallel_mib, s.parallel_reps
    );
    if (s.parallel, s.parallel_mib) != (TARGET_COUNT, TARGET_MIB) {
        head += &format!("; the targets are for {TARGET_COUNT} x {TARGET_MIB} MiB");
    }
    println!("{head}");
    let mut hows: Vec<PeakHow> = Vec::new();
    for r in par.iter().flatten() {
        for h in [r.client.how, r.server.how] {
            if !hows.contains(&h) {
                hows.push(h);
            }
        }
    }
    let mixed = hows.len() > 1;
    for h in &hows {
        let mark = if mixed && *h == PeakHow::Sampled {
            " [sampled]"
        } else {
            ""
        };
        println!("  peak RSS{mark}: {}", h.describe());
    }
    println!(
        "  {:<22} {:>9} {:>9} {:>24} {:>24}   target: peak below anytls-go ({TARGET_CLIENT_PEAK_MIB:.0} / {TARGET_SERVER_PEAK_MIB:.0} MiB)",
        "client > server", "wall", "MiB/s", "client RSS start > peak", "server RSS start > peak"
    );
    for r in par {
        match r {
            Ok(r) => {
                let rss = |p: &Peak| {
                    let mark = if mixed && p.how == PeakHow::Sampled {
                        " [sampled]"
                    } else {
                        ""
                    };
                    format!(
                        "{:.1} > {:.1} MiB{mark}",
                        mib_of(p.start_kib),
                        mib_of(p.peak_kib)
                    )
                };
                let target = if r.label == "ours > ours" {
                    let (c, v) = (mib_of(r.client.peak_kib), mib_of(r.server.peak_kib));
                    format!(
                        "client < {TARGET_CLIENT_PEAK_MIB:.0} MiB {}; server < {TARGET_SERVER_PEAK_MIB:.0} MiB {}",
                        verdict(c < TARGET_CLIENT_PEAK_MIB),
                        verdict(v < TARGET_SERVER_PEAK_MIB)
                    )
                } else {
                    String::new()
                };
                println!(
                    "  {:<22} {:>7.2} s {:>9.1} {:>24} {:>24}   {target}",
                    r.label,
                    r.wall.as_secs_f64(),
                    r.mibps,
                    rss(&r.client),
                    rss(&r.server)
                );
            }
            Err(e) => {
                println!("  {e}");
                problems.push(e.clone());
            }
        }
    }
}
