//! Inputs that made a fuzz target fail, replayed through the fuzz body. Each is
//! also in `fuzz/corpus/<target>/` under the name in its test's comment, so the
//! corpus replay in `anytls_core::fuzzing` runs it too.
//!
//! The bodies live behind the `_fuzz` feature:
//! `cargo test -p anytls-core --features _fuzz --test fuzz_regressions`.
#![cfg(feature = "_fuzz")]

use std::time::Instant;

#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

fn pool(input_hex: &str) {
    let data = hex::decode(input_hex).expect("valid hex");
    anytls_core::fuzzing::pool(&data, epoch());
}

// Pool input layout (see `fuzzing::pool`): flags, check_interval,
// idle_timeout, min_idle, ensure_idle, rate, heartbeat?, heartbeat_timeout?,
// lifetime?, jitter, max_streams, dial_backoff, max_dial_backoff, seed (8
// bytes), then events (`03 i` established, `05 i` dial failed, `0a ..` time
// passes, `0c 00` timer fires at the deadline, `0f 03 <seq>` dial_failed on any
// seq). Durations: `00` = the minimum, `06 <u16>` = seconds, `0f 00` =
// `Duration::MAX`, `0f s` = `u64::MAX >> s` seconds.
//
// Before afc00f6 the durations below passed `validate()` and then broke the
// pool's arithmetic; now they are rejected (`TooLarge`, above ten years).

/// `crash-huge-check-interval`: `check_interval = Duration::MAX`; `Pool::new`
/// panicked on `now + check_interval` ("overflow when adding duration to
/// instant").
#[test]
fn pool_huge_check_interval() {
    pool("000f00061e000000000000000001060100063c000700000000000000");
}

/// `crash-huge-heartbeat`: `heartbeat = Duration::MAX`; the first beat
/// `now + h - cut` in `Pool::established` overflowed `Instant`.
#[test]
fn pool_huge_heartbeat() {
    pool("00061e00061e00000100010f0000000001060100063c0007000000000000000300");
}

/// `crash-next-check-overflow`: `check_interval = 2^62 - 1 s` fitted in
/// `Pool::new`, but the first maintenance run's `next_check += check_interval`
/// in `handle_timeout` overflowed `Instant`.
#[test]
fn pool_next_check_overflow() {
    pool("000f02061e000000000000000001060100063c0007000000000000000c00");
}

/// `crash-backoff-overflow`: `dial_backoff = max_dial_backoff = 2^36 - 1 s`; a
/// failed pre-warm dial computed `2 * quarter` in u64 nanoseconds, which
/// overflowed ("attempt to multiply with overflow"; a release build wraps, and
/// `% 0` was possible).
#[test]
fn pool_backoff_overflow() {
    pool("00061e00061e0000010000000000010f1c0f1c07000000000000000500");
}

/// `crash-lifetime-jitter-overflow`: lifetime and jitter of `2^34 - 1 s` each;
/// `l.as_nanos() as u64 + offset` in `Pool::established` overflowed.
#[test]
fn pool_lifetime_jitter_overflow() {
    pool("00061e00061e000001000000010f1e0f1e01060100063c0007000000000000000300");
}

/// `crash-lifetime-truncated`: `max_session_lifetime = 2^35 - 1 s` (~1089
/// years) was truncated by `as_nanos() as u64` to ~505 years, so the idle
/// session was closed (`Lifetime`) after 544 years, before its lifetime.
#[test]
fn pool_lifetime_truncated() {
    pool(
        "00061e00061e000101000000010f1d0001060100063c00070000000000000003000a03ffffff\
         ff0a03ffffffff0a03ffffffff0a03ffffffff0c00",
    );
}

/// `crash-dial-failed-on-established`: `dial_failed` on a session that is
/// already established (busy) removed it from the pool: no `Close` action, the
/// busy gauge dropped while the owner still ran the stream, and it counted as a
/// dial failure. Now ignored, as `established` and `checkin` ignore a seq in the
/// wrong state.
#[test]
fn pool_dial_failed_on_established() {
    pool("00061e00061e000000000000000001060100063c0007000000000000000003000f030100");
}
