//! rustls driven directly over any `futures-io` socket.
//!
//! We do not use tokio-rustls / futures-rustls for the data path: they write
//! each `poll_write` to the socket on its own, so a batch of N transmits costs
//! N syscalls. Here the driver encrypts a whole batch into the connection (one
//! `writer().write_all` per transmit, so each transmit still becomes its own
//! TLS record(s) and padding shapes reach the wire) and then writes all the
//! records with one vectored write. Reads take up to 64 KiB from the socket at
//! once and decrypt every record in it.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};

/// Largest socket read.
const MAX_READ: usize = 32 * 1024;
/// Socket read size of a quiet connection.
const MIN_READ: usize = 4 * 1024;

/// A rustls connection over a socket.
pub(crate) struct TlsIo<IO> {
    pub(crate) io: IO,
    pub(crate) tls: rustls::Connection,
    /// Ciphertext read from the socket, `raw[start..end]` not yet given to rustls.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    read_size: usize,
    /// The socket reached EOF.
    eof: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// Decrypted bytes not yet taken.
    pub(crate) plain: BytesMut,
    close_notify_sent: bool,
}

/// The socket as a blocking `Read + Write` for rustls, with `Pending` as
/// `WouldBlock`.
struct SyncIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

fn would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<IO: AsyncWrite + Unpin> Write for SyncIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        would_block(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsIo<IO> {
    pub(crate) fn new(io: IO, tls: impl Into<rustls::Connection>) -> TlsIo<IO> {
        TlsIo {
            io,
            tls: tls.into(),
            raw: Vec::new(),
            start: 0,
            end: 0,
            read_size: MIN_READ,
            eof: false,
            peer_closed: false,
            plain: BytesMut::new(),
            close_notify_sent: false,
        }
    }

    /// Writes every pending TLS byte to the socket.
    pub(crate) fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut w = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.tls.write_tls(&mut w) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and decrypts. `Ready(Ok(false))`: progress was made (handshake
    /// messages processed, or bytes appended to `plain`); `Ready(Ok(true))`:
    /// the peer closed (close_notify or socket EOF) and everything before it
    /// was delivered.
    pub(crate) fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // Plaintext decrypted earlier (e.g. with the handshake's last flight)
        // counts as progress: the caller takes it.
        let mut progress = !self.plain.is_empty();
        loop {
            if self.start < self.end {
                let mut slice = &self.raw[self.start..self.end];
                let n = self.tls.read_tls(&mut slice)?;
                self.start += n;
                let state = self.tls.process_new_packets().map_err(invalid)?;
                let p = state.plaintext_bytes_to_read();
                if p > 0 {
                    let at = self.plain.len();
                    self.plain.resize(at + p, 0);
                    self.tls.reader().read_exact(&mut self.plain[at..])?;
                }
                if state.peer_has_closed() {
                    self.peer_closed = true;
                }
                progress = true;
                if n == 0 {
                    // rustls took nothing: its buffer is full of a record it
                    // cannot finish, which a valid peer never sends.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS record does not fit",
                    )));
                }
                continue;
            }
            self.start = 0;
            self.end = 0;
            if progress {
                return Poll::Ready(Ok(false));
            }
            if self.eof || self.peer_closed {
                return Poll::Ready(Ok(true));
            }
            if self.raw.len() < self.read_size {
                self.raw = vec![0; self.read_size];
            }
            let size = self.read_size;
            match Pin::new(&mut self.io).poll_read(cx, &mut self.raw[..size]) {
                Poll::Pending => {
                    if self.read_size == MIN_READ {
                        // Quiet: an idle connection pins no read buffer.
                        self.raw = Vec::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.end = n;
                    self.read_size = if n == size {
                        (size * 2).min(MAX_READ)
                    } else if n < size / 4 {
                        MIN_READ
                    } else {
                        size
                    };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Completes the TLS handshake.
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            loop {
                let flushed = self.poll_flush_tls(cx)?;
                if !self.tls.is_handshaking() {
                    return flushed.map(Ok);
                }
                if flushed.is_pending() {
                    return Poll::Pending;
                }
                if ready!(self.poll_read_more(cx))? {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during the TLS handshake",
                    )));
                }
            }
        })
        .await?;
        // The driver bounds what it hands to the connection itself.
        self.tls.set_buffer_limit(None);
        Ok(())
    }

    /// Queues close_notify (once).
    pub(crate) fn send_close_notify(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.tls.send_close_notify();
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.len().min(this.plain.len());
                buf[..n].copy_from_slice(&this.plain.split_to(n));
                return Poll::Ready(Ok(n));
            }
            if buf.is_empty() || ready!(this.poll_read_more(cx))? {
                return Poll::Ready(Ok(0));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Keep at most one write's worth of records queued.
        ready!(this.poll_flush_tls(cx))?;
        let n = buf.len().min(MAX_READ);
        this.tls.writer().write_all(&buf[..n])?;
        if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.send_close_notify();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}
