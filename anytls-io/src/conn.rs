//! One TLS connection driving one connection of a core state machine: a
//! server's `ServerSession` ([`Conn`]), or one session of the client's
//! `ClientEndpoint` (see `client.rs`).
//!
//! The state machine sits behind a mutex shared by the connection's driver
//! task and its stream handles (the quinn pattern): a handle reads and writes
//! stream data straight into the core under the lock, and kicks the driver,
//! which moves bytes between the core and the TLS stream, dispatches events
//! and keeps the timer. The lock is never held across an await.
//!
//! The driver reads and writes concurrently (a write in flight owns the write
//! half), so two peers that both write a lot never deadlock waiting for each
//! other to read.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use anytls_core::session::ServerSession;
use anytls_core::{
    Event, SessionError, SocksAddr, StreamError, StreamId, Transmit, TransmitBuf, TransportError,
};
use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use crate::beside::Companions;
use crate::runtime::{Runtime, timeout};
use crate::stats::StreamGuard;
use crate::tls_io::TlsIo;

/// One connection of a core state machine, as its driver task sees it.
pub(crate) trait Machine {
    /// Runs the deadlines that are due (a no-op when another task keeps the
    /// timers).
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self, now: Instant, buf: &mut dyn TransmitBuf) -> Option<Transmit>;
    /// Whether a transmit may still be shaped (see `Session::may_shape`).
    fn may_shape(&self) -> bool;
    fn handle_input(&mut self, now: Instant, data: BytesMut);
    fn handle_eof(&mut self, now: Instant);
    fn handle_transport_error(&mut self, now: Instant, error: TransportError);
    fn poll_timeout(&self) -> Option<Instant>;
    fn wants_read(&self) -> bool;
    fn is_closed(&self) -> bool;
    /// Why it ended (once it did).
    fn closed_reason(&self) -> Option<SessionError>;
    /// Dispatches new events to the stream handles; events the driver's
    /// observer should see are moved to `observed`.
    fn dispatch(&mut self, observed: &mut Vec<Event>);
    /// Remembers the driver's waker (to be woken when there is output).
    fn set_driver_waker(&mut self, waker: &Waker);
}

/// Something a driver task can lock to reach its [`Machine`].
pub(crate) trait Link: Send + Sync + 'static {
    /// Runs `f` on the machine under the lock.
    fn with<T>(&self, f: impl FnOnce(&mut dyn Machine) -> T) -> T;
}

pub(crate) struct Shared {
    pub(crate) session: ServerSession,
    read_wakers: HashMap<StreamId, Waker>,
    write_wakers: HashMap<StreamId, Waker>,
    /// Streams the server refused or the session reset: the error their
    /// handles report.
    refused: HashMap<StreamId, StreamError>,
    /// Server: streams whose destination arrived, not yet taken by the owner.
    pub(crate) incoming: VecDeque<(StreamId, SocksAddr)>,
    incoming_waker: Option<Waker>,
    closed: Option<SessionError>,
    /// Events already dispatched to the handles, for the driver's observer.
    observed: Vec<Event>,
    driver_waker: Option<Waker>,
}

/// A connection: the shared session state.
pub(crate) struct Conn {
    shared: Mutex<Shared>,
}

impl Link for Arc<Conn> {
    fn with<T>(&self, f: impl FnOnce(&mut dyn Machine) -> T) -> T {
        f(&mut *self.lock())
    }
}

impl Machine for Shared {
    fn handle_timeout(&mut self, now: Instant) {
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut dyn TransmitBuf) -> Option<Transmit> {
        self.session.poll_transmit(now, buf)
    }
    fn may_shape(&self) -> bool {
        self.session.may_shape()
    }
    fn handle_input(&mut self, now: Instant, data: BytesMut) {
        self.session.handle_input(now, data);
    }
    fn handle_eof(&mut self, now: Instant) {
        self.session.handle_eof(now);
    }
    fn handle_transport_error(&mut self, now: Instant, error: TransportError) {
        self.session.handle_transport_error(now, error);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }
    fn wants_read(&self) -> bool {
        self.session.wants_read()
    }
    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
    fn closed_reason(&self) -> Option<SessionError> {
        self.closed.clone()
    }
    fn dispatch(&mut self, observed: &mut Vec<Event>) {
        self.drain_events();
        // Taken, not drained: no event vector keeps its capacity on an idle
        // session.
        let mut new = std::mem::take(&mut self.observed);
        if observed.is_empty() {
            *observed = new;
        } else {
            observed.append(&mut new);
        }
    }
    fn set_driver_waker(&mut self, waker: &Waker) {
        if !self
            .driver_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(waker))
        {
            self.driver_waker = Some(waker.clone());
        }
    }
}

impl Conn {
    pub(crate) fn new(session: ServerSession) -> Arc<Conn> {
        Arc::new(Conn {
            shared: Mutex::new(Shared {
                session,
                read_wakers: HashMap::new(),
                write_wakers: HashMap::new(),
                refused: HashMap::new(),
                incoming: VecDeque::new(),
                incoming_waker: None,
                closed: None,
                observed: Vec::new(),
                driver_waker: None,
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock is a bug; keep serving the others.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Server: the next stream with its destination.
    pub(crate) async fn next_incoming(self: &Arc<Self>) -> Option<(StreamId, SocksAddr)> {
        poll_fn(|cx| {
            let mut g = self.lock();
            if let Some(s) = g.incoming.pop_front() {
                return Poll::Ready(Some(s));
            }
            if g.closed.is_some() {
                return Poll::Ready(None);
            }
            g.incoming_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes the session now (no FINs).
    pub(crate) fn close(&self) {
        let mut g = self.lock();
        g.session.close(Instant::now());
        g.drain_events();
        g.kick();
    }
}

impl Shared {
    /// Wakes the driver: there is output or a state change to act on.
    pub(crate) fn kick(&mut self) {
        if let Some(w) = self.driver_waker.take() {
            w.wake();
        }
    }

    /// Dispatches the session's new events to the stream handles at once (so a
    /// handle that sees the session closed also sees why) and keeps them for
    /// the driver's observer.
    pub(crate) fn drain_events(&mut self) {
        let mut any = false;
        while let Some(ev) = self.session.poll_event() {
            self.dispatch(&ev);
            self.observed.push(ev);
            any = true;
        }
        if any {
            self.kick();
        }
    }

    fn dispatch(&mut self, ev: &Event) {
        let wake = |m: &mut HashMap<StreamId, Waker>, id: &StreamId| {
            if let Some(w) = m.remove(id) {
                w.wake();
            }
        };
        match ev {
            Event::StreamReadable { id } => wake(&mut self.read_wakers, id),
            Event::StreamFinished { id } => {
                // FIN closes both ways: a writer waiting for room now fails.
                wake(&mut self.read_wakers, id);
                wake(&mut self.write_wakers, id);
            }
            Event::StreamWritable { id } => wake(&mut self.write_wakers, id),
            Event::StreamRefused { id, .. } | Event::StreamReset { id, .. } => {
                let err = match ev {
                    Event::StreamReset { reason, .. } => StreamError::Reset(reason.clone()),
                    Event::StreamRefused { reason, .. } => StreamError::Refused(reason.clone()),
                    _ => return,
                };
                self.refused.insert(*id, err);
                wake(&mut self.read_wakers, id);
                wake(&mut self.write_wakers, id);
            }
            Event::StreamOpened { id, dest } => {
                self.incoming.push_back((*id, dest.clone()));
                if let Some(w) = self.incoming_waker.take() {
                    w.wake();
                }
            }
            Event::Closed { reason } => {
                self.closed = Some(reason.clone());
                for (_, w) in self.read_wakers.drain().chain(self.write_wakers.drain()) {
                    w.wake();
                }
                if let Some(w) = self.incoming_waker.take() {
                    w.wake();
                }
            }
            _ => {}
        }
    }
}

/// How a driven connection ended.
pub(crate) enum DriveEnd<IO> {
    /// The session closed.
    Closed(SessionError),
    /// Server: the preamble was wrong. The TLS connection and every byte read
    /// so far, for a fallback.
    Fallback { tls: Box<TlsIo<IO>>, replay: Bytes },
}

/// Drives the connection behind `link` over `tls` until its session closes.
/// `observer` sees every event the machine hands out after it has been
/// dispatched to the stream handles.
///
/// One poll loop does everything: it pulls transmits from the session and
/// encrypts a batch of them (shaped ones each as its own TLS record(s), see
/// [`encrypt_batch`]) into the connection,
/// writes the records with as few syscalls as the socket allows, reads and
/// decrypts whatever arrived, and keeps the session's timer. Reading and
/// writing proceed independently, so two peers that both write a lot never
/// deadlock waiting for each other to read.
pub(crate) async fn drive<R, IO>(
    link: impl Link,
    mut tls: Box<TlsIo<IO>>,
    mut observer: impl FnMut(&Event) + Send,
) -> DriveEnd<IO>
where
    R: Runtime,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Grows with the first transmits; an idle session keeps nothing here.
    let mut out = BytesMut::new();
    // Transmits may still be shaped (see `encrypt_batch`).
    let mut shaping = true;
    let mut timer: Option<(R::Timer, Instant)> = None;
    let mut fallback: Option<Bytes> = None;
    let mut events = Vec::new();
    let mut io_error: Option<io::Error> = None;
    // Last time bytes moved; after `IDLE_RELEASE` without, buffers and the
    // large-I/O slot a busy spell left behind are given back.
    let mut last_active = Instant::now();
    poll_fn(|cx| {
        for _ in 0..LOOP_BUDGET {
            let mut progress = false;
            let now = Instant::now();
            // The waker is registered before transmits are pulled: output
            // queued by a stream handle between a pull and the end of this
            // turn wakes the driver again (the lock is not held throughout).
            link.with(|m| {
                m.set_driver_waker(cx.waker());
                m.handle_timeout(now)
            });
            if !tls.has_pending_output() && io_error.is_none() {
                // Transmits are pulled under the lock a record at a time and
                // encrypted outside it: encryption never holds up the stream
                // handles (or, on a client, the other connections).
                let pull = |out: &mut dyn TransmitBuf, staged: usize, budget: usize| {
                    link.with(|m| {
                        let p = pull_transmits(|b| m.poll_transmit(now, b), out, staged, budget);
                        (p, m.may_shape())
                    })
                };
                match encrypt_batch(pull, &mut shaping, &mut tls, &mut out) {
                    Ok(0) => {}
                    Ok(_) => last_active = now,
                    Err(e) => {
                        link.with(|m| m.handle_transport_error(now, TransportError::from_io(&e)));
                        io_error = Some(e);
                    }
                }
            }
            let holds = tls.holds_busy_resources() || out.capacity() > 0;
            if holds && now >= last_active + IDLE_RELEASE {
                tls.release_busy_resources();
                out = BytesMut::new();
                // What could not go yet (bytes in flight) is tried again
                // a period later, not in a loop.
                last_active = now;
            }
            let release = (tls.holds_busy_resources() || out.capacity() > 0)
                .then_some(last_active + IDLE_RELEASE);
            let (timeout, wants_read, closed) = link.with(|m| {
                m.dispatch(&mut events);
                (
                    earliest(m.poll_timeout(), release),
                    m.wants_read(),
                    m.is_closed(),
                )
            });
            for ev in std::mem::take(&mut events) {
                if let Event::AuthRejected { replay } = &ev {
                    fallback = Some(replay.clone());
                }
                observer(&ev);
            }
            if io_error.is_none() && tls.has_pending_output() {
                match tls.poll_flush_tls(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("TLS write failed: {e}");
                        fail(&link, &e);
                        io_error = Some(e);
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if closed && (io_error.is_some() || !tls.has_pending_output()) {
                return Poll::Ready(());
            }
            if wants_read && !closed && io_error.is_none() {
                match tls.poll_read_more(cx) {
                    Poll::Ready(Ok(eof)) => {
                        let now = Instant::now();
                        last_active = now;
                        link.with(|m| {
                            // One block per TLS record (as a Go server reads
                            // them); the session keeps views of them as stream
                            // data. Records after the one that closed the
                            // session (a rejected preamble) stay with the TLS
                            // connection: a fallback gets them next.
                            let mut blocks = tls.plain.take_blocks();
                            while let Some(block) = blocks.pop_front() {
                                m.handle_input(now, block);
                                if m.is_closed() {
                                    tls.plain.restore(blocks);
                                    break;
                                }
                            }
                            if eof {
                                m.handle_eof(now);
                            }
                            m.dispatch(&mut events);
                        });
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("TLS read failed: {e}");
                        fail(&link, &e);
                        io_error = Some(e);
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(deadline) = timeout {
                let t = match &mut timer {
                    Some((t, at)) => {
                        if *at != deadline {
                            R::reset_timer(t, deadline);
                            *at = deadline;
                        }
                        t
                    }
                    None => &mut timer.insert((R::timer(deadline), deadline)).0,
                };
                if Pin::new(t).poll(cx).is_ready() {
                    progress = true;
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Let other tasks run; come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    let reason = link
        .with(|m| {
            m.dispatch(&mut events);
            m.closed_reason()
        })
        .unwrap_or(SessionError::LocallyClosed);
    for ev in std::mem::take(&mut events) {
        observer(&ev);
    }
    if let Some(e) = &io_error {
        tracing::debug!("connection ended after I/O error: {e}");
    }
    if let Some(replay) = fallback {
        if io_error.is_none() {
            return DriveEnd::Fallback { tls, replay };
        }
    }
    if io_error.is_none() {
        // close_notify and our FIN, then wait (briefly) for the peer's FIN:
        // a socket closed with unread input sends RST, and an RST makes the
        // peer's kernel drop what it has not read yet, such as the last
        // stream data and FIN we just sent.
        tls.send_close_notify();
        // Boxed, with a heap buffer: an idle connection's driver future must
        // not carry the closing state (each byte here is per connection).
        let close = Box::pin(async {
            poll_fn(|cx| {
                ready!(tls.poll_flush_tls(cx))?;
                Pin::new(&mut tls.io).poll_close(cx)
            })
            .await?;
            let mut sink = vec![0u8; 4096];
            // Bounded by the timeout below; a peer that keeps sending is cut.
            loop {
                let n = poll_fn(|cx| Pin::new(&mut tls.io).poll_read(cx, &mut sink)).await?;
                if n == 0 {
                    return io::Result::Ok(());
                }
            }
        });
        let _ = timeout::<R, _>(Duration::from_secs(1), close).await;
    }
    DriveEnd::Closed(reason)
}

/// A connection quiet for this long gives back the buffers and the large-I/O
/// slot its last busy spell left (see `budget.rs`); a busy one keeps reusing
/// them.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Transmits appended by one [`pull_transmits`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pulled {
    /// Plaintext bytes appended.
    bytes: usize,
    /// Where the shaped transmit that ended the pull starts in the staging
    /// buffer.
    shaped_at: Option<usize>,
}

/// Appends transmits from `next` to `out`, which holds `staged` bytes, until
/// a whole record's worth is staged, a shaped transmit arrived (it must be
/// encrypted on its own), `next` has none, or `budget` bytes were taken.
pub(crate) fn pull_transmits(
    mut next: impl FnMut(&mut dyn TransmitBuf) -> Option<Transmit>,
    out: &mut dyn TransmitBuf,
    mut staged: usize,
    budget: usize,
) -> Pulled {
    let mut pulled = Pulled::default();
    while staged < RECORD_DATA && pulled.bytes < budget {
        let Some(t) = next(out) else {
            break;
        };
        pulled.bytes += t.len;
        if t.shaped {
            pulled.shaped_at = Some(staged);
            break;
        }
        staged += t.len;
    }
    pulled
}

/// Encrypts the next batch of transmits into `tls`'s output; returns the
/// plaintext bytes encrypted. `pull(out, staged, budget)` appends transmits
/// to `out` (see [`pull_transmits`]) and tells whether later ones may be
/// shaped; they are encrypted between pulls.
///
/// Once no transmit can be shaped and the TLS 1.3 records are done by
/// `TlsIo` itself, transmits are written straight into full-size records
/// and sealed in place (one copy per byte). Otherwise they are staged in
/// `out`: a shaped transmit is encrypted alone (its own TLS record(s), so
/// padding shapes reach the wire); unshaped ones are coalesced into
/// full-size records, encrypted as soon as a whole record's worth is staged,
/// so `out` holds less than one record plus one transmit.
///
/// `shaping`: whether transmits may be shaped, as the last pull said (start
/// with `true`; once `false` it stays so).
pub(crate) fn encrypt_batch<IO>(
    mut pull: impl FnMut(&mut dyn TransmitBuf, usize, usize) -> (Pulled, bool),
    shaping: &mut bool,
    tls: &mut TlsIo<IO>,
    out: &mut BytesMut,
) -> io::Result<usize>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    out.clear();
    let mut bytes = 0;
    let limit = tls.batch_limit();
    let mut direct = match *shaping {
        true => None,
        false => tls.start_direct()?,
    };
    while bytes < limit {
        let (pulled, may_shape) = match &mut direct {
            Some(d) => pull(&mut tls.direct_buf(d), 0, limit - bytes),
            None => {
                let staged = out.len();
                pull(out, staged, limit - bytes)
            }
        };
        if pulled.bytes == 0 {
            break;
        }
        bytes += pulled.bytes;
        *shaping = may_shape;
        if let Some(d) = &mut direct {
            if pulled.shaped_at.is_some() {
                // Cannot happen (`may_shape` is false for good once false);
                // were it wrong, a shaped transmit would share records: end
                // the connection rather than send a wrong shape.
                return Err(io::Error::other(
                    "a shaped transmit after the padding phase",
                ));
            }
            tls.seal_direct(d, false)?;
            continue;
        }
        if let Some(staged) = pulled.shaped_at {
            if staged > 0 {
                tls.encrypt(&out[..staged])?;
            }
            tls.encrypt(&out[staged..])?;
            out.clear();
        } else if out.len() >= RECORD_DATA {
            let whole = out.len() / RECORD_DATA * RECORD_DATA;
            tls.encrypt(&out[..whole])?;
            out.advance(whole);
        }
        if !may_shape && bytes < limit {
            // The padding phase just ended: what is staged (less than a
            // record) leads the first record written in place.
            if let Some(mut d) = tls.start_direct()? {
                tls.direct_buf(&mut d).put(&out[..]);
                out.clear();
                direct = Some(d);
            }
        }
    }
    if let Some(mut d) = direct {
        tls.seal_direct(&mut d, true)?;
    } else if !out.is_empty() {
        tls.encrypt(out)?;
    }
    tls.batch_done(bytes);
    if bytes > 0 && bytes < RECORD_DATA {
        // After a small batch the staging buffer goes; a busy session reuses
        // it (and gives it back once quiet, see `IDLE_RELEASE`).
        *out = BytesMut::new();
    }
    Ok(bytes)
}

/// Plaintext bytes in a full TLS record.
const RECORD_DATA: usize = 16 * 1024;

/// Polls of the driver loop before it yields to other tasks.
const LOOP_BUDGET: usize = 32;

/// Ends the session after a TLS read or write error, once, in the core (the
/// driver's next turn dispatches the events).
fn fail(link: &impl Link, e: &io::Error) {
    link.with(|m| m.handle_transport_error(Instant::now(), TransportError::from_io(e)));
}

/// Reads a batch of chunks (see [`StreamEnd::poll_read_chunks`]) from
/// `state` with `read`: the first read's result is the batch's (`None`:
/// EOF, or its error); later reads are made only while `readable` says data
/// is there, so they neither consume an EOF nor fail. Returns the chunks
/// and the bytes handed out (no chunk: EOF).
pub(crate) fn read_chunks<S: ?Sized>(
    state: &mut S,
    mut read: impl FnMut(&mut S) -> Result<Option<Bytes>, StreamError>,
    readable: impl Fn(&S) -> usize,
    max_bytes: usize,
    max_count: usize,
    sink: &mut dyn FnMut(Bytes),
) -> Result<(usize, usize), StreamError> {
    debug_assert!(max_count > 0, "a batch of no chunks would read as EOF");
    let (mut bytes, mut count) = (0, 0);
    while count < max_count.max(1) && (count == 0 || bytes < max_bytes) {
        if count > 0 && readable(state) == 0 {
            break;
        }
        match read(state) {
            Ok(Some(chunk)) => {
                bytes += chunk.len();
                count += 1;
                sink(chunk);
            }
            Ok(None) if count == 0 => return Ok((0, 0)),
            Err(e) if count == 0 => return Err(e),
            _ => break,
        }
    }
    Ok((count, bytes))
}

/// The stream operations of one AnyTLS stream, on whichever state machine
/// carries it (a server session or the client endpoint).
pub(crate) trait StreamEnd: Send + Sync {
    /// The next chunk of stream data to `sink`, then, under the same lock,
    /// the chunks already there after it while fewer than `max_count`
    /// chunks and `max_bytes` bytes were handed out. `Ready(Ok(true))`: at
    /// least one chunk; `Ready(Ok(false))`: EOF.
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        max_count: usize,
        sink: &mut dyn FnMut(Bytes),
    ) -> Poll<io::Result<bool>>;
    /// Queues a prefix of `data` (what the session takes now: see the
    /// core's `Session::write`), advancing `data` past it; `Ready(Ok(n))`
    /// with `n > 0`, or `Pending` until there is room.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>>;
    /// Sends FIN and lets the stream go.
    fn finish(&mut self);
    /// See [`AnyTlsStream::established`].
    fn poll_established(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// The companions of the session's driver (see `beside.rs`), if it runs
    /// on executor `here`.
    fn companions(&self, here: usize) -> Option<Arc<Companions>> {
        let _ = here;
        None
    }
}

/// A server session's stream.
struct ServerEnd {
    conn: Arc<Conn>,
    id: StreamId,
    /// The user's counters: payload taken out of the session and queued
    /// into it (see `stats.rs`).
    account: Option<StreamGuard>,
}

impl ServerEnd {
    fn stream_error(g: &Shared, id: StreamId, e: StreamError) -> io::Error {
        if let Some(err) = g.refused.get(&id) {
            return err.clone().into();
        }
        if let Some(reason) = &g.closed {
            return reason.clone().into();
        }
        e.into()
    }
}

impl StreamEnd for ServerEnd {
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        max_count: usize,
        sink: &mut dyn FnMut(Bytes),
    ) -> Poll<io::Result<bool>> {
        let mut g = self.conn.lock();
        let was_reading = g.session.wants_read();
        let (now, id) = (Instant::now(), self.id);
        let res = read_chunks(
            &mut g.session,
            |s| s.read(now, id),
            |s| s.readable_len(id),
            max_bytes,
            max_count,
            sink,
        );
        if !was_reading {
            // Paused input may have resumed and been processed: let the
            // driver act on its output.
            g.drain_events();
            g.kick();
        }
        match res {
            Ok((count, bytes)) => {
                if let Some(a) = &self.account {
                    a.received(bytes);
                }
                Poll::Ready(Ok(count > 0))
            }
            Err(StreamError::Blocked) => {
                g.read_wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => {
                g.drain_events();
                Poll::Ready(Err(Self::stream_error(&g, self.id, e)))
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        let mut g = self.conn.lock();
        match g.session.write_bytes(self.id, data) {
            Ok(n) => {
                g.kick();
                drop(g);
                if let Some(a) = &self.account {
                    a.sent(n);
                }
                Poll::Ready(Ok(n))
            }
            Err(StreamError::Blocked) => {
                g.write_wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => {
                g.drain_events();
                Poll::Ready(Err(Self::stream_error(&g, self.id, e)))
            }
        }
    }

    fn finish(&mut self) {
        let mut g = self.conn.lock();
        let _ = g.session.finish(self.id);
        g.read_wakers.remove(&self.id);
        g.write_wakers.remove(&self.id);
        g.refused.remove(&self.id);
        g.kick();
    }

    fn poll_established(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A server's stream is established once the owner accepted it.
        Poll::Ready(Ok(()))
    }
}

/// One AnyTLS stream: `AsyncRead + AsyncWrite`.
///
/// Implements `futures_io::AsyncRead + AsyncWrite` (and, with the `tokio`
/// feature, tokio's traits). `close` (tokio: `shutdown`) sends FIN, which in AnyTLS closes both directions (there is no
/// half-close): reads end too. Dropping the handle does the same.
pub struct AnyTlsStream {
    end: Box<dyn StreamEnd>,
    id: StreamId,
    pending: Bytes,
    eof: bool,
    finished: bool,
}

impl std::fmt::Debug for AnyTlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyTlsStream")
            .field("id", &self.id.0)
            .finish()
    }
}

impl AnyTlsStream {
    /// A server session's stream, counted in `account` (a user's counters).
    pub(crate) fn new(conn: Arc<Conn>, id: StreamId, account: Option<StreamGuard>) -> AnyTlsStream {
        AnyTlsStream::from_end(Box::new(ServerEnd { conn, id, account }), id)
    }

    pub(crate) fn from_end(end: Box<dyn StreamEnd>, id: StreamId) -> AnyTlsStream {
        AnyTlsStream {
            end,
            id,
            pending: Bytes::new(),
            eof: false,
            finished: false,
        }
    }

    /// The stream id within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The companions of the session's driver if it runs on executor
    /// `here` (see `beside.rs`).
    pub(crate) fn companions(&self, here: Option<usize>) -> Option<Arc<Companions>> {
        self.end.companions(here?)
    }

    /// Waits for the server's verdict on this (client) stream: `Ok` once the
    /// server accepted it (a v2 server's SYNACK; for a v1 server, which sends
    /// none, as the core decides: data arrived, or the server showed it is v1),
    /// or once the stream has data or its EOF to read; the server's refusal
    /// (`ConnectionRefused` with its message) or the session's end as an
    /// error. A server's own streams are established at once.
    pub async fn established(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_established(cx)).await
    }

    /// Poll form of [`established`](Self::established).
    pub fn poll_established(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.end.poll_established(cx)
    }

    /// Next chunk of stream data; `None` at EOF.
    pub fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let mut chunk = None;
        ready!(self.poll_read_chunks(cx, usize::MAX, 1, &mut |b| chunk = Some(b)))?;
        Poll::Ready(Ok(chunk))
    }

    /// The next chunks of stream data to `sink`, all taken at once (one
    /// lock of the session): the next one, then those already there while
    /// fewer than `max_count` chunks and `max_bytes` bytes were handed out.
    /// `Ready(Ok(false))` at EOF.
    pub(crate) fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        max_count: usize,
        sink: &mut dyn FnMut(Bytes),
    ) -> Poll<io::Result<bool>> {
        if !self.pending.is_empty() {
            sink(std::mem::take(&mut self.pending));
            return Poll::Ready(Ok(true));
        }
        if self.eof || self.finished {
            return Poll::Ready(Ok(false));
        }
        let any = ready!(self.end.poll_read_chunks(cx, max_bytes, max_count, sink))?;
        self.eof = !any;
        Poll::Ready(Ok(any))
    }

    /// Queues as much of `buf` as fits (copied once into the core's queue).
    pub fn poll_write_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // The core takes at most its send cap; copy no more than that.
        let take = buf.len().min(MAX_COPY);
        let mut data = Bytes::copy_from_slice(&buf[..take]);
        self.end.poll_write(cx, &mut data)
    }

    /// Queues `data` on the stream without copying it: `Ready(Ok(()))` once
    /// the whole of it is queued (`data` is then empty). What was taken
    /// before a `Pending` is gone from `data`.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        while !data.is_empty() {
            ready!(self.end.poll_write(cx, data))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends FIN (once).
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.end.finish();
        }
    }
}

/// Largest slice copied per `poll_write_slice` (the default stream send cap).
const MAX_COPY: usize = 64 * 1024;

impl Drop for AnyTlsStream {
    fn drop(&mut self) {
        self.finish();
    }
}

impl AnyTlsStream {
    /// At most `max` (> 0) bytes of the next chunk; the rest is kept for the
    /// next read. `None` at EOF. Both `AsyncRead` impls read through this.
    fn poll_read_at_most(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Poll::Ready(Ok(ready!(self.poll_read_chunk(cx))?.map(|mut b| {
            let head = b.split_to(b.len().min(max));
            self.pending = b;
            head
        })))
    }

    /// Copies the next stream bytes into `buf`; 0 at EOF.
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let head = ready!(self.poll_read_at_most(cx, buf.len()))?.unwrap_or_default();
        buf[..head.len()].copy_from_slice(&head);
        Poll::Ready(Ok(head.len()))
    }
}

impl AsyncRead for AnyTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_into(cx, buf)
    }
}

impl AsyncWrite for AnyTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slice(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data is in the session's queue; the driver sends it as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for AnyTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = buf.remaining();
        if let Some(head) = ready!(self.get_mut().poll_read_at_most(cx, max))? {
            buf.put_slice(&head);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncWrite for AnyTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slice(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's receive queue as the core shows it: `read` pops a chunk,
    /// `None` at EOF once `fin`; any read after EOF is an error (a finished
    /// stream is forgotten once its EOF was read).
    struct Queue {
        chunks: VecDeque<Bytes>,
        fin: bool,
        eof_read: bool,
    }

    impl Queue {
        fn new(sizes: &[usize], fin: bool) -> Queue {
            Queue {
                chunks: sizes
                    .iter()
                    .map(|&n| Bytes::from(vec![n as u8; n]))
                    .collect(),
                fin,
                eof_read: false,
            }
        }

        fn batch(&mut self, max_bytes: usize, max_count: usize) -> Result<Vec<usize>, StreamError> {
            let mut got = Vec::new();
            let read = |q: &mut Queue| {
                assert!(!q.eof_read, "read after EOF");
                match q.chunks.pop_front() {
                    Some(c) => Ok(Some(c)),
                    None if q.fin => {
                        q.eof_read = true;
                        Ok(None)
                    }
                    None => Err(StreamError::Blocked),
                }
            };
            let readable = |q: &Queue| q.chunks.len();
            let (count, bytes) =
                read_chunks(self, read, readable, max_bytes, max_count, &mut |c| {
                    got.push(c.len())
                })?;
            assert_eq!((count, bytes), (got.len(), got.iter().sum::<usize>()));
            Ok(got)
        }
    }

    #[test]
    fn a_batch_takes_what_is_there_within_its_limits() {
        let mut q = Queue::new(&[10, 20, 30, 40, 50], true);
        assert_eq!(q.batch(usize::MAX, 2).unwrap(), [10, 20], "count limit");
        assert_eq!(
            q.batch(35, 16).unwrap(),
            [30, 40],
            "bytes: stops once reached"
        );
        assert_eq!(q.batch(1, 16).unwrap(), [50], "the first chunk always goes");
        assert_eq!(q.batch(usize::MAX, 16).unwrap(), Vec::<usize>::new(), "EOF");
        assert!(q.eof_read);
    }

    #[test]
    fn a_batch_never_reads_past_the_data_into_eof_or_blocked() {
        let mut q = Queue::new(&[5, 6], true);
        assert_eq!(q.batch(usize::MAX, 16).unwrap(), [5, 6]);
        assert!(!q.eof_read, "EOF is left for the next batch");
        assert_eq!(q.batch(usize::MAX, 16).unwrap(), Vec::<usize>::new());
        let mut q = Queue::new(&[], false);
        assert!(matches!(q.batch(usize::MAX, 16), Err(StreamError::Blocked)));
        let mut q = Queue::new(&[7], false);
        assert_eq!(q.batch(usize::MAX, 16).unwrap(), [7]);
        // An empty chunk is a chunk, not EOF.
        let mut q = Queue::new(&[0, 5], false);
        assert_eq!(q.batch(usize::MAX, 16).unwrap(), [0, 5]);
    }
}
