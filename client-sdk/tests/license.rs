#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The SDK's license client against a real license server on 127.0.0.1
//! over TLS: acquire, renew with keys delivered ahead, release, refusals.

mod common;

use std::sync::Arc;

use license_server::config::{Config, TitleConfig};
use license_server::{ManualClock, RunningServer};
use loaves_client_sdk::license::{
    LicenseClient, LicenseClientError, LicenseRequest, LicenseServerConfig,
};
use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::Entitlement;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::token::TokenVerifier;

const T0: u64 = 1_800_000_000;

struct Stack {
    _dir: tempfile::TempDir,
    server: RunningServer,
    clock: ManualClock,
    signin: SigningKeyPair,
}

async fn license_server() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    // Secret files must be private to their owner.
    loaves_testkit::files::write_private(&dir.path().join("kek"), "07".repeat(32));
    let signin = loaves_proto::keygen::write_key_pair(dir.path(), "signin", false).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        clearkey_listen: None,
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.keys.kek_file = Some(dir.path().join("kek"));
    config.keys.entitlement_public_keys = vec![signin.public_key.clone()];
    let mut live = TitleConfig::demo();
    live.id = "live".into();
    live.key_period_s = 600;
    live.period_epoch = T0 - 6_000;
    config.titles = vec![live];
    let clock = ManualClock::new(UnixSeconds(T0));
    let server = license_server::start(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let signin = loaves_proto::keygen::read_signing_key(&signin.private_key).unwrap();
    Stack {
        _dir: dir,
        server,
        clock,
        signin,
    }
}

fn client_config(stack: &Stack, trusted: Keyring) -> LicenseServerConfig {
    common::license_client_config(&stack.server, trusted)
}

fn entitlement(signer: &SigningKeyPair) -> Vec<u8> {
    Entitlement {
        account: "acct-1".into(),
        titles: vec!["*".into()],
        max_concurrent_streams: 1,
        renditions: vec![],
        max_height: 0,
        issued_at: UnixSeconds(T0 - 10),
        expires_at: UnixSeconds(T0 + 86_400),
    }
    .sign(signer)
}

fn request(entitlement: Vec<u8>) -> LicenseRequest {
    LicenseRequest {
        entitlement,
        title: "live".into(),
        renditions: vec!["720p".into(), "audio".into()],
        key_periods: Some((10, 1)),
        region: "eu-west".into(),
        isp: "as1".into(),
    }
}

fn trusted(stack: &Stack) -> Keyring {
    [stack.server.core.license_public_key()]
        .into_iter()
        .collect()
}

#[tokio::test]
async fn acquire_renew_release() {
    let stack = license_server().await;
    let peer = SigningKeyPair::generate().unwrap();
    let mut client = LicenseClient::connect(&client_config(&stack, trusted(&stack)))
        .await
        .unwrap();
    let now = UnixSeconds(T0);
    let mut session = client
        .acquire(&request(entitlement(&stack.signin)), &peer, now)
        .await
        .unwrap();
    // Keys for the requested period, one per track type of the renditions.
    let periods: Vec<u32> = session.keys.iter().map(|k| k.key_period).collect();
    assert!(!session.keys.is_empty());
    assert!(periods.iter().all(|&p| p == 10), "{periods:?}");
    let mut tracks: Vec<&str> = session.keys.iter().map(|k| k.track_type.as_str()).collect();
    tracks.sort();
    assert_eq!(tracks, ["audio", "hd"]);
    // The token names this client's peer key and verifies offline.
    let token = TokenVerifier::new(trusted(&stack))
        .verify(session.session_token(), now, "live")
        .unwrap();
    assert_eq!(token.peer_key, peer.verifying_key());
    assert_eq!(token.session_id, session.session_id());

    // Heartbeat a minute later, fetching the next period's keys ahead.
    stack.clock.advance(60);
    client
        .renew(&mut session, &peer, Some((11, 1)), UnixSeconds(T0 + 60))
        .await
        .unwrap();
    assert!(session.keys.iter().any(|k| k.key_period == 11));
    assert!(session.keys.iter().any(|k| k.key_period == 10));
    assert!(session.expires_at() > UnixSeconds(T0 + 60));

    // Released: the slot is free again (the account is limited to one).
    client.release(&mut session, &peer).await.unwrap();
    let other_peer = SigningKeyPair::generate().unwrap();
    client
        .acquire(
            &request(entitlement(&stack.signin)),
            &other_peer,
            UnixSeconds(T0 + 60),
        )
        .await
        .unwrap();
}

/// The server applies a renewal even when its answer never counts on the
/// client (lost, refused by verification, or abandoned when `close` cuts
/// the renewal task short). The release that follows must not reuse the
/// spent sequence number, or the server refuses it as a replay and the
/// account's concurrency slot stays taken until the license expires.
#[tokio::test]
async fn a_renewal_whose_answer_does_not_count_leaves_the_release_valid() {
    let stack = license_server().await;
    let peer = SigningKeyPair::generate().unwrap();
    let mut client = LicenseClient::connect(&client_config(&stack, trusted(&stack)))
        .await
        .unwrap();
    let mut session = client
        .acquire(&request(entitlement(&stack.signin)), &peer, UnixSeconds(T0))
        .await
        .unwrap();
    // The server renews; the client judges the answer at a time long past
    // its expiry, so verification refuses it.
    let refused = client
        .renew(&mut session, &peer, None, UnixSeconds(T0 + 1_000_000))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // The next renewal and the release are not replays.
    client
        .renew(&mut session, &peer, None, UnixSeconds(T0))
        .await
        .unwrap();
    client.release(&mut session, &peer).await.unwrap();
    // Released for real: the account's single slot is free again.
    client
        .acquire(
            &request(entitlement(&stack.signin)),
            &SigningKeyPair::generate().unwrap(),
            UnixSeconds(T0),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn refusals_carry_the_servers_status() {
    let stack = license_server().await;
    let mut client = LicenseClient::connect(&client_config(&stack, trusted(&stack)))
        .await
        .unwrap();
    let peer = SigningKeyPair::generate().unwrap();
    // An entitlement from a signer the server does not trust.
    let forger = SigningKeyPair::generate().unwrap();
    let err = client
        .acquire(&request(entitlement(&forger)), &peer, UnixSeconds(T0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LicenseClientError::Refused { code, .. } if code == tonic::Code::Unauthenticated || code == tonic::Code::PermissionDenied),
        "{err:?}"
    );
    // The account's single slot: a second concurrent session is refused.
    client
        .acquire(&request(entitlement(&stack.signin)), &peer, UnixSeconds(T0))
        .await
        .unwrap();
    let err = client
        .acquire(
            &request(entitlement(&stack.signin)),
            &SigningKeyPair::generate().unwrap(),
            UnixSeconds(T0),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LicenseClientError::Refused {
                code: tonic::Code::ResourceExhausted,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_license_signed_by_an_untrusted_key_is_refused() {
    let stack = license_server().await;
    let impostor: Keyring = [SigningKeyPair::generate().unwrap().verifying_key()]
        .into_iter()
        .collect();
    let mut client = LicenseClient::connect(&client_config(&stack, impostor))
        .await
        .unwrap();
    let err = client
        .acquire(
            &request(entitlement(&stack.signin)),
            &SigningKeyPair::generate().unwrap(),
            UnixSeconds(T0),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LicenseClientError::Invalid(_)), "{err:?}");
}
