//! Live mode: segments packaged as they appear, signed appends that verify
//! as a chain, sliding-window playlists, out-of-order and duplicate segments
//! refused, partially written segments retried.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::Path;

use common::*;
use edge_seed::keysource::LocalKeySource;
use edge_seed::live::{LiveEvent, LivePackager};
use edge_seed::package::{MANIFEST_FILE, read_manifest_frames};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::{Manifest, Scheme};

fn copy_segment(input: &Path, rendition: &str, n: u32) {
    let name = format!("seg_{n:05}.m4s");
    std::fs::copy(
        sample_dir().join(rendition).join(&name),
        input.join(rendition).join(&name),
    )
    .unwrap();
}

fn packaged(events: &[LiveEvent]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            LiveEvent::Packaged {
                rendition,
                sequence,
            } => Some((rendition.clone(), *sequence)),
            _ => None,
        })
        .collect()
}

fn refused(events: &[LiveEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, LiveEvent::Refused { .. }))
        .count()
}

#[test]
fn live_packaging_appends_signed_chunks_and_slides_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    for r in ["video_360p", "audio"] {
        std::fs::create_dir_all(input.join(r)).unwrap();
    }
    let origin = SigningKeyPair::generate().unwrap();
    let keys = LocalKeySource::new(SECRET);
    let mut opts = options(Scheme::Cenc);
    opts.key_period_segments = 2;
    let mut live = LivePackager::new(&input, &out, opts, 3, &keys, &origin).unwrap();
    let t = UnixSeconds(1_900_000_000);

    // Nothing yet: no init segment.
    assert!(live.poll(t).unwrap().is_empty());
    for r in ["video_360p", "audio"] {
        std::fs::copy(
            sample_dir().join(r).join("init.mp4"),
            input.join(r).join("init.mp4"),
        )
        .unwrap();
    }
    let events = live.poll(t).unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, LiveEvent::Started { .. }))
            .count(),
        2
    );
    assert!(out.join("master.m3u8").is_file());

    for n in 0..5 {
        copy_segment(&input, "video_360p", n);
        copy_segment(&input, "audio", n);
        let events = live.poll(t).unwrap();
        assert_eq!(
            packaged(&events),
            vec![
                ("audio".to_owned(), u64::from(n)),
                ("video_360p".to_owned(), u64::from(n))
            ]
        );
    }
    assert_eq!(live.window("video_360p"), vec![2, 3, 4]);
    let playlist = std::fs::read_to_string(out.join("video_360p/media.m3u8")).unwrap();
    assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:2"), "{playlist}");
    assert!(!playlist.contains("#EXT-X-ENDLIST"));
    assert!(!playlist.contains("seg_00001.m4s"));
    assert!(playlist.contains("seg_00004.m4s"));

    // A duplicate of an old segment and a late one are refused, once.
    std::fs::copy(
        sample_dir().join("video_360p/seg_00001.m4s"),
        input.join("video_360p/seg_00001_again.m4s"),
    )
    .unwrap();
    copy_segment(&input, "video_360p", 6);
    let events = live.poll(t).unwrap();
    assert_eq!(packaged(&events), vec![("video_360p".to_owned(), 5)]);
    assert_eq!(refused(&events), 1, "{events:?}");
    copy_segment(&input, "video_360p", 5); // arrives after 6: out of order
    let events = live.poll(t).unwrap();
    assert!(packaged(&events).is_empty());
    assert_eq!(refused(&events), 1);
    assert_eq!(refused(&live.poll(t).unwrap()), 0, "refused once only");

    // A segment still being written is retried, not refused.
    let full = std::fs::read(sample_dir().join("video_360p/seg_00007.m4s")).unwrap();
    std::fs::write(
        input.join("video_360p/seg_00007.m4s"),
        &full[..full.len() / 3],
    )
    .unwrap();
    let events = live.poll(t).unwrap();
    assert!(
        packaged(&events).is_empty() && refused(&events) == 0,
        "{events:?}"
    );
    std::fs::write(input.join("video_360p/seg_00007.m4s"), &full).unwrap();
    assert_eq!(
        packaged(&live.poll(t).unwrap()),
        vec![("video_360p".to_owned(), 6)]
    );

    // A corrupt segment that stops growing is refused at the second look.
    std::fs::write(input.join("video_360p/seg_00008.m4s"), vec![0u8; 100]).unwrap();
    let events = live.poll(t).unwrap();
    assert!(
        packaged(&events).is_empty() && refused(&events) == 0,
        "{events:?}"
    );
    let events = live.poll(t).unwrap();
    assert_eq!(refused(&events), 1, "{events:?}");

    // The manifest verifies as one chain; every packaged segment matches,
    // with its key period (a new key every 2 segments).
    let mut keyring = Keyring::new();
    keyring.insert(origin.verifying_key());
    let frames =
        read_manifest_frames(&std::fs::read(out.join("video_360p").join(MANIFEST_FILE)).unwrap())
            .unwrap();
    assert_eq!(frames.len(), 7, "one chunk per segment");
    let m = Manifest::from_encoded_chunks(&keyring, frames.iter().map(Vec::as_slice)).unwrap();
    assert!(!m.is_final());
    for seq in 0..7u64 {
        let bytes = std::fs::read(out.join(format!("video_360p/seg_{seq:05}.m4s"))).unwrap();
        let entry = m.verify_segment(seq, &bytes).unwrap();
        assert_eq!(entry.key_period, (seq / 2) as u32);
        let frag = read_fragment(&bytes, 8);
        if seq >= 2 {
            assert_eq!(frag.seig_kid, Some(key("sd", (seq / 2) as u32).kid.0));
        }
    }
    // No temporary files left behind.
    for e in std::fs::read_dir(out.join("video_360p")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "{name}");
    }
}
