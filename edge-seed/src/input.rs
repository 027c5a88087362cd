//! Finding the renditions of an input presentation: an HLS multivariant
//! playlist, one HLS media playlist, a DASH MPD (`dash`), or a directory
//! whose subdirectories each hold one rendition (`init.mp4` plus numbered
//! segments).

mod dash;

pub use dash::parse_mpd;

use std::path::{Path, PathBuf};

use crate::error::PackageError;

/// One input rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionInput {
    /// Name used in the output (directory name, manifest rendition).
    pub name: String,
    /// The init segment.
    pub init: PathBuf,
    /// Media segments in presentation order.
    pub segments: Vec<PathBuf>,
}

/// Finds the renditions at `path`.
pub fn discover(path: &Path) -> Result<Vec<RenditionInput>, PackageError> {
    let meta = std::fs::metadata(path).map_err(PackageError::io(path))?;
    let renditions = if meta.is_dir() {
        discover_dir(path)?
    } else {
        let text = std::fs::read_to_string(path).map_err(PackageError::io(path))?;
        if dash::looks_like_mpd(path, &text) {
            dash::discover_mpd(path, &text)?
        } else if !text.trim_start().starts_with("#EXTM3U") {
            return Err(input_error(
                path,
                "not an HLS playlist (no #EXTM3U), a DASH MPD nor a directory",
            ));
        } else if text.contains("#EXT-X-STREAM-INF") || text.contains("#EXT-X-MEDIA:") {
            let mut out: Vec<(PathBuf, RenditionInput)> = Vec::new();
            for uri in multivariant_uris(&text) {
                let media = resolve(path, &uri);
                if out.iter().any(|(seen, _)| *seen == media) {
                    continue;
                }
                let text = std::fs::read_to_string(&media).map_err(PackageError::io(&media))?;
                let rendition = media_playlist(&media, &text)?;
                out.push((media, rendition));
            }
            out.into_iter().map(|(_, r)| r).collect()
        } else {
            vec![media_playlist(path, &text)?]
        }
    };
    if renditions.is_empty() {
        return Err(input_error(path, "no renditions found"));
    }
    let mut names: Vec<&str> = renditions.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(input_error(path, "two renditions have the same name"));
    }
    Ok(renditions)
}

fn input_error(path: &Path, message: impl Into<String>) -> PackageError {
    PackageError::Input {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn resolve(playlist: &Path, uri: &str) -> PathBuf {
    playlist.parent().unwrap_or(Path::new(".")).join(uri)
}

/// Media playlist URIs of a multivariant playlist, in order.
fn multivariant_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    let mut expect_uri = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#EXT-X-STREAM-INF") {
            expect_uri = true;
        } else if line.starts_with("#EXT-X-MEDIA:") {
            if let Some(uri) = attribute(line, "URI") {
                uris.push(uri);
            }
        } else if expect_uri && !line.is_empty() && !line.starts_with('#') {
            uris.push(line.to_owned());
            expect_uri = false;
        }
    }
    uris
}

/// A quoted or plain attribute of an HLS tag.
fn attribute(line: &str, name: &str) -> Option<String> {
    let attrs = line.split_once(':')?.1;
    let key = format!("{name}=");
    let mut rest = attrs;
    while !rest.is_empty() {
        let next = if let Some(stripped) = rest.strip_prefix(&key) {
            let value = if let Some(q) = stripped.strip_prefix('"') {
                q.split('"').next().unwrap_or_default()
            } else {
                stripped.split(',').next().unwrap_or_default()
            };
            return Some(value.to_owned());
        } else {
            // Skip to the next attribute, honouring quotes.
            let mut in_quotes = false;
            let mut cut = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '"' => in_quotes = !in_quotes,
                    ',' if !in_quotes => {
                        cut = i;
                        break;
                    }
                    _ => {}
                }
            }
            rest.get(cut + 1..).unwrap_or("")
        };
        rest = next;
    }
    None
}

fn media_playlist(path: &Path, text: &str) -> Result<RenditionInput, PackageError> {
    let mut init = None;
    let mut segments = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("#EXT-X-MAP") {
            if init.is_some() {
                return Err(input_error(
                    path,
                    "several EXT-X-MAP tags are not supported",
                ));
            }
            let uri =
                attribute(line, "URI").ok_or_else(|| input_error(path, "EXT-X-MAP without URI"))?;
            init = Some(resolve(path, &uri));
        } else if line.starts_with("#EXT-X-KEY") && !line.contains("METHOD=NONE") {
            // Protected input: segments are passed through or refused later,
            // the playlist itself is still readable.
        } else if !line.is_empty() && !line.starts_with('#') {
            segments.push(resolve(path, line));
        }
    }
    let init = init.ok_or_else(|| {
        input_error(
            path,
            "missing init segment (no EXT-X-MAP): only fragmented MP4 is supported",
        )
    })?;
    if segments.is_empty() {
        return Err(input_error(path, "playlist lists no segments"));
    }
    Ok(RenditionInput {
        name: rendition_name(path),
        init,
        segments,
    })
}

/// The directory of a media playlist names its rendition (`video_720p/media.m3u8`
/// → `video_720p`), else the playlist's stem.
fn rendition_name(playlist: &Path) -> String {
    let dir = playlist
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    let stem = playlist
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("rendition");
    let name = match dir {
        Some(d) if matches!(stem, "media" | "index" | "playlist" | "prog_index") => d,
        _ => stem,
    };
    sanitize(name)
}

/// Names become directory names: keep `[A-Za-z0-9._-]`.
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("r{s}")
    } else {
        s
    }
}

fn discover_dir(dir: &Path) -> Result<Vec<RenditionInput>, PackageError> {
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(PackageError::io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    let mut out = Vec::new();
    for sub in subdirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)
            .map_err(PackageError::io(&sub))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        let is_media = |p: &PathBuf| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("m4s" | "mp4" | "cmfv" | "cmfa" | "m4v" | "m4a")
            )
        };
        files.retain(is_media);
        if files.is_empty() {
            continue;
        }
        let init_pos = files.iter().position(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.starts_with("init"))
        });
        let Some(init_pos) = init_pos else {
            return Err(input_error(&sub, "missing init segment (no init.* file)"));
        };
        let init = files.remove(init_pos);
        files.sort_by_key(|p| segment_number(p));
        out.push(RenditionInput {
            name: sanitize(
                sub.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("rendition"),
            ),
            init,
            segments: files,
        });
    }
    Ok(out)
}

/// The last run of digits in a file name, for natural ordering.
pub fn segment_number(path: &Path) -> (u64, String) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let digits: String = stem
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_owned();
    (digits.parse().unwrap_or(u64::MAX), name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes() {
        let l = r#"#EXT-X-MEDIA:TYPE=AUDIO,NAME="a,b",URI="audio/media.m3u8""#;
        assert_eq!(attribute(l, "URI").as_deref(), Some("audio/media.m3u8"));
        assert_eq!(attribute(l, "TYPE").as_deref(), Some("AUDIO"));
        assert_eq!(attribute(l, "X"), None);
    }

    #[test]
    fn natural_order() {
        let mut v = [PathBuf::from("seg_10.m4s"), PathBuf::from("seg_9.m4s")];
        v.sort_by_key(|p| segment_number(p));
        assert_eq!(v[0], PathBuf::from("seg_9.m4s"));
    }
}
