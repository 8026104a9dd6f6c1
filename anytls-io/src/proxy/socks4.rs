//! SOCKS4 and SOCKS4a messages, without I/O.
//!
//! A request is `VN=4, CD, DSTPORT (2), DSTIP (4), USERID, NUL`; SOCKS4a
//! puts `0.0.0.x` (x nonzero) in DSTIP and the host name, NUL-terminated,
//! after the user id. The reply is `VN=0, CD, DSTPORT (2), DSTIP (4)`.

use std::net::Ipv4Addr;

use anytls_core::{Host, SocksAddr};

/// Protocol version byte of a request.
pub const VERSION: u8 = 4;
/// Command: CONNECT.
pub const CMD_CONNECT: u8 = 1;
/// Command: BIND (refused by the server here).
pub const CMD_BIND: u8 = 2;
/// Reply: request granted.
pub const GRANTED: u8 = 90;
/// Reply: request rejected or failed.
pub const REJECTED: u8 = 91;
/// Longest user id or host name accepted (without its NUL).
pub const MAX_FIELD: usize = 255;

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// CD: 1 CONNECT, 2 BIND.
    pub command: u8,
    /// The destination: an IPv4 address (SOCKS4) or a name (SOCKS4a).
    pub dest: SocksAddr,
    /// USERID, without its NUL.
    pub user_id: Vec<u8>,
}

/// Why a request cannot be parsed (answered with [`REJECTED`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// A NUL-terminated field at the front of `buf`: `Ok(None)` until its NUL
/// arrives, then the field and the bytes used (NUL included).
fn nul_field<'a>(buf: &'a [u8], what: &str) -> Result<Option<(&'a [u8], usize)>, BadRequest> {
    match buf.iter().take(MAX_FIELD + 1).position(|&b| b == 0) {
        Some(n) => Ok(Some((&buf[..n], n + 1))),
        None if buf.len() > MAX_FIELD => {
            Err(BadRequest(format!("{what} longer than {MAX_FIELD} bytes")))
        }
        None => Ok(None),
    }
}

/// Parses a request from the front of `buf`: `Ok(None)` until it is
/// complete, then the request and the bytes used. At most
/// `8 + 2 * (MAX_FIELD + 1)` bytes are ever needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, BadRequest> {
    let Some(fixed) = buf.get(..8) else {
        return Ok(None);
    };
    if fixed[0] != VERSION {
        return Err(BadRequest(format!(
            "not SOCKS4 (version {:#04x})",
            fixed[0]
        )));
    }
    let command = fixed[1];
    let port = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ip = Ipv4Addr::new(fixed[4], fixed[5], fixed[6], fixed[7]);
    let Some((user_id, used)) = nul_field(&buf[8..], "user id")? else {
        return Ok(None);
    };
    let mut total = 8 + used;
    let [0, 0, 0, x] = ip.octets() else {
        let dest = SocksAddr {
            host: Host::Ipv4(ip),
            port,
        };
        let user_id = user_id.to_vec();
        return Ok(Some((
            Request {
                command,
                dest,
                user_id,
            },
            total,
        )));
    };
    if x == 0 {
        return Err(BadRequest("destination 0.0.0.0".into()));
    }
    // SOCKS4a: the name follows.
    let Some((name, used)) = nul_field(&buf[total..], "host name")? else {
        return Ok(None);
    };
    total += used;
    let name =
        std::str::from_utf8(name).map_err(|_| BadRequest("host name is not UTF-8".into()))?;
    if name.is_empty() {
        return Err(BadRequest("empty host name".into()));
    }
    let dest = SocksAddr::domain(name, port);
    let user_id = user_id.to_vec();
    Ok(Some((
        Request {
            command,
            dest,
            user_id,
        },
        total,
    )))
}

/// A request (client side): SOCKS4 for an IPv4 destination, SOCKS4a for a
/// name. IPv6 destinations and over-long fields (or ones holding a NUL)
/// cannot be sent.
pub fn encode_request(
    command: u8,
    dest: &SocksAddr,
    user_id: &[u8],
) -> Result<Vec<u8>, BadRequest> {
    let bad_field = |f: &[u8]| f.len() > MAX_FIELD || f.contains(&0);
    if bad_field(user_id) {
        return Err(BadRequest("user id too long or has a NUL".into()));
    }
    let mut out = vec![VERSION, command];
    out.extend_from_slice(&dest.port.to_be_bytes());
    match &dest.host {
        Host::Ipv4(ip) => {
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(user_id);
            out.push(0);
        }
        Host::Domain(name) => {
            if name.is_empty() || bad_field(name.as_bytes()) {
                return Err(BadRequest("host name empty, too long or has a NUL".into()));
            }
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(user_id);
            out.push(0);
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Host::Ipv6(_) => return Err(BadRequest("SOCKS4 cannot carry IPv6".into())),
    }
    Ok(out)
}

/// A reply with code `cd` ([`GRANTED`], [`REJECTED`], ...); the port and
/// address fields are zero (clients ignore them for CONNECT).
pub fn encode_reply(cd: u8) -> [u8; 8] {
    [0, cd, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip_and_parse_incrementally() {
        let cases = [
            SocksAddr::from(std::net::SocketAddr::from(([10, 1, 2, 3], 443))),
            SocksAddr::domain("example.com", 80),
        ];
        for dest in cases {
            let msg = encode_request(CMD_CONNECT, &dest, b"bob").unwrap();
            for cut in 0..msg.len() {
                assert_eq!(parse_request(&msg[..cut]), Ok(None), "{dest} cut {cut}");
            }
            let mut more = msg.clone();
            more.extend_from_slice(b"early");
            let (r, used) = parse_request(&more).unwrap().unwrap();
            assert_eq!(
                (r.command, &r.dest, r.user_id.as_slice(), used),
                (1, &dest, &b"bob"[..], msg.len())
            );
        }
        // Exact bytes of a SOCKS4a request.
        assert_eq!(
            encode_request(CMD_CONNECT, &SocksAddr::domain("a.b", 80), b"").unwrap(),
            [4, 1, 0, 80, 0, 0, 0, 1, 0, b'a', b'.', b'b', 0]
        );
        assert!(encode_request(CMD_CONNECT, &SocksAddr::domain("", 80), b"").is_err());
        assert_eq!(encode_reply(REJECTED), [0, 91, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn bad_requests() {
        assert!(parse_request(&[5, 1, 0, 80, 1, 2, 3, 4, 0]).is_err());
        // 0.0.0.0, empty 4a name, non-UTF-8 name.
        assert!(parse_request(&[4, 1, 0, 80, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_request(&[4, 1, 0, 80, 0, 0, 0, 9, 0, 0]).is_err());
        assert!(parse_request(&[4, 1, 0, 80, 0, 0, 0, 9, 0, 0xff, 0]).is_err());
        // A user id without an end is refused once over the cap.
        let mut long = vec![4, 1, 0, 80, 1, 2, 3, 4];
        long.extend(std::iter::repeat_n(b'u', MAX_FIELD));
        assert_eq!(parse_request(&long), Ok(None));
        long.push(b'u');
        assert!(parse_request(&long).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some((_, used))) = parse_request(&data) {
                prop_assert!(used <= data.len() && used <= 8 + 2 * (MAX_FIELD + 1));
            }
        }
    }
}
