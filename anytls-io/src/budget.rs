//! A budget for large I/O sizes, shared by whoever holds the same
//! [`IoBudget`] (by default: everybody in the process).
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

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Regular size of a socket read or write batch.
pub(crate) const REGULAR: usize = 32 * 1024;
/// Size for the holders of a slot.
pub(crate) const LARGE: usize = 64 * 1024;

/// One pool of slots.
pub(crate) struct Budget {
    in_use: AtomicUsize,
    slots: usize,
}

/// How many busy TLS connections and relay directions may use large (64 KiB)
/// socket reads and write batches at once; everybody else uses 32 KiB. A
/// busy connection moves bulk data faster and cheaper with the large size;
/// the cap keeps a hundred busy connections within a proxy's memory.
///
/// Clones share their slots. [`IoBudget::default`] is one instance for the
/// whole process (8 + 8 slots); give a client or server its own with
/// [`IoBudget::new`] to size or separate it (`ClientConfig::io_budget`,
/// `ServerConfig::io_budget`).
#[derive(Clone)]
pub struct IoBudget {
    tls: Arc<Budget>,
    relays: Arc<Budget>,
}

impl IoBudget {
    /// A budget of its own: `tls_connections` busy TLS connections and
    /// `relays` busy relay directions (socket into AnyTLS stream) at once
    /// may use the large size (0: none).
    pub fn new(tls_connections: usize, relays: usize) -> IoBudget {
        IoBudget {
            tls: Arc::new(Budget::new(tls_connections)),
            relays: Arc::new(Budget::new(relays)),
        }
    }

    pub(crate) fn tls(&self) -> &Arc<Budget> {
        &self.tls
    }

    pub(crate) fn relays(&self) -> &Arc<Budget> {
        &self.relays
    }
}

impl Default for IoBudget {
    /// The process-wide instance: 8 TLS connections and 8 relay directions.
    fn default() -> IoBudget {
        static SHARED: OnceLock<IoBudget> = OnceLock::new();
        SHARED.get_or_init(|| IoBudget::new(8, 8)).clone()
    }
}

impl fmt::Debug for IoBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBudget")
            .field("tls_connections", &self.tls.slots)
            .field("tls_in_use", &self.tls.in_use.load(Ordering::Relaxed))
            .field("relays", &self.relays.slots)
            .field("relays_in_use", &self.relays.in_use.load(Ordering::Relaxed))
            .finish()
    }
}

impl Budget {
    fn new(slots: usize) -> Budget {
        Budget {
            in_use: AtomicUsize::new(0),
            slots,
        }
    }

    /// A slot, if one is free.
    pub(crate) fn try_claim(self: &Arc<Self>) -> Option<Slot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.slots).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                budget: self.clone(),
            })
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

/// A claimed slot; given back when dropped.
pub(crate) struct Slot {
    budget: Arc<Budget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a slot of its budget while its user is busy.
pub(crate) struct Sizer {
    budget: Arc<Budget>,
    slot: Option<Slot>,
}

impl Sizer {
    /// A sizer drawing on `budget`.
    pub(crate) fn new(budget: Arc<Budget>) -> Sizer {
        Sizer { budget, slot: None }
    }

    /// The size to use now.
    pub(crate) fn max(&self) -> usize {
        if self.slot.is_some() { LARGE } else { REGULAR }
    }

    /// The user is busy: claim a slot if it has none.
    pub(crate) fn busy(&mut self) {
        if self.slot.is_none() {
            self.slot = self.budget.try_claim();
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
        let budget = IoBudget::new(2, 0);
        let slots = budget.tls().clone();
        let mut a = Sizer::new(slots.clone());
        let mut b = Sizer::new(slots.clone());
        let mut c = Sizer::new(slots.clone());
        for s in [&mut a, &mut b, &mut c] {
            assert_eq!(s.max(), REGULAR);
            s.busy();
        }
        assert_eq!((a.max(), b.max(), c.max()), (LARGE, LARGE, REGULAR));
        assert_eq!(slots.in_use(), 2);
        a.busy();
        assert_eq!(
            slots.in_use(),
            2,
            "a second claim by the same user takes nothing"
        );
        a.quiet();
        c.busy();
        assert_eq!((a.max(), c.max()), (REGULAR, LARGE));
        drop(b);
        drop(c);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn clones_share_their_slots_and_new_budgets_do_not() {
        let a = IoBudget::new(1, 1);
        let shared = a.clone();
        let other = IoBudget::new(1, 1);
        let mut x = Sizer::new(a.tls().clone());
        let mut y = Sizer::new(shared.tls().clone());
        let mut z = Sizer::new(other.tls().clone());
        x.busy();
        y.busy();
        z.busy();
        assert_eq!((x.max(), y.max(), z.max()), (LARGE, REGULAR, LARGE));
        // The default is one instance for the whole process.
        assert!(Arc::ptr_eq(
            IoBudget::default().tls(),
            IoBudget::default().tls()
        ));
        assert_eq!(IoBudget::default().tls().slots, 8);
    }
}
