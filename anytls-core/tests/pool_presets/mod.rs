//! The pool presets of the seed documents (see the table in `pool_sim.rs`)
//! and duration helpers, shared by the pool and endpoint simulations.

#![allow(dead_code)]

use std::time::Duration;

use super::PoolConfig;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

/// The default pool configuration with `set` applied.
pub fn pool_config(set: impl FnOnce(&mut PoolConfig)) -> PoolConfig {
    let mut c = PoolConfig::default();
    set(&mut c);
    c
}

/// The five preset configurations (see the table in the file docs).
pub fn presets() -> [(&'static str, PoolConfig); 5] {
    [
        (
            "balanced",
            pool_config(|c| {
                c.check_interval = secs(30);
                c.idle_timeout = secs(60);
                c.min_idle = 2;
                c.ensure_idle = 3;
                c.heartbeat = Some(secs(30));
                c.heartbeat_timeout = Some(secs(10));
                c.dial_backoff = secs(1);
                c.max_dial_backoff = secs(60);
            }),
        ),
        (
            "low-latency",
            pool_config(|c| {
                c.check_interval = secs(10);
                c.idle_timeout = mins(5);
                c.min_idle = 5;
                c.ensure_idle = 8;
                c.ensure_create_rate = 4;
                c.heartbeat = Some(secs(15));
                c.heartbeat_timeout = Some(secs(10));
                c.dial_backoff = ms(500);
                c.max_dial_backoff = secs(30);
            }),
        ),
        (
            "mobile-nat",
            pool_config(|c| {
                c.check_interval = secs(20);
                c.idle_timeout = mins(2);
                c.min_idle = 1;
                c.ensure_idle = 2;
                c.heartbeat = Some(secs(20));
                c.heartbeat_timeout = Some(secs(10));
                c.dial_backoff = secs(2);
                c.max_dial_backoff = mins(2);
            }),
        ),
        (
            "high-availability",
            pool_config(|c| {
                c.check_interval = secs(15);
                c.idle_timeout = mins(10);
                c.min_idle = 4;
                c.ensure_idle = 6;
                c.heartbeat = Some(secs(10));
                c.heartbeat_timeout = Some(secs(5));
                c.max_session_lifetime = Some(mins(60));
                c.lifetime_jitter = mins(10);
                c.dial_backoff = secs(1);
                c.max_dial_backoff = secs(30);
            }),
        ),
        (
            "iot",
            pool_config(|c| {
                c.check_interval = mins(5);
                c.idle_timeout = mins(30);
                c.min_idle = 1;
                c.ensure_idle = 1;
                c.heartbeat = Some(mins(4));
                c.heartbeat_timeout = Some(secs(30));
                c.dial_backoff = mins(1);
                c.max_dial_backoff = mins(60);
            }),
        ),
    ]
}

/// One preset by name.
pub fn preset(name: &str) -> PoolConfig {
    presets()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no preset {name:?}"))
}
