//! Runs the end-to-end bench (`src/bin/e2e.rs`) with `--quick --svg FILE` and
//! checks that it finishes, prints every row and writes the chart. Figures are
//! never checked here: speed targets are reported by the bench, not asserted
//! by timed tests.
//!
//! The `--compare-*` peer is the bench binary itself (its `--role server` and
//! `--role client` run stand-alone with `--listen`), so every pairing, the
//! command templates and their placeholders are covered without another
//! implementation installed.

mod common;

use std::process::Command;
use std::time::Duration;

/// Generous: a debug build, on a machine that may be busy.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn quick_run_prints_every_row() {
    let svg = std::env::temp_dir().join(format!("anytls-e2e-quick-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&svg);
    let exe = env!("CARGO_BIN_EXE_e2e");
    let quoted = format!("'{}'", exe.replace('\'', r"'\''"));
    let mut cmd = Command::new(exe);
    cmd.arg("--quick").arg("--svg").arg(&svg);
    cmd.args(["--compare-name", "self", "--compare-server"]).arg(format!(
        "{quoted} --role server --listen 127.0.0.1:{{server_port}} --cert {{cert}} --key {{key}} \
         --password {{password}} --child-threads {{threads}}"
    ));
    cmd.arg("--compare-client").arg(format!(
        "{quoted} --role client --listen 127.0.0.1:{{socks_port}} --server 127.0.0.1:{{server_port}} \
         --password {{password}} --child-threads {{threads}}"
    ));
    let common::Run {
        status,
        stdout,
        stderr,
    } = common::run_with_limit(cmd, "e2e --quick", LIMIT);
    assert!(
        status.success(),
        "e2e --quick failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows = [
        "raw TLS 1.3, one connection",
        "ours: SOCKS5>client>TLS>server>target",
        "reference: TCP>TLS tunnel>TCP, no AnyTLS",
        "ours vs the reference tunnel",
        "plain TCP, one connection (no TLS)",
        "ceiling of this topology: raw TLS + 2 plain hops",
        "cold    ours > ours",
        "warm    ours > ours",
        "reused  ours > ours",
        "parallel downloads: ",
        "peak RSS: ",
        "ours > ours ",
        "client (ours)",
        "server (ours)",
        // The peer in every pairing.
        "our client > self server",
        "self client > our server",
        "self client > self server",
        "cold    ours > self",
        "steady  self > ours",
        "steady  self > self",
        "server (self)",
        // The pairing tables.
        "one stream, download: ",
        "one stream, upload: ",
        "many streams: ",
        "latency under load, runtime threads per process: 1: ",
        "latency under load, runtime threads per process: one per core: ",
        "ratio: the row's figure / self > self",
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
    // The peer's commands have {threads}, so it followed both settings.
    assert!(!stdout.contains("note: "), "a note:\n{stdout}");
    // Each pairing has a row in the six pairing tables (download, upload,
    // many streams and their RSS, latency under load twice), with a CPU
    // figure per process where the table has them.
    for pair in ["ours > ours", "ours > self", "self > ours", "self > self"] {
        let rows: Vec<&str> = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{pair} ")))
            .collect();
        assert_eq!(rows.len(), 6, "rows of {pair}:\n{stdout}");
        for r in &rows {
            assert!(
                r.split_whitespace().count() >= 7,
                "a short row of {pair}: {r:?}\n{stdout}"
            );
        }
    }

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
