//! `anytls server --metrics ADDR`, run as a process: `GET /metrics` answers
//! the per-user series with exact stream payload counts; other paths are 404,
//! other methods 405; an oversized request head is refused (431) and a slow
//! one timed out (408) while other requests are answered. Every wait is
//! bounded; 127.0.0.1 only.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anytls_tokio::tls::parse_pin;
use anytls_tokio::{Client, ClientConfig, Verification};
use common::Proc;

const STEP: Duration = Duration::from_secs(20);

/// Sends `request` and reads the whole response (the server closes).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("response within the limit");
    String::from_utf8(out).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Moves `size` bytes each way through the server for the user with
/// `password`, via an echo target; whether the server let the stream through.
fn echo_through(server: &str, pin: [u8; 32], password: &str, size: usize) -> bool {
    common::block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = common::echo_target().await;
        let mut cfg = ClientConfig::new(server, password);
        cfg.sni = Some("localhost".into());
        cfg.verification = Verification::Pin(pin);
        let client = Client::new(cfg).unwrap();
        let step = async {
            let mut s = client.connect(target).await?;
            s.established().await?;
            let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            s.write_all(&data).await?;
            let mut back = vec![0u8; size];
            s.read_exact(&mut back).await?;
            assert_eq!(back, data);
            std::io::Result::Ok(())
        };
        let ok = tokio::time::timeout(STEP, step)
            .await
            .expect("echo through the server timed out")
            .is_ok();
        client.close();
        ok
    })
}

#[test]
fn metrics_endpoint_serves_counters_within_limits() {
    let mut p = Proc::spawn(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--password",
        "metrics-test-pw",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let pin = parse_pin(&p.wait_stdout("certificate SHA-256 pin:", STEP)).unwrap();
    let uri = p.wait_stdout("share URI:", STEP);
    let server = anytls_tokio::config::AnytlsUri::parse(&uri)
        .unwrap()
        .server();
    let url = p.wait_stdout("metrics:", STEP);
    let metrics: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap()
        .parse()
        .unwrap();

    assert!(echo_through(&server, pin, "metrics-test-pw", 1000));
    assert!(!echo_through(&server, pin, "not-the-password", 10));

    let r = get(metrics, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
    for line in [
        "# TYPE anytls_user_bytes_received_total counter",
        "anytls_user_bytes_received_total{user=\"default\"} 1000",
        "anytls_user_bytes_sent_total{user=\"default\"} 1000",
        "anytls_user_streams_total{user=\"default\"} 1",
        "anytls_user_sessions_total{user=\"default\"} 1",
        "anytls_auth_failures_total 1",
    ] {
        assert!(r.lines().any(|l| l == line), "no {line:?} in:\n{r}");
    }
    assert!(r.contains("anytls_user_sessions_open{user=\"default\"} "));
    assert!(r.contains("anytls_user_streams_open{user=\"default\"} "));

    let r = get(metrics, "/");
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = get(metrics, "/metrics/x");
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = http(
        metrics,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    assert!(r.contains("Allow: GET\r\n"), "{r}");

    // A head larger than 8 KiB, never finished.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() < 9 * 1024 {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let r = http(metrics, &big);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

    // A request that stalls halfway is timed out; meanwhile others are
    // answered.
    let mut slow = TcpStream::connect_timeout(&metrics, STEP).unwrap();
    slow.set_read_timeout(Some(STEP)).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
    let r = get(metrics, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let r = read_response(&mut slow);
    assert!(r.starts_with("HTTP/1.1 408 "), "{r}");

    // The failure is logged, without the password tried.
    let (_, err) = p.drain();
    let log = format!("{}\n{err}", p.seen.join("\n"));
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
}
