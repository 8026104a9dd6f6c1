//! The server process: our server on 127.0.0.1 (self-signed certificate,
//! pinned by the client) with the soak handler. Prints `READY <addr> <pin>`,
//! then answers `stats`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anytls_tokio::tls::hex32;
use anytls_tokio::{AnyTlsStream, Identity, IncomingStream, Server, ServerConfig, SocksAddr};
use tokio::io::AsyncWriteExt;

use crate::procs::control_loop;
use crate::proto::{
    DOWN, Fail, HEADER_LEN, Header, PASSWORD, Rng, SERVER_CHUNKS, TRAILER_LEN, UP, bounded, mix,
    recv_pattern, send_pattern,
};
use crate::{Cli, Res};

/// Corruption reports printed (the rest are counted).
const MAX_REPORTS: u64 = 20;

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    open: AtomicU64,
    completed: AtomicU64,
    /// I/O errors and stalls (the client attributes them).
    failed: AtomicU64,
    /// Byte mismatches, bad headers, wrong destinations.
    corrupt: AtomicU64,
}

struct Open<'a>(&'a AtomicU64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run(cli: &Cli) -> Res<()> {
    let identity = Identity::self_signed(&["localhost".into()])?;
    let pin = hex32(&identity.leaf_sha256().ok_or("no certificate")?);
    let mut cfg = ServerConfig::new(PASSWORD, identity);
    cfg.limits = crate::limits(cli);
    let server = Server::bind("127.0.0.1:0", cfg).await?;
    let addr = server.local_addr()?;
    let handle = server.shutdown_handle();
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    tokio::spawn(server.serve_with(Duration::from_secs(1), move |req| {
        handle_stream(req, st.clone())
    }));
    println!("READY {addr} {pin}");
    control_loop(|cmd| match cmd {
        "stats" => {
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            Ok(format!(
                "STATS active={} open={} accepted={} completed={} failed={} corrupt={}",
                handle.active_sessions(),
                g(&stats.open),
                g(&stats.accepted),
                g(&stats.completed),
                g(&stats.failed),
                g(&stats.corrupt),
            ))
        }
        _ => Err(format!("unknown command {cmd:?}").into()),
    })
    .await
}

async fn handle_stream(req: IncomingStream, stats: Arc<Stats>) {
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&stats.open);
    let dest = req.destination().clone();
    let mut stream = req.accept();
    match serve(&mut stream, &dest).await {
        Ok(()) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        Err(f) if f.is_corruption() => {
            let n = stats.corrupt.fetch_add(1, Ordering::Relaxed);
            if n < MAX_REPORTS {
                eprintln!("soak server: CORRUPT stream to {dest}: {f}");
            }
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn serve(s: &mut AnyTlsStream, dest: &SocksAddr) -> Result<(), Fail> {
    let mut h = [0u8; HEADER_LEN];
    read_full(s, &mut h, "header").await?;
    let hdr = Header::decode(&h).ok_or_else(|| Fail::Protocol(format!("bad header {h:02x?}")))?;
    if *dest != Header::dest(hdr.id) {
        return Err(Fail::Protocol(format!(
            "stream {:#x} arrived with destination {dest}",
            hdr.id
        )));
    }
    let (mut r, mut w) = tokio::io::split(&mut *s);
    let mut chunks = Rng::new(mix(hdr.seed, SERVER_CHUNKS));
    let write_chunk = chunks.range(1, 64 * 1024) as usize;
    let writer = send_pattern(
        &mut w,
        mix(hdr.seed, DOWN),
        hdr.down,
        write_chunk,
        &mut chunks,
    );
    let reader = recv_pattern(
        &mut r,
        "upload",
        mix(hdr.seed, UP),
        hdr.up,
        32 * 1024,
        |_| {},
        None,
    );
    let (_, up_hash) = tokio::try_join!(writer, reader)?;
    let mut trailer = [0u8; TRAILER_LEN];
    trailer[0] = b'K';
    trailer[1..].copy_from_slice(&up_hash.to_be_bytes());
    bounded("trailer", w.write_all(&trailer)).await?;
    drop((r, w));
    // FIN: the stream is done.
    bounded("close", s.shutdown()).await?;
    Ok(())
}

/// Fills `buf`; a clean end of stream first is [`Fail::EarlyEof`].
pub async fn read_full<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), Fail> {
    use tokio::io::AsyncReadExt;
    let mut got = 0;
    while got < buf.len() {
        let k = bounded(what, r.read(&mut buf[got..])).await?;
        if k == 0 {
            return Err(Fail::EarlyEof {
                what,
                got: got as u64,
                want: buf.len() as u64,
            });
        }
        got += k;
    }
    Ok(())
}
