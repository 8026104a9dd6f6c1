//! Property tests of the incremental UoT reader ([`DatagramReader`]): streams of
//! random datagrams (random addresses and payloads, every mode) fed in random
//! pieces come back exactly, the reader never keeps more than one incomplete
//! item, and garbage never makes it panic or grow.
//!
//! Case counts are sized so that the file runs in about a second in a debug
//! build.

use std::net::{Ipv4Addr, Ipv6Addr};

use anytls_core::addr::{Host, MAX_DOMAIN_LEN, SocksAddr};
use anytls_core::error::UotError;
use anytls_core::uot::{
    Datagram, DatagramReader, MAX_DATAGRAM, UotRequest, UotVersion, encode_datagram,
};
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| Host::Ipv4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| Host::Ipv6(Ipv6Addr::from(o))),
        "[a-z0-9.-]{0,40}".prop_map(Host::Domain),
        Just(Host::Domain("d".repeat(MAX_DOMAIN_LEN))),
    ]
}

fn addr() -> impl Strategy<Value = SocksAddr> {
    (host(), any::<u16>()).prop_map(|(host, port)| SocksAddr { host, port })
}

/// Payloads: mostly small, some large (filled from a cheap pattern).
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64).prop_map(Bytes::from),
        1 => (0..=MAX_DATAGRAM, any::<u8>())
            .prop_map(|(n, b)| (0..n).map(|i| b.wrapping_add(i as u8)).collect::<Bytes>()),
    ]
}

/// Which stream layout to write.
#[derive(Clone, Copy, Debug)]
enum Mode {
    V2Connect,
    V2NonConnect,
    V1,
    ReplyConnect,
    ReplyNonConnect,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::V2Connect),
        Just(Mode::V2NonConnect),
        Just(Mode::V1),
        Just(Mode::ReplyConnect),
        Just(Mode::ReplyNonConnect),
    ]
}

impl Mode {
    fn reader(self) -> DatagramReader {
        match self {
            Mode::V2Connect | Mode::V2NonConnect => DatagramReader::new(UotVersion::V2),
            Mode::V1 => DatagramReader::new(UotVersion::V1),
            Mode::ReplyConnect => DatagramReader::replies(false),
            Mode::ReplyNonConnect => DatagramReader::replies(true),
        }
    }

    fn request(self, dest: SocksAddr) -> Option<UotRequest> {
        match self {
            Mode::V2Connect => Some(UotRequest {
                connect: true,
                dest,
            }),
            Mode::V2NonConnect => Some(UotRequest {
                connect: false,
                dest,
            }),
            _ => None,
        }
    }

    fn with_addr(self) -> bool {
        !matches!(self, Mode::V2Connect | Mode::ReplyConnect)
    }
}

/// Feeds `wire` in pieces ending at `cuts`, draining after each push; checks
/// the buffer bound all along.
fn feed(
    reader: &mut DatagramReader,
    wire: &[u8],
    cuts: &[usize],
) -> Result<Vec<Datagram>, UotError> {
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([&wire.len()]) {
        reader.push(Bytes::copy_from_slice(&wire[at..cut]));
        at = cut;
        // At most one datagram per pushed byte (plus one): bounded.
        for _ in 0..=wire.len() {
            match reader.next()? {
                Some(d) => out.push(d),
                None => break,
            }
        }
        assert!(reader.buffered() <= reader.max_partial());
    }
    Ok(out)
}

fn sorted_cuts(len: usize, picks: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = picks.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(config(256))]

    /// N datagrams of random addresses and payloads, in every layout, split at
    /// random points (including single bytes and empty pieces), come back
    /// exactly and in order; nothing is left over.
    #[test]
    fn datagrams_round_trip_in_any_split(
        mode in mode(),
        dest in addr(),
        items in vec((addr(), payload()), 0..12),
        picks in vec(any::<Index>(), 0..40),
    ) {
        let request = mode.request(dest);
        let mut wire = Vec::new();
        if let Some(r) = &request {
            r.encode(&mut wire).unwrap();
        }
        let expected: Vec<Datagram> = items
            .into_iter()
            .map(|(a, payload)| Datagram { dest: mode.with_addr().then_some(a), payload })
            .collect();
        for d in &expected {
            encode_datagram(d.dest.as_ref(), &d.payload, &mut wire).unwrap();
        }
        let cuts = sorted_cuts(wire.len(), &picks);
        let mut reader = mode.reader();
        let got = feed(&mut reader, &wire, &cuts).unwrap();
        prop_assert_eq!(reader.request(), request.as_ref());
        prop_assert_eq!(reader.with_addr(), Some(mode.with_addr()));
        prop_assert_eq!(got, expected);
        prop_assert_eq!(reader.buffered(), 0);
    }

    /// A payload cap rejects exactly the datagrams over it, whatever the split,
    /// and the datagrams before it still come out.
    #[test]
    fn cap_rejects_only_oversize(
        max in 0usize..2000,
        lens in vec(0usize..2100, 1..8),
        picks in vec(any::<Index>(), 0..10),
    ) {
        let to = SocksAddr::domain("example.com", 53);
        let mut wire = Vec::new();
        UotRequest { connect: false, dest: to.clone() }.encode(&mut wire).unwrap();
        for &n in &lens {
            encode_datagram(Some(&to), &vec![0xa5; n], &mut wire).unwrap();
        }
        let cuts = sorted_cuts(wire.len(), &picks);
        let mut reader = DatagramReader::new(UotVersion::V2).with_max_datagram(max);
        let first_bad = lens.iter().position(|&n| n > max);
        let mut got = Vec::new();
        let mut err = None;
        let mut at = 0;
        for &cut in cuts.iter().chain([&wire.len()]) {
            reader.push(Bytes::copy_from_slice(&wire[at..cut]));
            at = cut;
            loop {
                match reader.next() {
                    Ok(Some(d)) => got.push(d.payload.len()),
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            prop_assert!(reader.buffered() <= reader.max_partial());
            if err.is_some() {
                break;
            }
        }
        match first_bad {
            Some(i) => {
                prop_assert_eq!(&got[..], &lens[..i]);
                prop_assert_eq!(err, Some(UotError::DatagramTooLarge { len: lens[i], max }));
            }
            None => {
                prop_assert_eq!(got, lens);
                prop_assert_eq!(err, None);
            }
        }
    }

    /// Arbitrary bytes in any layout and split: no panic, the buffer bound
    /// holds, an error is final, and the same bytes in one piece give the same
    /// datagrams and verdict.
    #[test]
    fn garbage_never_panics(
        mode in mode(),
        wire in vec(any::<u8>(), 0..600),
        picks in vec(any::<Index>(), 0..20),
    ) {
        let cuts = sorted_cuts(wire.len(), &picks);
        let mut split = mode.reader().with_max_datagram(200);
        let a = feed(&mut split, &wire, &cuts);
        let mut whole = mode.reader().with_max_datagram(200);
        let b = feed(&mut whole, &wire, &[]);
        prop_assert_eq!(&a, &b);
        if let Err(e) = a {
            split.push(Bytes::from_static(b"\0\0"));
            prop_assert_eq!(split.next(), Err(e));
            prop_assert_eq!(split.buffered(), 0);
        }
    }
}
