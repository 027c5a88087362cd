//! CMAF and Common Encryption (ISO/IEC 23001-7), shared by the packager
//! (`edge-seed`, which protects clear CMAF) and the client SDK (which, with
//! its `decrypt` option, turns protected CMAF back into clear CMAF for a
//! player without a DRM module).
//!
//! A crate of its own: only those two need the AES modes, and the other
//! users of the contracts (tracker, license server) should not carry them.
//!
//! - [`boxes`]: the ISO-BMFF box reader and writer (borrowed byte ranges,
//!   every offset checked).
//! - [`cenc`]: subsample rules and the `cenc` / `cbcs` ciphers, both ways.
//! - [`init`]: reading a rendition's track, protecting an init segment.
//! - [`segment`]: reading and protecting media segments.
//! - [`decrypt`]: the way back: a protected init segment to a clear one,
//!   protected media segments to clear ones.
//!
//! Pure functions: bytes in, bytes out, no I/O.

pub mod boxes;
pub mod cenc;
pub mod decrypt;
pub mod init;
pub mod segment;

use boxes::BoxError;
use cenc::SampleError;

/// Why an init or media segment could not be read, protected or decrypted
/// (without the file name: callers add it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mp4Error {
    /// Boxes are truncated or inconsistent.
    #[error(transparent)]
    Box(#[from] BoxError),
    /// A required box is missing.
    #[error("missing box {0}")]
    Missing(&'static str),
    /// The input uses something this code does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The input is already encrypted: use the `passthrough` scheme.
    #[error("input is already protected (encv/enca or senc present): use --scheme passthrough")]
    AlreadyProtected,
    /// A sample could not be split into subsamples.
    #[error("sample {index}: {source}")]
    Sample {
        /// Index of the sample in the fragment.
        index: usize,
        /// The problem.
        source: SampleError,
    },
    /// A segment belongs to another track than the init segment's.
    #[error("fragment is for track {found}, the init segment has track {expected}")]
    WrongTrack {
        /// Track of the init segment.
        expected: u32,
        /// Track named by `tfhd`.
        found: u32,
    },
}
