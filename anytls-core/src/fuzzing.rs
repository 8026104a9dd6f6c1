//! Fuzz target bodies (feature `_fuzz`). Each takes arbitrary bytes, must never
//! panic, and asserts the invariants of its codec. `cargo fuzz` calls them from
//! `fuzz/fuzz_targets/`; the unit test below replays `fuzz/corpus/` on stable.
//!
//! Not part of the stable API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_core::RngCore;

use crate::addr::{AddrTable, SocksAddr};
use crate::auth::{AuthVerdict, Authenticator, PasswordHash, encode_preamble};
use crate::config::{ClientConfig, ServerConfig, SessionLimits};
use crate::frame::HEADER_LEN;
use crate::frame::{Command, StreamId, encode_frame};
use crate::frame::{FrameDecoder, FrameLimits, MAX_FRAME_DATA};
use crate::padding::{Item, PaddingScheme, Record, Shaper, validate_strict_text};
use crate::session::{Client, Event, Server, Session, SessionRole, SessionSeq};
use crate::settings::ClientSettings;
use crate::settings::StringMap;
use crate::uot::{
    DatagramReader, MAX_DATAGRAM, UotRequest, UotVersion, decode_datagram, encode_datagram,
};

/// A small deterministic RNG (SplitMix64) for fuzz bodies and tests.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Chunk sizes taken from the input's first byte, so input is fed split.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let step = usize::from(data.first().copied().unwrap_or(0) % 17) + 1;
    data.chunks(step)
}

/// Frame decoder: decoding whole or in chunks gives the same frames, every frame
/// re-encodes to the bytes it came from, and buffered data stays bounded.
pub fn frame_decoder(data: &[u8]) {
    let limits = if data.first().is_some_and(|b| b & 0x80 != 0) {
        FrameLimits::default()
    } else {
        FrameLimits::UNLIMITED
    };
    let mut whole = BytesMut::from(data);
    let mut dec = FrameDecoder::new(limits);
    let mut frames = Vec::new();
    let mut consumed = 0;
    let whole_err = loop {
        match dec.decode(&mut whole) {
            Ok(Some(f)) => {
                consumed += f.encoded_len();
                frames.push(f);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut reencoded = Vec::new();
    for f in &frames {
        assert!(f.data.len() <= MAX_FRAME_DATA);
        assert!(f.data.len() <= limits.max_for(f.cmd));
        f.encode(&mut reencoded).expect("decoded frame re-encodes");
    }
    assert_eq!(&reencoded[..], &data[..consumed]);

    let mut dec = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut split_frames = Vec::new();
    let mut split_err = None;
    'outer: for chunk in chunks(data) {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => split_frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    split_err = Some(e);
                    break 'outer;
                }
            }
        }
        assert!(buf.len() <= MAX_FRAME_DATA + 16 + 7);
    }
    assert_eq!(frames, split_frames);
    assert_eq!(whole_err, split_err);
}

/// Padding scheme: lenient parse and strict validation never panic, strict
/// implies lenient, and every plan keeps payload bytes in order with records
/// sized by the rules.
pub fn padding_scheme(data: &[u8]) {
    let Ok(s) = PaddingScheme::parse(data.to_vec()) else {
        // Strict never accepts what lenient refuses.
        assert!(validate_strict_text(data).is_err());
        return;
    };
    let _ = s.validate_strict();
    let mut rng = SplitMix(data.len() as u64);
    let _ = s.preamble_padding_len(&mut rng);
    let mut shaper = Shaper::new();
    for len in [0usize, 1, 7, 100, 1000, 70_000, 3] {
        let pkt = shaper.next_packet();
        let plan = shaper.plan(&s, len, &mut rng);
        check_plan(&s, pkt, len, &plan);
    }
}

/// Checks one plan against the scheme rules.
pub fn check_plan(scheme: &PaddingScheme, pkt: u32, len: usize, plan: &[Record]) {
    let payload: usize = plan.iter().map(|r| r.payload).sum();
    assert_eq!(payload, len, "payload bytes lost or duplicated");
    let sizes: Vec<(u32, u32)> = scheme
        .items(pkt)
        .iter()
        .filter_map(|i| match i {
            Item::Size { min, max } => Some((*min, *max)),
            Item::Check => None,
        })
        .collect();
    for r in plan {
        assert!(!r.is_empty() || len == 0);
        if let Some(p) = r.padding {
            // A record with padding is either exactly its drawn size (mixed) or
            // the drawn size plus a header (padding only).
            let drawn = if r.payload == 0 {
                usize::from(p)
            } else {
                r.len()
            };
            assert!(
                sizes.iter().any(|&(min, max)| drawn >= min as usize
                    && (drawn < max as usize || drawn == min as usize)),
                "record {r:?} matches no size of packet {pkt}"
            );
            assert!(r.payload == 0 || usize::from(p) + HEADER_LEN + r.payload == r.len());
        }
    }
}

/// Settings text: parsing never panics, and a parsed map re-encodes to text that
/// parses to the same map.
pub fn settings(data: &[u8]) {
    let m = StringMap::parse(data);
    if data.len() <= MAX_FRAME_DATA {
        let text = m.encode().expect("a parsed map is encodable");
        assert!(text.len() <= data.len());
        assert_eq!(StringMap::parse(&text), m);
    }
    let _ = m.get_int("v");
    let _ = crate::settings::server_version(&m);
}

/// Preamble verifier: never panics; accepts only the configured hash; a
/// rejection replays every byte; split delivery reaches the same verdict.
pub fn preamble(data: &[u8]) {
    let auth = Authenticator::new([("a", "letmein"), ("b", "password")]);
    // Half of the inputs get a valid hash in front so the padding paths run.
    let mut input = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 1) {
        let pad = data.get(1).map_or(0, |&b| u16::from(b));
        encode_preamble(&PasswordHash::of("letmein"), pad, &mut input);
        input.truncate(input.len().min(data.len() + 34));
    }
    input.extend_from_slice(data);
    let mut whole = BytesMut::from(&input[..]);
    let verdict = auth.verify(&mut whole);
    match &verdict {
        AuthVerdict::Accepted { consumed, .. } => {
            assert!(*consumed >= 34);
            assert_eq!(&input[..32], PasswordHash::of("letmein").as_bytes());
            assert_eq!(&whole[..], &input[*consumed..]);
        }
        AuthVerdict::Rejected { replay, .. } => {
            assert_eq!(&replay[..], &input[..]);
            assert!(whole.is_empty());
        }
        AuthVerdict::NeedMore { needed } => {
            assert!(*needed > input.len());
            assert_eq!(&whole[..], &input[..]);
        }
    }
    let mut buf = BytesMut::new();
    let mut split = None;
    for chunk in chunks(&input) {
        buf.extend_from_slice(chunk);
        match auth.verify(&mut buf) {
            AuthVerdict::NeedMore { .. } => {}
            v => {
                split = Some(v);
                break;
            }
        }
    }
    match (verdict, split) {
        (AuthVerdict::NeedMore { .. }, None) => {}
        (
            AuthVerdict::Accepted { user, consumed },
            Some(AuthVerdict::Accepted {
                user: u2,
                consumed: c2,
            }),
        ) => {
            assert_eq!((user, consumed), (u2, c2));
        }
        (AuthVerdict::Rejected { .. }, Some(AuthVerdict::Rejected { replay, .. })) => {
            assert!(input.starts_with(&replay));
        }
        (a, b) => panic!("whole {a:?} vs split {b:?}"),
    }
}

/// Addresses (both type tables) and UoT items: decoding never panics and what
/// decodes re-encodes to the same bytes.
pub fn address(data: &[u8]) {
    for table in [AddrTable::Socks, AddrTable::Uot] {
        if let Ok((a, n)) = SocksAddr::decode_with(table, data) {
            let mut v = Vec::new();
            a.encode_with(table, &mut v)
                .expect("decoded address re-encodes");
            assert_eq!(&v[..], &data[..n]);
            let _ = a.normalized().to_string();
        }
    }
    if let Ok((r, n)) = UotRequest::decode(data) {
        let mut v = Vec::new();
        r.encode(&mut v).expect("decoded request re-encodes");
        assert_eq!(&v[..], &data[..n]);
    }
    for with_addr in [false, true] {
        if let Ok(d) = decode_datagram(data, with_addr, 1500) {
            let mut v = Vec::new();
            encode_datagram(d.dest.as_ref(), &data[d.payload.clone()], &mut v)
                .expect("decoded datagram re-encodes");
            assert_eq!(&v[..], &data[..d.consumed]);
        }
    }
}

/// Small limits so that fuzzing reaches the caps.
fn fuzz_limits(flags: u8) -> SessionLimits {
    let mut l = SessionLimits::default();
    if flags & 0x10 != 0 {
        l.stream_recv_buffer = 4096;
        l.session_recv_buffer = 16 * 1024;
        l.stream_send_buffer = 4096;
        l.session_send_buffer = 16 * 1024;
        l.control_queue = 1024;
        l.max_streams = 8;
    }
    l
}

/// What the fuzzing owner does that only one role can do.
trait RoleOwner {
    /// Server: answers `Event::StreamOpened`.
    fn answer_open(&mut self, _id: StreamId, _verdict: Result<(), String>) {}
    /// Client: opens a stream.
    fn try_open(&mut self, _now: Instant) -> Option<StreamId> {
        None
    }
}

impl RoleOwner for Session<Server> {
    fn answer_open(&mut self, id: StreamId, verdict: Result<(), String>) {
        let _ = self.accept_stream(id, verdict);
    }
}

impl RoleOwner for Session<Client> {
    fn try_open(&mut self, now: Instant) -> Option<StreamId> {
        self.open_stream(now, &SocksAddr::domain("fuzz.example", 80))
            .ok()
    }
}

/// Drives a session with input cut from `data`, acting as a busy owner: it
/// accepts or refuses streams, reads, writes, finishes, sends heartbeats and lets
/// time pass. Asserts the memory caps and the event contract throughout.
fn drive_session<R: SessionRole>(s: &mut Session<R>, input: &[u8], ctl: &[u8], epoch: Instant)
where
    Session<R>: RoleOwner,
{
    let mut now = epoch;
    let mut out = BytesMut::new();
    let mut closed = false;
    let mut ctl = ctl.iter().copied().cycle();
    let mut rest = input;
    let max_input = 4096;
    let mut opened: Vec<StreamId> = Vec::new();
    for round in 0..2048 {
        // Output, then events.
        for _ in 0..10_000 {
            out.clear();
            if s.poll_transmit(now, &mut out).is_none() {
                break;
            }
        }
        while let Some(ev) = s.poll_event() {
            assert!(!closed, "event after Closed: {ev:?}");
            match ev {
                Event::Closed { .. } => closed = true,
                Event::StreamOpened { id, .. } => {
                    let verdict = if ctl.next().unwrap_or(0) & 3 == 0 {
                        Err("refused by fuzz owner".into())
                    } else {
                        Ok(())
                    };
                    s.answer_open(id, verdict);
                    opened.push(id);
                }
                Event::StreamReadable { id } if ctl.next().unwrap_or(0) & 7 != 0 => {
                    for _ in 0..64 {
                        match s.read(now, id) {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                let _ = s.finish(id);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ => {}
            }
        }
        s.assert_invariants(max_input);
        if closed {
            assert!(s.is_closed());
            return;
        }
        let op = ctl.next().unwrap_or(0);
        match op % 8 {
            0 => {
                let dt = Duration::from_millis(u64::from(ctl.next().unwrap_or(0)) * 40);
                now += dt;
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                    assert!(s.poll_timeout().is_none_or(|t| t > now));
                }
            }
            1 => {
                if let Some(&id) = opened.get(usize::from(op >> 3) % opened.len().max(1)) {
                    static FILL: [u8; 2048] = [0x5a; 2048];
                    let n = usize::from(ctl.next().unwrap_or(0)) * 8;
                    let _ = s.write(id, &FILL[..n]);
                }
            }
            2 => {
                if let Some(&id) = opened.get(usize::from(op >> 3) % opened.len().max(1)) {
                    let _ = s.finish(id);
                }
            }
            3 => s.send_heartbeat(now, Some(Duration::from_secs(1))),
            4 => opened.extend(s.try_open(now)),
            5 => {
                // Read every known stream (owner catching up).
                for &id in &opened {
                    while let Ok(Some(_)) = s.read(now, id) {}
                }
            }
            _ => {
                if rest.is_empty() {
                    if round > 64 {
                        s.handle_eof(now);
                    }
                    continue;
                }
                if !s.wants_read() {
                    continue;
                }
                let n = (usize::from(op) * 37 % max_input).max(1).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                s.handle_input(now, BytesMut::from(chunk));
            }
        }
    }
}

fn split_input(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let data = data.get(1..).unwrap_or(&[]);
    let ctl_len = (usize::from(flags & 0x0f) * 4).min(data.len());
    let (ctl, input) = data.split_at(ctl_len);
    (
        flags,
        if ctl.is_empty() { &[1, 6, 6, 0] } else { ctl },
        input,
    )
}

/// A server session fed a (mostly) valid preamble and Settings, then arbitrary
/// frames; the owner acts on events. Never panics, stays within its caps.
pub fn server_session(data: &[u8], epoch: Instant) {
    let (flags, ctl, input) = split_input(data);
    let mut cfg = ServerConfig::new(crate::auth::Authenticator::single("letmein"));
    cfg.limits = fuzz_limits(flags);
    let mut s = Session::server(Arc::new(cfg), [1; 32], epoch).expect("valid fuzz config");
    let mut wire = Vec::new();
    if flags & 0x20 == 0 {
        encode_preamble(
            &PasswordHash::of("letmein"),
            u16::from(flags >> 6) * 3,
            &mut wire,
        );
        if flags & 0x40 == 0 {
            let text = ClientSettings {
                version: 2,
                client: "fuzz".into(),
                padding_md5: if flags & 0x80 == 0 {
                    crate::padding::PaddingScheme::default_scheme().md5_hex()
                } else {
                    String::new()
                },
            }
            .encode()
            .unwrap_or_default();
            let _ = encode_frame(&mut wire, Command::Settings, StreamId::SESSION, &text);
        }
    }
    wire.extend_from_slice(input);
    drive_session(&mut s, &wire, ctl, epoch);
}

/// A client session fed arbitrary server bytes while its owner opens streams,
/// writes, reads and sends heartbeats. Never panics, stays within its caps.
pub fn client_session(data: &[u8], epoch: Instant) {
    let (flags, ctl, input) = split_input(data);
    let mut cfg = ClientConfig::new("letmein");
    cfg.limits = fuzz_limits(flags);
    let mut s = Session::client(
        Arc::new(cfg),
        SessionSeq(1),
        Arc::new(PaddingScheme::default_scheme()),
        [2; 32],
        epoch,
    )
    .expect("valid fuzz config");
    if flags & 0x20 == 0 {
        let _ = s.open_stream(epoch, &SocksAddr::domain("example.com", 443));
    }
    drive_session(&mut s, input, ctl, epoch);
}

/// Reads numbers from fuzz input; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A setting whose smallest accepted value is `min`: mostly values
    /// `validate` accepts, with its edges (exactly `min`, just above it,
    /// exactly [`MAX_DURATION`](crate::pool::MAX_DURATION), just below it),
    /// sometimes below `min` or above the maximum, up to `Duration::MAX` (a
    /// configuration error).
    fn duration(&mut self, min: Duration) -> Duration {
        let max = crate::pool::MAX_DURATION;
        match self.u8() % 16 {
            0..=2 => min,
            3 | 4 => min + Duration::from_millis(u64::from(self.u8())),
            5 => Duration::from_millis(u64::from(self.u16())),
            6..=8 => Duration::from_secs(u64::from(self.u16())),
            9 | 10 => Duration::from_millis(u64::from(self.u32())),
            11 => max,
            12 => max.saturating_sub(Duration::from_millis(u64::from(self.u16()))),
            13 => Duration::from_nanos(self.u64() % (max.as_nanos() as u64 + 1)),
            14 => max + Duration::from_nanos(1 + u64::from(self.u16())),
            _ => match self.u8() {
                0 => Duration::MAX,
                b => Duration::from_secs(u64::MAX >> (b % 32)),
            },
        }
    }

    fn opt_duration(&mut self, min: Duration) -> Option<Duration> {
        (self.u8() & 1 == 1).then(|| self.duration(min))
    }

    /// A count: small, with a large edge value.
    fn count(&mut self, large: usize) -> usize {
        match self.u8() {
            0xf0.. => large,
            b => usize::from(b % 8),
        }
    }

    /// A time step: milliseconds to a century.
    fn step(&mut self) -> Duration {
        match self.u8() % 4 {
            0 => Duration::from_millis(u64::from(self.u8())),
            1 => Duration::from_millis(u64::from(self.u16())),
            2 => Duration::from_secs(u64::from(self.u16())),
            _ => Duration::from_secs(u64::from(self.u32())),
        }
    }
}

/// What the owner knows about a session it got from the pool.
#[derive(Clone, Copy, Debug)]
enum PoolSess {
    Dialing {
        prewarm: bool,
    },
    /// Established at `at`; the owner runs `streams` streams on it (0: idle
    /// since `since`); its last heartbeat was at `beat`.
    Open {
        streams: usize,
        since: Instant,
        at: Instant,
        beat: Option<Instant>,
    },
}

impl PoolSess {
    fn idle(&self) -> bool {
        matches!(self, PoolSess::Open { streams: 0, .. })
    }
}

/// The pool call whose actions are being drained.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PoolCall {
    New,
    Checkout,
    Established,
    DialFailed,
    Checkin,
    SessionClosed,
    Ack,
    Timeout,
    Shutdown,
}

/// Drives a [`Pool`](crate::pool::Pool) like an adapter does (every action
/// drained after every call) and keeps its own account of the sessions.
struct PoolDriver {
    pool: crate::pool::Pool,
    cfg: crate::pool::PoolConfig,
    live: std::collections::BTreeMap<SessionSeq, PoolSess>,
    dead: std::collections::BTreeSet<SessionSeq>,
    next_seq: u64,
    /// Expected counters; the gauges are recomputed from `live`.
    stats: crate::pool::PoolStats,
    /// The pool's clock: the latest time passed in.
    now: Instant,
    /// The next maintenance run (`None`: not representable).
    next_check: Option<Instant>,
    /// Earliest and latest end of the pre-warm back-off (`None`: not
    /// representable).
    backoff: Option<(Option<Instant>, Option<Instant>)>,
    shut: bool,
}

impl PoolDriver {
    fn advance(&mut self, at: Instant) -> Instant {
        self.now = self.now.max(at);
        self.now
    }

    fn count(&self, f: impl Fn(&PoolSess) -> bool) -> usize {
        self.live.values().filter(|s| f(s)).count()
    }

    fn pick(&self, i: u8, f: impl Fn(&PoolSess) -> bool) -> Option<SessionSeq> {
        let seqs: Vec<SessionSeq> = self
            .live
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(q, _)| *q)
            .collect();
        (!seqs.is_empty()).then(|| seqs[usize::from(i) % seqs.len()])
    }

    /// Any seq: never issued, live, closed or not issued yet.
    fn any(&self, i: u16) -> SessionSeq {
        SessionSeq(u64::from(i) % (self.next_seq + 2))
    }

    fn fresh(&mut self, seq: SessionSeq) {
        assert!(
            seq.0 >= self.next_seq && !self.dead.contains(&seq) && !self.live.contains_key(&seq),
            "{seq:?} is not new (next {})",
            self.next_seq
        );
        self.next_seq = seq.0 + 1;
    }

    /// Shortest and longest possible lifetime of a session.
    fn lifetime(&self) -> Option<(Duration, Duration)> {
        let l = self.cfg.max_session_lifetime?;
        let j = self.cfg.lifetime_jitter;
        let min = crate::pool::MIN_INTERVAL;
        Some((
            l.saturating_sub(j / 2).max(min),
            l.saturating_add(j).max(min),
        ))
    }

    /// The idle sweep the next maintenance run must do: the closes, newest
    /// first. Kept expired sessions restart their idle time.
    fn sweep(&mut self, now: Instant) -> Vec<SessionSeq> {
        let mut close = Vec::new();
        if self.cfg.disable_reuse {
            return close;
        }
        let expire = now.checked_sub(self.cfg.idle_timeout);
        let mut kept = 0;
        for (seq, s) in self.live.iter_mut().rev() {
            let PoolSess::Open {
                streams: 0, since, ..
            } = s
            else {
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
        close
    }

    /// Drains the actions of `call` and checks each against what the owner knows.
    fn actions(&mut self, call: PoolCall, maintained: bool, sweep: Vec<SessionSeq>) {
        use crate::pool::{CloseReason, PoolAction};
        let now = self.now;
        let mut sweep = sweep.into_iter();
        let mut dials = 0;
        let mut beaten = std::collections::BTreeSet::new();
        while let Some(a) = self.pool.poll_action() {
            match a {
                PoolAction::Dial { seq } => {
                    assert!(call == PoolCall::New || maintained, "{a:?} from {call:?}");
                    assert!(
                        !self.shut && !self.cfg.disable_reuse && self.cfg.ensure_idle > 0,
                        "{a:?}: pre-warming is off"
                    );
                    if let Some((lb, _)) = self.backoff {
                        assert!(lb.is_some_and(|lb| now >= lb), "{a:?} while backing off");
                    }
                    self.fresh(seq);
                    self.live.insert(seq, PoolSess::Dialing { prewarm: true });
                    self.stats.dials += 1;
                    self.stats.prewarm_dials += 1;
                    dials += 1;
                }
                PoolAction::Close { seq, reason } => {
                    let Some(s) = self.live.remove(&seq) else {
                        panic!("{a:?} from {call:?}: unknown or closed session");
                    };
                    self.dead.insert(seq);
                    *self.stats.closed.entry(reason).or_default() += 1;
                    match reason {
                        CloseReason::Shutdown => assert!(
                            self.shut
                                && matches!(
                                    call,
                                    PoolCall::Shutdown | PoolCall::Checkin | PoolCall::Established
                                ),
                            "{a:?} from {call:?}"
                        ),
                        CloseReason::NoReuse => assert!(
                            self.cfg.disable_reuse && call == PoolCall::Checkin && s.idle(),
                            "{a:?} from {call:?}: {s:?}"
                        ),
                        CloseReason::IdleTimeout => {
                            assert_eq!(Some(seq), sweep.next(), "{a:?}: not the expected sweep")
                        }
                        CloseReason::Lifetime => {
                            let (PoolSess::Open { at, .. }, Some((min, _))) = (s, self.lifetime())
                            else {
                                panic!("{a:?} from {call:?}: {s:?}");
                            };
                            assert!(
                                s.idle() && matches!(call, PoolCall::Checkin | PoolCall::Timeout),
                                "{a:?} from {call:?}: {s:?}"
                            );
                            assert!(
                                at.checked_add(min).is_some_and(|t| t <= now),
                                "{a:?}: established {:?} ago, lifetime at least {min:?}",
                                now - at
                            );
                        }
                    }
                }
                PoolAction::Heartbeat { seq, timeout } => {
                    let Some(h) = self.cfg.heartbeat else {
                        panic!("{a:?}: heartbeats are off");
                    };
                    assert_eq!(call, PoolCall::Timeout, "{a:?}");
                    assert_eq!(timeout, self.cfg.heartbeat_timeout, "{a:?}");
                    assert!(beaten.insert(seq), "{a:?} twice in one call");
                    let Some(PoolSess::Open { at, beat, .. }) = self.live.get_mut(&seq) else {
                        panic!("{a:?}: not an established session");
                    };
                    if beat.is_none() {
                        let first = at.checked_add(h - h / 5);
                        assert!(
                            first.is_some_and(|t| t <= now),
                            "{a:?}: first beat {:?} after the handshake (interval {h:?})",
                            now - *at
                        );
                    }
                    *beat = Some(now);
                    self.stats.heartbeats += 1;
                }
            }
        }
        assert_eq!(
            sweep.next(),
            None,
            "{call:?}: an expired idle session survived"
        );

        // Ensure: never more pre-warm dials than the target, the deficit dialled
        // at once unless backing off.
        let ensure = self.cfg.ensure_idle;
        let idle = self.count(PoolSess::idle);
        let prewarm = self.count(|s| matches!(s, PoolSess::Dialing { prewarm: true }));
        assert!(
            prewarm <= ensure,
            "{prewarm} pre-warm dials, target {ensure}"
        );
        let rate = self.cfg.ensure_create_rate;
        if dials > 0 {
            assert!(
                idle + prewarm <= ensure,
                "overshoot: {idle} idle, {prewarm} dialling"
            );
            assert!(rate == 0 || dials <= rate, "{dials} dials, rate {rate}");
        }
        if call == PoolCall::New || maintained {
            let on = ensure > 0 && !self.cfg.disable_reuse && !self.shut;
            let mut want = if on {
                ensure.saturating_sub(idle + prewarm - dials)
            } else {
                0
            };
            if rate > 0 {
                want = want.min(rate);
            }
            let (backing_off, maybe) = match self.backoff {
                None => (false, false),
                Some((lb, ub)) => (lb.is_none_or(|lb| now < lb), ub.is_none_or(|ub| now < ub)),
            };
            if backing_off {
                assert_eq!(dials, 0, "dials while backing off");
            } else if !maybe {
                assert_eq!(
                    dials, want,
                    "{idle} idle, {prewarm} dialling, target {ensure}"
                );
            } else {
                assert!(dials == 0 || dials == want, "{dials} dials, deficit {want}");
            }
        }
        if maintained {
            // Lifetime: no idle session outlives its longest lifetime.
            if let Some((_, max)) = self.lifetime() {
                for (seq, s) in &self.live {
                    if let PoolSess::Open { streams: 0, at, .. } = s {
                        assert!(
                            at.checked_add(max).is_none_or(|t| t > now),
                            "{seq:?} idle {:?} after its handshake, lifetime at most {max:?}",
                            now - *at
                        );
                    }
                }
            }
        }
        if call == PoolCall::Timeout && !self.shut {
            // Heartbeats: every established session beats at least once an interval.
            if let Some(h) = self.cfg.heartbeat {
                for (seq, s) in &self.live {
                    if let PoolSess::Open { at, beat, .. } = s {
                        let last = beat.unwrap_or(*at);
                        assert!(
                            last.checked_add(h).is_none_or(|t| t > now),
                            "{seq:?} missed a heartbeat: last {:?} ago, interval {h:?}",
                            now - last
                        );
                    }
                }
            }
        }
    }

    /// Gauges, counters, the idle list and the deadline against the model.
    fn check(&self) {
        let idle = self.count(PoolSess::idle);
        let busy = self.count(|s| matches!(s, PoolSess::Open { streams: 1.., .. }));
        let dialing = self.count(|s| matches!(s, PoolSess::Dialing { .. }));
        let st = self.pool.stats();
        assert_eq!((st.idle, st.busy, st.dialing), (idle, busy, dialing));
        let mut want = self.stats.clone();
        (want.idle, want.busy, want.dialing) = (idle, busy, dialing);
        assert_eq!(st, want);
        let idle_list: Vec<(SessionSeq, Instant)> = self
            .live
            .iter()
            .rev()
            .filter_map(|(q, s)| match s {
                PoolSess::Open {
                    streams: 0, since, ..
                } => Some((*q, *since)),
                _ => None,
            })
            .collect();
        assert_eq!(self.pool.idle_sessions(), idle_list);
        if self.cfg.disable_reuse || self.shut {
            assert_eq!(idle, 0);
        }
        match self.pool.poll_timeout() {
            None => assert!(self.shut, "no deadline while running"),
            Some(t) => {
                assert!(!self.shut, "a deadline after shutdown");
                if let Some(next_check) = self.next_check {
                    assert!(t <= next_check, "maintenance is late");
                    if self.cfg.heartbeat.is_none() {
                        assert_eq!(t, next_check);
                    }
                }
            }
        }
    }

    /// A checkout; with `prefer`, `checkout_preferring` with the sessions
    /// whose sequence number is `prefer` modulo 3 preferred.
    fn checkout(&mut self, at: Instant, prefer: Option<u8>) {
        let reuse = !self.cfg.disable_reuse && !self.shut;
        let newest = |live: &std::collections::BTreeMap<SessionSeq, PoolSess>,
                      f: &dyn Fn(SessionSeq, &PoolSess) -> bool| {
            live.iter().rev().find(|(q, s)| f(**q, s)).map(|(q, _)| *q)
        };
        // The hint looks at the sessions as they are, before the clock.
        let hint = newest(&self.live, &|_, s| s.idle()).filter(|_| reuse);
        assert_eq!(self.pool.next_reuse(), hint, "next_reuse");
        self.advance(at);
        let preferred = |q: SessionSeq| prefer.is_none_or(|k| q.0 % 3 == u64::from(k % 3));
        let c = match prefer {
            None => self.pool.checkout(at),
            Some(_) => self.pool.checkout_preferring(at, preferred),
        };
        let max = self.cfg.max_streams_per_session;
        let idle = |_: SessionSeq, s: &PoolSess| s.idle();
        let shared = |_: SessionSeq, s: &PoolSess| matches!(s, PoolSess::Open { streams, .. } if (1..max).contains(streams));
        // The newest preferred one, else the newest.
        let newest_idle = newest(&self.live, &|q, s| idle(q, s) && preferred(q))
            .or_else(|| newest(&self.live, &idle));
        let newest_shared = newest(&self.live, &|q, s| shared(q, s) && preferred(q))
            .or_else(|| newest(&self.live, &shared));
        match c {
            crate::pool::Checkout::Reuse(seq) => {
                assert!(reuse, "{c:?} without reuse");
                if newest_idle.is_some() {
                    assert_eq!(Some(seq), newest_idle, "{c:?}: not the newest idle session");
                } else if self.cfg.max_session_lifetime.is_none() {
                    assert_eq!(
                        Some(seq),
                        newest_shared,
                        "{c:?}: not the newest shared session"
                    );
                }
                let Some(PoolSess::Open { streams, .. }) = self.live.get_mut(&seq) else {
                    panic!("{c:?}: not an established session");
                };
                assert!(*streams < max, "{c:?}: already carries {streams} streams");
                *streams += 1;
                self.stats.reused += 1;
            }
            crate::pool::Checkout::Dial(seq) => {
                if reuse {
                    assert_eq!(newest_idle, None, "{c:?} while a session is idle");
                    if self.cfg.max_session_lifetime.is_none() {
                        assert_eq!(newest_shared, None, "{c:?} while a session has room");
                    }
                }
                self.fresh(seq);
                self.live.insert(seq, PoolSess::Dialing { prewarm: false });
                self.stats.dials += 1;
            }
        }
        self.actions(PoolCall::Checkout, false, Vec::new());
    }

    fn established(&mut self, seq: SessionSeq, at: Instant) {
        let now = self.advance(at);
        self.pool.established(at, seq);
        if let Some(PoolSess::Dialing { prewarm }) = self.live.get(&seq).copied() {
            let streams = usize::from(!prewarm);
            let beat = None;
            let s = PoolSess::Open {
                streams,
                since: now,
                at: now,
                beat,
            };
            self.live.insert(seq, s);
            self.stats.established += 1;
            self.stats.backoff_failures = 0;
            self.backoff = None;
        }
        self.actions(PoolCall::Established, false, Vec::new());
        assert!(!self.shut || !self.live.contains_key(&seq));
    }

    fn dial_failed(&mut self, seq: SessionSeq, at: Instant) {
        let now = self.advance(at);
        self.pool.dial_failed(at, seq);
        if let Some(PoolSess::Dialing { prewarm }) = self.live.get(&seq).copied() {
            self.live.remove(&seq);
            self.dead.insert(seq);
            self.stats.dial_failures += 1;
            if prewarm {
                let f = self.stats.backoff_failures.saturating_add(1);
                self.stats.backoff_failures = f;
                let base = self
                    .cfg
                    .dial_backoff
                    .saturating_mul(1 << (f - 1).min(20))
                    .min(self.cfg.max_dial_backoff);
                self.backoff = Some((
                    now.checked_add(base - base / 4),
                    now.checked_add(base.saturating_add(base / 4)),
                ));
            }
        }
        self.actions(PoolCall::DialFailed, false, Vec::new());
    }

    fn checkin(&mut self, seq: SessionSeq, at: Instant) {
        let now = self.advance(at);
        self.pool.checkin(at, seq);
        let mut returned = None;
        if let Some(PoolSess::Open {
            streams,
            since,
            at: est,
            ..
        }) = self.live.get_mut(&seq)
        {
            if *streams > 0 {
                *streams -= 1;
                if *streams == 0 {
                    *since = now;
                    returned = Some(*est);
                }
            }
        }
        self.actions(PoolCall::Checkin, false, Vec::new());
        if let Some(est) = returned {
            let expired = self
                .lifetime()
                .is_some_and(|(_, max)| est.checked_add(max).is_some_and(|t| t <= now));
            if self.cfg.disable_reuse || self.shut || expired {
                assert!(
                    !self.live.contains_key(&seq),
                    "{seq:?} kept after its last stream"
                );
            }
        }
    }

    fn session_closed(&mut self, seq: SessionSeq, at: Instant) {
        self.advance(at);
        self.pool.session_closed(at, seq);
        if let Some(s) = self.live.remove(&seq) {
            self.dead.insert(seq);
            match s {
                PoolSess::Dialing { .. } => self.stats.dial_failures += 1,
                PoolSess::Open { .. } => self.stats.died += 1,
            }
        }
        self.actions(PoolCall::SessionClosed, false, Vec::new());
    }

    fn heartbeat_ack(&mut self, seq: SessionSeq, rtt: Duration) {
        self.pool.heartbeat_ack(seq, rtt);
        let s = &mut self.stats;
        s.heartbeat_acks += 1;
        s.heartbeat_rtt_last = Some(rtt);
        s.heartbeat_rtt_min = Some(s.heartbeat_rtt_min.map_or(rtt, |m| m.min(rtt)));
        s.heartbeat_rtt_max = Some(s.heartbeat_rtt_max.map_or(rtt, |m| m.max(rtt)));
        self.actions(PoolCall::Ack, false, Vec::new());
    }

    fn shutdown(&mut self, at: Instant) {
        self.advance(at);
        self.pool.shutdown(at);
        self.shut = true;
        self.actions(PoolCall::Shutdown, false, Vec::new());
        assert!(self.live.is_empty(), "left after shutdown: {:?}", self.live);
    }

    fn handle_timeout(&mut self, at: Instant) {
        let now = self.advance(at);
        let maintained = !self.shut && self.next_check.is_some_and(|t| now >= t);
        let sweep = if maintained {
            self.sweep(now)
        } else {
            Vec::new()
        };
        self.pool.handle_timeout(at);
        if maintained {
            let interval = self.cfg.check_interval;
            self.next_check = (self.next_check)
                .and_then(|t| t.checked_add(interval))
                .filter(|&t| t > now)
                .or_else(|| now.checked_add(interval));
        }
        self.actions(PoolCall::Timeout, maintained, sweep);
        let deadline = self.pool.poll_timeout();
        assert!(
            deadline.is_none_or(|t| t > now),
            "deadline {:?} in the past after handle_timeout",
            now - deadline.unwrap_or(now)
        );
        if let Some(t) = deadline {
            let max = now.checked_add(self.cfg.check_interval);
            assert!(max.is_none_or(|m| t <= m), "deadline beyond one interval");
        }
    }
}

/// The client pool policy, driven like an adapter drives it: the input is a
/// [`PoolConfig`](crate::pool::PoolConfig) (edge values included), a seed and
/// a sequence of owner events (checkouts, handshakes done or failed, streams
/// ended, sessions dying, heartbeat answers, time passing, shutdown), each
/// followed by draining every action. Asserted throughout: the pool accepts
/// exactly what `validate` accepts; gauges and counters match the owner's own
/// account; actions name only live sessions and closed ones never return;
/// checkouts reuse the newest idle session (with a preference, the newest
/// preferred one first), and `next_reuse` names it beforehand; the idle sweep, lifetime, ensure
/// (no overshoot, no dials while backing off) and heartbeat rules hold; after
/// `handle_timeout` the deadline is in the future and at most one check
/// interval away.
pub fn pool(data: &[u8], epoch: Instant) {
    use crate::pool::{MIN_HEARTBEAT_TIMEOUT, MIN_INTERVAL, Pool, PoolConfig};
    let mut r = Input(data);
    let flags = r.u8();
    let cfg = PoolConfig {
        check_interval: r.duration(MIN_INTERVAL),
        idle_timeout: r.duration(MIN_INTERVAL),
        min_idle: r.count(usize::MAX),
        ensure_idle: r.count(64),
        ensure_create_rate: usize::from(r.u8() % 4),
        heartbeat: r.opt_duration(MIN_INTERVAL),
        heartbeat_timeout: r.opt_duration(MIN_HEARTBEAT_TIMEOUT),
        max_session_lifetime: r.opt_duration(MIN_INTERVAL),
        lifetime_jitter: r.duration(Duration::ZERO),
        disable_reuse: flags & 1 != 0,
        max_streams_per_session: match r.u8() % 8 {
            0 => 0,
            n @ 1..=5 => usize::from(n),
            _ => usize::MAX,
        },
        dial_backoff: r.duration(Duration::from_millis(10)),
        max_dial_backoff: r.duration(Duration::ZERO),
    };
    let mut seed = [0; 32];
    SplitMix(r.u64()).fill_bytes(&mut seed);
    let valid = cfg.validate();
    let pool = match Pool::new(cfg.clone(), seed, epoch) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(valid, Err(e), "Pool::new and validate disagree");
            return;
        }
    };
    assert_eq!(valid, Ok(()), "Pool::new accepted an invalid config");
    let mut d = PoolDriver {
        pool,
        next_check: epoch.checked_add(cfg.check_interval),
        cfg,
        live: Default::default(),
        dead: Default::default(),
        next_seq: 1,
        stats: Default::default(),
        now: epoch,
        backoff: None,
        shut: false,
    };
    d.actions(PoolCall::New, false, Vec::new());
    d.check();
    let mut clock = epoch;
    let mut stale = Duration::ZERO;
    for _ in 0..4096 {
        if r.is_empty() {
            break;
        }
        // Usually the latest time; after a stale op an earlier one (the pool
        // clamps it).
        let at = clock.checked_sub(stale).unwrap_or(clock);
        stale = Duration::ZERO;
        match r.u8() % 16 {
            0 | 1 => d.checkout(at, None),
            2 => {
                let k = r.u8();
                d.checkout(at, Some(k))
            }
            3 | 4 => {
                let i = r.u8();
                if let Some(seq) = d.pick(i, |s| matches!(s, PoolSess::Dialing { .. })) {
                    d.established(seq, at);
                }
            }
            5 => {
                let i = r.u8();
                if let Some(seq) = d.pick(i, |s| matches!(s, PoolSess::Dialing { .. })) {
                    d.dial_failed(seq, at);
                }
            }
            6 | 7 => {
                let i = r.u8();
                if let Some(seq) = d.pick(i, |s| matches!(s, PoolSess::Open { streams: 1.., .. })) {
                    d.checkin(seq, at);
                }
            }
            8 => {
                let i = r.u8();
                if let Some(seq) = d.pick(i, |_| true) {
                    d.session_closed(seq, at);
                }
            }
            9 => {
                let seq = d.any(r.u16());
                let rtt = Duration::from_millis(u64::from(r.u16()));
                d.heartbeat_ack(seq, rtt);
            }
            10 | 11 => {
                // Time passes; the owner's timer fires if it is due.
                if let Some(t) = clock.checked_add(r.step()) {
                    clock = t;
                }
                if d.pool.poll_timeout().is_some_and(|t| t <= clock) {
                    d.handle_timeout(clock);
                }
            }
            12 => {
                // The timer fires at the deadline, or a little late.
                let late = Duration::from_millis(u64::from(r.u8()));
                if let Some(t) = d.pool.poll_timeout().and_then(|t| t.checked_add(late)) {
                    clock = clock.max(t);
                }
                d.handle_timeout(clock);
            }
            13 => d.handle_timeout(at),
            14 => stale = Duration::from_millis(u64::from(r.u16())),
            _ => {
                // Owner mistakes and races: calls about any seq (closed, idle,
                // unknown), and shutdown.
                let op = r.u8();
                let seq = d.any(r.u16());
                match op % 8 {
                    0 | 1 => d.checkin(seq, at),
                    2 => d.established(seq, at),
                    3 => d.dial_failed(seq, at),
                    4 | 5 => d.session_closed(seq, at),
                    6 => {}
                    _ => d.shutdown(at),
                }
                if d.dead.contains(&seq) {
                    assert!(!d.pool.contains(seq), "{seq:?} came back");
                }
            }
        }
        d.check();
    }
    for seq in &d.dead {
        assert!(!d.pool.contains(*seq), "{seq:?} came back");
    }
    for seq in d.live.keys() {
        assert!(d.pool.contains(*seq), "{seq:?} went missing");
    }
}

/// UDP over TCP stream reader. The first byte picks the layout (v2 with its
/// request, legacy v1, server replies with or without addresses) and the
/// datagram cap; the rest is the stream, pushed in chunks of pseudo-random
/// sizes. The reader must never panic, keep at most `max_partial` bytes
/// between pushes, yield only datagrams within the cap that re-encode to
/// their stated length, and keep failing the same way once it failed.
pub fn uot(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let cap = [64usize, 1500, MAX_DATAGRAM][usize::from(mode >> 2) % 3];
    let mut reader = match mode & 3 {
        0 => DatagramReader::new(UotVersion::V2),
        1 => DatagramReader::new(UotVersion::V1),
        2 => DatagramReader::replies(true),
        _ => DatagramReader::replies(false),
    }
    .with_max_datagram(cap);
    let mut rng = SplitMix(u64::from(mode));
    let mut failed = None;
    let mut pos = 0;
    while pos < stream.len() {
        let n = 1 + (rng.next_u32() as usize) % 2048;
        let end = (pos + n).min(stream.len());
        reader.push(Bytes::copy_from_slice(&stream[pos..end]));
        pos = end;
        for _ in 0..=stream.len() {
            match reader.next() {
                Ok(Some(d)) => {
                    assert!(failed.is_none(), "a datagram after an error");
                    assert!(d.payload.len() <= cap, "datagram over the cap");
                    let mut v = Vec::new();
                    d.encode(&mut v).expect("a decoded datagram re-encodes");
                    assert_eq!(v.len(), d.encoded_len());
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(prev) = &failed {
                        assert_eq!(prev, &e, "errors are final");
                    }
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            assert!(reader.buffered() <= reader.max_partial(), "partial bound");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Replays every file of `fuzz/corpus/<target>/` through its body.
    #[test]
    fn replay_fuzz_corpus() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        #[allow(clippy::disallowed_methods)]
        let epoch = std::time::Instant::now();
        let server = |d: &[u8]| super::server_session(d, epoch);
        let client = |d: &[u8]| super::client_session(d, epoch);
        let pool = |d: &[u8]| super::pool(d, epoch);
        let endpoint = |d: &[u8]| crate::fuzz_endpoint::endpoint_at(d, epoch);
        type Body<'a> = &'a dyn Fn(&[u8]);
        let targets: [(&str, Body); 10] = [
            ("frame_decoder", &super::frame_decoder),
            ("padding_scheme", &super::padding_scheme),
            ("settings", &super::settings),
            ("preamble", &super::preamble),
            ("address", &super::address),
            ("server_session", &server),
            ("client_session", &client),
            ("pool", &pool),
            ("endpoint", &endpoint),
            ("uot", &super::uot),
        ];
        for (name, body) in targets {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                body(&data);
                n += 1;
            }
            assert!(n > 0, "empty corpus for {name}");
        }
        // Every fuzz target (a `[[bin]]` of fuzz/Cargo.toml) is replayed here.
        let manifest = std::fs::read_to_string(root.join("../Cargo.toml")).unwrap();
        let bins: Vec<&str> = (manifest.split("[[bin]]").skip(1))
            .filter_map(|bin| bin.lines().find_map(|l| l.strip_prefix("name = ")))
            .map(|name| name.trim_matches('"'))
            .collect();
        for bin in &bins {
            assert!(
                targets.iter().any(|(name, _)| name == bin),
                "fuzz target {bin} is not replayed by this test"
            );
        }
        assert_eq!(bins.len(), targets.len(), "fuzz targets: {bins:?}");
    }
}
