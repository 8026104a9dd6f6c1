//! What ACME keeps on disk, under `data_directory`:
//!
//! ```text
//! <data_directory>/<CA>/account.json         the account key and URL (0600)
//! <data_directory>/<CA>/<domain>/cert.pem    the chain, leaf first
//! <data_directory>/<CA>/<domain>/key.pem     its private key (0600)
//! ```
//!
//! `<CA>` is the directory URL without its scheme, every character other
//! than letters, digits, `.` and `-` made a `-` (one account per CA);
//! `<domain>` is the first domain. Files are written to a temporary name and
//! renamed, so a crash leaves the old file or the new one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{AcmeError, CertificateInfo};

/// A chain and its key, PEM.
type Pem = (Vec<u8>, Vec<u8>);

/// The files of one CA and one certificate.
#[derive(Debug, Clone)]
pub(super) struct Store {
    ca_dir: PathBuf,
    cert_dir: PathBuf,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn io_err(path: &Path, e: io::Error) -> AcmeError {
    AcmeError::Storage {
        path: path.to_owned(),
        source: e,
    }
}

impl Store {
    pub(super) fn new(data_directory: &Path, directory_url: &str, domain: &str) -> Store {
        let ca = directory_url
            .split_once("://")
            .map_or(directory_url, |(_, rest)| rest);
        let ca_dir = data_directory.join(sanitize(ca.trim_end_matches('/')));
        let cert_dir = ca_dir.join(sanitize(domain));
        Store { ca_dir, cert_dir }
    }

    pub(super) fn account_path(&self) -> PathBuf {
        self.ca_dir.join("account.json")
    }

    pub(super) fn cert_path(&self) -> PathBuf {
        self.cert_dir.join("cert.pem")
    }

    pub(super) fn key_path(&self) -> PathBuf {
        self.cert_dir.join("key.pem")
    }

    /// The stored account credentials (JSON), if any.
    pub(super) fn load_account(&self) -> Result<Option<Vec<u8>>, AcmeError> {
        read_optional(&self.account_path())
    }

    pub(super) fn save_account(&self, json: &[u8]) -> Result<(), AcmeError> {
        write_private(&self.account_path(), json)
    }

    /// Moves the account aside (`account.json.bad`): the CA does not know it.
    pub(super) fn discard_account(&self) {
        let path = self.account_path();
        let _ = fs::rename(&path, path.with_extension("json.bad"));
    }

    /// Makes the directories and checks a file can be written there.
    pub(super) fn check_writable(&self) -> Result<(), AcmeError> {
        let probe = self.cert_dir.join(".write-test");
        write_private(&probe, b"")?;
        let _ = fs::remove_file(&probe);
        Ok(())
    }

    /// The stored certificate chain and key (PEM), if both are there.
    pub(super) fn load_certificate(&self) -> Result<Option<Pem>, AcmeError> {
        let (Some(cert), Some(key)) = (
            read_optional(&self.cert_path())?,
            read_optional(&self.key_path())?,
        ) else {
            return Ok(None);
        };
        Ok(Some((cert, key)))
    }

    /// Writes the key first, then the chain: a chain on disk always has its
    /// key beside it.
    pub(super) fn save_certificate(
        &self,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), AcmeError> {
        write_private(&self.key_path(), key_pem)?;
        write_private(&self.cert_path(), chain_pem)
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Writes `bytes` to `path` readable by the owner only, through a temporary
/// file and a rename; makes the directories (0700) first.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| io_err(dir, e))?;
    let tmp = path.with_extension("tmp");
    // A stale temporary file would keep its own permissions: start afresh.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp, e)),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A certificate ready to serve, and what is known about it.
#[derive(Debug)]
pub(super) struct Issued {
    pub(super) key: Arc<CertifiedKey>,
    pub(super) info: CertificateInfo,
    /// It covers every configured domain (else at least one).
    pub(super) covers_all: bool,
}

fn unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl Issued {
    /// From PEM: the chain (leaf first) and its private key. Checks that the
    /// key belongs to the leaf and that the leaf covers at least one domain
    /// (`covers_all` says whether it covers every one).
    pub(super) fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        domains: &[String],
    ) -> Result<Issued, AcmeError> {
        let bad = |m: String| AcmeError::Certificate(m);
        let certs = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("certificate chain: {e}")))?;
        let leaf = certs
            .first()
            .ok_or_else(|| bad("no certificate in the chain".into()))?
            .clone();
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(format!("private key: {e}")))?;
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(format!("private key: {e}")))?;
        let certified = CertifiedKey::new(certs, signing);
        certified
            .keys_match()
            .map_err(|e| bad(format!("the key does not match the certificate: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| bad(format!("leaf certificate: {e}")))?;
        let validity = x509.validity();
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| bad(format!("leaf certificate: {e:?}")))?;
        let mut covered = 0;
        for d in domains {
            let name = rustls::pki_types::ServerName::try_from(d.as_str())
                .map_err(|_| bad(format!("{d:?} is not a DNS name")))?;
            if ee.verify_is_valid_for_subject_name(&name).is_ok() {
                covered += 1;
            }
        }
        if covered == 0 {
            return Err(bad(format!(
                "the certificate covers none of {}",
                domains.join(", ")
            )));
        }
        Ok(Issued {
            key: Arc::new(certified),
            info: CertificateInfo {
                not_before: unix(validity.not_before.timestamp()),
                not_after: unix(validity.not_after.timestamp()),
                serial: x509.raw_serial_as_string(),
                leaf_sha256: crate::tls::cert_sha256(&leaf),
            },
            covers_all: covered == domains.len(),
        })
    }
}
