//! The in-memory segment store: verified segments this viewer holds, for
//! its own player and for upload to other peers, within a byte budget.
//!
//! Only bytes that passed manifest verification are ever inserted; the store
//! does not check again. When the budget is exceeded the least recently used
//! segments are evicted (in a live swarm the newest segments are both the
//! ones the local player needs next and the ones other peers ask for).

use bytes::Bytes;
use lru::LruCache;

/// A segment's identity within one title.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentKey {
    /// Rendition.
    pub rendition: loaves_proto::names::RenditionName,
    /// Sequence number.
    pub sequence: u64,
}

/// Verified segments within a byte budget.
#[derive(Debug)]
pub struct SegmentStore {
    segments: LruCache<SegmentKey, Bytes>,
    budget_bytes: u64,
    used_bytes: u64,
    evictions: u64,
}

impl SegmentStore {
    /// An empty store holding at most `budget_bytes`.
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            segments: LruCache::unbounded(),
            budget_bytes,
            used_bytes: 0,
            evictions: 0,
        }
    }

    /// Adds a verified segment, evicting the least recently used ones to stay
    /// within budget. Returns the keys evicted (to withdraw them from HAVE
    /// announcements). A segment larger than the whole budget is not kept.
    pub fn insert(&mut self, key: SegmentKey, bytes: Bytes) -> Vec<SegmentKey> {
        let size = bytes.len() as u64;
        let mut evicted = Vec::new();
        if size > self.budget_bytes {
            return evicted;
        }
        if let Some(previous) = self.segments.pop(&key) {
            self.used_bytes -= previous.len() as u64;
        }
        while self.used_bytes + size > self.budget_bytes {
            let Some((old_key, old)) = self.segments.pop_lru() else {
                break;
            };
            self.used_bytes -= old.len() as u64;
            self.evictions += 1;
            evicted.push(old_key);
        }
        self.used_bytes += size;
        self.segments.put(key, bytes);
        evicted
    }

    /// The segment, if held (marks it recently used).
    pub fn get(&mut self, key: &SegmentKey) -> Option<Bytes> {
        self.segments.get(key).cloned()
    }

    /// Whether the segment is held (does not change recency).
    pub fn contains(&self, key: &SegmentKey) -> bool {
        self.segments.contains(key)
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Segments evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Number of segments held.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sequence: u64) -> SegmentKey {
        SegmentKey {
            rendition: loaves_proto::names::RenditionName::new("720p").unwrap(),
            sequence,
        }
    }

    #[test]
    fn stays_within_budget_evicting_least_recently_used() {
        let mut store = SegmentStore::new(3_000);
        for seq in 0..3 {
            assert!(
                store
                    .insert(key(seq), Bytes::from(vec![0; 1_000]))
                    .is_empty()
            );
        }
        // Touch 0, so 1 is the least recently used.
        assert!(store.get(&key(0)).is_some());
        let evicted = store.insert(key(3), Bytes::from(vec![0; 1_500]));
        assert_eq!(evicted, vec![key(1), key(2)]);
        assert!(store.used_bytes() <= 3_000);
        assert!(store.contains(&key(0)) && store.contains(&key(3)));
        assert_eq!(store.evictions(), 2);
    }

    #[test]
    fn oversized_segment_is_not_kept_and_evicts_nothing() {
        let mut store = SegmentStore::new(1_000);
        store.insert(key(0), Bytes::from(vec![0; 600]));
        assert!(store.insert(key(1), Bytes::from(vec![0; 1_001])).is_empty());
        assert!(store.contains(&key(0)) && !store.contains(&key(1)));
        assert_eq!(store.used_bytes(), 600);
    }

    #[test]
    fn replacing_a_segment_does_not_leak_budget() {
        let mut store = SegmentStore::new(1_000);
        for _ in 0..10 {
            store.insert(key(0), Bytes::from(vec![0; 400]));
        }
        assert_eq!(store.used_bytes(), 400);
        assert_eq!(store.len(), 1);
    }
}
