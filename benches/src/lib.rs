//! Shared inputs for the anytls-rs benchmarks.

#![warn(missing_docs)]

pub mod procs;

use anytls_core::StreamId;
use anytls_core::frame::encode_data;
use bytes::BytesMut;

/// Size of the PSH frames the codec benchmarks use.
pub const FRAME_DATA: usize = 16 * 1024;

/// `count` PSH frames of [`FRAME_DATA`] bytes each, encoded back to back.
pub fn psh_stream(count: usize) -> BytesMut {
    let payload: Vec<u8> = (0..FRAME_DATA).map(|i| i as u8).collect();
    let mut buf = BytesMut::with_capacity(count * (FRAME_DATA + 7));
    for _ in 0..count {
        encode_data(&mut buf, StreamId(1), &payload);
    }
    buf
}
