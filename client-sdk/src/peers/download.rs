//! Connecting to the peers and seeds the tracker names, then feeding what
//! they announce (HAVE notices) to the rendition's scheduler.
//!
//! A peer entry lists up to a few candidate addresses (its public mapping,
//! its LAN addresses, ...). They are tried as a race with staggered starts
//! (the first after none, each next one a little later, as Happy Eyeballs
//! does): the first to complete its hello wins and the others are dropped,
//! so an unreachable LAN address of a far peer costs a stagger, not a
//! handshake timeout. LAN candidates are tried only for a peer behind the
//! same public address as this viewer (the same router): elsewhere they
//! would only probe this viewer's own LAN.
//!
//! Behind NATs a direct attempt only gets through where the other side's
//! NAT already expects this viewer's packets. So, unless the peer is known
//! to be open (or both sides map per destination, which punching cannot
//! fix: [`nat::punch_plan`]), the viewer asks the tracker to tell the peer
//! to connect here at the same moment (a punch request): each side's
//! outgoing packets open its own NAT for the other's, and the QUIC
//! handshake the viewer started gets through on one of its retransmissions.
//! The peer's own attempt is a connection of its own, which it downloads
//! over. Both directions are used, each by its initiator, so no tie-break
//! is needed. A peer that could not be reached is not tried again for a
//! while (doubling back-off); punch requests and the notices followed are
//! rate-limited; every attempt is reported to the tracker (result, both NAT
//! classes, time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use loaves_proto::names::RenditionName;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::peerwire::{self, HaveReceiver, PeerConnection};
use tokio::task::JoinSet;

use super::Context;
use super::nat::{self, PunchPlan};
use crate::events::Event;
use crate::lock;
use crate::scheduler::{Locality, PeerInfo, PeerKind};
use crate::session::Shared;
use crate::stats::{Counters, Open};
use crate::track::{PeerLink, TrackMsg};
use loaves_proto::pb::NatClass;

/// Initial throughput estimate of a new peer, bytes per second.
const INITIAL_PEER_THROUGHPUT: u64 = 2_500_000;
/// A HAVE stream idle for this long is no longer read (the connection stays).
const HAVE_IDLE: Duration = Duration::from_secs(120);
/// Delay between the starts of two candidates' connection attempts.
const CANDIDATE_STAGGER: Duration = Duration::from_millis(250);
/// Most candidates of one peer tried.
const MAX_CANDIDATES_TRIED: usize = 4;
/// How long a direct attempt to a peer that needs no help may take (the
/// handshake and hello bound it too).
const DIRECT_WINDOW: Duration = Duration::from_secs(5);
/// How long an attempt with a punch may take: the peer is told through the
/// tracker and starts sending; the handshake gets through on one of its
/// retransmissions.
const PUNCH_WINDOW: Duration = Duration::from_secs(6);
/// How long an attempt that punching cannot help may take (LAN candidates).
const HOPELESS_WINDOW: Duration = Duration::from_secs(2);

/// Why a connection is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The tracker named the peer.
    Tracker,
    /// The peer asked (through the tracker) to be connected to now.
    Notice,
}

fn locality(shared: &Shared, region: &str, isp: &str) -> Locality {
    let c = &shared.config;
    if region == c.region && isp == c.isp {
        Locality::SameIsp
    } else if region == c.region {
        Locality::SameRegion
    } else {
        Locality::Remote
    }
}

fn holdings_sequences(holdings: Option<&pb::Holdings>) -> Vec<u64> {
    match holdings.and_then(|h| h.kind.as_ref()) {
        Some(pb::holdings::Kind::LiveWindow(w)) if w.last_sequence >= w.first_sequence => {
            (w.first_sequence..=w.last_sequence)
                .take(peerwire::MAX_HAVE_SEQUENCES)
                .collect()
        }
        Some(pb::holdings::Kind::Bitmap(b)) => b
            .bits
            .iter()
            .enumerate()
            .flat_map(|(i, byte)| {
                (0..8u64)
                    .filter(move |bit| byte & (1 << bit) != 0)
                    .map(move |bit| i as u64 * 8 + bit)
            })
            .take(peerwire::MAX_HAVE_SEQUENCES)
            .filter_map(|offset| b.first_sequence.checked_add(offset))
            .collect(),
        _ => Vec::new(),
    }
}

/// Uses an announce reply with P2P on: connects to the peers and seeds
/// it names.
pub(super) fn join_swarm(
    context: &Arc<Context>,
    rendition: &RenditionName,
    reply: pb::AnnounceReply,
) {
    // The whole swarm's size, not only the neighbours this viewer knows:
    // live injection shares the work of bringing each new segment in among
    // all its viewers.
    if let Some(track) = context.tracks.get(rendition) {
        track.set_swarm_size(reply.swarm_size as usize);
    }
    let own = context.shared.identity.public_key();
    for entry in reply.peers.into_iter().chain(reply.seeds) {
        if entry.peer_public_key == own.as_bytes() {
            continue;
        }
        context.shared.spawn(connect_peer(
            context.clone(),
            rendition.clone(),
            entry,
            Origin::Tracker,
        ));
    }
}

/// Races connection attempts to `candidates` (staggered); the first hello
/// that completes wins.
async fn connect_any(
    context: &Context,
    candidates: Vec<SocketAddr>,
    hello: pb::PeerHello,
) -> Option<PeerConnection> {
    let mut attempts = JoinSet::new();
    for (index, address) in candidates.into_iter().enumerate() {
        let endpoint = context.endpoint.clone();
        let config = context.client_config.clone();
        let hello = hello.clone();
        let verifier = context.verifier.clone();
        let limits = context.limits.clone();
        attempts.spawn(async move {
            tokio::time::sleep(CANDIDATE_STAGGER * index as u32).await;
            peerwire::connect(
                &endpoint,
                address,
                config,
                &hello,
                &verifier,
                UnixSeconds::now(),
                &limits,
            )
            .await
        });
    }
    while let Some(attempt) = attempts.join_next().await {
        if let Ok(Ok(connected)) = attempt {
            // The other attempts are aborted with the set.
            return Some(connected);
        }
    }
    None
}

/// The candidates of `entry` worth trying from here: LAN addresses only
/// for a peer behind this viewer's own public address.
fn candidates(context: &Context, entry: &pb::PeerEntry) -> Vec<SocketAddr> {
    let mine = *crate::lock(&context.observed);
    nat::candidates(&entry.addresses, mine, MAX_CANDIDATES_TRIED)
}

/// Whether `key` is in its back-off after failed attempts.
fn backing_off(context: &Context, key: &[u8; 32]) -> bool {
    crate::lock(&context.registry.unreachable).backing_off(key, Instant::now())
}

/// Records the end of an attempt to reach `key`.
fn settle(context: &Context, key: [u8; 32], reached: bool) {
    crate::lock(&context.registry.unreachable).settle(key, reached, Instant::now());
}

/// Asks the tracker to have `key` open towards this viewer (bounded by the
/// session's punch rate); whether the request went out.
async fn request_punch(context: &Context, rendition: &RenditionName, key: &[u8; 32]) -> bool {
    if !crate::lock(&context.punches).take() {
        return false;
    }
    let Some(tracker) = crate::lock(&context.tracker).clone() else {
        return false;
    };
    let swarm = pb::SwarmId {
        title: context.shared.title.to_string(),
        rendition: rendition.to_string(),
    };
    Counters::add(&context.shared.counters.punch_requests, 1);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tracker.punch(swarm, key)).await,
        Ok(Ok(()))
    )
}

/// Follows a punch notice: the peer asks to be connected to now (it is
/// connecting here at the same moment). Bounded by the session's notice
/// rate; only for a swarm of this session.
pub(super) fn follow_notice(context: &Arc<Context>, notice: pb::PunchNotice) {
    let shared = &context.shared;
    let Some(swarm) = &notice.swarm else { return };
    let Ok(rendition) = RenditionName::new(swarm.rendition.as_str()) else {
        return;
    };
    if shared.title != swarm.title.as_str()
        || !context.tracks.contains_key(&rendition)
        || notice.from_key == shared.identity.public_key().as_bytes()
        || !crate::lock(&context.notices).take()
    {
        return;
    }
    Counters::add(&shared.counters.punch_notices, 1);
    let entry = pb::PeerEntry {
        peer_public_key: notice.from_key,
        addresses: notice.addresses,
        nat_class: notice.nat_class,
        ..Default::default()
    };
    shared.spawn(connect_peer(
        context.clone(),
        rendition,
        entry,
        Origin::Notice,
    ));
}

/// What becomes of an attempt to reach a peer (see [`admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Connect and download from it.
    Connect,
    /// Only open this viewer's NAT towards it (then close).
    OpenOnly,
    /// Nothing.
    Skip,
}

/// Whether to connect to a peer, given the connections to the rendition's
/// swarm (`here`, at most `max`) and whether this peer is already one of
/// them (or being connected). At the limit, a punch notice still gets its
/// answer: the peer is connecting here to download from this viewer, and
/// this side's NAT lets it in only once packets went out towards it.
fn admission(here: usize, max: usize, already: bool, origin: Origin) -> Admission {
    if already {
        Admission::Skip
    } else if here < max {
        Admission::Connect
    } else if origin == Origin::Notice {
        Admission::OpenOnly
    } else {
        Admission::Skip
    }
}

/// Opens this viewer's NAT towards a peer that asked for it while this
/// viewer is at its peer limit: a connection attempt of its own (its
/// packets are the punch), closed once through; not a download source.
/// Bounded like every attempt (the punch window) and by the notice rate.
async fn open_towards(context: &Context, rendition: &RenditionName, candidates: Vec<SocketAddr>) {
    let shared = &context.shared;
    let credential = shared.credentials.current();
    let hello = peerwire::viewer_hello(
        credential.token.to_vec(),
        shared.title.as_str(),
        rendition.as_str(),
    );
    let attempt = tokio::time::timeout(PUNCH_WINDOW, connect_any(context, candidates, hello));
    let connected = tokio::select! {
        () = shared.cancel.cancelled() => None,
        connected = attempt => connected.ok().flatten(),
    };
    if let Some(connected) = connected {
        connected
            .connection
            .close(peerwire::close_code::DONE.into(), b"peer limit");
    }
}

pub(super) async fn connect_peer(
    context: Arc<Context>,
    rendition: RenditionName,
    entry: pb::PeerEntry,
    origin: Origin,
) {
    let shared = &context.shared;
    let Ok(key) = <[u8; 32]>::try_from(entry.peer_public_key.as_slice()) else {
        return;
    };
    let Some(track) = context.tracks.get(&rendition) else {
        return;
    };
    let candidates = candidates(&context, &entry);
    if candidates.is_empty() || (origin == Origin::Tracker && backing_off(&context, &key)) {
        return;
    }
    let slot = (rendition.clone(), key);
    let admitted = {
        let mut connected = lock(&context.registry.connected);
        let here = connected.iter().filter(|(r, _)| *r == rendition).count();
        let admitted = admission(
            here,
            shared.config.max_peers,
            connected.contains(&slot),
            origin,
        );
        if admitted == Admission::Connect {
            connected.insert(slot.clone());
        }
        admitted
    };
    match admitted {
        Admission::Skip => return,
        Admission::OpenOnly => {
            open_towards(&context, &rendition, candidates).await;
            return;
        }
        Admission::Connect => {}
    }
    Counters::add(&shared.counters.connect_attempts, 1);
    let local_class = shared.nat_class();
    let remote_class = NatClass::try_from(entry.nat_class).unwrap_or(NatClass::Unknown);
    let plan = match origin {
        _ if entry.is_seed => PunchPlan::Direct,
        // Asked to open: this attempt is the punch.
        Origin::Notice => PunchPlan::Direct,
        Origin::Tracker => nat::punch_plan(local_class, remote_class),
    };
    let credential = shared.credentials.current();
    let hello = peerwire::viewer_hello(
        credential.token.to_vec(),
        shared.title.as_str(),
        rendition.as_str(),
    );
    let started = Instant::now();
    let window = match plan {
        PunchPlan::Direct => DIRECT_WINDOW,
        PunchPlan::Punch => PUNCH_WINDOW,
        PunchPlan::Hopeless => HOPELESS_WINDOW,
    };
    let attempt = tokio::time::timeout(window, connect_any(&context, candidates.clone(), hello));
    let punch = async {
        if plan == PunchPlan::Punch {
            request_punch(&context, &rendition, &key).await
        } else {
            false
        }
    };
    let (connected, punched) = tokio::select! {
        () = shared.cancel.cancelled() => (None, false),
        (connected, punched) = async { tokio::join!(attempt, punch) } => {
            (connected.ok().flatten(), punched)
        }
    };
    let result = match (&connected, punched) {
        (None, _) => pb::ConnectResult::Failed,
        (Some(_), true) => pb::ConnectResult::Punched,
        (Some(_), false) => pb::ConnectResult::Direct,
    };
    shared.report_connect(pb::ConnectReport {
        local: local_class as i32,
        remote: remote_class as i32,
        result: result as i32,
        millis: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
    });
    let name: String = key.iter().map(|b| format!("{b:02x}")).collect();
    shared.emit(Event::PeerConnect {
        rendition: rendition.clone(),
        peer: name.clone(),
        seed: entry.is_seed,
        tried: candidates,
        address: connected.as_ref().map(|c| c.connection.remote_address()),
        punched,
        elapsed: started.elapsed(),
    });
    settle(&context, key, connected.is_some());
    let Some(connected) = connected else {
        Counters::add(&shared.counters.connect_failures, 1);
        lock(&context.registry.connected).remove(&slot);
        return;
    };
    let connection = connected.connection;
    // The tracker named this key: the peer must prove it is that key.
    if connected.remote.credential.peer_key().as_bytes() != &key {
        Counters::add(&shared.counters.connect_failures, 1);
        connection.close(peerwire::close_code::UNAUTHENTICATED.into(), b"key");
        lock(&context.registry.connected).remove(&slot);
        return;
    }
    if punched {
        Counters::add(&shared.counters.connects_punched, 1);
    }
    // One more observer of this viewer's public mapping.
    if let Ok(seen) = connected
        .remote
        .hello
        .observed_address
        .parse::<SocketAddr>()
    {
        context.observed_by(connection.remote_address(), seen);
    }
    Counters::add(&shared.counters.connects, 1);
    let peer = context.registry.id(&rendition, key);
    let remote = &connected.remote.credential;
    let kind = if entry.is_seed {
        PeerKind::Seed
    } else {
        PeerKind::Viewer
    };
    let _open = Open::count(if entry.is_seed {
        &shared.counters.seeds_connected
    } else {
        &shared.counters.peers_connected
    });
    let c = &shared.config;
    let info = PeerInfo {
        kind,
        locality: locality(shared, remote.region(), remote.isp()),
        rtt_ms: u32::try_from(connection.rtt().as_millis()).unwrap_or(u32::MAX),
        throughput_bytes_per_s: INITIAL_PEER_THROUGHPUT,
    };
    let link = PeerLink {
        connection: connection.clone(),
        name,
        cross_isp: remote.isp() != c.isp || remote.region() != c.region,
        cross_region: remote.region() != c.region,
        presented: Arc::new(AtomicU64::new(credential.generation)),
    };
    if track.send(TrackMsg::PeerUp { peer, info, link }).await {
        let initial = holdings_sequences(entry.holdings.as_ref());
        if !initial.is_empty() {
            track
                .send(TrackMsg::PeerHas {
                    peer,
                    sequences: initial,
                })
                .await;
        }
        let have = async {
            let Ok(mut receiver) =
                HaveReceiver::accept(&connection, (*context.limits).clone()).await
            else {
                return;
            };
            while let Ok(Some(notice)) = receiver.next(HAVE_IDLE).await {
                if notice.rendition == rendition.as_str()
                    && !track
                        .send(TrackMsg::PeerHas {
                            peer,
                            sequences: notice.sequences,
                        })
                        .await
                {
                    return;
                }
            }
        };
        tokio::select! {
            () = have => { connection.closed().await; }
            _ = connection.closed() => {}
            () = shared.cancel.cancelled() => {}
        }
        // Awaited: a peer that is gone must never stay a candidate.
        track.send(TrackMsg::PeerDown { peer }).await;
    }
    connection.close(peerwire::close_code::DONE.into(), b"bye");
    lock(&context.registry.connected).remove(&slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_punch_notice_at_the_peer_limit_still_opens_the_nat() {
        use Admission::*;
        assert_eq!(admission(3, 8, false, Origin::Tracker), Connect);
        assert_eq!(admission(3, 8, false, Origin::Notice), Connect);
        // At the limit: the tracker's word is not followed, a notice is
        // answered with packets towards the peer only.
        assert_eq!(admission(8, 8, false, Origin::Tracker), Skip);
        assert_eq!(admission(8, 8, false, Origin::Notice), OpenOnly);
        assert_eq!(admission(9, 8, false, Origin::Notice), OpenOnly);
        // Already connected (or connecting) to it: those packets are out.
        assert_eq!(admission(3, 8, true, Origin::Notice), Skip);
        assert_eq!(admission(8, 8, true, Origin::Notice), Skip);
    }
}
