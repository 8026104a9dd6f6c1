//! `anytls server` with ACME against pebble (Debian's test CA, installed by
//! `.ci/run`): from a sing-box config (`tls.acme`, TLS-ALPN-01 on the
//! AnyTLS port), a certificate is obtained and a client trusting only
//! pebble's root gets through; SIGHUP with the same settings keeps the
//! manager; a restart serves the stored certificate without a new order;
//! the `--acme*` flags do the same without a file. Every wait is bounded.

#![cfg(unix)]

mod common;
#[path = "../../anytls-tests/src/pebble.rs"]
#[allow(dead_code)]
mod pebble;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anytls_tokio::{ClientConfig, Verification};
use common::{Proc, echo_once, echo_target};
use pebble::{Pebble, PebbleOptions, free_port};

const STEP: Duration = Duration::from_secs(60);
const DOMAIN: &str = "anytls.test";

fn config(port: u16, data: &Path, pebble: &Pebble) -> String {
    serde_json::json!({
        "inbounds": [{
            "type": "anytls",
            "listen": "127.0.0.1",
            "listen_port": port,
            "users": [{"name": "ops", "password": "acme-pw"}],
            "tls": {
                "enabled": true,
                "acme": {
                    "domain": [DOMAIN],
                    "email": "ops@anytls.test",
                    "data_directory": data,
                    "provider": pebble.directory,
                    "directory_ca": pebble.directory_ca,
                    "disable_http_challenge": true
                }
            }
        }]
    })
    .to_string()
}

/// One echo through a new client trusting `root` only.
async fn echo(server: SocketAddr, root: &Path, target: SocketAddr) -> std::io::Result<()> {
    let mut cfg = ClientConfig::new(server.to_string(), "acme-pw");
    cfg.sni = Some(DOMAIN.into());
    cfg.verification = Verification::CaFile(root.to_owned());
    echo_once(cfg, target, 30_000, STEP).await
}
#[test]
fn acme_from_a_config_file_and_from_flags() {
    let dir = std::env::temp_dir().join(format!("anytls-cli-acme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let opts = PebbleOptions {
        tls_port: port,
        http_port: free_port(),
        validity: Duration::from_secs(3600),
        eab: None,
    };
    let Some(pebble) = Pebble::start(&dir, &opts) else {
        return;
    };
    let file = dir.join("server.json");
    std::fs::write(&file, config(port, &dir.join("acme"), &pebble)).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = rt.block_on(echo_target());

    let mut server = Proc::spawn(&["server", "-c", file.to_str().unwrap()]);
    server.wait_line("TLS handshakes are refused until", 0, STEP);
    server.wait_line("ACME: certificate obtained", 0, STEP);
    let root = dir.join("root.pem");
    std::fs::write(&root, pebble.root_pem()).unwrap();
    rt.block_on(echo(addr, &root, target)).unwrap();

    // The same file again: the manager stays.
    let mark = server.seen.len();
    server.signal("HUP");
    server.wait_line("reloaded", mark, STEP);
    let since = server.seen[mark..].join("\n");
    assert!(!since.contains("new manager"), "{since}");
    rt.block_on(echo(addr, &root, target)).unwrap();
    server.stop_cleanly(STEP);

    // A restart serves the stored certificate; no new order.
    let mut server = Proc::spawn(&["server", "-c", file.to_str().unwrap()]);
    server.wait_line("serving the stored certificate", 0, STEP);
    server.wait_line("SIGHUP reloads", 0, STEP);
    rt.block_on(echo(addr, &root, target)).unwrap();
    let log = server.seen.join("\n");
    assert!(!log.contains("certificate obtained"), "{log}");
    assert!(!log.contains("refused until"), "{log}");
    server.stop_cleanly(STEP);

    // The flags, with a fresh data directory: a new account and order.
    let listen = addr.to_string();
    let ca = pebble.directory_ca.to_str().unwrap().to_owned();
    let data = dir.join("acme-flags");
    let mut server = Proc::spawn(&[
        "server",
        "-l",
        &listen,
        "-p",
        "acme-pw",
        "--acme",
        DOMAIN,
        "--acme-ca",
        &pebble.directory,
        "--acme-directory-ca",
        &ca,
        "--acme-dir",
        data.to_str().unwrap(),
        "--acme-http-port",
        "0",
        "--acme-email",
        "ops@anytls.test",
    ]);
    server.wait_line("ACME: certificate obtained", 0, STEP);
    let uri = server.wait_line("share URI", 0, STEP);
    assert!(
        uri.contains(&format!("sni={DOMAIN}")) || uri.contains(&format!("@{DOMAIN}:")),
        "{uri}"
    );
    assert!(!uri.contains("insecure=1"), "{uri}");
    rt.block_on(echo(addr, &root, target)).unwrap();
    assert!(data.read_dir().unwrap().next().is_some(), "nothing stored");
    server.stop_cleanly(STEP);
    let _ = std::fs::remove_dir_all(&dir);
}
