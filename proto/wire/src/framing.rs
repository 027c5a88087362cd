//! Length-delimited frames on async byte streams (QUIC streams), with a
//! timeout on every read and write.
//!
//! The frame layout, its size limits and the sans-I/O decoder are the
//! contract and live in [`loaves_proto::framing`] (re-exported here); this
//! module is the tokio side of it.

use std::time::Duration;

pub use loaves_proto::framing::*;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
