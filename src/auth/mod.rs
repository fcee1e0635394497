//! Authentication and authorization: who sent the request, and may they pass.
//!
//! [`Authenticator::authenticate`] turns an `Authorization` header into a
//! [`VerifiedToken`] (from the cache, or by verifying the JWT against its
//! issuer's keys); [`scope::authorize`] checks a route's scopes and mints the
//! [`Permit`] that forwarding requires.

pub mod bearer;
pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod scope;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::admin::metrics::Metrics;
use crate::config::{Issuer, KeySource, ScopeClaim};
use crate::error::GatewayError;
use cache::TokenCache;
use jwks::{IssuerKeys, KeySet};
use jwt::TokenError;
pub use scope::{authorize, Permit, Scopes};

/// Keys tried at most for a token without `kid`.
const MAX_KID_LESS_CANDIDATES: usize = 8;

/// What a verified token says, kept in the cache.
#[derive(Debug)]
pub struct VerifiedToken {
    /// Index of the issuer that signed it.
    pub issuer: usize,
    /// Granted scopes.
    pub scopes: Scopes,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// When the cache must forget it (the token's expiry).
    pub cache_until: Instant,
    /// Identity header values by claim slot (see `Config::identity_claims`).
    pub identity_values: Box<[Option<HeaderValue>]>,
}

struct IssuerRuntime {
    name: Arc<str>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway_secs: u64,
    require_typ: Option<String>,
    scope_claim: ScopeClaim,
    keys: Arc<IssuerKeys>,
}

/// Verifies bearer tokens for every configured issuer.
pub struct Authenticator {
    issuers: Vec<IssuerRuntime>,
    by_iss: HashMap<String, usize>,
    cache: TokenCache,
    identity_claims: Vec<String>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// Sets up key stores (remote ones start empty) and the token cache.
    pub fn new(
        issuers: Vec<Issuer>,
        identity_claims: Vec<String>,
        cache_max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut runtime = Vec::with_capacity(issuers.len());
        let mut by_iss = HashMap::new();
        for (index, issuer) in issuers.into_iter().enumerate() {
            let keys = match issuer.keys {
                KeySource::Static(set) => IssuerKeys::fixed(Arc::clone(&issuer.name), set),
                KeySource::Remote(uri) => IssuerKeys::remote(
                    Arc::clone(&issuer.name),
                    uri,
                    issuer.ca_file.as_deref(),
                    issuer.jwks_timeout,
                    issuer.jwks_refetch_cooldown,
                    issuer.jwks_refresh_interval,
                )
                .map_err(|e| format!("issuer {}: {e}", issuer.name))?,
            };
            by_iss.insert(issuer.issuer.clone(), index);
            runtime.push(IssuerRuntime {
                name: issuer.name,
                audiences: issuer.audiences,
                algorithms: issuer.algorithms,
                leeway_secs: issuer.leeway_secs,
                require_typ: issuer.require_typ,
                scope_claim: issuer.scope_claim,
                keys: Arc::new(keys),
            });
        }
        Ok(Self {
            issuers: runtime,
            by_iss,
            cache: TokenCache::new(cache_max_entries),
            identity_claims,
            metrics,
        })
    }

    /// Starts one key refresher per remote issuer; they stop when `shutdown` changes.
    pub fn spawn_refreshers(&self, shutdown: &tokio::sync::watch::Receiver<bool>) {
        for issuer in &self.issuers {
            if issuer.keys.is_remote() {
                tokio::spawn(jwks::run_refresher(
                    Arc::clone(&issuer.keys),
                    Arc::clone(&self.metrics),
                    shutdown.clone(),
                ));
            }
        }
    }

    /// True when every issuer has keys.
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.is_loaded())
    }

    /// Name of an issuer by index (metrics).
    pub fn issuer_name(&self, index: usize) -> &str {
        self.issuers.get(index).map_or("-", |i| &i.name)
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
    ) -> Result<Arc<VerifiedToken>, GatewayError> {
        let token = bearer::extract(headers)?;
        let key = cache::digest(token);
        let verified = match self.cache.get(&key).await {
            Some(hit) => {
                self.metrics.token_cache_hits.inc();
                hit
            }
            None => {
                self.metrics.token_cache_misses.inc();
                let fresh = Arc::new(self.verify(token).await?);
                self.cache.insert(key, Arc::clone(&fresh)).await;
                fresh
            }
        };
        if let Some(accepted) = accepted {
            if !accepted.contains(&verified.issuer) {
                return Err(GatewayError::InvalidToken(TokenError::IssuerNotAccepted));
            }
        }
        Ok(verified)
    }

    /// Verifies a compact JWS from scratch (no cache).
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, GatewayError> {
        let jwt = jwt::parse_compact(token).map_err(GatewayError::InvalidToken)?;
        let invalid = GatewayError::InvalidToken;
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
        let alg = jwt::allowed_algorithm(&jwt.alg, &issuer.algorithms)
            .ok_or(invalid(TokenError::AlgorithmNotAllowed))?;
        if let Some(required) = &issuer.require_typ {
            match &jwt.typ {
                Some(typ) if crate::config::validate::normalize_typ(typ) == *required => {}
                _ => return Err(invalid(TokenError::WrongType)),
            }
        }

        let keys = issuer.keys.current().ok_or(GatewayError::KeysUnavailable)?;
        let mut outcome = check_signature(&keys, &jwt, alg);
        if outcome == Err(TokenError::UnknownKey)
            && issuer.keys.refetch_for_unknown_kid(&self.metrics).await
        {
            let keys = issuer.keys.current().ok_or(GatewayError::KeysUnavailable)?;
            outcome = check_signature(&keys, &jwt, alg);
        }
        outcome.map_err(invalid)?;

        let now = jwt::now_unix();
        let lifetime =
            jwt::check_lifetime(&jwt.claims, now, issuer.leeway_secs).map_err(invalid)?;
        jwt::check_audience(&jwt.claims, &issuer.audiences).map_err(invalid)?;
        let scopes = read_scopes(&jwt.claims, issuer.scope_claim).map_err(invalid)?;
        let identity_values = self
            .identity_claims
            .iter()
            .map(|claim| identity_value(&jwt.claims, claim, &scopes))
            .collect();
        let remaining = Duration::from_secs(lifetime.expires_at.saturating_sub(now));
        Ok(VerifiedToken {
            issuer: index,
            scopes,
            expires_at: lifetime.expires_at,
            cache_until: Instant::now() + remaining,
            identity_values,
        })
    }
}

fn check_signature(
    keys: &KeySet,
    jwt: &jwt::UnverifiedJwt<'_>,
    alg: Algorithm,
) -> Result<(), TokenError> {
    let mut tried = 0;
    for key in keys
        .candidates(jwt.kid.as_deref(), alg)
        .take(MAX_KID_LESS_CANDIDATES)
    {
        tried += 1;
        if key.verify(jwt.signing_input, jwt.signature, alg) {
            return Ok(());
        }
    }
    match (tried, jwt.kid.as_deref()) {
        (0, Some(kid)) if !keys.has_kid(kid) => Err(TokenError::UnknownKey),
        (0, None) => Err(TokenError::UnknownKey),
        // A key with this kid exists but is of another type: alg confusion.
        (0, Some(_)) => Err(TokenError::AlgorithmNotAllowed),
        _ => Err(TokenError::BadSignature),
    }
}

/// Reads granted scopes: `scope` must be a string; `scp` a string or an array
/// of strings. Absent means no scopes.
fn read_scopes(claims: &Map<String, Value>, claim: ScopeClaim) -> Result<Scopes, TokenError> {
    let name = match claim {
        ScopeClaim::Scope => "scope",
        ScopeClaim::Scp => "scp",
    };
    match (claims.get(name), claim) {
        (None, _) => Ok(Scopes::default()),
        (Some(Value::String(s)), _) => Ok(Scopes::from_space_separated(s)),
        (Some(Value::Array(items)), ScopeClaim::Scp) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => list.push(s.as_str()),
                    _ => return Err(TokenError::WrongClaimType),
                }
            }
            Ok(Scopes::from_list(list))
        }
        (Some(_), _) => Err(TokenError::WrongClaimType),
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
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            parts?.join(" ")
        }
        Value::Null | Value::Object(_) => return None,
    };
    HeaderValue::from_str(&text).ok()
}
