//! Deterministic tests of [`TlsIo`] over an in-memory duplex pipe: no network,
//! no timers, no threads. A tiny executor polls the tasks only when their
//! wakers fired, so a lost wake-up shows as a "stalled" panic instead of a
//! hang, and a bounded round count catches livelocks.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{Read, Write};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Wake, Waker};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, ServerConfig};

use super::*;
use crate::tls::{self, Identity, Verification};

// ---------------------------------------------------------------------------
// In-memory duplex pipe.

/// One direction of the pipe.
struct Chan {
    buf: VecDeque<u8>,
    /// The writer closed: EOF once `buf` is drained.
    closed: bool,
    /// Bytes the direction holds at most (writes beyond it are Pending).
    cap: usize,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Every byte ever written, for inspecting the wire.
    log: Vec<u8>,
    /// `poll_write` calls that accepted bytes.
    writes: usize,
}

/// How a pipe end chops the traffic.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Bytes a read returns at most.
    read_chunk: usize,
    /// Bytes a write accepts at most.
    write_chunk: usize,
    /// Bytes in flight per direction at most.
    cap: usize,
    /// Every other read and write is `Pending` (with an immediate wake).
    stutter: bool,
}

const WIDE: Shape = Shape {
    read_chunk: 1 << 20,
    write_chunk: 1 << 20,
    cap: 4 << 20,
    stutter: false,
};

/// One byte per read and per write, and every other call `Pending`. The
/// capacity stays generous, as a socket's: a side whose task has finished
/// (handshake done) still gets its last flight out. Tests that fill the pipe
/// use a small `cap` with both sides reading.
const BYTEWISE: Shape = Shape {
    read_chunk: 1,
    write_chunk: 1,
    cap: 1 << 16,
    stutter: true,
};

/// One end of a duplex pipe: futures-io `AsyncRead + AsyncWrite`.
struct End {
    rx: Arc<Mutex<Chan>>,
    tx: Arc<Mutex<Chan>>,
    shape: Shape,
    read_tick: u64,
    write_tick: u64,
}

fn chan(cap: usize) -> Arc<Mutex<Chan>> {
    Arc::new(Mutex::new(Chan {
        buf: VecDeque::new(),
        closed: false,
        cap,
        reader: None,
        writer: None,
        log: Vec::new(),
        writes: 0,
    }))
}

fn pipe(shape: Shape) -> (End, End) {
    let (ab, ba) = (chan(shape.cap), chan(shape.cap));
    let end = |rx: &Arc<Mutex<Chan>>, tx: &Arc<Mutex<Chan>>| End {
        rx: rx.clone(),
        tx: tx.clone(),
        shape,
        read_tick: 0,
        write_tick: 0,
    };
    (end(&ba, &ab), end(&ab, &ba))
}

impl End {
    /// Everything this end ever wrote.
    fn sent(&self) -> Vec<u8> {
        self.tx.lock().unwrap().log.clone()
    }

    fn sent_len(&self) -> usize {
        self.tx.lock().unwrap().log.len()
    }

    /// Successful `poll_write` calls on this end.
    fn writes(&self) -> usize {
        self.tx.lock().unwrap().writes
    }

    /// Queues raw bytes for the other end at once (no capacity limit).
    fn inject(&self, bytes: &[u8]) {
        let mut c = self.tx.lock().unwrap();
        c.buf.extend(bytes);
        c.log.extend_from_slice(bytes);
        if let Some(w) = c.reader.take() {
            w.wake();
        }
    }

    /// Closes this end's sending direction at once (the other end sees EOF).
    fn shut(&self) {
        let mut c = self.tx.lock().unwrap();
        c.closed = true;
        if let Some(w) = c.reader.take() {
            w.wake();
        }
    }

    fn stutter(tick: &mut u64, shape: &Shape, cx: &mut Context<'_>) -> bool {
        *tick += 1;
        if shape.stutter && *tick % 2 == 1 {
            cx.waker().wake_by_ref();
            return true;
        }
        false
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if End::stutter(&mut this.read_tick, &this.shape, cx) {
            return Poll::Pending;
        }
        let mut c = this.rx.lock().unwrap();
        if c.buf.is_empty() {
            if c.closed {
                return Poll::Ready(Ok(0));
            }
            c.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(this.shape.read_chunk).min(c.buf.len());
        for (d, s) in buf.iter_mut().zip(c.buf.drain(..n)) {
            *d = s;
        }
        if let Some(w) = c.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if End::stutter(&mut this.write_tick, &this.shape, cx) {
            return Poll::Pending;
        }
        let mut c = this.tx.lock().unwrap();
        if c.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = c.cap.saturating_sub(c.buf.len());
        if room == 0 {
            c.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(this.shape.write_chunk).min(room);
        c.buf.extend(&buf[..n]);
        c.log.extend_from_slice(&buf[..n]);
        c.writes += 1;
        if let Some(w) = c.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut();
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------
// A strict single-threaded executor.

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls more than this many times: a livelock.
const MAX_POLLS: u64 = 20_000_000;

/// Runs two futures to completion, polling each only after its waker fired.
fn run2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (fa, fb) = (
        Arc::new(Flag(AtomicBool::new(true))),
        Arc::new(Flag(AtomicBool::new(true))),
    );
    let (wa, wb) = (Waker::from(fa.clone()), Waker::from(fb.clone()));
    let (mut ra, mut rb) = (None, None);
    for _ in 0..MAX_POLLS {
        let mut polled = false;
        if ra.is_none() && fa.0.swap(false, Ordering::SeqCst) {
            polled = true;
            if let Poll::Ready(v) = a.as_mut().poll(&mut Context::from_waker(&wa)) {
                ra = Some(v);
            }
        }
        if rb.is_none() && fb.0.swap(false, Ordering::SeqCst) {
            polled = true;
            if let Poll::Ready(v) = b.as_mut().poll(&mut Context::from_waker(&wb)) {
                rb = Some(v);
            }
        }
        match (ra, rb) {
            (Some(a), Some(b)) => return (a, b),
            (a, b) => (ra, rb) = (a, b),
        }
        assert!(polled, "stalled: every task waits and nothing will wake it");
    }
    panic!("livelock: no completion after {MAX_POLLS} polls");
}

fn run<A: Future>(a: A) -> A::Output {
    run2(a, std::future::ready(())).0
}

// ---------------------------------------------------------------------------
// Certificates and configurations.

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::self_signed(&["localhost".into()]).unwrap())
}

/// A self-signed certificate of about `ext` bytes more than usual (a large
/// private extension) and its key.
fn big_cert(ext: usize) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 55555, 1],
            vec![0x5a; ext],
        ));
    let cert = params.self_signed(&key).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// An identity whose chain is a big leaf plus `extra` copies of big filler
/// certificates: about `(1 + extra) * ext` bytes in the Certificate message.
fn big_identity(ext: usize, extra: usize) -> Identity {
    let (leaf, key) = big_cert(ext);
    let (filler, _) = big_cert(ext);
    let mut certs = vec![leaf];
    certs.extend(std::iter::repeat_n(filler, extra));
    Identity { certs, key }
}

fn chain_len(id: &Identity) -> usize {
    id.certs.iter().map(|c| c.len() + 5).sum()
}

fn client_cfg(id: &Identity) -> Arc<ClientConfig> {
    let pin = Verification::Pin(id.leaf_sha256().unwrap());
    Arc::new(tls::client_config(&pin, &[]).unwrap())
}

fn server_cfg(id: &Identity) -> Arc<ServerConfig> {
    Arc::new(tls::server_config(id, &[]).unwrap())
}

/// A server that sends data with its last handshake flight (half-RTT).
fn half_rtt_server_cfg(id: &Identity) -> Arc<ServerConfig> {
    let mut scfg = tls::server_config(id, &[]).unwrap();
    scfg.send_half_rtt_data = true;
    Arc::new(scfg)
}

fn server_cfg_tls12(id: &Identity) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(id.certs.clone(), id.key.clone_key())
            .unwrap(),
    )
}

fn name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

fn tls_client(cfg: &Arc<ClientConfig>, io: End) -> TlsIo<End> {
    TlsIo::new(io, Tls::client(cfg.clone(), name()).unwrap())
}

fn tls_server(cfg: &Arc<ServerConfig>, io: End) -> TlsIo<End> {
    TlsIo::new(io, Tls::server(cfg.clone()).unwrap())
}

/// The negotiated version; TLS 1.3 records done by `record.rs` count as
/// TLS 1.3.
fn version(t: &TlsIo<End>) -> Option<ProtocolVersion> {
    match &t.tls {
        Tls::Client { conn, .. } => conn.protocol_version(),
        Tls::Server { conn, .. } => conn.protocol_version(),
        Tls::Records(_) => Some(ProtocolVersion::TLSv1_3),
        Tls::Gone => None,
    }
}

/// Whether the records are done by `record.rs`.
fn own_records(t: &TlsIo<End>) -> bool {
    matches!(t.tls, Tls::Records(_))
}

/// Deterministic test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `(content type, body length)` of every TLS record in `wire`, which must
/// hold whole records only.
fn records(wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "partial record header: {rest:?}");
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        assert!(rest.len() >= 5 + len, "partial record");
        out.push((rest[0], len));
        rest = &rest[5 + len..];
    }
    out
}

// ---------------------------------------------------------------------------
// TlsIo helpers, used the way `conn::drive` uses it.

async fn flush(t: &mut TlsIo<End>) -> io::Result<()> {
    poll_fn(|cx| t.poll_flush_tls(cx)).await
}

async fn send(t: &mut TlsIo<End>, bytes: &[u8]) -> io::Result<()> {
    t.encrypt(bytes)?;
    flush(t).await
}

/// Reads until `n` bytes of plaintext arrived (`None`: until the peer closed),
/// flushing post-handshake output on the way. Returns the bytes and whether
/// the peer closed.
async fn recv_upto(t: &mut TlsIo<End>, n: Option<usize>) -> io::Result<(Vec<u8>, bool)> {
    let mut acc = Vec::new();
    poll_fn(|cx| {
        loop {
            if t.has_pending_output() {
                if let Poll::Ready(r) = t.poll_flush_tls(cx) {
                    r?;
                }
            }
            acc.extend_from_slice(&t.plain.split());
            if n.is_some_and(|n| acc.len() >= n) {
                return Poll::Ready(Ok(false));
            }
            if ready!(t.poll_read_more(cx))? {
                acc.extend_from_slice(&t.plain.split());
                return Poll::Ready(Ok(true));
            }
        }
    })
    .await
    .map(|eof| (acc, eof))
}

async fn recv(t: &mut TlsIo<End>, n: usize) -> io::Result<Vec<u8>> {
    let (got, eof) = recv_upto(t, Some(n)).await?;
    if eof && got.len() < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(got)
}

async fn recv_to_eof(t: &mut TlsIo<End>) -> io::Result<Vec<u8>> {
    Ok(recv_upto(t, None).await?.0)
}

/// Sends `out` (encrypted in pieces of the `sizes` cycle) while receiving
/// `want` bytes, full duplex, like the driver.
async fn exchange(
    t: &mut TlsIo<End>,
    out: &[u8],
    sizes: &[usize],
    want: usize,
) -> io::Result<Vec<u8>> {
    let mut acc = Vec::with_capacity(want);
    let mut sent = 0;
    let mut i = 0;
    poll_fn(|cx| {
        loop {
            let mut progress = false;
            if !t.has_pending_output() && sent < out.len() {
                // A batch of a few encrypts, as the driver does.
                for _ in 0..3 {
                    let n = sizes[i % sizes.len()].min(out.len() - sent);
                    i += 1;
                    t.encrypt(&out[sent..sent + n])?;
                    sent += n;
                }
                progress = true;
            }
            if t.has_pending_output() {
                if let Poll::Ready(r) = t.poll_flush_tls(cx) {
                    r?;
                    progress = true;
                }
            }
            if acc.len() < want {
                if let Poll::Ready(r) = t.poll_read_more(cx) {
                    let eof = r?;
                    acc.extend_from_slice(&t.plain.split());
                    if eof && acc.len() < want {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    progress = true;
                }
            }
            if sent == out.len() && !t.has_pending_output() && acc.len() >= want {
                return Poll::Ready(Ok(std::mem::take(&mut acc)));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Handshakes both sides, TlsIo against TlsIo.
///
/// Under TLS 1.2 the server then sends one byte, which the client takes: the
/// client's `handshake()` does not return on its own once the server's last
/// flight is processed (see `handshake_completes_when_the_peer_waits`).
fn handshake_pair(client: &mut TlsIo<End>, server: &mut TlsIo<End>) {
    let (c, s) = run2(
        async {
            client.handshake().await?;
            if version(client) == Some(ProtocolVersion::TLSv1_2) {
                assert_eq!(recv(client, 1).await?, [0xee]);
            }
            io::Result::Ok(())
        },
        async {
            server.handshake().await?;
            if version(server) == Some(ProtocolVersion::TLSv1_2) {
                send(server, &[0xee]).await?;
            }
            io::Result::Ok(())
        },
    );
    c.unwrap();
    s.unwrap();
}

fn pair(
    shape: Shape,
    ccfg: &Arc<ClientConfig>,
    scfg: &Arc<ServerConfig>,
) -> (TlsIo<End>, TlsIo<End>) {
    let (a, b) = pipe(shape);
    (tls_client(ccfg, a), tls_server(scfg, b))
}

// ---------------------------------------------------------------------------
// A buffered rustls connection as the peer.

struct Peer<C> {
    conn: C,
    io: End,
}

impl<C, S> Peer<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    /// Writes every pending TLS byte.
    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut v = Vec::new();
            self.conn.write_tls(&mut v)?;
            self.io.write_all(&v).await?;
        }
        Ok(())
    }

    /// Reads once from the socket and processes it; `false` at EOF.
    async fn pump(&mut self) -> io::Result<bool> {
        let mut buf = vec![0; 8192];
        let n = self.io.read(&mut buf).await?;
        let mut rest = &buf[..n];
        loop {
            // rustls buffers one record at most outside handshakes: feed it
            // and let it process, piece by piece.
            let k = self.conn.read_tls(&mut rest)?;
            self.conn.process_new_packets().map_err(invalid)?;
            if k == 0 || rest.is_empty() {
                break;
            }
        }
        self.flush().await?;
        Ok(n > 0)
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.flush().await?;
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if !self.pump().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn send(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        // rustls takes at most its buffer limit at a time.
        while !bytes.is_empty() {
            let n = self.conn.writer().write(bytes)?;
            bytes = &bytes[n..];
            self.flush().await?;
        }
        Ok(())
    }

    /// Reads `n` bytes of plaintext (`None`: until close_notify).
    async fn recv_upto(&mut self, n: Option<usize>) -> io::Result<Vec<u8>> {
        let mut acc = Vec::new();
        let mut buf = vec![0; 16384];
        loop {
            loop {
                match self.conn.reader().read(&mut buf) {
                    Ok(0) if n.is_none() => return Ok(acc),
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(k) => acc.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if n.is_some_and(|n| acc.len() >= n) {
                return Ok(acc);
            }
            self.pump().await?;
        }
    }

    async fn recv(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.recv_upto(Some(n)).await
    }
}

fn peer_client(cfg: &Arc<ClientConfig>, io: End) -> Peer<rustls::ClientConnection> {
    Peer {
        conn: rustls::ClientConnection::new(cfg.clone(), name()).unwrap(),
        io,
    }
}

fn peer_server(cfg: &Arc<ServerConfig>, io: End) -> Peer<rustls::ServerConnection> {
    Peer {
        conn: rustls::ServerConnection::new(cfg.clone()).unwrap(),
        io,
    }
}

/// A TlsIo server with its handshake done against a buffered rustls client.
fn server_vs_peer(shape: Shape) -> (TlsIo<End>, Peer<rustls::ClientConnection>) {
    let id = identity();
    let (a, b) = pipe(shape);
    let mut peer = peer_client(&client_cfg(id), a);
    let mut server = tls_server(&server_cfg(id), b);
    let (s, c) = run2(server.handshake(), peer.handshake());
    s.unwrap();
    c.unwrap();
    (server, peer)
}

fn assert_invalid<T: std::fmt::Debug>(r: io::Result<T>) {
    match r {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

// ---------------------------------------------------------------------------
// Handshake and data.

#[test]
fn one_byte_chunks_handshake_and_data_both_ways() {
    let id = identity();
    let (mut client, mut server) = pair(BYTEWISE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    assert_eq!(version(&client), Some(ProtocolVersion::TLSv1_3));

    // Driver style: encrypt + poll_flush_tls / poll_read_more.
    let ping = data(3000, 1);
    let pong = data(2500, 2);
    let (c, s) = run2(
        async {
            send(&mut client, &ping).await?;
            recv(&mut client, pong.len()).await
        },
        async {
            let got = recv(&mut server, ping.len()).await?;
            send(&mut server, &pong).await?;
            io::Result::Ok(got)
        },
    );
    assert_eq!(c.unwrap(), pong);
    assert_eq!(s.unwrap(), ping);

    // Relay style: the AsyncRead / AsyncWrite impls.
    let (c, s) = run2(
        async {
            client.write_all(b"hello over AsyncWrite").await?;
            client.flush().await?;
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await?;
            io::Result::Ok(back)
        },
        async {
            let mut got = [0u8; 21];
            server.read_exact(&mut got).await?;
            server.write_all(b"reply").await?;
            server.flush().await?;
            io::Result::Ok(got)
        },
    );
    assert_eq!(&c.unwrap(), b"reply");
    assert_eq!(&s.unwrap(), b"hello over AsyncWrite");
}

#[test]
fn one_byte_chunks_against_buffered_rustls() {
    let id = identity();
    // TlsIo client, rustls server.
    let (a, b) = pipe(BYTEWISE);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&server_cfg(id), b);
    let (c, p) = run2(
        async {
            client.handshake().await?;
            send(&mut client, b"from TlsIo").await?;
            recv(&mut client, 11).await
        },
        async {
            peer.handshake().await?;
            let got = peer.recv(10).await?;
            peer.send(b"from rustls").await?;
            io::Result::Ok(got)
        },
    );
    assert_eq!(c.unwrap(), b"from rustls");
    assert_eq!(p.unwrap(), b"from TlsIo");

    // TlsIo server, rustls client.
    let (mut server, mut peer) = server_vs_peer(BYTEWISE);
    let (s, p) = run2(
        async {
            let got = recv(&mut server, 4).await?;
            send(&mut server, b"pong").await?;
            io::Result::Ok(got)
        },
        async {
            peer.send(b"ping").await?;
            peer.recv(4).await
        },
    );
    assert_eq!(s.unwrap(), b"ping");
    assert_eq!(p.unwrap(), b"pong");
}

#[test]
fn each_encrypt_is_its_own_record() {
    for tls12 in [false, true] {
        let id = identity();
        let scfg = if tls12 {
            server_cfg_tls12(id)
        } else {
            server_cfg(id)
        };
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &scfg);
        handshake_pair(&mut client, &mut server);
        let start = client.io.sent_len();
        let writes = client.io.writes();

        let sizes = [1usize, 2, 3, 0, 100, 1000, 16384, 16385, 20000, 7];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| data(*n, i as u64))
            .collect();
        for p in &payloads {
            client.encrypt(p).unwrap();
        }
        run(flush(&mut client)).unwrap();
        // The whole batch went out in one write.
        assert_eq!(client.io.writes(), writes + 1);

        let wire = client.io.sent()[start..].to_vec();
        let recs = records(&wire);
        let mut expect = Vec::new();
        for n in sizes {
            let mut left = n;
            while left > 0 {
                let frag = left.min(16384);
                expect.push(frag);
                left -= frag;
            }
        }
        assert_eq!(recs.len(), expect.len(), "records {recs:?}");
        let overhead = recs[0].1 - expect[0];
        assert_eq!(overhead, if tls12 { 24 } else { 17 });
        for (&(typ, len), frag) in recs.iter().zip(&expect) {
            assert_eq!(typ, 0x17);
            assert_eq!(len, frag + overhead, "records {recs:?}");
        }

        let all: Vec<u8> = payloads.concat();
        let got = run(recv(&mut server, all.len())).unwrap();
        assert_eq!(got, all);
    }
}

#[test]
fn megabyte_each_way_full_duplex() {
    let id = identity();
    let shape = Shape {
        read_chunk: 7000,
        write_chunk: 3001,
        cap: 20_000,
        stutter: true,
    };
    let (mut client, mut server) = pair(shape, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    let up = data(1 << 20, 11);
    let down = data(1 << 20, 12);
    let (c, s) = run2(
        exchange(
            &mut client,
            &up,
            &[1, 40_000, 333, 16384, 70_000, 5],
            down.len(),
        ),
        exchange(&mut server, &down, &[65_536, 17, 16385, 1200], up.len()),
    );
    assert!(c.unwrap() == down, "client received corrupted data");
    assert!(s.unwrap() == up, "server received corrupted data");
}

#[test]
fn megabyte_each_way_through_async_read_write() {
    let id = identity();
    let shape = Shape {
        read_chunk: 4096,
        write_chunk: 10_000,
        cap: 50_000,
        stutter: false,
    };
    let up = data(1 << 20, 21);
    let down = data(1 << 20, 22);

    // TlsIo client writes with AsyncWrite and closes; rustls reads to close_notify.
    let (a, b) = pipe(shape);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&server_cfg(id), b);
    let (c, p) = run2(
        async {
            client.handshake().await?;
            client.write_all(&up).await?;
            client.close().await
        },
        async {
            peer.handshake().await?;
            peer.recv_upto(None).await
        },
    );
    c.unwrap();
    assert!(p.unwrap() == up);

    // rustls sends 1 MiB and close_notify; TlsIo reads it with AsyncRead.
    let (a, b) = pipe(shape);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&server_cfg(id), b);
    let (c, p) = run2(
        async {
            client.handshake().await?;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await?;
            io::Result::Ok(got)
        },
        async {
            peer.handshake().await?;
            for piece in down.chunks(100_000) {
                peer.send(piece).await?;
            }
            peer.conn.send_close_notify();
            peer.flush().await
        },
    );
    p.unwrap();
    assert!(c.unwrap() == down);
}

#[test]
fn tls12_works() {
    let id = identity();
    let (mut client, mut server) = pair(BYTEWISE, &client_cfg(id), &server_cfg_tls12(id));
    handshake_pair(&mut client, &mut server);
    assert_eq!(version(&client), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(version(&server), Some(ProtocolVersion::TLSv1_2));
    let (c, s) = run2(
        async {
            send(&mut client, b"twelve").await?;
            recv(&mut client, 3).await
        },
        async {
            let got = recv(&mut server, 6).await?;
            send(&mut server, b"ack").await?;
            io::Result::Ok(got)
        },
    );
    assert_eq!(c.unwrap(), b"ack");
    assert_eq!(s.unwrap(), b"twelve");

    // A bigger transfer, and a close.
    let shape = Shape {
        read_chunk: 5000,
        write_chunk: 1500,
        cap: 30_000,
        stutter: true,
    };
    let (mut client, mut server) = pair(shape, &client_cfg(id), &server_cfg_tls12(id));
    handshake_pair(&mut client, &mut server);
    let up = data(300_000, 31);
    let down = data(200_000, 32);
    let (c, s) = run2(
        exchange(&mut client, &up, &[1000, 20_000], down.len()),
        exchange(&mut server, &down, &[7, 16384, 40_000], up.len()),
    );
    assert!(c.unwrap() == down);
    assert!(s.unwrap() == up);
    let (c, s) = run2(
        async {
            client.send_close_notify();
            flush(&mut client).await?;
            recv_to_eof(&mut client).await
        },
        async {
            let got = recv_to_eof(&mut server).await?;
            server.send_close_notify();
            flush(&mut server).await?;
            io::Result::Ok(got)
        },
    );
    assert!(c.unwrap().is_empty());
    assert!(s.unwrap().is_empty());
}

#[test]
fn tls12_against_buffered_rustls_with_data_in_the_last_flight() {
    let id = identity();
    // The rustls server sends data right behind its Finished, in one write.
    let (a, b) = pipe(WIDE);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&server_cfg_tls12(id), b);
    let (c, p) = run2(
        async {
            client.handshake().await?;
            recv(&mut client, 5).await
        },
        async {
            loop {
                if !peer.conn.is_handshaking() {
                    break;
                }
                if !peer.pump().await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if !peer.conn.is_handshaking() {
                    // Finished is queued but not written yet: add data.
                    peer.conn.writer().write_all(b"early")?;
                }
            }
            peer.flush().await
        },
    );
    p.unwrap();
    assert_eq!(c.unwrap(), b"early");
    assert_eq!(version(&client), Some(ProtocolVersion::TLSv1_2));

    // The rustls client writes before the handshake ends: its data follows
    // its Finished (TLS 1.3) in one write.
    let (a, b) = pipe(WIDE);
    let mut peer = peer_client(&client_cfg(id), a);
    let mut server = tls_server(&server_cfg(id), b);
    peer.conn.writer().write_all(b"piggyback").unwrap();
    let (s, p) = run2(
        async {
            server.handshake().await?;
            recv(&mut server, 9).await
        },
        peer.handshake(),
    );
    p.unwrap();
    assert_eq!(s.unwrap(), b"piggyback");
}

#[test]
fn half_rtt_data_from_server() {
    let id = identity();
    let (mut client, mut server) = pair(BYTEWISE, &client_cfg(id), &half_rtt_server_cfg(id));
    let (c, s) = run2(
        async {
            client.handshake().await?;
            let got = recv(&mut client, 4).await?;
            send(&mut client, b"ok").await?;
            io::Result::Ok(got)
        },
        async {
            // The server may write as soon as its own Finished is out.
            server.handshake().await?;
            send(&mut server, b"half").await?;
            recv(&mut server, 2).await
        },
    );
    assert_eq!(c.unwrap(), b"half");
    assert_eq!(s.unwrap(), b"ok");
}

#[test]
fn encrypt_before_the_handshake_fails() {
    let id = identity();
    let (mut client, _server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    let e = client.encrypt(b"too early").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    // Closing before the handshake queues nothing.
    let mut client = tls_client(&client_cfg(id), pipe(WIDE).0);
    client.send_close_notify();
    assert!(!client.has_pending_output());
}

// ---------------------------------------------------------------------------
// Post-handshake messages.

#[test]
fn key_update_requested_by_peer() {
    // rustls's buffered client asks for a key update; TlsIo (server) must
    // follow, and answer with its own KeyUpdate before its next data.
    let (mut server, mut peer) = server_vs_peer(Shape {
        read_chunk: 3,
        write_chunk: 100,
        cap: 1000,
        stutter: true,
    });
    for round in 0..4u8 {
        let (s, p) = run2(
            async {
                let got = recv(&mut server, 2).await?;
                let start = server.io.sent_len();
                send(&mut server, &[round]).await?;
                io::Result::Ok((got, server.io.sent()[start..].to_vec()))
            },
            async {
                // KeyUpdate(update_requested), then data under the new key:
                // once the server has the data it has processed the update.
                peer.conn.refresh_traffic_keys().map_err(invalid)?;
                peer.send(&[b'a', round]).await?;
                peer.recv(1).await
            },
        );
        let (got, wire) = s.unwrap();
        assert_eq!(got, [b'a', round]);
        assert_eq!(p.unwrap(), [round]);
        // KeyUpdate (encrypted under the old key), then the data.
        let recs = records(&wire);
        assert_eq!(recs.len(), 2, "round {round}: {recs:?}");
        assert!(recs.iter().all(|r| r.0 == 0x17));
    }

    // And the other way: rustls's buffered server asks TlsIo (client).
    let id = identity();
    let (a, b) = pipe(WIDE);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&server_cfg(id), b);
    let (c, p) = run2(
        async {
            client.handshake().await?;
            let got = recv(&mut client, 6).await?;
            let start = client.io.sent_len();
            send(&mut client, b"after").await?;
            let recs = records(&client.io.sent()[start..]);
            assert_eq!(recs.len(), 2, "KeyUpdate answer, then data: {recs:?}");
            io::Result::Ok(got)
        },
        async {
            peer.handshake().await?;
            peer.conn.refresh_traffic_keys().map_err(invalid)?;
            peer.send(b"before").await?;
            peer.recv(5).await
        },
    );
    assert_eq!(c.unwrap(), b"before");
    assert_eq!(p.unwrap(), b"after");
}

#[test]
fn session_tickets_do_not_disturb_reading() {
    // TLS 1.3: the server sends NewSessionTickets after the client's
    // Finished; the client must consume them silently and read on.
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    // Only tickets are in flight to the client now: no progress to report.
    let waker = Waker::from(Arc::new(Flag(AtomicBool::new(false))));
    let mut cx = Context::from_waker(&waker);
    assert!(client.poll_read_more(&mut cx).is_pending());
    assert!(client.plain.is_empty());
    // Idle: neither buffer is held.
    assert_eq!(client.inc.capacity(), 0);
    assert_eq!(client.out.capacity(), 0);
    run(send(&mut server, b"x")).unwrap();
    assert_eq!(run(recv(&mut client, 1)).unwrap(), b"x");
}

// ---------------------------------------------------------------------------
// Closing.

#[test]
fn close_notify_from_peer_is_eof_after_all_data() {
    for shape in [WIDE, BYTEWISE] {
        let (mut server, mut peer) = server_vs_peer(shape);
        // Data and close_notify in the same write.
        peer.conn.writer().write_all(b"last words").unwrap();
        peer.conn.send_close_notify();
        let (s, p) = run2(
            async {
                let (got, eof) = recv_upto(&mut server, None).await?;
                assert!(eof);
                // EOF is sticky.
                assert!(poll_fn(|cx| server.poll_read_more(cx)).await?);
                // Half-closed: we may still send, then close.
                send(&mut server, b"bye").await?;
                server.send_close_notify();
                flush(&mut server).await?;
                // Both closed: no more data can be sent.
                let e = server.encrypt(b"more").unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::NotConnected);
                io::Result::Ok(got)
            },
            async {
                peer.flush().await?;
                peer.recv_upto(None).await
            },
        );
        assert_eq!(s.unwrap(), b"last words");
        assert_eq!(p.unwrap(), b"bye");
    }
}

#[test]
fn close_notify_through_async_read_write() {
    let id = identity();
    let (mut client, mut server) = pair(BYTEWISE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    let (c, s) = run2(
        async {
            client.write_all(b"abc").await?;
            client.close().await?;
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await?;
            io::Result::Ok(rest)
        },
        async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await?;
            server.write_all(b"def").await?;
            server.close().await?;
            io::Result::Ok(got)
        },
    );
    // The client closed its socket's sending side after its close_notify.
    assert_eq!(s.unwrap(), b"abc");
    assert_eq!(c.unwrap(), b"def");
}

#[test]
fn socket_eof_without_close_notify_is_eof() {
    for shape in [WIDE, BYTEWISE] {
        let (mut server, mut peer) = server_vs_peer(shape);
        let (s, p) = run2(recv_upto(&mut server, None), async {
            peer.send(b"abrupt").await?;
            peer.io.close().await
        });
        p.unwrap();
        let (got, eof) = s.unwrap();
        assert!(eof);
        assert_eq!(got, b"abrupt");
    }
}

#[test]
fn socket_eof_inside_a_record_ends_without_hanging() {
    let (mut server, peer) = server_vs_peer(WIDE);
    let mut conn = peer.conn;
    conn.writer().write_all(b"whole").unwrap();
    let mut whole = Vec::new();
    conn.write_tls(&mut whole).unwrap();
    conn.writer().write_all(b"truncated").unwrap();
    let mut cut = Vec::new();
    conn.write_tls(&mut cut).unwrap();
    peer.io.inject(&whole);
    peer.io.inject(&cut[..cut.len() - 4]);
    peer.io.shut();
    // The whole record's data arrives; then the truncated one ends the
    // connection: today as a plain EOF (it could fairly be an error), never a
    // hang or a panic.
    assert_eq!(run(recv(&mut server, 5)).unwrap(), b"whole");
    match run(recv_upto(&mut server, None)) {
        Ok((rest, eof)) => assert!(eof && rest.is_empty()),
        Err(e) => assert!(matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        )),
    }
}

#[test]
fn eof_during_handshake_is_an_error() {
    let id = identity();
    for shape in [WIDE, BYTEWISE] {
        // The client sends half a ClientHello and goes away.
        let (a, b) = pipe(shape);
        let mut probe = tls_client(&client_cfg(id), pipe(WIDE).0);
        let _ = probe.process(Job::Nothing).unwrap();
        let hello = probe.out[..probe.out_len].to_vec();
        a.inject(&hello[..hello.len() / 2]);
        a.shut();
        let mut server = tls_server(&server_cfg(id), b);
        let e = run(server.handshake()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        // The server goes away without a word.
        let (a, b) = pipe(Shape {
            cap: 1 << 20,
            ..shape
        });
        b.shut();
        let mut client = tls_client(&client_cfg(id), a);
        let e = run(client.handshake()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        // The server answers half its flight, then goes away.
        let (a, b) = pipe(shape);
        let mut client = tls_client(&client_cfg(id), a);
        let mut peer = peer_server(&server_cfg(id), b);
        let (c, p) = run2(client.handshake(), async {
            let mut buf = vec![0; 4096];
            while !peer.conn.wants_write() {
                let n = peer.io.read(&mut buf).await?;
                peer.conn.read_tls(&mut &buf[..n])?;
                peer.conn.process_new_packets().map_err(invalid)?;
            }
            let mut flight = Vec::new();
            peer.conn.write_tls(&mut flight)?;
            peer.io.write_all(&flight[..flight.len() - 10]).await?;
            peer.io.close().await
        });
        p.unwrap();
        let e = c.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}

// ---------------------------------------------------------------------------
// Hostile input.

#[test]
fn garbage_after_the_handshake_is_an_error() {
    let mut fake = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    fake.extend(data(0x40, 5));
    let cases: [(&str, Vec<u8>); 4] = [
        ("random bytes", data(1000, 7)),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("record with a bad tag", fake),
        (
            "alert in the clear",
            vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
        ),
    ];
    for (what, garbage) in cases {
        for shape in [WIDE, BYTEWISE] {
            let (mut server, peer) = server_vs_peer(shape);
            peer.io.inject(&garbage);
            let r = run(recv_upto(&mut server, None));
            assert!(r.is_err(), "{what}: {r:?}");
        }
    }
}

#[test]
fn garbage_instead_of_a_handshake_is_an_error() {
    let id = identity();
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        data(20_000, 9),
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0x00],
    ] {
        let (a, b) = pipe(WIDE);
        a.inject(&garbage);
        let mut server = tls_server(&server_cfg(id), b);
        assert!(run(server.handshake()).is_err());

        let (a, b) = pipe(WIDE);
        b.inject(&garbage);
        let mut client = tls_client(&client_cfg(id), a);
        assert!(run(client.handshake()).is_err());
    }
}

#[test]
fn oversized_records_are_errors() {
    // (header length, body bytes actually sent)
    let cases = [
        (0xffff, 0),
        (0xffff, 30_000),
        (16_384 + 2048, 100),
        // Fits rustls's deframer but not TLS 1.3's ciphertext limit.
        (16_384 + 256 + 1, 16_384 + 256 + 1),
        (18_000, 18_000),
    ];
    for (len, body) in cases {
        let (mut server, peer) = server_vs_peer(Shape {
            read_chunk: 4000,
            ..WIDE
        });
        let mut rec = vec![0x17, 0x03, 0x03];
        rec.extend_from_slice(&(len as u16).to_be_bytes());
        rec.extend(data(body, 3));
        peer.io.inject(&rec);
        peer.io.shut();
        assert_invalid(run(recv_upto(&mut server, None)));
        assert!(server.inc.len() <= MAX_INCOMING + crate::budget::LARGE);
    }
}

#[test]
fn handshake_message_spread_over_tiny_records_is_bounded() {
    // A ClientHello header announcing 60000 bytes, then its body one byte
    // per record: the records take six times the message's size, beyond what
    // TlsIo buffers. It must fail, with bounded memory.
    let id = identity();
    let (a, b) = pipe(WIDE);
    let mut flood = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0xea, 0x60];
    for i in 0..60_000u32 {
        flood.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x01, i as u8]);
    }
    a.inject(&flood);
    let mut server = tls_server(&server_cfg(id), b);
    let r = run(server.handshake());
    assert_invalid(r);
    assert!(server.inc.len() <= MAX_INCOMING + crate::budget::LARGE);
}

// ---------------------------------------------------------------------------
// Large certificate chains: the Certificate message spans several records.

fn big_chain_handshake(id: &Identity, tls12: bool, shape: Shape) -> io::Result<()> {
    let scfg = if tls12 {
        server_cfg_tls12(id)
    } else {
        server_cfg(id)
    };
    let (mut client, mut server) = pair(shape, &client_cfg(id), &scfg);
    // The server speaks first, which also gets a TLS 1.2 client out of its
    // handshake (see `handshake_completes_when_the_peer_waits`).
    let (c, s) = run2(
        async {
            let r = async {
                client.handshake().await?;
                let got = recv(&mut client, 1).await?;
                send(&mut client, b"q").await?;
                io::Result::Ok(got)
            }
            .await;
            // A failed side hangs up, so that the other one ends too.
            client.io.shut();
            r
        },
        async {
            let r = async {
                server.handshake().await?;
                send(&mut server, b"a").await?;
                recv(&mut server, 1).await
            }
            .await;
            server.io.shut();
            r
        },
    );
    let (c, s) = (c?, s?);
    assert_eq!(s, b"q");
    assert_eq!(c, b"a");
    Ok(())
}

#[test]
fn certificate_chain_over_16k() {
    // ~24 KiB: a big leaf (via rcgen) and two more big certificates.
    let id = big_identity(8000, 2);
    assert!(chain_len(&id) > 20_000);
    let chunked = Shape {
        read_chunk: 777,
        write_chunk: 1000,
        cap: 3000,
        stutter: true,
    };
    for tls12 in [false, true] {
        for shape in [WIDE, chunked] {
            big_chain_handshake(&id, tls12, shape)
                .unwrap_or_else(|e| panic!("tls12 {tls12} {shape:?}: {e}"));
        }
    }
}

#[test]
fn certificate_chain_over_16k_bytewise() {
    let id = big_identity(9000, 1);
    assert!(chain_len(&id) > 17_000);
    big_chain_handshake(&id, false, BYTEWISE).unwrap();
}

#[test]
fn certificate_chain_of_40k() {
    let id = big_identity(10_000, 3);
    assert!(chain_len(&id) > 40_000);
    for tls12 in [false, true] {
        big_chain_handshake(&id, tls12, WIDE).unwrap();
    }
}

#[test]
fn certificate_chain_of_56k() {
    let id = big_identity(14_000, 3);
    let len = chain_len(&id);
    assert!(len > 56_000 && len < 0xffff - 1000, "{len}");
    // rustls's own buffered client takes it from a TlsIo server.
    let (a, b) = pipe(WIDE);
    let mut peer = peer_client(&client_cfg(&id), a);
    let mut server = tls_server(&server_cfg(&id), b);
    let (s, p) = run2(server.handshake(), peer.handshake());
    s.unwrap();
    p.unwrap();
    // So does TlsIo's client while its reads stay small...
    let small_reads = Shape {
        read_chunk: 1000,
        ..WIDE
    };
    big_chain_handshake(&id, false, small_reads).unwrap();
    // ...but not once `read_size` has grown to 32 KiB: "TLS message too large".
    for tls12 in [false, true] {
        big_chain_handshake(&id, tls12, WIDE).unwrap_or_else(|e| panic!("tls12 {tls12}: {e}"));
    }
}

// ---------------------------------------------------------------------------
// Regression tests for bugs found in review (fixed).

#[test]
fn handshake_completes_when_the_peer_waits() {
    let id = identity();
    // TLS 1.2: the client's handshake ends on the server's Finished, which
    // needs no answer; the server then waits for the client to speak (as an
    // AnyTLS server does).
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg_tls12(id));
    let (c, s) = run2(
        async {
            client.handshake().await?;
            send(&mut client, b"client speaks first").await
        },
        async {
            server.handshake().await?;
            recv(&mut server, 19).await
        },
    );
    c.unwrap();
    assert_eq!(s.unwrap(), b"client speaks first");

    // TLS 1.3 without session tickets: the server's handshake ends on the
    // client's Finished and sends nothing; the client waits for the server.
    let mut scfg = tls::server_config(id, &[]).unwrap();
    scfg.send_tls13_tickets = 0;
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &Arc::new(scfg));
    let (c, s) = run2(
        async {
            client.handshake().await?;
            recv(&mut client, 19).await
        },
        async {
            server.handshake().await?;
            send(&mut server, b"server speaks first").await
        },
    );
    assert_eq!(c.unwrap(), b"server speaks first");
    s.unwrap();
}

#[test]
fn calls_after_a_failure_fail_again_without_panicking() {
    for garbage in [data(100, 7), vec![0x17, 0x03, 0x03, 0x00, 0x20, 0x00]] {
        let (mut server, peer) = server_vs_peer(WIDE);
        let mut garbage = garbage;
        if garbage.len() < 37 {
            garbage.resize(37, 0xaa);
        }
        peer.io.inject(&garbage);
        assert!(run(recv_upto(&mut server, None)).is_err());
        // Whatever comes next must fail too, not panic.
        assert!(server.encrypt(b"x").is_err());
        server.send_close_notify();
        peer.io.shut();
        assert!(run(recv_upto(&mut server, None)).is_err());
    }
}

// ---------------------------------------------------------------------------
// Resources of a busy spell (found by review: an idle connection kept its
// large-I/O slot and a 96 KiB read buffer).

#[test]
fn a_quiet_connection_gives_back_its_buffers_and_slot() {
    let id = identity();
    for extra in [0, 6144, 20_480] {
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        let n = 256 * 1024 + extra;
        let d = vec![7u8; n];
        let (s, c) = run2(send(&mut server, &d), recv(&mut client, n));
        s.unwrap();
        assert_eq!(c.unwrap().len(), n);
        // The transfer is over; the socket has nothing more.
        let waker = Waker::from(Arc::new(Flag(AtomicBool::new(false))));
        let mut cx = Context::from_waker(&waker);
        assert!(client.poll_read_more(&mut cx).is_pending());
        // Depending on how the last reads fell, the busy spell may have left
        // a buffer, the read size or the slot behind: all go now.
        client.release_busy_resources();
        assert!(!client.holds_busy_resources());
        assert_eq!(client.sizer.max(), crate::budget::REGULAR);
        assert_eq!(client.inc.capacity(), 0);
        // And it still works afterwards.
        let (s, c) = run2(send(&mut server, b"again"), recv(&mut client, 5));
        s.unwrap();
        assert_eq!(c.unwrap(), b"again");
    }
}

// ---------------------------------------------------------------------------
// The driver's batches (`conn::encrypt_batch`): shaped transmits are records
// of their own; bulk data leaves in full 16 KiB records.

/// Plaintext sizes of the TLS 1.3 records queued in `t`'s output (which is
/// then handed to the peer at once, bypassing the pipe's limit).
fn take_records(t: &mut TlsIo<End>) -> Vec<usize> {
    let mut sizes = Vec::new();
    t.io.inject(&t.out[t.out_pos..t.out_len]);
    let mut rest = &t.out[t.out_pos..t.out_len];
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        // Content type byte and AEAD tag.
        sizes.push(len - 17);
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "a partial record");
    t.out_pos = 0;
    t.out_len = 0;
    sizes
}

#[test]
fn shaped_transmits_stay_alone_and_bulk_data_fills_whole_records() {
    use anytls_core::{PaddingScheme, Session, SessionSeq, SocksAddr};
    use std::time::Instant;

    let id = identity();
    let (mut tls, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut tls, &mut server);
    let now = Instant::now();
    // Transmits of at most 5 000 bytes: only coalescing makes full records.
    let mut cfg = anytls_core::ClientConfig::new("pw");
    cfg.limits.max_write = 5000;
    let cfg = Arc::new(cfg);
    let session = || {
        Session::client(
            cfg.clone(),
            SessionSeq(1),
            Arc::new(PaddingScheme::default_scheme()),
            [9; 32],
            now,
        )
        .expect("valid config")
    };
    // Two identical sessions: one shows the transmits, the other goes
    // through the driver's batching.
    let (mut twin, mut s) = (session(), session());
    let dest = SocksAddr::domain("example.com", 443);
    let (a, b) = (
        twin.open_stream(now, &dest).unwrap(),
        s.open_stream(now, &dest).unwrap(),
    );
    let mut shaped = Vec::new();
    let mut total = 0;
    let mut wire = Vec::new();
    let mut records = Vec::new();
    let mut staging = BytesMut::new();
    let mut shaping = true;
    for i in 0..40u8 {
        let data = bytes::Bytes::from(vec![i; 20_000]);
        assert_eq!(twin.write(a, &data).unwrap(), data.len());
        assert_eq!(s.write(b, &data).unwrap(), data.len());
        let mut buf = BytesMut::new();
        while let Some(t) = twin.poll_transmit(now, &mut buf) {
            if t.shaped {
                shaped.push(t.len);
            }
            total += t.len;
        }
        wire.extend_from_slice(&buf);
        loop {
            let pull = |out: &mut dyn anytls_core::TransmitBuf, staged: usize, budget: usize| {
                let p =
                    crate::conn::pull_transmits(|b| s.poll_transmit(now, b), out, staged, budget);
                (p, s.may_shape())
            };
            let n = crate::conn::encrypt_batch(pull, &mut shaping, &mut tls, &mut staging).unwrap();
            if n == 0 {
                break;
            }
            records.push(take_records(&mut tls));
        }
    }
    let flat: Vec<usize> = records.iter().flatten().copied().collect();
    assert_eq!(flat.iter().sum::<usize>(), total, "every byte, once");
    // The padding phase: each shaped transmit is its own record(s) (one,
    // unless it is longer than a record), never shared with other bytes.
    assert!(shaped.len() >= 3, "{shaped:?}");
    let mut i = 0;
    for n in &shaped {
        let mut got = 0;
        while got < *n {
            got += flat[i];
            i += 1;
        }
        assert_eq!(
            got, *n,
            "a record crosses a shaped transmit's end: {shaped:?} {flat:?}"
        );
    }
    // Then bulk data: within a batch, every record but the last is full.
    let mut full = 0;
    let mut after = flat.len() - i;
    for batch in records.iter().rev() {
        if after == 0 {
            break;
        }
        let n = batch.len().min(after);
        let tail = &batch[batch.len() - n..];
        for r in &tail[..tail.len().saturating_sub(1)] {
            assert_eq!(*r, 16384, "a short record inside a batch: {batch:?}");
            full += 1;
        }
        after -= n;
    }
    assert!(full >= 30, "{full} full records");
    // Written straight into records once the padding phase was over.
    assert!(!shaping);
    assert!(own_records(&tls));
    // And the peer reads every byte the twin session sent, in order.
    assert!(run(recv(&mut server, total)).unwrap() == wire);
}

// ---------------------------------------------------------------------------
// Direct batches (`TlsIo::start_direct`, `direct_buf`, `seal_direct`), used
// the way `conn::encrypt_batch` uses them: pieces put, full records sealed
// after each, the last one at the end.

/// Runs one direct batch of `pieces` on `t`; returns the plaintext sizes of
/// the records it queued (handed to the peer, see `take_records`).
fn direct_batch(t: &mut TlsIo<End>, pieces: &[&[u8]]) -> Vec<usize> {
    let mut d = t.start_direct().unwrap().expect("records done here");
    for p in pieces {
        t.direct_buf(&mut d).put(p);
        t.seal_direct(&mut d, false).unwrap();
    }
    t.seal_direct(&mut d, true).unwrap();
    take_records(t)
}

/// Record sizes the staged path gives one batch of `total` bytes: full
/// records, then the rest.
fn staged_layout(total: usize) -> Vec<usize> {
    let mut v = vec![16384; total / 16384];
    if total % 16384 > 0 {
        v.push(total % 16384);
    }
    v
}

#[test]
fn direct_batches_lay_out_records_as_the_staged_path_and_decrypt() {
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    assert!(own_records(&client));
    let cases: &[&[usize]] = &[
        &[],
        &[0],
        &[0, 0],
        &[1],
        &[16384],
        &[16384, 16384],
        &[16383, 1],
        &[16383, 1, 0],
        &[16383, 2],
        &[10_000, 6384, 16384],
        &[10_000, 6384, 16384, 1],
        &[40_000],
        &[5000; 13],
        &[65_536, 7],
        &[1, 16384, 16383, 16385],
    ];
    let mut wire = Vec::new();
    for (i, sizes) in cases.iter().enumerate() {
        let pieces: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(j, n)| data(*n, (i * 100 + j) as u64))
            .collect();
        let refs: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
        let total = sizes.iter().sum();
        let got = direct_batch(&mut client, &refs);
        assert_eq!(got, staged_layout(total), "batch {sizes:?}");
        wire.extend(pieces.concat());
        // An empty batch queues nothing at all.
        if total == 0 {
            assert!(got.is_empty());
        }
    }
    assert!(run(recv(&mut server, wire.len())).unwrap() == wire);
}

#[test]
fn direct_batches_renew_the_send_key_before_it_could_run_out() {
    // The key has 2^17 records (the least a direct batch takes); 2^16 of
    // them are gone: a batch could reach the end, so a KeyUpdate leads it.
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    records_of(&mut client).0.set_tx_limit(1 << 17);
    // One record short of that: no KeyUpdate yet.
    records_of(&mut client).0.skip_records((1 << 16) - 1, 0);
    records_of(&mut server).0.skip_records(0, (1 << 16) - 1);
    let a = data(40_000, 1);
    assert_eq!(direct_batch(&mut client, &[&a]), [16384, 16384, 7232]);
    // Three records later it is due: KeyUpdate (5 bytes of body), then the
    // batch under the new key.
    let b = data(20_000, 2);
    assert_eq!(
        direct_batch(&mut client, &[&b[..9000], &b[9000..]]),
        [5, 16384, 3616]
    );
    let c = data(100, 3);
    assert_eq!(direct_batch(&mut client, &[&c]), [100]);
    let want = [a, b, c].concat();
    assert!(run(recv(&mut server, want.len())).unwrap() == want);
}

#[test]
fn a_direct_batch_answers_a_key_update_request_first() {
    // rustls's client asks for a KeyUpdate; the server's next direct batch
    // starts with its own, and rustls reads the data under the new key.
    let (mut server, mut peer) = server_vs_peer(WIDE);
    assert!(own_records(&server));
    for round in 0..3u8 {
        let (s, p) = run2(recv(&mut server, 2), async {
            peer.conn.refresh_traffic_keys().map_err(invalid)?;
            peer.send(&[b'a', round]).await
        });
        assert_eq!(s.unwrap(), [b'a', round]);
        p.unwrap();
        let bulk = data(30_000 + usize::from(round), u64::from(round));
        // Round 1: an empty batch sends the answer on its own.
        if round == 1 {
            assert_eq!(direct_batch(&mut server, &[]), [5]);
            assert_eq!(direct_batch(&mut server, &[&bulk]), [16384, 13617]);
        } else {
            assert_eq!(
                direct_batch(&mut server, &[&bulk]),
                [5, 16384, 13616 + usize::from(round)]
            );
        }
        assert!(run(peer.recv(bulk.len())).unwrap() == bulk);
    }
}

#[test]
fn a_failed_direct_seal_queues_no_unsealed_bytes() {
    // A seal that fails mid-batch or at its end fails the connection; the
    // output must not then hold the batch's plaintext (a caller that
    // flushes what is queued would put it on the wire in the clear).
    let id = identity();
    for finish in [false, true] {
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        let secret = vec![0x5a; 20_000];
        let mut d = client.start_direct().unwrap().unwrap();
        let base = client.out_len;
        client.direct_buf(&mut d).put(&secret[..10_000]);
        if finish {
            // The first record is full and sealed; the last one fails.
            client.direct_buf(&mut d).put(&secret[10_000..]);
            client.seal_direct(&mut d, false).unwrap();
            records_of(&mut client).0.set_tx_limit(0);
            assert!(client.seal_direct(&mut d, true).is_err());
        } else {
            records_of(&mut client).0.set_tx_limit(0);
            client.direct_buf(&mut d).put(&secret[10_000..]);
            assert!(client.seal_direct(&mut d, false).is_err());
        }
        let queued = &client.out[client.out_pos..client.out_len];
        assert!(
            !queued.windows(64).any(|w| w == &secret[..64]),
            "finish {finish}: plaintext queued for the socket"
        );
        assert_eq!(client.out_len, base, "finish {finish}");
        // And the connection stays failed.
        assert!(client.start_direct().is_err());
        assert!(client.encrypt(b"x").is_err());
    }
}

#[test]
fn decrypted_data_comes_in_one_block_per_record() {
    // The session keeps views into these blocks: none may be larger than a
    // record, or a small view could pin a whole socket read (SECURITY.md).
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    let n = 100_000;
    let (s, got) = run2(send(&mut server, &vec![3u8; n]), async {
        let mut blocks = Vec::new();
        let mut total = 0;
        while total < n {
            let more = poll_fn(|cx| client.poll_read_more(cx)).await?;
            assert!(!more, "EOF");
            for b in client.plain.take_blocks() {
                total += b.len();
                blocks.push((b.len(), b.capacity()));
            }
        }
        io::Result::Ok(blocks)
    });
    s.unwrap();
    let blocks = got.unwrap();
    assert!(blocks.len() >= n / 16384, "{blocks:?}");
    for (len, cap) in blocks {
        assert!(
            len <= 16384 && cap <= 16384,
            "a block of {len} bytes ({cap} allocated)"
        );
    }
}

// ---------------------------------------------------------------------------
// TLS 1.3 records sealed and opened by `record.rs` after the handshake.

/// `t`'s own record layer (the test fails when rustls still has it).
fn records_of(t: &mut TlsIo<End>) -> (&mut record::Records, &mut Vec<u8>, &mut usize) {
    match &mut t.tls {
        Tls::Records(r) => (r, &mut t.out, &mut t.out_len),
        _ => panic!("records are still done by rustls"),
    }
}

/// Seals `inner` (content, content type, padding) as one record from `t`.
fn send_raw(t: &mut TlsIo<End>, inner: &[u8]) {
    let (r, out, len) = records_of(t);
    r.seal_raw(inner, out, len);
    run(flush(t)).unwrap();
}

fn unflagged_client(id: &Identity) -> Arc<ClientConfig> {
    let mut c = (*client_cfg(id)).clone();
    c.enable_secret_extraction = false;
    Arc::new(c)
}

#[test]
fn tls13_records_are_done_here_tls12_and_unflagged_configs_stay_with_rustls() {
    let id = identity();
    let a = data(300_000, 1);
    let b = data(200_000, 2);
    let cases = [
        (client_cfg(id), server_cfg(id), true, true),
        (client_cfg(id), server_cfg_tls12(id), false, false),
        (unflagged_client(id), server_cfg(id), false, true),
    ];
    for (ccfg, scfg, client_own, server_own) in cases {
        for shape in [WIDE, BYTEWISE] {
            let (mut client, mut server) = pair(shape, &ccfg, &scfg);
            handshake_pair(&mut client, &mut server);
            assert_eq!(own_records(&client), client_own);
            assert_eq!(own_records(&server), server_own);
            let (c, s) = run2(
                exchange(&mut client, &a, &[1, 16_384, 40_000, 7], b.len()),
                exchange(&mut server, &b, &[16_383, 3, 100_000], a.len()),
            );
            assert!(c.unwrap() == b, "client got the server's bytes");
            assert!(s.unwrap() == a, "server got the client's bytes");
        }
    }
    // The configurations this crate builds carry the flag; a server's own
    // configuration gets it in a copy.
    assert!(client_cfg(id).enable_secret_extraction);
    assert!(server_cfg(id).enable_secret_extraction);
    let mut own = (*server_cfg(id)).clone();
    own.enable_secret_extraction = false;
    let built = tls::ServerTls::Rustls(Arc::new(own)).build(&[]).unwrap();
    assert!(built.enable_secret_extraction);
}

#[test]
fn our_records_match_rustls_record_for_record() {
    // The same encrypts give the same record sizes from both record layers.
    let id = identity();
    let sizes = [1, 7, 16_383, 16_384, 16_385, 40_000, 100];
    let mut wires = Vec::new();
    for ccfg in [client_cfg(id), unflagged_client(id)] {
        let (mut client, mut server) = pair(WIDE, &ccfg, &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        let start = client.io.sent_len();
        for (i, n) in sizes.iter().enumerate() {
            run(send(&mut client, &data(*n, i as u64))).unwrap();
        }
        client.send_close_notify();
        run(flush(&mut client)).unwrap();
        let total: usize = sizes.iter().sum();
        let got = run(recv_to_eof(&mut server)).unwrap();
        assert_eq!(got.len(), total);
        wires.push(records(&client.io.sent()[start..]));
    }
    assert_eq!(wires[0], wires[1]);
}

#[test]
fn our_key_updates_reach_rustls_and_ourselves() {
    // Send keys renewed every 2 records (instead of the suite's 2^24).
    let (mut server, mut peer) = server_vs_peer(WIDE);
    records_of(&mut server).0.set_tx_limit(2);
    let bulk = data(200_000, 5);
    let (s, p) = run2(
        async {
            for piece in bulk.chunks(30_000) {
                send(&mut server, piece).await?;
            }
            recv(&mut server, 3).await
        },
        async {
            let got = peer.recv(bulk.len()).await?;
            peer.send(b"ack").await?;
            io::Result::Ok(got)
        },
    );
    assert_eq!(s.unwrap(), b"ack");
    assert!(p.unwrap() == bulk);

    // TlsIo against TlsIo, both renewing every record, both ways.
    let id = identity();
    let (mut client, mut server) = pair(BYTEWISE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    records_of(&mut client).0.set_tx_limit(1);
    records_of(&mut server).0.set_tx_limit(1);
    let a = data(70_000, 8);
    let b = data(50_000, 9);
    let (c, s) = run2(
        exchange(&mut client, &a, &[5_000, 20_000], b.len()),
        exchange(&mut server, &b, &[16_384, 1], a.len()),
    );
    assert!(c.unwrap() == b);
    assert!(s.unwrap() == a);
}

#[test]
fn post_handshake_messages_and_alerts() {
    let id = identity();
    // A session ticket split over two records, a user_canceled alert, and a
    // padded record: all taken, data flows on.
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    let ticket = [
        4, 0, 0, 17, // NewSessionTicket, 17 bytes
        0, 0, 0, 60, // lifetime
        0, 0, 0, 1, // age_add
        1, 7, // nonce
        0, 3, 1, 2, 3, // ticket
        0, 0, // no extensions
    ];
    send_raw(&mut server, &[&ticket[..6], &[22]].concat());
    send_raw(&mut server, &[&ticket[6..], &[22]].concat());
    send_raw(&mut server, &[1, 90, 21]);
    send_raw(&mut server, &[b'o', b'k', 23, 0, 0, 0, 0]);
    assert_eq!(run(recv(&mut client, 2)).unwrap(), b"ok");

    // What a peer must not send once the handshake is over.
    let bad: [&[u8]; 9] = [
        &[1, 40, 21],             // handshake_failure alert
        &[1, 21],                 // malformed alert
        &[0, 0, 0],               // no content type
        &[1, 20],                 // ChangeCipherSpec inside a record
        &[24, 0, 0, 1, 5, 22],    // malformed KeyUpdate
        &[24, 0, 0, 1, 0, 1, 22], // KeyUpdate not ending its record
        &[2, 0, 0, 0, 22],        // ServerHello
        &[4, 0, 0, 0, 22],        // NewSessionTicket to a server
        &[4, 0, 0, 9, 0, 22],     // the start of a message, then data:
    ];
    for (i, inner) in bad.iter().enumerate() {
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        send_raw(&mut client, inner);
        if i == 8 {
            send_raw(&mut client, &[b'x', 23]);
        }
        assert_invalid(run(recv_upto(&mut server, None)));
        // Failed for good, without panicking.
        assert!(server.encrypt(b"x").is_err());
    }

    // A record tampered with on the wire, and a ChangeCipherSpec record.
    for tamper in [true, false] {
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        let start = client.io.sent_len();
        client.encrypt(b"hello").unwrap();
        let (r, out, len) = records_of(&mut client);
        let _ = r;
        let mut rec = out[..*len].to_vec();
        *len = 0;
        assert_eq!(client.io.sent_len(), start);
        if tamper {
            rec[7] ^= 1;
        } else {
            rec = vec![20, 3, 3, 0, 1, 1];
        }
        client.io.inject(&rec);
        assert_invalid(run(recv_upto(&mut server, None)));
    }

    // A handshake message claimed larger than any allowed.
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    send_raw(&mut client, &[4, 0x02, 0, 0, 1, 22]);
    assert_invalid(run(recv_upto(&mut server, None)));
}

#[test]
fn close_notify_ends_input_and_later_records_are_ignored() {
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    send_raw(&mut client, &[b'a', 23]);
    send_raw(&mut client, &[1, 0, 21]);
    send_raw(&mut client, &[b'b', 23]);
    assert_eq!(run(recv_to_eof(&mut server)).unwrap(), b"a");
    assert!(own_records(&server));
}

// ---------------------------------------------------------------------------
// Review of the switch to `record.rs` and of its record layer.

/// `assert_invalid` for reads, naming only how much was read.
fn assert_refused(r: io::Result<(Vec<u8>, bool)>) {
    match r {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
        Ok((got, eof)) => panic!("expected an error, got {} bytes (eof: {eof})", got.len()),
    }
}

/// Reads once from `peer`'s socket and feeds rustls, without writing
/// anything back (unlike `Peer::pump`); `false` at EOF.
async fn pump_quietly<C, S>(peer: &mut Peer<C>) -> io::Result<bool>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let mut buf = vec![0; 1 << 16];
    let n = peer.io.read(&mut buf).await?;
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        peer.conn.read_tls(&mut rest)?;
        peer.conn.process_new_packets().map_err(invalid)?;
    }
    Ok(n > 0)
}

/// Everything rustls has to send, as one byte string.
fn pending_tls<C, S>(conn: &mut C) -> Vec<u8>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let mut v = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut v).unwrap();
    }
    v
}

#[test]
fn review_key_update_request_with_the_clients_finished_is_answered() {
    // The client's Finished and a KeyUpdate(update_requested) arrive in one
    // read. rustls (still in charge) answers the request by queueing its
    // own KeyUpdate (sealed under the old key, sent before its next record)
    // and switching to the new send key; the queued message is not in
    // `sendable_tls`, so `eligible()` says yes and the queue is dropped with
    // the connection: our next records use a key the peer never heard of.
    // Without tickets to send, rustls reads on past the Finished in the same
    // `process_tls_records` call.
    let id = identity();
    for tickets in [2, 0] {
        let mut scfg = tls::server_config(id, &[]).unwrap();
        scfg.send_tls13_tickets = tickets;
        let (a, b) = pipe(WIDE);
        let mut peer = peer_client(&client_cfg(id), a);
        let mut server = tls_server(&Arc::new(scfg), b);
        let (s, p) = run2(
            async {
                server.handshake().await?;
                send(&mut server, b"hello").await
            },
            async {
                peer.flush().await?;
                while peer.conn.is_handshaking() {
                    if !pump_quietly(&mut peer).await? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                // Finished, then KeyUpdate(update_requested): one write.
                peer.conn.refresh_traffic_keys().map_err(invalid)?;
                peer.flush().await?;
                peer.recv(5).await
            },
        );
        s.unwrap();
        assert_eq!(
            p.unwrap(),
            b"hello",
            "tickets {tickets}: the peer reads our records"
        );
        assert!(own_records(&server));
        let (s, p) = run2(recv(&mut server, 2), peer.send(b"ok"));
        p.unwrap();
        assert_eq!(s.unwrap(), b"ok");
    }
}

#[test]
fn review_key_update_request_before_the_clients_switch_is_answered() {
    // Client side. The server's last flight ends in the middle of a record
    // (half-RTT data), so the client stays with rustls after its handshake.
    // rustls then reads the rest of that record, the tickets and a
    // KeyUpdate(update_requested) and queues its answer; the switch that
    // follows loses it.
    let id = identity();
    let (a, b) = pipe(WIDE);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&half_rtt_server_cfg(id), b);
    let (c, p) = run2(
        async {
            client.handshake().await?;
            let got = recv(&mut client, 10).await?;
            send(&mut client, b"ok").await?;
            io::Result::Ok(got)
        },
        async {
            pump_quietly(&mut peer).await?; // ClientHello
            peer.conn.writer().write_all(b"half")?;
            let flight = pending_tls(&mut peer.conn);
            let (head, last) = flight.split_at(flight.len() - 1);
            peer.io.write_all(head).await?;
            while peer.conn.is_handshaking() {
                if !pump_quietly(&mut peer).await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            // The record's last byte, the tickets, KeyUpdate(update_requested)
            // and data under the new key, in one write.
            peer.conn.refresh_traffic_keys().map_err(invalid)?;
            peer.conn.writer().write_all(b"second")?;
            let rest = [last, &pending_tls(&mut peer.conn)].concat();
            peer.io.write_all(&rest).await?;
            peer.recv(2).await
        },
    );
    assert_eq!(c.unwrap(), b"halfsecond");
    assert_eq!(p.unwrap(), b"ok", "the peer reads our records");
}

#[test]
fn review_switch_does_not_wait_for_a_read_to_end_on_a_record_boundary() {
    // The server's last flight and a record of half-RTT data, cut inside the
    // data record: the client's handshake is over, yet its records stay
    // with rustls until some read happens to end on a record boundary.
    let id = identity();
    let (a, b) = pipe(WIDE);
    let mut client = tls_client(&client_cfg(id), a);
    let mut peer = peer_server(&half_rtt_server_cfg(id), b);
    let (c, p) = run2(client.handshake(), async {
        pump_quietly(&mut peer).await?;
        peer.conn.writer().write_all(b"half")?;
        let flight = pending_tls(&mut peer.conn);
        peer.io.write_all(&flight[..flight.len() - 1]).await?;
        io::Result::Ok(())
    });
    c.unwrap();
    p.unwrap();
    assert!(
        own_records(&client),
        "still with rustls after the handshake"
    );
}

/// `aead` of ring, but its keys cannot be extracted.
struct NoExtract(&'static dyn rustls::crypto::cipher::Tls13AeadAlgorithm);

impl rustls::crypto::cipher::Tls13AeadAlgorithm for NoExtract {
    fn encrypter(
        &self,
        key: rustls::crypto::cipher::AeadKey,
        iv: rustls::crypto::cipher::Iv,
    ) -> Box<dyn rustls::crypto::cipher::MessageEncrypter> {
        self.0.encrypter(key, iv)
    }

    fn decrypter(
        &self,
        key: rustls::crypto::cipher::AeadKey,
        iv: rustls::crypto::cipher::Iv,
    ) -> Box<dyn rustls::crypto::cipher::MessageDecrypter> {
        self.0.decrypter(key, iv)
    }

    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn extract_keys(
        &self,
        _key: rustls::crypto::cipher::AeadKey,
        _iv: rustls::crypto::cipher::Iv,
    ) -> Result<rustls::ConnectionTrafficSecrets, rustls::crypto::cipher::UnsupportedOperationError>
    {
        Err(rustls::crypto::cipher::UnsupportedOperationError)
    }
}

#[test]
fn review_a_suite_whose_keys_cannot_be_extracted_stays_with_rustls() {
    // A provider of one's own (ServerTls::Rustls, ClientConfig::tls_config)
    // may have TLS 1.3 suites whose AEAD does not hand out its keys (a
    // hardware or FIPS module, AES-CCM...). `eligible()` only looks at the
    // version, so the conversion is attempted, fails, and takes the
    // connection with it.
    let id = identity();
    let base = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .unwrap();
    let suite: &'static rustls::Tls13CipherSuite = Box::leak(Box::new(rustls::Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg: Box::leak(Box::new(NoExtract(base.aead_alg))),
        quic: None,
    }));
    let mut provider = (*tls::provider()).clone();
    provider.cipher_suites = vec![rustls::SupportedCipherSuite::Tls13(suite)];
    let mut scfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .unwrap();
    scfg.enable_secret_extraction = true;
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &Arc::new(scfg));
    handshake_pair(&mut client, &mut server);
    assert!(!own_records(&server));
    let (c, s) = run2(
        exchange(&mut client, b"ping", &[4], 4),
        exchange(&mut server, b"pong", &[4], 4),
    );
    assert_eq!(c.unwrap(), b"pong");
    assert_eq!(s.unwrap(), b"ping");
}

#[test]
fn review_our_key_update_takes_the_last_sequence_number_of_the_old_key() {
    // rustls seals at most `confidentiality_limit` records under one key,
    // the KeyUpdate included (it takes the last sequence number). Here the
    // KeyUpdate comes after `limit` data records: one record too many.
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    let limit = 3;
    records_of(&mut client).0.set_tx_limit(limit);
    let start = client.io.sent_len();
    for i in 0..10u8 {
        run(send(&mut client, &[i; 100])).unwrap();
    }
    let got = run(recv(&mut server, 1000)).unwrap();
    assert_eq!(got.len(), 1000);
    // Record bodies: data 100 + 1 + 16; KeyUpdate 5 + 1 + 16.
    let recs = records(&client.io.sent()[start..]);
    let mut under_one_key = 0;
    for (i, &(typ, len)) in recs.iter().enumerate() {
        assert_eq!(typ, 23);
        under_one_key += 1;
        assert!(
            under_one_key <= limit,
            "record {i}: {under_one_key} records under one key: {recs:?}"
        );
        if len == 22 {
            under_one_key = 0;
        }
    }
}

#[test]
fn review_records_that_make_no_progress_are_limited_as_rustls_limits_them() {
    // rustls refuses more than 32 KeyUpdates in a row without application
    // data, more than 32 empty records in a row, and more than 4 warning
    // alerts: each costs a decryption (a KeyUpdate an HKDF and a key
    // schedule too) and yields nothing, so `poll_read_more` keeps reading.
    // Here all are taken without limit.
    let (mut server, mut peer) = server_vs_peer(WIDE);
    for _ in 0..100 {
        peer.conn.refresh_traffic_keys().map_err(invalid).unwrap();
    }
    peer.conn.writer().write_all(b"x").unwrap();
    peer.conn.send_close_notify();
    run(peer.flush()).unwrap();
    assert_refused(run(recv_upto(&mut server, None)));

    let id = identity();
    let empty: &[u8] = &[23];
    let user_canceled: &[u8] = &[1, 90, 21];
    for (inner, times) in [(empty, 100), (user_canceled, 5)] {
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        for _ in 0..times {
            send_raw(&mut client, inner);
        }
        send_raw(&mut client, &[1, 0, 21]);
        assert_refused(run(recv_upto(&mut server, None)));
    }
}

#[test]
fn review_inner_plaintext_over_2_14_plus_1_is_record_overflow() {
    // RFC 8446 5.2/5.4: TLSInnerPlaintext (content, type, padding) is at most
    // 2^14 + 1 bytes; rustls checks it before removing the padding.
    let id = identity();
    let full = vec![b'a'; MAX_RECORD - 5 - 256];
    // At the limit: taken.
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    send_raw(&mut client, &[&full[..], &[23]].concat());
    assert_eq!(run(recv(&mut server, full.len())).unwrap(), full);
    // Padded past it: record_overflow.
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    send_raw(&mut client, &[&full[..], &[23], &[0; 100]].concat());
    send_raw(&mut client, &[1, 0, 21]);
    assert_refused(run(recv_upto(&mut server, None)));
}

#[test]
fn review_max_fragment_size_of_ones_own_configuration_is_kept() {
    // `ClientConfig::tls_config` / `ServerTls::Rustls` may set
    // `max_fragment_size` (records smaller than 16 KiB, e.g. under the MSS):
    // rustls honours it, `record.rs` does not.
    let id = identity();
    let mut wires = Vec::new();
    for extract in [true, false] {
        let mut ccfg = (*client_cfg(id)).clone();
        ccfg.max_fragment_size = Some(1400);
        ccfg.enable_secret_extraction = extract;
        let (mut client, mut server) = pair(WIDE, &Arc::new(ccfg), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        let start = client.io.sent_len();
        run(send(&mut client, &data(5000, 1))).unwrap();
        assert_eq!(run(recv(&mut server, 5000)).unwrap(), data(5000, 1));
        wires.push(records(&client.io.sent()[start..]));
    }
    assert_eq!(wires[0], wires[1]);
}

#[test]
fn review_nothing_is_lost_or_doubled_around_the_switch() {
    // Fragmented tickets (a server with small records), half-RTT data and
    // data after the tickets, read in chunks of many sizes: every byte
    // arrives once, the client ends with its own records, and the tickets
    // it stored resume the next session.
    let id = identity();
    let ccfg = client_cfg(id);
    for chunk in [1, 7, 50, 333, 4096, 1 << 20] {
        let mut scfg = tls::server_config(id, &[]).unwrap();
        scfg.max_fragment_size = Some(64);
        scfg.send_half_rtt_data = true;
        scfg.enable_secret_extraction = false;
        let scfg = Arc::new(scfg);
        let shape = Shape {
            read_chunk: chunk,
            ..WIDE
        };
        let (mut client, mut server) = pair(shape, &ccfg, &scfg);
        let a = data(40_000, 3);
        let (c, s) = run2(
            async {
                client.handshake().await?;
                let half = recv(&mut client, 4).await?;
                send(&mut client, b"done").await?;
                let rest = recv(&mut client, a.len() - (half.len() - 4)).await?;
                io::Result::Ok([half, rest].concat())
            },
            async {
                server.handshake().await?;
                send(&mut server, b"half").await?;
                // The client's Finished comes before "done": the tickets
                // go out before `a`.
                let got = recv(&mut server, 4).await?;
                send(&mut server, &a).await?;
                io::Result::Ok(got)
            },
        );
        let c = c.unwrap();
        assert_eq!(&c[..4], b"half", "chunk {chunk}");
        assert!(c[4..] == a[..], "chunk {chunk}");
        assert_eq!(s.unwrap(), b"done");
        assert!(own_records(&client), "chunk {chunk}");

        // Resumption with a ticket the client took.
        let (mut client, mut server) = pair(shape, &ccfg, &scfg);
        handshake_pair(&mut client, &mut server);
        match &server.tls {
            Tls::Server { conn, .. } => assert_eq!(
                conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "chunk {chunk}"
            ),
            _ => panic!("the server stays with rustls"),
        }
    }
}

#[test]
fn review_key_update_fragmented_over_two_records_is_taken() {
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    // KeyUpdate(update_not_requested), header in one record, body in the
    // next; then data under the new key.
    send_raw(&mut client, &[24, 0, 0, 22]);
    send_raw(&mut client, &[1, 0, 22]);
    records_of(&mut client).0.next_tx_key();
    run(send(&mut client, b"after")).unwrap();
    assert_eq!(run(recv(&mut server, 5)).unwrap(), b"after");
}

#[test]
fn whatever_a_keyed_peer_seals_is_data_or_an_error_never_a_panic() {
    // Random inner plaintexts (content types, bodies, padding, oversize),
    // sealed with the right keys so that they reach the parsing after the
    // AEAD; then close_notify. The server ends with data and EOF, or an
    // error, and fails for good after one.
    let id = identity();
    let types = [0u8, 1, 20, 21, 22, 23, 24, 255];
    let (mut ok, mut failed) = (0, 0);
    for seed in 0..120u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
        handshake_pair(&mut client, &mut server);
        for _ in 0..1 + next(4) {
            let body_len = match next(8) {
                0 => 16_385 + next(300) as usize,
                1 => 0,
                _ => next(40) as usize,
            };
            let mut inner = match next(3) {
                // Something shaped like handshake messages or alerts.
                0 => vec![next(30) as u8, 0, 0, next(6) as u8, next(3) as u8],
                1 => vec![next(3) as u8, next(100) as u8],
                _ => data(body_len, seed),
            };
            // Half of them application data.
            let typ = match next(2) {
                0 => 23,
                _ => types[next(types.len() as u64) as usize],
            };
            inner.push(typ);
            inner.extend(std::iter::repeat_n(0, next(3) as usize * next(20) as usize));
            send_raw(&mut client, &inner);
        }
        client.send_close_notify();
        run(flush(&mut client)).unwrap();
        match run(recv_upto(&mut server, None)) {
            Ok(_) => ok += 1,
            Err(_) => {
                failed += 1;
                assert!(
                    server.encrypt(b"x").is_err(),
                    "seed {seed}: failed for good"
                );
            }
        }
    }
    // Both outcomes were exercised.
    assert!(
        ok >= 10 && failed >= 10,
        "{ok} read to the end, {failed} failed"
    );
}

#[test]
fn a_protocol_error_is_answered_with_its_fatal_alert() {
    // A record failing authentication: rustls's buffered client reads our
    // bad_record_mac.
    let (mut server, mut peer) = server_vs_peer(WIDE);
    assert!(own_records(&server));
    let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    rec.extend(data(0x20, 9));
    peer.io.inject(&rec);
    assert_invalid(run(recv_upto(&mut server, None)));
    let e = run(peer.recv(1)).unwrap_err();
    assert!(e.to_string().contains("BadRecordMac"), "{e}");

    // A malformed KeyUpdate from a TlsIo client: illegal_parameter (47).
    let id = identity();
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    send_raw(&mut client, &[24, 0, 0, 1, 7, 22]);
    assert_invalid(run(recv_upto(&mut server, None)));
    let e = run(recv_upto(&mut client, None)).unwrap_err();
    assert!(e.to_string().contains("alert 47"), "{e}");

    // The peer's own fatal alert is not answered with one.
    let (mut client, mut server) = pair(WIDE, &client_cfg(id), &server_cfg(id));
    handshake_pair(&mut client, &mut server);
    send_raw(&mut client, &[2, 40, 21]);
    let sent = server.io.sent_len();
    assert_invalid(run(recv_upto(&mut server, None)));
    assert_eq!(server.io.sent_len(), sent);
}
