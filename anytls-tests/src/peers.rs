//! Interop peers (see `shared/interop/PEERS.md`): finding the binaries that
//! `.ci/run` installs into `$ANYTLS_PEERS_DIR` (default `~/.cache/anytls-ci`),
//! running them, waiting for them and giving them files.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anytls_io::Identity;

use crate::TestRuntime;
use crate::targets::sleep;

/// Where the peer binaries are installed.
pub fn peers_dir() -> PathBuf {
    std::env::var_os("ANYTLS_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/anytls-ci")
        })
}

/// The peer binary, or `None` (test skipped) when it is not installed.
/// With `ANYTLS_REQUIRE_PEERS=1` a missing peer is a failure.
pub fn peer(rel: &str) -> Option<PathBuf> {
    let path = peers_dir().join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("ANYTLS_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("interop peer {} is missing", path.display());
    }
    eprintln!("SKIPPED: interop peer {} is not installed", path.display());
    None
}

/// Kills the child process when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a peer: stdin and stdout closed, stderr inherited.
pub fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn peer"),
    )
}

/// A port on 127.0.0.1 that was free a moment ago.
pub use crate::pebble::free_port;

/// Waits (bounded) until something listens on `port`; `who` names the peer
/// in the panics.
pub async fn wait_listening<R: TestRuntime>(port: u16, child: &mut Proc, who: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{who} exited early: {status}");
        }
        sleep::<R>(Duration::from_millis(50)).await;
    }
    panic!("{who} never listened on {port}");
}

/// A fresh folder `<prefix>-<name>-<runtime>-<pid>` per test and runtime
/// (both runtimes run in one process).
pub fn temp_dir<R: TestRuntime>(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "{prefix}-{name}-{}-{}",
        R::NAME,
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed identity for `localhost`, written to `dir` as `cert.pem`
/// and `key.pem`.
pub fn write_identity(dir: &Path) -> (PathBuf, PathBuf, Identity) {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let (cert, key) = id.to_pem();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k, id)
}
