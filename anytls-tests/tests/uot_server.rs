//! The server's UDP over TCP (sing UoT v2 and legacy v1), for every client and
//! server runtime pair: an AnyTLS stream to `sp.v2.udp-over-tcp.arpa` (or
//! `sp.udp-over-tcp.arpa`) is used as a hand-made UoT client with the core's
//! encoders, against UDP echo targets on 127.0.0.1 served by std threads.
//!
//! Every wait is bounded by a timeout and every loop by a count.

use std::collections::HashSet;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anytls_io::core::UotError;
use anytls_io::core::uot::{
    Datagram, DatagramReader, UOT_V1_MAGIC, UOT_V2_MAGIC, UotRequest, encode_datagram, uot_version,
};
use anytls_io::tls::{Identity, Verification};
use anytls_io::{
    AnyTlsStream, Client, ClientConfig, Runtime, Server, ServerConfig, ShutdownHandle, SocksAddr,
    UdpConfig, UotEnd, UotReport, relay_tcp, relay_tcp_with, relay_uot,
};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

anytls_tests::suite!(
    non_connect_mode_many_datagrams_to_two_targets,
    connect_mode_echoes_and_drops_other_senders,
    legacy_v1_stream,
    ipv4_and_ipv6_targets_on_one_stream,
    domain_destinations_are_resolved_by_the_server,
    malformed_input_closes_only_that_stream,
    idle_streams_are_closed,
    disabled_uot_is_refused,
);

const PASSWORD: &str = "uot-Password_1";
/// Bound of a single step (connect, one datagram, one wait).
const STEP: Duration = Duration::from_secs(10);
/// Payload cap of the test servers.
const MAX_DATAGRAM: usize = 16 * 1024;
/// Largest payload the tests send.
const MAX_PAYLOAD: usize = 8 * 1024;
/// How long an echo target serves at most.
const TARGET_LIFETIME: Duration = Duration::from_secs(120);

// ----- the server -----

struct TestServer {
    addr: SocketAddr,
    pin: [u8; 32],
    handle: ShutdownHandle,
    /// Reports of finished UoT streams (recording servers only).
    reports: Arc<Mutex<Vec<UotReport>>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn udp_config() -> UdpConfig {
    UdpConfig {
        max_datagram: MAX_DATAGRAM,
        bind_v4: Ipv4Addr::LOCALHOST,
        bind_v6: Ipv6Addr::LOCALHOST,
        ..UdpConfig::default()
    }
}

/// Our server on runtime `S` with the built-in relay (`relay_tcp_with`), or,
/// with `record`, a handler that calls `relay_uot` itself and keeps its
/// reports.
async fn start_server<S: Runtime>(udp: UdpConfig, record: bool) -> TestServer {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let mut cfg = ServerConfig::new(PASSWORD, id);
    cfg.udp = udp;
    let server = Server::<S>::bind("127.0.0.1:0", cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let reports: Arc<Mutex<Vec<UotReport>>> = Arc::default();
    let sink = reports.clone();
    S::spawn(async move {
        let _ = server
            .serve_with(Duration::ZERO, move |req| {
                let sink = sink.clone();
                async move {
                    match uot_version(req.destination()) {
                        Some(version) if record => {
                            let report = relay_uot::<S>(req.accept(), version, &udp).await;
                            sink.lock().unwrap().push(report);
                        }
                        Some(_) => relay_tcp_with(req, STEP, udp).await,
                        None => relay_tcp(req, STEP).await,
                    }
                }
            })
            .await;
    });
    TestServer {
        addr,
        pin,
        handle,
        reports,
    }
}

fn client<C: Runtime>(srv: &TestServer) -> Client<C> {
    let mut cfg = ClientConfig::new(srv.addr.to_string(), PASSWORD);
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(srv.pin);
    cfg.connect_timeout = Duration::from_secs(5);
    Client::new(cfg).unwrap()
}

async fn uot_stream<C: Runtime>(client: &Client<C>, magic: &str) -> AnyTlsStream {
    let connect = client.connect(SocksAddr::domain(magic, 0));
    let mut s = anytls_io::timeout::<C, _>(STEP, connect)
        .await
        .expect("connect timed out")
        .expect("connect");
    anytls_io::timeout::<C, _>(STEP, s.established())
        .await
        .expect("SYNACK timed out")
        .expect("UoT stream accepted");
    s
}

// ----- UDP echo targets on std threads -----

/// Echoes every datagram to its sender; with `noise`, also sends `noise` to
/// the sender from a second socket. Serves until dropped (or
/// [`TARGET_LIFETIME`]).
struct Echo {
    addr: SocketAddr,
    noise_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(noise: bool) -> Echo {
        Echo::start_on(UdpSocket::bind("127.0.0.1:0").unwrap(), noise)
    }

    /// An echo target on `[::1]`, if this host has IPv6 loopback.
    fn start_v6() -> Option<Echo> {
        UdpSocket::bind("[::1]:0")
            .ok()
            .map(|s| Echo::start_on(s, false))
    }

    fn start_on(socket: UdpSocket, noise: bool) -> Echo {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let noise = noise.then(|| UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = socket.local_addr().unwrap();
        let noise_addr = noise.as_ref().map(|n| n.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut buf = vec![0; 65536];
            while !flag.load(Ordering::Acquire) && start.elapsed() < TARGET_LIFETIME {
                let (n, from) = match socket.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = socket.send_to(&buf[..n], from);
                if let Some(noise) = &noise {
                    let _ = noise.send_to(b"noise", from);
                }
            }
        });
        Echo {
            addr,
            noise_addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ----- a hand-made UoT client -----

fn ip_addr(sa: SocketAddr) -> SocksAddr {
    SocksAddr::from(sa)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn payload(&mut self, tag: u32, max: usize) -> Vec<u8> {
        let len = 4 + (self.next() as usize) % (max - 3);
        let mut p = tag.to_be_bytes().to_vec();
        let seed = self.next();
        p.extend((0..len - 4).map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8));
        p
    }
}

async fn write<C: Runtime>(s: &mut AnyTlsStream, wire: &[u8]) {
    anytls_io::timeout::<C, _>(STEP, s.write_all(wire))
        .await
        .expect("write timed out")
        .expect("write");
}

/// Reads exactly `n` datagrams off the stream.
async fn read_datagrams<C: Runtime>(
    s: &mut AnyTlsStream,
    reader: &mut DatagramReader,
    n: usize,
) -> Vec<Datagram> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0; 64 * 1024];
    // Every turn reads at least one byte; no datagram is longer than this.
    for _ in 0..(n + 1) * (MAX_DATAGRAM + 300) {
        while out.len() < n {
            match reader.next().expect("well-formed replies") {
                Some(d) => out.push(d),
                None => break,
            }
        }
        if out.len() == n {
            return out;
        }
        let got = anytls_io::timeout::<C, _>(STEP, s.read(&mut buf))
            .await
            .unwrap_or_else(|| panic!("timed out waiting for datagram {}", out.len() + 1))
            .expect("read");
        assert!(got > 0, "EOF after {} of {n} datagrams", out.len());
        reader.push_slice(&buf[..got]);
    }
    unreachable!("reads are bounded by the bytes expected")
}

/// Waits for the server's FIN: the stream reads EOF within `limit`.
async fn expect_eof<C: Runtime>(s: &mut AnyTlsStream, limit: Duration) {
    let mut buf = vec![0; 64 * 1024];
    let start = Instant::now();
    for _ in 0..10_000 {
        let left = limit.saturating_sub(start.elapsed());
        match anytls_io::timeout::<C, _>(left, s.read(&mut buf)).await {
            None => panic!("no FIN within {limit:?}"),
            Some(Ok(0)) => return,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("read error instead of FIN: {e}"),
        }
    }
    panic!("no FIN after 10000 reads");
}

async fn sleep<R: Runtime>(d: Duration) {
    anytls_io::sleep_until::<R>(Instant::now() + d).await;
}

/// Waits until the server has recorded `n` reports.
async fn reports<R: Runtime>(srv: &TestServer, n: usize) -> Vec<UotReport> {
    for _ in 0..(STEP.as_millis() / 20) {
        if srv.reports.lock().unwrap().len() >= n {
            break;
        }
        sleep::<R>(Duration::from_millis(20)).await;
    }
    let got = std::mem::take(&mut *srv.reports.lock().unwrap());
    assert_eq!(got.len(), n, "UoT reports: {got:?}");
    got
}

// ----- the tests -----

/// Non-connect mode: 200 datagrams of random sizes up to 8 KiB, alternating
/// between two echo targets (a window of 8 in flight); every echo is intact and
/// carries its target's address. A noisy target's second socket shows up with
/// its own address.
async fn non_connect_mode_many_datagrams_to_two_targets<C: Runtime, S: Runtime>() {
    let srv = start_server::<S>(udp_config(), true).await;
    let client = client::<C>(&srv);
    let targets = [Echo::start(false), Echo::start(false)];
    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    let mut wire = Vec::new();
    UotRequest {
        connect: false,
        dest: ip_addr(targets[0].addr),
    }
    .encode(&mut wire)
    .unwrap();
    let mut reader = DatagramReader::replies(true);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    const TOTAL: u32 = 200;
    const WINDOW: u32 = 8;
    let mut sent = Vec::new();
    for round in 0..TOTAL / WINDOW {
        for i in 0..WINDOW {
            let tag = round * WINDOW + i;
            let to = targets[tag as usize % 2].addr;
            let payload = rng.payload(tag, MAX_PAYLOAD);
            encode_datagram(Some(&ip_addr(to)), &payload, &mut wire).unwrap();
            sent.push((to, payload));
        }
        write::<C>(&mut s, &wire).await;
        wire.clear();
        let got = read_datagrams::<C>(&mut s, &mut reader, WINDOW as usize).await;
        // Two targets: order between them may vary; match by tag.
        for d in got {
            let tag = u32::from_be_bytes(d.payload[..4].try_into().unwrap());
            let (from, payload) = &sent[tag as usize];
            assert_eq!(d.dest.as_ref(), Some(&ip_addr(*from)), "datagram {tag}");
            assert_eq!(&d.payload[..], &payload[..], "datagram {tag}");
        }
    }

    let noisy = Echo::start(true);
    encode_datagram(Some(&ip_addr(noisy.addr)), b"ping", &mut wire).unwrap();
    write::<C>(&mut s, &wire).await;
    wire.clear();
    let got: HashSet<(SocksAddr, Bytes)> = read_datagrams::<C>(&mut s, &mut reader, 2)
        .await
        .into_iter()
        .map(|d| (d.dest.unwrap(), d.payload))
        .collect();
    let want = HashSet::from([
        (ip_addr(noisy.addr), Bytes::from_static(b"ping")),
        (
            ip_addr(noisy.noise_addr.unwrap()),
            Bytes::from_static(b"noise"),
        ),
    ]);
    assert_eq!(got, want);

    drop(s);
    let r = reports::<S>(&srv, 1).await;
    assert!(matches!(r[0].end, UotEnd::Eof), "{:?}", r[0]);
    assert_eq!(r[0].stats.sent, u64::from(TOTAL) + 1);
    assert_eq!(r[0].stats.received, u64::from(TOTAL) + 2);
    assert_eq!(r[0].stats.dropped_queue_full, 0);
    client.close();
}

/// Connect mode: datagrams carry no address, all go to the request's
/// destination, and only its answers come back (the noise from the target's
/// second socket is dropped by the server).
async fn connect_mode_echoes_and_drops_other_senders<C: Runtime, S: Runtime>() {
    let srv = start_server::<S>(udp_config(), true).await;
    let client = client::<C>(&srv);
    let target = Echo::start(true);
    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    let mut wire = Vec::new();
    UotRequest {
        connect: true,
        dest: ip_addr(target.addr),
    }
    .encode(&mut wire)
    .unwrap();
    let mut reader = DatagramReader::replies(false);
    let mut rng = Rng(0x00c0_ffee);
    for tag in 0..50u32 {
        let payload = rng.payload(tag, MAX_PAYLOAD);
        encode_datagram(None, &payload, &mut wire).unwrap();
        write::<C>(&mut s, &wire).await;
        wire.clear();
        let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
        assert_eq!(got[0].dest, None);
        assert_eq!(&got[0].payload[..], &payload[..], "datagram {tag}");
    }
    // An empty datagram is a datagram too.
    encode_datagram(None, b"", &mut wire).unwrap();
    write::<C>(&mut s, &wire).await;
    wire.clear();
    let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
    assert!(got[0].payload.is_empty());
    drop(s);
    let r = reports::<S>(&srv, 1).await;
    assert!(matches!(r[0].end, UotEnd::Eof), "{:?}", r[0]);
    assert_eq!((r[0].stats.sent, r[0].stats.received), (51, 51));
    // The noise datagrams that arrived before the stream closed were dropped.
    assert!((1..=51).contains(&r[0].stats.dropped_other), "{:?}", r[0]);
    client.close();
}

/// Legacy v1 (`sp.udp-over-tcp.arpa`): no request, every datagram carries its
/// address, and so does every answer.
async fn legacy_v1_stream<C: Runtime, S: Runtime>() {
    let srv = start_server::<S>(udp_config(), false).await;
    let client = client::<C>(&srv);
    let targets = [Echo::start(false), Echo::start(false)];
    let mut s = uot_stream(&client, UOT_V1_MAGIC).await;
    let mut reader = DatagramReader::replies(true);
    let mut rng = Rng(0x001e_9ac4);
    let mut wire = Vec::new();
    for tag in 0..40u32 {
        let to = targets[tag as usize % 2].addr;
        let payload = rng.payload(tag, MAX_PAYLOAD);
        encode_datagram(Some(&ip_addr(to)), &payload, &mut wire).unwrap();
        write::<C>(&mut s, &wire).await;
        wire.clear();
        let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
        assert_eq!(got[0].dest, Some(ip_addr(to)), "datagram {tag}");
        assert_eq!(&got[0].payload[..], &payload[..], "datagram {tag}");
    }
    client.close();
}

/// One stream sends to an IPv4 and an IPv6 target (one socket per family);
/// answers carry the right address. Skipped without IPv6 loopback.
async fn ipv4_and_ipv6_targets_on_one_stream<C: Runtime, S: Runtime>() {
    let Some(v6) = Echo::start_v6() else {
        eprintln!("no IPv6 loopback: skipped");
        return;
    };
    let srv = start_server::<S>(udp_config(), false).await;
    let client = client::<C>(&srv);
    let v4 = Echo::start(false);
    assert!(v6.addr.is_ipv6());
    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    let mut wire = Vec::new();
    UotRequest {
        connect: false,
        dest: ip_addr(v6.addr),
    }
    .encode(&mut wire)
    .unwrap();
    let mut reader = DatagramReader::replies(true);
    let mut rng = Rng(0x0006_0004);
    for tag in 0..20u32 {
        let to = if tag % 2 == 0 { v6.addr } else { v4.addr };
        let payload = rng.payload(tag, MAX_PAYLOAD);
        encode_datagram(Some(&ip_addr(to)), &payload, &mut wire).unwrap();
        write::<C>(&mut s, &wire).await;
        wire.clear();
        let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
        assert_eq!(got[0].dest, Some(ip_addr(to)), "datagram {tag}");
        assert_eq!(&got[0].payload[..], &payload[..], "datagram {tag}");
    }
    client.close();
}

/// `localhost:PORT` is resolved by the server, as a non-connect datagram
/// address and as a connect-mode destination; answers come from the IP.
async fn domain_destinations_are_resolved_by_the_server<C: Runtime, S: Runtime>() {
    let srv = start_server::<S>(udp_config(), false).await;
    let client = client::<C>(&srv);
    let target = Echo::start(false);
    let port = target.addr.port();
    let localhost = SocksAddr::domain("localhost", port);

    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    let mut wire = Vec::new();
    UotRequest {
        connect: false,
        dest: localhost.clone(),
    }
    .encode(&mut wire)
    .unwrap();
    let mut reader = DatagramReader::replies(true);
    for tag in 0..5u32 {
        encode_datagram(Some(&localhost), &tag.to_be_bytes(), &mut wire).unwrap();
        // An IP literal written as a name is an IP.
        let literal = SocksAddr::domain("127.0.0.1", port);
        encode_datagram(Some(&literal), &tag.to_be_bytes(), &mut wire).unwrap();
        write::<C>(&mut s, &wire).await;
        wire.clear();
        for d in read_datagrams::<C>(&mut s, &mut reader, 2).await {
            assert_eq!(d.dest, Some(ip_addr(target.addr)));
            assert_eq!(&d.payload[..], &tag.to_be_bytes());
        }
    }
    drop(s);

    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    UotRequest {
        connect: true,
        dest: localhost,
    }
    .encode(&mut wire)
    .unwrap();
    encode_datagram(None, b"by name", &mut wire).unwrap();
    write::<C>(&mut s, &wire).await;
    let mut reader = DatagramReader::replies(false);
    let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
    assert_eq!(&got[0].payload[..], b"by name");
    client.close();
}

/// A bad connect flag, a bad datagram address type and an oversize datagram
/// each close their stream (FIN) and nothing else: a stream on another
/// session keeps working, and the sessions of the bad streams are reused.
async fn malformed_input_closes_only_that_stream<C: Runtime, S: Runtime>() {
    let srv = start_server::<S>(udp_config(), true).await;
    let client = client::<C>(&srv);
    let target = Echo::start(false);
    let mut good = uot_stream(&client, UOT_V2_MAGIC).await;
    let mut wire = Vec::new();
    UotRequest {
        connect: true,
        dest: ip_addr(target.addr),
    }
    .encode(&mut wire)
    .unwrap();
    let mut good_reader = DatagramReader::replies(false);
    let echo = async |good: &mut AnyTlsStream, reader: &mut DatagramReader, wire: &mut Vec<u8>| {
        encode_datagram(None, b"still here", wire).unwrap();
        write::<C>(good, wire).await;
        wire.clear();
        let got = read_datagrams::<C>(good, reader, 1).await;
        assert_eq!(&got[0].payload[..], b"still here");
    };
    echo(&mut good, &mut good_reader, &mut wire).await;

    let oversize = (MAX_DATAGRAM + 1) as u16;
    let cases: [(&str, Vec<u8>, UotError); 3] = [
        (
            "connect flag",
            vec![2, 1, 127, 0, 0, 1, 0, 7],
            UotError::BadConnectFlag(2),
        ),
        (
            "address type",
            [vec![0, 1, 127, 0, 0, 1, 0, 7], vec![7, 1, 2, 3]].concat(),
            UotError::BadAddressType(7),
        ),
        (
            "oversize",
            [
                vec![1, 1, 127, 0, 0, 1, 0, 7],
                oversize.to_be_bytes().to_vec(),
                vec![0; 100],
            ]
            .concat(),
            UotError::DatagramTooLarge {
                len: MAX_DATAGRAM + 1,
                max: MAX_DATAGRAM,
            },
        ),
    ];
    for (i, (what, bytes, err)) in cases.into_iter().enumerate() {
        let before = client.stats();
        let mut bad = uot_stream(&client, UOT_V2_MAGIC).await;
        write::<C>(&mut bad, &bytes).await;
        expect_eof::<C>(&mut bad, STEP).await;
        drop(bad);
        let r = reports::<S>(&srv, 1).await;
        match &r[0].end {
            UotEnd::Malformed(e) => assert_eq!(e, &err, "{what}"),
            end => panic!("{what}: ended with {end:?}"),
        }
        echo(&mut good, &mut good_reader, &mut wire).await;
        let after = client.stats();
        assert_eq!(after.died, 0, "{what}: no session died");
        if i > 0 {
            // The bad stream's session came back to the pool and was reused.
            assert_eq!(after.established, before.established, "{what}");
            assert!(after.reused > before.reused, "{what}");
        }
    }
    drop(good);
    let r = reports::<S>(&srv, 1).await;
    assert!(matches!(r[0].end, UotEnd::Eof), "{:?}", r[0]);
    client.close();
}

/// A stream with no datagram either way for the idle timeout is closed with
/// FIN; traffic keeps it open past the timeout.
async fn idle_streams_are_closed<C: Runtime, S: Runtime>() {
    const IDLE: Duration = Duration::from_millis(1000);
    let udp = UdpConfig {
        idle_timeout: IDLE,
        ..udp_config()
    };
    let srv = start_server::<S>(udp, true).await;
    let client = client::<C>(&srv);
    let target = Echo::start(false);
    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    let mut wire = Vec::new();
    UotRequest {
        connect: true,
        dest: ip_addr(target.addr),
    }
    .encode(&mut wire)
    .unwrap();
    let mut reader = DatagramReader::replies(false);
    // Traffic for two idle periods.
    let start = Instant::now();
    let mut last = start;
    for tag in 0..12u32 {
        if tag > 0 {
            sleep::<C>(IDLE / 5).await;
        }
        encode_datagram(None, &tag.to_be_bytes(), &mut wire).unwrap();
        write::<C>(&mut s, &wire).await;
        wire.clear();
        let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
        last = Instant::now();
        assert_eq!(&got[0].payload[..], &tag.to_be_bytes());
    }
    assert!(start.elapsed() > IDLE * 2);
    expect_eof::<C>(&mut s, STEP).await;
    let waited = last.elapsed();
    assert!(
        waited >= IDLE * 3 / 4,
        "closed {waited:?} after the last datagram"
    );
    let r = reports::<S>(&srv, 1).await;
    assert!(matches!(r[0].end, UotEnd::IdleTimeout), "{:?}", r[0]);
    assert_eq!((r[0].stats.sent, r[0].stats.received), (12, 12));
    // The session survives: a new stream on it works.
    drop(s);
    let mut s = uot_stream(&client, UOT_V2_MAGIC).await;
    UotRequest {
        connect: true,
        dest: ip_addr(target.addr),
    }
    .encode(&mut wire)
    .unwrap();
    encode_datagram(None, b"again", &mut wire).unwrap();
    write::<C>(&mut s, &wire).await;
    let got = read_datagrams::<C>(&mut s, &mut reader, 1).await;
    assert_eq!(&got[0].payload[..], b"again");
    assert_eq!(client.stats().died, 0);
    client.close();
}

/// With UoT turned off the stream is refused (SYNACK error).
async fn disabled_uot_is_refused<C: Runtime, S: Runtime>() {
    let udp = UdpConfig {
        enabled: false,
        ..udp_config()
    };
    let srv = start_server::<S>(udp, false).await;
    let client = client::<C>(&srv);
    let connect = client.connect(SocksAddr::domain(UOT_V2_MAGIC, 0));
    let mut s = anytls_io::timeout::<C, _>(STEP, connect)
        .await
        .expect("connect timed out")
        .expect("connect");
    let verdict = anytls_io::timeout::<C, _>(STEP, s.established())
        .await
        .expect("SYNACK timed out");
    let err: io::Error = verdict.expect_err("refused");
    assert!(err.to_string().contains("disabled"), "{err}");
    client.close();
}
