//! The DASH input of the packager (`edge_seed::input::parse_mpd`) refuses
//! or reads any text, never a panic, a hang or an unbounded allocation;
//! what it reads is a list of renditions with directory-safe names, an init
//! segment and at least one media segment each, all local absolute paths,
//! within the bounds of one presentation.
#![no_main]

use std::path::Path;

use edge_seed::input::parse_mpd;
use libfuzzer_sys::fuzz_target;

/// Paths (init and media segments) and their bytes in one MPD, all
/// renditions together, as `parse_mpd` bounds them.
const MAX_PATHS: usize = 1_000_000;
const MAX_PATH_BYTES: usize = 256 << 20;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mpd = Path::new("/fuzz/presentation/manifest.mpd");
    let Ok(renditions) = parse_mpd(mpd, &text) else {
        return;
    };
    let (mut paths, mut bytes) = (0, 0);
    for r in &renditions {
        assert!(
            !r.name.is_empty() && !r.name.starts_with('.'),
            "{:?}",
            r.name
        );
        assert!(
            r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "{:?}",
            r.name
        );
        assert!(!r.segments.is_empty());
        for path in std::iter::once(&r.init).chain(&r.segments) {
            assert!(path.is_absolute(), "{}", path.display());
            paths += 1;
            bytes += path.as_os_str().len();
        }
    }
    assert!(
        paths <= MAX_PATHS && bytes <= MAX_PATH_BYTES,
        "{paths} paths, {bytes} bytes"
    );
});
