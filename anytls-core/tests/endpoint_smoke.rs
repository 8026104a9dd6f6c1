//! The client endpoint against in-memory server sessions: the basic flows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anytls_core::session::ServerSession;
use anytls_core::{
    Action, Authenticator, ClientConfig, ClientEndpoint, ClientEvent, Event, PoolConfig,
    RefuseReason, ResetReason, ServerConfig, Session, SessionSeq, SocksAddr, StreamId, StreamState,
};
use bytes::BytesMut;

#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

struct World {
    ep: ClientEndpoint,
    servers: BTreeMap<SessionSeq, ServerSession>,
    now: Instant,
    events: Vec<ClientEvent>,
    closed: Vec<SessionSeq>,
    opened: Vec<(SessionSeq, StreamId)>,
    /// Server side: refuse streams with this message.
    refuse: Option<String>,
    fail_dials: bool,
}

impl World {
    fn new(pool: PoolConfig) -> World {
        let now = epoch();
        let ep = ClientEndpoint::new(ClientConfig::new("pw"), pool, [7; 32], now).unwrap();
        World {
            ep,
            servers: BTreeMap::new(),
            now,
            events: Vec::new(),
            closed: Vec::new(),
            opened: Vec::new(),
            refuse: None,
            fail_dials: false,
        }
    }

    /// Runs until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(a) = self.ep.poll_action() {
                moved = true;
                match a {
                    Action::Dial { conn } => {
                        if self.fail_dials {
                            self.ep.handle_dial_failed(self.now, conn, "refused");
                        } else {
                            let cfg = Arc::new(ServerConfig::new(Authenticator::single("pw")));
                            let s = Session::server(cfg, [conn.0 as u8; 32], self.now).unwrap();
                            self.servers.insert(conn, s);
                            self.ep.handle_connected(self.now, conn);
                        }
                    }
                    Action::Close { conn, .. } => {
                        self.servers.remove(&conn);
                        self.closed.push(conn);
                    }
                    _ => {}
                }
            }
            let mut buf = BytesMut::new();
            while let Some((conn, t)) = self.ep.poll_transmit(self.now, &mut buf) {
                moved = true;
                let data = buf.split_to(t.len);
                if let Some(s) = self.servers.get_mut(&conn) {
                    s.handle_input(self.now, data);
                }
            }
            let conns: Vec<SessionSeq> = self.servers.keys().copied().collect();
            for conn in conns {
                let s = self.servers.get_mut(&conn).unwrap();
                let mut out = Vec::new();
                while let Some(t) = s.poll_transmit(self.now, &mut buf) {
                    out.push(buf.split_to(t.len));
                }
                let mut evs = Vec::new();
                while let Some(ev) = s.poll_event() {
                    evs.push(ev);
                }
                for ev in evs {
                    if let Event::StreamOpened { id, .. } = ev {
                        let verdict = self.refuse.clone().map_or(Ok(()), Err);
                        s.accept_stream(id, verdict).unwrap();
                        self.opened.push((conn, id));
                        while let Some(t) = s.poll_transmit(self.now, &mut buf) {
                            out.push(buf.split_to(t.len));
                        }
                    }
                }
                let closed = s.is_closed();
                for data in out {
                    moved = true;
                    self.ep.handle_input(self.now, conn, data);
                }
                if closed {
                    self.servers.remove(&conn);
                    self.ep.handle_eof(self.now, conn);
                    moved = true;
                }
            }
            while let Some(ev) = self.ep.poll_event() {
                self.events.push(ev);
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..100_000 {
            match self.ep.poll_timeout() {
                Some(t) if t <= end => {
                    assert!(t >= self.now - Duration::from_secs(1));
                    self.now = self.now.max(t);
                    self.ep.handle_timeout(self.now);
                    if let Some(next) = self.ep.poll_timeout() {
                        assert!(next > self.now, "poll_timeout in the past");
                    }
                    self.settle();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timer livelock");
    }
}

#[test]
fn stream_dials_connects_and_returns_to_the_pool() {
    let mut w = World::new(PoolConfig::default());
    let dest = SocksAddr::domain("example.com", 80);
    let h = w.ep.open_stream(w.now, &dest).unwrap();
    assert_eq!(w.ep.stream_session(h), None);
    w.settle();
    assert_eq!(w.ep.stream_state(h), Some(&StreamState::Connected));
    assert!(w.events.contains(&ClientEvent::StreamConnected(h)));
    assert_eq!(w.ep.write(h, b"hello").unwrap(), 5);
    w.settle();
    w.ep.release(w.now, h);
    assert!(w.ep.stream_state(h).is_none());
    w.settle();
    assert_eq!(w.ep.idle_sessions().len(), 1);
    // The next stream reuses the idle session.
    let h2 = w.ep.open_stream(w.now, &dest).unwrap();
    assert!(w.ep.stream_session(h2).is_some());
    w.settle();
    assert_eq!(w.ep.stats().pool.dials, 1);
    assert_eq!(w.ep.stream_state(h2), Some(&StreamState::Connected));
}

#[test]
fn refusal_and_dial_failure_are_typed_and_stay_queryable() {
    let mut w = World::new(PoolConfig::default());
    w.refuse = Some("no route".into());
    let dest = SocksAddr::domain("example.com", 80);
    let h = w.ep.open_stream(w.now, &dest).unwrap();
    w.settle();
    assert_eq!(
        w.ep.stream_state(h),
        Some(&StreamState::Refused(RefuseReason::Server(
            "no route".into()
        )))
    );
    w.fail_dials = true;
    w.ep.release(w.now, h);
    w.settle();
    // The session is idle again and is reused; force a dial with a second stream.
    let a = w.ep.open_stream(w.now, &dest).unwrap();
    let b = w.ep.open_stream(w.now, &dest).unwrap();
    w.settle();
    assert!(matches!(
        w.ep.stream_state(b),
        Some(StreamState::Refused(RefuseReason::DialFailed(_)))
    ));
    assert!(matches!(
        w.ep.stream_state(a),
        Some(StreamState::Refused(_))
    ));
}

#[test]
fn ensure_idle_prewarms_and_heartbeats_are_answered() {
    let mut pool = PoolConfig::default();
    pool.ensure_idle = 2;
    pool.min_idle = 1;
    pool.heartbeat = Some(Duration::from_secs(5));
    let mut w = World::new(pool);
    w.settle();
    assert_eq!(w.ep.idle_sessions().len(), 2);
    w.advance(Duration::from_secs(20));
    let acks = w
        .events
        .iter()
        .filter(|e| matches!(e, ClientEvent::HeartbeatAck { .. }))
        .count();
    assert!(acks >= 4, "{acks} heartbeat acks");
    w.advance(Duration::from_secs(120));
    assert_eq!(w.ep.idle_sessions().len(), 2);
}

#[test]
fn close_refuses_waiting_streams_and_closes_sessions() {
    let mut w = World::new(PoolConfig::default());
    let dest = SocksAddr::domain("example.com", 80);
    let h = w.ep.open_stream(w.now, &dest).unwrap();
    w.settle();
    let waiting = w.ep.open_stream(w.now, &dest).unwrap();
    w.ep.close(w.now);
    assert!(matches!(w.ep.stream_state(h), Some(StreamState::Reset(_))));
    assert_eq!(
        w.ep.stream_state(waiting),
        Some(&StreamState::Refused(RefuseReason::EndpointClosed))
    );
    w.settle();
    assert_eq!(w.ep.stats().sessions, 0);
    assert!(w.ep.open_stream(w.now, &dest).is_err());
    assert_eq!(w.ep.poll_timeout(), None);
}

#[test]
fn unread_data_lost_with_its_session_is_a_reset_not_a_clean_end() {
    for read_first in [false, true] {
        let mut w = World::new(PoolConfig::default());
        let dest = SocksAddr::domain("example.com", 80);
        let h = w.ep.open_stream(w.now, &dest).unwrap();
        w.settle();
        let (conn, sid) = w.opened[0];
        let server = w.servers.get_mut(&conn).unwrap();
        assert_eq!(server.write(sid, b"reply").unwrap(), 5);
        server.finish(sid).unwrap();
        w.settle();
        assert_eq!(w.ep.stream_state(h), Some(&StreamState::Finished));
        if read_first {
            assert_eq!(&w.ep.read(h).unwrap().unwrap()[..], b"reply");
            assert_eq!(w.ep.read(h).unwrap(), None);
        }
        w.ep.handle_eof(w.now, conn);
        w.settle();
        if read_first {
            // Everything was read: the clean end stands.
            assert_eq!(w.ep.stream_state(h), Some(&StreamState::Finished));
            assert_eq!(w.ep.read(h).unwrap(), None);
        } else {
            assert!(matches!(
                w.ep.stream_state(h),
                Some(StreamState::Reset(ResetReason::SessionClosed(_)))
            ));
            assert!(w.ep.read(h).is_err(), "no silent EOF");
        }
    }
}
