//! The origin side of Loaves: the packager.
//!
//! [`package::package`] turns a clear CMAF presentation (HLS playlists or a
//! directory of renditions) into Common Encryption (`cenc` or `cbcs`)
//! protected segments, signed manifests, HLS and DASH. The transformation
//! core is free of I/O: [`init::protect_init`] and
//! [`segment::protect_segment`] take bytes and return bytes; [`cenc`] holds
//! the ciphers and the subsample rules; [`boxes`] the ISO-BMFF reader and
//! writer. Keys come through the [`keysource::KeySource`] trait.

// The box, cipher, init and segment code is shared with the client SDK
// (its `decrypt` option), so it is the `loaves-cmaf` crate; these paths
// stay for the packager's modules and its users.
pub use loaves_cmaf::{boxes, cenc, init, segment};
pub mod error;
pub mod input;
pub mod keysource;
pub mod live;
pub mod package;
pub mod playlist;
pub mod serve;
pub mod synthetic;

pub use error::{Mp4Error, PackageError};
pub use package::{PackageOptions, PackageSummary, Progress, package};
