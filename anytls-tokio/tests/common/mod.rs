//! Shared by `cli.rs` and `faults.rs`: an `anytls` child process whose
//! stdout and stderr lines are read by threads; every wait is bounded.

// Each test crate uses its own part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_anytls");

/// An `anytls` child process (stdout and stderr read by threads), killed when
/// dropped.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<(bool, String)>,
    /// Every line read so far, stdout and stderr.
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run anytls");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (is_out, r) in [
            (true, Box::new(out) as Box<dyn Read + Send>),
            (false, Box::new(err)),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { return };
                    if tx.send((is_out, line)).is_err() {
                        return;
                    }
                }
            });
        }
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stdout line starting with `prefix` (the rest of it), within
    /// `limit`. Inside a tokio runtime it blocks this worker thread
    /// (multi-thread runtime only).
    pub fn wait_stdout(&mut self, prefix: &str, limit: Duration) -> String {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.wait_stdout_blocking(prefix, limit))
        } else {
            self.wait_stdout_blocking(prefix, limit)
        }
    }

    fn wait_stdout_blocking(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((is_out, line)) => {
                    self.seen.push(line.clone());
                    if is_out {
                        if let Some(rest) = line.strip_prefix(prefix) {
                            return rest.trim().to_owned();
                        }
                    }
                }
                Err(_) => panic!(
                    "no line {prefix:?} within {limit:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The first line, stdout or stderr, containing `needle` (the whole
    /// line) among those seen since `seen[from]` and those to come, within
    /// `limit` (other waits may have read the line already: pass
    /// `seen.len()` taken before the action it follows). Not inside a
    /// runtime.
    pub fn wait_line(&mut self, needle: &str, from: usize, limit: Duration) -> String {
        if let Some(line) = self.seen.iter().skip(from).find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {limit:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends signal `name` (e.g. `HUP`) to the process.
    #[cfg(unix)]
    pub fn signal(&self, name: &str) {
        let st = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?}; output:\n{}",
                self.seen.join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed so far (after exit: everything), stdout and stderr.
    pub fn drain(&mut self) -> (String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        while let Ok((is_out, line)) = self.lines.recv_timeout(Duration::from_millis(200)) {
            let s = if is_out { &mut out } else { &mut err };
            s.push_str(&line);
            s.push('\n');
        }
        (out, err)
    }

    /// Interrupts the process; it must exit cleanly within `limit`.
    #[cfg(unix)]
    #[allow(dead_code)]
    pub fn stop_cleanly(mut self, limit: Duration) {
        self.interrupt();
        let st = self.wait_exit(limit);
        assert!(st.success(), "exit {st}; output:\n{}", self.seen.join("\n"));
    }

    #[cfg(unix)]
    pub fn interrupt(&self) {
        let st = Command::new("sh")
            .args(["-c", &format!("kill -INT {}", self.child.id())])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// Runs `fut` on a new current-thread tokio runtime.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

/// A tokio echo server on 127.0.0.1 (on the current runtime), each
/// connection echoed until EOF.
pub async fn echo_target() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    target
}

/// One echo of `size` bytes through a new client made from `cfg` (so a new
/// session), within `limit`; an error if anything fails.
pub async fn echo_once(
    cfg: anytls_tokio::ClientConfig,
    target: std::net::SocketAddr,
    size: usize,
    limit: Duration,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = anytls_tokio::Client::new(cfg).map_err(std::io::Error::other)?;
    let r = tokio::time::timeout(limit, async {
        let mut s = client.connect(target).await?;
        s.established().await?;
        let data: Vec<u8> = (0..size as u32).map(|i| (i * 7) as u8).collect();
        s.write_all(&data).await?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await?;
        if back != data {
            return Err(std::io::Error::other("echo corrupted"));
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("timed out")));
    client.close();
    r
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
