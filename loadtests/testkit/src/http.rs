//! A small HTTP/1.1 client for tests: it writes exactly the request asked
//! for over a real TCP socket (no client library that would fix a header
//! or hold a request back), and every read is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bound on a response, from the request's last byte to the connection's
/// close.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A response as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (0 when the reply had no status line).
    pub status: u16,
    /// The status line and the headers, as sent.
    pub head: String,
    /// The body, as sent (a chunked body keeps its chunk-size lines).
    pub body: String,
}

impl Response {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Self {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }
}

/// Sends `request` (the whole request, bytes as given) on a new connection
/// and reads the reply until the server closes it, within `timeout`.
pub async fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Response {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr} in time"))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(timeout, stream.read_to_end(&mut response))
        .await
        .expect("HTTP response in time")
        .unwrap();
    Response::parse(&response)
}

/// The request line, `Host`, `Connection: close`, `Content-Length`, then
/// `headers` and `body`.
pub fn format_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on its own connection: (status, body). Panics when nothing
/// answers in [`TIMEOUT`] or the reply has no status line.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let response = exchange(
        addr,
        &format_request(addr, method, path, headers, body),
        TIMEOUT,
    )
    .await;
    assert_ne!(
        response.status, 0,
        "no status line from {addr}: {response:?}"
    );
    (response.status, response.body)
}

/// `GET path`: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], b"").await
}

/// Reads one response from a connection that stays open (the head, then a
/// `Content-Length` body): (status, head, body).
pub async fn read_response(stream: &mut TcpStream, timeout: Duration) -> (u16, String, String) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, &mut buf, timeout, "a response").await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().expect("a Content-Length number"))
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        read_more(stream, &mut body, timeout, "the rest of the body").await;
    }
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// Appends what `stream` has next to `buf`; panics when `what` is not
/// there within `timeout` or the connection closes first.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration, what: &str) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(timeout, stream.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap();
    assert!(n > 0, "connection closed before {what}");
    buf.extend_from_slice(&chunk[..n]);
}

/// Waits for the server to close `stream` (EOF or reset), at most
/// `timeout`; how long it took.
pub async fn closed(stream: &mut TcpStream, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(timeout, stream.read(&mut buf))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

/// Opens `count` connections to `addr` that each send `head` (empty: not a
/// byte) and then nothing: slow or silent clients, with the instant each
/// connected.
pub async fn half_sent(addr: SocketAddr, count: usize, head: &[u8]) -> Vec<(Instant, TcpStream)> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let connected = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head).await.unwrap();
        connections.push((connected, stream));
    }
    connections
}

/// Waits, all at once, for the server to close each of `connections` (each
/// at most `timeout`): how long each was held, from its instant on.
pub async fn held_until_closed(
    connections: Vec<(Instant, TcpStream)>,
    timeout: Duration,
) -> Vec<Duration> {
    let waits: Vec<_> = connections
        .into_iter()
        .map(|(opened, mut stream)| {
            tokio::spawn(async move {
                closed(&mut stream, timeout).await;
                opened.elapsed()
            })
        })
        .collect();
    let mut held = Vec::with_capacity(waits.len());
    for wait in waits {
        held.push(wait.await.expect("the wait for a close"));
    }
    held
}

/// The same client for tests without a runtime.
pub mod blocking {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use super::{Response, TIMEOUT, format_request};

    /// One request on its own connection: (status, body), or `None` when
    /// nothing answers (no listener yet, a reset, no status line): for
    /// polling a server that is starting.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        stream
            .write_all(&format_request(addr, method, path, headers, body))
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let response = Response::parse(&response);
        (response.status != 0).then_some((response.status, response.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that records the request and answers `reply`.
    async fn one_shot(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(reply.as_bytes()).await.unwrap();
            request
        });
        (addr, task)
    }

    #[tokio::test]
    async fn writes_the_request_and_reads_status_and_body() {
        let (addr, server) = one_shot("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").await;
        let (status, body) = request(addr, "POST", "/x", &[("X-A", "1")], b"").await;
        assert_eq!((status, body.as_str()), (201, "ok"));
        let sent = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(sent.starts_with("POST /x HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nX-A: 1\r\n"), "{sent}");
        assert!(sent.contains("\r\nContent-Length: 0\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn blocking_says_none_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let answer =
            tokio::task::spawn_blocking(move || blocking::request(addr, "GET", "/", &[], b""))
                .await
                .unwrap();
        assert_eq!(answer, None);
    }
}
