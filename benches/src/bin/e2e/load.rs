//! Latency under load: a bulk download runs through a pairing's client while
//! small requests go through the same client's SOCKS5 listener, one after
//! the other; p50 and p99 of a fixed count, for every pairing, with every
//! process on one runtime thread and on the default.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pairs::{self, Cell, Col, Row};
use super::{
    Ctx, MIB, PairProcs, Pairing, Res, Route, SMALL, Settings, download, fetch, open_and,
    threads_desc,
};

/// Time for the bulk download to get going before the first request.
const RAMP: Duration = Duration::from_millis(300);
/// Pause between two requests (a pooling client takes the session back).
const PAUSE: Duration = Duration::from_millis(5);
/// Requests before the measured ones (the client dials its second session).
const UNMEASURED: usize = 2;

/// One pairing on one runtime setting.
pub struct LoadRun {
    pub pair: String,
    pub peer: Option<String>,
    pub res: Result<LoadFigures, String>,
}

pub struct LoadFigures {
    /// Round trips of the small requests, sorted.
    pub samples: Vec<Duration>,
    /// MiB/s of the bulk downloads finished while the requests ran.
    pub bulk_mibps: Option<f64>,
}

/// The `q` quantile of sorted `v` (nearest rank).
pub fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1));
    v.get(k - 1).copied()
}

/// Bytes moved by finished bulk downloads, and when the last one finished.
type Moved = Arc<Mutex<(u64, Duration)>>;

/// Small requests through `procs`' client while bulk downloads of `bulk`
/// bytes, one after the other, run through the same client.
async fn measure(procs: &PairProcs, ctx: &Ctx, count: usize, bulk: u64) -> Res<LoadFigures> {
    let socks = procs.socks;
    // Code paged in and a session in the pool, which the bulk download takes.
    fetch(socks, ctx.target, &ctx.pat).await?;
    tokio::time::sleep(PAUSE).await;
    let moved: Moved = Arc::new(Mutex::new((0, Duration::ZERO)));
    let (pat, target, m) = (ctx.pat.clone(), ctx.target, moved.clone());
    let t0 = Instant::now();
    // Runs until aborted; ends only on an error, which it returns.
    let bulk_task = tokio::spawn(async move {
        loop {
            let pat = pat.clone();
            let r = open_and(&Route::Socks(socks), target, move |s| async move {
                download(s, &pat, bulk).await
            })
            .await;
            if let Err(e) = r {
                return e.to_string();
            }
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            *g = (g.0 + bulk, t0.elapsed());
        }
    });
    let res: Res<Vec<Duration>> = async {
        tokio::time::sleep(RAMP).await;
        let mut v = Vec::with_capacity(count);
        for i in 0..UNMEASURED + count {
            tokio::time::sleep(PAUSE).await;
            if bulk_task.is_finished() {
                return Err("the bulk download ended".into());
            }
            let dt = fetch(socks, ctx.target, &ctx.pat).await?;
            if i >= UNMEASURED {
                v.push(dt);
            }
        }
        if bulk_task.is_finished() {
            return Err("the bulk download ended".into());
        }
        Ok(v)
    }
    .await;
    bulk_task.abort();
    // Ok: it ended by itself, with an error; Err: aborted.
    let bulk_err = bulk_task.await.ok();
    let mut samples = match (res, bulk_err) {
        (_, Some(e)) => return Err(format!("bulk download: {e}").into()),
        (r, None) => r?,
    };
    samples.sort();
    let (bytes, at) = *moved.lock().unwrap_or_else(|e| e.into_inner());
    let bulk_mibps = (bytes > 0).then(|| bytes as f64 / MIB as f64 / at.as_secs_f64().max(1e-9));
    Ok(LoadFigures {
        samples,
        bulk_mibps,
    })
}

/// Every pairing on `threads` runtime workers, fresh processes each.
pub async fn load_pairings(
    pairings: &[Pairing<'_>],
    ctx: &Ctx,
    s: &Settings,
    threads: Option<usize>,
) -> Vec<LoadRun> {
    let bulk = s.mib.min(64) * MIB;
    let mut out = Vec::new();
    for p in pairings {
        let pair = p.label();
        eprintln!(
            "latency under load: {pair}, runtime threads {} ...",
            threads_desc(threads)
        );
        let res: Res<LoadFigures> = async {
            let procs = p.start(ctx, threads).await?;
            measure(&procs, ctx, s.load_requests, bulk).await
        }
        .await;
        out.push(LoadRun {
            pair,
            peer: p.peer().map(|x| x.name.clone()),
            res: res.map_err(|e| e.to_string()),
        });
    }
    out
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

const COLS: [Col; 4] = [
    Col {
        head: "p50 ms",
        compare: true,
    },
    Col {
        head: "p99 ms",
        compare: true,
    },
    Col {
        head: "max ms",
        compare: false,
    },
    Col {
        head: "bulk MiB/s",
        compare: false,
    },
];

/// A table per runtime setting; failures go to `problems`.
pub fn print_load(
    load: &[(Option<usize>, Vec<LoadRun>)],
    s: &Settings,
    unthreaded: &[String],
    problems: &mut Vec<String>,
) {
    for (threads, runs) in load {
        let rows: Vec<Row> = runs
            .iter()
            .map(|r| {
                let cells = match &r.res {
                    Ok(f) => vec![
                        Cell::num(ms(quantile(&f.samples, 0.5)), 2),
                        Cell::num(ms(quantile(&f.samples, 0.99)), 2),
                        Cell::num(ms(f.samples.last().copied()), 2),
                        Cell::num(f.bulk_mibps, 0),
                    ],
                    Err(e) => {
                        problems.push(format!(
                            "latency under load, {}, threads {}: {e}",
                            r.pair,
                            threads_desc(*threads)
                        ));
                        vec![Cell::text("failed")]
                    }
                };
                Row {
                    pair: r.pair.clone(),
                    peer: r.peer.clone(),
                    cells,
                }
            })
            .collect();
        pairs::print_table(
            &format!(
                "latency under load, runtime threads per process: {}: {} requests of {SMALL} \
                 bytes through SOCKS5 (connect to last byte), one at a time, while downloads of \
                 {} MiB run through the same client; fresh processes",
                threads_desc(*threads),
                s.load_requests,
                s.mib.min(64)
            ),
            &COLS,
            &rows,
        );
    }
    for name in unthreaded {
        println!(
            "  note: {name}'s commands have no {{threads}}: it ran on its own default in both settings"
        );
    }
}
