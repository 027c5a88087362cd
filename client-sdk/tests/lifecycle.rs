#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One lifecycle for every task of a session: `close` returns only once
//! everything the session started has ended, however busy it was; nothing
//! fetches afterwards, and no control message is lost on the way.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{TITLE, r, stack};

/// More concurrent player requests than a track's queue holds (512).
const FLOOD: usize = 700;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_a_full_track_queue_ends_every_task_and_nothing_fetches_after() {
    let stack = stack(false).await;
    let loaves = stack.options(false).build().unwrap();
    let session = loaves.open(TITLE, stack.entitlement("busy")).await.unwrap();
    let base = format!("http://{}/video_360p", session.player_addr());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // The player floods the endpoint: every segment, many times over, so
    // the rendition's queue is full and requests wait to be queued.
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let url = format!("{base}/seg_{:05}.m4s", i % 10);
        let http = http.clone();
        requests.spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    // The playhead too, thousands of times: state, never a queued message.
    for i in 0..5_000u64 {
        session
            .set_playhead(&r("video_360p"), i % 10, Duration::ZERO, true)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let endpoint = session.player_addr();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), session.close())
        .await
        .expect("close returns")
        .expect("every task ended in time");
    let took = started.elapsed();
    // Nothing of the session runs any more: no CDN request from now on,
    // and the endpoint is gone.
    let fetched = stack.cdn_requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.cdn_requests.load(Ordering::Relaxed), fetched);
    assert!(tokio::net::TcpStream::connect(endpoint).await.is_err());
    // Every player request got an answer (a segment, or "closed"), none
    // hangs.
    let answers = tokio::time::timeout(Duration::from_secs(30), async {
        let mut answers = Vec::new();
        while let Some(answer) = requests.join_next().await {
            answers.push(answer.unwrap());
        }
        answers
    })
    .await
    .expect("no request hangs after close");
    assert_eq!(answers.len(), FLOOD);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(200 | 429 | 503) | Err(_))),
        "{answers:?}"
    );
    assert!(took < Duration::from_secs(10), "close took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_stops_it_and_releases_the_license() {
    let stack = stack(false).await;
    let loaves = stack.options(false).build().unwrap();
    let session = loaves
        .open(TITLE, stack.entitlement("dropped"))
        .await
        .unwrap();
    let endpoint = session.player_addr();
    drop(session);
    // A bounded best effort in the background: the endpoint goes, and the
    // account's one stream slot is free again.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(endpoint).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the endpoint closes");
    let again = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match loaves.open(TITLE, stack.entitlement("dropped")).await {
                Ok(session) => return session,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the license was released");
    again.close().await.unwrap();
}
