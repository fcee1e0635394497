//! Client authentication for the token, introspection and revocation
//! endpoints (RFC 6749 2.3.1): HTTP Basic or form body, argon2-hashed secrets
//! checked off the runtime (a bounded number at once), successful checks
//! cached, failures rate-limited.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Argon2, Block, PasswordHash};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderMap;
use tokio::sync::Semaphore;

use super::OAuthError;
use crate::config::Client;

/// Argon2 checks that run at once. Each holds the hash's memory cost (19 MiB
/// with the parameters `hash-secret` uses) on a blocking thread for tens of
/// milliseconds, so unbounded they would let a burst of wrong secrets take
/// gigabytes.
const HASHING_AT_ONCE: usize = 2;
/// Checks that may wait for one of those; beyond them a check is refused at
/// once (503), so a burst can neither queue without bound nor stall sign-ins
/// for long.
const HASHING_WAITING: usize = 64;

/// Checked in place of the hash of a client or user that does not exist, so
/// that a wrong secret takes as long to refuse either way and names cannot
/// be told apart by timing: `hash-secret`'s hash of a random secret nobody
/// kept. Its parameters give way to those the configured hashes use
/// ([`decoy_hash`]).
const UNKNOWN_NAME_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$4o1D5wbiMrWBxZyrM75fgQ$E9Wel4v4obrjtyTxmMjD3fRmEb+dkVye/fy1g40qs5I";

/// Checks for names that do not exist (decoys) under way at once, running
/// or waiting in the real checks' queue (so that, a few at a time, an
/// unknown name waits and runs exactly as a known one does). Made-up names,
/// which no failure limit holds back (each is fresh), thus never take more
/// than these of the real checks' places. Beyond them, a decoy is not run
/// but waited out (within [`WAITED_OUT_PER_SECOND`]), for as long as the
/// last one of its kind took: the answer comes as late, and it counts
/// against the name in a table of its own ([`Guesses::waited_out`]), so the
/// limit still does not tell unknown names from known ones, and a flood of
/// free refusals cannot crowd real names out of the main table.
const DECOYS_AT_ONCE: usize = 8;
/// What a decoy waited out takes before any of its kind has run: about
/// what `hash-secret`'s parameters take.
const DECOY_UNTIMED: Duration = Duration::from_millis(25);
/// Decoys that may be waited out per second (and at once, after a quiet
/// second). Their failures cost no check, so unbounded they could fill
/// [`Guesses::waited_out`] with limited names (10 000 names at 5 each in a
/// minute), after which made-up names would no longer be counted, and the
/// limit would tell them apart. At this rate a minute gives at most 1 200
/// limited names. Beyond it, a decoy waits for its place and runs, with at
/// most [`HASHING_WAITING`] waiting (503 beyond, as for real checks), so a
/// flood cannot park requests without bound.
const WAITED_OUT_PER_SECOND: f64 = 100.0;

/// The hash checked for names of one kind (client ids or user names) that
/// do not exist, and how long its last check took (its wait for a place
/// included; nanoseconds, 0 before one has): what one waited out lasts.
pub(crate) struct Decoy {
    hash: String,
    nanos: Arc<AtomicU64>,
}

impl Decoy {
    /// The decoy of `hashes` ([`decoy_hash`]), keeping `previous`'s timing
    /// when its hash is the same (a reload that changed no hash of the kind).
    fn of<'a>(hashes: impl Iterator<Item = &'a str>, previous: Option<&Decoy>) -> Self {
        let hash = decoy_hash(hashes);
        let nanos = previous
            .filter(|p| p.hash == hash)
            .map_or_else(Arc::default, |p| Arc::clone(&p.nanos));
        Self { hash, nanos }
    }

    /// How long one waited out lasts.
    fn last_took(&self) -> Duration {
        match self.nanos.load(Ordering::Relaxed) {
            0 => DECOY_UNTIMED,
            nanos => Duration::from_nanos(nanos),
        }
    }
}

/// Failed attempts allowed per key within [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 5;
/// The failure counting window.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Names tracked by the limiter at most. When it is full, ended windows go
/// first, then the names with the fewest failures; a limited name is never
/// dropped within its window, so a flood of fresh names cannot free the
/// names under attack. Every failure counted costs an argon2 check, which
/// keeps a flood far slower than what would fill the table with limited
/// names within one window.
const MAX_TRACKED: usize = 10_000;
/// How long a successful secret check is remembered after its last use. A
/// remembered secret passes while its client id is limited, so guesses by
/// others do not lock out a client that keeps using its secret; the key
/// includes the hash, so a secret changed in the config is forgotten.
const SUCCESS_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Credentials as presented.
#[derive(Clone)]
pub struct Presented {
    /// The client id.
    pub client_id: String,
    /// The secret, if any (public clients send none).
    pub secret: Option<String>,
    /// Whether HTTP Basic was used (a failure then gets a Basic challenge).
    pub basic: bool,
}

impl std::fmt::Debug for Presented {
    /// Without the secret, which no log line may carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("basic", &self.basic)
            .finish()
    }
}

/// Reads client credentials from the Basic header or the form, refusing both
/// at once (a form `client_id` that repeats Basic's is no second method), two
/// `Authorization` headers, and credentials in the query string.
pub fn presented(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    query_has_credentials: bool,
) -> Result<Option<Presented>, OAuthError> {
    if query_has_credentials {
        return Err(OAuthError::invalid_request(
            "client credentials must not be sent in the query string (RFC 6749 section 2.3.1)",
        ));
    }
    // Two `Authorization` fields are two sets of credentials (RFC 6749 5.2:
    // `invalid_request`), not the first one's client: a proxy in front may
    // have read the other.
    let mut authorization = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = authorization.next();
    if authorization.next().is_some() {
        return Err(OAuthError::invalid_request(
            "send one Authorization header, not several",
        ));
    }
    let basic = match first {
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| OAuthError::invalid_client_basic())?;
            // Another scheme is a client authentication method this server
            // does not support: invalid_client, with the challenge that
            // names the one it does (RFC 6749 5.2).
            let encoded = value
                .get(..6)
                .filter(|s| s.eq_ignore_ascii_case("basic "))
                .and_then(|_| value.get(6..))
                .ok_or_else(OAuthError::invalid_client_basic)?;
            let decoded = STANDARD
                .decode(encoded.trim())
                .map_err(|_| OAuthError::invalid_client_basic())?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| OAuthError::invalid_client_basic())?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(OAuthError::invalid_client_basic)?;
            let id = form_decode(id).ok_or_else(OAuthError::invalid_client_basic)?;
            let secret = form_decode(secret).ok_or_else(OAuthError::invalid_client_basic)?;
            // An empty password is no secret, as an empty `client_secret`
            // is: clients send a public client's id as `Basic id:`
            // (golang.org/x/oauth2 with `AuthStyleInHeader`).
            Some(Presented {
                client_id: id,
                secret: Some(secret).filter(|s| !s.is_empty()),
                basic: true,
            })
        }
        None => None,
    };
    let in_form = form.get("client_id").map(|id| Presented {
        client_id: id.clone(),
        secret: form.get("client_secret").cloned(),
        basic: false,
    });
    let secret_in_form = form.contains_key("client_secret");
    match (basic, in_form) {
        // RFC 6749 3.2.1: a client may name itself with `client_id` beside
        // its Basic credentials; only a second secret is a second method.
        (Some(b), Some(f)) if f.client_id == b.client_id && !secret_in_form => Ok(Some(b)),
        (Some(_), Some(_)) => Err(OAuthError::invalid_request(
            "use one client authentication method, not Basic and the form body together",
        )),
        // RFC 6749 2.3: one method only, even where the form names no client.
        (Some(_), None) if secret_in_form => Err(OAuthError::invalid_request(
            "use one client authentication method, not Basic and the form body together",
        )),
        (Some(b), None) => Ok(Some(b)),
        (None, f) => Ok(f),
    }
}

fn form_decode(s: &str) -> Option<String> {
    let with_spaces = s.replace('+', " ");
    percent_encoding::percent_decode_str(&with_spaces)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A failed client authentication. The answer is the same whatever failed
/// (RFC 6749 5.2), so that it does not tell which client ids exist or which
/// are public (where public clients may go without a secret, their ids pass
/// by design); the log says why, for the operator, and names the client when
/// it is a configured one. An unknown id is not logged: it may be a secret
/// sent in its place.
fn failed(presented: &Presented, known: bool, why: &'static str) -> OAuthError {
    let client_id = if known {
        presented.client_id.as_str()
    } else {
        "-"
    };
    tracing::debug!(client_id, why, "client authentication failed");
    OAuthError::invalid_client(presented.basic, "client authentication failed")
}

/// Checks secrets, caching successes and limiting failures.
pub struct ClientAuthenticator {
    clients: HashMap<String, Client>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// The key of `verified`'s keys (an HMAC), random to the process: a
    /// memory dump holds the argon2 hashes' accepted secrets only as this
    /// keyed digest, not one a guess can be tested against at SHA-256 speed.
    verified_key: [u8; 32],
    /// Shared with the server this one replaced on a reload, so that a
    /// reload gives no name fresh guesses.
    guesses: Arc<Guesses>,
    /// Shared on a reload too: its bounds hold for the process.
    hashing: PasswordChecker,
    /// Checked for client ids that do not exist (of the clients' hashes).
    client_decoy: Decoy,
    /// Checked for user names that do not exist (of the users' hashes).
    user_decoy: Decoy,
}

/// The failure limiter's state.
#[derive(Default)]
struct Guesses {
    /// Failures per name: the count and when its window began, keyed by the
    /// name's digest so that the table's size does not depend on the names
    /// (a client id or user name can be as long as a request body).
    failures: Mutex<HashMap<[u8; 32], (u32, Instant)>>,
    /// Refusals of names that do not exist answered without a check (a
    /// decoy waited out, past [`DECOYS_AT_ONCE`]), kept the same way but
    /// apart: they count towards a name's limit as failures do, and a flood
    /// of them, which costs no check, fills this table only.
    waited_out: Mutex<HashMap<[u8; 32], (u32, Instant)>>,
    /// Checks under way per name (digest): they count against the name's
    /// limit until they end, or a burst started together would each find
    /// the name unlimited and get as many guesses as checks fit in flight.
    /// An entry lives only while a check does.
    pending: Mutex<HashMap<[u8; 32], u32>>,
    /// Woken whenever a check ends, for checks waiting for a place.
    check_ended: tokio::sync::Notify,
}

/// Whether a check for a name may start now.
enum Begin<'a> {
    /// It may: it holds a place until it ends.
    Go(Attempt<'a>),
    /// The name's failures reached the limit.
    Limited,
    /// Failures and checks under way reach the limit: wait for one to end.
    Wait,
}

/// A secret or password check under way for a name, counted against its
/// limit until it ends ([`ClientAuthenticator::begin_check`]).
#[must_use]
pub struct Attempt<'a> {
    limiter: &'a ClientAuthenticator,
    key: [u8; 32],
    /// False for a decoy only waited out: no check ran, so its failure is
    /// counted in [`Guesses::waited_out`].
    counted: bool,
}

impl Attempt<'_> {
    /// The check failed: it counts as a failure of the name.
    pub fn failed(self) {
        let guesses = &self.limiter.guesses;
        let table = if self.counted {
            &guesses.failures
        } else {
            &guesses.waited_out
        };
        // Counted while this check still holds its place (freed on drop,
        // after this guard), under the lock a beginning check reads both
        // through: it sees the place taken or the failure counted, never
        // neither ([`ClientAuthenticator::try_begin`]).
        let _places = guesses.pending.lock();
        record_failure_in(table, self.key);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.limiter.guesses.pending.lock() {
            if let Some(count) = pending.get_mut(&self.key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    pending.remove(&self.key);
                }
            }
        }
        self.limiter.guesses.check_ended.notify_waiters();
    }
}

/// Runs argon2 checks on the blocking pool, [`HASHING_AT_ONCE`] at a time
/// with at most [`HASHING_WAITING`] waiting, in memory it keeps for them.
#[derive(Clone)]
struct PasswordChecker {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// Decoys under way ([`DECOYS_AT_ONCE`]).
    decoys: Arc<Semaphore>,
    /// Decoys waiting for one of those places ([`HASHING_WAITING`]).
    decoys_waiting: Arc<Semaphore>,
    /// Decoys that may still be waited out ([`WAITED_OUT_PER_SECOND`]): the
    /// tokens left, and when they were last topped up.
    waited_out_budget: Arc<Mutex<(f64, tokio::time::Instant)>>,
    /// One hash's working memory per running check, reused: allocated anew
    /// each time on whatever blocking thread ran the check, glibc kept it in
    /// that thread's arena, and a burst of checks left hundreds of MB behind.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
}

/// Too many password checks in flight: answered 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl PasswordChecker {
    fn new() -> Self {
        Self {
            admitted: Arc::new(Semaphore::new(HASHING_AT_ONCE + HASHING_WAITING)),
            running: Arc::new(Semaphore::new(HASHING_AT_ONCE)),
            decoys: Arc::new(Semaphore::new(DECOYS_AT_ONCE)),
            decoys_waiting: Arc::new(Semaphore::new(HASHING_WAITING)),
            waited_out_budget: Arc::new(Mutex::new((
                WAITED_OUT_PER_SECOND,
                tokio::time::Instant::now(),
            ))),
            memory: Arc::default(),
        }
    }

    /// A check against `decoy`, which never matches: refused as a real
    /// check would be when the real checks' places are all taken (`Busy`);
    /// run in the real checks' queue while fewer than [`DECOYS_AT_ONCE`] are
    /// under way (true); else waited out for as long as its last one took
    /// (false), within [`WAITED_OUT_PER_SECOND`], past which it waits for
    /// its place and runs, or is refused (`Busy`) when [`HASHING_WAITING`]
    /// already wait.
    async fn decoy(&self, decoy: &Decoy, secret: &str) -> Result<bool, Busy> {
        // Refused as a real check would be; a decoy waiting for its own
        // place, or waited out, takes none of theirs, so that a flood of
        // made-up names cannot fill them.
        if self.admitted.available_permits() == 0 {
            return Err(Busy);
        }
        let under_way = match Arc::clone(&self.decoys).try_acquire_owned() {
            Ok(place) => place,
            Err(_) if self.may_wait_out() => {
                tokio::time::sleep(decoy.last_took()).await;
                return Ok(false);
            }
            Err(_) => {
                let _waiting = self.decoys_waiting.try_acquire().map_err(|_| Busy)?;
                Arc::clone(&self.decoys)
                    .acquire_owned()
                    .await
                    .map_err(|_| Busy)?
            }
        };
        // Under way, it holds one of the real checks' places as they do (at
        // most DECOYS_AT_ONCE of them), so that the last free place does
        // not tell a known name from an unknown one.
        let admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        // Timed from here, as a real check's wait and run are.
        let started = Instant::now();
        let running = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        let (hash, secret) = (decoy.hash.clone(), secret.to_owned());
        let memory = Arc::clone(&self.memory);
        let nanos = Arc::clone(&decoy.nanos);
        let _ = tokio::task::spawn_blocking(move || {
            let _permits = (under_way, admitted, running);
            let _ = argon2_in(&memory, &hash, &secret);
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            nanos.store(took.max(1), Ordering::Relaxed);
        })
        .await;
        Ok(true)
    }

    /// Takes a token of the waited-out budget, if one is left.
    fn may_wait_out(&self) -> bool {
        let Ok(mut budget) = self.waited_out_budget.lock() else {
            return false;
        };
        let (tokens, topped_up) = &mut *budget;
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(*topped_up).as_secs_f64() * WAITED_OUT_PER_SECOND;
        *tokens = (*tokens + refill).min(WAITED_OUT_PER_SECOND);
        *topped_up = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn verify(&self, hash: &str, secret: &str) -> Result<bool, Busy> {
        let admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let running = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        let (hash, secret) = (hash.to_owned(), secret.to_owned());
        let memory = Arc::clone(&self.memory);
        // The permits go with the check: one whose request went away still
        // counts until it ends.
        Ok(tokio::task::spawn_blocking(move || {
            let _permits = (admitted, running);
            argon2_in(&memory, &hash, &secret)
        })
        .await
        .unwrap_or(false))
    }
}

/// [`argon2_matches`] in working memory taken from, and given back to,
/// `memory` (blocking).
fn argon2_in(memory: &Mutex<Vec<Vec<Block>>>, hash: &str, secret: &str) -> bool {
    let mut blocks = memory
        .lock()
        .ok()
        .and_then(|mut m| m.pop())
        .unwrap_or_default();
    let matches = argon2_matches(hash, secret, &mut blocks);
    if let Ok(mut m) = memory.lock() {
        m.push(blocks);
    }
    matches
}

impl ClientAuthenticator {
    /// Indexes the registered clients, remembering the secrets `previous`
    /// (the server before a reload) checked and the failures it counted.
    /// `users` are the sign-in users, whose hashes the users' decoy
    /// follows as the clients' decoy follows the clients' hashes.
    pub fn new(
        clients: &[Client],
        users: &[crate::config::User],
        previous: Option<&ClientAuthenticator>,
    ) -> Self {
        Self {
            client_decoy: Decoy::of(
                clients.iter().filter_map(|c| c.secret_hash.as_deref()),
                previous.map(|p| &p.client_decoy),
            ),
            user_decoy: Decoy::of(
                users.iter().map(|u| u.password_hash.as_str()),
                previous.map(|p| &p.user_decoy),
            ),
            clients: clients
                .iter()
                .map(|c| (c.client_id.clone(), c.clone()))
                .collect(),
            verified: previous.map_or_else(
                || {
                    moka::sync::Cache::builder()
                        .max_capacity(10_000)
                        .time_to_idle(SUCCESS_IDLE)
                        .build()
                },
                |p| p.verified.clone(),
            ),
            verified_key: previous.map_or_else(
                || {
                    let mut key = [0u8; 32];
                    // Without randomness, a digest as before (unkeyed).
                    let _ = aws_lc_rs::rand::fill(&mut key);
                    key
                },
                |p| p.verified_key,
            ),
            guesses: previous.map_or_else(Arc::default, |p| Arc::clone(&p.guesses)),
            hashing: previous.map_or_else(PasswordChecker::new, |p| p.hashing.clone()),
        }
    }

    /// Checks a user's password against its argon2 hash (bounded like the
    /// client secrets' checks); for a user that does not exist (`None`), a
    /// decoy that takes as long and never matches ([`DECOYS_AT_ONCE`]).
    pub async fn verify_password(
        &self,
        hash: Option<&str>,
        password: &str,
        attempt: Option<&mut Attempt<'_>>,
    ) -> Result<bool, Busy> {
        match hash {
            Some(hash) => self.hashing.verify(hash, password).await,
            None => decoy_check(&self.hashing, &self.user_decoy, password, attempt).await,
        }
    }

    /// A registered client by id.
    pub fn client(&self, client_id: &str) -> Option<&Client> {
        self.clients.get(client_id)
    }

    /// Authenticates a confidential client (or identifies a public one when
    /// `allow_public` and it sent no secret).
    pub async fn authenticate(
        &self,
        presented: Option<Presented>,
        allow_public: bool,
    ) -> Result<Arc<Client>, OAuthError> {
        let Some(p) = presented else {
            return Err(OAuthError::invalid_client(
                true,
                "client authentication is required",
            ));
        };
        let limiter_key = format!("client:{}", p.client_id);
        let client = self.clients.get(&p.client_id);
        // A public client has no secret to guess, so nothing is counted
        // against it: a few requests with a made-up secret would otherwise
        // lock every user of a single-page app out of signing in. Nor is a
        // client whose secret, as sent, was checked before: a known secret
        // is no guess, so guesses by others cannot lock the client out.
        let public = client.is_some_and(|c| c.secret_hash.is_none());
        let known_secret = match (client.and_then(|c| c.secret_hash.as_deref()), &p.secret) {
            // `get`, not `contains_key`: a use keeps the memory alive.
            (Some(hash), Some(secret)) => self
                .verified
                .get(&self.cache_key(&p.client_id, hash, secret))
                .is_some(),
            _ => false,
        };
        if !public && !known_secret && self.is_limited(&limiter_key) {
            return Err(OAuthError::too_many_attempts(p.basic));
        }
        let Some(client) = client else {
            return Err(self
                .refuse_unchecked(&p, &limiter_key, "unknown client")
                .await);
        };
        match (&client.secret_hash, &p.secret) {
            (None, None) if allow_public => Ok(Arc::new(client.clone())),
            (None, secret) => {
                // A made-up secret costs what a wrong one does, so the time
                // of the answer does not tell public ids; it is not counted
                // (the limit would tell them after five tries, which is no
                // secret: a public client's id is in its app).
                if let Some(secret) = secret {
                    if decoy_check(&self.hashing, &self.client_decoy, secret, None)
                        .await
                        .is_err()
                    {
                        return Err(OAuthError::busy());
                    }
                }
                Err(failed(&p, true, "a public client cannot authenticate here"))
            }
            (Some(_), None) => Err(failed(&p, true, "client secret missing")),
            (Some(hash), Some(secret)) => {
                // A secret checked before needs no argon2 check, and is no
                // guess: only uncached checks take a place under the limit.
                let attempt = if known_secret {
                    None
                } else {
                    Some(
                        self.begin_check(&limiter_key)
                            .await
                            .ok_or_else(|| OAuthError::too_many_attempts(p.basic))?,
                    )
                };
                let matches = self
                    .check_secret(&p.client_id, hash, secret)
                    .await
                    .map_err(|Busy| OAuthError::busy())?;
                if matches {
                    Ok(Arc::new(client.clone()))
                } else {
                    if let Some(attempt) = attempt {
                        attempt.failed();
                    }
                    Err(failed(&p, true, "wrong secret"))
                }
            }
        }
    }

    /// Refuses an unknown client exactly as a wrong secret is refused: a
    /// secret it sent costs an argon2 check as long (against a hash nobody's
    /// secret matches; [`decoy_check`]) and counts as a failure, so neither
    /// the answer, its time nor the rate limit tells unknown ids from those
    /// of confidential clients. Only a secret sent counts: refusals without
    /// one cost nothing, and would let a flood fill the limiter's table for
    /// free (a decoy waited out counts apart, within its budget).
    async fn refuse_unchecked(
        &self,
        p: &Presented,
        limiter_key: &str,
        why: &'static str,
    ) -> OAuthError {
        if let Some(secret) = &p.secret {
            let Some(mut attempt) = self.begin_check(limiter_key).await else {
                return OAuthError::too_many_attempts(p.basic);
            };
            let checked = decoy_check(
                &self.hashing,
                &self.client_decoy,
                secret,
                Some(&mut attempt),
            )
            .await;
            if checked.is_err() {
                return OAuthError::busy();
            }
            attempt.failed();
        }
        failed(p, false, why)
    }

    /// The key a verified secret is remembered by: an HMAC (keyed by
    /// `verified_key`) of the client, its hash and the secret.
    fn cache_key(&self, id: &str, hash: &str, secret: &str) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.verified_key);
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        for part in [id, hash, secret] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Verifies a secret against its argon2 hash off the runtime, remembering
    /// successes so the endpoint is not a CPU sink.
    pub async fn check_secret(&self, id: &str, hash: &str, secret: &str) -> Result<bool, Busy> {
        let key = self.cache_key(id, hash, secret);
        if self.verified.get(&key).is_some() {
            return Ok(true);
        }
        let ok = self.hashing.verify(hash, secret).await?;
        if ok {
            self.verified.insert(key, ());
        }
        Ok(ok)
    }

    /// True when `key` (a client id or user name) failed too often recently.
    pub fn is_limited(&self, key: &str) -> bool {
        self.failures_of(failure_key(key))
            .is_none_or(|failed| failed >= MAX_FAILURES)
    }

    /// A name's failures within the window, checked or waited out; `None`
    /// when the limiter cannot be read (then the name is limited).
    fn failures_of(&self, key: [u8; 32]) -> Option<u32> {
        let mut failed: u32 = 0;
        for table in [&self.guesses.failures, &self.guesses.waited_out] {
            let table = table.lock().ok()?;
            if let Some((n, start)) = table.get(&key) {
                if start.elapsed() < FAILURE_WINDOW {
                    failed = failed.saturating_add(*n);
                }
            }
        }
        Some(failed)
    }

    /// Starts a secret or password check for `name`: `None` when the name
    /// is limited. While its failures and the checks already under way for
    /// it reach the limit, it waits for one of those to end: a burst of
    /// guesses gets no more checks than the limit, and a burst of right
    /// secrets or passwords is only held back until the first ones pass.
    pub async fn begin_check(&self, name: &str) -> Option<Attempt<'_>> {
        let key = failure_key(name);
        loop {
            // Registered before looking, so that an end in between wakes it.
            let ended = self.guesses.check_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match self.try_begin(key) {
                Begin::Go(attempt) => return Some(attempt),
                Begin::Limited => return None,
                Begin::Wait => ended.await,
            }
        }
    }

    fn try_begin(&self, key: [u8; 32]) -> Begin<'_> {
        // The failures are read under the checks-under-way lock, which a
        // failing check holds while it counts its failure ([`Attempt::failed`]).
        let Ok(mut pending) = self.guesses.pending.lock() else {
            return Begin::Limited;
        };
        let Some(failed) = self.failures_of(key) else {
            return Begin::Limited;
        };
        if failed >= MAX_FAILURES {
            return Begin::Limited;
        }
        let under_way = pending.get(&key).copied().unwrap_or(0);
        if failed.saturating_add(under_way) >= MAX_FAILURES {
            return Begin::Wait;
        }
        pending.insert(key, under_way.saturating_add(1));
        Begin::Go(Attempt {
            limiter: self,
            key,
            counted: true,
        })
    }

    /// Counts a failed secret or password check for `name`.
    pub fn record_failure(&self, name: &str) {
        record_failure_in(&self.guesses.failures, failure_key(name));
    }
}

/// A check for a name that does not exist, against `decoy` ([`decoy_hash`]):
/// never matches. One only waited out leaves `attempt` (if any) to count its
/// failure apart ([`Guesses::waited_out`]).
async fn decoy_check(
    hashing: &PasswordChecker,
    decoy: &Decoy,
    secret: &str,
    attempt: Option<&mut Attempt<'_>>,
) -> Result<bool, Busy> {
    let ran = hashing.decoy(decoy, secret).await?;
    if let Some(attempt) = attempt {
        attempt.counted &= ran;
    }
    Ok(false)
}

/// Counts a failure of the name `key` in `table` (the limiter's main one, or
/// [`Guesses::waited_out`]).
fn record_failure_in(table: &Mutex<HashMap<[u8; 32], (u32, Instant)>>, key: [u8; 32]) {
    let Ok(mut failures) = table.lock() else {
        return;
    };
    if failures.len() >= MAX_TRACKED && !failures.contains_key(&key) {
        failures.retain(|_, (_, start)| start.elapsed() < FAILURE_WINDOW);
        if failures.len() >= MAX_TRACKED {
            let fewest = failures.values().map(|(n, _)| *n).min().unwrap_or(0);
            if fewest >= MAX_FAILURES {
                return;
            }
            failures.retain(|_, (n, _)| *n > fewest);
        }
    }
    let entry = failures.entry(key).or_insert((0, Instant::now()));
    if entry.1.elapsed() >= FAILURE_WINDOW {
        *entry = (0, Instant::now());
    }
    entry.0 = entry.0.saturating_add(1);
}

/// The failure limiter's key for a name.
fn failure_key(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes()).as_ref(),
    );
    out
}

/// The most working memory (KiB) one argon2 check may take: [`HASHING_AT_ONCE`]
/// checks run at once and each keeps its memory for the next, so a hash that
/// asks for gigabytes would hold them, or abort the process when they cannot
/// be had. 256 MiB is over ten times what `hash-secret` uses.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// The most passes over that memory one check may take (`hash-secret`: 2).
pub const MAX_ARGON2_PASSES: u32 = 16;
/// The most lanes one check may take (`hash-secret`: 1).
pub const MAX_ARGON2_LANES: u32 = 16;

/// An argon2 PHC string, read and checked: the hasher with its parameters,
/// the salt and the output a matching secret gives.
struct Argon2Hash {
    hasher: Argon2<'static>,
    blocks: usize,
    salt: [u8; 64],
    salt_len: usize,
    expected: argon2::password_hash::Output,
}

/// Reads `hash` as argon2 (id, i or d) with a salt, an output, and
/// parameters within the bounds above; the error says what is wrong.
fn parse_argon2(hash: &str) -> Result<Argon2Hash, String> {
    // The examples' placeholder, pasted as it is.
    if hash.contains("...") {
        return Err("`...` stands for a hash, it is not one".to_owned());
    }
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC string ({e})"))?;
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm)
        .map_err(|_| format!("`{}` is not argon2", parsed.algorithm))?;
    let version = parsed
        .version
        .map_or(Ok(argon2::Version::default()), argon2::Version::try_from)
        .map_err(|_| "an unknown argon2 version".to_owned())?;
    let params =
        argon2::Params::try_from(&parsed).map_err(|e| format!("argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB
        || params.t_cost() > MAX_ARGON2_PASSES
        || params.p_cost() > MAX_ARGON2_LANES
    {
        return Err(format!(
            "argon2 parameters m={},t={},p={} are over m={MAX_ARGON2_MEMORY_KIB},t={MAX_ARGON2_PASSES},p={MAX_ARGON2_LANES} (every check would take that memory and time)",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    let mut salt = [0u8; 64];
    let salt_len = parsed
        .salt
        .ok_or_else(|| "no salt".to_owned())?
        .decode_b64(&mut salt)
        .map_err(|e| format!("salt: {e}"))?
        .len();
    if salt_len < argon2::MIN_SALT_LEN {
        return Err(format!(
            "the salt is {salt_len} bytes, under argon2's {}",
            argon2::MIN_SALT_LEN
        ));
    }
    let expected = parsed
        .hash
        .ok_or_else(|| "no hash after the salt".to_owned())?;
    Ok(Argon2Hash {
        blocks: params.block_count(),
        hasher: Argon2::new(algorithm, version, params),
        salt,
        salt_len,
        expected,
    })
}

/// The argon2 variant, version and parameters of a PHC string (all before
/// its salt and output), when it is one; and their cost (memory times
/// passes), which a check's time follows.
pub fn argon2_parameters(hash: &str) -> Option<(&str, u64)> {
    let parsed = PasswordHash::new(hash).ok()?;
    let params = argon2::Params::try_from(&parsed).ok()?;
    let cost = u64::from(params.m_cost()) * u64::from(params.t_cost());
    let (head, _output) = hash.rsplit_once('$')?;
    let (parameters, _salt) = head.rsplit_once('$')?;
    Some((parameters, cost))
}

/// The hash checked for a name that does not exist: of the cost most of
/// `hashes` take (memory times passes, which a check's time follows: lanes
/// run one after another here), with the parameters of the first hash of
/// that cost (the costliest cost among those taken equally often), so that
/// its check takes as long as theirs; `hash-secret`'s when there are none.
/// A name whose hash costs otherwise is told apart by its time, which the
/// config load warns about.
pub fn decoy_hash<'a>(hashes: impl Iterator<Item = &'a str>) -> String {
    let mut used: Vec<(&str, u64, usize)> = Vec::new();
    for (parameters, cost) in hashes.filter_map(argon2_parameters) {
        match used.iter_mut().find(|(_, c, _)| *c == cost) {
            Some((_, _, count)) => *count += 1,
            None => used.push((parameters, cost, 1)),
        }
    }
    let Some((parameters, _, _)) = used
        .into_iter()
        .max_by_key(|(_, cost, count)| (*count, *cost))
    else {
        return UNKNOWN_NAME_HASH.to_owned();
    };
    let salt_and_output = UNKNOWN_NAME_HASH.splitn(5, '$').nth(4).unwrap_or_default();
    format!("{parameters}${salt_and_output}")
}

/// Checks a configured `client_secret_hash` or `password_hash`: a hash that
/// passes can be checked against a secret, within bounded memory and time.
pub fn check_argon2_hash(hash: &str) -> Result<(), String> {
    parse_argon2(hash).map(drop)
}

/// Whether `secret` matches the argon2 PHC string `hash` (blocking), with
/// `blocks` as the hash's working memory (grown to its memory cost). What
/// `PasswordVerifier::verify_password` does, but in memory of our own.
fn argon2_matches(hash: &str, secret: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(hash) = parse_argon2(hash) else {
        return false;
    };
    blocks.resize(hash.blocks, Block::default());
    let mut out = [0u8; argon2::password_hash::Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..hash.expected.len()) else {
        return false;
    };
    let salt = &hash.salt[..hash.salt_len];
    hash.hasher
        .hash_password_into_with_memory(secret.as_bytes(), salt, out, &mut blocks[..])
        .is_ok()
        // `Output`'s equality is constant-time.
        && argon2::password_hash::Output::new(out).is_ok_and(|computed| computed == hash.expected)
}

/// Hashes a secret for the config (`scopegate hash-secret`).
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:?}` of presented credentials names the client, not its secret.
    #[test]
    fn debug_of_presented_credentials_hides_the_secret() {
        let mut headers = HeaderMap::new();
        let basic = format!("Basic {}", STANDARD.encode("svc:s3cret-8d1e6b"));
        headers.insert(http::header::AUTHORIZATION, basic.parse().unwrap());
        let presented = presented(&headers, &HashMap::new(), false)
            .unwrap()
            .unwrap();
        let shown = format!("{presented:?}");
        assert!(!shown.contains("s3cret-8d1e6b"), "{shown}");
        assert!(
            shown.contains("svc") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    /// A verified secret is remembered by a digest keyed to the process
    /// (kept across reloads, which keep the memory): not the plain SHA-256
    /// a dump's reader could test guesses against.
    #[test]
    fn verified_secrets_are_remembered_by_a_keyed_digest() {
        let key = |auth: &ClientAuthenticator| auth.cache_key("svc", "$argon2id$x", "s3cret");
        let first = ClientAuthenticator::new(&[], &[], None);
        let reloaded = ClientAuthenticator::new(&[], &[], Some(&first));
        let another = ClientAuthenticator::new(&[], &[], None);
        assert_eq!(key(&first), key(&reloaded));
        assert_ne!(key(&first), key(&another));
        let mut plain = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in ["svc", "$argon2id$x", "s3cret"] {
            plain.update(&(part.len() as u64).to_be_bytes());
            plain.update(part.as_bytes());
        }
        assert_ne!(key(&first).as_slice(), plain.finish().as_ref());
    }

    /// A flood of fresh names (each failing once, as an attacker's would)
    /// fills the limiter's table but neither clears it nor evicts a name
    /// that is limited, and the table stays within its bound.
    #[test]
    fn a_flood_of_fresh_names_does_not_free_a_limited_name() {
        let auth = ClientAuthenticator::new(&[], &[], None);
        for _ in 0..MAX_FAILURES {
            assert!(!auth.is_limited("user:victim"));
            auth.record_failure("user:victim");
        }
        assert!(auth.is_limited("user:victim"));
        for _ in 1..MAX_FAILURES {
            auth.record_failure("user:almost");
        }
        for i in 0..3 * MAX_TRACKED {
            let name = format!("user:{i}");
            assert!(!auth.is_limited(&name));
            auth.record_failure(&name);
        }
        assert!(auth.is_limited("user:victim"), "the flood freed the name");
        assert!(!auth.is_limited("user:almost"));
        let within_bound = || {
            let tracked = auth.guesses.failures.lock().unwrap().len();
            assert!(
                (1..=MAX_TRACKED).contains(&tracked),
                "{tracked} names tracked"
            );
        };
        // Within the bound after the flood itself, not only once a known
        // name fails again.
        within_bound();
        auth.record_failure("user:almost");
        assert!(auth.is_limited("user:almost"), "the flood reset the count");
        // A name guessed at after the flood is counted too: the flood's
        // names make room for it.
        for _ in 0..MAX_FAILURES {
            auth.record_failure("user:late");
        }
        assert!(
            auth.is_limited("user:late"),
            "the flood hid a name's guesses"
        );
        within_bound();
    }

    /// A name already tracked that fails again is counted on, even with the
    /// table full and its count the fewest: only a fresh name makes room,
    /// so the table cannot be made to drop a name between its guesses.
    #[test]
    fn a_tracked_name_failing_again_in_a_full_table_keeps_its_count() {
        let auth = ClientAuthenticator::new(&[], &[], None);
        auth.record_failure("user:target");
        for i in 1..MAX_TRACKED {
            let name = format!("user:{i}");
            auth.record_failure(&name);
            auth.record_failure(&name);
        }
        assert_eq!(auth.guesses.failures.lock().unwrap().len(), MAX_TRACKED);
        for _ in 1..MAX_FAILURES {
            assert!(!auth.is_limited("user:target"));
            auth.record_failure("user:target");
        }
        assert!(auth.is_limited("user:target"), "a failure was lost");
    }

    /// Checks under way count against the limit: a burst started together
    /// gets no more guesses than the limit, and an ended check frees its
    /// place (as a failure, or not at all when it succeeded).
    #[tokio::test]
    async fn checks_under_way_count_against_the_limit() {
        let auth = ClientAuthenticator::new(&[], &[], None);
        let target = failure_key("user:target");
        fn go(begin: Begin<'_>) -> Option<Attempt<'_>> {
            match begin {
                Begin::Go(attempt) => Some(attempt),
                _ => None,
            }
        }
        let burst: Vec<_> = (0..MAX_FAILURES)
            .map(|_| go(auth.try_begin(target)).expect("under the limit"))
            .collect();
        assert!(
            matches!(auth.try_begin(target), Begin::Wait),
            "a sixth check began"
        );
        assert!(!auth.is_limited("user:target"), "nothing has failed yet");
        assert!(auth.begin_check("user:other").await.is_some());
        // A sixth waits; one of the five passing lets it begin.
        let mut burst = burst.into_iter();
        let passed = burst.next();
        let (again, ()) = tokio::join!(auth.begin_check("user:target"), async move {
            tokio::task::yield_now().await;
            drop(passed);
        });
        again.expect("a passed check frees its place").failed();
        // The rest fail: the name is limited, and the waiting one is refused.
        let failing = async move {
            tokio::task::yield_now().await;
            burst.for_each(Attempt::failed);
        };
        let (refused, ()) = tokio::join!(auth.begin_check("user:target"), failing);
        assert!(refused.is_none(), "a check began on a limited name");
        assert!(auth.is_limited("user:target"));
        assert!(
            auth.guesses.pending.lock().unwrap().is_empty(),
            "ended checks stay pending"
        );
    }

    /// A check that fails counts its failure before it frees its place, as
    /// one step for a check beginning: threads beginning, failing and ending
    /// checks for one name at once never get more than the limit between
    /// them (a newcomer could read the failures before one was counted and
    /// the checks under way after its place was freed, and begin a sixth).
    #[test]
    fn a_burst_failing_at_once_gets_no_more_checks_than_the_limit() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 3_000;
        let mut worst = 0;
        for _ in 0..ROUNDS {
            let auth = ClientAuthenticator::new(&[], &[], None);
            let key = failure_key("user:target");
            let begun = std::sync::atomic::AtomicU32::new(0);
            let start = std::sync::Barrier::new(THREADS);
            std::thread::scope(|scope| {
                for _ in 0..THREADS {
                    scope.spawn(|| {
                        start.wait();
                        loop {
                            match auth.try_begin(key) {
                                Begin::Go(attempt) => {
                                    let before =
                                        begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    attempt.failed();
                                    // Past the limit the burst failed already:
                                    // a limiter that never says `Limited` ends
                                    // the test here, rather than never.
                                    if before >= MAX_FAILURES {
                                        break;
                                    }
                                }
                                Begin::Wait => std::thread::yield_now(),
                                Begin::Limited => break,
                            }
                        }
                    });
                }
            });
            worst = worst.max(begun.into_inner());
        }
        assert_eq!(
            worst, MAX_FAILURES,
            "a burst got more checks than the limit"
        );
    }

    /// Checks beyond the running and waiting bound are refused at once, not
    /// queued; a running check keeps its place until it ends, even when its
    /// caller went away; then checks are admitted again.
    #[tokio::test]
    async fn password_checks_beyond_the_bound_are_refused_at_once() {
        let checker = PasswordChecker::new();
        let hash = hash_secret("right").unwrap();
        let mut admitted: Vec<_> = (0..HASHING_AT_ONCE + HASHING_WAITING)
            .map(|_| Box::pin(checker.verify(&hash, "wrong")))
            .collect();
        for check in &mut admitted {
            assert!(futures_util::poll!(check).is_pending());
        }
        // Refused when first asked, without waiting.
        assert_eq!(
            futures_util::FutureExt::now_or_never(checker.verify(&hash, "right")),
            Some(Err(Busy))
        );
        // The callers go away; the running checks still hold their places.
        drop(admitted);
        assert_eq!(
            checker.running.available_permits(),
            0,
            "running checks are still counted"
        );
        assert_eq!(checker.verify(&hash, "right").await, Ok(true));
        assert_eq!(checker.verify(&hash, "wrong").await, Ok(false));
    }

    /// An unknown client's secret or user's password is checked too (against
    /// a hash nobody's secret matches), in the real checks' queue, so it
    /// takes as long to refuse as a known one's and is refused alike when
    /// that queue is full (503). At most [`DECOYS_AT_ONCE`] decoys are under
    /// way: beyond them one is waited out, and its failure still counts
    /// towards the name's limit, in a table of its own.
    #[tokio::test]
    async fn unknown_names_cost_a_check_like_known_ones() {
        let clients = ClientAuthenticator::new(&[], &[], None);
        let hash = hash_secret("right").unwrap();
        let mut taken: Vec<_> = (0..HASHING_AT_ONCE + HASHING_WAITING)
            .map(|_| Box::pin(clients.hashing.verify(&hash, "wrong")))
            .collect();
        for check in &mut taken {
            assert!(futures_util::poll!(check).is_pending());
        }
        let presented = Presented {
            client_id: "nobody".to_owned(),
            secret: Some("guess".to_owned()),
            basic: false,
        };
        let refused =
            futures_util::FutureExt::now_or_never(clients.authenticate(Some(presented), false));
        assert_eq!(
            refused.map(|r| r.map(|_| ())),
            Some(Err(OAuthError::busy()))
        );
        assert_eq!(
            futures_util::FutureExt::now_or_never(clients.verify_password(None, "guess", None)),
            Some(Err(Busy))
        );
        drop(taken);
        assert_eq!(
            clients.verify_password(None, "guess", None).await,
            Ok(false)
        );
        // Each kind is timed for itself.
        assert!(clients.user_decoy.nanos.load(Ordering::Relaxed) > 0);
        assert_eq!(clients.client_decoy.nanos.load(Ordering::Relaxed), 0);

        // Decoys under way to the bound: one more is waited out, counted
        // apart, and five such failures limit the name as five checks do.
        // (Their places held here: decoys themselves would end and free them.)
        let under_way = Arc::clone(&clients.hashing.decoys)
            .try_acquire_many_owned(u32::try_from(DECOYS_AT_ONCE).unwrap())
            .unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!clients.is_limited("user:made-up"));
            let mut attempt = clients.begin_check("user:made-up").await.unwrap();
            let checked = clients
                .verify_password(None, "guess", Some(&mut attempt))
                .await;
            assert_eq!(checked, Ok(false));
            assert!(!attempt.counted, "a decoy past the bound ran");
            attempt.failed();
        }
        assert!(clients.is_limited("user:made-up"));
        assert!(clients.begin_check("user:made-up").await.is_none());
        assert!(
            clients.guesses.failures.lock().unwrap().is_empty(),
            "free refusals went into the main table"
        );
        drop(under_way);
        // Under the bound again, a decoy runs and counts in the main table.
        let mut attempt = clients.begin_check("user:other").await.unwrap();
        let _ = clients
            .verify_password(None, "guess", Some(&mut attempt))
            .await;
        assert!(attempt.counted);
        attempt.failed();
        assert_eq!(clients.guesses.failures.lock().unwrap().len(), 1);
    }

    /// A decoy under way holds one of the real checks' admitted places, as a
    /// real check does, and gives it back when it ends.
    #[tokio::test]
    async fn a_decoy_under_way_holds_a_place_as_a_real_check_does() {
        let clients = ClientAuthenticator::new(&[], &[], None);
        let all = HASHING_AT_ONCE + HASHING_WAITING;
        let running = Arc::clone(&clients.hashing.running)
            .try_acquire_many_owned(u32::try_from(HASHING_AT_ONCE).unwrap())
            .unwrap();
        let mut decoy = Box::pin(clients.hashing.decoy(&clients.user_decoy, "guess"));
        assert!(futures_util::poll!(&mut decoy).is_pending());
        assert_eq!(clients.hashing.admitted.available_permits(), all - 1);
        drop(running);
        assert_eq!(decoy.await, Ok(true));
        assert_eq!(clients.hashing.admitted.available_permits(), all);
    }

    /// Decoys are waited out within a budget only: past it, one waits for a
    /// decoy place and runs (and counts in the main table), so free
    /// refusals cannot fill the waited-out table with limited names; and at
    /// most [`HASHING_WAITING`] wait, so a flood parks no requests without
    /// bound.
    #[tokio::test(start_paused = true)]
    async fn decoys_are_waited_out_within_a_budget() {
        let clients = ClientAuthenticator::new(&[], &[], None);
        let under_way = Arc::clone(&clients.hashing.decoys)
            .try_acquire_many_owned(u32::try_from(DECOYS_AT_ONCE).unwrap())
            .unwrap();
        let mut waited_out = 0;
        while clients.hashing.may_wait_out() {
            waited_out += 1;
        }
        assert_eq!(f64::from(waited_out), WAITED_OUT_PER_SECOND);
        let mut attempt = clients.begin_check("user:made-up").await.unwrap();
        let mut check = Box::pin(clients.verify_password(None, "guess", Some(&mut attempt)));
        assert!(
            futures_util::poll!(&mut check).is_pending(),
            "waited out past the budget"
        );
        // Those waiting for a place are bounded too: beyond them, 503.
        let waiting: Vec<_> = (1..HASHING_WAITING)
            .map(|_| Box::pin(clients.hashing.decoy(&clients.user_decoy, "guess")))
            .collect();
        let mut waiting = waiting;
        for decoy in &mut waiting {
            assert!(futures_util::poll!(decoy).is_pending());
        }
        assert_eq!(
            futures_util::FutureExt::now_or_never(
                clients.hashing.decoy(&clients.user_decoy, "guess")
            ),
            Some(Err(Busy))
        );
        drop(waiting);
        drop(under_way);
        assert_eq!(check.await, Ok(false));
        assert!(attempt.counted, "a decoy that ran was not counted");
        attempt.failed();
        assert_eq!(clients.guesses.failures.lock().unwrap().len(), 1);
        // The budget comes back with time.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(clients.hashing.may_wait_out());
    }

    /// The decoy takes the cost (memory times passes) most configured hashes
    /// take, with the parameters of the first of them (the costliest cost
    /// of those taken equally often), so that an unknown name is refused as
    /// slowly as a known one; `hash-secret`'s without any.
    #[test]
    fn the_decoy_follows_the_configured_hashes_cost() {
        let params = |hash: &str| argon2_parameters(hash).map(|(p, _)| p.to_owned());
        assert_eq!(decoy_hash(std::iter::empty()), UNKNOWN_NAME_HASH);
        let hash = |parameters: &str| {
            format!("{parameters}$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG")
        };
        let heavy = hash("$argon2id$v=19$m=65536,t=3,p=4");
        let heavy_one_lane = hash("$argon2id$v=19$m=65536,t=3,p=1");
        let light = hash("$argon2i$v=19$m=4096,t=1,p=1");
        for (hashes, expected) in [
            (vec![&heavy], "$argon2id$v=19$m=65536,t=3,p=4"),
            (vec![&light, &heavy], "$argon2id$v=19$m=65536,t=3,p=4"),
            (vec![&light, &heavy, &light], "$argon2i$v=19$m=4096,t=1,p=1"),
            // Lanes cost no time of their own: one cost, first parameters.
            (
                vec![&light, &heavy_one_lane, &heavy],
                "$argon2id$v=19$m=65536,t=3,p=1",
            ),
        ] {
            let decoy = decoy_hash(hashes.iter().map(|h| h.as_str()));
            assert_eq!(params(&decoy).as_deref(), Some(expected), "{hashes:?}");
            assert_eq!(check_argon2_hash(&decoy), Ok(()), "{decoy}");
            let salt_and_output = UNKNOWN_NAME_HASH.split('$').skip(4).collect::<Vec<_>>();
            assert!(decoy.ends_with(&salt_and_output.join("$")), "{decoy}");
        }
        let decoy = decoy_hash(["not a hash", light.as_str()].into_iter());
        assert_eq!(
            params(&decoy).as_deref(),
            Some("$argon2i$v=19$m=4096,t=1,p=1")
        );
        assert_eq!(
            argon2_parameters(UNKNOWN_NAME_HASH),
            Some(("$argon2id$v=19$m=19456,t=2,p=1", 19456 * 2))
        );
    }

    /// A waited-out decoy lasts as long as the last check of its hash took
    /// (a guess before one has run), and a reload keeps that time only
    /// while the decoy's hash stays the same: another hash costs otherwise.
    #[test]
    fn a_waited_out_decoy_lasts_as_its_hashs_last_check() {
        let light =
            "$argon2i$v=19$m=4096,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        let first = Decoy::of(std::iter::empty(), None);
        assert_eq!(first.last_took(), DECOY_UNTIMED);
        first.nanos.store(7_000_000, Ordering::Relaxed);
        assert_eq!(first.last_took(), Duration::from_millis(7));
        let reloaded = Decoy::of(std::iter::empty(), Some(&first));
        assert_eq!(reloaded.last_took(), Duration::from_millis(7));
        let rehashed = Decoy::of([light].into_iter(), Some(&first));
        assert_ne!(rehashed.hash, first.hash);
        assert_eq!(rehashed.last_took(), DECOY_UNTIMED);
    }

    /// The check in reused memory agrees with argon2's own verifier, for
    /// each variant and version, whatever the memory held before.
    #[test]
    fn argon2_checks_in_reused_memory_agree_with_the_verifier() {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        use argon2::{Algorithm, Params, PasswordVerifier, Version};
        let mut blocks = Vec::new();
        for (algorithm, version, m, t) in [
            (Algorithm::Argon2id, Version::V0x13, 64, 2),
            (Algorithm::Argon2i, Version::V0x13, 256, 1),
            (Algorithm::Argon2d, Version::V0x10, 32, 3),
            (Algorithm::Argon2id, Version::V0x13, 64, 2),
        ] {
            let params = Params::new(m, t, 1, None).unwrap();
            let hasher = Argon2::new(algorithm, version, params);
            let salt = SaltString::generate(&mut OsRng);
            let hash = hasher.hash_password(b"right", &salt).unwrap().to_string();
            for secret in ["right", "wrong", "", "right "] {
                let parsed = PasswordHash::new(&hash).unwrap();
                let expected = Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok();
                assert_eq!(
                    argon2_matches(&hash, secret, &mut blocks),
                    expected,
                    "{hash} {secret:?}"
                );
                assert_eq!(expected, secret == "right");
            }
        }
        for broken in [
            "",
            "$argon2id$v=19$m=64,t=2,p=1$",
            "$scrypt$ln=1,r=8,p=1$c2FsdA$aGFzaA",
        ] {
            assert!(!argon2_matches(broken, "right", &mut blocks), "{broken}");
        }
    }

    /// A configured hash is refused at load unless a secret can be checked
    /// against it, in bounded memory and time.
    #[test]
    fn configured_hashes_must_be_checkable_and_bounded() {
        let good = hash_secret("s3cret").unwrap();
        assert_eq!(check_argon2_hash(&good), Ok(()));
        assert_eq!(check_argon2_hash(UNKNOWN_NAME_HASH), Ok(()));
        for (hash, says) in [
            (
                "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "is not argon2",
            ),
            ("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ", "no hash"),
            ("$argon2id", "no salt"),
            (
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
                "the salt is 4 bytes",
            ),
            ("argon2id", "not a PHC string"),
            ("$argon2id$...", "`...` stands for a hash"),
            (
                "$argon2id$v=17$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "version",
            ),
            (
                "$argon2id$v=19$m=1048576,t=4,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "are over",
            ),
            (
                "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "are over",
            ),
            (
                "$argon2id$v=19$m=19456,t=4294967295,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "are over",
            ),
        ] {
            let error = check_argon2_hash(hash).unwrap_err();
            assert!(error.contains(says), "{hash}: {error}");
        }
        // Each bound is the most allowed: at it a hash passes, one over not.
        let with = |m: u32, t: u32, p: u32| {
            format!("$argon2id$v=19$m={m},t={t},p={p}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo")
        };
        for (m, t, p) in [
            (MAX_ARGON2_MEMORY_KIB, 2, 1),
            (19456, MAX_ARGON2_PASSES, 1),
            (19456, 2, MAX_ARGON2_LANES),
        ] {
            let at = with(m, t, p);
            assert_eq!(check_argon2_hash(&at), Ok(()), "{at}");
        }
        for (m, t, p) in [
            (MAX_ARGON2_MEMORY_KIB + 1, 2, 1),
            (19456, MAX_ARGON2_PASSES + 1, 1),
            (19456, 2, MAX_ARGON2_LANES + 1),
        ] {
            let over = with(m, t, p);
            let error = check_argon2_hash(&over).unwrap_err();
            assert!(error.contains("are over"), "{over}: {error}");
        }
    }

    #[test]
    fn busy_is_503_with_a_short_retry_after() {
        let response = OAuthError::busy().into_response();
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        let response = OAuthError::too_many_attempts(false).into_response();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "60");
    }

    /// A refusal as the tests compare it: `error` code, status, challenge.
    type Refusal = (&'static str, u16, bool);

    /// What [`presented`] makes of a request: the credentials (client id,
    /// secret, whether by Basic) or the refusal (code, status, challenge).
    fn presented_from(
        authorization: &[&str],
        form: &[(&str, &str)],
        in_query: bool,
    ) -> Result<Option<(String, Option<String>, bool)>, Refusal> {
        let mut headers = HeaderMap::new();
        for value in authorization {
            headers.append(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        let form: HashMap<String, String> = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        presented(&headers, &form, in_query)
            .map(|p| p.map(|p| (p.client_id, p.secret, p.basic)))
            .map_err(|e| (e.code, e.status.as_u16(), e.basic_challenge))
    }

    /// RFC 6749 2.3.1: Basic's id and secret are form-urlencoded, and an
    /// empty password is no secret (a public client's `Basic id:`); the
    /// form's `client_id` may repeat Basic's id, but a second secret, another
    /// id, the query string or two `Authorization` headers are refused
    /// (`invalid_request`), and another scheme is `invalid_client` with a
    /// Basic challenge. Pins the one-method rule against credentials being
    /// taken from two places, or an id from one and a secret from another.
    #[test]
    fn client_credentials_are_taken_from_one_place_only() {
        let basic = |pair: &str| format!("Basic {}", STANDARD.encode(pair));
        let got = |id: &str, secret: Option<&str>, basic: bool| {
            Ok(Some((id.to_owned(), secret.map(str::to_owned), basic)))
        };
        let svc = basic("svc:pw");
        let two_methods = Err(("invalid_request", 400, false));
        assert_eq!(
            presented_from(&[&basic("my%20app:s%2Bcret+x%3A")], &[], false),
            got("my app", Some("s+cret x:"), true)
        );
        assert_eq!(
            presented_from(&[&basic("spa:")], &[], false),
            got("spa", None, true)
        );
        assert_eq!(
            presented_from(&[&svc], &[("client_id", "svc")], false),
            got("svc", Some("pw"), true)
        );
        assert_eq!(
            presented_from(&[&svc], &[("client_id", "other")], false),
            two_methods
        );
        assert_eq!(
            presented_from(
                &[&svc],
                &[("client_id", "svc"), ("client_secret", "pw")],
                false
            ),
            two_methods
        );
        assert_eq!(
            presented_from(&[&svc], &[("client_secret", "pw")], false),
            two_methods
        );
        assert_eq!(
            presented_from(&[], &[("client_id", "svc"), ("client_secret", "pw")], false),
            got("svc", Some("pw"), false)
        );
        assert_eq!(
            presented_from(&[], &[("client_id", "spa")], false),
            got("spa", None, false)
        );
        assert_eq!(presented_from(&[], &[], false), Ok(None));
        assert_eq!(
            presented_from(&[], &[("client_id", "svc")], true),
            Err(("invalid_request", 400, false))
        );
        assert_eq!(
            presented_from(&[&svc, &svc], &[], false),
            Err(("invalid_request", 400, false))
        );
        for refused in ["Bearer x", &basic("%FF:pw"), &basic("no-colon")] {
            assert_eq!(
                presented_from(&[refused], &[], false),
                Err(("invalid_client", 401, true)),
                "{refused}"
            );
        }
    }

    /// A confidential client for these tests, with the hash of `secret`.
    fn confidential(id: &str, secret: &str) -> Client {
        Client {
            client_id: id.to_owned(),
            secret_hash: Some(hash_secret(secret).unwrap()),
            grants: Vec::new(),
            scopes: Vec::new(),
            audience: String::new(),
            redirect_uris: Vec::new(),
            name: String::new(),
        }
    }

    /// The client id `authenticate` answers with, or its refusal (code,
    /// status, challenge).
    async fn authenticated(
        auth: &ClientAuthenticator,
        id: Option<&str>,
        secret: Option<&str>,
        basic: bool,
        allow_public: bool,
    ) -> Result<String, Refusal> {
        let presented = id.map(|id| Presented {
            client_id: id.to_owned(),
            secret: secret.map(str::to_owned),
            basic,
        });
        auth.authenticate(presented, allow_public)
            .await
            .map(|c| c.client_id.clone())
            .map_err(|e| (e.code, e.status.as_u16(), e.basic_challenge))
    }

    /// RFC 6749 2.3 and 5.2: a confidential client passes with its own
    /// secret only (not without one, not with another client's, not with one
    /// it passed with before under another id); a public client passes
    /// without a secret only where public clients may, and never with one;
    /// every failure is `invalid_client`, a 401 with a Basic challenge when
    /// Basic was used and a 400 otherwise.
    #[tokio::test]
    async fn a_client_authenticates_with_its_own_secret_only() {
        let spa = Client {
            secret_hash: None,
            ..confidential("spa", "unused")
        };
        let clients = [
            confidential("svc", "right"),
            confidential("other", "its-own"),
            spa,
        ];
        let auth = ClientAuthenticator::new(&clients, &[], None);
        let refused = |basic: bool| Err(("invalid_client", if basic { 401 } else { 400 }, basic));
        for basic in [false, true] {
            assert_eq!(
                authenticated(&auth, Some("svc"), Some("right"), basic, false).await,
                Ok("svc".to_owned())
            );
            // Again, now from the remembered successes.
            assert_eq!(
                authenticated(&auth, Some("svc"), Some("right"), basic, true).await,
                Ok("svc".to_owned())
            );
            for (id, secret) in [
                ("svc", Some("wrong")),
                ("svc", Some("right ")),
                ("svc", None),
                ("other", Some("right")),
                ("nobody", Some("right")),
                ("nobody", None),
                ("spa", Some("right")),
            ] {
                // Where public clients may go without a secret, or not (the
                // four wrong secrets of `svc` stay under the limit).
                let allow_public = basic;
                assert_eq!(
                    authenticated(&auth, Some(id), secret, basic, allow_public).await,
                    refused(basic),
                    "{id} {secret:?} basic: {basic}"
                );
            }
            assert_eq!(
                authenticated(&auth, Some("spa"), None, basic, true).await,
                Ok("spa".to_owned())
            );
            assert_eq!(
                authenticated(&auth, Some("spa"), None, basic, false).await,
                refused(basic)
            );
        }
        assert_eq!(
            authenticated(&auth, Some("other"), Some("its-own"), false, false).await,
            Ok("other".to_owned())
        );
        // No credentials at all: a 401 with the challenge.
        assert_eq!(
            authenticated(&auth, None, None, false, true).await,
            refused(true)
        );
    }

    /// Wrong secrets limit a client id after [`MAX_FAILURES`]: then even its
    /// right secret, unchecked so far, is refused (429, or 401 with the
    /// challenge for Basic), as is a request without a secret; a secret
    /// checked before still passes, so guesses cannot lock its owner out.
    #[tokio::test]
    async fn wrong_secrets_limit_a_client_but_not_its_known_secret() {
        let clients = [confidential("svc", "right"), confidential("fresh", "right")];
        let auth = ClientAuthenticator::new(&clients, &[], None);
        let limited = |basic: bool| Err(("invalid_client", if basic { 401 } else { 429 }, basic));
        assert_eq!(
            authenticated(&auth, Some("svc"), Some("right"), false, false).await,
            Ok("svc".to_owned())
        );
        for id in ["svc", "fresh"] {
            for _ in 0..MAX_FAILURES {
                assert_eq!(
                    authenticated(&auth, Some(id), Some("wrong"), false, false).await,
                    Err(("invalid_client", 400, false))
                );
            }
            for basic in [false, true] {
                assert_eq!(
                    authenticated(&auth, Some(id), Some("wrong"), basic, false).await,
                    limited(basic)
                );
                assert_eq!(
                    authenticated(&auth, Some(id), None, basic, false).await,
                    limited(basic)
                );
            }
        }
        assert_eq!(
            authenticated(&auth, Some("svc"), Some("right"), false, false).await,
            Ok("svc".to_owned())
        );
        assert_eq!(
            authenticated(&auth, Some("fresh"), Some("right"), true, false).await,
            limited(true)
        );
    }

    /// A user's password is checked against the user's own hash: the right
    /// one matches, another does not (the sign-in's only check).
    #[tokio::test]
    async fn a_users_password_is_checked_against_its_hash() {
        let auth = ClientAuthenticator::new(&[], &[], None);
        let hash = hash_secret("right").unwrap();
        assert_eq!(
            auth.verify_password(Some(&hash), "right", None).await,
            Ok(true)
        );
        assert_eq!(
            auth.verify_password(Some(&hash), "wrong", None).await,
            Ok(false)
        );
    }
}
