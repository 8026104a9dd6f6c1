//! HTTP/1.x proxy messages (RFC 9110, RFC 9112), without I/O: request and
//! response heads (parsed with `httparse`), request targets, body framing,
//! the heads forwarded on either side and the proxy's own responses.
//!
//! Bodies are never decoded, only delimited: [`BodyDecoder`] tells how many
//! of the bytes read belong to the body (chunked framing included), and the
//! bytes are forwarded as they came.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use anytls_core::{Host, SocksAddr};
use base64::Engine;

/// Most header fields a request or response head may have (more: 431, or
/// 502 for a response).
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line of a chunked body (size and extensions).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section of a chunked body.
pub const MAX_TRAILERS: usize = 64 * 1024;

/// What the proxy answers on a request it cannot serve: the status and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// The status to answer with (400, 431, 502, ...).
    pub status: u16,
    /// What is wrong (also the response body).
    pub msg: String,
}

impl HttpError {
    /// `status` because of `msg`.
    pub fn new(status: u16, msg: impl Into<String>) -> HttpError {
        HttpError {
            status,
            msg: msg.into(),
        }
    }

    fn bad(msg: impl Into<String>) -> HttpError {
        HttpError::new(400, msg)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, reason(self.status), self.msg)
    }
}

impl std::error::Error for HttpError {}

/// One header field. `Debug` shows the value's length only (it may be a
/// credential).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name as received.
    pub name: String,
    /// The field value (not necessarily UTF-8).
    pub value: Vec<u8>,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <{} bytes>", self.name, self.value.len())
    }
}

impl Header {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// A request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method (`GET`, `CONNECT`, ...).
    pub method: String,
    /// The request target as received.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields, in order.
    pub headers: Vec<Header>,
}

/// A response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The status code.
    pub code: u16,
    /// The reason phrase.
    pub reason: String,
    /// The header fields, in order.
    pub headers: Vec<Header>,
}

/// The number of CR and LF bytes at the front of `buf` (empty lines before
/// a request line are ignored, RFC 9112 section 2.2).
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// The length of the head at the front of `buf` (through the empty line
/// that ends it; CRLF or a bare LF), if it is complete. `scanned` is how
/// much of `buf` an earlier call already searched, to search only the new
/// bytes. `buf` must not start with an empty line (see
/// [`leading_empty_lines`]).
pub fn head_len(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    let rest = buf.get(from..)?;
    for (i, &b) in rest.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let at = from + i + 1;
        match buf.get(at..) {
            Some([b'\n', ..]) => return Some(at + 1),
            Some([b'\r', b'\n', ..]) => return Some(at + 2),
            _ => {}
        }
    }
    None
}

fn headers_of(raw: &[httparse::Header<'_>]) -> Vec<Header> {
    raw.iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// Parses a complete request head (see [`head_len`]). Errors: 400, or 431
/// for more than [`MAX_HEADERS`] fields.
pub fn parse_request(head: &[u8]) -> Result<RequestHead, HttpError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "too many header fields"));
        }
        Err(e) => return Err(HttpError::bad(format!("malformed request: {e}"))),
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HttpError::bad("incomplete request line"));
    };
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        headers: headers_of(req.headers),
    })
}

/// Parses a complete response head. Errors are 502 (the origin's fault).
pub fn parse_response(head: &[u8]) -> Result<ResponseHead, HttpError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::new(502, "incomplete response head"));
        }
        Err(e) => return Err(HttpError::new(502, format!("malformed response: {e}"))),
    }
    let (Some(minor_version), Some(code)) = (resp.version, resp.code) else {
        return Err(HttpError::new(502, "incomplete status line"));
    };
    Ok(ResponseHead {
        minor_version,
        code,
        reason: resp.reason.unwrap_or("").to_owned(),
        headers: headers_of(resp.headers),
    })
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`: a tunnel.
    Tunnel(SocksAddr),
    /// An absolute-form `http://` URI: forwarded in origin-form.
    Forward {
        /// The origin.
        dest: SocksAddr,
        /// The URI's authority, as the `Host` field to send.
        authority: String,
        /// The origin-form target (path and query; `/` when empty).
        path: String,
    },
}

/// The destination of a request: `CONNECT` takes an authority
/// (`host:port`, `[v6]:port`), other methods an absolute `http://` URI
/// (default port 80). Origin-form targets, `https://` URIs and URIs with
/// user info are 400.
pub fn parse_target(method: &str, target: &str) -> Result<Target, HttpError> {
    if method.eq_ignore_ascii_case("CONNECT") {
        return parse_authority(target, None).map(Target::Tunnel);
    }
    let scheme_end = target
        .find("://")
        .ok_or_else(|| HttpError::bad(format!("not a proxy request (target {target:?})")))?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(HttpError::bad(format!(
            "scheme {scheme:?} is not forwarded (only http://; use CONNECT)"
        )));
    }
    let rest = &target[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(HttpError::bad("user info in the request URI"));
    }
    let dest = parse_authority(authority, Some(80))?;
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(Target::Forward {
        dest,
        authority: authority.to_owned(),
        path,
    })
}

/// Parses `host[:port]` (`[v6]` for IPv6). Without a port, `default_port`,
/// or a 400 when that is `None`. Port 0 is refused.
pub fn parse_authority(s: &str, default_port: Option<u16>) -> Result<SocksAddr, HttpError> {
    let bad = || HttpError::bad(format!("bad authority {s:?}"));
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or_else(bad)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (Host::Ipv6(ip), port)
    } else {
        let (name, port) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let host = match name.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ipv4(ip),
            Err(_) if is_reg_name(name) => Host::Domain(name.to_owned()),
            Err(_) => return Err(bad()),
        };
        (host, port)
    };
    let port = match port {
        Some(p) => parse_port(p).ok_or_else(bad)?,
        None => default_port.ok_or_else(bad)?,
    };
    Ok(SocksAddr { host, port })
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n != 0)
}

/// A host name as RFC 3986's reg-name allows (no percent-decoding), 1 to 255
/// bytes.
fn is_reg_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
}

/// How a message body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

fn values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.is(name))
        .map(|h| h.value.as_slice())
}

/// The comma-separated elements of every `name` field, trimmed and
/// lowercased; empty elements skipped.
pub fn list_values(headers: &[Header], name: &str) -> Vec<String> {
    values(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|e| String::from_utf8_lossy(e.trim_ascii()).to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

/// `Content-Length`: one value (repeated identical values, also as a
/// list, count as one); `None` when absent.
fn content_length(headers: &[Header]) -> Result<Option<u64>, String> {
    let mut found = None;
    for v in values(headers, "content-length") {
        for e in v.split(|&b| b == b',') {
            let e = e.trim_ascii();
            if e.is_empty() || e.len() > 19 || !e.iter().all(u8::is_ascii_digit) {
                return Err(format!(
                    "bad Content-Length {:?}",
                    String::from_utf8_lossy(v)
                ));
            }
            let n: u64 = std::str::from_utf8(e)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad Content-Length")?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length values".into());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The framing of a request body. Refused (400): `Transfer-Encoding`
/// together with `Content-Length` (request smuggling), a transfer coding
/// other than a final `chunked`, `Transfer-Encoding` in HTTP/1.0, a bad
/// `Content-Length`.
pub fn request_framing(req: &RequestHead) -> Result<Framing, HttpError> {
    let te = list_values(&req.headers, "transfer-encoding");
    let has_te = values(&req.headers, "transfer-encoding").next().is_some();
    let cl = content_length(&req.headers).map_err(HttpError::bad)?;
    if has_te {
        if cl.is_some() {
            return Err(HttpError::bad("both Transfer-Encoding and Content-Length"));
        }
        if req.minor_version == 0 {
            return Err(HttpError::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let chunked_last = te.last().is_some_and(|c| c == "chunked");
        if !chunked_last || te.iter().filter(|c| *c == "chunked").count() != 1 {
            return Err(HttpError::bad(format!(
                "transfer coding {} (only chunked last is accepted)",
                te.join(", ")
            )));
        }
        return Ok(Framing::Chunked);
    }
    Ok(cl.map_or(Framing::None, Framing::Length))
}

/// The framing of a response body to a request with `method`. A bad
/// `Content-Length` is a 502.
pub fn response_framing(method: &str, resp: &ResponseHead) -> Result<Framing, HttpError> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&resp.code)
        || resp.code == 204
        || resp.code == 304
    {
        return Ok(Framing::None);
    }
    if values(&resp.headers, "transfer-encoding").next().is_some() {
        let te = list_values(&resp.headers, "transfer-encoding");
        return Ok(if te.last().is_some_and(|c| c == "chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    match content_length(&resp.headers) {
        Ok(Some(n)) => Ok(Framing::Length(n)),
        Ok(None) => Ok(Framing::Close),
        Err(e) => Err(HttpError::new(502, format!("origin sent {e}"))),
    }
}

/// Delimits a body: [`feed`](Self::feed) it the bytes that follow the head
/// and it says how many belong to the body. Bounded state; never panics.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    /// Chunk size digits so far (value, count).
    Size(u64, usize),
    /// In a chunk extension (value, line length so far).
    Ext(u64, usize),
    /// CR seen after the chunk size line.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (trailer bytes so far).
    TrailerStart(usize),
    TrailerLine(usize),
    TrailerLf(usize),
    FinalLf,
    Done,
}

impl BodyDecoder {
    /// A decoder for a body with framing `f`.
    pub fn new(f: Framing) -> BodyDecoder {
        let state = match f {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size(0, 0),
            Framing::Close => State::Close,
        };
        BodyDecoder { state }
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the body ends only when the connection does.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Close
    }

    /// How many bytes at the front of `buf` belong to the body; fewer than
    /// `buf.len()` only when the body ended there. Errors: malformed chunked
    /// framing (400 for a request; the caller decides for a response).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, HttpError> {
        let mut at = 0;
        while at < buf.len() {
            let b = buf[at];
            self.state = match self.state {
                State::Done => return Ok(at),
                State::Close => return Ok(buf.len()),
                State::Length(n) | State::Data(n) => {
                    let take = n.min((buf.len() - at) as u64);
                    at += take as usize;
                    let chunk = matches!(self.state, State::Data(_));
                    self.state = match (chunk, n - take) {
                        (false, 0) => State::Done,
                        (false, left) => State::Length(left),
                        (true, 0) => State::DataCr,
                        (true, left) => State::Data(left),
                    };
                    continue;
                }
                State::Size(v, digits) => match (b as char).to_digit(16) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(HttpError::bad("chunk size too large"));
                        }
                        State::Size(v * 16 + u64::from(d), digits + 1)
                    }
                    None if digits == 0 => return Err(HttpError::bad("missing chunk size")),
                    None => match b {
                        b';' | b' ' | b'\t' => State::Ext(v, digits + 1),
                        b'\r' => State::SizeLf(v),
                        _ => return Err(HttpError::bad("bad chunk size")),
                    },
                },
                State::Ext(v, len) => match b {
                    b'\r' => State::SizeLf(v),
                    b'\n' => return Err(HttpError::bad("bare LF in a chunk line")),
                    _ if len >= MAX_CHUNK_LINE => {
                        return Err(HttpError::bad("chunk extension too long"));
                    }
                    _ => State::Ext(v, len + 1),
                },
                State::SizeLf(v) => match (b, v) {
                    (b'\n', 0) => State::TrailerStart(0),
                    (b'\n', v) => State::Data(v),
                    _ => return Err(HttpError::bad("chunk size line not ended by CRLF")),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(HttpError::bad("chunk data not followed by CRLF")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size(0, 0),
                    _ => return Err(HttpError::bad("chunk data not followed by CRLF")),
                },
                State::TrailerStart(n) => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => return Err(HttpError::bad("bare LF in the trailer section")),
                    _ => State::TrailerLine(n + 1),
                },
                State::TrailerLine(n) => match b {
                    b'\r' => State::TrailerLf(n),
                    b'\n' => return Err(HttpError::bad("bare LF in the trailer section")),
                    _ if n >= MAX_TRAILERS => {
                        return Err(HttpError::bad("trailer section too large"));
                    }
                    _ => State::TrailerLine(n + 1),
                },
                State::TrailerLf(n) => match b {
                    b'\n' => State::TrailerStart(n + 2),
                    _ => return Err(HttpError::bad("trailer line not ended by CRLF")),
                },
                State::FinalLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(HttpError::bad("chunked body not ended by CRLF")),
                },
            };
            at += 1;
        }
        Ok(at)
    }
}

/// Header fields a proxy does not forward: hop-by-hop ones (RFC 9110
/// section 7.6.1) and everything addressed to a proxy (`Proxy-*`).
/// `Transfer-Encoding` is kept: bodies are forwarded as they came.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 5] = ["connection", "keep-alive", "te", "trailer", "upgrade"];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Whether the client wants the connection kept open after this request:
/// HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `keep-alive`
/// (in `Connection` or the old `Proxy-Connection`).
pub fn wants_keep_alive(req: &RequestHead) -> bool {
    let mut tokens = list_values(&req.headers, "connection");
    tokens.extend(list_values(&req.headers, "proxy-connection"));
    if tokens.iter().any(|t| t == "close") {
        return false;
    }
    req.minor_version >= 1 || tokens.iter().any(|t| t == "keep-alive")
}

/// Fields `Connection` may not nominate for removal: the message framing
/// (which this proxy frames the body by) and `Host`.
const NOT_NOMINABLE: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Writes the fields of `headers` that are forwarded: not hop-by-hop, not
/// named in `Connection` (except the framing fields, which stay), not in
/// `skip`.
fn put_forwarded(out: &mut Vec<u8>, headers: &[Header], skip: &[&str]) {
    let listed = list_values(headers, "connection");
    for h in headers {
        let nominated = listed.iter().any(|l| h.is(l)) && !NOT_NOMINABLE.iter().any(|n| h.is(n));
        if is_hop_by_hop(&h.name) || nominated || skip.iter().any(|s| h.is(s)) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The head sent to the origin for a forwarded request: origin-form
/// `path`, `Host` set to the URI's `authority` (RFC 9112 section 3.2.2),
/// hop-by-hop and `Proxy-*` fields dropped, and `Connection: close` (every
/// forwarded request has an AnyTLS stream of its own). The version stays
/// the client's.
pub fn forward_request_head(req: &RequestHead, authority: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!(
            "{} {path} HTTP/1.{}\r\nHost: {authority}\r\n",
            req.method, req.minor_version
        )
        .as_bytes(),
    );
    put_forwarded(&mut out, &req.headers, &["host"]);
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// The head sent to the client for an origin's response: HTTP/1.1, the
/// origin's status, hop-by-hop fields dropped (`Content-Length` too when
/// `Transfer-Encoding` is present, RFC 9112 section 6.3), and our own
/// `Connection`: `close` unless `keep_alive`, `keep-alive` for an HTTP/1.0
/// client that keeps it.
pub fn forward_response_head(resp: &ResponseHead, keep_alive: bool, client_minor: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", resp.code, resp.reason).as_bytes());
    let has_te = values(&resp.headers, "transfer-encoding").next().is_some();
    let skip: &[&str] = if has_te { &["content-length"] } else { &[] };
    put_forwarded(&mut out, &resp.headers, skip);
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The credentials of a `Proxy-Authorization: Basic ...` field (RFC 7617):
/// user and password, split at the first colon. `None` when there is no
/// such field or it does not decode.
pub fn basic_credentials(headers: &[Header]) -> Option<(Vec<u8>, Vec<u8>)> {
    let v = values(headers, "proxy-authorization").next()?.trim_ascii();
    let sp = v.iter().position(|&b| b == b' ')?;
    let (scheme, token) = v.split_at(sp);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// The `Proxy-Authorization` value for `user` and `password` (client side).
pub fn basic_auth_value(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// The reason phrase of the statuses the proxy sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The proxy's answer to a successful `CONNECT`.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// An error response with `text` as a plain-text body; `close` adds
/// `Connection: close`.
pub fn error_response(status: u16, text: &str, close: bool) -> Vec<u8> {
    let body = format!("{text}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// `407 Proxy Authentication Required` asking for Basic credentials in
/// realm `anytls`; `close` adds `Connection: close`.
pub fn auth_required(close: bool) -> Vec<u8> {
    let mut out = String::from(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"anytls\"\r\nContent-Length: 0\r\n",
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(text: &str) -> RequestHead {
        let n = head_len(text.as_bytes(), 0).expect("complete head");
        parse_request(&text.as_bytes()[..n]).unwrap()
    }

    fn resp(text: &str) -> ResponseHead {
        parse_response(text.as_bytes()).unwrap()
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let h = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(head_len(h, 0), Some(h.len() - 4));
        for cut in 0..h.len() - 4 {
            assert_eq!(head_len(&h[..cut], 0), None, "cut {cut}");
            // Searching only what is new finds it too.
            assert_eq!(head_len(h, cut), Some(h.len() - 4), "from {cut}");
        }
        assert_eq!(head_len(b"GET / HTTP/1.0\n\nx", 0), Some(16));
        assert_eq!(leading_empty_lines(b"\r\n\r\nGET"), 4);
    }

    #[test]
    fn targets() {
        let fwd = |t: &str| parse_target("GET", t);
        assert_eq!(
            fwd("http://example.com/a?b=c#frag").unwrap(),
            Target::Forward {
                dest: SocksAddr::domain("example.com", 80),
                authority: "example.com".into(),
                path: "/a?b=c".into()
            }
        );
        assert_eq!(
            fwd("HTTP://127.0.0.1:8080?q").unwrap(),
            Target::Forward {
                dest: SocksAddr::from(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))),
                authority: "127.0.0.1:8080".into(),
                path: "/?q".into()
            }
        );
        let Target::Forward { dest, path, .. } = fwd("http://[::1]:81").unwrap() else {
            panic!()
        };
        assert_eq!(
            (dest.host, dest.port, path.as_str()),
            (Host::Ipv6(Ipv6Addr::LOCALHOST), 81, "/")
        );
        for bad in [
            "/just/a/path",
            "*",
            "https://example.com/",
            "http://user:pw@example.com/",
            "http://exa mple.com/",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:+80/",
            "http://::1/",
            "http:///path",
            "http://[::1/",
        ] {
            assert_eq!(fwd(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            parse_target("CONNECT", "example.com:443").unwrap(),
            Target::Tunnel(SocksAddr::domain("example.com", 443))
        );
        assert_eq!(
            parse_target("connect", "[::1]:443").unwrap(),
            Target::Tunnel(SocksAddr {
                host: Host::Ipv6(Ipv6Addr::LOCALHOST),
                port: 443
            })
        );
        for bad in ["example.com", "example.com:", ":443", "[::1]", "http://a:1"] {
            assert!(parse_target("CONNECT", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_framing_rules() {
        let f = |h: &str| request_framing(&req(&format!("POST http://a/ HTTP/1.1\r\n{h}\r\n")));
        assert_eq!(f(""), Ok(Framing::None));
        assert_eq!(f("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(
            f("Content-Length: 12\r\ncontent-length: 12, 12\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(f("Transfer-Encoding: chunked\r\n"), Ok(Framing::Chunked));
        assert_eq!(
            f("Transfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            "Content-Length: 1\r\nContent-Length: 2\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +1\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Content-Length: \r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
        ] {
            assert_eq!(f(bad).unwrap_err().status, 400, "{bad}");
        }
        let old = req("POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(request_framing(&old).is_err());
    }

    #[test]
    fn response_framing_rules() {
        let f = |m: &str, t: &str| response_framing(m, &resp(t));
        assert_eq!(
            f("GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::None)
        );
        for code in [100, 103, 204, 304] {
            let t = format!("HTTP/1.1 {code} X\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(f("GET", &t), Ok(Framing::None), "{code}");
        }
        assert_eq!(
            f(
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Framing::Close)
        );
        assert_eq!(f("GET", "HTTP/1.0 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            f("GET", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .status,
            502
        );
    }

    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(i)
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            i += 1;
            out.extend_from_slice(format!("{n:X};ext=1\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        out
    }

    #[test]
    fn chunked_bodies_are_delimited() {
        let enc = chunked(b"hello, world", &[5, 2]);
        let mut all = enc.clone();
        all.extend_from_slice(b"GET next");
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert_eq!(d.feed(&all), Ok(enc.len()));
        assert!(d.is_done());
        // Byte by byte.
        let mut d = BodyDecoder::new(Framing::Chunked);
        let mut used = 0;
        for i in 0..all.len() {
            used += d.feed(&all[i..=i]).unwrap();
            if d.is_done() {
                break;
            }
        }
        assert_eq!(used, enc.len());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert_eq!(d.feed(b"0\r\n\r\nrest"), Ok(5));
        for bad in [
            &b"x\r\n"[..],
            b"5\n",
            b"1\r\nab",
            b"0\r\nX: y\n",
            b"11111111111111111\r\n",
            b"\r\n",
        ] {
            let mut d = BodyDecoder::new(Framing::Chunked);
            assert!(d.feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut d = BodyDecoder::new(Framing::Length(3));
        assert_eq!(d.feed(b"ab"), Ok(2));
        assert_eq!(d.feed(b"cde"), Ok(1));
        assert!(d.is_done());
        let mut d = BodyDecoder::new(Framing::Close);
        assert_eq!(d.feed(b"abc"), Ok(3));
        assert!(d.is_close_delimited());
    }

    #[test]
    fn forwarded_heads() {
        let r = req(
            "GET http://example.com:8080/x HTTP/1.1\r\nHost: wrong\r\nProxy-Authorization: Basic eDp5\r\n\
             Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nUpgrade: websocket\r\nAccept: */*\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let out = forward_request_head(&r, "example.com:8080", "/x");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let p = resp(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nContent-Length: 10\r\nX-A: b\r\n\r\n",
        );
        assert_eq!(
            String::from_utf8(forward_response_head(&p, true, 1)).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8(forward_response_head(&p, true, 0)).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\nConnection: keep-alive\r\n\r\n"
        );
        assert!(forward_response_head(&p, false, 1).ends_with(b"Connection: close\r\n\r\n"));
    }

    #[test]
    fn keep_alive_and_credentials() {
        assert!(wants_keep_alive(&req("GET http://a/ HTTP/1.1\r\n\r\n")));
        assert!(!wants_keep_alive(&req(
            "GET http://a/ HTTP/1.1\r\nConnection: Close\r\n\r\n"
        )));
        assert!(!wants_keep_alive(&req("GET http://a/ HTTP/1.0\r\n\r\n")));
        assert!(wants_keep_alive(&req(
            "GET http://a/ HTTP/1.0\r\nProxy-Connection: Keep-Alive\r\n\r\n"
        )));
        let auth = basic_auth_value("alice", "p:w");
        let r = req(&format!(
            "GET http://a/ HTTP/1.1\r\nproxy-authorization: {auth}\r\n\r\n"
        ));
        assert_eq!(
            basic_credentials(&r.headers),
            Some((b"alice".to_vec(), b"p:w".to_vec()))
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic Zm9v"] {
            let r = req(&format!(
                "GET http://a/ HTTP/1.1\r\nProxy-Authorization: {bad}\r\n\r\n"
            ));
            assert_eq!(basic_credentials(&r.headers), None, "{bad}");
        }
        // Debug never shows a value.
        assert!(!format!("{:?}", r.headers).contains("Basic"));
    }

    #[test]
    fn malformed_heads() {
        assert_eq!(parse_request(b"GET\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let head = format!("GET http://a/ HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(head.as_bytes()).unwrap_err().status, 431);
        assert_eq!(
            parse_response(b"HTTP/1.1 2000 X\r\n\r\n")
                .unwrap_err()
                .status,
            502
        );
    }

    /// `Connection` may not nominate the framing fields.
    #[test]
    fn connection_cannot_strip_framing() {
        let r = req(
            "POST http://a/ HTTP/1.1\r\nConnection: content-length, transfer-encoding\r\n\
                     Content-Length: 5\r\n\r\n",
        );
        assert_eq!(request_framing(&r), Ok(Framing::Length(5)));
        let out = String::from_utf8(forward_request_head(&r, "a", "/")).unwrap();
        assert!(out.contains("Content-Length: 5\r\n"), "{out}");
        let p = resp(
            "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(response_framing("GET", &p), Ok(Framing::Chunked));
        let out = String::from_utf8(forward_response_head(&p, true, 1)).unwrap();
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    }

    proptest! {
        /// httparse ends a head exactly where `head_len` does (the
        /// caller ignores httparse's count).
        #[test]
        fn head_len_agrees_with_httparse(
            lines in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![
                    Just(b'a'), Just(b':'), Just(b' '), Just(b'\t'), Just(b'\r'), Just(b'\n'), Just(b'x')
                ], 0..12), 0..8)
        ) {
            let mut h = b"GET http://a/ HTTP/1.1\r\n".to_vec();
            for l in lines { h.extend(l); }
            h.extend_from_slice(b"\r\n\r\n");
            if let Some(n) = head_len(&h, 0) {
                let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut r = httparse::Request::new(&mut raw);
                if let Ok(httparse::Status::Complete(m)) = r.parse(&h[..n]) {
                    prop_assert_eq!(m, n, "{:?}", String::from_utf8_lossy(&h[..n]));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = head_len(&data, 0);
            let _ = leading_empty_lines(&data);
            if let Ok(r) = parse_request(&data) {
                let _ = parse_target(&r.method, &r.target);
                let _ = request_framing(&r);
                let _ = basic_credentials(&r.headers);
                let _ = wants_keep_alive(&r);
                let _ = forward_request_head(&r, "a", "/");
            }
            if let Ok(r) = parse_response(&data) {
                let _ = response_framing("GET", &r);
                let _ = forward_response_head(&r, true, 0);
            }
            if let Ok(s) = std::str::from_utf8(&data) {
                let _ = parse_target("GET", s);
                let _ = parse_target("CONNECT", s);
            }
            for f in [Framing::Chunked, Framing::Length(100), Framing::Close] {
                let mut d = BodyDecoder::new(f);
                let n = d.feed(&data).unwrap_or(0);
                prop_assert!(n <= data.len());
            }
        }

        #[test]
        fn chunked_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..50, 0..10),
            cut in 0usize..400,
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let enc = chunked(&body, &sizes);
            let mut all = enc.clone();
            all.extend_from_slice(&tail);
            let cut = cut.min(all.len());
            let mut d = BodyDecoder::new(Framing::Chunked);
            let mut used = d.feed(&all[..cut]).unwrap();
            if !d.is_done() {
                used += d.feed(&all[cut..]).unwrap();
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(used, enc.len());
        }
    }
}
