//! The built-in authorization server, so a new user gets real tokens without
//! any other system, and a team migrating off a gateway with a built-in token
//! endpoint (Apigee, Kong) keeps its clients working.
//!
//! Endpoints (paths configurable, served on the proxy listener before routes):
//! token (`token`), JWKS, RFC 8414 metadata, RFC 7662 introspection and RFC
//! 7009 revocation (`endpoints`), with CORS for browser apps (`cors`). Access
//! tokens are RFC 9068 JWTs verified by the gateway in-process with the same
//! keys.

pub mod authorize;
pub mod clients;
pub mod cors;
pub mod endpoints;
pub mod keys;
pub mod store;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, ORIGIN, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::admin::metrics::Metrics;
use crate::auth::jwks::KeySet;
use crate::auth::jwt::{self, now_unix};
use crate::config::{AuthorizationServerSettings, User};
use crate::proxy::Body;
use clients::ClientAuthenticator;
use cors::{Cors, Exposure};
use store::Store;

/// Largest form body accepted by the endpoints.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Longest wait for a whole form body: a client that stops sending one
/// would otherwise hold its connection, and a connection slot, forever
/// (the proxy path has `body_idle_timeout`; these forms are small).
pub const FORM_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long past `exp` (and before `nbf`) the gateway still accepts this
/// server's access tokens; a revocation lasts that much longer than the token.
pub const LEEWAY_SECS: u64 = 30;

/// `Retry-After` of the answers to too many failed client authentications
/// or sign-ins: the failure window's length, after which the count starts
/// again.
pub(crate) const FAILURES_RETRY_AFTER: &str = "60";

/// Whether claims are within their lifetime at `now`: before `exp` plus
/// `exp_leeway` (at most [`LEEWAY_SECS`]), and not before `nbf` or `iat`
/// less [`LEEWAY_SECS`].
fn unexpired(claims: &serde_json::Map<String, Value>, now: u64, exp_leeway: u64) -> bool {
    jwt::check_lifetime(claims, now, LEEWAY_SECS).is_ok_and(|lifetime| {
        now < lifetime
            .expires_at
            .saturating_add(exp_leeway.min(LEEWAY_SECS))
    })
}

/// Until when (exclusive, as the store keeps it) a revocation of a token
/// expiring at `exp` must hold: the gateway accepts it up to and including
/// `exp + LEEWAY_SECS`.
pub(crate) fn revoked_until(exp: u64) -> u64 {
    exp.saturating_add(LEEWAY_SECS).saturating_add(1)
}

/// The `error` code of an answer the built-in server refused with, kept on
/// the answer (an extension, never sent) so that the access log says why
/// as it does for the gateway's own refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// An RFC 6749 5.2 error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `error` code.
    pub code: &'static str,
    /// `error_description`.
    pub description: String,
    /// Add `WWW-Authenticate: Basic` (a 401 for client authentication).
    pub basic_challenge: bool,
    /// The methods an endpoint takes, sent as `Allow` with a 405 (RFC 9110
    /// 15.5.6).
    pub allow: Option<&'static str>,
    /// Seconds for `Retry-After`: set for a refusal that ends with time (a
    /// failure limit, a busy or failed store).
    pub retry_after: Option<&'static str>,
}

/// `description` held to RFC 6749 5.2's characters for `error_description`
/// (printable ASCII but `"` and `\`): a description that repeats a request's
/// value (a scope, a parameter name) gets `?` for any other.
pub(crate) fn error_description(description: String) -> String {
    match crate::error::description_chars(&description) {
        std::borrow::Cow::Borrowed(_) => description,
        std::borrow::Cow::Owned(held) => held,
    }
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: error_description(description.into()),
            basic_challenge: false,
            allow: None,
            retry_after: None,
        }
    }

    /// `invalid_request` (400).
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// `invalid_client`. With `challenge` (the client used Basic, or sent
    /// no credentials at all) a 401 with a Basic challenge, which RFC 9110
    /// 11.6.1 requires of every 401; otherwise (credentials in the form) a
    /// 400, RFC 6749 5.2's default, so that no browser prompts for a
    /// password on a single-page app's failed token request.
    pub fn invalid_client(challenge: bool, description: impl Into<String>) -> Self {
        let status = if challenge {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            basic_challenge: challenge,
            ..Self::new(status, "invalid_client", description)
        }
    }

    /// The same error, but an `invalid_client` is a 401 with a challenge
    /// whatever the credentials were sent in (RFC 7662 2.3), a failure
    /// limit's too (keeping its `Retry-After`).
    pub fn challenged(self) -> Self {
        if self.code == "invalid_client" && self.status != StatusCode::SERVICE_UNAVAILABLE {
            Self {
                status: StatusCode::UNAUTHORIZED,
                basic_challenge: true,
                ..self
            }
        } else {
            self
        }
    }

    /// A malformed Basic header.
    pub fn invalid_client_basic() -> Self {
        Self::invalid_client(true, "malformed Basic credentials")
    }

    /// `invalid_grant` (400).
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// `invalid_scope` (400).
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// `unauthorized_client` (400).
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }

    /// `unsupported_grant_type` (400).
    pub fn unsupported_grant_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "this grant type is not supported",
        )
    }

    /// Too many failed client authentications: 429 with `Retry-After`, or,
    /// when the client authenticated with HTTP Basic (`basic`), the 401
    /// with the Basic challenge that RFC 6749 5.2 requires of every
    /// `invalid_client` to such a client, with `Retry-After` as well.
    pub fn too_many_attempts(basic: bool) -> Self {
        let status = if basic {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        Self {
            basic_challenge: basic,
            retry_after: Some(FAILURES_RETRY_AFTER),
            ..Self::new(
                status,
                "invalid_client",
                "too many failed attempts; retry later",
            )
        }
    }

    /// Too many failed sign-ins for one user (429 with `Retry-After`).
    pub fn too_many_user_attempts() -> Self {
        Self {
            retry_after: Some(FAILURES_RETRY_AFTER),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_grant",
                "too many failed sign-ins for this user; retry later",
            )
        }
    }

    /// Too many password checks in flight (503 with `Retry-After: 1`: a
    /// burst passes within moments).
    pub fn busy() -> Self {
        Self {
            retry_after: Some("1"),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many sign-in checks at once; retry later",
            )
        }
    }

    /// The state store failed (503 with `Retry-After: 5`, as the gateway's
    /// own store 503): a refresh whose rotation landed behind the 503 is
    /// retried soon enough to fall within a `refresh_token_reuse_grace`
    /// (at most 60 s), where one that waited 60 s always missed it.
    pub fn unavailable() -> Self {
        Self {
            retry_after: Some("5"),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the authorization server's state store is unavailable",
            )
        }
    }

    /// `server_error` (500).
    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            description,
        )
    }

    /// Renders the JSON error with `Cache-Control: no-store`.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.code, "error_description": self.description });
        let mut response = json_response(self.status, body.to_string());
        response.extensions_mut().insert(Refused(self.code));
        if self.basic_challenge {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"scopegate\""),
            );
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

/// A JSON response that must not be cached (RFC 6749 5.1).
pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The latest `exp` of the access tokens, and end of the refresh tokens,
/// this process has minted, whatever config was in force: a reload that
/// shortens a lifetime leaves the tokens minted before it their own, and a
/// grant revoked since must stay revoked past them.
#[derive(Debug, Default)]
struct MintedEnds {
    access: std::sync::atomic::AtomicU64,
    refresh: std::sync::atomic::AtomicU64,
}

impl MintedEnds {
    /// An access token expiring at `exp` is about to be minted.
    fn note_access(&self, exp: u64) {
        self.access
            .fetch_max(exp, std::sync::atomic::Ordering::Relaxed);
    }

    /// A refresh token ending at `expires_at` is about to be stored.
    fn note_refresh(&self, expires_at: u64) {
        self.refresh
            .fetch_max(expires_at, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The running authorization server.
pub struct AuthorizationServer {
    settings: AuthorizationServerSettings,
    store: Store,
    clients: ClientAuthenticator,
    cors: Cors,
    users: HashMap<String, User>,
    /// Its own public keys and their algorithms, parsed once: to check the
    /// access tokens and sessions it signed.
    own_keys: Option<KeySet>,
    own_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Store failures of the proxy's revocation checks: one line per
    /// interval, with the cause, however many requests meet them.
    revocation_check_log: crate::admin::throttle::LogThrottle,
    /// Store failures of its own endpoints, likewise (anyone can send
    /// requests that reach the store).
    store_failure_log: crate::admin::throttle::LogThrottle,
    /// The public documents (its JWKS and RFC 8414 metadata), written once:
    /// anyone may ask for them, as often as they like.
    jwks_body: Bytes,
    metadata_body: Bytes,
    /// Places for RSA signatures at once (kept across reloads).
    signing_places: Arc<tokio::sync::Semaphore>,
    /// The latest ends of the tokens minted so far (kept across reloads).
    minted_ends: Arc<MintedEnds>,
    metrics: Arc<Metrics>,
}

impl AuthorizationServer {
    /// Builds the server on an opened store, counting into `metrics`;
    /// `previous` (the server before a reload) passes on the client secrets
    /// it checked.
    pub fn new(
        settings: AuthorizationServerSettings,
        store: Store,
        metrics: Arc<Metrics>,
        previous: Option<&AuthorizationServer>,
    ) -> Self {
        let clients = ClientAuthenticator::new(
            &settings.clients,
            &settings.users,
            previous.map(|p| &p.clients),
        );
        let cors = Cors::new(&settings.clients);
        let users = settings
            .users
            .iter()
            .map(|u| (u.username.clone(), u.clone()))
            .collect();
        let jwks_body = Bytes::from(keys::jwks_document(&settings.keys));
        let metadata_body = Bytes::from(endpoints::metadata_document(&settings));
        let own_keys = KeySet::from_json(&jwks_body).ok();
        let own_algorithms = settings.keys.iter().map(|k| k.algorithm()).collect();
        // At 0 before the first event: a replay is one event an alert
        // must see.
        for kind in ["code", "refresh_token"] {
            metrics.issuer_replays.with_label_values(&[kind]);
        }
        for reason in store::StoreError::REASONS {
            metrics
                .issuer_store_errors
                .with_label_values(&[store.kind(), reason]);
        }
        Self {
            jwks_body,
            metadata_body,
            signing_places: previous.map_or_else(keys::SigningKey::signing_places, |p| {
                Arc::clone(&p.signing_places)
            }),
            minted_ends: previous.map_or_else(Arc::default, |p| Arc::clone(&p.minted_ends)),
            settings,
            store,
            clients,
            cors,
            users,
            own_keys,
            own_algorithms,
            revocation_check_log: crate::admin::throttle::LogThrottle::default(),
            store_failure_log: crate::admin::throttle::LogThrottle::default(),
            metrics,
        }
    }

    /// The claims of a JWT this server signed as `typ`, within its lifetime:
    /// `exp` stretched by `exp_leeway` seconds, `nbf` and `iat` by
    /// [`LEEWAY_SECS`] whatever it is, since a replica whose clock runs a
    /// little ahead may have minted it. Access tokens and sessions share
    /// keys, issuer and subjects; the type (RFC 8725 3.11) keeps one from
    /// passing for the other.
    fn verify_own(
        &self,
        token: &str,
        typ: &str,
        exp_leeway: u64,
    ) -> Option<serde_json::Map<String, Value>> {
        let parsed = jwt::parse_compact(token).ok()?;
        if parsed.typ.as_deref() != Some(typ) {
            return None;
        }
        let alg = jwt::allowed_algorithm(&parsed.alg, &self.own_algorithms)?;
        let verified = self
            .own_keys
            .as_ref()?
            .candidates(parsed.kid.as_deref(), alg)
            .any(|k| k.verify(parsed.signing_input, parsed.signature, alg));
        let valid = verified
            && parsed.claims.get("iss").and_then(Value::as_str)
                == Some(self.settings.issuer.as_str())
            && unexpired(&parsed.claims, now_unix(), exp_leeway);
        valid.then_some(parsed.claims)
    }

    /// Until when a grant revoked now must stay revoked: past every token
    /// it has minted, and every token a rotation racing the revocation (one
    /// that found the grant unrevoked just before) may still mint, and no
    /// longer. Its access tokens minted so far die by now plus
    /// `access_token_ttl`, or by the latest end of those minted before a
    /// reload shortened it (here, or, as `grant`'s record keeps it, before
    /// a restart or on another replica); those of a racing rotation, by now
    /// plus `access_token_ttl`. Its refresh tokens (the stored one of
    /// `grant`, when known: a code's replay knows only the grant's id) die
    /// by now plus `refresh_token_ttl`, or likewise the latest end minted,
    /// and never past the grant's end: once they are dead, nothing can mint
    /// more. The gateway accepts access tokens [`LEEWAY_SECS`] past `exp`.
    fn grant_revoked_until(&self, grant: Option<&store::RefreshRecord>) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_unix();
        let after = |ttl: std::time::Duration| now.saturating_add(ttl.as_secs());
        let access_ends =
            after(self.settings.access_token_ttl).max(self.minted_ends.access.load(Relaxed));
        let refresh_ends =
            after(self.settings.refresh_token_ttl).max(self.minted_ends.refresh.load(Relaxed));
        let (access_ends, refresh_ends) = match grant {
            Some(record) => (
                access_ends.max(record.access_expires_at),
                refresh_ends
                    .max(record.expires_at)
                    .min(record.family_expires_at),
            ),
            None => (access_ends, refresh_ends),
        };
        revoked_until(access_ends.max(refresh_ends))
    }

    /// The state store (shared with the gateway's revocation checks).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &AuthorizationServerSettings {
        &self.settings
    }

    /// Whether `path` is one of its endpoints.
    pub fn owns(&self, path: &str) -> bool {
        let p = &self.settings.paths;
        path == p.token
            || path == p.authorize
            || path == p.jwks
            || path == p.metadata
            || path == p.introspection
            || path == p.revocation
    }

    /// Whether browsers send the sign-in cookies (whose `Path` is the
    /// authorize endpoint's) with a request for `path` that is not that
    /// endpoint (RFC 6265 5.1.4): such a request must not reach an upstream,
    /// which would read the session (and its CSRF value) from `Cookie`.
    pub fn below_sign_in(&self, path: &str) -> bool {
        strictly_below(&self.settings.paths.authorize, path)
    }

    /// Answers a request for one of its endpoints.
    pub async fn handle(&self, request: Request<Incoming>, path: &str) -> Response<Body> {
        let p = &self.settings.paths;
        let method = request.method().clone();
        if path == p.authorize {
            return self.authorize(request).await;
        }
        let (exposure, (methods, allow)) = if path == p.jwks || path == p.metadata {
            (Exposure::Public, READ_ONLY)
        } else if path == p.token || path == p.revocation {
            (Exposure::RegisteredOrigins, POST_ONLY)
        } else {
            (Exposure::None, POST_ONLY)
        };
        if let Some(answer) =
            self.cors
                .preflight(exposure, methods, allow, &method, request.headers())
        {
            return answer;
        }
        let origin = request.headers().get(ORIGIN).cloned();
        let mut response = self.endpoint(request, path, &method).await;
        self.cors.expose(exposure, origin.as_ref(), &mut response);
        response
    }

    /// The answer of the endpoint at `path` (not the authorization one).
    async fn endpoint(
        &self,
        request: Request<Incoming>,
        path: &str,
        method: &Method,
    ) -> Response<Body> {
        let p = &self.settings.paths;
        let result = if path == p.jwks {
            only(method, READ_ONLY).map(|()| self.jwks())
        } else if path == p.metadata {
            only(method, READ_ONLY).map(|()| self.metadata())
        } else if path == p.token {
            match only(method, POST_ONLY) {
                Ok(()) => self.token(request).await,
                Err(e) => Err(e),
            }
        } else if path == p.introspection {
            match only(method, POST_ONLY) {
                Ok(()) => self.introspect(request).await,
                Err(e) => Err(e),
            }
        } else if path == p.revocation {
            match only(method, POST_ONLY) {
                Ok(()) => self.revoke(request).await,
                Err(e) => Err(e),
            }
        } else {
            Err(OAuthError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            ))
        };
        result.unwrap_or_else(OAuthError::into_response)
    }
}

/// Whether a cookie with `Path=base` goes with a request for `path` (RFC
/// 6265 5.1.4), `base` itself left out.
pub fn strictly_below(base: &str, path: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| !rest.is_empty() && (base.ends_with('/') || rest.starts_with('/')))
}

/// The methods of an endpoint and their `Allow` value.
type Methods = (&'static [Method], &'static str);
const READ_ONLY: Methods = (&[Method::GET, Method::HEAD], "GET, HEAD");
const POST_ONLY: Methods = (&[Method::POST], "POST");

fn only(method: &Method, (allowed, allow): Methods) -> Result<(), OAuthError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(OAuthError {
            allow: Some(allow),
            ..OAuthError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                format!("use {allow}"),
            )
        })
    }
}

/// A decoded form request: body parameters, query parameters and headers.
pub struct FormRequest {
    /// Body parameters (duplicates refused, RFC 6749 3.1).
    pub form: HashMap<String, String>,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Request headers.
    pub headers: http::HeaderMap,
}

impl FormRequest {
    /// Whether the query names client credentials (`client_id` or
    /// `client_secret`), which never go there (RFC 6749 2.3.1).
    pub fn query_has_credentials(&self) -> bool {
        self.query.contains_key("client_secret") || self.query.contains_key("client_id")
    }
}

/// Reads an `application/x-www-form-urlencoded` body (bounded) and the query.
pub async fn read_form(request: Request<Incoming>) -> Result<FormRequest, OAuthError> {
    let (mut parts, body) = request.into_parts();
    let query = match parts.uri.query() {
        Some(q) => parse_params(q.as_bytes())?,
        None => HashMap::new(),
    };
    let bytes = read_form_body(&mut parts, body).await?;
    let form = if bytes.is_empty() {
        HashMap::new()
    } else {
        parse_params(&bytes)?
    };
    Ok(FormRequest {
        form,
        query,
        headers: parts.headers,
    })
}

/// The parameters of a form body as sent, repeats and empty values kept
/// (bounded as [`read_form`] reads it): for the authorization endpoint,
/// which tells the client of a repeated parameter at its redirect URI.
pub(crate) async fn read_form_pairs(
    request: Request<Incoming>,
) -> Result<Vec<(String, String)>, OAuthError> {
    let (mut parts, body) = request.into_parts();
    let bytes = read_form_body(&mut parts, body).await?;
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

/// The body of a form request, within [`MAX_FORM_BYTES`] and
/// [`FORM_READ_TIMEOUT`]; a body of another content type is refused.
async fn read_form_body(
    parts: &mut http::request::Parts,
    body: Incoming,
) -> Result<Bytes, OAuthError> {
    let read = parts.extensions.remove::<FormRead>();
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| v == "application/x-www-form-urlencoded");
    let bytes = tokio::time::timeout(
        FORM_READ_TIMEOUT,
        Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        OAuthError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            "the request body did not arrive in time",
        )
    })?
    .map_err(|_| OAuthError::invalid_request("the request body is too large or unreadable"))?
    .to_bytes();
    if let Some(read) = read {
        read.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if !bytes.is_empty() && !is_form {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    Ok(bytes)
}

/// Set by [`read_form`] once it has read the request's body to its end:
/// the server then answers an error without closing the connection, as
/// nothing of the request is left on it.
#[derive(Clone, Debug, Default)]
pub struct FormRead(pub Arc<std::sync::atomic::AtomicBool>);

/// Form or query parameters; one sent without a value counts as not sent
/// (RFC 6749 3.1, 3.2), and a name sent twice is refused.
fn parse_params(bytes: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(bytes).filter(|(_, v)| !v.is_empty()) {
        if out.insert(k.clone().into_owned(), v.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{k}` is repeated"
            )));
        }
    }
    Ok(out)
}

/// 32 random bytes, base64url: refresh tokens, codes, ids. Fails closed:
/// without the system RNG there is no value that is safe to hand out
/// (RFC 6749 10.10), so the request gets `server_error`.
pub fn random_token() -> Result<String, OAuthError> {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            tracing::error!("the system random number generator failed");
            OAuthError::server_error("no randomness available")
        })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Shared handle used by the pipeline.
pub type SharedAuthorizationServer = Arc<AuthorizationServer>;
