//! The client endpoint end to end in virtual time: the pool scenarios of
//! `pool.rs` and `pool_sim.rs`, now through real client sessions, in-memory
//! server sessions, pipes with latency and dials that take 10-500 ms
//! (`endpoint_world`, which asserts its invariants after every step).
//!
//! * `prewarm_without_overshoot`: the timeline (a) of `pool.rs`: ensure_idle 5
//!   dials exactly 5 at start, never more idle + dialling than 5 while nothing
//!   is used, reuse takes the newest (5, 4, 3), the sweeps at 5m30 and 6m
//!   close the expired ones with `Pool(IdleTimeout)` but keep min_idle, and
//!   ensure tops up at once.
//! * `min_idle_sessions_survive_the_sweep`: five returned sessions; the
//!   newest two survive every sweep for an hour (and keep beating and
//!   carrying streams), the others close with `Pool(IdleTimeout)`.
//! * `silent_server_is_evicted_by_heartbeat_and_replaced`: an idle session's
//!   path goes silent: its next heartbeat times out (closed with
//!   `HeartbeatTimeout` 3-13 s later), ensure dials a replacement within one
//!   check interval, the other session keeps beating; a busy session on a
//!   silent path resets its stream with that reason.
//! * `failed_prewarm_dials_back_off_then_recover`: during a 10-minute outage
//!   pre-warm dials come in bursts of at most ensure_idle, each after the
//!   back-off the last failure set (75-125 % of the doubling base, at the
//!   next maintenance run), growing to the cap; a user's dial is never held
//!   back (refused with `DialFailed`); afterwards the pool is warm again and
//!   the back-off reset.
//! * `refusals_kills_and_close_give_every_stream_one_outcome`: a refusal
//!   carries the server's text; streams on sessions killed by EOF, transport
//!   error, peer reset and silence are reset with the session's error; a
//!   stream finished while its dial is in flight returns the session to the
//!   pool; `close` refuses the waiting streams (`EndpointClosed`).
//! * `day_balanced`, `day_high_availability`: 24 virtual hours of random
//!   traffic (Poisson arrivals following the time of day, writes of up to
//!   200 KB read back as echo, finish or release after random hold times, 2 %
//!   refused by the server), server-side kills and four outages, with two of
//!   the `pool_sim.rs` presets; every invariant of the world after every
//!   step; a summary is printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

// The world names the library as `crate` (it is compiled into it too).
#[allow(unused_imports)]
use anytls_core::*;

mod endpoint_world;

use anytls_core::pool::{CloseReason, PoolConfig};
use endpoint_world::{Kill, Rng, World, mins, ms, pool_config, preset, secs};

#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// For the run time printed by the day runs only.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

fn timeline_config() -> PoolConfig {
    pool_config(|c| {
        c.check_interval = secs(30);
        c.idle_timeout = secs(300);
        c.min_idle = 2;
        c.ensure_idle = 5;
    })
}

fn seqs(list: &[u64]) -> Vec<SessionSeq> {
    list.iter().map(|s| SessionSeq(*s)).collect()
}

/// Runs to `t` (since start), asserting `f` after every step.
fn run_watching(w: &mut World, t: Duration, mut f: impl FnMut(&World)) {
    let until = w.epoch + t;
    for _ in 0..1_000_000 {
        if !w.step(until) {
            w.run_until(until);
            f(w);
            return;
        }
        f(w);
    }
    panic!("no quiescence");
}

fn idle_timeout_closes(w: &World) -> Vec<SessionSeq> {
    w.closes_with(&SessionError::Pool(CloseReason::IdleTimeout))
}

#[test]
fn prewarm_without_overshoot() {
    let mut w = World::with_pool(timeline_config(), 1, epoch());
    // Start: ensure dials 5 at once, all pre-warm.
    assert_eq!(w.dials.len(), 5);
    assert!(w.dials.iter().all(|d| d.0 == w.epoch && d.2));
    let unused = |w: &World| {
        let dialing = w.pending_dials().len();
        assert!(
            w.idle() + dialing <= 5,
            "overshoot: {} + {dialing}",
            w.idle()
        );
    };
    run_watching(&mut w, secs(1), unused);
    assert_eq!(w.idle(), 5, "start -> 5 idle");
    run_watching(&mut w, secs(31), unused);
    // 3 in use -> 2 idle: the newest are taken (5, 4, 3), no dial.
    let hs: Vec<StreamHandle> = (0..3).map(|_| w.open(2000).unwrap()).collect();
    let on: Vec<SessionSeq> = hs
        .iter()
        .map(|h| w.ep.stream_session(*h).unwrap())
        .collect();
    assert_eq!(on, seqs(&[5, 4, 3]));
    assert_eq!(w.idle(), 2);
    w.run_until(w.epoch + secs(59));
    for h in &hs {
        assert_eq!(w.ep.stream_state(*h), Some(&StreamState::Connected));
        assert_eq!(w.streams[h].received, 2000, "echo read back");
        w.release(*h);
    }
    assert_eq!(w.idle(), 5, "returned -> 5");
    run_watching(&mut w, secs(5 * 60 + 1), unused);
    assert_eq!(w.dials.len(), 5, "no overshoot: 5 idle, nothing to dial");
    assert!(w.closes.is_empty());
    // 5m30: 1 and 2 (idle since ~0.5 s) expire; 5, 4, 3 (idle since 59 s)
    // count toward min_idle: 1 and 2 close, ensure dials 2.
    w.run_until(w.epoch + secs(5 * 60 + 30));
    assert_eq!(idle_timeout_closes(&w), seqs(&[2, 1]));
    assert_eq!(w.dials.len(), 7);
    assert!(
        w.dials[5..]
            .iter()
            .all(|d| d.0 == w.epoch + secs(330) && d.2)
    );
    w.run_until(w.epoch + secs(5 * 60 + 31));
    assert_eq!(w.idle(), 5);
    // 6m: 5, 4, 3 expire; the fresh 7 and 6 make up min_idle.
    w.run_until(w.epoch + secs(6 * 60));
    assert_eq!(idle_timeout_closes(&w), seqs(&[2, 1, 5, 4, 3]));
    assert_eq!(w.dials.len(), 10);
    w.run_until(w.epoch + secs(6 * 60 + 1));
    assert_eq!(w.idle(), 5);
    let st = w.ep.stats();
    assert_eq!((st.pool.idle, st.pool.busy, st.pool.dialing), (5, 0, 0));
    assert_eq!(st.pool.established, 10);
    assert_eq!(st.sessions, 5);
}

#[test]
fn min_idle_sessions_survive_the_sweep() {
    let cfg = pool_config(|c| {
        c.check_interval = secs(30);
        c.idle_timeout = secs(60);
        c.min_idle = 2;
        c.heartbeat = Some(secs(20));
    });
    let mut w = World::with_pool(cfg, 2, epoch());
    assert!(w.dials.is_empty(), "no pre-warm without ensure_idle");
    // Five streams at once: five dials.
    let hs: Vec<StreamHandle> = (0..5).map(|_| w.open(5000).unwrap()).collect();
    assert_eq!(w.dials.len(), 5);
    w.run_until(w.epoch + secs(5));
    for h in &hs {
        assert_eq!(w.streams[h].received, 5000);
        w.release(*h);
    }
    assert_eq!(w.idle(), 5);
    // The 90 s sweep: idle for 85 s > 60 s; the newest two (5, 4) stay.
    w.run_until(w.epoch + secs(89));
    assert!(w.closes.is_empty());
    w.run_until(w.epoch + secs(90));
    assert_eq!(idle_timeout_closes(&w), seqs(&[3, 2, 1]));
    assert_eq!(w.closes.len(), 3);
    assert_eq!(
        w.ep.idle_sessions().iter().map(|i| i.0).collect::<Vec<_>>(),
        seqs(&[5, 4])
    );
    // They survive every later sweep (and keep beating).
    w.run_until(w.epoch + mins(60));
    assert_eq!(w.closes.len(), 3);
    assert_eq!(w.idle(), 2);
    assert!(w.beats(SessionSeq(5)).len() > 150);
    assert!(w.ep.stats().pool.heartbeat_acks > 300);
    // And they carry streams: the newest first.
    let h = w.open(100).unwrap();
    assert_eq!(w.ep.stream_session(h), Some(SessionSeq(5)));
    w.run_for(secs(1));
    assert_eq!(w.streams[&h].received, 100);
    assert_eq!(w.ep.stats().pool.dials, 5);
}

#[test]
fn silent_server_is_evicted_by_heartbeat_and_replaced() {
    let cfg = pool_config(|c| {
        c.check_interval = secs(15);
        c.idle_timeout = mins(10);
        c.min_idle = 2;
        c.ensure_idle = 2;
        c.heartbeat = Some(secs(10));
        c.heartbeat_timeout = Some(secs(3));
    });
    let mut w = World::with_pool(cfg, 3, epoch());
    w.keep_events = true;
    w.run_until(w.epoch + secs(20));
    assert_eq!(w.idle(), 2);
    let acks = |w: &World, on: u64| {
        w.events
            .iter()
            .filter(|e| matches!(e.1, ClientEvent::HeartbeatAck { conn, .. } if conn.0 == on))
            .count()
    };
    assert!(acks(&w, 1) >= 1 && acks(&w, 2) >= 1);
    // The path of idle session 1 goes silent: nothing is delivered.
    let dead = SessionSeq(1);
    let silent_at = w.now;
    w.kill(dead, Kill::Silent);
    w.run_until(silent_at + secs(14));
    let closed = w
        .closes
        .iter()
        .find(|c| c.1 == dead)
        .cloned()
        .expect("the silent session is closed");
    assert_eq!(closed.2, SessionError::HeartbeatTimeout);
    // At its next beat (<= 10 s) plus the timeout (3 s), not before.
    let close_at = closed.0;
    assert!(
        close_at > silent_at + secs(3) && close_at <= silent_at + secs(13),
        "detected after {:?}",
        close_at - silent_at
    );
    // Ensure dials a replacement at the next maintenance run.
    let before = acks(&w, 2);
    w.run_until(close_at + secs(16));
    let replacement = w
        .dials
        .iter()
        .find(|d| d.0 >= close_at)
        .expect("a replacement is dialled");
    assert!(replacement.2, "a pre-warm dial");
    assert!(
        replacement.0 - close_at <= secs(15),
        "replaced after {:?}",
        replacement.0 - close_at
    );
    assert_eq!(w.dials.len(), 3);
    w.run_for(secs(1));
    assert_eq!(w.idle(), 2);
    // The other session kept beating and its beats were answered.
    assert!(acks(&w, 2) > before);
    assert_eq!(w.closes.len(), 1);
    // A busy session on a silent path: its stream is reset with the reason.
    let h = w.open(1000).unwrap();
    let conn = w.ep.stream_session(h).unwrap();
    w.run_for(secs(1));
    assert_eq!(w.ep.stream_state(h), Some(&StreamState::Connected));
    w.kill(conn, Kill::Silent);
    w.run_for(secs(14));
    assert_eq!(
        w.ep.stream_state(h),
        Some(&StreamState::Reset(ResetReason::SessionClosed(
            SessionError::HeartbeatTimeout
        )))
    );
}

/// The pre-warm back-off base after `failures` consecutive failures.
fn backoff_base(cfg: &PoolConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    cfg.dial_backoff
        .saturating_mul(1 << exp)
        .min(cfg.max_dial_backoff)
}

#[test]
fn failed_prewarm_dials_back_off_then_recover() {
    let cfg = pool_config(|c| {
        c.ensure_idle = 3;
        c.check_interval = secs(10);
        c.idle_timeout = mins(10);
        c.dial_backoff = secs(10);
        c.max_dial_backoff = secs(80);
    });
    let mut w = World::with_pool(cfg.clone(), 4, epoch());
    w.server.down = true;
    w.run_until(w.epoch + secs(300));
    // A user's dial is not held back by the back-off, and fails at once.
    let dials = w.dials.len();
    let h = w.open(10).unwrap();
    assert_eq!(w.dials.len(), dials + 1);
    w.run_for(ms(600));
    assert!(matches!(
        w.ep.stream_state(h),
        Some(StreamState::Refused(RefuseReason::DialFailed(_)))
    ));
    w.release(h);
    w.run_until(w.epoch + secs(600));
    // Pre-warm dials come in bursts of at most 3 ...
    let mut bursts: BTreeMap<Instant, Vec<SessionSeq>> = BTreeMap::new();
    for d in w.dials.iter().filter(|d| d.2) {
        bursts.entry(d.0).or_default().push(d.1);
    }
    assert!(bursts.values().all(|b| b.len() <= 3));
    assert!(
        bursts.len() >= 4 && bursts.len() <= 15,
        "{} bursts",
        bursts.len()
    );
    // ... each one after the back-off the last failure of the previous one
    // set (75-125 % of the base), at the first maintenance run after it.
    let answered: BTreeMap<SessionSeq, Instant> = w.answers.iter().map(|a| (a.1, a.0)).collect();
    let mut failures = 0;
    let mut gaps = Vec::new();
    let list: Vec<(&Instant, &Vec<SessionSeq>)> = bursts.iter().collect();
    for pair in list.windows(2) {
        let (_, prev) = pair[0];
        let (next_at, _) = pair[1];
        failures += prev.len() as u32;
        let last_fail = prev.iter().map(|s| answered[s]).max().unwrap();
        let base = backoff_base(&cfg, failures);
        let wait = *next_at - last_fail;
        assert!(
            wait >= base * 3 / 4 && wait <= base * 5 / 4 + cfg.check_interval,
            "after {failures} failures: {wait:?} (base {base:?})"
        );
        gaps.push(*next_at - *pair[0].0);
    }
    assert!(gaps.last().unwrap() >= &secs(60), "backed off: {gaps:?}");
    assert!(gaps.iter().all(|g| *g <= secs(110)), "capped: {gaps:?}");
    assert!(w.ep.stats().pool.backoff_failures > 0);
    // Recovery.
    w.server.down = false;
    w.run_until(w.epoch + secs(800));
    assert_eq!(w.idle(), 3);
    assert_eq!(w.ep.stats().pool.backoff_failures, 0);
    let h = w.open(100).unwrap();
    w.run_for(secs(1));
    assert_eq!(w.streams[&h].received, 100);
}

#[test]
fn refusals_kills_and_close_give_every_stream_one_outcome() {
    let cfg = pool_config(|c| {
        c.ensure_idle = 2;
        c.heartbeat = Some(secs(10));
        c.heartbeat_timeout = Some(secs(2));
        c.max_streams_per_session = 2;
    });
    let mut w = World::with_pool(cfg, 5, epoch());
    w.keep_events = true;
    w.run_for(secs(1));
    // A refusal with text, carried as the server wrote it.
    w.server.refuse = Some("blocked by policy".into());
    let refused = w.open(0).unwrap();
    w.run_for(secs(1));
    assert_eq!(
        w.ep.stream_state(refused),
        Some(&StreamState::Refused(RefuseReason::Server(
            "blocked by policy".into()
        )))
    );
    assert!(matches!(
        w.ep.write(refused, b"x"),
        Err(StreamError::Refused(RefuseReason::Server(_)))
    ));
    w.server.refuse = None;
    // Streams on sessions the server kills in each way.
    let mut on = Vec::new();
    for how in [Kill::Eof, Kill::Reset, Kill::PeerReset, Kill::Silent] {
        let h = w.open(3000).unwrap();
        w.run_for(secs(1));
        assert_eq!(w.ep.stream_state(h), Some(&StreamState::Connected));
        let conn = w.ep.stream_session(h).unwrap();
        w.kill(conn, how);
        on.push((h, how));
        w.run_for(secs(15));
    }
    for (h, how) in &on {
        let want = match how {
            Kill::Eof | Kill::PeerReset => SessionError::PeerEof,
            Kill::Reset => {
                SessionError::Transport(TransportError::Failed("connection reset".into()))
            }
            Kill::Silent => SessionError::HeartbeatTimeout,
        };
        assert_eq!(
            w.ep.stream_state(*h),
            Some(&StreamState::Reset(ResetReason::SessionClosed(want))),
            "{how:?}"
        );
    }
    // A stream finished by the owner before its dial completes: its session
    // joins the pool when the dial completes.
    let mut dialling = None;
    for _ in 0..10 {
        let h = w.open(0).unwrap();
        if w.ep.stream_session(h).is_none() {
            dialling = Some(h);
            break;
        }
    }
    let dialling = dialling.expect("a stream that waits for a dial");
    w.finish(dialling);
    w.run_for(secs(1));
    assert_eq!(w.ep.stream_state(dialling), Some(&StreamState::Finished));
    let conn = w.streams[&dialling].conn.unwrap();
    assert!(w.ep.idle_sessions().iter().any(|i| i.0 == conn));
    // Streams waiting when the endpoint closes are refused.
    let last: Vec<StreamHandle> = (0..6).filter_map(|_| w.open(0)).collect();
    assert!(last.iter().any(|h| w.ep.stream_session(*h).is_none()));
    w.close();
    for h in last {
        let s = w.ep.stream_state(h).unwrap();
        if w.streams[&h]
            .conn
            .is_some_and(|c| w.answers.iter().all(|a| a.1 != c))
        {
            assert_eq!(s, &StreamState::Refused(RefuseReason::EndpointClosed));
        } else {
            // Opening on its session (no SYNACK yet): refused, with the
            // session's end.
            let shutdown = SessionError::Pool(CloseReason::Shutdown);
            assert_eq!(
                s,
                &StreamState::Refused(RefuseReason::SessionClosed(shutdown))
            );
        }
    }
    w.settle_dials();
    assert_eq!(w.ep.stats().sessions, 0);
    let outcomes = w
        .events
        .iter()
        .filter(|e| {
            matches!(
                e.1,
                ClientEvent::StreamRefused { .. } | ClientEvent::StreamReset { .. }
            )
        })
        .count() as u64;
    let st = w.ep.stats();
    assert_eq!(outcomes, st.streams_refused + st.streams_reset);
}

// ---------------------------------------------------------------------------
// A virtual day

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug)]
enum Ev {
    Arrival,
    /// The owner is done with the stream: finish, or release.
    End(StreamHandle),
    Release(StreamHandle),
    Kill,
    OutageStart(Duration),
    OutageEnd,
}

struct Day {
    w: World,
    rng: Rng,
    queue: BTreeMap<(Instant, u64), Ev>,
    order: u64,
    peak_per_min: f64,
    trough_per_min: f64,
    outages: u32,
}

impl Day {
    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.order += 1;
        self.queue.insert((self.w.now + after, self.order), ev);
    }

    /// Arrivals per minute at this time of day (lowest at midnight).
    fn rate(&self) -> f64 {
        let day = self.w.t().as_secs_f64() / DAY.as_secs_f64();
        let x = (1.0 - (2.0 * std::f64::consts::PI * day).cos()) / 2.0;
        self.trough_per_min + (self.peak_per_min - self.trough_per_min) * x
    }

    fn hold(&mut self) -> Duration {
        let u = self.rng.unit();
        if u < 0.7 {
            self.rng.ms(50, 5_000)
        } else if u < 0.95 {
            self.rng.ms(5_000, 120_000)
        } else {
            self.rng.ms(120_000, 1_800_000)
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival => {
                let mean = Duration::from_secs_f64(60.0 / self.rate());
                let gap = self.rng.exp(mean);
                self.schedule(gap, Ev::Arrival);
                let len = if self.rng.chance(0.8) {
                    self.rng.below(4_000) + 1
                } else {
                    self.rng.below(200_000) + 1
                };
                if let Some(h) = self.w.open(len) {
                    let hold = self.hold();
                    self.schedule(hold, Ev::End(h));
                }
            }
            Ev::End(h) => {
                if self.rng.chance(0.3) {
                    self.w.finish(h);
                    let later = self.rng.ms(10, 2_000);
                    self.schedule(later, Ev::Release(h));
                } else {
                    self.w.release(h);
                }
            }
            Ev::Release(h) => self.w.release(h),
            Ev::Kill => {
                let gap = self.rng.exp(mins(10));
                self.schedule(gap, Ev::Kill);
                let live: Vec<SessionSeq> = self.w.live().collect();
                if !live.is_empty() {
                    let conn = live[self.rng.below(live.len())];
                    let kinds = [Kill::Eof, Kill::Reset, Kill::PeerReset, Kill::Silent];
                    let how = kinds[self.rng.below(4)];
                    self.w.kill(conn, how);
                }
            }
            Ev::OutageStart(len) => {
                self.outages += 1;
                self.w.outage(true, None);
                self.schedule(len, Ev::OutageEnd);
            }
            Ev::OutageEnd => self.w.outage(false, None),
        }
    }
}

fn run_day(name: &str, seed: u64) {
    let t0 = wall_clock();
    let mut w = World::with_pool(preset(name), seed, epoch());
    w.server.refuse_rate = 0.02;
    // One task per connection pulling its transmits, on the second day.
    w.per_conn_transmit = seed % 2 == 0;
    let mut d = Day {
        w,
        rng: Rng::new(seed),
        queue: BTreeMap::new(),
        order: 0,
        peak_per_min: 10.0,
        trough_per_min: 0.5,
        outages: 0,
    };
    d.schedule(Duration::ZERO, Ev::Arrival);
    let first_kill = d.rng.exp(mins(10));
    d.schedule(first_kill, Ev::Kill);
    // One long outage (3 h) early in the morning, three short ones later.
    let long = d.rng.ms(2 * 3_600_000, 4 * 3_600_000);
    d.schedule(long, Ev::OutageStart(secs(3 * 3600)));
    for (from_h, to_h) in [(8, 10), (13, 15), (18, 21)] {
        let at = d.rng.ms(from_h * 3_600_000, to_h * 3_600_000);
        let len = d.rng.ms(30_000, 15 * 60_000);
        d.schedule(at, Ev::OutageStart(len));
    }
    let end = d.w.epoch + DAY;
    for _ in 0..50_000_000u64 {
        let ext = d.queue.keys().next().map(|k| k.0);
        let next = [ext, d.w.next_deadline()].into_iter().flatten().min();
        let Some(t) = next.filter(|t| *t <= end) else {
            break;
        };
        d.w.advance_to(t.max(d.w.now));
        while let Some(e) = d.queue.first_entry() {
            if e.key().0 > d.w.now {
                break;
            }
            let ev = e.remove();
            d.event(ev);
        }
    }
    d.w.run_until(end);
    let w = &mut d.w;
    w.close();
    w.settle_dials();
    for h in w.open_streams() {
        w.release(h);
    }
    let st = w.ep.stats();
    let n = &w.n;
    println!(
        "{name}: {} steps in {:?}; {} streams ({} connected, {} refused, {} reset), \
         {} dials ({} pre-warm, {} failed), {} heartbeats ({} acks), {} maintenance runs, \
         closes {:?}, server closes {:?}, max idle {}, literal idle bound exceeded in {} steps, \
         {} bytes echoed; pool {:?}",
        n.steps,
        wall_clock() - t0,
        n.opened,
        n.connected,
        n.refused,
        n.reset,
        n.dials,
        n.prewarm_dials,
        n.dials_failed,
        n.heartbeats,
        n.acks,
        n.maintenance,
        n.closes,
        n.server_closed,
        n.max_idle,
        n.literal_bound_exceeded,
        n.bytes_echoed,
        st.pool,
    );
    // The day exercised what it should.
    assert_eq!(d.outages, 4);
    assert!(st.pool.reused > 100 && n.refused > 0 && n.reset > 0);
    assert!(n.dials_failed > 0 && n.acks > 0 && n.bytes_echoed > 0);
    for reason in ["IdleTimeout", "HeartbeatTimeout", "PeerEof"] {
        assert!(
            n.closes.get(reason).is_some_and(|c| *c > 0),
            "no {reason} close"
        );
    }
    if preset(name).max_session_lifetime.is_some() {
        assert!(n.closes.get("Lifetime").is_some_and(|c| *c > 0));
    }
}

#[test]
fn day_balanced() {
    run_day("balanced", 0x5eed_0001);
}

#[test]
fn day_high_availability() {
    run_day("high-availability", 0x5eed_0002);
}
