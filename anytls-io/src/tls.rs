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
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[cfg(feature = "self-signed")]
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
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
    Arc::new(rustls::crypto::ring::default_provider())
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

/// A rustls client configuration.
pub fn client_config(
    verification: &Verification,
    alpn: &[String],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut cfg = match verification {
        Verification::WebPki | Verification::CaFile(_) | Verification::CaPem(_) => {
            let mut roots = RootCertStore::empty();
            match verification {
                Verification::CaFile(path) => {
                    for c in load_certs(path)? {
                        roots.add(c).map_err(|e| file_err(path, e))?;
                    }
                }
                Verification::CaPem(pem) => {
                    for c in pem_certs(pem)? {
                        roots.add(c).map_err(|e| TlsError::Pem(e.to_string()))?;
                    }
                }
                _ => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
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
    Ok(cfg)
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
    /// not applied to it).
    Rustls(Arc<rustls::ServerConfig>),
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTls::Identity(id) => f.debug_tuple("Identity").field(id).finish(),
            ServerTls::Resolver(_) => f.write_str("Resolver"),
            ServerTls::Rustls(_) => f.write_str("Rustls"),
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
        let builder = || {
            Ok::<_, TlsError>(
                rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth(),
            )
        };
        let mut cfg = match self {
            ServerTls::Rustls(cfg) => return Ok(cfg.clone()),
            ServerTls::Identity(id) => {
                builder()?.with_single_cert(id.certs.clone(), id.key.clone_key())?
            }
            ServerTls::Resolver(r) => builder()?.with_cert_resolver(r.clone()),
        };
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
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
