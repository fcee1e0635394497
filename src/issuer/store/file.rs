//! The file backend: one [redb](https://www.redb.org) database file, so a
//! restart loses nothing. redb locks the file, so exactly one process (one
//! replica) can have it open.
//!
//! redb is synchronous, so every operation runs on tokio's blocking pool
//! (`spawn_blocking`), never on a runtime worker. Each `use_code` and
//! `rotate_refresh` is one write transaction: redb serialises write
//! transactions, which is what makes consuming a code or rotating a grant
//! atomic. Commits are durable (fsync) before returning.
//!
//! Besides the data tables, an `expiry` table is keyed by
//! `keep-until (u64 big-endian) ‖ table tag ‖ id`, so every write can purge a
//! bounded batch of expired entries with one range scan.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    code_retain, decide, now_secs, revocation_headroom, rotation, CodeRecord, Decision, Digest,
    Kind, RefreshRecord, Rotation, StoreError, Use,
};

/// A table of records by digest: digest → JSON.
type Slots = TableDefinition<'static, &'static [u8; 32], &'static [u8]>;
/// A table of revocations: id → until (unix seconds).
type Revocations = TableDefinition<'static, &'static str, u64>;

/// Grants' current refresh records: digest of the handle → JSON
/// [`RefreshRecord`].
const GRANTS: Slots = TableDefinition::new("refresh_grants");
/// Refresh tokens as files kept them before a grant was one entry (one
/// entry per token). Deleted when such a file is opened, with their index
/// lines: those tokens are not accepted any more.
const LEGACY_REFRESH: Slots = TableDefinition::new("refresh");
/// Authorization codes: digest → JSON [`Stored<CodeRecord>`].
const CODES: Slots = TableDefinition::new("codes");
/// Revoked families: family → until.
const FAMILIES: Revocations = TableDefinition::new("revoked_families");
/// Revoked access tokens: jti → until.
const ACCESS: Revocations = TableDefinition::new("revoked_access");
/// The expiry index: `keep-until ‖ tag ‖ id` → ().
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");

/// Expiry-index tags, one per data table.
const TAG_LEGACY_REFRESH: u8 = 0;
const TAG_CODE: u8 = 1;
const TAG_FAMILY: u8 = 2;
const TAG_ACCESS: u8 = 3;
const TAG_GRANT: u8 = 4;

/// How many expired entries one write purges at most, so no write grows large.
const PURGE_BATCH: usize = 256;

/// The page cache redb may use; the store is small, the default (1 GiB) is not.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Longest a store operation may take, waiting for its turn included, as
/// with redis: a hung disk (a stuck volume) gets requests a 503, not a wait
/// without end.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Reading operations on blocking threads at once. One that timed out keeps
/// its place until its thread returns, so a hung disk holds at most this
/// many of the blocking pool's threads (which DNS lookups and argon2 share),
/// and [`WRITES_AT_ONCE`] more.
const READS_AT_ONCE: usize = 32;
/// Writing operations on blocking threads at once. redb runs one write
/// transaction at a time, each ended by a disk sync; writes have places of
/// their own so that a burst of them (token requests) waiting for each
/// other's syncs cannot take the places of the revocation reads every
/// proxied request with a built-in token makes.
const WRITES_AT_ONCE: usize = 4;

/// What an operation does to the database file, choosing its places.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// A single-use entry as stored: the record and whether it was used.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    record: T,
    used: bool,
}

/// Maps any redb error to [`StoreError::Backend`].
trait OrBackend<T> {
    /// The value, or the error as a backend failure.
    fn db(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend(format!("database file: {}", e.into())))
    }
}

/// JSON bytes of a stored entry.
fn encode<T: Serialize>(value: &Stored<T>) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A stored entry from JSON bytes.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Stored<T>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The expiry-index key of one entry.
fn expiry_key(retain: u64, tag: u8, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + id.len());
    key.extend_from_slice(&retain.to_be_bytes());
    key.push(tag);
    key.extend_from_slice(id);
    key
}

/// The revocation table of one kind, and its expiry tag.
fn revocations(kind: Kind) -> (Revocations, u8) {
    match kind {
        Kind::Family => (FAMILIES, TAG_FAMILY),
        Kind::Access => (ACCESS, TAG_ACCESS),
    }
}

/// The file backend.
/// The database, for one operation on a blocking thread; its writes commit
/// only while the operation's caller still waits for them.
struct Held<'a> {
    db: &'a Database,
    given_up: &'a AtomicBool,
}

impl std::ops::Deref for Held<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.db
    }
}

impl Held<'_> {
    /// Commits `txn`, unless the caller gave up on this operation (then
    /// the transaction is dropped, which aborts it).
    fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        if self.given_up.load(Ordering::SeqCst) {
            return Err(StoreError::Backend(
                "given up before the write was committed".to_owned(),
            ));
        }
        txn.commit().db()
    }

    /// Commits `txn` when `outcome` used something up (a code, a grant's
    /// token), else aborts it: a replay or a miss costs no disk write.
    fn commit_if_fresh<T>(
        &self,
        txn: WriteTransaction,
        outcome: Use<T>,
    ) -> Result<Use<T>, StoreError> {
        if matches!(outcome, Use::Fresh(_)) {
            self.commit(txn)?;
        } else {
            txn.abort().db()?;
        }
        Ok(outcome)
    }
}

pub(super) struct FileStore {
    db: Arc<Database>,
    /// [`READS_AT_ONCE`] places on the blocking pool for reads.
    reads: Arc<tokio::sync::Semaphore>,
    /// [`WRITES_AT_ONCE`] places on the blocking pool for writes.
    writes: Arc<tokio::sync::Semaphore>,
    /// [`TIMEOUT`], shorter in tests.
    timeout: Duration,
    /// The most entries it holds (revocations: [`revocation_headroom`] more).
    capacity: usize,
}

impl FileStore {
    /// Creates or opens the database file, checks its integrity, and makes
    /// sure every table exists (so read transactions never miss one). Past
    /// `capacity` entries, new ones are refused ([`StoreError::Full`]).
    pub(super) async fn open(path: PathBuf, capacity: usize) -> Result<Self, StoreError> {
        let db = tokio::task::spawn_blocking(move || {
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .create(&path)
                .map_err(|e| {
                    StoreError::Backend(format!("opening database file {}: {e}", path.display()))
                })?;
            let txn = db.begin_write().db()?;
            if txn.delete_table(LEGACY_REFRESH).db()? {
                drop_index_lines(&txn, TAG_LEGACY_REFRESH)?;
            }
            txn.open_table(GRANTS).db()?;
            txn.open_table(CODES).db()?;
            txn.open_table(FAMILIES).db()?;
            txn.open_table(ACCESS).db()?;
            txn.open_table(EXPIRY).db()?;
            txn.commit().db()?;
            Ok::<_, StoreError>(db)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))??;
        Ok(FileStore {
            db: Arc::new(db),
            reads: Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE)),
            writes: Arc::new(tokio::sync::Semaphore::new(WRITES_AT_ONCE)),
            timeout: TIMEOUT,
            capacity,
        })
    }

    /// Runs `f` on the blocking pool with the database, within the
    /// timeout and one of the places for its kind of `access`.
    async fn run<T, F>(&self, access: Access, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Held<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let places = Arc::clone(match access {
            Access::Read => &self.reads,
            Access::Write => &self.writes,
        });
        let given_up = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&given_up);
        let work = async move {
            let place = places
                .acquire_owned()
                .await
                .map_err(|_| StoreError::Backend("store closed".to_owned()))?;
            tokio::task::spawn_blocking(move || {
                let _place = place;
                f(&Held {
                    db: &db,
                    given_up: &flag,
                })
            })
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        outcome.map_err(|_| {
            // A write still under way must not land: its caller answers
            // 503, and a refresh token used up behind that answer would
            // make the client's retry look like a replay.
            given_up.store(true, Ordering::SeqCst);
            StoreError::Backend(format!(
                "the database file did not answer within {}s",
                self.timeout.as_secs_f32()
            ))
        })?
    }

    /// See [`super::Store::put_refresh`].
    pub(super) async fn put_refresh(
        &self,
        grant: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        let (grant, record, capacity) = (*grant, record.clone(), self.capacity);
        self.run(Access::Write, move |db| {
            let now = now_secs();
            if record.expires_at <= now {
                return Ok(());
            }
            let mut txn = db.begin_write().db()?;
            purge(&txn, now)?;
            if txn.open_table(GRANTS).db()?.get(&grant).db()?.is_none() {
                txn = room_for_one(db, txn, capacity)?;
            }
            replace_grant(&txn, &grant, &record)?;
            db.commit(txn)
        })
        .await
    }

    /// See [`super::Store::rotate_refresh`]. One write transaction, which
    /// commits only when it rotates.
    pub(super) async fn rotate_refresh(
        &self,
        grant: &Digest,
        generation: u32,
        presented: &Digest,
        next: &RefreshRecord,
    ) -> Result<Use<RefreshRecord>, StoreError> {
        let (grant, presented, next) = (*grant, *presented, next.clone());
        self.run(Access::Write, move |db| {
            let now = now_secs();
            let txn = db.begin_write().db()?;
            let current = read_grant(&txn.open_table(GRANTS).db()?, &grant)?;
            let outcome = match current {
                None => Use::NotFound,
                Some(current) => match rotation(now, &current, generation, &presented, &next) {
                    Rotation::NotFound => Use::NotFound,
                    Rotation::Reused => Use::Reused(current),
                    Rotation::Write => {
                        replace_grant(&txn, &grant, &next)?;
                        Use::Fresh(current)
                    }
                },
            };
            db.commit_if_fresh(txn, outcome)
        })
        .await
    }

    /// See [`super::Store::get_refresh`].
    pub(super) async fn get_refresh(
        &self,
        grant: &Digest,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let grant = *grant;
        self.run(Access::Read, move |db| {
            let now = now_secs();
            let txn = db.begin_read().db()?;
            let record = read_grant(&txn.open_table(GRANTS).db()?, &grant)?;
            Ok(record.filter(|r| now < r.expires_at))
        })
        .await
    }

    /// See [`super::Store::put_code`].
    pub(super) async fn put_code(
        &self,
        digest: &Digest,
        record: &CodeRecord,
    ) -> Result<(), StoreError> {
        put_code(self, *digest, record.clone()).await
    }

    /// See [`super::Store::use_code`].
    pub(super) async fn use_code(&self, digest: &Digest) -> Result<Use<CodeRecord>, StoreError> {
        use_code(self, *digest).await
    }

    /// See [`super::Store::revoke_family`] and [`super::Store::revoke_access`].
    pub(super) async fn revoke(&self, kind: Kind, id: &str, until: u64) -> Result<(), StoreError> {
        let id = id.to_owned();
        // Revocations have room of their own beyond the capacity: a store
        // full of grants must still be able to end them.
        let capacity = self
            .capacity
            .saturating_add(revocation_headroom(self.capacity));
        self.run(Access::Write, move |db| {
            let now = now_secs();
            if until <= now {
                return Ok(());
            }
            let (def, tag) = revocations(kind);
            let mut txn = db.begin_write().db()?;
            purge(&txn, now)?;
            if txn.open_table(def).db()?.get(id.as_str()).db()?.is_none() {
                txn = room_for_one(db, txn, capacity)?;
            }
            {
                let mut table = txn.open_table(def).db()?;
                let old = table.get(id.as_str()).db()?.map(|g| g.value());
                let mut expiry = txn.open_table(EXPIRY).db()?;
                match old {
                    Some(old) if old >= until => {}
                    _ => {
                        if let Some(old) = old {
                            expiry
                                .remove(expiry_key(old, tag, id.as_bytes()).as_slice())
                                .db()?;
                        }
                        table.insert(id.as_str(), until).db()?;
                        expiry
                            .insert(expiry_key(until, tag, id.as_bytes()).as_slice(), ())
                            .db()?;
                    }
                }
            }
            db.commit(txn)
        })
        .await
    }

    /// See [`super::Store::is_family_revoked`] and [`super::Store::is_access_revoked`].
    pub(super) async fn is_revoked(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(Access::Read, move |db| {
            let now = now_secs();
            let txn = db.begin_read().db()?;
            let table = txn.open_table(revocations(kind).0).db()?;
            let until = table.get(id.as_str()).db()?.map(|g| g.value());
            Ok(until.is_some_and(|until| now < until))
        })
        .await
    }
}

impl FileStore {
    /// Whether any of `ids` is revoked now, in one read transaction.
    pub(super) async fn is_any_revoked(&self, ids: &[(Kind, &str)]) -> Result<bool, StoreError> {
        let ids: Vec<(Kind, String)> = ids.iter().map(|(k, id)| (*k, (*id).to_owned())).collect();
        self.run(Access::Read, move |db| {
            let now = now_secs();
            let txn = db.begin_read().db()?;
            for (kind, id) in &ids {
                let table = txn.open_table(revocations(*kind).0).db()?;
                if table
                    .get(id.as_str())
                    .db()?
                    .is_some_and(|until| now < until.value())
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }
}

/// Stores a code (unused, unless it is being overwritten while used), and
/// purges a batch of expired entries, in one write transaction.
async fn put_code(store: &FileStore, digest: Digest, record: CodeRecord) -> Result<(), StoreError> {
    let capacity = store.capacity;
    store
        .run(Access::Write, move |db| {
            let now = now_secs();
            let retain = code_retain(&record);
            if retain <= now {
                return Ok(());
            }
            let mut txn = db.begin_write().db()?;
            purge(&txn, now)?;
            if txn.open_table(CODES).db()?.get(&digest).db()?.is_none() {
                txn = room_for_one(db, txn, capacity)?;
            }
            {
                let mut table = txn.open_table(CODES).db()?;
                let mut expiry = txn.open_table(EXPIRY).db()?;
                let old = table
                    .get(&digest)
                    .db()?
                    .map(|bytes| decode::<CodeRecord>(bytes.value()));
                let used = match old {
                    // Keep a used marker used; move its index entry.
                    Some(Ok(old)) => {
                        let key = expiry_key(code_retain(&old.record), TAG_CODE, &digest);
                        expiry.remove(key.as_slice()).db()?;
                        old.used
                    }
                    // An undecodable old entry is replaced; its index entry
                    // stays and is dropped harmlessly when it comes due.
                    Some(Err(_)) | None => false,
                };
                let bytes = encode(&Stored { record, used })?;
                table.insert(&digest, bytes.as_slice()).db()?;
                expiry
                    .insert(expiry_key(retain, TAG_CODE, &digest).as_slice(), ())
                    .db()?;
            }
            db.commit(txn)
        })
        .await
}

/// Consumes a code in one write transaction. Commits only when it marks
/// the code used, so a replay or a miss costs no disk write.
async fn use_code(store: &FileStore, digest: Digest) -> Result<Use<CodeRecord>, StoreError> {
    // A miss (a made-up token or code, which anyone may send) takes no
    // write place, let alone the write lock.
    let known = store
        .run(Access::Read, move |db| {
            let txn = db.begin_read().db()?;
            let table = txn.open_table(CODES).db()?;
            // A local, so that the entry's page is let go before the read
            // transaction ends: a temporary in the block's value would
            // outlive the transaction, and a commit on another thread could
            // free the page it still holds (redb's debug build asserts that
            // it does not).
            let entry = table.get(&digest).db()?;
            Ok(entry.is_some())
        })
        .await?;
    if !known {
        return Ok(Use::NotFound);
    }
    store
        .run(Access::Write, move |db| {
            let now = now_secs();
            let txn = db.begin_write().db()?;
            let outcome = {
                let mut table = txn.open_table(CODES).db()?;
                let stored = match table.get(&digest).db()? {
                    Some(bytes) => Some(decode::<CodeRecord>(bytes.value())?),
                    None => None,
                };
                match stored {
                    None => Use::NotFound,
                    Some(mut stored) => {
                        let retain = code_retain(&stored.record);
                        match decide(now, stored.record.expires_at, retain, stored.used) {
                            Decision::NotFound => Use::NotFound,
                            Decision::Reused => Use::Reused(stored.record),
                            Decision::MarkFresh => {
                                // Kept as long as before (a code's marker
                                // has the same keep-until used or not).
                                stored.used = true;
                                let bytes = encode(&stored)?;
                                table.insert(&digest, bytes.as_slice()).db()?;
                                Use::Fresh(stored.record)
                            }
                        }
                    }
                }
            };
            db.commit_if_fresh(txn, outcome)
        })
        .await
}

/// Checks there is room for one new entry in `txn`, which purged first
/// (every entry has one line in the expiry index). Without room, the purge
/// is committed before the refusal: a store over its capacity (a file
/// written before there was one, revocations in their headroom) shrinks a
/// purge batch per write until there is room again.
fn room_for_one(
    db: &Held<'_>,
    txn: WriteTransaction,
    capacity: usize,
) -> Result<WriteTransaction, StoreError> {
    let entries = txn.open_table(EXPIRY).db()?.len().db()?;
    if usize::try_from(entries).is_ok_and(|entries| entries < capacity) {
        return Ok(txn);
    }
    db.commit(txn)?;
    Err(StoreError::Full(capacity))
}

/// Removes up to [`PURGE_BATCH`] entries whose keep-until is at or before `now`.
fn purge(txn: &WriteTransaction, now: u64) -> Result<(), StoreError> {
    let mut expiry = txn.open_table(EXPIRY).db()?;
    let upper = now.saturating_add(1).to_be_bytes();
    let due: Vec<Vec<u8>> = expiry
        .range::<&[u8]>(..upper.as_slice())
        .db()?
        .take(PURGE_BATCH)
        .map(|entry| entry.map(|(key, _)| key.value().to_vec()).db())
        .collect::<Result<_, _>>()?;
    for key in due {
        expiry.remove(key.as_slice()).db()?;
        let Some((head, id)) = key.split_at_checked(9) else {
            continue;
        };
        let mut retain = [0u8; 8];
        retain.copy_from_slice(&head[..8]);
        let retain = u64::from_be_bytes(retain);
        match head[8] {
            TAG_GRANT => purge_grant(txn, id, retain)?,
            TAG_CODE => purge_code(txn, id, retain)?,
            TAG_FAMILY => purge_revocation(txn, FAMILIES, id, retain)?,
            TAG_ACCESS => purge_revocation(txn, ACCESS, id, retain)?,
            _ => {}
        }
    }
    Ok(())
}

/// Removes a code whose index entry came due, if it still has that
/// keep-until (or cannot be decoded at all).
fn purge_code(txn: &WriteTransaction, id: &[u8], retain: u64) -> Result<(), StoreError> {
    let Ok(digest) = <&[u8; 32]>::try_from(id) else {
        return Ok(());
    };
    let mut table = txn.open_table(CODES).db()?;
    let due = match table.get(digest).db()? {
        Some(bytes) => {
            decode::<CodeRecord>(bytes.value()).map_or(true, |s| code_retain(&s.record) <= retain)
        }
        None => false,
    };
    if due {
        table.remove(digest).db()?;
    }
    Ok(())
}

/// Removes a grant whose index entry came due, if its current token still
/// expires then (a rotation since has another index entry), or it cannot be
/// decoded at all.
fn purge_grant(txn: &WriteTransaction, id: &[u8], retain: u64) -> Result<(), StoreError> {
    let Ok(grant) = <&[u8; 32]>::try_from(id) else {
        return Ok(());
    };
    let mut table = txn.open_table(GRANTS).db()?;
    let due = match table.get(grant).db()? {
        Some(bytes) => decode_grant(bytes.value()).map_or(true, |r| r.expires_at <= retain),
        None => false,
    };
    if due {
        table.remove(grant).db()?;
    }
    Ok(())
}

/// A grant's record, if the table has one.
fn read_grant(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    grant: &Digest,
) -> Result<Option<RefreshRecord>, StoreError> {
    // A local, so that the entry's page is let go before the transaction
    // ends (see `use_code`).
    let entry = table.get(grant).db()?;
    let record = match &entry {
        Some(bytes) => Some(decode_grant(bytes.value())?),
        None => None,
    };
    Ok(record)
}

/// Writes a grant's record in the place of the one it has, if any, moving
/// its index line; a record already expired takes the old one's place away.
fn replace_grant(
    txn: &WriteTransaction,
    grant: &Digest,
    record: &RefreshRecord,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(GRANTS).db()?;
    let mut expiry = txn.open_table(EXPIRY).db()?;
    let old = read_grant(&table, grant);
    if let Ok(Some(old)) = old {
        expiry
            .remove(expiry_key(old.expires_at, TAG_GRANT, grant).as_slice())
            .db()?;
    }
    // An undecodable old entry is replaced; its index line stays and is
    // dropped harmlessly when it comes due.
    if record.expires_at <= now_secs() {
        table.remove(grant).db()?;
        return Ok(());
    }
    let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    table.insert(grant, bytes.as_slice()).db()?;
    expiry
        .insert(
            expiry_key(record.expires_at, TAG_GRANT, grant).as_slice(),
            (),
        )
        .db()?;
    Ok(())
}

/// A grant's record from its JSON bytes.
fn decode_grant(bytes: &[u8]) -> Result<RefreshRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Removes every expiry-index line of one tag (a whole scan: only when a
/// table is dropped).
fn drop_index_lines(txn: &WriteTransaction, tag: u8) -> Result<(), StoreError> {
    let mut expiry = txn.open_table(EXPIRY).db()?;
    let lines: Vec<Vec<u8>> = expiry
        .iter()
        .db()?
        .filter_map(|entry| match entry {
            Ok((key, _)) if key.value().get(8) == Some(&tag) => Some(Ok(key.value().to_vec())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .db()?;
    for line in lines {
        expiry.remove(line.as_slice()).db()?;
    }
    Ok(())
}

/// Removes a revocation whose index entry came due, if it still ends then.
fn purge_revocation(
    txn: &WriteTransaction,
    def: Revocations,
    id: &[u8],
    until: u64,
) -> Result<(), StoreError> {
    let Ok(id) = std::str::from_utf8(id) else {
        return Ok(());
    };
    let mut table = txn.open_table(def).db()?;
    let current = table.get(id).db()?.map(|g| g.value());
    if current == Some(until) {
        table.remove(id).db()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: u64, family_expires_at: u64) -> RefreshRecord {
        RefreshRecord {
            family: "f".into(),
            client_id: "c".into(),
            subject: "s".into(),
            scope: "a".into(),
            audience: "api".into(),
            issued_at: 0,
            expires_at,
            family_expires_at,
            refresh_count: 0,
            token: [7; 32],
            previous: None,
            retry_until: 0,
            user_grant: true,
            access_expires_at: 0,
        }
    }

    /// Entry counts of (grants, codes, families, access, expiry index).
    fn counts(db: &Database) -> [u64; 5] {
        let txn = db.begin_read().unwrap();
        [
            txn.open_table(GRANTS).unwrap().len().unwrap(),
            txn.open_table(CODES).unwrap().len().unwrap(),
            txn.open_table(FAMILIES).unwrap().len().unwrap(),
            txn.open_table(ACCESS).unwrap().len().unwrap(),
            txn.open_table(EXPIRY).unwrap().len().unwrap(),
        ]
    }

    /// Writes grants that ended before now straight into the file, each
    /// with its expiry-index line (as a store whose writes stopped leaves
    /// them).
    fn put_ended(store: &FileStore, grants: impl IntoIterator<Item = Digest>) {
        let t = now_secs();
        let txn = store.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(GRANTS).unwrap();
            let mut expiry = txn.open_table(EXPIRY).unwrap();
            let bytes = serde_json::to_vec(&record(t - 50, t - 40)).unwrap();
            for grant in grants {
                table.insert(&grant, bytes.as_slice()).unwrap();
                expiry
                    .insert(expiry_key(t - 50, TAG_GRANT, &grant).as_slice(), ())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// A gate blocking threads until opened.
    #[derive(Default)]
    struct Gate(std::sync::Mutex<bool>, std::sync::Condvar);

    impl Gate {
        fn wait(&self) {
            let mut open = self.0.lock().unwrap();
            while !*open {
                open = self.1.wait(open).unwrap();
            }
        }
        fn open(&self) {
            *self.0.lock().unwrap() = true;
            self.1.notify_all();
        }
    }

    /// Opens the gate when dropped, so that a failed assertion does not
    /// leave blocking threads parked (the runtime would wait for them).
    struct OpenOnDrop(Arc<Gate>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    /// Writes on a disk that hangs fail within the timeout, hold no more
    /// than [`WRITES_AT_ONCE`] blocking threads (later ones fail without a
    /// thread) and none of the reads' places, a write given up on does not
    /// land when the disk comes back (its caller answered 503), and the
    /// store serves again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_disk_fails_operations_in_time_and_holds_few_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::open(dir.path().join("s.redb"), usize::MAX)
            .await
            .unwrap();
        store.timeout = Duration::from_millis(200);
        let store = Arc::new(store);
        let gate = Arc::new(Gate::default());
        let _open = OpenOnDrop(Arc::clone(&gate));
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut hung = tokio::task::JoinSet::new();
        for i in 0..WRITES_AT_ONCE + 8 {
            let (store, gate, started) =
                (Arc::clone(&store), Arc::clone(&gate), Arc::clone(&started));
            hung.spawn(async move {
                store
                    .run(Access::Write, move |db| {
                        started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        gate.wait();
                        let txn = db.begin_write().db()?;
                        txn.open_table(CODES)
                            .db()?
                            .insert(&[u8::try_from(i).unwrap_or(0); 32], [1u8].as_slice())
                            .db()?;
                        db.commit(txn)
                    })
                    .await
            });
        }
        while let Some(outcome) = hung.join_next().await {
            assert!(matches!(outcome.unwrap(), Err(StoreError::Backend(_))));
        }
        let count = || started.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..500 {
            if count() >= WRITES_AT_ONCE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), WRITES_AT_ONCE);
        assert!(
            store.run(Access::Write, |_| Ok(())).await.is_err(),
            "every write place is held"
        );
        assert!(
            store.run(Access::Read, |_| Ok(())).await.is_ok(),
            "reads have places of their own"
        );
        gate.open();
        for _ in 0..500 {
            if store.writes.available_permits() == WRITES_AT_ONCE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.writes.available_permits(), WRITES_AT_ONCE);
        assert_eq!(counts(&store.db)[1], 0, "a write given up on landed");
        // Within a few tries: one may miss the short timeout on a busy machine.
        let mut serving = false;
        for _ in 0..10 {
            if store.run(Access::Write, |_| Ok(())).await.is_ok() {
                serving = true;
                break;
            }
        }
        assert!(serving, "not serving again");
    }

    /// Writes queued behind redb's one write transaction at a time (a slow
    /// disk sync) do not hold up revocation reads, which every proxied
    /// request with a built-in token makes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_do_not_hold_up_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::open(dir.path().join("s.redb"), usize::MAX)
            .await
            .unwrap();
        store.timeout = Duration::from_secs(2);
        let store = Arc::new(store);
        let t = now_secs();
        store.revoke(Kind::Access, "gone", t + 60).await.unwrap();
        // A write transaction that does not end until the gate opens.
        let gate = Arc::new(Gate::default());
        let _open = OpenOnDrop(Arc::clone(&gate));
        let (db, held_gate) = (Arc::clone(&store.db), Arc::clone(&gate));
        let (began, begun) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let txn = db.begin_write().unwrap();
            began.send(()).unwrap();
            held_gate.wait();
            drop(txn);
        });
        begun.recv().unwrap();
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..READS_AT_ONCE + 8 {
            let store = Arc::clone(&store);
            writes.spawn(async move { store.revoke(Kind::Access, &format!("j{i}"), t + 60).await });
        }
        for _ in 0..500 {
            if store.writes.available_permits() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.writes.available_permits(), 0, "writes are queued");
        assert!(store.is_revoked(Kind::Access, "gone").await.unwrap());
        assert!(!store.is_revoked(Kind::Access, "j0").await.unwrap());
        gate.open();
        holder.join().unwrap();
        while writes.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_entries_without_evicting() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("s.redb"), 3).await.unwrap();
        let t = now_secs();
        store
            .put_refresh(&[2; 32], &record(t + 60, t + 600))
            .await
            .unwrap();
        store
            .put_refresh(&[3; 32], &record(t + 60, t + 600))
            .await
            .unwrap();
        store.revoke(Kind::Access, "j", t + 60).await.unwrap();
        // Full of live entries: refused, and nothing live was evicted.
        let err = store
            .put_refresh(&[4; 32], &record(t + 60, t + 600))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Full(3)), "{err}");
        assert_eq!(counts(&store.db), [2, 0, 0, 1, 3]);
        // Revocations have room of their own, bounded too.
        store.revoke(Kind::Family, "f", t + 60).await.unwrap();
        assert!(store.is_revoked(Kind::Family, "f").await.unwrap());
        let err = store.revoke(Kind::Family, "g", t + 60).await.unwrap_err();
        assert!(matches!(err, StoreError::Full(4)), "{err}");
        // Rotating a grant, or writing it again, needs no room.
        let mut next = record(t + 90, t + 600);
        next.refresh_count = 1;
        next.token = [8; 32];
        assert!(matches!(
            store
                .rotate_refresh(&[3; 32], 0, &[7; 32], &next)
                .await
                .unwrap(),
            Use::Fresh(_)
        ));
        store.put_refresh(&[3; 32], &next).await.unwrap();
        assert!(matches!(
            store
                .rotate_refresh(&[3; 32], 0, &[7; 32], &next)
                .await
                .unwrap(),
            Use::Reused(_)
        ));
        // Extending a revocation needs no room either.
        store.revoke(Kind::Access, "j", t + 120).await.unwrap();
        assert_eq!(counts(&store.db), [2, 0, 1, 1, 4]);
    }

    /// Expired entries are purged before a write checks for room.
    #[tokio::test]
    async fn expired_entries_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("s.redb"), 1).await.unwrap();
        let t = now_secs();
        put_ended(&store, [[7; 32]]);
        assert_eq!(store.get_refresh(&[7; 32]).await.unwrap(), None);
        store
            .put_refresh(&[8; 32], &record(t + 60, t + 600))
            .await
            .unwrap();
        assert_eq!(counts(&store.db), [1, 0, 0, 0, 1]);
    }

    /// A file written when every refresh token was an entry of its own
    /// loses those on opening, with their index lines, and keeps the rest.
    #[tokio::test]
    async fn refresh_tokens_of_the_older_layout_are_dropped_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let t = now_secs();
        {
            let store = FileStore::open(path.clone(), usize::MAX).await.unwrap();
            store.revoke(Kind::Access, "j", t + 60).await.unwrap();
            let txn = store.db.begin_write().unwrap();
            {
                let mut legacy = txn.open_table(LEGACY_REFRESH).unwrap();
                let mut expiry = txn.open_table(EXPIRY).unwrap();
                for i in 0..3u8 {
                    legacy.insert(&[i; 32], b"{}".as_slice()).unwrap();
                    expiry
                        .insert(
                            expiry_key(t + 600, TAG_LEGACY_REFRESH, &[i; 32]).as_slice(),
                            (),
                        )
                        .unwrap();
                }
            }
            txn.commit().unwrap();
            assert_eq!(counts(&store.db), [0, 0, 0, 1, 4]);
        }
        let store = FileStore::open(path, usize::MAX).await.unwrap();
        assert_eq!(counts(&store.db), [0, 0, 0, 1, 1]);
        let txn = store.db.begin_read().unwrap();
        assert!(txn.open_table(LEGACY_REFRESH).is_err());
        drop(txn);
        assert!(store.is_revoked(Kind::Access, "j").await.unwrap());
    }

    /// A store over its capacity once its entries have expired (an older
    /// file, written before there was one) shrinks write by write: a write
    /// refused for want of room still commits its purge.
    #[tokio::test]
    async fn a_store_over_capacity_shrinks_to_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("s.redb"), 10)
            .await
            .unwrap();
        let t = now_secs();
        let digests = (0..300u16).map(|i| {
            let mut digest = [0; 32];
            digest[..2].copy_from_slice(&i.to_be_bytes());
            digest
        });
        put_ended(&store, digests);
        let fresh = record(t + 60, t + 600);
        // More expired entries than one purge takes: refused, but smaller.
        let err = store.put_refresh(&[0xff; 32], &fresh).await.unwrap_err();
        assert!(matches!(err, StoreError::Full(10)), "{err}");
        assert_eq!(counts(&store.db), [44, 0, 0, 0, 44]);
        store.put_refresh(&[0xff; 32], &fresh).await.unwrap();
        assert_eq!(counts(&store.db), [1, 0, 0, 0, 1]);
    }

    /// Using up a value nobody stored takes no write lock: it answers while
    /// another writer holds the database.
    #[tokio::test]
    async fn a_miss_takes_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::open(dir.path().join("s.redb"), usize::MAX)
            .await
            .unwrap();
        // A write lock would hold it past any timeout: this one is long
        // enough for a busy machine.
        store.timeout = Duration::from_secs(5);
        let writer = store.db.begin_write().unwrap();
        let outcome = store.use_code(&[7u8; 32]).await;
        assert!(matches!(outcome, Ok(Use::NotFound)), "{outcome:?}");
        drop(writer);
    }

    #[tokio::test]
    async fn writes_purge_expired_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("s.redb"), usize::MAX)
            .await
            .unwrap();
        let t = now_secs();
        // Entries end at `t + ENDS`: the setup below must run before then
        // (at least ENDS - 1 seconds, as `t` is rounded down), or what it
        // asserts would already be purged.
        const ENDS: u64 = 6;
        // A grant goes when its current token expires, however long it
        // could run; rotated, it is kept until its new token expires.
        store
            .put_refresh(&[1; 32], &record(t + ENDS, t + 3600))
            .await
            .unwrap();
        store
            .put_refresh(&[5; 32], &record(t + ENDS, t + 3600))
            .await
            .unwrap();
        let mut next = record(t + 60, t + 3600);
        next.refresh_count = 1;
        next.token = [8; 32];
        assert!(matches!(
            store
                .rotate_refresh(&[5; 32], 0, &[7; 32], &next)
                .await
                .unwrap(),
            Use::Fresh(_)
        ));
        let code = CodeRecord {
            client_id: "c".into(),
            redirect_uri: "https://app/cb".into(),
            redirect_uri_sent: true,
            scope: "a".into(),
            subject: "s".into(),
            code_challenge: None,
            // Already expired, but its marker is kept for the replay grace.
            expires_at: t + ENDS - super::super::CODE_REPLAY_GRACE_SECS,
            family: "f".into(),
        };
        store.put_code(&[2; 32], &code).await.unwrap();
        store.revoke(Kind::Family, "f", t + ENDS).await.unwrap();
        store.revoke(Kind::Access, "j", t + ENDS).await.unwrap();
        // Extending a revocation moves its index entry rather than adding one.
        store.revoke(Kind::Access, "j2", t + ENDS).await.unwrap();
        store.revoke(Kind::Access, "j2", t + 3600).await.unwrap();
        assert_eq!(counts(&store.db), [2, 1, 1, 2, 6]);

        while now_secs() < t + ENDS {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store
            .put_refresh(&[3; 32], &record(t + 60, t + 600))
            .await
            .unwrap();
        assert_eq!(counts(&store.db), [2, 0, 0, 1, 3]);
        assert!(store.get_refresh(&[3; 32]).await.unwrap().is_some());
        assert_eq!(store.get_refresh(&[1; 32]).await.unwrap(), None);
        assert!(matches!(
            store
                .rotate_refresh(&[5; 32], 0, &[7; 32], &next)
                .await
                .unwrap(),
            Use::Reused(_)
        ));
        assert!(store.is_revoked(Kind::Access, "j2").await.unwrap());
    }
}
