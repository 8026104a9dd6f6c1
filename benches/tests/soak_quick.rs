//! Runs the soak (`src/bin/soak.rs`) for 5 seconds and checks that it
//! passes and prints its summary. The figures themselves are the soak's to
//! judge (a failure makes it print FAIL and exit non-zero).

mod common;

use std::process::Command;
use std::time::Duration;

/// Generous: a debug build, on a machine that may be busy. The soak itself
/// needs 5 s of workload, a quiet period of at least 5 s and a few seconds
/// to start and stop.
const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn five_second_soak_passes() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soak"));
    cmd.args(["--seconds", "5"]);
    let common::Run {
        status,
        stdout,
        stderr,
    } = common::run_with_limit(cmd, "soak --seconds 5", LIMIT);
    assert!(
        status.success(),
        "soak --seconds 5 failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(
        stdout.lines().last().map(str::trim),
        Some("PASS"),
        "no PASS at the end:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("FAIL"),
        "FAIL in the output:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows = [
        "soak: seed ",
        "start",
        "workload done",
        "quiet",
        "summary",
        "streams started",
        "streams completed",
        "killed on purpose",
        "unexpected failures",
        "cuts",
        "sessions lost",
        "sessions ended",
        "server streams",
        "pool",
        "proxy",
        "RSS client",
        "RSS server",
        "after quiet",
        "after client close",
        "total time",
    ];
    for row in rows {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(row) || l.trim_end().ends_with(row)),
            "no row {row:?} in the output:\n{stdout}"
        );
    }
    // The verdict's figures: nothing unexpected, and the leak check's zeros.
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        row("unexpected failures").contains("failures   0 "),
        "{stdout}"
    );
    assert!(row("after quiet").contains("open streams 0"), "{stdout}");
    assert!(
        row("after client close").contains("server sessions 0, proxy connections 0"),
        "{stdout}"
    );
}
