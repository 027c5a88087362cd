//! Errors at the library boundary.

use std::path::PathBuf;

use crate::boxes::BoxError;
use crate::cenc::SampleError;
use crate::keysource::KeySourceError;

/// Why an init or media segment could not be read or protected (without
/// the file name: [`PackageError`] adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mp4Error {
    /// Boxes are truncated or inconsistent.
    #[error(transparent)]
    Box(#[from] BoxError),
    /// A required box is missing.
    #[error("missing box {0}")]
    Missing(&'static str),
    /// The input uses something this packager does not handle.
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

/// Why packaging failed. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A segment or init segment is malformed or unsupported.
    #[error("{path}: {source}")]
    Media {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: Mp4Error,
    },
    /// The input presentation is not usable (no init segment, no segments,
    /// an unreadable playlist...).
    #[error("{path}: {message}")]
    Input {
        /// The file or directory.
        path: PathBuf,
        /// The problem.
        message: String,
    },
    /// Content keys could not be obtained.
    #[error("key source: {0}")]
    Keys(#[from] KeySourceError),
    /// The manifest could not be signed.
    #[error("{path}: manifest: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The problem.
        source: loaves_proto::manifest::ManifestError,
    },
    /// The output exists and overwriting was not requested.
    #[error("{0} already exists (pass --force to replace it)")]
    OutputExists(PathBuf),
}

impl PackageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn media(path: impl Into<PathBuf>) -> impl FnOnce(Mp4Error) -> Self {
        let path = path.into();
        move |source| Self::Media { path, source }
    }
}
