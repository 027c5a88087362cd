//! The swarm book: who is in which swarm, and whom to introduce to whom.
//!
//! No I/O and no clock, like `quinn-proto`: every call takes `now`, and the
//! randomness used to spread load comes from a seeded generator owned by the
//! book. The QUIC driver, the tests and the benchmarks all run this same code.
//!
//! # Invariants
//!
//! - A swarm is keyed by (title, rendition); a peer by its 32-byte Ed25519
//!   key (the key its verified token names). A peer appears at most once per
//!   swarm; it may be in several swarms (e.g. while switching rendition).
//! - `Swarm::index[key] == i` iff `Swarm::peers[i].key == key`; every peer
//!   index appears exactly once in `by_isp[peer.isp]` (at `peer.isp_pos`) when
//!   its ISP is known and once in `by_region[peer.region]` (at
//!   `peer.region_pos`) when its region is known. Removal is O(1) by
//!   swap-remove with these back-pointers fixed up.
//! - The book never holds more than `max_swarms` swarms, `max_peers_per_swarm`
//!   peers in one swarm or `max_total_peers` peers overall: memory is bounded
//!   whatever clients send. New peers beyond a bound are refused; existing
//!   ones keep announcing.
//! - A peer silent for more than `peer_ttl_s` is never returned to anyone,
//!   even before [`SwarmBook::expire`] removes it.
//! - A reply never contains the requester itself, never more than
//!   `max_peers_per_reply` peers, and always the swarm's live seeds (up to
//!   `max_seeds_per_reply`).
//!
//! # Reply cache
//!
//! In a large swarm, many requesters share a locality and a playhead, and
//! would get statistically the same answer. A reply chosen for one of them
//! (with one spare slot) is kept for the rest of that second, for at most
//! `reply_cache_uses` requesters with the same (region, ISP, playhead /
//! `lookahead_segments`) and the default reply size; each use skips the
//! requester's own entry. Cached entries are at most one second old, a swarm
//! drops its cache whenever a peer leaves it (stop, expiry, new locality), so
//! a peer that left is never listed from the cache, and the cache
//! of a swarm holds at most [`MAX_CACHED_REPLIES`] replies. Swarms smaller
//! than `reply_cache_min_peers` always choose afresh.

use confique::Config;
use std::net::SocketAddr;

use loaves_proto::{UnixSeconds, pb};

use crate::holdings::{self, Holdings, HoldingsError, HoldingsLimits};
use crate::rng::SplitMix64;
use crate::wire::{self, PeerEntryFields};

/// The book's hash maps: foldhash, seeded at random per map (keys come from
/// clients, so not a fixed-seed hash), several times cheaper than SipHash
/// for the short keys hashed on every announce.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A peer's identity: its Ed25519 public key.
pub type PeerKey = [u8; 32];

/// Tunables of the swarm book. `Default` gives values that run as they are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct SwarmConfig {
    /// Seconds a silent peer stays listed.
    #[config(default = 90)]
    pub peer_ttl_s: u64,
    /// Seconds a seed stays listed without re-registering.
    #[config(default = 120)]
    pub seed_ttl_s: u64,
    /// Seconds between announces, told to clients.
    #[config(default = 30)]
    pub announce_interval_s: u32,
    /// Most swarms tracked at once.
    #[config(default = 100_000)]
    pub max_swarms: usize,
    /// Most peers in one swarm.
    #[config(default = 100_000)]
    pub max_peers_per_swarm: usize,
    /// Most peers overall.
    #[config(default = 2_000_000)]
    pub max_total_peers: usize,
    /// Most seeds overall.
    #[config(default = 10_000)]
    pub max_seeds: usize,
    /// Most swarms one seed registers for.
    #[config(default = 10_000)]
    pub max_swarms_per_seed: usize,
    /// Peers per reply when the client asks for none in particular.
    #[config(default = 30)]
    pub default_peers_per_reply: usize,
    /// Hard cap on peers per reply.
    #[config(default = 80)]
    pub max_peers_per_reply: usize,
    /// Cap on seeds per reply.
    #[config(default = 8)]
    pub max_seeds_per_reply: usize,
    /// Reply slots kept for peers outside the requester's ISP and region
    /// (diversity: keeps swarms from splitting into islands).
    #[config(default = 3)]
    pub diversity_peers: usize,
    /// Candidates examined per reply slot and locality class.
    #[config(default = 2)]
    pub candidates_per_slot: usize,
    /// Segments after the requester's playhead that count as "about to need".
    #[config(default = 4)]
    pub lookahead_segments: u64,
    /// Upload capacity above this is clamped (bits per second).
    #[config(default = 10_000_000_000_u64)]
    pub max_upload_bps: u64,
    /// Addresses kept per peer.
    #[config(default = 4)]
    pub max_addresses: usize,
    /// Longest title or rendition name, bytes.
    #[config(default = 256)]
    pub max_name_len: usize,
    /// Distinct region and ISP names remembered (at most
    /// [`MAX_LOCALITY_NAMES`], 65,534); more fold into "other".
    #[config(default = 4096)]
    pub max_locality_names: usize,
    /// Bounds on holdings.
    #[config(nested)]
    pub holdings: HoldingsLimits,
    /// Replies reused by requesters of the same swarm, region, ISP and
    /// playhead bucket within the same second (0 disables the cache). See
    /// "Reply cache" in the module docs.
    #[config(default = 64)]
    pub reply_cache_uses: u32,
    /// Swarms smaller than this never cache replies.
    #[config(default = 200)]
    pub reply_cache_min_peers: usize,
}

impl Default for SwarmConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        crate::config_defaults()
    }
}

/// Why the book refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The request names no swarm, or a name is empty, too long or has NUL.
    #[error("invalid swarm name")]
    InvalidSwarm,
    /// The holdings are malformed or too large.
    #[error("invalid holdings: {0}")]
    Holdings(#[from] HoldingsError),
    /// A new swarm would exceed `max_swarms`.
    #[error("too many swarms")]
    TooManySwarms,
    /// A new peer would exceed `max_peers_per_swarm` or `max_total_peers`.
    #[error("swarm full")]
    SwarmFull,
    /// A new seed would exceed `max_seeds`.
    #[error("too many seeds")]
    TooManySeeds,
}

/// The requester, as its verified credential describes it.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// Its key (token `peer_public_key`).
    pub key: &'a PeerKey,
    /// Region hint from the token.
    pub region: &'a str,
    /// ISP hint from the token.
    pub isp: &'a str,
    /// Where the tracker saw its packets come from (`None` where there is
    /// no network, as in the simulator). Loopback addresses it announces
    /// are kept only when this is loopback too: they reach nobody else.
    pub observed: Option<SocketAddr>,
}

/// Inputs that were not trusted as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Addresses dropped (unparsable, unspecified, port 0, or over the cap).
    pub addresses_dropped: u32,
    /// Upload capacity (or use) was clamped.
    pub upload_clamped: bool,
}

/// Result of an announce.
#[derive(Debug, Clone)]
pub struct AnnounceOutcome {
    /// Encoded `pb::AnnounceReply` body; frame with [`wire::announce_response_frame`].
    pub reply: Vec<u8>,
    /// Peers in the reply.
    pub peers: u32,
    /// Seeds in the reply.
    pub seeds: u32,
    /// Viewers in the swarm who share (gave a usable address; the requester
    /// included when it did): the reply's `swarm_size`.
    pub swarm_size: u32,
    /// Whether the requester just joined this swarm.
    pub joined: bool,
    /// What was clamped or dropped.
    pub anomalies: Anomalies,
}

/// Size of one swarm, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwarmSize {
    /// Title.
    pub title: String,
    /// Rendition.
    pub rendition: String,
    /// Viewers.
    pub peers: usize,
    /// Registered seeds.
    pub seeds: usize,
    /// Sum of the viewers' spare upload, bits per second.
    pub spare_upload_bps: u64,
}

/// What [`SwarmBook::expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Silent peers removed.
    pub peers: usize,
    /// Seeds removed.
    pub seeds: usize,
    /// Empty swarms removed.
    pub swarms: usize,
}

/// Id of an interned region or ISP name. 0 = unknown, 1 = other (overflow):
/// neither ever matches for locality. Two bytes keep [`Hot`] small: at most
/// [`MAX_LOCALITY_NAMES`] names are told apart.
type NameId = u16;
const UNKNOWN: NameId = 0;
const OVERFLOW: NameId = 1;
/// Most region and ISP names told apart, whatever the configuration says
/// (the ids after `UNKNOWN` and `OVERFLOW` that fit a [`NameId`]).
pub const MAX_LOCALITY_NAMES: usize = NameId::MAX as usize - 1;

#[derive(Debug)]
struct Interner {
    ids: HashMap<Box<str>, NameId>,
    names: Vec<Box<str>>,
    max: usize,
}

impl Interner {
    fn new(max: usize) -> Self {
        Self {
            ids: HashMap::default(),
            names: vec!["".into(), "other".into()],
            max: max.min(MAX_LOCALITY_NAMES),
        }
    }

    fn intern(&mut self, name: &str) -> NameId {
        if name.is_empty() {
            return UNKNOWN;
        }
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        if self.ids.len() >= self.max || name.len() > 128 {
            return OVERFLOW;
        }
        let id = self.names.len() as NameId;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: NameId) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
}

fn known(id: NameId) -> bool {
    id > OVERFLOW
}

#[derive(Debug)]
struct Peer {
    key: PeerKey,
    region: NameId,
    isp: NameId,
    holdings: Holdings,
    spare_upload_bps: u64,
    reachable: bool,
    last_seen: UnixSeconds,
    isp_pos: u32,
    region_pos: u32,
}

/// What peer choice reads of a peer, kept compact (24 bytes, so that a
/// 64-byte cache line holds more than two) and copied into the swarm's
/// locality indexes so that scoring candidates reads sequential memory
/// instead of one scattered [`Peer`] record each. Derived from the `Peer` by
/// [`Hot::of`] whenever the peer changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hot {
    /// Live window end when the holdings are a live window.
    last: u64,
    /// Unix seconds of the last announce (saturated at `u32::MAX`, the
    /// year 2106).
    last_seen: u32,
    /// Position of the peer in `Swarm::peers`.
    index: u32,
    /// `last - first` of a live window, saturated at `u16::MAX`: a window
    /// longer than 65,535 segments (36 hours of 2 s segments) counts as its
    /// newest 65,536 when scoring, which only matters to a requester that
    /// far behind the peer's live edge.
    back: u16,
    region: NameId,
    isp: NameId,
    /// Bits of the spare upload (`64 - leading_zeros`): its log scale.
    spare_log: u8,
    /// `HOT_NOTHING`, `HOT_LIVE` or `HOT_BITMAP` (read from the `Peer`), with
    /// `HOT_REACHABLE` when the peer gave a usable address.
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 24);

const HOT_NOTHING: u8 = 0;
const HOT_LIVE: u8 = 1;
const HOT_BITMAP: u8 = 2;
const HOT_HOLDINGS: u8 = 3;
const HOT_REACHABLE: u8 = 4;

impl Hot {
    fn of(peer: &Peer, index: u32) -> Self {
        let (holdings, first, last) = match peer.holdings {
            Holdings::Nothing => (HOT_NOTHING, 0, 0),
            Holdings::Live { first, last } => (HOT_LIVE, first, last),
            Holdings::Bitmap { .. } => (HOT_BITMAP, 0, 0),
        };
        let reachable = if peer.reachable { HOT_REACHABLE } else { 0 };
        Self {
            last,
            last_seen: u32::try_from(peer.last_seen.0).unwrap_or(u32::MAX),
            index,
            back: u16::try_from(last.saturating_sub(first)).unwrap_or(u16::MAX),
            region: peer.region,
            isp: peer.isp,
            spare_log: (64 - peer.spare_upload_bps.leading_zeros()) as u8,
            flags: holdings | reachable,
        }
    }

    fn holdings(&self) -> u8 {
        self.flags & HOT_HOLDINGS
    }

    fn reachable(&self) -> bool {
        self.flags & HOT_REACHABLE != 0
    }

    /// First segment of the live window (see `back`).
    fn first(&self) -> u64 {
        self.last - u64::from(self.back)
    }
}

/// Most cached replies per swarm.
pub const MAX_CACHED_REPLIES: usize = 64;

#[derive(Debug)]
struct CachedReply {
    built_at: UnixSeconds,
    uses: u32,
    /// Position in `Swarm::peers` of each entry's peer (stable while the
    /// reply is cached: any removal clears the cache) and where its encoded
    /// field ends in `bytes`.
    entries: Vec<(u32, u32)>,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Swarm {
    cache: HashMap<(NameId, NameId, u64), CachedReply>,
    title: Box<str>,
    rendition: Box<str>,
    peers: Vec<Peer>,
    /// `hot[i] == Hot::of(&peers[i], i)`.
    hot: Vec<Hot>,
    index: HashMap<PeerKey, u32>,
    /// Locality indexes: the summaries of the peers of each ISP / region.
    by_isp: HashMap<NameId, Vec<Hot>>,
    by_region: HashMap<NameId, Vec<Hot>>,
    /// `slots[i]` locates the encoded entry of `peers[i]` in `entries`.
    slots: Vec<EntrySlot>,
    entries: EntryArena,
    seeds: Vec<PeerKey>,
    /// Peers that gave a usable address (`Peer::reachable`): the viewers
    /// who share, among whom live injection is divided (the reply's
    /// `swarm_size`).
    sharing: u32,
}

/// Where a peer's entry lives in its swarm's [`EntryArena`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct EntrySlot {
    start: usize,
    len: u32,
    /// Bytes reserved at `start` (at least `len`): an entry that grows a
    /// little (a longer sequence number) is rewritten in place.
    cap: u32,
}

/// The encoded entries of a swarm's peers, each already framed as an
/// `AnnounceReply.peers` field, back to back in one buffer.
///
/// Why: a reply copies ~30 entries; from one buffer per swarm they are
/// found through the swarm's dense slot vector instead of through 30
/// scattered `Peer` records and 30 separate heap blocks (two cache misses
/// each on a cold swarm). An entry that outgrows its slot moves to the end;
/// the space left behind is counted and the arena is compacted once it is
/// more than half garbage, so it never exceeds twice the reserved bytes.
#[derive(Debug, Default)]
struct EntryArena {
    bytes: Vec<u8>,
    garbage: usize,
}

/// Spare room given to a (re)placed entry: live windows grow by a byte now
/// and then as sequence numbers get longer.
const ENTRY_SLACK: usize = 8;

impl EntryArena {
    fn entry(&self, slot: EntrySlot) -> &[u8] {
        self.bytes
            .get(slot.start..slot.start + slot.len as usize)
            .unwrap_or(&[])
    }

    /// Stores `entry` (framed) for the peer whose slot is `slot`.
    fn store(&mut self, slot: &mut EntrySlot, entry: &[u8]) {
        let len = entry.len();
        if len <= slot.cap as usize
            && let Some(place) = self.bytes.get_mut(slot.start..slot.start + len)
        {
            place.copy_from_slice(entry);
            slot.len = len as u32;
            return;
        }
        self.garbage += slot.cap as usize;
        let cap = len + ENTRY_SLACK;
        *slot = EntrySlot {
            start: self.bytes.len(),
            len: len as u32,
            cap: cap as u32,
        };
        self.bytes.extend_from_slice(entry);
        self.bytes.resize(slot.start + cap, 0);
    }

    /// Forgets the space of a removed peer.
    fn release(&mut self, slot: EntrySlot) {
        self.garbage += slot.cap as usize;
    }

    /// Whether [`Self::compact`] is due: more than half the arena is
    /// garbage. No absolute floor, so that 100,000 small swarms cannot each
    /// keep kilobytes of garbage; compaction copies at most twice the
    /// garbage it reclaims, so it stays O(1) per byte written.
    fn wasteful(&self) -> bool {
        self.garbage * 2 > self.bytes.len()
    }

    /// Rewrites the arena with the live entries only, in peer order.
    fn compact(&mut self, slots: &mut [EntrySlot]) {
        let live: usize = slots.iter().map(|s| s.len as usize + ENTRY_SLACK).sum();
        let mut bytes = Vec::with_capacity(live);
        for slot in slots.iter_mut() {
            let start = bytes.len();
            bytes.extend_from_slice(self.entry(*slot));
            bytes.resize(start + slot.len as usize + ENTRY_SLACK, 0);
            *slot = EntrySlot {
                start,
                len: slot.len,
                cap: slot.len + ENTRY_SLACK as u32,
            };
        }
        self.bytes = bytes;
        self.garbage = 0;
    }
}

impl Swarm {
    fn insert(&mut self, mut peer: Peer) -> u32 {
        let index = self.peers.len() as u32;
        let hot = Hot::of(&peer, index);
        if known(peer.isp) {
            let group = self.by_isp.entry(peer.isp).or_default();
            peer.isp_pos = group.len() as u32;
            group.push(hot);
        }
        if known(peer.region) {
            let group = self.by_region.entry(peer.region).or_default();
            peer.region_pos = group.len() as u32;
            group.push(hot);
        }
        self.index.insert(peer.key, index);
        self.peers.push(peer);
        self.hot.push(hot);
        self.slots.push(EntrySlot::default());
        index
    }

    /// Reads one byte at each end of the entries of `chosen` before they are
    /// copied. The entries are usually not in the cache; these loads do not
    /// depend on each other, so the processor fetches all the lines at once
    /// instead of one memory round trip per copied entry.
    fn touch_entries(&self, chosen: &[u32]) {
        let bytes = &self.entries.bytes;
        let mut sum = 0u8;
        for &index in chosen {
            if let Some(slot) = self.slots.get(index as usize) {
                let end = slot.start + (slot.len as usize).max(1) - 1;
                sum ^= bytes.get(slot.start).copied().unwrap_or(0)
                    ^ bytes.get(end).copied().unwrap_or(0);
            }
        }
        std::hint::black_box(sum);
    }

    /// Copies the summary of the peer at `index` (just changed) into `hot`
    /// and its locality indexes.
    fn refresh(&mut self, index: u32) {
        let Some(peer) = self.peers.get(index as usize) else {
            return;
        };
        let hot = Hot::of(peer, index);
        if let Some(slot) = self.hot.get_mut(index as usize) {
            *slot = hot;
        }
        if known(peer.isp)
            && let Some(slot) = self
                .by_isp
                .get_mut(&peer.isp)
                .and_then(|g| g.get_mut(peer.isp_pos as usize))
        {
            *slot = hot;
        }
        if known(peer.region)
            && let Some(slot) = self
                .by_region
                .get_mut(&peer.region)
                .and_then(|g| g.get_mut(peer.region_pos as usize))
        {
            *slot = hot;
        }
    }

    /// Removes the peer at `index` (swap-remove), fixing every back-pointer.
    fn remove_at(&mut self, index: u32) {
        let i = index as usize;
        let Some(peer) = self.peers.get(i) else {
            return;
        };
        if peer.reachable {
            self.sharing = self.sharing.saturating_sub(1);
        }
        let (key, isp, isp_pos, region, region_pos) = (
            peer.key,
            peer.isp,
            peer.isp_pos,
            peer.region,
            peer.region_pos,
        );
        if known(isp) {
            remove_from_group(&mut self.by_isp, isp, isp_pos, &mut self.peers, |p| {
                &mut p.isp_pos
            });
        }
        if known(region) {
            remove_from_group(
                &mut self.by_region,
                region,
                region_pos,
                &mut self.peers,
                |p| &mut p.region_pos,
            );
        }
        // Cached replies name peers by position, which the swap below changes.
        self.cache.clear();
        self.index.remove(&key);
        self.peers.swap_remove(i);
        self.hot.swap_remove(i);
        let slot = self.slots.swap_remove(i);
        self.entries.release(slot);
        if self.peers.is_empty() {
            self.entries = EntryArena::default();
        } else if self.entries.wasteful() {
            self.entries.compact(&mut self.slots);
        }
        if let Some(slot) = self.hot.get_mut(i) {
            slot.index = index;
        }
        if let Some(moved) = self.peers.get(i) {
            // The former last peer now lives at `i`: repoint its references.
            let (moved_key, moved_isp, moved_isp_pos, moved_region, moved_region_pos) = (
                moved.key,
                moved.isp,
                moved.isp_pos,
                moved.region,
                moved.region_pos,
            );
            self.index.insert(moved_key, index);
            if known(moved_isp)
                && let Some(slot) = self
                    .by_isp
                    .get_mut(&moved_isp)
                    .and_then(|g| g.get_mut(moved_isp_pos as usize))
            {
                slot.index = index;
            }
            if known(moved_region)
                && let Some(slot) = self
                    .by_region
                    .get_mut(&moved_region)
                    .and_then(|g| g.get_mut(moved_region_pos as usize))
            {
                slot.index = index;
            }
        }
    }
}

fn remove_from_group(
    groups: &mut HashMap<NameId, Vec<Hot>>,
    name: NameId,
    pos: u32,
    peers: &mut [Peer],
    back_pointer: impl Fn(&mut Peer) -> &mut u32,
) {
    let Some(group) = groups.get_mut(&name) else {
        return;
    };
    let pos = pos as usize;
    if pos >= group.len() {
        return;
    }
    group.swap_remove(pos);
    if let Some(moved) = group.get(pos)
        && let Some(peer) = peers.get_mut(moved.index as usize)
    {
        *back_pointer(peer) = pos as u32;
    }
    if group.is_empty() {
        groups.remove(&name);
    }
}

#[derive(Debug)]
struct Seed {
    region: NameId,
    isp: NameId,
    last_seen: UnixSeconds,
    entry: Vec<u8>,
    swarms: Vec<String>,
}

/// Scratch buffers reused across announces (no allocation on the hot path
/// beyond the reply itself).
#[derive(Debug, Default)]
struct Scratch {
    swarm_key: String,
    /// The next peer entry is encoded here, then framed into `framed` and
    /// copied into the swarm's [`EntryArena`].
    entry: Vec<u8>,
    framed: Vec<u8>,
    /// Storage of the kept addresses (always empty between calls).
    addresses: Vec<&'static str>,
    chosen: Vec<u32>,
    class_a: Vec<(u64, u32)>,
    class_b: Vec<(u64, u32)>,
    class_c: Vec<(u64, u32)>,
}

/// All swarms of one tracker.
#[derive(Debug)]
pub struct SwarmBook {
    config: SwarmConfig,
    swarms: HashMap<String, Swarm>,
    seeds: HashMap<PeerKey, Seed>,
    names: Interner,
    total_peers: usize,
    rng: SplitMix64,
    scratch: Scratch,
}

fn swarm_key(buf: &mut String, title: &str, rendition: &str) {
    buf.clear();
    buf.push_str(title);
    buf.push('\0');
    buf.push_str(rendition);
}

impl SwarmBook {
    /// An empty book; `seed` seeds the random generator.
    pub fn new(config: SwarmConfig, seed: u64) -> Self {
        let names = Interner::new(config.max_locality_names);
        Self {
            config,
            swarms: HashMap::default(),
            seeds: HashMap::default(),
            names,
            total_peers: 0,
            rng: SplitMix64::new(seed),
            scratch: Scratch::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    /// Viewers tracked, all swarms together.
    pub fn total_peers(&self) -> usize {
        self.total_peers
    }

    /// Swarms tracked.
    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    /// Whether `key` is a viewer of the swarm `id` (and has not expired).
    pub fn is_member(&self, now: UnixSeconds, id: &pb::SwarmId, key: &PeerKey) -> bool {
        let mut name = String::new();
        swarm_key(&mut name, &id.title, &id.rendition);
        self.swarms.get(name.as_str()).is_some_and(|swarm| {
            swarm.index.get(key).is_some_and(|&i| {
                swarm.peers.get(i as usize).is_some_and(|peer| {
                    now.0.saturating_sub(peer.last_seen.0) <= self.config.peer_ttl_s
                })
            })
        })
    }

    /// Seeds tracked.
    pub fn seed_count(&self) -> usize {
        self.seeds.len()
    }

    fn valid_name(&self, name: &str) -> bool {
        name.len() <= self.config.max_name_len && loaves_proto::names::is_valid_name(name)
    }

    fn check_swarm_id(&self, swarm: Option<&pb::SwarmId>) -> Result<(), CoreError> {
        match swarm {
            Some(id) if self.valid_name(&id.title) && self.valid_name(&id.rendition) => Ok(()),
            _ => Err(CoreError::InvalidSwarm),
        }
    }

    /// Records an announce and chooses peers for the requester.
    ///
    /// The caller has verified the requester's credential and that it covers
    /// `announce.swarm`. Stats in the announce are not looked at here (see
    /// [`crate::stats`]).
    pub fn announce(
        &mut self,
        now: UnixSeconds,
        who: &Requester<'_>,
        announce: &pb::Announce,
    ) -> Result<AnnounceOutcome, CoreError> {
        self.check_swarm_id(announce.swarm.as_ref())?;
        let swarm_id = announce.swarm.as_ref().ok_or(CoreError::InvalidSwarm)?;
        let holdings = Holdings::parse(announce.holdings.as_ref(), &self.config.holdings)?;
        let mut anomalies = Anomalies::default();

        let mut capacity = announce.upload_capacity_bps;
        if capacity > self.config.max_upload_bps {
            capacity = self.config.max_upload_bps;
            anomalies.upload_clamped = true;
        }
        let mut in_use = announce.upload_in_use_bps;
        if in_use > capacity {
            in_use = capacity;
            anomalies.upload_clamped = true;
        }
        let spare = capacity - in_use;
        let mut addresses = recycle(std::mem::take(&mut self.scratch.addresses));
        valid_addresses(
            &announce.addresses,
            self.config.max_addresses,
            who.observed,
            &mut addresses,
        );
        anomalies.addresses_dropped = (announce.addresses.len() - addresses.len()) as u32;

        let region = self.names.intern(who.region);
        let isp = self.names.intern(who.isp);
        let mut entry = std::mem::take(&mut self.scratch.entry);
        entry.clear();
        wire::encode_peer_entry_into(
            &mut entry,
            &PeerEntryFields {
                key: who.key,
                addresses: &addresses,
                region: self.names.name(region),
                isp: self.names.name(isp),
                holdings: &holdings,
                spare_upload_bps: spare,
                is_seed: false,
                nat_class: pb::NatClass::try_from(announce.nat_class)
                    .map_or(0, |class| class as i32),
            },
        );
        let mut framed = std::mem::take(&mut self.scratch.framed);
        framed.clear();
        wire::put_always_bytes_field(&mut framed, wire::REPLY_PEERS, &entry);
        let reachable = !addresses.is_empty();
        addresses.clear();
        self.scratch.addresses = recycle(addresses);

        let mut key = std::mem::take(&mut self.scratch.swarm_key);
        swarm_key(&mut key, &swarm_id.title, &swarm_id.rendition);
        let result = self.announce_in(
            &key,
            swarm_id,
            now,
            who,
            (region, isp),
            holdings,
            spare,
            (&framed, reachable),
            announce,
        );
        self.scratch.swarm_key = key;
        self.scratch.entry = entry;
        self.scratch.framed = framed;
        let (reply, peers, seeds, swarm_size, joined) = result?;
        Ok(AnnounceOutcome {
            reply,
            peers,
            seeds,
            swarm_size,
            joined,
            anomalies,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn announce_in(
        &mut self,
        key: &str,
        swarm_id: &pb::SwarmId,
        now: UnixSeconds,
        who: &Requester<'_>,
        (region, isp): (NameId, NameId),
        holdings: Holdings,
        spare: u64,
        (entry, reachable): (&[u8], bool),
        announce: &pb::Announce,
    ) -> Result<(Vec<u8>, u32, u32, u32, bool), CoreError> {
        let Self {
            config,
            swarms,
            seeds,
            total_peers,
            rng,
            scratch,
            ..
        } = self;
        if !swarms.contains_key(key) {
            if swarms.len() >= config.max_swarms {
                return Err(CoreError::TooManySwarms);
            }
            if *total_peers >= config.max_total_peers {
                return Err(CoreError::SwarmFull);
            }
            swarms.insert(
                key.to_owned(),
                Swarm {
                    title: swarm_id.title.as_str().into(),
                    rendition: swarm_id.rendition.as_str().into(),
                    ..Swarm::default()
                },
            );
        }
        let Some(swarm) = swarms.get_mut(key) else {
            return Err(CoreError::InvalidSwarm);
        };
        let (me, joined) = match swarm.index.get(who.key).copied() {
            Some(i) => {
                let peer = &mut swarm.peers[i as usize];
                if peer.region != region || peer.isp != isp {
                    // Locality changed (new token): re-file the peer.
                    swarm.remove_at(i);
                    let i = swarm.insert(new_peer(who.key, region, isp));
                    (i, false)
                } else {
                    (i, false)
                }
            }
            None => {
                if swarm.peers.len() >= config.max_peers_per_swarm
                    || *total_peers >= config.max_total_peers
                {
                    if swarm.peers.is_empty() && swarm.seeds.is_empty() {
                        swarms.remove(key);
                    }
                    return Err(CoreError::SwarmFull);
                }
                *total_peers += 1;
                (swarm.insert(new_peer(who.key, region, isp)), true)
            }
        };
        let peer = &mut swarm.peers[me as usize];
        peer.holdings = holdings;
        peer.spare_upload_bps = spare;
        if peer.reachable != reachable {
            if reachable {
                swarm.sharing += 1;
            } else {
                swarm.sharing = swarm.sharing.saturating_sub(1);
            }
        }
        peer.reachable = reachable;
        peer.last_seen = now;
        if let Some(slot) = swarm.slots.get_mut(me as usize) {
            swarm.entries.store(slot, entry);
        }
        if swarm.entries.wasteful() {
            swarm.entries.compact(&mut swarm.slots);
        }
        swarm.refresh(me);

        let requested = match announce.max_peers {
            0 => config.default_peers_per_reply,
            n => n as usize,
        };
        let want = requested.min(config.max_peers_per_reply);
        let context = Choice {
            me,
            region,
            isp,
            next_sequence: announce.next_sequence,
            now,
            ttl: config.peer_ttl_s,
            lookahead: config.lookahead_segments,
            cap: config.candidates_per_slot,
            want,
            diversity: config.diversity_peers.min(want / 3),
        };
        let mut reply = Vec::with_capacity(want * 96 + 64);
        let cacheable = config.reply_cache_uses > 0
            && want == config.default_peers_per_reply
            && swarm.peers.len() >= config.reply_cache_min_peers;
        let peers = if cacheable {
            let cache_key = (
                region,
                isp,
                announce.next_sequence / config.lookahead_segments.max(1),
            );
            let fresh = swarm
                .cache
                .get(&cache_key)
                .is_some_and(|c| c.built_at == now && c.uses < config.reply_cache_uses);
            if !fresh {
                let build = Choice {
                    want: want + 1,
                    ..context
                };
                choose_peers(swarm, &build, rng, scratch);
                let mut cached = CachedReply {
                    built_at: now,
                    uses: 0,
                    entries: Vec::with_capacity(scratch.chosen.len()),
                    bytes: Vec::with_capacity((want + 1) * 96),
                };
                swarm.touch_entries(&scratch.chosen);
                for &index in &scratch.chosen {
                    let i = index as usize;
                    cached
                        .bytes
                        .extend_from_slice(swarm.entries.entry(swarm.slots[i]));
                    cached.entries.push((index, cached.bytes.len() as u32));
                }
                if swarm.cache.len() >= MAX_CACHED_REPLIES {
                    swarm.cache.retain(|_, c| c.built_at == now);
                    if swarm.cache.len() >= MAX_CACHED_REPLIES {
                        swarm.cache.clear();
                    }
                }
                swarm.cache.insert(cache_key, cached);
            }
            let mut added = 0;
            if let Some(cached) = swarm.cache.get_mut(&cache_key) {
                cached.uses += 1;
                let mut start = 0usize;
                for &(index, end) in &cached.entries {
                    let end = end as usize;
                    if added < want as u32 && index != me {
                        reply.extend_from_slice(&cached.bytes[start..end]);
                        added += 1;
                    }
                    start = end;
                }
            }
            added
        } else {
            choose_peers(swarm, &context, rng, scratch);
            swarm.touch_entries(&scratch.chosen);
            for &index in &scratch.chosen {
                reply.extend_from_slice(swarm.entries.entry(swarm.slots[index as usize]));
            }
            scratch.chosen.len() as u32
        };
        let seeds = add_seeds(seeds, config, swarm, &context, &mut reply);
        wire::put_u64_field(
            &mut reply,
            wire::REPLY_INTERVAL,
            u64::from(config.announce_interval_s),
        );
        // Viewers who share, not all who announce: a CDN-only or upload-off
        // viewer takes no part in passing injected live segments on.
        let swarm_size = swarm.sharing;
        wire::put_u64_field(&mut reply, wire::REPLY_SWARM_SIZE, u64::from(swarm_size));
        Ok((reply, peers, seeds, swarm_size, joined))
    }

    /// Removes the requester from one swarm. Returns whether it was there.
    pub fn stop(&mut self, key: &PeerKey, swarm_id: &pb::SwarmId) -> bool {
        let mut name = std::mem::take(&mut self.scratch.swarm_key);
        swarm_key(&mut name, &swarm_id.title, &swarm_id.rendition);
        let mut removed = false;
        if let Some(swarm) = self.swarms.get_mut(&name)
            && let Some(i) = swarm.index.get(key).copied()
        {
            swarm.remove_at(i);
            self.total_peers -= 1;
            removed = true;
            if swarm.peers.is_empty() && swarm.seeds.is_empty() {
                self.swarms.remove(&name);
            }
        }
        self.scratch.swarm_key = name;
        removed
    }

    /// Registers (or refreshes) a seed for the given swarms, replacing its
    /// previous set. The caller has checked the seed's credential covers
    /// every title. Returns how many swarms the seed is now in.
    pub fn register_seed(
        &mut self,
        now: UnixSeconds,
        who: &Requester<'_>,
        registration: &pb::SeedRegistration,
    ) -> Result<usize, CoreError> {
        if registration.swarms.len() > self.config.max_swarms_per_seed {
            return Err(CoreError::TooManySwarms);
        }
        for id in &registration.swarms {
            self.check_swarm_id(Some(id))?;
        }
        if !self.seeds.contains_key(who.key) && self.seeds.len() >= self.config.max_seeds {
            return Err(CoreError::TooManySeeds);
        }
        let mut wanted: Vec<String> = registration
            .swarms
            .iter()
            .map(|id| {
                let mut key = String::new();
                swarm_key(&mut key, &id.title, &id.rendition);
                key
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        let new_swarms = wanted
            .iter()
            .filter(|k| !self.swarms.contains_key(*k))
            .count();
        if self.swarms.len() + new_swarms > self.config.max_swarms {
            return Err(CoreError::TooManySwarms);
        }
        // Leave the swarms no longer listed.
        if let Some(previous) = self.seeds.remove(who.key) {
            for key in previous.swarms {
                if wanted.binary_search(&key).is_err() {
                    self.detach_seed(&key, who.key);
                }
            }
        }
        let mut capacity = registration
            .upload_capacity_bps
            .min(self.config.max_upload_bps);
        capacity = capacity.max(registration.upload_in_use_bps.min(capacity));
        let spare = capacity - registration.upload_in_use_bps.min(capacity);
        let mut addresses = Vec::new();
        valid_addresses(
            &registration.addresses,
            self.config.max_addresses,
            who.observed,
            &mut addresses,
        );
        let region = self.names.intern(who.region);
        let isp = self.names.intern(who.isp);
        let entry = wire::encode_peer_entry(&PeerEntryFields {
            key: who.key,
            addresses: &addresses,
            region: self.names.name(region),
            isp: self.names.name(isp),
            holdings: &Holdings::Nothing,
            spare_upload_bps: spare,
            is_seed: true,
            // Seeds are operators' hosts on public addresses.
            nat_class: pb::NatClass::Open as i32,
        });
        for (key, id) in wanted.iter().zip(sorted_ids(&registration.swarms)) {
            let swarm = self.swarms.entry(key.clone()).or_insert_with(|| Swarm {
                title: id.title.as_str().into(),
                rendition: id.rendition.as_str().into(),
                ..Swarm::default()
            });
            if !swarm.seeds.contains(who.key) {
                swarm.seeds.push(*who.key);
            }
        }
        let count = wanted.len();
        self.seeds.insert(
            *who.key,
            Seed {
                region,
                isp,
                last_seen: now,
                entry,
                swarms: wanted,
            },
        );
        Ok(count)
    }

    fn detach_seed(&mut self, swarm: &str, seed: &PeerKey) {
        if let Some(s) = self.swarms.get_mut(swarm) {
            s.seeds.retain(|k| k != seed);
            if s.peers.is_empty() && s.seeds.is_empty() {
                self.swarms.remove(swarm);
            }
        }
    }

    /// Removes peers silent for more than `peer_ttl_s`, seeds silent for more
    /// than `seed_ttl_s`, and swarms left empty. O(peers): call every few
    /// seconds.
    pub fn expire(&mut self, now: UnixSeconds) -> ExpiryReport {
        let mut report = ExpiryReport::default();
        let seed_ttl = self.config.seed_ttl_s;
        let dead_seeds: Vec<PeerKey> = self
            .seeds
            .iter()
            .filter(|(_, s)| s.last_seen.0.saturating_add(seed_ttl) < now.0)
            .map(|(k, _)| *k)
            .collect();
        for key in dead_seeds {
            if let Some(seed) = self.seeds.remove(&key) {
                report.seeds += 1;
                for swarm in seed.swarms {
                    if let Some(s) = self.swarms.get_mut(&swarm) {
                        s.seeds.retain(|k| *k != key);
                    }
                }
            }
        }
        let ttl = self.config.peer_ttl_s;
        for swarm in self.swarms.values_mut() {
            swarm.cache.retain(|_, c| c.built_at == now);
            let mut i = 0;
            while i < swarm.peers.len() {
                if swarm.peers[i].last_seen.0.saturating_add(ttl) < now.0 {
                    // swap_remove brings an unchecked peer to `i`: re-check it.
                    swarm.remove_at(i as u32);
                    report.peers += 1;
                } else {
                    i += 1;
                }
            }
        }
        self.total_peers -= report.peers;
        let before = self.swarms.len();
        self.swarms
            .retain(|_, s| !s.peers.is_empty() || !s.seeds.is_empty());
        report.swarms = before - self.swarms.len();
        report
    }

    /// Checks every internal invariant (see the module docs); for tests and
    /// fuzzing. Returns a description of the first violation.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut total = 0;
        for (name, swarm) in &self.swarms {
            if swarm.peers.is_empty() && swarm.seeds.is_empty() {
                return Err(format!("empty swarm {name:?} kept"));
            }
            if swarm.index.len() != swarm.peers.len()
                || swarm.hot.len() != swarm.peers.len()
                || swarm.slots.len() != swarm.peers.len()
            {
                return Err(format!("{name:?}: index size differs"));
            }
            total += swarm.peers.len();
            if swarm.sharing as usize != swarm.peers.iter().filter(|p| p.reachable).count() {
                return Err(format!("{name:?}: sharing count wrong"));
            }
            let reserved: usize = swarm.slots.iter().map(|s| s.cap as usize).sum();
            let mut spans: Vec<(usize, usize)> = swarm
                .slots
                .iter()
                .map(|s| (s.start, s.start + s.cap as usize))
                .collect();
            spans.sort_unstable();
            if reserved + swarm.entries.garbage != swarm.entries.bytes.len()
                || spans.windows(2).any(|w| w[0].1 > w[1].0)
            {
                return Err(format!("{name:?}: entry arena accounting wrong"));
            }
            for (i, peer) in swarm.peers.iter().enumerate() {
                let slot = swarm.slots[i];
                let decoded = wire::decode_reply(swarm.entries.entry(slot))
                    .ok()
                    .filter(|r| r.peers.len() == 1 && r.peers[0].peer_public_key == peer.key)
                    .is_some();
                if slot.len > slot.cap
                    || slot.start + slot.cap as usize > swarm.entries.bytes.len()
                    || !decoded
                {
                    return Err(format!("{name:?}: entry of peer {i} wrong"));
                }
                if swarm.index.get(&peer.key) != Some(&(i as u32)) {
                    return Err(format!("{name:?}: index of peer {i} wrong"));
                }
                let hot = Hot::of(peer, i as u32);
                if swarm.hot.get(i) != Some(&hot) {
                    return Err(format!("{name:?}: summary of peer {i} stale"));
                }
                for (known_id, groups, pos) in [
                    (peer.isp, &swarm.by_isp, peer.isp_pos),
                    (peer.region, &swarm.by_region, peer.region_pos),
                ] {
                    if known(known_id)
                        && groups.get(&known_id).and_then(|g| g.get(pos as usize)) != Some(&hot)
                    {
                        return Err(format!("{name:?}: group back-pointer of peer {i} wrong"));
                    }
                }
            }
            for groups in [&swarm.by_isp, &swarm.by_region] {
                let members: usize = groups.values().map(Vec::len).sum();
                let expected = swarm
                    .peers
                    .iter()
                    .filter(|p| {
                        known(if std::ptr::eq(groups, &swarm.by_isp) {
                            p.isp
                        } else {
                            p.region
                        })
                    })
                    .count();
                if members != expected || groups.values().any(Vec::is_empty) {
                    return Err(format!("{name:?}: group sizes wrong"));
                }
            }
            if swarm.peers.len() > self.config.max_peers_per_swarm {
                return Err(format!("{name:?}: over max_peers_per_swarm"));
            }
        }
        if total != self.total_peers || total > self.config.max_total_peers {
            return Err(format!("total peers {total} vs {}", self.total_peers));
        }
        if self.swarms.len() > self.config.max_swarms {
            return Err("over max_swarms".to_owned());
        }
        Ok(())
    }

    /// Every swarm's size, largest first.
    pub fn swarm_sizes(&self) -> Vec<SwarmSize> {
        let mut sizes: Vec<SwarmSize> = self
            .swarms
            .values()
            .map(|s| SwarmSize {
                title: s.title.to_string(),
                rendition: s.rendition.to_string(),
                peers: s.peers.len(),
                seeds: s.seeds.len(),
                spare_upload_bps: s
                    .peers
                    .iter()
                    .fold(0u64, |sum, p| sum.saturating_add(p.spare_upload_bps)),
            })
            .collect();
        sizes.sort_by(|a, b| {
            b.peers
                .cmp(&a.peers)
                .then_with(|| a.title.cmp(&b.title))
                .then_with(|| a.rendition.cmp(&b.rendition))
        });
        sizes
    }
}

fn add_seeds(
    seeds: &HashMap<PeerKey, Seed>,
    config: &SwarmConfig,
    swarm: &Swarm,
    context: &Choice,
    reply: &mut Vec<u8>,
) -> u32 {
    if swarm.seeds.is_empty() {
        return 0;
    }
    let mut live: Vec<(u8, &Seed)> = swarm
        .seeds
        .iter()
        .filter_map(|key| seeds.get(key))
        .filter(|seed| seed.last_seen.0.saturating_add(config.seed_ttl_s) >= context.now.0)
        .map(|seed| (context.class(seed.region, seed.isp), seed))
        .collect();
    live.sort_by_key(|(class, _)| *class);
    let mut added = 0;
    for (_, seed) in live.into_iter().take(config.max_seeds_per_reply) {
        wire::put_always_bytes_field(reply, wire::REPLY_SEEDS, &seed.entry);
        added += 1;
    }
    added
}

/// An empty vector of borrowed strings reusing `v`'s allocation whatever
/// the lifetime (in-place collect of an empty vector keeps its buffer).
fn recycle<'b>(mut v: Vec<&str>) -> Vec<&'b str> {
    v.clear();
    v.into_iter().map(|_| "").collect()
}

fn sorted_ids(ids: &[pb::SwarmId]) -> Vec<&pb::SwarmId> {
    let mut sorted: Vec<(String, &pb::SwarmId)> = ids
        .iter()
        .map(|id| {
            let mut key = String::new();
            swarm_key(&mut key, &id.title, &id.rendition);
            (key, id)
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    sorted.into_iter().map(|(_, id)| id).collect()
}

fn new_peer(key: &PeerKey, region: NameId, isp: NameId) -> Peer {
    Peer {
        key: *key,
        region,
        isp,
        holdings: Holdings::Nothing,
        spare_upload_bps: 0,
        reachable: false,
        last_seen: UnixSeconds(0),
        isp_pos: 0,
        region_pos: 0,
    }
}

/// Keeps (in `kept`) the addresses that parse as `ip:port` and that the
/// requester may announce ([`loaves_proto::addresses::may_announce`]): its
/// observed public IP, LAN addresses, loopback from loopback; so nobody can
/// make the swarm send connection attempts to a third party.
fn valid_addresses<'a>(
    addresses: &'a [String],
    max: usize,
    observed: Option<SocketAddr>,
    kept: &mut Vec<&'a str>,
) {
    kept.clear();
    for address in addresses {
        if kept.len() >= max {
            break;
        }
        let ok = address.len() <= 64
            && address
                .parse::<SocketAddr>()
                .is_ok_and(|a| loaves_proto::addresses::may_announce(a, observed));
        if ok && !kept.contains(&address.as_str()) {
            kept.push(address);
        }
    }
}

/// The addresses of `addresses` that [`valid_addresses`] keeps, owned.
pub fn usable_addresses(
    addresses: &[String],
    max: usize,
    observed: Option<SocketAddr>,
) -> Vec<String> {
    let mut kept = Vec::new();
    valid_addresses(addresses, max, observed, &mut kept);
    kept.into_iter().map(str::to_owned).collect()
}

/// Everything a peer choice depends on.
#[derive(Debug, Clone, Copy)]
struct Choice {
    me: u32,
    region: NameId,
    isp: NameId,
    next_sequence: u64,
    now: UnixSeconds,
    ttl: u64,
    lookahead: u64,
    /// Candidates scored per reply slot.
    cap: usize,
    want: usize,
    diversity: usize,
}

impl Choice {
    /// 0 = same ISP, 1 = same region, 2 = elsewhere or unknown.
    fn class(&self, region: NameId, isp: NameId) -> u8 {
        if known(self.isp) && isp == self.isp {
            0
        } else if known(self.region) && region == self.region {
            1
        } else {
            2
        }
    }

    fn eligible(&self, peer: &Hot) -> bool {
        peer.index != self.me
            && peer.reachable()
            && u64::from(peer.last_seen).saturating_add(self.ttl) >= self.now.0
    }

    /// Higher is better: segments held just ahead of the requester's
    /// playhead first, then (same ISP class only) same region, then spare
    /// upload on a log scale, then a random tie-break so equally good peers
    /// share the load.
    fn score(&self, peer: &Hot, peers: &[Peer], rng: &mut SplitMix64) -> u64 {
        let held = match peer.holdings() {
            HOT_LIVE => holdings::live_count_held(
                peer.first(),
                peer.last,
                self.next_sequence,
                self.lookahead,
            ),
            HOT_BITMAP => peers.get(peer.index as usize).map_or(0, |p| {
                p.holdings.count_held(self.next_sequence, self.lookahead)
            }),
            _ => 0,
        }
        .min(15);
        let same_region = u64::from(known(self.region) && peer.region == self.region);
        let spare_log = u64::from(peer.spare_log);
        (held << 56) | (same_region << 55) | (spare_log << 48) | (rng.next_u64() >> 16)
    }
}

/// Swarms up to this many peers have their whole summary vector read ahead
/// of random probes (a few kilobytes, fetched in parallel).
const TOUCH_WHOLE_SWARM: usize = 256;

/// Reads `count` summaries of `members` from `start` (wrapping) ahead of
/// scoring: independent loads that the processor issues together, where the
/// scoring loop, whose branches depend on each summary, would wait for one
/// cache miss at a time.
fn touch_hot(members: &[Hot], start: usize, count: usize) {
    let n = members.len();
    let mut sum = 0u32;
    let mut at = start;
    // Summaries are smaller than a cache line: every other one suffices.
    for _ in 0..count.div_ceil(2) {
        if let Some(hot) = members.get(at) {
            sum ^= hot.index;
        }
        at += 2;
        if at >= n {
            at -= n;
        }
    }
    std::hint::black_box(sum);
}

/// Fewest candidates scored for a class that may fill any slot.
const MIN_CANDIDATES: usize = 16;

/// Scores up to `cap` eligible candidates of class `class` into `out`,
/// examining at most `scan_limit` members of `group` (`None`: the whole
/// swarm) from a random offset, wrapping. `out` ends sorted best first.
fn collect(
    swarm: &Swarm,
    group: Option<&[Hot]>,
    class: u8,
    context: &Choice,
    (cap, scan_limit): (usize, usize),
    rng: &mut SplitMix64,
    out: &mut Vec<(u64, u32)>,
) {
    out.clear();
    let members = group.unwrap_or(&swarm.hot);
    let n = members.len();
    if n == 0 || cap == 0 {
        return;
    }
    let mut position = rng.below(n);
    // Random probes of the whole swarm when it is larger than what may be
    // examined (the class sought may be a minority there, and arrival order
    // clusters localities); otherwise a full window.
    let probe = group.is_none() && n > scan_limit;
    if !probe {
        // About a quarter of a window is skipped (other class, expired).
        touch_hot(members, position, n.min(scan_limit).min(cap + cap / 4 + 4));
    } else if n <= TOUCH_WHOLE_SWARM {
        touch_hot(members, 0, n);
    }
    for _ in 0..n.min(scan_limit) {
        let candidate = if probe {
            let index = rng.below(n);
            if out.iter().any(|(_, seen)| *seen as usize == index) {
                continue;
            }
            &members[index]
        } else {
            let candidate = &members[position];
            position += 1;
            if position == n {
                position = 0;
            }
            candidate
        };
        if context.eligible(candidate) && context.class(candidate.region, candidate.isp) == class {
            out.push((context.score(candidate, &swarm.peers, rng), candidate.index));
            if out.len() >= cap {
                break;
            }
        }
    }
    out.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
}

/// Chooses peers into `scratch.chosen`, nearest first.
///
/// Slots: `want - diversity` for the same ISP, then the same region fills
/// what the ISP could not, then elsewhere gets the rest (at least
/// `diversity` when available); slots nobody can fill go back to nearer
/// classes. Each class scores about `candidates_per_slot` candidates per
/// slot it may fill, so the work per announce is bounded by the reply size,
/// not the swarm size.
fn choose_peers(swarm: &Swarm, context: &Choice, rng: &mut SplitMix64, scratch: &mut Scratch) {
    scratch.chosen.clear();
    let want = context.want;
    if want == 0 {
        return;
    }
    let factor = context.cap.max(1);
    let isp_group = known(context.isp)
        .then(|| swarm.by_isp.get(&context.isp))
        .flatten()
        .map_or(&[][..], Vec::as_slice);
    let region_group = known(context.region)
        .then(|| swarm.by_region.get(&context.region))
        .flatten()
        .map_or(&[][..], Vec::as_slice);
    // Small needs still look at a few candidates, so that in small swarms
    // the best peers are always found.
    let budget = |need: usize| {
        let cap = if need == 0 {
            0
        } else {
            (need * factor).max(MIN_CANDIDATES)
        };
        (cap, cap * 4)
    };

    let need_a = want - context.diversity;
    collect(
        swarm,
        Some(isp_group),
        0,
        context,
        budget(need_a),
        rng,
        &mut scratch.class_a,
    );
    let mut a = scratch.class_a.len().min(need_a);
    let need_b = want - context.diversity - a;
    collect(
        swarm,
        Some(region_group),
        1,
        context,
        budget(need_b),
        rng,
        &mut scratch.class_b,
    );
    let mut b = scratch.class_b.len().min(need_b);
    let need_c = want - a - b;
    // Class 2 has no index of its own: sample the whole swarm.
    collect(
        swarm,
        None,
        2,
        context,
        budget(need_c),
        rng,
        &mut scratch.class_c,
    );
    let c = scratch.class_c.len().min(need_c);
    // Not enough elsewhere: give the slots back to nearer peers.
    a = scratch.class_a.len().min(want - b - c);
    if a + b + c < want && need_b < want - a - c {
        // The region was skipped or under-sampled: look again for the rest.
        let need = want - a - c;
        collect(
            swarm,
            Some(region_group),
            1,
            context,
            budget(need),
            rng,
            &mut scratch.class_b,
        );
    }
    b = scratch.class_b.len().min(want - a - c);
    let Scratch {
        class_a,
        class_b,
        class_c,
        chosen,
        ..
    } = scratch;
    chosen.extend(
        class_a[..a]
            .iter()
            .chain(&class_b[..b])
            .chain(&class_c[..c])
            .map(|(_, index)| *index),
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn announce_bitmap(book: &mut SwarmBook, now: u64, n: u8, bits: usize) -> AnnounceOutcome {
        let key = [n; 32];
        let announce = pb::Announce {
            swarm: Some(pb::SwarmId {
                title: "film".into(),
                rendition: "720p".into(),
            }),
            addresses: vec![format!("10.0.0.{}:4000", u32::from(n) + 1)],
            holdings: Some(pb::Holdings {
                kind: Some(pb::holdings::Kind::Bitmap(pb::SegmentBitmap {
                    first_sequence: u64::from(n),
                    bits: vec![0xa5; bits],
                })),
            }),
            max_peers: 80,
            ..pb::Announce::default()
        };
        let who = Requester {
            key: &key,
            region: "eu",
            isp: if n.is_multiple_of(2) { "a" } else { "b" },
            observed: None,
        };
        book.announce(UnixSeconds(now), &who, &announce).unwrap()
    }

    /// Entries that grow move to the end of the arena, the space left behind
    /// is reclaimed, and every reply still carries each peer's latest entry.
    #[test]
    fn entry_arena_relocates_and_compacts() {
        let mut book = SwarmBook::new(SwarmConfig::default(), 7);
        let mut rng = SplitMix64::new(11);
        let mut sizes = [0usize; 40];
        let mut compactions = 0;
        let mut previous_garbage = 0;
        for step in 0..4000u64 {
            let n = rng.below(sizes.len());
            sizes[n] = rng.below(600);
            let outcome = announce_bitmap(&mut book, 1000 + step / 100, n as u8, sizes[n]);
            let reply = wire::decode_reply(&outcome.reply).unwrap();
            for entry in &reply.peers {
                let listed = usize::from(entry.peer_public_key[0]);
                assert_ne!(listed, n, "a peer was given its own entry");
                let Some(pb::holdings::Kind::Bitmap(bitmap)) =
                    entry.holdings.as_ref().and_then(|h| h.kind.as_ref())
                else {
                    panic!("bitmap holdings expected");
                };
                assert_eq!(bitmap.first_sequence, listed as u64);
                assert_eq!(bitmap.bits.len(), sizes[listed], "stale entry listed");
            }
            let swarm = book.swarms.values().next().unwrap();
            if swarm.entries.garbage < previous_garbage {
                compactions += 1;
            }
            previous_garbage = swarm.entries.garbage;
            let live: usize = swarm.slots.iter().map(|s| s.cap as usize).sum();
            assert!(swarm.entries.bytes.len() <= 2 * live);
            if step % 50 == 0 {
                book.check_invariants().unwrap();
            }
        }
        assert!(compactions > 0, "the arena was never compacted");
        book.check_invariants().unwrap();
    }

    #[test]
    fn locality_names_beyond_what_an_id_holds_fold_into_other() {
        let mut names = Interner::new(usize::MAX);
        let mut seen = std::collections::HashSet::new();
        let mut folded = 0;
        for i in 0..70_000 {
            let id = names.intern(&format!("isp-{i}"));
            if id == OVERFLOW {
                folded += 1;
            } else {
                assert!(known(id));
                // No id is handed out twice (a wrapped cast would).
                assert!(seen.insert(id), "id {id} reused");
                assert_eq!(names.name(id), format!("isp-{i}"));
            }
        }
        assert_eq!(seen.len(), MAX_LOCALITY_NAMES);
        assert_eq!(folded, 70_000 - MAX_LOCALITY_NAMES);
    }

    #[test]
    fn summaries_keep_the_newest_65536_segments_of_a_long_live_window() {
        let mut peer = new_peer(&[1; 32], 2, 3);
        peer.holdings = Holdings::Live {
            first: 1_000,
            last: 101_000,
        };
        peer.reachable = true;
        peer.last_seen = UnixSeconds(u64::MAX);
        let hot = Hot::of(&peer, 7);
        assert_eq!(hot.holdings(), HOT_LIVE);
        assert!(hot.reachable());
        assert_eq!(hot.last, 101_000);
        assert_eq!(hot.first(), 101_000 - 65_535);
        assert_eq!(hot.last_seen, u32::MAX);
        peer.holdings = Holdings::Live { first: 5, last: 25 };
        peer.reachable = false;
        let hot = Hot::of(&peer, 7);
        assert_eq!((hot.first(), hot.last), (5, 25));
        assert!(!hot.reachable());
    }

    /// The reply cache names peers by position: a peer that leaves must
    /// neither be listed from the cache nor shift another peer into its
    /// place (a requester given its own entry).
    #[test]
    fn cached_replies_forget_peers_that_left() {
        let mut book = SwarmBook::new(SwarmConfig::default(), 5);
        let film = pb::SwarmId {
            title: "film".into(),
            rendition: "720p".into(),
        };
        let announce = |book: &mut SwarmBook, now: u64, n: u16| {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&n.to_be_bytes());
            let message = pb::Announce {
                swarm: Some(film.clone()),
                addresses: vec![format!("10.0.{}.{}:4000", n / 200, n % 200 + 1)],
                ..pb::Announce::default()
            };
            let who = Requester {
                key: &key,
                region: "eu",
                isp: "a",
                observed: None,
            };
            let reply = book.announce(UnixSeconds(now), &who, &message).unwrap();
            let keys: Vec<PeerKey> = wire::decode_reply(&reply.reply)
                .unwrap()
                .peers
                .iter()
                .map(|p| p.peer_public_key.as_slice().try_into().unwrap())
                .collect();
            assert!(!keys.contains(&key), "a peer was given its own entry");
            keys
        };
        for n in 0..300 {
            announce(&mut book, 1000, n);
        }
        // Built at 1001 and cached for the rest of that second.
        let first = announce(&mut book, 1001, 0);
        let second = announce(&mut book, 1001, 1);
        assert_eq!(first[1..], second[1..], "the cache was not used");
        for gone in &first {
            assert!(book.stop(gone, &film));
        }
        book.check_invariants().unwrap();
        for n in 300..340 {
            let keys = announce(&mut book, 1001, n);
            assert!(
                keys.iter().all(|k| !first.contains(k)),
                "a peer that left was listed"
            );
        }
        // The last peers of the swarm moved into the places of those that
        // left; none may be handed its own entry (checked by `announce`).
        for n in 0..300u16 {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&n.to_be_bytes());
            if !first.contains(&key) {
                assert_eq!(announce(&mut book, 1001, n).len(), 30);
            }
        }
    }
}
