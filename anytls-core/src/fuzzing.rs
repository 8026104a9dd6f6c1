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
use crate::session::{Event, Session, SessionSeq};
use crate::settings::ClientSettings;
use crate::settings::StringMap;
use crate::uot::{UotRequest, decode_datagram, encode_datagram};

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

/// Drives a session with input cut from `data`, acting as a busy owner: it
/// accepts or refuses streams, reads, writes, finishes, sends heartbeats and lets
/// time pass. Asserts the memory caps and the event contract throughout.
fn drive_session(s: &mut Session, input: &[u8], ctl: &[u8], epoch: Instant) {
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
                    let _ = s.accept_stream(id, verdict);
                    opened.push(id);
                }
                Event::StreamReadable { id } if ctl.next().unwrap_or(0) & 7 != 0 => {
                    for _ in 0..64 {
                        match s.read(id) {
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
                    let _ = s.write(id, Bytes::from_static(&FILL[..n]));
                }
            }
            2 => {
                if let Some(&id) = opened.get(usize::from(op >> 3) % opened.len().max(1)) {
                    let _ = s.finish(id);
                }
            }
            3 => s.send_heartbeat(now, Some(Duration::from_secs(1))),
            4 if s.is_client() => {
                if let Ok(id) = s.open_stream(now, &SocksAddr::domain("fuzz.example", 80)) {
                    opened.push(id);
                }
            }
            5 => {
                // Read every known stream (owner catching up).
                for &id in &opened {
                    while let Ok(Some(_)) = s.read(id) {}
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
    let mut s = Session::server(Arc::new(cfg), [1; 32], epoch);
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
    );
    if flags & 0x20 == 0 {
        let _ = s.open_stream(epoch, &SocksAddr::domain("example.com", 443));
    }
    drive_session(&mut s, input, ctl, epoch);
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
        type Body<'a> = &'a dyn Fn(&[u8]);
        let targets: [(&str, Body); 7] = [
            ("frame_decoder", &super::frame_decoder),
            ("padding_scheme", &super::padding_scheme),
            ("settings", &super::settings),
            ("preamble", &super::preamble),
            ("address", &super::address),
            ("server_session", &server),
            ("client_session", &client),
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
    }
}
