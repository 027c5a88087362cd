//! The state a session's tasks share, and their one lifecycle.
//!
//! Every task a session starts (tracks and their transfers, live
//! followers, the license heartbeat, the QUIC side, the player endpoint) is
//! spawned on the session's [`TaskTracker`] and watches its
//! [`CancellationToken`]: `close()` cancels, then waits for the tracker to
//! be empty, so it returns only once nothing of the session runs any more.
//! Nothing stops a task by a message that could be dropped.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use loaves_proto::keys::ContentKey;
use loaves_proto::names::{RenditionName, Title};
use loaves_wire::identity::PeerIdentity;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cdn::CdnClient;
use crate::config::{Config, Upload};
use crate::credential::Credentials;
use crate::events::{EndReason, Event};
use crate::license::LicensedSession;
use crate::lock;
use crate::scheduler::SchedulerStats;
use crate::session::presentation::Rendition;
use crate::stats::{Counters, Stats};
use crate::store::{SegmentKey, SegmentStore};

/// Connection attempts kept for the next report (the tracker reads at most
/// as many from one report).
const MAX_CONNECT_REPORTS: usize = 64;

/// State shared by a session's tasks (tracks, peers, endpoint).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) title: Title,
    pub(crate) config: Config,
    pub(crate) cdn: CdnClient,
    pub(crate) identity: PeerIdentity,
    /// The newest session token.
    pub(crate) credentials: Credentials,
    pub(crate) store: Mutex<SegmentStore>,
    /// Sequences held per rendition (mirrors the store, for HAVE and announces).
    pub(crate) held: Mutex<HashMap<RenditionName, BTreeSet<u64>>>,
    /// New verified segments, for HAVE notices to connected peers.
    pub(crate) have_tx: broadcast::Sender<(RenditionName, u64)>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) counters: Counters,
    pub(crate) metered: AtomicBool,
    pub(crate) opened_at: Instant,
    /// The addresses other viewers are told to reach this one at, best
    /// first (see [`crate::peers::addresses`]).
    pub(crate) candidates: Mutex<Vec<std::net::SocketAddr>>,
    /// The NAT class this viewer believes it is behind (`pb::NatClass` as
    /// its number).
    pub(crate) nat_class: std::sync::atomic::AtomicI32,
    /// Connection attempts not yet reported to the tracker (bounded).
    pub(crate) connect_reports: Mutex<std::collections::VecDeque<loaves_proto::pb::ConnectReport>>,
    /// Cancelled when the session closes or ends: every task stops.
    pub(crate) cancel: CancellationToken,
    /// Every task of the session.
    pub(crate) tasks: TaskTracker,
    pub(crate) master_playlist: Bytes,
    pub(crate) dash_manifest: Option<Bytes>,
    pub(crate) renditions: HashMap<RenditionName, Arc<Rendition>>,
    pub(crate) scheduler_stats: Mutex<HashMap<RenditionName, SchedulerStats>>,
    /// Content keys by key id, from the license and its renewals; filled
    /// only with the decrypt option (otherwise the keys stay inside the
    /// license task and are never used by the SDK).
    pub(crate) content_keys: Mutex<HashMap<[u8; 16], ContentKey>>,
}

impl Shared {
    /// Starts `task` as one of the session's tasks.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Ends the session on its own (not by `close`): the last event, then
    /// every task stops.
    pub(crate) fn end(&self, reason: EndReason) {
        if !self.cancel.is_cancelled() {
            // Cancelled before the event goes out: an app that reacts to
            // `SessionEnded` finds `Session::is_ended` already true.
            self.cancel.cancel();
            self.emit(Event::SessionEnded { reason });
        }
    }

    /// The NAT class this viewer believes it is behind.
    pub(crate) fn nat_class(&self) -> loaves_proto::pb::NatClass {
        if let Some(assumed) = self.config.assumed_nat() {
            return assumed.into();
        }
        loaves_proto::pb::NatClass::try_from(self.nat_class.load(Ordering::Relaxed))
            .unwrap_or(loaves_proto::pb::NatClass::Unknown)
    }

    /// Records a connection attempt for the next report to the tracker.
    pub(crate) fn report_connect(&self, report: loaves_proto::pb::ConnectReport) {
        let mut reports = lock(&self.connect_reports);
        if reports.len() >= MAX_CONNECT_REPORTS {
            reports.pop_front();
        }
        reports.push_back(report);
    }

    /// Makes the license's keys available to the endpoint's decryption
    /// (with the decrypt option only).
    pub(crate) fn learn_keys(&self, licensed: &LicensedSession) {
        if !self.config.decrypt {
            return;
        }
        let mut keys = lock(&self.content_keys);
        for opened in &licensed.keys {
            keys.entry(opened.key_id.0)
                .or_insert_with(|| opened.key.clone());
        }
    }

    /// The content key of `kid`, if the license carried it.
    pub(crate) fn content_key(&self, kid: &[u8; 16]) -> Option<ContentKey> {
        lock(&self.content_keys).get(kid).cloned()
    }

    pub(crate) fn emit(&self, event: Event) {
        // No receiver is fine; a lagging receiver is told how many it missed.
        let _ = self.events.send(event);
    }

    /// The player is playing (or not) from now on, for the played time.
    pub(crate) fn set_playing(&self, playing: bool) {
        let mut clock = lock(&self.counters.play_clock);
        if playing {
            clock.play(Instant::now());
        } else {
            clock.pause(Instant::now());
        }
    }

    /// Whether uploading is allowed right now.
    pub(crate) fn upload_allowed(&self) -> bool {
        self.config.p2p
            && self.config.upload != Upload::Off
            && !(self.config.upload_only_unmetered && self.metered.load(Ordering::Relaxed))
    }

    /// Stores a verified segment and tells connected peers.
    pub(crate) fn store_verified(&self, rendition: &RenditionName, sequence: u64, bytes: Bytes) {
        let key = SegmentKey {
            rendition: rendition.clone(),
            sequence,
        };
        let (evicted, kept) = {
            let mut store = lock(&self.store);
            let evicted = store.insert(key.clone(), bytes);
            (evicted, store.contains(&key))
        };
        {
            let mut held = lock(&self.held);
            for gone in evicted {
                if let Some(set) = held.get_mut(&gone.rendition) {
                    set.remove(&gone.sequence);
                }
            }
            if kept {
                held.entry(rendition.clone()).or_default().insert(sequence);
            }
        }
        if kept {
            let _ = self.have_tx.send((rendition.clone(), sequence));
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for s in lock(&self.scheduler_stats).values() {
            stats.bytes_from_peers += s.bytes_from_peers;
            stats.bytes_from_seeds += s.bytes_from_seeds;
            stats.bytes_from_cdn += s.bytes_from_cdn;
            stats.segments_delivered += s.segments_completed;
        }
        self.counters.fill(&mut stats);
        stats.nat = self.nat_class().into();
        stats.store_bytes = lock(&self.store).used_bytes();
        let total = stats.bytes_total();
        if total > 0 {
            stats.offload_ratio = 1.0 - stats.bytes_from_cdn as f64 / total as f64;
        }
        stats
    }
}
