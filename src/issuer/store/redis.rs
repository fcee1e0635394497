//! The redis backend: state shared by every replica through one Redis (7.0 or
//! newer, or a compatible server such as Valkey).
//!
//! Keys (all under `scopegate:`; digests in lower-case hex):
//!
//! | key                              | value               | expires at (`EXAT`)        |
//! |----------------------------------|---------------------|----------------------------|
//! | `scopegate:grant:<digest>`       | refresh record JSON | the current token's `expires_at` |
//! | `scopegate:ac:<digest>`          | code record JSON    | `expires_at` + replay grace |
//! | `scopegate:ac:used:<digest>`     | `1`                 | same, or later             |
//! | `scopegate:revoked:family:<id>`  | until               | until                      |
//! | `scopegate:revoked:jti:<jti>`    | until               | until                      |
//!
//! Consuming a code is `SET <used key> 1 NX EXAT ...`: Redis executes it
//! atomically, so of any number of callers on any number of replicas exactly
//! one creates the marker and gets [`Use::Fresh`]. Code records never change
//! after being written, so reading one before setting the marker is
//! race-free. Rotating a grant's refresh token replaces its record only if
//! it is still the one read (a compare-and-set script, which Redis runs
//! atomically), so of concurrent rotations exactly one lands. Expiry is
//! Redis's own key TTLs; nothing needs purging here. (Keys `scopegate:rt:*`
//! are refresh tokens of versions before grants were one entry; nothing
//! reads them, and they expire.)

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, TlsCertificates};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    code_retain, hex, now_secs, rotation, CodeRecord, Digest, Kind, RedisTarget, RefreshRecord,
    Rotation, StoreError, Use,
};

/// The prefix of every key scopegate writes.
const PREFIX: &str = "scopegate:";

/// The latest expiry Redis is given (9999-12-31T23:59:59Z): later ones would
/// overflow its millisecond clock and be rejected.
const MAX_EXAT: u64 = 253_402_300_799;

/// How long a connection attempt, a command, and a whole store operation
/// may take before failing. An operation bounds itself ([`within`]): a
/// command waits for a reconnection under way, which takes up to
/// [`RETRIES`] + 1 attempts of this each (about 21 s with their backoff).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnection attempts after the first fails (with exponential backoff);
/// they go on in the background after the operation waiting for them has
/// given up.
const RETRIES: usize = 3;

/// Runs one store operation within [`TIMEOUT`], waiting for a connection
/// included, as the file store bounds its own: a Redis that stops answering
/// gets requests a 503 in that time, not after the connection manager's
/// reconnection attempts have all failed.
async fn within<T>(
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Backend(format!(
                "redis did not answer within {}s",
                TIMEOUT.as_secs()
            )))
        })
}

/// Redis errors as backend failures. Redis error texts carry no values of
/// ours (keys are digests), so they are safe to report.
fn backend(e: RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// The record key and the used-marker key of a code's digest.
fn code_keys(digest: &Digest) -> (String, String) {
    let hex = hex(digest);
    (
        format!("{PREFIX}ac:{hex}"),
        format!("{PREFIX}ac:used:{hex}"),
    )
}

/// The key of a grant's refresh record.
fn grant_key(grant: &Digest) -> String {
    format!("{PREFIX}grant:{}", hex(grant))
}

/// Replaces `KEYS[1]`'s value `ARGV[1]` by `ARGV[2]`, expiring at
/// `ARGV[3]`, if it is still `ARGV[1]`: 1 if it was, 0 if not.
const COMPARE_AND_SET: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[3]) return 1 end return 0";

/// How many times a rotation reads the grant again when another changed it
/// between its read and its write (the second read finds that rotation
/// and answers; more is a server that keeps changing it).
const ROTATION_TRIES: usize = 3;

/// The key of a revocation.
fn revocation_key(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Family => format!("{PREFIX}revoked:family:{id}"),
        Kind::Access => format!("{PREFIX}revoked:jti:{id}"),
    }
}

/// The redis backend. The connection manager multiplexes commands over one
/// connection and reconnects when it breaks; cloning it is cheap.
pub(super) struct RedisStore {
    conn: Arc<arc_swap::ArcSwap<ConnectionManager>>,
    /// Connecting anew after a failover: see [`Self::failed`].
    reconnect: Arc<Reconnect>,
}

/// What connecting anew takes, and its single flight: one attempt at a
/// time, at most one per [`RECONNECT_INTERVAL`], in the background, while
/// operations go on over the connection there is.
struct Reconnect {
    client: Client,
    config: ConnectionManagerConfig,
    /// An attempt is under way.
    running: AtomicBool,
    /// When the last attempt began (milliseconds since `origin`), plus one.
    last_ms: AtomicU64,
    origin: Instant,
}

/// The least time between two attempts to connect anew.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

impl RedisStore {
    /// Connects to `url` and PINGs. Errors never echo the URL (it may carry a
    /// password).
    pub(super) async fn open(target: &RedisTarget) -> Result<Self, StoreError> {
        use ::redis::IntoConnectionInfo;
        let info = target
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| StoreError::Config(format!("redis URL (not shown): {e}")))?;
        let info = match &target.password {
            Some(password) => {
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_password(password.expose());
                info.set_redis_settings(settings)
            }
            None => info,
        };
        // A server that stops answering without closing the connection (its
        // host gone, its address moved in a failover) is given up by the
        // kernel after this, and the connection manager connects again;
        // else commands would time out until TCP's own retries end (about
        // 15 minutes).
        #[cfg(target_os = "linux")]
        let info = {
            let tcp = info.tcp_settings().clone().set_user_timeout(2 * TIMEOUT);
            info.set_tcp_settings(tcp)
        };
        let client = if target.url.starts_with("rediss://") {
            Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: target.ca_pem.clone(),
                },
            )
        } else {
            Client::open(info)
        }
        .map_err(|e| StoreError::Config(format!("redis URL (not shown): {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(RETRIES);
        let mut conn = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(backend)?;
        let pong: String = ::redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        if pong != "PONG" {
            return Err(StoreError::Backend(
                "redis: unexpected reply to PING".to_owned(),
            ));
        }
        // Revocations use `EXPIREAT ... GT` (Redis 7.0): an older server
        // refuses it within their MULTI, which drops the whole write, so
        // that no revocation would ever land and a replayed refresh token
        // would end no grant. Asked of a key that does not exist, it changes
        // nothing.
        let probe: Result<i64, RedisError> = ::redis::cmd("EXPIREAT")
            .arg(format!("{PREFIX}probe"))
            .arg(1)
            .arg("GT")
            .query_async(&mut conn)
            .await;
        match probe {
            Ok(_) => {}
            // An argument count or syntax it does not know: too old.
            Err(e) if e.code() == Some("ERR") => {
                return Err(StoreError::Backend(format!(
                    "redis: the server does not take `EXPIREAT ... GT`, which revocations need (Redis 7.0 or newer, or a server compatible with it): {e}"
                )))
            }
            Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ReadOnly) => {
                return Err(StoreError::Backend(format!(
                    "redis: the server is a read-only replica; the store needs the primary: {e}"
                )))
            }
            Err(e) => return Err(backend(e)),
        }
        // Rotating a refresh token is a compare-and-set script: a server
        // that runs none (an ACL without `@scripting`, a renamed `EVAL`, a
        // proxy that passes no scripts) would refuse every refresh.
        let script: Result<::redis::Value, RedisError> = ::redis::cmd("EVAL")
            .arg("return 1")
            .arg(0)
            .query_async(&mut conn)
            .await;
        if let Err(e) = script {
            return Err(StoreError::Backend(format!(
                "redis: the server does not run Lua scripts (`EVAL`), which rotating refresh tokens needs: {e}"
            )));
        }
        Ok(RedisStore {
            conn: Arc::new(arc_swap::ArcSwap::from_pointee(conn)),
            reconnect: Arc::new(Reconnect {
                client,
                config,
                running: AtomicBool::new(false),
                last_ms: AtomicU64::new(0),
                origin: Instant::now(),
            }),
        })
    }

    /// A connection handle for one operation.
    fn conn(&self) -> ConnectionManager {
        (**self.conn.load()).clone()
    }

    /// A command's failure as a backend error. One the server refused as a
    /// read-only replica (`READONLY`, alone or aborting a transaction) means
    /// a failover demoted it while this connection stayed open; its address
    /// (a DNS name, a virtual IP) now leads to the new primary. One of a
    /// reconnection the server refused (`AUTH` failing for a while: a
    /// password rolled back, a server restarted before its ACL was loaded)
    /// or whose answer did not parse is the connection manager's for good:
    /// it returns it to every command, and only connects again when a
    /// connection breaks. Either way a new connection is made in the
    /// background and replaces this one.
    fn failed(&self, e: RedisError) -> StoreError {
        let stuck = match e.kind() {
            ::redis::ErrorKind::AuthenticationFailed => Some("the server refused to authenticate"),
            ::redis::ErrorKind::Parse => Some("an answer did not parse"),
            _ => None,
        };
        let read_only = e.clone().into_server_errors().is_some_and(|errors| {
            errors
                .iter()
                .any(|(_, error)| error.kind() == Some(::redis::ServerErrorKind::ReadOnly))
        });
        if read_only {
            self.connect_anew("the server refused a write as a read-only replica");
        } else if let Some(why) = stuck {
            self.connect_anew(why);
        }
        backend(e)
    }

    /// Starts connecting anew, unless an attempt is under way or began
    /// within [`RECONNECT_INTERVAL`] (an address that keeps leading to a
    /// replica must not cost a connection per write).
    fn connect_anew(&self, why: &'static str) {
        let reconnect = &self.reconnect;
        let now_ms = u64::try_from(reconnect.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = reconnect.last_ms.load(Ordering::Acquire);
        let interval = u64::try_from(RECONNECT_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now_ms.saturating_sub(last - 1) < interval {
            return;
        }
        if reconnect.running.swap(true, Ordering::AcqRel) {
            return;
        }
        reconnect.last_ms.store(now_ms + 1, Ordering::Release);
        let (reconnect, conn) = (Arc::clone(reconnect), Arc::clone(&self.conn));
        tokio::spawn(async move {
            let fresh = ConnectionManager::new_with_config(
                reconnect.client.clone(),
                reconnect.config.clone(),
            )
            .await;
            match fresh {
                Ok(fresh) => {
                    conn.store(Arc::new(fresh));
                    tracing::warn!(cause = why, "redis: connected anew");
                }
                Err(e) => {
                    tracing::warn!(cause = why, error = %e, "redis: connecting anew failed");
                }
            }
            reconnect.running.store(false, Ordering::Release);
        });
    }

    /// The value of `key`, if it has one.
    async fn get(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        ::redis::cmd("GET")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(|e| self.failed(e))
    }

    /// See [`super::Store::put_refresh`].
    pub(super) async fn put_refresh(
        &self,
        grant: &Digest,
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        if record.expires_at <= now_secs() {
            return Ok(());
        }
        let bytes = encode(record)?;
        within(async {
            ::redis::cmd("SET")
                .arg(grant_key(grant))
                .arg(bytes)
                .arg("EXAT")
                .arg(record.expires_at.min(MAX_EXAT))
                .query_async::<()>(&mut self.conn())
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// See [`super::Store::rotate_refresh`]: the record read decides, and
    /// the write lands only if the record is still the one read.
    pub(super) async fn rotate_refresh(
        &self,
        grant: &Digest,
        generation: u32,
        presented: &Digest,
        next: &RefreshRecord,
    ) -> Result<Use<RefreshRecord>, StoreError> {
        let key = grant_key(grant);
        let next_bytes = encode(next)?;
        let mut conn = self.conn();
        within(async {
            for _ in 0..ROTATION_TRIES {
                let bytes = self.get(&mut conn, &key).await?;
                let Some(bytes) = bytes else {
                    return Ok(Use::NotFound);
                };
                let current: RefreshRecord = decode(&bytes)?;
                match rotation(now_secs(), &current, generation, presented, next) {
                    Rotation::NotFound => return Ok(Use::NotFound),
                    Rotation::Reused => return Ok(Use::Reused(current)),
                    Rotation::Write => {}
                }
                let swapped: i64 = ::redis::cmd("EVAL")
                    .arg(COMPARE_AND_SET)
                    .arg(1)
                    .arg(&key)
                    .arg(&bytes)
                    .arg(&next_bytes)
                    .arg(next.expires_at.clamp(1, MAX_EXAT))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(e))?;
                if swapped == 1 {
                    return Ok(Use::Fresh(current));
                }
            }
            Err(StoreError::Backend(
                "redis: a grant kept changing while it was rotated".to_owned(),
            ))
        })
        .await
    }

    /// See [`super::Store::get_refresh`].
    pub(super) async fn get_refresh(
        &self,
        grant: &Digest,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let bytes = within(self.get(&mut self.conn(), &grant_key(grant))).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let record: RefreshRecord = decode(&bytes)?;
        Ok((now_secs() < record.expires_at).then_some(record))
    }

    /// See [`super::Store::put_code`].
    pub(super) async fn put_code(
        &self,
        digest: &Digest,
        record: &CodeRecord,
    ) -> Result<(), StoreError> {
        within(self.put(digest, record)).await
    }

    /// See [`super::Store::use_code`].
    pub(super) async fn use_code(&self, digest: &Digest) -> Result<Use<CodeRecord>, StoreError> {
        within(self.consume(digest)).await
    }

    /// See [`super::Store::revoke_family`] and [`super::Store::revoke_access`].
    ///
    /// `SET NX` creates the revocation if absent; `EXPIREAT GT` extends an
    /// existing one but never shortens it. Both run in one MULTI/EXEC.
    pub(super) async fn revoke(&self, kind: Kind, id: &str, until: u64) -> Result<(), StoreError> {
        if until <= now_secs() {
            return Ok(());
        }
        let until = until.min(MAX_EXAT);
        let key = revocation_key(kind, id);
        within(async {
            ::redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(until)
                .arg("NX")
                .arg("EXAT")
                .arg(until)
                .ignore()
                .cmd("EXPIREAT")
                .arg(&key)
                .arg(until)
                .arg("GT")
                .ignore()
                .query_async::<()>(&mut self.conn())
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// See [`super::Store::is_family_revoked`] and [`super::Store::is_access_revoked`].
    /// The key's TTL is the revocation's end, so existing means in force.
    pub(super) async fn is_revoked(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        within(async {
            ::redis::cmd("EXISTS")
                .arg(revocation_key(kind, id))
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// Whether any of `ids` is revoked now, in one round trip: a pipeline of
    /// one-key `EXISTS` (one `EXISTS` of both keys would be refused with
    /// `CROSSSLOT` by a server in cluster mode, their slots differing).
    pub(super) async fn is_any_revoked(&self, ids: &[(Kind, &str)]) -> Result<bool, StoreError> {
        let mut pipe = ::redis::pipe();
        for (kind, id) in ids {
            pipe.cmd("EXISTS").arg(revocation_key(*kind, id));
        }
        within(async {
            pipe.query_async::<Vec<bool>>(&mut self.conn())
                .await
                .map(|found| found.contains(&true))
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// Writes a code's record. Its used-marker, if any, is a separate key
    /// and stays, kept at least as long as the record: `EXPIREAT ... GT`
    /// moves its end to the record's new one when that is later (and does
    /// nothing without a marker), before the record is written, so that the
    /// record never outlives it and a used code never reads as unused. Not
    /// one MULTI: the two keys' slots differ (`CROSSSLOT` in cluster mode);
    /// one pipeline, in order.
    async fn put(&self, digest: &Digest, record: &CodeRecord) -> Result<(), StoreError> {
        let retain = code_retain(record);
        if retain <= now_secs() {
            return Ok(());
        }
        let retain = retain.clamp(1, MAX_EXAT);
        let bytes = encode(record)?;
        let (key, used_key) = code_keys(digest);
        ::redis::pipe()
            .cmd("EXPIREAT")
            .arg(&used_key)
            .arg(retain)
            .arg("GT")
            .ignore()
            .cmd("SET")
            .arg(&key)
            .arg(bytes)
            .arg("EXAT")
            .arg(retain)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.failed(e))
    }

    /// Consumes a code: the record decides whether it is still usable;
    /// `SET NX` on the used-marker decides who used it first.
    async fn consume(&self, digest: &Digest) -> Result<Use<CodeRecord>, StoreError> {
        let (key, used_key) = code_keys(digest);
        let mut conn = self.conn();
        let bytes = self.get(&mut conn, &key).await?;
        let Some(bytes) = bytes else {
            return Ok(Use::NotFound);
        };
        let record: CodeRecord = decode(&bytes)?;
        let now = now_secs();
        let retain = code_retain(&record);
        if now >= retain {
            return Ok(Use::NotFound);
        }
        if now >= record.expires_at {
            // Past its use-by time: a used one is a replay, an unused one is gone.
            let used: bool = ::redis::cmd("EXISTS")
                .arg(&used_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            return Ok(if used {
                Use::Reused(record)
            } else {
                Use::NotFound
            });
        }
        // The marker lasts as long as the record: as long as a replay must
        // be recognised.
        let set: Option<String> = ::redis::cmd("SET")
            .arg(&used_key)
            .arg(1)
            .arg("NX")
            .arg("EXAT")
            .arg(retain.min(MAX_EXAT))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(if set.is_some() {
            Use::Fresh(record)
        } else {
            Use::Reused(record)
        })
    }
}

/// A record's JSON bytes.
fn encode<T: serde::Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A record from its JSON bytes.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
