//! A server's accounting: per-user bytes, sessions and streams, and failed
//! authentications (in total and per peer address).
//!
//! What is counted, exactly:
//!
//! * **Bytes received** (`bytes_received`): stream payload the server's stream
//!   handles took out of the user's sessions: what a handler (the built-in
//!   relay, UDP over TCP, or yours) read from its [`AnyTlsStream`]s. Data a
//!   handler never reads (a stream refused or dropped with data queued) is
//!   not counted; frame headers, padding, the preamble and TLS overhead are
//!   not either.
//! * **Bytes sent** (`bytes_sent`): stream payload written into the user's
//!   streams, counted as the session takes it into its send queue (so data
//!   queued just before a session fails counts, though it never leaves).
//!   Again payload only. (A UDP-over-TCP stream's payload is its UoT
//!   encoding: datagrams with their length prefixes and addresses.)
//! * **Sessions**: counted once authenticated (a connection that fails
//!   authentication belongs to no user); open until the session ends.
//! * **Streams**: every stream a user's client opens (refused ones
//!   included); open until the handler has decided and, when accepted,
//!   dropped (or finished) its [`AnyTlsStream`].
//! * **Authentication failures**: TLS connections that did not authenticate:
//!   a wrong password or bytes that are not AnyTLS, a first read shorter
//!   than the password hash, an EOF after a partial preamble, or the
//!   handshake timeout before a whole one (what the fallback is handed).
//!   Counted in total and per peer IP address for the last
//!   [`MAX_PEERS`] addresses to fail; each is logged at `info`, at most one line
//!   per address per [`LOG_INTERVAL`] (the next line says how many were held
//!   back).
//!
//! Counters are atomics, looked up once per session; a snapshot reads them
//! one at a time, so values taken while traffic flows may be a few bytes
//! apart from each other.
//!
//! [`AnyTlsStream`]: crate::AnyTlsStream

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::lock;

/// Peer addresses whose authentication failures are kept; beyond it the
/// address that failed least recently is forgotten.
pub const MAX_PEERS: usize = 1024;

/// At most one log line per peer address per this period.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A user's counters (shared by their sessions and streams).
#[derive(Debug, Default)]
pub(crate) struct UserCounters {
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    sessions_open: AtomicU64,
    sessions_total: AtomicU64,
    streams_open: AtomicU64,
    streams_total: AtomicU64,
}

impl UserCounters {
    /// Counts a new session; it is open until the guard drops.
    pub(crate) fn session_opened(self: &Arc<Self>) -> SessionGuard {
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.sessions_open.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.clone())
    }

    /// Counts a new stream; it is open until the guard drops.
    pub(crate) fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        self.streams_open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

/// An open session of a user.
pub(crate) struct SessionGuard(Arc<UserCounters>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open stream of a user; counts its payload.
pub(crate) struct StreamGuard(Arc<UserCounters>);

impl StreamGuard {
    /// Payload taken out of the stream (received from the client).
    pub(crate) fn received(&self, n: usize) {
        self.0.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Payload queued on the stream (sent to the client).
    pub(crate) fn sent(&self, n: usize) {
        self.0.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One peer address's failures.
struct PeerEntry {
    count: u64,
    /// When it last failed, as a sequence number (for eviction).
    last_seen: u64,
    logged_at: Option<Instant>,
    /// Failures not logged since the last line.
    held: u64,
}

/// A log line about an address's failures.
#[derive(Debug, PartialEq, Eq)]
struct LogLine {
    /// Its failures so far.
    count: u64,
    /// Failures not logged since its last line.
    held: u64,
}

#[derive(Default)]
struct PeerTable {
    peers: HashMap<IpAddr, PeerEntry>,
    seq: u64,
}

struct Inner {
    /// Names come from the server's configuration only, never from peers.
    users: Mutex<BTreeMap<Arc<str>, Arc<UserCounters>>>,
    auth_failures: AtomicU64,
    peers: Mutex<PeerTable>,
}

/// A server's counters: cheap to clone, usable from any thread, obtained
/// from [`Server::stats_handle`](crate::Server::stats_handle) before
/// `serve` takes the server. See the [module](self) for what is counted.
#[derive(Clone)]
pub struct StatsHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsHandle")
            .field("users", &lock(&self.inner.users).len())
            .field(
                "auth_failures",
                &self.inner.auth_failures.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl StatsHandle {
    /// Counters for `users` (all at zero).
    pub(crate) fn new<'a>(users: impl IntoIterator<Item = &'a str>) -> StatsHandle {
        let h = StatsHandle {
            inner: Arc::new(Inner {
                users: Mutex::default(),
                auth_failures: AtomicU64::new(0),
                peers: Mutex::default(),
            }),
        };
        for name in users {
            h.user(name);
        }
        h
    }

    /// The counters of user `name`, created at zero if new (a user added
    /// by a reload).
    pub(crate) fn user(&self, name: &str) -> Arc<UserCounters> {
        let mut users = lock(&self.inner.users);
        if let Some(c) = users.get(name) {
            return c.clone();
        }
        let c = Arc::new(UserCounters::default());
        users.insert(Arc::from(name), c.clone());
        c
    }

    /// Counts a failed authentication from `peer` and logs it (rate-limited).
    pub(crate) fn auth_failed(&self, peer: IpAddr, now: Instant) {
        let Some(line) = self.count_auth_failure(peer, now) else {
            return;
        };
        let peer = peer.to_canonical();
        if line.held > 0 {
            tracing::info!(
                %peer,
                failures = line.count,
                "authentication failed ({} more from this address not logged)",
                line.held
            );
        } else {
            tracing::info!(%peer, failures = line.count, "authentication failed");
        }
    }

    /// Counts a failed authentication; the log line to write, if one is due.
    fn count_auth_failure(&self, peer: IpAddr, now: Instant) -> Option<LogLine> {
        self.inner.auth_failures.fetch_add(1, Ordering::Relaxed);
        let peer = peer.to_canonical();
        let mut t = lock(&self.inner.peers);
        t.seq += 1;
        let seq = t.seq;
        if !t.peers.contains_key(&peer) && t.peers.len() >= MAX_PEERS {
            // O(MAX_PEERS), only for a new address once the table is full.
            if let Some(oldest) = t
                .peers
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(a, _)| *a)
            {
                t.peers.remove(&oldest);
            }
        }
        let e = t.peers.entry(peer).or_insert(PeerEntry {
            count: 0,
            last_seen: seq,
            logged_at: None,
            held: 0,
        });
        e.count += 1;
        e.last_seen = seq;
        if e.logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_INTERVAL)
        {
            e.held += 1;
            return None;
        }
        let line = LogLine {
            count: e.count,
            held: e.held,
        };
        e.logged_at = Some(now);
        e.held = 0;
        Some(line)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let users = lock(&self.inner.users)
            .iter()
            .map(|(name, c)| UserStats {
                name: name.to_string(),
                bytes_received: c.bytes_received.load(Ordering::Relaxed),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                sessions_open: c.sessions_open.load(Ordering::Relaxed),
                sessions_total: c.sessions_total.load(Ordering::Relaxed),
                streams_open: c.streams_open.load(Ordering::Relaxed),
                streams_total: c.streams_total.load(Ordering::Relaxed),
            })
            .collect();
        let mut auth_failures_by_peer: Vec<PeerAuthFailures> = lock(&self.inner.peers)
            .peers
            .iter()
            .map(|(addr, e)| PeerAuthFailures {
                addr: *addr,
                count: e.count,
            })
            .collect();
        auth_failures_by_peer.sort_by(|a, b| b.count.cmp(&a.count).then(a.addr.cmp(&b.addr)));
        StatsSnapshot {
            users,
            auth_failures: self.inner.auth_failures.load(Ordering::Relaxed),
            auth_failures_by_peer,
        }
    }
}

/// A server's counters at one moment ([`StatsHandle::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Every configured user (and any added since), by name.
    pub users: Vec<UserStats>,
    /// Failed authentications since the server started.
    pub auth_failures: u64,
    /// Failed authentications of the last [`MAX_PEERS`] peer addresses to
    /// fail, most failures first.
    pub auth_failures_by_peer: Vec<PeerAuthFailures>,
}

/// One user's counters (see the [module](self) for what each counts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserStats {
    /// The user's name (from `ServerConfig::users`).
    pub name: String,
    /// Stream payload received from the user's clients.
    pub bytes_received: u64,
    /// Stream payload sent to the user's clients.
    pub bytes_sent: u64,
    /// Sessions open now.
    pub sessions_open: u64,
    /// Sessions authenticated since the server started.
    pub sessions_total: u64,
    /// Streams open now.
    pub streams_open: u64,
    /// Streams opened since the server started.
    pub streams_total: u64,
}

/// Failed authentications from one peer address.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerAuthFailures {
    /// The peer's IP address.
    pub addr: IpAddr,
    /// Failures from it while it was in the table.
    pub count: u64,
}

/// A per-user series: name, type, help, value.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&UserStats) -> u64,
);

/// The per-user series.
const USER_SERIES: [Series; 6] = [
    (
        "anytls_user_bytes_received_total",
        "counter",
        "Stream payload bytes received from the user's clients.",
        |u| u.bytes_received,
    ),
    (
        "anytls_user_bytes_sent_total",
        "counter",
        "Stream payload bytes sent to the user's clients.",
        |u| u.bytes_sent,
    ),
    (
        "anytls_user_sessions_open",
        "gauge",
        "Sessions of the user open now.",
        |u| u.sessions_open,
    ),
    (
        "anytls_user_sessions_total",
        "counter",
        "Sessions the user authenticated.",
        |u| u.sessions_total,
    ),
    (
        "anytls_user_streams_open",
        "gauge",
        "Streams of the user open now.",
        |u| u.streams_open,
    ),
    (
        "anytls_user_streams_total",
        "counter",
        "Streams the user opened.",
        |u| u.streams_total,
    ),
];

impl StatsSnapshot {
    /// The counters of user `name`.
    pub fn user(&self, name: &str) -> Option<&UserStats> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The Prometheus text exposition format (version 0.0.4): one series
    /// per user of each `anytls_user_*` metric, labelled `user="NAME"`, and
    /// `anytls_auth_failures_total` (per-peer counts are left out: a
    /// label per address is unbounded cardinality for a scraper).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in USER_SERIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for u in &self.users {
                let _ = writeln!(
                    out,
                    "{name}{{user=\"{}\"}} {}",
                    escape_label(&u.name),
                    value(u)
                );
            }
        }
        let name = "anytls_auth_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections that failed authentication.\n# TYPE {name} counter\n{name} {}",
            self.auth_failures
        );
        out
    }

    /// One line for a log: per user, bytes each way and open sessions and
    /// streams; then the authentication failures.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for u in &self.users {
            let _ = write!(
                out,
                "{}: {} B in, {} B out, {} session(s) and {} stream(s) open; ",
                escape_label(&u.name),
                u.bytes_received,
                u.bytes_sent,
                u.sessions_open,
                u.streams_open
            );
        }
        let _ = write!(out, "{} authentication failure(s)", self.auth_failures);
        out
    }
}

/// A label value escaped as the text format requires (`\`, `"`, newline).
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_escapes_labels_and_has_help_and_type() {
        let h = StatsHandle::new(["alice", "b\"o\\b\n"]);
        let a = h.user("alice");
        {
            let s = a.stream_opened();
            s.received(10);
            s.sent(7);
        }
        let _session = a.session_opened();
        let text = h.snapshot().to_prometheus();
        assert!(text.contains("anytls_user_bytes_received_total{user=\"alice\"} 10\n"));
        assert!(text.contains("anytls_user_bytes_sent_total{user=\"alice\"} 7\n"));
        assert!(text.contains("anytls_user_streams_open{user=\"alice\"} 0\n"));
        assert!(text.contains("anytls_user_streams_total{user=\"alice\"} 1\n"));
        assert!(text.contains("anytls_user_sessions_open{user=\"alice\"} 1\n"));
        assert!(text.contains("anytls_user_sessions_total{user=\"b\\\"o\\\\b\\n\"} 0\n"));
        assert!(text.contains("# TYPE anytls_user_sessions_open gauge\n"));
        assert!(text.contains("# HELP anytls_auth_failures_total "));
        assert!(text.contains("anytls_auth_failures_total 0\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }

    #[test]
    fn peer_table_is_bounded_and_evicts_the_least_recent() {
        let h = StatsHandle::new([]);
        let now = Instant::now();
        let first: IpAddr = "10.0.0.1".parse().unwrap();
        h.auth_failed(first, now);
        for i in 0..MAX_PEERS as u32 {
            h.auth_failed(IpAddr::from((0x0b00_0000u32 + i).to_be_bytes()), now);
        }
        let s = h.snapshot();
        assert_eq!(s.auth_failures, MAX_PEERS as u64 + 1);
        assert_eq!(s.auth_failures_by_peer.len(), MAX_PEERS);
        assert!(s.auth_failures_by_peer.iter().all(|p| p.addr != first));
        // A repeat offender keeps its place and its count.
        let again: IpAddr = "11.0.0.5".parse().unwrap();
        h.auth_failed(again, now);
        h.auth_failed("::ffff:11.0.0.5".parse().unwrap(), now);
        let s = h.snapshot();
        assert_eq!(s.auth_failures_by_peer[0].addr, again);
        assert_eq!(s.auth_failures_by_peer[0].count, 3);
        assert_eq!(s.auth_failures_by_peer.len(), MAX_PEERS);
    }

    #[test]
    fn failures_are_logged_once_per_address_per_interval() {
        let h = StatsHandle::new([]);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let line = |count, held| Some(LogLine { count, held });
        assert_eq!(h.count_auth_failure(a, t0), line(1, 0));
        assert_eq!(h.count_auth_failure(b, t0), line(1, 0), "per address");
        let soon = t0 + LOG_INTERVAL / 2;
        assert_eq!(h.count_auth_failure(a, soon), None);
        assert_eq!(h.count_auth_failure(a, soon), None);
        let later = t0 + LOG_INTERVAL;
        assert_eq!(h.count_auth_failure(a, later), line(4, 2), "held back: 2");
        assert_eq!(h.count_auth_failure(a, later), None);
        assert_eq!(h.snapshot().auth_failures, 6);
    }

    #[test]
    fn summary_is_one_line() {
        let h = StatsHandle::new(["alice", "bob"]);
        h.user("bob").stream_opened().sent(5);
        let line = h.snapshot().summary();
        assert!(!line.contains('\n'));
        assert!(line.contains("bob: 0 B in, 5 B out"), "{line}");
    }
}
