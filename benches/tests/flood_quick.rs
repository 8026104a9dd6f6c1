//! Runs the flood bench (`src/bin/flood.rs`) with `--quick` and checks that
//! it finishes and prints every row. Figures are never checked here: the
//! bench reports them; only its own functional checks (a writer that never
//! blocks, an echo on the second session that fails, ...) fail it.

mod common;

use std::process::Command;
use std::time::Duration;

/// Generous: a debug build, on a machine that may be busy.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn quick_run_prints_every_row() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flood"));
    cmd.arg("--quick");
    let common::Run {
        status,
        stdout,
        stderr,
    } = common::run_with_limit(cmd, "flood --quick", LIMIT);
    assert!(
        status.success(),
        "flood --quick failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows = [
        "anytls-rs flood bench",
        "caps (SessionLimits defaults",
        "| figure ",
        "| offered by the writer ",
        "| accepted before the writer blocked ",
        "| time of the last progress before that ",
        "| in kernel socket queues then ",
        "| held in our two processes then ",
        "| echo on a second session: first (dial) ",
        "| echo on a second session: median / max ",
        "| sessions dialed for the echoes ",
        "| how the stuck stream ended ",
        "| accepted in all ",
        "| server: sessions open at the end ",
        "| server peak RSS (VmHWM) ",
        "| client peak RSS (VmHWM) ",
        "| caps for the stuck stream (server) ",
        "| caps for the stuck stream (client) ",
        "done in",
    ];
    for row in rows {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(row)),
            "no row {row:?} in the output:\n{stdout}"
        );
    }
    // Both directions are in the table.
    assert!(
        stdout.contains("upload: target never reads")
            && stdout.contains("download: client never reads"),
        "{stdout}"
    );
    assert!(!stdout.contains("problems"), "problems reported:\n{stdout}");
}
