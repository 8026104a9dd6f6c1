//! The client pool policy with 10 000 sessions: checkout/checkin round trips
//! and one maintenance sweep. The pool is pure bookkeeping (no sockets), so
//! these are the costs its owner's task pays per stream and per check interval.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anytls_core::{Checkout, Pool, PoolConfig, SessionSeq};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const SESSIONS: usize = 10_000;
const CHECK: Duration = Duration::from_secs(30);

/// A pool with `SESSIONS` idle sessions: the older half idle since
/// `start + 1 s`, the newer half since `start + 20 s`.
///
/// They are built as users' dials that carried a stream each and were
/// returned (pre-warming is capped far below `SESSIONS`, see
/// `MAX_ENSURE_IDLE`); nothing is pre-warmed, so a sweep dials no
/// replacements.
fn pool(start: Instant, idle_timeout: Duration) -> Pool {
    let mut cfg = PoolConfig::default();
    cfg.check_interval = CHECK;
    cfg.idle_timeout = idle_timeout;
    cfg.min_idle = 100;
    let mut p = Pool::new(cfg, [7; 32], start).unwrap();
    let seqs: Vec<SessionSeq> = (0..SESSIONS)
        .map(|_| match p.checkout(start) {
            Checkout::Dial(seq) => seq,
            Checkout::Reuse(_) => unreachable!("no idle session yet"),
        })
        .collect();
    let established = start + Duration::from_secs(1);
    for &seq in &seqs {
        p.established(established, seq);
    }
    let (old, new) = seqs.split_at(SESSIONS / 2);
    for &seq in old {
        p.checkin(established, seq);
    }
    for &seq in new {
        p.checkin(start + Duration::from_secs(20), seq);
    }
    assert!(p.poll_action().is_none());
    assert_eq!(p.stats().idle, SESSIONS);
    p
}

/// Takes `n` sessions out of the pool (newest first); they stay busy.
fn take(p: &mut Pool, now: Instant, n: usize) -> Vec<SessionSeq> {
    (0..n)
        .map(|_| match p.checkout(now) {
            Checkout::Reuse(seq) => seq,
            Checkout::Dial(_) => unreachable!("idle sessions left"),
        })
        .collect()
}

fn checkout_checkin(c: &mut Criterion) {
    let start = Instant::now();
    let now = start + Duration::from_secs(21);
    let long = Duration::from_secs(600);
    let mut g = c.benchmark_group("pool");
    let mut p = pool(start, long);
    g.bench_function("checkout_checkin_10k_idle", |b| {
        b.iter(|| {
            let Checkout::Reuse(seq) = p.checkout(now) else {
                unreachable!("an idle session is available")
            };
            p.checkin(now, black_box(seq));
        })
    });
    // The newest 5 000 sessions carry streams: checkout walks past them to the
    // newest idle one.
    let mut p = pool(start, long);
    take(&mut p, now, SESSIONS / 2);
    g.bench_function("checkout_checkin_5k_idle_5k_busy_newer", |b| {
        b.iter(|| {
            let Checkout::Reuse(seq) = p.checkout(now) else {
                unreachable!("an idle session is available")
            };
            p.checkin(now, black_box(seq));
        })
    });
    // Every session carries a stream: checkout walks all of them, then asks
    // for a dial (which fails at once, so the pool stays the same).
    let mut p = pool(start, long);
    take(&mut p, now, SESSIONS);
    g.bench_function("checkout_dial_10k_busy", |b| {
        b.iter(|| {
            let Checkout::Dial(seq) = p.checkout(now) else {
                unreachable!("no idle session")
            };
            p.dial_failed(now, black_box(seq));
        })
    });
    g.finish();
}

fn sweep(c: &mut Criterion) {
    let start = Instant::now();
    let mut g = c.benchmark_group("pool");
    // Each sample builds a fresh pool of 10 000 sessions first.
    g.sample_size(50);
    // At start + 30 s with a 25 s idle timeout the older half (idle since 1 s)
    // has expired: the sweep closes 5 000 sessions and keeps 5 000.
    g.bench_function("sweep_10k_idle_5k_expire", |b| {
        b.iter_batched(
            || pool(start, Duration::from_secs(25)),
            |mut p| {
                p.handle_timeout(start + CHECK);
                let mut closed = 0;
                while p.poll_action().is_some() {
                    closed += 1;
                }
                assert_eq!(closed, SESSIONS / 2);
                p
            },
            BatchSize::LargeInput,
        )
    });
    // Nothing has expired: the sweep only walks the idle sessions.
    g.bench_function("sweep_10k_idle_none_expire", |b| {
        b.iter_batched(
            || pool(start, Duration::from_secs(600)),
            |mut p| {
                p.handle_timeout(start + CHECK);
                assert!(p.poll_action().is_none());
                p
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, checkout_checkin, sweep);
criterion_main!(benches);
