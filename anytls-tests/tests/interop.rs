//! Interop with independently written AnyTLS implementations (see
//! `shared/interop/PEERS.md`): `shoes` 0.3.2 and `anytls` 0.5.3, installed by
//! `.ci/run` into `$ANYTLS_PEERS_DIR` (default `~/.cache/anytls-ci`).
//!
//! Each test runs a peer binary on 127.0.0.1 and moves data byte-exact in both
//! directions: our client against their server, their client against our server.
//! Our side runs on one runtime per test, tokio or smol (modules `tokio` and
//! `smol`); the targets are runtime-free threads.
//! When the binaries are missing the tests say so and pass, unless
//! `ANYTLS_REQUIRE_PEERS=1` (set by CI), where a missing peer is a failure.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anytls_io::{
    Client, ClientConfig, Identity, Server, ServerConfig, ShutdownHandle, SocksAddr, Verification,
};
use anytls_tests::TestRuntime;
use anytls_tests::peers::{free_port, peer, spawn, temp_dir, wait_listening, write_identity};
use anytls_tests::targets::{sleep, within};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PASSWORD: &str = "interop-Pw_1";
const LIMIT: Duration = Duration::from_secs(30);
/// Connections a target thread accepts before it stops.
const MAX_CONNS: usize = 64;

/// Runs `fut` for at most [`LIMIT`], panicking with `what` when it runs out.
async fn bounded<R: TestRuntime, F: Future>(what: &str, fut: F) -> F::Output {
    within::<R, _>(LIMIT, what, fut).await
}

/// Serves up to [`MAX_CONNS`] connections accepted on a fresh 127.0.0.1 port,
/// each with `handler` on its own thread (reads and writes time out).
fn serve(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(MAX_CONNS) {
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(LIMIT));
            let _ = s.set_write_timeout(Some(LIMIT));
            std::thread::spawn(move || handler(s));
        }
    });
    addr
}

fn echo_target() -> SocketAddr {
    serve(|mut s| {
        let Ok(mut r) = s.try_clone() else { return };
        let _ = std::io::copy(&mut r, &mut s);
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// A bulk target: reads a request `b'D' | u64 n` (send n pattern bytes, then
/// close) or `b'U' | u64 n` (read n bytes, answer with their u64 checksum).
fn bulk_target() -> SocketAddr {
    serve(|mut s| {
        let mut req = [0u8; 9];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        let n = u64::from_be_bytes(req[1..].try_into().unwrap()) as usize;
        if req[0] == b'D' {
            let data = pattern(n, 7);
            let _ = s.write_all(&data);
            let _ = s.shutdown(Shutdown::Write);
        } else {
            let mut sum = Checksum::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let Ok(k) = s.read(&mut buf[..left.min(64 * 1024)]) else {
                    return;
                };
                if k == 0 {
                    return;
                }
                sum.update(&buf[..k]);
                left -= k;
            }
            let _ = s.write_all(&sum.0.to_be_bytes());
        }
    })
}

/// A listener that accepts and drains (anytls-server's `--forward` target).
fn sink() -> SocketAddr {
    serve(|mut s| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    })
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

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(151).wrapping_add(seed))
        .collect()
}

/// Downloads and uploads `n` bytes through `open()` streams, verifying every byte.
async fn bulk<R, S, F, Fut>(open: F, n: usize)
where
    R: TestRuntime,
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let mut req = vec![b'D'];
    req.extend_from_slice(&(n as u64).to_be_bytes());
    let mut s = bounded::<R, _>("download open", open()).await;
    let got = bounded::<R, _>("download", async {
        s.write_all(&req).await.unwrap();
        let mut got = vec![0u8; n];
        s.read_exact(&mut got).await.unwrap();
        got
    })
    .await;
    assert!(got == pattern(n, 7), "download of {n} bytes corrupted");
    drop(s);
    let s = bounded::<R, _>("upload open", open()).await;
    req[0] = b'U';
    let data = pattern(n, 9);
    let mut want = Checksum::default();
    want.update(&data);
    let (_, sum) = bounded::<R, _>("upload", async {
        let (mut r, mut w) = futures_lite::io::split(s);
        futures_lite::future::zip(
            async {
                w.write_all(&req).await.unwrap();
                w.write_all(&data).await.unwrap();
                w
            },
            async {
                let mut sum = [0u8; 8];
                r.read_exact(&mut sum).await.unwrap();
                u64::from_be_bytes(sum)
            },
        )
        .await
    })
    .await;
    assert_eq!(sum, want.0, "upload of {n} bytes corrupted");
}

/// Writes `data` and reads the echo back through `s`, concurrently.
async fn echo_through<R, S>(s: S, data: &[u8]) -> Vec<u8>
where
    R: TestRuntime,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = futures_lite::io::split(s);
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
    let (_w, back) = bounded::<R, _>("echo", futures_lite::future::zip(send, recv)).await;
    back
}

/// SOCKS5 CONNECT (no auth) through a peer's local listener.
async fn socks5_connect<R: TestRuntime>(proxy: u16, target: SocketAddr) -> R::Tcp {
    let mut s = R::connect(&format!("127.0.0.1:{proxy}")).await.unwrap();
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

fn template(name: &str) -> String {
    // Copies of shared/interop's templates, so a clone anywhere can run this.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn our_client<R: TestRuntime>(port: u16, disable_reuse: bool) -> Client<R> {
    let mut cfg = ClientConfig::new(format!("127.0.0.1:{port}"), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Insecure;
    cfg.pool.disable_reuse = disable_reuse;
    Client::new(cfg).unwrap()
}

async fn our_server<R: TestRuntime>(id: Identity) -> (u16, ShutdownHandle) {
    let server = Server::<R>::bind("127.0.0.1:0", ServerConfig::new(PASSWORD, id))
        .await
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let stop = server.shutdown_handle();
    R::spawn(async move {
        let _ = server.serve().await;
    });
    (port, stop)
}

/// Our client through their server: several sizes, sequential (session reuse).
/// Echoes stay small: with no flow control in AnyTLS, an echo larger than the
/// buffers on the path can stall peers that stop reading while they write
/// (shoes does, even against itself); bulk transfers go one way at a time.
///
/// `fresh_sessions`: a new session per stream, for a server that refuses a
/// second stream on a session whose first stream it closed (see README).
async fn client_against<R: TestRuntime>(
    port: u16,
    sizes: &[usize],
    bulk_bytes: Option<usize>,
    fresh_sessions: bool,
) {
    let target = echo_target();
    let client = our_client::<R>(port, fresh_sessions);
    for (i, &n) in sizes.iter().enumerate() {
        let s = bounded::<R, _>("connect", client.connect(SocksAddr::from(target)))
            .await
            .unwrap();
        let data = pattern(n, i as u8);
        assert_eq!(echo_through::<R, _>(s, &data).await, data, "{n} bytes");
        sleep::<R>(Duration::from_millis(20)).await;
    }
    if let Some(n) = bulk_bytes {
        let t = bulk_target();
        bulk::<R, _, _, _>(
            || async { client.connect(SocksAddr::from(t)).await.unwrap() },
            n,
        )
        .await;
    }
    client.close();
}

/// Their client (SOCKS5 on `lport`) through our server.
async fn their_client_through<R: TestRuntime>(
    lport: u16,
    sizes: &[usize],
    bulk_bytes: Option<usize>,
) {
    let target = echo_target();
    for (i, &n) in sizes.iter().enumerate() {
        let s = bounded::<R, _>("SOCKS5 connect", socks5_connect::<R>(lport, target)).await;
        let data = pattern(n, i as u8 + 100);
        assert_eq!(echo_through::<R, _>(s, &data).await, data, "{n} bytes");
    }
    if let Some(n) = bulk_bytes {
        let t = bulk_target();
        bulk::<R, _, _, _>(|| socks5_connect::<R>(lport, t), n).await;
    }
}

async fn our_client_with_shoes_server<R: TestRuntime>() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let dir = temp_dir::<R>("anytls-interop", "shoes-server");
    let (cert, key, _) = write_identity(&dir);
    let port = free_port();
    let cfg = template("shoes-server.yaml.tmpl")
        .replace("CERT.pem", cert.to_str().unwrap())
        .replace("KEY.pem", key.to_str().unwrap())
        .replace("@SPORT@", &port.to_string())
        .replace("@PASSWORD@", PASSWORD);
    let yaml = dir.join("server.yaml");
    std::fs::write(&yaml, cfg).unwrap();
    let mut p = spawn(Command::new(shoes).arg("--no-reload").arg(&yaml));
    wait_listening::<R>(port, &mut p, "peer").await;
    client_against::<R>(port, &[1024, 1 << 20, 100], Some(32 << 20), false).await;
}

async fn shoes_client_with_our_server<R: TestRuntime>() {
    let Some(shoes) = peer("shoes/bin/shoes") else {
        return;
    };
    let dir = temp_dir::<R>("anytls-interop", "shoes-client");
    let (_, _, id) = write_identity(&dir);
    let (sport, stop) = our_server::<R>(id).await;
    let lport = free_port();
    let cfg = template("shoes-client.yaml.tmpl")
        .replace("@LPORT@", &lport.to_string())
        .replace("@SPORT@", &sport.to_string())
        .replace("@PASSWORD@", PASSWORD);
    let yaml = dir.join("client.yaml");
    std::fs::write(&yaml, cfg).unwrap();
    let mut p = spawn(Command::new(shoes).arg("--no-reload").arg(&yaml));
    wait_listening::<R>(lport, &mut p, "peer").await;
    their_client_through::<R>(lport, &[1024, 1 << 20], Some(32 << 20)).await;
    stop.shutdown();
}

async fn our_client_with_anytls_server<R: TestRuntime>() {
    let Some(bin) = peer("anytls/bin/anytls-server") else {
        return;
    };
    let dir = temp_dir::<R>("anytls-interop", "anytls-server");
    let (cert, key, _) = write_identity(&dir);
    let port = free_port();
    let forward = sink();
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
    wait_listening::<R>(port, &mut p, "peer").await;
    // It closes a stream whose inbound queue passes 1 MiB: stay below that.
    // It expects a FIN in answer to its own FIN (which the spec forbids) and
    // refuses further streams on that session without one.
    client_against::<R>(port, &[1024, 256 * 1024, 100], Some(512 * 1024), true).await;
}

async fn anytls_client_with_our_server<R: TestRuntime>() {
    let Some(bin) = peer("anytls/bin/anytls-client") else {
        return;
    };
    let dir = temp_dir::<R>("anytls-interop", "anytls-client");
    let (_, _, id) = write_identity(&dir);
    let (sport, stop) = our_server::<R>(id).await;
    let lport = free_port();
    let mut p = spawn(
        Command::new(bin)
            .args(["-l", &format!("socks5://127.0.0.1:{lport}")])
            .args(["-s", &format!("127.0.0.1:{sport}"), "-p", PASSWORD])
            .args(["--sni", "localhost", "--insecure", "--log", "warn"]),
    );
    wait_listening::<R>(lport, &mut p, "peer").await;
    their_client_through::<R>(lport, &[1024, 256 * 1024, 100], Some(512 * 1024)).await;
    stop.shutdown();
}

// Our side on one runtime per test (no mixed pairs).
anytls_tests::one_runtime_suite!(
    our_client_with_shoes_server,
    shoes_client_with_our_server,
    our_client_with_anytls_server,
    anytls_client_with_our_server,
);
