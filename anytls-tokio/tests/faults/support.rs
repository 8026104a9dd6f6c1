//! Helpers of `faults.rs`: `anytls` child processes, an in-process server,
//! tokio TCP targets on 127.0.0.1, a byte pattern and bounded waits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anytls_tokio::{
    AnyTlsStream, Client, ClientConfig, Identity, Server, ServerConfig, ShutdownHandle, SocksAddr,
    Verification,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const PASSWORD: &str = "fault-test-password";
/// Bound of one step (a dial, an echo, a process printing its first lines).
pub const STEP: Duration = Duration::from_secs(10);

// ----- child processes -----

pub use crate::common::Proc;

impl Proc {
    /// SIGKILL (`Child::kill`), then reaps the process: once this returns its
    /// sockets are closed by the kernel.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let st = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        assert!(!st.success(), "killed process reported success: {st}");
    }
}

// ----- identities, configs, servers -----

pub fn identity() -> (Identity, [u8; 32]) {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    (id, pin)
}

/// Writes the certificate and key as PEM files for `anytls server --cert --key`.
pub fn write_identity(name: &str, id: &Identity) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("anytls-faults-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = id.to_pem();
    let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cp, cert).unwrap();
    std::fs::write(&kp, key).unwrap();
    (cp, kp)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A port with nothing listening.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn client_config(server: &str, pin: [u8; 32]) -> ClientConfig {
    let mut cfg = ClientConfig::new(server, PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg
}

/// An in-process server on 127.0.0.1 with the built-in relay.
pub async fn start_server(id: Identity) -> (SocketAddr, ShutdownHandle) {
    let server = Server::bind("127.0.0.1:0", ServerConfig::new(PASSWORD, id))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    tokio::spawn(server.serve());
    (addr, handle)
}

/// Opens a stream, bounded.
pub async fn open(client: &Client, dest: SocketAddr) -> AnyTlsStream {
    tokio::time::timeout(STEP, client.connect(SocksAddr::from(dest)))
        .await
        .expect("connect hung")
        .expect("connect")
}

// ----- bounded waits -----

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
/// Returns how long it took.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..(limit.as_millis() / 20 + 1) {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cond(), "timed out after {limit:?} waiting for {what}");
    start.elapsed()
}

// ----- byte pattern -----

/// Byte `i` of the pattern of `seed`.
pub fn pattern_byte(seed: u8, i: u64) -> u8 {
    ((i % 251) as u8) ^ ((i >> 16) as u8) ^ seed
}

pub fn fill_pattern(seed: u8, offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + k as u64);
    }
}

/// Panics unless `buf` is the pattern at `offset`.
pub fn check_pattern(seed: u8, offset: u64, buf: &[u8]) {
    if let Some(k) = (0..buf.len()).find(|&k| buf[k] != pattern_byte(seed, offset + k as u64)) {
        panic!("pattern mismatch at byte {}", offset + k as u64);
    }
}

/// Reads and checks exactly `len` pattern bytes from `offset`.
pub async fn read_pattern(
    s: &mut (impl AsyncRead + Unpin),
    seed: u8,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < len {
        let want = (len - got).min(buf.len() as u64) as usize;
        let n = s.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        check_pattern(seed, offset + got, &buf[..n]);
        got += n as u64;
    }
    Ok(())
}

/// One echo round trip of `len` pattern bytes; returns its duration.
pub async fn echo_round(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    seed: u8,
    len: usize,
    limit: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    let mut data = vec![0u8; len];
    fill_pattern(seed, 0, &mut data);
    tokio::time::timeout(limit, async {
        s.write_all(&data).await?;
        s.flush().await?;
        let mut back = vec![0u8; len];
        s.read_exact(&mut back).await?;
        assert!(back == data, "{what}: echo differs");
        std::io::Result::Ok(())
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {len} bytes took more than {limit:?}"))
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    start.elapsed()
}

// ----- TCP targets (tokio tasks; they live as long as the runtime) -----

pub struct Target {
    pub addr: SocketAddr,
    /// Connections accepted, ever.
    pub accepted: Arc<AtomicUsize>,
    /// Connections whose handler has not finished yet.
    pub open: Arc<AtomicUsize>,
}

async fn spawn_target<F, Fut>(per_conn: F) -> Target
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (a, o) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        // Bounded: no test opens this many connections to one target.
        for _ in 0..1000 {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let (fut, o) = (per_conn(s), o.clone());
            tokio::spawn(async move {
                fut.await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Target {
        addr,
        accepted,
        open,
    }
}

/// Echoes every byte back until EOF or an error.
pub async fn echo_target() -> Target {
    spawn_target(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

pub const SOURCE_SEED: u8 = 0x5a;

/// Reads an 8-byte big-endian length, then sends that many pattern bytes
/// (seed [`SOURCE_SEED`]) and closes; stops early when the peer goes away.
pub async fn source_target() -> Target {
    spawn_target(|mut s| async move {
        let mut len = [0u8; 8];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u64::from_be_bytes(len);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < len {
            let n = (len - sent).min(buf.len() as u64) as usize;
            fill_pattern(SOURCE_SEED, sent, &mut buf[..n]);
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
            sent += n as u64;
        }
        let _ = s.shutdown().await;
    })
    .await
}

/// Accepts and never reads; holds each connection for `hold`.
pub async fn blackhole_target(hold: Duration) -> Target {
    spawn_target(move |s| async move {
        tokio::time::sleep(hold).await;
        drop(s);
    })
    .await
}

pub const RESET_SEED: u8 = 0xc3;

/// Sends `len` pattern bytes (seed [`RESET_SEED`]), waits for one byte from
/// the peer, then resets the connection (SO_LINGER 0, so close sends RST).
pub async fn reset_target(len: usize) -> Target {
    spawn_target(move |mut s| async move {
        let mut buf = vec![0u8; len];
        fill_pattern(RESET_SEED, 0, &mut buf);
        if s.write_all(&buf).await.is_err() {
            return;
        }
        let mut go = [0u8; 1];
        let _ = tokio::time::timeout(STEP, s.read_exact(&mut go)).await;
        s.set_zero_linger().expect("SO_LINGER 0");
        drop(s);
    })
    .await
}
