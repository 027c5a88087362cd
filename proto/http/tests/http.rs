//! The HTTP/1.1 server over real sockets on 127.0.0.1: half-sent requests,
//! idle keep-alive connections, the connection caps, the request and
//! write timeouts, and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use loaves_http::{ConnMetrics, HttpServer, Limits, ShedReason, SpawnedServer};
use loaves_testkit::http::{closed, half_sent, held_until_closed, read_response};
use loaves_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Generous bound on anything that should happen "soon": the machine may
/// be busy with other builds.
const SOON: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn limits(header_ms: u64, idle_ms: u64) -> Limits {
    let mut limits = Limits::default();
    limits.header_read_timeout = ms(header_ms);
    limits.idle_timeout = ms(idle_ms);
    limits.max_connections = 2000;
    limits.max_connections_per_ip = 2000;
    limits.shutdown_grace = ms(2000);
    limits
}

async fn start(router: Router, limits: Limits) -> (SpawnedServer, ConnMetrics) {
    let metrics = ConnMetrics::new();
    let server = HttpServer::builder(router)
        .limits(limits)
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (server.spawn(listener).unwrap(), metrics)
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

async fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream, SOON).await
}

async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server refuses a connection from `source` (reset or closed
/// before answering; the reset may even arrive before `connect` returns).
async fn refused_from(source: &str, server: SocketAddr) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    match socket.connect(server).await {
        Ok(stream) => refused(stream).await,
        Err(_) => true,
    }
}

/// Whether the server refuses `stream` (reset or closed before answering).
async fn refused(mut stream: TcpStream) -> bool {
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(SOON, stream.read(&mut buf))
            .await
            .expect("an answer or a close in time"),
        Ok(0) | Err(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_after_the_header_timeout_while_an_honest_one_succeeds() {
    const ATTACKERS: usize = 500;
    // 1 s rather than less: the 500 connections must all be open before
    // the first is closed, also on a busy machine.
    let header = ms(1000);
    let (server, metrics) = start(hello(), limits(1000, 1000)).await;
    let addr = server.local_addr();
    let attackers = half_sent(addr, ATTACKERS, b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ").await;
    eventually("the attackers to be accepted", SOON, async || {
        metrics.open() >= ATTACKERS as i64
    })
    .await;

    // Meanwhile an honest client is served at once.
    let asked = Instant::now();
    let mut honest = TcpStream::connect(addr).await.unwrap();
    let (status, _, body) = get_on(&mut honest, "/").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert!(asked.elapsed() < header, "the honest request waited");
    assert_eq!(
        metrics.shed_count(ShedReason::HeaderTimeout),
        0,
        "the honest request was served while all the attackers were held"
    );

    for held in held_until_closed(attackers, SOON).await {
        assert!(held >= header, "closed after {held:?}, before the timeout");
        assert!(held < header + SOON, "closed after {held:?}");
    }
    assert_eq!(
        metrics.shed_count(ShedReason::HeaderTimeout),
        ATTACKERS as u64
    );
    drop(honest);
    // Each server task drops its permit just after closing its socket.
    eventually("every connection to be released", SOON, async || {
        metrics.open() == 0
    })
    .await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut again, "/").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let idle = ms(300);
    let (server, metrics) = start(hello(), limits(900, 300)).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (status, _, _) = get_on(&mut stream, "/").await;
    assert_eq!(status, 200);
    // A next request within the idle timeout reuses the connection, and
    // restarts the clock.
    tokio::time::sleep(ms(150)).await;
    let sent = Instant::now();
    let (status, _, _) = get_on(&mut stream, "/").await;
    assert_eq!(status, 200);
    closed(&mut stream, SOON).await;
    // The server's idle clock started after `sent`, when it answered.
    let waited = sent.elapsed();
    assert!(waited >= idle, "closed after {waited:?}");
    assert!(waited < SOON, "closed after {waited:?}");
    eventually("the idle close to be counted", SOON, async || {
        metrics.shed_count(ShedReason::IdleTimeout) == 1
    })
    .await;
    assert_eq!(metrics.shed_count(ShedReason::HeaderTimeout), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_also_covers_the_next_request_on_a_keep_alive_connection() {
    let header = ms(400);
    let (server, metrics) = start(hello(), limits(400, 400)).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let asked = Instant::now();
    let (status, _, _) = get_on(&mut stream, "/").await;
    assert_eq!(status, 200);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    closed(&mut stream, SOON).await;
    // hyper's clock for the second head started when the first response
    // was done, after `asked`.
    let held = asked.elapsed();
    assert!(held >= header, "closed after {held:?}");
    eventually("the header timeout to be counted", SOON, async || {
        metrics.shed_count(ShedReason::HeaderTimeout) == 1
    })
    .await;
    assert_eq!(metrics.shed_count(ShedReason::IdleTimeout), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_and_total_caps_refuse_at_accept_and_count() {
    let mut caps = limits(5000, 5000);
    caps.max_connections = 4;
    caps.max_connections_per_ip = 2;
    let (server, metrics) = start(hello(), caps).await;
    let addr = server.local_addr();
    let mut held = Vec::new();
    for source in ["127.0.0.2", "127.0.0.2"] {
        let mut stream = connect_from(source, addr).await;
        assert_eq!(get_on(&mut stream, "/").await.0, 200);
        held.push(stream);
    }
    assert!(refused_from("127.0.0.2", addr).await);
    assert_eq!(metrics.shed_count(ShedReason::PerIp), 1);
    for source in ["127.0.0.3", "127.0.0.4"] {
        let mut stream = connect_from(source, addr).await;
        assert_eq!(get_on(&mut stream, "/").await.0, 200);
        held.push(stream);
    }
    assert!(refused_from("127.0.0.5", addr).await);
    assert_eq!(metrics.shed_count(ShedReason::MaxConnections), 1);
    assert_eq!(metrics.open(), 4);

    // A closed connection frees its place.
    drop(held.remove(0));
    eventually(
        "the closed connection to free its place",
        SOON,
        async || metrics.open() == 3,
    )
    .await;
    let mut stream = connect_from("127.0.0.5", addr).await;
    assert_eq!(get_on(&mut stream, "/").await.0, 200);
    assert_eq!(metrics.shed_count(ShedReason::MaxConnections), 1);
    assert_eq!(metrics.shed_count(ShedReason::PerIp), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_get_408_and_large_heads_431() {
    let mut l = limits(2000, 2000);
    l.request_timeout = Some(ms(300));
    let router = hello().route(
        "/never",
        get(|| async {
            std::future::pending::<()>().await;
            "unreachable"
        }),
    );
    let (server, metrics) = start(router, l).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let asked = Instant::now();
    let (status, head, _) = get_on(&mut stream, "/never").await;
    assert_eq!(status, 408);
    assert!(asked.elapsed() >= ms(300));
    assert!(head.to_ascii_lowercase().contains("connection: close"));
    closed(&mut stream, SOON).await;
    assert_eq!(metrics.shed_count(ShedReason::RequestTimeout), 1);

    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let _ = stream.write_all(big.as_bytes()).await;
    let (status, _, _) = read_response(&mut stream, SOON).await;
    assert_eq!(status, 431);
    eventually("the large head to be counted", SOON, async || {
        metrics.shed_count(ShedReason::HeaderTooLarge) == 1
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let mut l = limits(2000, 2000);
    l.write_timeout = ms(300);
    // Far more than loopback socket buffers hold, so the write blocks.
    let big = Bytes::from(vec![7u8; 64 << 20]);
    let router = Router::new().route("/big", get(move || async move { big.clone() }));
    let (server, metrics) = start(router, l).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Never read.
    eventually("the stalled write to be cut", SOON, async || {
        metrics.shed_count(ShedReason::WriteTimeout) == 1
    })
    .await;
    eventually("the connection to be closed", SOON, async || {
        metrics.open() == 0
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_the_request_in_flight_finish() {
    let entered = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let (entered_tx, mut entered_rx) = entered;
    let gate = release.clone();
    let router = hello().route(
        "/slow",
        get(move || {
            let entered = entered_tx.clone();
            let gate = gate.clone();
            async move {
                let _ = entered.send(());
                gate.notified().await;
                "finished"
            }
        }),
    );
    let (server, metrics) = start(router, limits(5000, 5000)).await;
    let addr = server.local_addr();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut idle, "/").await.0, 200);
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(SOON, entered_rx.recv())
        .await
        .unwrap()
        .unwrap();

    let shutdown = tokio::spawn(server.shutdown());
    // The idle connection closes at once, long before its idle timeout.
    let waited = closed(&mut idle, SOON).await;
    assert!(waited < ms(4000), "idle connection closed after {waited:?}");
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + SOON;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(ms(10)).await;
    }
    assert!(!shutdown.is_finished());
    release.notify_one();
    let (status, _, body) = read_response(&mut busy, SOON).await;
    assert_eq!((status, body.as_str()), (200, "finished"));
    let report = tokio::time::timeout(SOON, shutdown)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.cut, 0);
    assert_eq!(metrics.shed_count(ShedReason::Shutdown), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_what_outlives_the_grace_period() {
    let entered = mpsc::unbounded_channel::<()>();
    let (entered_tx, mut entered_rx) = entered;
    let router = Router::new().route(
        "/never",
        get(move || {
            let entered = entered_tx.clone();
            async move {
                let _ = entered.send(());
                std::future::pending::<()>().await;
                "unreachable"
            }
        }),
    );
    let mut l = limits(5000, 5000);
    l.request_timeout = None;
    l.shutdown_grace = ms(300);
    let (server, metrics) = start(router, l).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /never HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(SOON, entered_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let report = server.shutdown().await.unwrap();
    assert!(started.elapsed() >= ms(300));
    assert_eq!(report.cut, 1);
    assert_eq!(metrics.shed_count(ShedReason::Shutdown), 1);
    closed(&mut stream, SOON).await;
    assert_eq!(metrics.open(), 0);
}
