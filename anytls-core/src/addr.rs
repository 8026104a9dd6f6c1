//! Destination addresses in SOCKS5 form (RFC 1928 section 5): an address type
//! byte, the address, then the port as u16 big-endian.
//!
//! AnyTLS streams start with the destination in this form. The UDP-over-TCP
//! datagram header uses the same layout with a different type table, so the codec
//! is parameterised by [`AddrTable`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

use crate::error::AddrError;

/// The host part of a destination.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Host {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
    /// A host name of at most 255 bytes, resolved by the server.
    Domain(String),
}

/// A destination: host and port.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SocksAddr {
    /// Host.
    pub host: Host,
    /// Port.
    pub port: u16,
}

/// Which address type numbering to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AddrTable {
    /// SOCKS5: 0x01 IPv4, 0x03 domain, 0x04 IPv6 (AnyTLS destinations, UoT requests).
    Socks,
    /// sing UoT datagrams: 0x00 IPv4, 0x01 IPv6, 0x02 domain.
    Uot,
}

impl AddrTable {
    const fn types(self) -> [u8; 3] {
        // [ipv4, domain, ipv6]
        match self {
            AddrTable::Socks => [0x01, 0x03, 0x04],
            AddrTable::Uot => [0x00, 0x02, 0x01],
        }
    }
}

/// Longest domain name the one-byte length can carry.
pub const MAX_DOMAIN_LEN: usize = 255;
/// Longest encoded address: type, length byte, 255-byte name, port.
pub const MAX_ENCODED_LEN: usize = 1 + 1 + MAX_DOMAIN_LEN + 2;

impl SocksAddr {
    /// A destination from a host name (or IP literal) and port. The host is kept
    /// as given; see [`normalized`](Self::normalized).
    pub fn domain(name: impl Into<String>, port: u16) -> SocksAddr {
        SocksAddr {
            host: Host::Domain(name.into()),
            port,
        }
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        3 + match &self.host {
            Host::Ipv4(_) => 4,
            Host::Ipv6(_) => 16,
            Host::Domain(d) => 1 + d.len(),
        }
    }

    /// Appends the SOCKS form to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), AddrError> {
        self.encode_with(AddrTable::Socks, buf)
    }

    /// Appends the address with the given type table. Nothing is written on error.
    pub fn encode_with(&self, table: AddrTable, buf: &mut impl BufMut) -> Result<(), AddrError> {
        let [t4, td, t6] = table.types();
        match &self.host {
            Host::Ipv4(ip) => {
                buf.put_u8(t4);
                buf.put_slice(&ip.octets());
            }
            Host::Ipv6(ip) => {
                buf.put_u8(t6);
                buf.put_slice(&ip.octets());
            }
            Host::Domain(d) => {
                let len = u8::try_from(d.len()).map_err(|_| AddrError::DomainTooLong(d.len()))?;
                buf.put_u8(td);
                buf.put_u8(len);
                buf.put_slice(d.as_bytes());
            }
        }
        buf.put_u16(self.port);
        Ok(())
    }

    /// Parses the SOCKS form from the front of `buf`; returns the address and the
    /// number of bytes it used. [`AddrError::Truncated`] means more bytes may
    /// complete it.
    pub fn decode(buf: &[u8]) -> Result<(SocksAddr, usize), AddrError> {
        Self::decode_with(AddrTable::Socks, buf)
    }

    /// Parses an address with the given type table.
    pub fn decode_with(table: AddrTable, buf: &[u8]) -> Result<(SocksAddr, usize), AddrError> {
        let [t4, td, t6] = table.types();
        let have = buf.len();
        let Some(&atyp) = buf.first() else {
            return Err(AddrError::Truncated { have, needed: 1 });
        };
        // Total length, known from the type (and the length byte for domains).
        let total = if atyp == t4 {
            7
        } else if atyp == t6 {
            19
        } else if atyp == td {
            match buf.get(1) {
                Some(&n) => 4 + usize::from(n),
                None => return Err(AddrError::Truncated { have, needed: 2 }),
            }
        } else {
            return Err(AddrError::BadAddressType(atyp));
        };
        let Some(addr) = buf.get(..total) else {
            return Err(AddrError::Truncated {
                have,
                needed: total,
            });
        };
        let (host, port) = addr[1..].split_at(total - 3);
        let host = if atyp == t4 {
            Host::Ipv4(Ipv4Addr::from(
                <[u8; 4]>::try_from(host).unwrap_or_default(),
            ))
        } else if atyp == t6 {
            Host::Ipv6(Ipv6Addr::from(
                <[u8; 16]>::try_from(host).unwrap_or_default(),
            ))
        } else {
            let name = std::str::from_utf8(&host[1..]).map_err(|_| AddrError::DomainNotUtf8)?;
            Host::Domain(name.to_owned())
        };
        Ok((
            SocksAddr {
                host,
                port: u16::from_be_bytes([port[0], port[1]]),
            },
            total,
        ))
    }

    /// The address as a server should dial it: a domain that is an IP literal
    /// (`1.2.3.4`, `::1`, `[::1]`) becomes that IP, and an IPv4-mapped IPv6
    /// address becomes IPv4, as sing's reader does.
    pub fn normalized(self) -> SocksAddr {
        let host = match self.host {
            Host::Domain(d) => {
                let literal = d
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(&d);
                match literal.parse::<IpAddr>() {
                    Ok(ip) => Host::from(ip),
                    Err(_) => Host::Domain(d),
                }
            }
            Host::Ipv6(v6) => Host::from(IpAddr::V6(v6)),
            h => h,
        };
        SocksAddr {
            host,
            port: self.port,
        }
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ipv4(ip) => Some(SocketAddr::new(ip.into(), self.port)),
            Host::Ipv6(ip) => Some(SocketAddr::new(ip.into(), self.port)),
            Host::Domain(_) => None,
        }
    }
}

impl From<IpAddr> for Host {
    /// IPv4-mapped IPv6 addresses become IPv4.
    fn from(ip: IpAddr) -> Host {
        match ip {
            IpAddr::V4(v4) => Host::Ipv4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Host::Ipv4(v4),
                None => Host::Ipv6(v6),
            },
        }
    }
}

impl From<SocketAddr> for SocksAddr {
    fn from(sa: SocketAddr) -> SocksAddr {
        let host = match sa.ip() {
            IpAddr::V4(v4) => Host::Ipv4(v4),
            IpAddr::V6(v6) => Host::Ipv6(v6),
        };
        SocksAddr {
            host,
            port: sa.port(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ipv4(ip) => ip.fmt(f),
            Host::Ipv6(ip) => write!(f, "[{ip}]"),
            Host::Domain(d) => f.write_str(d),
        }
    }
}

impl fmt::Display for SocksAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(a: &SocksAddr) -> String {
        let mut v = Vec::new();
        a.encode(&mut v).unwrap();
        hex::encode(v)
    }

    #[test]
    fn vectors_11_3_destinations() {
        let cases = [
            (
                SocksAddr::domain("example.com", 443),
                "030b6578616d706c652e636f6d01bb",
            ),
            (
                SocksAddr {
                    host: Host::Ipv4(Ipv4Addr::new(1, 2, 3, 4)),
                    port: 80,
                },
                "01010203040050",
            ),
            (
                SocksAddr {
                    host: Host::Ipv6("2001:db8::1".parse().unwrap()),
                    port: 443,
                },
                "0420010db800000000000000000000000101bb",
            ),
            // 11.5: the UoT destination.
            (
                SocksAddr::domain("sp.v2.udp-over-tcp.arpa", 0),
                "031773702e76322e7564702d6f7665722d7463702e617270610000",
            ),
        ];
        for (addr, hex) in cases {
            assert_eq!(hex_of(&addr), hex);
            let bytes = hex::decode(hex).unwrap();
            assert_eq!(addr.encoded_len(), bytes.len());
            assert_eq!(SocksAddr::decode(&bytes).unwrap(), (addr, bytes.len()));
        }
    }

    #[test]
    fn malformed_addresses_have_typed_errors() {
        assert_eq!(
            SocksAddr::decode(&[]),
            Err(AddrError::Truncated { have: 0, needed: 1 })
        );
        assert_eq!(
            SocksAddr::decode(&[0x02, 1, 2]),
            Err(AddrError::BadAddressType(2))
        );
        assert_eq!(
            SocksAddr::decode(&[0x01, 1, 2, 3, 4, 0]),
            Err(AddrError::Truncated { have: 6, needed: 7 })
        );
        assert_eq!(
            SocksAddr::decode(&[0x03]),
            Err(AddrError::Truncated { have: 1, needed: 2 })
        );
        assert_eq!(
            SocksAddr::decode(&[0x03, 3, b'a']),
            Err(AddrError::Truncated { have: 3, needed: 7 })
        );
        assert_eq!(
            SocksAddr::decode(&[0x03, 2, 0xff, 0xfe, 0, 1]),
            Err(AddrError::DomainNotUtf8)
        );
        assert_eq!(
            SocksAddr::decode(&[0x04; 10]),
            Err(AddrError::Truncated {
                have: 10,
                needed: 19
            })
        );
        let long = SocksAddr::domain("a".repeat(256), 1);
        let mut v = Vec::new();
        assert_eq!(long.encode(&mut v), Err(AddrError::DomainTooLong(256)));
        assert!(v.is_empty());
        let max = SocksAddr::domain("a".repeat(255), 1);
        max.encode(&mut v).unwrap();
        assert_eq!(v.len(), MAX_ENCODED_LEN);
    }

    #[test]
    fn empty_domain_is_wire_valid() {
        let a = SocksAddr::domain("", 7);
        assert_eq!(hex_of(&a), "03000007");
        assert_eq!(SocksAddr::decode(&[3, 0, 0, 7]).unwrap(), (a, 4));
    }

    #[test]
    fn normalization_follows_sing() {
        let v4 = Host::Ipv4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(SocksAddr::domain("10.0.0.1", 1).normalized().host, v4);
        assert_eq!(
            SocksAddr::domain("[::1]", 1).normalized().host,
            Host::Ipv6(Ipv6Addr::LOCALHOST)
        );
        let mapped = SocksAddr {
            host: Host::Ipv6("::ffff:10.0.0.1".parse().unwrap()),
            port: 1,
        };
        assert_eq!(mapped.normalized().host, v4);
        assert_eq!(
            SocksAddr::domain("example.com", 1).normalized(),
            SocksAddr::domain("example.com", 1)
        );
    }

    #[test]
    fn display() {
        assert_eq!(SocksAddr::domain("a.b", 5).to_string(), "a.b:5");
        let sa: SocketAddr = "[::1]:8".parse().unwrap();
        assert_eq!(SocksAddr::from(sa).to_string(), "[::1]:8");
        assert_eq!(SocksAddr::from(sa).socket_addr(), Some(sa));
    }
}
