#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live, end to end over 127.0.0.1: edge-seed's live packager (keys from
//! the real license server) is fed the committed sample's clear segments
//! one by one at segment cadence (compressed time), its output is served by
//! an HTTP origin, and SDK viewers follow the live edge through their local
//! player endpoints, with the real tracker and each other as peers. A
//! tampered manifest append is refused and its segment never delivered.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::{Stack, TITLE, serve_live_origin, stack};
use edge_seed::PackageOptions;
use edge_seed::live::{LiveEvent, LivePackager};
use edge_seed::package::read_manifest_frames;
use loaves_client_sdk::player::{self, PlaybackReport};
use loaves_client_sdk::scheduler::Source;
use loaves_client_sdk::{Event, Events, LoavesBuilder, Session};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::manifest::{Scheme, sha256};
use loaves_proto::pb;
use loaves_proto::signed::{self, Purpose};
use loaves_testkit::wait::eventually;
use prost::Message;
use tokio::sync::oneshot;

const VIDEO: &str = "video_360p";
/// Media time per wall time: 2 s segments arrive every second.
const SPEED: f64 = 2.0;
/// Wall time between two packaged segments.
const CADENCE: Duration = Duration::from_millis(1000);
/// Segments in the committed sample (fed again in a loop).
const SAMPLE_SEGMENTS: u64 = 10;

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-seed/testdata/sample")
}

enum Command {
    /// Copy the next segment of every rendition into the input and poll.
    Next,
    /// Close the event (final chunks, `EXT-X-ENDLIST`).
    Finish,
}

/// The live packager on a thread of its own (its key source blocks),
/// driven segment by segment from the test.
struct LiveFeed {
    tx: std::sync::mpsc::SyncSender<(Command, oneshot::Sender<Vec<u64>>)>,
}

impl LiveFeed {
    /// Starts packaging `renditions` of the sample from the encoder
    /// directory `input` into `out` (which must not exist), with their init
    /// segments in place.
    fn start(stack: &Stack, input: PathBuf, out: PathBuf, renditions: &[&str]) -> Self {
        let keys = stack.packager_keys();
        let origin_seed = *stack.origin_key.seed();
        let renditions: Vec<String> = renditions.iter().map(|r| (*r).to_owned()).collect();
        for r in &renditions {
            std::fs::create_dir_all(input.join(r)).unwrap();
            std::fs::copy(
                sample_dir().join(r).join("init.mp4"),
                input.join(r).join("init.mp4"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Command, oneshot::Sender<Vec<u64>>)>(4);
        std::thread::spawn(move || {
            let origin = SigningKeyPair::from_seed(&origin_seed);
            let options = PackageOptions {
                title: TITLE.into(),
                scheme: Scheme::Cenc,
                ..PackageOptions::default()
            };
            let mut live = LivePackager::new(&input, &out, options, 6, &keys, &origin).unwrap();
            let started = live.poll(UnixSeconds::now()).unwrap();
            assert_eq!(started.len(), renditions.len(), "{started:?}");
            let mut next = 0u64;
            // Ends when the test drops its sender.
            while let Ok((command, reply)) = rx.recv() {
                match command {
                    Command::Next => {
                        let name = format!("seg_{next:05}.m4s");
                        let source = format!("seg_{:05}.m4s", next % SAMPLE_SEGMENTS);
                        for r in &renditions {
                            std::fs::copy(
                                sample_dir().join(r).join(&source),
                                input.join(r).join(&name),
                            )
                            .unwrap();
                        }
                        let packaged: Vec<u64> = live
                            .poll(UnixSeconds::now())
                            .unwrap()
                            .into_iter()
                            .map(|event| match event {
                                LiveEvent::Packaged { sequence, .. } => sequence,
                                other => panic!("unexpected {other:?}"),
                            })
                            .collect();
                        assert_eq!(packaged, vec![next; renditions.len()]);
                        next += 1;
                        let _ = reply.send(packaged);
                    }
                    Command::Finish => {
                        live.finish(UnixSeconds::now()).unwrap();
                        let _ = reply.send(Vec::new());
                    }
                }
            }
        });
        Self { tx }
    }

    async fn command(&self, command: Command) -> Vec<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((command, reply)).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the packager answers in time")
            .unwrap()
    }

    /// Packages the next segment; returns its sequence.
    async fn next(&self) -> u64 {
        self.command(Command::Next).await[0]
    }

    async fn finish(&self) {
        self.command(Command::Finish).await;
    }
}

fn live_options(stack: &Stack, origin: std::net::SocketAddr, p2p: bool) -> LoavesBuilder {
    stack
        .options(p2p)
        .cdn_urls([format!("http://{origin}/")])
        .playback_speed(SPEED)
}

fn drain(events: &mut Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_next()).collect()
}

/// Every object the player got is the packaged object (init, then
/// `first_sequence` onwards).
fn assert_exact(out: &Path, report: &PlaybackReport) {
    let dir = out.join(report.rendition.as_str());
    let init = std::fs::read(dir.join("init.mp4")).unwrap();
    assert_eq!(report.sha256[0], sha256(&init), "init differs");
    for (i, digest) in report.sha256.iter().enumerate().skip(1) {
        let sequence = report.first_sequence + i as u64 - 1;
        let bytes = std::fs::read(dir.join(format!("seg_{sequence:05}.m4s"))).unwrap();
        assert_eq!(*digest, sha256(&bytes), "segment {sequence} differs");
    }
}

async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The segment sequences a media playlist lists.
fn listed(playlist: &str) -> Vec<u64> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("seg_")?.strip_suffix(".m4s")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_follow_the_live_edge_and_share_segments() {
    const TOTAL: u64 = 16;
    let stack = stack(true).await;
    let root = stack.dir.path().join("live-cdn");
    let out = root.join(TITLE);
    let origin = serve_live_origin(root.clone(), Arc::new(AtomicBool::new(false))).await;
    let input = stack.dir.path().join("encoder");
    let feed = LiveFeed::start(&stack, input, out.clone(), &["audio", VIDEO]);
    for _ in 0..4 {
        feed.next().await;
    }
    // The encoder keeps going at segment cadence, then ends the event.
    let producer = tokio::spawn(async move {
        for _ in 4..TOTAL {
            tokio::time::sleep(CADENCE).await;
            feed.next().await;
        }
        feed.finish().await;
    });

    let mut sessions = Vec::new();
    let mut plays = Vec::new();
    let mut joined_at = Vec::new();
    for i in 0..3 {
        if i > 0 {
            // Staggered joins: later viewers start further into the event.
            tokio::time::sleep(3 * CADENCE).await;
        }
        let session = Arc::new(
            stack
                .viewer(&format!("live-{i}"), live_options(&stack, origin, true))
                .await,
        );
        assert!(session.is_live(&common::r(VIDEO)));
        joined_at.push(session.live_edge(&common::r(VIDEO)).unwrap());
        let events = session.events();
        let s = session.clone();
        plays.push(tokio::spawn(async move {
            player::play_live(&s, &common::r(VIDEO), 4, Duration::MAX).await
        }));
        sessions.push((session, events));
    }

    // DASH players follow the live MPD through the endpoint: the
    // packager's current dynamic one, not the copy of the session's start.
    let mpd_url = format!("http://{}/manifest.mpd", sessions[0].0.player_addr());
    let (status, before) = http_get(&mpd_url).await;
    assert_eq!(status, 200);
    assert!(before.contains("type=\"dynamic\""), "{before}");
    let mut after = before.clone();
    for _ in 0..8 {
        tokio::time::sleep(CADENCE / 2).await;
        after = http_get(&mpd_url).await.1;
        if after != before {
            break;
        }
    }
    assert_ne!(
        after, before,
        "the endpoint's live MPD did not follow the event"
    );

    // While live: a sliding window of verified segments, no end.
    let playlist_url = format!("http://{}/{VIDEO}/media.m3u8", sessions[0].0.player_addr());
    let (status, playlist) = http_get(&playlist_url).await;
    assert_eq!(status, 200);
    assert!(!playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert!(
        playlist.contains("#EXT-X-MAP:URI=\"init.mp4\""),
        "{playlist}"
    );
    assert!(playlist.contains("#EXT-X-TARGETDURATION:2"), "{playlist}");
    assert!(playlist.contains("#EXT-X-KEY:"), "{playlist}");
    let window = listed(&playlist);
    let edge = sessions[0].0.live_edge(&common::r(VIDEO)).unwrap();
    assert!(window.len() >= 3 && window.len() <= 6, "{playlist}");
    assert!(
        playlist.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{}", window[0])),
        "{playlist}"
    );
    assert!(
        window[0] > 0 && *window.last().unwrap() <= edge,
        "{playlist}"
    );

    let mut reports = Vec::new();
    for play in plays {
        let report = tokio::time::timeout(Duration::from_secs(40), play)
            .await
            .expect("live playback ends with the event")
            .unwrap()
            .unwrap();
        reports.push(report);
    }
    producer.await.unwrap();

    let mut peer_bytes = 0;
    let mut from_peers = 0;
    for (i, report) in reports.iter().enumerate() {
        let (session, events) = &mut sessions[i];
        let stats = session.stats();
        eprintln!(
            "viewer {i}: first {} startup {:?} rebuffers {} {stats:?}",
            report.first_sequence, report.startup, report.rebuffers
        );
        assert_exact(&out, report);
        // Played from its start to the end of the event.
        assert_eq!(
            report.sha256.len() as u64 - 1,
            TOTAL - report.first_sequence,
            "viewer {i}"
        );
        if i > 0 {
            assert!(report.first_sequence > 0, "viewer {i} started at 0");
        }
        // Near the edge: the latency behind it when it joined.
        let edge = joined_at[i];
        assert!(
            report.first_sequence >= edge.saturating_sub(4) && report.first_sequence <= edge,
            "viewer {i} started at {} with the edge at {edge}",
            report.first_sequence
        );
        assert_eq!(stats.segments_rejected, 0);
        for event in drain(events) {
            match event {
                Event::SegmentRejected { .. } | Event::ManifestRejected { .. } => {
                    panic!("viewer {i}: {event:?}")
                }
                Event::SegmentDelivered {
                    source: Source::Peer(_),
                    ..
                } => from_peers += 1,
                _ => {}
            }
        }
        peer_bytes += stats.bytes_from_peers;
    }
    assert!(peer_bytes > 0 && from_peers > 0, "no segment from peers");

    // The event ended: the endpoint's playlist says so.
    let session = &sessions[0].0;
    eventually("the final chunk", Duration::from_secs(10), async || {
        !session.is_live(&common::r(VIDEO))
    })
    .await;
    assert_eq!(session.live_edge(&common::r(VIDEO)), Some(TOTAL - 1));
    let (_, playlist) = http_get(&playlist_url).await;
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert_eq!(listed(&playlist).last(), Some(&(TOTAL - 1)), "{playlist}");
    // And the MPD is the packager's final, static one.
    let (_, mpd) = http_get(&mpd_url).await;
    assert!(mpd.contains("type=\"static\""), "{mpd}");

    for (session, _) in sessions {
        Arc::try_unwrap(session).unwrap().close().await.unwrap();
    }
}

/// Copies the packaged files of `rendition` to the served directory, each
/// by rename so the origin never serves half a file.
fn publish(from: &Path, to: &Path, rendition: &str) {
    std::fs::create_dir_all(to.join(rendition)).unwrap();
    std::fs::copy(from.join("master.m3u8"), to.join("master.m3u8")).unwrap();
    for entry in std::fs::read_dir(from.join(rendition)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        put(
            &to.join(rendition).join(&name),
            &std::fs::read(entry.path()).unwrap(),
        );
    }
}

fn put(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-test");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn framed(chunks: &[Vec<u8>]) -> Vec<u8> {
    chunks
        .iter()
        .flat_map(|c| loaves_wire::framing::encode_frame(c, 1 << 20).unwrap())
        .collect()
}

/// Waits (bounded) for a `ManifestRejected` event of `rendition`.
async fn rejected(events: &mut Events) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Event::ManifestRejected { rendition, message })) => {
                assert_eq!(rendition, VIDEO);
                return message;
            }
            Ok(Some(Event::SegmentDelivered { sequence: 4, .. })) => {
                panic!("the tampered segment was delivered")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no ManifestRejected event"),
        }
    }
}

/// The SDK must not offer or deliver segment 4 while only a tampered
/// append lists it.
async fn assert_not_offered(session: &Session) {
    assert_eq!(session.live_edge(&common::r(VIDEO)), Some(3));
    assert!(session.is_live(&common::r(VIDEO)));
    assert!(session.segment(&common::r(VIDEO), 4).await.is_err());
    let base = format!("http://{}/{VIDEO}", session.player_addr());
    let (status, _) = http_get(&format!("{base}/seg_00004.m4s")).await;
    assert_eq!(status, 404);
    let (_, playlist) = http_get(&format!("{base}/media.m3u8")).await;
    assert!(!listed(&playlist).contains(&4), "{playlist}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_append_is_refused_and_its_segment_never_delivered() {
    let stack = stack(false).await;
    let packaged = stack.dir.path().join("pack").join(TITLE);
    let root = stack.dir.path().join("served");
    let served = root.join(TITLE);
    // This origin ignores Range: the SDK must cope with whole-file answers.
    let origin = serve_live_origin(root.clone(), Arc::new(AtomicBool::new(true))).await;
    let input = stack.dir.path().join("encoder");
    let feed = LiveFeed::start(&stack, input, packaged.clone(), &[VIDEO]);
    for _ in 0..4 {
        feed.next().await;
    }
    publish(&packaged, &served, VIDEO);
    let session = stack
        .viewer("tamper", live_options(&stack, origin, false))
        .await;
    let mut events = session.events();
    assert!(session.is_live(&common::r(VIDEO)));
    assert_eq!(session.live_edge(&common::r(VIDEO)), Some(3));
    assert_eq!(session.segment_range(&common::r(VIDEO)), Some(0..=3));

    // Segment 4 is packaged, but what is served is tampered.
    assert_eq!(feed.next().await, 4);
    let dir = packaged.join(VIDEO);
    let frames = read_manifest_frames(&std::fs::read(dir.join("manifest.lvm")).unwrap()).unwrap();
    assert_eq!(frames.len(), 5);
    let genuine_segment = std::fs::read(dir.join("seg_00004.m4s")).unwrap();
    let mut forged_segment = genuine_segment.clone();
    let middle = forged_segment.len() / 2;
    forged_segment[middle] ^= 0x5a;

    // 1. An append that lists the forged segment, signed by another key.
    let envelope = pb::Signed::decode(frames[4].as_slice()).unwrap();
    let mut body = pb::ManifestChunkBody::decode(envelope.body.as_slice()).unwrap();
    body.segments[0].sha256 = sha256(&forged_segment).to_vec();
    let rogue = SigningKeyPair::generate().unwrap();
    let forged_chunk =
        signed::sign(&rogue, Purpose::ManifestChunk, body.encode_to_vec()).encode_to_vec();
    let mut chunks = frames[..4].to_vec();
    chunks.push(forged_chunk);
    put(&served.join(VIDEO).join("seg_00004.m4s"), &forged_segment);
    put(&served.join(VIDEO).join("manifest.lvm"), &framed(&chunks));
    let message = rejected(&mut events).await;
    eprintln!("other key: {message}");
    assert_not_offered(&session).await;

    // 2. The genuine append with one byte flipped.
    let mut flipped = frames[4].clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x01;
    chunks[4] = flipped;
    put(&served.join(VIDEO).join("manifest.lvm"), &framed(&chunks));
    drain(&mut events);
    let message = rejected(&mut events).await;
    eprintln!("flipped byte: {message}");
    assert_not_offered(&session).await;

    // 3. The origin is repaired: following resumes from the last good chunk.
    publish(&packaged, &served, VIDEO);
    eventually("segment 4 listed", Duration::from_secs(20), async || {
        session.live_edge(&common::r(VIDEO)) == Some(4)
    })
    .await;
    let bytes = session.segment(&common::r(VIDEO), 4).await.unwrap();
    assert_eq!(sha256(&bytes), sha256(&genuine_segment));

    // The end of the event reaches the endpoint's playlist.
    feed.finish().await;
    publish(&packaged, &served, VIDEO);
    eventually("the final chunk", Duration::from_secs(20), async || {
        !session.is_live(&common::r(VIDEO))
    })
    .await;
    let (_, playlist) = http_get(&format!(
        "http://{}/{VIDEO}/media.m3u8",
        session.player_addr()
    ))
    .await;
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    for event in drain(&mut events) {
        assert!(!matches!(event, Event::SegmentRejected { .. }), "{event:?}");
    }
    assert_eq!(session.stats().segments_rejected, 0);
    session.close().await.unwrap();
}
