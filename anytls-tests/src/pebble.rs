//! A real ACME CA for the tests: Debian's `pebble` (and
//! `pebble-challtestsrv` as its DNS, answering every name with 127.0.0.1),
//! installed by `.ci/run`, run on fresh 127.0.0.1 ports. Its HTTPS
//! certificate is made here (a CA written as `directory-ca.pem`, which is
//! what the ACME client trusts); the roots it issues under are fetched from
//! its management port.
//!
//! Missing binaries skip the test with a message, unless
//! `ANYTLS_REQUIRE_PEERS=1` (CI), where they fail it.
//!
//! Self-contained and blocking (std only, waits bounded), so that
//! `anytls-tokio`'s program tests include it too (`#[path]`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Kills the child process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago, none of
/// them in `avoid` (the listeners are held until all are chosen: one at a
/// time, the kernel may hand out the same port twice).
fn free_ports(n: usize, avoid: &[u16]) -> Vec<u16> {
    let mut held = Vec::new();
    while held.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        if !avoid.contains(&l.local_addr().unwrap().port()) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Waits (at most 10 s) until something listens on `port`.
fn wait_listening(port: u16, child: &mut Proc, who: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{who} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{who} never listened on {port}");
}

/// What a test asks of the CA.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// The port TLS-ALPN-01 validations connect to (on 127.0.0.1).
    pub tls_port: u16,
    /// The port HTTP-01 validations connect to.
    pub http_port: u16,
    /// Lifetime of the certificates it issues.
    pub validity: Duration,
    /// External account binding required, with this key id and base64url
    /// MAC key.
    pub eab: Option<(String, String)>,
}

/// A running pebble; killed on drop.
pub struct Pebble {
    _dns: Proc,
    _ca: Proc,
    /// The ACME directory URL.
    pub directory: String,
    /// The PEM file of the CA that signed pebble's HTTPS certificate.
    pub directory_ca: PathBuf,
    management: u16,
    tls: Arc<rustls::ClientConfig>,
}

fn binary(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("ANYTLS_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!("{name} is missing (apt-get install pebble)");
        }
        eprintln!("SKIPPED: {name} is not installed (apt-get install pebble)");
    }
    found
}

/// A CA and a certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM,
/// key PEM).
fn https_identity() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test directory CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

impl Pebble {
    /// Starts the DNS and the CA (blocking until they listen); `None` when
    /// pebble is not installed.
    pub fn start(dir: &Path, opts: &PebbleOptions) -> Option<Pebble> {
        let pebble = binary("pebble")?;
        let challtestsrv = binary("pebble-challtestsrv")?;
        let (ca_pem, cert_pem, key_pem) = https_identity();
        let directory_ca = dir.join("directory-ca.pem");
        std::fs::write(&directory_ca, &ca_pem).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), key_pem).unwrap();
        let ports = free_ports(4, &[opts.tls_port, opts.http_port]);
        let (dns_port, dns_mgmt, port, management) = (ports[0], ports[1], ports[2], ports[3]);
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": opts.http_port,
                "tlsPort": opts.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": opts.eab.is_some(),
                "certificateValidityPeriod": opts.validity.as_secs(),
            }
        });
        if let Some((kid, key)) = &opts.eab {
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut dns = Proc(
            Command::new(challtestsrv)
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        wait_listening(dns_port, &mut dns, "pebble-challtestsrv");
        let mut ca = Proc(
            Command::new(pebble)
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                // No random sleeps, no rejected nonces, no reused
                // authorizations: every order runs its challenges.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
                .stderr(std::fs::File::create(dir.join("pebble.stderr")).unwrap())
                .spawn()
                .expect("start pebble"),
        );
        wait_listening(port, &mut ca, "pebble");
        wait_listening(management, &mut ca, "pebble (management)");
        let tls = trusting(&ca_pem);
        Some(Pebble {
            _dns: dns,
            _ca: ca,
            directory: format!("https://127.0.0.1:{port}/dir"),
            directory_ca,
            management,
            tls,
        })
    }

    /// The root the issued certificates chain to (PEM), from the management
    /// port (blocking, bounded by socket timeouts).
    pub fn root_pem(&self) -> String {
        let body = self.get(self.management, "/roots/0");
        assert!(body.contains("BEGIN CERTIFICATE"), "no root: {body}");
        body
    }

    /// A GET over HTTPS to 127.0.0.1:`port` (HTTP/1.0, close-delimited).
    fn get(&self, port: u16, path: &str) -> String {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(tls, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        // Go closes without close_notify on HTTP/1.0: keep what came.
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{head}"
        );
        body.to_owned()
    }
}

/// The SHA-256 of the leaf certificate `addr` presents for `sni` (a raw
/// rustls handshake trusting `root_pem` only; blocking, bounded).
pub fn served_leaf(addr: std::net::SocketAddr, sni: &str, root_pem: &str) -> [u8; 32] {
    let cfg = trusting(root_pem);
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .expect("TLS handshake with the server");
    }
    let leaf = &conn.peer_certificates().expect("a certificate")[0];
    use sha2::Digest;
    sha2::Sha256::digest(leaf.as_ref()).into()
}

/// A rustls client trusting the one root in `pem`.
fn trusting(pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(cfg)
}
