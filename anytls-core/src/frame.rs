//! The session frame layer: a 7-byte header (`cmd`, `stream_id`, `length`) and
//! `length` bytes of data.
//!
//! [`FrameDecoder`] takes a growing [`BytesMut`] filled by the caller and splits
//! frames out of it without copying their data. The `encode_*` functions append
//! frames to a caller-owned buffer; [`encode_data`] splits payloads longer than
//! [`MAX_FRAME_DATA`] into several PSH frames.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::FrameError;

/// Length of the frame header: command (1), stream id (4), data length (2).
pub const HEADER_LEN: usize = 7;
/// Largest data length a single frame can carry.
pub const MAX_FRAME_DATA: usize = u16::MAX as usize;

/// A stream identifier. Chosen by the client, starting at 1; 0 is the session itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct StreamId(pub u32);

impl StreamId {
    /// The session-level id carried by Settings, Alert, padding and heartbeats.
    pub const SESSION: StreamId = StreamId(0);
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A frame command. Values 11..=255 are kept as [`Command::Unknown`] so that a
/// frame can be skipped and re-encoded unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Command {
    /// 0: padding; the receiver discards the data.
    Waste,
    /// 1: open a stream (client to server).
    Syn,
    /// 2: stream data.
    Psh,
    /// 3: the stream is closed (a full close, not a half-close).
    Fin,
    /// 4: client settings text; must be the client's first frame.
    Settings,
    /// 5: fatal warning text; the session ends.
    Alert,
    /// 6: the server's padding scheme text.
    UpdatePaddingScheme,
    /// 7 (v2): outcome of the server's outbound connect; data = error text.
    SynAck,
    /// 8 (v2): the peer must answer with a HeartResponse.
    HeartRequest,
    /// 9 (v2): answer to a HeartRequest, echoing its stream id.
    HeartResponse,
    /// 10 (v2): server settings text (`v=2`).
    ServerSettings,
    /// Any other value. Holding a known value (0..=10) here encodes as that command.
    Unknown(u8),
}

impl Command {
    /// The wire value of this command.
    pub const fn to_u8(self) -> u8 {
        match self {
            Command::Waste => 0,
            Command::Syn => 1,
            Command::Psh => 2,
            Command::Fin => 3,
            Command::Settings => 4,
            Command::Alert => 5,
            Command::UpdatePaddingScheme => 6,
            Command::SynAck => 7,
            Command::HeartRequest => 8,
            Command::HeartResponse => 9,
            Command::ServerSettings => 10,
            Command::Unknown(v) => v,
        }
    }

    /// The command for a wire value.
    pub const fn from_u8(v: u8) -> Command {
        match v {
            0 => Command::Waste,
            1 => Command::Syn,
            2 => Command::Psh,
            3 => Command::Fin,
            4 => Command::Settings,
            5 => Command::Alert,
            6 => Command::UpdatePaddingScheme,
            7 => Command::SynAck,
            8 => Command::HeartRequest,
            9 => Command::HeartResponse,
            10 => Command::ServerSettings,
            v => Command::Unknown(v),
        }
    }

    /// Whether a sender may attach data to this command. Reference receivers do
    /// not consume data of the others, so sending any would desynchronise them.
    pub const fn may_carry_data(self) -> bool {
        matches!(
            self,
            Command::Waste
                | Command::Psh
                | Command::Settings
                | Command::Alert
                | Command::UpdatePaddingScheme
                | Command::SynAck
                | Command::ServerSettings
        )
    }
}

impl From<u8> for Command {
    fn from(v: u8) -> Self {
        Command::from_u8(v)
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> Self {
        c.to_u8()
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// The command.
    pub cmd: Command,
    /// The stream the frame belongs to (0 = session).
    pub stream_id: StreamId,
    /// Number of data bytes that follow the header.
    pub len: u16,
}

impl FrameHeader {
    /// Parses a header from the first [`HEADER_LEN`] bytes, if there are that many.
    pub fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            cmd: Command::from_u8(h[0]),
            stream_id: StreamId(u32::from_be_bytes([h[1], h[2], h[3], h[4]])),
            len: u16::from_be_bytes([h[5], h[6]]),
        })
    }

    /// Appends the 7 header bytes to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.cmd.to_u8());
        buf.put_u32(self.stream_id.0);
        buf.put_u16(self.len);
    }
}

/// A whole frame. `data` shares the receive buffer; it is never copied.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub cmd: Command,
    /// The stream the frame belongs to.
    pub stream_id: StreamId,
    /// The frame data (at most [`MAX_FRAME_DATA`] bytes for a frame that can be encoded).
    pub data: Bytes,
}

impl fmt::Debug for Frame {
    // Data is shown by length only: it may be user traffic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("cmd", &self.cmd)
            .field("stream_id", &self.stream_id.0)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl Frame {
    /// A frame without data.
    pub fn empty(cmd: Command, stream_id: StreamId) -> Frame {
        Frame {
            cmd,
            stream_id,
            data: Bytes::new(),
        }
    }

    /// A frame with data.
    pub fn new(cmd: Command, stream_id: StreamId, data: impl Into<Bytes>) -> Frame {
        Frame {
            cmd,
            stream_id,
            data: data.into(),
        }
    }

    /// Encoded length: header plus data.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    /// Appends the frame to `buf`. Fails if the data does not fit one frame.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), FrameError> {
        encode_frame(buf, self.cmd, self.stream_id, &self.data)
    }
}

/// Appends one frame to `buf`. Fails if `data` is longer than [`MAX_FRAME_DATA`].
pub fn encode_frame(
    buf: &mut impl BufMut,
    cmd: Command,
    stream_id: StreamId,
    data: &[u8],
) -> Result<(), FrameError> {
    let len = u16::try_from(data.len()).map_err(|_| FrameError::DataTooLong {
        cmd,
        len: data.len(),
    })?;
    FrameHeader {
        cmd,
        stream_id,
        len,
    }
    .encode(buf);
    buf.put_slice(data);
    Ok(())
}

/// Appends `data` as PSH frames for `stream_id`, split at [`MAX_FRAME_DATA`].
/// Empty data produces no frame (an empty PSH means nothing to any receiver).
/// Returns the number of bytes appended.
pub fn encode_data(buf: &mut impl BufMut, stream_id: StreamId, data: &[u8]) -> usize {
    let mut written = 0;
    for chunk in data.chunks(MAX_FRAME_DATA) {
        FrameHeader {
            cmd: Command::Psh,
            stream_id,
            // chunks() never yields more than MAX_FRAME_DATA bytes.
            len: chunk.len() as u16,
        }
        .encode(buf);
        buf.put_slice(chunk);
        written += HEADER_LEN + chunk.len();
    }
    written
}

/// Encoded length of `len` data bytes sent with [`encode_data`].
pub fn data_encoded_len(len: usize) -> usize {
    len + len.div_ceil(MAX_FRAME_DATA) * HEADER_LEN
}

/// Per-command caps on received data lengths, checked as soon as a header
/// arrives, before any of its data is buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameLimits {
    /// Settings and ServerSettings text.
    pub max_settings: usize,
    /// Alert text.
    pub max_alert: usize,
    /// UpdatePaddingScheme text.
    pub max_padding_scheme: usize,
    /// SYNACK error text.
    pub max_synack_message: usize,
}

impl FrameLimits {
    /// No caps beyond the 16-bit length field.
    pub const UNLIMITED: FrameLimits = FrameLimits {
        max_settings: MAX_FRAME_DATA,
        max_alert: MAX_FRAME_DATA,
        max_padding_scheme: MAX_FRAME_DATA,
        max_synack_message: MAX_FRAME_DATA,
    };

    /// The cap for `cmd`. PSH, Waste and unknown commands may always use the full
    /// 16-bit length; heartbeats, SYN and FIN are not capped either, because their
    /// data (never sent by well-behaved peers) is consumed and dropped.
    pub fn max_for(&self, cmd: Command) -> usize {
        match cmd {
            Command::Settings | Command::ServerSettings => self.max_settings,
            Command::Alert => self.max_alert,
            Command::UpdatePaddingScheme => self.max_padding_scheme,
            Command::SynAck => self.max_synack_message,
            _ => MAX_FRAME_DATA,
        }
    }
}

impl Default for FrameLimits {
    /// Client Settings text is capped at 4 KiB (a real one is under 100 bytes).
    /// The other control texts may use the whole frame: the reference accepts
    /// any size, and refusing a large padding scheme or SYNACK message would
    /// kill sessions that every Go client keeps. Memory stays bounded either
    /// way: one frame is at most 64 KiB.
    fn default() -> Self {
        FrameLimits {
            max_settings: 4096,
            max_alert: MAX_FRAME_DATA,
            max_padding_scheme: MAX_FRAME_DATA,
            max_synack_message: MAX_FRAME_DATA,
        }
    }
}

/// Incremental frame decoder.
///
/// The caller appends received bytes to a [`BytesMut`] and calls
/// [`decode`](Self::decode) until it returns `Ok(None)`. Input may be split at any
/// byte. Frame data is split off the buffer without copying. The decoder never
/// holds more than one header; the caller's buffer never needs more than
/// `HEADER_LEN + 65535` bytes to make progress.
#[derive(Debug, Default, Clone)]
pub struct FrameDecoder {
    header: Option<FrameHeader>,
    limits: FrameLimits,
}

impl FrameDecoder {
    /// A decoder with the given caps.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            header: None,
            limits,
        }
    }

    /// Decodes the next frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed. A header that breaks the
    /// limits gives an error; the error repeats on every later call (the session is
    /// expected to close).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                let Some(h) = FrameHeader::parse(buf) else {
                    return Ok(None);
                };
                buf.advance(HEADER_LEN);
                self.header = Some(h);
                h
            }
        };
        let len = usize::from(header.len);
        let max = self.limits.max_for(header.cmd);
        if len > max {
            return Err(FrameError::TooLarge {
                cmd: header.cmd,
                len,
                max,
            });
        }
        if buf.len() < len {
            return Ok(None);
        }
        self.header = None;
        let data = if len == 0 {
            Bytes::new()
        } else {
            buf.split_to(len).freeze()
        };
        Ok(Some(Frame {
            cmd: header.cmd,
            stream_id: header.stream_id,
            data,
        }))
    }

    /// The header of a frame whose data is still incomplete, if any. After
    /// [`take_partial_data`](Self::take_partial_data), its `len` is the data
    /// still to come, not the frame's whole length.
    pub fn pending_header(&self) -> Option<&FrameHeader> {
        self.header.as_ref()
    }

    /// Streaming PSH data: after [`decode`](Self::decode) returned `None` with a
    /// PSH header pending and part of its data in `buf`, takes that part (all
    /// of `buf`, at least one byte); the frame's remaining length shrinks
    /// accordingly. Stream data then never waits for (or is copied into) a
    /// whole frame. `None` for other frames, or with nothing buffered.
    pub fn take_partial_data(&mut self, buf: &mut BytesMut) -> Option<(StreamId, Bytes)> {
        let h = self.header.as_mut()?;
        let n = buf.len();
        if h.cmd != Command::Psh || n == 0 || n >= usize::from(h.len) {
            return None;
        }
        // n < h.len <= u16::MAX.
        h.len -= n as u16;
        Some((h.stream_id, buf.split().freeze()))
    }

    /// How many more bytes `buf` needs (beyond `buffered`) before the next call to
    /// [`decode`](Self::decode) can yield a frame. Useful to size reads.
    pub fn bytes_needed(&self, buffered: usize) -> usize {
        match self.header {
            Some(h) => usize::from(h.len).saturating_sub(buffered),
            None => HEADER_LEN.saturating_sub(buffered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame) -> String {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        hex::encode(b)
    }

    fn sid(n: u32) -> StreamId {
        StreamId(n)
    }

    // Section 11.3 vectors that need no other codec.
    #[test]
    fn vectors_11_3_frames() {
        assert_eq!(enc(&Frame::empty(Command::Syn, sid(1))), "01000000010000");
        assert_eq!(
            enc(&Frame::new(Command::Psh, sid(1), &b"hello"[..])),
            "0200000001000568656c6c6f"
        );
        assert_eq!(enc(&Frame::empty(Command::Fin, sid(1))), "03000000010000");
        assert_eq!(
            enc(&Frame::empty(Command::SynAck, sid(2))),
            "07000000020000"
        );
        let msg = b"dial tcp 127.0.0.1:9: connect: connection refused";
        assert_eq!(msg.len(), 49);
        assert_eq!(
            enc(&Frame::new(Command::SynAck, sid(2), &msg[..])),
            "070000000200316469616c20746370203132372e302e302e313a393a20636f6e6e6563743a20636f6e6e656374696f6e2072656675736564"
        );
        assert_eq!(
            enc(&Frame::new(Command::ServerSettings, sid(0), &b"v=2"[..])),
            "0a000000000003763d32"
        );
        assert_eq!(
            enc(&Frame::empty(Command::HeartRequest, sid(0))),
            "08000000000000"
        );
        assert_eq!(
            enc(&Frame::empty(Command::HeartResponse, sid(0))),
            "09000000000000"
        );
        let alert = b"client did not send its settings";
        assert_eq!(alert.len(), 32);
        assert_eq!(
            enc(&Frame::new(Command::Alert, sid(0), &alert[..])),
            "05000000000020636c69656e7420646964206e6f742073656e64206974732073657474696e6773"
        );
        assert_eq!(
            enc(&Frame::new(Command::Waste, sid(0), vec![0u8; 5])),
            "000000000000050000000000"
        );
    }

    #[test]
    fn all_commands_round_trip_through_u8() {
        for v in 0..=255u8 {
            assert_eq!(Command::from_u8(v).to_u8(), v);
        }
        assert_eq!(Command::from_u8(10), Command::ServerSettings);
        assert_eq!(Command::from_u8(11), Command::Unknown(11));
    }

    #[test]
    fn long_data_is_split_into_psh_frames() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut b = BytesMut::new();
        let n = encode_data(&mut b, sid(3), &data);
        assert_eq!(n, b.len());
        assert_eq!(n, data_encoded_len(data.len()));
        let mut dec = FrameDecoder::new(FrameLimits::UNLIMITED);
        let mut got = Vec::new();
        let mut lens = Vec::new();
        while let Some(f) = dec.decode(&mut b).unwrap() {
            assert_eq!(f.cmd, Command::Psh);
            assert_eq!(f.stream_id, sid(3));
            lens.push(f.data.len());
            got.extend_from_slice(&f.data);
        }
        assert_eq!(lens, vec![65535, 65535, 65535, 3395]);
        assert_eq!(got, data);
        assert_eq!(encode_data(&mut b, sid(3), &[]), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn oversized_control_frame_is_refused_at_the_header() {
        let mut b = BytesMut::new();
        FrameHeader {
            cmd: Command::Settings,
            stream_id: sid(0),
            len: 5000,
        }
        .encode(&mut b);
        let mut dec = FrameDecoder::default();
        let err = dec.decode(&mut b).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                cmd: Command::Settings,
                len: 5000,
                max: 4096
            }
        );
        // Sticky.
        assert_eq!(dec.decode(&mut b).unwrap_err(), err);
    }

    #[test]
    fn encode_refuses_data_over_65535() {
        let mut b = BytesMut::new();
        let err = encode_frame(&mut b, Command::Alert, sid(0), &vec![0; 65536]).unwrap_err();
        assert_eq!(
            err,
            FrameError::DataTooLong {
                cmd: Command::Alert,
                len: 65536
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn partial_psh_data_is_taken_as_it_arrives() {
        let mut dec = FrameDecoder::default();
        // PSH sid 1, 5 bytes "hello", of which "hel" arrived.
        let mut b = BytesMut::from(&hex::decode("0200000001000568656c").unwrap()[..]);
        assert_eq!(dec.decode(&mut b).unwrap(), None);
        let (id, part) = dec.take_partial_data(&mut b).unwrap();
        assert_eq!((id, &part[..]), (sid(1), &b"hel"[..]));
        assert!(b.is_empty());
        assert_eq!(dec.pending_header().unwrap().len, 2, "the rest to come");
        assert_eq!(dec.take_partial_data(&mut b), None, "nothing buffered");
        b.extend_from_slice(b"lo");
        // The whole rest is the frame's end: decoded as usual.
        assert_eq!(dec.take_partial_data(&mut b), None);
        let f = dec.decode(&mut b).unwrap().unwrap();
        assert_eq!((f.cmd, &f.data[..]), (Command::Psh, &b"lo"[..]));
        assert!(dec.pending_header().is_none());
        // Control frames are never taken in parts (Settings, 5 bytes, "v").
        let mut b = BytesMut::from(&hex::decode("0400000000000576").unwrap()[..]);
        assert_eq!(dec.decode(&mut b).unwrap(), None);
        assert_eq!(dec.take_partial_data(&mut b), None);
        assert_eq!(&b[..], b"v");
    }

    #[test]
    fn decoder_reports_bytes_needed() {
        let mut dec = FrameDecoder::default();
        let mut b = BytesMut::from(&hex::decode("0200000001000568656c").unwrap()[..]);
        assert_eq!(dec.bytes_needed(0), HEADER_LEN);
        assert_eq!(dec.decode(&mut b).unwrap(), None);
        assert_eq!(dec.pending_header().unwrap().len, 5);
        assert_eq!(dec.bytes_needed(b.len()), 2);
        b.extend_from_slice(b"lo");
        let f = dec.decode(&mut b).unwrap().unwrap();
        assert_eq!(&f.data[..], b"hello");
        assert!(format!("{f:?}").contains("data_len: 5"));
        assert!(!format!("{f:?}").contains("hello"));
    }
}
