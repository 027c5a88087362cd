//! Why an SDK call failed: a small enum of what happened, the cause kept as
//! its `source()` (quinn's `ConnectionError` is the model), so an app can
//! match on the kind and still log the whole chain.

use loaves_proto::framing::FrameError;
use loaves_proto::manifest::ManifestError;

use crate::cdn::CdnError;
use crate::license::LicenseClientError;

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or unusable (named in the error).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The license could not be acquired, renewed or released.
    #[error(transparent)]
    License(#[from] LicenseClientError),
    /// The CDN failed (every base URL was tried).
    #[error(transparent)]
    Cdn(#[from] CdnError),
    /// The presentation (playlists, signed manifests, init segments) is
    /// invalid or fails verification.
    #[error("{}{source}", rendition.as_ref().map(|r| format!("rendition {r}: ")).unwrap_or_default())]
    Presentation {
        /// The rendition concerned, if one.
        rendition: Option<String>,
        /// What is wrong.
        #[source]
        source: PresentationError,
    },
    /// A local resource (socket, QUIC endpoint, key) could not be set up.
    #[error("setting up {what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something the call waited for did not happen in time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
    },
    /// A title or rendition name is not valid.
    #[error(transparent)]
    InvalidName(#[from] loaves_proto::names::NameError),
    /// The session has no such rendition.
    #[error("no rendition {0:?} in this session")]
    UnknownRendition(String),
    /// The segment is not listed by the rendition's verified manifest (or
    /// no longer is: a live manifest forgets the distant past).
    #[error("segment {sequence} is not in the manifest of {rendition}")]
    UnknownSegment {
        /// The rendition.
        rendition: String,
        /// The sequence number asked for.
        sequence: u64,
    },
    /// Too many requests for the same segment are waiting.
    #[error("too many requests are waiting for that segment")]
    Busy,
    /// The session is closed (by `close`, or ended: see
    /// [`crate::Event::SessionEnded`]).
    #[error("the session is closed")]
    Closed,
}

impl Error {
    pub(crate) fn presentation(rendition: Option<&str>, source: PresentationError) -> Self {
        Self::Presentation {
            rendition: rendition.map(str::to_owned),
            source,
        }
    }

    pub(crate) fn setup(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Setup {
            what,
            source: Box::new(source),
        }
    }
}

/// A setting that is missing or unusable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was not made.
    #[error("{setting} is required")]
    Missing {
        /// The builder method that sets it.
        setting: &'static str,
    },
    /// A setting's value is refused.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The builder method that set it.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// A URL does not parse.
    #[error("{setting}: {url:?}: {source}")]
    Url {
        /// The builder method that set it.
        setting: &'static str,
        /// The URL given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
}

/// What is wrong with a presentation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresentationError {
    /// The multivariant (master) playlist is unusable.
    #[error("master playlist: {0}")]
    MasterPlaylist(&'static str),
    /// A signed manifest's frames are malformed.
    #[error("manifest framing: {0}")]
    ManifestFraming(#[source] FrameError),
    /// A signed manifest ends inside a frame.
    #[error("manifest is truncated")]
    TruncatedManifest,
    /// A signed manifest does not verify.
    #[error("manifest: {0}")]
    Manifest(#[source] ManifestError),
    /// A signed manifest names another title or rendition than it is
    /// stored under.
    #[error("manifest is for {title}/{rendition}")]
    MisplacedManifest {
        /// The title it names.
        title: String,
        /// The rendition it names.
        rendition: String,
    },
    /// The init segment does not match the manifest.
    #[error("init segment: {0}")]
    Init(#[source] ManifestError),
    /// With the decrypt option: the init segment cannot be decrypted.
    #[error("init segment cannot be decrypted: {0}")]
    NotDecryptable(#[source] loaves_cmaf::Mp4Error),
}
