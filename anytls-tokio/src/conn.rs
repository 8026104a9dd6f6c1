//! One TLS connection driving one `anytls_core::Session`.
//!
//! The session sits behind a mutex shared by the connection's driver task and
//! its stream handles (the quinn pattern): a handle reads and writes stream
//! data straight into the core under the lock, and kicks the driver, which
//! moves bytes between the core and the TLS stream, dispatches events and keeps
//! the session's single timer. The lock is never held across an await.
//!
//! The driver reads and writes concurrently (a write in flight owns the write
//! half), so two peers that both write a lot never deadlock waiting for each
//! other to read.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use anytls_core::{Event, Session, SessionError, SocksAddr, StreamError, StreamId};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};

/// Most TLS plaintext read at once.
const READ_CHUNK: usize = 64 * 1024;
/// Read buffer of a quiet connection: an idle session pins no more than this.
const MIN_READ: usize = 4 * 1024;
/// Transmits handed to one write batch (each is still its own TLS write).
const MAX_BATCH_BYTES: usize = 256 * 1024;

pub(crate) struct Shared {
    pub(crate) session: Session,
    read_wakers: HashMap<StreamId, Waker>,
    write_wakers: HashMap<StreamId, Waker>,
    refused: HashMap<StreamId, String>,
    /// Client: streams the server accepted with a SYNACK.
    connected: std::collections::HashSet<StreamId>,
    /// Client: tasks waiting in `AnyTlsStream::established`.
    open_wakers: HashMap<StreamId, Waker>,
    /// Server: streams whose destination arrived, not yet taken by the owner.
    pub(crate) incoming: VecDeque<(StreamId, SocksAddr)>,
    incoming_waker: Option<Waker>,
    closed: Option<SessionError>,
    /// Events already dispatched to the handles, for the driver's observer.
    observed: Vec<Event>,
    dirty: bool,
    driver_waker: Option<Waker>,
}

/// A connection: the shared session state.
pub(crate) struct Conn {
    shared: Mutex<Shared>,
}

impl Conn {
    pub(crate) fn new(session: Session) -> Arc<Conn> {
        Arc::new(Conn {
            shared: Mutex::new(Shared {
                session,
                read_wakers: HashMap::new(),
                write_wakers: HashMap::new(),
                refused: HashMap::new(),
                connected: std::collections::HashSet::new(),
                open_wakers: HashMap::new(),
                incoming: VecDeque::new(),
                incoming_waker: None,
                closed: None,
                observed: Vec::new(),
                dirty: false,
                driver_waker: None,
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock is a bug; keep serving the others.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the session ended, if it did.
    pub(crate) fn closed_reason(&self) -> Option<SessionError> {
        self.lock().closed.clone()
    }

    /// Opens a client stream.
    pub(crate) fn open_stream(self: &Arc<Self>, dest: &SocksAddr) -> io::Result<AnyTlsStream> {
        let mut g = self.lock();
        if let Some(e) = &g.closed {
            return Err(e.clone().into());
        }
        let id = g.session.open_stream(Instant::now(), dest)?;
        g.kick();
        drop(g);
        Ok(AnyTlsStream::new(self.clone(), id))
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

    /// Sends a heartbeat.
    pub(crate) fn heartbeat(&self, timeout: Option<std::time::Duration>) {
        let mut g = self.lock();
        g.session.send_heartbeat(Instant::now(), timeout);
        g.kick();
    }
}

impl Shared {
    /// Wakes the driver: there is output or a state change to act on.
    pub(crate) fn kick(&mut self) {
        self.dirty = true;
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
            Event::StreamReadable { id } | Event::StreamFinished { id } => {
                wake(&mut self.read_wakers, id);
                wake(&mut self.open_wakers, id);
            }
            Event::StreamWritable { id } => wake(&mut self.write_wakers, id),
            Event::StreamConnected { id } => {
                self.connected.insert(*id);
                wake(&mut self.open_wakers, id);
            }
            Event::PeerVersion { .. } => {
                // Waiters decide again with the server's version known.
                for (_, w) in self.open_wakers.drain() {
                    w.wake();
                }
            }
            Event::StreamRefused { id, reason } => {
                self.refused.insert(*id, reason.clone());
                wake(&mut self.read_wakers, id);
                wake(&mut self.write_wakers, id);
                wake(&mut self.open_wakers, id);
            }
            Event::StreamOpened { id, dest } => {
                self.incoming.push_back((*id, dest.clone()));
                if let Some(w) = self.incoming_waker.take() {
                    w.wake();
                }
            }
            Event::Closed { reason } => {
                self.closed = Some(reason.clone());
                let all = self.read_wakers.drain().chain(self.write_wakers.drain());
                for (_, w) in all.chain(self.open_wakers.drain()) {
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
pub(crate) enum DriveEnd<S> {
    /// The session closed.
    Closed(SessionError),
    /// Server: the preamble was wrong. The TLS stream and every byte read so far,
    /// for a fallback.
    Fallback { tls: S, replay: Bytes },
}

type WriteFut<S> = Pin<Box<dyn Future<Output = (WriteHalf<S>, io::Result<()>)> + Send>>;

/// Drives `conn` over `tls` until the session closes. `observer` sees every
/// event after it has been dispatched to the stream handles.
pub(crate) async fn drive<S>(
    conn: Arc<Conn>,
    tls: S,
    mut observer: impl FnMut(&Event) + Send,
) -> DriveEnd<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(tls);
    let mut wr: Option<WriteHalf<S>> = Some(wr);
    let mut write_fut: Option<WriteFut<S>> = None;
    // Grows to READ_CHUNK while reads fill it, shrinks back when they don't.
    let mut read_size = MIN_READ;
    let mut inb = BytesMut::with_capacity(read_size);
    // Grows with the first transmits; an idle session keeps nothing here.
    let mut out = BytesMut::new();
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365);
    let sleep = tokio::time::sleep_until(far);
    tokio::pin!(sleep);
    let mut fallback: Option<Bytes> = None;
    let mut events = Vec::new();
    let mut io_error: Option<io::Error> = None;
    loop {
        let (timeout, wants_read, closed) = {
            let mut g = conn.lock();
            let now = Instant::now();
            if g.session.poll_timeout().is_some_and(|t| t <= now) {
                g.session.handle_timeout(now);
            }
            if write_fut.is_none() {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while bytes < MAX_BATCH_BYTES {
                    match g.session.poll_transmit(now, &mut out) {
                        Some(t) => {
                            bytes += t.len;
                            batch.push(out.split().freeze());
                        }
                        None => break,
                    }
                }
                if !batch.is_empty() {
                    if let Some(mut w) = wr.take() {
                        write_fut = Some(Box::pin(async move {
                            let res = async {
                                // One write per transmit: each becomes its own TLS
                                // record(s), so padding shapes reach the wire.
                                for t in &batch {
                                    w.write_all(t).await?;
                                }
                                w.flush().await
                            }
                            .await;
                            (w, res)
                        }));
                    }
                }
            }
            g.drain_events();
            events.append(&mut g.observed);
            g.dirty = false;
            (
                g.session.poll_timeout(),
                g.session.wants_read(),
                g.session.is_closed(),
            )
        };
        for ev in events.drain(..) {
            if let Event::AuthRejected { replay } = &ev {
                fallback = Some(replay.clone());
            }
            observer(&ev);
        }
        if closed && write_fut.is_none() {
            break;
        }
        if let Some(t) = timeout {
            sleep.as_mut().reset(t.into());
        } else {
            sleep.as_mut().reset(far);
        }
        tokio::select! {
            res = async { write_fut.as_mut().expect("guarded").await }, if write_fut.is_some() => {
                write_fut = None;
                let (w, r) = res;
                wr = Some(w);
                if let Err(e) = r {
                    tracing::debug!("TLS write failed: {e}");
                    let mut g = conn.lock();
                    end_on_error(&mut g.session, &e);
                    g.drain_events();
                    io_error = Some(e);
                }
            }
            res = rd.read_buf(&mut inb), if wants_read && !closed => {
                let mut g = conn.lock();
                match res {
                    Ok(0) => g.session.handle_eof(Instant::now()),
                    Ok(_) => {
                        let filled = inb.len() >= read_size;
                        let data = inb.split();
                        g.session.handle_input(Instant::now(), data);
                        read_size = if filled {
                            (read_size * 2).min(READ_CHUNK)
                        } else {
                            MIN_READ
                        };
                        inb.reserve(read_size);
                    }
                    Err(e) => {
                        tracing::debug!("TLS read failed: {e}");
                        end_on_error(&mut g.session, &e);
                        io_error = Some(e);
                    }
                }
                g.drain_events();
            }
            _ = wakeup(&conn) => {}
            _ = &mut sleep, if timeout.is_some() => {
                let mut g = conn.lock();
                g.session.handle_timeout(Instant::now());
                g.drain_events();
            }
        }
    }
    let reason = conn.closed_reason().unwrap_or(SessionError::LocallyClosed);
    if let Some(e) = io_error {
        tracing::debug!("connection ended after I/O error: {e}");
    }
    if let Some(replay) = fallback {
        if let Some(w) = wr.take() {
            return DriveEnd::Fallback {
                tls: rd.unsplit(w),
                replay,
            };
        }
    }
    if let Some(mut w) = wr {
        // close_notify, best effort.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), w.shutdown()).await;
    }
    DriveEnd::Closed(reason)
}

/// Ends the session after a TLS read or write error. A connection the peer
/// closed or reset (no close_notify) ends as `PeerEof`; anything else as a
/// local close.
fn end_on_error(session: &mut Session, e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    ) {
        session.handle_eof(Instant::now());
    } else {
        session.close(Instant::now());
    }
}

/// Resolves when a stream handle (or anything else) kicked the driver.
fn wakeup(conn: &Conn) -> impl Future<Output = ()> + '_ {
    poll_fn(move |cx| {
        let mut g = conn.lock();
        if g.dirty {
            g.dirty = false;
            return Poll::Ready(());
        }
        g.driver_waker = Some(cx.waker().clone());
        Poll::Pending
    })
}

/// One AnyTLS stream: `AsyncRead + AsyncWrite`.
///
/// `shutdown` sends FIN, which in AnyTLS closes both directions (there is no
/// half-close): reads end too. Dropping the handle does the same.
pub struct AnyTlsStream {
    conn: Arc<Conn>,
    id: StreamId,
    pending: Bytes,
    eof: bool,
    finished: bool,
    on_close: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for AnyTlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyTlsStream")
            .field("id", &self.id.0)
            .finish()
    }
}

impl AnyTlsStream {
    pub(crate) fn new(conn: Arc<Conn>, id: StreamId) -> AnyTlsStream {
        AnyTlsStream {
            conn,
            id,
            pending: Bytes::new(),
            eof: false,
            finished: false,
            on_close: None,
        }
    }

    /// Runs `f` once when the stream is done (for the pool).
    pub(crate) fn set_on_close(&mut self, f: impl FnOnce() + Send + Sync + 'static) {
        self.on_close = Some(Box::new(f));
    }

    /// The stream id within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    fn stream_error(g: &Shared, id: StreamId, e: StreamError) -> io::Error {
        if let Some(reason) = g.refused.get(&id) {
            return StreamError::Refused(reason.clone()).into();
        }
        if let Some(reason) = &g.closed {
            return reason.clone().into();
        }
        e.into()
    }

    /// Waits for the server's verdict on this (client) stream: `Ok` once a v2
    /// server sent a SYNACK without error, or once the stream has data or its
    /// EOF to read; the server's refusal (`ConnectionRefused` with its message)
    /// or the session's end as an error. A v1 server never sends a SYNACK: when
    /// the session has heard from the server and it did not announce v2, this
    /// resolves at once. Against a v1 server that has sent nothing yet it waits
    /// for data, so callers bound it with a timeout.
    pub async fn established(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_established(cx)).await
    }

    /// Poll form of [`established`](Self::established).
    pub fn poll_established(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() || self.eof {
            return Poll::Ready(Ok(()));
        }
        let mut g = self.conn.lock();
        if g.connected.contains(&self.id) {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = g.refused.get(&self.id) {
            return Poll::Ready(Err(StreamError::Refused(reason.clone()).into()));
        }
        if let Some(reason) = &g.closed {
            return Poll::Ready(Err(reason.clone().into()));
        }
        let s = &g.session;
        let v1_answered = s.peer_version() < 2 && s.stats().bytes_received > 0;
        if v1_answered || s.readable_len(self.id) > 0 {
            return Poll::Ready(Ok(()));
        }
        g.open_wakers.insert(self.id, cx.waker().clone());
        Poll::Pending
    }

    /// Next chunk of stream data; `None` at EOF.
    pub fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        if self.eof || self.finished {
            return Poll::Ready(Ok(None));
        }
        let mut g = self.conn.lock();
        let was_reading = g.session.wants_read();
        let res = g.session.read(self.id);
        if !was_reading {
            // Paused input may have resumed and been processed: let the
            // driver act on its output.
            g.drain_events();
            g.kick();
        }
        match res {
            Ok(Some(b)) => Poll::Ready(Ok(Some(b))),
            Ok(None) => {
                self.eof = true;
                Poll::Ready(Ok(None))
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

    /// Queues `buf` on the stream (copied once into the core's queue).
    pub fn poll_write_slice(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut g = self.conn.lock();
        match g.session.write(self.id, Bytes::copy_from_slice(buf)) {
            Ok(()) => {
                g.kick();
                Poll::Ready(Ok(buf.len()))
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

    /// Sends FIN (once).
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let mut g = self.conn.lock();
            let _ = g.session.finish(self.id);
            g.read_wakers.remove(&self.id);
            g.write_wakers.remove(&self.id);
            g.refused.remove(&self.id);
            g.connected.remove(&self.id);
            g.open_wakers.remove(&self.id);
            g.kick();
            drop(g);
            if let Some(f) = self.on_close.take() {
                f();
            }
        }
    }
}

impl Drop for AnyTlsStream {
    fn drop(&mut self) {
        self.finish();
    }
}

impl AsyncRead for AnyTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match this.poll_read_chunk(cx) {
            Poll::Ready(Ok(Some(mut b))) => {
                let n = b.len().min(buf.remaining());
                buf.put_slice(&b.split_to(n));
                this.pending = b;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
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

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}
