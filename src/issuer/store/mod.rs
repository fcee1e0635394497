//! The authorization server's state: refresh tokens, authorization codes and
//! revocations, in one of three backends behind one [`Store`] handle.
//!
//! - **memory**: a mutex-guarded map in this process. Lost on restart; one
//!   replica only. Bounded to [`CAPACITY`] entries.
//! - **file**: an embedded [redb](https://www.redb.org) database file. Survives
//!   restarts; one replica only (the file is locked while open). Bounded to
//!   [`CAPACITY`] entries too.
//! - **redis**: a shared Redis (7.0 or newer). Survives restarts and is shared by
//!   every replica, which is what makes single-use checks hold across replicas.
//!
//! # What is stored
//!
//! Keys are SHA-256 [`Digest`]s of grant handles and authorization codes, never
//! the raw values, and a grant's entry holds only the digest of its current
//! refresh token, so a copy of the store (or a log line about it) cannot be
//! replayed. Every entry expires:
//!
//! - a grant that has refresh tokens (a family) is one entry, whatever the
//!   number of rotations: the record of its current refresh token, kept until
//!   that token expires. A refresh token names its grant and its generation
//!   (how many rotations led to it), so a rotated one presented again is
//!   recognised as [`Use::Reused`] without a marker per used token, for as
//!   long as the grant is in use;
//! - an authorization code is usable until its `expires_at`; once used, the
//!   used-marker is kept [`CODE_REPLAY_GRACE_SECS`] longer, so a late replay is
//!   still recognised;
//! - a revocation is in force until its `until`.
//!
//! Expired entries behave as absent and are purged (memory and file: a bounded
//! amount on every write; redis: key TTLs).
//!
//! # Single use
//!
//! [`Store::rotate_refresh`] and [`Store::use_code`] are atomic: of any number
//! of concurrent callers presenting the same value (on any replica sharing the
//! store), exactly one gets [`Use::Fresh`]. The memory backend uses a mutex,
//! the file backend one write transaction per call, the redis backend
//! `SET ... NX` for codes and a compare-and-set script for grants.

mod file;
mod memory;
mod redis;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use self::file::FileStore;
use self::memory::MemoryStore;
use self::redis::RedisStore;

/// SHA-256 digest of a refresh token, a grant's handle or an authorization
/// code (raw values are never stored).
pub type Digest = [u8; 32];

/// How long (seconds) a used authorization code's marker outlives the code, so
/// that a replay shortly after expiry is still recognised as [`Use::Reused`]
/// (and the tokens issued from it can be revoked) instead of looking unknown.
pub const CODE_REPLAY_GRACE_SECS: u64 = 600;

/// The most entries (grants, codes and revocations together) the
/// memory and file backends hold, so a flood of grants cannot exhaust the
/// process's memory or the volume. Expired entries are purged first; past
/// this, writes fail with [`StoreError::Full`]. Revocations have an eighth
/// more, so a full store can still end grants.
pub const CAPACITY: usize = 1_000_000;

/// Entries beyond a store's capacity that only revocations may take (an
/// eighth).
pub(super) fn revocation_headroom(capacity: usize) -> usize {
    (capacity / 8).max(1)
}

/// A grant's current refresh token, stored under the digest of the grant's
/// handle (which only its refresh tokens carry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// The grant's id, shared by all its refresh and access tokens (`sid`);
    /// revoking it ends the grant.
    pub family: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The user name, or the client id for `client_credentials`.
    pub subject: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The audience of the access tokens minted from this grant.
    pub audience: String,
    /// When this token was issued (unix seconds).
    pub issued_at: u64,
    /// When this token stops being usable (unix seconds).
    pub expires_at: u64,
    /// When the whole family ends (unix seconds); rotation never extends past this.
    pub family_expires_at: u64,
    /// How many rotations led to this token (0 for the first): its
    /// generation. A refresh token of an earlier generation is a rotated one.
    pub refresh_count: u32,
    /// The SHA-256 digest of the current refresh token, the only one of the
    /// grant that can be used.
    pub token: Digest,
    /// The digest of the token the current one replaced, which may be used
    /// once more until `retry_until` (a client whose answer was lost).
    #[serde(default)]
    pub previous: Option<Digest>,
    /// Until when (unix seconds) `previous` may be used once more; 0 for
    /// never (`refresh_token_reuse_grace: 0s`).
    #[serde(default)]
    pub retry_until: u64,
    /// The subject is a user (password or authorization code grant), not the
    /// client itself: a refresh checks the user still exists. Records written
    /// before this field existed read as `false` and fall back to comparing
    /// the subject with the client id.
    #[serde(default)]
    pub user_grant: bool,
    /// The latest `exp` of the access tokens minted from the grant, under
    /// whatever `access_token_ttl` was in force then (on whichever replica):
    /// a revocation of the grant must outlive them. Records written before
    /// this field existed read as 0.
    #[serde(default)]
    pub access_expires_at: u64,
}

/// One issued authorization code, stored under the digest of the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// The client the code was issued to.
    pub client_id: String,
    /// The redirect URI of the authorization request (must match at redemption).
    pub redirect_uri: String,
    /// Whether the authorization request named `redirect_uri`; if so the
    /// token request must repeat it (RFC 6749 4.1.3). Records written before
    /// this field existed count as named, the strict reading.
    #[serde(default = "named")]
    pub redirect_uri_sent: bool,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The user who approved the request.
    pub subject: String,
    /// The PKCE S256 code challenge, if the request carried one.
    pub code_challenge: Option<String>,
    /// When the code stops being redeemable (unix seconds).
    pub expires_at: u64,
    /// The id of the grant (family) the code's tokens will belong to, so a
    /// replayed code can revoke what the first redemption issued.
    pub family: String,
}

/// Where a presented refresh token stands in its grant, by the grant's
/// stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The grant's current token: it may be used (once).
    Current,
    /// The token the current one replaced, presented again within the
    /// reuse grace: a retry whose answer was lost; it may be used (once)
    /// as the current one would be, and the token it got is then replaced.
    Retry,
    /// A token the grant had before a rotation: a replay (RFC 9700 4.14.2).
    Rotated,
    /// Not a token of this grant as it stands (a later generation, a wrong
    /// secret), or the grant's current token has expired.
    Unknown,
}

impl RefreshRecord {
    /// Where the refresh token of `generation` whose digest is `presented`
    /// stands at `now`. A rotated token is recognised by its generation
    /// alone, since the grant keeps no digests of used ones; naming the
    /// grant takes its handle, which only the grant's refresh tokens carry.
    pub fn standing(&self, now: u64, generation: u32, presented: &Digest) -> Standing {
        if now >= self.expires_at {
            Standing::Unknown
        } else if generation.checked_add(1) == Some(self.refresh_count)
            && self.previous == Some(*presented)
            && now < self.retry_until
        {
            Standing::Retry
        } else if generation < self.refresh_count {
            Standing::Rotated
        } else if generation == self.refresh_count && *presented == self.token {
            Standing::Current
        } else {
            Standing::Unknown
        }
    }
}

/// Outcome of consuming a single-use value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use<T> {
    /// Unknown, or expired (an expired value that was never used is simply gone).
    NotFound,
    /// It was unused and is now marked used, or (a grant) replaced,
    /// atomically: the caller may honour it.
    Fresh(T),
    /// It had been used before: a replay. The caller should refuse it and
    /// revoke what the first use produced.
    Reused(T),
}

/// A store operation failed. Messages never contain tokens, codes or
/// credentials (keys are digests; URLs are not echoed).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot be used (for example an unparsable Redis URL).
    #[error("state store configuration: {0}")]
    Config(String),
    /// The backend failed (I/O, database, network, Redis error).
    #[error("state store backend: {0}")]
    Backend(String),
    /// A stored entry could not be decoded (written by an incompatible version,
    /// or damaged).
    #[error("state store entry is corrupt: {0}")]
    Corrupt(String),
    /// The memory or file backend is at its capacity ([`CAPACITY`], and an
    /// eighth more for revocations) even after purging expired entries; the
    /// write was refused rather than evicting live state.
    #[error("state store is full ({0} entries)")]
    Full(usize),
}

impl StoreError {
    /// Every [`Self::reason`].
    pub const REASONS: [&'static str; 4] = ["config", "backend", "corrupt", "full"];

    /// A short fixed name of the failure, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Backend(_) => "backend",
            Self::Corrupt(_) => "corrupt",
            Self::Full(_) => "full",
        }
    }
}

/// Which backend to open, and where.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In-process memory: lost on restart, not shared between replicas.
    Memory,
    /// A redb database file (created if missing): survives restarts, one replica only.
    File(PathBuf),
    /// A Redis server: shared by all replicas.
    Redis(RedisTarget),
}

/// Where the Redis store is and how to trust it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://[:password@]host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// PEM certificates that sign the server's, for `rediss://` (without
    /// them, the Mozilla roots).
    pub ca_pem: Option<Vec<u8>>,
    /// The password, when not in the URL (`password_file`, `password_env`).
    pub password: Option<crate::config::validate::Secret>,
}

impl From<&str> for RedisTarget {
    /// A URL, trusting the Mozilla roots for `rediss://`.
    fn from(url: &str) -> Self {
        Self::from(url.to_owned())
    }
}

impl From<String> for RedisTarget {
    /// A URL, trusting the Mozilla roots for `rediss://`.
    fn from(url: String) -> Self {
        Self {
            url,
            ca_pem: None,
            password: None,
        }
    }
}

impl fmt::Debug for StoreConfig {
    /// Prints the configuration with any password in a Redis URL redacted, so
    /// the config can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Redis(target) => f
                .debug_tuple("Redis")
                .field(&redact_url(&target.url))
                .finish(),
        }
    }
}

/// `url` without its userinfo (`user:password@`), for logging.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The opened backend.
enum Backend {
    /// Boxed: the mutex-guarded maps are far larger than the other handles.
    Memory(Box<MemoryStore>),
    File(FileStore),
    Redis(RedisStore),
}

/// A handle to the state store; cheap to clone (all clones share one backend).
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

impl fmt::Debug for Store {
    /// Names the backend only; the contents are secret-adjacent and large.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("kind", &self.kind()).finish()
    }
}

impl Store {
    /// Opens the configured backend. File: creates or opens the redb file (and
    /// verifies its integrity). Redis: connects and PINGs, so a wrong URL or an
    /// unreachable server fails at startup rather than at the first grant.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let backend = match config {
            StoreConfig::Memory => Backend::Memory(Box::new(MemoryStore::new(CAPACITY))),
            StoreConfig::File(path) => {
                Backend::File(FileStore::open(path.clone(), CAPACITY).await?)
            }
            StoreConfig::Redis(target) => Backend::Redis(RedisStore::open(target).await?),
        };
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    /// The backend's name, for logs and metrics: `"memory"`, `"file"` or `"redis"`.
    pub fn kind(&self) -> &'static str {
        match &*self.backend {
            Backend::Memory(_) => "memory",
            Backend::File(_) => "file",
            Backend::Redis(_) => "redis",
        }
    }

    /// Stores a new grant's first refresh token under the digest of the
    /// grant's handle. A record that has already expired is not stored.
    pub async fn put_refresh(
        &self,
        grant: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.put_refresh(grant, record),
            Backend::File(s) => s.put_refresh(grant, record).await,
            Backend::Redis(s) => s.put_refresh(grant, record).await,
        }
    }

    /// Rotates a grant's refresh token atomically: when the token of
    /// `generation` with digest `presented` may be used ([`Standing::Current`],
    /// or [`Standing::Retry`]) and `next` was made from the stored record
    /// (its generation the next one), `next` replaces the record and the
    /// replaced record is [`Use::Fresh`]; of concurrent callers with `next`s
    /// made from one record, exactly one gets that. A rotated token, or a
    /// `next` made from an earlier record, is [`Use::Reused`] with the
    /// grant's record as it stands (the caller tells which by that record);
    /// anything else [`Use::NotFound`].
    pub async fn rotate_refresh(
        &self,
        grant: &Digest,
        generation: u32,
        presented: &Digest,
        next: &RefreshRecord,
    ) -> Result<Use<RefreshRecord>, StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.rotate_refresh(grant, generation, presented, next),
            Backend::File(s) => s.rotate_refresh(grant, generation, presented, next).await,
            Backend::Redis(s) => s.rotate_refresh(grant, generation, presented, next).await,
        }
    }

    /// A grant's current record, read without changing it (the token
    /// endpoint's checks, introspection, revocation). `None` if unknown or its
    /// current token has expired.
    pub async fn get_refresh(&self, grant: &Digest) -> Result<Option<RefreshRecord>, StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.get_refresh(grant),
            Backend::File(s) => s.get_refresh(grant).await,
            Backend::Redis(s) => s.get_refresh(grant).await,
        }
    }

    /// Revokes a refresh family (every token of one grant) until `until` (unix
    /// seconds). Revoking again keeps the later of the two ends; an `until` in
    /// the past changes nothing.
    pub async fn revoke_family(&self, family: &str, until: u64) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.revoke(Kind::Family, family, until),
            Backend::File(s) => s.revoke(Kind::Family, family, until).await,
            Backend::Redis(s) => s.revoke(Kind::Family, family, until).await,
        }
    }

    /// Whether a revocation of this family is in force now.
    pub async fn is_family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.is_revoked(Kind::Family, family),
            Backend::File(s) => s.is_revoked(Kind::Family, family).await,
            Backend::Redis(s) => s.is_revoked(Kind::Family, family).await,
        }
    }

    /// Revokes one access token by its `jti` until `until` (unix seconds; its
    /// `exp` suffices). Revoking again keeps the later end; an `until` in the
    /// past changes nothing.
    pub async fn revoke_access(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.revoke(Kind::Access, jti, until),
            Backend::File(s) => s.revoke(Kind::Access, jti, until).await,
            Backend::Redis(s) => s.revoke(Kind::Access, jti, until).await,
        }
    }

    /// Whether a revocation of this access token `jti` is in force now.
    pub async fn is_access_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.is_revoked(Kind::Access, jti),
            Backend::File(s) => s.is_revoked(Kind::Access, jti).await,
            Backend::Redis(s) => s.is_revoked(Kind::Access, jti).await,
        }
    }

    /// Whether a revocation of the access token `jti` or of the family
    /// `sid` is in force now, asked in one go (one lock, one transaction or
    /// one round trip): the gateway asks for every request with a token of
    /// the built-in server.
    pub async fn is_either_revoked(
        &self,
        jti: Option<&str>,
        sid: Option<&str>,
    ) -> Result<bool, StoreError> {
        let ids: Vec<(Kind, &str)> = jti
            .map(|j| (Kind::Access, j))
            .into_iter()
            .chain(sid.map(|s| (Kind::Family, s)))
            .collect();
        if ids.is_empty() {
            return Ok(false);
        }
        match &*self.backend {
            Backend::Memory(s) => s.is_any_revoked(&ids),
            Backend::File(s) => s.is_any_revoked(&ids).await,
            Backend::Redis(s) => s.is_any_revoked(&ids).await,
        }
    }

    /// Stores a newly issued authorization code (unused). Writing a digest
    /// that is already marked used keeps it used.
    pub async fn put_code(&self, digest: &Digest, record: &CodeRecord) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.put_code(digest, record),
            Backend::File(s) => s.put_code(digest, record).await,
            Backend::Redis(s) => s.put_code(digest, record).await,
        }
    }

    /// Atomically consumes an authorization code; exactly one caller gets Fresh.
    ///
    /// An expired code that was never used is [`Use::NotFound`]; a used one is
    /// [`Use::Reused`] for [`CODE_REPLAY_GRACE_SECS`] past its expiry.
    pub async fn use_code(&self, digest: &Digest) -> Result<Use<CodeRecord>, StoreError> {
        match &*self.backend {
            Backend::Memory(s) => s.use_code(digest),
            Backend::File(s) => s.use_code(digest).await,
            Backend::Redis(s) => s.use_code(digest).await,
        }
    }
}

/// Which kind of revocation: the two live in separate namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// A refresh family (`revoke_family`).
    Family,
    /// An access token `jti` (`revoke_access`).
    Access,
}

/// The current time in unix seconds (0 if the clock is before 1970).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What rotating a grant's record to `next` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    /// Write `next`: the presented token may be used, and `next` was made
    /// from the stored record.
    Write,
    /// Report Reused: a replay, or a `next` made from an earlier record (a
    /// concurrent rotation landed since; the caller reads the grant again).
    Reused,
    /// Report NotFound.
    NotFound,
}

/// The [`Rotation`] of `current` to `next` for the presented token of
/// `generation` whose digest is `presented`, at `now`. Shared by all
/// backends so they agree exactly.
fn rotation(
    now: u64,
    current: &RefreshRecord,
    generation: u32,
    presented: &Digest,
    next: &RefreshRecord,
) -> Rotation {
    match current.standing(now, generation, presented) {
        Standing::Unknown => Rotation::NotFound,
        Standing::Rotated => Rotation::Reused,
        Standing::Current | Standing::Retry
            if current.refresh_count.checked_add(1) == Some(next.refresh_count) =>
        {
            Rotation::Write
        }
        Standing::Current | Standing::Retry => Rotation::Reused,
    }
}

/// Codes written before `redirect_uri_sent` existed count as having named
/// their redirect URI.
fn named() -> bool {
    true
}

/// Until when (unix seconds) a code entry must be kept: its used-marker
/// outlives the code by the replay grace.
fn code_retain(record: &CodeRecord) -> u64 {
    record.expires_at.saturating_add(CODE_REPLAY_GRACE_SECS)
}

/// What consuming a single-use entry does, given its state now. Shared by all
/// backends so they agree exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Report NotFound (unknown or expired and never used).
    NotFound,
    /// Mark it used and report Fresh.
    MarkFresh,
    /// Report Reused.
    Reused,
}

/// The decision for an entry that exists, with its `expires_at`, `retain`
/// horizon and used flag, at `now`.
fn decide(now: u64, expires_at: u64, retain: u64, used: bool) -> Decision {
    if now >= retain {
        Decision::NotFound
    } else if used {
        Decision::Reused
    } else if now >= expires_at {
        Decision::NotFound
    } else {
        Decision::MarkFresh
    }
}

/// Lower-case hex of a digest, for Redis keys (a digest is not a secret).
fn hex(digest: &Digest) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decide(5, 10, 20, false), Decision::MarkFresh);
        assert_eq!(decide(5, 10, 20, true), Decision::Reused);
        assert_eq!(decide(10, 10, 20, false), Decision::NotFound);
        assert_eq!(decide(15, 10, 20, true), Decision::Reused);
        assert_eq!(decide(20, 10, 20, true), Decision::NotFound);
    }

    #[test]
    fn standings() {
        let record = RefreshRecord {
            family: "f".into(),
            client_id: "c".into(),
            subject: "s".into(),
            scope: String::new(),
            audience: "api".into(),
            issued_at: 0,
            expires_at: 10,
            family_expires_at: 20,
            refresh_count: 3,
            token: [1; 32],
            previous: None,
            retry_until: 0,
            user_grant: false,
            access_expires_at: 0,
        };
        assert_eq!(record.standing(5, 3, &[1; 32]), Standing::Current);
        assert_eq!(record.standing(5, 3, &[2; 32]), Standing::Unknown);
        assert_eq!(record.standing(5, 4, &[1; 32]), Standing::Unknown);
        assert_eq!(record.standing(5, 0, &[2; 32]), Standing::Rotated);
        assert_eq!(record.standing(5, 2, &[2; 32]), Standing::Rotated);
        assert_eq!(record.standing(10, 3, &[1; 32]), Standing::Unknown);
        assert_eq!(record.standing(10, 2, &[2; 32]), Standing::Unknown);
        // Within the reuse grace, the token the current one replaced is a
        // retry; an older one, another digest, or after the grace, a replay.
        let record = RefreshRecord {
            previous: Some([9; 32]),
            retry_until: 8,
            ..record
        };
        assert_eq!(record.standing(5, 2, &[9; 32]), Standing::Retry);
        assert_eq!(record.standing(7, 2, &[9; 32]), Standing::Retry);
        assert_eq!(record.standing(8, 2, &[9; 32]), Standing::Rotated);
        assert_eq!(record.standing(5, 2, &[8; 32]), Standing::Rotated);
        assert_eq!(record.standing(5, 1, &[9; 32]), Standing::Rotated);
        assert_eq!(record.standing(5, 3, &[1; 32]), Standing::Current);
    }

    #[test]
    fn redacts_redis_password() {
        let c = StoreConfig::Redis("redis://:hunter2@cache:6379/0".into());
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("cache:6379/0"), "{s}");
        let c = StoreConfig::Redis("redis://user:pw@h/1?x=a@b".into());
        assert!(!format!("{c:?}").contains("pw"));
        let c = StoreConfig::Redis("redis://cache:6379".into());
        assert_eq!(format!("{c:?}"), "Redis(\"redis://cache:6379\")");
    }

    #[test]
    fn hex_is_lowercase_64() {
        let mut d = [0u8; 32];
        d[0] = 0xab;
        d[31] = 0x01;
        let h = hex(&d);
        assert_eq!(h.len(), 64);
        assert!(h.starts_with("ab00"));
        assert!(h.ends_with("01"));
    }
}
