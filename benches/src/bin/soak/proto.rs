//! The soak's stream protocol, its seeded randomness and byte verification.
//!
//! A stream starts with a [`Header`] from the client: the stream's id, its
//! seed and how many bytes go each way. The client then sends `up` bytes of
//! the pattern of `mix(seed, UP)` while the server sends `down` bytes of the
//! pattern of `mix(seed, DOWN)`, both at once. Each side checks every byte it
//! receives against the pattern it regenerates from the seed (a mismatch names
//! its offset) and hashes it. Once the server has all `up` bytes it sends a
//! trailer (`K` and the hash of what it received) and closes the stream; the
//! client compares the hash with that of what it sent and expects a clean end
//! of stream after the trailer. A server that finds a wrong byte closes the
//! stream without a trailer (and counts it).
//!
//! The stream's destination (a domain name made from the id) travels in the
//! SYN; the server checks it against the header, so a stream whose data
//! arrived on another stream's SYN is caught too.

use std::fmt;
use std::io;
use std::time::Duration;

use anytls_tokio::SocksAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// Fixed and local.
pub const PASSWORD: &str = "soak-Pw_1";
/// A read or write that makes no progress for this long has stalled.
pub const STALL: Duration = Duration::from_secs(30);

const MAGIC: [u8; 4] = *b"SOAK";
/// Bytes of a [`Header`].
pub const HEADER_LEN: usize = 4 + 4 * 8;
/// The server's trailer: a status byte and the hash of the upload.
pub const TRAILER_LEN: usize = 1 + 8;

/// Sub-seeds: the two directions and the server's write chunking.
pub const UP: u64 = 1;
pub const DOWN: u64 = 2;
pub const SERVER_CHUNKS: u64 = 3;

// ---------------------------------------------------------------------------
// Randomness: SplitMix64, small and good enough for workloads and patterns.

/// One SplitMix64 step of `x`.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed derived from `seed` and a label.
pub fn mix(seed: u64, label: u64) -> u64 {
    splitmix(seed ^ splitmix(label.wrapping_mul(0xa076_1d64_78bd_642f)))
}

/// A seeded generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo + 1;
        if span == 0 {
            return self.next_u64();
        }
        lo + self.next_u64() % span
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// The byte stream of a seed: SplitMix64 outputs, little endian.
pub struct Pattern {
    rng: Rng,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            rng: Rng::new(seed),
            word: [0; 8],
            used: 8,
        }
    }

    /// The next `out.len()` bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while self.used < 8 && i < out.len() {
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let rest = &mut out[i..];
        let mut words = rest.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.rng.next_u64().to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

/// A 64-bit hash of a byte stream, independent of how it is chunked.
pub struct Hasher {
    h: u64,
    word: [u8; 8],
    have: usize,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            h: 0xcbf2_9ce4_8422_2325,
            word: [0; 8],
            have: 0,
            len: 0,
        }
    }
}

impl Hasher {
    fn eat(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29)
            ^ (w >> 17);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while self.have > 0 && !data.is_empty() {
            self.word[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have == 8 {
                self.eat(u64::from_le_bytes(self.word));
                self.have = 0;
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.eat(u64::from_le_bytes(b));
        }
        for &b in words.remainder() {
            self.word[self.have] = b;
            self.have += 1;
        }
    }

    pub fn finish(&self) -> u64 {
        let mut tail = [0u8; 8];
        tail[..self.have].copy_from_slice(&self.word[..self.have]);
        splitmix(self.h ^ splitmix(u64::from_le_bytes(tail) ^ self.len.rotate_left(32)))
    }
}

// ---------------------------------------------------------------------------
// The header.

/// What the client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Worker index in the high 32 bits, the worker's stream number below.
    pub id: u64,
    pub seed: u64,
    /// Bytes from the client.
    pub up: u64,
    /// Bytes from the server.
    pub down: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        for (i, v) in [self.id, self.seed, self.up, self.down].iter().enumerate() {
            b[4 + 8 * i..12 + 8 * i].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<Header> {
        if b[..4] != MAGIC {
            return None;
        }
        let f = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[4 + 8 * i..12 + 8 * i]);
            u64::from_be_bytes(v)
        };
        Some(Header {
            id: f(0),
            seed: f(1),
            up: f(2),
            down: f(3),
        })
    }

    /// The destination the stream is opened to (checked by the server).
    pub fn dest(id: u64) -> SocksAddr {
        SocksAddr::domain(
            format!("w{}-s{}.soak.invalid", id >> 32, id & 0xffff_ffff),
            1 + (id % 65_000) as u16,
        )
    }
}

// ---------------------------------------------------------------------------
// Failures and the two directions.

/// Why a stream did not complete.
#[derive(Debug)]
pub enum Fail {
    /// An I/O error (`what` says where).
    Io(&'static str, io::Error),
    /// No progress for [`STALL`].
    Stalled(&'static str),
    /// A clean end of stream before all bytes arrived.
    EarlyEof {
        what: &'static str,
        got: u64,
        want: u64,
    },
    /// A byte that is not the pattern's.
    Mismatch { what: &'static str, offset: u64 },
    /// Anything else the peer got wrong.
    Protocol(String),
}

impl Fail {
    /// The I/O error, if that is what this is.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            Fail::Io(_, e) => Some(e),
            _ => None,
        }
    }

    /// Data corruption or a protocol violation (never caused by a cut).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Fail::Mismatch { .. } | Fail::Protocol(_))
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Io(what, e) => {
                write!(f, "{what}: {e} (kind {:?}", e.kind())?;
                if let Some(inner) = e.get_ref() {
                    write!(f, ", {inner:?}")?;
                }
                write!(f, ")")
            }
            Fail::Stalled(what) => write!(f, "{what}: no progress for {STALL:?}"),
            Fail::EarlyEof { what, got, want } => {
                write!(f, "{what}: clean end of stream after {got} of {want} bytes")
            }
            Fail::Mismatch { what, offset } => write!(f, "{what}: wrong byte at offset {offset}"),
            Fail::Protocol(m) => f.write_str(m),
        }
    }
}

/// `fut` within [`STALL`].
pub async fn bounded<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, Fail> {
    match timeout(STALL, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Fail::Io(what, e)),
        Err(_) => Err(Fail::Stalled(what)),
    }
}

/// Writes `n` bytes of the pattern of `seed` in chunks of 1..=`max_chunk`
/// bytes (sizes drawn from `chunks`); returns their hash.
pub async fn send_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    n: u64,
    max_chunk: usize,
    chunks: &mut Rng,
) -> Result<u64, Fail> {
    let mut pat = Pattern::new(seed);
    let mut hash = Hasher::default();
    let mut buf = vec![0u8; max_chunk.clamp(1, 1 << 20).min(n.max(1) as usize)];
    let mut left = n;
    // Bounded: every pass writes at least one byte.
    while left > 0 {
        let k = (chunks.range(1, buf.len() as u64).min(left)) as usize;
        pat.fill(&mut buf[..k]);
        hash.update(&buf[..k]);
        bounded("write", w.write_all(&buf[..k])).await?;
        left -= k as u64;
    }
    bounded("flush", w.flush()).await?;
    Ok(hash.finish())
}

/// Reads exactly `n` bytes and checks each against the pattern of `seed`;
/// returns their hash. `progress` is called with the bytes received so far
/// after every read; `pause` (if any) is awaited every few reads (a slow reader).
pub async fn recv_pattern<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    seed: u64,
    n: u64,
    read_buf: usize,
    mut progress: impl FnMut(u64),
    pause: Option<Duration>,
) -> Result<u64, Fail> {
    let mut pat = Pattern::new(seed);
    let mut hash = Hasher::default();
    let size = read_buf.clamp(1, 1 << 20);
    let mut buf = vec![0u8; size];
    let mut want = vec![0u8; size];
    let mut got: u64 = 0;
    let mut reads: u64 = 0;
    // Bounded: every pass reads at least one byte or returns.
    while got < n {
        let cap = (n - got).min(size as u64) as usize;
        let k = bounded(what, r.read(&mut buf[..cap])).await?;
        if k == 0 {
            return Err(Fail::EarlyEof { what, got, want: n });
        }
        pat.fill(&mut want[..k]);
        if buf[..k] != want[..k] {
            let at = buf[..k].iter().zip(&want[..k]).position(|(a, b)| a != b);
            return Err(Fail::Mismatch {
                what,
                offset: got + at.unwrap_or(0) as u64,
            });
        }
        hash.update(&buf[..k]);
        got += k as u64;
        progress(got);
        reads += 1;
        if let Some(p) = pause {
            if reads % 8 == 0 {
                tokio::time::sleep(p).await;
            }
        }
    }
    Ok(hash.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_and_hash_ignore_chunking() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut p = Pattern::new(7);
        let mut h = Hasher::default();
        let mut at = 0;
        for k in [1usize, 3, 8, 13, 0, 64, 911] {
            p.fill(&mut pieces[at..at + k]);
            h.update(&pieces[at..at + k]);
            at += k;
        }
        assert_eq!(whole, pieces);
        let mut h2 = Hasher::default();
        h2.update(&whole);
        assert_eq!(h.finish(), h2.finish());
        whole[500] ^= 1;
        let mut h3 = Hasher::default();
        h3.update(&whole);
        assert_ne!(h.finish(), h3.finish());
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            id: (3 << 32) | 17,
            seed: 99,
            up: 1 << 20,
            down: 5,
        };
        assert_eq!(Header::decode(&h.encode()), Some(h));
    }
}
