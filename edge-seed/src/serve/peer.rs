//! The peer wire server: QUIC, ALPN `loaves-peer/1`, the protocol mechanics
//! of [`loaves_wire::peerwire`] around the seed's [`Store`].
//!
//! Admission, cheapest check first, so a flood is turned away before it
//! costs anything:
//! 1. connection slots (global and per IP): refused before the handshake;
//! 2. the hello: a session token (or seed credential) bound to the client
//!    certificate's key, for a title this seed serves, within the hello
//!    timeout — otherwise the connection is closed;
//! 3. per request: an upload slot and room in the egress budget, otherwise
//!    BUSY at once (the client goes elsewhere instead of queueing);
//! 4. per transfer: the stall and minimum-rate deadlines of
//!    [`loaves_wire::peerwire::Limits`], so a slow reader holds its upload
//!    slot for a bounded time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loaves_proto::UnixSeconds;
use loaves_proto::pb;
use loaves_proto::pb::segment_response_header::Status;
use loaves_wire::peerwire::{
    self, AuthenticatedPeer, CredentialVerifier, EgressLimiter, HaveSender, Limits, Outcome, Reply,
    RequestHandler, UploadGuard, close_code,
};
use prometheus::IntGauge;
use tokio::sync::{Semaphore, broadcast, watch};

use super::metrics::Metrics;
use super::store::{HaveEvent, Store, StoreError};

/// State shared by the peer server's tasks.
#[derive(Debug)]
pub struct PeerShared {
    /// Segments.
    pub store: Arc<Store>,
    /// Series.
    pub metrics: Metrics,
    /// Token and credential checks.
    pub verifier: Arc<CredentialVerifier>,
    /// What the seed says in its hello.
    pub own_hello: pb::PeerHello,
    /// Sizes and timeouts.
    pub limits: Arc<Limits>,
    /// Upload slots (shared with the HTTP role).
    pub uploads: Arc<Semaphore>,
    /// Egress budget for peer uploads.
    pub egress: Option<Arc<EgressLimiter>>,
    /// Longest acceptable wait for egress before answering BUSY.
    pub max_egress_backlog: Duration,
    /// Connection slots.
    pub connections: Arc<Semaphore>,
    /// Connection slots per IP.
    pub max_connections_per_ip: usize,
    /// Open connections per IP.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One upload slot, released (and the gauge decremented) on drop.
#[derive(Debug)]
pub struct UploadSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl UploadSlot {
    /// Takes a slot if one is free.
    pub fn try_take(uploads: &Arc<Semaphore>, metrics: &Metrics) -> Option<Self> {
        let permit = uploads.clone().try_acquire_owned().ok()?;
        metrics.uploads_in_flight.inc();
        Some(Self {
            _permit: permit,
            gauge: metrics.uploads_in_flight.clone(),
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Answers segment requests from the store.
#[derive(Debug)]
struct SeedHandler {
    shared: Arc<PeerShared>,
}

fn refuse(status: Status, message: &str) -> Reply {
    Reply::Refuse {
        status,
        message: message.to_owned(),
    }
}

impl RequestHandler for SeedHandler {
    async fn handle(&self, peer: &AuthenticatedPeer, request: &pb::SegmentRequest) -> Reply {
        let shared = &self.shared;
        let Some(slot) = UploadSlot::try_take(&shared.uploads, &shared.metrics) else {
            shared.metrics.refused.with_label_values(&["uploads"]).inc();
            return refuse(Status::Busy, "all upload slots in use");
        };
        if let Some(egress) = &shared.egress
            && egress.backlog() > shared.max_egress_backlog
        {
            shared.metrics.refused.with_label_values(&["egress"]).inc();
            return refuse(Status::Busy, "egress budget exhausted");
        }
        match shared
            .store
            .segment(peer.title(), &request.rendition, request.sequence)
            .await
        {
            Ok(bytes) => Reply::Segment {
                bytes,
                guard: Some(UploadGuard(Box::new(slot))),
            },
            Err(
                StoreError::UnknownTitle
                | StoreError::UnknownRendition
                | StoreError::UnknownSegment(_),
            ) => refuse(Status::NotFound, "not in the manifest"),
            Err(error) => {
                tracing::debug!(%error, "segment unavailable");
                refuse(Status::Internal, "segment unavailable from the origin")
            }
        }
    }

    fn finished(&self, peer: &AuthenticatedPeer, _request: &pb::SegmentRequest, outcome: Outcome) {
        let metrics = &self.shared.metrics;
        let status = match outcome {
            Outcome::Served { bytes } => {
                metrics
                    .bytes_served
                    .with_label_values(&[peer.title(), "quic"])
                    .inc_by(bytes);
                "ok"
            }
            Outcome::Refused(Status::Busy) => "busy",
            Outcome::Refused(Status::NotFound) => "not_found",
            Outcome::Refused(Status::BadRange) => "bad_range",
            Outcome::Refused(Status::Forbidden) => "forbidden",
            Outcome::Refused(_) => "error",
            Outcome::Failed => "failed",
        };
        metrics.requests.with_label_values(&["quic", status]).inc();
    }
}

/// Holds one connection slot, global and per IP; released on drop.
#[derive(Debug)]
struct ConnectionSlot {
    shared: Arc<PeerShared>,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.shared.metrics.connections.dec();
    }
}

fn admit(shared: &Arc<PeerShared>, ip: IpAddr) -> Option<ConnectionSlot> {
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        shared
            .metrics
            .refused
            .with_label_values(&["max_connections"])
            .inc();
        return None;
    };
    {
        let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= shared.max_connections_per_ip {
            shared.metrics.refused.with_label_values(&["per_ip"]).inc();
            return None;
        }
        *count += 1;
    }
    shared.metrics.connections.inc();
    shared.metrics.connections_total.inc();
    Some(ConnectionSlot {
        shared: shared.clone(),
        ip,
        _permit: permit,
    })
}

/// Accepts peer connections until `shutdown` turns true, then drains: no new
/// connections or requests, in-flight transfers get until `drain` to finish,
/// then every connection is closed.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<PeerShared>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(incoming) = incoming else { break };
        let Some(slot) = admit(&shared, incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            handle_incoming(incoming, shared, shutdown).await;
        });
    }
    // Drain: connections stop taking requests (they watch `shutdown`) and
    // finish what is in flight, bounded by `drain`.
    let _ = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    endpoint.close(close_code::SHUTDOWN.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn handle_incoming(
    incoming: quinn::Incoming,
    shared: Arc<PeerShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(_) => return,
    };
    let connection = match tokio::time::timeout(shared.limits.hello_timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        _ => {
            shared.hello_refused("handshake");
            return;
        }
    };
    let store = shared.store.clone();
    let peer = match peerwire::accept_hello(
        &connection,
        &shared.verifier,
        &shared.own_hello,
        |title| store.serves_title(title),
        UnixSeconds::now(),
        &shared.limits,
    )
    .await
    {
        Ok(peer) => Arc::new(peer),
        Err(error) => {
            let reason = match &error {
                peerwire::PeerWireError::Hello(hello) => hello.reason(),
                peerwire::PeerWireError::Certificate(_) => "certificate",
                _ => "protocol",
            };
            shared.hello_refused(reason);
            tracing::debug!(remote = %connection.remote_address(), %error, "hello refused");
            return;
        }
    };
    let have = tokio::spawn(have_notices(
        connection.clone(),
        peer.clone(),
        shared.store.subscribe_have(),
        shared.limits.as_ref().clone(),
        shutdown.clone(),
    ));
    let handler = Arc::new(SeedHandler {
        shared: shared.clone(),
    });
    peerwire::serve_requests(
        connection.clone(),
        peer,
        handler,
        shared.verifier.clone(),
        shared.limits.clone(),
        shared.egress.clone(),
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        },
    )
    .await;
    have.abort();
    connection.close(close_code::SHUTDOWN.into(), b"bye");
}

impl PeerShared {
    fn hello_refused(&self, reason: &str) {
        self.metrics
            .hello_refused
            .with_label_values(&[reason])
            .inc();
    }
}

/// Forwards live arrivals of the peer's title to its HAVE stream, opened on
/// the first one. A peer that does not read its HAVE stream loses it (the
/// send times out), never the seed's memory: the broadcast channel is
/// bounded and a lagging receiver skips.
async fn have_notices(
    connection: quinn::Connection,
    peer: Arc<AuthenticatedPeer>,
    mut arrivals: broadcast::Receiver<HaveEvent>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sender: Option<HaveSender> = None;
    loop {
        let event = tokio::select! {
            event = arrivals.recv() => event,
            _ = connection.closed() => break,
            _ = shutdown.changed() => break,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if event.title != peer.title()
            || !peer
                .credential
                .allows_rendition(&event.title, &event.rendition)
        {
            continue;
        }
        if sender.is_none() {
            match HaveSender::open(&connection, limits.clone()).await {
                Ok(opened) => sender = Some(opened),
                Err(_) => break,
            }
        }
        let Some(stream) = sender.as_mut() else { break };
        let notice = pb::HaveNotice {
            rendition: event.rendition,
            sequences: vec![event.sequence],
        };
        if stream.send(&notice).await.is_err() {
            break;
        }
    }
}
