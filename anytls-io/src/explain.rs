//! Why the client cannot reach its server, in words a user can act on,
//! logged at the default level: one line per failure, with the cause and
//! the address, at most one line per kind of failure every
//! [`REPORT_INTERVAL`] (the lines held back are counted in the next one).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anytls_core::{SessionError, TransportError};

use crate::runtime::lock;

/// At most one line per kind of failure this often.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// What went wrong, as a kind (the rate limit's key) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diagnosis {
    pub(crate) kind: &'static str,
    pub(crate) text: String,
}

/// Rate-limited failure lines.
#[derive(Default)]
pub(crate) struct Reporter {
    last: Mutex<HashMap<&'static str, (Instant, u32)>>,
}

impl Reporter {
    /// Logs `d` at warn level unless a line of its kind went out less than
    /// [`REPORT_INTERVAL`] ago (then it is counted for the next line).
    pub(crate) fn report(&self, now: Instant, d: &Diagnosis) {
        let held = {
            let mut last = lock(&self.last);
            match last.get_mut(d.kind) {
                Some((at, held)) if now.saturating_duration_since(*at) < REPORT_INTERVAL => {
                    *held += 1;
                    return;
                }
                Some((at, held)) => {
                    *at = now;
                    std::mem::take(held)
                }
                None => {
                    last.insert(d.kind, (now, 0));
                    0
                }
            }
        };
        if held > 0 {
            tracing::warn!("{} ({held} more like it not shown)", d.text);
        } else {
            tracing::warn!("{}", d.text);
        }
    }
}

/// How to trust a server whose certificate does not verify.
const CERT_HINT: &str = "if the server's certificate is self-signed, pin it (--pin SHA256, \
tls.pin_sha256), trust it (--ca FILE, tls.certificate_path) or skip verification (--insecure)";

/// A failed connect or TLS handshake to `server` (TLS name `name`).
pub(crate) fn dial_failure(
    server: &str,
    name: &str,
    connect_timeout: Duration,
    e: &io::Error,
) -> Diagnosis {
    let d = |kind, text: String| Diagnosis { kind, text };
    let at = format!("AnyTLS server {server}");
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidCertificate(ce) => {
                let hint = match ce {
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => format!(
                        "the certificate is not for {name:?}: check the server name (--sni, tls.server_name); {CERT_HINT}"
                    ),
                    _ => CERT_HINT.to_owned(),
                };
                d(
                    "tls-verify",
                    format!("{at}: TLS certificate verification failed: {ce}; {hint}"),
                )
            }
            rustls::Error::AlertReceived(alert) => d(
                "tls-alert",
                format!("{at}: the server refused the TLS handshake (alert {alert:?})"),
            ),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => d(
                "tls-garbage",
                format!("{at}: the server does not speak TLS ({tls}): is this the right port?"),
            ),
            other => d("tls", format!("{at}: TLS handshake failed: {other}")),
        };
    }
    let text = e.to_string();
    match e.kind() {
        io::ErrorKind::ConnectionRefused => d("refused", format!("{at}: connection refused")),
        io::ErrorKind::TimedOut => d(
            "timeout",
            format!(
                "{at}: no connection within {} ({text})",
                secs(connect_timeout)
            ),
        ),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => d(
            "tls-closed",
            format!("{at}: the server closed the connection during the TLS handshake ({text})"),
        ),
        _ if is_dns(&text) || e.kind() == io::ErrorKind::NotFound => {
            d("dns", format!("{at}: cannot resolve the name: {text}"))
        }
        _ => d("connect", format!("{at}: cannot connect: {text}")),
    }
}

/// getaddrinfo's failures, as std and tokio word them.
fn is_dns(text: &str) -> bool {
    text.contains("failed to lookup address")
        || text.contains("Name or service not known")
        || text.contains("nodename nor servname")
        || text.contains("No address associated")
        || text.contains("Temporary failure in name resolution")
}

/// A session that ended before the server sent any AnyTLS frame.
pub(crate) fn unanswered(server: &str, wait: Duration, reason: &SessionError) -> Diagnosis {
    let at = format!("AnyTLS server {server}");
    let d = |kind, text: String| Diagnosis { kind, text };
    match reason {
        SessionError::PeerEof | SessionError::Transport(TransportError::PeerClosed) => d(
            "closed-after-preamble",
            format!(
                "{at} closed the session right after authentication: wrong password, or not an AnyTLS server"
            ),
        ),
        SessionError::Protocol(e) => d(
            "not-anytls",
            format!(
                "{at} answered with data that is not AnyTLS ({e}): not an AnyTLS server, or a wrong password sent to the server's fallback web site"
            ),
        ),
        SessionError::NoAnswer => d(
            "no-answer",
            format!(
                "{at} sent nothing within {} of the first request: not an AnyTLS server (or an AnyTLS v1 server whose destination stayed silent)",
                secs(wait)
            ),
        ),
        SessionError::Alert(text) => d("alert", format!("{at} refused the session: {text}")),
        other => d(
            "lost-before-answer",
            format!("{at}: the session ended before the server answered: {other}"),
        ),
    }
}

/// `10s`, `1.5s`, `300ms`.
pub(crate) fn secs(d: Duration) -> impl fmt::Display {
    struct S(Duration);
    impl fmt::Display for S {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.0 < Duration::from_secs(1) {
                write!(f, "{}ms", self.0.as_millis())
            } else {
                write!(f, "{}s", self.0.as_secs_f64())
            }
        }
    }
    S(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_and_the_rest_counted() {
        let r = Reporter::default();
        let t0 = Instant::now();
        let d = Diagnosis {
            kind: "refused",
            text: "x".into(),
        };
        r.report(t0, &d);
        r.report(t0 + Duration::from_secs(1), &d);
        r.report(t0 + Duration::from_secs(2), &d);
        assert_eq!(lock(&r.last).get("refused").map(|e| e.1), Some(2));
        r.report(t0 + REPORT_INTERVAL, &d);
        assert_eq!(lock(&r.last).get("refused").map(|e| e.1), Some(0));
    }

    #[test]
    fn causes_are_told_apart() {
        let t = Duration::from_secs(10);
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(dial_failure("h:1", "h", t, &refused).kind, "refused");
        let dns =
            io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(dial_failure("h:1", "h", t, &dns).kind, "dns");
        let cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        );
        let d = dial_failure("h:1", "h", t, &cert);
        assert_eq!(d.kind, "tls-verify");
        assert!(
            d.text.contains("--sni") && d.text.contains("--pin"),
            "{}",
            d.text
        );
        let eof = unanswered("h:1", t, &SessionError::PeerEof);
        assert!(eof.text.contains("wrong password"), "{}", eof.text);
        let silent = unanswered("h:1", t, &SessionError::NoAnswer);
        assert!(silent.text.contains("10s"), "{}", silent.text);
    }
}
