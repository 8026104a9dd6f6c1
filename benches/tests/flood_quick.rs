//! Runs the flood bench (`src/bin/flood.rs`) with `--quick` and checks that
//! it finishes and prints every row. Figures are never checked here: the
//! bench reports them; only its own functional checks (a writer that never
//! blocks, an echo on the second session that fails, ...) fail it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: a debug build, on a machine that may be busy.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn quick_run_prints_every_row() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flood"))
        .arg("--quick")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flood");
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
        if let Some(status) = child.try_wait().expect("wait for flood") {
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
        panic!(
            "flood --quick did not finish within {LIMIT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
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
