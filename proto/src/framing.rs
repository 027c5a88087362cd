//! Length-delimited frames on QUIC (or any byte) streams.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes
//! (the layout of `tokio_util`'s default `LengthDelimitedCodec`, so other
//! implementations find it familiar). Every reader states the largest frame it
//! accepts; a length prefix above it is refused *before* anything is
//! allocated, so a hostile peer cannot make us reserve the gigabytes it claims.
//! This is the sans-I/O side; the async reads and writes, each with a
//! timeout, are `loaves_wire::framing`.

use std::io;

use prost::Message;

/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Default largest control frame (announces, requests, headers): 64 KiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix (or the payload to write) exceeds the limit.
    #[error("frame of {claimed} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length claimed by the prefix (or of the payload to write).
        claimed: u64,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({received} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame needed (prefix included).
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// The read or write did not complete in time.
    #[error("frame {0} timed out")]
    Timeout(&'static str),
    /// The payload is not the expected protobuf message.
    #[error("malformed frame payload: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The underlying stream failed.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
}

/// Sans-I/O decoding of one frame at the start of `buffer`.
///
/// Returns `Ok(None)` when more bytes are needed, or the payload and the
/// number of bytes the frame used. Never allocates.
pub fn decode_frame(
    buffer: &[u8],
    max_frame_len: usize,
) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(prefix) = buffer.get(..LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    let mut length = [0u8; LENGTH_PREFIX_LEN];
    length.copy_from_slice(prefix);
    let claimed = u32::from_be_bytes(length);
    let payload_len = checked_len(claimed, max_frame_len)?;
    let end = LENGTH_PREFIX_LEN + payload_len;
    Ok(buffer
        .get(LENGTH_PREFIX_LEN..end)
        .map(|payload| (payload, end)))
}

/// The payload length a prefix claims, if it is within `max_frame_len`.
pub fn checked_len(claimed: u32, max_frame_len: usize) -> Result<usize, FrameError> {
    match usize::try_from(claimed) {
        Ok(len) if len <= max_frame_len => Ok(len),
        _ => Err(FrameError::TooLarge {
            claimed: u64::from(claimed),
            max: max_frame_len,
        }),
    }
}

/// Encodes one frame around `payload`.
pub fn encode_frame(payload: &[u8], max_frame_len: usize) -> Result<Vec<u8>, FrameError> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= max_frame_len)
        .ok_or(FrameError::TooLarge {
            claimed: payload.len() as u64,
            max: max_frame_len,
        })?;
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_LEN + payload.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Encodes a protobuf message as one frame.
pub fn encode_message(message: &impl Message, max_frame_len: usize) -> Result<Vec<u8>, FrameError> {
    encode_frame(&message.encode_to_vec(), max_frame_len)
}
