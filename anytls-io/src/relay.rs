//! Copying between two byte streams until one side ends.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use crate::budget::{self, IoBudget, Sizer};
use crate::conn::AnyTlsStream;

/// Largest relay read: a busy direction moves full 64 KiB socket reads.
const MAX_BUF: usize = 32 * 1024;
/// First read size: a quiet direction (most connections are mostly one-way)
/// costs no more than this.
const MIN_BUF: usize = 8 * 1024;

/// One direction of a relay.
struct Half {
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    read_done: bool,
    /// Bytes moved.
    moved: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: Vec::new(),
            pos: 0,
            len: 0,
            read_done: false,
            moved: 0,
        }
    }

    /// Copies until `from` ends, then closes `to`.
    fn poll_copy<A, B>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut A,
        to: &mut B,
    ) -> Poll<io::Result<()>>
    where
        A: AsyncRead + Unpin + ?Sized,
        B: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.pos < self.len {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.len]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.moved += n as u64;
                continue;
            }
            if self.read_done {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                return Pin::new(&mut *to).poll_close(cx);
            }
            if self.buf.is_empty() {
                self.buf = vec![0; MIN_BUF];
            } else if self.len == self.buf.len() && self.buf.len() < MAX_BUF {
                // The last read filled the buffer: read more at once.
                self.buf = vec![0; self.buf.len() * 2];
            }
            self.pos = 0;
            self.len = 0;
            match Pin::new(&mut *from).poll_read(cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => self.len = n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing buffered: flush what the writer holds.
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Relays between two ordinary byte streams (no AnyTLS stream: see
/// [`relay_stream`]) with half-close: when one side ends, the other's sending
/// side is closed and the other direction goes on until it ends too. The
/// server's fallback uses it, so a probe that half-closes after its request
/// still gets the web server's whole answer. Returns the bytes moved `a -> b`
/// and `b -> a`.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Half::new();
    let mut down = Half::new();
    let (mut up_done, mut down_done) = (false, false);
    poll_fn(|cx| {
        // Both directions are polled every time: one waiting must not stall
        // the other.
        if !up_done {
            if let Poll::Ready(r) = up.poll_copy(cx, a, b) {
                r?;
                up_done = true;
            }
        }
        if !down_done {
            if let Poll::Ready(r) = down.poll_copy(cx, b, a) {
                r?;
                down_done = true;
            }
        }
        if up_done && down_done {
            Poll::Ready(io::Result::Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok((up.moved, down.moved))
}

/// Chunks gathered into one vectored socket write, at most.
const MAX_SLICES: usize = 16;
/// Bytes gathered into one vectored socket write, about: at most this plus
/// one chunk is held here, outside the session's receive accounting (like a
/// relay buffer). 64 KiB writes halve the syscalls of 32 KiB ones.
const MAX_GATHER: usize = budget::LARGE;

/// Stream data on its way out of an AnyTLS stream: chunks straight from the
/// session's receive queue, several per (vectored) socket write, never copied.
struct ChunkHalf {
    pending: VecDeque<Bytes>,
    queued: usize,
    read_done: bool,
    /// A read error, reported once the data before it is written.
    error: Option<io::Error>,
    moved: u64,
}

impl ChunkHalf {
    fn new() -> ChunkHalf {
        ChunkHalf {
            pending: VecDeque::new(),
            queued: 0,
            read_done: false,
            error: None,
            moved: 0,
        }
    }

    fn poll_copy<B>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut AnyTlsStream,
        to: &mut B,
    ) -> Poll<io::Result<()>>
    where
        B: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while !self.read_done
                && self.error.is_none()
                && self.queued < MAX_GATHER
                && self.pending.len() < MAX_SLICES
            {
                match from.poll_read_chunk(cx) {
                    Poll::Ready(Ok(Some(b))) => {
                        self.queued += b.len();
                        self.pending.push_back(b);
                    }
                    Poll::Ready(Ok(None)) => self.read_done = true,
                    Poll::Ready(Err(e)) => self.error = Some(e),
                    Poll::Pending => break,
                }
            }
            if self.pending.is_empty() {
                if let Some(e) = self.error.take() {
                    return Poll::Ready(Err(e));
                }
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                if self.read_done {
                    return Pin::new(&mut *to).poll_close(cx);
                }
                return Poll::Pending;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            for (s, b) in slices.iter_mut().zip(&self.pending) {
                *s = IoSlice::new(b);
            }
            let count = self.pending.len().min(MAX_SLICES);
            let mut n = ready!(Pin::new(&mut *to).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= n;
            self.moved += n as u64;
            while n > 0 {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                if front.len() <= n {
                    n -= front.len();
                    self.pending.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
    }
}

/// Data on its way into an AnyTLS stream: read from the socket into blocks
/// that go to the session's send queue as they are, without another copy.
struct BytesHalf {
    /// The unread rest of the current block (initialised).
    block: BytesMut,
    /// Read but not yet queued.
    chunk: Bytes,
    read_size: usize,
    /// Large reads while busy, within the process budget.
    sizer: Sizer,
    read_done: bool,
    moved: u64,
}

impl BytesHalf {
    fn new(budget: &IoBudget) -> BytesHalf {
        BytesHalf {
            block: BytesMut::new(),
            chunk: Bytes::new(),
            read_size: MIN_BUF,
            sizer: Sizer::new(budget.relays().clone()),
            read_done: false,
            moved: 0,
        }
    }

    fn poll_copy<A>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut A,
        to: &mut AnyTlsStream,
    ) -> Poll<io::Result<()>>
    where
        A: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if !self.chunk.is_empty() {
                let len = self.chunk.len();
                ready!(to.poll_write_bytes(cx, &mut self.chunk))?;
                self.moved += len as u64;
                continue;
            }
            if self.read_done {
                to.finish();
                return Poll::Ready(Ok(()));
            }
            if self.block.len() < self.read_size / 2 {
                // A fresh block; the last one lives on in the queued chunks.
                self.block = BytesMut::zeroed(self.read_size);
            }
            let size = self.block.len().min(self.read_size);
            match Pin::new(&mut *from).poll_read(cx, &mut self.block[..size]) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => {
                    if n == size {
                        // The read filled what it was offered: read more at once.
                        if size >= budget::REGULAR {
                            self.sizer.busy();
                        }
                        self.read_size = (self.read_size * 2).min(self.sizer.max());
                    } else if n < size / 4 {
                        self.sizer.quiet();
                        self.read_size = MIN_BUF;
                    }
                    self.chunk = self.block.split_to(n).freeze();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.read_size == MIN_BUF {
                        // Quiet: hold no block while waiting.
                        self.block = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// [`relay`] between an AnyTLS stream and another byte stream; data moves
/// without passing through a relay buffer either way (received chunks are
/// written out as they are; outgoing bytes are handed to the session
/// without a copy). Returns the bytes moved `stream -> other` and
/// `other -> stream`.
pub async fn relay_stream<B>(stream: &mut AnyTlsStream, other: &mut B) -> io::Result<(u64, u64)>
where
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay_stream_with(stream, other, &IoBudget::default()).await
}

/// [`relay_stream`] with large reads from `budget` (a server's or client's
/// own, see [`IoBudget`]).
pub async fn relay_stream_with<B>(
    stream: &mut AnyTlsStream,
    other: &mut B,
    budget: &IoBudget,
) -> io::Result<(u64, u64)>
where
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut down = ChunkHalf::new();
    let mut up = BytesHalf::new(budget);
    poll_fn(|cx| {
        if let Poll::Ready(r) = down.poll_copy(cx, stream, other) {
            return Poll::Ready(r);
        }
        up.poll_copy(cx, other, stream)
    })
    .await?;
    Ok((down.moved, up.moved))
}
