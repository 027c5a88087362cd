//! Segment caches with byte budgets: an in-memory LRU of shared [`Bytes`]
//! and an optional disk cache that survives restarts.
//!
//! Invariants:
//! - only verified segments are inserted (the store checks them against the
//!   signed manifest first), and the disk tier is re-verified on every read,
//!   because files can rot or be tampered with;
//! - a disk entry is written to a temporary file and renamed into place, so a
//!   crash never leaves a half-written segment under a real name;
//! - the bytes held never exceed the budget after an insert returns.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use super::metrics::Metrics;

/// A segment's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentKey {
    /// Title.
    pub title: String,
    /// Rendition.
    pub rendition: String,
    /// Sequence.
    pub sequence: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// In-memory LRU with a byte budget.
#[derive(Debug)]
pub struct MemoryCache {
    budget: u64,
    inner: Mutex<(LruCache<SegmentKey, Bytes>, u64)>,
    metrics: Metrics,
}

impl MemoryCache {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: u64, metrics: Metrics) -> Self {
        Self {
            budget,
            inner: Mutex::new((LruCache::unbounded(), 0)),
            metrics,
        }
    }

    /// The segment, marked as recently used.
    pub fn get(&self, key: &SegmentKey) -> Option<Bytes> {
        lock(&self.inner).0.get(key).cloned()
    }

    /// Inserts a verified segment, evicting the least recently used ones.
    /// A segment larger than the whole budget is not kept.
    pub fn insert(&self, key: SegmentKey, bytes: Bytes) {
        let size = bytes.len() as u64;
        if size > self.budget {
            return;
        }
        let mut guard = lock(&self.inner);
        let (lru, held) = &mut *guard;
        if let Some(previous) = lru.put(key, bytes) {
            *held -= previous.len() as u64;
        }
        *held += size;
        while *held > self.budget {
            let Some((_, evicted)) = lru.pop_lru() else {
                break;
            };
            *held -= evicted.len() as u64;
            self.metrics
                .cache_evictions
                .with_label_values(&["memory"])
                .inc();
        }
        self.metrics
            .cache_bytes
            .with_label_values(&["memory"])
            .set(i64::try_from(*held).unwrap_or(i64::MAX));
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        lock(&self.inner).1
    }
}

/// Disk cache with a byte budget: `DIR/TITLE/RENDITION/SEQUENCE.seg`.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    budget: u64,
    /// Size of each entry, in LRU order.
    index: Mutex<(LruCache<SegmentKey, u64>, u64)>,
    metrics: Metrics,
}

const SUFFIX: &str = "seg";

impl DiskCache {
    /// Opens (creating) the cache at `root` and indexes what a previous run
    /// left there, oldest first; leftovers of interrupted writes are removed.
    pub fn open(root: &Path, budget: u64, metrics: Metrics) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let mut found = Vec::new();
        for title in read_dir_names(root)? {
            let title_dir = root.join(&title);
            for rendition in read_dir_names(&title_dir)? {
                let dir = title_dir.join(&rendition);
                for entry in std::fs::read_dir(&dir)?.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let path = entry.path();
                    let Ok(meta) = entry.metadata() else { continue };
                    if name.starts_with(".tmp-") {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    let sequence = name
                        .strip_suffix(&format!(".{SUFFIX}"))
                        .and_then(|s| s.parse::<u64>().ok());
                    if let (Some(sequence), true) = (sequence, meta.is_file()) {
                        let modified = meta.modified().ok();
                        found.push((
                            modified,
                            SegmentKey {
                                title: title.clone(),
                                rendition: rendition.clone(),
                                sequence,
                            },
                            meta.len(),
                        ));
                    }
                }
            }
        }
        found.sort_by_key(|entry| entry.0);
        let cache = Self {
            root: root.to_owned(),
            budget,
            index: Mutex::new((LruCache::unbounded(), 0)),
            metrics,
        };
        let evicted = {
            let mut guard = lock(&cache.index);
            for (_, key, size) in found {
                guard.0.put(key, size);
                guard.1 += size;
            }
            cache.evict_locked(&mut guard)
        };
        cache.remove_files(evicted);
        Ok(cache)
    }

    fn path(&self, key: &SegmentKey) -> PathBuf {
        self.root
            .join(&key.title)
            .join(&key.rendition)
            .join(format!("{}.{SUFFIX}", key.sequence))
    }

    /// Segments indexed.
    pub fn len(&self) -> usize {
        lock(&self.index).0.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads an entry; the caller must verify it and [`Self::remove`] it if
    /// it does not.
    pub async fn get(&self, key: &SegmentKey) -> Option<Bytes> {
        lock(&self.index).0.get(key)?;
        match tokio::fs::read(self.path(key)).await {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(_) => {
                self.forget(key);
                None
            }
        }
    }

    fn forget(&self, key: &SegmentKey) {
        let mut guard = lock(&self.index);
        if let Some(size) = guard.0.pop(key) {
            guard.1 -= size;
        }
    }

    /// Drops an entry (it failed verification).
    pub async fn remove(&self, key: &SegmentKey) {
        self.forget(key);
        let _ = tokio::fs::remove_file(self.path(key)).await;
    }

    /// Writes a verified segment (temporary file, then rename) and evicts
    /// the least recently used entries beyond the budget.
    pub async fn insert(&self, key: SegmentKey, bytes: Bytes) -> std::io::Result<()> {
        let size = bytes.len() as u64;
        if size > self.budget {
            return Ok(());
        }
        let path = self.path(&key);
        let dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await?;
        let unique: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let temporary = dir.join(format!(".tmp-{}-{unique}", key.sequence));
        tokio::fs::write(&temporary, &bytes).await?;
        if let Err(error) = tokio::fs::rename(&temporary, &path).await {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(error);
        }
        let evicted = {
            let mut guard = lock(&self.index);
            if let Some(previous) = guard.0.put(key, size) {
                guard.1 -= previous;
            }
            guard.1 += size;
            self.evict_locked(&mut guard)
        };
        self.remove_files(evicted);
        Ok(())
    }

    fn evict_locked(&self, guard: &mut (LruCache<SegmentKey, u64>, u64)) -> Vec<SegmentKey> {
        let mut evicted = Vec::new();
        while guard.1 > self.budget {
            let Some((key, size)) = guard.0.pop_lru() else {
                break;
            };
            guard.1 -= size;
            evicted.push(key);
        }
        self.metrics
            .cache_bytes
            .with_label_values(&["disk"])
            .set(i64::try_from(guard.1).unwrap_or(i64::MAX));
        evicted
    }

    fn remove_files(&self, evicted: Vec<SegmentKey>) {
        for key in evicted {
            self.metrics
                .cache_evictions
                .with_label_values(&["disk"])
                .inc();
            let _ = std::fs::remove_file(self.path(&key));
        }
    }
}

fn read_dir_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if super::safe_name(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(sequence: u64) -> SegmentKey {
        SegmentKey {
            title: "t".into(),
            rendition: "r".into(),
            sequence,
        }
    }

    #[test]
    fn memory_cache_keeps_its_budget_and_evicts_lru() {
        let cache = MemoryCache::new(250, Metrics::new());
        cache.insert(key(0), Bytes::from(vec![0; 100]));
        cache.insert(key(1), Bytes::from(vec![1; 100]));
        assert!(cache.get(&key(0)).is_some()); // 0 is now the most recent
        cache.insert(key(2), Bytes::from(vec![2; 100]));
        assert!(cache.held() <= 250);
        assert!(
            cache.get(&key(1)).is_none(),
            "least recently used went first"
        );
        assert!(cache.get(&key(0)).is_some());
        cache.insert(key(3), Bytes::from(vec![3; 1000]));
        assert!(cache.get(&key(3)).is_none(), "larger than the budget");
    }

    #[tokio::test]
    async fn disk_cache_survives_reopen_and_keeps_budget() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = DiskCache::open(dir.path(), 250, Metrics::new()).unwrap();
            for sequence in 0..3 {
                cache
                    .insert(key(sequence), Bytes::from(vec![sequence as u8; 100]))
                    .await
                    .unwrap();
            }
            assert_eq!(cache.len(), 2);
            assert!(cache.get(&key(0)).await.is_none());
        }
        std::fs::write(dir.path().join("t/r/.tmp-9-1"), b"half").unwrap();
        let cache = DiskCache::open(dir.path(), 250, Metrics::new()).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(2)).await.unwrap(), vec![2u8; 100]);
        assert!(!dir.path().join("t/r/.tmp-9-1").exists());
    }
}
