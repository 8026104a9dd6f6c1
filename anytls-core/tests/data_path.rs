//! The bulk data path: which transmits may be coalesced into full TLS records
//! (`Transmit::shaped`), and stream data that is delivered as it arrives and
//! never copied on the way in.

mod common;

use std::sync::Arc;
use std::time::Instant;

use anytls_core::auth::encode_preamble;
use anytls_core::frame::encode_frame;
use anytls_core::session::{ClientSession, ServerSession, SessionRole};
use anytls_core::{
    Command, Event, PaddingScheme, PasswordHash, Session, SessionSeq, StreamId, Transmit,
};
use bytes::{Bytes, BytesMut};
use common::*;

/// Preamble 0 = 5 bytes of padding, packets 1 and 2 shaped, 3 on unshaped.
const FIXED: &str = "stop=3\n0=5-5\n1=200-200\n2=300-300";

fn frame(cmd: Command, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame(&mut b, cmd, StreamId(sid), data).unwrap();
    b
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every transmit the session has now.
fn transmits<R: SessionRole>(s: &mut Session<R>, now: Instant) -> Vec<(Transmit, Bytes)> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    while let Some(t) = s.poll_transmit(now, &mut buf) {
        out.push((t, buf.split().freeze()));
        assert!(out.len() < 100_000, "transmits do not stop");
    }
    out
}

/// A v2 server that took a client's hello and stream 1 (to `dest()`), accepted.
fn server_with_stream() -> (ServerSession, Instant) {
    let now = epoch();
    let mut s = Session::server(Arc::new(server_config()), [3; 32], now).expect("valid config");
    let mut dst = Vec::new();
    dest().encode(&mut dst).unwrap();
    let text = "v=2\nclient=anytls/0.0.13\npadding-md5=75cff2ad89aadf5e257059ee571ebe11";
    let mut hello = Vec::new();
    encode_preamble(&PasswordHash::of(PASSWORD), 30, &mut hello);
    hello.extend(frame(Command::Settings, 0, text.as_bytes()));
    hello.extend(frame(Command::Syn, 1, &[]));
    hello.extend(frame(Command::Psh, 1, &dst));
    s.handle_input(now, BytesMut::from(&hello[..]));
    s.accept_stream(StreamId(1), Ok(())).unwrap();
    let _ = transmits(&mut s, now);
    while s.poll_event().is_some() {}
    (s, now)
}

/// A client with the `FIXED` padding scheme.
fn fixed_client(now: Instant) -> ClientSession {
    let scheme = PaddingScheme::parse(Bytes::from_static(FIXED.as_bytes())).unwrap();
    Session::client(
        Arc::new(client_config()),
        SessionSeq(1),
        Arc::new(scheme),
        [5; 32],
        now,
    )
    .expect("valid config")
}

#[test]
fn only_the_preamble_and_padding_phase_packets_are_shaped() {
    let now = epoch();
    let mut c = fixed_client(now);
    let id = c.open_stream(now, &dest()).unwrap();
    let mut flags = Vec::new();
    for i in 0..8 {
        assert_eq!(c.write(id, &payload(5000, i)), Ok(5000));
        flags.extend(transmits(&mut c, now).into_iter().map(|(t, _)| t.shaped));
    }
    // Preamble, then the packets of the padding phase (each may be split
    // into several shaped records), then nothing shaped any more.
    let shaped = flags.iter().take_while(|s| **s).count();
    assert!(
        shaped >= 3,
        "preamble and packets 1-2 are shaped: {flags:?}"
    );
    assert!(
        flags[shaped..].iter().all(|s| !s),
        "a shaped transmit after the padding phase: {flags:?}"
    );
    assert!(flags.len() > shaped, "data after the padding phase");
}

#[test]
fn may_shape_holds_until_the_padding_phase_ends_and_never_again() {
    // A driver writes transmits straight into full records once
    // `may_shape` says no: it must never be wrong about a later transmit.
    let now = epoch();
    let mut c = fixed_client(now);
    assert!(c.may_shape(), "the preamble is still to go");
    let id = c.open_stream(now, &dest()).unwrap();
    let mut seen = Vec::new();
    // The same transmits into a Vec<u8> (the generic TransmitBuf) and a
    // BytesMut-driven twin give the same bytes.
    let mut twin = fixed_client(now);
    let twin_id = twin.open_stream(now, &dest()).unwrap();
    let mut vec_wire: Vec<u8> = Vec::new();
    let mut twin_wire = Vec::new();
    for i in 0..8 {
        assert_eq!(c.write(id, &payload(5000, i)), Ok(5000));
        assert_eq!(twin.write(twin_id, &payload(5000, i)), Ok(5000));
        loop {
            let before = c.may_shape();
            let Some(t) = c.poll_transmit(now, &mut vec_wire) else {
                break;
            };
            seen.push((before, t.shaped));
        }
        twin_wire.extend(transmits(&mut twin, now).into_iter().flat_map(|(_, b)| b));
    }
    assert_eq!(vec_wire, twin_wire);
    assert!(
        seen.iter().all(|(may, shaped)| *may || !*shaped),
        "{seen:?}"
    );
    let first_no = seen
        .iter()
        .position(|(may, _)| !may)
        .expect("the phase ends");
    assert!(seen[first_no..].iter().all(|(may, _)| !may), "{seen:?}");
    assert!(seen[..first_no].iter().any(|(_, shaped)| *shaped));
    assert!(!c.may_shape());

    // A server never shapes.
    let (s, _) = server_with_stream();
    assert!(!s.may_shape());
}

#[test]
fn queued_chunks_go_out_as_one_frame() {
    // Three writes queue three chunks; they leave as one PSH frame (a Go
    // receiver makes one socket write per frame), split only at the frame
    // size limit.
    let (mut s, now) = server_with_stream();
    let parts = [payload(1000, 1), payload(2000, 2), payload(3000, 3)];
    for p in &parts {
        assert_eq!(s.write(StreamId(1), p), Ok(p.len()));
    }
    let wire: Vec<u8> = transmits(&mut s, now)
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    assert_eq!(wire, frame(Command::Psh, 1, &parts.concat()));

    // 40 writes of 1000 bytes: frames of 32 761 bytes (two full TLS
    // records with the header), then the rest.
    let data = payload(40_000, 4);
    for piece in data.chunks(1000) {
        assert_eq!(s.write(StreamId(1), piece), Ok(1000));
    }
    let wire: Vec<u8> = transmits(&mut s, now)
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    let mut expected = frame(Command::Psh, 1, &data[..32_761]);
    expected.extend(frame(Command::Psh, 1, &data[32_761..]));
    assert_eq!(wire, expected);
}

#[test]
fn server_transmits_are_never_shaped() {
    let (mut s, now) = server_with_stream();
    for i in 0..4 {
        assert_eq!(s.write(StreamId(1), &payload(40_000, i)), Ok(40_000));
        for (t, _) in transmits(&mut s, now) {
            assert!(!t.shaped);
        }
    }
}

#[test]
fn psh_data_is_readable_before_its_frame_is_complete() {
    let (mut s, now) = server_with_stream();
    let data = payload(60_000, 7);
    let wire = frame(Command::Psh, 1, &data);
    let mut got = Vec::new();
    // 1000-byte reads: every read's data is readable at once.
    for piece in wire.chunks(1000) {
        s.handle_input(now, BytesMut::from(piece));
        let before = got.len();
        while let Ok(Some(b)) = s.read(now, StreamId(1)) {
            got.extend_from_slice(&b);
        }
        let wanted = (before + piece.len()).min(data.len());
        assert!(
            got.len() + 7 >= wanted,
            "{} of {wanted} bytes readable",
            got.len()
        );
    }
    assert_eq!(got, data);
    assert!(
        s.poll_event()
            .is_some_and(|e| matches!(e, Event::StreamReadable { .. }))
    );
}

#[test]
fn stream_data_is_not_copied_on_the_way_in() {
    let (mut s, now) = server_with_stream();
    // A read ends 3 bytes into a frame header; the next read carries the rest
    // of that header and 20 000 bytes of data. The data must be read out of
    // that second read's own buffer, not out of a copy.
    let data = payload(20_000, 9);
    let wire = [frame(Command::Psh, 1, b"x"), frame(Command::Psh, 1, &data)].concat();
    let split = 8 + 3;
    s.handle_input(now, BytesMut::from(&wire[..split]));
    assert_eq!(s.read(now, StreamId(1)), Ok(Some(Bytes::from_static(b"x"))));
    let second = BytesMut::from(&wire[split..]);
    let range = second.as_ptr() as usize..second.as_ptr() as usize + second.len();
    s.handle_input(now, second);
    let mut got = Vec::new();
    while let Ok(Some(b)) = s.read(now, StreamId(1)) {
        if b.len() >= 4096 {
            let p = b.as_ptr() as usize;
            assert!(range.contains(&p), "stream data was copied");
        }
        got.extend_from_slice(&b);
    }
    assert_eq!(got, data);
}

#[test]
fn small_stream_data_does_not_pin_the_read_block() {
    let (mut s, now) = server_with_stream();
    // One 64 KiB read: a 1-byte PSH, then 60 000 bytes of Waste. A view of
    // the one byte would keep the whole block alive while the receive caps
    // count one byte.
    let mut wire = frame(Command::Psh, 1, b"z");
    wire.extend(frame(Command::Waste, 0, &vec![0; 60_000]));
    let block = BytesMut::from(&wire[..]);
    let range = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
    s.handle_input(now, block);
    let b = s.read(now, StreamId(1)).unwrap().unwrap();
    assert_eq!(&b[..], b"z");
    assert!(
        !range.contains(&(b.as_ptr() as usize)),
        "a 1-byte chunk pins the block"
    );
}

#[test]
fn merged_psh_frames_carry_every_byte_once_in_order_then_fin() {
    // Many streams, writes of all sizes queued as many chunks, FINs among
    // them, a `max_write` far over the frame size: every PSH frame's header
    // matches its data (the decoder would lose sync otherwise), no frame is
    // empty or over one chunk, each stream's bytes arrive whole and in
    // order, its FIN once, after its last byte.
    use anytls_core::frame::{FrameDecoder, FrameLimits};
    use std::collections::BTreeMap;

    let now = epoch();
    let scheme = PaddingScheme::parse(Bytes::from_static(FIXED.as_bytes())).unwrap();
    let mut cfg = client_config();
    cfg.limits.max_write = 1 << 20;
    let mut c = Session::client(Arc::new(cfg), SessionSeq(1), Arc::new(scheme), [5; 32], now)
        .expect("valid config");
    let ids: Vec<StreamId> = (0..6)
        .map(|_| c.open_stream(now, &dest()).unwrap())
        .collect();
    let mut sent: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut finished = std::collections::BTreeSet::new();
    let mut wire = BytesMut::new();
    let mut first = true;
    let mut x = 12345u32;
    for round in 0..400u32 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let id = ids[(x >> 8) as usize % ids.len()];
        let n = [1, 7, 700, 4096, 16_377, 20_000, 40_000][(x >> 16) as usize % 7];
        if !finished.contains(&id.0) {
            let p = payload(n, round as u8);
            if let Ok(k) = c.write(id, &p) {
                sent.entry(id.0).or_default().extend_from_slice(&p[..k]);
            }
            if round > 300 && x % 5 == 0 {
                c.finish(id).unwrap();
                finished.insert(id.0);
            }
        }
        if x % 3 == 0 {
            for (t, b) in transmits(&mut c, now) {
                // The preamble is no frame.
                if !first {
                    wire.extend_from_slice(&b);
                }
                first = false;
                let _ = t;
            }
        }
    }
    for id in &ids {
        if !finished.contains(&id.0) {
            c.finish(*id).unwrap();
        }
    }
    for (_, b) in transmits(&mut c, now) {
        assert!(!first);
        wire.extend_from_slice(&b);
    }
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let mut got: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut fins = BTreeMap::new();
    let mut frames = 0;
    let mut largest = 0;
    while let Some(f) = dec.decode(&mut wire).expect("frames stay in sync") {
        frames += 1;
        match f.cmd {
            Command::Psh if f.stream_id.0 != 0 => {
                assert!(!fins.contains_key(&f.stream_id.0), "data after FIN");
                if got.contains_key(&f.stream_id.0) {
                    assert!(!f.data.is_empty(), "an empty PSH frame");
                }
                assert!(f.data.len() <= 32 * 1024 - 7, "{}", f.data.len());
                largest = largest.max(f.data.len());
                got.entry(f.stream_id.0)
                    .or_default()
                    .extend_from_slice(&f.data);
            }
            Command::Fin => {
                assert!(fins.insert(f.stream_id.0, ()).is_none(), "FIN twice");
            }
            _ => {}
        }
    }
    assert!(wire.is_empty(), "a partial frame");
    assert!(frames > 10);
    assert_eq!(largest, 32 * 1024 - 7, "frames fill up to one chunk");
    assert_eq!(fins.len(), ids.len());
    for id in &ids {
        let mut want = Vec::new();
        // The first PSH of a stream is its destination.
        dest().encode(&mut want).unwrap();
        want.extend_from_slice(sent.get(&id.0).map_or(&[][..], |v| &v[..]));
        assert!(
            got.get(&id.0).map_or(&[][..], |v| &v[..]) == &want[..],
            "stream {}",
            id.0
        );
    }
}
