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
    /// Connections the endpoint asked to close.
    closed: Vec<SessionSeq>,
    /// Streams the servers saw, with their ids there.
    opened: Vec<(SessionSeq, StreamId)>,
    /// What the servers read from each stream.
    received: BTreeMap<(SessionSeq, StreamId), Vec<u8>>,
    /// Streams the client FINed, as the servers saw it.
    fins: Vec<(SessionSeq, StreamId)>,
    /// Server side: refuse streams with this message (`None`: accept).
    refuse: Option<String>,
    /// Server side: give no verdict at all.
    no_verdict: bool,
    fail_dials: bool,
    /// Keep dials pending (in `pending_dials`) until `connect` is called.
    hold_dials: bool,
    pending_dials: Vec<SessionSeq>,
}

impl World {
    fn new(pool: PoolConfig) -> World {
        World::with(ClientConfig::new("pw"), pool)
    }

    fn with(cfg: ClientConfig, pool: PoolConfig) -> World {
        let now = epoch();
        let ep = ClientEndpoint::new(cfg, pool, [7; 32], now).unwrap();
        World {
            ep,
            servers: BTreeMap::new(),
            now,
            events: Vec::new(),
            closed: Vec::new(),
            opened: Vec::new(),
            received: BTreeMap::new(),
            fins: Vec::new(),
            refuse: None,
            no_verdict: false,
            fail_dials: false,
            hold_dials: false,
            pending_dials: Vec::new(),
        }
    }

    /// A dial succeeds: a server session on the other end.
    fn connect(&mut self, conn: SessionSeq) {
        let cfg = Arc::new(ServerConfig::new(Authenticator::single("pw")));
        let s = Session::server(cfg, [conn.0 as u8; 32], self.now).unwrap();
        self.servers.insert(conn, s);
        self.ep.handle_connected(self.now, conn);
    }

    /// Runs until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(a) = self.ep.poll_action() {
                moved = true;
                match a {
                    Action::Dial { conn } if self.hold_dials => self.pending_dials.push(conn),
                    Action::Dial { conn } if self.fail_dials => {
                        self.ep.handle_dial_failed(self.now, conn, "refused")
                    }
                    Action::Dial { conn } => self.connect(conn),
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
                moved |= self.serve(conn, &mut buf);
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

    /// One server session's turn: its events, its answers to the client.
    fn serve(&mut self, conn: SessionSeq, buf: &mut BytesMut) -> bool {
        let Some(s) = self.servers.get_mut(&conn) else {
            return false;
        };
        let mut evs = Vec::new();
        while let Some(ev) = s.poll_event() {
            evs.push(ev);
        }
        for ev in evs {
            match ev {
                Event::StreamOpened { id, .. } => {
                    if !self.no_verdict {
                        let verdict = self.refuse.clone().map_or(Ok(()), Err);
                        s.accept_stream(id, verdict).unwrap();
                    }
                    self.opened.push((conn, id));
                }
                Event::StreamReadable { id } => {
                    while let Ok(Some(b)) = s.read(self.now, id) {
                        let got = self.received.entry((conn, id)).or_default();
                        got.extend_from_slice(&b);
                    }
                }
                Event::StreamFinished { id } => self.fins.push((conn, id)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        while let Some(t) = s.poll_transmit(self.now, buf) {
            out.push(buf.split_to(t.len));
        }
        let closed = s.is_closed();
        let moved = !out.is_empty() || closed;
        for data in out {
            self.ep.handle_input(self.now, conn, data);
        }
        if closed {
            self.servers.remove(&conn);
            self.ep.handle_eof(self.now, conn);
        }
        moved
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..100_000 {
            match self.ep.poll_timeout() {
                Some(t) if t <= end => {
                    assert!(t >= self.now, "poll_timeout in the past");
                    self.now = t;
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

fn dest() -> SocksAddr {
    SocksAddr::domain("example.com", 80)
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
            assert_eq!(&w.ep.read(w.now, h).unwrap().unwrap()[..], b"reply");
            assert_eq!(w.ep.read(w.now, h).unwrap(), None);
        }
        w.ep.handle_eof(w.now, conn);
        w.settle();
        if read_first {
            // Everything was read: the clean end stands.
            assert_eq!(w.ep.stream_state(h), Some(&StreamState::Finished));
            assert_eq!(w.ep.read(w.now, h).unwrap(), None);
        } else {
            assert!(matches!(
                w.ep.stream_state(h),
                Some(StreamState::Reset(ResetReason::SessionClosed(_)))
            ));
            assert!(w.ep.read(w.now, h).is_err(), "no silent EOF");
        }
    }
}

// ----- regressions found in review -----

#[test]
fn a_stream_released_while_its_dial_runs_gives_the_session_back() {
    let mut w = World::new(PoolConfig::default());
    w.hold_dials = true;
    let h = w.ep.open_stream(w.now, &dest()).unwrap();
    w.settle();
    w.ep.release(w.now, h);
    let conn = w.pending_dials.pop().unwrap();
    w.connect(conn);
    w.settle();
    assert_eq!(w.ep.stats().pool.busy, 0);
    assert_eq!(
        w.ep.idle_sessions().len(),
        1,
        "the session is idle, reusable"
    );
}

#[test]
fn a_session_the_pool_closes_at_check_in_sends_its_data_and_fin_first() {
    let mut no_reuse = PoolConfig::default();
    no_reuse.disable_reuse = true;
    let mut lifetime = PoolConfig::default();
    lifetime.max_session_lifetime = Some(Duration::from_secs(1));
    lifetime.check_interval = Duration::from_secs(1);
    for pool in [no_reuse, lifetime] {
        let mut w = World::new(pool);
        let h = w.ep.open_stream(w.now, &dest()).unwrap();
        w.settle();
        w.advance(Duration::from_secs(3));
        assert_eq!(w.ep.write(h, b"last words").unwrap(), 10);
        w.ep.finish(w.now, h);
        w.settle();
        let (conn, sid) = w.opened[0];
        assert_eq!(
            w.received.get(&(conn, sid)).map(Vec::as_slice),
            Some(&b"last words"[..])
        );
        assert_eq!(w.fins, vec![(conn, sid)], "the FIN went out");
        assert_eq!(w.closed, vec![conn], "then the pool closed the session");
    }
}

#[test]
fn a_refusal_under_disable_reuse_closes_the_session_at_once() {
    let mut pool = PoolConfig::default();
    pool.disable_reuse = true;
    let mut w = World::new(pool);
    w.refuse = Some("no".into());
    let h = w.ep.open_stream(w.now, &dest()).unwrap();
    w.settle();
    assert!(matches!(
        w.ep.stream_state(h),
        Some(StreamState::Refused(_))
    ));
    let (conn, _) = w.opened[0];
    assert_eq!(w.closed, vec![conn]);
}

#[test]
fn a_session_that_takes_no_more_streams_closes_with_its_last_one() {
    let mut cfg = ClientConfig::new("pw");
    cfg.limits.max_streams = 1;
    let mut w = World::with(cfg, PoolConfig::default());
    let a = w.ep.open_stream(w.now, &dest()).unwrap();
    w.settle();
    // Finish and, before the FIN is out, open the next stream.
    w.ep.finish(w.now, a);
    let b = w.ep.open_stream(w.now, &dest()).unwrap();
    w.ep.release(w.now, a);
    w.settle();
    w.ep.release(w.now, b);
    w.settle();
    w.advance(Duration::from_secs(3600));
    let live = w.ep.live_sessions().count();
    assert!(
        live <= w.ep.idle_sessions().len(),
        "a live session outside the pool, forever"
    );
}

#[test]
fn reports_about_a_live_connection_leave_it_alone() {
    let mut w = World::new(PoolConfig::default());
    let h = w.ep.open_stream(w.now, &dest()).unwrap();
    w.settle();
    let conn = w.ep.stream_session(h).unwrap();
    w.ep.handle_dial_failed(w.now, conn, "late report");
    w.ep.handle_connected(w.now, conn);
    w.settle();
    assert!(w.ep.is_live(conn));
    assert_eq!(w.ep.stream_state(h), Some(&StreamState::Connected));
    assert_eq!(w.ep.write(h, b"ok").unwrap(), 2);
}

#[test]
fn configs_whose_stream_caps_disagree_are_refused() {
    let mut cfg = ClientConfig::new("pw");
    cfg.limits.max_streams = 2;
    let mut pool = PoolConfig::default();
    pool.max_streams_per_session = 4;
    let now = epoch();
    assert!(ClientEndpoint::new(cfg, pool, [0; 32], now).is_err());
}
