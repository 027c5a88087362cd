//! DASH input: an MPD of clear CMAF packages exactly like the same media
//! given as HLS, and bad MPDs are refused with an error naming the file.
//!
//! The MPDs are written here, in a temporary directory, and point to the
//! committed sample's files (an HLS presentation) through a `file:` BaseURL:
//! no more media is committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use edge_seed::keysource::LocalKeySource;
use edge_seed::{PackageError, PackageSummary, package};
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::manifest::Scheme;

/// The sample directory as a `file:` URL ending in `/`.
fn sample_url() -> String {
    url::Url::from_directory_path(sample_dir().canonicalize().unwrap())
        .unwrap()
        .to_string()
}

fn write_mpd(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn run(input: &Path, out: &Path) -> Result<PackageSummary, PackageError> {
    package(
        input,
        out,
        &options(Scheme::Cenc),
        &LocalKeySource::new(SECRET),
        &SigningKeyPair::generate().unwrap(),
        &mut |_| {},
    )
}

/// Every init and media segment of `a` and `b` is byte-identical, rendition
/// by rendition (matched by name), and the summaries agree.
fn assert_same_output(a: &PackageSummary, b: &PackageSummary) {
    let sorted = |s: &PackageSummary| {
        let mut r = s.renditions.clone();
        r.sort_by(|x, y| x.name.cmp(&y.name));
        r
    };
    let (ra, rb) = (sorted(a), sorted(b));
    assert_eq!(ra, rb, "summaries differ");
    for r in &ra {
        let files = std::iter::once("init.mp4".to_owned())
            .chain(r.segments.iter().map(|s| s.file_name.clone()))
            .chain(std::iter::once("media.m3u8".to_owned()));
        for f in files {
            let x = std::fs::read(a.output.join(&r.name).join(&f)).unwrap();
            let y = std::fs::read(b.output.join(&r.name).join(&f)).unwrap();
            assert!(x == y, "{}/{f} differs", r.name);
        }
    }
}

/// Packaged from the sample's master playlist: the reference.
fn reference(dir: &Path) -> PackageSummary {
    run(&sample_dir().join("master.m3u8"), &dir.join("from_hls")).unwrap()
}

/// A SegmentTimeline of a packaged rendition's segment durations.
fn timeline(summary: &PackageSummary, name: &str) -> String {
    let r = summary.renditions.iter().find(|r| r.name == name).unwrap();
    let mut s = format!("<SegmentTimeline><S t=\"{}\" ", r.base_decode_time);
    let mut first = true;
    for seg in &r.segments {
        if first {
            s.push_str(&format!("d=\"{}\"/>", seg.duration_ticks));
            first = false;
        } else {
            s.push_str(&format!("<S d=\"{}\"/>", seg.duration_ticks));
        }
    }
    s.push_str("</SegmentTimeline>");
    s
}

#[test]
fn number_template_and_segment_list_package_like_the_hls_input() {
    let dir = tempfile::tempdir().unwrap();
    let hls = reference(dir.path());
    let audio_urls: String = (0..11)
        .map(|i| format!("<SegmentURL media=\"seg_{i:05}.m4s\"/>"))
        .collect();
    // Video: one number-based template at AdaptationSet level (count from
    // @duration and the presentation duration). Audio: a SegmentList with a
    // BaseURL per Representation. Namespaced ContentProtection-free
    // extensions are ignored.
    let mpd = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:cenc="urn:mpeg:cenc:2013" type="static"
     profiles="urn:mpeg:dash:profile:isoff-live:2011" mediaPresentationDuration="PT20.000S" minBufferTime="PT2S">
  <BaseURL>{base}</BaseURL>
  <Period id="p0">
    <AdaptationSet id="1" contentType="video" mimeType="video/mp4" segmentAlignment="true">
      <SegmentTemplate timescale="1000" duration="2000" startNumber="0"
                       initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg_$Number%05d$.m4s"/>
      <Representation id="video_360p" bandwidth="420000" codecs="avc1.4d401e" width="640" height="360"/>
      <Representation id="video_720p" bandwidth="850000" codecs="avc1.4d401f" width="1280" height="720"/>
    </AdaptationSet>
    <AdaptationSet id="2" contentType="audio" mimeType="audio/mp4" lang="en">
      <Representation id="audio" bandwidth="64000" codecs="mp4a.40.2">
        <BaseURL>audio/</BaseURL>
        <SegmentList>
          <Initialization sourceURL="init.mp4"/>
          {audio_urls}
        </SegmentList>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#,
        base = sample_url()
    );
    let input = write_mpd(dir.path(), "manifest.mpd", &mpd);
    let dash = run(&input, &dir.path().join("from_dash")).unwrap();
    assert_eq!(dash.renditions.len(), 3);
    assert_eq!(dash.segments(), 31);
    assert_same_output(&hls, &dash);
}

#[test]
fn timeline_template_with_relative_base_urls_packages_like_the_hls_input() {
    let dir = tempfile::tempdir().unwrap();
    let hls = reference(dir.path());
    // A copy of the sample beside the MPD so relative URLs are exercised;
    // $Time$ addressing is served by links named by decode time.
    let media = dir.path().join("media");
    for (name, _) in RENDITIONS {
        std::fs::create_dir_all(media.join(name)).unwrap();
        std::fs::copy(
            sample_dir().join(name).join("init.mp4"),
            media.join(name).join("init.mp4"),
        )
        .unwrap();
        let r = hls.renditions.iter().find(|r| r.name == name).unwrap();
        let mut t = r.base_decode_time;
        for (i, s) in r.segments.iter().enumerate() {
            std::fs::copy(
                sample_dir().join(name).join(format!("seg_{i:05}.m4s")),
                media.join(name).join(format!("t{t}.m4s")),
            )
            .unwrap();
            t += s.duration_ticks;
        }
    }
    let timescale = |name: &str| {
        hls.renditions
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .timescale
    };
    let mpd = format!(
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT20S">
  <Period>
    <BaseURL>media/</BaseURL>
    <SegmentTemplate initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/t$Time$.m4s"/>
    <AdaptationSet contentType="video">
      <Representation id="video_360p" bandwidth="1"><SegmentTemplate timescale="{ts360}">{tl360}</SegmentTemplate></Representation>
      <Representation id="video_720p" bandwidth="1"><SegmentTemplate timescale="{ts720}">{tl720}</SegmentTemplate></Representation>
    </AdaptationSet>
    <AdaptationSet contentType="audio">
      <SegmentTemplate timescale="{tsa}">{tla}</SegmentTemplate>
      <Representation id="audio" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>"#,
        ts360 = timescale("video_360p"),
        ts720 = timescale("video_720p"),
        tsa = timescale("audio"),
        tl360 = timeline(&hls, "video_360p"),
        tl720 = timeline(&hls, "video_720p"),
        tla = timeline(&hls, "audio"),
    );
    let input = write_mpd(dir.path(), "timeline.mpd", &mpd);
    let dash = run(&input, &dir.path().join("from_dash")).unwrap();
    assert_same_output(&hls, &dash);
}

/// Runs a bad MPD: the error is an input error naming `expect_path`, its
/// text contains `expect`, and nothing is published.
fn refused(body: &str, expect_path: Option<&str>, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = write_mpd(dir.path(), "bad.mpd", body);
    let out = dir.path().join("out");
    let err = run(&input, &out).unwrap_err();
    let text = err.to_string();
    eprintln!("refused: {text}");
    match &err {
        PackageError::Input { path, .. } => match expect_path {
            None => assert_eq!(path, &input, "{text}"),
            Some(file) => assert!(path.ends_with(file), "{text}"),
        },
        other => panic!("unexpected error kind: {other:?}"),
    }
    assert!(text.contains(expect), "{text:?} lacks {expect:?}");
    assert!(!out.exists(), "output published");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["bad.mpd".to_owned()], "left behind: {left:?}");
}

fn video_only(template: &str) -> String {
    format!(
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT20S">
  <BaseURL>{}</BaseURL>
  <Period><AdaptationSet contentType="video">{template}
    <Representation id="video_360p" bandwidth="420000"/>
  </AdaptationSet></Period>
</MPD>"#,
        sample_url()
    )
}

#[test]
fn malformed_xml_is_refused_naming_the_mpd() {
    refused(
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><Period><AdaptationSet></Period></MPD>"#,
        None,
        "malformed MPD",
    );
    // A number that is not one.
    refused(
        &video_only(
            r#"<SegmentTemplate duration="two" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg_$Number%05d$.m4s"/>"#,
        ),
        None,
        "malformed MPD",
    );
}

#[test]
fn missing_init_is_refused_naming_the_mpd() {
    refused(
        &video_only(
            r#"<SegmentTemplate duration="2" startNumber="0" media="$RepresentationID$/seg_$Number%05d$.m4s"/>"#,
        ),
        None,
        "missing init segment",
    );
    refused(
        &video_only(r#"<SegmentList><SegmentURL media="video_360p/seg_00000.m4s"/></SegmentList>"#),
        None,
        "missing init segment",
    );
}

#[test]
fn template_pointing_to_missing_files_names_the_missing_file() {
    // startNumber defaults to 1: the tenth segment, seg_00010.m4s, is not there.
    refused(
        &video_only(
            r#"<SegmentTemplate duration="2" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg_$Number%05d$.m4s"/>"#,
        ),
        Some("video_360p/seg_00010.m4s"),
        "bad.mpd",
    );
    // An init segment of another name.
    refused(
        &video_only(
            r#"<SegmentTemplate duration="2" startNumber="0" initialization="$RepresentationID$/init.m4s" media="$RepresentationID$/seg_$Number%05d$.m4s"/>"#,
        ),
        Some("video_360p/init.m4s"),
        "missing",
    );
}

#[test]
fn byte_range_addressing_is_refused() {
    refused(
        &video_only(
            r#"<SegmentBase indexRange="840-1000"><Initialization range="0-839"/></SegmentBase>"#,
        ),
        None,
        "SegmentBase (one file addressed by byte ranges) is not supported",
    );
    refused(
        &video_only(
            r#"<SegmentList><Initialization sourceURL="video_360p/init.mp4"/><SegmentURL media="video_360p/seg_00000.m4s" mediaRange="0-100"/></SegmentList>"#,
        ),
        None,
        "mediaRange",
    );
    refused(
        &video_only(
            r#"<SegmentTemplate duration="2" startNumber="0" media="$RepresentationID$/seg_$Number%05d$.m4s"><Initialization sourceURL="video_360p/init.mp4" range="0-839"/></SegmentTemplate>"#,
        ),
        None,
        "Initialization@range",
    );
    // No addressing at all: one file per representation.
    refused(&video_only(""), None, "single-file representation");
}

#[test]
fn unsupported_presentations_are_refused() {
    refused(
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"><Period/></MPD>"#,
        None,
        "dynamic (live) MPD",
    );
    refused(
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period/><Period/></MPD>"#,
        None,
        "2 Periods",
    );
    refused(
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><BaseURL>https://cdn.invalid/</BaseURL><Period/></MPD>"#,
        None,
        "not a local file",
    );
    refused(
        &video_only(
            r#"<SegmentTemplate duration="2" startNumber="0" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$SubNumber$.m4s"/>"#,
        ),
        None,
        "$SubNumber$ is not supported",
    );
}
