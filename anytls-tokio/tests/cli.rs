//! The `anytls` program, run as a process: the demo, config errors, and a
//! server plus client carrying SOCKS5 traffic on 127.0.0.1. Every wait is
//! bounded; children are killed if a test fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Proc};

#[test]
fn demo_reports_latency_throughput_and_pool() {
    let mut p = Proc::spawn(&["demo"]);
    let st = p.wait_exit(Duration::from_secs(120));
    let (out, err) = p.drain();
    assert!(
        st.success(),
        "demo failed: {st}\nstdout:\n{out}\nstderr:\n{err}"
    );
    for needle in [
        "latency",
        "cold",
        "warm",
        "reused",
        "throughput",
        "MiB/s",
        "pool statistics",
        "heartbeats",
        "connection refused",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
}

#[test]
fn demo_runs_on_one_thread() {
    // `--threads 1`: a current-thread runtime carries server, client, pool
    // and relays alone.
    let mut p = Proc::spawn(&[
        "--threads",
        "1",
        "demo",
        "--download-mib",
        "8",
        "--rounds",
        "2",
    ]);
    let st = p.wait_exit(Duration::from_secs(120));
    let (out, err) = p.drain();
    assert!(
        st.success(),
        "demo failed: {st}\nstdout:\n{out}\nstderr:\n{err}"
    );
    for needle in ["warm", "MiB/s", "heartbeats"] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anytls-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_errors_name_the_field() {
    let client = temp_file(
        "client.json",
        r#"{"type":"anytls","server":"127.0.0.1","server_port":1,"password":"p","bogus_option":1}"#,
    );
    let server = temp_file(
        "server.json",
        r#"{"inbounds":[{"type":"anytls","users":[{"password":"p"}],"tls":{"enabled":true,"acme":{"domain":["example.com"],"dns01_challenge":{"provider":"cloudflare"}}}}]}"#,
    );
    for (cmd, path, needles) in [
        (
            "client",
            &client,
            [
                "client.json:1:83: ",
                "bogus_option: unknown field `bogus_option`",
            ],
        ),
        (
            "server",
            &server,
            [
                "server.json:1:",
                ": inbounds[0].tls.acme: the DNS-01 challenge is not supported",
            ],
        ),
    ] {
        let mut p = Proc::spawn(&[cmd, "-c", path.to_str().unwrap()]);
        let st = p.wait_exit(Duration::from_secs(20));
        let (_, err) = p.drain();
        assert!(!st.success(), "{cmd} accepted a bad config");
        for needle in needles {
            assert!(err.contains(needle), "{cmd}: {needle:?} not in {err}");
        }
    }
    // A bad duration flag names the value.
    let mut p = Proc::spawn(&["client", "--heartbeat", "30", "--server", "h:1"]);
    let st = p.wait_exit(Duration::from_secs(20));
    let (_, err) = p.drain();
    assert!(!st.success());
    assert!(err.contains("invalid duration \"30\""), "{err}");
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for c in ["server", "client", "demo", "RUST_LOG"] {
        assert!(text.contains(c), "{text}");
    }
}

/// `anytls server` makes a password and a self-signed certificate and prints a
/// share URI; `anytls client URI` serves SOCKS5; bytes go through; both stop
/// cleanly on Ctrl-C.
#[cfg(unix)]
#[test]
fn server_and_client_processes_carry_socks5_traffic() {
    use anytls_tokio::config::AnytlsUri;

    let mut server = Proc::spawn(&["server", "--listen", "127.0.0.1:0"]);
    let password = server.wait_stdout("generated password:", Duration::from_secs(20));
    let pin = server.wait_stdout("certificate SHA-256 pin:", Duration::from_secs(20));
    let uri = server.wait_stdout("share URI:", Duration::from_secs(20));
    let parsed = AnytlsUri::parse(&uri).unwrap();
    assert_eq!(parsed.password.as_deref(), Some(password.as_str()));
    assert_eq!(parsed.host, "127.0.0.1");
    assert!(parsed.insecure);
    assert_eq!(pin.len(), 64);

    // One client from the URI, one with --server/--password/--pin.
    let server_addr = parsed.server();
    let mut c1 = Proc::spawn(&["client", &uri, "--listen", "127.0.0.1:0"]);
    let mut c2 = Proc::spawn(&[
        "client",
        "--server",
        &server_addr,
        "--password",
        &password,
        "--pin",
        &pin,
        "--sni",
        "localhost",
        "--listen",
        "127.0.0.1:0",
        "--ensure-idle-session",
        "1",
        "--heartbeat",
        "1s",
    ]);
    let socks1 = c1.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));
    let socks2 = c2.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));

    echo_via_socks(&[(&socks1, None), (&socks2, None), (&socks1, None)]);

    for p in [&mut c1, &mut c2, &mut server] {
        p.interrupt();
        let st = p.wait_exit(Duration::from_secs(20));
        assert!(st.success(), "exit {st}; output:\n{}", p.seen.join("\n"));
    }
}

/// Echoes 1 KiB through each SOCKS5 proxy in turn (with its user, if any),
/// to a local echo server.
#[cfg(unix)]
fn echo_via_socks(proxies: &[(&str, Option<(&str, &str)>)]) {
    common::block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = common::echo_target().await;
        for (i, (socks, auth)) in proxies.iter().enumerate() {
            let step = async {
                let mut s = anytls_tokio::socks5::socks5_connect_with(*socks, target, *auth)
                    .await
                    .unwrap();
                let data: Vec<u8> = (0..1024u32).map(|k| (k as u8) ^ (i as u8)).collect();
                s.write_all(&data).await.unwrap();
                let mut back = vec![0u8; data.len()];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, data);
            };
            tokio::time::timeout(Duration::from_secs(20), step)
                .await
                .expect("echo through the CLI timed out");
        }
    });
}

/// A certificate for `localhost` in files, and its SHA-256.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    pin: String,
}

fn test_cert(tag: &str) -> TestCert {
    let id = anytls_tokio::Identity::self_signed(&["localhost".into()]).unwrap();
    let (cert, key) = id.to_pem();
    TestCert {
        cert: temp_file(&format!("{tag}-cert.pem"), &cert),
        key: temp_file(&format!("{tag}-key.pem"), &key),
        pin: anytls_tokio::tls::hex32(&id.leaf_sha256().unwrap()),
    }
}

/// `tests/configs/NAME` with its placeholders replaced, in a temporary
/// directory under the same name (the extension tells the format).
fn doc_config(name: &str, subst: &[(&str, String)]) -> PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(name);
    let mut text = std::fs::read_to_string(&src).unwrap();
    for (k, v) in subst {
        assert!(text.contains(k), "{name} has no {k}");
        text = text.replace(k, v);
    }
    for k in [
        "@SERVER_PORT@",
        "@MIXED_PORT@",
        "@CERT@",
        "@KEY@",
        "@CA@",
        "@PIN@",
    ] {
        assert!(!text.contains(k), "{name}: {k} is left");
    }
    temp_file(name, &text)
}

/// `anytls server -c NAME` with the certificate `c`, and its port (from the
/// first share URI it prints).
fn doc_server(name: &str, c: &TestCert) -> (Proc, u16) {
    let cfg = doc_config(
        name,
        &[
            ("@CERT@", c.cert.display().to_string()),
            ("@KEY@", c.key.display().to_string()),
        ],
    );
    let mut server = Proc::spawn(&["server", "-c", cfg.to_str().unwrap()]);
    let line = server.wait_stdout("share URI", Duration::from_secs(20));
    let uri = &line[line.find("anytls://").expect("no URI")..];
    let port = anytls_tokio::config::AnytlsUri::parse(uri).unwrap().port;
    (server, port)
}

/// Stops a process with Ctrl-C and returns everything it printed.
fn stop(p: &mut Proc) -> String {
    p.interrupt();
    let st = p.wait_exit(Duration::from_secs(20));
    let (out, err) = p.drain();
    let all = format!("{}\n{out}\n{err}", p.seen.join("\n"));
    assert!(st.success(), "exit {st}; output:\n{all}");
    all
}

/// sing-box's documented server and client configs (comments, TLS with
/// uTLS, dial fields, two mixed inbounds) carry traffic; the startup
/// summary reports what was not honoured.
#[cfg(unix)]
#[test]
fn singbox_doc_configs_carry_traffic() {
    let c = test_cert("singbox");
    let (mut server, port) = doc_server("singbox-server.json", &c);
    let client_cfg = doc_config(
        "singbox-client.json",
        &[
            ("@SERVER_PORT@", port.to_string()),
            ("@CA@", c.cert.display().to_string()),
        ],
    );
    let mut client = Proc::spawn(&["client", "-c", client_cfg.to_str().unwrap()]);
    let open = client.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));
    let with_users = client.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));
    echo_via_socks(&[
        (&open, None),
        (&with_users, Some(("admin", "admin"))),
        (&open, None),
    ]);
    // The listener with users lets no one in without them.
    assert_socks_refused(&with_users, None);
    let out = stop(&mut client);
    for needle in [
        "singbox-client.json: outbounds[0]: using anytls \"anytls-out\"",
        "outbounds[0].tls.utls: WARNING: the TLS ClientHello is rustls's own, not the \"chrome\" browser's",
        "outbounds[0].domain_resolver: ignored",
        "inbounds[0].udp_timeout: ignored",
        "route: ignored",
        "mixed proxy on 127.0.0.1:",
        "for 1 user(s) (mixed-auth)",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    assert!(
        !out.contains("8JCsPssfgS8tiRwiMlhARg=="),
        "password in the client's output"
    );
    let out = stop(&mut server);
    assert!(
        out.contains("singbox-server.json: inbounds[0]: using anytls \"anytls-in\""),
        "{out}"
    );
    assert!(
        out.contains("inbounds[0].udp_timeout: idle timeout"),
        "{out}"
    );
}

/// mihomo's documented anytls listener and proxy (YAML, with
/// `client-fingerprint` and a certificate pin) carry traffic through the
/// client's `mixed-port`.
#[cfg(unix)]
#[test]
fn mihomo_doc_configs_carry_traffic() {
    let c = test_cert("mihomo");
    let (mut server, port) = doc_server("mihomo-server.yaml", &c);
    let mixed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client_cfg = doc_config(
        "mihomo-client.yaml",
        &[
            ("@SERVER_PORT@", port.to_string()),
            ("@MIXED_PORT@", mixed_port.to_string()),
            ("@PIN@", c.pin.clone()),
        ],
    );
    let mut client = Proc::spawn(&[
        "client",
        "-c",
        client_cfg.to_str().unwrap(),
        "--proxy",
        "anytls",
    ]);
    let socks = client.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));
    assert_eq!(socks, format!("127.0.0.1:{mixed_port}"));
    echo_via_socks(&[(&socks, None), (&socks, None)]);
    let out = stop(&mut client);
    for needle in [
        "mihomo-client.yaml: proxies[0].client-fingerprint: WARNING",
        "proxies[0].skip-cert-verify: ignored",
        "rules/proxy-groups: ignored",
        "Pin(",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    let out = stop(&mut server);
    assert!(
        out.contains("mihomo-server.yaml: listeners[0]: using anytls \"anytls-in-1\""),
        "{out}"
    );
}

/// `--listen` twice and `--auth`: two mixed ports, both asking for the user.
#[cfg(unix)]
#[test]
fn client_listen_flags_and_auth() {
    let mut server = Proc::spawn(&["server", "--listen", "127.0.0.1:0"]);
    let uri = server.wait_stdout("share URI:", Duration::from_secs(20));
    let mut client = Proc::spawn(&[
        "client",
        &uri,
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "u1:p1",
        "--auth",
        "u2:p2",
    ]);
    let a = client.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));
    let b = client.wait_stdout("SOCKS5 proxy listening on", Duration::from_secs(20));
    assert_ne!(a, b);
    echo_via_socks(&[(&a, Some(("u1", "p1"))), (&b, Some(("u2", "p2")))]);
    assert_socks_refused(&a, None);
    assert_socks_refused(&b, Some(("u1", "wrong")));
    let out = stop(&mut client);
    assert!(out.contains("for 2 user(s)"), "{out}");
    assert!(!out.contains("p2"), "a password in the output:\n{out}");
    stop(&mut server);
}

/// A SOCKS5 handshake with `proxy` (and `auth`) fails.
#[cfg(unix)]
fn assert_socks_refused(proxy: &str, auth: Option<(&str, &str)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt.block_on(async {
        let dest: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        tokio::time::timeout(
            Duration::from_secs(20),
            anytls_tokio::socks5::socks5_connect_with(proxy, dest, auth),
        )
        .await
        .expect("SOCKS5 handshake timed out")
    });
    assert!(res.is_err(), "{proxy} let {auth:?} in");
}

// ---------------------------------------------------------------------------
/// `ANYTLS_PASSWORD` in the environment is `--password`: when it replaces
/// the users of `anytls server -c FILE`, the log says so.
#[test]
fn a_password_from_the_environment_replacing_config_users_is_logged() {
    use std::io::BufRead;
    let cfg = temp_file(
        "env-server.json",
        r#"{"type":"anytls","listen":"127.0.0.1","listen_port":0,
            "users":[{"name":"alice","password":"alice-pw"},{"name":"bob","password":"bob-pw"}]}"#,
    );
    let mut child = Command::new(BIN)
        .args(["server", "-c", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("ANYTLS_PASSWORD", "from-the-environment")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its share URI means it is serving; the warning comes before it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("share URI:") && tx.send(line).is_err() {
                return;
            }
        }
    });
    let uri = rx.recv_timeout(Duration::from_secs(10));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let uri = uri.expect("the server never printed its share URI");
    assert!(uri.contains("from-the-environment"), "{uri}");
    assert!(
        stderr.contains("ANYTLS_PASSWORD") && stderr.contains("replaces the config's 2 user(s)"),
        "{stderr}"
    );
}

/// `--auth` without a colon: the whole argument (often just a password)
/// is echoed in the error.
#[test]
fn an_auth_value_without_a_colon_is_not_echoed() {
    let out = Command::new(BIN)
        .args([
            "client",
            "--server",
            "127.0.0.1:1",
            "--password",
            "p",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "hunter2-secret",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        !err.contains("hunter2-secret"),
        "the --auth value is echoed:\n{err}"
    );
}
