//! The session's QUIC side: one quinn endpoint (one UDP socket) that
//! - serves other viewers ([`upload`]: hello with session tokens, requests
//!   answered from the segment store, HAVE notices of every newly verified
//!   segment, a connection cap and a shared upload rate cap),
//! - connects to the peers the tracker names ([`download`]: hello both
//!   ways, then HAVE notices feed the rendition's scheduler),
//! - announces to the tracker ([`announcer`]), per active rendition, with
//!   the stats deltas and the viewer's address candidates
//!   ([`addresses`]), and at the shutdown leaves each swarm with a `Stop`
//!   carrying the last deltas (bounded by [`announcer::FINAL_REPORT_TIMEOUT`]).
//!
//! One socket for all three is what lets the tracker observe the address
//! other viewers reach this one at (its public mapping behind a NAT).
//!
//! With P2P off none of that runs but the announcer, on a client-only
//! endpoint ([`start_stats_only`]): it reports the stats (the CDN-only
//! cohort, final `Stop` included), advertises nothing, holds nothing, and
//! ignores the peers the tracker names.
//!
//! The wire protocol is `loaves_wire::peerwire`; the tracker client is
//! `loaves_wire::tracker_client`.

pub(crate) mod addresses;
pub(crate) mod announcer;
mod download;
mod nat;
mod upload;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use loaves_proto::names::RenditionName;
use loaves_wire::peerwire::{self, CredentialVerifier, Limits, TransportOptions};
use loaves_wire::tracker_client::{ClientEndpoint, TrackerConnection};
use tokio::sync::watch;

use self::nat::NatObservations;

use crate::error::Error;
use crate::events::Event;
use crate::lock;
use crate::scheduler::PeerId;
use crate::session::Shared;
use crate::track::TrackHandle;

/// Punch requests a session sends per second (and the burst): each one
/// makes a peer send connection attempts.
const PUNCHES_PER_SECOND: f64 = 2.0;
const PUNCH_BURST: f64 = 8.0;
/// Punch notices a session follows per second (and the burst).
const NOTICES_PER_SECOND: f64 = 4.0;
const NOTICE_BURST: f64 = 8.0;

/// With the `lie_about_holdings` fault: how many segments past each held
/// one a lying session claims.
const LIE_AHEAD: u64 = 3;

/// What this session claims to hold: the truth, or (fault injection) the
/// truth plus the next [`LIE_AHEAD`] segments after each held one.
fn claimed(shared: &Shared, held: BTreeSet<u64>) -> BTreeSet<u64> {
    if !shared.config.lie_about_holdings() {
        return held;
    }
    held.iter()
        .flat_map(|s| *s..=s.saturating_add(LIE_AHEAD))
        .collect()
}

/// Peer ids are stable per (rendition, key): a banned key stays banned.
#[derive(Debug, Default)]
struct Registry {
    ids: Mutex<HashMap<(RenditionName, [u8; 32]), PeerId>>,
    connected: Mutex<HashSet<(RenditionName, [u8; 32])>>,
    /// Peers that could not be reached, in their back-off.
    unreachable: Mutex<nat::Backoff>,
    next: AtomicU64,
}

impl Registry {
    fn id(&self, rendition: &RenditionName, key: [u8; 32]) -> PeerId {
        *lock(&self.ids)
            .entry((rendition.clone(), key))
            .or_insert_with(|| PeerId(self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

/// What the QUIC side's tasks share.
struct Context {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<RenditionName, TrackHandle>>,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    verifier: Arc<CredentialVerifier>,
    limits: Arc<Limits>,
    registry: Registry,
    /// The socket's local address.
    bound: SocketAddr,
    /// The host's interface addresses, read once at the start.
    interfaces: Vec<std::net::IpAddr>,
    /// Where the tracker sees this viewer's packets come from.
    observed: Mutex<Option<SocketAddr>>,
    /// What every observer saw: the NAT's class.
    nat: Mutex<NatObservations>,
    /// The announcer's tracker connection, for punch requests.
    tracker: Mutex<Option<TrackerConnection>>,
    /// Punch requests sent and punch notices followed: both bounded.
    punches: Mutex<RateLimit>,
    notices: Mutex<RateLimit>,
}

/// A small token bucket on the driver's clock.
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl RateLimit {
    fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            at: std::time::Instant::now(),
        }
    }

    /// Takes one token, if there is one.
    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Context {
    /// `observer` saw this viewer's packets come from `observed`: one more
    /// observation of the NAT; tells the app when the class changes.
    fn observed_by(&self, observer: SocketAddr, observed: SocketAddr) {
        let class = {
            let mut nat = lock(&self.nat);
            nat.observed(observer, observed);
            nat.class(self.bound.port(), &self.interfaces)
        };
        let before = self.shared.nat_class.swap(class as i32, Ordering::Relaxed);
        if before != class as i32 {
            self.shared.emit(Event::NatDetected { nat: class.into() });
        }
    }

    /// Recomputes the candidates from what the tracker observed; tells the
    /// app when they change, and warns when there are none.
    fn learn_addresses(&self, observed: Option<SocketAddr>, tracker: Option<SocketAddr>) {
        if let Some(seen) = observed {
            *lock(&self.observed) = Some(seen);
            if let Some(tracker) = tracker {
                self.observed_by(tracker, seen);
            }
        }
        let fresh = addresses::candidates(
            self.bound,
            &self.interfaces,
            observed,
            &self.shared.config.public_addresses,
            tracker,
        );
        let changed = {
            let mut candidates = lock(&self.shared.candidates);
            let changed = *candidates != fresh;
            candidates.clone_from(&fresh);
            changed
        };
        if changed {
            if fresh.is_empty() {
                self.shared.emit(Event::Unreachable {
                    reason: "no address other viewers can reach: the socket is bound to a \
                             loopback or unspecified address and the tracker reported none"
                        .into(),
                });
            }
            self.shared.emit(Event::Addresses { candidates: fresh });
        }
    }

    fn candidates(&self) -> Vec<SocketAddr> {
        lock(&self.shared.candidates).clone()
    }
}

/// Starts the QUIC endpoint, the upload server (unless upload is off) and
/// the tracker announcer (when a tracker is configured). Returns the
/// endpoint's local address.
pub(crate) fn start(
    shared: Arc<Shared>,
    tracks: Arc<HashMap<RenditionName, TrackHandle>>,
) -> Result<SocketAddr, Error> {
    let transport = TransportOptions::default();
    let server_config = peerwire::server_config(&shared.identity, &transport)
        .map_err(|e| Error::setup("the peer endpoint's TLS", e))?;
    let client_config = peerwire::client_config(&shared.identity, &transport)
        .map_err(|e| Error::setup("the peer endpoint's TLS", e))?;
    let endpoint = loaves_wire::bind_endpoint(shared.config.peer_bind, Some(server_config))
        .map_err(|e| Error::setup("the peer endpoint", e))?;
    let bound = endpoint
        .local_addr()
        .map_err(|e| Error::setup("the peer endpoint", e))?;
    let context = Arc::new(Context {
        verifier: Arc::new(CredentialVerifier::new(
            shared.config.license.trusted_keys.clone(),
            shared.config.clock_skew.as_secs(),
        )),
        shared: shared.clone(),
        tracks,
        endpoint,
        client_config,
        limits: Arc::new(Limits::default()),
        registry: Registry::default(),
        bound,
        interfaces: addresses::interface_addresses(),
        observed: Mutex::new(None),
        nat: Mutex::new(NatObservations::default()),
        tracker: Mutex::new(None),
        punches: Mutex::new(RateLimit::new(PUNCHES_PER_SECOND, PUNCH_BURST)),
        notices: Mutex::new(RateLimit::new(NOTICES_PER_SECOND, NOTICE_BURST)),
    });
    // Until the tracker reports what it sees: the interfaces and the
    // configured addresses.
    context.learn_addresses(None, announcer::tracker_hint(&shared));
    let announcer_done = (!shared.config.trackers.is_empty()).then(|| {
        let client = ClientEndpoint::from_endpoint(context.endpoint.clone())
            .with_keep_alive(shared.config.nat_keepalive);
        announcer::spawn(
            shared.clone(),
            client,
            announcer::Role::Swarm(context.clone()),
        )
    });
    shared.spawn(upload::accept_loop(context, announcer_done));
    Ok(bound)
}

/// P2P off: starts the tracker announcer alone (when a tracker is
/// configured), so the tracker gets this session's stats in the CDN-only
/// cohort. Its QUIC endpoint is client-only, on an ephemeral port: nothing
/// can connect in, and the peer port is left alone.
pub(crate) fn start_stats_only(shared: Arc<Shared>) {
    if shared.config.trackers.is_empty() {
        return;
    }
    // Either family: the tracker's name is resolved later, and a dual-stack
    // socket reaches both.
    let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    let endpoint = loaves_wire::bind_endpoint(bind, None)
        .or_else(|_| loaves_wire::bind_endpoint((Ipv4Addr::UNSPECIFIED, 0).into(), None));
    match endpoint {
        Ok(endpoint) => {
            let client = ClientEndpoint::from_endpoint(endpoint);
            let _done: watch::Receiver<()> =
                announcer::spawn(shared, client, announcer::Role::StatsOnly);
        }
        // Stats are not worth failing playback for (P2P may be off precisely
        // because UDP is unusable here).
        Err(e) => shared.emit(Event::TrackerUnavailable {
            message: e.to_string(),
        }),
    }
}
