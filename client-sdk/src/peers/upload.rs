//! Serving other viewers: the upload server on the session's endpoint.
//!
//! Admission, cheapest first: uploading allowed at all (policy, network
//! type), a connection slot (semaphore), the hello within its timeout
//! (token verified offline, naming the connection's certificate key,
//! covering this title); then per request the upload cap's backlog (BUSY
//! instead of a queue) and the store.

use std::sync::Arc;
use std::time::Duration;

use loaves_proto::names::RenditionName;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::peerwire::{
    self, AuthenticatedPeer, EgressLimiter, HaveSender, Reply, RequestHandler,
};
use tokio::sync::{Semaphore, watch};

use super::{Context, LIE_AHEAD, claimed};
use crate::config::Upload;
use crate::lock;
use crate::session::Shared;
use crate::stats::Counters;
use crate::store::SegmentKey;

struct UploadHandler {
    shared: Arc<Shared>,
    /// The upload cap's limiter, shared by every connection served.
    egress: Option<Arc<EgressLimiter>>,
}

impl UploadHandler {
    /// Why a new request cannot be served now, if it cannot.
    fn refusal(&self) -> Option<&'static str> {
        if !self.shared.upload_allowed() {
            return Some("not uploading now");
        }
        // Admission by rate: queued behind uploads already too late for the
        // cap, this one would only hold its requester up.
        let behind = self
            .egress
            .as_ref()
            .is_some_and(|egress| egress.backlog() > self.shared.config.max_upload_backlog);
        if behind {
            Counters::add(&self.shared.counters.refused_busy, 1);
            return Some("upload budget exhausted");
        }
        None
    }
}

impl RequestHandler for UploadHandler {
    fn handle(
        &self,
        _peer: &AuthenticatedPeer,
        request: &pb::SegmentRequest,
    ) -> impl std::future::Future<Output = Reply> + Send {
        let reply = if let Some(reason) = self.refusal() {
            Reply::Refuse {
                status: pb::segment_response_header::Status::Busy,
                message: reason.into(),
            }
        } else {
            let held = RenditionName::new(request.rendition.as_str())
                .ok()
                .and_then(|rendition| {
                    lock(&self.shared.store).get(&SegmentKey {
                        rendition,
                        sequence: request.sequence,
                    })
                });
            match held {
                Some(bytes) if self.shared.config.tamper_uploads() && !bytes.is_empty() => {
                    let mut lie = bytes.to_vec();
                    let middle = lie.len() / 2;
                    lie[middle] ^= 0x5a;
                    Reply::Segment {
                        bytes: lie.into(),
                        guard: None,
                    }
                }
                Some(bytes) => Reply::Segment { bytes, guard: None },
                None => Reply::Refuse {
                    status: pb::segment_response_header::Status::NotFound,
                    message: "not held".into(),
                },
            }
        };
        std::future::ready(reply)
    }

    fn finished(
        &self,
        _peer: &AuthenticatedPeer,
        _request: &pb::SegmentRequest,
        outcome: peerwire::Outcome,
    ) {
        if let peerwire::Outcome::Served { bytes } = outcome {
            Counters::add(&self.shared.counters.uploaded, bytes);
        }
    }
}

/// Serves other viewers until the session is cancelled. `announcer_done`
/// is the end of the announcer sharing this endpoint: closing the endpoint
/// would cut its final `Stop`s short, so the close waits for it (bounded).
pub(super) async fn accept_loop(
    context: Arc<Context>,
    announcer_done: Option<watch::Receiver<()>>,
) {
    let shared = &context.shared;
    let slots = Arc::new(Semaphore::new(shared.config.max_upload_connections));
    let egress = match shared.config.upload {
        Upload::Capped { bytes_per_second } => Some(Arc::new(EgressLimiter::new(
            bytes_per_second,
            Duration::from_millis(250),
        ))),
        Upload::Off => None,
    };
    let handler = Arc::new(UploadHandler {
        shared: shared.clone(),
        egress: egress.clone(),
    });
    loop {
        let incoming = tokio::select! {
            incoming = context.endpoint.accept() => incoming,
            () = shared.cancel.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        if !shared.upload_allowed() {
            incoming.refuse();
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let context = context.clone();
        let handler = handler.clone();
        let egress = egress.clone();
        shared.spawn(async move {
            serve_peer(&context, incoming, handler, egress).await;
            drop(permit);
        });
    }
    if let Some(done) = announcer_done {
        super::announcer::finished(done).await;
    }
    context
        .endpoint
        .close(peerwire::close_code::SHUTDOWN.into(), b"closing");
}

async fn serve_peer(
    context: &Context,
    incoming: quinn::Incoming,
    handler: Arc<UploadHandler>,
    egress: Option<Arc<EgressLimiter>>,
) {
    let shared = &context.shared;
    let handshake = tokio::time::timeout(context.limits.hello_timeout, incoming);
    let connection = tokio::select! {
        () = shared.cancel.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(connection)) => connection,
            _ => return,
        },
    };
    let own = peerwire::viewer_hello(
        shared.credentials.current().token.to_vec(),
        shared.title.as_str(),
        "",
    );
    let title = shared.title.clone();
    let Ok(peer) = peerwire::accept_hello(
        &connection,
        &context.verifier,
        &own,
        |t| title == t,
        UnixSeconds::now(),
        &context.limits,
    )
    .await
    else {
        return;
    };
    let rendition = peer
        .hello
        .swarm
        .as_ref()
        .and_then(|s| RenditionName::new(s.rendition.as_str()).ok());
    let have_task = rendition.map(|rendition| {
        let connection = connection.clone();
        let limits = (*context.limits).clone();
        let shared = shared.clone();
        shared
            .clone()
            .spawn(send_haves(shared, connection, limits, rendition))
    });
    peerwire::serve_requests(
        connection.clone(),
        Arc::new(peer),
        handler,
        context.verifier.clone(),
        context.limits.clone(),
        egress,
        shared.cancel.clone().cancelled_owned(),
    )
    .await;
    if let Some(task) = have_task {
        task.abort();
    }
    connection.close(peerwire::close_code::DONE.into(), b"bye");
}

/// HAVE notices to one served peer: what is held now, then every new
/// segment of its rendition.
async fn send_haves(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    limits: peerwire::Limits,
    rendition: RenditionName,
) {
    let mut news = shared.have_tx.subscribe();
    let held = lock(&shared.held)
        .get(&rendition)
        .cloned()
        .unwrap_or_default();
    let held: Vec<u64> = claimed(&shared, held)
        .into_iter()
        .take(peerwire::MAX_HAVE_SEQUENCES)
        .collect();
    let lie = shared.config.lie_about_holdings();
    let Ok(mut sender) = HaveSender::open(&connection, limits).await else {
        return;
    };
    let mut notice = pb::HaveNotice {
        rendition: rendition.to_string(),
        sequences: held,
    };
    loop {
        if !notice.sequences.is_empty() && sender.send(&notice).await.is_err() {
            return;
        }
        notice.sequences.clear();
        let news = tokio::select! {
            () = shared.cancel.cancelled() => return,
            news = news.recv() => news,
        };
        match news {
            Ok((r, sequence)) if r == rendition => {
                notice.sequences.push(sequence);
                if lie {
                    notice
                        .sequences
                        .extend((1..=LIE_AHEAD).filter_map(|n| sequence.checked_add(n)));
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
