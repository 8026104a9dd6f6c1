//! rustls configuration: certificate verification modes for the client, a
//! certificate (from files or self-signed) for the server. The crypto provider
//! is `ring`: faster than aws-lc-rs on the machines measured and without its
//! ~40 ms start-up cost.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// Certificates given as PEM text could not be parsed.
    #[error("PEM certificates: {0}")]
    Pem(String),
    /// A pin is not 64 hex digits.
    #[error("certificate pin must be 64 hex digits (SHA-256), got {0:?}")]
    BadPin(String),
    /// The SNI is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    BadServerName(String),
    /// Versions or cipher suites that cannot be used.
    #[error("TLS options: {0}")]
    Options(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[cfg(feature = "self-signed")]
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A TLS protocol version rustls speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// Parses a version as sing-box writes it: `"1.2"`, `"1.3"`. `"1.0"`
    /// and `"1.1"` are errors that say why (rustls has neither).
    pub fn parse(s: &str) -> Result<TlsVersion, TlsError> {
        match s.trim() {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            v @ ("1.0" | "1.1") => Err(TlsError::Options(format!(
                "TLS {v} is not supported (rustls speaks TLS 1.2 and 1.3 only)"
            ))),
            v => Err(TlsError::Options(format!(
                "unknown TLS version {v:?} (use \"1.2\" or \"1.3\")"
            ))),
        }
    }

    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
    }
}

/// TLS knobs beyond verification: the protocol versions, the cipher suites
/// and SNI (sing-box's `min_version`, `max_version`, `cipher_suites` and
/// `disable_sni`). The default is rustls's: TLS 1.2 and 1.3, its safe
/// suites, SNI sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Lowest version offered or accepted.
    pub min_version: Option<TlsVersion>,
    /// Highest version offered or accepted.
    pub max_version: Option<TlsVersion>,
    /// Cipher suites by their IANA names (as Go and sing-box write them,
    /// e.g. `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`). As in Go, the list
    /// restricts the TLS 1.2 suites; TLS 1.3 suites are restricted only when
    /// the list names some (`TLS_AES_128_GCM_SHA256`, ...). Empty: all of
    /// rustls's. A name rustls does not implement is an error.
    pub cipher_suites: Vec<String>,
    /// Client: send no SNI (the certificate is still checked against the
    /// server name). Not used by servers.
    pub disable_sni: bool,
}

impl TlsOptions {
    /// The versions to enable, lowest first; an error when none remains.
    fn versions(&self) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
        let min = self.min_version.unwrap_or(TlsVersion::Tls12);
        let max = self.max_version.unwrap_or(TlsVersion::Tls13);
        if min > max {
            return Err(TlsError::Options(format!(
                "min_version {min} is above max_version {max}"
            )));
        }
        Ok([TlsVersion::Tls12, TlsVersion::Tls13]
            .into_iter()
            .filter(|v| (min..=max).contains(v))
            .map(TlsVersion::rustls)
            .collect())
    }

    /// The crypto provider with the chosen suites.
    fn provider(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        let mut provider = ring_provider();
        if self.cipher_suites.is_empty() {
            return Ok(Arc::new(provider));
        }
        let name = |s: &rustls::SupportedCipherSuite| suite_name(s.suite());
        for wanted in &self.cipher_suites {
            if !provider.cipher_suites.iter().any(|s| name(s) == *wanted) {
                let known: Vec<String> = provider.cipher_suites.iter().map(name).collect();
                return Err(TlsError::Options(format!(
                    "cipher suite {wanted:?} is not available (rustls offers {})",
                    known.join(", ")
                )));
            }
        }
        let names_tls13 = provider
            .cipher_suites
            .iter()
            .any(|s| s.tls13().is_some() && self.cipher_suites.contains(&name(s)));
        provider.cipher_suites.retain(|s| {
            (s.tls13().is_some() && !names_tls13) || self.cipher_suites.contains(&name(s))
        });
        Ok(Arc::new(provider))
    }
}

/// The IANA name of a suite (rustls calls the TLS 1.3 ones `TLS13_...`).
fn suite_name(suite: rustls::CipherSuite) -> String {
    let debug = format!("{suite:?}");
    match debug.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => debug,
    }
}

/// How the client checks the server's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum Verification {
    /// The Mozilla root store (webpki-roots) and the server name.
    WebPki,
    /// Roots from a PEM file and the server name.
    CaFile(PathBuf),
    /// Roots from PEM text held in memory (certificates inline in a config)
    /// and the server name.
    CaPem(String),
    /// Accept exactly the certificate whose DER SHA-256 is this (any name, any
    /// issuer, any validity): for self-signed servers.
    Pin([u8; 32]),
    /// Accept any certificate. Handshake signatures are still checked, so the
    /// connection is encrypted, but anyone in the path can impersonate the server.
    Insecure,
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verification::WebPki => f.write_str("WebPki"),
            Verification::CaFile(p) => write!(f, "CaFile({})", p.display()),
            Verification::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            Verification::Pin(h) => write!(f, "Pin({})", hex32(h)),
            Verification::Insecure => f.write_str("Insecure"),
        }
    }
}

/// Lowercase hex of a SHA-256.
pub fn hex32(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a pin: 64 hex digits, optionally with `:` separators.
pub fn parse_pin(s: &str) -> Result<[u8; 32], TlsError> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let bad = || TlsError::BadPin(s.to_owned());
    if clean.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(clean.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

/// SHA-256 of a certificate's DER, as used by pins.
pub fn cert_sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// The crypto provider used everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider())
}

/// ring with AES-128-GCM before AES-256-GCM in each TLS version (rustls
/// lists AES-256 first): the order Go and the browsers use, so our client
/// offers, and our server (which follows the client's order) picks, the
/// suite a Go peer would. AES-128 is 10 rounds to AES-256's 14: about a
/// third less AES work per byte, with a 128-bit key's ample margin.
fn ring_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        (s.tls13().is_none(), !name.contains("AES_128_GCM"))
    };
    // A stable sort: otherwise rustls's order stays.
    provider.cipher_suites.sort_by_key(rank);
    provider
}

#[derive(Debug)]
struct AcceptAny {
    pin: Option<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if cert_sha256(end_entity) != pin => Err(rustls::Error::General(
                "server certificate does not match the pinned SHA-256".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn file_err(path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        msg: e.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// The certificates in PEM text (at least one).
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// A rustls client configuration with rustls's default versions and suites.
pub fn client_config(
    verification: &Verification,
    alpn: &[String],
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(verification, alpn, &TlsOptions::default())
}

/// A rustls client configuration: `verification`, `alpn`, and the versions,
/// suites and SNI of `options`. `enable_secret_extraction` is on: this
/// crate's connections seal and open their TLS 1.3 records themselves after
/// the handshake (the secrets never leave the connection).
///
/// With [`Verification::CaFile`] or [`Verification::CaPem`], a certificate of
/// the file is also accepted when the server presents it *itself* as its
/// end-entity certificate, even if it is marked as a CA (openssl's default
/// for `req -x509`), as Go's TLS does: the name and the validity period are
/// still checked, and chains to real CAs are verified as before.
pub fn client_config_with(
    verification: &Verification,
    alpn: &[String],
    options: &TlsOptions,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = options.provider()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&options.versions()?)?;
    let mut cfg = match verification {
        Verification::WebPki => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verification::CaFile(_) | Verification::CaPem(_) => {
            let certs = match verification {
                Verification::CaFile(path) => load_certs(path)?,
                Verification::CaPem(pem) => pem_certs(pem)?,
                _ => unreachable!("matched above"),
            };
            let mut roots = RootCertStore::empty();
            for c in &certs {
                roots.add(c.clone()).map_err(|e| match verification {
                    Verification::CaFile(path) => file_err(path, e),
                    _ => TlsError::Pem(e.to_string()),
                })?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Options(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(TrustedFile { webpki, certs }))
                .with_no_client_auth()
        }
        Verification::Pin(_) | Verification::Insecure => {
            let pin = match verification {
                Verification::Pin(p) => Some(*p),
                _ => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny {
                    pin,
                    algs: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.enable_sni = !options.disable_sni;
    cfg.enable_secret_extraction = true;
    Ok(cfg)
}

/// `config` with `enable_secret_extraction` on (a copy when it was off): it
/// lets the connection seal and open its TLS 1.3 records itself after the
/// handshake, one copy per byte fewer than rustls (see `tls_io/record.rs`).
/// The secrets never leave the connection.
pub(crate) fn records_client(config: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    if config.enable_secret_extraction {
        return config.clone();
    }
    let mut c = (**config).clone();
    c.enable_secret_extraction = true;
    Arc::new(c)
}

/// [`records_client`] for a server configuration.
pub(crate) fn records_server(config: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if config.enable_secret_extraction {
        return config.clone();
    }
    let mut c = (**config).clone();
    c.enable_secret_extraction = true;
    Arc::new(c)
}

/// Roots from a file, plus Go's rule: a certificate of the file presented
/// as the server's own (self-signed, often marked CA:TRUE) is trusted for
/// the names it carries while it is valid.
#[derive(Debug)]
struct TrustedFile {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    certs: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for TrustedFile {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chained =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        // Only webpki's "a CA certificate as the end entity" is reconsidered,
        // and only for a certificate of the file itself.
        let ca_as_leaf = matches!(
            &chained,
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)))
                if o.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
        );
        if !ca_as_leaf || !self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return chained;
        }
        // The very certificate the user trusts: its name, dates and key
        // usage for servers decide (the chain is that certificate alone).
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))?;
        cert.verify_is_valid_for_subject_name(server_name)
            .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))?;
        check_self_trusted(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    // Handshake signatures: webpki's, as for any chain.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn pki_error(e: webpki::Error) -> rustls::CertificateError {
    match e {
        webpki::Error::CertNotValidForName(_) => rustls::CertificateError::NotValidForName,
        webpki::Error::BadDer | webpki::Error::BadDerTime => rustls::CertificateError::BadEncoding,
        e => rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))),
    }
}

/// The validity period against `now`, and an extended key usage (if any)
/// that allows a TLS server, as Go checks a one-certificate chain.
fn check_self_trusted(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_parser::prelude::FromDer;
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der.as_ref()).map_err(|_| bad())?;
    let v = cert.validity();
    let now = now.as_secs() as i64;
    if now < v.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidYet,
        ));
    }
    if now > v.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
    }
    if let Some(eku) = cert.extended_key_usage().map_err(|_| bad())? {
        if !eku.value.any && !eku.value.server_auth {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose,
            ));
        }
    }
    Ok(())
}

/// Something wrong with a server's certificate, found before serving (see
/// [`check_server_certificate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// Past its `notAfter`: verifying clients refuse it.
    Expired {
        /// When it expired.
        not_after: std::time::SystemTime,
    },
    /// Before its `notBefore` (a clock or an issuance problem).
    NotYetValid {
        /// When it becomes valid.
        not_before: std::time::SystemTime,
    },
    /// Valid now, but not for long.
    ExpiresSoon {
        /// When it expires.
        not_after: std::time::SystemTime,
        /// Whole days left.
        days_left: u64,
    },
    /// It does not name the server name clients check.
    NameNotCovered {
        /// The server name.
        name: String,
    },
    /// It cannot be parsed.
    Unreadable(String),
}

/// Days before expiry from which [`check_server_certificate`] warns.
pub const EXPIRY_WARNING_DAYS: u64 = 14;

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = |t: &std::time::SystemTime| {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            x509_parser::time::ASN1Time::from_timestamp(secs).map_or_else(
                |_| format!("{secs} s after 1970"),
                |t| {
                    let d = t.to_datetime();
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                        d.year(),
                        u8::from(d.month()),
                        d.day(),
                        d.hour(),
                        d.minute()
                    )
                },
            )
        };
        match self {
            CertificateProblem::Expired { not_after } => write!(
                f,
                "the certificate expired on {}: clients that verify it refuse the connection",
                date(not_after)
            ),
            CertificateProblem::NotYetValid { not_before } => write!(
                f,
                "the certificate is not valid before {} (is the clock right?)",
                date(not_before)
            ),
            CertificateProblem::ExpiresSoon {
                not_after,
                days_left,
            } => write!(
                f,
                "the certificate expires on {} ({days_left} day(s) left): renew it",
                date(not_after)
            ),
            CertificateProblem::NameNotCovered { name } => write!(
                f,
                "the certificate is not valid for the server name {name:?}: clients that verify it refuse the connection"
            ),
            CertificateProblem::Unreadable(e) => write!(f, "the certificate cannot be read: {e}"),
        }
    }
}

/// Checks a server's leaf certificate at `now`: expired, not yet valid,
/// expiring within [`EXPIRY_WARNING_DAYS`], or not covering `server_name`
/// (the name clients will check, when known).
pub fn check_server_certificate(
    leaf: &CertificateDer<'_>,
    server_name: Option<&str>,
    now: std::time::SystemTime,
) -> Vec<CertificateProblem> {
    use std::time::{Duration, UNIX_EPOCH};
    use x509_parser::prelude::FromDer;
    let cert = match x509_parser::certificate::X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, c)) => c,
        Err(e) => return vec![CertificateProblem::Unreadable(e.to_string())],
    };
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let v = cert.validity();
    let (not_before, not_after) = (at(v.not_before.timestamp()), at(v.not_after.timestamp()));
    let mut problems = Vec::new();
    if now > not_after {
        problems.push(CertificateProblem::Expired { not_after });
    } else if now < not_before {
        problems.push(CertificateProblem::NotYetValid { not_before });
    } else {
        let left = not_after.duration_since(now).unwrap_or_default();
        let days_left = left.as_secs() / 86_400;
        if days_left < EXPIRY_WARNING_DAYS {
            problems.push(CertificateProblem::ExpiresSoon {
                not_after,
                days_left,
            });
        }
    }
    if let Some(name) = server_name {
        let covered = self::server_name(name).is_ok_and(|n| {
            webpki::EndEntityCert::try_from(leaf)
                .is_ok_and(|c| c.verify_is_valid_for_subject_name(&n).is_ok())
        });
        if !covered {
            problems.push(CertificateProblem::NameNotCovered {
                name: name.to_owned(),
            });
        }
    }
    problems
}

/// The server name to present: an IP literal sends no SNI (rustls does not
/// send SNI for IP addresses), as the AnyTLS URI format asks.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let trimmed = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_owned()).map_err(|_| TlsError::BadServerName(name.to_owned()))
}

/// A server certificate and key.
pub struct Identity {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("leaf_sha256", &self.leaf_sha256().map(|h| hex32(&h)))
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// From PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        Ok(Identity {
            certs: load_certs(cert)?,
            key: load_key(key)?,
        })
    }

    /// A new self-signed certificate for `names` (DNS names or IP literals).
    #[cfg(feature = "self-signed")]
    pub fn self_signed(names: &[String]) -> Result<Identity, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())?;
        Ok(Identity {
            certs: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        })
    }

    /// SHA-256 of the leaf certificate (what clients pin).
    pub fn leaf_sha256(&self) -> Option<[u8; 32]> {
        self.certs.first().map(cert_sha256)
    }

    /// PEM of the certificate chain and of the key (to write files for peers).
    pub fn to_pem(&self) -> (String, String) {
        let mut certs = String::new();
        for c in &self.certs {
            certs.push_str(&pem_block("CERTIFICATE", c.as_ref()));
        }
        let key = pem_block("PRIVATE KEY", self.key.secret_der());
        (certs, key)
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Where a server's TLS configuration comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum ServerTls {
    /// One certificate chain and its key.
    Identity(Identity),
    /// A certificate chosen per connection: by SNI, renewed by ACME, or
    /// anything a [`rustls::server::ResolvesServerCert`] does.
    Resolver(Arc<dyn rustls::server::ResolvesServerCert>),
    /// A complete rustls configuration of your own (the server's `alpn` is
    /// not applied to it; `enable_secret_extraction` is turned on in a copy,
    /// so that TLS 1.3 records are sealed and opened by the connection
    /// itself after the handshake, one copy per byte fewer than rustls).
    Rustls(Arc<rustls::ServerConfig>),
    /// A certificate obtained and renewed from an ACME CA: the server runs
    /// the manager while it serves and answers TLS-ALPN-01 challenges on its
    /// own port (see [`crate::acme`]).
    #[cfg(feature = "acme")]
    Acme(crate::acme::Acme),
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTls::Identity(id) => f.debug_tuple("Identity").field(id).finish(),
            ServerTls::Resolver(_) => f.write_str("Resolver"),
            ServerTls::Rustls(_) => f.write_str("Rustls"),
            #[cfg(feature = "acme")]
            ServerTls::Acme(a) => f.debug_tuple("Acme").field(a).finish(),
        }
    }
}

impl From<Identity> for ServerTls {
    fn from(id: Identity) -> ServerTls {
        ServerTls::Identity(id)
    }
}

impl ServerTls {
    /// SHA-256 of the leaf certificate, when there is one fixed certificate.
    pub fn leaf_sha256(&self) -> Option<[u8; 32]> {
        match self {
            ServerTls::Identity(id) => id.leaf_sha256(),
            _ => None,
        }
    }

    /// The rustls configuration: built from the identity or resolver (with
    /// this crate's crypto provider, TLS 1.2 and 1.3, and `alpn`), or yours.
    pub fn build(&self, alpn: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.build_with(alpn, &TlsOptions::default())
    }

    /// [`build`](Self::build) with the versions and suites of `options`
    /// (not applied to [`ServerTls::Rustls`]).
    pub fn build_with(
        &self,
        alpn: &[String],
        options: &TlsOptions,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = || {
            Ok::<_, TlsError>(
                rustls::ServerConfig::builder_with_provider(options.provider()?)
                    .with_protocol_versions(&options.versions()?)?
                    .with_no_client_auth(),
            )
        };
        let mut cfg = match self {
            ServerTls::Rustls(cfg) => return Ok(records_server(cfg)),
            ServerTls::Identity(id) => {
                builder()?.with_single_cert(id.certs.clone(), id.key.clone_key())?
            }
            ServerTls::Resolver(r) => builder()?.with_cert_resolver(r.clone()),
            #[cfg(feature = "acme")]
            ServerTls::Acme(a) => builder()?.with_cert_resolver(a.resolver()),
        };
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        cfg.enable_secret_extraction = true;
        Ok(Arc::new(cfg))
    }
}

/// A rustls server configuration for one identity.
pub fn server_config(
    identity: &Identity,
    alpn: &[String],
) -> Result<rustls::ServerConfig, TlsError> {
    let cfg = ServerTls::Identity(identity.clone()).build(alpn)?;
    Ok(Arc::unwrap_or_clone(cfg))
}

#[cfg(all(test, feature = "self-signed"))]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print() {
        let h = [0xabu8; 32];
        assert_eq!(parse_pin(&hex32(&h)).unwrap(), h);
        let colons: Vec<String> = h.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_pin(&colons.join(":")).unwrap(), h);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn self_signed_identity_round_trips_through_pem() {
        let id = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (cert, key) = id.to_pem();
        let dir = std::env::temp_dir().join(format!("anytls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        let back = Identity::from_pem_files(&dir.join("c.pem"), &dir.join("k.pem")).unwrap();
        assert_eq!(back.leaf_sha256(), id.leaf_sha256());
        server_config(&back, &[]).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A handshake in memory; the client's error if it fails.
    fn handshake(
        client: rustls::ClientConfig,
        server: Arc<rustls::ServerConfig>,
        name: &str,
    ) -> Result<rustls::CipherSuite, rustls::Error> {
        let mut c = rustls::ClientConnection::new(Arc::new(client), server_name(name).unwrap())?;
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = s.process_new_packets() {
                // The client's alert says why, when it refused.
                let _ = e;
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c.negotiated_cipher_suite().expect("a suite").suite());
            }
        }
        panic!("handshake did not finish");
    }

    fn ca_true_self_signed(name: &str) -> Identity {
        self_signed_with(name, |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        })
    }

    #[test]
    fn a_self_signed_ca_certificate_given_as_the_ca_file_is_trusted_as_go_does() {
        let id = ca_true_self_signed("proxy.test");
        let server = ServerTls::Identity(id.clone()).build(&[]).unwrap();
        let ca = Verification::CaPem(id.to_pem().0);
        let cfg = || client_config(&ca, &[]).unwrap();
        handshake(cfg(), server.clone(), "proxy.test").unwrap();
        // The name is still checked.
        let e = handshake(cfg(), server.clone(), "other.test").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            ),
            "{e:?}"
        );
        // Another CA:TRUE certificate for the same name is not trusted.
        let stranger = ServerTls::Identity(ca_true_self_signed("proxy.test"))
            .build(&[])
            .unwrap();
        let e = handshake(cfg(), stranger, "proxy.test").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
    }

    fn self_signed_with(name: &str, f: impl FnOnce(&mut rcgen::CertificateParams)) -> Identity {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        f(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Identity {
            certs: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    #[test]
    fn a_trusted_file_certificate_must_be_for_servers_and_in_date() {
        // Extended key usage clientAuth only: not for a TLS server (webpki
        // and Go refuse it), CA or not.
        for ca in [false, true] {
            let id = self_signed_with("proxy.test", |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                if ca {
                    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                }
            });
            let server = ServerTls::Identity(id.clone()).build(&[]).unwrap();
            let cfg = client_config(&Verification::CaPem(id.to_pem().0), &[]).unwrap();
            let r = handshake(cfg, server, "proxy.test");
            assert!(
                r.is_err(),
                "ca={ca}: a clientAuth-only certificate was accepted"
            );
        }
        // Expired.
        let id = self_signed_with("proxy.test", |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let server = ServerTls::Identity(id.clone()).build(&[]).unwrap();
        let cfg = client_config(&Verification::CaPem(id.to_pem().0), &[]).unwrap();
        let e = handshake(cfg, server, "proxy.test").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. }
                )
            ),
            "{e:?}"
        );
    }

    #[test]
    fn server_certificates_are_checked_before_serving() {
        use std::time::{Duration, SystemTime};
        let leaf = |f: &dyn Fn(&mut rcgen::CertificateParams)| {
            self_signed_with("vpn.example.com", |p| f(p)).certs[0].clone()
        };
        let now = SystemTime::now();
        // A fresh one for the right name: nothing to say.
        let good = leaf(&|_| {});
        assert_eq!(
            check_server_certificate(&good, Some("vpn.example.com"), now),
            vec![]
        );
        assert_eq!(check_server_certificate(&good, None, now), vec![]);
        // Another name.
        let p = check_server_certificate(&good, Some("other.example.com"), now);
        assert!(
            matches!(&p[..], [CertificateProblem::NameNotCovered { name }] if name == "other.example.com")
        );
        // Expired, not yet valid, expiring in 5 days.
        let expired = leaf(&|p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let p = check_server_certificate(&expired, None, now);
        assert!(
            matches!(&p[..], [CertificateProblem::Expired { .. }]),
            "{p:?}"
        );
        assert!(
            p[0].to_string().contains("expired on 2001-01-01 00:00 UTC"),
            "{}",
            p[0]
        );
        let future = leaf(&|p| {
            p.not_before = rcgen::date_time_ymd(2990, 1, 1);
            p.not_after = rcgen::date_time_ymd(2991, 1, 1);
        });
        let p = check_server_certificate(&future, None, now);
        assert!(
            matches!(&p[..], [CertificateProblem::NotYetValid { .. }]),
            "{p:?}"
        );
        // Judged five days before its end (2001-01-01 is 978 307 200 s).
        let five_days_before =
            SystemTime::UNIX_EPOCH + Duration::from_secs(978_307_200 - 5 * 86_400);
        let p = check_server_certificate(&expired, None, five_days_before);
        assert!(
            matches!(
                &p[..],
                [CertificateProblem::ExpiresSoon {
                    days_left: 4 | 5,
                    ..
                }]
            ),
            "{p:?}"
        );
    }

    #[test]
    fn a_real_chain_is_verified_as_before() {
        // A CA, and a leaf it signed: the leaf is trusted through the CA.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["site.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let id = Identity {
            certs: vec![leaf.der().clone()],
            key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        };
        let server = ServerTls::Identity(id).build(&[]).unwrap();
        let ca = Verification::CaPem(pem_block("CERTIFICATE", ca_cert.der()));
        handshake(
            client_config(&ca, &[]).unwrap(),
            server.clone(),
            "site.test",
        )
        .unwrap();
        let e = handshake(client_config(&ca, &[]).unwrap(), server, "else.test").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
    }

    #[test]
    fn aes_128_gcm_is_preferred_as_go_and_browsers_do() {
        let id = Identity::self_signed(&["localhost".into()]).unwrap();
        let pin = Verification::Pin(id.leaf_sha256().unwrap());
        let server = ServerTls::Identity(id).build(&[]).unwrap();
        let suite = handshake(
            client_config(&pin, &[]).unwrap(),
            server.clone(),
            "localhost",
        );
        assert_eq!(
            suite.unwrap(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let tls12 = TlsOptions {
            max_version: Some(TlsVersion::Tls12),
            ..TlsOptions::default()
        };
        let client = client_config_with(&pin, &[], &tls12).unwrap();
        assert_eq!(
            handshake(client, server, "localhost").unwrap(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
    }

    #[test]
    fn versions_and_suites_restrict_the_handshake() {
        let id = Identity::self_signed(&["localhost".into()]).unwrap();
        let pin = Verification::Pin(id.leaf_sha256().unwrap());
        let only = |min, max| TlsOptions {
            min_version: Some(min),
            max_version: Some(max),
            ..TlsOptions::default()
        };
        let tls12 = only(TlsVersion::Tls12, TlsVersion::Tls12);
        let tls13 = only(TlsVersion::Tls13, TlsVersion::Tls13);
        let server12 = ServerTls::Identity(id.clone())
            .build_with(&[], &tls12)
            .unwrap();
        let client13 = client_config_with(&pin, &[], &tls13).unwrap();
        assert!(handshake(client13, server12.clone(), "localhost").is_err());
        let client12 = client_config_with(&pin, &[], &tls12).unwrap();
        handshake(client12, server12.clone(), "localhost").unwrap();
        // One TLS 1.2 suite by its Go name; an unknown one is an error.
        let suite = TlsOptions {
            cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".into()],
            ..tls12.clone()
        };
        handshake(
            client_config_with(&pin, &[], &suite).unwrap(),
            server12,
            "localhost",
        )
        .unwrap();
        let bad = TlsOptions {
            cipher_suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            ..TlsOptions::default()
        };
        let e = client_config_with(&pin, &[], &bad).unwrap_err().to_string();
        assert!(
            e.contains("TLS_RSA_WITH_RC4_128_SHA") && e.contains("TLS_AES_128_GCM_SHA256"),
            "{e}"
        );
        assert!(
            TlsVersion::parse("1.1")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            client_config_with(&pin, &[], &only(TlsVersion::Tls13, TlsVersion::Tls12)).is_err()
        );
    }

    #[test]
    fn disable_sni_sends_no_name_but_still_checks_it() {
        let id = Identity::self_signed(&["localhost".into()]).unwrap();
        let server = ServerTls::Identity(id.clone()).build(&[]).unwrap();
        let opts = TlsOptions {
            disable_sni: true,
            ..TlsOptions::default()
        };
        let ca = Verification::CaPem(id.to_pem().0);
        let cfg = client_config_with(&ca, &[], &opts).unwrap();
        assert!(!cfg.enable_sni);
        handshake(cfg, server, "localhost").unwrap();
    }

    #[test]
    fn ip_literal_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("example.com").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
