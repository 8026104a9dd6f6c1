//! The client pool policy in virtual time: the two seed timelines, back-off,
//! lifetime, disable_reuse, configuration errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anytls_core::pool::{Checkout, CloseReason, Pool, PoolAction, PoolConfig, PoolConfigError};
use anytls_core::session::SessionSeq;

const DIAL: Duration = Duration::from_millis(100);

#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// Drives a pool: dials complete after `DIAL` (or fail while `server_down`),
/// closes and heartbeats are recorded.
struct Sim {
    pool: Pool,
    start: Instant,
    now: Instant,
    pending_dials: Vec<(Instant, SessionSeq)>,
    pub server_down: bool,
    pub closed: Vec<(Duration, SessionSeq, CloseReason)>,
    pub beats: BTreeMap<SessionSeq, Vec<Duration>>,
    pub dials: Vec<(Duration, SessionSeq)>,
}

impl Sim {
    fn new(cfg: PoolConfig) -> Sim {
        let start = epoch();
        let pool = Pool::new(cfg, [9; 32], start).unwrap();
        let mut s = Sim {
            pool,
            start,
            now: start,
            pending_dials: Vec::new(),
            server_down: false,
            closed: Vec::new(),
            beats: BTreeMap::new(),
            dials: Vec::new(),
        };
        s.actions();
        s
    }

    fn t(&self) -> Duration {
        self.now - self.start
    }

    fn actions(&mut self) {
        while let Some(a) = self.pool.poll_action() {
            match a {
                PoolAction::Dial { seq } => {
                    self.dials.push((self.t(), seq));
                    self.pending_dials.push((self.now + DIAL, seq));
                }
                PoolAction::Close { seq, reason } => self.closed.push((self.t(), seq, reason)),
                PoolAction::Heartbeat { seq, .. } => {
                    let t = self.t();
                    self.beats.entry(seq).or_default().push(t);
                }
            }
        }
    }

    /// Runs until `at` (since start), processing timers and dial completions.
    fn run_until(&mut self, at: Duration) {
        let until = self.start + at;
        for _ in 0..1_000_000 {
            let dial = self.pending_dials.iter().map(|(t, _)| *t).min();
            let timer = self.pool.poll_timeout();
            let next = [dial, timer].into_iter().flatten().min();
            match next {
                Some(n) if n <= until => {
                    self.now = self.now.max(n);
                    let due: Vec<SessionSeq> = self
                        .pending_dials
                        .iter()
                        .filter(|(t, _)| *t <= self.now)
                        .map(|(_, s)| *s)
                        .collect();
                    self.pending_dials.retain(|(t, _)| *t > self.now);
                    for seq in due {
                        if self.server_down {
                            self.pool.dial_failed(self.now, seq);
                        } else {
                            self.pool.established(self.now, seq);
                        }
                    }
                    if self.pool.poll_timeout().is_some_and(|t| t <= self.now) {
                        self.pool.handle_timeout(self.now);
                        assert!(self.pool.poll_timeout().is_none_or(|t| t > self.now));
                    }
                    self.actions();
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
        panic!("pool simulation does not settle");
    }

    fn checkout(&mut self) -> SessionSeq {
        let seq = match self.pool.checkout(self.now) {
            Checkout::Reuse(seq) => seq,
            Checkout::Dial(seq) => {
                self.pool.established(self.now, seq);
                seq
            }
        };
        self.actions();
        seq
    }

    fn idle(&self) -> usize {
        self.pool.stats().idle
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The default pool configuration with `set` applied.
fn config(set: impl FnOnce(&mut PoolConfig)) -> PoolConfig {
    let mut c = PoolConfig::default();
    set(&mut c);
    c
}

fn timeline_config() -> PoolConfig {
    config(|c| {
        c.check_interval = secs(30);
        c.idle_timeout = secs(300);
        c.min_idle = 2;
        c.ensure_idle = 5;
    })
}

/// Timeline (a): min_idle_session=2, ensure_idle_session=5, idle timeout 5m,
/// check interval 30s.
#[test]
fn timeline_a_min_idle_and_ensure() {
    let mut s = Sim::new(timeline_config());
    // Start: ensure dials 5 at once; they are idle once their handshakes finish.
    assert_eq!(s.dials.len(), 5);
    s.run_until(secs(1));
    assert_eq!(s.idle(), 5, "start -> 5 idle");
    // 3 in use -> 2 idle (the newest are taken: 5, 4, 3), between two checks.
    s.run_until(secs(31));
    let used: Vec<SessionSeq> = (0..3).map(|_| s.checkout()).collect();
    assert_eq!(used, vec![SessionSeq(5), SessionSeq(4), SessionSeq(3)]);
    assert_eq!(s.idle(), 2, "3 in use -> 2 idle");
    // Returned before the 60 s check -> 5 idle, nothing dialled.
    s.run_until(secs(59));
    for seq in used {
        s.pool.checkin(s.now, seq);
    }
    assert_eq!(s.idle(), 5, "returned -> 5");
    s.run_until(secs(61));
    assert_eq!(s.dials.len(), 5, "no overshoot: 5 idle, nothing to dial");
    // Nothing expires before 5 minutes of idleness.
    s.run_until(secs(5 * 60 + 1));
    assert!(s.closed.is_empty());
    assert_eq!(s.idle(), 5);
    // 5m30: sessions 1 and 2 (idle since ~0.1 s) are expired; 5, 4, 3 (idle
    // since 59 s) are not and count toward min_idle, so 1 and 2 are closed and
    // ensure dials 2 -> 5.
    s.run_until(secs(5 * 60 + 30));
    let closed: Vec<SessionSeq> = s.closed.iter().map(|c| c.1).collect();
    assert_eq!(closed, vec![SessionSeq(2), SessionSeq(1)]);
    assert_eq!(s.idle(), 3);
    s.run_until(secs(5 * 60 + 31));
    assert_eq!(s.idle(), 5);
    assert_eq!(s.dials.len(), 7);
    // 6m: 5, 4, 3 (idle since 59 s) expire; the newest two (7, 6) are fresh and
    // make up min_idle, so the sweep keeps 2 and closes 3 ...
    s.closed.clear();
    s.run_until(secs(6 * 60));
    let closed: Vec<(SessionSeq, CloseReason)> = s.closed.iter().map(|c| (c.1, c.2)).collect();
    assert_eq!(
        closed,
        vec![
            (SessionSeq(5), CloseReason::IdleTimeout),
            (SessionSeq(4), CloseReason::IdleTimeout),
            (SessionSeq(3), CloseReason::IdleTimeout),
        ]
    );
    assert_eq!(s.idle(), 2, "the sweep keeps 2");
    // ... and right after, ensure dials 3 -> 5.
    assert_eq!(s.dials.len(), 10);
    assert!(s.dials[7..].iter().all(|(t, _)| *t == secs(360)));
    s.run_until(secs(6 * 60 + 1));
    assert_eq!(s.idle(), 5);
    let st = s.pool.stats();
    assert_eq!((st.idle, st.busy, st.dialing), (5, 0, 0));
    assert_eq!(st.closed.get(&CloseReason::IdleTimeout), Some(&5));
    assert_eq!(st.established, 10);
}

/// Timeline (b): the same with heartbeat 30 s: every live session, idle or
/// busy, beats once per interval, never before its handshake, and stops when
/// closed.
#[test]
fn timeline_b_with_heartbeat() {
    let mut cfg = timeline_config();
    cfg.heartbeat = Some(secs(30));
    let mut s = Sim::new(cfg);
    s.run_until(secs(31));
    assert_eq!(s.idle(), 5);
    let used: Vec<SessionSeq> = (0..3).map(|_| s.checkout()).collect();
    s.run_until(secs(59));
    // Busy sessions beat too (each had its first beat at 24..30 s and the next
    // one 30 s later, whatever its state; the gaps are checked below).
    for seq in used {
        s.pool.checkin(s.now, seq);
    }
    s.run_until(secs(6 * 60 + 1));
    for seq in 1..=5 {
        let beats = &s.beats[&SessionSeq(seq)];
        // First beat 24..30 s after the handshake (0.1 s), then every 30 s.
        let first = beats[0];
        assert!(first >= Duration::from_millis(24_100) && first <= Duration::from_millis(30_100));
        for w in beats.windows(2) {
            assert_eq!(w[1] - w[0], secs(30), "session {seq}: {beats:?}");
        }
        // Closed sessions stop beating.
        let closed_at = s
            .closed
            .iter()
            .find(|c| c.1 == SessionSeq(seq))
            .map(|c| c.0)
            .unwrap();
        assert!(*beats.last().unwrap() <= closed_at);
    }
    // Replacements beat after their own handshakes.
    for (t, seq) in &s.dials[5..] {
        if let Some(beats) = s.beats.get(seq) {
            assert!(beats[0] >= *t + DIAL + secs(24));
        }
    }
    // Sessions do not beat in lockstep.
    let firsts: Vec<Duration> = (1..=5).map(|i| s.beats[&SessionSeq(i)][0]).collect();
    assert!(firsts.windows(2).any(|w| w[0] != w[1]), "{firsts:?}");
    let st = s.pool.stats();
    assert_eq!(
        st.heartbeats,
        s.beats.values().map(Vec::len).sum::<usize>() as u64
    );
}

#[test]
fn failed_prewarm_dials_back_off_and_never_storm() {
    let cfg = config(|c| {
        c.ensure_idle = 3;
        c.check_interval = secs(10);
        c.dial_backoff = secs(10);
        c.max_dial_backoff = secs(80);
    });
    let mut s = Sim::new(cfg);
    s.server_down = true;
    s.run_until(secs(600));
    // Dials happen in bursts of at most 3, with growing gaps.
    let mut bursts: BTreeMap<Duration, usize> = BTreeMap::new();
    for (t, _) in &s.dials {
        *bursts.entry(*t).or_default() += 1;
    }
    assert!(bursts.values().all(|&n| n <= 3));
    let times: Vec<Duration> = bursts.keys().copied().collect();
    assert!(times.len() >= 4 && times.len() <= 15, "{times:?}");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g <= secs(110)), "capped: {gaps:?}");
    assert!(gaps.last().unwrap() >= &secs(60), "backed off: {gaps:?}");
    // A user's checkout is never blocked by the back-off.
    assert!(matches!(s.pool.checkout(s.now), Checkout::Dial(_)));
    // Recovery: the next successful dial resets the back-off.
    s.server_down = false;
    s.run_until(secs(800));
    assert_eq!(s.idle(), 3);
    assert_eq!(s.pool.stats().backoff_failures, 0);
}

#[test]
fn dead_sessions_are_replaced_within_one_interval() {
    let mut s = Sim::new(timeline_config());
    s.run_until(secs(5));
    assert_eq!(s.idle(), 5);
    s.pool.session_closed(s.now, SessionSeq(2));
    s.pool.session_closed(s.now, SessionSeq(4));
    assert_eq!(s.idle(), 3);
    s.run_until(secs(31));
    assert_eq!(s.idle(), 5);
    assert_eq!(s.pool.stats().died, 2);
}

#[test]
fn lifetime_and_disable_reuse() {
    let cfg = config(|c| {
        c.max_session_lifetime = Some(secs(60));
        c.lifetime_jitter = secs(10);
        c.ensure_idle = 1;
        c.idle_timeout = secs(600);
        c.check_interval = secs(10);
    });
    let mut s = Sim::new(cfg);
    s.run_until(secs(1));
    let seq = s.checkout();
    assert_eq!(seq, SessionSeq(1));
    s.run_until(secs(100));
    // Busy past its lifetime: closed when its stream ends, not before.
    assert!(!s.closed.iter().any(|c| c.1 == seq));
    s.pool.checkin(s.now, seq);
    s.actions();
    assert!(s.closed.contains(&(secs(100), seq, CloseReason::Lifetime)));
    // Idle sessions are closed around their lifetime (55..65 s) and replaced.
    s.run_until(secs(400));
    let lifetimes = s
        .closed
        .iter()
        .filter(|c| c.2 == CloseReason::Lifetime && c.1 != seq)
        .count();
    assert!(lifetimes >= 4, "{:?}", s.closed);

    let cfg = config(|c| {
        c.disable_reuse = true;
        c.ensure_idle = 3;
    });
    let mut s = Sim::new(cfg);
    assert!(s.dials.is_empty(), "no pre-warm without reuse");
    let a = s.checkout();
    let b = s.checkout();
    assert_ne!(a, b);
    s.pool.checkin(s.now, a);
    s.actions();
    assert_eq!(s.closed, vec![(Duration::ZERO, a, CloseReason::NoReuse)]);
}

#[test]
fn multiplexing_is_opt_in() {
    let mut s = Sim::new(config(|c| {
        c.max_streams_per_session = 2;
    }));
    let a = s.checkout();
    let b = s.checkout();
    let c = s.checkout();
    assert_eq!(a, b);
    assert_ne!(a, c);
    s.pool.checkin(s.now, a);
    assert_eq!(s.idle(), 0);
    s.pool.checkin(s.now, a);
    assert_eq!(s.idle(), 1);
}

#[test]
fn zero_or_tiny_durations_are_config_errors() {
    let bad = config(|c| {
        c.check_interval = Duration::ZERO;
    });
    assert_eq!(
        bad.validate(),
        Err(PoolConfigError::TooSmall {
            name: "idle_session_check_interval",
            value: Duration::ZERO,
            min: secs(1)
        })
    );
    let msg = bad.validate().unwrap_err().to_string();
    assert!(msg.contains("idle_session_check_interval"), "{msg}");
    let bad = config(|c| {
        c.heartbeat = Some(Duration::from_millis(10));
    });
    assert!(bad.validate().is_err());
    assert!(Pool::new(bad, [0; 32], epoch()).is_err());
    // 5 s is honoured as written (the reference would use 30 s).
    let five = config(|c| {
        c.check_interval = secs(5);
        c.idle_timeout = secs(5);
    });
    let start = epoch();
    let pool = Pool::new(five, [0; 32], start).unwrap();
    assert_eq!(pool.poll_timeout(), Some(start + secs(5)));
}

#[test]
fn shutdown_closes_everything() {
    let mut s = Sim::new(timeline_config());
    s.run_until(secs(1));
    let busy = s.checkout();
    s.pool.shutdown(s.now);
    s.actions();
    assert_eq!(s.closed.len(), 5);
    assert!(s.closed.iter().all(|c| c.2 == CloseReason::Shutdown));
    assert_eq!(s.pool.poll_timeout(), None);
    s.pool.checkin(s.now, busy);
    assert!(matches!(s.pool.checkout(s.now), Checkout::Dial(_)));
}

/// `checkout_preferring` takes the newest session the preference accepts,
/// else the newest, and dials only when none can take the stream;
/// `next_reuse` names what a plain checkout would take, changing nothing.
#[test]
fn a_preferred_session_goes_first_else_the_newest() {
    let mut sim = Sim::new(PoolConfig::default());
    let (a, b, c) = (sim.checkout(), sim.checkout(), sim.checkout());
    assert!(a < b && b < c);
    assert_eq!(sim.pool.next_reuse(), None, "all busy");
    for s in [a, b, c] {
        sim.pool.checkin(sim.now, s);
    }
    assert_eq!(sim.pool.next_reuse(), Some(c));
    assert_eq!(sim.pool.next_reuse(), Some(c), "a look changes nothing");
    // The preference wins over "newest".
    assert_eq!(
        sim.pool.checkout_preferring(sim.now, |s| s == a),
        Checkout::Reuse(a)
    );
    // Among several preferred sessions, the newest of them.
    assert_eq!(
        sim.pool.checkout_preferring(sim.now, |s| s != c),
        Checkout::Reuse(b)
    );
    assert_eq!(sim.pool.next_reuse(), Some(c));
    // Nothing preferred is free: the newest free one, not a dial.
    assert_eq!(
        sim.pool.checkout_preferring(sim.now, |s| s == a),
        Checkout::Reuse(c)
    );
    assert_eq!(sim.pool.next_reuse(), None);
    assert!(matches!(
        sim.pool.checkout_preferring(sim.now, |_| true),
        Checkout::Dial(_)
    ));
    assert_eq!(sim.pool.stats().reused, 3);
}

/// With several streams per session, the preference also picks among the
/// busy sessions that have room.
#[test]
fn a_preferred_shared_session_goes_first() {
    let mut sim = Sim::new(config(|c| c.max_streams_per_session = 2));
    let a = sim.checkout();
    // Shared: the second stream goes onto `a`.
    assert_eq!(sim.checkout(), a);
    let b = match sim.pool.checkout(sim.now) {
        Checkout::Dial(s) => s,
        other => panic!("{other:?}"),
    };
    sim.pool.established(sim.now, b);
    sim.pool.checkin(sim.now, a);
    // `a` has room again (one stream), `b` has one stream: both shareable.
    assert_eq!(
        sim.pool.checkout_preferring(sim.now, |s| s == a),
        Checkout::Reuse(a)
    );
    assert_eq!(
        sim.pool.checkout_preferring(sim.now, |s| s == a),
        Checkout::Reuse(b),
        "a is full: the newest with room"
    );
}
