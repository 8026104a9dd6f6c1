//! ACME against a real CA (Debian's pebble, see `anytls_tests::pebble`), the
//! server on each runtime:
//!
//! * TLS-ALPN-01 answered on the AnyTLS port itself: a certificate is issued,
//!   a client trusting only pebble's root moves bytes through the server; the
//!   short-lived certificate (12 s) is renewed by the running server without a
//!   restart, new handshakes get the new leaf while a session opened before
//!   carries on; the account and certificate persist in `data_directory` and
//!   a new manager serves the stored certificate at once.
//! * HTTP-01 with external account binding: until the first certificate is
//!   issued (the CA is not up yet) AnyTLS handshakes are refused; once the CA
//!   is up the manager's retry obtains one and clients get through.
//!
//! Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anytls_io::acme::{Acme, AcmeConfig};
use anytls_io::{Client, ClientConfig, ServerConfig, ServerTls, Verification};
use anytls_tests::TestRuntime;
use anytls_tests::fixture::{acme_issued, serve_acme};
use anytls_tests::pebble::{Pebble, PebbleOptions, free_port, served_leaf};
use anytls_tests::peers::temp_dir;
use anytls_tests::targets::{payload, sleep, tcp_echo, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const DOMAIN: &str = "anytls.test";
const LIMIT: Duration = Duration::from_secs(60);

anytls_tests::one_runtime_suite!(
    tls_alpn_issues_renews_and_persists,
    http01_with_eab_refuses_until_issued
);

fn acme_config(dir: &Path, directory: &str, directory_ca: &Path) -> AcmeConfig {
    let mut cfg = AcmeConfig::new(vec![DOMAIN.into()], dir.join("acme"));
    cfg.directory_url = directory.into();
    cfg.directory_ca = Some(directory_ca.to_owned());
    cfg.email = Some("ops@anytls.test".into());
    cfg.retry_min = Duration::from_millis(500);
    cfg.retry_max = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_secs(10);
    cfg
}

fn client<R: TestRuntime>(addr: SocketAddr, root_pem: &str) -> Client<R> {
    let mut cfg = ClientConfig::new(addr.to_string(), "acme-pw");
    cfg.sni = Some(DOMAIN.into());
    cfg.verification = Verification::CaPem(root_pem.to_owned());
    Client::<R>::new(cfg).unwrap()
}

async fn echo(stream: &mut anytls_io::AnyTlsStream, i: u32, size: usize) -> std::io::Result<()> {
    let data = payload(i, size);
    let mut back = vec![0u8; size];
    stream.write_all(&data).await?;
    stream.read_exact(&mut back).await?;
    assert_eq!(back, data, "echo {i} corrupted");
    Ok(())
}

/// Waits until `acme` has obtained `n` certificates.
async fn issued<R: TestRuntime>(acme: &Acme, n: u64) {
    if acme_issued::<R>(acme, n, LIMIT).await.is_none() {
        panic!("certificate #{n}: not within {LIMIT:?}");
    }
}

async fn tls_alpn_issues_renews_and_persists<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme", "tls-alpn");
    let _ = std::fs::remove_dir_all(dir.join("acme"));
    // The server's port first: pebble validates TLS-ALPN-01 there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = PebbleOptions {
        tls_port: addr.port(),
        http_port: free_port(),
        validity: Duration::from_secs(12),
        eab: None,
    };
    let Some(pebble) = Pebble::start(&dir, &opts) else {
        return;
    };
    let mut acfg = acme_config(&dir, &pebble.directory, &pebble.directory_ca);
    acfg.http_addr = None;
    let acme = Acme::new(acfg.clone()).unwrap();
    assert!(acme.certificate().is_none());
    let (stop, _) = serve_acme::<R>(listener, "acme-pw", &acme);
    issued::<R>(&acme, 1).await;
    let first = acme.certificate().expect("a certificate");
    let root = pebble.root_pem();
    assert_eq!(served_leaf(addr, DOMAIN, &root), first.leaf_sha256);

    // Traffic, with a client that trusts pebble's root and nothing else.
    let target = tcp_echo();
    let c = client::<R>(addr, &root);
    let mut old = within::<R, _>(LIMIT, "stream", c.connect(target))
        .await
        .unwrap();
    within::<R, _>(LIMIT, "echo", echo(&mut old, 1, 100_000))
        .await
        .unwrap();

    // Renewal: due at two thirds of the 12 s lifetime, without a restart.
    issued::<R>(&acme, 2).await;
    let second = acme.certificate().unwrap();
    assert_ne!(second.serial, first.serial);
    assert_eq!(served_leaf(addr, DOMAIN, &root), second.leaf_sha256);
    // The session opened under the first certificate carries on...
    within::<R, _>(LIMIT, "echo after renewal", echo(&mut old, 2, 100_000))
        .await
        .unwrap();
    // ...and a new client gets through with the new one.
    let fresh = client::<R>(addr, &root);
    let mut s = within::<R, _>(LIMIT, "new stream", fresh.connect(target))
        .await
        .unwrap();
    within::<R, _>(LIMIT, "new echo", echo(&mut s, 3, 10_000))
        .await
        .unwrap();
    stop.shutdown();

    // Persistence: the account and the newest certificate are on disk, and a
    // new manager serves the certificate at once.
    let ca_dir = std::fs::read_dir(dir.join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(ca_dir.join("account.json").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca_dir.join(DOMAIN).join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let again = Acme::new(acfg).unwrap();
    let stored = again.certificate().expect("the stored certificate");
    assert!(stored.serial == second.serial || acme.status().issued > 2);
}

async fn http01_with_eab_refuses_until_issued<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme", "http01");
    let _ = std::fs::remove_dir_all(dir.join("acme"));
    let http_port = free_port();
    let eab = (
        "kid-1".to_owned(),
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W".to_owned(),
    );
    // The CA's address is chosen now; it starts later.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = PebbleOptions {
        tls_port: free_port(),
        http_port,
        validity: Duration::from_secs(3600),
        eab: Some(eab.clone()),
    };
    let ca_port = free_port();
    let ca_file = dir.join("not-yet.pem");
    let mut acfg = acme_config(&dir, &format!("https://127.0.0.1:{ca_port}/dir"), &ca_file);
    acfg.tls_alpn_challenge = false;
    acfg.http_addr = Some(SocketAddr::from(([127, 0, 0, 1], http_port)));
    acfg.external_account = Some(anytls_io::acme::ExternalAccount {
        key_id: eab.0.clone(),
        mac_key: eab.1.clone(),
    });
    // No CA yet: a manager for a directory nobody serves.
    let waiting = Acme::new(acfg.clone()).unwrap();
    let (stop, reload) = serve_acme::<R>(listener, "acme-pw", &waiting);
    // Before any certificate: the handshake is refused with an alert.
    let target = tcp_echo();
    let mut cfg = ClientConfig::new(addr.to_string(), "acme-pw");
    cfg.sni = Some(DOMAIN.into());
    cfg.verification = Verification::Insecure;
    let early = Client::<R>::new(cfg).unwrap();
    let refused = within::<R, _>(LIMIT, "refused connect", early.connect(target)).await;
    assert!(
        refused.is_err(),
        "no certificate yet, yet the handshake passed"
    );
    within::<R, _>(LIMIT, "a failed attempt", async {
        while waiting.status().last_error.is_none() {
            sleep::<R>(Duration::from_millis(50)).await;
        }
    })
    .await;

    // The CA comes up (on the address the manager was given); the reload
    // hands the server a manager for it, which obtains the certificate
    // through HTTP-01 with the external account.
    let Some(pebble) = Pebble::start(&dir, &opts) else {
        stop.shutdown();
        return;
    };
    acfg.directory_url = pebble.directory.clone();
    acfg.directory_ca = Some(pebble.directory_ca.clone());
    let acme = Acme::new(acfg).unwrap();
    reload
        .reload(ServerConfig::with_tls(
            "acme-pw",
            ServerTls::Acme(acme.clone()),
        ))
        .unwrap();
    issued::<R>(&acme, 1).await;
    let root = pebble.root_pem();
    assert_eq!(
        served_leaf(addr, DOMAIN, &root),
        acme.certificate().unwrap().leaf_sha256
    );
    let c = client::<R>(addr, &root);
    let mut s = within::<R, _>(LIMIT, "stream", c.connect(target))
        .await
        .unwrap();
    within::<R, _>(LIMIT, "echo", echo(&mut s, 1, 50_000))
        .await
        .unwrap();
    // The replaced manager was stopped by the reload.
    within::<R, _>(LIMIT, "old manager stopped", async {
        let before = waiting.status().next_attempt;
        sleep::<R>(Duration::from_secs(3)).await;
        assert_eq!(
            waiting.status().next_attempt,
            before,
            "the old manager still runs"
        );
    })
    .await;
    let _ = pebble;
    stop.shutdown();
}
