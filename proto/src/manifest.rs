//! Signed segment manifests.
//!
//! A rendition's manifest is a chain of signed chunks ([`pb::ManifestChunkBody`]
//! in a [`pb::Signed`] envelope, [`Purpose::ManifestChunk`]). Each chunk lists
//! consecutive segments with their size, duration, key period and SHA-256 of
//! the exact bytes peers exchange, and names the SHA-256 of the previous chunk.
//! A VOD manifest is typically one `final` chunk; a live manifest grows by one
//! chunk per append, so a client that holds chunk k verifies chunk k+1 alone,
//! and a client joining late starts from any chunk.
//!
//! The origin writes chunks with [`ManifestWriter`]; everybody else checks
//! them with [`verify_chunk`] and accumulates them in a [`Manifest`], whose
//! [`Manifest::verify_segment`] checks one segment's bytes in a single call.

use std::collections::VecDeque;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::UnixSeconds;
use crate::keys::{KeyId, Keyring, SigningKeyPair};
use crate::pb;
use crate::signed::{self, Purpose, SignatureError};

/// Longest encoded chunk accepted (1 MiB, about 20,000 segments).
pub const MAX_CHUNK_LEN: usize = 1 << 20;

/// Most segments one chunk may list.
pub const MAX_SEGMENTS_PER_CHUNK: usize = 16_384;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

/// How the segments of a rendition are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// CENC AES-128-CTR.
    Cenc,
    /// CENC AES-128-CBC with pattern (1:9 for video).
    Cbcs,
    /// Already protected by another packager, passed through untouched.
    Passthrough,
}

impl Scheme {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cenc => "cenc",
            Self::Cbcs => "cbcs",
            Self::Passthrough => "passthrough",
        }
    }

    /// Parses the wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "cenc" => Some(Self::Cenc),
            "cbcs" => Some(Self::Cbcs),
            "passthrough" => Some(Self::Passthrough),
            _ => None,
        }
    }
}

/// One segment as listed in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number.
    pub sequence: u64,
    /// Duration in milliseconds.
    pub duration_ms: u32,
    /// Exact size in bytes.
    pub size: u64,
    /// Key period the segment is encrypted under.
    pub key_period: u32,
    /// SHA-256 of the exact bytes.
    pub sha256: Sha256Digest,
}

impl SegmentInfo {
    /// The entry for `bytes`.
    pub fn describe(sequence: u64, duration_ms: u32, key_period: u32, bytes: &[u8]) -> Self {
        Self {
            sequence,
            duration_ms,
            size: bytes.len() as u64,
            key_period,
            sha256: sha256(bytes),
        }
    }

    fn to_pb(self) -> pb::SegmentEntry {
        pb::SegmentEntry {
            sequence: self.sequence,
            duration_ms: self.duration_ms,
            size: self.size,
            key_period: self.key_period,
            sha256: self.sha256.to_vec(),
        }
    }
}

/// Why a manifest chunk or a segment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The encoded chunk is longer than [`MAX_CHUNK_LEN`].
    #[error("manifest chunk is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not valid protobuf (e.g. truncated).
    #[error("malformed manifest chunk: {0}")]
    Malformed(String),
    /// The signature envelope was refused.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A field has an impossible value.
    #[error("invalid manifest field `{0}`")]
    InvalidField(&'static str),
    /// More than [`MAX_SEGMENTS_PER_CHUNK`] segments.
    #[error("manifest chunk lists {0} segments, more than allowed")]
    TooManySegments(usize),
    /// Sequences are not consecutive (within a chunk or across an append).
    #[error("expected segment sequence {expected}, found {found}")]
    NonContiguous {
        /// The sequence that had to come next.
        expected: u64,
        /// The sequence that came.
        found: u64,
    },
    /// An appended chunk names another title, rendition, init segment or scheme.
    #[error("chunk belongs to another presentation ({0} differs)")]
    OtherPresentation(&'static str),
    /// An appended chunk is not the next one.
    #[error("expected manifest chunk {expected}, found {found}")]
    ChunkOutOfOrder {
        /// The index that had to come next.
        expected: u64,
        /// The index that came.
        found: u64,
    },
    /// An appended chunk does not name the previous chunk's hash.
    #[error("manifest chunk {0} does not follow the previous chunk")]
    ChainBroken(u64),
    /// A chunk came after the final one.
    #[error("manifest already ended")]
    AfterFinal,
    /// The manifest (as far as known) does not list this sequence.
    #[error("segment {0} is not in the manifest")]
    UnknownSegment(u64),
    /// The bytes have another length than listed.
    #[error("segment {sequence} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// Sequence checked.
        sequence: u64,
        /// Size in the manifest.
        expected: u64,
        /// Size received.
        actual: u64,
    },
    /// The bytes do not hash to the listed digest.
    #[error("segment {0} does not match its manifest hash")]
    HashMismatch(u64),
    /// The init segment does not hash to the listed digest.
    #[error("init segment does not match its manifest hash")]
    InitHashMismatch,
}

/// A chunk whose signature and fields were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChunk {
    /// Title.
    pub title: String,
    /// Rendition.
    pub rendition: String,
    /// Position in the chain.
    pub chunk_index: u64,
    /// Hash of the previous chunk's body (`None` for chunk 0).
    pub previous_chunk_sha256: Option<Sha256Digest>,
    /// Hash of the rendition's init segment.
    pub init_sha256: Sha256Digest,
    /// Protection scheme.
    pub scheme: Scheme,
    /// Consecutive segments.
    pub segments: Vec<SegmentInfo>,
    /// Nothing follows.
    pub is_final: bool,
    /// When the origin signed it.
    pub published_at: UnixSeconds,
    /// Which key signed it.
    pub signer: KeyId,
    /// SHA-256 of this chunk's body, which the next chunk must name.
    pub body_sha256: Sha256Digest,
}

fn digest_field(bytes: &[u8], field: &'static str) -> Result<Sha256Digest, ManifestError> {
    bytes
        .try_into()
        .map_err(|_| ManifestError::InvalidField(field))
}

/// Decodes and verifies one encoded chunk (an encoded [`pb::Signed`]).
pub fn verify_chunk(keyring: &Keyring, encoded: &[u8]) -> Result<VerifiedChunk, ManifestError> {
    if encoded.len() > MAX_CHUNK_LEN {
        return Err(ManifestError::TooLarge {
            len: encoded.len(),
            max: MAX_CHUNK_LEN,
        });
    }
    let envelope =
        pb::Signed::decode(encoded).map_err(|e| ManifestError::Malformed(e.to_string()))?;
    let (signer, body_bytes) = signed::verify(keyring, Purpose::ManifestChunk, &envelope)?;
    let body_sha256 = sha256(body_bytes);
    let body = pb::ManifestChunkBody::decode(body_bytes)
        .map_err(|e| ManifestError::Malformed(e.to_string()))?;
    if body.title.is_empty() {
        return Err(ManifestError::InvalidField("title"));
    }
    if body.rendition.is_empty() {
        return Err(ManifestError::InvalidField("rendition"));
    }
    let previous_chunk_sha256 = match (body.chunk_index, body.previous_chunk_sha256.is_empty()) {
        (0, true) => None,
        (0, false) => return Err(ManifestError::InvalidField("previous_chunk_sha256")),
        (_, _) => Some(digest_field(
            &body.previous_chunk_sha256,
            "previous_chunk_sha256",
        )?),
    };
    if body.segments.len() > MAX_SEGMENTS_PER_CHUNK {
        return Err(ManifestError::TooManySegments(body.segments.len()));
    }
    let scheme = Scheme::parse(&body.scheme).ok_or(ManifestError::InvalidField("scheme"))?;
    let mut segments = Vec::with_capacity(body.segments.len());
    for entry in &body.segments {
        if let Some(last) = segments.last().map(|s: &SegmentInfo| s.sequence) {
            let expected = last
                .checked_add(1)
                .ok_or(ManifestError::InvalidField("sequence"))?;
            if entry.sequence != expected {
                return Err(ManifestError::NonContiguous {
                    expected,
                    found: entry.sequence,
                });
            }
        }
        segments.push(SegmentInfo {
            sequence: entry.sequence,
            duration_ms: entry.duration_ms,
            size: entry.size,
            key_period: entry.key_period,
            sha256: digest_field(&entry.sha256, "sha256")?,
        });
    }
    Ok(VerifiedChunk {
        title: body.title,
        rendition: body.rendition,
        chunk_index: body.chunk_index,
        previous_chunk_sha256,
        init_sha256: digest_field(&body.init_sha256, "init_sha256")?,
        scheme,
        segments,
        is_final: body.r#final,
        published_at: UnixSeconds(body.published_at),
        signer,
        body_sha256,
    })
}

/// The verified manifest of one rendition, as far as the client has followed
/// it. Segments before [`Manifest::forget_before`] are dropped to bound memory
/// in long live events.
#[derive(Debug, Clone)]
pub struct Manifest {
    title: String,
    rendition: String,
    init_sha256: Sha256Digest,
    scheme: Scheme,
    /// Consecutive segments, the first one being `segments[0].sequence`.
    segments: VecDeque<SegmentInfo>,
    /// The sequence the next chunk must start with.
    next_sequence: Option<u64>,
    last_chunk_index: u64,
    last_chunk_sha256: Sha256Digest,
    is_final: bool,
}

impl Manifest {
    /// Starts following a manifest from any verified chunk (chunk 0 for VOD,
    /// the newest chunk for a viewer joining a live stream).
    pub fn from_chunk(chunk: VerifiedChunk) -> Self {
        let next_sequence = chunk
            .segments
            .last()
            .and_then(|s| s.sequence.checked_add(1));
        Self {
            title: chunk.title,
            rendition: chunk.rendition,
            init_sha256: chunk.init_sha256,
            scheme: chunk.scheme,
            segments: chunk.segments.into(),
            next_sequence,
            last_chunk_index: chunk.chunk_index,
            last_chunk_sha256: chunk.body_sha256,
            is_final: chunk.is_final,
        }
    }

    /// Verifies a whole chain of encoded chunks from its first.
    pub fn from_encoded_chunks<'a>(
        keyring: &Keyring,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, ManifestError> {
        let mut chunks = chunks.into_iter();
        let first = chunks.next().ok_or(ManifestError::InvalidField("chunks"))?;
        let mut manifest = Self::from_chunk(verify_chunk(keyring, first)?);
        for chunk in chunks {
            manifest.append(verify_chunk(keyring, chunk)?)?;
        }
        Ok(manifest)
    }

    /// Appends the next verified chunk of the chain.
    pub fn append(&mut self, chunk: VerifiedChunk) -> Result<(), ManifestError> {
        if self.is_final {
            return Err(ManifestError::AfterFinal);
        }
        if chunk.title != self.title {
            return Err(ManifestError::OtherPresentation("title"));
        }
        if chunk.rendition != self.rendition {
            return Err(ManifestError::OtherPresentation("rendition"));
        }
        if chunk.init_sha256 != self.init_sha256 {
            return Err(ManifestError::OtherPresentation("init segment"));
        }
        if chunk.scheme != self.scheme {
            return Err(ManifestError::OtherPresentation("scheme"));
        }
        let expected_index = self.last_chunk_index.saturating_add(1);
        if chunk.chunk_index != expected_index {
            return Err(ManifestError::ChunkOutOfOrder {
                expected: expected_index,
                found: chunk.chunk_index,
            });
        }
        if chunk.previous_chunk_sha256 != Some(self.last_chunk_sha256) {
            return Err(ManifestError::ChainBroken(chunk.chunk_index));
        }
        if let (Some(expected), Some(first)) = (self.next_sequence, chunk.segments.first())
            && first.sequence != expected
        {
            return Err(ManifestError::NonContiguous {
                expected,
                found: first.sequence,
            });
        }
        if let Some(last) = chunk.segments.last() {
            self.next_sequence = last.sequence.checked_add(1);
        }
        self.segments.extend(chunk.segments);
        self.last_chunk_index = chunk.chunk_index;
        self.last_chunk_sha256 = chunk.body_sha256;
        self.is_final = chunk.is_final;
        Ok(())
    }

    /// The entry for `sequence`, if the manifest lists it.
    pub fn segment(&self, sequence: u64) -> Option<&SegmentInfo> {
        let first = self.segments.front()?.sequence;
        let index = usize::try_from(sequence.checked_sub(first)?).ok()?;
        self.segments.get(index)
    }

    /// Checks that `bytes` are exactly segment `sequence`: the one call peers,
    /// seeds and players make before using or sharing a segment.
    pub fn verify_segment(
        &self,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<&SegmentInfo, ManifestError> {
        let entry = self
            .segment(sequence)
            .ok_or(ManifestError::UnknownSegment(sequence))?;
        // The size check is free and catches truncation before hashing.
        if entry.size != bytes.len() as u64 {
            return Err(ManifestError::SizeMismatch {
                sequence,
                expected: entry.size,
                actual: bytes.len() as u64,
            });
        }
        if sha256(bytes) != entry.sha256 {
            return Err(ManifestError::HashMismatch(sequence));
        }
        Ok(entry)
    }

    /// Checks the rendition's init segment.
    pub fn verify_init(&self, bytes: &[u8]) -> Result<(), ManifestError> {
        if sha256(bytes) == self.init_sha256 {
            Ok(())
        } else {
            Err(ManifestError::InitHashMismatch)
        }
    }

    /// Drops entries before `sequence` (they are behind every playhead).
    pub fn forget_before(&mut self, sequence: u64) {
        while self.segments.front().is_some_and(|s| s.sequence < sequence) {
            self.segments.pop_front();
        }
    }

    /// Title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Rendition.
    pub fn rendition(&self) -> &str {
        &self.rendition
    }

    /// Protection scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Entries currently held, in order.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = &SegmentInfo> {
        self.segments.iter()
    }

    /// Whether the final chunk has been appended.
    pub fn is_final(&self) -> bool {
        self.is_final
    }
}

/// The origin side: writes the chain of signed chunks of one rendition.
#[derive(Debug, Clone)]
pub struct ManifestWriter {
    title: String,
    rendition: String,
    init_sha256: Sha256Digest,
    scheme: Scheme,
    next_chunk_index: u64,
    previous_chunk_sha256: Option<Sha256Digest>,
    next_sequence: u64,
    is_final: bool,
}

impl ManifestWriter {
    /// A writer whose first segment will be `first_sequence`.
    pub fn new(
        title: impl Into<String>,
        rendition: impl Into<String>,
        init_segment: &[u8],
        scheme: Scheme,
        first_sequence: u64,
    ) -> Self {
        Self {
            title: title.into(),
            rendition: rendition.into(),
            init_sha256: sha256(init_segment),
            scheme,
            next_chunk_index: 0,
            previous_chunk_sha256: None,
            next_sequence: first_sequence,
            is_final: false,
        }
    }

    /// Signs the next chunk listing `segments`, which must continue the
    /// sequence. Returns the encoded [`pb::Signed`] chunk.
    pub fn append(
        &mut self,
        key: &SigningKeyPair,
        segments: &[SegmentInfo],
        is_final: bool,
        published_at: UnixSeconds,
    ) -> Result<Vec<u8>, ManifestError> {
        if self.is_final {
            return Err(ManifestError::AfterFinal);
        }
        if segments.len() > MAX_SEGMENTS_PER_CHUNK {
            return Err(ManifestError::TooManySegments(segments.len()));
        }
        let mut expected = self.next_sequence;
        for segment in segments {
            if segment.sequence != expected {
                return Err(ManifestError::NonContiguous {
                    expected,
                    found: segment.sequence,
                });
            }
            expected = expected
                .checked_add(1)
                .ok_or(ManifestError::InvalidField("sequence"))?;
        }
        let body = pb::ManifestChunkBody {
            title: self.title.clone(),
            rendition: self.rendition.clone(),
            chunk_index: self.next_chunk_index,
            previous_chunk_sha256: self
                .previous_chunk_sha256
                .map(|digest| digest.to_vec())
                .unwrap_or_default(),
            init_sha256: self.init_sha256.to_vec(),
            scheme: self.scheme.as_str().to_owned(),
            segments: segments.iter().map(|s| s.to_pb()).collect(),
            r#final: is_final,
            published_at: published_at.0,
        }
        .encode_to_vec();
        self.previous_chunk_sha256 = Some(sha256(&body));
        self.next_chunk_index += 1;
        self.next_sequence = expected;
        self.is_final = is_final;
        Ok(signed::sign(key, Purpose::ManifestChunk, body).encode_to_vec())
    }
}
