//! Child processes (`soak --role server|client`), from the parent's side, and
//! the control loop the children run. A child reads one command per line on
//! stdin and answers with one line on stdout; it exits when stdin closes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::timeout;

use anytls_benches::procs::{self, status_kib};

use crate::Res;

/// Bound of one control request.
const STEP: Duration = Duration::from_secs(30);

pub struct Proc {
    pub name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// Resident and peak resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub rss: u64,
    pub peak: u64,
}

pub fn rss_of(pid: u32) -> Option<Rss> {
    Some(Rss {
        rss: status_kib(pid, "VmRSS:")?,
        peak: status_kib(pid, "VmHWM:")?,
    })
}

impl Proc {
    /// Starts this binary with `args` and returns it with its first line.
    pub async fn spawn(name: &'static str, args: Vec<OsString>) -> Res<(Proc, String)> {
        let mut child = procs::spawn_self(args)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut p = Proc {
            name,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let first = p.line().await?;
        Ok((p, first))
    }

    pub fn rss(&self) -> Rss {
        self.child.id().and_then(rss_of).unwrap_or_default()
    }

    async fn line(&mut self) -> Res<String> {
        procs::answer_line(self.name, &mut self.lines, STEP).await
    }

    pub async fn request(&mut self, cmd: &str) -> Res<String> {
        let stdin = self.stdin.as_mut().ok_or("control channel closed")?;
        timeout(STEP, async {
            stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
            stdin.flush().await
        })
        .await
        .map_err(|_| format!("{}: stdin blocked", self.name))??;
        self.line().await
    }

    /// `stats`, as key=value pairs.
    pub async fn stats(&mut self) -> Res<HashMap<String, u64>> {
        let line = self.request("stats").await?;
        procs::parse_stats(self.name, &line)
    }

    /// Closes stdin and waits (bounded) for the exit; kills it otherwise.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        if timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("soak: {} did not exit; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// A child's control loop: answers each stdin line with `answer`'s result
/// until stdin closes.
pub async fn control_loop(mut answer: impl FnMut(&str) -> Res<String>) -> Res<()> {
    procs::control_loop(async |cmd| answer(cmd)).await
}

/// A stats map entry (0 when absent).
pub fn get(m: &HashMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}
