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

// ---- The live MPD ---------------------------------------------------------

/// The parts of an MPD the tests check, read with quick-xml's serde
/// deserializer (independent of the packager's text writer).
#[derive(Debug, serde::Deserialize)]
struct Mpd {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(rename = "@availabilityStartTime")]
    availability_start_time: Option<String>,
    #[serde(rename = "@publishTime")]
    publish_time: Option<String>,
    #[serde(rename = "@minimumUpdatePeriod")]
    minimum_update_period: Option<String>,
    #[serde(rename = "@timeShiftBufferDepth")]
    time_shift_buffer_depth: Option<String>,
    #[serde(rename = "@suggestedPresentationDelay")]
    suggested_presentation_delay: Option<String>,
    #[serde(rename = "@mediaPresentationDuration")]
    media_presentation_duration: Option<String>,
    #[serde(rename = "Period")]
    periods: Vec<Period>,
}

#[derive(Debug, serde::Deserialize)]
struct Period {
    #[serde(rename = "AdaptationSet", default)]
    sets: Vec<AdaptationSet>,
}

#[derive(Debug, serde::Deserialize)]
struct AdaptationSet {
    #[serde(rename = "ContentProtection", default)]
    protection: Vec<ContentProtection>,
    #[serde(rename = "Representation", default)]
    representations: Vec<Representation>,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct ContentProtection {
    #[serde(rename = "@schemeIdUri")]
    scheme: String,
    #[serde(rename = "@value")]
    value: Option<String>,
    #[serde(rename = "@default_KID")]
    default_kid: Option<String>,
    pssh: Option<String>,
    #[serde(rename = "Laurl")]
    laurl: Option<Text>,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Text {
    #[serde(rename = "$text")]
    text: String,
}

#[derive(Debug, serde::Deserialize)]
struct Representation {
    #[serde(rename = "@id")]
    id: String,
    #[serde(rename = "SegmentTemplate")]
    template: SegmentTemplate,
}

#[derive(Debug, serde::Deserialize)]
struct SegmentTemplate {
    #[serde(rename = "@startNumber")]
    start_number: u64,
    #[serde(rename = "@timescale")]
    timescale: u64,
    #[serde(rename = "@presentationTimeOffset")]
    presentation_time_offset: Option<u64>,
    #[serde(rename = "@media")]
    media: String,
    #[serde(rename = "SegmentTimeline")]
    timeline: SegmentTimeline,
}

#[derive(Debug, serde::Deserialize)]
struct SegmentTimeline {
    #[serde(rename = "S", default)]
    s: Vec<S>,
}

#[derive(Debug, serde::Deserialize)]
struct S {
    #[serde(rename = "@t")]
    t: Option<u64>,
    #[serde(rename = "@d")]
    d: u64,
    #[serde(rename = "@r")]
    r: Option<u64>,
}

/// Seconds of an `xs:duration` of the form the packager writes (`PT6.010S`).
fn seconds(duration: &str) -> f64 {
    duration
        .strip_prefix("PT")
        .and_then(|d| d.strip_suffix('S'))
        .unwrap_or_else(|| panic!("duration {duration}"))
        .parse()
        .unwrap()
}

fn read_mpd(path: &Path) -> (String, Mpd) {
    let text = std::fs::read_to_string(path).unwrap();
    let mpd: Mpd = quick_xml::de::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(mpd.periods.len(), 1, "{text}");
    (text, mpd)
}

impl Mpd {
    fn representation(&self, id: &str) -> &Representation {
        self.periods[0]
            .sets
            .iter()
            .flat_map(|s| &s.representations)
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no representation {id}"))
    }

    fn set_of(&self, id: &str) -> &AdaptationSet {
        self.periods[0]
            .sets
            .iter()
            .find(|s| s.representations.iter().any(|r| r.id == id))
            .unwrap_or_else(|| panic!("no adaptation set with {id}"))
    }
}

impl Representation {
    /// (segment number, start time) of every segment listed, expanding
    /// `r` repeats and carrying `t` forward as DASH does.
    fn segments(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut number = self.template.start_number;
        let mut t = 0;
        for s in &self.template.timeline.s {
            t = s.t.unwrap_or(t);
            for _ in 0..=s.r.unwrap_or(0) {
                out.push((number, t));
                number += 1;
                t += s.d;
            }
        }
        out
    }
}

/// `tfdt` of a clear sample segment.
fn sample_decode_time(rendition: &str, n: u64) -> u64 {
    let bytes =
        std::fs::read(sample_dir().join(rendition).join(format!("seg_{n:05}.m4s"))).unwrap();
    let boxes = edge_seed::boxes::parse_boxes(&bytes, 0).unwrap();
    let moof = edge_seed::boxes::find(&boxes, b"moof").unwrap();
    let traf = *edge_seed::boxes::find(&kids(moof), b"traf").unwrap();
    let tfdt = *edge_seed::boxes::find(&kids(&traf), b"tfdt").unwrap();
    let body = tfdt.body();
    if body[0] == 1 {
        u64::from_be_bytes(body[4..12].try_into().unwrap())
    } else {
        u64::from(be32(&body[4..8]))
    }
}

#[test]
fn live_mpd_is_dynamic_over_the_window_then_static_with_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    let renditions = ["audio", "video_360p"];
    for r in renditions {
        std::fs::create_dir_all(input.join(r)).unwrap();
        std::fs::copy(
            sample_dir().join(r).join("init.mp4"),
            input.join(r).join("init.mp4"),
        )
        .unwrap();
    }
    let origin = SigningKeyPair::generate().unwrap();
    let keys = LocalKeySource::new(SECRET);
    let opts = options(Scheme::Cenc);
    let mut live = LivePackager::new(&input, &out, opts.clone(), 3, &keys, &origin).unwrap();
    let mpd_path = out.join("manifest.mpd");
    let t0 = 1_900_000_000u64;

    // Renditions started, nothing packaged: no MPD yet.
    live.poll(UnixSeconds(t0)).unwrap();
    assert!(!mpd_path.exists());

    // The protection signalling is the VOD MPD's for the same keys.
    let vod = package_sample(&opts);
    let (_, vod_mpd) = read_mpd(&vod.out.join("manifest.mpd"));
    let vod_protection = &vod_mpd.set_of("video_360p").protection;
    assert_eq!(vod_protection.len(), 3, "{vod_protection:?}");
    assert_eq!(
        vod_protection[0].default_kid.as_deref(),
        Some(edge_seed::playlist::kid_uuid(&key("sd", 0).kid.0).as_str())
    );
    assert!(vod_protection[1].pssh.is_some() && vod_protection[2].laurl.is_some());

    let mut availability_start = None;
    let mut last_publish = String::new();
    for n in 0..6u64 {
        let now = t0 + 2 * n;
        for r in renditions {
            copy_segment(&input, r, n as u32);
        }
        assert_eq!(packaged(&live.poll(UnixSeconds(now)).unwrap()).len(), 2);
        let (text, mpd) = read_mpd(&mpd_path);
        assert_eq!(mpd.kind, "dynamic", "{text}");
        assert!(mpd.media_presentation_duration.is_none(), "{text}");
        // Fixed by the first poll: presentation time 0 (both tracks start
        // at tfdt 0) became available so that the newest segment (audio,
        // 2.005 s) was available at that poll.
        let ast = mpd.availability_start_time.clone().unwrap();
        assert_eq!(
            *availability_start.get_or_insert_with(|| ast.clone()),
            ast,
            "availabilityStartTime moved"
        );
        assert_eq!(ast, "2030-03-17T17:46:37.995Z");
        let publish = mpd.publish_time.clone().unwrap();
        assert!(publish > last_publish, "{publish} after {last_publish}");
        last_publish = publish;
        assert_eq!(mpd.minimum_update_period.as_deref(), Some("PT2.005S"));
        let window_len = (n + 1).min(3);
        assert!(mpd.suggested_presentation_delay.is_some(), "{text}");
        let depth = seconds(mpd.time_shift_buffer_depth.as_deref().unwrap());
        assert!(
            (depth - 2.0 * window_len as f64).abs() < 0.05,
            "timeShiftBufferDepth {depth} for {window_len} segments of 2 s"
        );
        for r in renditions {
            let rep = mpd.representation(r);
            let listed = rep.segments();
            assert_eq!(
                listed.iter().map(|s| s.0).collect::<Vec<_>>(),
                live.window(r),
                "{r}: {text}"
            );
            for (number, t) in listed {
                assert_eq!(t, sample_decode_time(r, number), "{r} {number}");
            }
            assert_eq!(rep.template.media, format!("{r}/seg_$Number%05d$.m4s"));
            assert_eq!(rep.template.presentation_time_offset, None);
            assert_eq!(
                mpd.set_of(r).protection,
                vod_mpd.set_of(r).protection,
                "{r}: ContentProtection differs from VOD"
            );
        }
    }
    assert_eq!(live.window("video_360p"), vec![3, 4, 5]);

    // A poll that only refused a segment leaves the MPD as it was.
    let before = std::fs::read(&mpd_path).unwrap();
    std::fs::copy(
        sample_dir().join("video_360p/seg_00002.m4s"),
        input.join("video_360p/seg_00002_again.m4s"),
    )
    .unwrap();
    let events = live.poll(UnixSeconds(t0 + 100)).unwrap();
    assert_eq!(refused(&events), 1, "{events:?}");
    assert_eq!(std::fs::read(&mpd_path).unwrap(), before);

    // After the event: static, every segment from 0, whole duration.
    live.finish(UnixSeconds(t0 + 101)).unwrap();
    let (text, mpd) = read_mpd(&mpd_path);
    assert_eq!(mpd.kind, "static", "{text}");
    assert!(mpd.minimum_update_period.is_none(), "{text}");
    assert!(mpd.availability_start_time.is_none(), "{text}");
    // Audio's six segments end at 12.010 s, after video's 12 s.
    assert_eq!(
        mpd.media_presentation_duration.as_deref(),
        Some("PT12.010S")
    );
    for r in renditions {
        let rep = mpd.representation(r);
        let listed = rep.segments();
        assert_eq!(
            listed.iter().map(|s| s.0).collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
        for (number, t) in listed {
            assert_eq!(t, sample_decode_time(r, number), "{r} {number}");
            assert!(out.join(r).join(format!("seg_{number:05}.m4s")).is_file());
        }
        assert!(rep.template.timescale > 0);
    }
    // The temporary MPD was renamed, not left behind.
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "{name}");
    }
}
