//! RFC 7662 token introspection for opaque tokens, with a cache keyed by token
//! digest (per issuer) that merges concurrent lookups and never outlives the
//! token. Any failure to get an answer fails closed (503), uncached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use moka::future::Cache;
use moka::Expiry;
use serde_json::Value;

use super::cache::TokenDigest;
use super::jwt::{self, TokenError};
use super::VerifiedToken;
use crate::admin::metrics::Metrics;
use crate::admin::throttle::LogThrottle;
use crate::config::{ClientAuth, Introspection, ScopeClaim};
use crate::error::GatewayError;
use crate::proxy::client::{build_https_client, HttpsClient};

/// Largest introspection answer accepted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Introspection calls in flight to one endpoint at most. Calls for the same
/// token are shared already; this bounds calls for different ones (a flood of
/// made-up tokens must not become a flood at the authorization server). A
/// call that finds no slot within the call timeout fails with 503.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;

/// A cached introspection answer.
#[derive(Clone)]
enum Answer {
    Active(Arc<VerifiedToken>),
    Inactive {
        until: Instant,
        /// Why an answer the server gave as active was refused here (for
        /// the metric and the log); `None`: the server said inactive.
        refused: Option<&'static str>,
    },
}

struct AnswerExpiry;

impl Expiry<TokenDigest, Answer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _: &TokenDigest,
        value: &Answer,
        created_at: Instant,
    ) -> Option<Duration> {
        let until = match value {
            Answer::Active(token) => token.cache_until,
            Answer::Inactive { until, .. } => *until,
        };
        Some(until.saturating_duration_since(created_at))
    }
}

/// One call's HTTP exchange: the answer's body when the status is 200.
async fn exchange(
    client: HttpsClient<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Bytes, CallError> {
    let response = client
        .request(request)
        .await
        .map_err(|e| CallError::Network(crate::error::with_causes(&e)))?;
    if response.status() != StatusCode::OK {
        // 429 and 503 may say how long to stay away (delta-seconds only).
        let wait = matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| response.headers().get(http::header::RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_HELD_BACK));
        return Err(match response.status() {
            // The gateway's own client credentials (RFC 7662 2.1), not
            // the server's health: a config fix, not an outage.
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                CallError::Unauthorized(status)
            }
            status => CallError::Status(status, wait),
        });
    }
    Ok(Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            let cause = format!(
                "reading the answer (at most {MAX_RESPONSE_BYTES} bytes): {}",
                crate::error::with_causes(&*e)
            );
            // Too long is the answer's fault; a connection that broke off
            // mid-body is the network's.
            if e.is::<http_body_util::LengthLimitError>() {
                CallError::Body(cause)
            } else {
                CallError::Network(cause)
            }
        })?
        .to_bytes())
}

/// Why one introspection call failed (all fail closed); what it says is
/// the cause in the log line (never the token or the client's secret).
#[derive(Debug, Clone, thiserror::Error)]
enum CallError {
    #[error("no answer within the timeout")]
    Timeout,
    #[error("{0}")]
    Network(String),
    #[error("the server answered {0}")]
    Status(StatusCode, Option<Duration>),
    #[error("the server refused the gateway's client credentials (it answered {0})")]
    Unauthorized(StatusCode),
    #[error("{0}")]
    Body(String),
    #[error("no introspection endpoint (discovery has not found one)")]
    NoEndpoint,
    #[error("every introspection call slot stayed taken for the timeout")]
    Busy,
    #[error("held back: the server asked to wait (Retry-After), or calls in a row got no answer, and the wait is not over")]
    HeldBack,
}

/// The longest a `Retry-After` from the endpoint holds calls back: past
/// it, calls go on (an answer of an hour would make every new token wait).
const MAX_HELD_BACK: Duration = Duration::from_secs(10);

/// Calls in a row that got no answer (a network error, a timeout, a 5xx)
/// after which calls are held back: the endpoint is down, and a call for
/// every new token, hundreds a second from each replica while a refused
/// connection fails at once, would only add to its load as it comes back.
const FAILURES_BEFORE_BACKOFF: u32 = 5;
/// The first hold-back after those failures; each further failure in a row
/// doubles it, up to [`MAX_BACKOFF`]. An answer of any kind ends it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest hold-back that failures in a row lead to.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl CallError {
    fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Network(_) => "network_error",
            Self::Status(..) => "http_error",
            Self::Unauthorized(_) => "unauthorized",
            Self::Body(_) => "invalid_response",
            Self::NoEndpoint => "no_endpoint",
            Self::Busy => "busy",
            Self::HeldBack => "held_back",
        }
    }
}

/// What one call came to: the answer, or why there is none.
type Outcome = Result<Answer, CallError>;

/// Where a call's [`Outcome`] comes to the requests waiting for it: `None`
/// until it ends.
type OutcomeReceiver = tokio::sync::watch::Receiver<Option<Outcome>>;

/// What bounds the calls to one issuer's endpoint. Kept over a reload (see
/// [`Introspector::share_calls_of`]), so that the calls of a retired config
/// still running count against the same bound, and a `Retry-After` one of
/// them gets holds the new config's calls back too.
struct CallLimit {
    /// Slots for calls in flight ([`MAX_CALLS_IN_FLIGHT`]), each held until
    /// its call ends and its answer is read, even when every request
    /// waiting for it went away.
    slots: Arc<tokio::sync::Semaphore>,
    /// Until when (milliseconds since `origin`) the endpoint asked, with
    /// `Retry-After` on a 429 or 503, to be left alone, or failed too often
    /// in a row ([`FAILURES_BEFORE_BACKOFF`]): calls fail at once.
    held_back_until: AtomicU64,
    /// Calls in a row that got no answer.
    failures_in_a_row: AtomicU32,
    origin: Instant,
}

impl CallLimit {
    fn new() -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            held_back_until: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            origin: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True while a `Retry-After` of the endpoint's holds calls back.
    fn is_held_back(&self) -> bool {
        self.now_ms() < self.held_back_until.load(Ordering::Acquire)
    }

    /// Holds calls back for `wait` from now (a hold already longer stays).
    fn hold_back(&self, wait: Duration) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.held_back_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Counts a call that got an answer (`answered`) or none, and holds
    /// calls back once [`FAILURES_BEFORE_BACKOFF`] in a row got none.
    fn count_call(&self, answered: bool) {
        if answered {
            self.failures_in_a_row.store(0, Ordering::Release);
            return;
        }
        let failures = self
            .failures_in_a_row
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if let Some(beyond) = failures.checked_sub(FAILURES_BEFORE_BACKOFF) {
            let wait = FIRST_BACKOFF
                .saturating_mul(1 << beyond.min(8))
                .min(MAX_BACKOFF);
            self.hold_back(wait);
        }
    }
}

/// Every `scopegate_introspection_requests_total` result.
const INTROSPECTION_RESULTS: [&str; 12] = [
    "active",
    "inactive",
    "refused",
    "timeout",
    "network_error",
    "http_error",
    "unauthorized",
    "invalid_response",
    "no_endpoint",
    "busy",
    "held_back",
    "abandoned",
];

/// Introspects opaque tokens for one issuer.
pub struct Introspector {
    issuer_index: usize,
    issuer_name: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    client_ids: Vec<String>,
    leeway_secs: u64,
    scope_claim: ScopeClaim,
    settings: Introspection,
    endpoint: ArcSwapOption<Uri>,
    authorization: Option<HeaderValue>,
    client: HttpsClient<Full<Bytes>>,
    /// The issuer's call slots and hold-back, shared with the introspector
    /// of the config before a reload (see [`Self::share_calls_of`]).
    limit: ArcSwap<CallLimit>,
    /// Calls in flight by token digest: a request that takes over the wait
    /// for a token's answer (the cache hands it on when the request that
    /// made the call goes away) waits for that call instead of making
    /// another. An entry goes when its call ends, after its answer is in
    /// the cache.
    in_flight: Mutex<HashMap<TokenDigest, OutcomeReceiver>>,
    cache: Cache<TokenDigest, Answer>,
    identity_claims: Arc<[String]>,
    metrics: Arc<Metrics>,
    /// Calls that ended after every request waiting for them went away.
    abandoned: prometheus::IntCounter,
    /// The "introspection failed" line, one per interval.
    failure_log: LogThrottle,
    /// The "active introspection answer refused" line, one per interval.
    refusal_log: LogThrottle,
    /// Set when another issuer introspects at the same endpoint: its
    /// answers then tell whose token it is only by their `iss`.
    iss_required: std::sync::atomic::AtomicBool,
}

/// The issuer facts an [`Introspector`] checks answers against.
pub struct IssuerFacts {
    /// Index in the config's issuers.
    pub index: usize,
    /// Metrics name.
    pub name: Arc<str>,
    /// Expected `iss` when the answer has one.
    pub issuer: String,
    /// Accepted `aud` values when the answer has one (empty: an answer with
    /// one is refused, as meant for another API).
    pub audiences: Vec<String>,
    /// Accepted `client_id` values (empty: any).
    pub client_ids: Vec<String>,
    /// Clock skew allowance.
    pub leeway_secs: u64,
    /// Where scopes are.
    pub scope_claim: ScopeClaim,
}

impl Introspector {
    /// Sets up the client, credentials and cache.
    pub fn new(
        facts: IssuerFacts,
        settings: Introspection,
        cache_max_entries: u64,
        identity_claims: Arc<[String]>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let client = build_https_client(settings.ca_file.as_deref(), settings.timeout, 16, false)?;
        let authorization = match settings.auth {
            ClientAuth::Basic => {
                // RFC 6749 2.3.1: form-urlencode both parts before Basic.
                let user = form_encode(&settings.client_id);
                let pass = form_encode(settings.client_secret.expose());
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    STANDARD.encode(format!("{user}:{pass}"))
                ))
                .map_err(|_| "client credentials do not fit in a header".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
            ClientAuth::Post => None,
        };
        let facts_name = Arc::clone(&facts.name);
        Ok(Self {
            issuer_index: facts.index,
            issuer_name: facts.name,
            issuer: facts.issuer,
            audiences: facts.audiences,
            client_ids: facts.client_ids,
            leeway_secs: facts.leeway_secs,
            scope_claim: facts.scope_claim,
            endpoint: ArcSwapOption::new(settings.endpoint.clone().map(Arc::new)),
            settings,
            authorization,
            client,
            limit: ArcSwap::from_pointee(CallLimit::new()),
            in_flight: Mutex::new(HashMap::new()),
            cache: Cache::builder()
                .max_capacity(cache_max_entries)
                .weigher(move |_, answer: &Answer| match answer {
                    Answer::Active(token) => token.cache_weight(cache_max_entries),
                    Answer::Inactive { .. } => 1,
                })
                .expire_after(AnswerExpiry)
                .build(),
            identity_claims,
            abandoned: {
                // Every result at 0 before its first call, for alerts.
                for result in INTROSPECTION_RESULTS {
                    metrics
                        .introspection_requests
                        .with_label_values(&[&facts_name, result]);
                }
                metrics
                    .introspection_requests
                    .with_label_values(&[&facts_name, "abandoned"])
            },
            metrics,
            failure_log: LogThrottle::default(),
            refusal_log: LogThrottle::default(),
            iss_required: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// From now on an active answer must name this issuer in `iss`: another
    /// issuer introspects at the same endpoint, so an answer without one
    /// may be about that issuer's token (RFC 7662 4 leaves the check to the
    /// server, which cannot tell the two apart). Answers cached before are
    /// dropped.
    pub fn require_iss(&self) {
        if !self
            .iss_required
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.cache.invalidate_all();
        }
    }

    /// Takes over the call slots and hold-back of `previous`, the same
    /// issuer's introspector in the config a reload replaces: its calls
    /// still in flight keep their slots, so the issuer's endpoint gets
    /// [`MAX_CALLS_IN_FLIGHT`] calls at once at most across the two, and a
    /// `Retry-After` it gave either holds both back.
    pub fn share_calls_of(&self, previous: &Introspector) {
        self.limit.store(previous.limit.load_full());
    }

    /// The endpoint the config names (`None`: found by discovery).
    pub fn configured_endpoint(&self) -> Option<&Uri> {
        self.settings.endpoint.as_ref()
    }

    /// Sets the endpoint found by discovery (explicit configuration wins).
    pub fn set_discovered_endpoint(&self, endpoint: Uri) {
        if self.settings.endpoint.is_none() {
            self.endpoint.store(Some(Arc::new(endpoint)));
        }
    }

    /// The endpoint in use, configured or discovered.
    pub fn endpoint(&self) -> Option<Uri> {
        self.endpoint.load().as_deref().cloned()
    }

    /// True once an endpoint is known.
    pub fn is_ready(&self) -> bool {
        self.endpoint.load().is_some()
    }

    /// Introspects a token, from the cache when possible. Concurrent requests
    /// with the same uncached token share one call. `token_exp` is a JWT's
    /// own (unverified) `exp`: an answer is cached no longer than it, since
    /// the server's answer may leave `exp` out.
    pub async fn introspect(
        self: &Arc<Self>,
        token: &str,
        digest: TokenDigest,
        token_exp: Option<u64>,
    ) -> Result<Arc<VerifiedToken>, GatewayError> {
        let mut cached = self.cache.get(&digest).await;
        // An entry counted to `exp` on the monotonic clock, for a token the
        // wall clock (set forward since) finds expired, is asked about again.
        if let Some(Answer::Active(token)) = &cached {
            let past = |exp: u64| jwt::time_until(exp).is_zero();
            if past(token.expires_at) || token_exp.is_some_and(past) {
                self.cache.invalidate(&digest).await;
                cached = None;
            }
        }
        let answer = match cached {
            Some(answer) => {
                self.metrics.token_cache_introspection_hits.inc();
                answer
            }
            None => {
                self.metrics.token_cache_introspection_misses.inc();
                // Concurrent misses for the token share one call: moka runs
                // `call` for one of them and hands its outcome to the rest.
                // The call's task has cached an answer already (it must:
                // the answer of a call every request left is kept too), so
                // the outcome comes back on moka's error side, which it
                // hands on without inserting: one miss, one insert. `Ok`
                // only for an answer moka found cached meanwhile.
                let call =
                    async { Err::<Answer, Outcome>(self.call(token, digest, token_exp).await) };
                // Boxed: the HTTP call is large and rare.
                match Box::pin(self.cache.try_get_with(digest, call)).await {
                    Ok(answer) => answer,
                    Err(outcome) => match &*outcome {
                        Ok(answer) => answer.clone(),
                        Err(_) => return Err(GatewayError::IntrospectionUnavailable),
                    },
                }
            }
        };
        match answer {
            // An entry never outlives the token's `exp` (see `interpret`).
            Answer::Active(token) => Ok(token),
            Answer::Inactive { .. } => Err(GatewayError::InvalidToken(TokenError::Inactive)),
        }
    }

    /// The answer for one uncached token (run for one of the requests
    /// waiting for it at a time): that of the call in flight for it, or of
    /// a call made now.
    async fn call(
        self: &Arc<Self>,
        token: &str,
        digest: TokenDigest,
        token_exp: Option<u64>,
    ) -> Outcome {
        // A call already in flight for the token (made for a request that
        // went away, whose wait this one took over): its answer, not a
        // second call.
        let joined = {
            let mut in_flight = self.in_flight();
            // An entry whose call's task ended without an answer (it
            // panicked) would fail every request for the token: dropped.
            if in_flight
                .get(&digest)
                .is_some_and(|outcome| outcome.has_changed().is_err())
            {
                in_flight.remove(&digest);
            }
            in_flight.get(&digest).cloned()
        };
        let mut outcome = match joined {
            Some(outcome) => outcome,
            None => match self.start_call(token, digest, token_exp).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    let result = Err(e);
                    self.record(&result);
                    return result;
                }
            },
        };
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|ended| ended.clone());
        ended.unwrap_or_else(|| {
            Err(CallError::Network(
                "the call ended without an answer".into(),
            ))
        })
    }

    /// Counts a call's outcome and logs a failure or a refusal.
    fn record(&self, result: &Outcome) {
        let label = match result {
            Ok(Answer::Active(_)) => "active",
            Ok(Answer::Inactive { refused: None, .. }) => "inactive",
            Ok(Answer::Inactive {
                refused: Some(_), ..
            }) => "refused",
            Err(e) => e.label(),
        };
        self.metrics
            .introspection_requests
            .with_label_values(&[&self.issuer_name, label])
            .inc();
        match result {
            Err(e) => {
                if let Some(suppressed) = self.failure_log.allow() {
                    tracing::warn!(issuer = %self.issuer_name, result = e.label(), cause = %e, suppressed, "introspection failed");
                }
            }
            // An `iss` with a trailing slash, a missing audience: the server
            // vouches for tokens scopegate then refuses, which an operator
            // must be able to tell from tokens the server revoked.
            Ok(Answer::Inactive {
                refused: Some(why), ..
            }) => {
                if let Some(suppressed) = self.refusal_log.allow() {
                    tracing::warn!(issuer = %self.issuer_name, reason = why, suppressed, "active introspection answer refused");
                }
            }
            Ok(_) => {}
        }
    }

    /// The calls in flight, by token digest.
    fn in_flight(&self) -> MutexGuard<'_, HashMap<TokenDigest, OutcomeReceiver>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a call slot and starts a call for `token`, registered in
    /// `in_flight` under `digest`: where its outcome will come. An error:
    /// no call made (no endpoint, held back, no slot).
    async fn start_call(
        self: &Arc<Self>,
        token: &str,
        digest: TokenDigest,
        token_exp: Option<u64>,
    ) -> Result<OutcomeReceiver, CallError> {
        let endpoint = self.endpoint.load_full().ok_or(CallError::NoEndpoint)?;
        let limit = self.limit.load_full();
        if limit.is_held_back() {
            return Err(CallError::HeldBack);
        }
        // A wait for a slot of `timeout` at most, then the call's own.
        let slot = match tokio::time::timeout(
            self.settings.timeout,
            Arc::clone(&limit.slots).acquire_owned(),
        )
        .await
        {
            Ok(Ok(slot)) => slot,
            _ => return Err(CallError::Busy),
        };
        // The answer of a call that held a slot meanwhile may have asked to
        // wait (it is read before its slot is freed).
        if limit.is_held_back() {
            return Err(CallError::HeldBack);
        }
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token);
            form.append_pair("token_type_hint", "access_token");
            if self.settings.auth == ClientAuth::Post {
                form.append_pair("client_id", &self.settings.client_id);
                form.append_pair("client_secret", self.settings.client_secret.expose());
            }
            form.finish()
        };
        let mut request = Request::post((*endpoint).clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Network(e.to_string()))?;
        if let Some(auth) = &self.authorization {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        // The call runs on its own, holding the slot, so that requests that
        // go away (a client's reset, a closed connection) cannot free slots
        // while the server still works on their calls: a flood of cancelled
        // requests would otherwise reach it without bound. It also reads
        // and counts the answer, records a `Retry-After` and caches the
        // answer itself, so that none of it is lost when no request waits
        // any more (an answer no request waits for is counted as
        // `abandoned`). The token is in the request's body only, gone with
        // the call.
        let (answered, outcome) = tokio::sync::watch::channel(None);
        self.in_flight().insert(digest, outcome.clone());
        // The latency of calls made: not of those held back or refused a
        // slot, which would pull it towards zero or the timeout.
        let duration = self
            .metrics
            .introspection_duration
            .with_label_values(&[&self.issuer_name]);
        // A call outliving its config's reload may be the last holder of
        // the answer cache.
        let this = crate::retire::Held::new(Arc::clone(self));
        tokio::spawn(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(
                this.settings.timeout,
                exchange(this.client.clone(), request),
            )
            .await
            .unwrap_or(Err(CallError::Timeout));
            duration.observe(started.elapsed().as_secs_f64());
            match &result {
                Err(CallError::Status(_, Some(wait))) => limit.hold_back(*wait),
                Err(CallError::Network(_) | CallError::Timeout) => limit.count_call(false),
                Err(CallError::Status(status, None)) => {
                    limit.count_call(!status.is_server_error());
                }
                _ => limit.count_call(true),
            }
            let result = result.and_then(|body| {
                let object = jwt::strict_object(&body).ok_or_else(|| {
                    CallError::Body(
                        "the answer is not one JSON object (without repeated members)".into(),
                    )
                })?;
                Ok((
                    this.interpret(&object, token_exp),
                    !object.contains_key("iss"),
                ))
            });
            // In the cache before the call leaves `in_flight`: a request
            // taking over the wait then finds one or the other.
            let result = match result {
                Ok((answer, without_iss)) => Ok(this.settle(digest, answer, without_iss).await),
                Err(e) => Err(e),
            };
            this.record(&result);
            this.in_flight().remove(&digest);
            answered.send_replace(Some(result));
            if answered.receiver_count() == 0 {
                this.abandoned.inc();
            }
            drop(slot);
        });
        Ok(outcome)
    }

    /// Caches a call's answer: the answer's only insert (see
    /// `introspect`). An active one without `iss`, taken while none was
    /// required, is dropped again and refused when [`Self::require_iss`]
    /// came meanwhile; checked after the insert, so that this check or
    /// `require_iss`'s invalidation finds the entry.
    async fn settle(&self, digest: TokenDigest, answer: Answer, without_iss: bool) -> Answer {
        self.cache.insert(digest, answer.clone()).await;
        if without_iss
            && matches!(answer, Answer::Active(_))
            && self.iss_required.load(std::sync::atomic::Ordering::SeqCst)
        {
            self.cache.invalidate(&digest).await;
            return Answer::Inactive {
                until: Instant::now(),
                refused: Some("iss"),
            };
        }
        answer
    }

    /// Turns an answer into a cache entry: only `"active": true` (a JSON
    /// boolean) with matching `iss`/`aud`/`exp` is active, cached no longer
    /// than `token_exp` either (see [`Self::introspect`]).
    fn interpret(&self, answer: &serde_json::Map<String, Value>, token_exp: Option<u64>) -> Answer {
        let now = jwt::now_unix();
        let until = Instant::now() + self.settings.negative_cache_ttl;
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Answer::Inactive {
                until,
                refused: None,
            };
        }
        let refused = |why: &'static str| Answer::Inactive {
            until,
            refused: Some(why),
        };
        // Bound to a DPoP key or a client certificate (RFC 9449, RFC 8705):
        // presented as a bearer token, it proves nothing of that binding.
        if answer.contains_key("cnf") {
            return refused("cnf");
        }
        // Whether the answer names the token an access token, in one of the
        // three members servers use for it.
        let mut named_access = false;
        // A refresh token reported active is still not an access token.
        if let Some(kind) = answer.get("token_type") {
            let is_access = kind.as_str().is_some_and(|t| {
                t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("access_token")
            });
            if !is_access {
                return refused("token_type");
            }
            named_access = true;
        }
        // Keycloak says what a token is in `typ` (`Bearer` for an access
        // token): its refresh, offline, ID, serialized ID and logout tokens
        // are not.
        if let Some(kind) = answer.get("typ").and_then(Value::as_str) {
            if ["refresh", "offline", "id", "logout", "serialized-id"]
                .iter()
                .any(|other| kind.eq_ignore_ascii_case(other))
            {
                return refused("typ");
            }
            named_access |= kind.eq_ignore_ascii_case("bearer");
        }
        // fosite (Ory Hydra) leaves `token_type` out for a refresh token and
        // says what it is in `token_use` (`access_token`; Cognito's claim
        // of that name says `access`).
        if let Some(kind) = answer.get("token_use") {
            if !kind.as_str().is_some_and(|t| {
                t.eq_ignore_ascii_case("access_token") || t.eq_ignore_ascii_case("access")
            }) {
                return refused("token_use");
            }
            named_access = true;
        }
        // Spring Authorization Server names only an access token's kind,
        // and ignores `token_type_hint`: its answer for an active refresh
        // token names none, and would pass on a route with no scopes.
        if self.settings.require_token_type && !named_access {
            return refused("token_type");
        }
        match answer.get("iss") {
            None if self.iss_required.load(std::sync::atomic::Ordering::SeqCst) => {
                return refused("iss")
            }
            None => {}
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => return refused("iss"),
        }
        // An answer's `aud` must name this API, if it has one (or always,
        // with `require_audience`): with no `audiences` (only
        // `client_ids`), none is named, and an empty one (Ory Hydra's for a
        // token granted no audience) names none, as leaving it out does.
        // With `audiences`, an empty one names none of them (RFC 7519
        // 4.1.3), as for a JWT.
        let aud_refused = if self.audiences.is_empty() {
            jwt::names_an_audience(answer)
        } else {
            (self.settings.require_audience || answer.contains_key("aud"))
                && jwt::check_audience(answer, &self.audiences).is_err()
        };
        if aud_refused {
            return refused("aud");
        }
        if !self.client_ids.is_empty() && jwt::check_client_id(answer, &self.client_ids).is_err() {
            return refused("client_id");
        }
        let lifetime = if answer.contains_key("exp") {
            jwt::check_lifetime(answer, now, self.leeway_secs)
        } else {
            // No `exp`, but `nbf` and `iat` still count: check them with an
            // expiry that never passes.
            let mut unbounded = answer.clone();
            unbounded.insert("exp".to_owned(), Value::from(u64::MAX));
            jwt::check_lifetime(&unbounded, now, self.leeway_secs)
        };
        let expires_at = match lifetime {
            Ok(lifetime) => answer.contains_key("exp").then_some(lifetime.expires_at),
            // Valid later (or the server's clock is ahead of ours): refused,
            // and remembered only until it becomes valid, so that it passes
            // then without waiting out `negative_cache_ttl`.
            Err(TokenError::NotYetValid | TokenError::IssuedInFuture) => {
                let valid_from = ["nbf", "iat"]
                    .iter()
                    .filter_map(|name| answer.get(*name).and_then(Value::as_f64))
                    .fold(0.0_f64, f64::max);
                // Saturating: a date past u64 is far enough.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let valid_from = (valid_from.ceil() as u64).saturating_sub(self.leeway_secs);
                let wait = jwt::time_until(valid_from).min(self.settings.negative_cache_ttl);
                return Answer::Inactive {
                    until: Instant::now() + wait,
                    refused: Some("not_yet_valid"),
                };
            }
            Err(_) => return refused("lifetime"),
        };
        // A JWT past its own `exp` (and the leeway) is over, whatever the
        // answer says: it would be accepted until then at the latest.
        if token_exp.is_some_and(|exp| exp.saturating_add(self.leeway_secs) <= now) {
            return refused("lifetime");
        }
        // RFC 7662 2.2 names the answer's scopes `scope`, whatever claim
        // the issuer's JWTs use; a server that sends only its JWT claim
        // (`scp`) is read as configured.
        let claim = if answer.contains_key("scope") {
            ScopeClaim::Scope
        } else {
            self.scope_claim
        };
        let Ok(scopes) = super::read_scopes(answer, claim) else {
            return refused("scope");
        };
        // A JWT's own `exp` ends it too, whatever the answer says: for the
        // cache, and for what outlives a request (a tunnel it opened).
        let expires_at = [expires_at, token_exp].into_iter().flatten().min();
        let ttl = expires_at
            .map(jwt::time_until)
            .map_or(self.settings.cache_ttl, |left| {
                left.min(self.settings.cache_ttl)
            });
        // Without any `exp`, the answer vouches for the token as long as it
        // is cached: what outlives a request (a tunnel it opened) ends then,
        // as a revocation reaches requests then (no cache: as before, the
        // tunnel's own bound), with no leeway: there is no clock to skew.
        let leeway_secs = if expires_at.is_some() {
            self.leeway_secs
        } else {
            0
        };
        let expires_at = expires_at.unwrap_or_else(|| {
            if ttl.is_zero() {
                u64::MAX
            } else {
                now.saturating_add(ttl.as_secs().max(1))
            }
        });
        Answer::Active(Arc::new(super::build_verified(
            self.issuer_index,
            answer,
            scopes,
            expires_at,
            leeway_secs,
            Instant::now() + ttl,
            &self.identity_claims,
        )))
    }
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::auth::cache::digest;
    use crate::config::Secret;

    /// An introspection server on 127.0.0.1 answering `{"active": false}`
    /// to every call, and the number of calls it took.
    async fn answering_inactive() -> (Uri, Arc<AtomicUsize>) {
        answering(
            "200 OK\r\ncontent-type: application/json",
            r#"{"active": false}"#,
        )
        .await
    }

    /// An introspection server on 127.0.0.1 giving every call the same
    /// answer (`head`: the status and any header lines), and the number of
    /// calls it took.
    async fn answering(head: &'static str, body: &'static str) -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                // The head and the small form body; the answer closes the
                // connection, so the rest need not be read exactly.
                let mut request = Vec::new();
                let mut chunk = [0; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (endpoint.parse().unwrap(), calls)
    }

    /// The issuer `https://issuer.test`, without audiences or leeway.
    fn facts() -> IssuerFacts {
        IssuerFacts {
            index: 0,
            name: Arc::from("test"),
            issuer: "https://issuer.test".to_owned(),
            audiences: Vec::new(),
            client_ids: Vec::new(),
            leeway_secs: 0,
            scope_claim: ScopeClaim::Scope,
        }
    }

    fn introspector(endpoint: Uri) -> Introspector {
        let facts = facts();
        let settings = Introspection {
            endpoint: Some(endpoint),
            client_id: "gateway".to_owned(),
            client_secret: Secret::new("secret".to_owned()),
            auth: ClientAuth::Post,
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(3600),
            negative_cache_ttl: Duration::ZERO,
            ca_file: None,
            require_token_type: false,
            require_audience: false,
        };
        Introspector::new(
            facts,
            settings,
            16,
            Arc::from(Vec::new()),
            Arc::new(Metrics::new().unwrap()),
        )
        .unwrap()
    }

    /// A JWT's own `exp` bounds what an active answer allows, not only how
    /// long it is cached: a tunnel opened with the token ends by then, and
    /// one already past it is refused.
    #[test]
    fn a_jwts_own_exp_bounds_an_answer_without_one_or_with_a_later_one() {
        let introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        let now = jwt::now_unix();
        let token_exp = now + 60;
        for (answer_exp, want) in [
            (None, token_exp),
            (Some(now + 7200), token_exp),
            (Some(now + 30), now + 30),
        ] {
            let mut answer = serde_json::Map::new();
            answer.insert("active".into(), Value::Bool(true));
            if let Some(exp) = answer_exp {
                answer.insert("exp".into(), Value::from(exp));
            }
            let Answer::Active(token) = introspector.interpret(&answer, Some(token_exp)) else {
                panic!("{answer_exp:?}: not active");
            };
            assert_eq!(token.expires_at, want, "{answer_exp:?}");
            assert_eq!(token.accepted_until, want, "{answer_exp:?}: leeway 0");
        }
        let mut active = serde_json::Map::new();
        active.insert("active".into(), Value::Bool(true));
        // Neither the answer nor the token has an `exp`: accepted (and a
        // tunnel kept) as long as the answer is cached, `cache_ttl`.
        let Answer::Active(token) = introspector.interpret(&active, None) else {
            panic!("no exp at all: not active");
        };
        let until = token.accepted_until;
        assert!(
            until >= now + 3600 && until <= jwt::now_unix() + 3600,
            "{until}"
        );
        for token_exp in [now - 100, now] {
            assert!(
                matches!(
                    introspector.interpret(&active, Some(token_exp)),
                    Answer::Inactive {
                        refused: Some("lifetime"),
                        ..
                    }
                ),
                "{token_exp}: a JWT past its exp"
            );
        }
    }

    /// The leeway lengthens an `exp` (clocks may differ), not the cache's
    /// lifetime of an answer without one: a tunnel opened with such a
    /// token ends when the answer leaves the cache.
    #[test]
    fn the_leeway_lengthens_an_exp_not_the_cache_lifetime() {
        let mut introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        introspector.leeway_secs = 30;
        let now = jwt::now_unix();
        let mut answer = serde_json::Map::new();
        answer.insert("active".into(), Value::Bool(true));
        let Answer::Active(token) = introspector.interpret(&answer, None) else {
            panic!("no exp: not active");
        };
        let until = token.accepted_until;
        assert!(
            until >= now + 3600 && until <= jwt::now_unix() + 3600,
            "accepted until {} s from now, cache_ttl 3600",
            until.saturating_sub(now)
        );
        answer.insert("exp".into(), Value::from(now + 600));
        let Answer::Active(token) = introspector.interpret(&answer, None) else {
            panic!("exp ahead: not active");
        };
        assert_eq!(token.accepted_until, now + 630);
    }

    /// With `client_ids`, an active answer is taken only for a token issued
    /// to one of them (RFC 7662 2.2 `client_id`).
    #[test]
    fn client_ids_hold_introspection_answers_to_their_clients() {
        let mut introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        introspector.client_ids = vec!["app-1".to_owned()];
        let answer = |client_id: Option<Value>| {
            let mut answer = serde_json::Map::new();
            answer.insert("active".into(), Value::Bool(true));
            if let Some(id) = client_id {
                answer.insert("client_id".into(), id);
            }
            introspector.interpret(&answer, None)
        };
        assert!(matches!(answer(Some("app-1".into())), Answer::Active(_)));
        let mut with_aud = serde_json::Map::new();
        with_aud.insert("active".into(), Value::Bool(true));
        with_aud.insert("client_id".into(), "app-1".into());
        with_aud.insert("aud".into(), "another-api".into());
        assert!(matches!(
            introspector.interpret(&with_aud, None),
            Answer::Inactive {
                refused: Some("aud"),
                ..
            }
        ));
        for other in [Some("app-2".into()), Some(Value::from(1)), None] {
            assert!(
                matches!(
                    answer(other.clone()),
                    Answer::Inactive {
                        refused: Some("client_id"),
                        ..
                    }
                ),
                "{other:?}"
            );
        }
    }

    /// An active answer without `iss`, taken before `require_iss` but
    /// cached after it (discovery found a second issuer at the endpoint
    /// while the call was out), is not kept or served.
    #[tokio::test]
    async fn an_answer_without_iss_taken_before_iss_was_required_is_not_kept() {
        let introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        let mut answer = serde_json::Map::new();
        answer.insert("active".into(), Value::Bool(true));
        let taken = introspector.interpret(&answer, None);
        assert!(matches!(taken, Answer::Active(_)), "no iss yet required");
        introspector.require_iss();
        let token = digest("answered-without-iss");
        let settled = introspector.settle(token, taken, true).await;
        assert!(
            matches!(
                settled,
                Answer::Inactive {
                    refused: Some("iss"),
                    ..
                }
            ),
            "the waiting requests are refused"
        );
        assert!(introspector.cache.get(&token).await.is_none(), "not cached");

        // One with the issuer's `iss` stays.
        answer.insert("iss".into(), Value::from("https://issuer.test"));
        let named = digest("answered-with-iss");
        let settled = introspector
            .settle(named, introspector.interpret(&answer, None), false)
            .await;
        assert!(matches!(settled, Answer::Active(_)));
        assert!(introspector.cache.get(&named).await.is_some(), "cached");
    }

    /// An active answer the monotonic clock would keep, for a token whose
    /// `exp` the wall clock has passed (as after the wall clock was set
    /// forward), is not served: the server is asked again.
    #[tokio::test]
    async fn a_cached_answer_past_exp_by_the_wall_clock_is_asked_again() {
        let (endpoint, calls) = answering_inactive().await;
        let introspector = Arc::new(introspector(endpoint));
        let now = jwt::now_unix();
        let cached_active = |expires_at: u64| {
            Answer::Active(Arc::new(crate::auth::build_verified(
                0,
                &serde_json::Map::new(),
                crate::auth::scope::Scopes::default(),
                expires_at,
                0,
                Instant::now() + Duration::from_secs(3600),
                &[],
            )))
        };

        let current = digest("current");
        introspector
            .cache
            .insert(current, cached_active(now + 3600))
            .await;
        assert!(introspector
            .introspect("current", current, None)
            .await
            .is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a good entry is served");

        let stale = digest("stale");
        introspector
            .cache
            .insert(stale, cached_active(now - 1))
            .await;
        let answer = introspector.introspect("stale", stale, None).await;
        assert!(
            matches!(
                answer,
                Err(GatewayError::InvalidToken(TokenError::Inactive))
            ),
            "served from the cache past exp: {:?}",
            answer.map(|_| ())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the server was asked");
    }

    /// A JSON object as an introspection answer.
    fn object(value: Value) -> serde_json::Map<String, Value> {
        let Value::Object(map) = value else {
            panic!("not an object: {value}");
        };
        map
    }

    /// What an answer came to: active, or why not (`None`: the server
    /// said inactive).
    fn verdict(answer: &Answer) -> Result<(), Option<&'static str>> {
        match answer {
            Answer::Active(_) => Ok(()),
            Answer::Inactive { refused, .. } => Err(*refused),
        }
    }

    /// A call limit whose clock stands at 0 ms through the test (its origin
    /// is an hour ahead, and the time since a later instant is zero).
    fn frozen_limit() -> CallLimit {
        CallLimit {
            origin: Instant::now() + Duration::from_secs(3600),
            ..CallLimit::new()
        }
    }

    /// Waits until every call slot is free again: the calls' tasks have
    /// ended, after all they count.
    async fn wait_for_calls_to_end(introspector: &Introspector) {
        for _ in 0..10_000 {
            if introspector.limit.load().slots.available_permits() == MAX_CALLS_IN_FLIGHT {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("a call's task did not end");
    }

    /// Only an access token is taken, whichever member (`token_type`,
    /// Keycloak's `typ`, fosite's or Cognito's `token_use`) names its kind;
    /// with `require_token_type`, an answer naming none is refused.
    #[test]
    fn only_an_answer_naming_an_access_token_or_no_kind_is_taken() {
        let mut introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        let kinds = [
            (json!({"token_type": "Bearer"}), Ok(())),
            (json!({"token_type": "access_token"}), Ok(())),
            (
                json!({"token_type": "refresh_token"}),
                Err(Some("token_type")),
            ),
            (json!({"token_type": 1}), Err(Some("token_type"))),
            (json!({"typ": "Bearer"}), Ok(())),
            (json!({"typ": "Refresh"}), Err(Some("typ"))),
            (json!({"token_use": "access_token"}), Ok(())),
            (json!({"token_use": "access"}), Ok(())),
            (
                json!({"token_use": "refresh_token"}),
                Err(Some("token_use")),
            ),
            (json!({"token_use": "id"}), Err(Some("token_use"))),
        ];
        for require_token_type in [false, true] {
            introspector.settings.require_token_type = require_token_type;
            for (kind, want) in &kinds {
                let mut answer = object(kind.clone());
                answer.insert("active".into(), Value::Bool(true));
                let got = verdict(&introspector.interpret(&answer, None));
                assert_eq!(
                    &got, want,
                    "{kind}, require_token_type {require_token_type}"
                );
            }
            let unnamed = verdict(&introspector.interpret(&object(json!({"active": true})), None));
            let want = if require_token_type {
                Err(Some("token_type"))
            } else {
                Ok(())
            };
            assert_eq!(
                unnamed, want,
                "no kind, require_token_type {require_token_type}"
            );
        }
    }

    /// An active answer's `iss` must be the issuer's, exactly; once
    /// `require_iss` was called, one without `iss` is refused too.
    #[test]
    fn an_answer_naming_another_issuer_is_refused() {
        let introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        let with_iss = |iss: Value| {
            let answer = object(json!({"active": true, "iss": iss}));
            verdict(&introspector.interpret(&answer, None))
        };
        assert_eq!(with_iss("https://issuer.test".into()), Ok(()));
        for other in [
            json!("https://other.test"),
            json!("https://issuer.test/"),
            json!(["https://issuer.test"]),
            json!(1),
        ] {
            assert_eq!(with_iss(other.clone()), Err(Some("iss")), "{other}");
        }
        let without_iss = object(json!({"active": true}));
        assert_eq!(verdict(&introspector.interpret(&without_iss, None)), Ok(()));
        introspector.require_iss();
        assert_eq!(
            verdict(&introspector.interpret(&without_iss, None)),
            Err(Some("iss"))
        );
        assert_eq!(with_iss("https://issuer.test".into()), Ok(()));
    }

    /// With `audiences`, an answer's `aud` (string or array) must name one
    /// of them; an answer without `aud` is taken, unless `require_audience`
    /// is set; an empty one names none.
    #[test]
    fn with_audiences_an_answers_aud_must_name_one() {
        let mut introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        introspector.audiences = vec!["https://api.test".to_owned()];
        for require_audience in [false, true] {
            introspector.settings.require_audience = require_audience;
            let without = if require_audience {
                Err(Some("aud"))
            } else {
                Ok(())
            };
            for (aud, want) in [
                (Some(json!("https://api.test")), Ok(())),
                (
                    Some(json!(["https://other.test", "https://api.test"])),
                    Ok(()),
                ),
                (None, without),
                (Some(json!("https://other.test")), Err(Some("aud"))),
                (Some(json!([])), Err(Some("aud"))),
            ] {
                let mut answer = object(json!({"active": true}));
                if let Some(aud) = &aud {
                    answer.insert("aud".into(), aud.clone());
                }
                assert_eq!(
                    verdict(&introspector.interpret(&answer, None)),
                    want,
                    "{aud:?}, require_audience {require_audience}"
                );
            }
        }
    }

    /// An answer not valid yet (`nbf` or `iat` ahead) is refused and
    /// remembered until it becomes valid (within `negative_cache_ttl`),
    /// not forgotten at once.
    #[test]
    fn an_answer_not_yet_valid_is_remembered_until_it_becomes_valid() {
        let mut introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        introspector.settings.negative_cache_ttl = Duration::from_secs(3600);
        let now = jwt::now_unix();
        for claim in ["nbf", "iat"] {
            let answer = object(json!({"active": true, claim: now + 60}));
            let before = Instant::now();
            let Answer::Inactive {
                until,
                refused: Some("not_yet_valid"),
            } = introspector.interpret(&answer, None)
            else {
                panic!("{claim} ahead: not refused as not yet valid");
            };
            let after = Instant::now();
            assert!(until > before, "{claim}: not remembered");
            assert!(
                until <= after + Duration::from_secs(60),
                "{claim}: remembered past the time it becomes valid"
            );
        }
    }

    /// An inactive answer is cached for `negative_cache_ttl`, and with a
    /// `negative_cache_ttl` of 0 not at all: every request asks again.
    #[tokio::test]
    async fn an_inactive_answer_is_cached_for_negative_cache_ttl_only() {
        for (negative_cache_ttl, calls_for_two) in
            [(Duration::ZERO, 2), (Duration::from_secs(60), 1)]
        {
            let (endpoint, calls) = answering_inactive().await;
            let mut introspector = introspector(endpoint);
            introspector.settings.negative_cache_ttl = negative_cache_ttl;
            let introspector = Arc::new(introspector);
            let token = digest("inactive");
            for _ in 0..2 {
                let answer = introspector.introspect("inactive", token, None).await;
                assert!(
                    matches!(
                        answer,
                        Err(GatewayError::InvalidToken(TokenError::Inactive))
                    ),
                    "{:?}",
                    answer.map(|_| ())
                );
            }
            assert_eq!(
                calls.load(Ordering::SeqCst),
                calls_for_two,
                "negative_cache_ttl {negative_cache_ttl:?}"
            );
        }
    }

    /// `require_iss` drops the answers cached before it: one without `iss`
    /// may be about the other issuer's token.
    #[tokio::test]
    async fn require_iss_drops_the_answers_cached_before() {
        let introspector = introspector(Uri::from_static("http://127.0.0.1:9/introspect"));
        let answer = introspector.interpret(&object(json!({"active": true})), None);
        let token = digest("cached-before");
        let settled = introspector.settle(token, answer, true).await;
        assert_eq!(verdict(&settled), Ok(()));
        assert!(introspector.cache.get(&token).await.is_some(), "cached");
        introspector.require_iss();
        assert!(
            introspector.cache.get(&token).await.is_none(),
            "still cached after require_iss"
        );
    }

    /// Once `iss` is required, an active answer from the server naming the
    /// issuer is taken (and cached), one naming none is refused.
    #[tokio::test]
    async fn with_iss_required_an_answer_from_the_server_must_name_the_issuer() {
        for (body, want_active) in [
            (r#"{"active": true, "iss": "https://issuer.test"}"#, true),
            (r#"{"active": true}"#, false),
        ] {
            let (endpoint, calls) =
                answering("200 OK\r\ncontent-type: application/json", body).await;
            let introspector = Arc::new(introspector(endpoint));
            introspector.require_iss();
            for _ in 0..2 {
                let answer = introspector
                    .introspect("token", digest("token"), None)
                    .await;
                if want_active {
                    assert!(answer.is_ok(), "{body}: {:?}", answer.map(|_| ()));
                } else {
                    assert!(
                        matches!(
                            answer,
                            Err(GatewayError::InvalidToken(TokenError::Inactive))
                        ),
                        "{body}: {:?}",
                        answer.map(|_| ())
                    );
                }
            }
            let want_calls = if want_active { 1 } else { 2 };
            assert_eq!(calls.load(Ordering::SeqCst), want_calls, "{body}");
        }
    }

    /// A hold-back lasts its wait from now (none for a wait of 0), and a
    /// shorter one does not cut short a longer one already there.
    #[test]
    fn a_hold_back_lasts_its_wait_and_a_longer_one_stays() {
        let limit = frozen_limit();
        assert!(!limit.is_held_back(), "held back before any wait");
        limit.hold_back(Duration::ZERO);
        assert!(!limit.is_held_back(), "held back by a wait of 0");
        limit.hold_back(Duration::from_secs(5));
        assert!(limit.is_held_back());
        assert_eq!(limit.held_back_until.load(Ordering::SeqCst), 5000);
        limit.hold_back(Duration::from_secs(1));
        assert_eq!(limit.held_back_until.load(Ordering::SeqCst), 5000);

        // A hold that ended (50 s after an origin 100 s ago) holds nothing.
        let ended = CallLimit {
            origin: Instant::now()
                .checked_sub(Duration::from_secs(100))
                .unwrap(),
            ..CallLimit::new()
        };
        ended.held_back_until.store(50_000, Ordering::SeqCst);
        assert!(!ended.is_held_back(), "held back past the wait");
    }

    /// Five calls in a row without an answer hold calls back for a second,
    /// each further one doubles it up to five; an answer starts the count
    /// again.
    #[test]
    fn failures_in_a_row_hold_back_doubling_up_to_the_longest() {
        let limit = frozen_limit();
        for _ in 0..4 {
            limit.count_call(false);
        }
        assert!(!limit.is_held_back(), "held back after four failures");
        for want_ms in [1000, 2000, 4000, 5000, 5000] {
            limit.count_call(false);
            assert!(limit.is_held_back());
            assert_eq!(limit.held_back_until.load(Ordering::SeqCst), want_ms);
        }
        for _ in 0..100 {
            limit.count_call(false);
        }
        assert_eq!(limit.held_back_until.load(Ordering::SeqCst), 5000);

        let limit = frozen_limit();
        for _ in 0..4 {
            limit.count_call(false);
        }
        limit.count_call(true);
        for _ in 0..4 {
            limit.count_call(false);
        }
        assert!(
            !limit.is_held_back(),
            "an answer did not start the count again"
        );
    }

    /// How a call's outcome counts for the hold-back: a `Retry-After` (on a
    /// 429) holds calls back at once; a 5xx or no connection is a failure,
    /// five in a row hold calls back; a 4xx is an answer.
    #[tokio::test]
    async fn what_a_failed_call_counts_for_the_hold_back() {
        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
            drop(listener);
            endpoint.parse::<Uri>().unwrap()
        };
        let cases = [
            (
                answering("429 Too Many Requests\r\nretry-after: 5", "")
                    .await
                    .0,
                1,
                true,
            ),
            (answering("500 Internal Server Error", "").await.0, 5, true),
            (answering("500 Internal Server Error", "").await.0, 4, false),
            (refused, 5, true),
            (answering("400 Bad Request", "").await.0, 5, false),
        ];
        for (endpoint, calls, want_held_back) in cases {
            let introspector = Arc::new(introspector(endpoint.clone()));
            for n in 0..calls {
                let token = format!("token-{n}");
                let answer = introspector.introspect(&token, digest(&token), None).await;
                assert!(
                    matches!(answer, Err(GatewayError::IntrospectionUnavailable)),
                    "{endpoint}: {:?}",
                    answer.map(|_| ())
                );
            }
            assert_eq!(
                introspector.limit.load().is_held_back(),
                want_held_back,
                "{endpoint} after {calls} calls"
            );
        }
    }

    /// Each call is counted by its result; a call some request waited for
    /// is not `abandoned`, one every request left is.
    #[tokio::test]
    async fn calls_are_counted_by_result_and_abandoned_only_when_left() {
        let (endpoint, _) = answering_inactive().await;
        let introspector = Arc::new(introspector(endpoint));
        let count = |result: &str| {
            introspector
                .metrics
                .introspection_requests
                .with_label_values(&["test", result])
                .get()
        };
        let answer = introspector
            .introspect("counted", digest("counted"), None)
            .await;
        assert!(answer.is_err());
        wait_for_calls_to_end(&introspector).await;
        assert_eq!(count("inactive"), 1);
        assert_eq!(introspector.abandoned.get(), 0, "a request waited for it");

        let left = introspector
            .start_call("left", digest("left"), None)
            .await
            .unwrap();
        drop(left);
        wait_for_calls_to_end(&introspector).await;
        assert_eq!(count("inactive"), 2);
        assert_eq!(introspector.abandoned.get(), 1, "no request waited for it");

        introspector
            .limit
            .load()
            .hold_back(Duration::from_secs(3600));
        let held = introspector.introspect("held", digest("held"), None).await;
        assert!(matches!(held, Err(GatewayError::IntrospectionUnavailable)));
        assert_eq!(count("held_back"), 1);
    }

    /// An answer of up to 64 KiB is read; a longer one fails closed.
    #[tokio::test]
    async fn an_answer_of_up_to_64_kib_is_read() {
        for (padding, want_read) in [(60 * 1024, true), (MAX_RESPONSE_BYTES, false)] {
            let body = format!(
                r#"{{"active": true, "padding": "{}"}}"#,
                "x".repeat(padding)
            );
            let (endpoint, _) = answering(
                "200 OK\r\ncontent-type: application/json",
                Box::leak(body.into_boxed_str()),
            )
            .await;
            let introspector = Arc::new(introspector(endpoint));
            let answer = introspector.introspect("long", digest("long"), None).await;
            if want_read {
                assert!(answer.is_ok(), "{padding}: {:?}", answer.map(|_| ()));
            } else {
                assert!(
                    matches!(answer, Err(GatewayError::IntrospectionUnavailable)),
                    "{padding}: {:?}",
                    answer.map(|_| ())
                );
            }
        }
    }

    /// Without a configured endpoint, the introspector is not ready until
    /// discovery sets one; a configured endpoint wins over a discovered one.
    #[test]
    fn a_discovered_endpoint_is_used_unless_one_is_configured() {
        let configured = Uri::from_static("http://127.0.0.1:9/introspect");
        let discovered = Uri::from_static("http://127.0.0.1:9/discovered");
        let mut pending = introspector(configured.clone());
        pending.settings.endpoint = None;
        pending.endpoint = ArcSwapOption::empty();
        assert_eq!(pending.configured_endpoint(), None);
        assert!(!pending.is_ready());
        assert_eq!(pending.endpoint(), None);
        pending.set_discovered_endpoint(discovered.clone());
        assert!(pending.is_ready());
        assert_eq!(pending.endpoint(), Some(discovered.clone()));

        let fixed = introspector(configured.clone());
        assert_eq!(fixed.configured_endpoint(), Some(&configured));
        assert!(fixed.is_ready());
        fixed.set_discovered_endpoint(discovered);
        assert_eq!(fixed.endpoint(), Some(configured));
    }

    /// After a reload, the new introspector shares the old one's call
    /// limit: a hold-back the old one got holds the new one back too.
    #[tokio::test]
    async fn a_reloaded_introspector_shares_the_hold_back_of_the_one_it_replaces() {
        let (endpoint, calls) = answering_inactive().await;
        let old = introspector(endpoint.clone());
        old.limit.load().hold_back(Duration::from_secs(3600));
        let new = Arc::new(introspector(endpoint));
        new.share_calls_of(&old);
        let answer = new.introspect("token", digest("token"), None).await;
        assert!(
            matches!(answer, Err(GatewayError::IntrospectionUnavailable)),
            "{:?}",
            answer.map(|_| ())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a call while held back");
    }

    /// With `client_secret_basic`, the client id and secret are each
    /// form-urlencoded before Basic encoding (RFC 6749 2.3.1).
    #[test]
    fn basic_client_credentials_are_form_encoded() {
        let facts = facts();
        let settings = Introspection {
            auth: ClientAuth::Basic,
            client_id: "id:1".to_owned(),
            client_secret: Secret::new("a b&c".to_owned()),
            ..introspector(Uri::from_static("http://127.0.0.1:9/introspect")).settings
        };
        let introspector = Introspector::new(
            facts,
            settings,
            16,
            Arc::from(Vec::new()),
            Arc::new(Metrics::new().unwrap()),
        )
        .unwrap();
        let want = format!("Basic {}", STANDARD.encode("id%3A1:a+b%26c"));
        assert_eq!(
            introspector
                .authorization
                .as_ref()
                .map(HeaderValue::as_bytes),
            Some(want.as_bytes())
        );
    }
}
