//! The parts of ACME that need no CA (the issuance itself is tested against
//! pebble in anytls-tests/tests/acme.rs).

use super::*;

fn config(dir: &std::path::Path) -> AcmeConfig {
    AcmeConfig::new(vec!["example.com".into()], dir)
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anytls-acme-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let d = temp("validate");
    assert!(config(&d).validate().is_ok());
    type Change = Box<dyn Fn(&mut AcmeConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c.domains.clear()), "no domain"),
        (
            Box::new(|c| c.domains = vec!["*.example.com".into()]),
            "DNS-01",
        ),
        (
            Box::new(|c| c.domains = vec!["192.0.2.1".into()]),
            "not IP addresses",
        ),
        (
            Box::new(|c| c.domains = vec!["bad name".into()]),
            "not a valid DNS name",
        ),
        (
            Box::new(|c| c.directory_url = "ftp://ca".into()),
            "expected https://",
        ),
        (
            Box::new(|c| {
                c.tls_alpn_challenge = false;
                c.http_addr = None;
            }),
            "both challenges are disabled",
        ),
        (Box::new(|c| c.renew_remaining = 1.5), "between 0 and 1"),
        (
            Box::new(|c| c.directory_url = ZEROSSL.into()),
            "external_account",
        ),
        (
            Box::new(|c| {
                c.external_account = Some(ExternalAccount {
                    key_id: "k".into(),
                    mac_key: "not base64!".into(),
                })
            }),
            "base64url",
        ),
    ];
    for (change, expected) in cases {
        let mut c = config(&d);
        change(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(expected), "{e:?} should say {expected:?}");
    }
    assert_eq!(AcmeConfig::provider_url("").unwrap(), LETS_ENCRYPT);
    assert_eq!(AcmeConfig::provider_url("zerossl").unwrap(), ZEROSSL);
    assert!(AcmeConfig::provider_url("buypass").is_err());
}

#[test]
fn external_account_mac_key_is_not_in_debug_output() {
    let e = ExternalAccount {
        key_id: "kid-1".into(),
        mac_key: "c2VjcmV0LW1hYy1rZXk".into(),
    };
    let shown = format!("{e:?}");
    assert!(
        shown.contains("kid-1") && !shown.contains("c2VjcmV0"),
        "{shown}"
    );
}

#[test]
fn challenge_certificates_carry_the_acme_identifier() {
    let digest = [7u8; 32];
    let ck = challenge_certificate("example.com", &digest).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
    // id-pe-acmeIdentifier, critical, an OCTET STRING of the digest.
    let ext = x509
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("acmeIdentifier extension");
    assert!(ext.critical);
    assert_eq!(&ext.value[2..], &digest);
    assert_eq!(
        x509.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len(),
        1
    );
}

/// A ClientHello from rustls offering `alpn`, as the bytes a server reads.
fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let mut cfg = crate::tls::client_config(&Verification::Insecure, &[]).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("example.com").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn client_hellos_are_told_apart_by_alpn_and_kept_whole() {
    for (alpn, wants) in [
        (vec![ACME_TLS_ALPN], true),
        (vec![&b"h2"[..], &b"http/1.1"[..]], false),
        (vec![], false),
    ] {
        let hello = client_hello(&alpn);
        // Delivered a few bytes at a time: the whole hello is still read.
        let reader = futures_lite::io::Cursor::new(hello.clone());
        let mut slow = SlowReader(reader, 7);
        let (seen, got) = futures_lite::future::block_on(read_client_hello(&mut slow)).unwrap();
        assert_eq!(got, wants, "{alpn:?}");
        assert_eq!(seen, hello, "every byte read is handed on");
    }
    // Not TLS, and a connection closed early: errors, not panics.
    let mut junk = futures_lite::io::Cursor::new(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    assert!(futures_lite::future::block_on(read_client_hello(&mut junk)).is_err());
    let hello = client_hello(&[]);
    let mut cut = futures_lite::io::Cursor::new(hello[..hello.len() / 2].to_vec());
    assert!(futures_lite::future::block_on(read_client_hello(&mut cut)).is_err());
}

/// Hands out at most `.1` bytes per read.
struct SlowReader<R>(R, usize);

impl<R: AsyncRead + Unpin> AsyncRead for SlowReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let n = buf.len().min(self.1);
        std::pin::Pin::new(&mut self.0).poll_read(cx, &mut buf[..n])
    }
}

#[test]
fn stored_certificates_are_loaded_only_when_usable() {
    let d = temp("store");
    let cfg = config(&d);
    let store = Store::new(&d, &cfg.directory_url, "example.com");
    let make = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    // Nothing stored: no certificate.
    assert!(Acme::new(cfg.clone()).unwrap().certificate().is_none());
    // One that covers the domain: served at once.
    let (cert, key) = make(vec!["example.com".into()]);
    store
        .save_certificate(cert.as_bytes(), key.as_bytes())
        .unwrap();
    let acme = Acme::new(cfg.clone()).unwrap();
    let info = acme.certificate().expect("loaded");
    assert!(info.not_after > SystemTime::now());
    assert!(acme.resolver_has_certificate());
    // One for another name, or a key that does not match: not used.
    let (other, other_key) = make(vec!["other.example".into()]);
    store
        .save_certificate(other.as_bytes(), other_key.as_bytes())
        .unwrap();
    assert!(Acme::new(cfg.clone()).unwrap().certificate().is_none());
    store
        .save_certificate(cert.as_bytes(), other_key.as_bytes())
        .unwrap();
    assert!(Acme::new(cfg.clone()).unwrap().certificate().is_none());
    // Garbage: not used, no panic.
    store.save_certificate(b"junk", b"junk").unwrap();
    assert!(Acme::new(cfg).unwrap().certificate().is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn renewal_is_due_in_the_last_third_and_retries_back_off() {
    let d = temp("renew");
    let acme = Acme::new(config(&d)).unwrap();
    let now = SystemTime::now();
    assert!(acme.renewal_due(now), "no certificate: due at once");
    let day = Duration::from_secs(86_400);
    let (cert, key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["example.com".into()]).unwrap();
        let start = SystemTime::now() - day;
        p.not_before = start.into();
        p.not_after = (start + 90 * day).into();
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    let issued =
        Issued::from_pem(cert.as_bytes(), key.as_bytes(), &["example.com".into()]).unwrap();
    acme.install(issued);
    assert!(!acme.renewal_due(now));
    assert!(!acme.renewal_due(now + 58 * day));
    assert!(acme.renewal_due(now + 60 * day));
    let wait = acme.until_renewal(now);
    assert!(wait > 58 * day && wait < 60 * day, "{wait:?}");
    let delays: Vec<u64> = (1..=9).map(|f| acme.retry_delay(f).as_secs()).collect();
    assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    assert_eq!(acme.retry_delay(u32::MAX).as_secs(), 3600);
}

// ---- found in review ----

/// A stale `key.tmp` (an interrupted write by another user, a copied
/// directory) keeps its permissions: `open(create, mode 0600)` applies the
/// mode only when it creates the file, and the rename makes the private key
/// world-readable.
#[cfg(unix)]
#[test]
fn a_stale_temporary_file_does_not_make_the_key_readable() {
    use std::os::unix::fs::PermissionsExt;
    let d = temp("review-tmp");
    let cfg = config(&d);
    let store = Store::new(&d, &cfg.directory_url, "example.com");
    store.save_certificate(b"chain", b"key").unwrap();
    let tmp = store.key_path().with_extension("tmp");
    std::fs::write(&tmp, b"old").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    store.save_certificate(b"chain", b"new key").unwrap();
    let mode = std::fs::metadata(store.key_path())
        .unwrap()
        .permissions()
        .mode();
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(mode & 0o777, 0o600, "key.pem is {:o}", mode & 0o777);
}

/// Adding a name (`domain: [a]` -> `[a, b]`, or `--acme b` added) throws
/// away the stored certificate, still valid for `a`: every AnyTLS handshake
/// is refused until the new order succeeds, and for as long as it keeps
/// failing (b's DNS not pointed yet). The stored certificate should be
/// served meanwhile (it is due for renewal at once anyway).
#[test]
fn a_valid_stored_certificate_is_served_until_one_for_more_names_arrives() {
    let d = temp("review-names");
    let cfg = config(&d);
    let store = Store::new(&d, &cfg.directory_url, "example.com");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    store
        .save_certificate(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .unwrap();
    let mut more = cfg.clone();
    more.domains.push("www.example.com".into());
    let acme = Acme::new(more).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    assert!(acme.renewal_due(SystemTime::now()), "ordered at once");
    assert!(
        acme.certificate().is_some(),
        "nothing is served until the new order succeeds"
    );
}

/// Checked fine: a ClientHello over two records (a long ALPN list, > 16 KiB)
/// is read whole, delivered in small reads, and acme-tls/1 at its end is seen.
#[test]
fn a_client_hello_over_two_records_is_read_whole() {
    let filler: Vec<Vec<u8>> = (0..100u8).map(|i| vec![b'a' + i % 26; 200]).collect();
    let mut alpn: Vec<&[u8]> = filler.iter().map(|v| v.as_slice()).collect();
    alpn.push(ACME_TLS_ALPN);
    let hello = client_hello(&alpn);
    assert!(hello.len() > 16 * 1024 + 5, "{}", hello.len());
    let mut extra = hello.clone();
    extra.extend_from_slice(b"\x14\x03\x03\x00\x01\x01"); // a CCS after it
    let mut slow = SlowReader(futures_lite::io::Cursor::new(extra.clone()), 1000);
    let (seen, wants) = futures_lite::future::block_on(read_client_hello(&mut slow)).unwrap();
    assert!(wants);
    assert!(extra.starts_with(&seen) && seen.len() >= hello.len());
}
