//! Fuzz body of the `endpoint` target (the whole client endpoint under random
//! inputs). Internal: not part of the stable API.
//!
//! The input is decoded into a pool and session configuration and a
//! sequence of owner commands, network events and server behaviours
//! ([`Op`]s), run against a [`ClientEndpoint`](crate::ClientEndpoint) with
//! one in-memory server session per connection. The driver and its
//! invariant checks are the ones of the integration tests
//! (`tests/endpoint_world`, compiled in here): any violated invariant
//! panics.

use std::time::{Duration, Instant};

use crate::config::ClientConfig;
use crate::pool::PoolConfig;

#[path = "../tests/endpoint_world/mod.rs"]
mod world;

use world::{Kill, Op, PASSWORD, World, pool_config};

/// Numbers from fuzz input; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    fn word(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// `lo + k * step` milliseconds, `k` one byte.
    fn ms(&mut self, lo: u64, step: u64) -> Duration {
        Duration::from_millis(lo + u64::from(self.byte()) * step)
    }

    fn opt_ms(&mut self, lo: u64, step: u64) -> Option<Duration> {
        (self.byte() & 1 == 1).then(|| self.ms(lo, step))
    }
}

/// Valid configurations only (validation has its own fuzz target, `pool`).
fn configs(b: &mut Bytes) -> (PoolConfig, ClientConfig) {
    let flags = b.byte();
    let pool = pool_config(|c| {
        c.check_interval = b.ms(1_000, 500);
        c.idle_timeout = b.ms(1_000, 2_000);
        c.min_idle = usize::from(b.byte() % 5);
        c.ensure_idle = usize::from(b.byte() % 6);
        c.ensure_create_rate = usize::from(b.byte() % 3);
        c.heartbeat = b.opt_ms(1_000, 250);
        c.heartbeat_timeout = b.opt_ms(100, 100);
        c.max_session_lifetime = b.opt_ms(1_000, 5_000);
        c.lifetime_jitter = b.ms(0, 1_000);
        c.disable_reuse = flags & 1 != 0;
        c.max_streams_per_session = 1 + usize::from(b.byte() % 3);
        c.dial_backoff = b.ms(10, 100);
        c.max_dial_backoff = b.ms(0, 1_000);
    });
    let mut client = ClientConfig::new(PASSWORD);
    client.stream_open_timeout = b.ms(100, 50);
    client.heartbeat_timeout = b.opt_ms(100, 100);
    if flags & 2 != 0 {
        client.limits.stream_send_buffer = 1024;
    }
    if flags & 4 != 0 {
        client.limits.stream_recv_buffer = 4096;
    }
    (pool, client)
}

fn op(b: &mut Bytes) -> Op {
    match b.byte() % 24 {
        0..=3 => Op::Open(b.word() % 20_000),
        4 => Op::OpenBad,
        5 => Op::Write(b.byte(), b.word()),
        6 => Op::Read(b.byte()),
        7 => Op::Finish(b.byte()),
        8 | 9 => Op::Release(b.byte()),
        10 | 11 => Op::AnswerDial(b.byte(), b.byte() % 4 != 0),
        12 => {
            let i = b.byte();
            let kinds = [Kill::Eof, Kill::Reset, Kill::PeerReset, Kill::Silent];
            let how = kinds[usize::from(b.byte() % 4)];
            Op::Kill(i, how)
        }
        13 => Op::Eof(b.byte()),
        14 => Op::Verdict(match b.byte() % 3 {
            0 => None,
            _ => {
                let n = usize::from(b.byte() % 16);
                let text: Vec<u8> = (0..n).map(|_| b.byte()).collect();
                Some(String::from_utf8_lossy(&text).into_owned())
            }
        }),
        15 => Op::Outage(b.byte() & 1 == 1),
        16 => Op::DialFailures(b.byte()),
        // Through every deadline: up to a minute (longer spans jump).
        17..=19 => Op::Advance(match b.byte() % 3 {
            0 => u32::from(b.byte()),
            1 => u32::from(b.byte()) * 20,
            _ => u32::from(b.byte()) * 250,
        }),
        20 => Op::ToDeadline(u16::from(b.byte()) * 8),
        21 => Op::Jump(u32::from(b.word()) * 10),
        22 => match b.byte() % 5 {
            0 => Op::Stale(b.word()),
            1 => Op::Auto(b.byte() & 1 == 1),
            2 => Op::PerConn(b.byte() & 1 == 1),
            3 if b.byte() == 0 => Op::Close,
            _ => Op::Timeout,
        },
        _ => Op::Timeout,
    }
}

/// Runs `data` against an endpoint whose virtual time starts at `epoch`.
pub fn endpoint_at(data: &[u8], epoch: Instant) {
    let mut b = Bytes(data);
    let (pool, client) = configs(&mut b);
    let seed = u64::from(b.word());
    let mut w = World::for_ops(pool, client, seed, epoch);
    w.step_budget = 2_000;
    for _ in 0..256 {
        if b.0.is_empty() {
            break;
        }
        let op = op(&mut b);
        w.apply(&op);
    }
    w.finish_ops();
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    /// A few fixed inputs (`fuzzing::tests::replay_fuzz_corpus` replays the
    /// checked-in corpus `fuzz/corpus/endpoint/` with the other targets').
    #[test]
    fn fixed_endpoint_inputs() {
        #[allow(clippy::disallowed_methods)] // the test's epoch
        let epoch = Instant::now();
        let fixed: [&[u8]; 4] = [
            b"",
            // Pre-warm 2, heartbeats; opens, writes, time passes.
            &[
                0, 10, 10, 2, 2, 0, 1, 20, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0,
            ],
            // Outage and kills amid opens and dial answers.
            &[
                8, 2, 2, 1, 3, 1, 15, 1, 5, 1, 8, 3, 0, 9, 1, 15, 1, 10, 0, 1, 12, 0, 2, 18, 2, 9,
            ],
            // Refusals with text, releases, a jump, close.
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 14, 1, 4, 104, 105, 33, 0, 0, 9,
            ],
        ];
        for data in fixed {
            super::endpoint_at(data, epoch);
        }
        // A long mixed run.
        let long: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        super::endpoint_at(&long, epoch);
    }
}
