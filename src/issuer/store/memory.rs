//! The in-process backend: maps behind one `std::sync::Mutex`, which is never
//! held across an `.await` (every method here is synchronous). Lost on restart
//! and private to one replica.
//!
//! Memory stays bounded: an index ordered by "keep until" lets every write purge
//! a batch of expired entries cheaply, and past the capacity writes are refused
//! ([`StoreError::Full`]) rather than evicting live state (evicting a code's
//! used-marker would make a replay look fresh, and a grant's record would
//! make its replays look unknown).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    code_retain, decide, now_secs, revocation_headroom, rotation, CodeRecord, Decision, Digest,
    Kind, RefreshRecord, Rotation, StoreError, Use,
};

/// How many expired entries one write purges at most, so no single call holds
/// the lock for long.
const PURGE_BATCH: usize = 1024;

/// An entry's identity in the expiry index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A grant's refresh record by the digest of its handle.
    Refresh(Digest),
    /// An authorization code by digest.
    Code(Digest),
    /// A revocation.
    Revoked(Kind, String),
}

/// A single-use entry: the record, whether it was used, and until when it is kept.
struct Slot<T> {
    record: T,
    used: bool,
    retain: u64,
}

/// Everything the mutex guards.
#[derive(Default)]
struct State {
    /// Grants' current refresh records, kept until they expire.
    refresh: HashMap<Digest, RefreshRecord>,
    codes: HashMap<Digest, Slot<CodeRecord>>,
    families: HashMap<String, u64>,
    access: HashMap<String, u64>,
    /// `(keep until, key)` for every entry above; its length is the entry count.
    expiry: BTreeSet<(u64, Key)>,
}

impl State {
    /// The revocation map of one kind.
    fn revoked(&mut self, kind: Kind) -> &mut HashMap<String, u64> {
        match kind {
            Kind::Family => &mut self.families,
            Kind::Access => &mut self.access,
        }
    }

    /// Removes up to `limit` entries whose keep-until is at or before `now`.
    fn purge(&mut self, now: u64, limit: usize) {
        for _ in 0..limit {
            match self.expiry.first() {
                Some((retain, _)) if *retain <= now => {}
                _ => return,
            }
            let Some((retain, key)) = self.expiry.pop_first() else {
                return;
            };
            match key {
                Key::Refresh(d) => {
                    if self.refresh.get(&d).is_some_and(|r| r.expires_at == retain) {
                        self.refresh.remove(&d);
                    }
                }
                Key::Code(d) => {
                    if self.codes.get(&d).is_some_and(|s| s.retain == retain) {
                        self.codes.remove(&d);
                    }
                }
                Key::Revoked(kind, id) => {
                    let map = self.revoked(kind);
                    if map.get(&id) == Some(&retain) {
                        map.remove(&id);
                    }
                }
            }
        }
    }

    /// Puts `record` in the place of a grant's record, if any, with its
    /// index entry; one already expired takes the old one's place away.
    fn replace_refresh(&mut self, now: u64, grant: &Digest, record: RefreshRecord) {
        if let Some(old) = self.refresh.remove(grant) {
            self.expiry.remove(&(old.expires_at, Key::Refresh(*grant)));
        }
        if record.expires_at > now {
            self.expiry
                .insert((record.expires_at, Key::Refresh(*grant)));
            self.refresh.insert(*grant, record);
        }
    }

    /// Checks there is room for one new entry. Callers purge first, and a
    /// purge batch removes every expired entry unless there are more than a
    /// batch of them (then the store is far below capacity afterwards).
    fn reserve(&self, capacity: usize) -> Result<(), StoreError> {
        if self.expiry.len() >= capacity {
            return Err(StoreError::Full(capacity));
        }
        Ok(())
    }
}

/// The memory backend.
pub(super) struct MemoryStore {
    state: Mutex<State>,
    capacity: usize,
}

impl MemoryStore {
    /// An empty store holding at most `capacity` entries.
    pub(super) fn new(capacity: usize) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            capacity,
        }
    }

    /// Locks the state. A poisoned lock is taken over: no critical section
    /// here leaves the maps half-updated in a way that matters.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// See [`super::Store::put_refresh`].
    pub(super) fn put_refresh(
        &self,
        grant: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        self.put_refresh_at(now_secs(), grant, record)
    }

    fn put_refresh_at(
        &self,
        now: u64,
        grant: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        if !state.refresh.contains_key(grant) {
            state.reserve(self.capacity)?;
        }
        state.replace_refresh(now, grant, record.clone());
        Ok(())
    }

    /// See [`super::Store::rotate_refresh`].
    pub(super) fn rotate_refresh(
        &self,
        grant: &Digest,
        generation: u32,
        presented: &Digest,
        next: &RefreshRecord,
    ) -> Result<Use<RefreshRecord>, StoreError> {
        let now = now_secs();
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        let Some(current) = state.refresh.get(grant) else {
            return Ok(Use::NotFound);
        };
        Ok(match rotation(now, current, generation, presented, next) {
            Rotation::NotFound => Use::NotFound,
            Rotation::Reused => Use::Reused(current.clone()),
            Rotation::Write => {
                let previous = current.clone();
                state.replace_refresh(now, grant, next.clone());
                Use::Fresh(previous)
            }
        })
    }

    /// See [`super::Store::get_refresh`].
    pub(super) fn get_refresh(&self, grant: &Digest) -> Result<Option<RefreshRecord>, StoreError> {
        let now = now_secs();
        let state = self.lock();
        Ok(state
            .refresh
            .get(grant)
            .filter(|r| now < r.expires_at)
            .cloned())
    }

    /// See [`super::Store::put_code`].
    pub(super) fn put_code(&self, digest: &Digest, record: &CodeRecord) -> Result<(), StoreError> {
        let now = now_secs();
        let retain = code_retain(record);
        if retain <= now {
            return Ok(());
        }
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        let used = match state.codes.get(digest) {
            Some(old) => {
                let (old_retain, used) = (old.retain, old.used);
                state.expiry.remove(&(old_retain, Key::Code(*digest)));
                used
            }
            None => {
                state.reserve(self.capacity)?;
                false
            }
        };
        state.expiry.insert((retain, Key::Code(*digest)));
        state.codes.insert(
            *digest,
            Slot {
                record: record.clone(),
                used,
                retain,
            },
        );
        Ok(())
    }

    /// See [`super::Store::use_code`].
    pub(super) fn use_code(&self, digest: &Digest) -> Result<Use<CodeRecord>, StoreError> {
        let now = now_secs();
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        let Some(slot) = state.codes.get_mut(digest) else {
            return Ok(Use::NotFound);
        };
        Ok(consume(now, slot.record.expires_at, slot))
    }

    /// See [`super::Store::revoke_family`] and [`super::Store::revoke_access`].
    pub(super) fn revoke(&self, kind: Kind, id: &str, until: u64) -> Result<(), StoreError> {
        self.revoke_at(now_secs(), kind, id, until)
    }

    fn revoke_at(&self, now: u64, kind: Kind, id: &str, until: u64) -> Result<(), StoreError> {
        if until <= now {
            return Ok(());
        }
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        match state.revoked(kind).get(id).copied() {
            Some(old) if old >= until => return Ok(()),
            Some(old) => {
                state
                    .expiry
                    .remove(&(old, Key::Revoked(kind, id.to_owned())));
            }
            // Revocations have room of their own beyond the capacity: a store
            // full of grants must still be able to end them.
            None => state.reserve(
                self.capacity
                    .saturating_add(revocation_headroom(self.capacity)),
            )?,
        }
        state
            .expiry
            .insert((until, Key::Revoked(kind, id.to_owned())));
        state.revoked(kind).insert(id.to_owned(), until);
        Ok(())
    }

    /// See [`super::Store::is_family_revoked`] and [`super::Store::is_access_revoked`].
    pub(super) fn is_revoked(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let now = now_secs();
        let mut state = self.lock();
        Ok(state
            .revoked(kind)
            .get(id)
            .is_some_and(|until| now < *until))
    }

    /// Whether any of `ids` is revoked now, under one lock.
    pub(super) fn is_any_revoked(&self, ids: &[(Kind, &str)]) -> Result<bool, StoreError> {
        let now = now_secs();
        let mut state = self.lock();
        Ok(ids.iter().any(|(kind, id)| {
            state
                .revoked(*kind)
                .get(*id)
                .is_some_and(|until| now < *until)
        }))
    }

    /// How many entries are held (live or not yet purged).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().expiry.len()
    }
}

/// Applies [`decide`] to a slot, marking it used on [`Decision::MarkFresh`].
fn consume<T: Clone>(now: u64, expires_at: u64, slot: &mut Slot<T>) -> Use<T> {
    match decide(now, expires_at, slot.retain, slot.used) {
        Decision::NotFound => Use::NotFound,
        Decision::Reused => Use::Reused(slot.record.clone()),
        Decision::MarkFresh => {
            slot.used = true;
            Use::Fresh(slot.record.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: u64, family_expires_at: u64) -> RefreshRecord {
        RefreshRecord {
            family: "f".into(),
            client_id: "c".into(),
            subject: "s".into(),
            scope: "a b".into(),
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

    /// The record that rotating `current` with the token `token` makes.
    fn rotated(current: &RefreshRecord, expires_at: u64, token: Digest) -> RefreshRecord {
        RefreshRecord {
            expires_at,
            refresh_count: current.refresh_count + 1,
            token,
            ..current.clone()
        }
    }

    #[test]
    fn full_store_refuses_without_evicting() {
        let store = MemoryStore::new(3);
        let now = now_secs();
        store
            .put_refresh_at(now, &[2; 32], &record(now + 60, now + 600))
            .unwrap();
        store
            .put_refresh_at(now, &[3; 32], &record(now + 60, now + 600))
            .unwrap();
        store.revoke_at(now, Kind::Access, "j", now + 60).unwrap();
        assert_eq!(store.len(), 3);
        // Full of live entries: refused, and nothing live was evicted.
        let err = store
            .put_refresh_at(now, &[4; 32], &record(now + 60, now + 600))
            .unwrap_err();
        assert!(matches!(err, StoreError::Full(3)), "{err}");
        // Revocations have room of their own, bounded too.
        store.revoke_at(now, Kind::Family, "f", now + 60).unwrap();
        assert!(store.is_revoked(Kind::Family, "f").unwrap());
        let err = store
            .revoke_at(now, Kind::Family, "g", now + 60)
            .unwrap_err();
        assert!(matches!(err, StoreError::Full(4)), "{err}");
        assert!(store.get_refresh(&[2; 32]).unwrap().is_some());
        // Rotating a grant, or writing it again, needs no room.
        let first = record(now + 60, now + 600);
        let next = rotated(&first, now + 90, [8; 32]);
        assert_eq!(
            store.rotate_refresh(&[3; 32], 0, &[7; 32], &next).unwrap(),
            Use::Fresh(first)
        );
        store.put_refresh_at(now, &[3; 32], &next).unwrap();
        // Extending a revocation needs no room either; shortening is ignored.
        store.revoke_at(now, Kind::Access, "j", now + 120).unwrap();
        store.revoke_at(now, Kind::Access, "j", now + 1).unwrap();
        assert_eq!(store.lock().access.get("j"), Some(&(now + 120)));
        assert_eq!(store.len(), 4);
    }

    /// However often a grant is refreshed, it is one entry, kept until its
    /// current token expires; rotated tokens are still recognised.
    #[test]
    fn a_grant_is_one_entry_however_often_it_rotates() {
        let store = MemoryStore::new(usize::MAX);
        let now = now_secs();
        let mut current = record(now + 60, now + 600);
        store.put_refresh_at(now, &[1; 32], &current).unwrap();
        for generation in 0..50u32 {
            let mut token = [0u8; 32];
            token[..4].copy_from_slice(&(generation + 1).to_be_bytes());
            let next = rotated(&current, now + 61 + u64::from(generation), token);
            let outcome = store
                .rotate_refresh(&[1; 32], generation, &current.token, &next)
                .unwrap();
            assert_eq!(outcome, Use::Fresh(current));
            current = next;
        }
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.lock().expiry.first().map(|(retain, _)| *retain),
            Some(now + 110)
        );
        // The first token, 50 rotations ago, is a replay; the current one
        // with a wrong digest, or a generation not reached, is unknown.
        let next = rotated(&current, now + 200, [9; 32]);
        assert_eq!(
            store.rotate_refresh(&[1; 32], 0, &[7; 32], &next).unwrap(),
            Use::Reused(current.clone())
        );
        assert_eq!(
            store.rotate_refresh(&[1; 32], 50, &[7; 32], &next).unwrap(),
            Use::NotFound
        );
        assert_eq!(
            store.rotate_refresh(&[1; 32], 51, &[9; 32], &next).unwrap(),
            Use::NotFound
        );
        assert_eq!(
            store
                .rotate_refresh(&[2; 32], 50, &current.token, &next)
                .unwrap(),
            Use::NotFound
        );
        assert_eq!(store.get_refresh(&[1; 32]).unwrap(), Some(current));
    }

    #[test]
    fn expired_entries_make_room() {
        let store = MemoryStore::new(2);
        let now = now_secs();
        store
            .put_refresh_at(now - 100, &[1; 32], &record(now - 50, now - 40))
            .unwrap();
        store
            .revoke_at(now - 100, Kind::Family, "old", now - 30)
            .unwrap();
        assert_eq!(store.len(), 2);
        store
            .put_refresh_at(now, &[2; 32], &record(now + 60, now + 600))
            .unwrap();
        assert_eq!(store.len(), 1);
        assert!(!store.is_revoked(Kind::Family, "old").unwrap());
        assert_eq!(store.get_refresh(&[1; 32]).unwrap(), None);
    }

    #[test]
    fn purge_is_batched_and_keeps_live_entries() {
        let store = MemoryStore::new(usize::MAX);
        let now = now_secs();
        for i in 0..(PURGE_BATCH as u32 + 10) {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            store
                .put_refresh_at(now - 100, &d, &record(now - 50, now - 40))
                .unwrap();
        }
        store
            .put_refresh_at(now, &[9; 32], &record(now + 60, now + 600))
            .unwrap();
        assert_eq!(store.len(), 11);
        store.revoke_at(now, Kind::Family, "f", now + 60).unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.get_refresh(&[9; 32]).unwrap().is_some());
        assert!(store.is_revoked(Kind::Family, "f").unwrap());
        assert!(!store.is_revoked(Kind::Access, "f").unwrap());
    }
}
