//! Client and server sessions against each other in virtual time.

mod common;

use std::time::Duration;

use anytls_core::error::RefuseReason;
use anytls_core::{Command, Event, SessionError, StreamId};
use bytes::Bytes;
use common::*;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn echo_through_one_stream() {
    let mut p = Pair::new(1);
    let id = p.open();
    p.capp.send(&mut p.client, id, Bytes::from_static(b"hello"));
    p.drive();
    assert_eq!(
        p.capp.received.get(&id).map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert_eq!(p.sapp.opened, vec![(id, dest())]);
    assert!(p.capp.events.contains(&Event::StreamConnected { id }));
    assert!(p.capp.events.contains(&Event::PeerVersion { version: 2 }));
    assert_eq!(p.client.peer_version(), 2);
    assert_eq!(p.server.peer_version(), 2);
    // Close: the client finishes, the server releases without echoing FIN.
    p.client.finish(id).unwrap();
    p.drive();
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    let fins_from_server = frames_of(&p.s2c.log)
        .iter()
        .filter(|f| f.cmd == Command::Fin)
        .count();
    assert_eq!(fins_from_server, 0, "FIN must not be echoed");
    assert!(!p.client.is_closed() && !p.server.is_closed());
}

#[test]
fn echo_200k_byte_exact_split_into_frames() {
    for seed in 0..4 {
        let mut p = Pair::new(seed);
        let id = p.open();
        let data = payload(200_000, seed as u8);
        p.capp.send(&mut p.client, id, data.clone());
        p.drive();
        assert_eq!(p.capp.received.get(&id).map(Vec::len), Some(data.len()));
        assert_eq!(p.capp.received[&id], data, "seed {seed}");
        let frames = frames_of(&p.c2s.log[64..]);
        let psh: Vec<usize> = frames
            .iter()
            .filter(|f| f.cmd == Command::Psh && f.stream_id == id)
            .map(|f| f.data.len())
            .collect();
        assert!(psh.len() > 4);
        assert!(psh.iter().all(|&n| n <= 65535));
        assert_eq!(psh.iter().sum::<usize>(), 15 + data.len(), "address + data");
    }
}

#[test]
fn first_transmits_have_the_default_scheme_shapes() {
    for seed in 0..20 {
        let mut p = Pair::new(seed);
        let id = p.open();
        p.drain();
        // Packet 0: the preamble, 64 bytes with the default scheme.
        assert_eq!(p.c2s.transmits[0], 64);
        // Packet 1: Settings (76) + SYN (7) + PSH(addr) (22) = 105 bytes, shaped
        // by one draw l from 100..399: one record of l bytes padded with Waste
        // (payload alone when the Waste would not fit), or, when l < 105, an
        // l-byte record and the rest as one more write.
        let t1 = p.c2s.transmits[1];
        assert!((100..400).contains(&t1), "packet 1 record {t1}");
        let mut next = 2;
        if t1 < 105 {
            assert_eq!(p.c2s.transmits[2], 105 - t1);
            next = 3;
        }
        assert_eq!(p.c2s.transmits.len(), next);
        let frames = frames_of(&p.c2s.log[64..]);
        assert_eq!(frames[0].cmd, Command::Settings);
        assert_eq!(frames[1].cmd, Command::Syn);
        assert_eq!(frames[2].cmd, Command::Psh);
        if t1 > 105 + 7 {
            assert_eq!(frames[3].cmd, Command::Waste);
            assert_eq!(frames[3].data.len(), t1 - 105 - 7);
        } else {
            assert_eq!(frames.len(), 3);
        }
        // Packet 2: a 1000-byte payload write (1007 with its header): 400..499,
        // then the rest in a 500..999-sized record; the c mark then stops.
        p.capp.send(&mut p.client, id, payload(1000, 1));
        p.drain();
        let t = &p.c2s.transmits[next..];
        assert!((400..500).contains(&t[0]), "{t:?}");
        assert!((500..1000).contains(&t[1]), "{t:?}");
        assert_eq!(t.len(), 2, "the c mark stops after the payload: {t:?}");
        p.drive();
        assert_eq!(p.capp.received[&id], payload(1000, 1));
    }
}

#[test]
fn shaping_ends_at_stop() {
    let mut p = Pair::new(3);
    let id = p.open();
    p.drive();
    // Packets 2..=7 are shaped; from packet 8 on writes go out whole.
    for i in 0..10 {
        p.capp.send(&mut p.client, id, payload(3000, i));
        p.drive();
    }
    let t = &p.c2s.transmits;
    let last = *t.last().unwrap();
    assert_eq!(last, 3007, "unshaped write: one PSH frame: {t:?}");
    assert_eq!(p.capp.received[&id].len(), 30_000);
}

#[test]
fn server_sends_no_shaped_or_padded_output() {
    let mut p = Pair::new(4);
    let id = p.open();
    p.capp.send(&mut p.client, id, payload(5000, 9));
    p.drive();
    let frames = frames_of(&p.s2c.log);
    assert!(frames.iter().all(|f| f.cmd != Command::Waste));
    assert_eq!(frames[0].cmd, Command::ServerSettings);
    assert_eq!(&frames[0].data[..], b"v=2");
}

#[test]
fn fifty_concurrent_streams_on_one_session() {
    let mut p = Pair::new(5);
    let ids: Vec<StreamId> = (0..50).map(|_| p.open()).collect();
    for (i, id) in ids.iter().enumerate() {
        p.capp
            .send(&mut p.client, *id, payload(10_000 + i * 97, i as u8));
    }
    p.drive();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            p.capp.received[id],
            payload(10_000 + i * 97, i as u8),
            "stream {id}"
        );
    }
    assert_eq!(p.sapp.opened.len(), 50);
    assert_eq!(p.server.stream_count(), 50);
    for id in &ids {
        p.client.finish(*id).unwrap();
    }
    p.drive();
    assert_eq!(p.server.stream_count(), 0);
    assert_eq!(p.client.stream_count(), 0);
}

#[test]
fn peer_fin_gives_eof_after_buffered_data() {
    let mut p = Pair::new(6);
    p.sapp.echo = false;
    p.sapp.auto_accept = Some(Ok(()));
    let id = p.open();
    p.capp.send(&mut p.client, id, Bytes::from_static(b"x"));
    p.drive();
    // The server writes then finishes: the client reads both chunks, then EOF.
    assert_eq!(p.server.write(id, b"abc"), Ok(3));
    assert_eq!(p.server.write(id, b"def"), Ok(3));
    p.server.finish(id).unwrap();
    p.drive();
    assert_eq!(p.capp.received[&id], b"abcdef");
    assert!(p.capp.eof.contains(&id));
    assert!(p.capp.events.contains(&Event::StreamFinished { id }));
    assert_eq!(p.client.stream_count(), 0, "released on EOF");
    assert_eq!(
        p.client.write(id, b"late"),
        Err(anytls_core::StreamError::UnknownStream(id.0))
    );
    let client_fins = frames_of(&p.c2s.log[64..])
        .iter()
        .filter(|f| f.cmd == Command::Fin)
        .count();
    assert_eq!(client_fins, 0, "no FIN echo from the client");
}

#[test]
fn synack_error_reaches_the_stream_owner_and_server_fins() {
    let mut p = Pair::new(7);
    p.sapp.auto_accept = Some(Err(
        "dial tcp 127.0.0.1:9: connect: connection refused".into()
    ));
    let id = p.open();
    p.drive();
    assert_eq!(
        p.capp.refused,
        vec![(
            id,
            RefuseReason::Server("dial tcp 127.0.0.1:9: connect: connection refused".into())
        )]
    );
    let s2c = frames_of(&p.s2c.log);
    let synack = s2c.iter().find(|f| f.cmd == Command::SynAck).unwrap();
    assert_eq!(
        &synack.data[..],
        b"dial tcp 127.0.0.1:9: connect: connection refused"
    );
    assert!(
        s2c.iter()
            .any(|f| f.cmd == Command::Fin && f.stream_id == id)
    );
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    assert!(
        !p.client.is_closed(),
        "a refused stream leaves the session up"
    );
    // The session still carries the next stream.
    p.sapp.auto_accept = Some(Ok(()));
    let id2 = p.open();
    p.capp
        .send(&mut p.client, id2, Bytes::from_static(b"again"));
    p.drive();
    assert_eq!(p.capp.received[&id2], b"again");
}

#[test]
fn heartbeat_is_answered_with_rtt() {
    let mut p = Pair::new(8);
    p.drive();
    p.client.send_heartbeat(p.now, Some(Duration::from_secs(5)));
    p.drive();
    let rtt = p
        .capp
        .events
        .iter()
        .find_map(|e| match e {
            Event::HeartbeatAck { rtt } => Some(*rtt),
            _ => None,
        })
        .expect("heartbeat answered");
    assert_eq!(rtt, Duration::from_millis(20));
    assert!(!p.client.is_closed());
    // The server may send heartbeats too; the client answers with the same sid.
    p.server.send_heartbeat(p.now, None);
    p.drive();
    assert!(
        p.sapp
            .events
            .iter()
            .any(|e| matches!(e, Event::HeartbeatAck { .. }))
    );
}

#[test]
fn dead_peer_is_detected_by_the_heartbeat_deadline() {
    let mut p = Pair::new(9);
    p.drive();
    p.s2c.stalled = true;
    let start = p.now;
    p.client.send_heartbeat(p.now, Some(Duration::from_secs(5)));
    p.drive();
    assert_eq!(
        p.capp.closed_reason(),
        Some(&SessionError::HeartbeatTimeout)
    );
    assert_eq!(p.now - start, Duration::from_secs(5));
    assert!(p.client.is_closed());
    assert!(matches!(p.capp.events.last(), Some(Event::Closed { .. })));
}

#[test]
fn alert_closes_both_sides() {
    // A client whose first frame is a SYN (no Settings) gets the Alert.
    let mut p = Pair::new(10);
    p.drive();
    assert!(!p.server.is_closed());
    let mut raw = bytes::BytesMut::new();
    anytls_core::frame::encode_frame(&mut raw, Command::Alert, StreamId(0), b"bye").unwrap();
    p.client.handle_input(p.now, raw);
    p.drain();
    assert_eq!(
        p.capp.closed_reason(),
        Some(&SessionError::Alert("bye".into()))
    );
}

#[test]
fn handshake_deadline_closes_a_silent_client() {
    let mut p = Pair::new(11);
    p.c2s.stalled = true;
    p.drive();
    assert_eq!(
        p.sapp.closed_reason(),
        Some(&SessionError::HandshakeTimeout)
    );
    assert_eq!(p.elapsed(), Duration::from_secs(10));
}

#[test]
fn short_first_read_is_decided_at_once_when_configured() {
    use anytls_core::Session;
    use std::sync::Arc;
    let now = epoch();
    let mut cfg = server_config();
    cfg.decide_on_first_input = true;
    let cfg = Arc::new(cfg);
    // A probe shorter than the hash: rejected on its first read, every byte replayed.
    let mut s = Session::server(cfg.clone(), [1; 32], now).expect("valid config");
    s.handle_input(now, bytes::BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
    assert_eq!(
        s.poll_event(),
        Some(Event::AuthRejected {
            replay: Bytes::from_static(b"GET / HTTP/1.1\r\n")
        })
    );
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed {
            reason: SessionError::AuthFailed
        })
    );
    // A real preamble in one record is accepted, even when later bytes trickle.
    let mut s = Session::server(cfg, [1; 32], now).expect("valid config");
    let mut pre = bytes::BytesMut::new();
    anytls_core::auth::encode_preamble(&anytls_core::PasswordHash::of(PASSWORD), 30, &mut pre);
    let tail = pre.split_off(40);
    s.handle_input(now, pre);
    s.handle_input(now, tail);
    assert!(matches!(s.poll_event(), Some(Event::Authenticated { .. })));
    assert!(!s.is_closed());
}
