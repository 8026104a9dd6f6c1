//! UDP over TCP (sing UoT): the stream layout carried by AnyTLS streams whose
//! destination is [`UOT_V2_MAGIC`] (or the legacy [`UOT_V1_MAGIC`]).
//!
//! Version 2 starts with a request (`is_connect` byte and a SOCKS destination);
//! every datagram is then `u16 length | payload` in connect mode, or
//! `address | u16 length | payload` otherwise, where the address uses the UoT
//! type table ([`AddrTable::Uot`]). Legacy v1 has no request; every datagram
//! carries its address.

use std::ops::Range;

use bytes::BufMut;

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
}
