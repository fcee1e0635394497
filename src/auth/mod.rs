//! Authentication and authorization: who sent the request, and may they pass.
//!
//! [`Authenticator::authenticate`] turns an `Authorization` header into a
//! [`VerifiedToken`] (from the cache, or by verifying the JWT against its
//! issuer's keys); [`scope::authorize`] checks a route's scopes and mints the
//! [`Permit`] that forwarding requires.

pub mod bearer;
pub mod cache;
pub mod discovery;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod scope;
pub mod x5c;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::admin::metrics::{Metrics, NO_ISSUER};
use crate::config::{Issuer, KeySource, ScopeClaim};
use crate::error::GatewayError;
use cache::TokenCache;
use discovery::DiscoveryError;
use introspect::{Introspector, IssuerFacts};
use jwks::{IssuerKeys, KeySet};
use jwt::TokenError;
pub use scope::{admit_preflight, authorize, Permit, Scopes};

/// Every `scopegate_discovery_attempts_total` result.
const DISCOVERY_RESULTS: [&str; 4] = ["success", "incomplete", "unavailable", "refused"];

/// Keys tried at most for a token without `kid` (of those that can verify
/// its `alg`: keys kept as unusable cost no signature check, and are not
/// counted).
const MAX_KID_LESS_CANDIDATES: usize = 8;
/// A verified token is re-verified at least this often, however late its `exp`.
const MAX_CACHE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What a verified token says, kept in the cache.
#[derive(Debug)]
pub struct VerifiedToken {
    /// Index of the issuer that signed it.
    pub issuer: usize,
    /// Granted scopes.
    pub scopes: Scopes,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// When the gateway stops accepting it: `exp` plus the issuer's leeway
    /// (what a WebSocket tunnel it opened may last until).
    pub accepted_until: u64,
    /// When the cache must forget it (the token's expiry).
    pub cache_until: Instant,
    /// Identity header values by claim slot (see `Config::identity_claims`).
    pub identity_values: Box<[Option<HeaderValue>]>,
    /// `jti`, for revocation checks of the built-in issuer's tokens.
    pub jti: Option<Box<str>>,
    /// `sid`: the grant (refresh family) the token belongs to.
    pub session: Option<Box<str>>,
    /// The issuer's key generation it was verified under (see
    /// [`jwks::IssuerKeys::generation`]); 0 for introspected tokens.
    pub keys_generation: u64,
}

/// `delay` moved by up to a fifth either way, at random: replicas that
/// failed together (an identity provider's outage, a rollout) do not retry
/// in step.
pub(crate) fn jittered(delay: Duration) -> Duration {
    spread(delay, 0.8, 1.2)
}

/// `delay` shortened by up to a fifth, at random, never lengthened: for a
/// delay that is a bound (`jwks_refresh_interval`, the longest a key set
/// goes unfetched), spread over replicas without ever passing it.
pub(crate) fn jittered_within(delay: Duration) -> Duration {
    spread(delay, 0.8, 1.0).min(delay)
}

/// `delay` times a random factor from `low` to `high`, in 256 steps.
fn spread(delay: Duration, low: f64, high: f64) -> Duration {
    let mut byte = [0u8; 1];
    // Without randomness, the delay as it is.
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return delay;
    }
    delay.mul_f64(low + (high - low) * f64::from(byte[0]) / 255.0)
}

impl VerifiedToken {
    /// Its weight in a cache bounded by `max_entries`: 1, and one more per
    /// KiB of heap it holds past the first (a token of hundreds of scopes or
    /// long identity values), so that entries count towards the bound by
    /// their memory, not only by their number.
    pub fn cache_weight(&self, max_entries: u64) -> u32 {
        let bytes = self.scopes.heap_bytes()
            + self
                .identity_values
                .iter()
                .map(|v| v.as_ref().map_or(0, |v| v.len() + 32) + 40)
                .sum::<usize>()
            + self.jti.as_ref().map_or(0, |s| s.len())
            + self.session.as_ref().map_or(0, |s| s.len());
        // At most an eighth of the cache, so that a small cache still
        // takes a large token (moka admits nothing heavier than the whole).
        let most = (max_entries / 8).max(1);
        u32::try_from((1 + bytes as u64 / 1024).min(most)).unwrap_or(u32::MAX)
    }
}

struct IssuerRuntime {
    name: Arc<str>,
    issuer: String,
    /// The client discovery fetches the metadata with (`discovery` only),
    /// built with the others, so that a CA bundle it cannot read fails
    /// the config instead of leaving the issuer undiscovered for good.
    discovery_client:
        Option<crate::proxy::client::HttpsClient<http_body_util::Empty<bytes::Bytes>>>,
    discovery: bool,
    /// Discovered endpoints beyond this host must be `https`.
    endpoints_need_https: bool,
    discovered: std::sync::atomic::AtomicBool,
    introspector: Option<Arc<Introspector>>,
    audiences: Vec<String>,
    client_ids: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway_secs: u64,
    require_typ: Option<String>,
    scope_claim: ScopeClaim,
    keys: Arc<IssuerKeys>,
    /// [`crate::config::validate::Issuer::key_fingerprint`] of its config.
    fingerprint: String,
}

impl IssuerRuntime {
    /// Usable: discovered, keys loaded, and an introspection endpoint known,
    /// as configured.
    fn is_ready(&self) -> bool {
        (!self.discovery || self.discovered.load(std::sync::atomic::Ordering::Acquire))
            && self.keys.is_ready()
            && self.introspector.as_ref().is_none_or(|x| x.is_ready())
    }
}

/// Verifies bearer tokens for every configured issuer.
pub struct Authenticator {
    issuers: Vec<IssuerRuntime>,
    by_iss: HashMap<String, usize>,
    cache: TokenCache,
    identity_claims: Arc<[String]>,
    metrics: Arc<Metrics>,
    /// Stops this authenticator's background tasks (on shutdown or when a
    /// reload replaces it).
    background_stop: tokio::sync::watch::Sender<bool>,
}

impl Authenticator {
    /// Sets up key stores (remote ones start empty) and the token cache.
    pub fn new(
        issuers: Vec<Issuer>,
        identity_claims: Vec<String>,
        cache_max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let identity_claims: Arc<[String]> = identity_claims.into();
        let mut runtime = Vec::with_capacity(issuers.len());
        let mut by_iss = HashMap::new();
        for (index, issuer) in issuers.into_iter().enumerate() {
            let fingerprint = issuer.key_fingerprint();
            // Counters an alert keys on, at 0 before their first event.
            if matches!(issuer.keys, KeySource::Remote(_) | KeySource::Discovered) {
                for result in jwks::FetchResult::ALL {
                    metrics
                        .jwks_fetches
                        .with_label_values(&[&issuer.name, result.label()]);
                }
            }
            if issuer.discovery {
                for result in DISCOVERY_RESULTS {
                    metrics
                        .discovery_attempts
                        .with_label_values(&[&issuer.name, result]);
                }
            }
            let keys = match &issuer.keys {
                KeySource::Static(set) => {
                    IssuerKeys::fixed(Arc::clone(&issuer.name), Arc::clone(set))
                }
                KeySource::None => IssuerKeys::absent(Arc::clone(&issuer.name)),
                KeySource::Remote(uri) => remote_keys(&issuer, Some(uri.clone()))?,
                KeySource::Discovered => remote_keys(&issuer, None)?,
            };
            let introspector = match issuer.introspection {
                Some(settings) => Some(Arc::new(
                    Introspector::new(
                        IssuerFacts {
                            index,
                            name: Arc::clone(&issuer.name),
                            issuer: issuer.issuer.clone(),
                            audiences: issuer.audiences.clone(),
                            client_ids: issuer.client_ids.clone(),
                            leeway_secs: issuer.leeway_secs,
                            scope_claim: issuer.scope_claim,
                        },
                        settings,
                        cache_max_entries,
                        Arc::clone(&identity_claims),
                        Arc::clone(&metrics),
                    )
                    .map_err(|e| format!("issuer {}: {e}", issuer.name))?,
                )),
                None => None,
            };
            let discovery_client = if issuer.discovery {
                Some(
                    crate::proxy::client::build_https_client(
                        issuer.ca_file.as_deref(),
                        Duration::from_secs(5),
                        1,
                        false,
                    )
                    .map_err(|e| format!("issuer {}: discovery client: {e}", issuer.name))?,
                )
            } else {
                None
            };
            by_iss.insert(issuer.issuer.clone(), index);
            runtime.push(IssuerRuntime {
                discovery_client,
                issuer: issuer.issuer,
                discovery: issuer.discovery,
                endpoints_need_https: issuer.endpoints_need_https,
                discovered: std::sync::atomic::AtomicBool::new(false),
                introspector,
                name: issuer.name,
                audiences: issuer.audiences,
                client_ids: issuer.client_ids,
                algorithms: issuer.algorithms,
                leeway_secs: issuer.leeway_secs,
                require_typ: issuer.require_typ,
                scope_claim: issuer.scope_claim,
                keys: Arc::new(keys),
                fingerprint,
            });
        }
        let authenticator = Self {
            issuers: runtime,
            by_iss,
            cache: TokenCache::new(cache_max_entries),
            identity_claims,
            metrics,
            background_stop: tokio::sync::watch::channel(false).0,
        };
        authenticator.require_iss_at_shared_endpoints();
        Ok(authenticator)
    }

    /// Issuers introspecting at one endpoint (configured or discovered)
    /// take only answers that name them in `iss`: without it an answer may
    /// be about another of those issuers' tokens.
    fn require_iss_at_shared_endpoints(&self) {
        let endpoints: Vec<(&Introspector, EndpointKey)> = self
            .issuers
            .iter()
            .filter_map(|issuer| issuer.introspector.as_deref())
            .filter_map(|introspector| {
                let key = introspector.endpoint().as_ref().and_then(endpoint_key)?;
                Some((introspector, key))
            })
            .collect();
        for (index, (introspector, key)) in endpoints.iter().enumerate() {
            let shared = endpoints
                .iter()
                .enumerate()
                .any(|(other, (_, other_key))| other != index && other_key == key);
            if shared {
                introspector.require_iss();
            }
        }
    }

    /// Takes over from `previous` the key set and discovery results of
    /// every issuer configured exactly as before (and whose keys fit its
    /// algorithms), so that a reload changing
    /// something else (a route's identity headers, the cache size) is ready
    /// at once, without waiting on an identity provider that may be down.
    /// (Its refresher fetches the keys when they are due.) The verified-token
    /// caches start empty, since what they hold may depend on the change.
    ///
    /// An issuer introspecting as before (same `issuer` and the same
    /// configured endpoint, or discovery both times), however else changed,
    /// shares the call slots and hold-back of its introspector before: the
    /// retired config's calls still in flight count against the issuer's
    /// bound of calls at once. Moved to another endpoint, it starts afresh:
    /// the old endpoint's `Retry-After` says nothing about the new one.
    pub fn inherit_issuers(&mut self, previous: &Authenticator) {
        use std::sync::atomic::Ordering;
        for issuer in &self.issuers {
            let Some(new) = &issuer.introspector else {
                continue;
            };
            let endpoint = new.configured_endpoint().map(endpoint_key);
            let old = previous
                .issuers
                .iter()
                .filter(|old| old.issuer == issuer.issuer)
                .filter_map(|old| old.introspector.as_ref())
                .find(|old| old.configured_endpoint().map(endpoint_key) == endpoint);
            if let Some(old) = old {
                new.share_calls_of(old);
            }
        }
        for issuer in &mut self.issuers {
            let Some(old) = previous
                .issuers
                .iter()
                .find(|old| old.fingerprint == issuer.fingerprint)
            else {
                continue;
            };
            // Shared with the running config until this one serves (see
            // `serving`), unless this config's algorithms fit none of its
            // keys: every token would then be refused while the gateway
            // reads as ready, so this issuer fetches its own, checked as at
            // a start, and the reload waits for them.
            let fits = old.keys.current().is_none_or(|set| {
                issuer.algorithms.is_empty()
                    || issuer.algorithms.iter().any(|&alg| set.verifies(alg))
            });
            if !fits {
                continue;
            }
            issuer.keys = Arc::clone(&old.keys);
            if old.discovered.load(Ordering::Acquire) {
                if let (Some(new), Some(old)) = (&issuer.introspector, &old.introspector) {
                    if let Some(endpoint) = old.endpoint() {
                        new.set_discovered_endpoint(endpoint);
                    }
                }
                // Discovered again where it left something missing (an
                // introspection endpoint): the metadata may have it now.
                let complete = issuer.introspector.as_ref().is_none_or(|i| i.is_ready());
                issuer.discovered.store(complete, Ordering::Release);
            }
        }
        self.require_iss_at_shared_endpoints();
    }

    /// This authenticator's config now serves. The fingerprint leaves the
    /// algorithms out, so key sets kept from the config before are checked
    /// against this one's from now on: not before, since a reload refused
    /// after setting it up leaves the running config's fetches as they
    /// were (checked against algorithms the IdP's keys do not fit, a
    /// withdrawn key would stay trusted).
    pub fn serving(&self) {
        for issuer in &self.issuers {
            issuer.keys.set_algorithms(issuer.algorithms.clone());
        }
    }

    /// Starts the background work: discovery (retried with backoff until it
    /// has found everything the issuer needs) and one key refresher per
    /// remote issuer, until [`Self::stop_background`].
    pub fn spawn_background(self: &Arc<Self>) {
        for index in 0..self.issuers.len() {
            // Stopped by a reload, the task may be the last holder.
            let this = crate::retire::Held::new(Arc::clone(self));
            let mut stop = self.background_stop.subscribe();
            tokio::spawn(async move {
                let Some(issuer) = this.issuers.get(index) else {
                    return;
                };
                let discovered = issuer.discovered.load(std::sync::atomic::Ordering::Acquire);
                // Sent once discovery has applied the metadata's `jwks_uri`
                // (dropped unsent when there is no discovery to wait for).
                let (keys_applied, keys_known) = tokio::sync::oneshot::channel();
                let keys_stop = stop.clone();
                let keys = async {
                    // Keys whose URL is known (configured, or found by an
                    // earlier discovery a reload kept) need no discovery:
                    // fetched meanwhile, so JWTs pass while it retries.
                    // The others wait for the metadata to name theirs, and
                    // are fetched while discovery goes on for what is
                    // still missing (an introspection endpoint).
                    if !issuer.keys.has_uri() && keys_known.await.is_err() {
                        return;
                    }
                    if issuer.keys.has_uri() {
                        jwks::run_refresher(
                            Arc::clone(&issuer.keys),
                            Arc::clone(&this.metrics),
                            keys_stop,
                        )
                        .await;
                    }
                };
                let discovery = async {
                    if issuer.discovery && !discovered {
                        this.discover_until_done(issuer, &mut stop, keys_applied)
                            .await;
                    }
                };
                tokio::join!(keys, discovery);
            });
        }
    }

    /// Fetches the issuer's metadata, with backoff, until it names what the
    /// issuer needs or `stop` changes. The first usable document's
    /// `jwks_uri` is applied (then `keys_applied` is sent); one without the
    /// introspection endpoint the issuer needs is applied all the same
    /// (counted `incomplete`) and asked again on the same schedule as a
    /// failed attempt, so that an endpoint the metadata gains later (a
    /// provider rolling it out) is taken without a restart.
    async fn discover_until_done(
        &self,
        issuer: &IssuerRuntime,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        keys_applied: tokio::sync::oneshot::Sender<()>,
    ) {
        let Some(client) = &issuer.discovery_client else {
            return;
        };
        // `Some` until a document's keys are applied: later attempts only
        // look for the introspection endpoint.
        let mut keys_applied = Some(keys_applied);
        let mut backoff = Duration::from_millis(250);
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(10),
                discovery::discover(&issuer.issuer, issuer.endpoints_need_https, client),
            );
            // A config retired or refused meanwhile neither applies nor
            // counts what its discovery finds.
            let attempt = tokio::select! {
                attempt = attempt => attempt
                    .unwrap_or_else(|_| Err(DiscoveryError::Unavailable("timed out".to_owned()))),
                _ = stop.changed() => return,
            };
            let keys_pending = keys_applied.is_some();
            let attempt = attempt.and_then(|metadata| match &metadata.unusable_jwks_uri {
                // Published but unfit to call: not "no keys", which would
                // turn JWT checks off for the issuer.
                Some(why) if keys_pending && issuer.keys.awaits_discovered_uri() => {
                    Err(DiscoveryError::Refused(format!("jwks_uri: {why}")))
                }
                // No keys and no introspection: the issuer could check no
                // token at all, which is not ready.
                None if keys_pending
                    && metadata.jwks_uri.is_none()
                    && issuer.keys.awaits_discovered_uri()
                    && issuer.introspector.is_none() =>
                {
                    Err(DiscoveryError::Refused(
                        "the metadata names no jwks_uri, and the issuer has no introspection"
                            .to_owned(),
                    ))
                }
                _ => Ok(metadata),
            });
            // Counted once its outcome is in effect.
            let counted = |result: &str| {
                self.metrics
                    .discovery_attempts
                    .with_label_values(&[&issuer.name, result])
                    .inc();
            };
            match attempt {
                Ok(metadata) => {
                    if let Some(keys_applied) = keys_applied.take() {
                        tracing::info!(issuer = %issuer.name, "issuer metadata discovered");
                        issuer.keys.set_discovered_uri(metadata.jwks_uri);
                        // Nobody waits for the keys when they were known
                        // already: nothing to tell.
                        let _ = keys_applied.send(());
                    }
                    // Applied all the same (its keys serve JWTs), but what
                    // the issuer needs is missing: counted apart, and
                    // asked again.
                    let mut complete = true;
                    if let Some(introspector) = &issuer.introspector {
                        match metadata.introspection_endpoint {
                            Some(endpoint) => {
                                introspector.set_discovered_endpoint(endpoint);
                                self.require_iss_at_shared_endpoints();
                            }
                            None if !introspector.is_ready() => {
                                tracing::error!(
                                    issuer = %issuer.name,
                                    retry_in = ?backoff,
                                    "discovered metadata has no usable introspection_endpoint; not ready until it has one, or introspection.endpoint is set"
                                );
                                complete = false;
                            }
                            None => {}
                        }
                    }
                    issuer
                        .discovered
                        .store(true, std::sync::atomic::Ordering::Release);
                    if complete {
                        counted("success");
                        return;
                    }
                    counted("incomplete");
                }
                Err(e) => {
                    tracing::warn!(issuer = %issuer.name, error = %e, retry_in = ?backoff, "issuer discovery failed; not ready");
                    counted(e.label());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(jittered(backoff)) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Stops discovery and key refreshers started by [`Self::spawn_background`].
    pub fn stop_background(&self) {
        let _ = self.background_stop.send(true);
    }

    /// True when every issuer is usable: discovered, keys loaded, and an
    /// introspection endpoint known, as configured.
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(IssuerRuntime::is_ready)
    }

    /// The names of the issuers a reload waits for: not usable yet, and not
    /// configured exactly as an issuer of `previous` (the authenticator
    /// serving now) that is not usable either. A reload that changes
    /// something else (a key removed from another issuer's file) need not
    /// wait for an identity provider that was down before it, and would
    /// otherwise never take effect while it stays down.
    pub fn awaited_issuers(&self, previous: &Authenticator) -> Vec<&str> {
        self.issuers
            .iter()
            .filter(|issuer| {
                !issuer.is_ready()
                    && !previous
                        .issuers
                        .iter()
                        .any(|old| old.fingerprint == issuer.fingerprint && !old.is_ready())
            })
            .map(|issuer| &*issuer.name)
            .collect()
    }

    /// How many issuers are configured (indexes run below it).
    pub fn issuer_count(&self) -> usize {
        self.issuers.len()
    }

    /// The configured name of issuer `index` ([`NO_ISSUER`] if out of range).
    pub fn issuer_name(&self, index: usize) -> &str {
        self.issuers.get(index).map_or(NO_ISSUER, |i| &i.name)
    }

    /// The verified-token cache (tests and benchmarks inspect it).
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Authenticates a request's bearer token. `accepted` limits the issuers
    /// (a route's `issuers:`). The cache skips signature checks for a token seen
    /// before; the issuer restriction is checked on every request.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        accepted: Option<&[usize]>,
        introspector: Option<usize>,
    ) -> Result<Arc<VerifiedToken>, Refused> {
        let raw = bearer::extract_unchecked(headers)?;
        let key = cache::digest(raw);
        let hit = self.cache.get(&key).await.filter(|hit| {
            // Verified under keys since withdrawn: verify again.
            self.issuers
                .get(hit.issuer)
                .is_some_and(|i| i.keys.generation() == hit.keys_generation)
        });
        let verified = match hit {
            // A hit is for these exact bytes, whose characters were checked
            // before their verdict was cached.
            Some(hit) => {
                self.metrics.token_cache_hits.inc();
                hit
            }
            // Boxed: verification and introspection futures are large and
            // would otherwise be carried (and moved) by every cache hit.
            None => match Box::pin(self.verify_or_introspect(
                bearer::check_characters(raw).map_err(Refused::from)?,
                key,
                accepted,
                introspector,
            ))
            .await?
            {
                Verified::Jwt(fresh) => {
                    let fresh = Arc::new(fresh);
                    Box::pin(self.cache.insert(key, Arc::clone(&fresh))).await;
                    fresh
                }
                Verified::Introspected(token) => token,
            },
        };
        if let Some(accepted) = accepted {
            if !accepted.contains(&verified.issuer) {
                return Err(Refused::by(
                    verified.issuer,
                    GatewayError::InvalidToken(TokenError::IssuerNotAccepted),
                ));
            }
        }
        Ok(verified)
    }

    /// JWTs are verified locally; anything that is not a compact JWS, and JWTs
    /// of an issuer that has no keys, go to the route's introspecting issuer.
    /// A JWT naming an issuer the route does not accept is refused unverified.
    async fn verify_or_introspect(
        &self,
        token: &str,
        digest: cache::TokenDigest,
        accepted: Option<&[usize]>,
        route_introspector: Option<usize>,
    ) -> Result<Verified, Refused> {
        let introspect_with = |index: usize| {
            self.issuers
                .get(index)
                .and_then(|i| i.introspector.as_ref())
                .map(|introspector| (index, Arc::clone(introspector)))
        };
        let jwt = match jwt::parse_compact(token) {
            Ok(jwt) => jwt,
            Err(e) => {
                return match route_introspector.and_then(introspect_with) {
                    Some((index, introspector)) => introspector
                        .introspect(token, digest, None)
                        .await
                        .map(Verified::Introspected)
                        .map_err(|e| Refused::by(index, e)),
                    None => Err(Refused::from(GatewayError::InvalidToken(e))),
                };
            }
        };
        if let Some(Value::String(iss)) = jwt.claims.get("iss") {
            if let Some(&index) = self.by_iss.get(iss.as_str()) {
                // Only this issuer's keys could verify it, and whatever its
                // signature the route refuses it: no key lookup, refetch or
                // introspection call for it.
                if accepted.is_some_and(|accepted| !accepted.contains(&index)) {
                    self.metrics.token_cache_misses.inc();
                    return Err(Refused::by(
                        index,
                        GatewayError::InvalidToken(TokenError::IssuerNotAccepted),
                    ));
                }
                let keyless = self
                    .issuers
                    .get(index)
                    .is_some_and(|i| !i.keys.publishes_keys() && i.introspector.is_some());
                if keyless && route_introspector == Some(index) {
                    if let Some((index, introspector)) = introspect_with(index) {
                        return introspector
                            .introspect(token, digest, claimed_exp(&jwt.claims))
                            .await
                            .map(Verified::Introspected)
                            .map_err(|e| Refused::by(index, e));
                    }
                }
            }
        }
        // A miss of the verified-token cache, whatever the verdict: a flood
        // of forged tokens shows as misses.
        self.metrics.token_cache_misses.inc();
        self.verify_parsed(jwt).await.map(Verified::Jwt)
    }

    /// Verifies a compact JWS from scratch (no cache).
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, GatewayError> {
        let jwt = jwt::parse_compact(token).map_err(GatewayError::InvalidToken)?;
        self.verify_parsed(jwt)
            .await
            .map_err(|refused| refused.error)
    }

    /// Finds the token's issuer by its `iss`; a failure past that point is
    /// that issuer's.
    async fn verify_parsed(&self, jwt: jwt::UnverifiedJwt<'_>) -> Result<VerifiedToken, Refused> {
        let invalid = |e| Refused::from(GatewayError::InvalidToken(e));
        let index = match jwt.claims.get("iss") {
            Some(Value::String(iss)) => *self
                .by_iss
                .get(iss.as_str())
                .ok_or(invalid(TokenError::UnknownIssuer))?,
            Some(_) => return Err(invalid(TokenError::WrongClaimType)),
            None => return Err(invalid(TokenError::UnknownIssuer)),
        };
        let issuer = self
            .issuers
            .get(index)
            .ok_or(invalid(TokenError::UnknownIssuer))?;
        self.verify_for(index, issuer, jwt)
            .await
            .map_err(|e| Refused::by(index, e))
    }

    /// Verifies a JWT that names issuer `index` in its `iss`.
    async fn verify_for(
        &self,
        index: usize,
        issuer: &IssuerRuntime,
        jwt: jwt::UnverifiedJwt<'_>,
    ) -> Result<VerifiedToken, GatewayError> {
        let invalid = GatewayError::InvalidToken;
        // An issuer whose tokens are only introspected has no keys to wait
        // for: its JWT on a route that does not introspect with it is not
        // accepted there (401), not a key outage (503).
        if !issuer.keys.publishes_keys() {
            return Err(invalid(TokenError::IssuerNotAccepted));
        }
        let alg = jwt::allowed_algorithm(&jwt.alg, &issuer.algorithms)
            .ok_or(invalid(TokenError::AlgorithmNotAllowed))?;
        if let Some(required) = &issuer.require_typ {
            match &jwt.typ {
                Some(typ) if crate::config::validate::normalize_typ(typ) == *required => {}
                _ => return Err(invalid(TokenError::WrongType)),
            }
        } else if jwt.typ.as_deref().is_some_and(names_another_kind_of_jwt) {
            return Err(invalid(TokenError::WrongType));
        }
        if says_it_is_no_access_token(&jwt.claims) {
            return Err(invalid(TokenError::WrongType));
        }

        // Read before the keys: a key withdrawn after this makes the cache
        // entry stale, never the other way round.
        let generation = issuer.keys.generation();
        let keys = issuer.keys.current().ok_or(GatewayError::KeysUnavailable)?;
        let mut outcome = check_signature(&keys, &jwt, alg);
        // An unknown `kid` may be a key published since the last fetch; a
        // bad signature may be a key replaced under the same `kid`, or under
        // none (RFC 7517 4.5 makes it optional); a `kid` whose key does not
        // fit an allowed `alg`, a key replaced by one of another type.
        // Either way one refetch per cooldown, shared by everyone waiting.
        // The keys are checked again whenever they changed since they were
        // read, by this fetch or by another one (a refresher's, finished
        // just before this call asked: then it sees no new fetch, and the
        // cooldown holds).
        if matches!(
            outcome,
            Err(TokenError::UnknownKey
                | TokenError::BadSignature
                | TokenError::AlgorithmNotAllowed)
        ) {
            issuer.keys.refetch_for_unmatched_token(&self.metrics).await;
            let latest = issuer.keys.current().ok_or(GatewayError::KeysUnavailable)?;
            if !Arc::ptr_eq(&latest, &keys) {
                outcome = check_signature(&latest, &jwt, alg);
            }
            // A key the set lacks while the issuer's keys cannot be fetched
            // may be one it published since: the issuer is failing, not
            // (as far as can be told) the token, which gets 503 and a retry
            // rather than a 401 that sends its client back to that issuer.
            // So may the key of a token naming none that no key held
            // verifies; a known `kid` with a bad signature stays a 401.
            let lacking = match outcome {
                Err(TokenError::UnknownKey) => true,
                Err(TokenError::BadSignature) => jwt.kid.is_none(),
                _ => false,
            };
            if lacking && issuer.keys.last_fetch_failed() {
                return Err(GatewayError::KeysUnavailable);
            }
        }
        outcome.map_err(invalid)?;

        let now = jwt::now_unix();
        let lifetime =
            jwt::check_lifetime(&jwt.claims, now, issuer.leeway_secs).map_err(invalid)?;
        jwt::check_intended(&jwt.claims, &issuer.audiences, &issuer.client_ids).map_err(invalid)?;
        if jwt.claims.contains_key("cnf") {
            return Err(invalid(TokenError::SenderConstrained));
        }
        let scopes = read_scopes(&jwt.claims, issuer.scope_claim).map_err(invalid)?;
        // Capped: a far-future `exp` (up to u64::MAX) must not overflow `Instant`.
        let remaining = jwt::time_until(lifetime.expires_at).min(MAX_CACHE_LIFETIME);
        let mut verified = build_verified(
            index,
            &jwt.claims,
            scopes,
            lifetime.expires_at,
            issuer.leeway_secs,
            Instant::now() + remaining,
            &self.identity_claims,
        );
        verified.keys_generation = generation;
        Ok(verified)
    }
}

/// Whether a JWT's header `typ` names a kind of JWT that is no access token
/// (RFC 8725 3.11): a logout token, a security event, a DPoP proof, a
/// signed introspection answer or a request object. Checked without
/// `require_typ` too, since such a JWT may carry `iss`, `aud` and `exp`
/// that would pass.
fn names_another_kind_of_jwt(typ: &str) -> bool {
    let typ = crate::config::validate::normalize_typ(typ);
    [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "token-introspection+jwt",
        "oauth-authz-req+jwt",
    ]
    .contains(&typ.as_str())
}

/// Whether a JWT's claims say it is no access token: Cognito's `token_use`
/// (`id` for an ID token, `access` for an access token), and Keycloak's
/// `typ` claim (`Bearer` for an access token; `ID`, `Refresh`, `Offline`,
/// `Logout` and `Serialized-ID` for the others), as introspection answers
/// are read. An ID token meant for a client whose id is among `audiences`
/// would otherwise pass.
fn says_it_is_no_access_token(claims: &serde_json::Map<String, Value>) -> bool {
    let token_use_other = claims.get("token_use").is_some_and(|kind| {
        !kind.as_str().is_some_and(|t| {
            t.eq_ignore_ascii_case("access") || t.eq_ignore_ascii_case("access_token")
        })
    });
    let keycloak_other = claims
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|kind| {
            ["refresh", "offline", "id", "logout", "serialized-id"]
                .iter()
                .any(|other| kind.eq_ignore_ascii_case(other))
        });
    token_use_other || keycloak_other
}

/// A JWT's own `exp`, unchecked (its signature is not), as whole seconds:
/// it may only shorten how long an introspection answer is cached.
fn claimed_exp(claims: &serde_json::Map<String, Value>) -> Option<u64> {
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() {
        return None;
    }
    // Saturating: a date before 1970 is past, one beyond u64 far enough.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = exp.max(0.0) as u64;
    Some(whole)
}

fn remote_keys(issuer: &Issuer, uri: Option<http::Uri>) -> Result<IssuerKeys, String> {
    IssuerKeys::remote(
        Arc::clone(&issuer.name),
        uri,
        issuer.ca_file.as_deref(),
        issuer.jwks_timeout,
        issuer.jwks_refetch_cooldown,
        issuer.jwks_refresh_interval,
        issuer.algorithms.clone(),
    )
    .map_err(|e| format!("issuer {}: {e}", issuer.name))
}

enum Verified {
    Jwt(VerifiedToken),
    Introspected(Arc<VerifiedToken>),
}

/// A refused token, with the configured issuer it claims where it claims
/// one (its unchecked `iss`, or the route's introspecting issuer), so that
/// denials are counted under that issuer: expired tokens or withdrawn keys
/// of one identity provider show as that provider's. Anyone can send a
/// forged token claiming an issuer, so the label says what tokens claimed,
/// not who sent them.
#[derive(Debug)]
pub struct Refused {
    /// Index of the issuer in the config, if the token named one.
    pub issuer: Option<usize>,
    /// What the client is answered.
    pub error: GatewayError,
}

impl Refused {
    /// A refusal of a token of issuer `index`.
    pub fn by(index: usize, error: GatewayError) -> Self {
        Self {
            issuer: Some(index),
            error,
        }
    }
}

impl From<GatewayError> for Refused {
    fn from(error: GatewayError) -> Self {
        Self {
            issuer: None,
            error,
        }
    }
}

/// Builds the cached result from checked claims.
pub(crate) fn build_verified(
    issuer: usize,
    claims: &Map<String, Value>,
    scopes: Scopes,
    expires_at: u64,
    leeway_secs: u64,
    cache_until: Instant,
    identity_claims: &[String],
) -> VerifiedToken {
    let identity_values = identity_claims
        .iter()
        .map(|claim| identity_value(claims, claim, &scopes))
        .collect();
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(Box::from);
    VerifiedToken {
        issuer,
        scopes,
        expires_at,
        accepted_until: expires_at.saturating_add(leeway_secs),
        cache_until,
        identity_values,
        jti: text("jti"),
        session: text("sid"),
        keys_generation: 0,
    }
}

/// Checks a JWS's signature against a key set, for `alg` (already allowed):
/// the keys its `kid` names, or a few of the right type when it names none.
/// Public for the JOSE test vectors, which run it on their own keys.
pub fn check_signature(
    keys: &KeySet,
    jwt: &jwt::UnverifiedJwt<'_>,
    alg: Algorithm,
) -> Result<(), TokenError> {
    let (mut any_fitting, mut tried) = (false, 0);
    for key in keys.candidates(jwt.kid.as_deref(), alg) {
        any_fitting = true;
        // Kept, but verifying nothing (a point off its curve, an RSA
        // modulus aws-lc refuses): no check to make, and not one of the
        // few a token without `kid` is tried against.
        if !key.can_verify(alg) {
            continue;
        }
        if tried == MAX_KID_LESS_CANDIDATES {
            break;
        }
        tried += 1;
        if key.verify(jwt.signing_input, jwt.signature, alg) {
            return Ok(());
        }
    }
    match (any_fitting, jwt.kid.as_deref()) {
        (false, Some(kid)) if !keys.has_kid(kid) => Err(TokenError::UnknownKey),
        (false, None) => Err(TokenError::UnknownKey),
        // A key with this kid exists but is of another type: alg confusion.
        (false, Some(_)) => Err(TokenError::AlgorithmNotAllowed),
        _ => Err(TokenError::BadSignature),
    }
}

/// Reads granted scopes: a space-separated string, or an array of single
/// scopes (strings without spaces). Absent means no scopes.
pub(crate) fn read_scopes(
    claims: &Map<String, Value>,
    claim: ScopeClaim,
) -> Result<Scopes, TokenError> {
    let name = match claim {
        ScopeClaim::Scope => "scope",
        ScopeClaim::Scp => "scp",
        ScopeClaim::Roles => "roles",
        ScopeClaim::Permissions => "permissions",
    };
    let scopes = match claims.get(name) {
        None => Scopes::default(),
        Some(Value::String(s)) => Scopes::from_space_separated(s),
        Some(Value::Array(items)) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    // An entry is one scope token (RFC 6749 3.3: no
                    // spaces); "orders:read admin" is malformed, not two.
                    Value::String(s) if !s.contains(' ') => list.push(s.as_str()),
                    _ => return Err(TokenError::WrongClaimType),
                }
            }
            Scopes::from_list(list)
        }
        Some(_) => return Err(TokenError::WrongClaimType),
    };
    // A token with a tab or another character RFC 6749 3.3 does not allow
    // is malformed: "orders:read x\tadmin" grants `orders:read` here, but
    // an upstream splitting the scopes header on any blank would read
    // `admin` in it.
    if scopes.are_tokens() {
        Ok(scopes)
    } else {
        Err(TokenError::WrongClaimType)
    }
}

/// Renders a claim as an identity header value. `scope` always means the
/// granted scopes, whichever claim carried them.
fn identity_value(
    claims: &Map<String, Value>,
    claim: &str,
    scopes: &Scopes,
) -> Option<HeaderValue> {
    if claim == "scope" {
        return if scopes.is_empty() {
            None
        } else {
            HeaderValue::from_str(&scopes.joined()).ok()
        };
    }
    let text = match claims.get(claim)? {
        // Whitespace at either end would be trimmed by every HTTP parser
        // (RFC 9110 5.5): " alice" would arrive as "alice".
        Value::String(s) if s.starts_with(is_blank) || s.ends_with(is_blank) => return None,
        Value::String(s) => s.clone(),
        // An integer past what a JSON parser without arbitrary precision
        // holds exactly (2^64 and up arrive as floats) would be passed as
        // another number, or in exponent form: no header.
        Value::Number(n)
            if n.is_f64()
                && n.as_f64()
                    .is_some_and(|f| f.abs() >= 9_007_199_254_740_992.0) =>
        {
            return None
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let parts = parts?;
            // Space-separated, so an element that is empty or holds a blank
            // could not be told from others: ["billing admin"] would read
            // as ["billing", "admin"].
            if parts.iter().any(|p| p.is_empty() || p.contains(is_blank)) {
                return None;
            }
            parts.join(" ")
        }
        Value::Null | Value::Object(_) => return None,
    };
    HeaderValue::from_str(&text).ok()
}

/// The blanks a header value may hold (RFC 9110 5.5).
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// An endpoint as a client reaches it: scheme and host in lower case,
/// the port given or the scheme's, path and query.
type EndpointKey = (String, String, u16, String);

fn endpoint_key(uri: &http::Uri) -> Option<EndpointKey> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some((
        scheme,
        uri.host()?.to_ascii_lowercase(),
        port,
        uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One endpoint however it is spelled: scheme and host in any case, the
    /// scheme's port written or not; another path, query, port or scheme is
    /// another endpoint.
    #[test]
    fn an_endpoint_is_one_however_it_is_spelled() {
        let key = |s: &str| endpoint_key(&s.parse::<http::Uri>().unwrap()).unwrap();
        let one = key("https://idp.test/introspect");
        for same in [
            "HTTPS://IDP.test/introspect",
            "https://idp.test:443/introspect",
        ] {
            assert_eq!(key(same), one, "{same}");
        }
        for other in [
            "http://idp.test/introspect",
            "https://idp.test:8443/introspect",
            "https://idp.test/introspect?realm=b",
            "https://idp.test/Introspect",
            "https://other.test/introspect",
        ] {
            assert_ne!(key(other), one, "{other}");
        }
        assert_eq!(key("http://h/x"), key("http://h:80/x"));
    }

    /// Retries are spread over a fifth either way of their delay, not all
    /// at the same moment; a delay that is a bound, over the fifth below it.
    #[test]
    fn jitter_spreads_a_delay_by_a_fifth() {
        let delay = Duration::from_secs(10);
        let spread: std::collections::BTreeSet<Duration> =
            (0..200).map(|_| jittered(delay)).collect();
        assert!(spread.len() > 20, "{spread:?}");
        let (low, high) = (spread.first().copied(), spread.last().copied());
        assert!(low >= Some(Duration::from_secs(8)), "{low:?}");
        assert!(high <= Some(Duration::from_secs(12)), "{high:?}");
        let within: std::collections::BTreeSet<Duration> =
            (0..200).map(|_| jittered_within(delay)).collect();
        assert!(within.len() > 20, "{within:?}");
        let (low, high) = (within.first().copied(), within.last().copied());
        assert!(low >= Some(Duration::from_secs(8)), "{low:?}");
        assert!(high <= Some(delay), "{high:?}");
    }
}
