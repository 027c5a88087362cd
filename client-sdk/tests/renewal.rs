#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sessions that outlive their first session token, on real clocks with no
//! clock skew tolerated anywhere: a token lives 3 s (renewal every 2 s, 1 s
//! of grace), so everything here happens under several tokens in turn. The
//! session must keep announcing (the tracker accepts refreshed tokens on the
//! open connection), keep serving and reaching peers (requests carry the
//! newer token), and keep answering the player's ClearKey requests; a
//! session whose license cannot be renewed must end, loudly.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ShortTokens, Stack, r, stack_with_short_tokens};
use loaves_client_sdk::{EndReason, Event, Session, player};

const TOKENS: ShortTokens = ShortTokens {
    renewal_s: 2,
    grace_s: 1,
};
/// A token's lifetime.
const TOKEN_LIFE: Duration = Duration::from_secs(3);

async fn viewer(stack: &Stack, account: &str) -> Session {
    stack
        .viewer(
            account,
            stack
                .options(true)
                .playback_speed(1.0)
                .credential_clock_skew(Duration::ZERO),
        )
        .await
}

/// The player's ClearKey request for the `sd` key, through the endpoint.
async fn clearkey(stack: &Stack, session: &Session) -> (u16, String) {
    let key = stack.content_key("sd");
    let kid = URL_SAFE_NO_PAD.encode(key.kid.0);
    let (status, body) = common::clearkey_request(session, &kid).await;
    let expected = format!("\"k\":\"{}\"", URL_SAFE_NO_PAD.encode(key.key.as_bytes()));
    if status == 200 {
        assert!(body.contains(&expected), "{body}");
    }
    (status, body)
}

fn drain(events: &mut loaves_client_sdk::Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_next()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_several_renewals_keeps_announcing_keeps_its_peers_and_gets_keys() {
    let stack = stack_with_short_tokens(TOKENS).await;
    let first = Arc::new(viewer(&stack, "first").await);
    let opened = Instant::now();
    let mut events = first.events();
    // In real time: 20 s of media, under seven tokens or so.
    let playing = {
        let first = first.clone();
        tokio::spawn(
            async move { player::play(&first, &r("video_360p"), Duration::from_secs(8)).await },
        )
    };
    // Well past the first token: a second viewer joins and must get bytes
    // from the first, which announces and serves under renewed tokens.
    tokio::time::sleep(TOKEN_LIFE * 2).await;
    assert!(first.stats().license_renewals >= 2, "{:?}", first.stats());
    let second = viewer(&stack, "second").await;
    let report = player::play(&second, &r("video_360p"), Duration::from_secs(8))
        .await
        .unwrap();
    let first_report = playing.await.unwrap().unwrap();
    assert_eq!(first_report.sha256, stack.packaged_sha256("video_360p"));
    assert_eq!(report.sha256, stack.packaged_sha256("video_360p"));
    assert!(opened.elapsed() > TOKEN_LIFE * 4);

    let stats = first.stats();
    assert!(stats.license_renewals >= 6, "{stats:?}");
    let second_stats = second.stats();
    assert!(
        second_stats.bytes_from_peers > 0,
        "the late viewer got nothing from its peer: {second_stats:?}"
    );
    // The tracker never saw an expired token, and took the refreshes.
    assert_eq!(
        stack.tracker_metric("loaves_tracker_rejected_tokens_total", &[]),
        0.0
    );
    assert!(
        stack.tracker_metric(
            "loaves_tracker_requests_total",
            &["kind=\"refresh\"", "result=\"ok\""]
        ) >= 6.0
    );
    assert!(
        stack.tracker_metric(
            "loaves_tracker_requests_total",
            &["kind=\"announce\"", "result=\"ok\""]
        ) >= 10.0
    );
    let trouble: Vec<Event> = drain(&mut events)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::TrackerUnavailable { .. }
                    | Event::LicenseRenewalFailed { .. }
                    | Event::SessionEnded { .. }
            )
        })
        .collect();
    assert!(trouble.is_empty(), "{trouble:?}");
    // The player still gets its keys, long after the first token expired.
    let (status, body) = clearkey(&stack, &first).await;
    assert_eq!(status, 200, "{body}");
    second.close().await.unwrap();
    Arc::try_unwrap(first).unwrap().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_starts_after_the_first_token_expired_gets_its_keys() {
    let stack = stack_with_short_tokens(TOKENS).await;
    let session = viewer(&stack, "late-player").await;
    tokio::time::sleep(TOKEN_LIFE + Duration::from_secs(1)).await;
    let (status, body) = clearkey(&stack, &session).await;
    assert_eq!(status, 200, "{body}");
    assert!(session.stats().license_renewals >= 1);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_that_cannot_be_renewed_ends_the_session() {
    let stack = stack_with_short_tokens(TOKENS).await;
    let session = viewer(&stack, "stranded").await;
    let mut events = session.events();
    let endpoint = session.player_addr();
    let Stack { license, .. } = stack;
    license.shutdown().await.unwrap();
    // Renewals fail from now on; once the token expires, the session ends.
    let ended = tokio::time::timeout(TOKEN_LIFE * 8, async {
        while let Some(event) = events.next().await {
            if let Event::SessionEnded { reason } = event {
                return Some(reason);
            }
        }
        None
    })
    .await
    .expect("the session ends once its token expired");
    assert!(
        matches!(ended, Some(EndReason::LicenseExpired { .. })),
        "{ended:?}"
    );
    assert!(session.is_ended());
    // Every task stopped: the endpoint no longer answers.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(endpoint).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the endpoint closes");
    assert!(session.segment(&r("audio"), 0).await.is_err());
    session.close().await.unwrap();
}
