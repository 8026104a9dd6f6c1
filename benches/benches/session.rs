//! An in-memory client/server session pair (no TLS, no sockets): how fast the
//! core moves stream bytes one way, framing, shaping and parsing included.

use std::sync::Arc;
use std::time::Instant;

use anytls_core::{
    Authenticator, ClientConfig, Event, PaddingScheme, ServerConfig, Session, SessionSeq, SocksAddr,
};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MIB: usize = 1024 * 1024;
const TOTAL: usize = 64 * MIB;

/// Moves `total` bytes from a client stream to the server's owner, who reads and
/// drops them. Returns the bytes the server read.
fn pump(total: usize, chunk: &Bytes) -> usize {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let ccfg = Arc::new(ClientConfig::new("bench"));
    let scfg = Arc::new(ServerConfig::new(Authenticator::single("bench")));
    let mut c = Session::client(
        ccfg,
        SessionSeq(1),
        Arc::new(PaddingScheme::default_scheme()),
        [1; 32],
        now,
    )
    .expect("valid config");
    let mut s = Session::server(scfg, [2; 32], now).expect("valid config");
    let id = c
        .open_stream(now, &SocksAddr::domain("example.com", 443))
        .unwrap();
    let mut written = 0;
    let mut pending = Bytes::new();
    let mut read = 0;
    let mut out = BytesMut::with_capacity(128 * 1024);
    let mut back = BytesMut::with_capacity(4096);
    while read < total {
        // The session takes what fits; the rest of a chunk waits.
        while written < total {
            if pending.is_empty() {
                pending = chunk.clone();
            }
            match c.write_bytes(id, &mut pending) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        while c.poll_transmit(now, &mut out).is_some() {
            if s.wants_read() {
                s.handle_input(now, out.split());
            } else {
                out.clear();
            }
        }
        while let Some(ev) = s.poll_event() {
            if let Event::StreamOpened { id, .. } = ev {
                s.accept_stream(id, Ok(())).unwrap();
            }
        }
        while let Ok(Some(b)) = s.read(now, id) {
            read += b.len();
        }
        while s.poll_transmit(now, &mut back).is_some() {
            c.handle_input(now, back.split());
        }
        while c.poll_event().is_some() {}
    }
    read
}

fn session_pair(c: &mut Criterion) {
    let chunk = Bytes::from(vec![0xa5u8; 32 * 1024]);
    let mut g = c.benchmark_group("session_pair");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("client_to_server_64MiB", |b| {
        b.iter(|| assert!(pump(TOTAL, &chunk) >= TOTAL))
    });
    g.finish();
}

criterion_group!(benches, session_pair);
criterion_main!(benches);
