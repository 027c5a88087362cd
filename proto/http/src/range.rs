//! The one HTTP `Range` parser (RFC 9110 §14): a single byte range,
//! `bytes=a-b`, `bytes=a-` or `bytes=-n`, resolved against the length of
//! the representation.
//!
//! Every surface that answers byte ranges (the origin, the SDK's local
//! player endpoint) uses this, so they answer the same header the same way.
//! The arithmetic never overflows: positions are parsed saturating at
//! `u64::MAX`, and the inclusive last position is clamped to the body
//! before anything is added to it, so `bytes=0-18446744073709551615` on a
//! 1000-byte body is `Partial(0..=999)`, not a wrapped `end + 1`.
//!
//! What is not a usable single byte range (no header, another unit,
//! several ranges, a malformed spec, `last < first`) is
//! [`RangeRequest::Full`]: RFC 9110 lets a server ignore such a header and
//! answer 200 with the whole body. [`RangeRequest::Unsatisfiable`] is for a
//! well-formed range that selects nothing (`first >= len`, `-0`, anything
//! on an empty body): answer 416 with `Content-Range: bytes */len`
//! ([`unsatisfied_content_range`]).

use std::fmt;
use std::ops::Range;

/// A non-empty byte range inside a body: `first..=last`, `last < len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    first: u64,
    last: u64,
}

impl ByteRange {
    /// First byte position.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Last byte position (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Number of bytes; at least 1.
    pub fn len(&self) -> u64 {
        // last < body length <= u64::MAX, so this cannot overflow.
        self.last - self.first + 1
    }

    /// Always false: a `ByteRange` holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `first..last + 1`, for slicing. `last + 1` is at most the body
    /// length, so it cannot overflow.
    pub fn to_range(&self) -> Range<u64> {
        self.first..self.last + 1
    }

    /// `first..last + 1` as `usize`, for slicing an in-memory body of
    /// `len` bytes (the range was resolved against that length, so the
    /// conversion cannot fail for it).
    pub fn to_usize_range(&self) -> Option<Range<usize>> {
        let start = usize::try_from(self.first).ok()?;
        let end = usize::try_from(self.last).ok()?.checked_add(1)?;
        Some(start..end)
    }

    /// The `Content-Range` value of a 206 answer over a body of `total`
    /// bytes: `bytes first-last/total`.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{total}", self.first, self.last)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// What a `Range` header asks of a body of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeRequest {
    /// No usable single byte range: answer 200 with the whole body.
    Full,
    /// Answer 206 with these bytes.
    Partial(ByteRange),
    /// A valid range outside the body: answer 416 with
    /// [`unsatisfied_content_range`].
    Unsatisfiable,
}

/// The `Content-Range` value of a 416 answer: `bytes */total`.
pub fn unsatisfied_content_range(total: u64) -> String {
    format!("bytes */{total}")
}

/// Parses a decimal position: ASCII digits only (no sign, no spaces: Rust's
/// `parse` would take `+5`), saturating at `u64::MAX` (a position past any
/// body is still a position). `None` when not `1*DIGIT`.
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, digit| {
        n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
    }))
}

/// Resolves the `Range` header `value` (if any) against a body of `len`
/// bytes.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(value) = value else {
        return RangeRequest::Full;
    };
    let value = value.trim();
    // The unit is case-insensitive (RFC 9110 §14.1).
    let Some(unit) = value.get(..6) else {
        return RangeRequest::Full;
    };
    if !unit.eq_ignore_ascii_case("bytes=") {
        return RangeRequest::Full;
    }
    let spec = value[6..].trim();
    if spec.contains(',') {
        // Several ranges: the whole body is a valid answer and saves a
        // multipart body nobody here needs.
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = position(last) else {
            return RangeRequest::Full;
        };
        if n == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial(ByteRange {
            first: len - n.min(len),
            last: len - 1,
        });
    }
    let Some(first) = position(first) else {
        return RangeRequest::Full;
    };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match position(last) {
            Some(last) if last >= first => last,
            // `last < first` is an invalid range-spec: ignore the header.
            _ => return RangeRequest::Full,
        }
    };
    if first >= len {
        return RangeRequest::Unsatisfiable;
    }
    // len > first >= 0, so len - 1 is safe; clamp before any arithmetic.
    RangeRequest::Partial(ByteRange {
        first,
        last: last.min(len - 1),
    })
}

/// Parses the `Content-Range` value of a 206 answer, `bytes first-last/total`
/// (`total` may be `*`), into the half-open range it carries. `None` when
/// malformed, when `last < first`, when `last` is not below a stated
/// `total` (RFC 9110 §14.4 calls that invalid), or when `last` is
/// `u64::MAX` (no half-open end exists): the answer of a server that is
/// not trusted, so nothing here may overflow.
pub fn parse_content_range(value: &str) -> Option<Range<u64>> {
    let value = value.trim();
    let unit = value.get(..6)?;
    if !unit.eq_ignore_ascii_case("bytes ") {
        return None;
    }
    let (range, total) = value[6..].trim_start().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (position(first.trim())?, position(last.trim())?);
    let total = match total.trim() {
        "*" => None,
        total => Some(position(total)?),
    };
    if last < first || total.is_some_and(|total| last >= total) {
        return None;
    }
    Some(first..last.checked_add(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partial(first: u64, last: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { first, last })
    }

    #[test]
    fn single_ranges_like_rfc_9110() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), partial(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), partial(0, 99));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), partial(50, 99));
        assert_eq!(parse_range(Some("bytes=99-99"), 100), partial(99, 99));
        assert_eq!(parse_range(Some("BYTES=1-2"), 100), partial(1, 2));
        assert_eq!(parse_range(Some(" bytes= 1 - 2 "), 100), partial(1, 2));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=100-200"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-5"), 0), Unsatisfiable);
    }

    #[test]
    fn unusable_headers_mean_the_whole_body() {
        use RangeRequest::*;
        for value in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=1-y",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-",
            "bytes=",
            "bytes",
            "bytes=--1",
            "bytes=1--2",
            "bytes=1",
            "",
            "é",
            "bytesé=1-2",
        ] {
            assert_eq!(parse_range(Some(value), 100), Full, "{value:?}");
        }
    }

    #[test]
    fn huge_positions_do_not_wrap() {
        // The SDK endpoint answered this with 416 through an `end + 1` that
        // wrapped; the origin answered 206. Both must say 0-999.
        let max = "bytes=0-18446744073709551615";
        assert_eq!(parse_range(Some(max), 1000), partial(0, 999));
        // Past u64 altogether: still a position, saturated.
        let beyond = "bytes=0-99999999999999999999999999";
        assert_eq!(parse_range(Some(beyond), 1000), partial(0, 999));
        let suffix = "bytes=-99999999999999999999999999";
        assert_eq!(parse_range(Some(suffix), 1000), partial(0, 999));
        let start = "bytes=99999999999999999999999999-";
        assert_eq!(parse_range(Some(start), 1000), RangeRequest::Unsatisfiable);
        // A body of u64::MAX bytes: the last byte is u64::MAX - 1.
        let whole = parse_range(Some(max), u64::MAX);
        assert_eq!(whole, partial(0, u64::MAX - 1));
        if let RangeRequest::Partial(r) = whole {
            assert_eq!(r.len(), u64::MAX);
            assert_eq!(r.to_range(), 0..u64::MAX);
        }
    }

    #[test]
    fn content_ranges_of_answers() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some(0..100));
        assert_eq!(parse_content_range("bytes 10-10/*"), Some(10..11));
        assert_eq!(parse_content_range("Bytes 5-9/10"), Some(5..10));
        for refused in [
            "bytes 10-9/100",
            "items 0-1/2",
            "bytes x-1/2",
            "bytes +1-2/3",
            "bytes 0-99",
            "bytes 0-10/10",
            "bytes */10",
            "",
        ] {
            assert_eq!(parse_content_range(refused), None, "{refused:?}");
        }
        // Found by review with the http_range fuzz target (the parser then
        // lived in the client SDK): a last position of u64::MAX overflowed
        // `last + 1`, a panic in a debug build and a wrapped end in a
        // release one.
        assert_eq!(parse_content_range("bytes 0-18446744073709551615/*"), None);
        assert_eq!(
            parse_content_range("bytes 0-99999999999999999999999/*"),
            None
        );
    }

    #[test]
    fn headers_for_answers() {
        let RangeRequest::Partial(r) = parse_range(Some("bytes=10-19"), 100) else {
            panic!("partial expected");
        };
        assert_eq!(r.content_range(100), "bytes 10-19/100");
        assert_eq!(r.len(), 10);
        assert_eq!(r.to_usize_range(), Some(10..20));
        assert_eq!(r.to_string(), "10-19");
        assert_eq!(unsatisfied_content_range(100), "bytes */100");
    }

    /// Header values around the grammar: mostly well-formed, sometimes not.
    fn header() -> impl Strategy<Value = String> {
        let num = prop_oneof![
            Just(String::new()),
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..2000).prop_map(|n| n.to_string()),
            "[0-9]{19,30}",
        ];
        prop_oneof![
            (num.clone(), num).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            "bytes=[0-9,+ -]{0,12}",
            ".{0,24}",
        ]
    }

    fn length() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..2000, any::<u64>(), Just(u64::MAX)]
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_inside(value in header(), len in length()) {
            match parse_range(Some(&value), len) {
                RangeRequest::Partial(r) => {
                    prop_assert!(r.first() <= r.last());
                    prop_assert!(r.last() < len);
                    prop_assert_eq!(r.to_range().end - r.to_range().start, r.len());
                    prop_assert!(r.to_range().end <= len);
                }
                RangeRequest::Unsatisfiable | RangeRequest::Full => {}
            }
        }

        #[test]
        fn well_formed_ranges_resolve_exactly(first in 0u64..5000, span in 0u64..5000, len in 0u64..5000) {
            let last = first + span;
            let got = parse_range(Some(&format!("bytes={first}-{last}")), len);
            if first >= len {
                prop_assert_eq!(got, RangeRequest::Unsatisfiable);
            } else {
                prop_assert_eq!(got, partial(first, last.min(len - 1)));
            }
        }

        #[test]
        fn suffix_ranges_resolve_exactly(n in 0u64..5000, len in 0u64..5000) {
            let got = parse_range(Some(&format!("bytes=-{n}")), len);
            if n == 0 || len == 0 {
                prop_assert_eq!(got, RangeRequest::Unsatisfiable);
            } else {
                prop_assert_eq!(got, partial(len - n.min(len), len - 1));
            }
        }
    }
}
