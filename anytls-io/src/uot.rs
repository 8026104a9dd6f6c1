//! UDP over TCP (sing UoT) on the server: a stream whose destination is
//! `sp.v2.udp-over-tcp.arpa` (or the legacy `sp.udp-over-tcp.arpa`) carries
//! datagrams, which the server sends from a UDP socket of its own and whose
//! answers it sends back on the stream.
//!
//! One stream gets one UDP socket per address family, bound when the first
//! datagram for that family goes out. Both directions are bounded: the stream
//! is read only as fast as datagrams can be sent, and datagrams received while
//! the stream's writer is blocked are queued up to a cap and dropped beyond
//! it, as a full UDP receive buffer would.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anytls_core::uot::{Datagram, DatagramReader, MAX_DATAGRAM, UotVersion};
use anytls_core::{Host, SocksAddr, UotError};
use bytes::{Bytes, BytesMut};
use futures_lite::future::{or, yield_now};

use crate::conn::AnyTlsStream;
use crate::runtime::{Notify, Runtime, lock, timeout};

/// UDP-over-TCP settings of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpConfig {
    /// Serve UoT streams at all. When off, they are refused (SYNACK error).
    /// Default: on.
    pub enabled: bool,
    /// A UoT stream with no datagram in either direction for this long is
    /// closed (FIN). `Duration::ZERO` turns the timeout off. Default: 60 s.
    pub idle_timeout: Duration,
    /// Largest datagram payload, both ways (at most 65535). A larger datagram
    /// from the client closes the stream as malformed; a larger one received
    /// on the socket is dropped. Default: 65535.
    pub max_datagram: usize,
    /// Datagrams queued towards the stream while its writer is blocked; more
    /// are dropped. Default: 64.
    pub queue_datagrams: usize,
    /// Encoded bytes queued towards the stream while its writer is blocked;
    /// datagrams that would exceed it are dropped. Default: 256 KiB.
    pub queue_bytes: usize,
    /// Local address of the IPv4 sockets (port 0). Default: `0.0.0.0`.
    pub bind_v4: Ipv4Addr,
    /// Local address of the IPv6 sockets (port 0). Default: `::`.
    pub bind_v6: Ipv6Addr,
}

impl Default for UdpConfig {
    fn default() -> UdpConfig {
        UdpConfig {
            enabled: true,
            idle_timeout: Duration::from_secs(60),
            max_datagram: MAX_DATAGRAM,
            queue_datagrams: 64,
            queue_bytes: 256 * 1024,
            bind_v4: Ipv4Addr::UNSPECIFIED,
            bind_v6: Ipv6Addr::UNSPECIFIED,
        }
    }
}

/// Counters of one UoT stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UotStats {
    /// Datagrams read from the stream and sent to their destination.
    pub sent: u64,
    /// Datagrams received on the socket and queued towards the stream.
    pub received: u64,
    /// Received datagrams dropped because the queue towards the stream was
    /// full.
    pub dropped_queue_full: u64,
    /// Other datagrams dropped: destinations that did not resolve or whose
    /// family has no socket, failed sends, received datagrams over
    /// `max_datagram`, and (connect mode) datagrams from other senders.
    pub dropped_other: u64,
}

/// Why a UoT stream ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum UotEnd {
    /// The client closed the stream (or the session ended).
    Eof,
    /// No datagram either way for `idle_timeout`.
    IdleTimeout,
    /// The client sent a malformed request or datagram.
    Malformed(UotError),
    /// A stream or socket error.
    Io(io::Error),
}

/// How a UoT stream went: its counters and why it ended.
#[derive(Debug)]
pub struct UotReport {
    /// Counters.
    pub stats: UotStats,
    /// Why it ended.
    pub end: UotEnd,
}

/// How long resolving one destination name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resolved name is reused on a stream.
const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// How long a name that did not resolve is not tried again on a stream.
const RESOLVE_FAILURE_TTL: Duration = Duration::from_secs(10);
/// Names remembered per stream.
const RESOLVE_CACHE: usize = 64;
/// Datagrams handled in a row before yielding to other tasks.
const BUDGET: usize = 64;
/// Bytes of queued datagrams joined into one stream write.
const WRITE_BATCH: usize = 32 * 1024;

/// Relays an accepted UoT stream of `version` until the client closes it, it
/// is idle for `cfg.idle_timeout`, or it turns out malformed; then closes it
/// (FIN) and its sockets. Never panics on client input.
///
/// Client-to-server datagrams go to their destination: in v2 connect mode
/// the request's, otherwise each datagram's own (domain names resolved with
/// [`Runtime::resolve`], IPv4 preferred, cached per stream for a minute).
/// Datagrams received on the socket go back on the stream: in connect mode
/// only those from the destination, as payload alone; otherwise with the
/// sender's address.
pub async fn relay_uot<R: Runtime>(
    stream: AnyTlsStream,
    version: UotVersion,
    cfg: &UdpConfig,
) -> UotReport {
    let max = cfg.max_datagram.min(MAX_DATAGRAM);
    let state = State::<R> {
        stream: Mutex::new(stream),
        cfg: *cfg,
        max,
        v4: Family::default(),
        v6: Family::default(),
        with_addr: OnceLock::new(),
        connect_peer: OnceLock::new(),
        queue: Mutex::new(DownQueue::new(cfg.queue_datagrams, cfg.queue_bytes)),
        queued: Notify::default(),
        last_activity: Mutex::new(Instant::now()),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        dropped_other: AtomicU64::new(0),
    };
    let reader = DatagramReader::new(version).with_max_datagram(max);
    let end = or(
        or(state.upstream(reader), state.idle()),
        or(
            state.downstream_writer(),
            or(state.receive(&state.v4), state.receive(&state.v6)),
        ),
    )
    .await;
    let stats = UotStats {
        sent: state.sent.load(Ordering::Relaxed),
        received: state.received.load(Ordering::Relaxed),
        dropped_queue_full: lock(&state.queue).dropped,
        dropped_other: state.dropped_other.load(Ordering::Relaxed),
    };
    let mut stream = state.stream.into_inner().unwrap_or_else(|p| p.into_inner());
    stream.finish();
    UotReport { stats, end }
}

/// The socket of one address family, bound on first use.
struct Family<U> {
    socket: OnceLock<U>,
    /// Binding failed: the family is unavailable on this stream.
    failed: AtomicBool,
    bound: Notify,
}

impl<U> Default for Family<U> {
    fn default() -> Family<U> {
        Family {
            socket: OnceLock::new(),
            failed: AtomicBool::new(false),
            bound: Notify::default(),
        }
    }
}

/// Everything the concurrent parts of one relay share (all within one task;
/// the locks are never held across an await).
struct State<R: Runtime> {
    stream: Mutex<AnyTlsStream>,
    cfg: UdpConfig,
    max: usize,
    v4: Family<R::Udp>,
    v6: Family<R::Udp>,
    /// Whether replies carry the sender's address (set before any socket is
    /// bound).
    with_addr: OnceLock<bool>,
    /// Connect mode: the resolved destination.
    connect_peer: OnceLock<SocketAddr>,
    queue: Mutex<DownQueue>,
    queued: Notify,
    last_activity: Mutex<Instant>,
    sent: AtomicU64,
    received: AtomicU64,
    dropped_other: AtomicU64,
}

impl<R: Runtime> State<R> {
    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn drop_other(&self) {
        self.dropped_other.fetch_add(1, Ordering::Relaxed);
    }

    /// Stream to sockets: reads the stream, parses datagrams, sends them.
    /// Reads no more of the stream until the datagrams read so far are sent.
    async fn upstream(&self, mut reader: DatagramReader) -> UotEnd {
        let mut names = NameCache::default();
        loop {
            let chunk = poll_fn(|cx| lock(&self.stream).poll_read_chunk(cx)).await;
            match chunk {
                Ok(Some(chunk)) => reader.push(chunk),
                Ok(None) => return UotEnd::Eof,
                Err(e) => return UotEnd::Io(e),
            }
            let mut handled = 0;
            loop {
                let datagram = match reader.next() {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => return UotEnd::Malformed(e),
                };
                if self.with_addr.get().is_none() {
                    // The request (if any) has been read with the first datagram.
                    let connect = reader.request().is_some_and(|r| r.connect);
                    let _ = self.with_addr.set(!connect);
                }
                self.send(&reader, datagram, &mut names).await;
                handled += 1;
                if handled % BUDGET == 0 {
                    yield_now().await;
                }
            }
        }
    }

    /// Sends one datagram to its destination; failures drop it.
    async fn send(&self, reader: &DatagramReader, datagram: Datagram, names: &mut NameCache) {
        let to = match (&datagram.dest, self.connect_peer.get()) {
            (Some(dest), _) => self.target(dest.clone(), names).await,
            (None, Some(peer)) => Some(*peer),
            (None, None) => {
                // Connect mode: the request's destination, resolved once.
                let Some(req) = reader.request() else {
                    self.drop_other();
                    return;
                };
                let peer = self.target(req.dest.clone(), names).await;
                if let Some(peer) = peer {
                    let _ = self.connect_peer.set(peer);
                }
                peer
            }
        };
        let Some(to) = to else {
            self.drop_other();
            return;
        };
        let Some(socket) = self.socket(to).await else {
            self.drop_other();
            return;
        };
        match R::send_to(socket, &datagram.payload, to).await {
            Ok(_) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.touch();
            }
            Err(e) => {
                tracing::debug!("UoT send to {to}: {e}");
                self.drop_other();
            }
        }
    }

    /// The socket address to send to: IP literals as they are, names
    /// resolved (IPv4 preferred, families without a socket skipped).
    async fn target(&self, dest: SocksAddr, names: &mut NameCache) -> Option<SocketAddr> {
        let dest = dest.normalized();
        if let Some(sa) = dest.socket_addr() {
            return Some(sa);
        }
        let Host::Domain(name) = &dest.host else {
            return None;
        };
        let ips = match names.get(name) {
            Some(ips) => ips,
            None => {
                let resolved = timeout::<R, _>(RESOLVE_TIMEOUT, R::resolve(&format!("{name}:0")))
                    .await
                    .and_then(|r| {
                        r.inspect_err(|e| tracing::debug!("UoT resolve {name}: {e}"))
                            .ok()
                    })
                    .unwrap_or_default();
                names.insert(name, resolved.iter().map(SocketAddr::ip).collect())
            }
        };
        let usable = |ip: &&IpAddr| match ip {
            IpAddr::V4(_) => !self.v4.failed.load(Ordering::Relaxed),
            IpAddr::V6(_) => !self.v6.failed.load(Ordering::Relaxed),
        };
        let ip = ips
            .iter()
            .filter(usable)
            .find(|ip| ip.is_ipv4())
            .or_else(|| ips.iter().find(usable))?;
        Some(SocketAddr::new(*ip, dest.port))
    }

    /// The socket for `to`'s family, bound now if it is the first.
    async fn socket(&self, to: SocketAddr) -> Option<&R::Udp> {
        let (family, local) = match to {
            SocketAddr::V4(_) => (&self.v4, IpAddr::V4(self.cfg.bind_v4)),
            SocketAddr::V6(_) => (&self.v6, IpAddr::V6(self.cfg.bind_v6)),
        };
        if let Some(s) = family.socket.get() {
            return Some(s);
        }
        if family.failed.load(Ordering::Relaxed) {
            return None;
        }
        match R::bind_udp(SocketAddr::new(local, 0)).await {
            Ok(s) => {
                let _ = family.socket.set(s);
                family.bound.notify();
                family.socket.get()
            }
            Err(e) => {
                tracing::debug!("UoT bind {local}: {e}");
                family.failed.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    /// Socket to queue: receives datagrams on one family's socket (once it is
    /// bound) and queues them towards the stream, dropping what does not fit.
    async fn receive(&self, family: &Family<R::Udp>) -> UotEnd {
        let socket = loop {
            if let Some(s) = family.socket.get() {
                break s;
            }
            family.bound.notified().await;
        };
        let with_addr = self.with_addr.get().copied().unwrap_or(true);
        // One byte more than the cap, to tell a datagram over it.
        let mut buf = vec![0; self.max + 1];
        let mut handled = 0;
        loop {
            let (n, from) = match R::recv_from(socket, &mut buf).await {
                Ok(x) => x,
                // ICMP errors reported on some platforms: UDP goes on.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue;
                }
                Err(e) => return UotEnd::Io(e),
            };
            handled += 1;
            if handled % BUDGET == 0 {
                yield_now().await;
            }
            if n > self.max {
                self.drop_other();
                continue;
            }
            let dest = if with_addr {
                Some(SocksAddr {
                    host: Host::from(from.ip()),
                    port: from.port(),
                })
            } else {
                let peer = self.connect_peer.get();
                if peer.is_none_or(|p| (p.ip(), p.port()) != (from.ip(), from.port())) {
                    self.drop_other();
                    continue;
                }
                None
            };
            let datagram = Datagram {
                dest,
                payload: Bytes::copy_from_slice(&buf[..n]),
            };
            let mut wire = BytesMut::with_capacity(datagram.encoded_len());
            if datagram.encode(&mut wire).is_err() {
                self.drop_other();
                continue;
            }
            self.touch();
            if lock(&self.queue).push(wire.freeze()) {
                self.received.fetch_add(1, Ordering::Relaxed);
                self.queued.notify();
            }
        }
    }

    /// Queue to stream: writes queued datagrams, several per write.
    async fn downstream_writer(&self) -> UotEnd {
        let mut batch = BytesMut::new();
        loop {
            self.queued.notified().await;
            loop {
                {
                    let mut q = lock(&self.queue);
                    while batch.len() < WRITE_BATCH {
                        let Some(d) = q.pop() else { break };
                        batch.extend_from_slice(&d);
                    }
                }
                if batch.is_empty() {
                    break;
                }
                // The stream takes what fits under its send cap each time.
                let mut data = batch.split().freeze();
                let written =
                    poll_fn(|cx| lock(&self.stream).poll_write_bytes(cx, &mut data)).await;
                if let Err(e) = written {
                    return UotEnd::Io(e);
                }
            }
        }
    }

    /// Ends when no datagram went either way for `idle_timeout`.
    /// Never ends with a zero (or overflowing) timeout.
    async fn idle(&self) -> UotEnd {
        let limit = self.cfg.idle_timeout;
        let due = || lock(&self.last_activity).checked_add(limit);
        let Some(deadline) = due().filter(|_| !limit.is_zero()) else {
            return std::future::pending().await;
        };
        let mut timer = R::timer(deadline);
        loop {
            (&mut timer).await;
            // Activity only moves the deadline later.
            let Some(deadline) = due() else {
                return std::future::pending().await;
            };
            if deadline <= Instant::now() {
                return UotEnd::IdleTimeout;
            }
            R::reset_timer(&mut timer, deadline);
        }
    }
}

/// Encoded datagrams waiting for the stream, with count and byte caps.
#[derive(Debug)]
pub(crate) struct DownQueue {
    items: VecDeque<Bytes>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
    dropped: u64,
}

impl DownQueue {
    pub(crate) fn new(max_items: usize, max_bytes: usize) -> DownQueue {
        DownQueue {
            items: VecDeque::new(),
            bytes: 0,
            max_items,
            max_bytes,
            dropped: 0,
        }
    }

    /// Queues `d`; `false` (and counted) if it does not fit.
    pub(crate) fn push(&mut self, d: Bytes) -> bool {
        if self.items.len() >= self.max_items || self.bytes + d.len() > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        self.bytes += d.len();
        self.items.push_back(d);
        true
    }

    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        let d = self.items.pop_front()?;
        self.bytes -= d.len();
        Some(d)
    }
}

/// Names resolved on one stream, reused for [`RESOLVE_TTL`].
#[derive(Default)]
struct NameCache {
    entries: HashMap<String, (Vec<IpAddr>, Instant)>,
}

impl NameCache {
    fn get(&self, name: &str) -> Option<Vec<IpAddr>> {
        let (ips, at) = self.entries.get(name)?;
        let ttl = if ips.is_empty() {
            RESOLVE_FAILURE_TTL
        } else {
            RESOLVE_TTL
        };
        (at.elapsed() < ttl).then(|| ips.clone())
    }

    fn insert(&mut self, name: &str, ips: Vec<IpAddr>) -> Vec<IpAddr> {
        if self.entries.len() >= RESOLVE_CACHE {
            self.entries.retain(|_, (_, at)| at.elapsed() < RESOLVE_TTL);
            if self.entries.len() >= RESOLVE_CACHE {
                self.entries.clear();
            }
        }
        self.entries
            .insert(name.to_owned(), (ips.clone(), Instant::now()));
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_drops_beyond_caps_and_counts() {
        let mut q = DownQueue::new(3, 10);
        assert!(q.push(Bytes::from_static(b"1234")));
        assert!(q.push(Bytes::from_static(b"1234")));
        assert!(!q.push(Bytes::from_static(b"123")), "byte cap");
        assert!(q.push(Bytes::from_static(b"12")));
        assert!(!q.push(Bytes::new()), "count cap");
        assert_eq!(q.dropped, 2);
        assert_eq!(q.pop().as_deref(), Some(&b"1234"[..]));
        assert!(q.push(Bytes::from_static(b"")));
        assert_eq!(q.bytes, 6);
        for _ in 0..3 {
            assert!(q.pop().is_some());
        }
        assert!(q.pop().is_none());
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn defaults() {
        let c = UdpConfig::default();
        assert!(c.enabled);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_datagram, 65535);
        assert_eq!((c.queue_datagrams, c.queue_bytes), (64, 256 * 1024));
    }

    #[test]
    fn name_cache_is_bounded() {
        let mut c = NameCache::default();
        for i in 0..RESOLVE_CACHE * 3 {
            c.insert(&format!("n{i}"), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
            assert!(c.entries.len() <= RESOLVE_CACHE);
        }
        let last = format!("n{}", RESOLVE_CACHE * 3 - 1);
        assert_eq!(c.get(&last), Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]));
        assert_eq!(c.get("nope"), None);
    }
}
