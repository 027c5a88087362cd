#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Framing: round trips, size limits enforced before allocation, truncation,
//! timeouts, and clean end of stream.

use std::alloc::System;
use std::time::Duration;

use cap::Cap;
use loaves_proto::pb;
use loaves_wire::framing::{
    DEFAULT_MAX_FRAME_LEN, FrameError, decode_frame, encode_frame, read_frame, read_message,
    read_next_frame, write_message,
};
use tokio::io::AsyncWriteExt;

// Counts every allocation of this test binary, so the oversize test can prove
// the claimed size is never reserved.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn messages_round_trip_over_a_stream() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    let request = pb::SegmentRequest {
        rendition: "720p".into(),
        sequence: 42,
        range: Some(pb::ByteRange { start: 10, end: 20 }),
        ..Default::default()
    };
    let sent = request.clone();
    let writer = tokio::spawn(async move {
        write_message(&mut client, &sent, DEFAULT_MAX_FRAME_LEN, TIMEOUT)
            .await
            .unwrap();
        write_message(&mut client, &sent, DEFAULT_MAX_FRAME_LEN, TIMEOUT)
            .await
            .unwrap();
        client.shutdown().await.unwrap();
    });
    for _ in 0..2 {
        let received: pb::SegmentRequest =
            read_message(&mut server, DEFAULT_MAX_FRAME_LEN, TIMEOUT)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(received, request);
    }
    let end: Option<pb::SegmentRequest> = read_message(&mut server, DEFAULT_MAX_FRAME_LEN, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(end, None, "a clean end of stream is not an error");
    writer.await.unwrap();
}

#[tokio::test]
async fn oversize_frame_is_refused_without_allocating_its_claimed_size() {
    // A peer claims a 4 GiB frame and sends only the prefix.
    let mut stream: &[u8] = &u32::MAX.to_be_bytes();
    let before = ALLOCATOR.allocated();
    // Allow this test's own bookkeeping, but far less than the claim: the
    // allocation would abort the process if attempted.
    ALLOCATOR.set_limit(before + (8 << 20)).unwrap();
    let result = read_frame(&mut stream, DEFAULT_MAX_FRAME_LEN, TIMEOUT).await;
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    match result {
        Err(FrameError::TooLarge { claimed, max }) => {
            assert_eq!(claimed, u64::from(u32::MAX));
            assert_eq!(max, DEFAULT_MAX_FRAME_LEN);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Just over the limit is refused too, and just at it is accepted.
    let over = (DEFAULT_MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert!(matches!(
        read_frame(&mut &over[..], DEFAULT_MAX_FRAME_LEN, TIMEOUT).await,
        Err(FrameError::TooLarge { .. })
    ));
    let at_limit = encode_frame(&vec![7; DEFAULT_MAX_FRAME_LEN], DEFAULT_MAX_FRAME_LEN).unwrap();
    let payload = read_frame(&mut at_limit.as_slice(), DEFAULT_MAX_FRAME_LEN, TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload.len(), DEFAULT_MAX_FRAME_LEN);
}

#[test]
fn writers_refuse_oversize_payloads() {
    assert!(matches!(
        encode_frame(&[0; 101], 100),
        Err(FrameError::TooLarge {
            claimed: 101,
            max: 100
        })
    ));
}

#[tokio::test]
async fn truncated_frames_are_reported() {
    let frame = encode_frame(b"hello world", 1024).unwrap();
    for cut in 1..frame.len() {
        let result = read_frame(&mut &frame[..cut], 1024, TIMEOUT).await;
        assert!(
            matches!(result, Err(FrameError::Truncated { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[tokio::test]
async fn garbage_payload_is_a_decode_error() {
    let frame = encode_frame(&[0xff; 8], 1024).unwrap();
    let result: Result<Option<pb::SegmentRequest>, _> =
        read_message(&mut frame.as_slice(), 1024, TIMEOUT).await;
    assert!(matches!(result, Err(FrameError::Decode(_))), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out() {
    // The writer half stays open and sends half a prefix, then nothing.
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&[0, 0]).await.unwrap();
    let result = read_frame(&mut server, 1024, Duration::from_secs(10)).await;
    assert!(
        matches!(result, Err(FrameError::Timeout("read"))),
        "{result:?}"
    );
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn write_to_a_reader_that_never_reads_times_out() {
    let (mut client, _server) = tokio::io::duplex(16);
    let result =
        loaves_wire::framing::write_frame(&mut client, &[1; 1000], 4096, Duration::from_secs(3))
            .await;
    assert!(
        matches!(result, Err(FrameError::Timeout("write"))),
        "{result:?}"
    );
}

#[test]
fn sans_io_decoder_needs_whole_frames() {
    let mut buffer = encode_frame(b"abc", 16).unwrap();
    buffer.extend(encode_frame(b"", 16).unwrap());
    for cut in 0..7 {
        assert_eq!(decode_frame(&buffer[..cut], 16).unwrap(), None, "cut {cut}");
    }
    let (payload, used) = decode_frame(&buffer, 16).unwrap().unwrap();
    assert_eq!((payload, used), (&b"abc"[..], 7));
    let (payload, used) = decode_frame(&buffer[used..], 16).unwrap().unwrap();
    assert_eq!((payload, used), (&b""[..], 4));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 17], 16),
        Err(FrameError::TooLarge {
            claimed: 17,
            max: 16
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn next_frame_waits_idle_then_bounds_the_frame() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let idle = Duration::from_secs(100);
    let timeout = Duration::from_secs(1);
    // Nothing at all: the idle bound applies.
    let result = read_next_frame(&mut server, 1024, idle, timeout).await;
    assert!(
        matches!(result, Err(FrameError::Timeout("idle"))),
        "{result:?}"
    );
    // A whole frame arrives within the idle bound.
    let frame = encode_frame(b"ping", 1024).unwrap();
    client.write_all(&frame).await.unwrap();
    let payload = read_next_frame(&mut server, 1024, idle, timeout)
        .await
        .unwrap();
    assert_eq!(payload.as_deref(), Some(&b"ping"[..]));
    // A frame that starts but stalls: the (shorter) frame bound applies.
    client.write_all(&frame[..6]).await.unwrap();
    let result = read_next_frame(&mut server, 1024, idle, timeout).await;
    assert!(
        matches!(result, Err(FrameError::Timeout("read"))),
        "{result:?}"
    );
    // Too large a prefix is refused at once.
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let result = read_next_frame(&mut server, 1024, idle, timeout).await;
    assert!(
        matches!(result, Err(FrameError::TooLarge { .. })),
        "{result:?}"
    );
    // A clean end between frames.
    drop(client);
    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    let result = read_next_frame(&mut server, 1024, idle, timeout).await;
    assert!(matches!(result, Ok(None)), "{result:?}");
}
