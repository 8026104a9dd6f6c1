//! Runs the end-to-end bench (`src/bin/e2e.rs`) with `--quick --svg FILE` and
//! checks that it finishes, prints every row and writes the chart. Figures are
//! never checked here: speed targets are reported by the bench, not asserted
//! by timed tests.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: a debug build, on a machine that may be busy.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn quick_run_prints_every_row() {
    let svg = std::env::temp_dir().join(format!("anytls-e2e-quick-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&svg);
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e"))
        .arg("--quick")
        .arg("--svg")
        .arg(&svg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start e2e");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for e2e") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    let Some(status) = status else {
        panic!("e2e --quick did not finish within {LIMIT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    assert!(
        status.success(),
        "e2e --quick failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows = [
        "raw TLS 1.3, one connection",
        "ours: SOCKS5>client>TLS>server>target",
        "reference: TCP>TLS tunnel>TCP, no AnyTLS",
        "ours vs the reference tunnel",
        "cold    ours > ours",
        "warm    ours > ours",
        "reused  ours > ours",
        "parallel downloads: ",
        "peak RSS: ",
        "ours > ours ",
        "client (ours)",
        "server (ours)",
        "chart: ",
        "done in",
    ];
    for row in rows {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(row)),
            "no row {row:?} in the output:\n{stdout}"
        );
    }
    // Every measured row carries a figure, and our paths all worked.
    assert!(!stdout.contains("failed"), "a path failed:\n{stdout}");
    assert!(!stdout.contains("problems"), "problems reported:\n{stdout}");

    // The chart: an SVG document naming every path and case.
    let text = std::fs::read_to_string(&svg)
        .unwrap_or_else(|e| panic!("no chart at {}: {e}\nstdout:\n{stdout}", svg.display()));
    let _ = std::fs::remove_file(&svg);
    assert!(text.starts_with("<svg"), "not an SVG document:\n{text}");
    assert!(
        text.trim_end().ends_with("</svg>"),
        "SVG cut short:\n{text}"
    );
    for name in [
        "raw TLS",
        "ours &gt; ours",
        "reference TLS tunnel",
        "download",
        "upload",
        "cold",
        "warm",
        "reused",
        "Parallel downloads",
        "peak RSS",
        "MiB/s",
    ] {
        assert!(text.contains(name), "no {name:?} in the chart:\n{text}");
    }
}
