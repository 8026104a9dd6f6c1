//! A process-wide budget for large I/O sizes.
//!
//! A busy connection moves bulk data fastest with 64 KiB socket reads and
//! writes (half the syscalls and loopback packets of 32 KiB ones; measured in
//! benches/README.md), but a hundred busy connections at 64 KiB would blow
//! the memory a proxy may use. So the first few busy users in a process get
//! the large size and everybody else the regular one, like TCP buffer
//! auto-tuning under memory pressure. Users claim a slot when they turn busy
//! and give it back when they end or go quiet: a TLS connection after
//! `IDLE_RELEASE` (1 s) without traffic, when its driver also frees the
//! buffers of the busy spell; a relay direction when its reads turn small
//! (under a quarter of what they were offered).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Regular size of a socket read or write batch.
pub(crate) const REGULAR: usize = 32 * 1024;
/// Size for the holders of a slot.
pub(crate) const LARGE: usize = 64 * 1024;

/// One pool of slots.
pub(crate) struct Budget {
    in_use: AtomicUsize,
    slots: usize,
}

/// TLS connections (their socket reads and write batches).
pub(crate) static TLS_CONNECTIONS: Budget = Budget::new(8);
/// Relay directions reading a socket into an AnyTLS stream.
pub(crate) static RELAYS: Budget = Budget::new(8);

impl Budget {
    const fn new(slots: usize) -> Budget {
        Budget {
            in_use: AtomicUsize::new(0),
            slots,
        }
    }

    /// A slot, if one is free.
    pub(crate) fn try_claim(&'static self) -> Option<Slot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.slots).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot { budget: self })
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

/// A claimed slot; given back when dropped.
pub(crate) struct Slot {
    budget: &'static Budget,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a slot while its user is busy.
#[derive(Default)]
pub(crate) struct Sizer {
    slot: Option<Slot>,
}

impl Sizer {
    /// The size to use now.
    pub(crate) fn max(&self) -> usize {
        if self.slot.is_some() { LARGE } else { REGULAR }
    }

    /// The user is busy: claim a slot from `budget` if it has none.
    pub(crate) fn busy(&mut self, budget: &'static Budget) {
        if self.slot.is_none() {
            self.slot = budget.try_claim();
        }
    }

    /// The user went quiet: give the slot back.
    pub(crate) fn quiet(&mut self) {
        self.slot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        static B: Budget = Budget::new(2);
        let mut a = Sizer::default();
        let mut b = Sizer::default();
        let mut c = Sizer::default();
        for s in [&mut a, &mut b, &mut c] {
            assert_eq!(s.max(), REGULAR);
            s.busy(&B);
        }
        assert_eq!((a.max(), b.max(), c.max()), (LARGE, LARGE, REGULAR));
        assert_eq!(B.in_use(), 2);
        a.busy(&B);
        assert_eq!(
            B.in_use(),
            2,
            "a second claim by the same user takes nothing"
        );
        a.quiet();
        c.busy(&B);
        assert_eq!((a.max(), c.max()), (REGULAR, LARGE));
        drop(b);
        drop(c);
        assert_eq!(B.in_use(), 0);
    }
}
