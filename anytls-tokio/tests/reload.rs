//! `anytls server -c FILE` reloads on SIGHUP: a user added to the file can
//! connect after the signal; a broken file is logged (with its line and
//! column) and the old users keep working; the new file's certificate is
//! checked as at start (a warning when it expires soon). Every wait is
//! bounded.

#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anytls_tokio::{ClientConfig, Verification};
use common::{Proc, echo_once, echo_target};

const STEP: Duration = Duration::from_secs(20);

fn config(users: &[(&str, &str)], cert: &Path, key: &Path) -> String {
    let users: Vec<String> = users
        .iter()
        .map(|(n, p)| format!(r#"{{"name":"{n}","password":"{p}"}}"#))
        .collect();
    format!(
        r#"{{
  "inbounds": [
    {{
      "type": "anytls",
      "listen": "127.0.0.1",
      "listen_port": 0,
      "users": [{}],
      "tls": {{
        "enabled": true,
        "certificate_path": "{}",
        "key_path": "{}"
      }}
    }}
  ]
}}
"#,
        users.join(","),
        cert.display(),
        key.display()
    )
}

/// One echo through a new client (so a new session, under the server's
/// configuration now); an error if anything fails.
async fn echo(
    server: SocketAddr,
    pin: [u8; 32],
    password: &str,
    target: SocketAddr,
) -> std::io::Result<()> {
    let mut cfg = ClientConfig::new(server.to_string(), password);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    echo_once(cfg, target, 20_000, STEP).await
}

/// `anytls server -c file` once it listens (and listens for SIGHUP), and
/// its address.
fn start(file: &Path) -> (Proc, SocketAddr) {
    let mut server = Proc::spawn(&["server", "-c", file.to_str().unwrap()]);
    let line = server.wait_stdout("share URI", STEP);
    let uri = &line[line.find("anytls://").expect("no URI")..];
    let port = anytls_tokio::config::AnytlsUri::parse(uri).unwrap().port;
    server.wait_line("SIGHUP reloads", 0, STEP);
    (server, ([127, 0, 0, 1], port).into())
}

#[test]
fn sighup_reloads_the_file_and_a_broken_file_keeps_the_old_one() {
    let dir = std::env::temp_dir().join(format!("anytls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = anytls_tokio::Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let (cert_pem, key_pem) = id.to_pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let file = dir.join("server.json");
    std::fs::write(&file, config(&[("alice", "alice-pw")], &cert, &key)).unwrap();

    let (mut server, addr) = start(&file);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = rt.block_on(echo_target());
    rt.block_on(echo(addr, pin, "alice-pw", target)).unwrap();
    assert!(
        rt.block_on(echo(addr, pin, "bob-pw", target)).is_err(),
        "bob is not a user yet"
    );

    // bob added: after SIGHUP he connects.
    std::fs::write(
        &file,
        config(&[("alice", "alice-pw"), ("bob", "bob-pw")], &cert, &key),
    )
    .unwrap();
    let mark = server.seen.len();
    server.signal("HUP");
    let added = server.wait_line("reload: users added", mark, STEP);
    assert!(added.contains("bob"), "{added}");
    server.wait_line("reloaded", mark, STEP);
    rt.block_on(echo(addr, pin, "bob-pw", target)).unwrap();
    rt.block_on(echo(addr, pin, "alice-pw", target)).unwrap();

    // A broken file: logged with its position; alice and bob still work.
    std::fs::write(
        &file,
        "{\n  \"inbounds\": [\n    { \"type\": \"anytls\", \"users\": oops }\n  ]\n}\n",
    )
    .unwrap();
    let mark = server.seen.len();
    server.signal("HUP");
    let failed = server.wait_line("reload failed", mark, STEP);
    assert!(failed.contains("ERROR"), "logged as an error: {failed}");
    assert!(
        failed.contains("server.json:3:"),
        "names file:line:column: {failed}"
    );
    assert!(
        failed.contains("old configuration keeps serving"),
        "{failed}"
    );
    rt.block_on(echo(addr, pin, "alice-pw", target)).unwrap();
    rt.block_on(echo(addr, pin, "bob-pw", target)).unwrap();

    server.stop_cleanly(STEP);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate for `localhost` valid from a day ago until `left` from now,
/// in PEM files `name`.pem and `name`-key.pem under `dir`; and its SHA-256.
fn certificate_expiring_in(
    dir: &Path,
    name: &str,
    left: Duration,
) -> (std::path::PathBuf, std::path::PathBuf, [u8; 32]) {
    let now = std::time::SystemTime::now();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = (now - Duration::from_secs(86_400)).into();
    params.not_after = (now + left).into();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let id = anytls_tokio::Identity::from_pem_files(&c, &k).unwrap();
    (c, k, id.leaf_sha256().unwrap())
}

#[test]
fn sighup_checks_the_new_certificate_as_the_start_does() {
    let dir = std::env::temp_dir().join(format!("anytls-reload-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    const DAY: u64 = 86_400;
    // A year left: nothing to say at start.
    let (cert, key, _) = certificate_expiring_in(&dir, "good", Duration::from_secs(365 * DAY));
    let file = dir.join("server.json");
    std::fs::write(&file, config(&[("alice", "alice-pw")], &cert, &key)).unwrap();
    let (mut server, addr) = start(&file);
    assert!(
        !server.seen.iter().any(|l| l.contains("the certificate")),
        "a good certificate is not reported:\n{}",
        server.seen.join("\n")
    );

    // Five and a half days left (the check runs well within half a day).
    let (soon, soon_key, soon_pin) =
        certificate_expiring_in(&dir, "soon", Duration::from_secs(5 * DAY + DAY / 2));
    std::fs::write(&file, config(&[("alice", "alice-pw")], &soon, &soon_key)).unwrap();
    let mark = server.seen.len();
    server.signal("HUP");
    let warned = server.wait_line("renew it", mark, STEP);
    assert!(warned.contains("WARN"), "logged as a warning: {warned}");
    assert!(
        warned.contains("the certificate expires on") && warned.contains("(5 day(s) left)"),
        "{warned}"
    );
    // A warning, not a refusal: the new certificate is served.
    server.wait_line("reload: certificate changed", mark, STEP);
    server.wait_line("reloaded", mark, STEP);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = rt.block_on(echo_target());
    rt.block_on(echo(addr, soon_pin, "alice-pw", target))
        .unwrap();

    server.stop_cleanly(STEP);
    let _ = std::fs::remove_dir_all(&dir);
}
