//! One table of deadlines per state machine.
//!
//! Every deadline of a [`Session`](crate::Session), a [`Pool`](crate::Pool)
//! or a [`ClientEndpoint`](crate::ClientEndpoint) lives in a [`TimerTable`]
//! keyed by what it is for, so `poll_timeout` is one lookup and expiring
//! timers come out in deadline order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Deadlines keyed by `K`: at most one per key.
#[derive(Clone, Debug)]
pub struct TimerTable<K: Ord + Copy> {
    by_key: BTreeMap<K, Instant>,
    by_time: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Copy> Default for TimerTable<K> {
    fn default() -> Self {
        TimerTable {
            by_key: BTreeMap::new(),
            by_time: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Copy> TimerTable<K> {
    /// Sets (or moves) the deadline of `key`.
    pub fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// Sets the deadline of `key`, or clears it with `None`.
    pub fn set_or_clear(&mut self, key: K, at: Option<Instant>) {
        match at {
            Some(t) => self.set(key, t),
            None => {
                self.clear(key);
            }
        }
    }

    /// Clears the deadline of `key`; returns it.
    pub fn clear(&mut self, key: K) -> Option<Instant> {
        let old = self.by_key.remove(&key)?;
        self.by_time.remove(&(old, key));
        self.release_if_empty();
        Some(old)
    }

    /// An emptied `BTreeMap` keeps its root node: an idle session (no
    /// deadline) keeps nothing allocated.
    fn release_if_empty(&mut self) {
        if self.by_key.is_empty() {
            self.by_key = BTreeMap::new();
            self.by_time = BTreeSet::new();
        }
    }

    /// The deadline of `key`.
    pub fn get(&self, key: K) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// Whether `key` has a deadline at or before `now`.
    pub fn is_expired(&self, key: K, now: Instant) -> bool {
        self.get(key).is_some_and(|t| t <= now)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns the earliest timer due at `now`, with its deadline.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(K, Instant)> {
        let &(t, key) = self.by_time.first()?;
        if t > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_key.remove(&key);
        self.release_if_empty();
        Some((key, t))
    }

    /// Clears every deadline.
    pub fn clear_all(&mut self) {
        self.by_key = BTreeMap::new();
        self.by_time = BTreeSet::new();
    }

    /// Clears every deadline whose key matches `f`.
    pub fn retain(&mut self, mut f: impl FnMut(&K) -> bool) {
        let by_time = &mut self.by_time;
        self.by_key.retain(|k, t| {
            let keep = f(k);
            if !keep {
                by_time.remove(&(*t, *k));
            }
            keep
        });
        self.release_if_empty();
    }

    /// Number of deadlines.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there is no deadline.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    #[allow(clippy::disallowed_methods)] // the test's epoch
    fn set_moves_clear_and_pop_in_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = TimerTable::default();
        t.set(1u8, t0 + 3 * s);
        t.set(2u8, t0 + s);
        t.set(1u8, t0 + 2 * s); // moved, not duplicated
        assert_eq!(t.len(), 2);
        assert_eq!(t.next(), Some(t0 + s));
        assert_eq!(t.pop_expired(t0), None);
        assert_eq!(t.pop_expired(t0 + 5 * s), Some((2, t0 + s)));
        assert_eq!(t.clear(1), Some(t0 + 2 * s));
        assert!(t.is_empty() && t.next().is_none());
        t.set(3, t0);
        t.set(4, t0);
        t.retain(|k| *k != 3);
        assert_eq!(t.pop_expired(t0), Some((4, t0)));
        assert!(t.is_empty());
    }
}
