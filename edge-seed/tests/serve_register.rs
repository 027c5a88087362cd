#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Registration with a tracker over QUIC (ALPN loaves-tracker/2): a minimal
//! tracker here checks the seed's credential against its certificate and
//! records the registrations, which must repeat on the interval.

mod serve_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loaves_proto::keys::SigningKeyPair;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::framing;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire;
use serve_common::*;

type Registrations = Arc<Mutex<Vec<pb::SeedRegistration>>>;

async fn fake_tracker() -> (std::net::SocketAddr, Registrations) {
    let identity = PeerIdentity::new(&SigningKeyPair::from_seed(&[42; 32])).unwrap();
    let tls = identity.server_config(loaves_proto::ALPN_TRACKER).unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    let registrations = Registrations::default();
    let recorded = registrations.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let connection = incoming.await.unwrap();
                let key = peerwire::connection_peer_key(&connection).unwrap();
                let timeout = Duration::from_secs(5);
                let mut hello_seen = false;
                // The session stream: the hello, then each registration.
                let Ok((mut send, mut recv)) = connection.accept_bi().await else {
                    return;
                };
                // Ends when the seed closes the connection.
                while let Ok(Some(request)) = framing::read_message::<pb::TrackerRequest, _>(
                    &mut recv,
                    65536,
                    Duration::from_secs(120),
                )
                .await
                {
                    match request.kind {
                        Some(pb::tracker_request::Kind::Hello(hello)) => {
                            let Some(pb::tracker_hello::Credential::SeedCredential(bytes)) =
                                hello.credential
                            else {
                                panic!("a seed says hello with its credential")
                            };
                            let credential =
                                verifier().verify_seed(&bytes, UnixSeconds::now()).unwrap();
                            assert_eq!(
                                credential.peer_key, key,
                                "credential names the certificate key"
                            );
                            hello_seen = true;
                        }
                        Some(pb::tracker_request::Kind::RegisterSeed(registration)) => {
                            assert!(hello_seen);
                            recorded.lock().unwrap().push(registration);
                        }
                        other => panic!("unexpected request {other:?}"),
                    }
                    let ack = pb::TrackerResponse {
                        kind: Some(pb::tracker_response::Kind::Ack(pb::Ack {
                            interval_s: 1,
                            ..Default::default()
                        })),
                    };
                    framing::write_message(&mut send, &ack, 65536, timeout)
                        .await
                        .unwrap();
                }
            });
        }
    });
    (address, registrations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_registers_and_re_announces() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p", "360p"], 1, 1000, false);
    let (tracker, registrations) = fake_tracker().await;
    let mut config = config(media.path().to_str().unwrap(), &[TITLE]);
    config.tracker.addresses = vec![tracker.to_string()];
    config.tracker.announce_interval_s = 1;
    config.tracker.upload_capacity_bps = 800_000_000;
    config.advertise = vec!["203.0.113.7:4433".into()];
    let seed = start_seed(&config).await;
    let started = Instant::now();
    while registrations.lock().unwrap().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(5), "no re-announce");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = registrations.lock().unwrap()[0].clone();
    let swarms: Vec<(String, String)> = first
        .swarms
        .iter()
        .map(|s| (s.title.clone(), s.rendition.clone()))
        .collect();
    assert_eq!(
        swarms,
        vec![
            (TITLE.to_owned(), "360p".to_owned()),
            (TITLE.to_owned(), "720p".to_owned())
        ]
    );
    assert_eq!(first.addresses, vec!["203.0.113.7:4433".to_owned()]);
    assert_eq!(first.upload_capacity_bps, 800_000_000);
    assert!(
        seed.metrics
            .render()
            .contains("loaves_seed_tracker_registrations_total{result=\"ok\"}")
    );
    seed.shutdown().await;
}
