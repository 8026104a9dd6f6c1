//! The pool policy under load, and against a reference model.
//!
//! 1. `day_*`: each preset below runs for 24 virtual hours of random traffic
//!    (Poisson arrivals whose rate follows the time of day, random hold times),
//!    server-side session kills and server outages (one of 3 h, three of 30 s to
//!    15 min: dials fail, every session dies). Only the next event is stepped
//!    to: a pool deadline, an arrival, a stream's end, a dial completion
//!    (10-500 ms), a kill, an outage edge (heartbeat answers, 10-300 ms, ride
//!    along with the next step). After every step the pool is compared with the
//!    reference model and these invariants are asserted:
//!    * (a) idle + pre-warm dials in flight <= max(ensure_idle, K) + R, where K
//!      is what the last maintenance run left idle and R the sessions returned
//!      since; every run leaves K <= min_idle + F idle, F being the sessions it
//!      found idle for less than idle_timeout. (The shorter "idle <=
//!      max(ensure, min_idle) + returned since the last run" does not hold by
//!      design: sessions returned within the last idle_timeout survive any
//!      number of runs. Steps where it fails are counted and printed.) Unused
//!      pre-warmed sessions plus pre-warm dials never exceed ensure_idle.
//!    * (b) a sweep never closes (IdleTimeout) one of the newest min_idle idle
//!      sessions, nor one idle for less than idle_timeout.
//!    * (c) maintenance runs exactly every check_interval; at each run a
//!      deficit (idle + pre-warm dials < ensure_idle) is dialled at once (capped
//!      by the create rate) unless backing off, so a dead session is replaced
//!      within one interval when not backing off.
//!    * (d) at most min(ensure_idle, create rate) pre-warm dials per run; while
//!      the server is down, consecutive dial bursts are at least 75 % of the
//!      back-off apart, and towards the end of a long outage bursts come less
//!      often than once per check interval.
//!    * (e) heartbeats only on established, open sessions: the first 80-100 %
//!      of an interval after `established`, then exactly one interval apart,
//!      none missed, none after the close.
//!    * the `PoolStats` gauges and counters match the driver's own bookkeeping.
//! 2. `pool_matches_reference_model`: proptest; random operation sequences over
//!    random `PoolConfig`s, every observable output (checkout decisions, Close
//!    actions and reasons, Dial actions, heartbeats, `stats()`,
//!    `idle_sessions()`, `poll_timeout()`) compared with [`Model`].
//!
//! # Presets
//!
//! The configuration examples of the seed documents, reconstructed (the
//! documents themselves were not available); [`presets`] returns them.
//!
//! | preset            | check | idle timeout | min_idle | ensure | rate | heartbeat | hb timeout | lifetime (jitter) | dial back-off |
//! |-------------------|-------|--------------|----------|--------|------|-----------|------------|-------------------|---------------|
//! | balanced          | 30 s  | 60 s         | 2        | 3      | -    | 30 s      | 10 s       | -                 | 1 s .. 60 s   |
//! | low-latency       | 10 s  | 5 min        | 5        | 8      | 4    | 15 s      | 10 s       | -                 | 0.5 s .. 30 s |
//! | mobile/NAT        | 20 s  | 2 min        | 1        | 2      | -    | 20 s      | 10 s       | -                 | 2 s .. 2 min  |
//! | high-availability | 15 s  | 10 min       | 4        | 6      | -    | 10 s      | 5 s        | 1 h (10 min)      | 1 s .. 30 s   |
//! | IoT               | 5 min | 30 min       | 1        | 1      | -    | 4 min     | 30 s       | -                 | 1 min .. 1 h  |
//!
//! Mobile/NAT beats every 20 s to keep NAT mappings alive; IoT keeps a single
//! warm session, beats just under its check interval and backs off slowly to
//! save the battery while the server is away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anytls_core::pool::{Checkout, CloseReason, Pool, PoolAction, PoolConfig, PoolStats};
use anytls_core::session::SessionSeq;
use proptest::collection::vec;
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

mod pool_presets;
use pool_presets::{mins, ms, pool_config as config, presets, secs};

const NS: Duration = Duration::from_nanos(1);

#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

// ---------------------------------------------------------------------------
// Reference model
//
// A deliberately plain re-statement of the policy: ANYTLS.md 7.1 for checkout,
// return and the idle sweep, and the module docs of `pool.rs` for lifetime,
// ensure, back-off and heartbeats. Where the pool draws random jitter the model
// keeps the range of allowed values (a `Window`) and narrows it with what the
// pool is seen to do; every observation must stay inside the range.

/// A hidden instant known to lie in `[lo, hi]`.
#[derive(Clone, Copy, Debug)]
struct Window {
    lo: Instant,
    hi: Instant,
}

impl Window {
    /// Whether the hidden instant is `<= now`, if that is known yet.
    fn le(&self, now: Instant) -> Option<bool> {
        if self.hi <= now {
            Some(true)
        } else if self.lo > now {
            Some(false)
        } else {
            None
        }
    }

    /// Records an observation of "hidden instant `<= now`" (or not).
    fn learn(&mut self, now: Instant, le: bool) {
        if le {
            self.hi = self.hi.min(now);
        } else {
            self.lo = self.lo.max(now + NS);
        }
        assert!(
            self.lo <= self.hi,
            "observations contradict the model: {self:?}"
        );
    }
}

/// How an idle session got into the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A pre-warm dial that nobody has used yet.
    Prewarm,
    /// A user returned it.
    Returned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    Dialing { prewarm: bool },
    Idle { since: Instant, origin: Origin },
    Busy { streams: usize },
}

#[derive(Clone, Debug)]
struct MEntry {
    state: MState,
    /// When its lifetime ends.
    expires: Option<Window>,
    /// The last maintenance run that saw it busy. A busy session whose lifetime
    /// ended by then is retired (not shared, closed when its stream ends).
    busy_checked: Option<Instant>,
    /// Its next heartbeat.
    beat: Option<Window>,
}

/// What one maintenance run did, for the simulator's invariants.
#[derive(Clone, Debug)]
struct Maint {
    at: Instant,
    /// Idle sessions before the sweep, newest first, with their idle time.
    idle_before: Vec<(SessionSeq, Instant)>,
    swept: Vec<SessionSeq>,
    refreshed: Vec<SessionSeq>,
    lifetime: Vec<SessionSeq>,
    /// Idle sessions and pre-warm dials in flight after sweep and lifetime.
    idle_after: usize,
    prewarm_dialing: usize,
    /// `ensure_idle - idle - pre-warm dials` (0 when ensure is off).
    deficit: usize,
    /// Whether ensure was held back by the back-off (when it mattered).
    in_backoff: Option<bool>,
    dials: Vec<SessionSeq>,
}

/// A cursor over the actions the pool emitted after one call.
struct Acts<'a> {
    list: &'a [PoolAction],
    at: usize,
}

impl<'a> Acts<'a> {
    fn new(list: &'a [PoolAction]) -> Acts<'a> {
        Acts { list, at: 0 }
    }

    fn peek(&self) -> Option<PoolAction> {
        self.list.get(self.at).copied()
    }

    fn expect(&mut self, a: PoolAction) {
        assert_eq!(
            self.peek(),
            Some(a),
            "expected {a:?} at {} of {:?}",
            self.at,
            self.list
        );
        self.at += 1;
    }

    fn rest(&mut self) -> &'a [PoolAction] {
        let r = &self.list[self.at..];
        self.at = self.list.len();
        r
    }

    fn done(&self) {
        assert_eq!(
            self.at,
            self.list.len(),
            "unexpected actions: {:?}",
            &self.list[self.at..]
        );
    }
}

struct Model {
    cfg: PoolConfig,
    now: Instant,
    entries: BTreeMap<SessionSeq, MEntry>,
    next_seq: u64,
    next_check: Instant,
    backoff: Option<Window>,
    failures: u32,
    closed: bool,
    /// Counters (the gauges are computed from `entries`).
    stats: PoolStats,
}

fn backoff_base(cfg: &PoolConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let ns = (cfg.dial_backoff.as_nanos() << exp).min(cfg.max_dial_backoff.as_nanos());
    Duration::from_nanos(ns as u64)
}

impl Model {
    fn new(cfg: PoolConfig, now: Instant, acts: &[PoolAction]) -> Model {
        let mut m = Model {
            next_check: now + cfg.check_interval,
            cfg,
            now,
            entries: BTreeMap::new(),
            next_seq: 1,
            backoff: None,
            failures: 0,
            closed: false,
            stats: PoolStats::default(),
        };
        let mut acts = Acts::new(acts);
        m.ensure(now, &mut acts);
        acts.done();
        m
    }

    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn new_seq(&mut self, prewarm: bool) -> SessionSeq {
        let seq = SessionSeq(self.next_seq);
        self.next_seq += 1;
        self.entries.insert(
            seq,
            MEntry {
                state: MState::Dialing { prewarm },
                expires: None,
                busy_checked: None,
                beat: None,
            },
        );
        self.stats.dials += 1;
        if prewarm {
            self.stats.prewarm_dials += 1;
        }
        seq
    }

    fn close(&mut self, seq: SessionSeq, reason: CloseReason, acts: &mut Acts) {
        assert!(self.entries.remove(&seq).is_some());
        *self.stats.closed.entry(reason).or_default() += 1;
        acts.expect(PoolAction::Close { seq, reason });
    }

    /// Idle sessions, newest first.
    fn idle_list(&self) -> Vec<(SessionSeq, Instant)> {
        self.entries
            .iter()
            .rev()
            .filter_map(|(s, e)| match e.state {
                MState::Idle { since, .. } => Some((*s, since)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&MState) -> bool) -> usize {
        self.entries.values().filter(|e| f(&e.state)).count()
    }

    fn seqs(&self, f: impl Fn(&MState) -> bool) -> Vec<SessionSeq> {
        self.entries
            .iter()
            .filter(|(_, e)| f(&e.state))
            .map(|(s, _)| *s)
            .collect()
    }

    fn prewarm_dialing(&self) -> usize {
        self.count(|s| matches!(s, MState::Dialing { prewarm: true }))
    }

    fn checkout(&mut self, now: Instant, got: Checkout) {
        self.advance(now);
        if !self.cfg.disable_reuse && !self.closed {
            // The newest idle session.
            if let Some((&seq, e)) = self
                .entries
                .iter_mut()
                .rev()
                .find(|(_, e)| matches!(e.state, MState::Idle { .. }))
            {
                e.state = MState::Busy { streams: 1 };
                self.stats.reused += 1;
                assert_eq!(got, Checkout::Reuse(seq), "newest idle session");
                return;
            }
            // Else the newest busy one with room, unless it is retired.
            let max = self.cfg.max_streams_per_session;
            let shared: Vec<SessionSeq> = self
                .entries
                .iter()
                .rev()
                .filter(|(_, e)| matches!(e.state, MState::Busy { streams } if streams < max))
                .map(|(s, _)| *s)
                .collect();
            for seq in shared {
                let e = self.entries.get_mut(&seq).unwrap();
                let retired = match (&mut e.expires, e.busy_checked) {
                    (Some(w), Some(at)) => match w.le(at) {
                        Some(r) => r,
                        None => {
                            let r = got != Checkout::Reuse(seq);
                            w.learn(at, r);
                            r
                        }
                    },
                    _ => false,
                };
                if !retired {
                    if let MState::Busy { streams } = &mut e.state {
                        *streams += 1;
                    }
                    self.stats.reused += 1;
                    assert_eq!(got, Checkout::Reuse(seq), "newest shareable session");
                    return;
                }
            }
        }
        let seq = self.new_seq(false);
        assert_eq!(got, Checkout::Dial(seq));
    }

    fn established(&mut self, seq: SessionSeq, now: Instant, acts: &mut Acts) {
        let now = self.advance(now);
        let cfg = &self.cfg;
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        let MState::Dialing { prewarm } = e.state else {
            return;
        };
        e.state = if prewarm {
            MState::Idle {
                since: now,
                origin: Origin::Prewarm,
            }
        } else {
            MState::Busy { streams: 1 }
        };
        // Lifetime: base + an offset in [-J/2, J/2), at least 1 s.
        e.expires = cfg.max_session_lifetime.map(|l| {
            let j = cfg.lifetime_jitter;
            let lo = l.saturating_sub(j / 2).max(secs(1));
            let hi = (l + j).saturating_sub(j / 2 + NS).max(secs(1)).max(lo);
            Window {
                lo: now + lo,
                hi: now + if j.is_zero() { lo } else { hi },
            }
        });
        // First heartbeat after 80-100 % of an interval.
        e.beat = cfg.heartbeat.map(|h| {
            let fifth = Duration::from_nanos((h.as_nanos() / 5) as u64);
            Window {
                lo: now + h - fifth.saturating_sub(NS),
                hi: now + h,
            }
        });
        self.stats.established += 1;
        self.failures = 0;
        self.backoff = None;
        if self.closed {
            self.close(seq, CloseReason::Shutdown, acts);
        }
    }

    fn dial_failed(&mut self, seq: SessionSeq, now: Instant) {
        let now = self.advance(now);
        let Some(e) = self.entries.remove(&seq) else {
            return;
        };
        self.stats.dial_failures += 1;
        if e.state == (MState::Dialing { prewarm: true }) {
            self.failures = self.failures.saturating_add(1);
            let base = backoff_base(&self.cfg, self.failures);
            let quarter = base / 4;
            // A delay of 75..125 % of the base.
            self.backoff = Some(Window {
                lo: now + base - quarter,
                hi: now + base + quarter.saturating_sub(NS),
            });
        }
    }

    fn checkin(&mut self, seq: SessionSeq, now: Instant, acts: &mut Acts) {
        let now = self.advance(now);
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        let MState::Busy { streams } = &mut e.state else {
            return;
        };
        *streams -= 1;
        if *streams > 0 {
            return;
        }
        if self.cfg.disable_reuse || self.closed {
            let reason = if self.closed {
                CloseReason::Shutdown
            } else {
                CloseReason::NoReuse
            };
            self.close(seq, reason, acts);
            return;
        }
        let expired = match &mut e.expires {
            None => false,
            Some(w) => match w.le(now) {
                Some(x) => x,
                None => {
                    let x = acts.peek()
                        == Some(PoolAction::Close {
                            seq,
                            reason: CloseReason::Lifetime,
                        });
                    w.learn(now, x);
                    x
                }
            },
        };
        if expired {
            self.close(seq, CloseReason::Lifetime, acts);
        } else {
            e.state = MState::Idle {
                since: now,
                origin: Origin::Returned,
            };
        }
    }

    fn session_closed(&mut self, seq: SessionSeq, now: Instant) {
        self.advance(now);
        if let Some(e) = self.entries.remove(&seq) {
            if matches!(e.state, MState::Dialing { .. }) {
                self.stats.dial_failures += 1;
            } else {
                self.stats.died += 1;
            }
        }
    }

    fn heartbeat_ack(&mut self, rtt: Duration) {
        let s = &mut self.stats;
        s.heartbeat_acks += 1;
        s.heartbeat_rtt_last = Some(rtt);
        s.heartbeat_rtt_min = Some(s.heartbeat_rtt_min.map_or(rtt, |m| m.min(rtt)));
        s.heartbeat_rtt_max = Some(s.heartbeat_rtt_max.map_or(rtt, |m| m.max(rtt)));
    }

    fn shutdown(&mut self, now: Instant, acts: &mut Acts) {
        self.advance(now);
        self.closed = true;
        let all: Vec<SessionSeq> = self.entries.keys().copied().collect();
        for seq in all {
            self.close(seq, CloseReason::Shutdown, acts);
        }
    }

    /// Maintenance when due, then heartbeats. Returns the maintenance report
    /// and the sessions that beat.
    fn handle_timeout(
        &mut self,
        now: Instant,
        acts: &mut Acts,
    ) -> (Option<Maint>, Vec<SessionSeq>) {
        let now = self.advance(now);
        if self.closed {
            return (None, Vec::new());
        }
        let maint = if now >= self.next_check {
            let m = self.maintain(now, acts);
            self.next_check += self.cfg.check_interval;
            if self.next_check <= now {
                self.next_check = now + self.cfg.check_interval;
            }
            Some(m)
        } else {
            None
        };
        // Whatever follows maintenance is heartbeats.
        let mut beats = Vec::new();
        for a in acts.rest() {
            match *a {
                PoolAction::Heartbeat { seq, timeout } => {
                    assert_eq!(timeout, self.cfg.heartbeat_timeout);
                    beats.push(seq);
                }
                other => panic!("unexpected {other:?} in {:?}", acts.list),
            }
        }
        let set: BTreeSet<SessionSeq> = beats.iter().copied().collect();
        assert_eq!(set.len(), beats.len(), "one beat per session per call");
        if let Some(h) = self.cfg.heartbeat {
            for (seq, e) in &mut self.entries {
                let Some(w) = &mut e.beat else { continue };
                let beat = set.contains(seq);
                if let Some(due) = w.le(now) {
                    assert_eq!(beat, due, "heartbeat of {seq:?} due at {w:?}");
                }
                w.learn(now, beat);
                if beat {
                    // The beat was due at t in [lo, hi]; the next is t + h, or
                    // now + h when that is not in the future (a late call).
                    *w = if w.hi + h <= now {
                        Window {
                            lo: now + h,
                            hi: now + h,
                        }
                    } else if w.lo + h > now {
                        Window {
                            lo: w.lo + h,
                            hi: w.hi + h,
                        }
                    } else {
                        Window {
                            lo: now + NS,
                            hi: now + h,
                        }
                    };
                }
            }
            for seq in &beats {
                assert!(
                    self.entries.get(seq).is_some_and(|e| e.beat.is_some()),
                    "heartbeat for {seq:?}, which is not established or gone"
                );
            }
        } else {
            assert!(beats.is_empty());
        }
        self.stats.heartbeats += beats.len() as u64;
        (maint, beats)
    }

    fn maintain(&mut self, now: Instant, acts: &mut Acts) -> Maint {
        let idle_before = self.idle_list();
        // 1. Idle sweep (ANYTLS.md 7.1): newest first; non-expired ones are kept
        //    and counted; expired ones are kept (and refreshed) while fewer than
        //    min_idle are kept; the rest are closed.
        let mut swept = Vec::new();
        let mut refreshed = Vec::new();
        if !self.cfg.disable_reuse {
            let expire = now.checked_sub(self.cfg.idle_timeout);
            let mut kept = 0;
            for (&seq, e) in self.entries.iter_mut().rev() {
                let MState::Idle { since, .. } = &mut e.state else {
                    continue;
                };
                if expire.is_none_or(|x| *since >= x) {
                    kept += 1;
                } else if kept < self.cfg.min_idle {
                    *since = now;
                    kept += 1;
                    refreshed.push(seq);
                } else {
                    swept.push(seq);
                }
            }
            for &seq in &swept {
                self.close(seq, CloseReason::IdleTimeout, acts);
            }
        }
        // 2. Lifetime: idle sessions past it are closed (oldest seq first), busy
        //    ones are retired.
        let mut lifetime = Vec::new();
        if self.cfg.max_session_lifetime.is_some() {
            let all: Vec<SessionSeq> = self.entries.keys().copied().collect();
            for seq in all {
                let e = self.entries.get_mut(&seq).unwrap();
                let Some(w) = &mut e.expires else { continue };
                match e.state {
                    MState::Busy { .. } => e.busy_checked = Some(now),
                    MState::Idle { .. } => {
                        let close = PoolAction::Close {
                            seq,
                            reason: CloseReason::Lifetime,
                        };
                        let due = w.le(now).unwrap_or(acts.peek() == Some(close));
                        w.learn(now, due);
                        if due {
                            lifetime.push(seq);
                            self.close(seq, CloseReason::Lifetime, acts);
                        }
                    }
                    MState::Dialing { .. } => {}
                }
            }
        }
        let idle_after = self.count(|s| matches!(s, MState::Idle { .. }));
        let prewarm_dialing = self.prewarm_dialing();
        // 3. Ensure.
        let (deficit, in_backoff, dials) = self.ensure(now, acts);
        Maint {
            at: now,
            idle_before,
            swept,
            refreshed,
            lifetime,
            idle_after,
            prewarm_dialing,
            deficit,
            in_backoff,
            dials,
        }
    }

    /// Dials `ensure_idle - idle - pre-warm dials` (capped by the rate) unless
    /// backing off.
    fn ensure(&mut self, now: Instant, acts: &mut Acts) -> (usize, Option<bool>, Vec<SessionSeq>) {
        let target = self.cfg.ensure_idle;
        if target == 0 || self.cfg.disable_reuse || self.closed {
            return (0, None, Vec::new());
        }
        let idle = self.count(|s| matches!(s, MState::Idle { .. }));
        let deficit = target.saturating_sub(idle + self.prewarm_dialing());
        let mut create = deficit;
        if self.cfg.ensure_create_rate > 0 {
            create = create.min(self.cfg.ensure_create_rate);
        }
        // In back-off while the back-off instant is still ahead.
        let mut in_backoff = match &self.backoff {
            None => Some(false),
            Some(w) => w.le(now).map(|passed| !passed),
        };
        if create > 0 && in_backoff.is_none() {
            let dialled = matches!(acts.peek(), Some(PoolAction::Dial { .. }));
            self.backoff.as_mut().unwrap().learn(now, dialled);
            in_backoff = Some(!dialled);
        }
        let mut dials = Vec::new();
        if in_backoff == Some(false) {
            for _ in 0..create {
                let seq = self.new_seq(true);
                acts.expect(PoolAction::Dial { seq });
                dials.push(seq);
            }
        }
        (deficit, in_backoff, dials)
    }

    fn expected_stats(&self) -> PoolStats {
        let mut s = PoolStats {
            backoff_failures: self.failures,
            ..self.stats.clone()
        };
        for e in self.entries.values() {
            match e.state {
                MState::Idle { .. } => s.idle += 1,
                MState::Busy { .. } => s.busy += 1,
                MState::Dialing { .. } => s.dialing += 1,
            }
        }
        s
    }

    /// `poll_timeout` is the next maintenance or the earliest heartbeat.
    fn check_timeout(&self, got: Option<Instant>) {
        if self.closed {
            assert_eq!(got, None);
            return;
        }
        let (mut lo, mut hi) = (self.next_check, self.next_check);
        for w in self.entries.values().filter_map(|e| e.beat) {
            lo = lo.min(w.lo);
            hi = hi.min(w.hi);
        }
        let got = got.expect("an open pool always has a deadline");
        assert!(
            lo <= got && got <= hi,
            "poll_timeout {got:?} outside [{lo:?}, {hi:?}]"
        );
    }
}

/// The pool and the model side by side: every call goes to both, and the
/// pool's actions are checked by the model.
struct Harness {
    pool: Pool,
    model: Model,
}

impl Harness {
    fn new(cfg: PoolConfig, seed: [u8; 32], now: Instant) -> (Harness, Vec<PoolAction>) {
        let mut pool = Pool::new(cfg.clone(), seed, now).unwrap();
        let acts = drain(&mut pool);
        let model = Model::new(cfg, now, &acts);
        (Harness { pool, model }, acts)
    }

    fn checkout(&mut self, now: Instant) -> Checkout {
        let got = self.pool.checkout(now);
        assert!(drain(&mut self.pool).is_empty());
        self.model.checkout(now, got);
        got
    }

    fn established(&mut self, seq: SessionSeq, now: Instant) -> Vec<PoolAction> {
        self.pool.established(now, seq);
        let acts = drain(&mut self.pool);
        let mut a = Acts::new(&acts);
        self.model.established(seq, now, &mut a);
        a.done();
        acts
    }

    fn dial_failed(&mut self, seq: SessionSeq, now: Instant) {
        self.pool.dial_failed(now, seq);
        assert!(drain(&mut self.pool).is_empty());
        self.model.dial_failed(seq, now);
    }

    fn checkin(&mut self, seq: SessionSeq, now: Instant) -> Vec<PoolAction> {
        self.pool.checkin(now, seq);
        let acts = drain(&mut self.pool);
        let mut a = Acts::new(&acts);
        self.model.checkin(seq, now, &mut a);
        a.done();
        acts
    }

    fn session_closed(&mut self, seq: SessionSeq, now: Instant) {
        self.pool.session_closed(now, seq);
        assert!(drain(&mut self.pool).is_empty());
        self.model.session_closed(seq, now);
    }

    fn heartbeat_ack(&mut self, seq: SessionSeq, rtt: Duration) {
        self.pool.heartbeat_ack(seq, rtt);
        self.model.heartbeat_ack(rtt);
    }

    fn shutdown(&mut self, now: Instant) -> Vec<PoolAction> {
        self.pool.shutdown(now);
        let acts = drain(&mut self.pool);
        let mut a = Acts::new(&acts);
        self.model.shutdown(now, &mut a);
        a.done();
        acts
    }

    fn handle_timeout(&mut self, now: Instant) -> (Vec<PoolAction>, Option<Maint>) {
        self.pool.handle_timeout(now);
        let acts = drain(&mut self.pool);
        let mut a = Acts::new(&acts);
        let (maint, _) = self.model.handle_timeout(now, &mut a);
        a.done();
        let next = self.pool.poll_timeout();
        assert!(
            next.is_none_or(|t| t > self.model.now),
            "poll_timeout not in the future after handle_timeout"
        );
        (acts, maint)
    }

    /// Gauges, counters, the idle list and the deadline against the model.
    fn check(&self) -> PoolStats {
        let st = self.pool.stats();
        assert_eq!(st, self.model.expected_stats());
        assert_eq!(self.pool.idle_sessions(), self.model.idle_list());
        self.model.check_timeout(self.pool.poll_timeout());
        st
    }
}

fn drain(pool: &mut Pool) -> Vec<PoolAction> {
    std::iter::from_fn(|| pool.poll_action()).collect()
}

// ---------------------------------------------------------------------------
// A virtual day

struct Rng(ChaCha8Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        ms(lo + self.0.next_u64() % (hi - lo + 1))
    }

    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    /// Exponentially distributed with this mean.
    fn exp(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(-(1.0 - self.unit()).ln()).max(NS)
    }
}

/// Traffic of one preset.
struct Workload {
    /// Stream arrivals per minute at noon and at midnight.
    peak_per_min: f64,
    trough_per_min: f64,
    /// Whether 5 % of streams are held for 2-30 min.
    long_holds: bool,
    /// Mean time between server-side session kills.
    kill_every: Duration,
}

fn workload(name: &str) -> Workload {
    let (peak_per_min, trough_per_min, long_holds, kill_every) = match name {
        "balanced" => (10.0, 0.5, true, mins(10)),
        "low-latency" => (20.0, 1.0, true, mins(10)),
        "mobile-nat" => (6.0, 0.3, true, mins(5)),
        "high-availability" => (12.0, 1.0, true, mins(10)),
        _ => (1.0, 0.1, false, mins(60)),
    };
    Workload {
        peak_per_min,
        trough_per_min,
        long_holds,
        kill_every,
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug)]
enum Ev {
    Arrival,
    DialDone(SessionSeq),
    StreamEnd(SessionSeq),
    Kill,
    OutageStart(Duration),
    OutageEnd,
}

struct Outage {
    start: Instant,
    /// Maintenance runs that dialled: when, how many, failures before.
    bursts: Vec<(Instant, usize, u32)>,
}

#[derive(Default, Debug)]
struct Counters {
    steps: u64,
    checkouts: u64,
    reused: u64,
    user_dials: u64,
    prewarm_dials: u64,
    user_dial_failures: u64,
    prewarm_failures: u64,
    established: u64,
    checkins: u64,
    kills: u64,
    beats: u64,
    acks: u64,
    closes: BTreeMap<CloseReason, u64>,
    maintenance: u64,
    max_idle: usize,
    /// Steps where idle > max(ensure, min) + checkins since the last run.
    literal_bound_exceeded: u64,
    max_replace_latency: Duration,
    max_replace_latency_backoff: Duration,
    outages: Vec<String>,
}

struct DaySim {
    name: &'static str,
    cfg: PoolConfig,
    wl: Workload,
    h: Harness,
    rng: Rng,
    start: Instant,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Ev>,
    order: u64,
    /// Heartbeat answers on their way: delivered with the first step at or
    /// after their arrival (they do not drive the clock).
    acks: Vec<(Instant, SessionSeq, Duration)>,
    down: bool,
    outage: Option<Outage>,
    // Own bookkeeping, from the driver's point of view.
    /// Established, open sessions: when established, when they last beat.
    alive: BTreeMap<SessionSeq, (Instant, Option<Instant>)>,
    busy: BTreeSet<SessionSeq>,
    dialing: BTreeMap<SessionSeq, bool>,
    gone: BTreeSet<SessionSeq>,
    /// The next maintenance run: start + k * check_interval.
    next_tick: Instant,
    /// (a): idle + pre-warm dials <= bound_base + checkins since the last run.
    bound_base: usize,
    checkins_since: usize,
    /// (c): since when idle + pre-warm dials < ensure_idle, and whether a run
    /// in that time was held back by the back-off.
    deficit_since: Option<(Instant, bool)>,
    n: Counters,
}

impl DaySim {
    fn new(name: &'static str, cfg: PoolConfig, seed: u64) -> DaySim {
        let start = epoch();
        let mut pool_seed = [0u8; 32];
        pool_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let (h, acts) = Harness::new(cfg.clone(), pool_seed, start);
        let mut s = DaySim {
            name,
            wl: workload(name),
            h,
            rng: Rng::new(seed),
            start,
            now: start,
            queue: BTreeMap::new(),
            order: 0,
            acks: Vec::new(),
            down: false,
            outage: None,
            alive: BTreeMap::new(),
            busy: BTreeSet::new(),
            dialing: BTreeMap::new(),
            gone: BTreeSet::new(),
            next_tick: start + cfg.check_interval,
            bound_base: if cfg.disable_reuse {
                0
            } else {
                cfg.ensure_idle
            },
            checkins_since: 0,
            deficit_since: None,
            n: Counters::default(),
            cfg,
        };
        s.apply(&acts);
        s.schedule(Duration::ZERO, Ev::Arrival);
        let first_kill = s.rng.exp(s.wl.kill_every);
        s.schedule(first_kill, Ev::Kill);
        // One long outage (3 h) in the early morning, three short ones later.
        let long = s.rng.ms(2 * 3_600_000, 4 * 3_600_000);
        s.schedule_at(start + long, Ev::OutageStart(Duration::from_secs(3 * 3600)));
        for (from_h, to_h) in [(8, 10), (13, 15), (18, 21)] {
            let at = s.rng.ms(from_h * 3_600_000, to_h * 3_600_000);
            let len = s.rng.ms(30_000, 15 * 60_000);
            s.schedule_at(start + at, Ev::OutageStart(len));
        }
        s.check();
        s
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.schedule_at(self.now + after, ev);
    }

    fn schedule_at(&mut self, at: Instant, ev: Ev) {
        self.order += 1;
        self.queue.insert((at, self.order), ev);
    }

    /// Arrivals per minute at this time of day (lowest at midnight).
    fn rate(&self) -> f64 {
        let day = (self.now - self.start).as_secs_f64() / DAY.as_secs_f64();
        let w = &self.wl;
        let x = (1.0 - (2.0 * std::f64::consts::PI * day).cos()) / 2.0;
        w.trough_per_min + (w.peak_per_min - w.trough_per_min) * x
    }

    fn hold(&mut self) -> Duration {
        let u = self.rng.unit();
        if u < 0.7 {
            self.rng.ms(50, 5_000)
        } else if u < 0.95 || !self.wl.long_holds {
            self.rng.ms(5_000, 120_000)
        } else {
            self.rng.ms(120_000, 1_800_000)
        }
    }

    fn run(&mut self) {
        let end = self.start + DAY;
        loop {
            let ev = self.queue.keys().next().map(|k| k.0);
            let next = [ev, self.h.pool.poll_timeout()].into_iter().flatten().min();
            let Some(next) = next.filter(|&t| t <= end) else {
                break;
            };
            assert!(next >= self.now, "time went backwards");
            self.now = next;
            let now = self.now;
            let (due, later) = self.acks.drain(..).partition(|a| a.0 <= now);
            self.acks = later;
            for (_, seq, rtt) in due {
                if self.alive.contains_key(&seq) {
                    self.h.heartbeat_ack(seq, rtt);
                    self.n.acks += 1;
                }
            }
            while let Some(e) = self.queue.first_entry() {
                if e.key().0 > self.now {
                    break;
                }
                let ev = e.remove();
                self.event(ev);
            }
            if self.h.pool.poll_timeout().is_some_and(|t| t <= self.now) {
                let (acts, maint) = self.h.handle_timeout(self.now);
                if let Some(m) = maint {
                    self.maintenance(&m);
                }
                self.apply(&acts);
            }
            self.check();
            self.n.steps += 1;
        }
        // Shutdown closes everything that is left.
        self.now = end;
        let acts = self.h.shutdown(end);
        self.apply(&acts);
        assert!(self.alive.is_empty());
        self.h.check();
    }

    fn event(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Arrival => {
                let mean = Duration::from_secs_f64(60.0 / self.rate());
                let gap = self.rng.exp(mean);
                self.schedule(gap, Ev::Arrival);
                self.n.checkouts += 1;
                match self.h.checkout(now) {
                    Checkout::Reuse(seq) => {
                        let newest_idle = self.alive.keys().rev().find(|s| !self.busy.contains(s));
                        assert_eq!(newest_idle, Some(&seq), "reuse the newest idle session");
                        self.busy.insert(seq);
                        self.n.reused += 1;
                        let hold = self.hold();
                        self.schedule(hold, Ev::StreamEnd(seq));
                    }
                    Checkout::Dial(seq) => {
                        self.dialing.insert(seq, false);
                        self.n.user_dials += 1;
                        let lat = self.rng.ms(10, 500);
                        self.schedule(lat, Ev::DialDone(seq));
                    }
                }
            }
            Ev::DialDone(seq) => {
                let prewarm = self.dialing.remove(&seq).expect("a dial in flight");
                if self.down {
                    self.h.dial_failed(seq, now);
                    self.gone.insert(seq);
                    if prewarm {
                        self.n.prewarm_failures += 1;
                    } else {
                        self.n.user_dial_failures += 1;
                    }
                } else {
                    self.alive.insert(seq, (now, None));
                    self.n.established += 1;
                    if !prewarm {
                        self.busy.insert(seq);
                        let hold = self.hold();
                        self.schedule(hold, Ev::StreamEnd(seq));
                    }
                    let acts = self.h.established(seq, now);
                    self.apply(&acts);
                }
            }
            Ev::StreamEnd(seq) => {
                // Not if the server killed the session meanwhile.
                if self.busy.remove(&seq) {
                    self.n.checkins += 1;
                    self.checkins_since += 1;
                    let acts = self.h.checkin(seq, now);
                    self.apply(&acts);
                }
            }
            Ev::Kill => {
                let gap = self.rng.exp(self.wl.kill_every);
                self.schedule(gap, Ev::Kill);
                if !self.alive.is_empty() {
                    let i = self.rng.below(self.alive.len());
                    let seq = *self.alive.keys().nth(i).unwrap();
                    self.kill(seq);
                }
            }
            Ev::OutageStart(len) => {
                assert!(!self.down);
                self.down = true;
                self.outage = Some(Outage {
                    start: now,
                    bursts: Vec::new(),
                });
                self.schedule(len, Ev::OutageEnd);
                let all: Vec<SessionSeq> = self.alive.keys().copied().collect();
                for seq in all {
                    self.kill(seq);
                }
            }
            Ev::OutageEnd => {
                self.down = false;
                let o = self.outage.take().unwrap();
                self.outage_over(o);
            }
        }
    }

    fn kill(&mut self, seq: SessionSeq) {
        assert!(self.alive.remove(&seq).is_some());
        self.busy.remove(&seq);
        self.gone.insert(seq);
        self.n.kills += 1;
        self.h.session_closed(seq, self.now);
    }

    /// Reacts to the pool's actions (already checked by the model).
    fn apply(&mut self, acts: &[PoolAction]) {
        for a in acts {
            match *a {
                PoolAction::Dial { seq } => {
                    self.dialing.insert(seq, true);
                    self.n.prewarm_dials += 1;
                    let lat = self.rng.ms(10, 500);
                    self.schedule(lat, Ev::DialDone(seq));
                }
                PoolAction::Close { seq, reason } => {
                    if reason == CloseReason::Shutdown && self.dialing.remove(&seq).is_some() {
                        // The owner abandons the dial.
                        *self.n.closes.entry(reason).or_default() += 1;
                        continue;
                    }
                    assert!(
                        self.alive.remove(&seq).is_some(),
                        "close of {seq:?} ({reason:?}), which is not open; dialing {:?}, gone {}",
                        self.dialing.get(&seq),
                        self.gone.contains(&seq)
                    );
                    assert!(
                        !self.busy.remove(&seq) || reason == CloseReason::Shutdown,
                        "the pool closed a session that carries a stream"
                    );
                    self.gone.insert(seq);
                    *self.n.closes.entry(reason).or_default() += 1;
                }
                PoolAction::Heartbeat { seq, timeout } => self.heartbeat(seq, timeout),
            }
        }
    }

    /// (e) Heartbeats: only on established, open sessions; the first 80-100 %
    /// of an interval after `established`, then exactly one interval apart.
    fn heartbeat(&mut self, seq: SessionSeq, timeout: Option<Duration>) {
        let h = self.cfg.heartbeat.expect("heartbeats are configured");
        assert_eq!(timeout, self.cfg.heartbeat_timeout);
        assert!(!self.gone.contains(&seq), "heartbeat after close: {seq:?}");
        let now = self.now;
        let Some((established, last)) = self.alive.get_mut(&seq) else {
            panic!("heartbeat before established: {seq:?}");
        };
        match *last {
            None => {
                let after = now - *established;
                assert!(
                    after > h * 4 / 5 && after <= h,
                    "first heartbeat {after:?} after established"
                );
            }
            Some(last) => assert_eq!(now - last, h, "heartbeat gap of {seq:?}"),
        }
        *last = Some(now);
        self.n.beats += 1;
        if !self.down {
            let rtt = self.rng.ms(10, 300);
            self.acks.push((self.now + rtt, seq, rtt));
        }
    }

    /// Invariants of one maintenance run.
    fn maintenance(&mut self, m: &Maint) {
        let cfg = &self.cfg;
        let now = self.now;
        assert_eq!(
            m.at, self.next_tick,
            "maintenance runs every check interval"
        );
        self.next_tick += cfg.check_interval;
        self.n.maintenance += 1;
        // Dials complete within 0.5 s, far below any check interval.
        assert_eq!(m.prewarm_dialing, 0);

        // (b) The newest min_idle idle sessions are never swept; swept ones were
        // idle longer than idle_timeout.
        let expire = now - cfg.idle_timeout;
        let protected: Vec<SessionSeq> = m
            .idle_before
            .iter()
            .take(cfg.min_idle)
            .map(|x| x.0)
            .collect();
        for seq in &m.swept {
            assert!(!protected.contains(seq), "protected {seq:?} swept");
            let since = m.idle_before.iter().find(|x| x.0 == *seq).unwrap().1;
            assert!(since < expire, "{seq:?} swept before its idle timeout");
        }
        let fresh = m.idle_before.iter().filter(|x| x.1 >= expire).count();
        let kept = m.idle_before.len() - m.swept.len();
        assert!(kept <= cfg.min_idle + fresh);
        assert!(kept >= cfg.min_idle.min(m.idle_before.len()));
        assert!(m.refreshed.len() <= cfg.min_idle);
        // Lifetime closes only sessions at least as old as the shortest lifetime.
        if let Some(l) = cfg.max_session_lifetime {
            let shortest = l.saturating_sub(cfg.lifetime_jitter / 2).max(secs(1));
            for seq in &m.lifetime {
                // (Still in `alive`: the actions are applied after this.)
                assert!(now - self.alive[seq].0 >= shortest);
            }
        }

        // (c) A deficit is dialled at once unless backing off; (d) never more
        // than ensure_idle (and the create rate) per run.
        let cap = match cfg.ensure_create_rate {
            0 => usize::MAX,
            r => r,
        };
        assert!(m.dials.len() <= cfg.ensure_idle.min(cap), "dial storm");
        let ensure = if cfg.disable_reuse {
            0
        } else {
            cfg.ensure_idle
        };
        let deficit = ensure.saturating_sub(m.idle_after + m.prewarm_dialing);
        assert_eq!(m.deficit, deficit);
        if deficit > 0 {
            if m.in_backoff == Some(true) {
                assert!(m.dials.is_empty());
                assert!(self.h.model.failures > 0, "back-off without failures");
                if let Some(d) = &mut self.deficit_since {
                    d.1 = true;
                }
            } else {
                assert_eq!(
                    m.dials.len(),
                    deficit.min(cap),
                    "replace the missing sessions"
                );
            }
        }
        if !m.dials.is_empty() {
            if let Some((since, backed_off)) = self.deficit_since.take() {
                let latency = now - since;
                if backed_off {
                    self.n.max_replace_latency_backoff =
                        self.n.max_replace_latency_backoff.max(latency);
                } else {
                    assert!(
                        latency <= cfg.check_interval,
                        "replacement took {latency:?}"
                    );
                    self.n.max_replace_latency = self.n.max_replace_latency.max(latency);
                }
            }
            if self.down {
                let failures = self.h.model.failures;
                self.outage
                    .as_mut()
                    .unwrap()
                    .bursts
                    .push((now, m.dials.len(), failures));
            }
        }

        // (a) From here on idle + pre-warm dials stay within this, plus checkins.
        self.bound_base = ensure.max(m.idle_after + m.prewarm_dialing);
        self.checkins_since = 0;
    }

    /// (d) While the server is down, the back-off spaces pre-warm dials: each
    /// gap is at least 75 % of the back-off base for the failures so far, and
    /// late in a long outage bursts are further apart than a check interval.
    fn outage_over(&mut self, o: Outage) {
        let cfg = &self.cfg;
        let gaps: Vec<Duration> = o.bursts.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for w in o.bursts.windows(2) {
            let base = backoff_base(cfg, w[1].2);
            assert!(
                w[1].0 - w[0].0 >= base - base / 4,
                "back-off ignored: {:?}",
                o.bursts
            );
        }
        let dials: usize = o.bursts.iter().map(|b| b.1).sum();
        let len = self.now - o.start;
        if gaps.len() >= 6 {
            // Once the back-off has grown past the check interval, bursts come
            // less often than once per interval.
            let last = gaps[gaps.len() - 3..].iter().sum::<Duration>() / 3;
            if cfg.max_dial_backoff * 3 / 4 > cfg.check_interval {
                assert!(last > cfg.check_interval, "dials do not thin out: {gaps:?}");
            }
        }
        let secs: Vec<u64> = gaps.iter().map(|g| g.as_secs()).collect();
        let shown = if secs.len() > 12 {
            format!("{:?} .. {:?}", &secs[..8], &secs[secs.len() - 4..])
        } else {
            format!("{secs:?}")
        };
        self.n.outages.push(format!(
            "{len:.0?} down: {dials} pre-warm dials in {} bursts, gaps (s) {shown}",
            o.bursts.len(),
        ));
    }

    /// Invariants after every step.
    fn check(&mut self) {
        let cfg = &self.cfg;
        let now = self.now;
        let st = self.h.check();
        // Gauges and counters against the driver's own bookkeeping.
        assert_eq!(st.busy, self.busy.len());
        assert_eq!(st.idle, self.alive.len() - self.busy.len());
        assert_eq!(st.dialing, self.dialing.len());
        assert_eq!(st.dials, self.n.user_dials + self.n.prewarm_dials);
        assert_eq!(st.prewarm_dials, self.n.prewarm_dials);
        assert_eq!(
            st.dial_failures,
            self.n.user_dial_failures + self.n.prewarm_failures
        );
        assert_eq!(st.established, self.n.established);
        assert_eq!(st.reused, self.n.reused);
        assert_eq!(st.died, self.n.kills);
        assert_eq!(st.heartbeats, self.n.beats);
        assert_eq!(st.heartbeat_acks, self.n.acks);
        assert_eq!(st.closed, self.n.closes);
        self.n.max_idle = self.n.max_idle.max(st.idle);

        // (a) idle <= max(ensure, sessions kept by the last sweep) + sessions
        // returned since; kept <= min_idle + sessions idle for less than
        // idle_timeout (checked per run). Pre-warmed, unused sessions plus
        // pre-warm dials never exceed ensure_idle.
        let prewarm_dialing = self.dialing.values().filter(|p| **p).count();
        assert!(
            st.idle + prewarm_dialing <= self.bound_base + self.checkins_since,
            "idle {} + dialling {prewarm_dialing} > {} + {} returned",
            st.idle,
            self.bound_base,
            self.checkins_since
        );
        if st.idle > cfg.ensure_idle.max(cfg.min_idle) + self.checkins_since {
            self.n.literal_bound_exceeded += 1;
        }
        let unused = self.h.model.count(|s| {
            matches!(
                s,
                MState::Idle {
                    origin: Origin::Prewarm,
                    ..
                }
            )
        });
        assert!(
            unused + prewarm_dialing <= cfg.ensure_idle,
            "ensure overshoot"
        );

        // The pool wakes up for the next maintenance run.
        assert!(
            self.h
                .pool
                .poll_timeout()
                .is_some_and(|t| t <= self.next_tick)
        );

        // (e) No heartbeat is missed.
        if let Some(h) = cfg.heartbeat {
            for (seq, (established, last)) in &self.alive {
                let last = last.unwrap_or(*established);
                assert!(last + h > now, "{seq:?} missed a heartbeat");
            }
        }

        // (c) Track how long idle + pre-warm dials stay below ensure_idle.
        let ensure = if cfg.disable_reuse {
            0
        } else {
            cfg.ensure_idle
        };
        if st.idle + prewarm_dialing < ensure {
            self.deficit_since.get_or_insert((now, false));
        } else {
            self.deficit_since = None;
        }
    }
}

fn run_day(index: usize) {
    let t0 = wall_clock();
    let (name, cfg) = presets()[index].clone();
    // POOL_SIM_SEED=<n> runs another day.
    let base = std::env::var("POOL_SIM_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0x5eed_0000);
    let mut sim = DaySim::new(name, cfg, base + index as u64);
    sim.run();
    let n = &sim.n;
    println!(
        "{}: {} steps in {:?}; {} checkouts ({} reused, {} returned), {} user dials ({} failed), \
         {} pre-warm dials ({} failed), {} kills, {} heartbeats ({} answered), \
         {} maintenance runs, closes {:?}, max idle {}, literal idle bound exceeded in {} steps, \
         max replacement latency {:?} ({:?} with back-off)",
        sim.name,
        n.steps,
        wall_clock() - t0,
        n.checkouts,
        n.reused,
        n.checkins,
        n.user_dials,
        n.user_dial_failures,
        n.prewarm_dials,
        n.prewarm_failures,
        n.kills,
        n.beats,
        n.acks,
        n.maintenance,
        n.closes,
        n.max_idle,
        n.literal_bound_exceeded,
        n.max_replace_latency,
        n.max_replace_latency_backoff,
    );
    for o in &n.outages {
        println!("  {o}");
    }
    // The day exercised what it should.
    assert!(n.reused > 0 && n.kills > 0 && n.prewarm_failures > 0);
    assert_eq!(n.outages.len(), 4);
    assert!(n.beats > 0 && n.acks > 0);
    assert!(
        n.closes
            .get(&CloseReason::IdleTimeout)
            .is_some_and(|&c| c > 0)
    );
    if sim.cfg.max_session_lifetime.is_some() {
        assert!(n.closes.get(&CloseReason::Lifetime).is_some_and(|&c| c > 0));
    }
}

#[test]
fn day_balanced() {
    run_day(0);
}

#[test]
fn day_low_latency() {
    run_day(1);
}

#[test]
fn day_mobile_nat() {
    run_day(2);
}

#[test]
fn day_high_availability() {
    run_day(3);
}

#[test]
fn day_iot() {
    run_day(4);
}

// ---------------------------------------------------------------------------
// proptest: the pool against the model

#[derive(Clone, Debug)]
enum Op {
    Checkout,
    /// A dial in flight completes (index into them).
    Establish(usize),
    DialFail(usize),
    /// A stream on a busy session ends.
    Checkin(usize),
    /// Any seq ever handed out is checked in (mostly ignored).
    CheckinAny(usize),
    /// Any seq ever handed out dies.
    Closed(usize),
    Ack(usize, u16),
    /// Time passes (ms), then `handle_timeout`.
    Advance(u32),
    /// Time jumps to `poll_timeout`, then `handle_timeout`.
    ToDeadline,
    Shutdown,
    /// The next call passes a time this much (ms) before the latest one.
    Stale(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        180 => Just(Op::Checkout),
        150 => any::<usize>().prop_map(Op::Establish),
        60 => any::<usize>().prop_map(Op::DialFail),
        150 => any::<usize>().prop_map(Op::Checkin),
        30 => any::<usize>().prop_map(Op::CheckinAny),
        60 => any::<usize>().prop_map(Op::Closed),
        30 => (any::<usize>(), 1u16..2_000).prop_map(|(i, r)| Op::Ack(i, r)),
        90 => prop_oneof![0u32..2_000, 0u32..60_000, 0u32..600_000].prop_map(Op::Advance),
        150 => Just(Op::ToDeadline),
        1 => Just(Op::Shutdown),
        30 => (1u16..5_000).prop_map(Op::Stale),
    ]
}

fn opt_ms(lo: u64, hi: u64) -> impl Strategy<Value = Option<Duration>> {
    prop::option::of((lo..=hi).prop_map(ms))
}

fn pool_config() -> impl Strategy<Value = PoolConfig> {
    (
        (
            1_000u64..=120_000,
            1_000u64..=600_000,
            0usize..=4,
            0usize..=6,
            0usize..=3,
        ),
        (opt_ms(1_000, 60_000), opt_ms(100, 20_000)),
        (
            opt_ms(1_000, 600_000),
            prop_oneof![Just(0u64), 0u64..=300_000],
        ),
        (
            prop::bool::weighted(0.1),
            1usize..=3,
            10u64..=10_000,
            0u64..=120_000,
        ),
    )
        .prop_map(
            |(
                (check, idle, min_idle, ensure_idle, rate),
                (heartbeat, heartbeat_timeout),
                (lifetime, jitter),
                (disable_reuse, streams, backoff, max_backoff),
            )| {
                config(|c| {
                    c.check_interval = ms(check);
                    c.idle_timeout = ms(idle);
                    c.min_idle = min_idle;
                    c.ensure_idle = ensure_idle;
                    c.ensure_create_rate = rate;
                    c.heartbeat = heartbeat;
                    c.heartbeat_timeout = heartbeat_timeout;
                    c.max_session_lifetime = lifetime;
                    c.lifetime_jitter = ms(jitter);
                    c.disable_reuse = disable_reuse;
                    c.max_streams_per_session = streams;
                    c.dial_backoff = ms(backoff);
                    c.max_dial_backoff = ms(max_backoff);
                })
            },
        )
}

fn pick(list: &[SessionSeq], i: usize) -> Option<SessionSeq> {
    (!list.is_empty()).then(|| list[i % list.len()])
}

fn run_ops(cfg: PoolConfig, seed: [u8; 32], ops: &[Op]) {
    let start = epoch();
    let (mut h, _) = Harness::new(cfg, seed, start);
    let mut now = start;
    let mut stale = Duration::ZERO;
    h.check();
    for op in ops {
        // The time passed in: normally the latest, after `Stale` an earlier one
        // (the pool clamps it).
        let at = now.checked_sub(stale).unwrap_or(now);
        stale = Duration::ZERO;
        let m = &h.model;
        let issued = |i: usize| SessionSeq(1 + (i as u64 % m.next_seq));
        match *op {
            Op::Checkout => {
                h.checkout(at);
            }
            Op::Establish(i) => {
                if let Some(seq) = pick(&m.seqs(|s| matches!(s, MState::Dialing { .. })), i) {
                    h.established(seq, at);
                }
            }
            Op::DialFail(i) => {
                if let Some(seq) = pick(&m.seqs(|s| matches!(s, MState::Dialing { .. })), i) {
                    h.dial_failed(seq, at);
                }
            }
            Op::Checkin(i) => {
                if let Some(seq) = pick(&m.seqs(|s| matches!(s, MState::Busy { .. })), i) {
                    h.checkin(seq, at);
                }
            }
            Op::CheckinAny(i) => {
                let seq = issued(i);
                h.checkin(seq, at);
            }
            Op::Closed(i) => {
                let seq = issued(i);
                h.session_closed(seq, at);
            }
            Op::Ack(i, rtt) => {
                let seq = issued(i);
                h.heartbeat_ack(seq, ms(u64::from(rtt)));
            }
            Op::Advance(d) => {
                now += ms(u64::from(d));
                h.handle_timeout(now);
            }
            Op::ToDeadline => {
                if let Some(t) = h.pool.poll_timeout() {
                    now = now.max(t);
                }
                h.handle_timeout(now);
            }
            Op::Shutdown => {
                h.shutdown(at);
            }
            Op::Stale(d) => stale = ms(u64::from(d)),
        }
        h.check();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_reference_model(
        cfg in pool_config(),
        seed in any::<[u8; 32]>(),
        ops in vec(op(), 1..250),
    ) {
        run_ops(cfg, seed, &ops);
    }
}
