//! What the client SDK reads of the origin's playlists and MPDs (fetched
//! from the CDN, so not trusted; the `fuzzing` feature of `client-sdk`):
//! the multivariant playlist's renditions, the key tags of a media playlist
//! by key period, segment file names, and the decrypt option's removal of
//! key tags and `ContentProtection`. Never a panic; renditions are valid,
//! distinct and named by the text; key tag groups are the text's own
//! `EXT-X-KEY` lines, at most one per key period; a parsed segment name
//! writes back to itself; a playlist stripped of key tags has none left and
//! keeps its other lines in order; an MPD never grows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loaves_client_sdk::fuzzing::{
    key_tags_by_period, parse_segment_file, rendition_names, without_content_protection,
    without_hls_keys,
};

const KEY_TAG: &str = "#EXT-X-KEY:";

fn is_key_tag(line: &str) -> bool {
    let tag = line.trim_start();
    tag.starts_with(KEY_TAG) || tag.starts_with("#EXT-X-SESSION-KEY:")
}

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();

    if let Ok(names) = rendition_names(data) {
        let text = text.expect("names come from UTF-8 text");
        assert!(!names.is_empty());
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        for name in &names {
            assert!(text.contains(&format!("{}/media.m3u8", name.as_str())));
        }
    }

    // Four key periods, segments 0..1000 only (as a manifest would list).
    let period_of = |sequence: u64| (sequence < 1000).then_some((sequence % 4) as u32);
    let (any, groups) = key_tags_by_period(data, period_of);
    let lines: Vec<&str> = text.map_or(Vec::new(), |t| t.lines().map(str::trim).collect());
    assert_eq!(any, lines.iter().any(|l| l.starts_with(KEY_TAG)));
    assert!(groups.len() <= 4);
    assert!(groups.windows(2).all(|w| w[0].0 < w[1].0));
    for (_, group) in &groups {
        assert!(group.len() <= data.len());
        for tag in group.split('\n') {
            assert!(tag.starts_with(KEY_TAG) && lines.contains(&tag), "{tag:?}");
        }
    }

    if let Some(text) = text {
        for line in text.lines().take(64) {
            if let Some(sequence) = parse_segment_file(line) {
                let digits = &line["seg_".len()..line.len() - ".m4s".len()];
                assert_eq!(
                    format!("seg_{sequence:0>width$}.m4s", width = digits.len()),
                    line
                );
            }
        }
    }

    let stripped = without_hls_keys(data);
    match text {
        None => assert_eq!(&stripped[..], data),
        Some(text) => {
            let out = std::str::from_utf8(&stripped).expect("UTF-8 in, UTF-8 out");
            assert!(!out.lines().any(is_key_tag));
            // Every other line, in order, each ended by a newline.
            let kept: String = text
                .lines()
                .filter(|l| !is_key_tag(l))
                .flat_map(|l| [l, "\n"])
                .collect();
            assert_eq!(out, kept);
        }
    }

    let mpd = without_content_protection(data);
    assert!(mpd.len() <= data.len() + 1);
    if text.is_some() {
        assert!(std::str::from_utf8(&mpd).is_ok());
    } else {
        assert_eq!(&mpd[..], data);
    }
});
