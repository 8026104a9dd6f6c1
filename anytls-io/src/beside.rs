//! Stream work run inside its session's driver task, beside the driver.
//!
//! On a thread-per-core runtime a stream's relay and its session's driver
//! share a thread but are two tasks. Each hand-over between them (the driver
//! decrypted data for the relay; the relay queued data for the driver) goes
//! through the single-threaded scheduler's FIFO run queue, behind every other
//! ready task on the thread. With a hundred busy connections on a thread the
//! data waits a whole round and has left the CPU caches by the time it is
//! copied on (measured: the copy of decrypted records and the socket writes
//! of a client cost about twice as much as on tokio's work-stealing pool,
//! whose LIFO slot runs the woken task next).
//!
//! [`run_beside`] polls a session's driver together with its
//! [`Companions`], the stream futures handed to it, in one task: a companion
//! woken during the task's poll (by the driver) is polled in the same poll,
//! and so is the driver when a companion wakes it. Hand-overs cost a flag,
//! not a trip through the run queue, and the data is still warm.
//!
//! Companions get there two ways:
//! - The server adopts each incoming stream's handler as it arrives.
//! - The local proxy's connection task moves itself, once its stream is
//!   open, with [`move_beside`]. This works for a task spawned through
//!   [`movable`] (the tokio adapter's thread-per-core runtime wraps every
//!   connection task in it): the wrapper hands its boxed future over to the
//!   companions and ends; the future goes on where it stopped, polled by the
//!   driver's task from then on.
//!
//! A panicking companion is dropped (as a panicking task would be), without
//! taking its session or the other streams with it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use crate::runtime::{Runtime, lock};

/// A future run beside a driver.
pub(crate) type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Rounds of one poll of [`run_beside`] before it lets other tasks run.
/// Rounds go on while the futures keep waking each other (or themselves),
/// so that a busy session moves what it can into the kernel before its poll
/// ends: fewer rounds leave data in our buffers while the thread serves
/// everybody else (the server's peak RSS with 100 busy streams: 15.5-16.5
/// MiB with 32 rounds, 21.4 with 4, 21.5-23.3 with a 250 us limit, 24.1 with
/// 2; a small request's latency under load on one thread was no better with
/// fewer). Bounded besides by the runtime's budget per task poll, if it has
/// one (tokio's).
const ROUNDS: usize = 32;

/// Futures adopted beside a driver, and tasks that moved there, so far.
static ADOPTED: AtomicUsize = AtomicUsize::new(0);
static MOVED: AtomicUsize = AtomicUsize::new(0);

/// How many futures this process ran beside a session's driver so far, and
/// how many of them were connection tasks that moved there (see
/// [`movable`]); for tests and diagnostics.
#[doc(hidden)]
pub fn beside_counts() -> (usize, usize) {
    (ADOPTED.load(Relaxed), MOVED.load(Relaxed))
}

/// The futures handed to a session's driver task, waiting to be polled.
pub(crate) struct Companions {
    inbox: Mutex<Inbox>,
}

struct Inbox {
    new: Vec<Job>,
    /// Wakes the driver's task for new arrivals.
    waker: Option<Waker>,
    /// The driver ended: nothing more is taken.
    closed: bool,
}

impl Companions {
    pub(crate) fn new() -> Arc<Companions> {
        Arc::new(Companions {
            inbox: Mutex::new(Inbox {
                new: Vec::new(),
                waker: None,
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }

    /// Hands `job` to the driver's task. Gives it back once the driver has
    /// ended (the caller runs it some other way).
    pub(crate) fn adopt(&self, job: Job) -> Result<(), Job> {
        let mut g = self.lock();
        if g.closed {
            return Err(job);
        }
        g.new.push(job);
        ADOPTED.fetch_add(1, Relaxed);
        let waker = g.waker.clone();
        drop(g);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// The jobs handed over since the last call (the inbox keeps no
    /// capacity).
    fn take_new(&self) -> Vec<Job> {
        std::mem::take(&mut self.lock().new)
    }

    /// Takes no more jobs. `drop_all`: also drops the ones not taken yet
    /// and the driver's waker (the driver's task is going away).
    fn close(&self, drop_all: bool) {
        let mut g = self.lock();
        g.closed = true;
        if drop_all {
            let (jobs, waker) = (std::mem::take(&mut g.new), g.waker.take());
            drop(g);
            drop((jobs, waker));
        }
    }
}

/// Closes the companions when [`run_beside`] ends or is dropped (its task
/// aborted): nothing waits there for a poll that will not come, and the
/// companions keep no waker of a task that is gone.
struct CloseOnDrop<'a>(&'a Companions);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(true);
    }
}

/// Runs `job` beside the driver of `companions` if it still runs, else as a
/// task of its own.
pub(crate) fn adopt_or_spawn<R: Runtime>(companions: &Companions, job: Job) {
    if let Err(job) = companions.adopt(job) {
        R::spawn(job);
    }
}

/// What one poll of [`run_beside`] shares with the wakers it hands out.
struct Poller {
    /// Inside the poll: a wake needs no task wake-up (the poll goes round
    /// again while any flag is set).
    polling: AtomicBool,
    /// Some flag was set since the round started.
    any: AtomicBool,
    /// Slots of the companions woken since they were last polled, in the
    /// order of their wakes: each gets its turn, however busy the others.
    woken: Mutex<VecDeque<usize>>,
    /// The task's own waker, for wakes from outside its poll.
    task: Mutex<Option<Waker>>,
}

/// Slot of the driver's and the inbox's flags (not companions).
const NO_SLOT: usize = usize::MAX;

/// The waker of one future polled by [`run_beside`]: sets its flag and, for
/// a companion, queues its slot.
struct Flag {
    ready: AtomicBool,
    slot: usize,
    poller: Arc<Poller>,
}

impl Flag {
    /// A flag that is set (its future is due for a first poll).
    fn new(poller: &Arc<Poller>, slot: usize) -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag {
            ready: AtomicBool::new(true),
            slot,
            poller: poller.clone(),
        });
        let waker = Waker::from(flag.clone());
        (flag, waker)
    }

    fn take(&self) -> bool {
        self.ready.swap(false, SeqCst)
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Already set: its poll is due (and whoever set it saw to that).
        if self.ready.swap(true, SeqCst) {
            return;
        }
        let p = &self.poller;
        if self.slot != NO_SLOT {
            lock(&p.woken).push_back(self.slot);
        }
        p.any.store(true, SeqCst);
        if !p.polling.load(SeqCst) {
            let task = lock(&p.task).clone();
            if let Some(w) = task {
                w.wake();
            }
        }
    }
}

/// A companion in its slot.
struct Companion {
    job: Job,
    flag: Arc<Flag>,
    waker: Waker,
}

/// Polls `driver` and the `companions` handed to it, in one task, until the
/// driver has ended and every companion with it; returns the driver's
/// output. In each round the driver is polled first (if woken), then the
/// companions woken so far, in the order of their wakes; rounds go on while
/// a future was woken by another one.
pub(crate) async fn run_beside<F: Future>(driver: F, companions: &Companions) -> F::Output {
    let poller = Arc::new(Poller {
        polling: AtomicBool::new(false),
        any: AtomicBool::new(false),
        woken: Mutex::new(VecDeque::new()),
        task: Mutex::new(None),
    });
    let (driver_flag, driver_waker) = Flag::new(&poller, NO_SLOT);
    let (inbox_flag, inbox_waker) = Flag::new(&poller, NO_SLOT);
    companions.lock().waker = Some(inbox_waker);
    let _close = CloseOnDrop(companions);
    let mut driver = pin!(driver);
    let mut output = None;
    // Companions by slot, and the free slots.
    let mut slots: Vec<Option<Companion>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut live = 0usize;
    // Which of the woken goes first: each in turn (they share the task's
    // budget, if the runtime has one, and the first takes it).
    let mut turn = 0usize;
    poll_fn(|cx| {
        {
            let mut task = lock(&poller.task);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // Nothing polled here moves itself again.
        let _not_movable = MovableScope::enter(false);
        poller.polling.store(true, SeqCst);
        for _ in 0..ROUNDS {
            poller.any.store(false, SeqCst);
            if output.is_none() && driver_flag.take() {
                let polled = driver
                    .as_mut()
                    .poll(&mut Context::from_waker(&driver_waker));
                if let Poll::Ready(v) = polled {
                    output = Some(v);
                    companions.close(false);
                    // Whatever arrived before the close still runs.
                    inbox_flag.ready.store(true, SeqCst);
                }
            }
            if inbox_flag.take() {
                for job in companions.take_new() {
                    let slot = free.pop().unwrap_or(slots.len());
                    let (flag, waker) = Flag::new(&poller, slot);
                    let c = Some(Companion { job, flag, waker });
                    match slots.get_mut(slot) {
                        Some(s) => *s = c,
                        None => {
                            // Most sessions have one stream at a time.
                            if slots.is_empty() {
                                slots.reserve_exact(1);
                            }
                            slots.push(c);
                        }
                    }
                    live += 1;
                    lock(&poller.woken).push_back(slot);
                }
            }
            let mut due = std::mem::take(&mut *lock(&poller.woken));
            if due.len() > 1 {
                due.rotate_left(turn % due.len());
            }
            turn = turn.wrapping_add(1);
            for slot in due {
                // A stale wake (a finished companion's waker) finds the
                // slot empty, or taken by a companion whose flag is not set.
                let Some(Some(c)) = slots.get_mut(slot) else {
                    continue;
                };
                if !c.flag.take() {
                    continue;
                }
                let mut cx = Context::from_waker(&c.waker);
                let polled = catch_unwind(AssertUnwindSafe(|| c.job.as_mut().poll(&mut cx)));
                if !matches!(polled, Ok(Poll::Pending)) {
                    if polled.is_err() {
                        tracing::error!("a stream's task panicked; its session goes on");
                    }
                    slots[slot] = None;
                    free.push(slot);
                    live -= 1;
                }
            }
            if live == 0 && !slots.is_empty() {
                // A burst is over: keep no capacity.
                (slots, free) = (Vec::new(), Vec::new());
            }
            if output.is_some() && live == 0 && !inbox_flag.ready.load(SeqCst) {
                poller.polling.store(false, SeqCst);
                return Poll::Ready(output.take());
            }
            if !poller.any.load(SeqCst) {
                poller.polling.store(false, SeqCst);
                // A wake between the check and the store saw `polling` set
                // and woke nobody: go round again.
                if !poller.any.load(SeqCst) {
                    return Poll::Pending;
                }
                poller.polling.store(true, SeqCst);
            }
        }
        poller.polling.store(false, SeqCst);
        // Let other tasks run; come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
    .expect("run_beside returns the driver's output")
}

thread_local! {
    /// Inside the poll of a [`movable`] task (directly, not beside a driver).
    static MOVABLE: Cell<bool> = const { Cell::new(false) };
    /// Where the task being polled asked to move.
    static MOVE_TO: RefCell<Option<Arc<Companions>>> = const { RefCell::new(None) };
}

/// Sets [`MOVABLE`] for a scope; restores it on the way out (panics too).
struct MovableScope(bool);

impl MovableScope {
    fn enter(movable: bool) -> MovableScope {
        MovableScope(MOVABLE.with(|m| m.replace(movable)))
    }
}

impl Drop for MovableScope {
    fn drop(&mut self) {
        MOVABLE.with(|m| m.set(self.0));
    }
}

/// Wraps a connection task so that it can move next to the driver of the
/// AnyTLS session it ends up relaying over (when that driver runs on the
/// same thread of a thread-per-core runtime): from then on the stream's
/// relay and the session's driver are polled by one task, and the data
/// they hand each other is still in the CPU caches when it is copied on.
///
/// For implementers of [`Runtime`](crate::Runtime) whose
/// [`executor`](crate::Runtime::executor) is `Some`: wrap the future of
/// [`spawn_connection`](crate::Runtime::spawn_connection) in it, with
/// whatever must live as long as the connection (a load count) inside.
/// Elsewhere it changes nothing.
///
/// The wrapper's own task ends when the connection moves: the end of that
/// task (a `JoinHandle`) does not mean the connection has ended.
pub fn movable<F>(fut: F) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut job: Option<Job> = Some(Box::pin(fut));
    poll_fn(move |cx| {
        let Some(j) = job.as_mut() else {
            return Poll::Ready(());
        };
        // A request left behind by a panic is not this task's.
        MOVE_TO.with(|m| m.borrow_mut().take());
        let polled = {
            let _scope = MovableScope::enter(true);
            j.as_mut().poll(cx)
        };
        let to = MOVE_TO.with(|m| m.borrow_mut().take());
        match (polled, to) {
            (Poll::Ready(()), _) => {
                job = None;
                Poll::Ready(())
            }
            (Poll::Pending, Some(to)) => match job.take().map(|j| to.adopt(j)) {
                Some(Ok(())) => {
                    MOVED.fetch_add(1, Relaxed);
                    Poll::Ready(())
                }
                // The driver ended meanwhile: go on here (the future woke
                // this task).
                Some(Err(j)) => {
                    job = Some(j);
                    Poll::Pending
                }
                None => Poll::Ready(()),
            },
            (Poll::Pending, None) => Poll::Pending,
        }
    })
}

/// Moves the calling task beside the driver of `to`'s session, if the task
/// was spawned through [`movable`] and `to` is `Some`; otherwise (or if the
/// driver has ended) returns at once and the task stays where it is.
pub(crate) async fn move_beside(to: Option<Arc<Companions>>) {
    let mut asked = false;
    poll_fn(|cx| {
        if asked {
            return Poll::Ready(());
        }
        match &to {
            Some(c) if MOVABLE.with(Cell::get) => {
                MOVE_TO.with(|m| *m.borrow_mut() = Some(c.clone()));
                asked = true;
                // Polled again right away if it does not move.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    /// A one-value mailbox between futures: `put` wakes the taker.
    #[derive(Default)]
    struct Mailbox {
        value: Option<u32>,
        waker: Option<Waker>,
    }

    type Shared = Arc<Mutex<Mailbox>>;

    fn put(m: &Shared, v: u32) {
        let mut g = m.lock().unwrap();
        g.value = Some(v);
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }

    async fn take(m: &Shared) -> u32 {
        poll_fn(|cx| {
            let mut g = m.lock().unwrap();
            match g.value.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    g.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn poll_once<F: Future>(f: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(waker))
    }

    /// The driver hands a value to a companion and gets the answer back,
    /// all within one poll of the task: no wake-up of the task in between.
    #[test]
    fn hand_overs_happen_within_one_poll() {
        let companions = Companions::new();
        let (to_job, to_driver): (Shared, Shared) = Default::default();
        let (a, b) = (to_job.clone(), to_driver.clone());
        companions
            .adopt(Box::pin(async move {
                let v = take(&a).await;
                put(&b, v + 1);
            }))
            .map_err(|_| ())
            .unwrap();
        let driver = async {
            put(&to_job, 41);
            take(&to_driver).await
        };
        let (count, waker) = counting();
        let mut run = pin!(run_beside(driver, &companions));
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(42));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    /// The driver's end waits for its companions; a job handed over after
    /// the end is given back.
    #[test]
    fn the_end_waits_for_companions_and_closes_the_inbox() {
        let companions = Companions::new();
        let gate: Shared = Default::default();
        let g = gate.clone();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        companions
            .adopt(Box::pin(async move {
                take(&g).await;
                d.store(true, SeqCst);
            }))
            .map_err(|_| ())
            .unwrap();
        let (count, waker) = counting();
        let mut run = pin!(run_beside(async { 7 }, &companions));
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Pending);
        assert!(companions.adopt(Box::pin(async {})).is_err());
        // A wake from outside the poll wakes the task.
        put(&gate, 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(7));
        assert!(done.load(SeqCst));
    }

    /// Companions that share a budget (as tokio's per-task budget) take turns
    /// at going first: none is starved by the ones before it. Each one here
    /// works while the budget lasts; without budget it asks to be woken
    /// after the task's poll (as tokio does), and the test wakes them then.
    #[test]
    fn companions_take_turns_at_a_shared_budget() {
        let companions = Companions::new();
        let budget = Arc::new(AtomicUsize::new(0));
        let deferred: Arc<Mutex<Vec<Waker>>> = Arc::default();
        let progress: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
        for p in &progress {
            let (p, budget, deferred) = (p.clone(), budget.clone(), deferred.clone());
            let _ = companions.adopt(Box::pin(poll_fn(move |cx| {
                while budget
                    .fetch_update(SeqCst, SeqCst, |b| b.checked_sub(1))
                    .is_ok()
                {
                    p.fetch_add(1, SeqCst);
                }
                deferred.lock().unwrap().push(cx.waker().clone());
                Poll::<()>::Pending
            })));
        }
        let (_, waker) = counting();
        let mut run = pin!(run_beside(std::future::pending::<()>(), &companions));
        for _ in 0..40 {
            budget.store(10, SeqCst);
            assert_eq!(poll_once(run.as_mut(), &waker), Poll::Pending);
            for w in std::mem::take(&mut *deferred.lock().unwrap()) {
                w.wake();
            }
        }
        let got: Vec<usize> = progress.iter().map(|p| p.load(SeqCst)).collect();
        assert!(got.iter().all(|&n| n >= 80), "{got:?}");
    }

    /// After a burst of companions has ended, nothing keeps their capacity.
    #[test]
    fn a_finished_burst_keeps_no_capacity() {
        let companions = Companions::new();
        for _ in 0..100 {
            let _ = companions.adopt(Box::pin(async {}));
        }
        let (_, waker) = counting();
        let mut run = pin!(run_beside(std::future::pending::<()>(), &companions));
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Pending);
        assert_eq!(companions.lock().new.capacity(), 0);
        assert!(beside_counts().0 >= 100);
    }

    /// Dropping the driver's task (an abort) closes its companions: a later
    /// job is given back, and the jobs and the waker it held are let go.
    #[test]
    fn an_aborted_driver_lets_its_companions_go() {
        let companions = Companions::new();
        let held = Arc::new(());
        let h = held.clone();
        let _ = companions.adopt(Box::pin(async move {
            let _h = h;
            std::future::pending::<()>().await;
        }));
        let (_, waker) = counting();
        {
            let mut run = pin!(run_beside(std::future::pending::<()>(), &companions));
            assert_eq!(poll_once(run.as_mut(), &waker), Poll::Pending);
            let h = held.clone();
            // Adopted after the poll: still in the inbox when the task goes.
            let _ = companions.adopt(Box::pin(async move {
                let _h = h;
            }));
            assert_eq!(Arc::strong_count(&held), 3);
        }
        assert_eq!(Arc::strong_count(&held), 1);
        assert!(companions.adopt(Box::pin(async {})).is_err());
        assert!(companions.lock().waker.is_none());
    }

    /// A panicking companion is dropped; the driver and the others go on.
    #[test]
    fn a_panicking_companion_takes_nobody_with_it() {
        let companions = Companions::new();
        let gate: Shared = Default::default();
        let g = gate.clone();
        let other = Arc::new(AtomicBool::new(false));
        let o = other.clone();
        let _ = companions.adopt(Box::pin(async { panic!("boom") }));
        let _ = companions.adopt(Box::pin(async move {
            take(&g).await;
            o.store(true, SeqCst);
        }));
        let driver = async {
            put(&gate, 1);
            3
        };
        let (_, waker) = counting();
        let mut run = pin!(run_beside(driver, &companions));
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(3));
        assert!(other.load(SeqCst));
    }

    /// A future that keeps waking itself is polled at most [`ROUNDS`] times
    /// per poll of the task, which then lets other tasks run (it wakes
    /// itself to come back).
    #[test]
    fn a_future_waking_itself_is_bounded_per_poll() {
        let companions = Companions::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        let _ = companions.adopt(Box::pin(poll_fn(move |cx| {
            if p.fetch_add(1, SeqCst) == ROUNDS + 1 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })));
        let (count, waker) = counting();
        let mut run = pin!(run_beside(async {}, &companions));
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Pending);
        assert_eq!(polls.load(SeqCst), ROUNDS);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(()));
    }

    /// A movable task that asks to move ends its own poll and goes on beside
    /// the driver; one that is not movable (or has nowhere to go) stays.
    #[test]
    fn a_movable_task_moves_and_goes_on() {
        let companions = Companions::new();
        let steps = Arc::new(AtomicUsize::new(0));
        let (s, c) = (steps.clone(), companions.clone());
        let task = movable(async move {
            s.fetch_add(1, SeqCst);
            move_beside(Some(c)).await;
            s.fetch_add(1, SeqCst);
        });
        let (_, waker) = counting();
        let mut task = pin!(task);
        assert_eq!(poll_once(task.as_mut(), &waker), Poll::Ready(()));
        assert_eq!(steps.load(SeqCst), 1, "it stopped where it asked to move");
        let mut run = pin!(run_beside(async {}, &companions));
        assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(()));
        assert_eq!(steps.load(SeqCst), 2, "and went on beside the driver");

        // Not movable: it stays and goes on at once.
        let c = Companions::new();
        let mut stay = pin!(async {
            move_beside(Some(c.clone())).await;
            5
        });
        assert_eq!(poll_once(stay.as_mut(), &waker), Poll::Ready(5));
        // Movable, but the driver has ended: it stays, and goes on when
        // polled again (it woke its task).
        let ended = Companions::new();
        ended.close(false);
        let (count, waker) = counting();
        let e = ended.clone();
        let mut task = pin!(movable(async move { move_beside(Some(e)).await }));
        assert_eq!(poll_once(task.as_mut(), &waker), Poll::Pending);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(task.as_mut(), &waker), Poll::Ready(()));
    }

    /// A request to move that a panic left behind does not move the next
    /// movable task polled on the thread.
    #[test]
    fn a_panic_leaves_no_move_behind() {
        let c = Companions::new();
        let (_, waker) = counting();
        let c2 = c.clone();
        let mut bad = Box::pin(movable(async move {
            let mut mv = pin!(move_beside(Some(c2)));
            let _ = poll_once(mv.as_mut(), &Waker::noop().clone());
            panic!("after asking to move");
        }));
        let caught = catch_unwind(AssertUnwindSafe(|| poll_once(bad.as_mut(), &waker)));
        assert!(caught.is_err());
        let mut good = pin!(movable(std::future::pending::<()>()));
        assert_eq!(poll_once(good.as_mut(), &waker), Poll::Pending);
        assert!(c.take_new().is_empty());
    }
}
