//! The `key=value` text used by Settings, ServerSettings and padding schemes.
//!
//! Parsing follows the Go implementations byte for byte: split on `\n`, split each
//! line at its first `=`, ignore lines without `=`, a later duplicate key
//! overwrites an earlier one, no trimming at all (a `\r` stays part of the value),
//! keys are case-sensitive and may be empty. Keys and values are kept as bytes
//! because the Go side treats them as byte strings.

use std::fmt;

use crate::error::SettingsError;
use crate::frame::MAX_FRAME_DATA;

/// An order-preserving map of settings entries with unique keys.
///
/// Entries are encoded in insertion order; a receiver must not depend on order.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct StringMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for StringMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

impl StringMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses settings text with the reference rules (never fails).
    pub fn parse(text: &[u8]) -> StringMap {
        let mut map = StringMap::new();
        for line in text.split(|&b| b == b'\n') {
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                map.insert_bytes(&line[..eq], &line[eq + 1..]);
            }
        }
        map
    }

    /// Sets `key` to `value`, replacing an earlier value in place.
    pub fn insert(&mut self, key: &str, value: &str) {
        self.insert_bytes(key.as_bytes(), value.as_bytes());
    }

    /// Sets `key` to `value` (byte strings).
    pub fn insert_bytes(&mut self, key: &[u8], value: &[u8]) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => self.entries.push((key.to_vec(), value.to_vec())),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `key`, if it is UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of `key` parsed the way Go's `strconv.Atoi` does.
    pub fn get_int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(parse_go_int)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Encodes the entries joined by `\n`, without a trailing newline. Fails if an
    /// entry would parse back differently (a key with `=` or `\n`, a value with
    /// `\n`) or if the text would not fit one frame.
    pub fn encode(&self) -> Result<Vec<u8>, SettingsError> {
        let mut out = Vec::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if k.iter().any(|&b| b == b'=' || b == b'\n') || v.contains(&b'\n') {
                return Err(SettingsError::Unencodable(
                    String::from_utf8_lossy(k).into_owned(),
                ));
            }
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
        }
        if out.len() > MAX_FRAME_DATA {
            return Err(SettingsError::TooLong(out.len()));
        }
        Ok(out)
    }
}

/// Parses a decimal integer like Go's `strconv.Atoi` on a 64-bit platform: an
/// optional `+` or `-`, then one or more ASCII digits, nothing else, within `i64`.
pub fn parse_go_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulate negatively so that i64::MIN parses.
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg { Some(n) } else { n.checked_neg() }
}

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 2;

/// The client's Settings frame content.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientSettings {
    /// `v`: the client's protocol version.
    pub version: u8,
    /// `client`: software name and version; may be empty.
    pub client: String,
    /// `padding-md5`: lowercase hex MD5 of the client's current padding scheme.
    pub padding_md5: String,
}

impl ClientSettings {
    /// The map in the reference's usual order: `v`, `client`, `padding-md5`.
    pub fn to_map(&self) -> StringMap {
        let mut m = StringMap::new();
        m.insert("v", &self.version.to_string());
        m.insert("client", &self.client);
        m.insert("padding-md5", &self.padding_md5);
        m
    }

    /// The encoded text.
    pub fn encode(&self) -> Result<Vec<u8>, SettingsError> {
        self.to_map().encode()
    }
}

/// What a server learns from a client's Settings text.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReceivedClientSettings {
    /// `v` as an integer, if present and parsable.
    pub version: Option<i64>,
    /// The `padding-md5` value, if present (compared byte for byte).
    pub padding_md5: Option<Vec<u8>>,
}

impl ReceivedClientSettings {
    /// Reads the keys a server acts on.
    pub fn from_map(map: &StringMap) -> Self {
        ReceivedClientSettings {
            version: map.get_int("v"),
            padding_md5: map.get("padding-md5").map(<[u8]>::to_vec),
        }
    }

    /// Whether the client speaks v2 (an integer `v >= 2`), so that it gets
    /// ServerSettings and SYNACKs.
    pub fn is_v2(&self) -> bool {
        self.version.is_some_and(|v| v >= 2)
    }

    /// Whether the client's scheme differs from the server's (an absent MD5 differs).
    pub fn needs_padding_update(&self, server_md5_hex: &str) -> bool {
        self.padding_md5.as_deref() != Some(server_md5_hex.as_bytes())
    }
}

/// The text of a ServerSettings frame: `v=2`.
pub fn server_settings_text() -> Vec<u8> {
    format!("v={PROTOCOL_VERSION}").into_bytes()
}

/// The peer version a client records from ServerSettings text: the integer `v`
/// when it is positive, saturated at 255. (The reference stores `byte(v)`, which
/// wraps; saturating keeps `v=256` from reading as "no v2".)
pub fn server_version(map: &StringMap) -> Option<u8> {
    map.get_int("v")
        .filter(|&v| v > 0)
        .map(|v| u8::try_from(v).unwrap_or(u8::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_11_3_settings_in_reference_order() {
        let s = ClientSettings {
            version: 2,
            client: "anytls/0.0.13".into(),
            padding_md5: "75cff2ad89aadf5e257059ee571ebe11".into(),
        };
        let text = s.encode().unwrap();
        assert_eq!(text.len(), 69);
        assert_eq!(
            hex::encode(&text),
            "763d320a636c69656e743d616e79746c732f302e302e31330a70616464696e672d6d64353d3735636666326164383961616466356532353730353965653537316562653131"
        );
        let mut frame = Vec::new();
        crate::frame::encode_frame(
            &mut frame,
            crate::frame::Command::Settings,
            crate::frame::StreamId(0),
            &text,
        )
        .unwrap();
        assert_eq!(hex::encode(&frame[..7]), "04000000000045");
    }

    #[test]
    fn vector_11_3_sorted_order_parses_the_same() {
        let sorted = hex::decode("636c69656e743d616e79746c732f302e302e31330a70616464696e672d6d64353d37356366663261643839616164663565323537303539656535373165626531310a763d32").unwrap();
        assert_eq!(sorted.len(), 69);
        let m = StringMap::parse(&sorted);
        assert_eq!(m.get_str("client"), Some("anytls/0.0.13"));
        assert_eq!(m.get_int("v"), Some(2));
        let r = ReceivedClientSettings::from_map(&m);
        assert!(r.is_v2());
        assert!(!r.needs_padding_update("75cff2ad89aadf5e257059ee571ebe11"));
        assert!(r.needs_padding_update("305fc37916c150b282ecb61e9ee141d7"));
    }

    #[test]
    fn reference_parsing_quirks() {
        let m = StringMap::parse(b"a=1\nnoequals\nb=x=y\na=2\n=empty\nv=2\r\nK=3");
        assert_eq!(m.get("a"), Some(&b"2"[..]), "later duplicate wins");
        assert_eq!(m.get("b"), Some(&b"x=y"[..]), "split at the first =");
        assert_eq!(m.get(""), Some(&b"empty"[..]), "empty key allowed");
        assert_eq!(m.get("noequals"), None);
        assert_eq!(m.get("v"), Some(&b"2\r"[..]), "no trimming");
        assert_eq!(m.get_int("v"), None, "CRLF breaks v: peer looks like v1");
        assert_eq!(m.get("k"), None, "case-sensitive");
        assert_eq!(m.len(), 5);
        assert!(StringMap::parse(b"").is_empty());
        assert!(StringMap::parse(b"\n\n").is_empty());
        assert!(!ReceivedClientSettings::from_map(&m).is_v2());
        let no_md5 = ReceivedClientSettings::from_map(&StringMap::parse(b"v=2"));
        assert!(no_md5.needs_padding_update("75cff2ad89aadf5e257059ee571ebe11"));
    }

    #[test]
    fn go_atoi() {
        for (s, v) in [
            ("2", Some(2)),
            ("+2", Some(2)),
            ("-1", Some(-1)),
            ("007", Some(7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("", None),
            ("+", None),
            ("2 ", None),
            (" 2", None),
            ("1_000", None),
            ("0x10", None),
        ] {
            assert_eq!(parse_go_int(s.as_bytes()), v, "{s:?}");
        }
    }

    #[test]
    fn server_settings_and_version() {
        assert_eq!(server_settings_text(), b"v=2");
        assert_eq!(server_version(&StringMap::parse(b"v=2")), Some(2));
        assert_eq!(server_version(&StringMap::parse(b"v=0")), None);
        assert_eq!(server_version(&StringMap::parse(b"v=300")), Some(255));
        assert_eq!(server_version(&StringMap::parse(b"x=1")), None);
    }

    #[test]
    fn encode_refuses_ambiguous_entries() {
        let mut m = StringMap::new();
        m.insert("a=b", "c");
        assert!(matches!(m.encode(), Err(SettingsError::Unencodable(_))));
        let mut m = StringMap::new();
        m.insert("a", "b\nc=d");
        assert!(m.encode().is_err());
        let mut m = StringMap::new();
        m.insert("a", &"x".repeat(70_000));
        assert_eq!(m.encode(), Err(SettingsError::TooLong(70_002)));
    }
}
