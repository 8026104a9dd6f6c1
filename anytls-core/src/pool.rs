//! The client's idle-session pool as a sans-IO policy.
//!
//! The pool owns no sessions and no sockets: it tracks session keys
//! ([`SessionSeq`]) and timestamps, and tells its owner what to do through
//! [`PoolAction`]s (dial a pre-warmed session, close one, send a heartbeat) and
//! a deadline ([`Pool::poll_timeout`]). The owner reports back what happened:
//! dials that completed or failed, streams that ended, sessions that died.
//!
//! # Behaviour
//!
//! * [`Pool::checkout`] reuses the newest idle session (highest seq, as the
//!   reference), or asks for a new one to be dialled.
//! * [`Pool::checkin`] returns a session whose stream ended: it becomes idle with
//!   `idle_since = now`.
//! * Every `check_interval`, in this order:
//!   1. cleanup: idle sessions idle longer than `idle_timeout` are closed, but the
//!      newest `min_idle` idle sessions are kept (non-expired ones count toward
//!      it; kept expired ones get their idle time restarted);
//!   2. lifetime: idle sessions older than their lifetime are closed, busy ones
//!      are closed when their stream ends;
//!   3. ensure: if fewer than `ensure_idle` sessions are idle, dial
//!      `ensure_idle - idle - pre-warm dials in flight` new ones, capped by
//!      `ensure_create_rate` per cycle. Failed pre-warm dials back off
//!      exponentially (with jitter) and never delay a user's checkout.
//! * Ensure also runs once when the pool starts, so a fresh client is warm.
//! * With `heartbeat`, every established session (idle or busy) gets a
//!   [`PoolAction::Heartbeat`] every interval, the first after a random 80-100 %
//!   of an interval so that sessions do not beat in lockstep.
//!
//! Unlike the Go implementations, durations are honoured as configured (no
//! "<= 5 s becomes 30 s" clamp); [`PoolConfig::validate`] rejects zero and
//! absurdly small values instead.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use crate::session::SessionSeq;
use crate::timer::TimerTable;

/// The pool's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PoolTimer {
    /// The next maintenance run.
    Maintenance,
    /// A session's next heartbeat.
    Heartbeat(SessionSeq),
}

/// Smallest accepted check interval, idle timeout and heartbeat interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest accepted heartbeat response timeout.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(100);

/// Pool settings. Field names follow sing-box's outbound options. Build one
/// with `PoolConfig::default()` and set the fields; [`Pool::new`] validates it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// How often maintenance runs (`idle_session_check_interval`, 30 s).
    pub check_interval: Duration,
    /// How long a session may stay idle (`idle_session_timeout`, 30 s).
    pub idle_timeout: Duration,
    /// The newest N idle sessions survive the idle sweep (`min_idle_session`, 0).
    pub min_idle: usize,
    /// Keep at least N sessions idle, pre-warmed (`ensure_idle_session`, 0 = off).
    pub ensure_idle: usize,
    /// At most this many pre-warm dials per cycle (0 = no cap).
    pub ensure_create_rate: usize,
    /// HeartRequest interval for every session (`heartbeat`, `None` = off).
    pub heartbeat: Option<Duration>,
    /// Close a session when nothing answers a heartbeat within this time
    /// (v2 servers only; `None` = never).
    pub heartbeat_timeout: Option<Duration>,
    /// Close sessions older than this (`None` = never).
    pub max_session_lifetime: Option<Duration>,
    /// Each session's lifetime is offset by a random value in `[-J/2, J/2)`.
    pub lifetime_jitter: Duration,
    /// Never reuse a session: dial per stream, close when the stream ends.
    pub disable_reuse: bool,
    /// Streams a session carries at once (1 = the reference's serial use).
    pub max_streams_per_session: usize,
    /// First back-off after a failed pre-warm dial; doubles per failure.
    pub dial_backoff: Duration,
    /// Largest back-off.
    pub max_dial_backoff: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            check_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            min_idle: 0,
            ensure_idle: 0,
            ensure_create_rate: 0,
            heartbeat: None,
            heartbeat_timeout: Some(Duration::from_secs(10)),
            max_session_lifetime: None,
            lifetime_jitter: Duration::ZERO,
            disable_reuse: false,
            max_streams_per_session: 1,
            dial_backoff: Duration::from_secs(1),
            max_dial_backoff: Duration::from_secs(60),
        }
    }
}

/// A pool setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolConfigError {
    /// A duration is zero or below its minimum.
    #[error("{name} of {value:?} is too small (minimum {min:?}; zero is not allowed)")]
    TooSmall {
        /// The option.
        name: &'static str,
        /// The configured value.
        value: Duration,
        /// The minimum.
        min: Duration,
    },
    /// A duration is beyond [`MAX_DURATION`] (it could not be added to a
    /// point in time).
    #[error("{name} of {value:?} is too large (maximum {max:?})")]
    TooLarge {
        /// The option.
        name: &'static str,
        /// The configured value.
        value: Duration,
        /// The maximum.
        max: Duration,
    },
    /// `max_streams_per_session` is zero.
    #[error("max_streams_per_session must be at least 1")]
    NoStreams,
    /// `ensure_idle_session` is above [`MAX_ENSURE_IDLE`].
    #[error("ensure_idle_session of {0} is too large (maximum {MAX_ENSURE_IDLE})")]
    TooManyIdle(usize),
}

/// Most sessions `ensure_idle_session` may keep pre-warmed (each is a TLS
/// connection; a larger value is surely a mistake and would queue that many
/// dials at once).
pub const MAX_ENSURE_IDLE: usize = 1024;

/// Longest duration any pool option may have: ten years. Longer values are
/// surely mistakes, and would overflow deadline arithmetic (found by the
/// `pool` fuzz target).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl PoolConfig {
    /// Checks the settings: every interval at least [`MIN_INTERVAL`], the
    /// heartbeat timeout at least [`MIN_HEARTBEAT_TIMEOUT`].
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        let check = |name, value: Duration, min| {
            if value < min {
                Err(PoolConfigError::TooSmall { name, value, min })
            } else if value > MAX_DURATION {
                Err(PoolConfigError::TooLarge {
                    name,
                    value,
                    max: MAX_DURATION,
                })
            } else {
                Ok(())
            }
        };
        check(
            "connection_lifetime_jitter",
            self.lifetime_jitter,
            Duration::ZERO,
        )?;
        check("max_dial_backoff", self.max_dial_backoff, Duration::ZERO)?;
        check(
            "idle_session_check_interval",
            self.check_interval,
            MIN_INTERVAL,
        )?;
        check("idle_session_timeout", self.idle_timeout, MIN_INTERVAL)?;
        if let Some(h) = self.heartbeat {
            check("heartbeat", h, MIN_INTERVAL)?;
        }
        if let Some(t) = self.heartbeat_timeout {
            check("heartbeat_timeout", t, MIN_HEARTBEAT_TIMEOUT)?;
        }
        if let Some(l) = self.max_session_lifetime {
            check("max_session_lifetime", l, MIN_INTERVAL)?;
        }
        check("dial_backoff", self.dial_backoff, Duration::from_millis(10))?;
        if self.max_streams_per_session == 0 {
            return Err(PoolConfigError::NoStreams);
        }
        if self.ensure_idle > MAX_ENSURE_IDLE {
            return Err(PoolConfigError::TooManyIdle(self.ensure_idle));
        }
        Ok(())
    }
}

/// What [`Pool::checkout`] decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Checkout {
    /// Open the stream on this established session.
    Reuse(SessionSeq),
    /// Dial a new session with this seq, then report it with
    /// [`Pool::established`] or [`Pool::dial_failed`].
    Dial(SessionSeq),
}

/// Why the pool closes a session.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum CloseReason {
    /// Idle longer than `idle_timeout` and not protected by `min_idle`.
    IdleTimeout,
    /// Older than its lifetime.
    Lifetime,
    /// `disable_reuse`: its stream ended.
    NoReuse,
    /// The pool is shutting down.
    Shutdown,
}

/// What the owner must do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PoolAction {
    /// Dial a pre-warmed session; report it with [`Pool::established`] or
    /// [`Pool::dial_failed`].
    Dial {
        /// Its seq.
        seq: SessionSeq,
    },
    /// Close this session (it is already out of the pool).
    Close {
        /// The session.
        seq: SessionSeq,
        /// Why.
        reason: CloseReason,
    },
    /// Send a HeartRequest on this session (`Session::send_heartbeat`).
    Heartbeat {
        /// The session.
        seq: SessionSeq,
        /// Response deadline to pass along.
        timeout: Option<Duration>,
    },
}

/// Pool counters and gauges, readable at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Sessions idle now.
    pub idle: usize,
    /// Sessions carrying streams now.
    pub busy: usize,
    /// Dials in flight (user and pre-warm).
    pub dialing: usize,
    /// Dials started, ever.
    pub dials: u64,
    /// Pre-warm dials started, ever.
    pub prewarm_dials: u64,
    /// Dials that failed.
    pub dial_failures: u64,
    /// Sessions that completed their handshake.
    pub established: u64,
    /// Checkouts served by an idle session.
    pub reused: u64,
    /// Sessions closed by the pool, per reason.
    pub closed: BTreeMap<CloseReason, u64>,
    /// Sessions that died (reported with [`Pool::session_closed`]).
    pub died: u64,
    /// Heartbeat actions issued.
    pub heartbeats: u64,
    /// Heartbeats answered.
    pub heartbeat_acks: u64,
    /// Last, smallest and largest heartbeat round-trip time.
    pub heartbeat_rtt_last: Option<Duration>,
    /// Smallest heartbeat round-trip time.
    pub heartbeat_rtt_min: Option<Duration>,
    /// Largest heartbeat round-trip time.
    pub heartbeat_rtt_max: Option<Duration>,
    /// Current pre-warm back-off: consecutive failures.
    pub backoff_failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Dialing { prewarm: bool },
    Idle { since: Instant },
    Busy { streams: usize },
}

#[derive(Clone, Debug)]
struct Entry {
    state: State,
    expires: Option<Instant>,
    /// Past its lifetime while busy: close when the stream ends.
    retire: bool,
}

/// The newest session (the highest sequence number) that `pick` accepts.
fn newest(
    entries: &BTreeMap<SessionSeq, Entry>,
    pick: impl Fn(SessionSeq, &Entry) -> bool,
) -> Option<SessionSeq> {
    entries
        .iter()
        .rev()
        .find(|(seq, e)| pick(**seq, e))
        .map(|(seq, _)| *seq)
}

/// The pool policy. See the [module docs](self).
#[derive(Debug)]
pub struct Pool {
    cfg: PoolConfig,
    entries: BTreeMap<SessionSeq, Entry>,
    timers: TimerTable<PoolTimer>,
    next_seq: u64,
    backoff_until: Option<Instant>,
    failures: u32,
    actions: VecDeque<PoolAction>,
    rng: ChaCha8Rng,
    now: Instant,
    closed: bool,
    stats: PoolStats,
}

impl Pool {
    /// A pool starting at `now`. `seed` drives the jitter (use a random one).
    /// Pre-warm dials (if `ensure_idle > 0`) are queued at once.
    pub fn new(cfg: PoolConfig, seed: [u8; 32], now: Instant) -> Result<Pool, PoolConfigError> {
        cfg.validate()?;
        let mut timers = TimerTable::default();
        timers.set(PoolTimer::Maintenance, now + cfg.check_interval);
        let mut pool = Pool {
            cfg,
            entries: BTreeMap::new(),
            timers,
            next_seq: 1,
            backoff_until: None,
            failures: 0,
            actions: VecDeque::new(),
            rng: ChaCha8Rng::from_seed(seed),
            now,
            closed: false,
            stats: PoolStats::default(),
        };
        pool.ensure(now);
        Ok(pool)
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn new_seq(&mut self, prewarm: bool) -> SessionSeq {
        let seq = SessionSeq(self.next_seq);
        self.next_seq += 1;
        self.entries.insert(
            seq,
            Entry {
                state: State::Dialing { prewarm },
                expires: None,
                retire: false,
            },
        );
        self.stats.dials += 1;
        if prewarm {
            self.stats.prewarm_dials += 1;
        }
        seq
    }

    /// The idle session [`checkout`](Self::checkout) would reuse, if any (it
    /// changes nothing). A thread-per-core embedder can start a new local
    /// connection where that session is driven. A hint: it does not look at
    /// the clock (a session whose idle time ran out may be named, and be
    /// closed at the next `checkout`), nor at busy sessions that could take
    /// one more stream (`max_streams_per_session > 1`).
    pub fn next_reuse(&self) -> Option<SessionSeq> {
        if self.cfg.disable_reuse || self.closed {
            return None;
        }
        newest(&self.entries, |_, e| matches!(e.state, State::Idle { .. }))
    }

    /// A session for a new stream: the newest idle one, else a new dial.
    pub fn checkout(&mut self, now: Instant) -> Checkout {
        self.checkout_preferring(now, |_| true)
    }

    /// [`checkout`](Self::checkout) with a preference among the sessions
    /// that can take the stream: the newest one that `prefer` accepts, else
    /// the newest one (a dial only when there is none at all). For embedders
    /// that run sessions on several threads: a stream on its caller's
    /// thread's session avoids cross-thread wake-ups. The pool's rules do
    /// not change, but their outcome can: with plain `checkout` the newest
    /// idle sessions are the ones reused and the older ones are the ones
    /// whose idle time runs out; a preference can keep reusing an older one
    /// (about one warm session per preferred group outlives
    /// `idle_session_timeout` while it is used).
    pub fn checkout_preferring(
        &mut self,
        now: Instant,
        prefer: impl Fn(SessionSeq) -> bool,
    ) -> Checkout {
        self.advance(now);
        if !self.cfg.disable_reuse && !self.closed {
            let is_idle = |e: &Entry| matches!(e.state, State::Idle { .. });
            let idle = newest(&self.entries, |seq, e| is_idle(e) && prefer(seq))
                .or_else(|| newest(&self.entries, |_, e| is_idle(e)));
            if let Some(seq) = idle {
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.state = State::Busy { streams: 1 };
                }
                self.stats.reused += 1;
                return Checkout::Reuse(seq);
            }
            let max = self.cfg.max_streams_per_session;
            let has_room = |e: &Entry| {
                matches!(e.state, State::Busy { streams } if streams < max) && !e.retire
            };
            let shared = newest(&self.entries, |seq, e| has_room(e) && prefer(seq))
                .or_else(|| newest(&self.entries, |_, e| has_room(e)));
            if let Some(seq) = shared {
                if let Some(Entry {
                    state: State::Busy { streams },
                    ..
                }) = self.entries.get_mut(&seq)
                {
                    *streams += 1;
                }
                self.stats.reused += 1;
                return Checkout::Reuse(seq);
            }
        }
        Checkout::Dial(self.new_seq(false))
    }

    /// A dial finished its handshake (Settings sent). A pre-warmed session joins
    /// the idle pool; a user's dial carries its stream.
    pub fn established(&mut self, now: Instant, seq: SessionSeq) {
        let now = self.advance(now);
        let lifetime = self.cfg.max_session_lifetime.map(|l| {
            let j = self.cfg.lifetime_jitter.as_nanos() as u64;
            let offset = if j == 0 { 0 } else { self.rng.next_u64() % j };
            let ns = (l.as_nanos() as u64 + offset).saturating_sub(j / 2);
            now + Duration::from_nanos(ns).max(MIN_INTERVAL)
        });
        let first_beat = self.cfg.heartbeat.map(|h| {
            // 80..100 % of an interval.
            let fifth = (h.as_nanos() / 5) as u64;
            let cut = if fifth == 0 {
                0
            } else {
                self.rng.next_u64() % fifth
            };
            now + h - Duration::from_nanos(cut)
        });
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        let State::Dialing { prewarm } = e.state else {
            return;
        };
        e.state = if prewarm {
            State::Idle { since: now }
        } else {
            State::Busy { streams: 1 }
        };
        e.expires = lifetime;
        if let Some(t) = first_beat {
            self.timers.set(PoolTimer::Heartbeat(seq), t);
        }
        self.stats.established += 1;
        if self.failures > 0 {
            debug!(
                failures = self.failures,
                "dial succeeded: pre-warm back-off reset"
            );
        }
        self.failures = 0;
        self.backoff_until = None;
        if self.closed {
            self.close(seq, CloseReason::Shutdown);
        }
    }

    /// A dial failed. Pre-warm failures back off the next ensure.
    pub fn dial_failed(&mut self, now: Instant, seq: SessionSeq) {
        let now = self.advance(now);
        // Only a dial can fail (an established session ends with
        // `session_closed`).
        if !matches!(
            self.entries.get(&seq).map(|e| &e.state),
            Some(State::Dialing { .. })
        ) {
            return;
        }
        let Some(e) = self.entries.remove(&seq) else {
            return;
        };
        self.stats.dial_failures += 1;
        if let State::Dialing { prewarm: true } = e.state {
            self.failures = self.failures.saturating_add(1);
            let exp = self.failures.saturating_sub(1).min(20);
            let base = self
                .cfg
                .dial_backoff
                .saturating_mul(1 << exp)
                .min(self.cfg.max_dial_backoff);
            // Jitter: 75..125 %.
            let quarter = (base.as_nanos() / 4) as u64;
            let jitter = if quarter == 0 {
                0
            } else {
                self.rng.next_u64() % (2 * quarter)
            };
            let delay = base - Duration::from_nanos(quarter) + Duration::from_nanos(jitter);
            self.backoff_until = Some(now + delay);
            debug!(
                failures = self.failures,
                "pre-warm dial failed: next ensure not before {delay:?}"
            );
        }
    }

    /// A stream on `seq` ended and the session is healthy. When it carries no
    /// other stream it becomes idle (or is closed: `disable_reuse`, lifetime).
    pub fn checkin(&mut self, now: Instant, seq: SessionSeq) {
        let now = self.advance(now);
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        let State::Busy { streams } = &mut e.state else {
            return;
        };
        *streams = streams.saturating_sub(1);
        if *streams > 0 {
            return;
        }
        let expired = e.retire || e.expires.is_some_and(|t| t <= now);
        if self.cfg.disable_reuse || self.closed {
            let reason = if self.closed {
                CloseReason::Shutdown
            } else {
                CloseReason::NoReuse
            };
            self.close(seq, reason);
        } else if expired {
            self.close(seq, CloseReason::Lifetime);
        } else {
            e.state = State::Idle { since: now };
        }
    }

    /// The session died or was closed (by anyone): it leaves the pool.
    pub fn session_closed(&mut self, now: Instant, seq: SessionSeq) {
        self.advance(now);
        if let Some(e) = self.entries.remove(&seq) {
            self.timers.clear(PoolTimer::Heartbeat(seq));
            if matches!(e.state, State::Dialing { .. }) {
                self.stats.dial_failures += 1;
            } else {
                self.stats.died += 1;
            }
        }
    }

    /// A heartbeat of `seq` was answered after `rtt`.
    pub fn heartbeat_ack(&mut self, _seq: SessionSeq, rtt: Duration) {
        let s = &mut self.stats;
        s.heartbeat_acks += 1;
        s.heartbeat_rtt_last = Some(rtt);
        s.heartbeat_rtt_min = Some(s.heartbeat_rtt_min.map_or(rtt, |m| m.min(rtt)));
        s.heartbeat_rtt_max = Some(s.heartbeat_rtt_max.map_or(rtt, |m| m.max(rtt)));
    }

    /// Closes every session and stops maintenance.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        self.closed = true;
        let seqs: Vec<SessionSeq> = self.entries.keys().copied().collect();
        for seq in seqs {
            self.close(seq, CloseReason::Shutdown);
        }
    }

    fn close(&mut self, seq: SessionSeq, reason: CloseReason) {
        if self.entries.remove(&seq).is_some() {
            self.timers.clear(PoolTimer::Heartbeat(seq));
            *self.stats.closed.entry(reason).or_default() += 1;
            self.actions.push_back(PoolAction::Close { seq, reason });
        }
    }

    /// Runs what is due: maintenance every check interval, heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        if self.closed {
            return;
        }
        if let Some(due) = self
            .timers
            .get(PoolTimer::Maintenance)
            .filter(|&t| t <= now)
        {
            self.maintain(now);
            let mut next = due + self.cfg.check_interval;
            if next <= now {
                // Far behind (a suspended process): resume the cadence from now.
                next = now + self.cfg.check_interval;
            }
            self.timers.set(PoolTimer::Maintenance, next);
        }
        if let Some(interval) = self.cfg.heartbeat {
            while let Some((timer, t)) = self.timers.pop_expired(now) {
                let PoolTimer::Heartbeat(seq) = timer else {
                    continue;
                };
                let mut next = t + interval;
                if next <= now {
                    next = now + interval;
                }
                if self.entries.contains_key(&seq) {
                    self.timers.set(PoolTimer::Heartbeat(seq), next);
                    self.stats.heartbeats += 1;
                    self.actions.push_back(PoolAction::Heartbeat {
                        seq,
                        timeout: self.cfg.heartbeat_timeout,
                    });
                }
            }
        }
    }

    fn maintain(&mut self, now: Instant) {
        // 1. Idle cleanup, newest (highest seq) first.
        if !self.cfg.disable_reuse {
            let expire = now.checked_sub(self.cfg.idle_timeout);
            let mut kept = 0;
            let mut close = Vec::new();
            for (seq, e) in self.entries.iter_mut().rev() {
                let State::Idle { since } = &mut e.state else {
                    continue;
                };
                if expire.is_none_or(|x| *since >= x) {
                    kept += 1;
                } else if kept < self.cfg.min_idle {
                    *since = now;
                    kept += 1;
                } else {
                    close.push(*seq);
                }
            }
            if !close.is_empty() || kept > 0 {
                debug!(
                    kept,
                    closed = close.len(),
                    min_idle = self.cfg.min_idle,
                    "idle sweep"
                );
            }
            for seq in close {
                self.close(seq, CloseReason::IdleTimeout);
            }
        }
        // 2. Lifetime.
        if self.cfg.max_session_lifetime.is_some() {
            let mut close = Vec::new();
            for (seq, e) in &mut self.entries {
                if e.expires.is_some_and(|t| t <= now) {
                    match e.state {
                        State::Idle { .. } => close.push(*seq),
                        State::Busy { .. } => e.retire = true,
                        State::Dialing { .. } => {}
                    }
                }
            }
            for seq in close {
                debug!(seq = seq.0, "session lifetime over: closing");
                self.close(seq, CloseReason::Lifetime);
            }
        }
        // 3. Ensure.
        self.ensure(now);
    }

    fn ensure(&mut self, now: Instant) {
        let target = self.cfg.ensure_idle;
        if target == 0 || self.cfg.disable_reuse || self.closed {
            return;
        }
        let (idle, dialing) = self
            .entries
            .values()
            .fold((0, 0), |(i, d), e| match e.state {
                State::Idle { .. } => (i + 1, d),
                State::Dialing { prewarm: true } => (i, d + 1),
                _ => (i, d),
            });
        if let Some(until) = self.backoff_until.filter(|&u| u > now) {
            debug!(
                "ensure_idle_session: idle {idle}, target {target}, dialling {dialing}: backing off for {:?}",
                until - now
            );
            return;
        }
        let mut create = target.saturating_sub(idle + dialing);
        if self.cfg.ensure_create_rate > 0 {
            create = create.min(self.cfg.ensure_create_rate);
        }
        debug!(
            "ensure_idle_session: idle {idle}, target {target}, dialling {dialing}, creating {create}"
        );
        for _ in 0..create {
            let seq = self.new_seq(true);
            self.actions.push_back(PoolAction::Dial { seq });
        }
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<PoolAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.timers.next()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> PoolStats {
        let mut s = self.stats.clone();
        s.idle = 0;
        s.busy = 0;
        s.dialing = 0;
        for e in self.entries.values() {
            match e.state {
                State::Idle { .. } => s.idle += 1,
                State::Busy { .. } => s.busy += 1,
                State::Dialing { .. } => s.dialing += 1,
            }
        }
        s.backoff_failures = self.failures;
        s
    }

    /// Idle sessions, newest first, with the time they became idle.
    pub fn idle_sessions(&self) -> Vec<(SessionSeq, Instant)> {
        self.entries
            .iter()
            .rev()
            .filter_map(|(seq, e)| match e.state {
                State::Idle { since } => Some((*seq, since)),
                _ => None,
            })
            .collect()
    }

    /// Whether the pool tracks `seq`.
    pub fn contains(&self, seq: SessionSeq) -> bool {
        self.entries.contains_key(&seq)
    }
}
