//! Copying between two byte streams until one side ends.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use anytls_core::MAX_PSH_DATA;

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
            if !self.read_done
                && self.error.is_none()
                && self.queued < MAX_GATHER
                && self.pending.len() < MAX_SLICES
            {
                // All the chunks there are, under one lock of the session.
                let (queued, pending) = (&mut self.queued, &mut self.pending);
                let room = (MAX_GATHER - *queued, MAX_SLICES - pending.len());
                let mut sink = |b: Bytes| {
                    *queued += b.len();
                    pending.push_back(b);
                };
                match from.poll_read_chunks(cx, room.0, room.1, &mut sink) {
                    Poll::Ready(Ok(true)) | Poll::Pending => {}
                    Poll::Ready(Ok(false)) => self.read_done = true,
                    Poll::Ready(Err(e)) => self.error = Some(e),
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

/// Read blocks a relay direction keeps track of, at most: with many busy
/// streams the session holds a few chunks of each (up to the stream's send
/// cap) while the next read is made. Blocks in the session's queue cost
/// nothing extra; of the free ones, only the one the next read uses is kept.
const SPARE_BLOCKS: usize = 4;

/// Blocks for socket reads that are reused once the session has let go of
/// them: a busy relay neither allocates nor zeroes a block per read (both
/// were ~6 % of a server's CPU during a download: memset, page faults,
/// malloc). Only relays holding a large-I/O slot of the [`IoBudget`] keep
/// blocks (at most one free one each); the others allocate per read. Safe
/// by construction: a block is written only when [`Bytes::try_into_mut`]
/// proves no chunk of it is alive.
struct Blocks {
    /// Whole blocks (initialised), oldest first; each may still be shared
    /// with a chunk in the session's send queue.
    spare: VecDeque<Bytes>,
}

impl Blocks {
    fn new() -> Blocks {
        Blocks {
            spare: VecDeque::new(),
        }
    }

    /// A block of `size` bytes that nobody else holds. Blocks sized for
    /// other reads, and the other free ones, are let go.
    fn take(&mut self, size: usize) -> BytesMut {
        self.spare.retain(|b| b.len() == size);
        if let Some(i) = self.spare.iter().position(Bytes::is_unique) {
            let free = self.spare.remove(i);
            self.let_free_go();
            // Unique, and nobody else can clone it: this cannot fail.
            if let Some(Ok(block)) = free.map(Bytes::try_into_mut) {
                return block;
            }
        }
        if self.spare.len() >= SPARE_BLOCKS {
            // All in use: stop tracking the newest (its chunk frees it); the
            // older ones are let go by the session first.
            self.spare.pop_back();
        }
        BytesMut::zeroed(size)
    }

    /// Stops tracking the blocks no chunk holds (they are freed).
    fn let_free_go(&mut self) {
        self.spare.retain(|b| !b.is_unique());
    }

    /// `block` (from [`take`](Self::take)) received `n` bytes: the chunk to
    /// queue. A read of at least half the block hands out a view of it
    /// (no copy); a smaller one is copied out and the block stays free.
    fn chunk(&mut self, block: BytesMut, n: usize) -> Bytes {
        let block = block.freeze();
        let chunk = if n >= block.len() / 2 {
            block.slice(..n)
        } else {
            Bytes::copy_from_slice(&block[..n])
        };
        self.spare.push_back(block);
        chunk
    }

    /// The socket has nothing to read: keep `block` for the next read and
    /// the blocks still in the session's queue; free ones go.
    fn park(&mut self, block: BytesMut) {
        self.let_free_go();
        self.spare.push_front(block.freeze());
        self.spare.truncate(SPARE_BLOCKS);
    }

    /// Quiet: hold no memory.
    fn clear(&mut self) {
        self.spare.clear();
    }
}

/// How much of a `block`-sized read block to read into: a multiple of the
/// PSH frame's data once a block holds one, so a full read becomes full
/// frames (64 KiB would go out as 32 761 + 32 761 + 14, and a Go peer
/// writes each frame to its socket on its own).
fn whole_frames(block: usize) -> usize {
    match block / MAX_PSH_DATA {
        0 => block,
        frames => frames * MAX_PSH_DATA,
    }
}

/// Data on its way into an AnyTLS stream: read from the socket into blocks
/// that go to the session's send queue as they are, without another copy.
struct BytesHalf {
    blocks: Blocks,
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
            blocks: Blocks::new(),
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
                self.blocks.clear();
                return Poll::Ready(Ok(()));
            }
            let mut block = self.blocks.take(self.read_size);
            let size = whole_frames(self.read_size);
            match Pin::new(&mut *from).poll_read(cx, &mut block[..size]) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => {
                    if n == size {
                        // The read filled what it was offered: read more at once.
                        if self.read_size >= budget::REGULAR {
                            self.sizer.busy();
                        }
                        self.read_size = (self.read_size * 2).min(self.sizer.max());
                    } else if n < size / 4 {
                        self.sizer.quiet();
                        self.read_size = MIN_BUF;
                    }
                    self.chunk = self.blocks.chunk(block, n);
                    if self.sizer.max() <= budget::REGULAR {
                        // Only the few relays with a large-I/O slot keep a
                        // block for reuse: a hundred busy streams would
                        // otherwise hold a spare block each.
                        self.blocks.clear();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.read_size == MIN_BUF {
                        // Quiet: hold no block while waiting.
                        self.blocks.clear();
                    } else {
                        self.blocks.park(block);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills `block[..n]` with `byte` and cuts the chunk, as a read does.
    fn read(blocks: &mut Blocks, size: usize, n: usize, byte: u8) -> Bytes {
        let mut block = blocks.take(size);
        block[..n].fill(byte);
        blocks.chunk(block, n)
    }

    #[test]
    fn full_reads_are_whole_frames() {
        assert_eq!(whole_frames(8 * 1024), 8 * 1024);
        assert_eq!(whole_frames(16 * 1024), 16 * 1024);
        assert_eq!(whole_frames(32 * 1024), MAX_PSH_DATA);
        assert_eq!(whole_frames(64 * 1024), 2 * MAX_PSH_DATA);
    }

    #[test]
    fn a_block_is_reused_once_its_chunk_is_dropped() {
        let mut blocks = Blocks::new();
        let first = read(&mut blocks, 64, 64, 1);
        let at = first.as_ptr();
        drop(first);
        let again = blocks.take(64);
        assert_eq!(again.as_ptr(), at, "the block comes back");
        assert!(again.iter().all(|&b| b == 1), "as it was: not zeroed again");
    }

    #[test]
    fn a_block_with_a_live_chunk_is_never_written() {
        let mut blocks = Blocks::new();
        let mut live = Vec::new();
        for i in 0..10u8 {
            live.push(read(&mut blocks, 64, 40 + i as usize, i));
            assert!(blocks.spare.len() <= SPARE_BLOCKS);
        }
        for (i, chunk) in live.iter().enumerate() {
            assert_eq!(chunk.len(), 40 + i);
            assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i} intact");
        }
        // Let the oldest tracked one go: it is reused, the others are not.
        let tracked: Vec<*const u8> = blocks.spare.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(tracked.len(), SPARE_BLOCKS);
        let freed = live.iter().position(|c| c.as_ptr() == tracked[0]).unwrap();
        live.remove(freed);
        let block = blocks.take(64);
        assert_eq!(block.as_ptr(), tracked[0]);
        for (i, chunk) in live.iter().enumerate() {
            let i = if i >= freed { i + 1 } else { i };
            assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i} intact");
        }
    }

    #[test]
    fn small_reads_are_copied_and_leave_the_block_free() {
        let mut blocks = Blocks::new();
        let small = read(&mut blocks, 64, 31, 7);
        let at = blocks.spare[0].as_ptr();
        assert_ne!(small.as_ptr(), at, "copied out");
        let block = blocks.take(64);
        assert_eq!(block.as_ptr(), at, "reused while the small chunk lives");
        assert_eq!(&small[..], &[7; 31][..]);
    }

    #[test]
    fn a_relay_waiting_for_its_socket_keeps_one_free_block() {
        let mut blocks = Blocks::new();
        let live = read(&mut blocks, 64, 64, 1);
        drop(read(&mut blocks, 64, 64, 2));
        drop(read(&mut blocks, 64, 64, 3));
        let block = blocks.take(64);
        let at = block.as_ptr();
        blocks.park(block);
        let kept: Vec<*const u8> = blocks.spare.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(
            kept,
            [at, live.as_ptr()],
            "the next read's block and the live one"
        );
    }

    #[test]
    fn a_relay_keeps_one_free_block_at_most() {
        let mut blocks = Blocks::new();
        let chunks: Vec<Bytes> = (0..SPARE_BLOCKS as u8)
            .map(|i| read(&mut blocks, 64, 64, i))
            .collect();
        assert_eq!(blocks.spare.len(), SPARE_BLOCKS);
        let live = chunks[SPARE_BLOCKS - 1].clone();
        drop(chunks);
        // All but one are free again: one is reused, the other free ones go.
        let block = blocks.take(64);
        let kept: Vec<*const u8> = blocks.spare.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(kept, [live.as_ptr()], "only the one a chunk still holds");
        assert_ne!(block.as_ptr(), live.as_ptr());
    }

    #[test]
    fn blocks_of_another_size_and_quiet_relays_hold_nothing() {
        let mut blocks = Blocks::new();
        drop(read(&mut blocks, 64, 64, 1));
        let block = blocks.take(128);
        assert_eq!(block.len(), 128);
        assert!(blocks.spare.is_empty(), "the 64-byte block was let go");
        drop(blocks.chunk(block, 128));
        blocks.clear();
        assert!(blocks.spare.is_empty());
    }
}
