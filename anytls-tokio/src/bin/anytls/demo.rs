//! `anytls demo`: a target, an AnyTLS server and clients with SOCKS5 listeners,
//! all on 127.0.0.1 ephemeral ports; measures first-request latency (cold,
//! pre-warmed, reused) and throughput, and shows the pool's statistics.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anytls_tokio::config::{format_go_duration, generate_password};
use anytls_tokio::socks5::{Socks5Config, Socks5Error, serve_socks5_with, socks5_connect};
use anytls_tokio::tls::hex32;
use anytls_tokio::{Client, ClientConfig, Identity, PoolStats, Server, ServerConfig, Verification};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::BoxError;

/// Options of `anytls demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Size of the download measured for throughput, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    download_mib: u64,
    /// Samples per latency figure.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
}

/// Bytes of the small response used for latency.
const SMALL: u64 = 1024;
/// Pool settings of the pre-warmed client.
const ENSURE: usize = 2;
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Upper bound of the whole demo.
const DEMO_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound of any single wait inside it.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// The target sends byte `i % 251` at offset `i`, in chunks of a whole number
/// of periods, so the receiver checks any slice with one comparison.
const PERIOD: usize = 251;
const CHUNK: usize = PERIOD * 256;

fn pattern() -> Vec<u8> {
    (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

pub async fn run(args: DemoArgs) -> Result<(), BoxError> {
    match tokio::time::timeout(DEMO_LIMIT, demo(args)).await {
        Ok(r) => r,
        Err(_) => Err(format!("the demo did not finish within {DEMO_LIMIT:?}").into()),
    }
}

/// Tasks to stop when the demo ends.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

struct Setup {
    server: SocketAddr,
    password: String,
    pin: [u8; 32],
}

impl Setup {
    fn client(&self, ensure: usize, heartbeat: Option<Duration>) -> Result<Client, BoxError> {
        let mut cfg = ClientConfig::new(self.server.to_string(), self.password.clone());
        cfg.sni = Some("localhost".into());
        cfg.verification = Verification::Pin(self.pin);
        cfg.pool.ensure_idle = ensure;
        cfg.pool.heartbeat = heartbeat;
        cfg.pool.check_interval = Duration::from_secs(1);
        Ok(Client::new(cfg)?)
    }
}

async fn socks_for(
    client: &Client,
    verdict_wait: Duration,
    tasks: &mut Tasks,
) -> io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let cfg = Socks5Config {
        verdict_wait,
        ..Socks5Config::default()
    };
    let client = client.clone();
    tasks.0.push(tokio::spawn(async move {
        let _ = serve_socks5_with(l, client, cfg).await;
    }));
    Ok(addr)
}

async fn demo(args: DemoArgs) -> Result<(), BoxError> {
    let started = Instant::now();
    let mut tasks = Tasks::default();
    let rounds = args.rounds as usize;

    let target = start_target(&mut tasks).await?;
    let identity = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
    let pin = identity.leaf_sha256().ok_or("no certificate")?;
    let password = generate_password()?;
    let server = Server::bind("127.0.0.1:0", ServerConfig::new(password.clone(), identity)).await?;
    let server_addr = server.local_addr()?;
    let shutdown = server.shutdown_handle();
    tasks.0.push(tokio::spawn(async move {
        let _ = server.serve().await;
    }));
    let setup = Setup {
        server: server_addr,
        password,
        pin,
    };

    println!("anytls demo: everything on 127.0.0.1, ephemeral ports");
    println!("  target  {target}  tiny HTTP server: GET /<n> answers n bytes");
    println!(
        "  server  {server_addr}  AnyTLS, self-signed certificate, pin {}...",
        &hex32(&pin)[..16]
    );

    // One unmeasured request first, so one-time process costs (first TLS
    // handshake, page faults) do not count as "cold".
    {
        let c = setup.client(0, None)?;
        let socks = socks_for(&c, Duration::ZERO, &mut tasks).await?;
        fetch(socks, target, SMALL).await?;
        c.close();
    }

    // Cold: a fresh client without pre-warming; the request waits for TCP,
    // TLS and the AnyTLS preamble.
    let mut cold = Vec::new();
    for _ in 0..rounds {
        let c = setup.client(0, None)?;
        let socks = socks_for(&c, Duration::ZERO, &mut tasks).await?;
        cold.push(fetch(socks, target, SMALL).await?);
        c.close();
    }

    // Warm: a fresh client with ensure_idle_session; wait for its pre-warmed
    // sessions, then the first request. Reused: the next request, on a session
    // that carried one before.
    let mut warm = Vec::new();
    let mut reused = Vec::new();
    let mut last = None;
    for round in 0..rounds {
        let c = setup.client(ENSURE, Some(HEARTBEAT))?;
        let socks = socks_for(&c, Duration::ZERO, &mut tasks).await?;
        wait_until("pre-warmed sessions", || c.stats().idle >= ENSURE).await?;
        warm.push(fetch(socks, target, SMALL).await?);
        wait_until("the session's return to the pool", || {
            c.stats().idle >= ENSURE
        })
        .await?;
        reused.push(fetch(socks, target, SMALL).await?);
        if round + 1 < rounds {
            c.close();
        } else {
            last = Some((c, socks));
        }
    }
    let (client, socks) = last.ok_or("no rounds")?;
    println!(
        "  client  SOCKS5 {socks} -> server; ensure_idle_session={ENSURE}, heartbeat {}",
        format_go_duration(HEARTBEAT)
    );
    println!();
    println!(
        "first-request latency through SOCKS5 ({SMALL}-byte response; median of {rounds}, min)"
    );
    let (c, w, r) = (median(&mut cold), median(&mut warm), median(&mut reused));
    println!(
        "  cold    new session: TCP + TLS + AnyTLS handshakes   {:>9}  ({})",
        ms(c),
        ms(cold[0])
    );
    println!(
        "  warm    pre-warmed idle session                      {:>9}  ({})",
        ms(w),
        ms(warm[0])
    );
    println!(
        "  reused  session back in the pool after a request     {:>9}  ({})",
        ms(r),
        ms(reused[0])
    );
    if w < c {
        println!(
            "  pre-warming saves {} ({:.1}x faster) on a first request",
            ms(c - w),
            c.as_secs_f64() / w.as_secs_f64().max(1e-9)
        );
    }

    // Throughput on the pre-warmed client.
    wait_until("the session's return to the pool", || {
        client.stats().idle >= ENSURE
    })
    .await?;
    let bytes = args.download_mib * 1024 * 1024;
    let t = fetch(socks, target, bytes).await?;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let secs = t.as_secs_f64().max(1e-9);
    println!();
    println!(
        "throughput: {} MiB downloaded through SOCKS5 in {:.2} s = {:.1} MiB/s ({:.2} Gbit/s)",
        args.download_mib,
        secs,
        mib / secs,
        bytes as f64 * 8.0 / secs / 1e9
    );

    // A closed port: with a verdict wait, the SOCKS5 reply says why.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?
    };
    let verdict_socks = socks_for(&client, Duration::from_secs(2), &mut tasks).await?;
    let reply = match tokio::time::timeout(STEP_LIMIT, socks5_connect(verdict_socks, closed)).await
    {
        Ok(Err(Socks5Error::Reply(r))) => r.to_string(),
        Ok(Ok(_)) => "succeeded (unexpected)".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "no reply in time".into(),
    };
    println!("SOCKS5 reply for a closed port (with --socks-verdict-wait): {reply}");

    // Let the heartbeat answer at least once (the first beat comes within one
    // interval of a session's start).
    let _ = wait_until("a heartbeat answer", || client.stats().heartbeat_acks > 0).await;
    wait_until("the session's return to the pool", || {
        client.stats().busy == 0
    })
    .await
    .ok();
    println!();
    println!("pool statistics of the pre-warmed client");
    print_stats(&client.stats());
    println!();
    println!("done in {:.1} s", started.elapsed().as_secs_f64());

    client.close();
    shutdown.shutdown();
    Ok(())
}

fn print_stats(s: &PoolStats) {
    println!(
        "  sessions    idle {}, busy {}, dialing {}",
        s.idle, s.busy, s.dialing
    );
    println!(
        "  dials       {} ({} pre-warm), failed {}, established {}",
        s.dials, s.prewarm_dials, s.dial_failures, s.established
    );
    println!(
        "  reuse       {} requests served by idle sessions",
        s.reused
    );
    let closed: Vec<String> = s.closed.iter().map(|(r, n)| format!("{r:?} {n}")).collect();
    println!(
        "  closed      {} by the pool, {} died",
        if closed.is_empty() {
            "none".to_owned()
        } else {
            closed.join(", ")
        },
        s.died
    );
    let rtt = |d: Option<Duration>| d.map_or("-".to_owned(), ms);
    println!(
        "  heartbeats  {} sent, {} answered; RTT last {}, min {}, max {}",
        s.heartbeats,
        s.heartbeat_acks,
        rtt(s.heartbeat_rtt_last),
        rtt(s.heartbeat_rtt_min),
        rtt(s.heartbeat_rtt_max)
    );
}

fn ms(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// Sorts the samples and returns the median.
fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + STEP_LIMIT;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn start_target(tasks: &mut Tasks) -> io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tasks.0.push(tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Err(e) = serve_target(s).await {
                    tracing::debug!("demo target: {e}");
                }
            });
        }
    }));
    Ok(addr)
}

/// `GET /<n> HTTP/1.1` -> a 200 response with `n` pattern bytes, then close.
async fn serve_target(mut s: TcpStream) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        if req.len() > 8192 {
            return Ok(());
        }
        let n = tokio::time::timeout(STEP_LIMIT, s.read(&mut buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req);
    let n: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    s.write_all(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let pat = pattern();
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&pat[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await
}

/// One request through the SOCKS5 listener: the time from connecting until the
/// last byte of an `n`-byte body, checked byte for byte. Then reads to the end
/// (untimed), so the stream is done when this returns.
async fn fetch(socks: SocketAddr, target: SocketAddr, n: u64) -> Result<Duration, BoxError> {
    let limit = STEP_LIMIT + Duration::from_secs(n / (4 * 1024 * 1024));
    tokio::time::timeout(limit, fetch_inner(socks, target, n))
        .await
        .map_err(|_| format!("request for {n} bytes timed out"))?
}

async fn fetch_inner(socks: SocketAddr, target: SocketAddr, n: u64) -> Result<Duration, BoxError> {
    let t0 = Instant::now();
    let mut s = socks5_connect(socks, target).await?;
    s.write_all(format!("GET /{n} HTTP/1.1\r\nHost: demo\r\n\r\n").as_bytes())
        .await?;
    let pat = pattern();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut got: u64 = 0;
    let mut in_body = false;
    let mut elapsed = None;
    loop {
        if elapsed.is_none() && in_body && got == n {
            elapsed = Some(t0.elapsed());
        }
        let k = s.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        let body = &buf[..k];
        if !in_body {
            head.extend_from_slice(body);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 8192 {
                    return Err("response header too long".into());
                }
                continue;
            };
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err("unexpected response from the target".into());
            }
            in_body = true;
            let rest = head.split_off(end + 4);
            got = check(&pat, got, &rest, n)?;
            continue;
        }
        got = check(&pat, got, body, n)?;
    }
    if got != n {
        return Err(format!("got {got} of {n} bytes").into());
    }
    Ok(elapsed.unwrap_or_else(|| t0.elapsed()))
}

/// Checks `data` at body offset `at`; returns the new offset.
fn check(pat: &[u8], at: u64, data: &[u8], n: u64) -> Result<u64, BoxError> {
    let end = at + data.len() as u64;
    if end > n {
        return Err(format!("more than the {n} bytes asked for").into());
    }
    let mut off = at;
    for piece in data.chunks(CHUNK) {
        let start = (off % PERIOD as u64) as usize;
        if piece != &pat[start..start + piece.len()] {
            return Err(format!("corrupted data near offset {off}").into());
        }
        off += piece.len() as u64;
    }
    Ok(end)
}
