//! The HTTP range parsers of `loaves-http`: `parse_range` (a request's
//! `Range` header, answered by the origin and the SDK's player endpoint)
//! and `parse_content_range` (a CDN answer's `Content-Range`, read by the
//! SDK). Never a panic; a partial answer lies inside the body and says so
//! in its own `Content-Range`, which parses back to the same bytes; the
//! header `bytes=a-b` written from any range inside the body resolves to
//! exactly that range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loaves_http::{RangeRequest, parse_content_range, parse_range};

fuzz_target!(|data: &[u8]| {
    // Eight bytes of body length (small ones more often), then the header.
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let mut len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if len & 1 == 0 {
        len >>= 48;
    }
    let header = String::from_utf8_lossy(header);

    if let Some(range) = parse_content_range(&header) {
        assert!(range.start < range.end, "{header:?}: {range:?}");
    }
    match parse_range(Some(&header), len) {
        RangeRequest::Full => {}
        RangeRequest::Unsatisfiable => {}
        RangeRequest::Partial(range) => {
            assert!(range.first() <= range.last() && range.last() < len);
            assert_eq!(range.len(), range.last() - range.first() + 1);
            assert_eq!(range.to_range(), range.first()..range.last() + 1);
            let answer = range.content_range(len);
            assert_eq!(parse_content_range(&answer), Some(range.to_range()));
            if let Some(slice) = range.to_usize_range() {
                assert_eq!(slice.len() as u64, range.len());
            }
        }
    }

    // A range the fuzzer picks inside the body, written as a header.
    if len > 0 {
        let a = u64::from_le_bytes(*b"rangefzz") ^ data.len() as u64;
        let first = a % len;
        let last = first + (len - first - 1).min(u64::from(data[0]) << 8);
        let written = format!("bytes={first}-{last}");
        match parse_range(Some(&written), len) {
            RangeRequest::Partial(range) => {
                assert_eq!((range.first(), range.last()), (first, last), "{written}");
            }
            other => panic!("{written} on {len} bytes: {other:?}"),
        }
    }
});
