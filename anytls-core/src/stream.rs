//! Per-stream state: bounded receive and send queues of `Bytes` chunks.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A queue of byte chunks with a running length. Chunks are shared, never copied.
#[derive(Debug, Default)]
pub(crate) struct ChunkQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl ChunkQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        let b = self.chunks.pop_front()?;
        self.len -= b.len();
        Some(b)
    }

    /// Up to `max` bytes from the front (a whole or split chunk).
    pub(crate) fn pop_up_to(&mut self, max: usize) -> Option<Bytes> {
        let front = self.chunks.front_mut()?;
        let b = if front.len() <= max {
            self.chunks.pop_front()?
        } else {
            front.split_to(max)
        };
        self.len -= b.len();
        Some(b)
    }

    /// The first `n` bytes (or fewer if shorter), copied only when they span chunks.
    pub(crate) fn peek(&self, n: usize) -> Bytes {
        match self.chunks.front() {
            Some(f) if f.len() >= n || self.chunks.len() == 1 => f.slice(..n.min(f.len())),
            None => Bytes::new(),
            Some(_) => {
                let mut out = BytesMut::with_capacity(n.min(self.len));
                for c in &self.chunks {
                    let take = (n - out.len()).min(c.len());
                    out.extend_from_slice(&c[..take]);
                    if out.len() == n {
                        break;
                    }
                }
                out.freeze()
            }
        }
    }

    /// Drops the first `n` bytes.
    pub(crate) fn skip(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.len -= front.len();
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(n);
                self.len -= n;
                n = 0;
            }
        }
    }

    pub(crate) fn clear(&mut self) -> usize {
        let n = self.len;
        self.chunks.clear();
        self.len = 0;
        n
    }
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Server: SYN seen, destination address not complete yet.
    AwaitingAddress,
    /// Server: address reported to the owner, no verdict yet.
    AwaitingAccept,
    /// Client: SYN sent; no SYNACK yet (v2) or none coming (v1).
    Opening,
    /// Open for data in both directions.
    Open,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) phase: Phase,
    pub(crate) recv: ChunkQueue,
    /// The peer sent FIN: EOF after `recv` drains; writes fail.
    pub(crate) peer_fin: bool,
    /// A StreamReadable event is outstanding (reset when a read finds nothing).
    pub(crate) readable_signaled: bool,
    pub(crate) send: ChunkQueue,
    /// The owner finished the stream: FIN goes out after `send` drains; received
    /// data is dropped.
    pub(crate) local_fin: bool,
    /// A write returned `Blocked`; emit StreamWritable when there is room.
    pub(crate) write_blocked: bool,
    /// The stream is in the session's round-robin queue of streams with output.
    pub(crate) queued: bool,
    /// Over its receive cap, this stream may pause the session's input (lost
    /// when its reader stalls; see `SessionLimits::stalled_stream_timeout`).
    pub(crate) may_pause: bool,
}

impl Stream {
    pub(crate) fn new(phase: Phase) -> Stream {
        Stream {
            phase,
            recv: ChunkQueue::default(),
            peer_fin: false,
            readable_signaled: false,
            send: ChunkQueue::default(),
            local_fin: false,
            write_blocked: false,
            queued: false,
            may_pause: true,
        }
    }

    /// Whether the stream has data or a FIN to hand to the writer.
    pub(crate) fn has_output(&self) -> bool {
        !self.send.is_empty() || self.local_fin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_queue_peek_skip_pop() {
        let mut q = ChunkQueue::default();
        q.push(Bytes::from_static(b"ab"));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"cdef"));
        assert_eq!(q.len(), 6);
        assert_eq!(&q.peek(1)[..], b"a");
        assert_eq!(&q.peek(4)[..], b"abcd");
        assert_eq!(&q.peek(10)[..], b"abcdef");
        q.skip(3);
        assert_eq!(&q.peek(10)[..], b"def");
        assert_eq!(&q.pop_up_to(2).unwrap()[..], b"de");
        assert_eq!(&q.pop().unwrap()[..], b"f");
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
        assert_eq!(&q.peek(3)[..], b"");
    }
}
