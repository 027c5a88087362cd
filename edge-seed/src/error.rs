//! Errors at the library boundary.

use std::path::PathBuf;

use crate::keysource::KeySourceError;

/// Why an init or media segment could not be read or protected (defined
/// with the shared CMAF code in `loaves-cmaf`).
pub use loaves_cmaf::Mp4Error;

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
