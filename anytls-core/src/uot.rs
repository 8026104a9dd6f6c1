//! UDP over TCP (sing UoT): the stream layout carried by AnyTLS streams whose
//! destination is [`UOT_V2_MAGIC`] (or the legacy [`UOT_V1_MAGIC`]).
//!
//! Version 2 starts with a request (`is_connect` byte and a SOCKS destination);
//! every datagram is then `u16 length | payload` in connect mode, or
//! `address | u16 length | payload` otherwise, where the address uses the UoT
//! type table ([`AddrTable::Uot`]). Legacy v1 has no request; every datagram
//! carries its address.
//!
//! [`DatagramReader`] takes a UoT byte stream in arbitrary pieces and yields
//! its datagrams (after the v2 request, in the client-to-server direction),
//! with a payload cap and a bounded buffer.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::addr::{AddrTable, Host, SocksAddr};
use crate::error::{AddrError, UotError};

/// Destination host of UoT version 2 streams.
pub const UOT_V2_MAGIC: &str = "sp.v2.udp-over-tcp.arpa";
/// Destination host of legacy UoT version 1 streams.
pub const UOT_V1_MAGIC: &str = "sp.udp-over-tcp.arpa";
/// Largest datagram payload the 16-bit length can carry.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Which UoT version a stream destination asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UotVersion {
    /// Legacy: every datagram carries its address; no request.
    V1,
    /// Current: a request first, then datagrams.
    V2,
}

/// The UoT version of a destination, if it is one of the magic names.
pub fn uot_version(dest: &SocksAddr) -> Option<UotVersion> {
    match &dest.host {
        Host::Domain(d) if d == UOT_V2_MAGIC => Some(UotVersion::V2),
        Host::Domain(d) if d == UOT_V1_MAGIC => Some(UotVersion::V1),
        _ => None,
    }
}

/// The UoT v2 request that opens the stream.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UotRequest {
    /// Connect mode: datagrams carry no address (all go to `dest`).
    pub connect: bool,
    /// The destination (used for every datagram in connect mode).
    pub dest: SocksAddr,
}

fn truncated(e: AddrError, offset: usize) -> UotError {
    match e {
        AddrError::Truncated { have, needed } => UotError::Truncated {
            have: have + offset,
            needed: needed + offset,
        },
        e => UotError::Addr(e),
    }
}

impl UotRequest {
    /// Appends the request.
    pub fn encode(&self, out: &mut impl BufMut) -> Result<(), UotError> {
        // Encode the address first so nothing is written on error.
        let mut addr = Vec::with_capacity(self.dest.encoded_len());
        self.dest.encode(&mut addr)?;
        out.put_u8(u8::from(self.connect));
        out.put_slice(&addr);
        Ok(())
    }

    /// Parses a request from the front of `buf`; returns it and its length.
    pub fn decode(buf: &[u8]) -> Result<(UotRequest, usize), UotError> {
        let connect = match buf.first() {
            None => {
                return Err(UotError::Truncated { have: 0, needed: 1 });
            }
            Some(0) => false,
            Some(1) => true,
            Some(&b) => return Err(UotError::BadConnectFlag(b)),
        };
        let (dest, n) = SocksAddr::decode(&buf[1..]).map_err(|e| truncated(e, 1))?;
        Ok((UotRequest { connect, dest }, n + 1))
    }
}

/// Appends one datagram: with its address (`dest = Some`, non-connect mode and
/// legacy v1) or without (connect mode).
pub fn encode_datagram(
    dest: Option<&SocksAddr>,
    payload: &[u8],
    out: &mut impl BufMut,
) -> Result<(), UotError> {
    let len = u16::try_from(payload.len()).map_err(|_| UotError::DatagramTooLarge {
        len: payload.len(),
        max: MAX_DATAGRAM,
    })?;
    if let Some(dest) = dest {
        let mut addr = Vec::with_capacity(dest.encoded_len());
        dest.encode_with(AddrTable::Uot, &mut addr)?;
        out.put_slice(&addr);
    }
    out.put_u16(len);
    out.put_slice(payload);
    Ok(())
}

/// A datagram found at the front of a buffer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DecodedDatagram {
    /// Its address (non-connect mode and v1), `None` in connect mode.
    pub dest: Option<SocksAddr>,
    /// Where its payload lies in the buffer.
    pub payload: Range<usize>,
    /// Total bytes it used.
    pub consumed: usize,
}

/// Parses one datagram from the front of `buf`. `with_addr` selects the
/// non-connect/v1 layout. Payloads longer than `max_len` are an error (checked
/// from the length field, before the payload arrives).
pub fn decode_datagram(
    buf: &[u8],
    with_addr: bool,
    max_len: usize,
) -> Result<DecodedDatagram, UotError> {
    let (dest, at) = if with_addr {
        match SocksAddr::decode_with(AddrTable::Uot, buf) {
            Ok((a, n)) => (Some(a), n),
            Err(AddrError::BadAddressType(t)) => return Err(UotError::BadAddressType(t)),
            Err(e) => return Err(truncated(e, 0)),
        }
    } else {
        (None, 0)
    };
    let Some(len) = buf.get(at..at + 2) else {
        return Err(UotError::Truncated {
            have: buf.len(),
            needed: at + 2,
        });
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > max_len {
        return Err(UotError::DatagramTooLarge { len, max: max_len });
    }
    let end = at + 2 + len;
    if buf.len() < end {
        return Err(UotError::Truncated {
            have: buf.len(),
            needed: end,
        });
    }
    Ok(DecodedDatagram {
        dest,
        payload: at + 2..end,
        consumed: end,
    })
}

/// One datagram read from a UoT stream.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Datagram {
    /// Its address: where it goes (client to server) or where it came from
    /// (server to client). `None` in connect mode.
    pub dest: Option<SocksAddr>,
    /// The payload.
    pub payload: Bytes,
}

impl Datagram {
    /// Appends it in the UoT layout ([`encode_datagram`]).
    pub fn encode(&self, out: &mut impl BufMut) -> Result<(), UotError> {
        encode_datagram(self.dest.as_ref(), &self.payload, out)
    }

    /// Its encoded length.
    pub fn encoded_len(&self) -> usize {
        self.dest.as_ref().map_or(0, SocksAddr::encoded_len) + 2 + self.payload.len()
    }
}

/// Longest v2 request: connect byte and the longest SOCKS address.
pub const MAX_REQUEST_LEN: usize = 1 + crate::addr::MAX_ENCODED_LEN;

/// What the reader expects next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// The v2 request.
    Request,
    /// Datagrams, with (`true`) or without their address.
    Datagrams { with_addr: bool },
}

/// An incremental reader of a UoT byte stream: feed it the stream's bytes in
/// any pieces with [`push`](Self::push), take datagrams with
/// [`next`](Self::next).
///
/// * [`DatagramReader::new`] reads what a client sends: for v2 the request
///   first ([`request`](Self::request)), then datagrams in the mode it asks
///   for; for legacy v1 datagrams with addresses at once.
/// * [`DatagramReader::replies`] reads what a server sends back: datagrams
///   only, with addresses (non-connect mode and v1) or without (connect mode).
///
/// Payloads longer than [`max_datagram`](Self::max_datagram) are an error,
/// detected from the length field before the payload arrives, so the bytes the
/// reader keeps of an incomplete item never exceed
/// [`max_partial`](Self::max_partial) (one request, or one datagram header and
/// its largest payload). Complete datagrams are slices of the pushed chunks
/// (no copy) unless they straddle two pushes.
///
/// Errors are final: once [`next`](Self::next) returned one, it returns the
/// same error again; the stream is malformed and should be closed.
#[derive(Clone, Debug)]
pub struct DatagramReader {
    expect: Expect,
    request: Option<UotRequest>,
    max_datagram: usize,
    /// The start of an incomplete item, copied out of earlier pushes.
    partial: BytesMut,
    /// Pushed bytes not looked at yet (after `partial`).
    rest: Bytes,
    failed: Option<UotError>,
}

impl DatagramReader {
    /// A reader of the client-to-server direction of a stream of `version`,
    /// with the 65535-byte payload cap.
    pub fn new(version: UotVersion) -> DatagramReader {
        let expect = match version {
            UotVersion::V2 => Expect::Request,
            UotVersion::V1 => Expect::Datagrams { with_addr: true },
        };
        DatagramReader::with_expect(expect)
    }

    /// A reader of the server-to-client direction: datagrams with their
    /// (sender) address (`with_addr`: v2 non-connect mode and v1) or without
    /// (v2 connect mode). No request.
    pub fn replies(with_addr: bool) -> DatagramReader {
        DatagramReader::with_expect(Expect::Datagrams { with_addr })
    }

    fn with_expect(expect: Expect) -> DatagramReader {
        DatagramReader {
            expect,
            request: None,
            max_datagram: MAX_DATAGRAM,
            partial: BytesMut::new(),
            rest: Bytes::new(),
            failed: None,
        }
    }

    /// Sets the payload cap (at most, and by default, [`MAX_DATAGRAM`]).
    pub fn with_max_datagram(mut self, max: usize) -> DatagramReader {
        self.max_datagram = max.min(MAX_DATAGRAM);
        self
    }

    /// The payload cap.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// The most bytes the reader keeps of an incomplete item once
    /// [`next`](Self::next) has returned `Ok(None)`.
    pub fn max_partial(&self) -> usize {
        let datagram = crate::addr::MAX_ENCODED_LEN + 2 + self.max_datagram;
        datagram.max(MAX_REQUEST_LEN)
    }

    /// Bytes pushed and not yet returned as datagrams.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.rest.len()
    }

    /// The v2 request, once it has been read.
    pub fn request(&self) -> Option<&UotRequest> {
        self.request.as_ref()
    }

    /// Whether datagrams carry addresses: `Some(true)` for v1, v2 non-connect
    /// mode and non-connect replies, `Some(false)` in connect mode, `None`
    /// while the v2 request has not been read.
    pub fn with_addr(&self) -> Option<bool> {
        match self.expect {
            Expect::Request => None,
            Expect::Datagrams { with_addr } => Some(with_addr),
        }
    }

    /// Appends stream bytes. Call [`next`](Self::next) until it returns
    /// `Ok(None)` before pushing more, so that only an incomplete item (at most
    /// [`max_partial`](Self::max_partial) bytes) is kept between pushes.
    /// After an error the bytes are dropped.
    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() || self.failed.is_some() {
            return;
        }
        if self.rest.is_empty() {
            self.rest = data;
        } else {
            // The caller pushed without draining: join the two.
            let mut joined = BytesMut::with_capacity(self.rest.len() + data.len());
            joined.extend_from_slice(&self.rest);
            joined.extend_from_slice(&data);
            self.rest = joined.freeze();
        }
    }

    /// Appends stream bytes from a slice (copied).
    pub fn push_slice(&mut self, data: &[u8]) {
        self.push(Bytes::copy_from_slice(data));
    }

    /// The next complete datagram, `Ok(None)` if more bytes are needed, or the
    /// error that makes the stream malformed (bad connect flag, bad address
    /// type, bad address, payload over the cap).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Datagram>, UotError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.next_inner();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
            self.partial = BytesMut::new();
            self.rest = Bytes::new();
        }
        res
    }

    fn next_inner(&mut self) -> Result<Option<Datagram>, UotError> {
        if self.expect == Expect::Request {
            let Some((request, _)) = self.take_item(UotRequest::decode)? else {
                return Ok(None);
            };
            self.expect = Expect::Datagrams {
                with_addr: !request.connect,
            };
            self.request = Some(request);
        }
        let Expect::Datagrams { with_addr } = self.expect else {
            return Ok(None);
        };
        let max = self.max_datagram;
        let item = self.take_item(|b| {
            decode_datagram(b, with_addr, max).map(|d| {
                let n = d.consumed;
                (d, n)
            })
        })?;
        Ok(item.map(|(d, bytes)| Datagram {
            dest: d.dest,
            payload: bytes.slice(d.payload),
        }))
    }

    /// Parses one item with `parse` (which returns it and its length) from
    /// the buffered bytes; returns it with its bytes, or `None` (keeping the
    /// incomplete start in `partial`) if more are needed.
    fn take_item<T>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<(T, usize), UotError>,
    ) -> Result<Option<(T, Bytes)>, UotError> {
        // Complete the item begun in earlier pushes, copying from `rest` only
        // the bytes it is known to need. Every turn copies at least one byte or
        // returns, so this ends within `max_partial` turns.
        while !self.partial.is_empty() {
            match parse(&self.partial) {
                Ok((item, n)) => {
                    let bytes = self.partial.split_to(n).freeze();
                    return Ok(Some((item, bytes)));
                }
                Err(UotError::Truncated { needed, .. }) => {
                    if self.rest.is_empty() {
                        return Ok(None);
                    }
                    let want = needed.max(self.partial.len() + 1) - self.partial.len();
                    let take = want.min(self.rest.len());
                    self.partial.extend_from_slice(&self.rest.split_to(take));
                }
                Err(e) => return Err(e),
            }
        }
        match parse(&self.rest) {
            Ok((item, n)) => Ok(Some((item, self.rest.split_to(n)))),
            Err(UotError::Truncated { .. }) => {
                if !self.rest.is_empty() {
                    self.partial.extend_from_slice(&self.rest);
                    self.rest = Bytes::new();
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn vectors_11_5() {
        let req = UotRequest {
            connect: true,
            dest: SocksAddr::domain("dns.google", 53),
        };
        let mut v = Vec::new();
        req.encode(&mut v).unwrap();
        assert_eq!(hex::encode(&v), "01030a646e732e676f6f676c650035");
        assert_eq!(UotRequest::decode(&v).unwrap(), (req, v.len()));

        let mut v = Vec::new();
        encode_datagram(None, b"abc", &mut v).unwrap();
        assert_eq!(hex::encode(&v), "0003616263");
        let d = decode_datagram(&v, false, MAX_DATAGRAM).unwrap();
        assert_eq!((d.dest, &v[d.payload], d.consumed), (None, &b"abc"[..], 5));

        let to = SocksAddr {
            host: Host::Ipv4(Ipv4Addr::new(8, 8, 8, 8)),
            port: 53,
        };
        let mut v = Vec::new();
        encode_datagram(Some(&to), b"abc", &mut v).unwrap();
        assert_eq!(hex::encode(&v), "000808080800350003616263");
        let d = decode_datagram(&v, true, MAX_DATAGRAM).unwrap();
        assert_eq!(d.dest, Some(to));
        assert_eq!(&v[d.payload], b"abc");

        let magic = SocksAddr::domain(UOT_V2_MAGIC, 0);
        assert_eq!(uot_version(&magic), Some(UotVersion::V2));
        assert_eq!(
            uot_version(&SocksAddr::domain(UOT_V1_MAGIC, 0)),
            Some(UotVersion::V1)
        );
        assert_eq!(uot_version(&SocksAddr::domain("example.com", 0)), None);
    }

    #[test]
    fn malformed_uot_input() {
        assert_eq!(
            UotRequest::decode(&[]),
            Err(UotError::Truncated { have: 0, needed: 1 })
        );
        assert_eq!(UotRequest::decode(&[2]), Err(UotError::BadConnectFlag(2)));
        assert_eq!(
            UotRequest::decode(&[1, 1, 1]),
            Err(UotError::Truncated { have: 3, needed: 8 })
        );
        assert_eq!(
            UotRequest::decode(&[0, 9]),
            Err(UotError::Addr(AddrError::BadAddressType(9)))
        );
        assert_eq!(
            decode_datagram(&[7, 0], true, 10),
            Err(UotError::BadAddressType(7))
        );
        assert_eq!(
            decode_datagram(&[0, 5, 1], false, 10),
            Err(UotError::Truncated { have: 3, needed: 7 })
        );
        assert_eq!(
            decode_datagram(&[0xff, 0xff], false, 1500),
            Err(UotError::DatagramTooLarge {
                len: 65535,
                max: 1500
            })
        );
        let mut v = Vec::new();
        assert!(matches!(
            encode_datagram(None, &vec![0; 65536], &mut v),
            Err(UotError::DatagramTooLarge { .. })
        ));
        assert!(v.is_empty());
    }

    /// Feeds `wire` to `reader` split at `cuts` and drains after each push.
    fn read_split(
        mut reader: DatagramReader,
        wire: &[u8],
        cuts: &[usize],
    ) -> (DatagramReader, Vec<Datagram>) {
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([&wire.len()]) {
            reader.push_slice(&wire[at..cut]);
            at = cut;
            while let Some(d) = reader.next().unwrap() {
                out.push(d);
            }
            assert!(reader.buffered() <= reader.max_partial());
        }
        (reader, out)
    }

    #[test]
    fn reader_vectors_11_5_every_split() {
        // v2 connect mode to dns.google:53, then `abc` twice.
        let wire = hex::decode("01030a646e732e676f6f676c650035000361626300036162630000").unwrap();
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let (r, got) = read_split(DatagramReader::new(UotVersion::V2), &wire, &[a, b]);
                let req = r.request().unwrap();
                assert!(req.connect);
                assert_eq!(req.dest, SocksAddr::domain("dns.google", 53));
                assert_eq!(r.with_addr(), Some(false));
                let payloads: Vec<&[u8]> = got.iter().map(|d| &d.payload[..]).collect();
                assert_eq!(payloads, [&b"abc"[..], b"abc", b""]);
                assert!(got.iter().all(|d| d.dest.is_none()));
                assert_eq!(r.buffered(), 0);
            }
        }
        // v2 non-connect request (to 8.8.8.8:53), then the 11.5 datagram.
        let to = SocksAddr {
            host: Host::Ipv4(Ipv4Addr::new(8, 8, 8, 8)),
            port: 53,
        };
        let wire =
            hex::decode("00010808080800350008080808003500036162630203612e62000100017a").unwrap();
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let (r, got) = read_split(DatagramReader::new(UotVersion::V2), &wire, &[a, b]);
                assert_eq!(
                    r.request().unwrap(),
                    &UotRequest {
                        connect: false,
                        dest: to.clone()
                    }
                );
                assert_eq!(
                    got,
                    [
                        Datagram {
                            dest: Some(to.clone()),
                            payload: Bytes::from_static(b"abc")
                        },
                        Datagram {
                            dest: Some(SocksAddr::domain("a.b", 1)),
                            payload: Bytes::from_static(b"z"),
                        },
                    ]
                );
            }
        }
        // v1: no request, the 11.5 datagram straight away.
        let wire = hex::decode("000808080800350003616263").unwrap();
        for a in 0..=wire.len() {
            let (r, got) = read_split(DatagramReader::new(UotVersion::V1), &wire, &[a]);
            assert!(r.request().is_none());
            assert_eq!(r.with_addr(), Some(true));
            assert_eq!(
                got,
                [Datagram {
                    dest: Some(to.clone()),
                    payload: Bytes::from_static(b"abc")
                }]
            );
        }
        // Replies in connect mode.
        let (_, got) = read_split(DatagramReader::replies(false), b"\0\x03abc\0\x01", &[1]);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"abc");
    }

    #[test]
    fn reader_slices_without_copy_when_whole() {
        let mut r = DatagramReader::replies(false);
        let wire = Bytes::from_static(b"\0\x02hi\0\x01!");
        r.push(wire.clone());
        let d = r.next().unwrap().unwrap();
        assert_eq!(d.payload.as_ptr(), wire[2..].as_ptr());
        assert_eq!(&r.next().unwrap().unwrap().payload[..], b"!");
        assert_eq!(r.next(), Ok(None));
        // Pushing without draining still works.
        let mut r = DatagramReader::replies(false);
        r.push_slice(b"\0\x01a");
        r.push_slice(b"\0\x01b");
        assert_eq!(&r.next().unwrap().unwrap().payload[..], b"a");
        assert_eq!(&r.next().unwrap().unwrap().payload[..], b"b");
        assert_eq!(r.next(), Ok(None));
    }

    #[test]
    fn reader_errors_are_typed_and_final() {
        let mut r = DatagramReader::new(UotVersion::V2);
        r.push_slice(&[2]);
        assert_eq!(r.next(), Err(UotError::BadConnectFlag(2)));
        r.push_slice(&[0, 1, 2, 3, 4, 0, 1]);
        assert_eq!(r.next(), Err(UotError::BadConnectFlag(2)));
        assert_eq!(r.buffered(), 0);

        let mut r = DatagramReader::new(UotVersion::V2);
        r.push_slice(&[0, 9]);
        assert_eq!(r.next(), Err(UotError::Addr(AddrError::BadAddressType(9))));

        // Non-connect datagram with an unknown UoT address type, after a split.
        let mut r = DatagramReader::new(UotVersion::V2);
        r.push_slice(&[0, 1, 1, 2, 3]);
        assert_eq!(r.next(), Ok(None));
        r.push_slice(&[4, 0, 7]);
        assert_eq!(r.next(), Ok(None));
        r.push_slice(&[3]);
        assert_eq!(r.next(), Err(UotError::BadAddressType(3)));

        // Oversize, seen from the length field alone.
        let mut r = DatagramReader::new(UotVersion::V1).with_max_datagram(100);
        assert_eq!(r.max_datagram(), 100);
        r.push_slice(&[0, 1, 2, 3, 4, 0, 53, 0]);
        assert_eq!(r.next(), Ok(None));
        r.push_slice(&[101]);
        assert_eq!(
            r.next(),
            Err(UotError::DatagramTooLarge { len: 101, max: 100 })
        );
        let r = DatagramReader::replies(true).with_max_datagram(1 << 20);
        assert_eq!(r.max_datagram(), MAX_DATAGRAM);

        // A domain that is not UTF-8.
        let mut r = DatagramReader::new(UotVersion::V1);
        r.push_slice(&[2, 1, 0xff, 0, 1, 0, 0]);
        assert_eq!(r.next(), Err(UotError::Addr(AddrError::DomainNotUtf8)));
    }

    #[test]
    fn reader_keeps_at_most_one_partial_item() {
        let mut r = DatagramReader::replies(true);
        let to = SocksAddr::domain("a".repeat(255), 9);
        let mut wire = Vec::new();
        encode_datagram(Some(&to), &vec![7; MAX_DATAGRAM], &mut wire).unwrap();
        assert_eq!(wire.len(), r.max_partial());
        for chunk in wire.chunks(1000) {
            r.push_slice(chunk);
            while r.next().unwrap().is_some() {}
            assert!(r.buffered() <= r.max_partial());
        }
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn datagram_encode_matches_len() {
        let d = Datagram {
            dest: Some(SocksAddr::domain("x.y", 5)),
            payload: Bytes::from_static(b"hello"),
        };
        let mut v = Vec::new();
        d.encode(&mut v).unwrap();
        assert_eq!(v.len(), d.encoded_len());
        let mut r = DatagramReader::replies(true);
        r.push(v.into());
        assert_eq!(r.next(), Ok(Some(d)));
    }
}
