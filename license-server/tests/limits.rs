//! Connection limits of the license server's listeners, attacked over real
//! sockets on 127.0.0.1:
//!
//! - ten thousand HTTP/2 streams that never send a body, opened on each of
//!   four TLS connections to the real binary, are refused past
//!   `MAX_CONCURRENT_STREAMS`, and the process's resident memory stays
//!   bounded and comes back once the connections close;
//! - half-sent ClearKey requests are closed at the header-read timeout
//!   while an honest ClearKey request gets its keys;
//! - TCP connections that never send a ClientHello are closed at the
//!   handshake timeout while an honest gRPC call succeeds.
//!
//! The attack client writes HTTP/2 frames itself: a conforming client (the
//! `h2` crate, tonic) holds streams past the server's limit back locally,
//! so it could never show that the server refuses them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Db, Harness, Viewer, connect, get_keys, http, open_license};
use loaves_testkit::grpc::healthy;
use loaves_testkit::http::{closed, half_sent};
use loaves_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const SOON: Duration = Duration::from_secs(15);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The value of one series in the text exposition, 0 if absent.
fn series(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ---- a raw HTTP/2 client -------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The HPACK block of a gRPC call's headers, literals only (no dynamic
/// table, so the same block serves every stream).
fn grpc_call_headers() -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, name_index: u8, value: &str) {
        // Literal without indexing, indexed name (4-bit prefix).
        if name_index < 15 {
            out.push(name_index);
        } else {
            out.push(0x0f);
            out.push(name_index - 15);
        }
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
    literal(&mut block, 4, "/loaves.v1.LicenseService/AcquireLicense"); // :path
    literal(&mut block, 1, "localhost"); // :authority
    literal(&mut block, 31, "application/grpc"); // content-type
    // te: trailers (new name).
    block.extend_from_slice(&[0x00, 2]);
    block.extend_from_slice(b"te");
    block.push(8);
    block.extend_from_slice(b"trailers");
    block
}

/// What the server did with the streams of one attack connection.
#[derive(Debug, Default)]
struct AttackReport {
    opened: u32,
    refused: u32,
    /// Streams the server answered (a HEADERS frame ending the stream).
    answered: u32,
    /// GOAWAY (last stream id, error code), if the server sent one.
    goaway: Option<(u32, u32)>,
}

impl AttackReport {
    /// Streams the server took on: those it did not refuse, up to the
    /// last one its GOAWAY says it looked at.
    fn accepted(&self) -> u32 {
        let processed = match self.goaway {
            Some((last, _)) => self.opened.min(last.div_ceil(2)),
            None => self.opened,
        };
        processed.saturating_sub(self.refused)
    }
}

/// Opens `streams` gRPC streams on one connection, sends none of their
/// bodies, answers the server's SETTINGS and PINGs, and reports what the
/// server did once `close` fires, the server closes, or it has answered
/// `until_answered` streams. `sent` fires when every stream's headers are
/// written.
async fn stream_flood(
    addr: SocketAddr,
    cert_pem: String,
    streams: u32,
    sent: oneshot::Sender<()>,
    close: oneshot::Receiver<()>,
    until_answered: Option<u32>,
) -> AttackReport {
    let tls = loaves_testkit::tls::connect(addr, &cert_pem).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    tx.send(opening).unwrap();
    let block = grpc_call_headers();
    let producer = {
        let tx = tx.clone();
        tokio::spawn(async move {
            for batch in 0..streams.div_ceil(100) {
                let mut bytes = Vec::new();
                for i in batch * 100..((batch + 1) * 100).min(streams) {
                    bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
                }
                if tx.send(bytes).is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = sent.send(());
        })
    };
    let mut report = AttackReport {
        opened: streams,
        ..AttackReport::default()
    };
    let mut close = std::pin::pin!(close);
    loop {
        let mut head = [0u8; 9];
        tokio::select! {
            _ = &mut close => break,
            read = rd.read_exact(&mut head) => if read.is_err() { break },
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let _ = tx.send(frame(SETTINGS, ACK, 0, &[]));
            }
            PING if flags & ACK == 0 => {
                let _ = tx.send(frame(PING, ACK, 0, &payload));
            }
            RST_STREAM if len == 4 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if code == REFUSED_STREAM {
                    report.refused += 1;
                }
            }
            HEADERS if flags & END_STREAM != 0 => {
                report.answered += 1;
                if Some(report.answered) == until_answered {
                    break;
                }
            }
            GOAWAY if len >= 8 => {
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                report.goaway = Some((last, code));
            }
            _ => {}
        }
    }
    producer.abort();
    drop(tx);
    writer.abort();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_per_connection_are_refused_and_memory_comes_back() {
    const CONNECTIONS: usize = 4;
    const STREAMS: u32 = 10_000;
    let max_streams = license_server::config::GrpcLimitsConfig::default().max_concurrent_streams;

    let dir = tempfile::tempdir().unwrap();
    let command = common::command(dir.path(), "error,license_server::server=info");
    let common::Spawned {
        mut child,
        grpc,
        cert_pem: pem,
        ..
    } = common::spawn(command, dir.path(), true).await;
    let pid = child.id().unwrap();
    let honest = connect(grpc, &pem).await;
    healthy(honest.clone(), SOON).await;
    // One flood of a few streams first, so that what the first attack
    // allocates once (TLS, HTTP/2 and allocator arenas) is in the baseline.
    {
        let (sent, _) = oneshot::channel();
        let (close, closing) = oneshot::channel();
        let warm = tokio::spawn(stream_flood(grpc, pem.clone(), 200, sent, closing, None));
        tokio::time::sleep(ms(500)).await;
        let _ = close.send(());
        warm.await.unwrap();
    }
    tokio::time::sleep(ms(500)).await;
    let before = rss_kib(pid);

    let mut floods = Vec::new();
    let mut sent_all = Vec::new();
    let mut closers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (sent, sent_rx) = oneshot::channel();
        let (close, closing) = oneshot::channel();
        floods.push(tokio::spawn(stream_flood(
            grpc,
            pem.clone(),
            STREAMS,
            sent,
            closing,
            None,
        )));
        sent_all.push(sent_rx);
        closers.push(close);
    }
    let mut peak = before;
    for sent in sent_all {
        let mut sent = std::pin::pin!(sent);
        loop {
            peak = peak.max(rss_kib(pid));
            tokio::select! {
                _ = &mut sent => break,
                () = tokio::time::sleep(ms(20)) => {}
            }
        }
    }
    // Everything is written; the server works through it. Keep sampling
    // for a second of it with the connections and their streams open.
    let window = Instant::now() + ms(1000);
    while Instant::now() < window {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(ms(20)).await;
    }
    // An honest call is served in the middle of the attack.
    let asked = Instant::now();
    healthy(honest.clone(), SOON).await;
    let honest_latency = asked.elapsed();
    peak = peak.max(rss_kib(pid));

    for close in closers {
        let _ = close.send(());
    }
    let mut reports = Vec::new();
    for flood in floods {
        reports.push(flood.await.unwrap());
    }
    // Memory comes back once the connections are gone (bounded wait).
    let mut after = rss_kib(pid);
    let deadline = Instant::now() + SOON;
    while after > before + 8 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(ms(100)).await;
        after = rss_kib(pid);
    }
    healthy(honest, SOON).await;
    eprintln!(
        "resident memory: before {:.1} MiB, under attack (peak) {:.1} MiB, after {:.1} MiB; \
         honest call during the attack {honest_latency:?}; {reports:?}",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    for report in &reports {
        assert!(
            report.accepted() <= max_streams,
            "the server took {} streams on one connection: {report:?}",
            report.accepted()
        );
        assert!(
            report.refused > 0 || report.goaway.is_some(),
            "nothing refused: {report:?}"
        );
    }
    assert!(
        peak - before < 48 * 1024,
        "memory grew by {} MiB under the attack",
        (peak - before) / 1024
    );
    assert!(
        after <= before + 8 * 1024,
        "memory did not come back: before {before} KiB, after {after} KiB"
    );
    assert!(honest_latency < Duration::from_secs(5));
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_clearkey_requests_are_closed_while_an_honest_one_gets_its_keys() {
    const ATTACKERS: usize = 300;
    let header = ms(1000);
    let h = Harness::start_with(Db::Sqlite, |config| {
        config.limits.http.header_read_timeout_ms = 1000;
        config.limits.http.idle_timeout_ms = 1000;
        config.limits.http.max_connections = 1000;
        config.limits.http.max_connections_per_ip = 1000;
    })
    .await
    .unwrap();
    let addr = h.server().clearkey_addr.unwrap();
    // A licensed viewer, ready to ask for its keys.
    let mut viewer = Viewer::new();
    let response = h
        .licenses()
        .await
        .acquire_license(viewer.acquire_request(h.entitlement("acct-limits", 1), "demo"))
        .await
        .unwrap()
        .into_inner();
    let (license, keys) = open_license(&h.license_keyring(), &mut viewer, &response, h.now());
    let kids: Vec<String> = keys.iter().map(|k| B64.encode(k.key_id.0)).collect();
    let body = serde_json::json!({ "kids": kids, "type": "temporary" }).to_string();
    let bearer = format!("Bearer {}", B64.encode(&license.session_token));

    let attackers = half_sent(
        addr,
        ATTACKERS,
        b"POST /clearkey HTTP/1.1\r\nHost: x\r\nContent-Le",
    )
    .await;
    let open = |text: &str| {
        series(
            text,
            "loaves_license_http_connections_open{listener=\"clearkey\"}",
        )
    };
    eventually("the attackers to be accepted", SOON, async || {
        open(&h.http_get("/metrics").await.1) >= ATTACKERS as u64
    })
    .await;

    let asked = Instant::now();
    let (status, text) = http(
        addr,
        "POST",
        "/clearkey",
        &[("Authorization", &bearer)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&kids[0]), "{text}");
    assert!(asked.elapsed() < header, "the honest request waited");

    let shed = "loaves_license_http_connections_shed_total{listener=\"clearkey\",reason=\"header_timeout\"}";
    assert_eq!(series(&h.http_get("/metrics").await.1, shed), 0);
    for (connected, mut stream) in attackers {
        closed(&mut stream, SOON).await;
        let held = connected.elapsed();
        assert!(held >= header, "closed after {held:?}");
    }
    let metrics = h.http_get("/metrics").await.1;
    assert_eq!(series(&metrics, shed), ATTACKERS as u64, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connections_are_closed_at_the_handshake_timeout_while_grpc_is_served() {
    const SILENT: usize = 300;
    let timeout = ms(1000);
    let h = Harness::start_with(Db::Sqlite, |config| {
        config.limits.grpc.handshake_timeout_ms = 1000;
        config.limits.grpc.max_connections = 1000;
        config.limits.grpc.max_connections_per_ip = 1000;
    })
    .await
    .unwrap();
    let addr = h.server().grpc_addr;
    let silent = half_sent(addr, SILENT, b"").await;
    let open = |text: &str| {
        series(
            text,
            "loaves_license_http_connections_open{listener=\"grpc\"}",
        )
    };
    eventually("the silent clients to be accepted", SOON, async || {
        open(&h.http_get("/metrics").await.1) >= SILENT as u64
    })
    .await;

    let asked = Instant::now();
    let keys = get_keys(&mut h.keys().await, "demo", &[("hd", 0)])
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(asked.elapsed() < timeout, "the honest call waited");

    let shed = "loaves_license_http_connections_shed_total{listener=\"grpc\",reason=\"handshake_timeout\"}";
    assert_eq!(series(&h.http_get("/metrics").await.1, shed), 0);
    for (connected, mut stream) in silent {
        closed(&mut stream, SOON).await;
        let held = connected.elapsed();
        assert!(held >= timeout, "closed after {held:?}");
    }
    let metrics = h.http_get("/metrics").await.1;
    assert_eq!(series(&metrics, shed), SILENT as u64, "{metrics}");
    // The gRPC channel of the honest client still works.
    healthy(h.channel().await, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_sends_its_body_is_answered_at_the_call_timeout() {
    const STREAMS: u32 = 10;
    let timeout = ms(500);
    let h = Harness::start_with(Db::Sqlite, |config| {
        config.limits.grpc.request_timeout_ms = 500;
    })
    .await
    .unwrap();
    let (sent, _) = oneshot::channel();
    let (_close, closing) = oneshot::channel();
    let started = Instant::now();
    let report = tokio::time::timeout(
        SOON,
        stream_flood(
            h.server().grpc_addr,
            h.server().tls_cert_pem.clone(),
            STREAMS,
            sent,
            closing,
            Some(STREAMS),
        ),
    )
    .await
    .expect("every stream answered in time");
    assert_eq!(report.answered, STREAMS, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    assert!(started.elapsed() >= timeout, "answered before the timeout");
}
