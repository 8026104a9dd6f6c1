//! Padding schemes and client-side record shaping.
//!
//! A scheme is `key=value` text (see [`crate::settings`]): `stop=N` and, for
//! packet numbers `K`, a comma-separated list of items that are either `min-max`
//! record sizes (drawn uniformly from `[min, max)`, exactly `min` when equal) or
//! the check mark `c`. The client shapes its first `stop - 1` session writes
//! ("packets" 1, 2, ...; packet 0 is the preamble) into records of those sizes.
//!
//! [`PaddingScheme::parse`] is as lenient as the reference;
//! [`PaddingScheme::validate_strict`] applies the strict rules of the newest Go
//! rewrite so a server operator can be warned. [`Shaper`] turns one write into a
//! [`Record`] plan; all randomness comes from the RNG the caller passes in.

use std::fmt;

use bytes::{BufMut, Bytes};
use md5::{Digest, Md5};
use rand_core::RngCore;

use crate::error::PaddingError;
use crate::frame::{Command, FrameHeader, HEADER_LEN, MAX_FRAME_DATA, StreamId};
use crate::settings::{StringMap, parse_go_int};

/// The current default scheme of every Go implementation (137 bytes, no
/// trailing newline), MD5 `75cff2ad89aadf5e257059ee571ebe11`.
pub const DEFAULT_SCHEME: &str = "stop=8\n0=30-30\n1=100-400\n2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000\n3=9-9,500-1000\n4=500-1000\n5=500-1000\n6=500-1000\n7=500-1000";

/// Longest scheme text the lenient parser takes: what one frame can carry.
pub const MAX_SCHEME_LEN: usize = MAX_FRAME_DATA;
/// Largest record size used; larger sizes in a lenient scheme are clamped to it,
/// so one Waste frame always holds the padding of one record.
pub const MAX_RECORD_SIZE: u32 = MAX_FRAME_DATA as u32;
/// Once a write's plan holds this many bytes, padding-only records that would
/// follow are dropped. Schemes that pass [`PaddingScheme::validate_strict`]
/// never reach it; it stops a hostile scheme from making one write gigabytes long.
pub const MAX_PLAN_BYTES: usize = 128 * 1024;

/// One item of a packet line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Item {
    /// `c`: stop walking the list if the payload is exhausted.
    Check,
    /// A record size from `[min, max)`, or exactly `min` when `min == max`.
    /// Always `1 <= min <= max <= MAX_RECORD_SIZE`.
    Size {
        /// Lower bound (inclusive).
        min: u32,
        /// Upper bound (exclusive unless equal to `min`).
        max: u32,
    },
}

/// A parsed padding scheme together with its raw bytes and their MD5.
#[derive(Clone, PartialEq, Eq)]
pub struct PaddingScheme {
    raw: Bytes,
    md5: [u8; 16],
    stop: u32,
    lines: Vec<(u32, Vec<Item>)>,
}

impl fmt::Debug for PaddingScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaddingScheme")
            .field("md5", &self.md5_hex())
            .field("stop", &self.stop)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

impl Default for PaddingScheme {
    fn default() -> Self {
        PaddingScheme::default_scheme()
    }
}

impl PaddingScheme {
    /// The built-in default scheme.
    pub fn default_scheme() -> PaddingScheme {
        match PaddingScheme::parse(Bytes::from_static(DEFAULT_SCHEME.as_bytes())) {
            Ok(s) => s,
            // The constant is checked by a unit test.
            Err(e) => unreachable!("default padding scheme does not parse: {e}"),
        }
    }

    /// Parses scheme text as leniently as the reference: valid iff it holds at
    /// least one `key=value` line and `stop` is an integer. Items that do not
    /// parse are skipped; sizes above [`MAX_RECORD_SIZE`] are clamped.
    /// The raw bytes are kept unchanged (the MD5 is over them).
    pub fn parse(raw: impl Into<Bytes>) -> Result<PaddingScheme, PaddingError> {
        let raw: Bytes = raw.into();
        if raw.len() > MAX_SCHEME_LEN {
            return Err(PaddingError::TooLong {
                len: raw.len(),
                max: MAX_SCHEME_LEN,
            });
        }
        let map = StringMap::parse(&raw);
        if map.is_empty() {
            return Err(PaddingError::Empty);
        }
        let stop_text = map.get("stop").ok_or(PaddingError::MissingStop)?;
        let stop = parse_go_int(stop_text)
            .ok_or_else(|| PaddingError::BadStop(String::from_utf8_lossy(stop_text).into()))?;
        let mut lines: Vec<(u32, Vec<Item>)> = map
            .iter()
            .filter_map(|(k, v)| Some((canonical_packet_number(k)?, parse_items(v))))
            .collect();
        lines.sort_unstable_by_key(|(k, _)| *k);
        Ok(PaddingScheme {
            md5: Md5::digest(&raw).into(),
            raw,
            // The reference converts with uint32(int): negative values wrap to
            // huge ones (shape "forever"), and so do values above u32::MAX.
            stop: stop as u32,
            lines,
        })
    }

    /// The raw scheme bytes, exactly as configured or received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// MD5 of the raw bytes.
    pub fn md5(&self) -> [u8; 16] {
        self.md5
    }

    /// Lowercase hex MD5, as sent in the client's `padding-md5` setting.
    pub fn md5_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.md5 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        s
    }

    /// Packets `0..stop` are shaped.
    pub fn stop(&self) -> u32 {
        self.stop
    }

    /// The items of packet `pkt`'s line (empty when the scheme has no such line).
    pub fn items(&self, pkt: u32) -> &[Item] {
        match self.lines.binary_search_by_key(&pkt, |(k, _)| *k) {
            Ok(i) => &self.lines[i].1,
            Err(_) => &[],
        }
    }

    /// The preamble padding length: the first item of line 0. A range is drawn
    /// from `[min, max)`; a missing line, an empty one, or a check mark first
    /// gives 0 (the reference would send the broken length 0xFFFF for `c`).
    pub fn preamble_padding_len(&self, rng: &mut impl RngCore) -> u16 {
        match self.items(0).first() {
            // draw() stays within MAX_RECORD_SIZE, which is u16::MAX.
            Some(&Item::Size { min, max }) => u16::try_from(draw(rng, min, max)).unwrap_or(0),
            _ => 0,
        }
    }

    /// Checks the strict rules of the newest Go rewrite. A scheme that fails them
    /// still works with reference clients, but that rewrite's clients reject it.
    pub fn validate_strict(&self) -> Result<(), PaddingError> {
        validate_strict_text(&self.raw)
    }
}

fn canonical_packet_number(key: &[u8]) -> Option<u32> {
    let canonical = match key {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(key).ok()?.parse().ok()
}

fn parse_items(list: &[u8]) -> Vec<Item> {
    list.split(|&b| b == b',')
        .filter_map(|item| {
            if item == b"c" {
                return Some(Item::Check);
            }
            let mut parts = item.split(|&b| b == b'-');
            let (a, b) = (parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let (a, b) = (parse_go_int(a)?, parse_go_int(b)?);
            let (min, max) = (a.min(b), a.max(b));
            if min <= 0 {
                return None;
            }
            let clamp = |v: i64| v.min(i64::from(MAX_RECORD_SIZE)) as u32;
            Some(Item::Size {
                min: clamp(min),
                max: clamp(max),
            })
        })
        .collect()
}

/// Uniform draw from `[min, max)`, or `min` when `min >= max`. Rejection
/// sampling keeps it unbiased.
fn draw(rng: &mut impl RngCore, min: u32, max: u32) -> u32 {
    if max <= min {
        return min;
    }
    let span = max - min;
    // Largest multiple of span that fits; values at or above it are redrawn.
    let zone = u32::MAX - (u32::MAX - span + 1) % span;
    loop {
        let v = rng.next_u32();
        if v <= zone {
            return min + v % span;
        }
    }
}

/// [`PaddingScheme::validate_strict`] on raw text, which need not parse leniently.
pub fn validate_strict_text(raw: &[u8]) -> Result<(), PaddingError> {
    const MAX_STRICT_LEN: usize = 8192;
    if raw.is_empty() {
        return Err(PaddingError::Empty);
    }
    if raw.len() > MAX_STRICT_LEN {
        return Err(PaddingError::TooLong {
            len: raw.len(),
            max: MAX_STRICT_LEN,
        });
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut stop = None;
    let mut total: u64 = 0;
    for (n, line) in raw.split(|&b| b == b'\n').enumerate() {
        let eq = line
            .iter()
            .position(|&b| b == b'=')
            .ok_or(PaddingError::LineWithoutEquals(n + 1))?;
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        if seen.contains(&key) {
            return Err(PaddingError::DuplicateKey(text(key)));
        }
        seen.push(key);
        if key == b"stop" {
            let v = parse_go_int(value).ok_or_else(|| PaddingError::BadStop(text(value)))?;
            if !(1..=256).contains(&v) {
                return Err(PaddingError::StopOutOfRange(v));
            }
            stop = Some(v);
            continue;
        }
        if canonical_packet_number(key).is_none_or(|k| k >= 256) {
            return Err(PaddingError::BadKey(text(key)));
        }
        let items: Vec<&[u8]> = value.split(|&b| b == b',').collect();
        if items.len() > 16 {
            return Err(PaddingError::TooManyItems {
                key: text(key),
                count: items.len(),
            });
        }
        let mut line_sum: u64 = 0;
        for item in items {
            if item == b"c" {
                continue;
            }
            let bad = || PaddingError::BadItem {
                key: text(key),
                item: text(item),
            };
            let dash = item.iter().position(|&b| b == b'-').ok_or_else(bad)?;
            let min = parse_go_int(&item[..dash]).ok_or_else(bad)?;
            let max = parse_go_int(&item[dash + 1..]).ok_or_else(bad)?;
            if min <= 0 || max < min || max > 65535 {
                return Err(bad());
            }
            line_sum += max as u64;
        }
        if line_sum > 128 * 1024 {
            return Err(PaddingError::LineTooLarge {
                key: text(key),
                sum: line_sum,
            });
        }
        total += line_sum;
    }
    if stop.is_none() {
        return Err(PaddingError::MissingStop);
    }
    if total > 1024 * 1024 {
        return Err(PaddingError::SchemeTooLarge(total));
    }
    Ok(())
}

/// One TLS record of a shaped write: `payload` bytes of the write, then, if
/// `padding` is set, a Waste frame with that many zero data bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Record {
    /// Bytes of the write's payload in this record.
    pub payload: usize,
    /// Data length of the trailing Waste frame, if there is one.
    pub padding: Option<u16>,
}

impl Record {
    /// Total record length.
    pub fn len(&self) -> usize {
        self.payload + self.padding.map_or(0, |p| HEADER_LEN + usize::from(p))
    }

    /// Whether the record is empty (only in the plan of an empty write).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the record to `out`: the next `self.payload` bytes of `payload`
    /// (which is advanced past them), then the Waste frame.
    ///
    /// # Panics
    /// If `payload` is shorter than `self.payload` (a plan is always made for the
    /// payload it is applied to).
    pub fn encode(&self, payload: &mut &[u8], out: &mut impl BufMut) {
        let (now, rest) = payload.split_at(self.payload);
        out.put_slice(now);
        *payload = rest;
        if let Some(pad) = self.padding {
            FrameHeader {
                cmd: Command::Waste,
                stream_id: StreamId::SESSION,
                len: pad,
            }
            .encode(out);
            out.put_bytes(0, usize::from(pad));
        }
    }
}

/// Per-session shaping state: which packet comes next and whether shaping is over.
///
/// The scheme is passed to every call, so a scheme received mid-session applies
/// to the remaining packets, as in the Go implementations.
#[derive(Clone, Debug)]
pub struct Shaper {
    next_pkt: u32,
    done: bool,
}

impl Default for Shaper {
    fn default() -> Self {
        Shaper::new()
    }
}

impl Shaper {
    /// A shaper whose next write is packet 1 (packet 0 is the preamble).
    pub fn new() -> Shaper {
        Shaper {
            next_pkt: 1,
            done: false,
        }
    }

    /// Whether shaping has ended for this session (every later write is unshaped).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The number the next shaped write would get.
    pub fn next_packet(&self) -> u32 {
        self.next_pkt
    }

    /// Plans one session write of `len` bytes: the list of records, in order,
    /// each to be written and flushed as its own TLS record. The records' payload
    /// sizes add up to `len`. An unshaped write is one record holding everything
    /// (which the TLS layer may still split if it is large).
    pub fn plan(
        &mut self,
        scheme: &PaddingScheme,
        len: usize,
        rng: &mut impl RngCore,
    ) -> Vec<Record> {
        let whole = Record {
            payload: len,
            padding: None,
        };
        if self.done {
            return vec![whole];
        }
        let pkt = self.next_pkt;
        self.next_pkt = self.next_pkt.wrapping_add(1);
        if pkt >= scheme.stop() {
            self.done = true;
            return vec![whole];
        }
        plan_packet(scheme.items(pkt), len, rng)
    }
}

/// The record plan for one write of `len` bytes under one packet line
/// (section 6.4 of the protocol reference).
pub fn plan_packet(items: &[Item], len: usize, rng: &mut impl RngCore) -> Vec<Record> {
    let mut records = Vec::with_capacity(items.len() + 1);
    let mut remaining = len;
    let mut planned = 0usize;
    for item in items {
        let (min, max) = match *item {
            Item::Check if remaining == 0 => break,
            Item::Check => continue,
            Item::Size { min, max } => (min, max),
        };
        let size = draw(rng, min, max) as usize;
        let record = if remaining > size {
            remaining -= size;
            Record {
                payload: size,
                padding: None,
            }
        } else if remaining > 0 {
            // Mixed record: exactly `size` bytes, unless the Waste frame would not
            // fit (pad <= 0), in which case just the payload.
            let pad = size.checked_sub(remaining + HEADER_LEN).filter(|&p| p > 0);
            let r = Record {
                payload: remaining,
                // size <= MAX_RECORD_SIZE, so pad fits u16.
                padding: pad.map(|p| p as u16),
            };
            remaining = 0;
            r
        } else {
            // Padding only: a Waste frame with `size` data bytes (size + 7 in all).
            if planned >= MAX_PLAN_BYTES {
                break;
            }
            Record {
                payload: 0,
                padding: Some(size as u16),
            }
        };
        planned += record.len();
        records.push(record);
    }
    if remaining > 0 {
        records.push(Record {
            payload: remaining,
            padding: None,
        });
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RNG that returns queued values (then zeros), for exact draws.
    struct Queue(Vec<u32>);
    impl RngCore for Queue {
        fn next_u32(&mut self) -> u32 {
            if self.0.is_empty() {
                0
            } else {
                self.0.remove(0)
            }
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(0)
        }
    }

    /// Draw values that produce the given sizes for items `[min, max)`.
    fn offsets(items: &[(u32, u32)]) -> Queue {
        Queue(items.iter().map(|&(min, want)| want - min).collect())
    }

    #[test]
    fn default_scheme_constants() {
        let s = PaddingScheme::default_scheme();
        assert_eq!(s.raw().len(), 137);
        assert_eq!(s.md5_hex(), "75cff2ad89aadf5e257059ee571ebe11");
        assert_eq!(s.stop(), 8);
        assert_eq!(s.items(1), &[Item::Size { min: 100, max: 400 }]);
        assert_eq!(s.items(2).len(), 9);
        assert_eq!(s.items(8), &[]);
        s.validate_strict().unwrap();
        let nl = PaddingScheme::parse(format!("{DEFAULT_SCHEME}\n").into_bytes()).unwrap();
        assert_eq!(nl.md5_hex(), "305fc37916c150b282ecb61e9ee141d7");
        assert_eq!(
            nl.validate_strict(),
            Err(PaddingError::LineWithoutEquals(10))
        );
    }

    #[test]
    fn vector_11_1_old_default_md5() {
        let old = "stop=8\n0=34-120\n1=100-400\n2=400-500,c,500-1000,c,400-500,c,500-1000,c,500-1000,c,400-500\n3=500-1000\n4=500-1000\n5=500-1000\n6=500-1000\n7=500-1000";
        assert_eq!(old.len(), 143);
        let s = PaddingScheme::parse(old.as_bytes().to_vec()).unwrap();
        assert_eq!(s.md5_hex(), "02492a42f272ec67da83a511666102e6");
    }

    #[test]
    fn lenient_parsing_follows_the_reference() {
        assert_eq!(PaddingScheme::parse(&b""[..]), Err(PaddingError::Empty));
        assert_eq!(PaddingScheme::parse(&b"x"[..]), Err(PaddingError::Empty));
        assert_eq!(
            PaddingScheme::parse(&b"1=5-5"[..]),
            Err(PaddingError::MissingStop)
        );
        assert_eq!(
            PaddingScheme::parse(&b"stop=x"[..]),
            Err(PaddingError::BadStop("x".into()))
        );
        let s = PaddingScheme::parse(
            &b"stop=-1\n01=5-5\n1=9-3,c,0-5,-1-5,a-5,5-5-5,x,7-7, 8-8,+6-6,70000-80000"[..],
        )
        .unwrap();
        assert_eq!(s.stop(), u32::MAX, "negative stop wraps: shape forever");
        assert_eq!(
            s.items(1),
            &[
                Item::Size { min: 3, max: 9 },
                Item::Check,
                Item::Size { min: 7, max: 7 },
                Item::Size { min: 6, max: 6 },
                Item::Size {
                    min: 65535,
                    max: 65535
                },
            ]
        );
        assert_eq!(s.items(0), &[], "01 is not the canonical key of packet 1");
        let s = PaddingScheme::parse(&b"stop=0"[..]).unwrap();
        let mut sh = Shaper::new();
        assert_eq!(sh.plan(&s, 10, &mut Queue(vec![])).len(), 1);
        assert!(sh.is_done());
        let big = vec![b'a'; MAX_SCHEME_LEN + 1];
        assert!(matches!(
            PaddingScheme::parse(big),
            Err(PaddingError::TooLong { .. })
        ));
    }

    #[test]
    fn strict_rules() {
        let bad = [
            ("", PaddingError::Empty),
            ("stop=0", PaddingError::StopOutOfRange(0)),
            ("stop=257", PaddingError::StopOutOfRange(257)),
            ("stop=2\nstop=3", PaddingError::DuplicateKey("stop".into())),
            ("1=5-5", PaddingError::MissingStop),
            ("stop=2\n256=5-5", PaddingError::BadKey("256".into())),
            ("stop=2\n01=5-5", PaddingError::BadKey("01".into())),
            ("stop=2\nfoo=5-5", PaddingError::BadKey("foo".into())),
            (
                "stop=2\n1=0-5",
                PaddingError::BadItem {
                    key: "1".into(),
                    item: "0-5".into(),
                },
            ),
            (
                "stop=2\n1=9-5",
                PaddingError::BadItem {
                    key: "1".into(),
                    item: "9-5".into(),
                },
            ),
            (
                "stop=2\n1=5-65536",
                PaddingError::BadItem {
                    key: "1".into(),
                    item: "5-65536".into(),
                },
            ),
            (
                "stop=2\n1=3-65535,3-65535,3-65535",
                PaddingError::LineTooLarge {
                    key: "1".into(),
                    sum: 196605,
                },
            ),
        ];
        for (text, err) in bad {
            assert_eq!(validate_strict_text(text.as_bytes()), Err(err), "{text:?}");
        }
        let many = format!("stop=2\n1={}", vec!["c"; 17].join(","));
        assert!(matches!(
            validate_strict_text(many.as_bytes()),
            Err(PaddingError::TooManyItems { count: 17, .. })
        ));
        let mut total = String::from("stop=20");
        for k in 0..17 {
            total.push_str(&format!("\n{k}=65535-65535"));
        }
        assert_eq!(
            validate_strict_text(total.as_bytes()),
            Err(PaddingError::SchemeTooLarge(17 * 65535))
        );
        assert!(
            validate_strict_text("stop=3\n0=900-1400\n1=900-1400\n2=900-1400".as_bytes()).is_ok()
        );
    }

    #[test]
    fn preamble_padding_length() {
        let s = PaddingScheme::default_scheme();
        assert_eq!(s.preamble_padding_len(&mut Queue(vec![123])), 30);
        let s = PaddingScheme::parse(&b"stop=1\n0=c,5-5"[..]).unwrap();
        assert_eq!(s.preamble_padding_len(&mut Queue(vec![])), 0);
        let s = PaddingScheme::parse(&b"stop=1"[..]).unwrap();
        assert_eq!(s.preamble_padding_len(&mut Queue(vec![])), 0);
        let s = PaddingScheme::parse(&b"stop=1\n0=x,10-20"[..]).unwrap();
        assert_eq!(s.preamble_padding_len(&mut Queue(vec![9])), 19);
        assert_eq!(
            s.preamble_padding_len(&mut Queue(vec![10])),
            10,
            "max exclusive"
        );
    }

    fn encode(plan: &[Record], payload: &[u8]) -> Vec<Vec<u8>> {
        let mut p = payload;
        let out: Vec<Vec<u8>> = plan
            .iter()
            .map(|r| {
                let mut v = Vec::new();
                r.encode(&mut p, &mut v);
                assert_eq!(v.len(), r.len());
                v
            })
            .collect();
        assert!(p.is_empty());
        out
    }

    #[test]
    fn vector_11_4_shaped_packet_1() {
        let s = PaddingScheme::default_scheme();
        let mut payload = hex::decode("04000000000045763d320a636c69656e743d616e79746c732f302e302e31330a70616464696e672d6d64353d3735636666326164383961616466356532353730353965653537316562653131").unwrap();
        payload.extend(hex::decode("01000000010000").unwrap());
        payload.extend(hex::decode("0200000001000f030b6578616d706c652e636f6d01bb").unwrap());
        assert_eq!(payload.len(), 105);
        let mut sh = Shaper::new();
        let plan = sh.plan(&s, payload.len(), &mut offsets(&[(100, 300)]));
        assert_eq!(
            plan,
            vec![Record {
                payload: 105,
                padding: Some(188)
            }]
        );
        let recs = encode(&plan, &payload);
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.len(), 300);
        assert_eq!(&r[..105], &payload[..]);
        assert_eq!(hex::encode(&r[105..112]), "000000000000bc");
        assert!(r[112..].iter().all(|&b| b == 0));
        assert_eq!(r.len() - 112, 188);
    }

    #[test]
    fn worked_cases_of_11_4() {
        let s = PaddingScheme::default_scheme();
        // Packet 2: a 607-byte write with draws 450, 700.
        let mut sh = Shaper::new();
        let _ = sh.plan(&s, 1, &mut Queue(vec![]));
        let plan = sh.plan(&s, 607, &mut offsets(&[(400, 450), (500, 700)]));
        assert_eq!(
            plan,
            vec![
                Record {
                    payload: 450,
                    padding: None
                },
                Record {
                    payload: 157,
                    padding: Some(536)
                },
            ]
        );
        assert_eq!(plan[1].len(), 700);
        // Packet 3: a FIN (7 bytes) with draws 9, 700.
        // 9-9 is fixed and draws nothing.
        let plan = sh.plan(&s, 7, &mut offsets(&[(500, 700)]));
        assert_eq!(
            plan,
            vec![
                Record {
                    payload: 7,
                    padding: None
                },
                Record {
                    payload: 0,
                    padding: Some(700)
                },
            ]
        );
        assert_eq!(plan[1].len(), 707, "padding-only record is l + 7");
        // Packets 4..=7 shaped, 8 on unshaped for good.
        for pkt in 4..8 {
            assert_eq!(sh.next_packet(), pkt);
            let plan = sh.plan(&s, 2000, &mut Queue(vec![0]));
            assert_eq!(plan.len(), 2);
            assert_eq!(plan[0].len(), 500);
            assert_eq!(plan[1].payload, 1500);
        }
        assert!(!sh.is_done());
        assert_eq!(
            sh.plan(&s, 5, &mut Queue(vec![])),
            vec![Record {
                payload: 5,
                padding: None
            }]
        );
        assert!(sh.is_done());
    }

    #[test]
    fn hostile_scheme_is_bounded() {
        let line = vec!["65535-65535"; 3000].join(",");
        let s = PaddingScheme::parse(format!("stop=5\n1={line}").into_bytes()).unwrap();
        let plan = plan_packet(s.items(1), 10, &mut Queue(vec![]));
        let total: usize = plan.iter().map(Record::len).sum();
        assert!(total <= MAX_PLAN_BYTES + 65535 + HEADER_LEN, "{total}");
    }

    #[test]
    fn draw_is_in_range_and_unbiased_bounds() {
        let mut q = Queue(vec![u32::MAX, 0, 1, 2]);
        // u32::MAX is in the rejection zone for span 3 (2^32 % 3 == 1).
        assert_eq!(draw(&mut q, 10, 13), 10);
        assert_eq!(draw(&mut q, 10, 13), 11);
        assert_eq!(draw(&mut q, 10, 13), 12);
        assert_eq!(draw(&mut q, 7, 7), 7);
        assert_eq!(draw(&mut Queue(vec![u32::MAX, 5]), 0, u32::MAX), 5);
        assert_eq!(
            draw(&mut Queue(vec![u32::MAX - 1]), 0, u32::MAX),
            u32::MAX - 1
        );
    }
}
