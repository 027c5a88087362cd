//! A small ISO-BMFF box reader and writer.
//!
//! The packager rewrites a handful of boxes (sample entries, `traf`, `trun`,
//! `sidx`) and must copy every other box byte for byte, including boxes no
//! library knows. So boxes are read as borrowed byte ranges ([`RawBox`]) and
//! written back by concatenation; only the boxes that change are decoded.
//! All offsets are checked: a truncated or inconsistent box is a
//! [`BoxError`], never a panic.

use std::borrow::Cow;
use std::fmt;

/// A four-character box type.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub [u8; 4]);

impl FourCc {
    /// From a byte literal.
    pub const fn new(bytes: &[u8; 4]) -> Self {
        Self(*bytes)
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{self}'")
    }
}

/// Why bytes could not be read as boxes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    /// The box header or body runs past the end of its parent.
    #[error("box {kind} at byte {offset} is truncated (needs {needed} bytes, {available} left)")]
    Truncated {
        /// Box type (`????` if the header itself is cut).
        kind: FourCc,
        /// Offset of the box in the file.
        offset: u64,
        /// Bytes the box claims.
        needed: u64,
        /// Bytes that remain.
        available: u64,
    },
    /// A box declares a size smaller than its own header.
    #[error("box {kind} at byte {offset} declares an impossible size {size}")]
    BadSize {
        /// Box type.
        kind: FourCc,
        /// Offset of the box in the file.
        offset: u64,
        /// Declared size.
        size: u64,
    },
    /// A field inside a box is missing or impossible.
    #[error("box {kind} at byte {offset}: {what}")]
    BadField {
        /// Box type.
        kind: FourCc,
        /// Offset of the box in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// One box borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawBox<'a> {
    /// Box type.
    pub kind: FourCc,
    /// Offset of the box's first byte in the file (for messages and layout).
    pub offset: u64,
    /// The whole box, header included.
    pub bytes: &'a [u8],
    /// Length of the header (8, or 16 with a 64-bit size).
    pub header_len: usize,
}

impl<'a> RawBox<'a> {
    /// The body after the header.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// Offset of the body in the file.
    pub fn body_offset(&self) -> u64 {
        self.offset + self.header_len as u64
    }

    /// A reader over the body that reports errors against this box.
    pub fn reader(&self) -> Reader<'a> {
        Reader {
            kind: self.kind,
            offset: self.offset,
            buf: self.body(),
            pos: 0,
        }
    }

    /// The children of a container whose children start `skip` bytes into
    /// the body (0 for plain containers, 8 for `stsd`, 78 for visual and 28
    /// for audio sample entries).
    pub fn children(&self, skip: usize) -> Result<Vec<RawBox<'a>>, BoxError> {
        let body = self.body();
        if body.len() < skip {
            return Err(self.bad(format!("body shorter than its {skip}-byte header")));
        }
        parse_boxes(&body[skip..], self.body_offset() + skip as u64)
    }

    /// The box as bytes that keep their meaning wherever they are placed.
    /// A box whose size field is 0 runs to the end of its parent, so
    /// copied into a container that then gets more children it would
    /// swallow them; it gets its actual size instead. Every other box is
    /// its own bytes.
    pub fn sized(&self) -> Cow<'a, [u8]> {
        if self.header_len == 8 && self.bytes[..4] == [0; 4] {
            Cow::Owned(make_box(&self.kind.0, self.body()))
        } else {
            Cow::Borrowed(self.bytes)
        }
    }

    /// A [`BoxError::BadField`] for this box.
    pub fn bad(&self, what: impl Into<String>) -> BoxError {
        BoxError::BadField {
            kind: self.kind,
            offset: self.offset,
            what: what.into(),
        }
    }
}

/// Splits `buf` (which starts at file offset `base`) into consecutive boxes.
pub fn parse_boxes(buf: &[u8], base: u64) -> Result<Vec<RawBox<'_>>, BoxError> {
    let mut boxes = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let offset = base + pos as u64;
        if rest.len() < 8 {
            return Err(BoxError::Truncated {
                kind: FourCc(*b"????"),
                offset,
                needed: 8,
                available: rest.len() as u64,
            });
        }
        let size32 = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let kind = FourCc([rest[4], rest[5], rest[6], rest[7]]);
        let (size, header_len) = match size32 {
            0 => (rest.len() as u64, 8usize),
            1 => {
                if rest.len() < 16 {
                    return Err(BoxError::Truncated {
                        kind,
                        offset,
                        needed: 16,
                        available: rest.len() as u64,
                    });
                }
                let mut large = [0u8; 8];
                large.copy_from_slice(&rest[8..16]);
                (u64::from_be_bytes(large), 16)
            }
            n => (u64::from(n), 8),
        };
        if size < header_len as u64 {
            return Err(BoxError::BadSize { kind, offset, size });
        }
        if size > rest.len() as u64 {
            return Err(BoxError::Truncated {
                kind,
                offset,
                needed: size,
                available: rest.len() as u64,
            });
        }
        // size <= rest.len(), so it fits in usize.
        let size = size as usize;
        boxes.push(RawBox {
            kind,
            offset,
            bytes: &rest[..size],
            header_len,
        });
        pos += size;
    }
    Ok(boxes)
}

/// The first child of type `kind`.
pub fn find<'a, 'b>(boxes: &'b [RawBox<'a>], kind: &[u8; 4]) -> Option<&'b RawBox<'a>> {
    boxes.iter().find(|b| b.kind.0 == *kind)
}

/// A bounds-checked big-endian reader over a box body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    kind: FourCc,
    offset: u64,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], BoxError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let out = &self.buf[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(BoxError::BadField {
                kind: self.kind,
                offset: self.offset,
                what: format!(
                    "field at body byte {} needs {n} bytes, {} left",
                    self.pos,
                    self.buf.len().saturating_sub(self.pos)
                ),
            }),
        }
    }

    /// Next byte.
    pub fn u8(&mut self) -> Result<u8, BoxError> {
        Ok(self.bytes(1)?[0])
    }

    /// Next big-endian u16.
    pub fn u16(&mut self) -> Result<u16, BoxError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Next big-endian u32.
    pub fn u32(&mut self) -> Result<u32, BoxError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Next big-endian u64.
    pub fn u64(&mut self) -> Result<u64, BoxError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Version and flags of a full box.
    pub fn version_flags(&mut self) -> Result<(u8, u32), BoxError> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }

    /// Position in the body.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Appends a box with `body` to `out` (64-bit size when needed).
pub fn write_box(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    let size = body.len() as u64 + 8;
    if let Ok(size) = u32::try_from(size) {
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(kind);
    } else {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(&(size + 8).to_be_bytes());
    }
    out.extend_from_slice(body);
}

/// A box as bytes.
pub fn make_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    write_box(&mut out, kind, body);
    out
}

/// A full box (version and flags, then `body`) as bytes.
pub fn make_full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(body.len() + 4);
    full.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
    full.extend_from_slice(body);
    make_box(kind, &full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let mut buf = make_box(b"free", b"abc");
        buf.extend(make_full_box(b"mfhd", 0, 0, &7u32.to_be_bytes()));
        let boxes = parse_boxes(&buf, 0).unwrap();
        assert_eq!(boxes.len(), 2);
        assert_eq!(boxes[0].body(), b"abc");
        assert_eq!(boxes[1].offset, 11);
        let mut r = boxes[1].reader();
        assert_eq!(r.version_flags().unwrap(), (0, 0));
        assert_eq!(r.u32().unwrap(), 7);
        assert!(r.u8().is_err());
        // Truncation anywhere is an error naming the box.
        for cut in 1..buf.len() {
            if cut == 11 {
                continue;
            }
            assert!(parse_boxes(&buf[..cut], 0).is_err(), "cut at {cut}");
        }
        let bad = [0, 0, 0, 4, b'm', b'o', b'o', b'v'];
        assert!(matches!(
            parse_boxes(&bad, 0),
            Err(BoxError::BadSize { .. })
        ));
    }
}
