//! Configuration the way users write it: sing-box JSON (the `anytls` outbound
//! and inbound, whole sing-box configs), mihomo (Clash.Meta) YAML, Go duration
//! strings and `anytls://` share URIs; plus the conversion into
//! [`ClientConfig`](crate::ClientConfig) and [`ServerConfig`](crate::ServerConfig).
//!
//! * [`load_client_config`] / [`parse_client_config`] read what `anytls client
//!   -c FILE` takes: a sing-box `anytls` outbound object or a whole sing-box
//!   config (its `anytls` outbound, and every `mixed`, `socks` and `http`
//!   inbound as a local listener), or a mihomo config (an `anytls` entry of
//!   `proxies`, `port`/`socks-port`/`mixed-port` and `mixed`/`socks`/`http`
//!   `listeners`) or one bare mihomo `anytls` proxy. The result is a
//!   [`ClientOptions`]; [`ClientOptions::to_client_setup`] builds the
//!   [`ClientSetup`].
//! * [`load_server_config`] / [`parse_server_config`]: a sing-box `anytls`
//!   inbound or whole config, or a mihomo config with an `anytls` listener (or
//!   one bare listener), into [`ServerOptions`] and [`ServerSetup`].
//! * The format comes from the file name (`.json`/`.jsonc`, `.yaml`/`.yml`) or
//!   else from the text (`{` first: JSON). JSON may carry `//` and `/* */`
//!   comments and trailing commas, as sing-box allows.
//! * The whole documented schema of the anytls outbound and inbound, their TLS
//!   fields and the shared dial and listen fields is accepted. What maps onto
//!   this program is honoured; what does not is either reported in
//!   [`ClientSetup::notes`] / [`ServerSetup::notes`] (ignored, with why) or,
//!   when ignoring it would change where traffic goes or weaken its
//!   protection (`detour`, `netns`, `tls.ech`, `tls.reality`, public-key pins,
//!   ACME, ...), refused with an error. Unknown fields inside the anytls
//!   entries and listeners are errors; other entries and sections of a whole
//!   config are left alone.
//! * Every parse error names the file, line and column and the full path of
//!   the field (`client.json:14:23: outbounds[0].tls.min_version: ...`).
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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::tls::{TlsError, hex32, parse_pin};

mod mihomo;
mod singbox;
mod source;

pub use mihomo::{MihomoListener, MihomoProxy};
pub use singbox::{
    ClientOptions, ClientSetup, DomainResolver, ExternalAccountOptions, InboundAcme,
    InboundOptions, InboundTls, ListenOptions, ListenerSetup, LocalInbound, LocalUser, Located,
    OutboundOptions, OutboundTls, ServerOptions, ServerSetup, User, default_acme_directory,
    protocols_name, self_signed_names,
};
pub use source::{
    ConfigFormat, load_client_config, load_server_config, parse_client_config, parse_server_config,
};

/// Default port of `anytls://` URIs.
pub const DEFAULT_URI_PORT: u16 = 443;
/// Default local proxy listener of the client program.
pub const DEFAULT_SOCKS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);
/// Default port of the server program.
pub const DEFAULT_SERVER_PORT: u16 = 8443;

/// A configuration problem. The message names the file, the field and, for
/// parse errors, the line and column.
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
    /// Bad syntax, a wrong type, an unknown field or a refused value.
    #[error("{source_name}:{line}:{column}: {}{msg}", path_prefix(path))]
    Parse {
        /// The file name, or `config` for text without one.
        source_name: String,
        /// 1-based line (0: unknown).
        line: usize,
        /// 1-based column (0: unknown).
        column: usize,
        /// The field, e.g. `outbounds[0].tls.min_version` (`.`: the document).
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A field has an unusable value (found after parsing, so without a line).
    #[error("{field}: {msg}")]
    Invalid {
        /// The field, with the file and the entry when known
        /// (`client.json: outbounds[1].server`).
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// The entry to use is not in the config.
    #[error("{0}")]
    NotFound(String),
    /// Not a format or a kind of document this program reads.
    #[error("{0}")]
    Unsupported(String),
    /// TLS material could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A bad `anytls://` URI.
    #[error(transparent)]
    Uri(#[from] UriError),
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn invalid(field: impl Into<String>, msg: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        msg: msg.to_string(),
    }
}

/// What kind of remark a [`ConfigNote`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteKind {
    /// What was taken from the config (which entry, which listener).
    Taken,
    /// A field that was accepted but has no effect here, and why.
    Ignored,
    /// A field that is not honoured in a way the user should know about
    /// (the connection looks or behaves differently than the config asks).
    Warning,
}

/// One line of the startup summary: what the config gave, what was ignored
/// and why, and warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigNote {
    /// Taken, ignored or warning.
    pub kind: NoteKind,
    /// The field (`outbounds[1].tls.utls`), with the file when known.
    pub field: String,
    /// The remark.
    pub text: String,
}

impl fmt::Display for ConfigNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            NoteKind::Ignored => write!(f, "{}: ignored: {}", self.field, self.text),
            NoteKind::Taken | NoteKind::Warning => write!(f, "{}: {}", self.field, self.text),
        }
    }
}

/// Collects notes under a path prefix.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    prefix: String,
    list: Vec<ConfigNote>,
}

impl Notes {
    fn new(prefix: impl Into<String>) -> Notes {
        Notes {
            prefix: prefix.into(),
            list: Vec::new(),
        }
    }

    fn field(&self, field: &str) -> String {
        join_path(&self.prefix, field)
    }

    fn push(&mut self, kind: NoteKind, field: &str, text: impl Into<String>) {
        let field = self.field(field);
        self.list.push(ConfigNote {
            kind,
            field,
            text: text.into(),
        });
    }

    fn taken(&mut self, field: &str, text: impl Into<String>) {
        self.push(NoteKind::Taken, field, text);
    }

    fn warn(&mut self, field: &str, text: impl Into<String>) {
        self.push(NoteKind::Warning, field, text);
    }

    /// An ignored note when `set` (the field has a non-default value).
    fn ignored_if(&mut self, set: bool, field: &str, why: &str) {
        if set {
            self.push(NoteKind::Ignored, field, why);
        }
    }
}

/// `a` + `.` + `b`, either may be empty; `b` may start with `[`.
fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (false, true) => a.to_owned(),
        (false, false) if b.starts_with('[') || a.ends_with(": ") => format!("{a}{b}"),
        (false, false) => format!("{a}.{b}"),
    }
}

/// Runs `build` with its notes and its errors' fields under `prefix` +
/// `path` (`client.json: outbounds[1]`).
fn under<T>(
    prefix: &str,
    path: &str,
    build: impl FnOnce(&mut Notes) -> Result<T, ConfigError>,
) -> Result<(T, Vec<ConfigNote>), ConfigError> {
    let origin = join_path(prefix, path);
    let mut n = Notes::new(origin.clone());
    let v = build(&mut n).map_err(prefixed(&origin))?;
    Ok((v, n.list))
}

/// Puts `prefix` in front of the field of an [`ConfigError::Invalid`].
fn prefixed(prefix: &str) -> impl Fn(ConfigError) -> ConfigError + '_ {
    move |e| match e {
        ConfigError::Invalid { field, msg } => ConfigError::Invalid {
            field: join_path(prefix, &field),
            msg,
        },
        e => e,
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
        // nanoseconds. 18 digits resolve below a nanosecond of any unit (a day
        // is 8.64e13 ns), and 10^18 x 8.64e13 stays far inside u128.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac_digits.bytes().take(18) {
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
        Nothing(()),
    }
    // `""`, a list of nothing but `""`, or null (a YAML key left empty) is
    // unset, as in sing-box and mihomo.
    Ok(match Listable::deserialize(d) {
        Ok(Listable::Nothing(())) => Vec::new(),
        Ok(Listable::One(s)) if s.is_empty() => Vec::new(),
        Ok(Listable::One(s)) => vec![s],
        Ok(Listable::Many(v)) if v.iter().all(String::is_empty) => Vec::new(),
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
        let password = userinfo
            .map(|u| percent_decode(u, false))
            .transpose()
            // Never echo the password.
            .map_err(|_| bad("bad percent escape in the password"))?;
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
mod edge_cases;
#[cfg(test)]
mod tests;
