//! Receiver rules (ANYTLS.md 3.3) and the interop checklist (section 12).
//!
//! Most tests drive ONE real `Session` by hand (`Solo`) and play its peer with
//! crafted frame bytes: an old (v1) or non-conforming client or server. The rest
//! use the two-peer simulation harness.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_core::auth::encode_preamble;
use anytls_core::error::{ConfigError, RefuseReason, ResetReason};
use anytls_core::frame::encode_frame;
use anytls_core::padding::DEFAULT_SCHEME;
use anytls_core::session::{Client, ClientSession, Server, SessionRole};
use anytls_core::{
    AddrError, ClientConfig, Command, Event, Frame, Host, MAX_PSH_DATA, PaddingScheme,
    PasswordHash, ProtocolError, ServerConfig, Session, SessionError, SessionSeq, SocksAddr,
    StreamError, StreamId, UserId,
};
use bytes::{Bytes, BytesMut};
use common::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

// ----- wire constants (ANYTLS.md 6.3, 11) -----

const DEFAULT_MD5: &str = "75cff2ad89aadf5e257059ee571ebe11";
const OLD_DEFAULT_MD5: &str = "02492a42f272ec67da83a511666102e6";
/// 11.2: password `letmein`, 30 bytes of padding.
const PREAMBLE_11_2: &str = "1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b63032001e000000000000000000000000000000000000000000000000000000000000";
/// 11.3: Settings data for `anytls/0.0.13` and the default scheme, order v, client, md5.
const SETTINGS_11_3: &str = "763d320a636c69656e743d616e79746c732f302e302e31330a70616464696e672d6d64353d3735636666326164383961616466356532353730353965653537316562653131";
/// 11.3: SYN sid 1.
const SYN_1: &str = "01000000010000";
/// 11.3: PSH sid 1, destination `example.com:443`.
const PSH_1_EXAMPLE: &str = "0200000001000f030b6578616d706c652e636f6d01bb";
/// 11.3: Alert `client did not send its settings`.
const ALERT_11_3: &str =
    "05000000000020636c69656e7420646964206e6f742073656e64206974732073657474696e6773";
/// A scheme with fixed sizes: preamble padding 5, packet 1 = 200, packet 2 = 300,
/// packet 3 on unshaped.
const FIXED: &str = "stop=3\n0=5-5\n1=200-200\n2=300-300";

// ----- frame crafting -----

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn frame(cmd: Command, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame(&mut b, cmd, StreamId(sid), data).unwrap();
    b
}

fn f(cmd: Command, sid: u32, data: &[u8]) -> Frame {
    Frame::new(cmd, StreamId(sid), Bytes::copy_from_slice(data))
}

fn e(cmd: Command, sid: u32) -> Frame {
    Frame::empty(cmd, StreamId(sid))
}

fn preamble(password: &str, pad: u16) -> Vec<u8> {
    let mut b = Vec::new();
    encode_preamble(&PasswordHash::of(password), pad, &mut b);
    b
}

fn settings(v: &str, md5: &str) -> Vec<u8> {
    let text = format!("v={v}\nclient=anytls/0.0.13\npadding-md5={md5}");
    frame(Command::Settings, 0, text.as_bytes())
}

fn addr(a: &SocksAddr) -> Vec<u8> {
    let mut b = Vec::new();
    a.encode(&mut b).unwrap();
    b
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn fixed_scheme() -> PaddingScheme {
    PaddingScheme::parse(Bytes::from_static(FIXED.as_bytes())).unwrap()
}

/// Frames without the client's Waste padding.
fn no_waste(frames: Vec<Frame>) -> Vec<Frame> {
    frames
        .into_iter()
        .filter(|f| f.cmd != Command::Waste)
        .collect()
}

fn opened(id: u32, dest: SocksAddr) -> Event {
    Event::StreamOpened {
        id: StreamId(id),
        dest,
    }
}

fn readable(id: u32) -> Event {
    Event::StreamReadable { id: StreamId(id) }
}

/// A client's events when it learns the server is v1 with stream `id`
/// waiting for its SYNACK: a v1 server sends none, so it is connected.
fn v1_decided(id: u32) -> Vec<Event> {
    vec![
        Event::PeerVersion { version: 1 },
        Event::StreamConnected { id: StreamId(id) },
    ]
}

// ----- one session driven by hand -----

/// One real session; the test plays its peer.
struct Solo<R: SessionRole> {
    s: Session<R>,
    now: Instant,
    /// Every transmit, in order (for a client, after the preamble).
    transmits: Vec<Bytes>,
    /// The client's preamble transmit.
    preamble: Option<Bytes>,
    /// Bytes sent since the last `frames()`.
    unread: Vec<u8>,
    /// Events since the last `take_events()`.
    events: Vec<Event>,
}

impl<R: SessionRole> Solo<R> {
    fn new(s: Session<R>, now: Instant) -> Solo<R> {
        Solo {
            s,
            now,
            transmits: Vec::new(),
            preamble: None,
            unread: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl Solo<Server> {
    fn server(cfg: ServerConfig) -> Solo<Server> {
        let now = epoch();
        let s = Session::server(Arc::new(cfg), [3; 32], now).expect("valid config");
        Solo::new(s, now)
    }

    /// A server that took a crafted client's preamble and Settings; its answers
    /// and events stay unread.
    fn server_after_hello(cfg: ServerConfig, v: &str, md5: &str) -> Solo<Server> {
        let mut s = Solo::server(cfg);
        s.input(&[preamble(PASSWORD, 30), settings(v, md5)].concat());
        s
    }

    /// A v2 server after the hello, with its answers and events consumed.
    fn v2_server() -> Solo<Server> {
        let mut s = Solo::server_after_hello(server_config(), "2", DEFAULT_MD5);
        assert_eq!(s.frames(), vec![f(Command::ServerSettings, 0, b"v=2")]);
        s.take_events();
        s
    }

    /// A client; with `open`, stream 1 to `dest()` is opened before the first
    /// write. The preamble is taken off the output.
    fn accept(&mut self, id: u32, res: Result<(), String>) {
        self.s.accept_stream(StreamId(id), res).unwrap();
        self.pump();
    }
}

impl Solo<Client> {
    fn client(cfg: ClientConfig, scheme: PaddingScheme, open: bool) -> Solo<Client> {
        let now = epoch();
        let mut s = Session::client(Arc::new(cfg), SessionSeq(1), Arc::new(scheme), [5; 32], now)
            .expect("valid config");
        if open {
            assert_eq!(s.open_stream(now, &dest()), Ok(StreamId(1)));
        }
        let mut solo = Solo::new(s, now);
        solo.pump();
        let pre = solo.transmits.remove(0);
        solo.unread.drain(..pre.len());
        solo.preamble = Some(pre);
        solo
    }

    /// A client with stream 1 open, its first write and events consumed.
    fn opened_client() -> Solo<Client> {
        let mut c = Solo::client(client_config(), PaddingScheme::default_scheme(), true);
        c.frames();
        c.take_events();
        c
    }
}

impl<R: SessionRole> Solo<R> {
    /// Drains transmits, then events.
    fn pump(&mut self) {
        let mut buf = BytesMut::new();
        let mut n = 0;
        while let Some(t) = self.s.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.len, buf.len());
            assert!(t.len > 0, "empty transmit");
            let b = buf.split().freeze();
            self.unread.extend_from_slice(&b);
            self.transmits.push(b);
            n += 1;
            assert!(n < 1_000_000, "transmits do not stop");
        }
        while let Some(ev) = self.s.poll_event() {
            assert!(
                !matches!(self.events.last(), Some(Event::Closed { .. })),
                "an event after Closed: {ev:?}"
            );
            self.events.push(ev);
        }
    }

    /// One read of `bytes`, then a drain.
    fn input(&mut self, bytes: &[u8]) {
        self.s.handle_input(self.now, BytesMut::from(bytes));
        self.pump();
    }

    /// Feeds `bytes` in pieces of `piece`, only while the session wants to read,
    /// draining in between (as a real owner does). Returns whether the session
    /// ever stopped reading.
    fn input_while_reading(&mut self, bytes: &[u8], piece: usize) -> bool {
        let mut paused = false;
        let mut stuck = 0;
        let mut rest = bytes;
        while !rest.is_empty() && !self.s.is_closed() {
            if self.s.wants_read() {
                stuck = 0;
                let n = piece.min(rest.len());
                self.s.handle_input(self.now, BytesMut::from(&rest[..n]));
                rest = &rest[n..];
                paused |= !self.s.wants_read();
            } else {
                stuck += 1;
                assert!(stuck < 3, "the session does not read again after draining");
            }
            self.pump();
        }
        paused
    }

    /// Advances virtual time, expiring deadlines.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.s.poll_timeout().is_some_and(|t| t <= self.now) {
            self.s.handle_timeout(self.now);
            if let Some(t) = self.s.poll_timeout() {
                assert!(t > self.now, "poll_timeout stuck in the past");
            }
        }
        self.pump();
    }

    /// Frames sent since the last call.
    fn frames(&mut self) -> Vec<Frame> {
        let frames = frames_of(&self.unread);
        self.unread.clear();
        frames
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Reads a stream until it blocks: (data, reached EOF).
    fn read_all(&mut self, id: u32) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut eof = false;
        for _ in 0..100_000 {
            match self.s.read(self.now, StreamId(id)) {
                Ok(Some(b)) => data.extend_from_slice(&b),
                Ok(None) => {
                    eof = true;
                    break;
                }
                Err(_) => break,
            }
        }
        self.pump();
        (data, eof)
    }
}

// ----- checklist 1-4: the client's first bytes -----

#[test]
fn first_bytes_match_the_vectors_and_waste_is_zero_filled() {
    let mut wastes = 0;
    for seed in 0..16 {
        let mut p = Pair::new(seed);
        let id = p.open();
        p.capp.send(&mut p.client, id, payload(3000, seed as u8));
        p.drive();
        // Packet 0 is the preamble alone, exactly vector 11.2.
        assert_eq!(p.c2s.transmits[0], 64);
        assert_eq!(hex::encode(&p.c2s.log[..64]), PREAMBLE_11_2);
        // Settings text in the reference's order: vector 11.3.
        let frames = frames_of(&p.c2s.log[64..]);
        assert_eq!(frames[0], f(Command::Settings, 0, &unhex(SETTINGS_11_3)));
        assert_eq!(&frames[1], &e(Command::Syn, 1));
        // Waste padding is sid 0 and all zeros.
        for w in frames.iter().filter(|f| f.cmd == Command::Waste) {
            wastes += 1;
            assert_eq!(w.stream_id, StreamId::SESSION);
            assert!(w.data.iter().all(|&b| b == 0), "seed {seed}");
        }
        assert_eq!(p.capp.received[&id], payload(3000, seed as u8));
    }
    assert!(wastes > 16);

    // A pre-warmed session (no stream yet) sends its Settings alone as packet 1,
    // padded into one 100..399 record; its first stream goes out as packet 2.
    let mut c = Solo::client(client_config(), PaddingScheme::default_scheme(), false);
    assert_eq!(c.preamble.as_ref().map(Bytes::len), Some(64));
    assert_eq!(c.transmits.len(), 1);
    assert!((100..400).contains(&c.transmits[0].len()));
    let frames = c.frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0], f(Command::Settings, 0, &unhex(SETTINGS_11_3)));
    assert_eq!(frames[1].cmd, Command::Waste);
    assert_eq!(
        c.take_events(),
        vec![Event::Established { peer_version: 1 }]
    );
    let id = c.s.open_stream(c.now, &dest()).unwrap();
    c.pump();
    assert_eq!(
        no_waste(c.frames()),
        vec![e(Command::Syn, id.0), f(Command::Psh, id.0, &addr(&dest()))]
    );
}

// ----- versions (1.1, 5.2, 4.4) -----

#[test]
fn server_answers_settings_by_version_and_md5() {
    let d = DEFAULT_MD5;
    // (settings text, UpdatePaddingScheme expected, v2 expected)
    let cases: Vec<(String, bool, bool)> = vec![
        (
            format!("v=2\nclient=anytls/0.0.13\npadding-md5={d}"),
            false,
            true,
        ),
        // Key order is free.
        (format!("padding-md5={d}\nclient=\nv=2"), false, true),
        // Any integer v >= 2 is v2 (the server answers v=2).
        (format!("v=3\npadding-md5={d}"), false, true),
        (format!("v=2\npadding-md5={OLD_DEFAULT_MD5}"), true, true),
        // An absent MD5 differs; so does one in upper case.
        ("v=2".to_string(), true, true),
        (format!("v=2\npadding-md5={}", d.to_uppercase()), true, true),
        (format!("v=1\npadding-md5={d}"), false, false),
        (format!("client=old\npadding-md5={d}"), false, false),
        // No trimming: "2\r" is not an integer.
        (format!("v=2\r\npadding-md5={d}"), false, false),
        (format!("v=x\npadding-md5={d}"), false, false),
        (format!("v=-2\npadding-md5={d}"), false, false),
        // Keys are case-sensitive.
        (format!("V=2\npadding-md5={d}"), false, false),
    ];
    for (text, update, v2) in cases {
        let mut s = Solo::server(server_config());
        s.input(
            &[
                preamble(PASSWORD, 30),
                frame(Command::Settings, 0, text.as_bytes()),
            ]
            .concat(),
        );
        let mut want = Vec::new();
        if update {
            want.push(f(
                Command::UpdatePaddingScheme,
                0,
                DEFAULT_SCHEME.as_bytes(),
            ));
        }
        if v2 {
            want.push(f(Command::ServerSettings, 0, b"v=2"));
        }
        assert_eq!(s.frames(), want, "{text:?}");
        let version = if v2 { 2 } else { 1 };
        assert_eq!(
            s.take_events(),
            vec![
                Event::Authenticated { user: UserId(0) },
                Event::Established {
                    peer_version: version
                }
            ],
            "{text:?}"
        );
        assert_eq!(s.s.peer_version(), version);
        // SYNACK only to v2 peers.
        s.input(&unhex(&format!("{SYN_1}{PSH_1_EXAMPLE}")));
        assert_eq!(s.take_events(), vec![opened(1, dest())]);
        s.accept(1, Ok(()));
        let want = if v2 {
            vec![e(Command::SynAck, 1)]
        } else {
            vec![]
        };
        assert_eq!(s.frames(), want, "{text:?}");
    }
}

#[test]
fn v1_client_gets_the_update_but_no_server_settings_and_no_synack() {
    let mut s = Solo::server_after_hello(server_config(), "1", OLD_DEFAULT_MD5);
    // The MD5 differs: UpdatePaddingScheme, but no ServerSettings.
    assert_eq!(
        s.frames(),
        vec![f(
            Command::UpdatePaddingScheme,
            0,
            DEFAULT_SCHEME.as_bytes()
        )]
    );
    assert_eq!(s.s.peer_version(), 1);
    s.take_events();

    // Stream 1 (vector bytes): accepted without a SYNACK; data in both directions.
    s.input(&unhex(&format!(
        "{SYN_1}{PSH_1_EXAMPLE}0200000001000568656c6c6f"
    )));
    assert_eq!(s.take_events(), vec![opened(1, dest()), readable(1)]);
    s.accept(1, Ok(()));
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.read_all(1), (b"hello".to_vec(), false));
    assert_eq!(s.s.write(StreamId(1), b"world"), Ok(5));
    s.pump();
    assert_eq!(s.frames(), vec![f(Command::Psh, 1, b"world")]);

    // Stream 3 refused by the owner: FIN only.
    let ip = SocksAddr {
        host: Host::Ipv4(Ipv4Addr::new(1, 2, 3, 4)),
        port: 80,
    };
    s.input(
        &[
            frame(Command::Syn, 3, b""),
            frame(Command::Psh, 3, &addr(&ip)),
        ]
        .concat(),
    );
    assert_eq!(s.take_events(), vec![opened(3, ip)]);
    s.accept(3, Err("dial tcp 1.2.3.4:80: refused".into()));
    assert_eq!(s.frames(), vec![e(Command::Fin, 3)]);

    // Stream 5 with a bad address type: FIN only.
    s.input(
        &[
            frame(Command::Syn, 5, b""),
            frame(Command::Psh, 5, &[7, 1, 2, 3]),
        ]
        .concat(),
    );
    assert_eq!(s.frames(), vec![e(Command::Fin, 5)]);
    assert_eq!(
        s.take_events(),
        vec![Event::StreamRefused {
            id: StreamId(5),
            reason: RefuseReason::BadDestination(AddrError::BadAddressType(7))
        }]
    );

    // The client closes stream 1: no FIN echo.
    s.input(&frame(Command::Fin, 1, b""));
    assert_eq!(
        s.take_events(),
        vec![Event::StreamFinished { id: StreamId(1) }, readable(1)]
    );
    assert_eq!(s.read_all(1), (vec![], true));
    s.s.finish(StreamId(1)).unwrap();
    s.pump();
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.s.stream_count(), 0);
    assert!(!s.s.is_closed());

    // Nothing v2 ever went out.
    let all: Vec<u8> = s.transmits.concat();
    assert!(
        frames_of(&all)
            .iter()
            .all(|f| f.cmd != Command::SynAck && f.cmd != Command::ServerSettings)
    );

    // A v1 client with the server's MD5 gets nothing at all.
    let mut s = Solo::server_after_hello(server_config(), "1", DEFAULT_MD5);
    assert!(s.transmits.is_empty());
    assert!(
        s.take_events()
            .contains(&Event::Established { peer_version: 1 })
    );
}

#[test]
fn v2_client_with_a_v1_server_stays_v1_and_never_probes() {
    let mut c = Solo::client(client_config(), PaddingScheme::default_scheme(), true);
    let sent = no_waste(c.frames());
    assert_eq!(sent[0], f(Command::Settings, 0, &unhex(SETTINGS_11_3)));
    assert_eq!(
        &sent[1..],
        &[e(Command::Syn, 1), f(Command::Psh, 1, &addr(&dest()))]
    );
    assert_eq!(
        c.take_events(),
        vec![Event::Established { peer_version: 1 }]
    );

    // A v1 server sends no ServerSettings and no SYNACK, only data: the data
    // shows it is v1 and connects the stream.
    c.input(&frame(Command::Psh, 1, b"from v1"));
    assert_eq!(c.take_events(), [v1_decided(1), vec![readable(1)]].concat());
    assert_eq!(c.read_all(1), (b"from v1".to_vec(), false));
    let id2 = c.s.open_stream(c.now, &dest()).unwrap();
    c.pump();
    assert_eq!(
        no_waste(c.frames()),
        vec![e(Command::Syn, 2), f(Command::Psh, 2, &addr(&dest()))]
    );
    // The server is known to be v1: connected at once, no SYNACK wait.
    assert_eq!(c.take_events(), vec![Event::StreamConnected { id: id2 }]);
    assert_eq!(c.s.poll_timeout(), None);

    // The stream-open deadlines (3 s) pass: no probe, no close.
    for _ in 0..8 {
        c.advance(Duration::from_secs(1));
    }
    assert_eq!(c.frames(), vec![]);
    assert_eq!(c.take_events(), vec![]);
    assert!(!c.s.is_closed());
    assert_eq!(c.s.peer_version(), 1);
    assert_eq!(c.s.stats().heartbeats_sent, 0);
    assert_eq!(c.s.poll_timeout(), None);

    // An explicit heartbeat goes out, but a v1 server ignores command 8, so no
    // response deadline is armed.
    c.s.send_heartbeat(c.now, Some(Duration::from_secs(1)));
    c.pump();
    assert_eq!(no_waste(c.frames()), vec![e(Command::HeartRequest, 0)]);
    assert_eq!(c.s.poll_timeout(), None);
    c.advance(Duration::from_secs(5));
    assert!(!c.s.is_closed());

    // Data flows on both streams.
    assert_eq!(c.s.write(id2, b"abc"), Ok(3));
    c.pump();
    assert_eq!(no_waste(c.frames()), vec![f(Command::Psh, 2, b"abc")]);
    c.input(&frame(Command::Psh, 2, b"xyz"));
    assert_eq!(c.take_events(), vec![readable(2)]);
    assert_eq!(c.read_all(2), (b"xyz".to_vec(), false));

    // An old server echoes FIN (anytls-go < v0.0.9): ignored.
    c.s.finish(StreamId(1)).unwrap();
    c.pump();
    assert_eq!(no_waste(c.frames()), vec![e(Command::Fin, 1)]);
    c.input(&frame(Command::Fin, 1, b""));
    assert_eq!(c.frames(), vec![]);
    assert_eq!(c.take_events(), vec![]);
    assert_eq!(c.s.stream_count(), 1);
    assert!(!c.s.is_closed());
}

// ----- padding scheme updates (5.2, 5.5, 6.5; checklist 5) -----

#[test]
fn server_scheme_comes_before_server_settings_and_shapes_later_writes() {
    let scheme = fixed_scheme();
    let mut scfg = server_config();
    scfg.padding = Arc::new(scheme.clone());
    let mut p = Pair::with(21, client_config(), scfg.clone());
    let id = p.open();
    p.drive();
    let s2c = frames_of(&p.s2c.log);
    assert_eq!(s2c[0], f(Command::UpdatePaddingScheme, 0, FIXED.as_bytes()));
    assert_eq!(s2c[1], f(Command::ServerSettings, 0, b"v=2"));
    let updates: Vec<(usize, Arc<PaddingScheme>)> = p
        .capp
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::PaddingSchemeUpdated(s) => Some((i, s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 1);
    let (at, new) = updates[0].clone();
    assert_eq!(new.raw(), &Bytes::from_static(FIXED.as_bytes()));
    assert_eq!(new.md5_hex(), scheme.md5_hex());
    let version_at = p
        .capp
        .events
        .iter()
        .position(|e| *e == Event::PeerVersion { version: 2 })
        .unwrap();
    assert!(at < version_at, "update processed before ServerSettings");
    assert_eq!(p.client.padding_scheme().md5_hex(), scheme.md5_hex());

    // The rest of this session uses it: packet 2 is cut at exactly 300 bytes
    // (1007 = PSH header + 1000), packet 3 is past stop and unshaped.
    let before = p.c2s.transmits.len();
    p.capp.send(&mut p.client, id, payload(1000, 1));
    p.drain();
    assert_eq!(&p.c2s.transmits[before..], &[300, 707]);
    p.capp.send(&mut p.client, id, payload(500, 2));
    p.drain();
    assert_eq!(&p.c2s.transmits[before + 2..], &[507]);
    p.drive();
    assert_eq!(p.capp.received[&id].len(), 1500);

    // The next session of this client starts with the new scheme: a 39-byte
    // preamble (5 bytes of padding), packet 1 = 105 bytes padded to 200, ...
    let client2 = Session::client(
        Arc::new(client_config()),
        SessionSeq(2),
        new.clone(),
        [9; 32],
        p.now,
    )
    .expect("valid config");
    let server2 = Session::server(Arc::new(scfg), [8; 32], p.now).expect("valid config");
    let mut q = Pair::from_sessions(client2, server2, p.now, ChaCha8Rng::seed_from_u64(22));
    let id = q.open();
    q.drain();
    assert_eq!(q.c2s.transmits, vec![39, 200]);
    assert_eq!(&q.c2s.log[32..34], &[0, 5]);
    assert!(q.c2s.log[34..39].iter().all(|&b| b == 0));
    let frames = frames_of(&q.c2s.log[39..]);
    let text = format!(
        "v=2\nclient=anytls/0.0.13\npadding-md5={}",
        scheme.md5_hex()
    );
    assert_eq!(frames[0], f(Command::Settings, 0, text.as_bytes()));
    assert_eq!(frames[3], f(Command::Waste, 0, &[0; 88]));
    q.capp.send(&mut q.client, id, payload(1000, 3));
    q.drain();
    assert_eq!(&q.c2s.transmits[2..], &[300, 707]);
    q.capp.send(&mut q.client, id, payload(500, 4));
    q.drain();
    assert_eq!(&q.c2s.transmits[4..], &[507]);
    q.drive();
    assert_eq!(q.capp.received[&id].len(), 1500);
    // ... and a client advertising the server's MD5 gets no update.
    let s2c = frames_of(&q.s2c.log);
    assert_eq!(s2c[0], f(Command::ServerSettings, 0, b"v=2"));
    assert!(s2c.iter().all(|f| f.cmd != Command::UpdatePaddingScheme));
    assert!(
        !q.capp
            .events
            .iter()
            .any(|e| matches!(e, Event::PaddingSchemeUpdated(_)))
    );
}

#[test]
fn scheme_md5_is_over_the_raw_bytes() {
    // A YAML `|` block adds a trailing newline: a different MD5 (6.3).
    let raw = format!("{DEFAULT_SCHEME}\n");
    let mut scfg = server_config();
    scfg.padding = Arc::new(PaddingScheme::parse(Bytes::from(raw.clone())).unwrap());
    let mut p = Pair::with(23, client_config(), scfg.clone());
    p.open();
    p.drive();
    let new = p
        .capp
        .events
        .iter()
        .find_map(|e| match e {
            Event::PaddingSchemeUpdated(s) => Some(s.clone()),
            _ => None,
        })
        .expect("the server's scheme differs");
    assert_eq!(new.raw(), &Bytes::from(raw));
    assert_eq!(new.md5_hex(), "305fc37916c150b282ecb61e9ee141d7");
    let client2 = Session::client(
        Arc::new(client_config()),
        SessionSeq(2),
        new,
        [1; 32],
        p.now,
    )
    .expect("valid config");
    let server2 = Session::server(Arc::new(scfg), [2; 32], p.now).expect("valid config");
    let mut q = Pair::from_sessions(client2, server2, p.now, ChaCha8Rng::seed_from_u64(24));
    q.open();
    q.drive();
    let c2s = frames_of(&q.c2s.log[64..]);
    assert_eq!(
        c2s[0],
        f(
            Command::Settings,
            0,
            b"v=2\nclient=anytls/0.0.13\npadding-md5=305fc37916c150b282ecb61e9ee141d7"
        )
    );
    assert!(
        frames_of(&q.s2c.log)
            .iter()
            .all(|f| f.cmd != Command::UpdatePaddingScheme)
    );
}

#[test]
fn invalid_or_empty_padding_update_is_ignored() {
    let mut c = Solo::opened_client();
    let default = PaddingScheme::default_scheme();
    for bad in [
        &b""[..],
        b"garbage",
        b"1=100-200",
        b"stop=x\n1=100-200",
        b"stop=\n",
        b"stop=1.5",
    ] {
        c.input(&frame(Command::UpdatePaddingScheme, 0, bad));
        assert_eq!(c.take_events(), vec![], "{bad:?}");
        assert_eq!(c.frames(), vec![]);
        assert!(!c.s.is_closed());
        assert_eq!(c.s.padding_scheme().md5(), default.md5());
    }
    c.input(&frame(Command::UpdatePaddingScheme, 0, FIXED.as_bytes()));
    assert_eq!(
        c.take_events(),
        vec![Event::PaddingSchemeUpdated(Arc::new(fixed_scheme()))]
    );
    assert_eq!(c.s.padding_scheme().raw(), FIXED.as_bytes());
}

// ----- Settings, Alert (3.3, 5.2, 10.4, 10.5; checklist 9) -----

#[test]
fn empty_settings_do_not_count_and_a_syn_gets_the_alert() {
    let mut s = Solo::server(server_config());
    s.input(&[preamble(PASSWORD, 30), frame(Command::Settings, 0, b"")].concat());
    assert_eq!(s.frames(), vec![], "no answer to empty Settings");
    assert_eq!(
        s.take_events(),
        vec![Event::Authenticated { user: UserId(0) }]
    );
    assert!(s.s.wants_read());

    // SYN, then frames in the same read that must not be acted on.
    let rest = [
        unhex(SYN_1),
        unhex(PSH_1_EXAMPLE),
        frame(Command::HeartRequest, 9, b""),
        settings("2", DEFAULT_MD5),
    ]
    .concat();
    s.s.handle_input(s.now, BytesMut::from(&rest[..]));
    assert!(!s.s.wants_read());
    assert_eq!(
        s.s.poll_event(),
        None,
        "Closed waits for the Alert to go out"
    );
    let mut buf = BytesMut::new();
    let t = s.s.poll_transmit(s.now, &mut buf).expect("the Alert");
    assert_eq!(hex::encode(&buf[..t.len]), ALERT_11_3);
    assert_eq!(s.s.poll_event(), None);
    buf.clear();
    assert_eq!(
        s.s.poll_transmit(s.now, &mut buf),
        None,
        "the Alert is last"
    );
    assert_eq!(
        s.s.poll_event(),
        Some(Event::Closed {
            reason: SessionError::Protocol(ProtocolError::SynBeforeSettings)
        })
    );
    assert_eq!(s.s.poll_event(), None);
    assert!(s.s.is_closed());
    assert_eq!(s.s.poll_timeout(), None);
    s.input(&frame(Command::HeartRequest, 0, b""));
    assert!(s.transmits.is_empty() && s.events.is_empty());

    // Empty Settings, then real ones: the SYN is accepted.
    let mut s = Solo::server(server_config());
    s.input(
        &[
            preamble(PASSWORD, 30),
            frame(Command::Settings, 0, b""),
            settings("2", DEFAULT_MD5),
            unhex(SYN_1),
            unhex(PSH_1_EXAMPLE),
        ]
        .concat(),
    );
    assert_eq!(s.frames(), vec![f(Command::ServerSettings, 0, b"v=2")]);
    assert!(s.take_events().contains(&opened(1, dest())));

    // Empty Settings alone leave the handshake deadline running.
    let mut s = Solo::server(server_config());
    s.input(&[preamble(PASSWORD, 30), frame(Command::Settings, 0, b"")].concat());
    s.take_events();
    s.advance(Duration::from_secs(9));
    assert!(!s.s.is_closed());
    s.advance(Duration::from_secs(1));
    assert_eq!(
        s.take_events(),
        vec![Event::Closed {
            reason: SessionError::HandshakeTimeout
        }]
    );
    assert!(s.transmits.is_empty());
}

#[test]
fn empty_alert_is_ignored_and_alert_with_text_closes_either_side() {
    // Client.
    let mut c = Solo::opened_client();
    c.input(
        &[
            frame(Command::Alert, 0, b""),
            frame(Command::HeartRequest, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(no_waste(c.frames()), vec![e(Command::HeartResponse, 0)]);
    assert!(!c.s.is_closed());
    // Control frames before ServerSettings decide nothing about the
    // server's version (only stream frames do).
    assert_eq!(c.take_events(), vec![]);
    c.input(
        &[
            frame(Command::Alert, 0, b"go away"),
            frame(Command::HeartRequest, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(
        c.take_events(),
        vec![Event::Closed {
            reason: SessionError::Alert("go away".into())
        }]
    );
    assert_eq!(c.frames(), vec![], "no answer, no FIN for stream 1");
    assert!(c.s.is_closed());

    // Server.
    let mut s = Solo::v2_server();
    s.input(&unhex(&format!("{SYN_1}{PSH_1_EXAMPLE}")));
    s.accept(1, Ok(()));
    assert_eq!(s.s.write(StreamId(1), b"queued"), Ok(6));
    s.pump();
    assert_eq!(
        s.frames(),
        vec![e(Command::SynAck, 1), f(Command::Psh, 1, b"queued")]
    );
    s.take_events();
    s.input(
        &[
            frame(Command::Alert, 0, b""),
            frame(Command::HeartRequest, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(s.frames(), vec![e(Command::HeartResponse, 0)]);
    assert!(!s.s.is_closed());
    assert_eq!(s.s.write(StreamId(1), b"never"), Ok(5));
    s.input(
        &[
            frame(Command::Alert, 0, b"bye"),
            frame(Command::HeartRequest, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(
        s.take_events(),
        vec![Event::Closed {
            reason: SessionError::Alert("bye".into())
        }]
    );
    assert_eq!(s.frames(), vec![], "no data, no FIN after the Alert");
}

// ----- data in frames that carry none, unknown commands (3.2, 3.3, 10.2, 10.3) -----

/// What a receiver that forgot to consume data would parse next.
fn hidden(sid: u32) -> Vec<u8> {
    frame(Command::HeartRequest, sid, b"")
}

#[test]
fn unknown_commands_are_consumed_and_ignored_both_roles() {
    let junk = [
        frame(Command::Unknown(0x2a), 0, &hidden(77)),
        frame(
            Command::Unknown(0x0b),
            3,
            &[hidden(78), vec![0; 300]].concat(),
        ),
        frame(Command::Unknown(0xff), 0, b""),
        frame(Command::HeartRequest, 5, b""),
    ]
    .concat();
    let mut s = Solo::v2_server();
    s.input(&[junk.clone(), unhex(SYN_1), unhex(PSH_1_EXAMPLE)].concat());
    assert_eq!(s.frames(), vec![e(Command::HeartResponse, 5)]);
    assert_eq!(s.take_events(), vec![opened(1, dest())]);

    let mut c = Solo::opened_client();
    c.input(&[junk, frame(Command::Psh, 1, b"after")].concat());
    assert_eq!(no_waste(c.frames()), vec![e(Command::HeartResponse, 5)]);
    // Frames before ServerSettings: the server is v1.
    assert_eq!(c.take_events(), [v1_decided(1), vec![readable(1)]].concat());
    assert_eq!(c.read_all(1), (b"after".to_vec(), false));
}

#[test]
fn data_on_dataless_frames_is_consumed_and_the_frame_acted_on_server() {
    let mut s = Solo::v2_server();
    let psh = frame(Command::Psh, 1, &[addr(&dest()), b"abc".to_vec()].concat());
    s.input(&[frame(Command::Syn, 1, &hidden(71)), psh].concat());
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.take_events(), vec![opened(1, dest()), readable(1)]);
    s.accept(1, Ok(()));
    assert_eq!(s.frames(), vec![e(Command::SynAck, 1)]);
    assert_eq!(s.read_all(1), (b"abc".to_vec(), false));

    s.input(
        &[
            frame(Command::HeartRequest, 6, &hidden(72)),
            frame(Command::HeartResponse, 0, &hidden(73)),
            frame(Command::Fin, 1, &hidden(74)),
            frame(Command::Psh, 1, b"late"),
        ]
        .concat(),
    );
    // The answer carries no data, whatever the request carried.
    assert_eq!(s.frames(), vec![e(Command::HeartResponse, 6)]);
    assert_eq!(
        s.take_events(),
        vec![Event::StreamFinished { id: StreamId(1) }, readable(1)]
    );
    assert_eq!(s.read_all(1), (vec![], true), "data after FIN is dropped");
    s.s.finish(StreamId(1)).unwrap();
    s.pump();
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.s.stream_count(), 0);
    assert!(!s.s.is_closed());
}

#[test]
fn data_on_dataless_frames_is_consumed_and_the_frame_acted_on_client() {
    let mut c = Solo::opened_client();
    c.input(
        &[
            frame(Command::ServerSettings, 0, b"v=2"),
            frame(Command::SynAck, 1, b""),
            frame(Command::Psh, 1, b"hi"),
            frame(Command::HeartRequest, 0x0102_0304, &hidden(81)),
            frame(Command::HeartResponse, 0, &hidden(82)),
            frame(Command::Syn, 7, &hidden(83)),
            frame(Command::Fin, 1, &hidden(84)),
            frame(Command::Psh, 1, b"late"),
        ]
        .concat(),
    );
    assert_eq!(
        no_waste(c.frames()),
        vec![e(Command::HeartResponse, 0x0102_0304)]
    );
    assert_eq!(
        c.take_events(),
        vec![
            Event::PeerVersion { version: 2 },
            Event::StreamConnected { id: StreamId(1) },
            readable(1),
            Event::StreamFinished { id: StreamId(1) },
        ]
    );
    assert_eq!(c.read_all(1), (b"hi".to_vec(), true));
    assert_eq!(c.s.stream_count(), 1);
    c.s.finish(StreamId(1)).unwrap();
    c.pump();
    assert_eq!(c.frames(), vec![], "no FIN echo");
    assert_eq!(c.s.stream_count(), 0);
    assert!(!c.s.is_closed());
}

// ----- heartbeats (3.3; checklist 7) -----

#[test]
fn heart_request_is_answered_with_its_stream_id_both_roles() {
    let sids = [0, 1, 9, 0x0102_0304, u32::MAX];
    let requests: Vec<u8> = sids
        .iter()
        .flat_map(|&sid| frame(Command::HeartRequest, sid, b""))
        .collect();
    let responses: Vec<Frame> = sids
        .iter()
        .map(|&sid| e(Command::HeartResponse, sid))
        .collect();

    let mut s = Solo::v2_server();
    s.input(&requests);
    assert_eq!(s.frames(), responses);
    assert_eq!(s.take_events(), vec![]);

    let mut c = Solo::opened_client();
    c.input(&requests);
    assert_eq!(no_waste(c.frames()), responses);
    // No heartbeat event; HeartRequests say nothing about the version.
    assert_eq!(c.take_events(), vec![]);
}

// ----- stream ids (3.3, 4.3, 10.8) -----

#[test]
fn server_ignores_unknown_ids_a_duplicate_syn_and_data_after_fin() {
    let mut s = Solo::v2_server();
    s.input(
        &[
            frame(Command::Psh, 9, b"x"),
            frame(Command::Fin, 9, b""),
            frame(Command::SynAck, 9, b""),
            frame(Command::SynAck, 9, b"err"),
            frame(Command::Psh, 0, b"y"),
            frame(Command::Fin, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.take_events(), vec![]);
    assert_eq!(s.s.stream_count(), 0);

    let psh = frame(Command::Psh, 1, &[addr(&dest()), b"ab".to_vec()].concat());
    s.input(&[unhex(SYN_1), psh].concat());
    assert_eq!(s.take_events(), vec![opened(1, dest()), readable(1)]);
    s.accept(1, Ok(()));
    assert_eq!(s.frames(), vec![e(Command::SynAck, 1)]);
    assert_eq!(s.read_all(1), (b"ab".to_vec(), false));

    // A duplicate SYN for the open id changes nothing.
    s.input(&[unhex(SYN_1), frame(Command::Psh, 1, b"cd")].concat());
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.take_events(), vec![readable(1)]);
    assert_eq!(s.read_all(1), (b"cd".to_vec(), false));
    assert_eq!(s.s.stream_count(), 1);

    // Data after FIN is dropped; no FIN goes back.
    s.input(&[frame(Command::Fin, 1, b""), frame(Command::Psh, 1, b"ef")].concat());
    assert_eq!(
        s.take_events(),
        vec![Event::StreamFinished { id: StreamId(1) }, readable(1)]
    );
    assert_eq!(s.read_all(1), (vec![], true));
    s.s.finish(StreamId(1)).unwrap();
    s.pump();
    s.input(&[frame(Command::Psh, 1, b"gh"), frame(Command::Fin, 1, b"")].concat());
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.take_events(), vec![]);
    assert_eq!(s.s.stream_count(), 0);

    // The id is free again: a new SYN opens a new stream.
    s.input(&unhex(&format!("{SYN_1}{PSH_1_EXAMPLE}")));
    assert_eq!(s.take_events(), vec![opened(1, dest())]);
}

#[test]
fn client_ignores_unknown_ids_and_data_after_fin() {
    let mut c = Solo::opened_client();
    c.input(
        &[
            frame(Command::ServerSettings, 0, b"v=2"),
            frame(Command::SynAck, 1, b""),
        ]
        .concat(),
    );
    assert_eq!(
        c.take_events(),
        vec![
            Event::PeerVersion { version: 2 },
            Event::StreamConnected { id: StreamId(1) }
        ]
    );
    c.input(
        &[
            frame(Command::SynAck, 9, b""),
            frame(Command::SynAck, 9, b"boom"),
            frame(Command::Psh, 9, b"x"),
            frame(Command::Fin, 9, b""),
            frame(Command::Psh, 0, b"y"),
            frame(Command::Fin, 0, b""),
            frame(Command::SynAck, 1, b""),
        ]
        .concat(),
    );
    assert_eq!(c.frames(), vec![]);
    assert_eq!(c.take_events(), vec![]);
    assert_eq!(c.s.stream_count(), 1);

    c.input(
        &[
            frame(Command::Psh, 1, b"ab"),
            frame(Command::Fin, 1, b""),
            frame(Command::Psh, 1, b"late"),
        ]
        .concat(),
    );
    assert_eq!(
        c.take_events(),
        vec![readable(1), Event::StreamFinished { id: StreamId(1) }]
    );
    assert_eq!(c.read_all(1), (b"ab".to_vec(), true));
    assert_eq!(c.s.write(StreamId(1), b"no"), Err(StreamError::Closed));
    c.s.finish(StreamId(1)).unwrap();
    c.pump();
    c.input(&[frame(Command::Psh, 1, b"gh"), frame(Command::Fin, 1, b"")].concat());
    assert_eq!(c.frames(), vec![]);
    assert_eq!(c.take_events(), vec![]);
    assert_eq!(c.s.stream_count(), 0);
}

#[test]
fn frames_meant_for_the_other_role_are_ignored() {
    // A server ignores UpdatePaddingScheme, ServerSettings and SYNACK.
    let mut s = Solo::v2_server();
    s.input(
        &[
            frame(Command::UpdatePaddingScheme, 0, FIXED.as_bytes()),
            frame(Command::ServerSettings, 0, b"v=1"),
            frame(Command::SynAck, 1, b"x"),
            frame(Command::HeartRequest, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(s.frames(), vec![e(Command::HeartResponse, 0)]);
    assert_eq!(s.take_events(), vec![]);
    assert_eq!(s.s.peer_version(), 2);

    // A client ignores Settings and SYN (the rewrite's behaviour).
    let mut c = Solo::opened_client();
    c.input(
        &[
            settings("2", DEFAULT_MD5),
            frame(Command::Syn, 5, b""),
            frame(Command::Psh, 5, &addr(&dest())),
            frame(Command::HeartRequest, 0, b""),
        ]
        .concat(),
    );
    assert_eq!(no_waste(c.frames()), vec![e(Command::HeartResponse, 0)]);
    // No StreamOpened; only the v1 decision (frames before ServerSettings).
    assert_eq!(c.take_events(), v1_decided(1));
    assert_eq!(c.s.stream_count(), 1);

    // ServerSettings: an empty one changes nothing; the first non-empty one
    // decides: v (order-free text) when it is 2 or more, else v1.
    let mut c = Solo::opened_client();
    c.input(&frame(Command::ServerSettings, 0, b""));
    assert_eq!(c.take_events(), vec![]);
    assert!(!c.s.peer_version_known());
    c.input(&frame(Command::ServerSettings, 0, b"x=y\nv=3"));
    assert_eq!(c.take_events(), vec![Event::PeerVersion { version: 3 }]);
    assert_eq!(c.s.peer_version(), 3);
    for text in [&b"v=x"[..], b"v=0", b"v=2\r", b"v=1"] {
        let mut c = Solo::opened_client();
        c.input(&frame(Command::ServerSettings, 0, text));
        assert_eq!(c.take_events(), v1_decided(1), "{text:?}");
        assert_eq!(c.s.peer_version(), 1);
        // Decided: a later ServerSettings changes nothing.
        c.input(&frame(Command::ServerSettings, 0, b"v=2"));
        assert_eq!(c.take_events(), vec![]);
        assert_eq!(c.s.peer_version(), 1);
    }
}

// ----- destination addresses (4.2) -----

#[test]
fn destination_split_shared_bad_and_truncated() {
    let mut s = Solo::v2_server();
    // One byte per PSH frame: reported once, after the last byte.
    s.input(&unhex(SYN_1));
    let a = addr(&dest());
    for (i, b) in a.iter().enumerate() {
        s.input(&frame(Command::Psh, 1, &[*b]));
        let want = if i + 1 == a.len() {
            vec![opened(1, dest())]
        } else {
            vec![]
        };
        assert_eq!(s.take_events(), want, "after byte {i}");
    }
    s.input(&frame(Command::Psh, 1, b"payload"));
    assert_eq!(s.take_events(), vec![readable(1)]);
    assert_eq!(s.read_all(1), (b"payload".to_vec(), false));

    // Address and payload in one PSH (the IPv6 vector's address).
    let v6 = unhex("0420010db800000000000000000000000101bb");
    s.input(
        &[
            frame(Command::Syn, 3, b""),
            frame(Command::Psh, 3, &[v6, b"hello".to_vec()].concat()),
        ]
        .concat(),
    );
    let v6_dest = SocksAddr {
        host: Host::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        port: 443,
    };
    assert_eq!(s.take_events(), vec![opened(3, v6_dest), readable(3)]);
    assert_eq!(s.read_all(3), (b"hello".to_vec(), false));

    // A domain that is an IP literal is reported as the IP; split mid-address
    // and sharing its last PSH with payload.
    let lit = addr(&SocksAddr::domain("10.0.0.1", 80));
    s.input(
        &[
            frame(Command::Syn, 5, b""),
            frame(Command::Psh, 5, &lit[..4]),
            frame(Command::Psh, 5, &[&lit[4..], b"x"].concat()),
        ]
        .concat(),
    );
    let v4_dest = SocksAddr {
        host: Host::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
        port: 80,
    };
    assert_eq!(s.take_events(), vec![opened(5, v4_dest), readable(5)]);
    for id in [1, 3, 5] {
        s.accept(id, Ok(()));
    }
    assert_eq!(
        s.frames(),
        vec![
            e(Command::SynAck, 1),
            e(Command::SynAck, 3),
            e(Command::SynAck, 5)
        ]
    );

    // A bad address type: SYNACK with the error, then FIN; the owner is told.
    s.input(
        &[
            frame(Command::Syn, 7, b""),
            frame(Command::Psh, 7, &[7, 1, 2, 3, 4, 0, 80]),
        ]
        .concat(),
    );
    let reason = "bad destination: unknown address type 0x07";
    assert_eq!(
        s.frames(),
        vec![f(Command::SynAck, 7, reason.as_bytes()), e(Command::Fin, 7)]
    );
    assert_eq!(
        s.take_events(),
        vec![Event::StreamRefused {
            id: StreamId(7),
            reason: RefuseReason::BadDestination(AddrError::BadAddressType(7))
        }]
    );

    // A truncated address, then FIN: dropped without a word.
    s.input(
        &[
            frame(Command::Syn, 9, b""),
            frame(Command::Psh, 9, b"\x03\x0bexam"),
            frame(Command::Fin, 9, b""),
        ]
        .concat(),
    );
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.take_events(), vec![]);
    // Later data for either is dropped.
    s.input(&[frame(Command::Psh, 7, b"x"), frame(Command::Psh, 9, b"y")].concat());
    assert_eq!(s.frames(), vec![]);
    assert_eq!(s.take_events(), vec![]);
    assert_eq!(s.s.stream_count(), 3);
    assert!(!s.s.is_closed());
}

// ----- stream cap (4.3 backpressure, SessionLimits) -----

#[test]
fn stream_cap_refuses_extra_syns_and_keeps_the_session() {
    let mut cfg = server_config();
    cfg.limits.max_streams = 100;
    cfg.limits.control_queue = 4096;
    let mut s = Solo::server_after_hello(cfg, "2", DEFAULT_MD5);
    s.frames();
    s.take_events();
    let first = s.transmits.len();
    let syns: Vec<u8> = (1..=10_000u32)
        .flat_map(|sid| frame(Command::Syn, sid, b""))
        .collect();
    let paused = s.input_while_reading(&syns, 1400);
    assert!(paused, "reading stops while the control queue is full");
    assert!(!s.s.is_closed());
    assert!(s.s.wants_read());
    assert_eq!(s.s.stream_count(), 100);
    assert_eq!(s.s.stats().streams_refused, 9_900);
    // Each transmit is bounded by the control queue cap plus one frame's answers.
    let max = s.transmits[first..].iter().map(Bytes::len).max().unwrap();
    assert!(max <= 4096 + 30, "transmit of {max} bytes");
    let frames = s.frames();
    assert_eq!(frames.len(), 2 * 9_900);
    for (i, pair) in frames.chunks(2).enumerate() {
        let sid = 101 + i as u32;
        assert_eq!(pair[0], f(Command::SynAck, sid, b"too many streams"));
        assert_eq!(pair[1], e(Command::Fin, sid));
    }
    assert!(
        !s.take_events()
            .iter()
            .any(|e| matches!(e, Event::StreamOpened { .. }))
    );

    // Admitted streams work; a closed one frees a slot.
    s.input(&frame(Command::Psh, 1, &addr(&dest())));
    assert_eq!(s.take_events(), vec![opened(1, dest())]);
    s.input(&frame(Command::Fin, 2, b""));
    assert_eq!(s.s.stream_count(), 99);
    s.input(
        &[
            frame(Command::Syn, 20_000, b""),
            frame(Command::Psh, 20_000, &addr(&dest())),
        ]
        .concat(),
    );
    assert_eq!(s.take_events(), vec![opened(20_000, dest())]);
    assert_eq!(s.s.stream_count(), 100);
    s.accept(1, Ok(()));
    assert_eq!(s.frames(), vec![e(Command::SynAck, 1)]);

    // A v1 client gets FIN only.
    let mut cfg = server_config();
    cfg.limits.max_streams = 2;
    let mut s = Solo::server_after_hello(cfg, "1", DEFAULT_MD5);
    s.input(
        &(1..=3)
            .flat_map(|sid| frame(Command::Syn, sid, b""))
            .collect::<Vec<u8>>(),
    );
    assert_eq!(s.frames(), vec![e(Command::Fin, 3)]);
    assert_eq!(s.s.stream_count(), 2);
}

// ----- SYNACK wait (4.4, 10.10; checklist 10) -----

#[test]
fn slow_synack_is_probed_with_a_heartbeat_and_still_connects() {
    let mut p = Pair::new(31);
    let id1 = p.open();
    p.drive();
    assert!(p.capp.events.contains(&Event::StreamConnected { id: id1 }));
    // The server's owner sits on the next stream well past the 3 s wait.
    p.sapp.auto_accept = None;
    let id2 = p.open();
    p.advance(Duration::from_secs(20));
    let c2s = frames_of(&p.c2s.log[64..]);
    let s2c = frames_of(&p.s2c.log);
    let count = |fs: &[Frame], cmd| fs.iter().filter(|f| f.cmd == cmd).count();
    assert_eq!(count(&c2s, Command::HeartRequest), 1, "one probe");
    assert_eq!(count(&s2c, Command::HeartResponse), 1);
    assert!(
        p.capp
            .events
            .iter()
            .any(|e| matches!(e, Event::HeartbeatAck { .. }))
    );
    assert!(!p.client.is_closed() && !p.server.is_closed());
    assert!(!p.capp.events.contains(&Event::StreamConnected { id: id2 }));
    assert_eq!(p.sapp.opened.last(), Some(&(id2, dest())));

    // The late SYNACK still connects the stream.
    p.server.accept_stream(id2, Ok(())).unwrap();
    p.drive();
    assert!(p.capp.events.contains(&Event::StreamConnected { id: id2 }));
    p.capp
        .send(&mut p.client, id2, Bytes::from_static(b"late but fine"));
    p.drive();
    assert_eq!(p.capp.received[&id2], b"late but fine");
    assert!(!p.client.is_closed());
    assert_eq!(p.client.stats().heartbeats_sent, 1);
}

#[test]
fn no_server_settings_within_the_synack_wait_means_a_v1_server() {
    // A v1 server answers nothing until it has data: after the 3 s wait the
    // client decides, connects the waiting stream and sends no probe.
    let mut c = Solo::opened_client();
    c.advance(Duration::from_millis(2999));
    assert_eq!(c.take_events(), vec![]);
    c.advance(Duration::from_millis(1));
    assert_eq!(c.take_events(), v1_decided(1));
    assert!(c.s.peer_version_known());
    assert_eq!(no_waste(c.frames()), vec![]);
    assert_eq!(c.s.stats().heartbeats_sent, 0);
    // What is left is the wait for the server's first word.
    assert_eq!(c.s.poll_timeout(), Some(c.now + Duration::from_secs(7)));
    assert!(!c.s.is_closed());
}

#[test]
fn a_server_that_never_says_a_word_loses_the_session_after_the_answer_timeout() {
    // Guessed v1 at 3 s, still silent at 10 s: not an AnyTLS server.
    let mut c = Solo::opened_client();
    assert!(!c.s.server_answered());
    c.advance(Duration::from_secs(3));
    c.take_events();
    // Bytes that parse as frames of unknown commands (a web server's
    // "HTTP/1.1 400 ...") are no answer.
    c.input(&frame(Command::Unknown(0x48), 0, b""));
    assert!(!c.s.server_answered());
    c.advance(Duration::from_millis(6999));
    assert!(!c.s.is_closed());
    c.advance(Duration::from_millis(1));
    assert!(c.s.is_closed());
    assert_eq!(
        c.take_events().last(),
        Some(&Event::Closed {
            reason: SessionError::NoAnswer
        })
    );
    // Any AnyTLS frame is an answer: a v1 server's data, a v2 server's
    // ServerSettings; the deadline goes away.
    for first in [
        frame(Command::Psh, 1, b"data"),
        frame(Command::ServerSettings, 0, b"v=2"),
    ] {
        let mut c = Solo::opened_client();
        c.advance(Duration::from_secs(1));
        c.input(&first);
        assert!(c.s.server_answered());
        c.advance(Duration::from_secs(60));
        assert!(!c.s.is_closed());
    }
}

#[test]
fn a_late_server_settings_overrides_the_v1_guess_for_later_streams() {
    // The guess after the SYNACK wait is only a guess: a v2 ServerSettings
    // arriving later makes new streams wait for their SYNACK again.
    let mut c = Solo::opened_client();
    c.advance(Duration::from_secs(3));
    assert_eq!(c.take_events(), v1_decided(1));
    c.input(&frame(Command::ServerSettings, 0, b"v=2"));
    assert_eq!(c.take_events(), vec![Event::PeerVersion { version: 2 }]);
    assert_eq!(c.s.peer_version(), 2);
    let now = c.now;
    let id = c.s.open_stream(now, &dest()).unwrap();
    assert_eq!(
        c.take_events(),
        vec![],
        "stream {id:?} waits for its SYNACK"
    );
    assert!(c.s.poll_timeout().is_some());
    // A stream frame, on the other hand, is proof: a v2 ServerSettings
    // after it changes nothing.
    let mut c = Solo::opened_client();
    c.input(&frame(Command::Psh, 1, b"data"));
    assert_eq!(c.take_events()[..2], v1_decided(1)[..]);
    c.input(&frame(Command::ServerSettings, 0, b"v=2"));
    assert_eq!(c.take_events(), vec![]);
    assert_eq!(c.s.peer_version(), 1);
}

#[test]
fn probe_deadline_closes_the_session_when_the_server_is_dead() {
    let mut p = Pair::new(32);
    p.open();
    p.drive();
    p.c2s.stalled = true;
    p.s2c.stalled = true;
    let t0 = p.now;
    p.open();
    p.drive();
    assert_eq!(
        p.capp.closed_reason(),
        Some(&SessionError::HeartbeatTimeout)
    );
    // 3 s stream-open wait, then the 10 s heartbeat timeout.
    assert_eq!(p.now - t0, Duration::from_secs(13));
    assert!(matches!(p.capp.events.last(), Some(Event::Closed { .. })));
    assert_eq!(p.client.stats().heartbeats_sent, 1);
    assert!(p.client.is_closed());
}

// ----- backpressure (4.3, STYLE Buffers) -----

#[test]
fn an_eof_while_paused_waits_for_the_buffered_frames_and_keeps_finished_data() {
    // The peer sends more than the lone stream's cap, FINs the stream and
    // closes the connection: the session stops reading at the cap, the EOF
    // waits behind the buffered frames, and every byte before the FIN can be
    // read after the session ended.
    let cap = client_config().limits.stream_recv_buffer;
    let chunk = vec![7u8; 16 * 1024];
    let mut wire = Vec::new();
    for _ in 0..(2 * cap / chunk.len()) {
        wire.extend(frame(Command::Psh, 1, &chunk));
    }
    wire.extend(frame(Command::Fin, 1, b""));
    let mut c = Solo::opened_client();
    c.input(&wire);
    assert!(!c.s.wants_read(), "paused at the stream's cap");
    let now = c.now;
    c.s.handle_eof(now);
    c.pump();
    assert!(!c.s.is_closed(), "the EOF waits for the buffered frames");
    let (data, eof) = c.read_all(1);
    assert_eq!(data.len(), 2 * cap);
    assert!(eof, "the FIN came after the data");
    assert!(c.s.is_closed());
    assert!(matches!(
        c.take_events().last(),
        Some(Event::Closed {
            reason: SessionError::PeerEof
        })
    ));

    // Same without a FIN, the last frame filling the cap exactly: the
    // session still ends once the reader drained it (it used to stay open,
    // paused on nothing, for ever).
    let mut wire = Vec::new();
    for _ in 0..(2 * cap / chunk.len()) {
        wire.extend(frame(Command::Psh, 1, &chunk));
    }
    let mut c = Solo::opened_client();
    c.input(&wire);
    let now = c.now;
    c.s.handle_eof(now);
    c.pump();
    let _ = c.read_all(1);
    let _ = c.read_all(1);
    assert!(
        c.s.is_closed(),
        "the session ended after the buffered input"
    );
}

#[test]
fn paused_reader_stops_the_session_reading_and_loses_nothing() {
    let mut ccfg = client_config();
    ccfg.limits.stream_recv_buffer = 16 * 1024;
    let mut p = Pair::with(41, ccfg, server_config());
    let id = p.open();
    p.capp.send(&mut p.client, id, Bytes::from_static(b"hi"));
    p.drive();
    assert_eq!(p.capp.received[&id], b"hi");

    p.capp.paused = true;
    let data = payload(300_000, 5);
    p.capp.send(&mut p.client, id, data.clone());
    // Less than `stalled_stream_timeout` (5 s): the lone stream pauses input.
    p.drive_until(p.now + Duration::from_secs(2));
    assert!(!p.client.wants_read(), "a full stream buffer stops reading");
    let buffered = p.client.readable_len(id);
    assert!(
        (16 * 1024..=16 * 1024 + 65535).contains(&buffered),
        "{buffered} bytes buffered"
    );
    assert!(!p.s2c.is_empty(), "the rest waits in the connection");
    assert_eq!(p.capp.received[&id].len(), 2);
    assert!(!p.client.is_closed() && !p.server.is_closed());

    p.capp.resume(&mut p.client);
    p.drive();
    assert!(p.client.wants_read());
    assert_eq!(p.capp.received[&id], [b"hi".to_vec(), data].concat());
}

#[test]
fn a_stalled_lone_reader_stops_pausing_input_and_loses_nothing_under_the_limit() {
    let mut ccfg = client_config();
    ccfg.limits.stream_recv_buffer = 16 * 1024;
    let mut p = Pair::with(43, ccfg, server_config());
    let id = p.open();
    p.drive();
    p.capp.paused = true;
    let data = payload(300_000, 6);
    p.capp.send(&mut p.client, id, data.clone());
    p.drive_until(p.now + Duration::from_secs(2));
    assert!(!p.client.wants_read());
    // Past the stall timeout the session reads on (streams it has not seen yet
    // may be waiting): the stream buffers everything, 300 KB < 1 MiB limit.
    p.drive();
    assert!(p.client.wants_read());
    assert_eq!(p.client.readable_len(id), data.len());
    assert!(
        !p.capp
            .events
            .iter()
            .any(|e| matches!(e, Event::StreamReset { .. }))
    );
    let mut got = Vec::new();
    while let Ok(Some(chunk)) = p.client.read(p.now, id) {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data);
}

#[test]
fn a_stalled_lone_reader_past_the_limit_is_reset_and_the_session_lives() {
    let mut ccfg = client_config();
    ccfg.limits.stream_recv_buffer = 16 * 1024;
    ccfg.limits.stream_recv_limit = 100 * 1024;
    ccfg.limits.stalled_stream_timeout = Duration::from_secs(2);
    let mut p = Pair::with(44, ccfg, server_config());
    let id = p.open();
    p.drive();
    p.capp.paused = true;
    p.capp.send(&mut p.client, id, payload(300_000, 7));
    p.drive();
    assert!(
        p.capp.events.contains(&Event::StreamReset {
            id,
            reason: ResetReason::ReceiveOverflow
        }),
        "{:?}",
        p.capp.events
    );
    assert_eq!(p.client.readable_len(id), 0, "its buffer is dropped");
    assert!(matches!(
        p.client.read(p.now, id),
        Err(StreamError::UnknownStream(_))
    ));
    assert!(!p.client.is_closed() && !p.server.is_closed());
    assert!(p.client.wants_read());
    // The session carries on: a new stream echoes.
    p.capp.resume(&mut p.client);
    let id2 = p.open();
    p.capp
        .send(&mut p.client, id2, Bytes::from_static(b"after the reset"));
    p.drive();
    assert_eq!(p.capp.received[&id2], b"after the reset");
}

#[test]
fn a_reader_that_stops_stalls_only_its_own_stream() {
    let mut ccfg = client_config();
    ccfg.limits.stream_recv_buffer = 16 * 1024;
    ccfg.limits.stream_recv_limit = 100 * 1024;
    let mut p = Pair::with(45, ccfg, server_config());
    let a = p.open();
    let b = p.open();
    p.drive();
    // The application reads stream b only; a's reader is stuck.
    p.capp.paused = true;
    p.capp.send(&mut p.client, a, payload(400_000, 8));
    let want_b = payload(60_000, 9);
    p.capp.send(&mut p.client, b, want_b.clone());
    let start = p.now;
    let mut got_b = Vec::new();
    for _ in 0..2000 {
        if got_b.len() >= want_b.len() {
            break;
        }
        p.step();
        while let Ok(Some(chunk)) = p.client.read(p.now, b) {
            got_b.extend_from_slice(&chunk);
        }
    }
    assert_eq!(got_b, want_b, "stream b flows while a is stuck");
    assert!(
        p.now - start < Duration::from_secs(1),
        "no stall: {:?}",
        p.now - start
    );
    p.drive();
    assert!(
        p.capp.events.contains(&Event::StreamReset {
            id: a,
            reason: ResetReason::ReceiveOverflow
        }),
        "a overflowed its limit and was reset: {:?}",
        p.capp.events
    );
    assert!(!p.client.is_closed() && !p.server.is_closed());
    // The server saw a FIN for a (its echo stops).
    assert!(p.sapp.events.contains(&Event::StreamFinished { id: a }));
}

#[test]
fn writer_is_blocked_at_the_send_cap_then_writable() {
    let mut ccfg = client_config();
    ccfg.limits.stream_send_buffer = 8 * 1024;
    let mut p = Pair::with(42, ccfg, server_config());
    let id = p.open();
    p.drive();
    let chunk = [7u8; 4096];
    assert_eq!(p.client.write(id, &chunk), Ok(4096));
    assert_eq!(p.client.write(id, &chunk), Ok(4096));
    assert_eq!(p.client.write(id, &chunk), Err(StreamError::Blocked));
    assert!(!p.capp.events.contains(&Event::StreamWritable { id }));
    p.drain();
    assert!(p.capp.events.contains(&Event::StreamWritable { id }));
    assert_eq!(p.client.write(id, &chunk), Ok(4096));
    p.drive();
    assert_eq!(p.capp.received[&id], vec![7u8; 3 * 4096]);
}

#[test]
fn a_huge_write_takes_only_what_fits_then_blocks_until_drained() {
    let mut c = Solo::opened_client();
    let cap = client_config().limits.stream_send_buffer;
    // What fits, in whole frames' worth (see `whole_frames_are_queued_...`).
    let fits = cap / MAX_PSH_DATA * MAX_PSH_DATA;
    let id = StreamId(1);
    // 100 MiB in one call: the stream takes its send cap and says so.
    let huge = vec![9u8; 100 << 20];
    assert_eq!(c.s.write(id, &huge), Ok(fits));
    assert_eq!(c.s.write(id, &huge[fits..]), Err(StreamError::Blocked));
    // The same without a copy: nothing fits, nothing is taken.
    let mut rest = Bytes::from(huge).slice(fits..);
    assert_eq!(c.s.write_bytes(id, &mut rest), Err(StreamError::Blocked));
    assert_eq!(rest.len(), (100 << 20) - fits);
    assert_eq!(c.s.poll_event(), None, "no StreamWritable before a drain");
    // Transmits drain the queue, then StreamWritable comes.
    c.pump();
    let sent: usize = (c.frames().iter())
        .filter(|f| f.cmd == Command::Psh && f.stream_id == id)
        .map(|f| f.data.len())
        .sum();
    assert_eq!(sent, fits);
    assert_eq!(c.take_events(), vec![Event::StreamWritable { id }]);
    // Room again: the next cap's worth, taken as a view of `rest`.
    assert_eq!(c.s.write_bytes(id, &mut rest), Ok(fits));
    assert_eq!(rest.len(), (100 << 20) - 2 * fits);
    assert_eq!(c.s.write(id, &[1; MAX_PSH_DATA]), Err(StreamError::Blocked));
}

/// A write that does not fit whole is taken in whole frames' worth, so it
/// goes out in full frames (a Go peer writes each PSH payload to its socket
/// on its own): cut at the room left, 64 KiB would be frames of 32 761,
/// 32 761 and 14 bytes. Writes that fit, and writes smaller than a frame,
/// take what fits as before; `StreamWritable` waits for room for a frame.
#[test]
fn whole_frames_are_queued_when_a_write_does_not_fit() {
    let mut c = Solo::opened_client();
    let cap = client_config().limits.stream_send_buffer;
    assert!(
        cap >= 2 * MAX_PSH_DATA,
        "the test needs room for two frames"
    );
    let id = StreamId(1);
    // A first write that fits is taken whole, leaving a frame and 1000.
    let first = cap - MAX_PSH_DATA - 1000;
    assert_eq!(c.s.write(id, &vec![1; first]), Ok(first));
    // 64 KiB do not fit: one frame's worth.
    assert_eq!(c.s.write(id, &[2; 64 * 1024]), Ok(MAX_PSH_DATA));
    // Less than a frame left: a frame's worth waits; a smaller write fits.
    assert_eq!(c.s.write(id, &[3; 64 * 1024]), Err(StreamError::Blocked));
    assert_eq!(c.s.write(id, &[4; 100]), Ok(100));
    c.pump();
    assert_eq!(c.take_events(), vec![Event::StreamWritable { id }]);
    let sizes: Vec<usize> = (c.frames().iter())
        .filter(|f| f.cmd == Command::Psh)
        .map(|f| f.data.len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), first + MAX_PSH_DATA + 100);
    assert!(sizes.iter().all(|&n| n <= MAX_PSH_DATA));

    // Two busy streams: a transmit that holds the other stream's data does
    // not cut a bulk stream's frame short; it goes whole in the next one.
    let mut c = Solo::opened_client();
    c.pump();
    c.frames();
    assert_eq!(c.s.open_stream(c.now, &dest()), Ok(StreamId(2)));
    c.pump();
    c.frames();
    c.take_events();
    assert_eq!(c.s.write(StreamId(1), &[6; 100]), Ok(100));
    assert_eq!(c.s.write(StreamId(2), &[7; 50_000]), Ok(50_000));
    assert_eq!(c.s.write(StreamId(1), &[8; 100]), Ok(100));
    c.pump();
    let sizes: Vec<(u32, usize)> = (c.frames().iter())
        .filter(|f| f.cmd == Command::Psh)
        .map(|f| (f.stream_id.0, f.data.len()))
        .collect();
    assert_eq!(
        sizes,
        [(1, 200), (2, MAX_PSH_DATA), (2, 50_000 - MAX_PSH_DATA)],
        "no short frame before the full one"
    );

    // Caps smaller than a frame: writes take what fits, as ever.
    let mut cfg = client_config();
    cfg.limits.stream_send_buffer = 1000;
    let mut small = Solo::client(cfg, PaddingScheme::default_scheme(), true);
    assert_eq!(small.s.write(id, &[5; 64 * 1024]), Ok(1000));
}

/// `StreamReadable` is edge-triggered: raised when a stream goes from nothing
/// to read to something to read (data or EOF), and not again until a read
/// returned `Err(Blocked)`.
#[test]
fn stream_readable_is_edge_triggered() {
    let mut c = Solo::opened_client();
    c.input(
        &[
            frame(Command::ServerSettings, 0, b"v=2"),
            frame(Command::SynAck, 1, b""),
        ]
        .concat(),
    );
    c.take_events();
    let id = StreamId(1);
    // Data arrives: one event.
    c.input(&frame(Command::Psh, 1, b"a"));
    assert_eq!(c.take_events(), vec![readable(1)]);
    // More data while unread: none.
    c.input(&frame(Command::Psh, 1, b"b"));
    assert_eq!(c.take_events(), vec![]);
    // A read that leaves data behind does not re-arm it.
    assert_eq!(c.s.read(c.now, id), Ok(Some(Bytes::from_static(b"a"))));
    c.input(&frame(Command::Psh, 1, b"c"));
    assert_eq!(c.take_events(), vec![]);
    // Reading the stream empty does not either; only `Blocked` does.
    assert_eq!(c.s.read(c.now, id), Ok(Some(Bytes::from_static(b"b"))));
    assert_eq!(c.s.read(c.now, id), Ok(Some(Bytes::from_static(b"c"))));
    c.input(&frame(Command::Psh, 1, b"d"));
    assert_eq!(c.take_events(), vec![]);
    assert_eq!(c.s.read(c.now, id), Ok(Some(Bytes::from_static(b"d"))));
    assert_eq!(c.s.read(c.now, id), Err(StreamError::Blocked));
    c.input(&frame(Command::Psh, 1, b"e"));
    assert_eq!(c.take_events(), vec![readable(1)]);
    assert_eq!(c.read_all(1), (b"e".to_vec(), false));
    // EOF after FIN is signalled the same way.
    c.input(&frame(Command::Fin, 1, b""));
    assert_eq!(
        c.take_events(),
        vec![Event::StreamFinished { id }, readable(1)]
    );
    assert_eq!(c.s.read(c.now, id), Ok(None));
}

// ----- configuration -----

fn client_session(cfg: ClientConfig) -> Result<ClientSession, ConfigError> {
    let scheme = Arc::new(PaddingScheme::default_scheme());
    Session::client(Arc::new(cfg), SessionSeq(1), scheme, [1; 32], epoch())
}

#[test]
fn client_configs_that_would_stall_are_refused() {
    assert!(client_session(client_config()).is_ok());
    let too_small = |name, min| ConfigError::TooSmall {
        name,
        value: 0,
        min,
    };

    let mut cfg = client_config();
    cfg.limits.max_write = 0;
    let err = client_session(cfg).err();
    assert_eq!(err, Some(too_small("max_write", 1)));

    let mut cfg = client_config();
    cfg.limits.stream_send_buffer = 0;
    let err = client_session(cfg).err();
    assert_eq!(err, Some(too_small("stream_send_buffer", 1)));

    let mut cfg = client_config();
    cfg.stream_open_timeout = Duration::ZERO;
    let err = client_session(cfg).err();
    assert_eq!(
        err,
        Some(ConfigError::TooShort {
            name: "stream_open_timeout",
            value: Duration::ZERO,
            min: Duration::from_millis(1),
        })
    );
}

// ----- authentication (2.1, 2.2; checklist 1) -----

#[test]
fn wrong_preamble_is_rejected_with_every_byte_and_nothing_sent() {
    // An HTTP probe in three reads, the first two shorter than the hash.
    let probe = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl\r\n\r\n";
    let mut s = Solo::server(server_config());
    s.input(&probe[..10]);
    s.input(&probe[10..20]);
    assert_eq!(s.take_events(), vec![]);
    assert!(s.s.wants_read());
    s.input(&probe[20..]);
    assert_eq!(
        s.take_events(),
        vec![
            Event::AuthRejected {
                replay: Bytes::from_static(probe)
            },
            Event::Closed {
                reason: SessionError::AuthFailed
            }
        ]
    );
    assert!(s.transmits.is_empty());
    assert!(s.s.is_closed());
    assert_eq!(s.s.poll_timeout(), None);
    s.input(b"more");
    assert!(s.transmits.is_empty() && s.events.is_empty());

    // A wrong password in a well-formed preamble, frames after it.
    let wire = [
        preamble("wrong", 30),
        settings("2", DEFAULT_MD5),
        unhex(SYN_1),
    ]
    .concat();
    let mut s = Solo::server(server_config());
    s.input(&wire);
    assert_eq!(
        s.take_events(),
        vec![
            Event::AuthRejected {
                replay: Bytes::from(wire)
            },
            Event::Closed {
                reason: SessionError::AuthFailed
            }
        ]
    );
    assert!(s.transmits.is_empty());
}

#[test]
fn preamble_split_across_many_reads_is_accepted() {
    for (pad, piece) in [(30, 1), (0, 1), (1000, 7), (30, 33)] {
        let wire = [
            preamble(PASSWORD, pad),
            settings("2", DEFAULT_MD5),
            unhex(SYN_1),
            unhex(PSH_1_EXAMPLE),
        ]
        .concat();
        let mut s = Solo::server(server_config());
        for chunk in wire.chunks(piece) {
            s.input(chunk);
        }
        assert_eq!(
            s.take_events(),
            vec![
                Event::Authenticated { user: UserId(0) },
                Event::Established { peer_version: 2 },
                opened(1, dest())
            ],
            "padding {pad}, pieces of {piece}"
        );
        assert_eq!(s.frames(), vec![f(Command::ServerSettings, 0, b"v=2")]);
    }
}

// ----- session end (3.3, 3.4) -----

#[test]
fn peer_eof_closes_without_sending_anything() {
    let mut s = Solo::v2_server();
    s.input(&unhex(&format!("{SYN_1}{PSH_1_EXAMPLE}")));
    s.accept(1, Ok(()));
    s.frames();
    s.take_events();
    assert_eq!(s.s.write(StreamId(1), b"unsent"), Ok(6));
    s.s.handle_eof(s.now);
    s.pump();
    assert_eq!(s.frames(), vec![], "no data, no FINs");
    assert_eq!(
        s.take_events(),
        vec![Event::Closed {
            reason: SessionError::PeerEof
        }]
    );
    assert_eq!(s.s.stream_count(), 0);

    let mut c = Solo::opened_client();
    assert_eq!(c.s.write(StreamId(1), b"unsent"), Ok(6));
    c.s.handle_eof(c.now);
    c.pump();
    assert_eq!(c.frames(), vec![]);
    assert_eq!(
        c.take_events(),
        vec![Event::Closed {
            reason: SessionError::PeerEof
        }]
    );
    assert_eq!(c.s.poll_timeout(), None);
}

// ----- FIN is never answered with FIN (4.3, 10.8) -----

#[test]
fn a_stream_the_peer_already_closed_gets_no_fin_back() {
    // Server: the client sends FIN while the owner is still dialling; the
    // failed dial is reported (SYNACK) but FIN is not answered with FIN (4.3).
    let mut s = Solo::v2_server();
    s.input(&unhex(&format!("{SYN_1}{PSH_1_EXAMPLE}")));
    s.input(&frame(Command::Fin, 1, b""));
    assert_eq!(
        s.take_events(),
        vec![
            opened(1, dest()),
            Event::StreamFinished { id: StreamId(1) },
            readable(1)
        ]
    );
    s.accept(1, Err("dial tcp: timeout".into()));
    assert_eq!(
        s.frames(),
        vec![f(Command::SynAck, 1, b"dial tcp: timeout")]
    );
    assert_eq!(s.s.stream_count(), 0);

    // Client: the server's FIN arrives first, then a SYNACK error: the stream
    // is refused, but no FIN goes back for it.
    let mut c = Solo::opened_client();
    c.input(
        &[
            frame(Command::ServerSettings, 0, b"v=2"),
            frame(Command::Fin, 1, b""),
        ]
        .concat(),
    );
    c.take_events();
    c.input(&frame(Command::SynAck, 1, b"refused"));
    assert_eq!(c.frames(), vec![]);
    assert_eq!(
        c.take_events(),
        vec![Event::StreamRefused {
            id: StreamId(1),
            reason: RefuseReason::Server("refused".into())
        }]
    );
    assert_eq!(c.s.stream_count(), 0);
}

// ----- preamble padding (2.1, 6.1, 10.12) -----

#[test]
fn preamble_padding_comes_from_the_first_item_of_line_0() {
    for (scheme, lens) in [
        ("stop=2\n0=c,30-30\n1=100-100", 34..35),
        ("stop=2\n1=100-100", 34..35),
        ("stop=2\n0=\n1=100-100", 34..35),
        ("stop=2\n0=x,7-7,30-30", 41..42),
        ("stop=2\n0=20-10", 44..54),
    ] {
        let scheme = PaddingScheme::parse(Bytes::from_static(scheme.as_bytes())).unwrap();
        for seed in 0..8u8 {
            let now = epoch();
            let mut s = Session::client(
                Arc::new(client_config()),
                SessionSeq(1),
                Arc::new(scheme.clone()),
                [seed; 32],
                now,
            )
            .expect("valid config");
            let mut buf = BytesMut::new();
            let t = s.poll_transmit(now, &mut buf).unwrap();
            assert!(lens.contains(&t.len), "{scheme:?}: {}", t.len);
            let pad = usize::from(u16::from_be_bytes([buf[32], buf[33]]));
            assert_eq!(34 + pad, t.len);
            assert!(buf[34..].iter().all(|&b| b == 0));
        }
    }
}

#[test]
fn the_answer_wait_comes_after_the_synack_wait_whatever_its_length() {
    // A long SYNACK wait (here 600 s) delays the v1 guess; a silent server
    // is given up `answer_timeout` (7 s) after it, never before it.
    let mut cfg = client_config();
    cfg.stream_open_timeout = Duration::from_secs(600);
    let mut c = Solo::client(cfg, PaddingScheme::default_scheme(), true);
    c.frames();
    c.take_events();
    c.advance(Duration::from_secs(600));
    assert!(c.s.peer_version_known(), "the v1 guess");
    c.advance(Duration::from_millis(6999));
    assert!(!c.s.is_closed());
    c.advance(Duration::from_millis(1));
    assert!(c.s.is_closed());
}

#[test]
fn a_synack_without_server_settings_is_an_answer() {
    // A server that answers SYNACK without a usable ServerSettings (empty:
    // ignored): the stream is connected and the server has answered (the
    // owner may go on: `Client::connect` does), though its version stays
    // unknown and no timer will decide it.
    let mut c = Solo::opened_client();
    c.advance(Duration::from_millis(100));
    c.input(&frame(Command::ServerSettings, 0, b""));
    c.input(&frame(Command::SynAck, 1, b""));
    assert_eq!(
        c.take_events(),
        vec![Event::StreamConnected { id: StreamId(1) }]
    );
    assert!(c.s.server_answered());
    assert!(!c.s.peer_version_known());
    assert_eq!(c.s.poll_timeout(), None);
    c.advance(Duration::from_secs(600));
    assert!(!c.s.is_closed());
}
