//! Configuration the way users write it: sing-box JSON (`anytls` outbound and
//! inbound), Go duration strings, and `anytls://` share URIs; plus the
//! conversion into [`ClientConfig`] and [`ServerConfig`].
//!
//! * [`OutboundOptions`]: sing-box's `anytls` outbound (and our pool extensions:
//!   `ensure_idle_session`, `heartbeat`, ...), plus `listen`/`listen_port` for the
//!   local SOCKS5 listener of the `anytls client` program.
//! * [`InboundOptions`]: sing-box's `anytls` inbound plus our `fallback`.
//! * [`parse_client_json`] / [`parse_server_json`] accept either one such object
//!   or a whole sing-box config (`{"outbounds": [...]}` / `{"inbounds": [...]}`),
//!   from which the first `anytls` entry is taken.
//! * Unknown fields are errors that name the field.
//! * [`parse_go_duration`]: `"30s"`, `"1m30s"`, `"1.5h"`, `"500ms"` (exact, in
//!   integer nanoseconds).
//! * [`AnytlsUri`], the share link
//!   `anytls://[password@]host[:port]/?sni=<name>&insecure=<0|1>`.
//!
//! Durations are honoured as written: unlike the Go clients there is no
//! "5 s or less becomes 30 s" clamp; zero means "the default" for the two
//! idle-session durations (as an unset value does in sing-box) and "off" for
//! the optional ones (`heartbeat`, `max_connection_lifetime`, ...).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anytls_core::PaddingScheme;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Deserializer};

use crate::client::ClientConfig;
use crate::server::ServerConfig;
use crate::tls::{Identity, TlsError, Verification, hex32, parse_pin};

/// Default port of `anytls://` URIs.
pub const DEFAULT_URI_PORT: u16 = 443;
/// Default local SOCKS5 listener of the client program.
pub const DEFAULT_SOCKS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);
/// Default port of the server program.
pub const DEFAULT_SERVER_PORT: u16 = 8443;

/// A configuration problem. The message names the field or file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {err}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Bad JSON, a wrong type, or an unknown field (the message names it).
    #[error("{context}{err}")]
    Json {
        /// Where in a whole sing-box config the entry was (`outbounds[2]: `), or empty.
        context: String,
        /// serde's message.
        err: serde_json::Error,
    },
    /// A field has an unusable value.
    #[error("{field}: {msg}")]
    Invalid {
        /// The field (sing-box name).
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// No `anytls` entry in a whole sing-box config.
    #[error("{0}")]
    NotFound(String),
    /// TLS material could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A bad `anytls://` URI.
    #[error(transparent)]
    Uri(#[from] UriError),
}

fn invalid(field: &'static str, msg: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field,
        msg: msg.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Go durations

/// A Go duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The input.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers,
/// each with an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`,
/// `h`; sing-box's `d` for days too), such as `"300ms"`, `"1.5h"` or
/// `"2h45m"`. `"0"` needs no unit. The result is exact (integer nanoseconds;
/// digits below a nanosecond are cut off, as Go does). Negative durations and
/// values beyond Go's range (about 292 years) are errors.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: s.to_owned(),
        reason,
    };
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err("empty"));
    }
    const MAX_NANOS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => return Err(err("missing unit (ns, us, ms, s, m, h)")),
            _ => return Err(err("unknown unit (use ns, us, ms, s, m, h)")),
        };
        let mut int: u128 = 0;
        for d in int_digits.bytes() {
            int = int * 10 + u128::from(d - b'0');
            if int > MAX_NANOS {
                return Err(err("out of range"));
            }
        }
        // The fraction, exactly: digits / 10^n of a unit, cut to whole
        // nanoseconds. 25 digits are more than any unit (at most 8.64e13 ns)
        // can resolve, and keep the arithmetic in u128.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac_digits.bytes().take(25) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        total += int * unit_nanos + frac * unit_nanos / scale;
        if total > MAX_NANOS {
            return Err(err("out of range"));
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(err("negative durations are not allowed"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration as Go's `Duration.String` does: `"1h0m0s"`, `"1m30s"`,
/// `"1.5s"`, `"500ms"`, `"0s"`. [`parse_go_duration`] reads it back exactly.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    // Whole units and a fraction with trailing zeros dropped.
    fn frac(v: u128, per: u128, digits: usize) -> String {
        let (whole, rem) = (v / per, v % per);
        if rem == 0 {
            return whole.to_string();
        }
        let f = format!("{rem:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos, 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos, 1_000_000, 6));
    }
    let secs_nanos = nanos % 60_000_000_000;
    let mins = nanos / 60_000_000_000;
    let s = format!("{}s", frac(secs_nanos, 1_000_000_000, 9));
    if mins == 0 {
        return s;
    }
    let (h, m) = (mins / 60, mins % 60);
    if h == 0 {
        format!("{m}m{s}")
    } else {
        format!("{h}h{m}m{s}")
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_go_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// sing-box's `Listable<string>`: one string or a list of strings.
fn de_listable<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Listable {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Listable::deserialize(d) {
        Ok(Listable::One(s)) => vec![s],
        Ok(Listable::Many(v)) => v,
        Err(_) => {
            return Err(serde::de::Error::custom(
                "expected a string or a list of strings",
            ));
        }
    })
}

// ---------------------------------------------------------------------------
// anytls:// URIs

/// A bad `anytls://` URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid anytls URI: {0}")]
pub struct UriError(pub String);

/// An `anytls://[password@]host[:port]/?sni=<name>&insecure=<0|1>` share link
/// (ANYTLS.md 9.4). The password is the percent-encoded userinfo; the port
/// defaults to 443. We also read and write `pin=<sha256 hex>` (certificate pin,
/// our extension) and a `#name` fragment; other parameters are kept as they are.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AnytlsUri {
    /// The password (decoded), if the URI has one.
    pub password: Option<String>,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS server name. An IP literal means "send no SNI".
    pub sni: Option<String>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// Accept exactly the certificate with this DER SHA-256.
    pub pin: Option<[u8; 32]>,
    /// The `#fragment`, conventionally a display name.
    pub name: Option<String>,
    /// Other query parameters, decoded, in order.
    pub extra: Vec<(String, String)>,
}

impl fmt::Debug for AnytlsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnytlsUri")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("sni", &self.sni)
            .field("insecure", &self.insecure)
            .field("pin", &self.pin.map(|p| hex32(&p)))
            .field("name", &self.name)
            .field("extra", &self.extra)
            .finish()
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s`; with `plus_is_space`, `+` becomes a space (query strings).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(hex_val);
                let lo = b.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(UriError(format!("bad percent escape in {s:?}"))),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("{s:?} does not decode to UTF-8")))
}

/// Percent-encodes every byte except RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

impl std::str::FromStr for AnytlsUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<AnytlsUri, UriError> {
        AnytlsUri::parse(s)
    }
}

impl AnytlsUri {
    /// Parses a share link.
    pub fn parse(s: &str) -> Result<AnytlsUri, UriError> {
        let bad = |msg: &str| UriError(msg.to_owned());
        let s = s.trim();
        let rest = s
            .get(..9)
            .filter(|p| p.eq_ignore_ascii_case("anytls://"))
            .map(|_| &s[9..])
            .ok_or_else(|| bad("must start with anytls://"))?;
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        if !path.is_empty() && path != "/" {
            return Err(bad("no path is allowed after the host (only /)"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let password = userinfo.map(|u| percent_decode(u, false)).transpose()?;
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_owned(), Some(p)),
                Some(_) => return Err(bad("an IPv6 host must be in [ ]")),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => DEFAULT_URI_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UriError(format!("bad port {p:?}")))?,
        };
        let mut uri = AnytlsUri {
            password,
            host,
            port,
            name: fragment
                .filter(|f| !f.is_empty())
                .map(|f| percent_decode(f, false))
                .transpose()?,
            ..AnytlsUri::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k, true)?, percent_decode(v, true)?);
            match k.as_str() {
                "sni" => uri.sni = Some(v).filter(|v| !v.is_empty()),
                "insecure" | "allowInsecure" => {
                    uri.insecure = match v.as_str() {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => return Err(UriError(format!("insecure must be 0 or 1, got {v:?}"))),
                    }
                }
                "pin" => uri.pin = Some(parse_pin(&v).map_err(|e| UriError(e.to_string()))?),
                _ => uri.extra.push((k, v)),
            }
        }
        Ok(uri)
    }

    /// `host:port`, with IPv6 hosts in brackets.
    pub fn server(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// `host:port`, IPv6 literals in brackets.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host:port`; an IPv6 host must be in brackets (`[::1]:443`), which
/// are removed. `None` without a valid non-zero port or with an empty host.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

impl fmt::Display for AnytlsUri {
    /// The canonical form: always a port and a `/`; the password and query
    /// values percent-encoded; `insecure=1` only when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anytls://")?;
        if let Some(pw) = &self.password {
            write!(f, "{}@", percent_encode(pw))?;
        }
        write!(f, "{}/", self.server())?;
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(sni) = &self.sni {
            params.push(("sni".into(), sni.clone()));
        }
        if self.insecure {
            params.push(("insecure".into(), "1".into()));
        }
        if let Some(pin) = &self.pin {
            params.push(("pin".into(), hex32(pin)));
        }
        params.extend(self.extra.iter().cloned());
        for (i, (k, v)) in params.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{}={}", percent_encode(k), percent_encode(v))?;
        }
        if let Some(name) = &self.name {
            write!(f, "#{}", percent_encode(name))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// sing-box outbound (client)

/// sing-box outbound TLS options (the subset AnyTLS uses), plus `pin_sha256`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboundTls {
    /// Must not be `false` (AnyTLS always uses TLS).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// TLS server name (SNI and the name checked); defaults to `server`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate.
    #[serde(default)]
    pub insecure: Option<bool>,
    /// ALPN protocols.
    #[serde(default, deserialize_with = "de_listable")]
    pub alpn: Vec<String>,
    /// Trusted root certificate(s), PEM file.
    #[serde(default)]
    pub certificate_path: Option<PathBuf>,
    /// Trusted root certificate(s), inline PEM (string or list of lines).
    #[serde(default, deserialize_with = "de_listable")]
    pub certificate: Vec<String>,
    /// Ours: accept exactly the certificate with this DER SHA-256 (64 hex digits).
    #[serde(default)]
    pub pin_sha256: Option<String>,
}

/// sing-box's `anytls` outbound, with our pool extensions and the local
/// SOCKS5 listener of the `anytls client` program.
///
/// Field names are sing-box's (and KexiChanProjectProxy/sing-box's for
/// `ensure_idle_session`, `heartbeat`, `max_connection_lifetime`, ...).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundOptions {
    /// `"anytls"` (optional in a bare object).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// sing-box tag, kept for messages.
    #[serde(default)]
    pub tag: Option<String>,
    /// Server host.
    #[serde(default)]
    pub server: Option<String>,
    /// Server port.
    #[serde(default)]
    pub server_port: Option<u16>,
    /// The password.
    #[serde(default)]
    pub password: Option<String>,
    /// Pool maintenance interval (30 s).
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_session_check_interval: Option<Duration>,
    /// Idle time after which a session is closed (30 s).
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_session_timeout: Option<Duration>,
    /// Idle sessions kept through the idle sweep (0).
    #[serde(default)]
    pub min_idle_session: Option<usize>,
    /// Value of the `client=` setting.
    #[serde(default)]
    pub client_metadata: Option<String>,
    /// TLS.
    #[serde(default)]
    pub tls: Option<OutboundTls>,
    /// sing-box dial field: TCP connect plus TLS handshake limit.
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    /// Keep this many sessions idle, pre-warmed (0 = off).
    #[serde(default)]
    pub ensure_idle_session: Option<usize>,
    /// At most this many pre-warm dials per check (0 = no cap).
    #[serde(default)]
    pub ensure_idle_session_create_rate: Option<usize>,
    /// HeartRequest interval (0 = off).
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat: Option<Duration>,
    /// Close a session when a heartbeat is not answered within this (0 = never).
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat_timeout: Option<Duration>,
    /// Close sessions older than this (0 = never).
    #[serde(default, deserialize_with = "de_duration")]
    pub max_connection_lifetime: Option<Duration>,
    /// Spread of session lifetimes.
    #[serde(default, deserialize_with = "de_duration")]
    pub connection_lifetime_jitter: Option<Duration>,
    /// Local SOCKS5 listener address (`anytls client`), default 127.0.0.1.
    #[serde(default)]
    pub listen: Option<String>,
    /// Local SOCKS5 listener port, default 1080.
    #[serde(default)]
    pub listen_port: Option<u16>,
}

impl fmt::Debug for OutboundOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundOptions")
            .field("tag", &self.tag)
            .field("server", &self.server)
            .field("server_port", &self.server_port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A client ready to build: the [`ClientConfig`] and where the local SOCKS5
/// listener goes (if the configuration says).
#[derive(Debug, Clone)]
pub struct ClientSetup {
    /// The client.
    pub config: ClientConfig,
    /// Local SOCKS5 listener from `listen`/`listen_port` (or a `socks`/`mixed`
    /// inbound of a whole sing-box config).
    pub socks_listen: Option<SocketAddr>,
    /// The outbound's tag.
    pub tag: Option<String>,
}

fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn listen_addr(
    listen: Option<&str>,
    port: Option<u16>,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    let ip = match listen {
        None | Some("") => default.ip(),
        Some(s) => s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| invalid("listen", format!("{s:?} is not an IP address")))?,
    };
    Ok(SocketAddr::new(ip, port.unwrap_or(default.port())))
}

impl OutboundOptions {
    /// The TLS options, created empty if absent.
    pub fn tls_mut(&mut self) -> &mut OutboundTls {
        self.tls.get_or_insert_with(OutboundTls::default)
    }

    /// Takes server, port, password, SNI and verification from a share link.
    pub fn apply_uri(&mut self, uri: &AnytlsUri) {
        self.server = Some(uri.host.clone());
        self.server_port = Some(uri.port);
        if let Some(pw) = &uri.password {
            self.password = Some(pw.clone());
        }
        if let Some(sni) = &uri.sni {
            self.tls_mut().server_name = Some(sni.clone());
        }
        if let Some(pin) = &uri.pin {
            self.set_verification(Verification::Pin(*pin));
        } else if uri.insecure {
            self.set_verification(Verification::Insecure);
        }
    }

    /// Sets how the certificate is checked, replacing whatever was configured.
    pub fn set_verification(&mut self, v: Verification) {
        let tls = self.tls_mut();
        tls.insecure = None;
        tls.pin_sha256 = None;
        tls.certificate_path = None;
        tls.certificate.clear();
        match v {
            Verification::WebPki => {}
            Verification::CaFile(p) => tls.certificate_path = Some(p),
            Verification::CaPem(pem) => tls.certificate = pem.lines().map(str::to_owned).collect(),
            Verification::Pin(p) => tls.pin_sha256 = Some(hex32(&p)),
            Verification::Insecure => tls.insecure = Some(true),
        }
    }

    /// Builds the client configuration. Checks the pool settings too.
    pub fn to_client_setup(&self) -> Result<ClientSetup, ConfigError> {
        if let Some(kind) = self.kind.as_deref().filter(|k| *k != "anytls") {
            return Err(invalid(
                "type",
                format!("expected \"anytls\", got {kind:?}"),
            ));
        }
        let server = self
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("server", "missing"))?;
        let port = self
            .server_port
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("server_port", "missing"))?;
        let password = self
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("password", "missing"))?;
        let mut cfg = ClientConfig::new(join_host_port(server, port), password);
        if let Some(tls) = &self.tls {
            if tls.enabled == Some(false) {
                return Err(invalid("tls.enabled", "AnyTLS always runs over TLS"));
            }
            cfg.sni = tls.server_name.clone().filter(|s| !s.is_empty());
            cfg.alpn = tls.alpn.clone();
            cfg.verification = outbound_verification(tls)?;
        }
        if let Some(m) = &self.client_metadata {
            cfg.client_name = m.clone();
        }
        if let Some(t) = nonzero(self.connect_timeout) {
            cfg.connect_timeout = t;
        }
        let pool = &mut cfg.pool;
        if let Some(d) = nonzero(self.idle_session_check_interval) {
            pool.check_interval = d;
        }
        if let Some(d) = nonzero(self.idle_session_timeout) {
            pool.idle_timeout = d;
        }
        if let Some(n) = self.min_idle_session {
            pool.min_idle = n;
        }
        if let Some(n) = self.ensure_idle_session {
            pool.ensure_idle = n;
        }
        if let Some(n) = self.ensure_idle_session_create_rate {
            pool.ensure_create_rate = n;
        }
        if self.heartbeat.is_some() {
            pool.heartbeat = nonzero(self.heartbeat);
        }
        if self.heartbeat_timeout.is_some() {
            pool.heartbeat_timeout = nonzero(self.heartbeat_timeout);
        }
        if self.max_connection_lifetime.is_some() {
            pool.max_session_lifetime = nonzero(self.max_connection_lifetime);
        }
        if let Some(j) = self.connection_lifetime_jitter {
            pool.lifetime_jitter = j;
        }
        pool.validate().map_err(|e| invalid("pool", e))?;
        let socks_listen = if self.listen.is_some() || self.listen_port.is_some() {
            Some(listen_addr(
                self.listen.as_deref(),
                self.listen_port,
                DEFAULT_SOCKS_LISTEN,
            )?)
        } else {
            None
        };
        Ok(ClientSetup {
            config: cfg,
            socks_listen,
            tag: self.tag.clone(),
        })
    }
}

fn outbound_verification(tls: &OutboundTls) -> Result<Verification, ConfigError> {
    let mut chosen = Vec::new();
    if tls.insecure == Some(true) {
        chosen.push(Verification::Insecure);
    }
    if let Some(p) = &tls.pin_sha256 {
        chosen.push(Verification::Pin(parse_pin(p)?));
    }
    if let Some(p) = &tls.certificate_path {
        chosen.push(Verification::CaFile(p.clone()));
    }
    if !tls.certificate.is_empty() {
        chosen.push(Verification::CaPem(inline_ca(&tls.certificate)?));
    }
    if chosen.len() > 1 {
        return Err(invalid(
            "tls",
            "choose one of insecure, pin_sha256, certificate_path and certificate",
        ));
    }
    Ok(chosen.pop().unwrap_or(Verification::WebPki))
}

/// Inline trusted certificates stay in memory (checked here, so that a bad
/// one is reported with its field).
fn inline_ca(lines: &[String]) -> Result<String, ConfigError> {
    let pem = join_lines(lines);
    crate::tls::pem_certs(&pem).map_err(|e| invalid("tls.certificate", e))?;
    Ok(pem)
}

/// sing-box joins list-of-lines values with `\n` and no trailing newline.
fn join_lines(lines: &[String]) -> String {
    lines.join("\n")
}

// ---------------------------------------------------------------------------
// sing-box inbound (server)

/// One user of an inbound.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Name (for logs).
    #[serde(default)]
    pub name: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// sing-box inbound TLS options (the subset we support).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboundTls {
    /// Must not be `false`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Name for a generated self-signed certificate (and the share link's SNI).
    #[serde(default)]
    pub server_name: Option<String>,
    /// ALPN protocols.
    #[serde(default, deserialize_with = "de_listable")]
    pub alpn: Vec<String>,
    /// Certificate chain, PEM file.
    #[serde(default)]
    pub certificate_path: Option<PathBuf>,
    /// Private key, PEM file.
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// Certificate chain, inline PEM (string or list of lines).
    #[serde(default, deserialize_with = "de_listable")]
    pub certificate: Vec<String>,
    /// Private key, inline PEM (string or list of lines).
    #[serde(default, deserialize_with = "de_listable")]
    pub key: Vec<String>,
}

/// sing-box's `anytls` inbound, plus our `fallback`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundOptions {
    /// `"anytls"` (optional in a bare object).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// sing-box tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Listen address (IP), default `0.0.0.0`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Listen port, default 8443.
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// Users.
    #[serde(default)]
    pub users: Vec<User>,
    /// Padding scheme lines (joined with `\n`, no trailing newline).
    #[serde(default, deserialize_with = "de_listable")]
    pub padding_scheme: Vec<String>,
    /// TLS. Without a certificate a self-signed one is made.
    #[serde(default)]
    pub tls: Option<InboundTls>,
    /// Ours: where connections that fail authentication go (`host:port`).
    #[serde(default)]
    pub fallback: Option<String>,
}

/// A server ready to bind.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The server.
    pub config: ServerConfig,
    /// The names of the certificate, when it was generated (self-signed) here.
    pub self_signed: Option<Vec<String>>,
    /// `tls.server_name`, if given.
    pub server_name: Option<String>,
}

impl InboundOptions {
    /// The TLS options, created empty if absent.
    pub fn tls_mut(&mut self) -> &mut InboundTls {
        self.tls.get_or_insert_with(InboundTls::default)
    }

    /// Builds the server configuration. Needs at least one user; loads or makes
    /// the certificate.
    pub fn to_server_setup(&self) -> Result<ServerSetup, ConfigError> {
        if let Some(kind) = self.kind.as_deref().filter(|k| *k != "anytls") {
            return Err(invalid(
                "type",
                format!("expected \"anytls\", got {kind:?}"),
            ));
        }
        let listen = listen_addr(
            self.listen.as_deref(),
            self.listen_port,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_SERVER_PORT),
        )?;
        if self.users.is_empty() {
            return Err(invalid("users", "at least one user is needed"));
        }
        if let Some(u) = self.users.iter().find(|u| u.password.is_empty()) {
            return Err(invalid(
                "users",
                format!("user {:?} has an empty password", u.name),
            ));
        }
        let tls = self.tls.clone().unwrap_or_default();
        if tls.enabled == Some(false) {
            return Err(invalid("tls.enabled", "AnyTLS always runs over TLS"));
        }
        let server_name = tls.server_name.clone().filter(|s| !s.is_empty());
        let (identity, self_signed) = inbound_identity(&tls, listen, server_name.as_deref())?;
        let mut cfg = ServerConfig::new(String::new(), identity);
        cfg.users = self
            .users
            .iter()
            .map(|u| (u.name.clone(), u.password.clone()))
            .collect();
        cfg.alpn = tls.alpn.clone();
        if !self.padding_scheme.is_empty() {
            cfg.padding = PaddingScheme::parse(join_lines(&self.padding_scheme).into_bytes())
                .map_err(|e| invalid("padding_scheme", e))?;
        }
        if let Some(fb) = self.fallback.as_deref() {
            cfg.fallback = Some(resolve("fallback", fb)?);
        }
        Ok(ServerSetup {
            listen,
            config: cfg,
            self_signed,
            server_name,
        })
    }
}

fn resolve(field: &'static str, addr: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .map_err(|e| invalid(field, format!("{addr:?}: {e}")))?
        .next()
        .ok_or_else(|| invalid(field, format!("{addr:?} resolves to nothing")))
}

/// Names for a self-signed certificate: the server name (or `localhost`) and
/// the listen IP when it is a specific one.
pub fn self_signed_names(server_name: Option<&str>, listen: SocketAddr) -> Vec<String> {
    let mut names = vec![server_name.unwrap_or("localhost").to_owned()];
    if !listen.ip().is_unspecified() {
        let ip = listen.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

fn inbound_identity(
    tls: &InboundTls,
    listen: SocketAddr,
    server_name: Option<&str>,
) -> Result<(Identity, Option<Vec<String>>), ConfigError> {
    let has_files = tls.certificate_path.is_some() || tls.key_path.is_some();
    let has_inline = !tls.certificate.is_empty() || !tls.key.is_empty();
    if has_files && has_inline {
        return Err(invalid(
            "tls",
            "give certificate_path/key_path or certificate/key, not both",
        ));
    }
    if has_files {
        let (Some(c), Some(k)) = (&tls.certificate_path, &tls.key_path) else {
            return Err(invalid("tls", "certificate_path and key_path go together"));
        };
        return Ok((Identity::from_pem_files(c, k)?, None));
    }
    if has_inline {
        if tls.certificate.is_empty() || tls.key.is_empty() {
            return Err(invalid("tls", "certificate and key go together"));
        }
        let cert_pem = join_lines(&tls.certificate);
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("tls.certificate", e))?;
        if certs.is_empty() {
            return Err(invalid("tls.certificate", "no PEM certificate found"));
        }
        let key = PrivateKeyDer::from_pem_slice(join_lines(&tls.key).as_bytes())
            .map_err(|e| invalid("tls.key", e))?;
        return Ok((Identity { certs, key }, None));
    }
    let names = self_signed_names(server_name, listen);
    Ok((Identity::self_signed(&names)?, Some(names)))
}

// ---------------------------------------------------------------------------
// Files: one entry or a whole sing-box config

fn json_err(context: String) -> impl FnOnce(serde_json::Error) -> ConfigError {
    move |err| ConfigError::Json { context, err }
}

/// Parses `text` as one `anytls` entry, or as a whole sing-box config (it has
/// `inbounds` or `outbounds`) whose first entry of `type: "anytls"` in
/// `list_key` is taken. Returns the entry and the parsed document.
fn parse_entry<T: serde::de::DeserializeOwned>(
    text: &str,
    list_key: &str,
    what: &str,
) -> Result<(T, serde_json::Value), ConfigError> {
    let root: serde_json::Value = serde_json::from_str(text).map_err(json_err(String::new()))?;
    let Some(obj) = root.as_object() else {
        return Err(ConfigError::NotFound(format!(
            "expected a JSON object (an anytls {what}, or a sing-box config)"
        )));
    };
    if !obj.contains_key("inbounds") && !obj.contains_key("outbounds") {
        // From the text again, so that errors carry line and column.
        let entry = serde_json::from_str(text).map_err(json_err(String::new()))?;
        return Ok((entry, root));
    }
    let list = obj
        .get(list_key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| ConfigError::NotFound(format!("no {list_key:?} list in the config")))?;
    let (i, entry) = list
        .iter()
        .enumerate()
        .find(|(_, e)| e.get("type").and_then(|t| t.as_str()) == Some("anytls"))
        .ok_or_else(|| {
            ConfigError::NotFound(format!("no entry of type \"anytls\" in {list_key:?}"))
        })?;
    let entry = T::deserialize(entry).map_err(json_err(format!("{list_key}[{i}]: ")))?;
    Ok((entry, root))
}

/// Parses a client configuration: an `anytls` outbound object, or a whole
/// sing-box config whose first `anytls` outbound is used (and whose first
/// `socks`/`mixed` inbound, if any, gives the SOCKS5 listen address when the
/// outbound has none).
pub fn parse_client_json(text: &str) -> Result<OutboundOptions, ConfigError> {
    let (mut opts, root): (OutboundOptions, _) = parse_entry(text, "outbounds", "outbound")?;
    if opts.listen.is_none() && opts.listen_port.is_none() {
        let socks = root
            .get("inbounds")
            .and_then(|v| v.as_array())
            .and_then(|l| {
                l.iter().find(|e| {
                    matches!(
                        e.get("type").and_then(|t| t.as_str()),
                        Some("socks" | "mixed")
                    )
                })
            });
        if let Some(s) = socks {
            opts.listen = s.get("listen").and_then(|v| v.as_str()).map(str::to_owned);
            opts.listen_port = s
                .get("listen_port")
                .and_then(|v| v.as_u64())
                .and_then(|p| u16::try_from(p).ok());
        }
    }
    Ok(opts)
}

/// Parses a server configuration: an `anytls` inbound object, or a whole
/// sing-box config whose first `anytls` inbound is used.
pub fn parse_server_json(text: &str) -> Result<InboundOptions, ConfigError> {
    Ok(parse_entry(text, "inbounds", "inbound")?.0)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })
}

/// [`parse_client_json`] of a file; errors name the file.
pub fn load_client_file(path: &Path) -> Result<OutboundOptions, ConfigError> {
    parse_client_json(&read(path)?).map_err(|e| in_file(path, e))
}

/// [`parse_server_json`] of a file; errors name the file.
pub fn load_server_file(path: &Path) -> Result<InboundOptions, ConfigError> {
    parse_server_json(&read(path)?).map_err(|e| in_file(path, e))
}

fn in_file(path: &Path, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Json { context, err } => ConfigError::Json {
            context: format!("{}: {context}", path.display()),
            err,
        },
        e => e,
    }
}

/// A random URL-safe password: 18 random bytes as 24 characters of a 64-letter
/// alphabet (144 bits): base64url with `.` in place of `-`, so that a password
/// never starts like a command-line option.
pub fn generate_password() -> std::io::Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes)
        .map_err(|e| std::io::Error::other(format!("no OS randomness: {e}")))?;
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[(n >> shift & 63) as usize] as char);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
