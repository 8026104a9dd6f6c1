//! Runs `examples/blocking_client.rs` (a hand-written loop over std sockets
//! and rustls driving `anytls_core::ClientEndpoint`) end to end on 127.0.0.1,
//! so CI exercises it: pre-warmed sessions, requests one after another and at
//! once, heartbeats, and a clean close.

#[allow(dead_code)] // `main` is not used here
#[path = "../examples/blocking_client.rs"]
mod example;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::Duration;

#[test]
#[allow(clippy::disallowed_methods)] // the watchdog thread; the core itself spawns nothing
fn local_demo_reuses_prewarmed_sessions_and_gets_heartbeats() {
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

    // Pre-warm: two idle sessions before any stream, from two pre-warm dials.
    assert_eq!(report.prewarmed.len(), 2, "{report:#?}");
    assert_eq!(report.dials_before_streams, 2, "{report:#?}");
    assert_eq!(report.stats_at_end.pool.prewarm_dials, 2, "{report:#?}");

    // Every response is the target's answer to its own request.
    let paths: Vec<&str> = report.exchanges.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/one-by-one/1",
            "/one-by-one/2",
            "/one-by-one/3",
            "/at-once/1",
            "/at-once/2",
            "/at-once/3"
        ]
    );
    for r in &report.exchanges {
        let text = String::from_utf8_lossy(&r.response);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains(&format!("GET {} HTTP/1.0", r.path)), "{text}");
        assert!(r.session.is_some(), "{r:?}");
    }

    // The requests one after another ran on a pre-warmed session, with no
    // new dial (the first one above all).
    for r in &report.exchanges[..3] {
        assert!(report.prewarmed.contains(&r.session.unwrap()), "{r:?}");
        assert_eq!(r.dials_at_open, report.dials_before_streams, "{r:?}");
    }
    // Three at once: both pre-warmed sessions, then one dial when needed.
    let at_once = &report.exchanges[3..];
    let sessions: BTreeSet<_> = at_once.iter().map(|r| r.session.unwrap()).collect();
    assert_eq!(sessions.len(), 3, "{at_once:?}");
    assert_eq!(at_once[0].dials_at_open, 2);
    assert_eq!(at_once[1].dials_at_open, 2);
    assert_eq!(at_once[2].dials_at_open, 3);
    assert!(!report.prewarmed.contains(&at_once[2].session.unwrap()));
    assert_eq!(report.stats_at_end.pool.dials, 3);

    // Heartbeats went out and were answered.
    assert!(report.heartbeat_acks.len() >= 2, "{report:#?}");
    assert!(report.stats_at_end.pool.heartbeat_acks >= 2);

    // Idle sessions at the end; nothing refused or reset; all closed after.
    assert!(!report.idle_at_end.is_empty(), "{report:#?}");
    assert_eq!(report.stats_at_end.streams_refused, 0);
    assert_eq!(report.stats_at_end.streams_reset, 0);
    assert_eq!(report.stats_at_end.pool.dial_failures, 0);
    assert_eq!(report.stats_at_end.pool.died, 0);
    assert_eq!(report.sessions_after_close, 0);
}
