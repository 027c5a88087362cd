//! The durable store: content keys (sealed), sessions and accounts.
//!
//! One code path for SQLite (the embedded default) and PostgreSQL (multi
//! replica), through sqlx's `Any` driver. The SQL is the common subset of
//! both: `$n` parameters, `INSERT ... ON CONFLICT`, `RETURNING`.
//!
//! # Invariants
//!
//! - **One key per (title, track type, key period), forever.** Keys are
//!   created with `INSERT ... ON CONFLICT DO NOTHING` and then read back: when
//!   two replicas race, the loser's insert does nothing and it reads the
//!   winner's key. Key ids are `UNIQUE`, so a key id never names two keys.
//! - **Durable before returned.** A key is returned only after the
//!   transaction that created it committed (or after it was read as already
//!   committed by another). On SQLite the commit of new keys runs with
//!   `synchronous = FULL` (fsync), other writes with `NORMAL`.
//! - **Concurrency slots.** A session counts against its account while
//!   `expires_at >= now`. Admission is one conditional insert, "insert this
//!   session if the account has fewer than N live sessions", made atomic per
//!   account: on PostgreSQL it runs in a transaction that first upserts the
//!   account's row in `accounts`, whose row lock queues every other admission
//!   of that account on any replica until commit; on SQLite the single write
//!   lock does the same (one writer connection per process, and the statement
//!   fails rather than commits if another process wrote meanwhile). So N+1
//!   racing acquisitions cannot all win. Release sets `expires_at = 0`; a
//!   session that stops renewing stops counting when `expires_at` passes.
//! - **Replays.** The client's HPKE key is `UNIQUE` among sessions, and a
//!   session row is kept until its entitlement (plus skew) has expired, so an
//!   acquisition request replayed while its entitlement is valid is refused.
//! - **Nothing written on refusal.** The conditional insert writes nothing
//!   when it refuses, and the PostgreSQL transaction is rolled back.
//! - **Keys are immutable**, so the process caches them once read or
//!   created: a cached key is always the committed one.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loaves_proto::UnixSeconds;
use loaves_proto::keys::{ContentKey, ContentKeyId, SessionId};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::seal::{Kek, KeyRow, SealError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported store URL (use sqlite://PATH or postgres://...)")]
    UnsupportedUrl,
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The KEK does not open what the store holds.
    #[error("the key-encryption key does not match this store")]
    WrongKek,
    /// A sealed key did not open or a row holds impossible values.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Sealing or randomness failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The SQLite database file or its folder could not be made private.
    #[error("database file {path}: {source}")]
    Files {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Key creation kept colliding (never expected with random ids).
    #[error("could not create a unique key id")]
    KeyIdCollision,
}

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A content key with its identity.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Track type.
    pub track_type: String,
    /// Key period.
    pub key_period: u32,
    /// CENC key id.
    pub key_id: ContentKeyId,
    /// The clear key (redacted in `Debug`).
    pub key: ContentKey,
}

/// What a session row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub session_id: SessionId,
    /// Account.
    pub account: String,
    /// Title.
    pub title: String,
    /// Renditions granted.
    pub renditions: Vec<String>,
    /// Client's X25519 key the content keys are wrapped to.
    pub client_hpke_key: Vec<u8>,
    /// Client's Ed25519 peer key, which signs renewals.
    pub peer_key: Vec<u8>,
    /// Region hint.
    pub region: String,
    /// ISP hint.
    pub isp: String,
    /// Last renewal sequence accepted (0 after acquisition).
    pub renewal_seq: u64,
    /// The session is over after this instant (0 once released).
    pub expires_at: UnixSeconds,
    /// The entitlement behind the session expires then; renewals stop.
    pub entitlement_expires_at: UnixSeconds,
}

/// A new session to admit.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// The record to write (its `renewal_seq` is 0).
    pub record: &'a SessionRecord,
    /// Concurrency limit of the account.
    pub max_streams: u32,
    /// Now.
    pub now: UnixSeconds,
    /// Until when the client's HPKE key is remembered against replays.
    pub replay_horizon: UnixSeconds,
}

/// Outcome of an admission attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The session is admitted.
    Admitted,
    /// This client key was already used for an acquisition.
    Replay,
    /// The account already has its limit of live sessions.
    LimitReached,
}

/// Outcome of a renewal or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUpdate {
    /// Done.
    Updated,
    /// No such session (never existed, or swept long after it ended).
    Unknown,
    /// The session is over (released or past its grace period).
    Over,
    /// The renewal sequence did not increase.
    Replay,
}

/// Row counts, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowCounts {
    /// Content keys.
    pub content_keys: i64,
    /// Session rows (live or not).
    pub sessions: i64,
    /// Accounts ever admitted.
    pub accounts: i64,
}

/// The schema in SQLite's types; PostgreSQL's differs only in naming its
/// byte strings `BYTEA` ([`schema_statement`]).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS content_keys (
        title TEXT NOT NULL, track_type TEXT NOT NULL, key_period BIGINT NOT NULL,
        key_id BLOB NOT NULL UNIQUE, sealed_key BLOB NOT NULL, created_at BIGINT NOT NULL,
        PRIMARY KEY (title, track_type, key_period))",
    "CREATE TABLE IF NOT EXISTS accounts (
        account TEXT PRIMARY KEY, acquisitions BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (
        session_id BLOB PRIMARY KEY, account TEXT NOT NULL,
        title TEXT NOT NULL, renditions TEXT NOT NULL,
        client_hpke_key BLOB NOT NULL UNIQUE,
        peer_key BLOB NOT NULL, region TEXT NOT NULL, isp TEXT NOT NULL,
        renewal_seq BIGINT NOT NULL, expires_at BIGINT NOT NULL,
        entitlement_expires_at BIGINT NOT NULL, replay_horizon BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sessions_account ON sessions (account, expires_at)",
    "CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at)",
];

/// `statement` of [`SCHEMA`] for `backend`.
fn schema_statement(backend: Backend, statement: &str) -> String {
    match backend {
        Backend::Sqlite => statement.to_owned(),
        Backend::Postgres => statement.replace("BLOB", "BYTEA"),
    }
}

/// Keys by (title, track type, key period).
type KeyCache = HashMap<(String, String, u32), StoredKey>;

/// Most keys kept in the in-process cache (about 100 bytes each).
const KEY_CACHE_CAPACITY: usize = 100_000;

/// Serializes schema creation across replicas starting together (PostgreSQL
/// `CREATE TABLE IF NOT EXISTS` is not race-free).
const POSTGRES_SCHEMA_LOCK: i64 = 0x4c4f_4156_4553; // "LOAVES"

fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The store. Cheap to clone (pools are shared).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// Every write. On SQLite a single connection: SQLite has one writer
    /// anyway, and queueing in the pool is far cheaper than SQLite's
    /// sleeping busy handler. It runs in WAL mode with `synchronous =
    /// NORMAL` (safe against process crashes; a power loss may forget the
    /// last session changes) and switches to `FULL` around the commit of new
    /// content keys, so a key is on stable storage before it is returned.
    writer: AnyPool,
    /// Reads. On SQLite, WAL readers never wait for the writer.
    reader: AnyPool,
    /// Keys already read or created (keys never change).
    cache: Arc<Mutex<KeyCache>>,
    kek: Kek,
}

impl Store {
    /// Opens (creating if needed) the store at `url` and checks the KEK
    /// against it. A new store records a check value of the KEK; an existing
    /// one refuses any other KEK.
    pub async fn open(url: &str, max_connections: u32, kek: Kek) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let (writer, reader) = match backend {
            Backend::Sqlite => {
                if let Some(path) = sqlite_file(url) {
                    crate::files::private_database(&path)
                        .map_err(|source| StoreError::Files { path, source })?;
                }
                let url = if url.contains('?') {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                let options = AnyConnectOptions::from_str(&url)?;
                // Set WAL once, before any pool exists: switching needs the
                // database to itself.
                {
                    use sqlx::ConnectOptions;
                    let mut conn = options.connect().await?;
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut conn)
                        .await?;
                    sqlx::Connection::close(conn).await?;
                }
                let writer = sqlite_pool(&options, 1).await?;
                let reader = sqlite_pool(&options, max_connections).await?;
                (writer, reader)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                (pool.clone(), pool)
            }
        };
        let store = Self {
            backend,
            writer,
            reader,
            cache: Arc::default(),
            kek,
        };
        store.migrate().await?;
        store.check_kek().await?;
        Ok(store)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(POSTGRES_SCHEMA_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        for statement in SCHEMA {
            // Made from the constant above alone: no outside text.
            let statement = sqlx::AssertSqlSafe(schema_statement(self.backend, statement));
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn check_kek(&self) -> Result<(), StoreError> {
        let check = self.kek.check_value()?;
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('kek_check', $1) ON CONFLICT DO NOTHING",
        )
        .bind(check)
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT value FROM meta WHERE name = 'kek_check'")
            .fetch_one(&self.writer)
            .await?;
        let stored: Vec<u8> = row.try_get("value")?;
        if self.kek.verify_check_value(&stored) {
            Ok(())
        } else {
            Err(StoreError::WrongKek)
        }
    }

    fn decode_key(&self, title: &str, row: &AnyRow) -> Result<StoredKey, StoreError> {
        let track_type: String = row.try_get("track_type")?;
        let period: i64 = row.try_get("key_period")?;
        let key_period =
            u32::try_from(period).map_err(|_| StoreError::Corrupt("key_period".into()))?;
        let key_id_bytes: Vec<u8> = row.try_get("key_id")?;
        let key_id = ContentKeyId::from_slice(&key_id_bytes)
            .ok_or_else(|| StoreError::Corrupt("key_id".into()))?;
        let sealed: Vec<u8> = row.try_get("sealed_key")?;
        let key_row = KeyRow {
            title,
            track_type: &track_type,
            key_period,
        };
        let key = self
            .kek
            .open_key(&key_row, &key_id, &sealed)
            .map_err(|_| StoreError::Corrupt(format!("sealed key {key_id} does not open")))?;
        Ok(StoredKey {
            track_type,
            key_period,
            key_id,
            key,
        })
    }

    /// The keys of `title` for every `(track type, key period)` in `wanted`
    /// (duplicates ignored), creating the missing ones. Sorted by track
    /// type, then period. Every key returned is committed.
    pub async fn get_or_create_keys(
        &self,
        title: &str,
        wanted: &[(&str, u32)],
        now: UnixSeconds,
    ) -> Result<Vec<StoredKey>, StoreError> {
        let mut wanted: Vec<(&str, u32)> = wanted.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // Fast path: everything known already (the common case for
        // licenses): no database at all.
        if let Some(cached) = self.cached_keys(title, &wanted) {
            return Ok(cached);
        }
        // Then one read, no write.
        let mut found = self.read_keys(title, &wanted).await?;
        if found.len() == wanted.len() {
            return Ok(found);
        }
        for _attempt in 0..3 {
            let mut conn = self.writer.acquire().await?;
            if self.backend == Backend::Sqlite {
                sqlx::query("PRAGMA synchronous = FULL")
                    .execute(&mut *conn)
                    .await?;
            }
            let created = self
                .insert_keys(&mut conn, title, &wanted, &found, now)
                .await;
            if self.backend == Backend::Sqlite {
                sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(&mut *conn)
                    .await?;
            }
            drop(conn);
            created?;
            found = self.read_keys(title, &wanted).await?;
            if found.len() == wanted.len() {
                return Ok(found);
            }
        }
        Err(StoreError::KeyIdCollision)
    }

    /// Inserts the keys of `wanted` not in `found`, in one transaction.
    async fn insert_keys(
        &self,
        conn: &mut sqlx::AnyConnection,
        title: &str,
        wanted: &[(&str, u32)],
        found: &[StoredKey],
        now: UnixSeconds,
    ) -> Result<(), StoreError> {
        use sqlx::Connection;
        let mut tx = conn.begin().await?;
        {
            for &(track_type, period) in wanted {
                if found
                    .iter()
                    .any(|k| k.track_type == track_type && k.key_period == period)
                {
                    continue;
                }
                let key_id = ContentKeyId::random().map_err(SealError::from)?;
                let key = ContentKey::generate().map_err(SealError::from)?;
                let row = KeyRow {
                    title,
                    track_type,
                    key_period: period,
                };
                let sealed = self.kek.seal_key(&row, &key_id, &key)?;
                // Without a conflict target: a clash on the triple (another
                // replica or request won) or on the key id (astronomically
                // unlikely) both insert nothing; the read below tells which.
                sqlx::query(
                    "INSERT INTO content_keys
                        (title, track_type, key_period, key_id, sealed_key, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(title)
                .bind(track_type)
                .bind(i64::from(period))
                .bind(key_id.0.to_vec())
                .bind(sealed)
                .bind(to_db(now.0))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every key of `wanted` if all exist already (from the cache, else one
    /// read); `None` if any is missing. Never writes.
    pub async fn known_keys(
        &self,
        title: &str,
        wanted: &[(&str, u32)],
    ) -> Result<Option<Vec<StoredKey>>, StoreError> {
        let mut wanted: Vec<(&str, u32)> = wanted.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if let Some(cached) = self.cached_keys(title, &wanted) {
            return Ok(Some(cached));
        }
        let found = self.read_keys(title, &wanted).await?;
        Ok((found.len() == wanted.len()).then_some(found))
    }

    /// Every key of `wanted` if all are cached.
    fn cached_keys(&self, title: &str, wanted: &[(&str, u32)]) -> Option<Vec<StoredKey>> {
        let cache = self.cache.lock().ok()?;
        wanted
            .iter()
            .map(|&(track, period)| {
                cache
                    .get(&(title.to_owned(), track.to_owned(), period))
                    .cloned()
            })
            .collect()
    }

    fn remember(&self, title: &str, keys: &[StoredKey]) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() + keys.len() > KEY_CACHE_CAPACITY {
                cache.clear();
            }
            for key in keys {
                cache.insert(
                    (title.to_owned(), key.track_type.clone(), key.key_period),
                    key.clone(),
                );
            }
        }
    }

    /// The existing keys among `wanted` (sorted, deduplicated).
    async fn read_keys(
        &self,
        title: &str,
        wanted: &[(&str, u32)],
    ) -> Result<Vec<StoredKey>, StoreError> {
        let first = wanted.iter().map(|w| w.1).min().unwrap_or(0);
        let last = wanted.iter().map(|w| w.1).max().unwrap_or(0);
        let rows = sqlx::query(
            "SELECT track_type, key_period, key_id, sealed_key FROM content_keys
             WHERE title = $1 AND key_period >= $2 AND key_period <= $3
             ORDER BY track_type, key_period",
        )
        .bind(title)
        .bind(i64::from(first))
        .bind(i64::from(last))
        .fetch_all(&self.reader)
        .await?;
        let mut keys = Vec::with_capacity(wanted.len());
        for row in &rows {
            let track_type: String = row.try_get("track_type")?;
            let period: i64 = row.try_get("key_period")?;
            let is_wanted = wanted
                .iter()
                .any(|&(t, p)| t == track_type && i64::from(p) == period);
            if is_wanted {
                keys.push(self.decode_key(title, row)?);
            }
        }
        self.remember(title, &keys);
        Ok(keys)
    }

    /// The key with this key id, with its title, if any.
    pub async fn key_by_id(
        &self,
        key_id: &ContentKeyId,
    ) -> Result<Option<(String, StoredKey)>, StoreError> {
        let row = sqlx::query(
            "SELECT title, track_type, key_period, key_id, sealed_key FROM content_keys
             WHERE key_id = $1",
        )
        .bind(key_id.0.to_vec())
        .fetch_optional(&self.reader)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let title: String = row.try_get("title")?;
                let key = self.decode_key(&title, &row)?;
                Ok(Some((title, key)))
            }
        }
    }

    /// Admits a session if its account has fewer than `max_streams` live
    /// sessions and its client key was never used. Writes nothing otherwise.
    pub async fn admit_session(&self, new: NewSession<'_>) -> Result<Admission, StoreError> {
        let r = new.record;
        let insert = sqlx::query(
            "INSERT INTO sessions (session_id, account, title, renditions, client_hpke_key,
                peer_key, region, isp, renewal_seq, expires_at, entitlement_expires_at,
                replay_horizon, created_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11, $12
             WHERE (SELECT COUNT(*) FROM sessions WHERE account = $2 AND expires_at >= $12) < $13
             ON CONFLICT (client_hpke_key) DO NOTHING",
        )
        .bind(r.session_id.0.to_vec())
        .bind(r.account.as_str())
        .bind(r.title.as_str())
        .bind(r.renditions.join("\n"))
        .bind(r.client_hpke_key.clone())
        .bind(r.peer_key.clone())
        .bind(r.region.as_str())
        .bind(r.isp.as_str())
        .bind(to_db(r.expires_at.0))
        .bind(to_db(r.entitlement_expires_at.0))
        .bind(to_db(new.replay_horizon.0))
        .bind(to_db(new.now.0))
        .bind(i64::from(new.max_streams));
        let inserted = match self.backend {
            // The single writer connection and SQLite's write lock make the
            // statement atomic on its own.
            Backend::Sqlite => insert.execute(&self.writer).await?.rows_affected(),
            Backend::Postgres => {
                let mut tx = self.writer.begin().await?;
                // Lock the account: every admission of this account, on any
                // replica, queues here until the previous one committed.
                sqlx::query(
                    "INSERT INTO accounts (account, acquisitions) VALUES ($1, 1)
                     ON CONFLICT (account) DO UPDATE
                     SET acquisitions = accounts.acquisitions + 1",
                )
                .bind(r.account.as_str())
                .execute(&mut *tx)
                .await?;
                let inserted = insert.execute(&mut *tx).await?.rows_affected();
                if inserted == 1 {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                inserted
            }
        };
        if inserted == 1 {
            return Ok(Admission::Admitted);
        }
        let used = sqlx::query("SELECT 1 AS one FROM sessions WHERE client_hpke_key = $1")
            .bind(r.client_hpke_key.clone())
            .fetch_optional(&self.reader)
            .await?;
        Ok(if used.is_some() {
            Admission::Replay
        } else {
            Admission::LimitReached
        })
    }

    /// The session with this id, live or not.
    pub async fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT session_id, account, title, renditions, client_hpke_key, peer_key, region,
                isp, renewal_seq, expires_at, entitlement_expires_at
             FROM sessions WHERE session_id = $1",
        )
        .bind(id.0.to_vec())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let session_id: Vec<u8> = row.try_get("session_id")?;
        let renditions: String = row.try_get("renditions")?;
        Ok(Some(SessionRecord {
            session_id: SessionId::from_slice(&session_id)
                .ok_or_else(|| StoreError::Corrupt("session_id".into()))?,
            account: row.try_get("account")?,
            title: row.try_get("title")?,
            renditions: renditions
                .split('\n')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            client_hpke_key: row.try_get("client_hpke_key")?,
            peer_key: row.try_get("peer_key")?,
            region: row.try_get("region")?,
            isp: row.try_get("isp")?,
            renewal_seq: from_db(row.try_get("renewal_seq")?),
            expires_at: UnixSeconds(from_db(row.try_get("expires_at")?)),
            entitlement_expires_at: UnixSeconds(from_db(row.try_get("entitlement_expires_at")?)),
        }))
    }

    /// Extends a live session to `expires_at` if `seq` is above the last
    /// accepted sequence.
    pub async fn renew_session(
        &self,
        id: &SessionId,
        seq: u64,
        now: UnixSeconds,
        expires_at: UnixSeconds,
    ) -> Result<SessionUpdate, StoreError> {
        let updated = sqlx::query(
            "UPDATE sessions SET renewal_seq = $2, expires_at = $3
             WHERE session_id = $1 AND renewal_seq < $2 AND expires_at >= $4",
        )
        .bind(id.0.to_vec())
        .bind(to_db(seq))
        .bind(to_db(expires_at.0))
        .bind(to_db(now.0))
        .execute(&self.writer)
        .await?;
        if updated.rows_affected() == 1 {
            return Ok(SessionUpdate::Updated);
        }
        // Nothing changed: say why.
        Ok(match self.session(id).await? {
            None => SessionUpdate::Unknown,
            Some(s) if s.expires_at < now => SessionUpdate::Over,
            Some(_) => SessionUpdate::Replay,
        })
    }

    /// Ends a live session at once (frees its slot) if `seq` is above the
    /// last accepted sequence.
    pub async fn release_session(
        &self,
        id: &SessionId,
        seq: u64,
        now: UnixSeconds,
    ) -> Result<SessionUpdate, StoreError> {
        // A renewal to time 0: over at once, by the same sequence rules.
        self.renew_session(id, seq, now, UnixSeconds(0)).await
    }

    /// Whether the session is live at `now`.
    pub async fn session_is_live(
        &self,
        id: &SessionId,
        now: UnixSeconds,
    ) -> Result<bool, StoreError> {
        Ok(self.session(id).await?.is_some_and(|s| s.expires_at >= now))
    }

    /// Sessions live at `now`, across all replicas.
    pub async fn active_sessions(&self, now: UnixSeconds) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE expires_at >= $1")
            .bind(to_db(now.0))
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Deletes session rows over for longer than `retention_s` whose replay
    /// horizon has passed. Never touches keys.
    pub async fn sweep(&self, now: UnixSeconds, retention_s: u64) -> Result<u64, StoreError> {
        let swept =
            sqlx::query("DELETE FROM sessions WHERE expires_at < $1 AND replay_horizon < $2")
                .bind(to_db(now.0.saturating_sub(retention_s)))
                .bind(to_db(now.0))
                .execute(&self.writer)
                .await?;
        Ok(swept.rows_affected())
    }

    /// How many rows each table holds.
    pub async fn row_counts(&self) -> Result<RowCounts, StoreError> {
        let mut counts = RowCounts::default();
        for (sql, slot) in [
            (
                "SELECT COUNT(*) AS n FROM content_keys",
                &mut counts.content_keys,
            ),
            ("SELECT COUNT(*) AS n FROM sessions", &mut counts.sessions),
            ("SELECT COUNT(*) AS n FROM accounts", &mut counts.accounts),
        ] {
            let row = sqlx::query(sql).fetch_one(&self.reader).await?;
            *slot = row.try_get("n")?;
        }
        Ok(counts)
    }

    /// Closes the pools, waiting for connections to be returned.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// The database file of a `sqlite:` URL; `None` for an in-memory one.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

async fn sqlite_pool(
    options: &AnyConnectOptions,
    max_connections: u32,
) -> Result<AnyPool, StoreError> {
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA busy_timeout = 10000")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await?;
    Ok(pool)
}

#[cfg(test)]
mod schema_tests {
    use super::{Backend, SCHEMA, schema_statement};

    #[test]
    fn postgres_names_each_byte_string_bytea_and_sqlite_takes_the_schema_as_written() {
        assert!(SCHEMA.iter().any(|s| s.contains("BLOB")));
        for statement in SCHEMA {
            let postgres = schema_statement(Backend::Postgres, statement);
            assert!(!postgres.contains("BLOB"), "{postgres}");
            assert_eq!(
                postgres.matches("BYTEA").count(),
                statement.matches("BLOB").count()
            );
            assert_eq!(schema_statement(Backend::Sqlite, statement), *statement);
        }
    }
}
