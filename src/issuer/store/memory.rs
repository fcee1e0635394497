//! The in-process backend: maps behind one `std::sync::Mutex`, which is never
//! held across an `.await` (every method here is synchronous). Lost on restart
//! and private to one replica.
//!
//! Memory stays bounded: an index ordered by "keep until" lets every write purge
//! a batch of expired entries cheaply, and past the capacity writes are refused
//! ([`StoreError::Full`]) rather than evicting live state (evicting a
//! used-marker would make a replay look fresh).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    code_retain, decide, now_secs, refresh_retain, revocation_headroom, CodeRecord, Decision,
    Digest, Kind, RefreshRecord, StoreError, Use,
};

/// How many expired entries one write purges at most, so no single call holds
/// the lock for long.
const PURGE_BATCH: usize = 1024;

/// An entry's identity in the expiry index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A refresh token by digest.
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
    refresh: HashMap<Digest, Slot<RefreshRecord>>,
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
                    if self.refresh.get(&d).is_some_and(|s| s.retain == retain) {
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
        digest: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        self.put_refresh_at(now_secs(), digest, record)
    }

    fn put_refresh_at(
        &self,
        now: u64,
        digest: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        let old = state.refresh.get(digest).map(|old| (old.retain, old.used));
        let used = old.is_some_and(|(_, used)| used);
        let retain = refresh_retain(record, used);
        if retain <= now {
            return Ok(());
        }
        match old {
            Some((old_retain, _)) => {
                state.expiry.remove(&(old_retain, Key::Refresh(*digest)));
            }
            None => state.reserve(self.capacity)?,
        }
        state.expiry.insert((retain, Key::Refresh(*digest)));
        state.refresh.insert(
            *digest,
            Slot {
                record: record.clone(),
                used,
                retain,
            },
        );
        Ok(())
    }

    /// See [`super::Store::use_refresh`].
    pub(super) fn use_refresh(&self, digest: &Digest) -> Result<Use<RefreshRecord>, StoreError> {
        let now = now_secs();
        let mut state = self.lock();
        state.purge(now, PURGE_BATCH);
        let Some(slot) = state.refresh.get_mut(digest) else {
            return Ok(Use::NotFound);
        };
        let outcome = consume(now, slot.record.expires_at, slot);
        if matches!(outcome, Use::Fresh(_)) {
            // Used now: its marker is kept until the family ends.
            let (old, new) = (slot.retain, refresh_retain(&slot.record, true));
            if new != old {
                slot.retain = new;
                state.expiry.remove(&(old, Key::Refresh(*digest)));
                state.expiry.insert((new, Key::Refresh(*digest)));
            }
        }
        Ok(outcome)
    }

    /// See [`super::Store::get_refresh`].
    pub(super) fn get_refresh(
        &self,
        digest: &Digest,
    ) -> Result<Option<(RefreshRecord, bool)>, StoreError> {
        let now = now_secs();
        let state = self.lock();
        Ok(state
            .refresh
            .get(digest)
            .filter(|s| now < s.record.expires_at && now < s.retain)
            .map(|s| (s.record.clone(), s.used)))
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
            user_grant: true,
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
        // Overwriting an existing entry needs no room, and keeps it used.
        assert!(matches!(
            store.use_refresh(&[3; 32]).unwrap(),
            Use::Fresh(_)
        ));
        store
            .put_refresh_at(now, &[3; 32], &record(now + 60, now + 600))
            .unwrap();
        assert!(matches!(
            store.use_refresh(&[3; 32]).unwrap(),
            Use::Reused(_)
        ));
        // Extending a revocation needs no room either; shortening is ignored.
        store.revoke_at(now, Kind::Access, "j", now + 120).unwrap();
        store.revoke_at(now, Kind::Access, "j", now + 1).unwrap();
        assert_eq!(store.lock().access.get("j"), Some(&(now + 120)));
        assert_eq!(store.len(), 4);
    }

    /// An unused refresh token is kept until it expires, not until its
    /// family would end; a used one's marker is kept until then.
    #[test]
    fn unused_refresh_tokens_go_when_they_expire() {
        let store = MemoryStore::new(usize::MAX);
        let now = now_secs();
        store
            .put_refresh_at(now - 100, &[1; 32], &record(now - 50, now + 600))
            .unwrap();
        store
            .put_refresh_at(now, &[2; 32], &record(now + 60, now + 600))
            .unwrap();
        assert_eq!(store.len(), 1, "the expired, unused token is purged");
        assert!(matches!(
            store.use_refresh(&[2; 32]).unwrap(),
            Use::Fresh(_)
        ));
        assert_eq!(
            store.lock().expiry.first().map(|(retain, _)| *retain),
            Some(now + 600)
        );
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
