//! Crash safety on the real binary: the server is killed with SIGKILL while
//! packager key requests run in a loop; after each restart every key id ever
//! returned must still map to the same key, on both stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Db, Spawned, connect, fresh_store_url, get_keys};
use loaves_grpc::key_service_client::KeyServiceClient;

/// Kill / restart rounds.
const ROUNDS: usize = 4;

/// Starts the binary on `store_url` and waits until it listens (a
/// certificate left by the round before is removed first).
async fn spawn(dir: &Path, store_url: &str) -> Spawned {
    let _ = std::fs::remove_file(dir.join("cert.pem"));
    let mut command = common::command(dir, "warn,license_server::server=info");
    command.arg("--store-url").arg(store_url);
    common::spawn(command, dir, true).await
}

async fn crash_loop(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_store_url(db, dir.path()).await else {
        return;
    };
    // Every (track, period) ever answered, with its key id and key.
    let mut seen: HashMap<(String, u32), (Vec<u8>, Vec<u8>)> = HashMap::new();
    let mut next_period = 0u32;
    let tracks = ["audio", "sd", "hd"];

    for round in 0..ROUNDS {
        let mut proc = spawn(dir.path(), &url).await;
        let mut client = KeyServiceClient::new(connect(proc.grpc, &proc.cert_pem).await);

        // Everything answered before the last kill is still there, unchanged.
        let known: Vec<(String, u32)> = seen.keys().cloned().collect();
        for chunk in known.chunks(60) {
            let wanted: Vec<(&str, u32)> = chunk.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            let keys = get_keys(&mut client, "demo", &wanted).await.unwrap();
            for key in keys {
                let (id, bytes) = &seen[&(key.track_type.clone(), key.key_period)];
                assert_eq!(
                    (&key.key_id, &key.key),
                    (id, bytes),
                    "key changed across a crash"
                );
            }
        }

        // New keys in a loop from several clients, killed part-way at a
        // time that varies by round.
        let kill_after = Duration::from_millis(300 + 250 * round as u64);
        let started = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut loops = Vec::new();
        for worker in 0..4u32 {
            let mut client = client.clone();
            let tx = tx.clone();
            let base = next_period + worker * 10_000;
            loops.push(tokio::spawn(async move {
                // Bounded: at most 2000 requests per worker per round.
                for i in 0..2000u32 {
                    let period = base + i;
                    let wanted: Vec<(&str, u32)> = tracks.iter().map(|t| (*t, period)).collect();
                    match get_keys(&mut client, "demo", &wanted).await {
                        Ok(keys) => {
                            for key in keys {
                                let _ = tx.send(key);
                            }
                        }
                        // The process died under us.
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(tx);
        tokio::time::sleep(kill_after).await;
        proc.child.start_kill().unwrap(); // SIGKILL
        proc.child.wait().await.unwrap();
        for task in loops {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("client loops end once the server is gone")
                .unwrap();
        }
        let mut answered = 0;
        while let Some(key) = rx.recv().await {
            answered += 1;
            let slot = (key.track_type.clone(), key.key_period);
            if let Some((id, bytes)) = seen.get(&slot) {
                assert_eq!((&key.key_id, &key.key), (id, bytes));
            }
            seen.insert(slot, (key.key_id, key.key));
        }
        assert!(
            answered > 0,
            "round {round}: no key answered before the kill ({:?})",
            started.elapsed()
        );
        next_period += 40_000;
    }

    // Final check after the last kill, and key ids are unique.
    let proc = spawn(dir.path(), &url).await;
    let mut client = KeyServiceClient::new(connect(proc.grpc, &proc.cert_pem).await);
    let known: Vec<(String, u32)> = seen.keys().cloned().collect();
    for chunk in known.chunks(60) {
        let wanted: Vec<(&str, u32)> = chunk.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        for key in get_keys(&mut client, "demo", &wanted).await.unwrap() {
            let (id, bytes) = &seen[&(key.track_type.clone(), key.key_period)];
            assert_eq!(
                (&key.key_id, &key.key),
                (id, bytes),
                "key changed across a crash"
            );
        }
    }
    let ids: std::collections::HashSet<_> = seen.values().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "a key id names two keys");
    eprintln!(
        "crash test ({db:?}): {} keys checked across {ROUNDS} SIGKILLs",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keys_survive_sigkill() {
    crash_loop(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keys_survive_sigkill() {
    crash_loop(Db::Postgres).await;
}
