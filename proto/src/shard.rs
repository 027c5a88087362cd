//! Which tracker serves a title: rendezvous (highest-random-weight) hashing.
//!
//! Several tracker processes split the swarms with no shared state: every
//! client and seed maps a title to one tracker of a configured list, and all
//! of them compute the same answer. For each shard `s` of the list the weight
//! of a title `t` is
//!
//! ```text
//! weight(t, s) = first 8 bytes, big-endian, of
//!     SHA-256("loaves/v1/shard\0" || u32be(len(t)) || t || s)
//! ```
//!
//! and the title goes to the shard with the highest weight (ties, which need
//! a 64-bit collision, go to the shard that sorts first bytewise). Properties:
//!
//! - deterministic and platform-independent (SHA-256, explicit byte order);
//! - independent of the order in which shards are listed;
//! - adding a shard to `n` moves only the titles the new shard wins, about
//!   `1/(n+1)` of them, all *to* the new shard; removing a shard moves only
//!   that shard's titles.
//!
//! A shard is named by the string operators configure (typically the
//! tracker's `host:port`); all parties must use the same strings. Every
//! rendition of a title maps to the same shard, so a viewer switching
//! rendition keeps its tracker.

use sha2::{Digest, Sha256};

/// Domain separation for the shard hash.
const SHARD_CONTEXT: &[u8] = b"loaves/v1/shard\0";

/// Weight of `title` on `shard`: higher wins.
pub fn weight(title: &str, shard: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(SHARD_CONTEXT);
    // Length prefix: ("ab", "c") and ("a", "bc") must hash differently.
    hasher.update((title.len() as u32).to_be_bytes());
    hasher.update(title.as_bytes());
    hasher.update(shard.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The shard of `title` among `shards`, or `None` when the list is empty.
pub fn shard_for<'a, S: AsRef<str>>(title: &str, shards: &'a [S]) -> Option<&'a S> {
    shards.iter().max_by(|a, b| {
        let (a_ref, b_ref) = (a.as_ref(), b.as_ref());
        weight(title, a_ref)
            .cmp(&weight(title, b_ref))
            // On a tie the bytewise-smaller name wins (max_by keeps the
            // greater, so reverse the name order).
            .then_with(|| b_ref.cmp(a_ref))
    })
}

/// A configured list of tracker shards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardMap {
    shards: Vec<String>,
}

impl ShardMap {
    /// A map over these shard names (duplicates are dropped).
    pub fn new<I, S>(shards: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut list: Vec<String> = shards.into_iter().map(Into::into).collect();
        list.sort();
        list.dedup();
        Self { shards: list }
    }

    /// The shard serving `title`, `None` when no shard is configured.
    pub fn shard_for(&self, title: &str) -> Option<&str> {
        shard_for(title, &self.shards).map(String::as_str)
    }

    /// The shards, sorted.
    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// Whether `shard` serves `title` (a tracker checks announces with this).
    pub fn is_served_by(&self, title: &str, shard: &str) -> bool {
        self.shard_for(title) == Some(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titles(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("title-{i:05}")).collect()
    }

    fn shards(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:4433", i + 1)).collect()
    }

    #[test]
    fn empty_list_has_no_shard() {
        assert_eq!(shard_for::<String>("t", &[]), None);
        assert_eq!(ShardMap::default().shard_for("t"), None);
    }

    #[test]
    fn known_vector_is_stable() {
        // Pinned so an accidental change of the hash input shows up: clients
        // and trackers built from different versions must agree.
        let map = ShardMap::new(shards(3));
        let pinned: Vec<_> = ["big-buck-bunny", "sintel", "tears-of-steel"]
            .iter()
            .map(|t| map.shard_for(t).map(str::to_owned))
            .collect();
        let again: Vec<_> = ["big-buck-bunny", "sintel", "tears-of-steel"]
            .iter()
            .map(|t| shard_for(t, &shards(3)).cloned())
            .collect();
        assert_eq!(pinned, again);
        assert_eq!(
            weight("big-buck-bunny", "10.0.0.1:4433"),
            KNOWN_WEIGHT,
            "shard hash changed: every deployed client would disagree"
        );
    }

    /// SHA-256("loaves/v1/shard\0" || 00 00 00 0e || "big-buck-bunny" ||
    /// "10.0.0.1:4433"), first 8 bytes — computed independently with
    /// `printf 'loaves/v1/shard\0\0\0\0\x0ebig-buck-bunny10.0.0.1:4433' | sha256sum`.
    const KNOWN_WEIGHT: u64 = 0x2c3c_30df_9784_074d;

    #[test]
    fn order_of_the_list_does_not_matter() {
        let forward = shards(5);
        let mut backward = forward.clone();
        backward.reverse();
        for title in titles(500) {
            assert_eq!(shard_for(&title, &forward), shard_for(&title, &backward));
        }
    }

    #[test]
    fn load_is_spread_evenly() {
        let list = shards(4);
        let mut counts = [0usize; 4];
        for title in titles(8000) {
            let shard = shard_for(&title, &list).unwrap();
            let index = list.iter().position(|s| s == shard).unwrap();
            counts[index] += 1;
        }
        for count in counts {
            // Expect 2000 each; allow ±10%.
            assert!((1800..=2200).contains(&count), "uneven: {counts:?}");
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one() {
        let before = shards(4);
        let after = shards(5);
        let all = titles(10_000);
        let mut moved = 0;
        for title in &all {
            let old = shard_for(title, &before).unwrap();
            let new = shard_for(title, &after).unwrap();
            if old != new {
                moved += 1;
                // Titles only ever move to the new shard.
                assert_eq!(new, &after[4]);
            }
        }
        // Expect 10_000 / 5 = 2000 moves; allow ±10%.
        assert!((1800..=2200).contains(&moved), "moved {moved}");
    }

    #[test]
    fn removing_a_shard_moves_only_its_titles() {
        let before = shards(5);
        let after: Vec<String> = before
            .iter()
            .filter(|s| *s != &before[2])
            .cloned()
            .collect();
        for title in titles(3000) {
            let old = shard_for(&title, &before).unwrap();
            let new = shard_for(&title, &after).unwrap();
            if old != &before[2] {
                assert_eq!(old, new);
            }
        }
    }

    #[test]
    fn shard_map_dedups_and_checks_ownership() {
        let map = ShardMap::new(["b:1", "a:1", "b:1"]);
        assert_eq!(map.shards(), ["a:1", "b:1"]);
        let owner = map.shard_for("x").unwrap().to_owned();
        assert!(map.is_served_by("x", &owner));
        let other = if owner == "a:1" { "b:1" } else { "a:1" };
        assert!(!map.is_served_by("x", other));
    }
}
