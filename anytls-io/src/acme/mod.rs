//! Certificates from an ACME CA (RFC 8555): Let's Encrypt, ZeroSSL, or a
//! private CA, obtained and renewed while the server runs.
//!
//! An [`Acme`] holds the certificate of a set of domains and the challenges
//! in flight. Give it to the server as [`ServerTls::Acme`](crate::ServerTls)
//! and the server does the rest: it runs the manager ([`Acme::run`]) while it
//! serves, answers TLS-ALPN-01 challenges on its own port (connections that
//! offer the `acme-tls/1` ALPN protocol get the challenge certificate and
//! nothing else), and serves AnyTLS with the current certificate. Until the
//! first certificate is issued, TLS handshakes other than challenges are
//! refused with a TLS alert.
//!
//! The manager:
//! * loads the account and the certificate from `data_directory` (see
//!   `store.rs` for the layout) and serves a stored certificate at once;
//! * orders a certificate when there is none, when it does not cover the
//!   configured domains, or when less than a third of its lifetime remains
//!   ([`AcmeConfig::renew_remaining`]); the new one is used by new
//!   connections, open ones carry on;
//! * answers TLS-ALPN-01 (on the server's port, and on
//!   `alternative_tls_addr` if set) or HTTP-01 (a listener on `http_addr`,
//!   port 80 by default, bound before the order and only while it runs),
//!   the kind that worked last first, the other after a failure;
//! * retries failures after 1 minute, doubling up to 1 hour, and logs each
//!   failure with the CA's explanation;
//! * runs while any server using it serves (several listeners can share one
//!   `Acme`; a reload to another manager hands over), or until
//!   [`Acme::stop`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use anytls_io::acme::{Acme, AcmeConfig};
//! use anytls_io::{ServerConfig, ServerTls};
//!
//! let mut acme = AcmeConfig::new(vec!["vpn.example.com".into()], "/var/lib/anytls/acme");
//! acme.email = Some("ops@example.com".into());
//! let cfg = ServerConfig::with_tls("password", ServerTls::Acme(Acme::new(acme)?));
//! // Server::<Tokio>::bind("0.0.0.0:443", cfg).await?.serve().await?;
//! # let _ = cfg;
//! # Ok(())
//! # }
//! ```
//!
//! Embedders with their own TLS stack can use the parts: [`Acme::resolver`]
//! for the normal handshake, [`Acme::challenge_tls_config`] for handshakes
//! whose ClientHello offers [`ACME_TLS_ALPN`], and [`Acme::run`] driven on
//! their runtime.

mod http;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::runtime::{Notify, Runtime, Switch, lock, sleep_until};
use crate::tls::{Verification, client_config};
use store::{Issued, Store};

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Let's Encrypt's production directory (`provider: "letsencrypt"`).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, high limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// ZeroSSL's directory (`provider: "zerossl"`; needs an external account).
pub const ZEROSSL: &str = "https://acme.zerossl.com/v2/DV90";

/// A ClientHello larger than this (over all its records) is refused before
/// rustls sees it; real ones are under 2 KiB, post-quantum ones under 4.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// External account binding: the key id and MAC key a CA such as ZeroSSL
/// gives out (sing-box's `external_account`).
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalAccount {
    /// The key identifier.
    pub key_id: String,
    /// The MAC key, base64url as the CA shows it (padding optional).
    pub mac_key: String,
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// What to obtain, from where, and how to prove control of the domains.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AcmeConfig {
    /// The DNS names the certificate covers (at least one; no wildcards,
    /// which need DNS-01). The first one names the stored files.
    pub domains: Vec<String>,
    /// Contact address given to the CA (expiry and policy mail).
    pub email: Option<String>,
    /// Where the account and certificates are kept (made with mode 0700).
    pub data_directory: PathBuf,
    /// The CA's directory URL ([`LETS_ENCRYPT`], [`ZEROSSL`], or a private
    /// CA's).
    pub directory_url: String,
    /// A PEM file of roots trusted for the directory's HTTPS, instead of the
    /// Mozilla roots (a private CA such as step-ca or pebble).
    pub directory_ca: Option<PathBuf>,
    /// Answer TLS-ALPN-01 on the server's own port (the CA connects to
    /// port 443 of the domain).
    pub tls_alpn_challenge: bool,
    /// Also answer TLS-ALPN-01 on this address while an order runs (a port
    /// that 443 is forwarded to; sing-box's `alternative_tls_port`).
    pub alternative_tls_addr: Option<SocketAddr>,
    /// Answer HTTP-01 on this address while an order runs (the CA connects
    /// to port 80 of the domain; sing-box's `alternative_http_port` changes
    /// the port). `None`: no HTTP-01.
    pub http_addr: Option<SocketAddr>,
    /// External account binding, for CAs that require one.
    pub external_account: Option<ExternalAccount>,
    /// Renew when less than this fraction of the certificate's lifetime
    /// remains (default 1/3: day 60 of a 90-day certificate).
    pub renew_remaining: f64,
    /// The first retry delay after a failure (doubles up to
    /// [`retry_max`](Self::retry_max)).
    pub retry_min: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// Time limit of each request to the CA.
    pub request_timeout: Duration,
    /// Time limit of one order, from creation to certificate.
    pub order_timeout: Duration,
}

impl AcmeConfig {
    /// Let's Encrypt for `domains`, both challenges on (HTTP-01 on
    /// 0.0.0.0:80), files in `data_directory`.
    pub fn new(domains: Vec<String>, data_directory: impl Into<PathBuf>) -> AcmeConfig {
        AcmeConfig {
            domains,
            email: None,
            data_directory: data_directory.into(),
            directory_url: LETS_ENCRYPT.to_owned(),
            directory_ca: None,
            tls_alpn_challenge: true,
            alternative_tls_addr: None,
            http_addr: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80)),
            external_account: None,
            renew_remaining: 1.0 / 3.0,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(30),
            order_timeout: Duration::from_secs(180),
        }
    }

    /// The directory URL of a sing-box `provider`: `letsencrypt` (or
    /// empty), `zerossl`, or a URL.
    pub fn provider_url(provider: &str) -> Result<String, AcmeError> {
        match provider {
            "" | "letsencrypt" => Ok(LETS_ENCRYPT.to_owned()),
            "zerossl" => Ok(ZEROSSL.to_owned()),
            url if url.starts_with("https://") || url.starts_with("http://") => Ok(url.to_owned()),
            other => Err(AcmeError::Config(format!(
                "provider {other:?}: expected \"letsencrypt\", \"zerossl\" or an https:// directory URL"
            ))),
        }
    }

    /// Checks the names, the URL, the challenges and the numbers.
    pub fn validate(&self) -> Result<(), AcmeError> {
        let bad = |m: String| Err(AcmeError::Config(m));
        if self.domains.is_empty() {
            return bad("no domain to obtain a certificate for".into());
        }
        for d in &self.domains {
            if d.starts_with("*.") {
                return bad(format!(
                    "{d}: wildcard certificates need the DNS-01 challenge, which is not supported"
                ));
            }
            if d.parse::<IpAddr>().is_ok() {
                return bad(format!(
                    "{d}: ACME certificates here are for DNS names, not IP addresses"
                ));
            }
            match rustls::pki_types::ServerName::try_from(d.as_str()) {
                Ok(rustls::pki_types::ServerName::DnsName(_)) => {}
                _ => return bad(format!("{d:?} is not a valid DNS name")),
            }
        }
        if let Err(e) = self.directory_url.parse::<::http::Uri>() {
            return bad(format!("directory URL {:?}: {e}", self.directory_url));
        }
        if !self.directory_url.starts_with("https://") && !self.directory_url.starts_with("http://")
        {
            return bad(format!(
                "directory URL {:?}: expected https://",
                self.directory_url
            ));
        }
        if !self.tls_alpn_challenge && self.http_addr.is_none() {
            return bad(
                "both challenges are disabled: enable TLS-ALPN-01 or HTTP-01 (DNS-01 is not supported)"
                    .into(),
            );
        }
        if !(self.renew_remaining > 0.0 && self.renew_remaining < 1.0) {
            return bad(format!(
                "renew_remaining {} is not between 0 and 1",
                self.renew_remaining
            ));
        }
        if self.directory_url == ZEROSSL && self.external_account.is_none() {
            return bad(
                "ZeroSSL needs external_account (key_id and mac_key from the ZeroSSL dashboard)"
                    .into(),
            );
        }
        if let Some(eab) = &self.external_account {
            decode_mac_key(&eab.mac_key)?;
        }
        Ok(())
    }
}

fn decode_mac_key(key: &str) -> Result<Vec<u8>, AcmeError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .map_err(|_| AcmeError::Config("external_account.mac_key is not base64url".into()))
}

/// Why obtaining or loading a certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The configuration cannot work.
    #[error("ACME configuration: {0}")]
    Config(String),
    /// Reading or writing `data_directory`.
    #[error("ACME storage {}: {source}", path.display())]
    Storage {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The CA's answer or the exchange with it (its problem document when
    /// it sent one).
    #[error("ACME CA: {0}")]
    Ca(#[from] instant_acme::Error),
    /// A challenge was not accepted; the CA's reason.
    #[error("ACME challenge {kind} for {domain} failed: {reason}")]
    Challenge {
        /// `tls-alpn-01` or `http-01`.
        kind: &'static str,
        /// The domain.
        domain: String,
        /// What the CA said.
        reason: String,
    },
    /// A responder's listener.
    #[error("ACME challenge responder: {0}")]
    Responder(io::Error),
    /// The order did not finish in time.
    #[error("ACME order not finished within {0:?}")]
    Timeout(Duration),
    /// A certificate from the CA or from disk is unusable.
    #[error("ACME certificate: {0}")]
    Certificate(String),
    /// Making a key, a CSR or a challenge certificate.
    #[error("ACME key or certificate request: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The certificate being served.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the leaf certificate.
    pub leaf_sha256: [u8; 32],
}

/// What the manager is doing.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AcmeStatus {
    /// The certificate served, if there is one.
    pub certificate: Option<CertificateInfo>,
    /// Certificates obtained since start.
    pub issued: u64,
    /// When the next order is due (renewal or retry).
    pub next_attempt: Option<SystemTime>,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
}

/// The challenge kinds this module answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TlsAlpn,
    Http,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::TlsAlpn => "tls-alpn-01",
            Kind::Http => "http-01",
        }
    }

    fn challenge_type(self) -> ChallengeType {
        match self {
            Kind::TlsAlpn => ChallengeType::TlsAlpn01,
            Kind::Http => ChallengeType::Http01,
        }
    }
}

struct Inner {
    cfg: AcmeConfig,
    store: Store,
    current: RwLock<Option<Arc<Issued>>>,
    /// TLS-ALPN-01 certificates by lowercase domain, while an order runs.
    alpn_certs: ChallengeCerts,
    /// HTTP-01 key authorizations by token, while an order runs.
    http_tokens: Mutex<HashMap<String, String>>,
    challenge_tls: Arc<rustls::ServerConfig>,
    status: Mutex<AcmeStatus>,
    /// `renew_now`, and when it was last called.
    wake: Notify,
    renew_asked: Mutex<Option<Instant>>,
    /// Set when the manager should stop (no server uses it any more, or
    /// `stop`); reset by `start`.
    halt: Switch,
    /// Servers using the manager ([`Acme::start`] / [`Acme::release`]).
    users: AtomicUsize,
    running: AtomicBool,
    /// The certificate served does not cover every domain (a domain was
    /// added): a new one is due at once.
    partial: AtomicBool,
    /// What `Acme::new` found on disk, logged when the manager starts.
    loaded: Mutex<Option<String>>,
    /// "No certificate yet" was logged (once per start).
    told_no_certificate: AtomicBool,
}

/// A certificate obtained and renewed from an ACME CA; cheap to clone (all
/// clones are one). See the [module](self).
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme")
            .field("domains", &self.inner.cfg.domains)
            .field("directory_url", &self.inner.cfg.directory_url)
            .field("status", &self.status())
            .finish()
    }
}

impl Acme {
    /// Validates `cfg` and loads a stored certificate for it, if there is a
    /// usable one (covers the domains, not expired); nothing is requested
    /// until [`run`](Self::run).
    pub fn new(cfg: AcmeConfig) -> Result<Acme, AcmeError> {
        cfg.validate()?;
        if cfg.directory_url.starts_with("http://") {
            tracing::warn!(
                "ACME directory {} is plain HTTP: anyone on the path can tamper with the \
                 orders (fine only for a CA on this machine)",
                cfg.directory_url
            );
        }
        let store = Store::new(&cfg.data_directory, &cfg.directory_url, &cfg.domains[0]);
        let alpn_certs: ChallengeCerts = Arc::default();
        let mut challenge = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ChallengeResolver(alpn_certs.clone())));
        challenge.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let inner = Arc::new(Inner {
            cfg,
            store,
            current: RwLock::new(None),
            alpn_certs,
            http_tokens: Mutex::default(),
            challenge_tls: Arc::new(challenge),
            status: Mutex::default(),
            wake: Notify::default(),
            renew_asked: Mutex::new(None),
            halt: Switch::default(),
            users: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            partial: AtomicBool::new(false),
            loaded: Mutex::new(None),
            told_no_certificate: AtomicBool::new(false),
        });
        let acme = Acme { inner };
        acme.load_stored();
        Ok(acme)
    }

    /// Serves a stored certificate that is still valid and covers at least
    /// one of the domains (one that does not cover them all is replaced at
    /// once); says what it found when the manager starts.
    fn load_stored(&self) {
        let cfg = &self.inner.cfg;
        let path = self.inner.store.cert_path();
        let note = match self.inner.store.load_certificate() {
            Ok(None) => None,
            Ok(Some((chain, key))) => match Issued::from_pem(&chain, &key, &cfg.domains) {
                Ok(issued) if issued.info.not_after > SystemTime::now() => {
                    let note = if issued.covers_all {
                        format!(
                            "ACME: serving the stored certificate (valid until {})",
                            httpdate(issued.info.not_after)
                        )
                    } else {
                        format!(
                            "ACME: serving the stored certificate (valid until {}) until one \
                             that also covers the added domains is issued",
                            httpdate(issued.info.not_after)
                        )
                    };
                    self.install(issued);
                    Some(note)
                }
                Ok(_) => Some(format!(
                    "ACME: the stored certificate {} has expired: a new one will be ordered",
                    path.display()
                )),
                Err(e) => Some(format!(
                    "ACME: the stored certificate {} is not used ({e}): a new one will be ordered",
                    path.display()
                )),
            },
            Err(e) => Some(format!("{e}; a new certificate will be ordered")),
        };
        *lock(&self.inner.loaded) = note;
    }

    fn install(&self, issued: Issued) {
        let info = issued.info.clone();
        self.inner
            .partial
            .store(!issued.covers_all, Ordering::Release);
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(issued));
        lock(&self.inner.status).certificate = Some(info);
    }

    /// The configuration.
    pub fn config(&self) -> &AcmeConfig {
        &self.inner.cfg
    }

    /// The certificate served now, if any.
    pub fn certificate(&self) -> Option<CertificateInfo> {
        self.current().map(|c| c.info.clone())
    }

    #[cfg(test)]
    fn resolver_has_certificate(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Issued>> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the manager is doing.
    pub fn status(&self) -> AcmeStatus {
        lock(&self.inner.status).clone()
    }

    /// Orders a new certificate now, whatever the current one's age (key
    /// compromise, a changed CA). Needs [`run`](Self::run) going.
    pub fn renew_now(&self) {
        *lock(&self.inner.renew_asked) = Some(Instant::now());
        self.inner.wake.notify();
    }

    /// Stops [`run`](Self::run), whoever uses the manager (a server that
    /// stops only releases its use: see [`ServerTls::Acme`](crate::ServerTls)).
    pub fn stop(&self) {
        self.inner.halt.set();
    }

    /// Whether two handles are the same manager.
    pub fn ptr_eq(&self, other: &Acme) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The certificate resolver for normal handshakes: the current
    /// certificate, or none (the handshake fails) before the first one.
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(CertResolver(self.clone()))
    }

    /// The rustls configuration for handshakes that offer [`ACME_TLS_ALPN`]:
    /// it negotiates that protocol and presents the challenge certificate of
    /// the name asked for (none when no challenge runs for it).
    pub fn challenge_tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.inner.challenge_tls.clone()
    }

    /// A server starts using the manager: runs it on `R` unless it runs.
    pub(crate) fn start<R: Runtime>(&self) {
        self.inner.users.fetch_add(1, Ordering::AcqRel);
        self.inner.halt.reset();
        if !self.inner.running.load(Ordering::Acquire) {
            let me = self.clone();
            R::spawn(async move { me.run::<R>().await });
        }
    }

    /// A server stops using the manager; the last one stops it.
    pub(crate) fn release(&self) {
        let users = &self.inner.users;
        if users.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)) == Ok(1) {
            self.inner.halt.set();
        }
    }

    /// Obtains and renews the certificate until [`stop`](Self::stop); a
    /// second call while one runs returns at once. The server runs this
    /// itself; call it when you use the parts.
    pub async fn run<R: Runtime>(&self) {
        loop {
            if self.inner.running.swap(true, Ordering::AcqRel) {
                return;
            }
            self.manage::<R>().await;
            self.inner.running.store(false, Ordering::Release);
            // Started again while this one was stopping: carry on (unless a
            // new run took over already).
            if self.inner.halt.is_set() {
                return;
            }
        }
    }

    /// Resolves once the manager should stop.
    async fn halted(&self) {
        self.inner.halt.wait().await
    }

    async fn manage<R: Runtime>(&self) {
        let cfg = &self.inner.cfg;
        if let Some(note) = lock(&self.inner.loaded).take() {
            tracing::info!(domains = ?cfg.domains, "{note}");
        }
        if let Err(e) = self.inner.store.check_writable() {
            tracing::error!(
                "{e}: ACME certificates and the account will not be kept across restarts \
                 (make the data directory writable)"
            );
        }
        let kinds: Vec<Kind> = [
            (cfg.tls_alpn_challenge, Kind::TlsAlpn),
            (cfg.http_addr.is_some(), Kind::Http),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        let mut account: Option<Account> = None;
        let mut failures: u32 = 0;
        // The kind that worked last is tried first next time.
        let mut preferred = 0usize;
        let mut forced = false;
        let mut last_success: Option<Instant> = None;
        while !self.inner.halt.is_set() {
            let due = forced || self.renewal_due(SystemTime::now());
            if due && last_success.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                // A certificate due at issuance (a lifetime shorter than the
                // clock's error): do not order in a loop.
                sleep_until::<R>(Instant::now() + Duration::from_secs(1)).await;
            }
            if due {
                let index = (preferred + failures as usize) % kinds.len();
                let kind = kinds[index];
                let attempt = futures_lite::future::or(
                    async { Some(self.obtain::<R>(&mut account, kind).await) },
                    async {
                        self.halted().await;
                        None
                    },
                );
                let Some(result) = attempt.await else { break };
                match result {
                    Ok(info) => {
                        failures = 0;
                        preferred = index;
                        forced = false;
                        last_success = Some(Instant::now());
                        tracing::info!(
                            domains = ?cfg.domains,
                            challenge = kind.name(),
                            "ACME: certificate obtained (serial {}, valid until {})",
                            info.serial,
                            httpdate(info.not_after)
                        );
                        let mut s = lock(&self.inner.status);
                        s.issued += 1;
                        s.last_error = None;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = self.retry_delay(failures);
                        tracing::warn!(
                            domains = ?cfg.domains,
                            challenge = kind.name(),
                            "{e}; retrying in {}s{}",
                            delay.as_secs(),
                            if self.current().is_some() {
                                " (the current certificate is still served)"
                            } else {
                                " (AnyTLS connections are refused until a certificate is issued)"
                            }
                        );
                        lock(&self.inner.status).last_error = Some(e.to_string());
                    }
                }
            }
            let wait = if failures > 0 {
                self.retry_delay(failures)
            } else {
                self.until_renewal(SystemTime::now())
            };
            lock(&self.inner.status).next_attempt = Some(SystemTime::now() + wait);
            // A renewal sleeps at most an hour at a time: the monotonic clock
            // stops during a suspend, the wall clock (which validity is
            // about) does not. A retry delay is monotonic time anyway.
            let nap = if failures > 0 {
                wait
            } else {
                wait.min(Duration::from_secs(3600))
            };
            let woke = futures_lite::future::or(
                async {
                    sleep_until::<R>(Instant::now() + nap).await;
                    false
                },
                futures_lite::future::or(
                    async {
                        self.inner.wake.notified().await;
                        true
                    },
                    async {
                        self.halted().await;
                        false
                    },
                ),
            )
            .await;
            // A renew_now() that came while an order ran was served by it.
            let asked = *lock(&self.inner.renew_asked);
            if woke && asked.is_some_and(|at| last_success.is_none_or(|done| done < at)) {
                forced = true;
                failures = 0;
            }
        }
    }

    fn retry_delay(&self, failures: u32) -> Duration {
        let cfg = &self.inner.cfg;
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        cfg.retry_min.saturating_mul(factor).min(cfg.retry_max)
    }

    /// When the current certificate should be renewed.
    fn renew_at(&self) -> Option<SystemTime> {
        let c = self.current()?;
        let life = c
            .info
            .not_after
            .duration_since(c.info.not_before)
            .unwrap_or_default();
        Some(c.info.not_after - life.mul_f64(self.inner.cfg.renew_remaining))
    }

    fn renewal_due(&self, now: SystemTime) -> bool {
        self.inner.partial.load(Ordering::Acquire) || self.renew_at().is_none_or(|at| now >= at)
    }

    fn until_renewal(&self, now: SystemTime) -> Duration {
        if self.inner.partial.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        match self.renew_at() {
            Some(at) => at.duration_since(now).unwrap_or_default(),
            None => Duration::ZERO,
        }
    }

    async fn account<R: Runtime>(&self) -> Result<Account, AcmeError> {
        let cfg = &self.inner.cfg;
        let verification = match &cfg.directory_ca {
            Some(path) => Verification::CaFile(path.clone()),
            None => Verification::WebPki,
        };
        let tls = client_config(&verification, &[])
            .map_err(|e| AcmeError::Config(format!("directory_ca: {e}")))?;
        let http = || -> Box<dyn instant_acme::HttpClient> {
            Box::new(http::RuntimeHttp::<R> {
                tls: Arc::new(tls.clone()),
                limit: cfg.request_timeout,
                _runtime: PhantomData,
            })
        };
        if let Some(json) = self.inner.store.load_account()? {
            match serde_json::from_slice::<AccountCredentials>(&json) {
                Ok(creds) => {
                    return Ok(Account::builder_with_http(http())
                        .from_credentials(creds)
                        .await?);
                }
                Err(e) => tracing::warn!(
                    "ACME: {} is unreadable ({e}): registering a new account",
                    self.inner.store.account_path().display()
                ),
            }
        }
        let contact: Vec<String> = cfg.email.iter().map(|e| format!("mailto:{e}")).collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &cfg.external_account {
            Some(e) => Some(ExternalAccountKey::new(
                e.key_id.clone(),
                &decode_mac_key(&e.mac_key)?,
            )),
            None => None,
        };
        let (account, creds) = Account::builder_with_http(http())
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                cfg.directory_url.clone(),
                eab.as_ref(),
            )
            .await?;
        let json = serde_json::to_vec_pretty(&creds)
            .map_err(|e| AcmeError::Certificate(format!("account credentials: {e}")))?;
        if let Err(e) = self.inner.store.save_account(&json) {
            // Kept in memory: registering a new account on every attempt
            // would run into the CA's account limits.
            tracing::warn!("{e}: the ACME account is kept in memory only");
        }
        tracing::info!(
            "ACME: account registered with {} ({})",
            cfg.directory_url,
            account.id()
        );
        Ok(account)
    }

    /// One order, start to finish; installs and stores the certificate.
    async fn obtain<R: Runtime>(
        &self,
        account: &mut Option<Account>,
        kind: Kind,
    ) -> Result<CertificateInfo, AcmeError> {
        let cfg = &self.inner.cfg;
        let deadline = Instant::now() + cfg.order_timeout;
        // Challenge answers and listeners live until this attempt ends; a
        // port in use fails the attempt before any order is placed.
        let responders = Responders::start::<R>(self, kind)?;
        let acct = match account {
            Some(a) => a.clone(),
            None => {
                let a = self.account::<R>().await?;
                *account = Some(a.clone());
                a
            }
        };
        let ids: Vec<Identifier> = cfg
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = match acct.new_order(&NewOrder::new(&ids)).await {
            Err(e) if account_gone(&e) => {
                // The CA does not know the stored account (a reinstalled
                // private CA, a deactivated account): register anew.
                tracing::warn!(
                    "ACME: the CA does not know the account in {} ({e}): registering a new one",
                    self.inner.store.account_path().display()
                );
                self.inner.store.discard_account();
                let a = self.account::<R>().await?;
                *account = Some(a.clone());
                a.new_order(&NewOrder::new(&ids)).await?
            }
            other => other?,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                let domain = authz.identifier().to_string();
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeError::Challenge {
                            kind: kind.name(),
                            domain,
                            reason: format!("authorization is {other:?}"),
                        });
                    }
                }
                let mut challenge =
                    authz
                        .challenge(kind.challenge_type())
                        .ok_or_else(|| AcmeError::Challenge {
                            kind: kind.name(),
                            domain: domain.clone(),
                            reason: "the CA does not offer this challenge".into(),
                        })?;
                let key_authorization = challenge.key_authorization();
                match kind {
                    Kind::TlsAlpn => {
                        let cert =
                            challenge_certificate(&domain, key_authorization.digest().as_ref())?;
                        lock(&self.inner.alpn_certs).insert(domain.to_ascii_lowercase(), cert);
                    }
                    Kind::Http => {
                        lock(&self.inner.http_tokens).insert(
                            challenge.token.clone(),
                            key_authorization.as_str().to_owned(),
                        );
                    }
                }
                challenge.set_ready().await?;
            }
        }
        let mut delay = Duration::from_millis(250);
        loop {
            let state = order.refresh().await?;
            match state.status {
                OrderStatus::Ready | OrderStatus::Valid => break,
                OrderStatus::Invalid => {
                    return Err(self.why_invalid(&mut order, kind).await);
                }
                _ => {}
            }
            if Instant::now() + delay > deadline {
                return Err(AcmeError::Timeout(cfg.order_timeout));
            }
            sleep_until::<R>(Instant::now() + delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        drop(responders);
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(cfg.domains.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        if order.state().status == OrderStatus::Ready {
            order.finalize_csr(csr.der()).await?;
        }
        let chain = loop {
            if let Some(chain) = order.certificate().await? {
                break chain;
            }
            if Instant::now() + delay > deadline {
                return Err(AcmeError::Timeout(cfg.order_timeout));
            }
            sleep_until::<R>(Instant::now() + delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        let key_pem = key.serialize_pem();
        let issued = Issued::from_pem(chain.as_bytes(), key_pem.as_bytes(), &cfg.domains)?;
        let info = issued.info.clone();
        if let Err(e) = self
            .inner
            .store
            .save_certificate(chain.as_bytes(), key_pem.as_bytes())
        {
            // Served anyway; the next start orders again.
            tracing::warn!("{e}: the new certificate is served but not kept");
        }
        self.install(issued);
        Ok(info)
    }

    /// The CA's reason an order went invalid: the first failed challenge's
    /// error.
    async fn why_invalid(&self, order: &mut instant_acme::Order, kind: Kind) -> AcmeError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let domain = authz.identifier().to_string();
            let Ok(state) = authz.refresh().await else {
                continue;
            };
            if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return AcmeError::Challenge {
                    kind: kind.name(),
                    domain,
                    reason: problem
                        .detail
                        .clone()
                        .unwrap_or_else(|| problem.to_string()),
                };
            }
        }
        AcmeError::Challenge {
            kind: kind.name(),
            domain: self.inner.cfg.domains.join(", "),
            reason: "the order became invalid".into(),
        }
    }
}

/// Whether the CA said the account does not exist.
fn account_gone(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
}

/// TLS-ALPN-01 certificates by lowercase domain.
type ChallengeCerts = Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>;

/// Presents the challenge certificate of the name asked for.
#[derive(Debug)]
struct ChallengeResolver(ChallengeCerts);

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        lock(&self.0).get(&name).cloned()
    }
}

/// Presents the current certificate.
#[derive(Debug)]
struct CertResolver(Acme);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.0.current().map(|c| c.key.clone());
        if current.is_none()
            && !self
                .0
                .inner
                .told_no_certificate
                .swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                domains = ?self.0.inner.cfg.domains,
                "ACME: no certificate yet: TLS handshakes are refused until one is issued"
            );
        }
        current
    }
}

/// A TLS-ALPN-01 certificate (RFC 8737): self-signed for `domain`, with the
/// critical acmeIdentifier extension holding the key authorization's SHA-256.
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The answers and listeners of one order attempt: set up by `start`,
/// withdrawn on drop.
struct Responders {
    acme: Acme,
    stop: Arc<Switch>,
}

impl Responders {
    fn start<R: Runtime>(acme: &Acme, kind: Kind) -> Result<Responders, AcmeError> {
        let stop = Arc::new(Switch::default());
        let cfg = &acme.inner.cfg;
        let bind = |what: &str, addr: SocketAddr| {
            // Binding is quick; the runtime's bind is async only by form.
            std::net::TcpListener::bind(addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    R::listener_from_std(l)
                })
                .map_err(|e| AcmeError::Responder(http::bind_error(what, addr, e)))
        };
        match kind {
            Kind::Http => {
                let addr = cfg.http_addr.expect("HTTP-01 is chosen only when enabled");
                let listener = bind("HTTP-01", addr)?;
                let me = acme.clone();
                let answer: http::Answers =
                    Arc::new(move |token: &str| lock(&me.inner.http_tokens).get(token).cloned());
                R::spawn(http::serve_http01::<R>(listener, answer, stop.clone()));
            }
            Kind::TlsAlpn => {
                if let Some(addr) = cfg.alternative_tls_addr {
                    let listener = bind("TLS-ALPN-01", addr)?;
                    R::spawn(serve_tls_alpn::<R>(listener, acme.clone(), stop.clone()));
                }
            }
        }
        Ok(Responders {
            acme: acme.clone(),
            stop,
        })
    }
}

impl Drop for Responders {
    fn drop(&mut self) {
        self.stop.set();
        lock(&self.acme.inner.alpn_certs).clear();
        lock(&self.acme.inner.http_tokens).clear();
    }
}

/// Answers TLS-ALPN-01 validation connections on a listener of its own
/// until `stop`; other connections are closed.
async fn serve_tls_alpn<R: Runtime>(listener: R::Listener, acme: Acme, stop: Arc<Switch>) {
    http::serve_responder::<R, _, _>(listener, stop, "TLS-ALPN-01", move |mut tcp| {
        let acme = acme.clone();
        async move {
            let (seen, wants) = read_client_hello(&mut tcp).await?;
            if wants {
                answer_challenge(tcp, seen, &acme).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Completes a TLS-ALPN-01 handshake whose ClientHello (`seen`) was read,
/// then closes: a validation connection carries no data.
pub(crate) async fn answer_challenge<IO>(io: IO, seen: Vec<u8>, acme: &Acme) -> io::Result<()>
where
    IO: AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let session = crate::tls_io::Tls::server(acme.challenge_tls_config())?;
    let mut tls =
        crate::tls_io::TlsIo::with_input(io, session, &crate::budget::IoBudget::default(), seen);
    tls.handshake().await?;
    tracing::debug!("ACME: TLS-ALPN-01 challenge answered");
    let _ = tls.close().await;
    Ok(())
}

/// Reads a connection's ClientHello (over as many records and reads as it
/// takes) and tells whether it offers [`ACME_TLS_ALPN`]. Returns every byte
/// read, for the real handshake to start from.
pub(crate) async fn read_client_hello<IO: AsyncRead + Unpin>(
    io: &mut IO,
) -> io::Result<(Vec<u8>, bool)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before its ClientHello",
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > MAX_CLIENT_HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if acceptor.read_tls(&mut rest)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let wants = accepted
                    .client_hello()
                    .alpn()
                    .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
                return Ok((seen, wants));
            }
            Err((e, _alert)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

fn httpdate(t: SystemTime) -> String {
    ::httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests;
