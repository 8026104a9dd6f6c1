//! Embedding the AnyTLS client in a smol program.
//!
//! ```text
//! cargo run -p anytls-smol --example smol_client                      # local demo
//! cargo run -p anytls-smol --example smol_client -- HOST:PORT PASSWORD [DEST] [--insecure]
//! ```
//!
//! With no arguments it starts everything on 127.0.0.1 itself: a tiny HTTP
//! target, an AnyTLS server (self-signed certificate, pinned by the client)
//! and the client with one pre-warmed idle session. It then fetches a page
//! through the proxy three times, showing that the pool reuses the session,
//! and prints the pool statistics. With arguments it fetches `http://DEST/`
//! (default `example.com:80`) through a real AnyTLS server.
//!
//! Everything runs on smol: `smol::block_on` drives the program, the client's
//! tasks run on smol's executor, timers are async-io timers.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anytls_smol::{
    Client, ClientConfig, Identity, PoolConfig, PoolStats, Server, ServerConfig, SocksAddr,
    Verification, relay_tcp,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// What the local demo saw.
pub struct Report {
    /// The responses, in order.
    pub responses: Vec<Vec<u8>>,
    /// How long each request took.
    pub latencies: Vec<Duration>,
    /// The pool afterwards.
    pub stats: PoolStats,
}

/// Sends an HTTP/1.0 GET over an AnyTLS stream and reads the whole answer.
async fn fetch(client: &Client, dest: SocksAddr, host: &str) -> io::Result<Vec<u8>> {
    let mut stream = client.connect(dest).await?;
    let request = format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: anytls-smol\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // Bounded: a server that never closes cannot hold the example forever.
    let read = async {
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(())
    };
    anytls_io::timeout::<anytls_smol::Smol, _>(Duration::from_secs(10), read)
        .await
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no complete response in 10 s"))??;
    Ok(response)
}

/// A one-page HTTP server on 127.0.0.1 (smol tasks).
async fn http_target() -> io::Result<SocketAddr> {
    let listener = smol::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    smol::spawn(async move {
        // A demo target: serves a bounded number of requests, then stops.
        for _ in 0..100 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            smol::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                    match tcp.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let body = "hello from the local target\n";
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            })
            .detach();
        }
    })
    .detach();
    Ok(addr)
}

/// The local demo: target, server and client on 127.0.0.1.
pub async fn run_local_demo() -> io::Result<Report> {
    let target = http_target().await?;

    let identity = Identity::self_signed(&["localhost".into()]).map_err(io::Error::other)?;
    let pin = identity
        .leaf_sha256()
        .expect("a self-signed identity has a leaf");
    let password = "smol-demo-password";
    let server = Server::bind("127.0.0.1:0", ServerConfig::new(password, identity)).await?;
    let server_addr = server.local_addr()?;
    let shutdown = server.shutdown_handle();
    smol::spawn(async move {
        let _ = server
            .serve_with(Duration::ZERO, |req| relay_tcp(req, Duration::from_secs(5)))
            .await;
    })
    .detach();

    let mut cfg = ClientConfig::new(server_addr.to_string(), password);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    cfg.pool = {
        let mut c = PoolConfig::default();
        c.ensure_idle = 1;
        c
    };
    let client = Client::new(cfg).map_err(io::Error::other)?;

    // Give the pre-warm dial a moment (bounded), so the first request finds
    // a ready session.
    for _ in 0..100 {
        if client.stats().idle >= 1 {
            break;
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }

    let mut responses = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        responses.push(fetch(&client, SocksAddr::from(target), "localhost").await?);
        latencies.push(start.elapsed());
    }
    let stats = client.stats();
    client.close();
    shutdown.shutdown();
    Ok(Report {
        responses,
        latencies,
        stats,
    })
}

/// Fetches `http://dest/` through a real AnyTLS server.
async fn run_remote(server: &str, password: &str, dest: &str, insecure: bool) -> io::Result<()> {
    let mut cfg = ClientConfig::new(server, password);
    if insecure {
        cfg.verification = Verification::Insecure;
    }
    let client = Client::new(cfg).map_err(io::Error::other)?;
    let (host, port) = dest
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .unwrap_or((dest, 80));
    let response = fetch(&client, SocksAddr::domain(host, port), host).await?;
    let shown = &response[..response.len().min(2048)];
    println!("{}", String::from_utf8_lossy(shown));
    client.close();
    Ok(())
}

#[allow(dead_code)] // the test includes this file and calls run_local_demo only
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let insecure = args.iter().any(|a| a == "--insecure");
    let args: Vec<&str> = args
        .iter()
        .filter(|a| *a != "--insecure")
        .map(String::as_str)
        .collect();
    let result = smol::block_on(async {
        match args.as_slice() {
            [] => {
                let report = run_local_demo().await?;
                for (i, (r, t)) in report.responses.iter().zip(&report.latencies).enumerate() {
                    let status = String::from_utf8_lossy(r);
                    let first = status.lines().next().unwrap_or("");
                    println!("request {}: {first:?} in {t:?}", i + 1);
                }
                let s = &report.stats;
                println!(
                    "pool: {} dials, {} reuses, {} idle",
                    s.dials, s.reused, s.idle
                );
                Ok(())
            }
            [server, password] => run_remote(server, password, "example.com:80", insecure).await,
            [server, password, dest] => run_remote(server, password, dest, insecure).await,
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "usage: smol_client [HOST:PORT PASSWORD [DEST]] [--insecure]",
            )),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
