//! UDP over TCP on the client: datagrams carried by one AnyTLS stream to
//! `sp.v2.udp-over-tcp.arpa:0` (sing UoT version 2, see `anytls_core::uot`).
//!
//! [`Client::udp`] opens a non-connect association (every datagram carries its
//! destination, in the UoT address table), [`Client::udp_connect`] a connect
//! association (one destination, given once in the request). Both return an
//! [`AnyTlsUdp`]; [`AnyTlsUdp::split`] gives a sender and a receiver that can
//! be used from two tasks at once.
//!
//! # Caps
//!
//! * Payloads: at most [`MAX_DATAGRAM`](anytls_core::uot::MAX_DATAGRAM)
//!   (65 535) bytes, the most the 16-bit length carries; bigger sends fail
//!   with `InvalidInput` and send nothing.
//! * Receive buffer: the receiver reads from the stream only while the datagram
//!   at its front is incomplete, so it holds at most one partial datagram (at
//!   most 65 796 bytes with its header) plus one stream chunk.
//! * Send queue: the session's per-stream send buffer
//!   ([`SessionLimits::stream_send_buffer`](anytls_core::SessionLimits)); a send
//!   waits while it is full.
//!
//! The server's datagrams must be read: a receiver that stops reading lets the
//! stream's inbound buffer fill, and the session resets the stream once it
//! passes its receive limit.

use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use anytls_core::SocksAddr;
use anytls_core::uot::{DatagramReader, UOT_V2_MAGIC, UotRequest, encode_datagram};
use futures_lite::AsyncWriteExt;

use crate::client::Client;
use crate::conn::AnyTlsStream;
use crate::runtime::{Runtime, lock};

/// Above this, an emptied buffer gives its memory back (an idle association
/// keeps nothing large).
const KEEP_CAPACITY: usize = 16 * 1024;

impl<R: Runtime> Client<R> {
    /// Opens a UDP-over-TCP association (UoT v2, non-connect mode): one AnyTLS
    /// stream to `sp.v2.udp-over-tcp.arpa:0` whose request names no destination
    /// (`0.0.0.0:0`, which servers ignore in this mode); every datagram names
    /// its own.
    ///
    /// Returns once the stream is opened (dialing a session if needed), without
    /// waiting for the server's verdict: a server that refuses UDP shows it as
    /// `ConnectionRefused` on the next receive (or
    /// [`AnyTlsUdp::established`]), or from this call when the refusal is
    /// already there.
    pub async fn udp(&self) -> io::Result<AnyTlsUdp> {
        let any = SocksAddr::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        self.open_udp(UotRequest {
            connect: false,
            dest: any,
        })
        .await
    }

    /// Opens a UDP-over-TCP association in connect mode (UoT v2,
    /// `is_connect = 1`): every datagram goes to `dest` (a domain is resolved
    /// by the server), and every datagram received comes from it. Use
    /// [`AnyTlsUdp::send`] and [`AnyTlsUdp::recv`].
    pub async fn udp_connect(&self, dest: impl Into<SocksAddr>) -> io::Result<AnyTlsUdp> {
        self.open_udp(UotRequest {
            connect: true,
            dest: dest.into(),
        })
        .await
    }

    async fn open_udp(&self, req: UotRequest) -> io::Result<AnyTlsUdp> {
        let mut head = Vec::with_capacity(1 + req.dest.encoded_len());
        req.encode(&mut head)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut stream = self.connect(SocksAddr::domain(UOT_V2_MAGIC, 0)).await?;
        // Queued right behind the destination: it usually leaves in the same
        // packet as the SYN.
        stream.write_all(&head).await?;
        let peer = req.connect.then_some(req.dest);
        let shared = Arc::new(Shared {
            stream: Mutex::new(stream),
            peer,
        });
        Ok(AnyTlsUdp {
            tx: AnyTlsUdpSender {
                shared: shared.clone(),
                out: Vec::new(),
                written: 0,
            },
            rx: AnyTlsUdpReceiver {
                reader: DatagramReader::replies(shared.peer.is_none()),
                shared,
                failed: None,
            },
        })
    }
}

/// What both halves share: the stream (locked only inside a poll, never
/// across an await) and the connect-mode destination.
struct Shared {
    stream: Mutex<AnyTlsStream>,
    peer: Option<SocksAddr>,
}

fn not_connected() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "a non-connect UoT association has no default destination: use send_to/recv_from",
    )
}

/// A UDP-over-TCP association over one AnyTLS stream; see
/// [`Client::udp`] and [`Client::udp_connect`].
///
/// Like a UDP socket: [`send_to`](Self::send_to) / [`recv_from`](Self::recv_from),
/// or [`send`](Self::send) / [`recv`](Self::recv) in connect mode (as on a
/// connected socket). Unlike UDP, nothing is lost or reordered on the way to
/// the server. Dropping it (both halves, after [`split`](Self::split)) closes
/// the stream.
pub struct AnyTlsUdp {
    tx: AnyTlsUdpSender,
    rx: AnyTlsUdpReceiver,
}

impl std::fmt::Debug for AnyTlsUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyTlsUdp")
            .field("peer", &self.tx.shared.peer)
            .finish_non_exhaustive()
    }
}

impl AnyTlsUdp {
    /// Sends one datagram to `dest`. In connect mode `dest` must be the
    /// association's destination (else `InvalidInput`).
    pub async fn send_to(&mut self, payload: &[u8], dest: impl Into<SocksAddr>) -> io::Result<()> {
        self.tx.send_to(payload, dest).await
    }

    /// Receives one datagram into `buf` (truncated to it, as UDP does) and
    /// returns its length and source. The stream's end is an
    /// `UnexpectedEof` error; a malformed datagram from the server
    /// `InvalidData` (then every later call fails too).
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocksAddr)> {
        self.rx.recv_from(buf).await
    }

    /// Connect mode: sends one datagram to the destination.
    pub async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.tx.send(payload).await
    }

    /// Connect mode: receives one datagram (truncated to `buf`); its length.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rx.recv(buf).await
    }

    /// The destination of a connect-mode association.
    pub fn peer(&self) -> Option<&SocksAddr> {
        self.tx.shared.peer.as_ref()
    }

    /// Waits for the server's verdict on the stream, as
    /// [`AnyTlsStream::established`]: `Ok` once a v2 server accepted it, its
    /// refusal as an error. Bound it with a timeout (a v1 server that has sent
    /// nothing yet gives no verdict).
    pub async fn established(&self) -> io::Result<()> {
        poll_fn(|cx| lock(&self.tx.shared.stream).poll_established(cx)).await
    }

    /// The sending and receiving halves, for use from two tasks (or two
    /// concurrent futures) at once. The stream closes when both are dropped.
    pub fn split(self) -> (AnyTlsUdpSender, AnyTlsUdpReceiver) {
        (self.tx, self.rx)
    }
}

/// The sending half of an [`AnyTlsUdp`].
pub struct AnyTlsUdpSender {
    shared: Arc<Shared>,
    /// The encoded datagram being written, and how much of it is.
    out: Vec<u8>,
    written: usize,
}

impl std::fmt::Debug for AnyTlsUdpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyTlsUdpSender")
            .field("peer", &self.shared.peer)
            .finish_non_exhaustive()
    }
}

impl AnyTlsUdpSender {
    /// See [`AnyTlsUdp::send_to`].
    ///
    /// Cancel safety: a datagram whose send was dropped before any of it was
    /// queued is discarded; one partly queued is completed by the next send
    /// (the stream's framing stays intact either way).
    pub async fn send_to(&mut self, payload: &[u8], dest: impl Into<SocksAddr>) -> io::Result<()> {
        let dest = dest.into();
        match &self.shared.peer {
            Some(peer) if *peer != dest => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("this UoT association is connected to {peer}, not {dest}"),
            )),
            Some(_) => self.send_frame(None, payload).await,
            None => self.send_frame(Some(&dest), payload).await,
        }
    }

    /// See [`AnyTlsUdp::send`].
    pub async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.shared.peer.is_none() {
            return Err(not_connected());
        }
        self.send_frame(None, payload).await
    }

    async fn send_frame(&mut self, dest: Option<&SocksAddr>, payload: &[u8]) -> io::Result<()> {
        if self.written > 0 {
            // The rest of a datagram whose send was cancelled midway.
            poll_fn(|cx| self.poll_write_out(cx)).await?;
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        encode_datagram(dest, payload, &mut self.out).map_err(|e| {
            self.out.clear();
            io::Error::new(io::ErrorKind::InvalidInput, e)
        })?;
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Queues the rest of `out` on the stream.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let mut stream = lock(&self.shared.stream);
            let n = ready!(stream.poll_write_slice(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// The receiving half of an [`AnyTlsUdp`].
pub struct AnyTlsUdpReceiver {
    shared: Arc<Shared>,
    /// Stream bytes not yet returned: whole datagrams and at most one partial
    /// one.
    reader: DatagramReader,
    /// Once the stream ended or broke: the error every later call returns.
    failed: Option<(io::ErrorKind, String)>,
}

impl std::fmt::Debug for AnyTlsUdpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyTlsUdpReceiver")
            .field("peer", &self.shared.peer)
            .field("buffered", &self.reader.buffered())
            .finish_non_exhaustive()
    }
}

impl AnyTlsUdpReceiver {
    /// See [`AnyTlsUdp::recv_from`].
    ///
    /// Cancel safety: no datagram is lost when the future is dropped.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocksAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// See [`AnyTlsUdp::recv`].
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shared.peer.is_none() {
            return Err(not_connected());
        }
        Ok(self.recv_from(buf).await?.0)
    }

    /// Poll form of [`recv_from`](Self::recv_from).
    pub fn poll_recv_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<(usize, SocksAddr)>> {
        loop {
            if let Some((kind, msg)) = &self.failed {
                return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
            }
            match self.reader.next() {
                Ok(Some(d)) => {
                    let n = d.payload.len().min(out.len());
                    out[..n].copy_from_slice(&d.payload[..n]);
                    let src = match (d.dest, &self.shared.peer) {
                        (Some(a), _) => a,
                        (None, Some(p)) => p.clone(),
                        (None, None) => unreachable!("non-connect datagrams carry an address"),
                    };
                    return Poll::Ready(Ok((n, src)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.failed = Some((
                        io::ErrorKind::InvalidData,
                        format!("malformed UoT datagram from the server: {e}"),
                    ));
                    continue;
                }
            }
            // The front datagram is incomplete: only now read more, so at most
            // one partial datagram plus one chunk is ever buffered.
            let chunk = ready!(lock(&self.shared.stream).poll_read_chunk(cx));
            match chunk {
                Ok(Some(b)) => self.reader.push(b),
                Ok(None) => {
                    let partial = self.reader.buffered();
                    let msg = if partial == 0 {
                        "the UoT stream was closed".to_owned()
                    } else {
                        format!(
                            "the UoT stream was closed inside a datagram ({partial} bytes of it)"
                        )
                    };
                    self.failed = Some((io::ErrorKind::UnexpectedEof, msg));
                }
                Err(e) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_and_receiver_are_send() {
        fn is_send<T: Send + Sync>() {}
        is_send::<AnyTlsUdp>();
        is_send::<AnyTlsUdpSender>();
        is_send::<AnyTlsUdpReceiver>();
    }
}
