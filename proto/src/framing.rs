//! Length-delimited frames on QUIC (or any byte) streams.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes
//! (the layout of `tokio_util`'s default `LengthDelimitedCodec`, so other
//! implementations find it familiar). Every reader states the largest frame it
//! accepts; a length prefix above it is refused *before* anything is
//! allocated, so a hostile peer cannot make us reserve the gigabytes it claims.
//! Every async read and write takes a timeout.

use std::io;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

fn checked_len(claimed: u32, max_frame_len: usize) -> Result<usize, FrameError> {
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

/// Reads one frame. `Ok(None)` means the stream ended cleanly before a new
/// frame started.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_len: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    tokio::time::timeout(timeout, read_frame_inner(reader, max_frame_len))
        .await
        .map_err(|_| FrameError::Timeout("read"))?
}

/// Reads the next frame of a long-lived stream: waits up to `idle` for the
/// frame to start (requests may be far apart), then up to `timeout` for
/// the rest of it (a peer that starts a frame must finish it promptly).
/// `Ok(None)` means the stream ended cleanly between frames; running out of
/// `idle` is [`FrameError::Timeout`]`("idle")`.
pub async fn read_next_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_len: usize,
    idle: Duration,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let filled = tokio::time::timeout(idle, reader.read(&mut prefix))
        .await
        .map_err(|_| FrameError::Timeout("idle"))??;
    if filled == 0 {
        return Ok(None);
    }
    tokio::time::timeout(timeout, read_rest(reader, prefix, filled, max_frame_len))
        .await
        .map_err(|_| FrameError::Timeout("read"))?
        .map(Some)
}

async fn read_frame_inner<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_len: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let filled = reader.read(&mut prefix).await?;
    if filled == 0 {
        return Ok(None);
    }
    read_rest(reader, prefix, filled, max_frame_len)
        .await
        .map(Some)
}

/// Completes a frame whose first `filled` (at least one) prefix bytes are
/// in `prefix`.
async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut prefix: [u8; LENGTH_PREFIX_LEN],
    mut filled: usize,
    max_frame_len: usize,
) -> Result<Vec<u8>, FrameError> {
    while filled < LENGTH_PREFIX_LEN {
        let read = reader.read(&mut prefix[filled..]).await?;
        if read == 0 {
            return Err(FrameError::Truncated {
                expected: LENGTH_PREFIX_LEN as u64,
                received: filled as u64,
            });
        }
        filled += read;
    }
    let payload_len = checked_len(u32::from_be_bytes(prefix), max_frame_len)?;
    // Only now, with the length known to be within the limit, allocate.
    let mut payload = vec![0u8; payload_len];
    let mut received = 0;
    while received < payload_len {
        let read = reader.read(&mut payload[received..]).await?;
        if read == 0 {
            return Err(FrameError::Truncated {
                expected: (LENGTH_PREFIX_LEN + payload_len) as u64,
                received: (LENGTH_PREFIX_LEN + received) as u64,
            });
        }
        received += read;
    }
    Ok(payload)
}

/// Reads one frame and decodes it as `M`. `Ok(None)` on a clean end of stream.
pub async fn read_message<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_len: usize,
    timeout: Duration,
) -> Result<Option<M>, FrameError> {
    match read_frame(reader, max_frame_len, timeout).await? {
        Some(payload) => Ok(Some(M::decode(payload.as_slice())?)),
        None => Ok(None),
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    max_frame_len: usize,
    timeout: Duration,
) -> Result<(), FrameError> {
    let frame = encode_frame(payload, max_frame_len)?;
    tokio::time::timeout(timeout, async {
        writer.write_all(&frame).await?;
        writer.flush().await
    })
    .await
    .map_err(|_| FrameError::Timeout("write"))?
    .map_err(FrameError::Io)
}

/// Encodes `message` and writes it as one frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &impl Message,
    max_frame_len: usize,
    timeout: Duration,
) -> Result<(), FrameError> {
    write_frame(writer, &message.encode_to_vec(), max_frame_len, timeout).await
}
