//! Interop with independently written AnyTLS implementations (see
//! `shared/interop/PEERS.md`): `shoes` 0.3.2 and `anytls` 0.5.3, installed by
//! `.ci/run` into `$ANYTLS_PEERS_DIR` (default `~/.cache/anytls-ci`).
//!
//! Each test runs a peer binary on 127.0.0.1 and moves data byte-exact in both
//! directions: our client against their server, their client against our server.
//! When the binaries are missing the tests say so and pass, unless
//! `ANYTLS_REQUIRE_PEERS=1` (set by CI), where a missing peer is a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anytls_tokio::{Client, ClientConfig, Identity, Server, ServerConfig, SocksAddr, Verification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "interop-Pw_1";
const LIMIT: Duration = Duration::from_secs(30);

fn peers_dir() -> PathBuf {
    std::env::var_os("ANYTLS_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/anytls-ci")
        })
}

/// The peer binary, or `None` (test skipped) when it is not installed.
fn peer(rel: &str) -> Option<PathBuf> {
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
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn peer"),
    )
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Waits (bounded) until something listens on `port`.
async fn wait_listening(port: u16, child: &mut Proc) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("peer exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("peer never listened on {port}");
}

/// Serves every connection accepted on a fresh 127.0.0.1 port with `handler`.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handler(s));
        }
    });
    addr
}

async fn echo_target() -> SocketAddr {
    serve(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A bulk target: reads a request `b'D' | u64 n` (send n pattern bytes, then
/// close) or `b'U' | u64 n` (read n bytes, answer with their u64 checksum).
async fn bulk_target() -> SocketAddr {
    serve(|mut s| async move {
        let mut req = [0u8; 9];
        if s.read_exact(&mut req).await.is_err() {
            return;
        }
        let n = u64::from_be_bytes(req[1..].try_into().unwrap()) as usize;
        if req[0] == b'D' {
            let data = pattern(n, 7);
            let _ = s.write_all(&data).await;
            let _ = s.shutdown().await;
        } else {
            let mut sum = Checksum::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let Ok(k) = s.read(&mut buf[..left.min(64 * 1024)]).await else {
                    return;
                };
                if k == 0 {
                    return;
                }
                sum.update(&buf[..k]);
                left -= k;
            }
            let _ = s.write_all(&sum.0.to_be_bytes()).await;
        }
    })
    .await
}

/// Order-sensitive checksum (FNV-1a, 64-bit).
#[derive(Default)]
struct Checksum(u64);

impl Checksum {
    fn update(&mut self, data: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Downloads and uploads `n` bytes through `open()` streams, verifying every byte.
async fn bulk<S, F, Fut>(open: F, n: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let mut req = vec![b'D'];
    req.extend_from_slice(&(n as u64).to_be_bytes());
    let mut s = open().await;
    s.write_all(&req).await.unwrap();
    let mut got = vec![0u8; n];
    tokio::time::timeout(LIMIT, s.read_exact(&mut got))
        .await
        .expect("download timed out")
        .unwrap();
    assert!(got == pattern(n, 7), "download of {n} bytes corrupted");
    drop(s);
    let mut s = open().await;
    req[0] = b'U';
    s.write_all(&req).await.unwrap();
    let data = pattern(n, 9);
    let mut want = Checksum::default();
    want.update(&data);
    let (_, sum) = tokio::time::timeout(LIMIT, async {
        let (mut r, mut w) = tokio::io::split(s);
        tokio::join!(async { w.write_all(&data).await.unwrap() }, async {
            let mut sum = [0u8; 8];
            r.read_exact(&mut sum).await.unwrap();
            u64::from_be_bytes(sum)
        })
    })
    .await
    .expect("upload timed out");
    assert_eq!(sum, want.0, "upload of {n} bytes corrupted");
}

/// A listener that accepts and drains (anytls-server's `--forward` target).
async fn sink() -> SocketAddr {
    serve(|mut s| async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(151).wrapping_add(seed))
        .collect()
}

/// Writes `data` and reads the echo back through `s`, concurrently.
async fn echo_through<S>(s: S, data: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        w.write_all(data).await.unwrap();
        w.flush().await.unwrap();
        w
    };
    let recv = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let (_w, back) = tokio::time::timeout(LIMIT, async { tokio::join!(send, recv) })
        .await
        .expect("echo timed out");
    back
}

/// SOCKS5 CONNECT (no auth) through a peer's local listener.
async fn socks5_connect(proxy: u16, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0], "SOCKS5 method");
    let SocketAddr::V4(v4) = target else {
        panic!("IPv4 target expected")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.unwrap();
    assert_eq!(rep[1], 0, "SOCKS5 reply {rep:?}");
    s
}

fn write_identity(dir: &Path) -> (PathBuf, PathBuf, Identity) {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let (cert, key) = id.to_pem();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k, id)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anytls-interop-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn template(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/interop")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn our_client(port: u16, disable_reuse: bool) -> Client {
    let mut cfg = ClientConfig::new(format!("127.0.0.1:{port}"), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Insecure;
    cfg.pool.disable_reuse = disable_reuse;
    Client::new(cfg).unwrap()
}

async fn our_server(id: Identity) -> (u16, anytls_tokio::ShutdownHandle) {
    let server = Server::bind("127.0.0.1:0", ServerConfig::new(PASSWORD, id))
        .await
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let stop = server.shutdown_handle();
    tokio::spawn(server.serve());
    (port, stop)
}

/// Our client through their server: several sizes, sequential (session reuse).
/// Echoes stay small: with no flow control in AnyTLS, an echo larger than the
/// buffers on the path can stall peers that stop reading while they write
/// (shoes does, even against itself); bulk transfers go one way at a time.
///
/// `fresh_sessions`: a new session per stream, for a server that refuses a
/// second stream on a session whose first stream it closed (see README).
async fn client_against(
    port: u16,
    sizes: &[usize],
    bulk_bytes: Option<usize>,
    fresh_sessions: bool,
) {
    let target = echo_target().await;
    let client = our_client(port, fresh_sessions);
    for (i, &n) in sizes.iter().enumerate() {
        let s = tokio::time::timeout(LIMIT, client.connect(SocksAddr::from(target)))
            .await
            .unwrap()
            .unwrap();
        let data = pattern(n, i as u8);
        assert_eq!(echo_through(s, &data).await, data, "{n} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(n) = bulk_bytes {
        let t = bulk_target().await;
        bulk(
            || async { client.connect(SocksAddr::from(t)).await.unwrap() },
            n,
        )
        .await;
    }
    client.close();
}

/// Their client (SOCKS5 on `lport`) through our server.
async fn their_client_through(lport: u16, sizes: &[usize], bulk_bytes: Option<usize>) {
    let target = echo_target().await;
    for (i, &n) in sizes.iter().enumerate() {
        let s = tokio::time::timeout(LIMIT, socks5_connect(lport, target))
            .await
            .unwrap();
        let data = pattern(n, i as u8 + 100);
        assert_eq!(echo_through(s, &data).await, data, "{n} bytes");
    }
    if let Some(n) = bulk_bytes {
        let t = bulk_target().await;
        bulk(|| socks5_connect(lport, t), n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_with_shoes_server() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let dir = temp_dir("shoes-server");
    let (cert, key, _) = write_identity(&dir);
    let port = free_port().await;
    let cfg = template("shoes-server.yaml.tmpl")
        .replace("CERT.pem", cert.to_str().unwrap())
        .replace("KEY.pem", key.to_str().unwrap())
        .replace("@SPORT@", &port.to_string())
        .replace("@PASSWORD@", PASSWORD);
    let yaml = dir.join("server.yaml");
    std::fs::write(&yaml, cfg).unwrap();
    let mut p = spawn(Command::new(shoes).arg("--no-reload").arg(&yaml));
    wait_listening(port, &mut p).await;
    client_against(port, &[1024, 1 << 20, 100], Some(32 << 20), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoes_client_with_our_server() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let dir = temp_dir("shoes-client");
    let (_, _, id) = write_identity(&dir);
    let (sport, _stop) = our_server(id).await;
    let lport = free_port().await;
    let cfg = template("shoes-client.yaml.tmpl")
        .replace("@LPORT@", &lport.to_string())
        .replace("@SPORT@", &sport.to_string())
        .replace("@PASSWORD@", PASSWORD);
    let yaml = dir.join("client.yaml");
    std::fs::write(&yaml, cfg).unwrap();
    let mut p = spawn(Command::new(shoes).arg("--no-reload").arg(&yaml));
    wait_listening(lport, &mut p).await;
    their_client_through(lport, &[1024, 1 << 20], Some(32 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_with_anytls_server() {
    let Some(bin) = peer("anytls/bin/anytls-server") else {
        return;
    };
    let dir = temp_dir("anytls-server");
    let (cert, key, _) = write_identity(&dir);
    let port = free_port().await;
    let forward = sink().await;
    let mut p = spawn(
        Command::new(bin)
            .args(["-l", &format!("127.0.0.1:{port}"), "-p", PASSWORD])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--sni", "localhost", "--forward"])
            .arg(format!("http://{forward}"))
            .args(["--log", "warn"]),
    );
    wait_listening(port, &mut p).await;
    // It closes a stream whose inbound queue passes 1 MiB: stay below that.
    // It expects a FIN in answer to its own FIN (which the spec forbids) and
    // refuses further streams on that session without one.
    client_against(port, &[1024, 256 * 1024, 100], Some(512 * 1024), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anytls_client_with_our_server() {
    let Some(bin) = peer("anytls/bin/anytls-client") else {
        return;
    };
    let dir = temp_dir("anytls-client");
    let (_, _, id) = write_identity(&dir);
    let (sport, _stop) = our_server(id).await;
    let lport = free_port().await;
    let mut p = spawn(
        Command::new(bin)
            .args(["-l", &format!("socks5://127.0.0.1:{lport}")])
            .args(["-s", &format!("127.0.0.1:{sport}"), "-p", PASSWORD])
            .args(["--sni", "localhost", "--insecure", "--log", "warn"]),
    );
    wait_listening(lport, &mut p).await;
    their_client_through(lport, &[1024, 256 * 1024, 100], Some(512 * 1024)).await;
}
