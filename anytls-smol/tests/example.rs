//! Runs `examples/smol_client.rs`'s local demo, so CI exercises the example:
//! target, server and client on smol, on 127.0.0.1.

#[path = "../examples/smol_client.rs"]
mod example;

use std::time::Duration;

#[test]
fn smol_example_fetches_through_a_prewarmed_reused_session() {
    let report = smol::block_on(async {
        anytls_io::timeout::<anytls_smol::Smol, _>(
            Duration::from_secs(60),
            example::run_local_demo(),
        )
        .await
        .expect("the demo did not finish within 60 s")
        .expect("the demo failed")
    });
    assert_eq!(report.responses.len(), 3);
    for r in &report.responses {
        let text = String::from_utf8_lossy(r);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.ends_with("hello from the local target\n"), "{text}");
    }
    // One pre-warmed session served all three requests.
    assert_eq!(report.stats.dials, 1, "{:?}", report.stats);
    assert_eq!(report.stats.prewarm_dials, 1, "{:?}", report.stats);
    assert!(report.stats.reused >= 3, "{:?}", report.stats);
}
