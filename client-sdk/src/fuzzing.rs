//! What the SDK reads of the origin's playlists and MPDs (fetched from the
//! CDN, so not trusted), public for the fuzz targets only: the `fuzzing`
//! feature, which an app never enables.

use bytes::Bytes;
use loaves_proto::names::RenditionName;

use crate::Error;

/// The renditions a multivariant playlist names (read at `open`).
pub fn rendition_names(master: &[u8]) -> Result<Vec<RenditionName>, Error> {
    crate::session::presentation::rendition_names(master)
}

/// The `EXT-X-KEY` tag groups of a media playlist by key period, and
/// whether it had any.
pub fn key_tags_by_period(
    playlist: &[u8],
    period_of: impl FnMut(u64) -> Option<u32>,
) -> (bool, Vec<(u32, String)>) {
    crate::session::presentation::key_tags_by_period(playlist, period_of)
}

/// The sequence number of a segment file name (`seg_N.m4s`).
pub fn parse_segment_file(name: &str) -> Option<u64> {
    crate::session::presentation::parse_segment_file(name)
}

/// An HLS playlist without its key tags (the decrypt option).
pub fn without_hls_keys(playlist: &[u8]) -> Bytes {
    crate::endpoint::without_hls_keys(playlist)
}

/// An MPD without its `ContentProtection` elements (the decrypt option).
pub fn without_content_protection(mpd: &[u8]) -> Bytes {
    crate::endpoint::without_content_protection(mpd)
}
