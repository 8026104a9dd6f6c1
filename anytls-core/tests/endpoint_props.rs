//! proptest: the client endpoint under random interleavings of everything
//! its owner and the network can do (`endpoint_world::Op`): opens, writes,
//! reads, finishes, releases; dials answered in any order, succeeding or
//! failing; EOFs, transport errors, silent paths, server-side closes,
//! refusals with text, outages; time advancing through deadlines, jumping
//! past them, stale `now`s, early `handle_timeout`s; `close`. Random pool
//! and session configurations.
//!
//! After every operation `World::check` asserts (see `endpoint_world`): no
//! stream's outcome is lost (queryable until released, terminal states never
//! change, one `StreamRefused`/`StreamReset` event exactly when the state
//! says so); every `Dial` names a new connection, is answered exactly once,
//! and the streams waiting on a failed one are `Refused(DialFailed)`; idle
//! sessions stay within the bound (a) of `pool_sim.rs` and pre-warming never
//! overshoots `ensure_idle`; no live session is orphaned; `poll_timeout()`
//! after `handle_timeout(now)` is `None` or later than `now`; `stats()` match
//! the driver (sessions == live connections, dials in flight, streams,
//! outcome counters); transmits only for live connections. Each run ends by
//! answering every dial and closing the endpoint: nothing is left.
//!
//! The tests below reproduce the bugs this harness found in the endpoint
//! (fixed since).

use std::time::{Duration, Instant};

// The world names the library as `crate` (it is compiled into it too).
#[allow(unused_imports)]
use anytls_core::*;

mod endpoint_world;

use anytls_core::pool::{CloseReason, PoolConfig};
use endpoint_world::{Kill, Op, PASSWORD, World, ms, pool_config, secs};
use proptest::prelude::*;

#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

fn kill() -> impl Strategy<Value = Kill> {
    prop_oneof![
        Just(Kill::Eof),
        Just(Kill::Reset),
        Just(Kill::PeerReset),
        Just(Kill::Silent)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        120 => (0u16..20_000).prop_map(Op::Open),
        4 => Just(Op::OpenBad),
        50 => (any::<u8>(), 1u16..40_000).prop_map(|(i, n)| Op::Write(i, n)),
        50 => any::<u8>().prop_map(Op::Read),
        40 => any::<u8>().prop_map(Op::Finish),
        60 => any::<u8>().prop_map(Op::Release),
        60 => (any::<u8>(), prop::bool::weighted(0.7)).prop_map(|(i, ok)| Op::AnswerDial(i, ok)),
        20 => (any::<u8>(), kill()).prop_map(|(i, k)| Op::Kill(i, k)),
        10 => any::<u8>().prop_map(Op::Eof),
        12 => prop::option::of("[a-z ]{0,12}").prop_map(Op::Verdict),
        6 => any::<bool>().prop_map(Op::Outage),
        6 => (0u8..=100).prop_map(Op::DialFailures),
        120 => prop_oneof![0u32..500, 0u32..5_000, 0u32..60_000].prop_map(Op::Advance),
        30 => (0u16..2_000).prop_map(Op::ToDeadline),
        10 => prop_oneof![0u32..5_000, 0u32..600_000].prop_map(Op::Jump),
        15 => Just(Op::Timeout),
        10 => (1u16..5_000).prop_map(Op::Stale),
        8 => any::<bool>().prop_map(Op::Auto),
        5 => any::<bool>().prop_map(Op::PerConn),
        1 => Just(Op::Close),
    ]
}

fn opt_ms(lo: u64, hi: u64) -> impl Strategy<Value = Option<Duration>> {
    prop::option::of((lo..=hi).prop_map(ms))
}

fn pool() -> impl Strategy<Value = PoolConfig> {
    (
        (
            1_000u64..=60_000,
            1_000u64..=300_000,
            0usize..=3,
            0usize..=4,
        ),
        (0usize..=2, opt_ms(1_000, 30_000), opt_ms(100, 10_000)),
        (opt_ms(1_000, 600_000), 0u64..=60_000),
        (
            prop::bool::weighted(0.1),
            1usize..=3,
            10u64..=5_000,
            0u64..=60_000,
        ),
    )
        .prop_map(
            |(
                (check, idle, min_idle, ensure_idle),
                (rate, heartbeat, heartbeat_timeout),
                (lifetime, jitter),
                (disable_reuse, streams, backoff, max_backoff),
            )| {
                pool_config(|c| {
                    c.check_interval = ms(check);
                    c.idle_timeout = ms(idle);
                    c.min_idle = min_idle;
                    c.ensure_idle = ensure_idle;
                    c.ensure_create_rate = rate;
                    c.heartbeat = heartbeat;
                    c.heartbeat_timeout = heartbeat_timeout;
                    c.max_session_lifetime = lifetime;
                    c.lifetime_jitter = ms(jitter);
                    c.disable_reuse = disable_reuse;
                    c.max_streams_per_session = streams;
                    c.dial_backoff = ms(backoff);
                    c.max_dial_backoff = ms(max_backoff);
                })
            },
        )
}

/// Session configurations; a small `limits.max_streams` makes the pool's
/// choice of session fail now and then (the session is retired).
fn client() -> impl Strategy<Value = ClientConfig> {
    (
        100u64..=5_000,
        prop::option::of(100u64..=10_000),
        prop_oneof![Just(64 * 1024usize), Just(1024usize)],
        prop_oneof![Just(128 * 1024usize), Just(4096usize)],
        prop_oneof![3 => Just(1024usize), 1 => 1usize..=3],
    )
        .prop_map(|(open, hb, send, recv, max_streams)| {
            let mut c = ClientConfig::new(PASSWORD);
            c.stream_open_timeout = ms(open);
            c.heartbeat_timeout = hb.map(ms);
            c.limits.max_streams = max_streams;
            c.limits.stream_send_buffer = send;
            c.limits.stream_recv_buffer = recv;
            c
        })
}

fn run(pool: PoolConfig, mut client: ClientConfig, seed: u64, ops: &[Op]) {
    // The endpoint rejects a session cap below the pool's streams per session.
    let cap = &mut client.limits.max_streams;
    *cap = (*cap).max(pool.max_streams_per_session);
    let mut w = World::for_ops(pool, client, seed, epoch());
    for op in ops {
        w.apply(op);
    }
    w.finish_ops();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn endpoint_keeps_its_invariants(
        pool in pool(),
        client in client(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run(pool, client, seed, &ops);
    }
}

// ---------------------------------------------------------------------------
// Bugs this harness found in the endpoint (anytls-core/src/endpoint.rs at
// 1b38e42..4d1d01f), fixed in 57ba3b2; their reproducers, kept as
// regression tests.

/// Releasing a stream while its dial was in flight orphaned the session the
/// dial brought: `release` dropped the stream from the dial's waiting list,
/// and `handle_connected` then called `Pool::established` for a user dial
/// (the pool counts it busy with one stream) with nobody left to check it
/// in. The session stayed live and busy for good: never reused, never swept
/// by the idle timeout, beating forever; every such release leaked a TLS
/// connection. (`finish` instead of `release` was fine.)
#[test]
fn release_while_dialing_gives_the_session_back() {
    let mut w = World::with_pool(PoolConfig::default(), 1, epoch());
    let dest = SocksAddr::domain("example.com", 443);
    let h = w.ep.open_stream(w.now, &dest).unwrap();
    assert_eq!(
        w.ep.poll_action(),
        Some(Action::Dial {
            conn: SessionSeq(1)
        })
    );
    w.ep.release(w.now, h);
    w.ep.handle_connected(w.now + ms(100), SessionSeq(1));
    let st = w.ep.stats();
    assert_eq!(st.sessions, 1);
    assert_eq!((st.pool.idle, st.pool.busy), (1, 0), "busy forever");
    // The next stream reuses it.
    let _ = w.ep.open_stream(w.now + ms(200), &dest).unwrap();
    assert_eq!(w.ep.stats().pool.dials, 1);
}

/// The same through the world (its orphan check failed at once).
#[test]
fn release_while_dialing_in_the_world() {
    let mut w = World::with_pool(PoolConfig::default(), 1, epoch());
    let h = w.open(10).unwrap();
    w.release(h);
    w.run_for(secs(1));
    assert_eq!(w.idle(), 1);
}

/// A stream refused by the server (or reset) was checked in from the
/// session-event handling, which called `Pool::checkin` but not
/// `pool_actions`: when the pool closed the session there (`disable_reuse`:
/// `NoReuse`; past its lifetime: `Lifetime`), the `PoolAction::Close`
/// waited in the pool until the next pool timer (up to a check interval):
/// meanwhile the session was live, out of the pool, carrying nothing, and
/// `stats()` disagreed (`pool.idle + pool.busy < sessions`). (An
/// intermediate fix closed it at once but as `LocallyClosed`.)
#[test]
fn refusal_carries_out_the_pools_close_at_once() {
    let cfg = pool_config(|c| {
        c.disable_reuse = true;
        c.check_interval = secs(30);
    });
    let mut w = World::with_pool(cfg, 1, epoch());
    w.server.refuse = Some("no".into());
    let h = w.open(0).unwrap();
    w.run_for(secs(1));
    assert!(matches!(
        w.ep.stream_state(h),
        Some(StreamState::Refused(RefuseReason::Server(_)))
    ));
    assert_eq!(w.ep.stats().sessions, 0, "closed with the refusal");
    assert_eq!(
        w.closes_with(&SessionError::Pool(CloseReason::NoReuse)),
        vec![SessionSeq(1)]
    );
}

/// A session that could not take the stream the pool gave it (`open_stream`
/// failed: `TooManyStreams` because `limits.max_streams` was below
/// `max_streams_per_session`, or `IdsExhausted`) was retired: out of the
/// pool, "closed with its last stream". But only `release` and the next
/// failed reuse called `close_if_unused`, and they found the session still
/// holding its stream when the owner released it before the server's FIN;
/// when the session forgot its last stream later, nothing closed it: live
/// for good, out of the pool, carrying nothing. Now the configuration is
/// refused, and a retired session closes with its last stream.
#[test]
fn retired_session_is_closed() {
    let cfg = pool_config(|c| c.max_streams_per_session = 2);
    let mut client = ClientConfig::new(PASSWORD);
    client.limits.max_streams = 1;
    if ClientEndpoint::new(client.clone(), cfg.clone(), [0; 32], epoch()).is_err() {
        return; // The configuration that led there is refused.
    }
    let mut w = World::new(cfg, client, 1, epoch());
    let a = w.open(100).unwrap();
    w.run_for(secs(1));
    assert_eq!(w.ep.stream_session(a), Some(SessionSeq(1)));
    // The pool shares session 1; it refuses a second stream: retired, and
    // b dials session 2.
    let b = w.open(100).unwrap();
    assert_eq!(w.dials.len(), 2);
    // The owner is done with a before the server's FIN.
    w.release(a);
    w.run_for(secs(3600));
    assert!(!w.ep.is_live(SessionSeq(1)), "retired session 1 leaked");
    w.release(b);
}
