//! `anytls server --metrics ADDR`: the server's counters in the Prometheus
//! text format on `GET /metrics`, over a minimal HTTP/1.1 server (one
//! request per connection), and a periodic one-line summary in the log.
//!
//! Limits: a request head of at most [`MAX_HEAD`] bytes (else 431), read
//! within [`READ_TIMEOUT`] (else 408), at most [`MAX_CONNECTIONS`] connections
//! at once (more are closed at accept); each connection has its own task, so
//! a slow one holds up nobody else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anytls_tokio::StatsHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time to send the whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How often the summary is logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, stats: StatsHandle) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(%peer, "metrics: too many connections, closed at accept");
            continue;
        }
        let open = open.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            answer(tcp, peer, &stats).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Logs [`StatsSnapshot::summary`](anytls_tokio::StatsSnapshot::summary)
/// every [`SUMMARY_EVERY`].
pub async fn log_summaries(stats: StatsHandle) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        tracing::info!("stats: {}", stats.snapshot().summary());
    }
}

/// Reads one request head and answers it.
async fn answer(mut tcp: TcpStream, peer: SocketAddr, stats: &StatsHandle) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut tcp)).await {
        Err(_) => {
            tracing::debug!(%peer, "metrics: request timed out");
            Some(reply(408, "Request Timeout", &[], ""))
        }
        Ok(Head::TooLarge) => Some(reply(431, "Request Header Fields Too Large", &[], "")),
        Ok(Head::Closed) => None,
        Ok(Head::Complete(head)) => Some(route(&head, stats)),
    };
    let Some(response) = response else { return };
    let write = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    };
    if tokio::time::timeout(WRITE_TIMEOUT, write).await.is_err() {
        return;
    }
    // Read what is left (a body, the rest of an oversized head) for a
    // moment, so closing with unread input does not reset the connection
    // before the client has read the answer.
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends a request head.
async fn read_head(tcp: &mut TcpStream) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        // Look for the end from just before the new bytes on.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf[from..]) {
            buf.truncate(from + end);
            return if buf.len() > MAX_HEAD {
                Head::TooLarge
            } else {
                Head::Complete(buf)
            };
        }
        if buf.len() > MAX_HEAD {
            return Head::TooLarge;
        }
    }
}

/// Where the head ends (after `\r\n\r\n` or `\n\n`) in `b`.
fn find_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// The answer to a request head: only `GET /metrics` is served.
fn route(head: &[u8], stats: &StatsHandle) -> String {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reply(400, "Bad Request", &[], "");
    };
    if !version.starts_with("HTTP/1.") {
        return reply(400, "Bad Request", &[], "");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return reply(404, "Not Found", &[], "not found\n");
    }
    if method != "GET" {
        return reply(
            405,
            "Method Not Allowed",
            &["Allow: GET"],
            "method not allowed\n",
        );
    }
    reply(
        200,
        "OK",
        &["Content-Type: text/plain; version=0.0.4; charset=utf-8"],
        &stats.snapshot().to_prometheus(),
    )
}

fn reply(code: u16, reason: &str, headers: &[&str], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out
}
