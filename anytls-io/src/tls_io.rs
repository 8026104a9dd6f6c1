//! rustls driven directly over any `futures-io` socket, through rustls's
//! unbuffered API: we own every buffer.
//!
//! Why not tokio-rustls / futures-rustls or rustls's buffered `Connection`:
//! the stream wrappers write each `poll_write` to the socket on its own (a
//! batch of N transmits costs N syscalls), and the buffered connection keeps a
//! receive buffer of at least 4 KiB per connection forever. Here the driver
//! encrypts a whole batch of transmits into one output buffer (a shaped
//! transmit alone, so padding shapes reach the wire; unshaped ones coalesced
//! into full 16 KiB records) and writes it with one `write`; reads take up
//! to 32 KiB from the socket at once (64 KiB for the first few busy
//! connections, see `budget.rs`) and decrypt every record in it; and an idle
//! connection holds no buffer at all.
//!
//! After a TLS 1.3 handshake the records are sealed and opened by
//! `record.rs` (ring's AEAD, in place), and once no transmit can be shaped
//! the session writes its frames straight into the records of the output
//! buffer ([`DirectBuf`]): each byte sent is copied once in user space.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anytls_core::TransmitBuf;
use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};

use crate::budget::{self, IoBudget, Sizer};

mod record;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

/// Socket read size of a quiet connection.
const MIN_READ: usize = 4 * 1024;
/// Largest TLS record on the wire (header, 2^14 + 256 bytes of ciphertext).
const MAX_RECORD: usize = 5 + 16384 + 256;
/// Incoming bytes held at most: a handshake message may span records up to
/// 64 KiB (rustls's own limit), plus one record.
const MAX_INCOMING: usize = 0x1_0000 + MAX_RECORD;
/// After a batch smaller than this is written the output buffer goes, so a
/// quiet session holds none; a busy one keeps reusing it.
const KEEP_OUT: usize = 16 * 1024;
/// Worst-case growth of application data when encrypted: per record, header
/// (5), content type (1) and AEAD tag (16), with room to spare.
const RECORD_OVERHEAD: usize = 64;

/// The rustls connection, client or server side.
///
/// This file is the only place that knows rustls's unbuffered API; the rest
/// of the crate sees [`TlsIo`]: `handshake`, `encrypt`, `poll_flush_tls`,
/// `poll_read_more` (decrypted records as [`Plain`] blocks),
/// `send_close_notify`. Should the unbuffered API go (the rustls main branch
/// dropped it in 2026 pending a replacement), `TlsIo` can drive rustls's
/// buffered `ClientConnection`/`ServerConnection` behind the same methods:
/// `read_tls` + `process_new_packets` + `reader()` for the read side,
/// `writer()` + `write_tls` for the write side, at the cost of one more copy
/// and a per-connection receive buffer.
///
/// After a TLS 1.3 handshake the records are done by [`record::Records`]
/// when the configuration allows it (`records`: its
/// `enable_secret_extraction`, and no `max_fragment_size`, which only rustls
/// honours), see `record.rs`.
pub(crate) enum Tls {
    Client {
        conn: Box<UnbufferedClientConnection>,
        records: bool,
    },
    Server {
        conn: Box<UnbufferedServerConnection>,
        records: bool,
    },
    Records(Box<record::Records>),
    /// Given up while turning into `Records` (which failed).
    Gone,
}

impl Tls {
    /// A client connection to `name`.
    pub(crate) fn client(
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Tls> {
        let records = config.enable_secret_extraction && config.max_fragment_size.is_none();
        let conn = UnbufferedClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Tls::Client {
            conn: Box::new(conn),
            records,
        })
    }

    /// A server connection.
    pub(crate) fn server(config: std::sync::Arc<rustls::ServerConfig>) -> io::Result<Tls> {
        let records = config.enable_secret_extraction && config.max_fragment_size.is_none();
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Tls::Server {
            conn: Box::new(conn),
            records,
        })
    }
}

/// Where [`TlsIo::process`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more input.
    NeedInput,
    /// Handshake done, every complete record processed; `encrypt` may run.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

/// Plaintext to encrypt in the `WriteTraffic` state.
enum Job<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Decrypted bytes: one block per TLS record, allocated to its size.
///
/// The session keeps received stream data as views into these blocks, so a
/// block is never larger than one record (16 KiB): a queued chunk cannot keep
/// a whole socket read's worth of memory alive (see SECURITY.md).
#[derive(Default)]
pub(crate) struct Plain {
    blocks: VecDeque<BytesMut>,
    len: usize,
}

impl Plain {
    fn push_record(&mut self, payload: &[u8]) {
        if !payload.is_empty() {
            self.blocks.push_back(BytesMut::from(payload));
            self.len += payload.len();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn holds_memory(&self) -> bool {
        self.blocks.capacity() > 0
    }

    /// Takes every block, in order.
    pub(crate) fn take_blocks(&mut self) -> VecDeque<BytesMut> {
        self.len = 0;
        std::mem::take(&mut self.blocks)
    }

    /// Puts back blocks taken by [`take_blocks`](Self::take_blocks) and not
    /// used (none can have arrived in between).
    pub(crate) fn restore(&mut self, blocks: VecDeque<BytesMut>) {
        debug_assert!(self.blocks.is_empty());
        self.len = blocks.iter().map(BytesMut::len).sum();
        self.blocks = blocks;
    }

    /// Everything, as one buffer (copied when there are several blocks).
    #[cfg(all(test, feature = "self-signed"))]
    pub(crate) fn split(&mut self) -> BytesMut {
        let mut blocks = self.take_blocks();
        let mut first = blocks.pop_front().unwrap_or_default();
        for b in blocks {
            first.extend_from_slice(&b);
        }
        first
    }

    /// Copies the first bytes into `buf`; returns how many.
    fn read_into(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.blocks.front_mut() else {
                break;
            };
            let k = front.len().min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&front.split_to(k));
            n += k;
            if front.is_empty() {
                self.blocks.pop_front();
            }
        }
        self.len -= n;
        if self.blocks.is_empty() {
            self.blocks = VecDeque::new();
        }
        n
    }
}

/// A batch of transmits written straight into TLS records (TLS 1.3 records
/// done here): record `i` starts at `base + i * STRIDE`, its plaintext 5
/// bytes later; sealed in place by [`TlsIo::seal_direct`].
pub(crate) struct Direct {
    base: usize,
    /// Plaintext bytes written.
    len: usize,
    /// Records sealed.
    sealed: usize,
}

/// Bytes a full record takes in the output buffer.
const STRIDE: usize = record::MAX_PLAINTEXT + record::RECORD_EXPANSION;

impl Direct {
    fn record_at(&self, i: usize) -> usize {
        self.base + i * STRIDE
    }
}

/// The session writes its transmits here: each byte lands where the record
/// layer seals it, so it is copied once (the staging path copies it twice).
pub(crate) struct DirectBuf<'a> {
    out: &'a mut Vec<u8>,
    d: &'a mut Direct,
}

impl TransmitBuf for DirectBuf<'_> {
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let i = self.d.len / record::MAX_PLAINTEXT;
            let k = self.d.len % record::MAX_PLAINTEXT;
            let take = bytes.len().min(record::MAX_PLAINTEXT - k);
            let at = self.d.record_at(i) + 5 + k;
            // Room for the rest of the record (its type and tag included).
            ensure_room(
                self.out,
                at,
                record::MAX_PLAINTEXT - k + record::RECORD_EXPANSION,
            );
            self.out[at..at + take].copy_from_slice(&bytes[..take]);
            self.d.len += take;
            bytes = &bytes[take..];
        }
    }
}

/// A rustls connection over a socket.
pub(crate) struct TlsIo<IO> {
    pub(crate) io: IO,
    tls: Tls,
    /// Ciphertext read from the socket: `inc[start..end]` not yet discarded by
    /// rustls. `inc.len()` is the allocated, initialised size.
    inc: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of `inc[start..end]` shown to rustls (whole records), while it
    /// is fed one record at a time (see `process`).
    shown: usize,
    read_size: usize,
    /// The socket reached EOF.
    eof: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// The handshake is over.
    traffic: bool,
    /// Encrypted bytes to send: `out[pos..len]`; `out.len()` is the allocated,
    /// initialised size.
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// Decrypted bytes not yet taken.
    pub(crate) plain: Plain,
    close_notify_sent: bool,
    failed: Option<io::ErrorKind>,
    /// Large reads and write batches while busy, within the process budget.
    sizer: Sizer,
    read_busy: bool,
    send_busy: bool,
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Grows `buf` (length = initialised size) so that `buf[at..]` holds `need`.
/// Buffers are reused while a connection is busy, so this rarely reallocates.
fn ensure_room(buf: &mut Vec<u8>, at: usize, need: usize) {
    if buf.len() < at + need {
        buf.resize((at + need).next_multiple_of(4096), 0);
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsIo<IO> {
    /// Large I/O from the process-wide budget.
    #[cfg(all(test, feature = "self-signed"))]
    pub(crate) fn new(io: IO, tls: impl Into<Tls>) -> TlsIo<IO> {
        TlsIo::with_budget(io, tls, &IoBudget::default())
    }

    pub(crate) fn with_budget(io: IO, tls: impl Into<Tls>, budget: &IoBudget) -> TlsIo<IO> {
        TlsIo {
            io,
            tls: tls.into(),
            inc: Vec::new(),
            start: 0,
            end: 0,
            shown: 0,
            read_size: MIN_READ,
            eof: false,
            peer_closed: false,
            traffic: false,
            out: Vec::new(),
            out_pos: 0,
            out_len: 0,
            plain: Plain::default(),
            close_notify_sent: false,
            failed: None,
            sizer: Sizer::new(budget.tls().clone()),
            read_busy: false,
            send_busy: false,
        }
    }

    /// Like [`with_budget`](Self::with_budget), with bytes already read from
    /// `io` (a ClientHello looked at before the configuration was chosen).
    #[cfg(feature = "acme")]
    pub(crate) fn with_input(
        io: IO,
        tls: impl Into<Tls>,
        budget: &IoBudget,
        input: Vec<u8>,
    ) -> TlsIo<IO> {
        let mut t = TlsIo::with_budget(io, tls, budget);
        t.end = input.len();
        t.inc = input;
        t
    }

    /// Holds a buffer or the large-I/O slot that only a busy spell needs.
    pub(crate) fn holds_busy_resources(&self) -> bool {
        self.inc.capacity() > 0
            || self.out.capacity() > 0
            || self.plain.holds_memory()
            || matches!(&self.tls, Tls::Records(r) if r.holds_memory())
            || self.read_size > MIN_READ
            || self.sizer.max() > budget::REGULAR
    }

    /// Gives back what [`holds_busy_resources`](Self::holds_busy_resources)
    /// reports, except bytes still to be processed or sent. Called by the
    /// driver once the connection has been quiet for a while.
    pub(crate) fn release_busy_resources(&mut self) {
        if self.start == self.end {
            self.inc = Vec::new();
            self.start = 0;
            self.end = 0;
        }
        if !self.has_pending_output() {
            self.out = Vec::new();
            self.out_pos = 0;
            self.out_len = 0;
        }
        if self.plain.is_empty() {
            self.plain = Plain::default();
        }
        self.read_size = MIN_READ;
        self.read_busy = false;
        self.send_busy = false;
        self.update_sizer();
    }

    /// Plaintext bytes the driver should encrypt per batch at most.
    pub(crate) fn batch_limit(&self) -> usize {
        self.sizer.max()
    }

    /// A batch of `bytes` plaintext bytes was encrypted.
    pub(crate) fn batch_done(&mut self, bytes: usize) {
        if bytes >= budget::REGULAR {
            self.send_busy = true;
        } else if bytes > 0 {
            self.send_busy = false;
        }
        self.update_sizer();
    }

    fn update_sizer(&mut self) {
        if self.read_busy || self.send_busy {
            self.sizer.busy();
        } else {
            self.sizer.quiet();
        }
    }

    /// Encrypted bytes wait to be written.
    pub(crate) fn has_pending_output(&self) -> bool {
        self.out_pos < self.out_len
    }

    /// Runs rustls over the buffered input until it needs more, decrypting
    /// application data into `plain`, queueing handshake output in `out`, and
    /// then doing `job` in the traffic state.
    fn process(&mut self, mut job: Job<'_>) -> io::Result<Stop> {
        if let Some(kind) = self.failed {
            return Err(io::Error::new(kind, "TLS connection failed"));
        }
        loop {
            if matches!(self.tls, Tls::Records(_)) {
                if self.close_notify_sent && matches!(job, Job::Data(_)) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS connection closed for sending",
                    ));
                }
                return self
                    .process_records(job)
                    .inspect_err(|e| self.failed = Some(e.kind()));
            }
            // While the records may still come to `record.rs`, rustls is shown
            // one complete record at a time (and an incomplete last one, which
            // it only looks at): it must not read past the handshake's last
            // message, or it would handle post-handshake records itself (its
            // answer to a KeyUpdate request, queued for its next record, would
            // go with it at the switch).
            let held = self.end - self.start;
            let feed = self.feed_records();
            let given = if feed && self.next_record().is_some() {
                self.shown
            } else {
                held
            };
            // Complete records not shown yet: input comes before the job.
            let hold = given < held;
            let incoming = &mut self.inc[self.start..self.start + given];
            let r = match &mut self.tls {
                Tls::Client { conn: c, .. } => step(
                    c.process_tls_records(incoming),
                    &mut self.plain,
                    &mut self.out,
                    &mut self.out_len,
                    &mut job,
                    hold,
                ),
                Tls::Server { conn: c, .. } => step(
                    c.process_tls_records(incoming),
                    &mut self.plain,
                    &mut self.out,
                    &mut self.out_len,
                    &mut job,
                    hold,
                ),
                Tls::Records(_) | Tls::Gone => {
                    return Err(io::Error::other("TLS connection gone"));
                }
            };
            let (discard, step) = r.inspect_err(|e| self.failed = Some(e.kind()))?;
            self.start += discard;
            self.shown = self.shown.saturating_sub(discard);
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                self.shown = 0;
            }
            match step {
                Step::Again => {}
                Step::PeerClosed => self.peer_closed = true,
                Step::Stop(s) => {
                    if s == Stop::Traffic {
                        self.traffic = true;
                    }
                    if s != Stop::Closed {
                        // rustls is done with what it was shown: the records
                        // come here now, or it gets the next one.
                        if self.take_over_records()? {
                            continue;
                        }
                        if let Some(n) = self.next_record().filter(|_| self.feed_records()) {
                            self.shown += n;
                            continue;
                        }
                    }
                    if let Job::Nothing = job {
                        return Ok(s);
                    }
                    if s != Stop::Traffic {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "TLS connection not ready for application data",
                        ));
                    }
                }
            }
        }
    }

    /// Whether rustls is fed one record at a time: while the records may
    /// still come to `record.rs` (see [`take_over_records`](Self::take_over_records)).
    fn feed_records(&mut self) -> bool {
        if self.peer_closed || self.close_notify_sent {
            return false;
        }
        match &mut self.tls {
            Tls::Client { conn, records } => {
                *records = *records && record::possible(conn);
                *records
            }
            Tls::Server { conn, records } => {
                *records = *records && record::possible(conn);
                *records
            }
            Tls::Records(_) | Tls::Gone => false,
        }
    }

    /// The length of the complete record after those shown to rustls, if
    /// one is there.
    fn next_record(&self) -> Option<usize> {
        let rest = &self.inc[self.start + self.shown..self.end];
        let header = rest.get(..5)?;
        let n = 5 + u16::from_be_bytes([header[3], header[4]]) as usize;
        (rest.len() >= n).then_some(n)
    }

    /// Hands the records to [`record::Records`] when the connection can go
    /// (see `record.rs`): handshake over, rustls holds nothing of the input
    /// (every record it was shown processed and discarded: the rest is
    /// untouched ciphertext, opened by `record.rs`) and has nothing to send,
    /// nothing said or heard about closing. Returns whether it happened.
    fn take_over_records(&mut self) -> io::Result<bool> {
        if self.shown != 0 || !self.feed_records() {
            return Ok(false);
        }
        let ready = match &self.tls {
            Tls::Client { conn, .. } => record::eligible(conn),
            Tls::Server { conn, .. } => record::eligible(conn),
            Tls::Records(_) | Tls::Gone => false,
        };
        if !ready {
            return Ok(false);
        }
        let r = match std::mem::replace(&mut self.tls, Tls::Gone) {
            Tls::Client { conn, .. } => record::Records::from_client(*conn),
            Tls::Server { conn, .. } => record::Records::from_server(*conn),
            Tls::Records(_) | Tls::Gone => unreachable!("checked above"),
        };
        let r = r.inspect_err(|e| self.failed = Some(e.kind()))?;
        self.tls = Tls::Records(Box::new(r));
        Ok(true)
    }

    /// [`process`](Self::process) once the records are done here.
    fn process_records(&mut self, job: Job<'_>) -> io::Result<Stop> {
        let Tls::Records(r) = &mut self.tls else {
            unreachable!("called for Records only");
        };
        if self.peer_closed {
            self.start = 0;
            self.end = 0;
        } else if self.start < self.end {
            let opened = r.open(&mut self.inc[self.start..self.end], &mut self.plain);
            let (used, closed) = opened.inspect_err(|e| {
                // The peer broke the protocol: tell it why before closing
                // (sent if the socket takes it at once, see `poll_read_more`).
                if let Some(alert) = record::alert_of(e) {
                    let _ = r.seal_fatal_alert(alert, &mut self.out, &mut self.out_len);
                }
            })?;
            self.start += used;
            if closed {
                self.peer_closed = true;
            }
            if closed || self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
        }
        match job {
            Job::Nothing => {}
            Job::Data(data) => r.seal_data(data, &mut self.out, &mut self.out_len)?,
            Job::CloseNotify => r.seal_close_notify(&mut self.out, &mut self.out_len)?,
        }
        if self.peer_closed && self.close_notify_sent {
            return Ok(Stop::Closed);
        }
        Ok(Stop::Traffic)
    }

    /// Starts a batch of transmits written straight into TLS records of the
    /// output buffer (see [`DirectBuf`]), when the records are done here.
    /// `None`: encrypt staged plaintext with [`encrypt`](Self::encrypt).
    pub(crate) fn start_direct(&mut self) -> io::Result<Option<Direct>> {
        if let Some(kind) = self.failed {
            return Err(io::Error::new(kind, "TLS connection failed"));
        }
        let Tls::Records(r) = &mut self.tls else {
            return Ok(None);
        };
        if self.close_notify_sent {
            return Ok(None);
        }
        let ready = r
            .start_in_place(&mut self.out, &mut self.out_len)
            .inspect_err(|e| self.failed = Some(e.kind()))?;
        Ok(ready.then_some(Direct {
            base: self.out_len,
            len: 0,
            sealed: 0,
        }))
    }

    /// Where the next transmits of the batch `d` go.
    pub(crate) fn direct_buf<'a>(&'a mut self, d: &'a mut Direct) -> DirectBuf<'a> {
        DirectBuf {
            out: &mut self.out,
            d,
        }
    }

    /// Seals the records of `d` filled so far (`finish`: and the last,
    /// partly filled one, ending the batch).
    pub(crate) fn seal_direct(&mut self, d: &mut Direct, finish: bool) -> io::Result<()> {
        let Tls::Records(r) = &mut self.tls else {
            unreachable!("a direct batch needs the records done here");
        };
        let full = d.len / record::MAX_PLAINTEXT;
        let last = d.len % record::MAX_PLAINTEXT;
        let mut result = Ok(());
        while d.sealed < full && result.is_ok() {
            result = r.seal_in_place(&mut self.out, d.record_at(d.sealed), record::MAX_PLAINTEXT);
            d.sealed += 1;
        }
        if finish {
            if last > 0 && result.is_ok() {
                result = r.seal_in_place(&mut self.out, d.record_at(full), last);
            }
            // Only sealed records are queued: after a failure the batch's
            // bytes (plaintext among them) stay behind `out_len`.
            if result.is_ok() {
                self.out_len = d.record_at(full)
                    + if last > 0 {
                        record::RECORD_EXPANSION + last
                    } else {
                        0
                    };
            }
        }
        result.inspect_err(|e| self.failed = Some(e.kind()))
    }

    /// Encrypts `data` as its own TLS record(s) into the output buffer.
    pub(crate) fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        self.process(Job::Data(data)).map(|_| ())
    }

    /// Queues close_notify (once; only after the handshake).
    pub(crate) fn send_close_notify(&mut self) {
        if !self.close_notify_sent && self.traffic {
            self.close_notify_sent = true;
            if let Err(e) = self.process(Job::CloseNotify) {
                tracing::debug!("close_notify: {e}");
            }
        }
    }

    /// Writes every pending TLS byte to the socket.
    pub(crate) fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_len {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..self.out_len])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        // A busy connection reuses its buffer (no reallocation, no zeroing);
        // after a small batch the buffer goes, so a quiet one holds none.
        if self.out_len < KEEP_OUT {
            self.out = Vec::new();
        }
        self.out_pos = 0;
        self.out_len = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads and decrypts. `Ready(Ok(false))`: progress was made (handshake
    /// messages processed, or bytes appended to `plain`); `Ready(Ok(true))`:
    /// the peer closed (close_notify or socket EOF) and everything before it
    /// was delivered.
    pub(crate) fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // Plaintext decrypted earlier (e.g. with the handshake's last flight)
        // counts as progress: the caller takes it.
        if !self.plain.is_empty() {
            return Poll::Ready(Ok(false));
        }
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(io::Error::new(kind, "TLS connection failed")));
        }
        loop {
            if self.eof || self.peer_closed {
                return Poll::Ready(Ok(true));
            }
            // Room for the next read: at least a whole record after what is
            // buffered (compacting first), `read_size` when the buffer is empty.
            let held = self.end - self.start;
            if self.start > 0 && held > 0 {
                self.inc.copy_within(self.start..self.end, 0);
            }
            self.start = 0;
            self.end = held;
            let want = if held == 0 {
                self.read_size
            } else {
                MAX_RECORD.max(self.read_size)
            };
            if held + MAX_RECORD > MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message too large",
                )));
            }
            let want = want.min(MAX_INCOMING - held);
            ensure_room(&mut self.inc, held, want);
            let size = want.min(self.inc.len() - held);
            match Pin::new(&mut self.io).poll_read(cx, &mut self.inc[held..held + size]) {
                Poll::Pending => {
                    if held == 0 && self.read_size == MIN_READ {
                        // Quiet: an idle connection pins no read buffer.
                        self.inc = Vec::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    if held > 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the middle of a TLS record",
                        )));
                    }
                    return Poll::Ready(Ok(true));
                }
                Poll::Ready(Ok(n)) => {
                    self.end = held + n;
                    if n == size && size >= budget::REGULAR {
                        self.read_busy = true;
                        self.update_sizer();
                    } else if n < size / 4 && self.read_busy {
                        self.read_busy = false;
                        self.update_sizer();
                    }
                    self.read_size = if n == size {
                        (size * 2).clamp(MIN_READ, self.sizer.max())
                    } else if n < size / 4 {
                        MIN_READ
                    } else {
                        self.read_size.min(self.sizer.max())
                    };
                    let before = self.plain.len();
                    let handshaking = !self.traffic;
                    let stop = match self.process(Job::Nothing) {
                        Ok(stop) => stop,
                        Err(e) => {
                            // A fatal alert queued for the peer goes out if
                            // the socket takes it now; the driver closes next.
                            if self.has_pending_output() {
                                let _ = self.poll_flush_tls(cx);
                            }
                            return Poll::Ready(Err(e));
                        }
                    };
                    if stop == Stop::Closed {
                        self.peer_closed = true;
                    }
                    if self.plain.len() > before || handshaking || self.has_pending_output() {
                        return Poll::Ready(Ok(false));
                    }
                    // Only part of a record (or a post-handshake message):
                    // read on.
                    if self.peer_closed {
                        return Poll::Ready(Ok(true));
                    }
                }
            }
        }
    }

    /// Completes the TLS handshake.
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            loop {
                let stop = self.process(Job::Nothing)?;
                ready!(self.poll_flush_tls(cx))?;
                match stop {
                    Stop::Traffic => return Poll::Ready(Ok(())),
                    Stop::Closed => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed during the TLS handshake",
                        )));
                    }
                    Stop::NeedInput => {}
                }
                if ready!(self.poll_read_more(cx))? {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during the TLS handshake",
                    )));
                }
            }
        })
        .await
    }
}

/// What one `process_tls_records` round asks for next.
enum Step {
    Again,
    PeerClosed,
    Stop(Stop),
}

/// Handles one state of the unbuffered state machine; returns the bytes to
/// discard from the front of the input and what to do next.
fn step<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    plain: &mut Plain,
    out: &mut Vec<u8>,
    out_len: &mut usize,
    job: &mut Job<'_>,
    hold: bool,
) -> io::Result<(usize, Step)> {
    let UnbufferedStatus { mut discard, state } = status;
    let step = match state.map_err(invalid)? {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                let rec = rec.map_err(invalid)?;
                discard += rec.discard;
                plain.push_record(rec.payload);
            }
            Step::Again
        }
        ConnectionState::EncodeTlsData(mut e) => {
            let mut need = MAX_RECORD;
            loop {
                ensure_room(out, *out_len, need);
                match e.encode(&mut out[*out_len..]) {
                    Ok(n) => {
                        *out_len += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        need = required_size;
                    }
                    Err(e) => return Err(invalid(e)),
                }
            }
            Step::Again
        }
        // The encoded bytes are in `out` and go out before anything encrypted
        // later: as good as sent, for rustls.
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Step::Again
        }
        ConnectionState::BlockedHandshake => Step::Stop(Stop::NeedInput),
        ConnectionState::PeerClosed => Step::PeerClosed,
        ConnectionState::Closed => Step::Stop(Stop::Closed),
        ConnectionState::WriteTraffic(mut w) => {
            // `hold`: input rustls was not shown yet comes first.
            let job = if hold {
                Job::Nothing
            } else {
                std::mem::replace(job, Job::Nothing)
            };
            match job {
                Job::Nothing => {}
                Job::Data(data) => {
                    let mut need = data.len() + (data.len() / 16384 + 1) * RECORD_OVERHEAD;
                    loop {
                        ensure_room(out, *out_len, need);
                        match w.encrypt(data, &mut out[*out_len..]) {
                            Ok(n) => {
                                *out_len += n;
                                break;
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > need => need = required_size,
                            Err(e) => return Err(invalid(e)),
                        }
                    }
                }
                Job::CloseNotify => {
                    ensure_room(out, *out_len, RECORD_OVERHEAD);
                    *out_len += w
                        .queue_close_notify(&mut out[*out_len..])
                        .map_err(invalid)?;
                }
            }
            Step::Stop(Stop::Traffic)
        }
        ConnectionState::ReadEarlyData(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS early data",
            ));
        }
        _ => {
            return Err(io::Error::other("unknown TLS connection state"));
        }
    };
    Ok((discard, step))
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
                return Poll::Ready(Ok(this.plain.read_into(buf)));
            }
            // Output produced while reading (tickets, alerts) goes out too.
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
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
        let n = buf.len().min(budget::REGULAR);
        this.encrypt(&buf[..n])?;
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

#[cfg(all(test, feature = "self-signed"))]
mod tests;
