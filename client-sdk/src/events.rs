//! What happens in a session, as a stream of [`Event`]s.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use loaves_proto::names::RenditionName;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::scheduler::{DropReason, Source};

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A segment was verified and is ready for the player.
    SegmentDelivered {
        /// Rendition.
        rendition: RenditionName,
        /// Sequence number.
        sequence: u64,
        /// Where its bytes came from (the last transfer's source).
        source: Source,
        /// Its size.
        bytes: u64,
        /// From the fetch decision to verification.
        elapsed: Duration,
    },
    /// Bytes failed manifest verification and were thrown away.
    SegmentRejected {
        /// Rendition.
        rendition: RenditionName,
        /// Sequence number.
        sequence: u64,
        /// The source that sent them.
        source: Source,
    },
    /// A peer was dropped for the rest of the session.
    PeerBanned {
        /// Rendition (swarm) it was dropped from.
        rendition: RenditionName,
        /// Its public key (hex).
        peer: String,
        /// Why.
        reason: DropReason,
    },
    /// The player ran out of media.
    RebufferStart,
    /// The player has media again; the stall lasted `duration`.
    RebufferEnd {
        /// Length of the stall.
        duration: Duration,
    },
    /// Playback started `startup` after `open` returned.
    Started {
        /// Startup time.
        startup: Duration,
    },
    /// The license heartbeat succeeded: new keys (if any) and a new session
    /// token are in use from now on.
    LicenseRenewed,
    /// The license heartbeat failed; it is retried (with back-off) until
    /// the license's grace runs out, then the session ends
    /// ([`Event::SessionEnded`]).
    LicenseRenewalFailed {
        /// The error.
        message: String,
    },
    /// The tracker could not be reached or refused (playback goes on from
    /// known peers and the CDN).
    TrackerUnavailable {
        /// The error.
        message: String,
    },
    /// The addresses this viewer tells other viewers, learned or changed
    /// (from its interfaces, the configuration and what the tracker
    /// observed).
    Addresses {
        /// The candidates, best first.
        candidates: Vec<SocketAddr>,
    },
    /// What kind of NAT this viewer is behind became known or changed.
    NatDetected {
        /// The kind.
        nat: crate::stats::NatType,
    },
    /// A connection to a peer or seed completed its hello, or was given up.
    PeerConnect {
        /// Rendition (swarm).
        rendition: RenditionName,
        /// Its public key (hex), as the tracker named it.
        peer: String,
        /// Whether the tracker listed it as an edge seed.
        seed: bool,
        /// The candidate addresses tried, in the order they were started.
        tried: Vec<SocketAddr>,
        /// The address that answered (`None`: given up).
        address: Option<SocketAddr>,
        /// Whether the peer was asked to open towards this viewer first.
        punched: bool,
        /// From the first attempt until then.
        elapsed: Duration,
    },
    /// Other viewers cannot reach this one: it downloads from peers it
    /// reaches itself, but serves nobody.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// New bytes of a live manifest failed verification (bad signature,
    /// broken chain, malformed): nothing of them was applied, and the
    /// segments they list are not played. Following goes on (with backoff)
    /// from the last verified chunk.
    ManifestRejected {
        /// Rendition.
        rendition: RenditionName,
        /// Why.
        message: String,
    },
    /// A live manifest could not be re-read from the CDN (emitted once per
    /// run of failures; following goes on with backoff).
    ManifestUnavailable {
        /// Rendition.
        rendition: RenditionName,
        /// The error.
        message: String,
    },
    /// This reader fell behind and `missed` events were skipped.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// The session ended on its own (not by `close`): every task has
    /// stopped, the player endpoint answers no more. The last event.
    SessionEnded {
        /// Why.
        reason: EndReason,
    },
}

/// Why a session ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The license could not be renewed before its grace ran out: the keys
    /// and the session token are no longer valid.
    LicenseExpired {
        /// The last renewal error.
        message: String,
    },
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LicenseExpired { message } => {
                write!(f, "the license expired without renewal: {message}")
            }
        }
    }
}

/// A session's events, as a [`Stream`] (or with [`Events::next`]).
///
/// Bounded: a reader that falls behind by more than the configured
/// capacity skips the oldest events and is told so by an
/// [`Event::Lagged`]. Ends when the session is closed or ended.
#[derive(Debug)]
pub struct Events {
    stream: BroadcastStream<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            stream: BroadcastStream::new(rx),
        }
    }

    /// The next event; `None` once the session is closed.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(self).poll_next(&mut cx) {
            Poll::Ready(event) => event,
            Poll::Pending => None,
        }
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.stream).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(missed)) => Event::Lagged { missed },
            })
        })
    }
}
