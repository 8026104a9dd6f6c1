//! TLS 1.3 records after the handshake, sealed and opened here with ring's
//! AEAD instead of by rustls (RFC 8446 section 5).
//!
//! Why: rustls's `encrypt` copies the plaintext into a freshly allocated
//! record, seals it, and copies the record into our output buffer; per byte
//! sent that is two copies and, per record, an allocation. Here a record is
//! written once into the output buffer and sealed in place. Receiving, a
//! record is opened in place in the input buffer, as rustls does, without its
//! per-record bookkeeping.
//!
//! rustls still owns everything but the records: the handshake, and after it,
//! through its kernel-connection API (meant for kTLS, which does the same
//! job in the kernel), the next traffic secrets for a KeyUpdate and the
//! session tickets a server sends. A connection comes here only when all of
//! this holds (see [`eligible`]): TLS 1.3, one of its three AEADs (whose
//! keys rustls hands out), a configuration with `enable_secret_extraction`
//! (set by this crate's configuration builders) and without
//! `max_fragment_size`, and no input or output left with rustls. The switch
//! comes right after the handshake's last message: until then rustls is
//! shown one record at a time (`TlsIo::process`), so it never handles a
//! post-handshake record (its answer to a KeyUpdate request would be queued
//! inside it, and lost at the switch). Anything else (TLS 1.2, configurations of one's own without
//! the flag) stays with rustls's unbuffered API, byte-for-byte the same on
//! the wire.
//!
//! What this layer does, per RFC 8446:
//! - records of at most 2^14 plaintext bytes, content type inside, no
//!   padding; the nonce is the IV XOR the sequence number; the header is the
//!   additional data;
//! - a KeyUpdate from the peer switches the receive key (and, when the peer
//!   asks for it, ours before the next record we send); our send key is
//!   updated before the cipher suite's confidentiality limit;
//! - NewSessionTicket (client) goes to rustls's session store;
//! - close_notify ends the input (later records are ignored), user_canceled
//!   is ignored, any other alert, record type or message is an error, as is
//!   a record that fails authentication; as with rustls, 4 warning alerts at
//!   most, and 32 records in a row at most without application data (empty
//!   ones, KeyUpdates, user_canceled).

use std::io;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};

use super::{Plain, ensure_room};

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// AEAD tag of all three TLS 1.3 AEADs.
const TAG: usize = 16;
/// Plaintext bytes in a record at most (2^14).
pub(super) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Record body bytes at most (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// A post-handshake message held at most while its records arrive (the
/// same 64 KiB rustls allows a handshake message).
const MAX_HANDSHAKE_MESSAGE: usize = 0x1_0000;

/// Records in a row that carry no application data (empty records,
/// KeyUpdates, user_canceled alerts) taken at most, as rustls (32 KeyUpdates,
/// 32 empty records): each costs a decryption (a KeyUpdate a key schedule
/// too) and gives the reader nothing, so it would read on.
const MAX_IDLE_RECORDS: u8 = 32;
/// Warning alerts (user_canceled) taken at most, as rustls.
const MAX_WARNING_ALERTS: u8 = 4;

/// Bytes a sealed record adds to its plaintext: header, content type, tag.
pub(super) const RECORD_EXPANSION: usize = HEADER + 1 + TAG;
/// Records one batch sealed in place holds at most (1 GiB of plaintext; a
/// batch is a few hundred KiB): a KeyUpdate due within it goes first.
const BATCH_RECORDS: u64 = 1 << 16;

/// rustls's side of a connection once records are done here.
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
    }

    fn suite(&self) -> SupportedCipherSuite {
        match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        }
    }
}

/// One direction's key, IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<Direction> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(io::Error::other("unsupported TLS traffic secret")),
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| io::Error::other("bad TLS traffic key"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("bad TLS traffic IV"))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The nonce of the next record (RFC 8446 section 5.3).
    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (a, b) in n[aead::NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *a ^= b;
        }
        Nonce::assume_unique_for_key(n)
    }
}

/// The record layer of a TLS 1.3 connection after its handshake.
pub(crate) struct Records {
    kernel: Kernel,
    tx: Direction,
    rx: Direction,
    /// Records sealed under one key before it is updated.
    tx_limit: u64,
    /// The peer asked for a KeyUpdate: ours goes before our next record.
    update_requested: bool,
    /// A post-handshake message whose records are still arriving.
    handshake: Vec<u8>,
    /// Records without application data since the last with some.
    idle_records: u8,
    /// Warning alerts received.
    warning_alerts: u8,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

// Alert descriptions we send before closing (RFC 8446 section 6.2).
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;

/// A protocol error of the peer's: the connection is closed after a fatal
/// alert saying which.
#[derive(Debug)]
struct Fatal {
    alert: u8,
    msg: &'static str,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.msg)
    }
}

impl std::error::Error for Fatal {}

fn fatal(alert: u8, msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Fatal { alert, msg })
}

/// The alert to send before closing after `e`, if it is a protocol error of
/// the peer's.
pub(super) fn alert_of(e: &io::Error) -> Option<u8> {
    e.get_ref()?.downcast_ref::<Fatal>().map(|f| f.alert)
}

fn from_rustls(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether the connection can come here (checked before rustls's connection
/// is given up: converting consumes it, also when it fails).
pub(super) fn eligible(common: &rustls::CommonState) -> bool {
    !common.is_handshaking() && !common.wants_write() && possible(common)
}

/// Whether the connection may ever come here: not when the version or the
/// cipher suite rules it out (a suite of one's own provider whose AEAD does
/// not hand out its keys would make the conversion fail after it consumed
/// the connection).
pub(super) fn possible(common: &rustls::CommonState) -> bool {
    if common
        .protocol_version()
        .is_some_and(|v| v != ProtocolVersion::TLSv1_3)
    {
        return false;
    }
    match common.negotiated_cipher_suite() {
        None => true,
        Some(SupportedCipherSuite::Tls13(s)) => extractable(s),
        Some(_) => false,
    }
}

/// Whether `suite`'s keys come out as one of the AEADs sealed here (asked
/// with a dummy key: `extract_keys` only wraps what it is given).
fn extractable(suite: &rustls::Tls13CipherSuite) -> bool {
    use rustls::crypto::cipher::{AeadKey, Iv};
    let len = suite.aead_alg.key_len();
    match suite
        .aead_alg
        .extract_keys(AeadKey::from([0; 32]), Iv::new([0; aead::NONCE_LEN]))
    {
        Ok(ConnectionTrafficSecrets::Aes128Gcm { .. }) => len == 16,
        Ok(ConnectionTrafficSecrets::Aes256Gcm { .. })
        | Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { .. }) => len == 32,
        _ => false,
    }
}

impl Records {
    pub(super) fn from_client(conn: UnbufferedClientConnection) -> io::Result<Records> {
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(io::Error::other)?;
        Records::new(secrets, Kernel::Client(kernel))
    }

    pub(super) fn from_server(conn: UnbufferedServerConnection) -> io::Result<Records> {
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(io::Error::other)?;
        Records::new(secrets, Kernel::Server(kernel))
    }

    fn new(secrets: rustls::ExtractedSecrets, kernel: Kernel) -> io::Result<Records> {
        let tx_limit = match kernel.suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            _ => return Err(io::Error::other("not a TLS 1.3 cipher suite")),
        };
        Ok(Records {
            tx: Direction::new(secrets.tx)?,
            rx: Direction::new(secrets.rx)?,
            kernel,
            // Also under the sequence numbers' own end.
            tx_limit: tx_limit.min(u64::MAX - 1),
            update_requested: false,
            handshake: Vec::new(),
            idle_records: 0,
            warning_alerts: 0,
        })
    }

    /// Updates the send key after this many records (tests).
    #[cfg(all(test, feature = "self-signed"))]
    pub(super) fn set_tx_limit(&mut self, records: u64) {
        self.tx_limit = records;
    }

    /// Moves the sequence numbers on as if `tx` records had been sent and
    /// `rx` received (tests of key updates far into a key's life; the peer
    /// skips as many).
    #[cfg(all(test, feature = "self-signed"))]
    pub(super) fn skip_records(&mut self, tx: u64, rx: u64) {
        self.tx.seq += tx;
        self.rx.seq += rx;
    }

    /// Moves to the next send key without sending a KeyUpdate (tests that
    /// send their own, see `seal_raw`).
    #[cfg(all(test, feature = "self-signed"))]
    pub(super) fn next_tx_key(&mut self) {
        self.tx = Direction::new(self.kernel.update_tx().unwrap()).unwrap();
    }

    /// Seals `data` as application data records of at most 2^14 bytes,
    /// appended to `out[..*len]`.
    pub(super) fn seal_data(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        len: &mut usize,
    ) -> io::Result<()> {
        let records = data.len().div_ceil(MAX_PLAINTEXT);
        ensure_room(out, *len, data.len() + (records + 1) * RECORD_EXPANSION + 8);
        for piece in data.chunks(MAX_PLAINTEXT) {
            self.seal(APPLICATION_DATA, piece, out, len)?;
        }
        Ok(())
    }

    /// Readies a batch of records sealed in place ([`seal_in_place`]): sends
    /// a KeyUpdate now if one would be due within the batch. `false`: not
    /// for this connection (a test's tiny key limit), use
    /// [`seal_data`](Self::seal_data).
    ///
    /// [`seal_in_place`]: Self::seal_in_place
    pub(super) fn start_in_place(
        &mut self,
        out: &mut Vec<u8>,
        len: &mut usize,
    ) -> io::Result<bool> {
        if self.tx_limit < 2 * BATCH_RECORDS {
            return Ok(false);
        }
        if self.update_requested || self.tx.seq + BATCH_RECORDS >= self.tx_limit {
            self.send_key_update(out, len)?;
        }
        Ok(true)
    }

    /// Seals our KeyUpdate under the current key, then moves to the next
    /// one. update_not_requested: the peer's keys are its own business.
    fn send_key_update(&mut self, out: &mut Vec<u8>, len: &mut usize) -> io::Result<()> {
        self.update_requested = false;
        self.seal_inner(&[KEY_UPDATE, 0, 0, 1, 0], &[HANDSHAKE], out, len)?;
        self.tx = Direction::new(self.kernel.update_tx().map_err(from_rustls)?)?;
        Ok(())
    }

    /// Seals the application data record whose `plain` bytes of plaintext
    /// are already in place at `out[at + 5..]`, with room for the content
    /// type and tag after them; writes its header at `out[at..]`.
    pub(super) fn seal_in_place(
        &mut self,
        out: &mut [u8],
        at: usize,
        plain: usize,
    ) -> io::Result<()> {
        debug_assert!(plain <= MAX_PLAINTEXT);
        // A batch never holds BATCH_RECORDS records (see `start_in_place`).
        // The key's last sequence number is its KeyUpdate's.
        if self.tx.seq + 1 >= self.tx_limit {
            return Err(io::Error::other("TLS send key used up within a batch"));
        }
        out[at + HEADER + plain] = APPLICATION_DATA;
        self.seal_at(out, at, plain + 1)
    }

    /// Seals the record whose inner plaintext (content type included) is in
    /// place at `out[at + 5..][..inner]`: header before it, tag after it.
    fn seal_at(&mut self, out: &mut [u8], at: usize, inner: usize) -> io::Result<()> {
        let body = inner + TAG;
        let header = [APPLICATION_DATA, 0x03, 0x03, (body >> 8) as u8, body as u8];
        let rec = &mut out[at..at + HEADER + body];
        rec[..HEADER].copy_from_slice(&header);
        let (inner, tag_room) = rec[HEADER..].split_at_mut(inner);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(self.tx.nonce(), Aad::from(header), inner)
            .map_err(|_| io::Error::other("TLS record sealing failed"))?;
        tag_room.copy_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(())
    }

    /// Seals a fatal alert (before the connection is closed for an error).
    pub(super) fn seal_fatal_alert(
        &mut self,
        alert: u8,
        out: &mut Vec<u8>,
        len: &mut usize,
    ) -> io::Result<()> {
        self.seal(ALERT, &[2, alert], out, len)
    }

    /// Seals a close_notify alert.
    pub(super) fn seal_close_notify(
        &mut self,
        out: &mut Vec<u8>,
        len: &mut usize,
    ) -> io::Result<()> {
        self.seal(ALERT, &[1, CLOSE_NOTIFY], out, len)
    }

    /// Seals one record, after our KeyUpdate when one is due.
    fn seal(
        &mut self,
        typ: u8,
        piece: &[u8],
        out: &mut Vec<u8>,
        len: &mut usize,
    ) -> io::Result<()> {
        // Our KeyUpdate takes the last sequence number the key may seal
        // (as rustls's): at most `tx_limit` records under one key.
        if self.update_requested || (self.tx.seq > 0 && self.tx.seq + 1 >= self.tx_limit) {
            self.send_key_update(out, len)?;
        }
        debug_assert!(piece.len() <= MAX_PLAINTEXT);
        self.seal_inner(piece, &[typ], out, len)
    }

    /// Seals `inner` verbatim as one record's inner plaintext (content type
    /// and padding included), for tests of what a peer may send.
    #[cfg(all(test, feature = "self-signed"))]
    pub(super) fn seal_raw(&mut self, inner: &[u8], out: &mut Vec<u8>, len: &mut usize) {
        let (piece, last) = inner.split_at(inner.len() - 1);
        self.seal_inner(piece, last, out, len).unwrap();
    }

    /// Seals `piece` followed by `tail` (the content type, and any padding)
    /// as one record.
    fn seal_inner(
        &mut self,
        piece: &[u8],
        tail: &[u8],
        out: &mut Vec<u8>,
        len: &mut usize,
    ) -> io::Result<()> {
        let inner = piece.len() + tail.len();
        ensure_room(out, *len, HEADER + inner + TAG);
        let at = *len + HEADER;
        out[at..at + piece.len()].copy_from_slice(piece);
        out[at + piece.len()..at + inner].copy_from_slice(tail);
        self.seal_at(out, *len, inner)?;
        *len += HEADER + inner + TAG;
        Ok(())
    }

    /// Opens every complete record at the front of `input`, in place;
    /// application data goes to `plain`. Returns the bytes consumed and
    /// whether close_notify came (everything after it is ignored).
    pub(super) fn open(
        &mut self,
        input: &mut [u8],
        plain: &mut Plain,
    ) -> io::Result<(usize, bool)> {
        let mut used = 0;
        loop {
            let rest = &mut input[used..];
            if rest.len() < HEADER {
                return Ok((used, false));
            }
            let header: [u8; HEADER] = rest[..HEADER].try_into().expect("five bytes");
            let body = u16::from_be_bytes([header[3], header[4]]) as usize;
            match header[0] {
                APPLICATION_DATA => {}
                CHANGE_CIPHER_SPEC => {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        "TLS ChangeCipherSpec after the handshake",
                    ));
                }
                _ => {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        "unexpected TLS record type after the handshake",
                    ));
                }
            }
            if body > MAX_CIPHERTEXT {
                return Err(fatal(
                    RECORD_OVERFLOW,
                    "TLS record too large (record_overflow)",
                ));
            }
            if body < 1 + TAG {
                return Err(fatal(DECODE_ERROR, "TLS record too short"));
            }
            if rest.len() < HEADER + body {
                return Ok((used, false));
            }
            if self.rx.seq == u64::MAX {
                return Err(invalid("TLS receive sequence numbers exhausted"));
            }
            let nonce = self.rx.nonce();
            let inner = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(header), &mut rest[HEADER..HEADER + body])
                .map_err(|_| {
                    fatal(
                        BAD_RECORD_MAC,
                        "TLS record failed authentication (bad_record_mac)",
                    )
                })?;
            self.rx.seq += 1;
            used += HEADER + body;
            // TLSInnerPlaintext, padding included, is 2^14 + 1 bytes at most.
            if inner.len() > MAX_PLAINTEXT + 1 {
                return Err(fatal(
                    RECORD_OVERFLOW,
                    "TLS record too large (record_overflow)",
                ));
            }
            // Content type: the last non-zero byte (zeros after it are padding).
            let Some(at) = inner.iter().rposition(|&b| b != 0) else {
                return Err(fatal(
                    UNEXPECTED_MESSAGE,
                    "TLS record without a content type",
                ));
            };
            let (content, typ) = (&inner[..at], inner[at]);
            if content.len() > MAX_PLAINTEXT {
                return Err(fatal(
                    RECORD_OVERFLOW,
                    "TLS record too large (record_overflow)",
                ));
            }
            if typ != HANDSHAKE && !self.handshake.is_empty() {
                return Err(fatal(
                    UNEXPECTED_MESSAGE,
                    "TLS record inside a fragmented handshake message",
                ));
            }
            match typ {
                APPLICATION_DATA if content.is_empty() => self.count_idle()?,
                APPLICATION_DATA => {
                    self.idle_records = 0;
                    plain.push_record(content);
                }
                ALERT => match content {
                    [_, CLOSE_NOTIFY] => return Ok((input.len(), true)),
                    [_, USER_CANCELED] => {
                        self.count_idle()?;
                        self.warning_alerts += 1;
                        if self.warning_alerts > MAX_WARNING_ALERTS {
                            return Err(fatal(UNEXPECTED_MESSAGE, "too many TLS warning alerts"));
                        }
                    }
                    [_, d] => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the peer sent TLS alert {d}"),
                        ));
                    }
                    _ => return Err(fatal(DECODE_ERROR, "malformed TLS alert")),
                },
                HANDSHAKE => self.on_handshake(content)?,
                _ => {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        "unexpected TLS content type after the handshake",
                    ));
                }
            }
        }
    }

    /// One more record (or KeyUpdate) without application data. Session
    /// tickets do not count, as with rustls.
    fn count_idle(&mut self) -> io::Result<()> {
        self.idle_records += 1;
        if self.idle_records > MAX_IDLE_RECORDS {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "too many TLS records without application data",
            ));
        }
        Ok(())
    }

    /// Post-handshake messages: NewSessionTicket (to rustls's session store)
    /// and KeyUpdate.
    fn on_handshake(&mut self, content: &[u8]) -> io::Result<()> {
        if content.is_empty() {
            return Err(fatal(UNEXPECTED_MESSAGE, "empty TLS handshake record"));
        }
        let mut held = std::mem::take(&mut self.handshake);
        let mut msgs = content;
        if !held.is_empty() {
            held.extend_from_slice(content);
            msgs = &held;
        }
        let mut used = 0;
        while let [typ, a, b, c, rest @ ..] = &msgs[used..] {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(fatal(DECODE_ERROR, "TLS handshake message too large"));
            }
            if rest.len() < len {
                break;
            }
            let body = &rest[..len];
            used += 4 + len;
            match *typ {
                NEW_SESSION_TICKET => match &mut self.kernel {
                    Kernel::Client(k) => k.handle_new_session_ticket(body).map_err(from_rustls)?,
                    Kernel::Server(_) => {
                        return Err(fatal(
                            UNEXPECTED_MESSAGE,
                            "TLS NewSessionTicket sent to a server",
                        ));
                    }
                },
                KEY_UPDATE => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(fatal(ILLEGAL_PARAMETER, "malformed TLS KeyUpdate")),
                    };
                    // A key change must end its record (RFC 8446 section 5.1).
                    if used != msgs.len() {
                        return Err(fatal(
                            UNEXPECTED_MESSAGE,
                            "TLS KeyUpdate not at the end of its record",
                        ));
                    }
                    self.count_idle()?;
                    self.rx = Direction::new(self.kernel.update_rx().map_err(from_rustls)?)?;
                    self.update_requested |= requested;
                }
                _ => {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        "unexpected TLS handshake message after the handshake",
                    ));
                }
            }
        }
        let left = &msgs[used..];
        if !left.is_empty() {
            if left.len() > 4 + MAX_HANDSHAKE_MESSAGE {
                return Err(fatal(DECODE_ERROR, "TLS handshake message too large"));
            }
            self.handshake = left.to_vec();
        }
        Ok(())
    }

    /// Holds a buffer a quiet connection would not.
    pub(super) fn holds_memory(&self) -> bool {
        self.handshake.capacity() > 0
    }
}
