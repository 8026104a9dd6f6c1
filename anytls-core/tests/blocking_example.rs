//! Runs `examples/blocking_client.rs` (the blocking, runtime-free driver) end
//! to end on 127.0.0.1, so CI exercises it: client, AnyTLS server and target
//! all use blocking std sockets, rustls and `anytls_core::Session`.

#[allow(dead_code)] // `main` and the remote mode are not used here
#[path = "../examples/blocking_client.rs"]
mod example;

use std::sync::mpsc;
use std::time::Duration;

#[test]
#[allow(clippy::disallowed_methods)] // the watchdog thread; the core itself spawns nothing
fn local_demo_fetches_a_response_and_a_heartbeat() {
    // The example bounds every wait itself; the watchdog turns a hang into a
    // failure instead of a stuck CI job.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(example::run_local_demo());
    });
    let report = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo did not finish within 60 s")
        .expect("the demo failed");
    let text = String::from_utf8_lossy(&report.response);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains("hello from the local target"), "{text}");
    assert!(text.contains("GET / HTTP/1.0"), "{text}");
    assert_eq!(report.peer_version, 2);
    assert!(report.heartbeat_rtt.is_some());
}
