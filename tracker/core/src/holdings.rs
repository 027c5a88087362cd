//! What a peer holds: a live window or a VOD bitmap, validated and bounded.

use confique::Config;
use loaves_proto::pb;

/// What a peer says it holds, parsed from [`pb::Holdings`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Holdings {
    /// Nothing announced.
    #[default]
    Nothing,
    /// Every sequence in `first..=last`.
    Live {
        /// First held sequence.
        first: u64,
        /// Last held sequence (inclusive).
        last: u64,
    },
    /// Bit `i` (LSB first within each byte) means sequence `first + i` is held.
    Bitmap {
        /// Sequence of bit 0.
        first: u64,
        /// The bits, at most [`HoldingsLimits::max_bitmap_bytes`].
        bits: Box<[u8]>,
    },
}

/// Bounds applied when parsing holdings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct HoldingsLimits {
    /// Largest bitmap accepted, in bytes (8 sequences per byte).
    #[config(default = 4096)]
    pub max_bitmap_bytes: usize,
    /// Longest live window accepted, in segments.
    #[config(default = 100_000)]
    pub max_live_window: u64,
}

impl Default for HoldingsLimits {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        crate::config_defaults()
    }
}

/// Why holdings were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldingsError {
    /// `last` is before `first`, or the window is longer than allowed.
    #[error("invalid live window")]
    InvalidWindow,
    /// The bitmap is larger than allowed.
    #[error("bitmap too large")]
    BitmapTooLarge,
    /// The bitmap would extend past the largest sequence number.
    #[error("bitmap overflows the sequence space")]
    Overflow,
}

impl Holdings {
    /// Parses and bounds the wire form; `None` means nothing announced.
    pub fn parse(
        holdings: Option<&pb::Holdings>,
        limits: &HoldingsLimits,
    ) -> Result<Self, HoldingsError> {
        use pb::holdings::Kind;
        let Some(kind) = holdings.and_then(|h| h.kind.as_ref()) else {
            return Ok(Self::Nothing);
        };
        match kind {
            Kind::LiveWindow(window) => {
                let (first, last) = (window.first_sequence, window.last_sequence);
                if last < first || last - first >= limits.max_live_window {
                    return Err(HoldingsError::InvalidWindow);
                }
                Ok(Self::Live { first, last })
            }
            Kind::Bitmap(bitmap) => {
                if bitmap.bits.len() > limits.max_bitmap_bytes {
                    return Err(HoldingsError::BitmapTooLarge);
                }
                let bit_count = (bitmap.bits.len() as u64).saturating_mul(8);
                if bitmap.first_sequence.checked_add(bit_count).is_none() {
                    return Err(HoldingsError::Overflow);
                }
                Ok(Self::Bitmap {
                    first: bitmap.first_sequence,
                    bits: bitmap.bits.clone().into_boxed_slice(),
                })
            }
        }
    }

    /// Whether `sequence` is held.
    pub fn holds(&self, sequence: u64) -> bool {
        match self {
            Self::Nothing => false,
            Self::Live { first, last } => (*first..=*last).contains(&sequence),
            Self::Bitmap { first, bits } => {
                let Some(offset) = sequence.checked_sub(*first) else {
                    return false;
                };
                let Ok(offset) = usize::try_from(offset) else {
                    return false;
                };
                bits.get(offset / 8)
                    .is_some_and(|byte| byte & (1 << (offset % 8)) != 0)
            }
        }
    }

    /// How many of the `count` sequences starting at `from` are held.
    pub fn count_held(&self, from: u64, count: u64) -> u64 {
        match self {
            Self::Nothing => 0,
            Self::Live { first, last } => live_count_held(*first, *last, from, count),
            Self::Bitmap { .. } => (0..count)
                .filter(|i| self.holds(from.saturating_add(*i)))
                .count() as u64,
        }
    }

    /// Appends the holdings, encoded as a `pb::Holdings` message body, to
    /// `buf` (nothing for [`Self::Nothing`]).
    pub fn encode_body(&self, buf: &mut Vec<u8>) {
        use crate::wire::{put_bytes_field, put_message_header, put_u64_field, varint_len};
        match self {
            Self::Nothing => {}
            Self::Live { first, last } => {
                let len = u64_field_len(1, *first) + u64_field_len(2, *last);
                put_message_header(buf, 1, len);
                put_u64_field(buf, 1, *first);
                put_u64_field(buf, 2, *last);
            }
            Self::Bitmap { first, bits } => {
                let len = u64_field_len(1, *first)
                    + if bits.is_empty() {
                        0
                    } else {
                        1 + varint_len(bits.len() as u64) + bits.len()
                    };
                put_message_header(buf, 2, len);
                put_u64_field(buf, 1, *first);
                put_bytes_field(buf, 2, bits);
            }
        }
    }

    /// Length of [`Self::encode_body`]'s output, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        use crate::wire::varint_len;
        let inner = match self {
            Self::Nothing => return 0,
            Self::Live { first, last } => u64_field_len(1, *first) + u64_field_len(2, *last),
            Self::Bitmap { first, bits } => {
                u64_field_len(1, *first)
                    + if bits.is_empty() {
                        0
                    } else {
                        1 + varint_len(bits.len() as u64) + bits.len()
                    }
            }
        };
        // Field 1 or 2 of `pb::Holdings`: one key byte, the length, the body.
        1 + varint_len(inner as u64) + inner
    }
}

/// [`Holdings::count_held`] of a live window `first..=last`, for callers that
/// keep the window outside a `Holdings` (the swarm's compact peer summaries).
#[inline]
pub(crate) fn live_count_held(first: u64, last: u64, from: u64, count: u64) -> u64 {
    let end = from.saturating_add(count); // exclusive
    let lo = from.max(first);
    let hi = end.min(last.saturating_add(1));
    hi.saturating_sub(lo)
}

fn u64_field_len(_field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + crate::wire::varint_len(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    fn live(first: u64, last: u64) -> pb::Holdings {
        pb::Holdings {
            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                first_sequence: first,
                last_sequence: last,
            })),
        }
    }

    fn bitmap(first: u64, bits: Vec<u8>) -> pb::Holdings {
        pb::Holdings {
            kind: Some(pb::holdings::Kind::Bitmap(pb::SegmentBitmap {
                first_sequence: first,
                bits,
            })),
        }
    }

    #[test]
    fn live_window_counts() {
        let h = Holdings::parse(Some(&live(10, 19)), &HoldingsLimits::default()).unwrap();
        assert!(h.holds(10) && h.holds(19) && !h.holds(20) && !h.holds(9));
        assert_eq!(h.count_held(18, 4), 2);
        assert_eq!(h.count_held(5, 4), 0);
        assert_eq!(h.count_held(u64::MAX - 1, 4), 0);
    }

    #[test]
    fn bitmap_counts() {
        let h = Holdings::parse(
            Some(&bitmap(100, vec![0b0000_0101, 0x01])),
            &Default::default(),
        )
        .unwrap();
        assert!(h.holds(100) && !h.holds(101) && h.holds(102) && h.holds(108));
        assert!(!h.holds(99) && !h.holds(u64::MAX));
        assert_eq!(h.count_held(100, 4), 2);
    }

    #[test]
    fn bounds_are_enforced() {
        let limits = HoldingsLimits {
            max_bitmap_bytes: 2,
            max_live_window: 10,
        };
        assert_eq!(
            Holdings::parse(Some(&live(5, 4)), &limits),
            Err(HoldingsError::InvalidWindow)
        );
        assert_eq!(
            Holdings::parse(Some(&live(0, 10)), &limits),
            Err(HoldingsError::InvalidWindow)
        );
        assert_eq!(
            Holdings::parse(Some(&bitmap(0, vec![0; 3])), &limits),
            Err(HoldingsError::BitmapTooLarge)
        );
        assert_eq!(
            Holdings::parse(Some(&bitmap(u64::MAX - 3, vec![1])), &limits),
            Err(HoldingsError::Overflow)
        );
        assert_eq!(Holdings::parse(None, &limits), Ok(Holdings::Nothing));
    }

    #[test]
    fn manual_encoding_matches_prost() {
        for wire in [
            live(0, 0),
            live(1 << 40, (1 << 40) + 99),
            bitmap(0, vec![]),
            bitmap(7, vec![1, 2, 3]),
            bitmap(1 << 50, vec![0xff; 300]),
        ] {
            let parsed = Holdings::parse(Some(&wire), &Default::default()).unwrap();
            let mut ours = Vec::new();
            parsed.encode_body(&mut ours);
            assert_eq!(ours, wire.encode_to_vec());
            assert_eq!(parsed.encoded_len(), ours.len());
        }
    }
}
