//! What the parent sees and says: snapshots of both children and the proxy,
//! the rows every 10 s, the checks and the final summary.

use std::collections::HashMap;
use std::time::Duration;

use crate::procs::{Proc, Rss, get, rss_of};
use crate::proxy::{Proxy, ProxyCounts};
use crate::{Cli, Res};

/// Everything at one moment.
pub struct Snapshot {
    pub client: HashMap<String, u64>,
    pub server: HashMap<String, u64>,
    pub proxy: ProxyCounts,
    pub client_rss: Rss,
    pub server_rss: Rss,
    pub own_rss: Rss,
}

impl Snapshot {
    pub async fn take(client: &mut Proc, server: &mut Proc, proxy: &Proxy) -> Res<Snapshot> {
        Ok(Snapshot {
            client: client.stats().await?,
            server: server.stats().await?,
            proxy: proxy.counts(),
            client_rss: client.rss(),
            server_rss: server.rss(),
            own_rss: rss_of(std::process::id()).unwrap_or_default(),
        })
    }

    fn c(&self, k: &str) -> u64 {
        get(&self.client, k)
    }

    fn s(&self, k: &str) -> u64 {
        get(&self.server, k)
    }
}

pub struct Monitor {
    ensure_idle: u64,
    streams_per_session: u64,
    expect_cuts: bool,
    start: Option<(Rss, Rss, Rss)>,
    /// Largest VmRSS seen at a row, client and server.
    max_rss: (u64, u64),
    failures: Vec<String>,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mib_b(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Monitor {
    pub fn new(cli: &Cli) -> Monitor {
        Monitor {
            ensure_idle: cli.ensure_idle as u64,
            streams_per_session: cli.streams_per_session,
            expect_cuts: cli.cut_every_ms > 0 && cli.seconds * 1000 >= 2 * cli.cut_every_ms,
            start: None,
            max_rss: (0, 0),
            failures: Vec::new(),
        }
    }

    pub fn fail(&mut self, why: String) {
        self.failures.push(why);
    }

    pub fn start(&mut self, s: &Snapshot) {
        self.start = Some((s.client_rss, s.server_rss, s.own_rss));
    }

    pub fn header(&self) {
        println!();
        println!(
            "{:>7}  {:>10}  {:>10}  {:>8}  {:>9}  {:>6}  {:>10}  {:>5}  {:>14}",
            "t",
            "client RSS",
            "server RSS",
            "streams",
            "completed",
            "killed",
            "unexpected",
            "cuts",
            "sessions c/s/p"
        );
    }

    pub fn row(&mut self, t: Duration, s: &Snapshot, note: &str) {
        self.max_rss.0 = self.max_rss.0.max(s.client_rss.rss);
        self.max_rss.1 = self.max_rss.1.max(s.server_rss.rss);
        println!(
            "{:>6.1}s  {:>10}  {:>10}  {:>8}  {:>9}  {:>6}  {:>10}  {:>5}  {:>14}  {note}",
            t.as_secs_f64(),
            mib(s.client_rss.rss),
            mib(s.server_rss.rss),
            s.c("started"),
            s.c("completed"),
            s.c("killed"),
            s.c("unexpected"),
            s.proxy.total_cuts(),
            format!(
                "{}/{}/{}",
                s.c("idle") + s.c("busy"),
                s.s("active"),
                s.proxy.live
            ),
        );
    }

    /// Quiet and settled: no stream open anywhere, sessions at the idle
    /// target on the client, the server and the proxy alike.
    pub fn settled(&self, s: &Snapshot) -> bool {
        let idle = s.c("idle");
        s.c("busy") == 0
            && s.c("dialing") == 0
            && s.c("handles") == 0
            && s.s("open") == 0
            && idle == self.ensure_idle
            && s.s("active") == idle
            && s.proxy.live == idle
    }

    /// Prints the summary and the verdict; true for PASS.
    pub fn summary(
        &mut self,
        work: &Snapshot,
        quiet: &Snapshot,
        settled: Option<Duration>,
        closed_snap: &Snapshot,
        closed: Option<Duration>,
        elapsed: Duration,
    ) -> bool {
        // The workload's counters are final once every worker is done; take
        // the pool's and the proxy's from the quiet snapshot (before the
        // client closed its sessions).
        let w = work;
        let q = quiet;
        let cuts = q.proxy.total_cuts();
        let started = w.c("started");
        let completed = w.c("completed");
        let killed = w.c("killed");
        let unexpected = w.c("unexpected");
        let died = q.c("died");
        let dial_failures = q.c("dial_failures");
        let lost = died + dial_failures;

        if unexpected > 0 {
            self.fail(format!(
                "{unexpected} unexpected stream failures (details on stderr)"
            ));
        }
        if w.c("corrupt") > 0 || q.s("corrupt") > 0 {
            self.fail(format!(
                "corrupt data: {} streams seen by the client, {} by the server",
                w.c("corrupt"),
                q.s("corrupt")
            ));
        }
        if started != completed + killed + unexpected {
            self.fail(format!(
                "streams unaccounted for: {started} started, {completed} completed, {killed} \
                 killed, {unexpected} unexpected"
            ));
        }
        if completed == 0 {
            self.fail("no stream completed".into());
        }
        if lost > cuts {
            self.fail(format!(
                "{} sessions lost without a cut: died {died} + failed dials {dial_failures} > \
                 cuts {cuts}",
                lost - cuts
            ));
        }
        let pool_closed = q.c("closed_idle") + q.c("closed_other");
        if q.proxy.ended > pool_closed {
            self.fail(format!(
                "{} connections ended neither cut nor closed by the pool: {} ended, the pool \
                 closed {pool_closed}",
                q.proxy.ended - pool_closed,
                q.proxy.ended
            ));
        }
        if killed > cuts * self.streams_per_session {
            self.fail(format!(
                "{killed} streams failed as if cut, more than {cuts} cuts can kill with {} \
                 stream(s) per session",
                self.streams_per_session
            ));
        }
        if self.expect_cuts && cuts == 0 {
            self.fail("no connection was cut".into());
        }
        if q.proxy.dial_errors > 0 || q.proxy.stuck > 0 {
            self.fail(format!(
                "proxy: {} dials to the server failed, {} connections stuck half-closed or idle",
                q.proxy.dial_errors, q.proxy.stuck
            ));
        }
        if q.c("heartbeat_acks") == 0 {
            self.fail("no heartbeat was answered".into());
        }
        if settled.is_none() {
            self.fail(format!(
                "not settled after the quiet period: client handles {}, busy {}, dialing {}, \
                 idle {} (target {}); server sessions {}, open streams {}; proxy connections {}",
                q.c("handles"),
                q.c("busy"),
                q.c("dialing"),
                q.c("idle"),
                self.ensure_idle,
                q.s("active"),
                q.s("open"),
                q.proxy.live
            ));
        }
        if closed.is_none() {
            self.fail(format!(
                "after the client closed: {} server sessions, {} proxy connections left",
                closed_snap.s("active"),
                closed_snap.proxy.live
            ));
        }

        let (c0, s0, o0) = self.start.unwrap_or_default();
        let rss_line = |name: &str, start: Rss, row_max: u64, end: Rss| {
            println!(
                "  {name:<22}start {}, after quiet {}, largest sample {}, peak {} (VmHWM)",
                mib(start.rss),
                mib(end.rss),
                mib(row_max.max(end.rss)),
                mib(end.peak)
            );
        };
        let pct = |n: u64| {
            if started == 0 {
                0.0
            } else {
                100.0 * n as f64 / started as f64
            }
        };
        println!();
        println!("summary");
        println!(
            "  {:<22}{started} (short {}, long {})",
            "streams started",
            started - w.c("started_long"),
            w.c("started_long")
        );
        println!(
            "  {:<22}{completed} ({:.1} %; long {}), verified {} up, {} down",
            "streams completed",
            pct(completed),
            w.c("completed_long"),
            mib_b(w.c("bytes_up")),
            mib_b(w.c("bytes_down"))
        );
        println!(
            "  {:<22}{killed} ({:.2} %; long {}): while opening {}, before the first answer \
             byte {}, mid-transfer {}, after the last byte {}",
            "killed on purpose",
            pct(killed),
            w.c("killed_long"),
            w.c("killed_connect"),
            w.c("killed_opened"),
            w.c("killed_transfer"),
            w.c("killed_tail")
        );
        let causes: Vec<String> = crate::client::CAUSES
            .iter()
            .map(|c| (c, w.c(&format!("unexpected_{c}"))))
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("{} {n}", c.replace('_', " ")))
            .collect();
        println!(
            "  {:<22}{unexpected} (corrupt data: client {}, server {}){}",
            "unexpected failures",
            w.c("corrupt"),
            q.s("corrupt"),
            if causes.is_empty() {
                String::new()
            } else {
                format!("; by cause: {}", causes.join(", "))
            }
        );
        println!(
            "  {:<22}{cuts}: reset {}, close {}, server side first {}, client side first {}; \
             {} of them right after the connection arrived",
            "cuts",
            q.proxy.cuts[0],
            q.proxy.cuts[1],
            q.proxy.cuts[2],
            q.proxy.cuts[3],
            q.proxy.arrival_cuts
        );
        println!(
            "  {:<22}died {died} + failed dials {dial_failures} = {lost} <= cuts {cuts}: {}",
            "sessions lost",
            if lost <= cuts { "ok" } else { "NO" }
        );
        println!(
            "  {:<22}{} ended without a cut <= {pool_closed} closed by the pool: {}",
            "sessions ended",
            q.proxy.ended,
            if q.proxy.ended <= pool_closed {
                "ok"
            } else {
                "NO"
            }
        );
        println!(
            "  {:<22}accepted {}, completed {}, failed {} (their session was cut), corrupt {}",
            "server streams",
            q.s("accepted"),
            q.s("completed"),
            q.s("failed"),
            q.s("corrupt")
        );
        println!(
            "  {:<22}dials {} (pre-warm {}), established {}, reused {}, closed idle {}, other \
             closes {}, heartbeats {} (answered {}, slowest {:.1} ms)",
            "pool",
            q.c("dials"),
            q.c("prewarm"),
            q.c("established"),
            q.c("reused"),
            q.c("closed_idle"),
            q.c("closed_other"),
            q.c("heartbeats"),
            q.c("heartbeat_acks"),
            q.c("rtt_max_us") as f64 / 1000.0
        );
        println!(
            "  {:<22}connections {}, ended normally {}, stuck {}, dial errors {}, relayed {} up, \
             {} down",
            "proxy",
            q.proxy.accepted,
            q.proxy.ended,
            q.proxy.stuck,
            q.proxy.dial_errors,
            mib_b(q.proxy.bytes_up),
            mib_b(q.proxy.bytes_down)
        );
        rss_line("RSS client", c0, self.max_rss.0, q.client_rss);
        rss_line("RSS server", s0, self.max_rss.1, q.server_rss);
        rss_line("RSS proxy+monitor", o0, 0, q.own_rss);
        match settled {
            Some(d) => println!(
                "  {:<22}settled in {:.1} s: open streams 0 (client handles {}, busy sessions \
                 {}, server handlers {}); idle sessions: client {}, server {}, proxy {} (target {})",
                "after quiet",
                d.as_secs_f64(),
                q.c("handles"),
                q.c("busy"),
                q.s("open"),
                q.c("idle"),
                q.s("active"),
                q.proxy.live,
                self.ensure_idle
            ),
            None => println!("  {:<22}NOT settled", "after quiet"),
        }
        match closed {
            Some(d) => println!(
                "  {:<22}server sessions 0, proxy connections 0 (in {:.1} ms)",
                "after client close",
                d.as_secs_f64() * 1000.0
            ),
            None => println!(
                "  {:<22}server sessions {}, proxy connections {}",
                "after client close",
                closed_snap.s("active"),
                closed_snap.proxy.live
            ),
        }
        println!("  {:<22}{:.1} s", "total time", elapsed.as_secs_f64());
        println!();
        if self.failures.is_empty() {
            println!("PASS");
            true
        } else {
            for f in &self.failures {
                println!("FAIL: {f}");
            }
            false
        }
    }
}
