//! Turns the raw schema into validated runtime types: parsed addresses, URLs,
//! algorithms, compiled routes and resolved references. Every error points at
//! the YAML node it is about.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use jsonwebtoken::Algorithm;
use serde_saphyr::{Location, Spanned};

use super::load::{ConfigError, ConfigWarning, NamedFiles};
use super::schema::{
    RawAuthorizationServer, RawConfig, RawForward, RawIntrospection, RawIssuer, RawResource,
    RawRoute, RawStore, RawStoreBackend, RawUpstream, SpannedPairs,
};
use crate::auth::jwks::KeySet;
use crate::auth::scope::{check_scope_token, ScopeRequirement};
use crate::issuer::keys::SigningKey;
use crate::issuer::store::{RedisTarget, StoreConfig};
use crate::proxy::headers::{
    dashed_spelling, RemovedHeaders, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use crate::proxy::request_id::X_REQUEST_ID;
use crate::routes::{RouteSpec, RouteTable};

/// The validated configuration the gateway runs on.
#[derive(Debug)]
pub struct Config {
    /// Where it was loaded from (for messages).
    pub source: String,
    /// Proxy listener settings.
    pub server: ServerSettings,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Issuers, referenced by index from routes and tokens.
    pub issuers: Vec<Issuer>,
    /// Upstreams, referenced by index from routes.
    pub upstreams: Vec<Upstream>,
    /// The compiled route table.
    pub routes: RouteTable<Route>,
    /// Verified tokens kept at most.
    pub cache_max_entries: u64,
    /// Every file the config names (keys, secrets, CA bundles, TLS): a
    /// reload follows their contents as well as the config's own text.
    pub referenced_files: Vec<PathBuf>,
    /// A digest of those files as validation read them
    /// ([`super::load::files_digest`]): a reload compares them with what is
    /// running, not with a later read that a rotation could have overtaken.
    pub files_digest: crate::auth::cache::TokenDigest,
    /// SHA-256 of the text it was loaded from (set by [`super::load_str`]):
    /// a reload compares the file with what is running, not with a second
    /// read that a ConfigMap update could have overtaken.
    pub text_digest: [u8; 32],
    /// Claim names referenced by any identity header, in slot order.
    pub identity_claims: Vec<String>,
    /// RFC 9728 protected resource metadata, if configured.
    pub resource: Option<ResourceMetadata>,
    /// The built-in authorization server, if configured.
    pub authorization_server: Option<AuthorizationServerSettings>,
    /// Peers whose `X-Forwarded-Proto` and `X-Forwarded-Host` are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The built-in authorization server after validation.
#[derive(Debug)]
pub struct AuthorizationServerSettings {
    /// Issuer identifier.
    pub issuer: String,
    /// Index of its entry in [`Config::issuers`].
    pub issuer_index: usize,
    /// Endpoint paths on the proxy listener.
    pub paths: AuthorizationServerPaths,
    /// Signing keys; the first signs.
    pub keys: Arc<Vec<SigningKey>>,
    /// The key was generated because none was configured: a reload keeps
    /// the running one, so that tokens it signed stay valid.
    pub ephemeral_key: bool,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_token_ttl: Duration,
    /// Longest life of a refresh family.
    pub refresh_family_max_age: Duration,
    /// How long a replaced refresh token may be used once more (0: never).
    pub refresh_token_reuse_grace: Duration,
    /// Response rendering.
    pub response_style: ResponseStyle,
    /// Where refresh families, codes and revocations live.
    pub store: StoreConfig,
    /// Registered clients.
    pub clients: Vec<Client>,
    /// Resource owners.
    pub users: Vec<User>,
}

/// Endpoint paths of the built-in authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationServerPaths {
    /// Token endpoint.
    pub token: String,
    /// Authorization endpoint.
    pub authorize: String,
    /// Introspection endpoint.
    pub introspection: String,
    /// Revocation endpoint.
    pub revocation: String,
    /// JWKS.
    pub jwks: String,
    /// RFC 8414 metadata.
    pub metadata: String,
}

impl AuthorizationServerPaths {
    fn all(&self) -> [&str; 6] {
        [
            &self.token,
            &self.authorize,
            &self.introspection,
            &self.revocation,
            &self.jwks,
            &self.metadata,
        ]
    }
}

/// How token responses are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStyle {
    /// RFC 6749 5.1 plus the seed fields.
    Standard,
    /// Apigee's shape: `BearerToken`, numbers as strings, issue time in ms.
    Apigee,
}

/// OAuth grant types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `client_credentials`.
    ClientCredentials,
    /// `refresh_token`.
    RefreshToken,
    /// `password` (resource owner credentials).
    Password,
    /// `authorization_code`.
    AuthorizationCode,
}

impl Grant {
    /// Parses a `grant_type` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_credentials" => Some(Self::ClientCredentials),
            "refresh_token" => Some(Self::RefreshToken),
            "password" => Some(Self::Password),
            "authorization_code" => Some(Self::AuthorizationCode),
            _ => None,
        }
    }

    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
            Self::Password => "password",
            Self::AuthorizationCode => "authorization_code",
        }
    }
}

/// A registered client.
#[derive(Clone)]
pub struct Client {
    /// Client id.
    pub client_id: String,
    /// Argon2 PHC string; `None` for a public client.
    pub secret_hash: Option<String>,
    /// Allowed grants.
    pub grants: Vec<Grant>,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// `aud` of its tokens.
    pub audience: String,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Display name.
    pub name: String,
}

/// A resource owner.
#[derive(Clone)]
pub struct User {
    /// Sign-in name.
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Scopes the user may grant (`None`: any).
    pub scopes: Option<Vec<String>>,
}

/// Shows the client without its secret's hash: an Argon2 hash in a log
/// line or panic message could be attacked offline.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field(
                "secret_hash",
                &self.secret_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("grants", &self.grants)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("redirect_uris", &self.redirect_uris)
            .field("name", &self.name)
            .finish()
    }
}

/// Shows the user without the password's hash, as [`Client`] does.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Config {
    /// Identifies everything the authenticator is built from (issuers, their
    /// secrets, identity claims, cache size): equal fingerprints mean a reload
    /// can keep the running key sets and caches.
    pub fn auth_fingerprint(&self) -> String {
        let mut out = format!("{:?}|{}", self.identity_claims, self.cache_max_entries);
        for issuer in &self.issuers {
            out.push('|');
            out.push_str(&issuer.fingerprint());
        }
        out
    }
}

impl Issuer {
    /// Identifies everything this issuer is configured with (its secret by
    /// digest): what verified tokens and their cache depend on.
    pub fn fingerprint(&self) -> String {
        let mut out = format!("{self:?}");
        if let Some(i) = &self.introspection {
            let digest = crate::auth::cache::digest(i.client_secret.expose());
            out.push_str(&format!("|{digest:?}"));
        }
        out
    }

    /// Identifies what this issuer's key set, discovery and introspection
    /// endpoint are built from: an issuer with an equal key fingerprint
    /// after a reload keeps its loaded keys and what discovery found, so a
    /// change to its audiences, algorithms, leeway, `require_typ` or scope
    /// claim (checked per token, with the new values) does not wait on its
    /// identity provider.
    pub fn key_fingerprint(&self) -> String {
        let mut out = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.name,
            self.issuer,
            self.keys,
            self.introspection,
            self.discovery,
            self.endpoints_need_https,
            self.jwks_refresh_interval,
            self.jwks_refetch_cooldown,
            self.jwks_timeout,
            self.ca_file,
        );
        if let Some(i) = &self.introspection {
            let digest = crate::auth::cache::digest(i.client_secret.expose());
            out.push_str(&format!("|{digest:?}"));
        }
        out
    }
}

/// RFC 9728 metadata, rendered once.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    /// Absolute URL of the metadata document (advertised in challenges).
    pub url: String,
    /// Path on the proxy listener that serves it.
    pub path: String,
    /// The JSON document.
    pub document: bytes::Bytes,
}

/// `server:` after validation.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Inbound TLS files, if any.
    pub tls: Option<TlsFiles>,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Drain time for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Unready-but-serving time after SIGTERM.
    pub shutdown_delay: Duration,
    /// Time allowed to send a request head.
    pub header_read_timeout: Duration,
    /// Concurrent client connections at most.
    pub max_connections: usize,
    /// Longest time a client connection stays open with nothing in flight.
    pub idle_timeout: Duration,
    /// Each request gets an `X-Request-Id`, sent upstream, put on the
    /// answer and logged.
    pub request_id: bool,
}

/// Certificate chain and key for inbound TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// A trusted token issuer.
#[derive(Debug)]
pub struct Issuer {
    /// Short name (metrics, logs, route references).
    pub name: Arc<str>,
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (empty: a token with an `aud` is refused, and
    /// `client_ids` is checked).
    pub audiences: Vec<String>,
    /// Accepted `client_id` values (empty: not checked).
    pub client_ids: Vec<String>,
    /// Where its keys come from.
    pub keys: KeySource,
    /// RFC 7662 introspection for opaque tokens.
    pub introspection: Option<Introspection>,
    /// Fetch RFC 8414 / OpenID metadata at start.
    pub discovery: bool,
    /// Whether the key and introspection endpoints (configured or
    /// discovered) must be `https` unless on this host: an `https` issuer
    /// that did not allow plain http.
    pub endpoints_need_https: bool,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowance in seconds.
    pub leeway_secs: u64,
    /// Required `typ` (lower case, without `application/`).
    pub require_typ: Option<String>,
    /// Which claim carries scopes.
    pub scope_claim: ScopeClaim,
    /// Default JWKS refresh interval.
    pub jwks_refresh_interval: Duration,
    /// Least time between unknown-`kid` refetches.
    pub jwks_refetch_cooldown: Duration,
    /// Timeout of one JWKS fetch.
    pub jwks_timeout: Duration,
    /// Extra CA bundle for the JWKS endpoint.
    pub ca_file: Option<CaFile>,
}

/// An extra CA bundle: its path, and a digest of what it held when the
/// config was validated, so that a reload notices a bundle rewritten in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    path: PathBuf,
    contents: [u8; 32],
}

impl std::ops::Deref for CaFile {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

/// Where an issuer's verification keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// Fetched and refreshed from a JWKS URL.
    Remote(Uri),
    /// Loaded once from a local JWKS file.
    Static(Arc<KeySet>),
    /// The `jwks_uri` of the issuer's discovered metadata.
    Discovered,
    /// This issuer's tokens are only introspected.
    None,
}

/// A secret read from a file or the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How scopegate authenticates to the introspection endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// `issuers[].introspection` after validation.
#[derive(Debug, Clone)]
pub struct Introspection {
    /// The endpoint; `None` until discovery supplies it.
    pub endpoint: Option<Uri>,
    /// scopegate's client id.
    pub client_id: String,
    /// scopegate's client secret.
    pub client_secret: Secret,
    /// Client authentication method.
    pub auth: ClientAuth,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Upper bound for caching an active answer.
    pub cache_ttl: Duration,
    /// Caching of inactive answers (zero: off).
    pub negative_cache_ttl: Duration,
    /// Extra CA bundle.
    pub ca_file: Option<CaFile>,
    /// An answer must name the token an access token (`token_type`,
    /// `token_use` or `typ`): some servers (Spring Authorization Server)
    /// answer for a refresh token with no kind at all.
    pub require_token_type: bool,
    /// An answer must carry an `aud` naming one of the issuer's
    /// `audiences`, for servers that always send it.
    pub require_audience: bool,
}

/// The claim that carries granted scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeClaim {
    /// `scope`: one space-separated string (RFC 8693, RFC 9068), or an
    /// array of single scopes (Spring Authorization Server's JWTs).
    Scope,
    /// `scp`: an array of strings, or a space-separated string.
    Scp,
    /// `roles`: the app roles of Microsoft Entra ID's app-only tokens,
    /// which carry no `scp`.
    Roles,
    /// `permissions`: Auth0's RBAC permissions.
    Permissions,
}

/// An upstream resource server.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name from the config (metrics label).
    pub name: Arc<str>,
    /// Scheme and authority requests are sent to.
    pub scheme: http::uri::Scheme,
    /// `host:port` of the upstream.
    pub authority: http::uri::Authority,
    /// Path prefix prepended to forwarded paths ("" for none).
    pub base_path: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time until the response head.
    pub request_timeout: Duration,
    /// Longest silence between parts of the response body.
    pub body_idle_timeout: Duration,
    /// Extra CA bundle for https.
    pub ca_file: Option<CaFile>,
    /// HTTP/2 only: h2c to a plain-http upstream, h2 by ALPN (and nothing
    /// else) to an https one.
    pub http2_only: bool,
    /// HTTP/1.1 only: no ALPN offered to an https upstream.
    pub http1_only: bool,
    /// Requests one HTTP/2 connection carries at once.
    pub http2_max_streams: usize,
    /// Idle pooled connections per host.
    pub pool_max_idle_per_host: usize,
    /// Longest idle time after which a pooled connection is still used.
    pub pool_idle_timeout: Duration,
    /// Requests in flight at once; more get 503.
    pub max_requests: usize,
    /// Where its `url` is written: for a check the running gateway makes
    /// on the config (against the addresses it has bound).
    pub url_at: Location,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Metrics and log label.
    pub name: Arc<str>,
    /// Position in `routes:`; keys per-route runtime state such as metrics.
    pub index: usize,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Who may pass.
    pub access: Access,
    /// How allowed requests are forwarded.
    pub forward: Arc<ForwardPolicy>,
    /// Where its `path` is written, for `scopegate check`'s warnings about it.
    pub path_at: Location,
}

/// A route's access rule.
#[derive(Debug)]
pub enum Access {
    /// `auth: none`: no token needed.
    Public,
    /// A valid bearer token with the required scopes.
    Bearer {
        /// Scopes the token must grant.
        scopes: ScopeRequirement,
        /// Issuer indexes accepted; `None` means any configured issuer.
        issuers: Option<Vec<usize>>,
        /// The one issuer that introspects opaque tokens for this route.
        introspector: Option<usize>,
    },
}

/// Header handling for forwarded requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPolicy {
    /// Remove `Authorization` before forwarding.
    pub strip_authorization: bool,
    /// A CORS preflight for a method the route serves reaches the upstream
    /// without a token.
    pub cors_preflight: bool,
    /// Headers set from claims: name and index into [`Config::identity_claims`].
    pub identity_headers: Vec<(HeaderName, usize)>,
    /// Client-sent headers always removed, in any spelling (identity names).
    pub remove_headers: RemovedHeaders,
}

/// Validates a parsed file into a [`Config`]; `base_dir` resolves relative paths.
pub fn validate(source: &str, base_dir: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
    validate_naming_files(source, base_dir, raw).map_err(|(error, _)| error)
}

/// [`validate`], whose refusal also names the files read before it stopped
/// (see [`super::load_str_naming_files`]). The warnings found are logged.
pub fn validate_naming_files(
    source: &str,
    base_dir: &Path,
    raw: RawConfig,
) -> Result<Config, (ConfigError, Box<NamedFiles>)> {
    let (validated, warnings) = validate_with_warnings(source, base_dir, raw);
    for warning in &warnings {
        warning.log();
    }
    validated
}

/// A config, or its refusal with the files read before it, and the
/// warnings found either way, in the order found.
pub type Validated = (
    Result<Config, (ConfigError, Box<NamedFiles>)>,
    Vec<ConfigWarning>,
);

/// [`validate_naming_files`], whose warnings are handed back instead of
/// logged (those found before a refusal too), for `scopegate check` to
/// print whatever the log level.
pub fn validate_with_warnings(source: &str, base_dir: &Path, raw: RawConfig) -> Validated {
    let v = Validator {
        source,
        base_dir,
        files: std::cell::RefCell::new(Vec::new()),
        warnings: std::cell::RefCell::new(Vec::new()),
    };
    let validated = build(&v, raw).map_err(|error| (error, Box::new(v.named_files())));
    (validated, v.warnings.into_inner())
}

fn build(v: &Validator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let server = v.server(&raw)?;
    let admin_listen = v.socket_addr(&raw.admin.listen)?;
    if same_port(admin_listen, server.listen) {
        // At `admin.listen` when the file sets it, else at `server.listen`
        // (the default admin port is in no file).
        return Err(v
            .err(
                raw.admin.listen.referenced,
                format!(
                    "admin.listen {admin_listen} overlaps server.listen {}: each needs its own port",
                    server.listen
                ),
            )
            .or_at(raw.server.listen.referenced));
    }
    let mut issuers = raw
        .issuers
        .iter()
        .map(|i| v.issuer(i).map_err(|e| e.or_at(i.referenced)))
        .collect::<Result<Vec<_>, _>>()?;
    v.unique(raw.issuers.iter().map(|i| &i.value.name), "issuer name")?;
    v.unique(raw.issuers.iter().map(|i| &i.value.issuer), "issuer")?;

    let mut upstream_index = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, up) in &raw.upstreams {
        upstream_index.insert(name.as_str(), upstreams.len());
        upstreams.push(v.upstream(name, up).map_err(|e| e.or_at(up.referenced))?);
    }

    if raw.cache.max_entries.value == 0 {
        return Err(v.err(
            raw.cache.max_entries.referenced,
            "cache.max_entries must be at least 1: without a cache every request verifies its token again, and every opaque one is introspected again",
        ));
    }
    for (name, up) in &raw.upstreams {
        let loops = upstreams
            .iter()
            .find(|u| &*u.name == name.as_str())
            .is_some_and(|u| upstream_reaches(u, &[server.listen, admin_listen]));
        if loops {
            return Err(v.err(
                up.value.url.referenced,
                format!("upstream `{name}` is this gateway's own listener: every request would come back to it"),
            ));
        }
    }

    let mut identity_claims = Vec::new();
    let default_forward = v.forward(&raw.forward, None, &mut identity_claims)?;
    let default_forward = Arc::new(default_forward);

    let mut issuer_index: HashMap<&str, usize> = raw
        .issuers
        .iter()
        .enumerate()
        .map(|(i, iss)| (iss.value.name.value.as_str(), i))
        .collect();
    let authorization_server = match &raw.authorization_server {
        Some(spanned) => {
            let name = spanned.value.name.value.as_str();
            if name.is_empty() || name == crate::admin::metrics::NO_ISSUER {
                return Err(v
                    .err(
                        spanned.value.name.referenced,
                        "the authorization server's name must not be empty or `-` (that labels denials of tokens that claim no configured issuer)",
                    )
                    .or_at(spanned.referenced));
            }
            if issuer_index.contains_key(name) {
                // The name may be the default, written nowhere.
                return Err(v
                    .err(
                        spanned.value.name.referenced,
                        format!("the authorization server's name `{name}` is already an issuer's (set `name:` to another)"),
                    )
                    .or_at(spanned.referenced));
            }
            let (settings, issuer) = v
                .authorization_server(spanned, issuers.len())
                .map_err(|e| e.or_at(spanned.referenced))?;
            if issuers.iter().any(|i| i.issuer == issuer.issuer) {
                return Err(v.err(
                    spanned.value.issuer.referenced,
                    "the authorization server's issuer is already an issuer's",
                ));
            }
            issuer_index.insert(spanned.value.name.value.as_str(), issuers.len());
            issuers.push(issuer);
            Some(settings)
        }
        None => None,
    };

    let introspecting: Vec<bool> = issuers.iter().map(|i| i.introspection.is_some()).collect();
    let mut specs = Vec::with_capacity(raw.routes.len());
    let mut names: HashSet<Arc<str>> = HashSet::with_capacity(raw.routes.len());
    for route in &raw.routes {
        let methods = v.methods(route).map_err(|e| e.or_at(route.referenced))?;
        let mut compiled = v
            .route(
                route,
                &methods,
                &upstream_index,
                &issuer_index,
                &introspecting,
                &default_forward,
                &mut identity_claims,
            )
            .map_err(|e| e.or_at(route.referenced))?;
        // Names label metric series and log lines: two routes under one
        // name would be one series.
        if !names.insert(Arc::clone(&compiled.name)) {
            // At the name written; a name made from methods and path has none.
            let name_at = route
                .value
                .name
                .as_ref()
                .map_or(route.referenced, |n| n.referenced);
            return Err(v.err(
                name_at,
                format!(
                    "route name `{}` is already another route's (names label metrics and logs)",
                    compiled.name
                ),
            ));
        }
        compiled.index = specs.len();
        specs.push(RouteSpec {
            path: route.value.path.value.clone(),
            methods,
            value: compiled,
        });
    }
    strip_every_identity_header(&default_forward, &mut specs, raw.server.request_id);
    let rules = v.match_rules(&raw.route_matching)?;
    let routes = RouteTable::build_with(specs, rules).map_err(|e| {
        let location = raw
            .routes
            .get(e.index)
            .map_or(Location::UNKNOWN, |r| r.value.path.referenced);
        v.err(location, format!("route: {}", e.message))
    })?;

    let first_bearer_route = routes
        .iter()
        .filter(|(_, _, r)| matches!(r.access, Access::Bearer { .. }))
        .map(|(_, _, r)| r.index)
        .min();
    if let (Some(index), true) = (first_bearer_route, issuers.is_empty()) {
        let location = raw
            .routes
            .get(index)
            .map_or(Location::UNKNOWN, |r| r.referenced);
        return Err(v.err(
            location,
            "this route requires bearer tokens but no issuers are configured (add `issuers:` or `authorization_server:`, or `auth: none`)",
        ));
    }

    if routes.is_empty() && authorization_server.is_none() {
        return Err(ConfigError::at_start(
            v.source,
            "nothing to serve: no routes and no authorization_server (every request would get 404)",
        ));
    }

    let resource = raw.resource.as_ref().map(|r| v.resource(r)).transpose()?;
    let trusted_proxies = raw
        .trusted_proxies
        .as_ref()
        .map(|list| v.trusted_proxies(list))
        .transpose()?
        .unwrap_or_default();
    if let (Some(resource), Some(spanned)) = (&resource, &raw.resource) {
        let path = resource.path.as_str();
        // A route written for that very path, for GET: the document is
        // answered first, so the route would never see its requests. (A
        // catch-all that also matches it is fine: it keeps every other path.)
        let taken_by_route = raw.routes.iter().any(|r| {
            r.value.path.value == path
                && r.value
                    .methods
                    .as_ref()
                    .is_none_or(|m| m.value.iter().any(|m| m.value == "GET"))
        });
        let taken_by_server = authorization_server
            .as_ref()
            .is_some_and(|s| s.paths.all().contains(&path));
        if taken_by_route || taken_by_server {
            return Err(v.err(
                spanned.value.resource.referenced,
                format!(
                    "the resource metadata path `{path}` is also {}",
                    if taken_by_server {
                        "an authorization server endpoint's"
                    } else {
                        "a GET route's"
                    }
                ),
            ));
        }
    }
    if let (Some(settings), Some(spanned)) = (&authorization_server, &raw.authorization_server) {
        for path in settings.paths.all() {
            let taken = [Method::GET, Method::POST]
                .iter()
                .any(|m| !matches!(routes.route(m, path), Ok(crate::routes::Lookup::NotFound)));
            if taken {
                return Err(v.err(
                    spanned.referenced,
                    format!("authorization server path `{path}` is also matched by a route"),
                ));
            }
        }
        // Browsers send the sign-in cookies below the sign-in page's path,
        // where no route is served (an upstream would read the session).
        let authorize = settings.paths.authorize.as_str();
        let probe = format!("{}/-", authorize.trim_end_matches('/'));
        for route in &raw.routes {
            let pattern = &route.value.path.value;
            let literal = pattern.split('{').next().unwrap_or_default();
            if crate::issuer::strictly_below(authorize, literal) {
                return Err(v.err(
                    route.value.path.referenced,
                    format!("route `{pattern}` is below the sign-in page's path `{authorize}`, whose cookies browsers send there; no route is served below it"),
                ));
            }
        }
        if [Method::GET, Method::POST]
            .iter()
            .any(|m| !matches!(routes.route(m, &probe), Ok(crate::routes::Lookup::NotFound)))
        {
            return Err(v.err(
                spanned.referenced,
                format!("a route matches `{probe}`, below the sign-in page's path `{authorize}`, whose cookies browsers send there; no route is served below it"),
            ));
        }
    }

    let files = v.named_files();
    Ok(Config {
        authorization_server,
        resource,
        source: v.source.to_owned(),
        server,
        admin_listen,
        issuers,
        upstreams,
        routes,
        cache_max_entries: raw.cache.max_entries.value,
        referenced_files: files.paths,
        files_digest: files.digest,
        text_digest: [0; 32],
        identity_claims,
        trusted_proxies,
    })
}

/// Headers a client may not send upstream whatever the route, in any
/// spelling (see [`RemovedHeaders`]): forwarding
/// headers scopegate does not set (an upstream trusting them would take the
/// client's word for its address, scheme, port, prefix or host: gunicorn
/// trusts `X-Forwarded-Ssl` and `X-Forwarded-Protocol` from loopback, which
/// is scopegate in a sidecar; Rack reads `X-Forwarded-Ssl` before
/// `X-Forwarded-Proto`), path overrides (gunicorn takes `SCRIPT_NAME` and
/// `PATH_INFO` headers from loopback as the WSGI mount and path, so
/// `/public/admin` with `SCRIPT_NAME: /public` would run `/admin`; Flask's
/// common ReverseProxied recipe reads `X-Script-Name`), a user gunicorn
/// would take as authenticated (`REMOTE_USER`), users and tokens other auth
/// proxies vouch for (oauth2-proxy's `X-Forwarded-User` and
/// `X-Auth-Request-*`, Grafana's `X-WEBAUTH-USER`, Envoy's
/// `X-Forwarded-Client-Cert`: an app moved from behind one still reads
/// them), `Proxy` (httpoxy: CGI files it as `HTTP_PROXY`, which HTTP
/// clients in the app take for their outbound proxy), and method overrides (a
/// route's scopes follow the method and path scopegate saw, so a `GET`
/// carrying `X-HTTP-Method-Override: DELETE` must not become a `DELETE`).
const CLIENT_MAY_NOT_SEND: [&str; 40] = [
    "forwarded",
    "proxy",
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-path",
    "front-end-https",
    "x-url-scheme",
    "x-original-url",
    "x-rewrite-url",
    "script-name",
    "path-info",
    "x-script-name",
    "remote-user",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-forwarded-client-cert",
    "x-webauth-user",
    "x-remote-user",
];

/// Every route removes every identity header any route sets, not only its
/// own: on a route that sets `X-Partner` instead of the defaults, a client's
/// `X-Auth-Subject` must not reach the upstream either (nor `X-Partner` on a
/// route that sets only the defaults, or none at all). And every route
/// removes [`CLIENT_MAY_NOT_SEND`].
fn strip_every_identity_header(
    default: &Arc<ForwardPolicy>,
    specs: &mut [RouteSpec<Route>],
    request_id: bool,
) {
    let policies = std::iter::once(default).chain(specs.iter().map(|s| &s.value.forward));
    let every = RemovedHeaders::new(
        CLIENT_MAY_NOT_SEND
            .iter()
            .map(|name| HeaderName::from_static(name))
            .chain(policies.flat_map(|p| p.remove_headers.iter().cloned())),
        // Set by scopegate: their other spellings (`X_Request_Id`, which
        // Rack and gunicorn read as the same name) go.
        [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST]
            .into_iter()
            .chain(request_id.then_some(&X_REQUEST_ID))
            .cloned(),
    );
    let with = |policy: &ForwardPolicy| {
        Arc::new(ForwardPolicy {
            remove_headers: every.clone(),
            ..policy.clone()
        })
    };
    // Routes sharing the default keep sharing one policy.
    let shared = with(default);
    for spec in specs {
        spec.value.forward = if Arc::ptr_eq(&spec.value.forward, default) {
            Arc::clone(&shared)
        } else {
            with(&spec.value.forward)
        };
    }
}

/// The most clock skew an issuer's `leeway` may allow for.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The longest `refresh_token_reuse_grace`.
const MAX_REUSE_GRACE: Duration = Duration::from_secs(60);

/// The most client connections `max_connections` may allow: far beyond what
/// one process's file descriptors hold, and well within what the
/// connection semaphore can count.
const MAX_CONNECTIONS: usize = 1_000_000;

/// The most runtime threads `workers` may ask for.
const MAX_WORKERS: usize = 1024;

/// A registered redirect URI (RFC 6749 3.1.2): absolute, without fragment,
/// and `https`, `http` to this host, or a private-use scheme of a native app
/// (RFC 8252 7.1: reverse domain name, so it has a dot); never one a browser
/// would run or read locally (`javascript:`, `data:`, `file:`).
fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let parsed = url::Url::parse(uri)
        .map_err(|e| format!("redirect_uris: `{uri}` is not an absolute URI: {e}"))?;
    if uri.contains('#') {
        return Err(format!("redirect_uris: `{uri}` must not have a #fragment"));
    }
    // Compared with what clients send byte for byte, and sent back in a
    // `Location` header: percent-encoded, as clients send it.
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "redirect_uris: `{uri}` must be ASCII without spaces (percent-encode the rest, as clients send it)"
        ));
    }
    let scheme = parsed.scheme();
    let web = matches!(scheme, "https" | "http");
    if web && parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("redirect_uris: `{uri}` has no host"));
    }
    if !web && !scheme.contains('.') {
        return Err(format!(
            "redirect_uris: `{uri}`: the scheme must be https, http, or a native app's reverse-domain scheme (com.example.app:/cb)"
        ));
    }
    // The code travels in the redirect: over plain http only where no
    // network lies between browser and app (RFC 6749 3.1.2.1, RFC 8252 7.3).
    if scheme == "http"
        && !uri
            .parse::<Uri>()
            .is_ok_and(|parsed| browsers_keep_secure_cookies(&parsed))
    {
        return Err(format!(
            "redirect_uris: `{uri}`: plain http only to this host (a loopback address, localhost or *.localhost); use https"
        ));
    }
    Ok(())
}

/// Signature algorithms a resource server may accept from an issuer's public keys.
const ASYMMETRIC_ALGORITHMS: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Most idle connections kept per upstream host: the pool reserves a slot
/// for each when it is built.
const MAX_POOL_IDLE: usize = 4096;

/// Most `max_requests` an upstream may have, as many as `max_connections`.
const MAX_UPSTREAM_REQUESTS: usize = 1_000_000;

/// Hop-by-hop and gateway-owned headers that identity headers may not name.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// An absolute `http://` or `https://` URL without user information or
/// fragment: what every URL scopegate calls must be, configured or
/// discovered.
pub fn http_url(value: &str) -> Result<Uri, String> {
    let shown = shown_url(value);
    let uri: Uri = value
        .parse()
        .map_err(|e| format!("`{shown}` is not a URL: {e}"))?;
    if value.contains('#') {
        return Err(format!("`{shown}` must not have a #fragment"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "a URL must not carry user:password@ (it would be sent as the Host, never as credentials)"
                .to_owned(),
        );
    }
    let authority = match uri.scheme_str() {
        Some("http") | Some("https") => uri.authority(),
        _ => None,
    };
    let Some(authority) = authority else {
        return Err(format!(
            "`{shown}` must be an absolute http:// or https:// URL"
        ));
    };
    // The parser keeps a port it cannot read (`:300000`, `:3000x`) and
    // reports none, which clients then take for the scheme's default: the
    // port written must be one that is used.
    if !port_is_valid(authority.as_str()) {
        return Err(format!("`{shown}` has no valid port (1-65535)"));
    }
    Ok(uri)
}

/// Whether `value` starts with `http://` or `https://`, in any case.
fn has_http_scheme(value: &str) -> bool {
    has_scheme(value, "http://") || has_scheme(value, "https://")
}

/// Whether `value` starts with `scheme` (`https://`), in any case.
fn has_scheme(value: &str, scheme: &str) -> bool {
    value
        .get(..scheme.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
}

/// Whether `authority` (`host[:port]`, without user information) has no
/// port or a port a client can connect to: ASCII digits only (Rust's
/// integer parsing would also take `+80`), from 1 to 65535. The port is
/// what follows the last `:` after the host (after the `]` of an IPv6
/// literal).
fn port_is_valid(authority: &str) -> bool {
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return true;
    };
    !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// `value` for an error message (and so for the log), with what could be
/// user information (`user:password@`) hidden.
fn shown_url(value: &str) -> Cow<'_, str> {
    let Some(at) = value.rfind('@') else {
        return Cow::Borrowed(value);
    };
    match value.find("://") {
        Some(end) if end < at => Cow::Owned(format!("{}://***{}", &value[..end], &value[at..])),
        _ => Cow::Borrowed("(a URL with an @, not shown)"),
    }
}

/// Whether two listen addresses would take the same port: equal, or one of
/// them on every address of the other's family (`0.0.0.0`), or on `[::]`,
/// which on Linux takes IPv4 as well. An IPv4-mapped address
/// (`[::ffff:127.0.0.1]`) is the IPv4 address it maps.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let dual_stack = |s: SocketAddr| s.ip() == std::net::Ipv6Addr::UNSPECIFIED;
    let any_of_family = |s: SocketAddr, other: SocketAddr| {
        s.ip().is_unspecified() && s.is_ipv4() == other.is_ipv4()
    };
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || any_of_family(a, b)
            || any_of_family(b, a)
            || dual_stack(a)
            || dual_stack(b))
}

/// An endpoint an issuer's keys or token answers come from: an
/// [`http_url`], and `https` unless the issuer is an `http://` URL or the
/// endpoint is on this host
/// (a sidecar). Over plain http across the network, whoever sits on the path
/// could hand scopegate signing keys of their own, or read the client
/// credentials and users' tokens sent for introspection.
pub fn issuer_endpoint(value: &str, issuer_https: bool) -> Result<Uri, String> {
    let uri = http_url(value)?;
    if issuer_https && uri.scheme_str() != Some("https") && !on_this_host(&uri) {
        return Err(format!(
            "`{value}` is plain http (only a loopback address may be, unless the issuer is itself an http:// URL or sets `allow_plain_http_endpoints: true`)"
        ));
    }
    Ok(uri)
}

/// The name of an upstream of `config` that is a listener at `address`
/// (one the gateway serves on, as bound), if one is: see [`reaches_itself`].
pub fn upstream_reaching(config: &Config, address: SocketAddr) -> Option<&Upstream> {
    config
        .upstreams
        .iter()
        .find(|u| upstream_reaches(u, &[address]))
}

/// Whether `upstream` is one of `listeners`.
fn upstream_reaches(upstream: &Upstream, listeners: &[SocketAddr]) -> bool {
    let default = if upstream.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let port = upstream.authority.port_u16().unwrap_or(default);
    reaches_itself(upstream.authority.host(), port, listeners)
}

/// Whether an upstream at `host` and `port` is one of the gateway's own
/// listeners: a loopback address, `localhost` (either loopback address) or
/// an unspecified address (which connects to loopback) that a listener on
/// that port takes, as Linux binds them (`[::]` takes IPv4 too). An
/// IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]`) is its IPv4 address.
fn reaches_itself(host: &str, port: u16, listeners: &[SocketAddr]) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let targets: &[IpAddr] = if host.eq_ignore_ascii_case("localhost") {
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    } else {
        match host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(ip)) if ip.is_unspecified() => &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Ok(IpAddr::V6(ip)) if ip.is_unspecified() => &[IpAddr::V6(Ipv6Addr::LOCALHOST)],
            Ok(ip) if ip.is_loopback() => &[ip],
            _ => return false,
        }
    };
    let takes = |listener: IpAddr, target: &IpAddr| match listener.to_canonical() {
        IpAddr::V4(l) if l.is_unspecified() => target.is_ipv4(),
        IpAddr::V6(l) if l.is_unspecified() => true,
        l => l == *target,
    };
    listeners.iter().any(|listener| {
        listener.port() != 0
            && listener.port() == port
            && targets.iter().any(|t| takes(listener.ip(), t))
    })
}

/// Whether browsers keep `Secure` cookies set by `uri`'s origin (the
/// built-in server's sign-in session): from https, and over plain http only
/// from this host (`*.localhost` too, RFC 6761 6.3).
pub fn browsers_keep_secure_cookies(uri: &Uri) -> bool {
    uri.scheme_str() != Some("http")
        || on_this_host(uri)
        || uri
            .host()
            .is_some_and(|h| h.to_ascii_lowercase().ends_with(".localhost"))
}

/// Whether `uri` names a loopback address (IPv4-mapped ones too) or
/// `localhost`.
fn on_this_host(uri: &Uri) -> bool {
    let Some(host) = uri.host() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Where a secret was read: the setting's place, and the file or variable.
type SecretSource = (Location, String);

struct Validator<'a> {
    source: &'a str,
    base_dir: &'a Path,
    /// Every file the config names, as resolved, with a digest of its
    /// contents when first read (`None`: unreadable).
    files: std::cell::RefCell<Vec<(PathBuf, Option<crate::auth::cache::TokenDigest>)>>,
    /// Warnings found so far, in the order found.
    warnings: std::cell::RefCell<Vec<ConfigWarning>>,
}

impl Validator<'_> {
    /// The `{ file: ... }` or `{ redis: ... }` store, each problem told at
    /// its own field (`at`: the store's place, for a mapping naming neither).
    fn store(&self, store: &RawStoreBackend, at: Location) -> Result<StoreConfig, ConfigError> {
        let redis_only = [
            ("ca_file", &store.ca_file),
            ("password_file", &store.password_file),
            ("password_env", &store.password_env),
        ];
        let url = match (&store.file, &store.redis) {
            (Some(_), Some(redis)) => {
                return Err(self.err(
                    redis.referenced,
                    "the store is either `{ file: PATH }` or `{ redis: URL }`, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    at,
                    "store must be `memory`, `{ file: PATH }` or `{ redis: URL }`",
                ))
            }
            // Written by the server itself: not a file a reload follows.
            (Some(file), None) => {
                if let Some((name, field)) = redis_only
                    .iter()
                    .find_map(|(name, field)| field.as_ref().map(|f| (name, f)))
                {
                    return Err(self.err(
                        field.referenced,
                        format!("`{name}` is a setting of the redis store, not of a file store"),
                    ));
                }
                return Ok(StoreConfig::File(self.resolve(&file.value)));
            }
            (None, Some(redis)) => redis,
        };
        let (here, url) = (url.referenced, &url.value);
        let tls = url.starts_with("rediss://");
        if url.contains('#') {
            return Err(self.err(
                here,
                "the redis store URL may not have a #fragment (`#insecure` would turn certificate checks off)",
            ));
        }
        // Parsed as the client will (no connection made); the URL may hold
        // a password, so it is not repeated.
        let parsed = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .ok()
            .filter(|_| tls || url.starts_with("redis://"));
        let Some(parsed) = parsed else {
            return Err(self.err(
                here,
                "redis store URL must be redis[s]://[user:password@]host[:port][/db]",
            ));
        };
        // The client takes `:0` as written and an empty port for 6379:
        // neither is a port the URL means.
        let authority = url
            .split_once("://")
            .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if !port_is_valid(host_port) {
            return Err(self.err(here, "the redis store URL has no valid port (1-65535)"));
        }
        let ca_pem = match &store.ca_file {
            None => None,
            Some(file) if !tls => {
                return Err(self.err(
                    file.referenced,
                    "the store's ca_file is for a rediss:// (TLS) URL",
                ))
            }
            Some(file) => Some(self.ca_pem(file)?.1),
        };
        let in_url = parsed.redis_settings().password().is_some();
        let password = match self.secret_from(
            "password",
            store.password_file.as_ref().map(|f| (f.value.as_str(), f.referenced)),
            store.password_env.as_ref().map(|v| (v.value.as_str(), v.referenced)),
        )? {
            Some((_, (at, _))) if in_url => {
                return Err(self.err(
                    at,
                    "the redis URL has a password, and password_file or password_env gives another: keep one",
                ))
            }
            Some((password, (at, named))) => {
                if password.is_empty() {
                    return Err(self.err(at, format!("the redis password in {named} is empty")));
                }
                Some(Secret::new(password))
            }
            None => None,
        };
        let elsewhere = url
            .parse::<Uri>()
            .is_ok_and(|uri| uri.host().is_some() && !on_this_host(&uri));
        if !tls && elsewhere {
            self.warn(here, "the redis store is plain redis:// on another host: its password and every grant cross the network in clear text: use rediss://", None);
        }
        if in_url {
            self.warn(here, "the redis URL holds a password, which anyone who can read this file (a ConfigMap: the `view` role) reads too: give it in password_file (a Secret's volume) or password_env", None);
        }
        Ok(StoreConfig::Redis(RedisTarget {
            url: url.clone(),
            ca_pem,
            password,
        }))
    }

    /// A secret from `<what>_file` (its trailing newline dropped) or
    /// `<what>_env`, with where it came from (for messages about it);
    /// `None` when neither is set.
    fn secret_from(
        &self,
        what: &str,
        file: Option<(&str, Location)>,
        env: Option<(&str, Location)>,
    ) -> Result<Option<(String, SecretSource)>, ConfigError> {
        match (file, env) {
            (Some((file, at)), None) => {
                let (path, text) = self.read(file);
                let text = text
                    .map_err(|e| e.to_string())
                    .and_then(|t| String::from_utf8(t).map_err(|_| "not UTF-8".to_owned()))
                    .map_err(|e| {
                        // Echoed only when it reads as a path (a `/` in it,
                        // and its directory exists): a secret pasted here
                        // instead of its file's path would reach stderr and
                        // the log.
                        let a_path = file.contains('/') && path.parent().is_some_and(Path::is_dir);
                        self.err(
                            at,
                            if a_path {
                                format!("cannot read {what}_file {}: {e}", path.display())
                            } else {
                                format!("cannot read {what}_file: {e} (its value is not shown, as it may be a secret pasted in place of a path: only a path with a `/`, in a directory that exists, is shown)")
                            },
                        )
                    })?;
                let source = (at, format!("{what}_file {}", path.display()));
                Ok(Some((
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                    source,
                )))
            }
            (None, Some((var, at))) => {
                let secret = std::env::var(var).map_err(|_| {
                    // Not echoed unless it reads as a variable's name (upper
                    // case words joined by `_`, as upper-case hex, base32 and
                    // AWS key ids are not): a secret pasted here instead of
                    // its variable's name would reach stderr and the log.
                    let named = var.len() <= 64
                        && var.contains('_')
                        && !var.starts_with(|c: char| c.is_ascii_digit())
                        && var
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                    self.err(
                        at,
                        if named {
                            format!("environment variable `{var}` is not set")
                        } else {
                            format!("{what}_env names no variable that is set (its value is not shown: it is not an upper-case variable name, and may be the secret itself)")
                        },
                    )
                })?;
                Ok(Some((
                    secret,
                    (at, format!("environment variable `{var}`")),
                )))
            }
            (Some(_), Some((_, at))) => Err(self.err(
                at,
                format!("set either {what}_file or {what}_env, not both"),
            )),
            (None, None) => Ok(None),
        }
    }

    fn err(&self, location: Location, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.source, location, message)
    }

    /// Records a warning at `location` (`issuer`: the issuer it is about).
    fn warn(&self, location: Location, message: impl Into<String>, issuer: Option<&str>) {
        self.warnings.borrow_mut().push(ConfigWarning {
            place: self.err(location, message),
            issuer: issuer.map(str::to_owned),
        });
    }

    /// Warns at each client secret hash, and each user password hash, whose
    /// argon2 cost differs from the one most of its kind take: a client id
    /// (user name) that does not exist is refused after a check of that
    /// cost, so the time of a refusal tells that such a name exists.
    fn warn_of_odd_argon2_parameters(&self, raw: &super::schema::RawAuthorizationServer) {
        use crate::issuer::clients::{argon2_parameters, decoy_hash};
        let clients: Vec<&Spanned<String>> = raw
            .clients
            .iter()
            .filter_map(|c| c.value.client_secret_hash.as_ref())
            .collect();
        let users: Vec<&Spanned<String>> =
            raw.users.iter().map(|u| &u.value.password_hash).collect();
        for (hashes, kind) in [(clients, "client secret"), (users, "user password")] {
            let decoy = decoy_hash(hashes.iter().map(|h| h.value.as_str()));
            let Some((usual, usual_cost)) = argon2_parameters(&decoy) else {
                continue;
            };
            for hash in hashes {
                let Some((parameters, cost)) = argon2_parameters(&hash.value) else {
                    continue;
                };
                if cost != usual_cost {
                    self.warn(
                        hash.referenced,
                        format!(
                            "argon2 parameters `{parameters}` cost otherwise than the `{usual}` most {kind} hashes here take: a name that does not exist is refused as slowly as those, so the time of a refusal tells that this one exists (hash it with `scopegate hash-secret` when it is next set)"
                        ),
                        None,
                    );
                }
            }
        }
    }

    /// A `ca_file`: resolved, and read now so that a file without usable
    /// certificates is refused here, at its place, not when the gateway
    /// starts.
    fn ca_file(&self, raw: Option<&Spanned<String>>) -> Result<Option<CaFile>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let (path, pem) = self.ca_pem(raw)?;
        Ok(Some(CaFile {
            path,
            contents: crate::auth::cache::digest(pem),
        }))
    }

    /// A `ca_file`'s path and PEM text, refused at its place when it cannot
    /// be read or holds no usable certificate.
    fn ca_pem(&self, raw: &Spanned<String>) -> Result<(PathBuf, Vec<u8>), ConfigError> {
        let (path, pem) = self.read(&raw.value);
        let pem = pem.map_err(|e| {
            self.err(
                raw.referenced,
                format!("ca_file: cannot read {}: {e}", path.display()),
            )
        })?;
        crate::proxy::client::roots_with(Some((&path, &pem)))
            .map_err(|e| self.err(raw.referenced, format!("ca_file: {e}")))?;
        Ok((path, pem))
    }

    /// Scopes as written, each checked as a scope token at its own place
    /// (`what` begins the message: the key, or whose the scopes are).
    fn scope_tokens(
        &self,
        scopes: &[Spanned<String>],
        what: &str,
    ) -> Result<Vec<String>, ConfigError> {
        scopes
            .iter()
            .map(|scope| {
                check_scope_token(&scope.value)
                    .map(|()| scope.value.clone())
                    .map_err(|e| self.err(scope.referenced, format!("{what}{e}")))
            })
            .collect()
    }

    /// One registered client of the built-in server. Errors without a place
    /// of their own (defaulted grants) are placed at the client by the
    /// caller.
    fn client(&self, c: &super::schema::RawClient) -> Result<Client, ConfigError> {
        if let Some(hash) = &c.client_secret_hash {
            crate::issuer::clients::check_argon2_hash(&hash.value).map_err(|e| {
                self.err(
                    hash.referenced,
                    format!("client_secret_hash: {e} (make one with `scopegate hash-secret`)"),
                )
            })?;
        }
        let mut grants = Vec::new();
        for spanned in &c.grants {
            let g = &spanned.value;
            let grant = Grant::parse(g).ok_or_else(|| {
                self.err(
                    spanned.referenced,
                    format!("unknown grant `{g}` (client_credentials, refresh_token, password, authorization_code)"),
                )
            })?;
            if grant != Grant::AuthorizationCode
                && grant != Grant::RefreshToken
                && c.client_secret_hash.is_none()
            {
                return Err(self.err(
                    spanned.referenced,
                    format!("a public client (no client_secret_hash) cannot use `{g}`"),
                ));
            }
            grants.push(grant);
        }
        let scopes = self.scope_tokens(&c.scopes, "scopes: ")?;
        if c.audience.value.is_empty() {
            return Err(self.err(c.audience.referenced, "audience must not be empty"));
        }
        for uri in &c.redirect_uris {
            check_redirect_uri(&uri.value).map_err(|e| self.err(uri.referenced, e))?;
        }
        Ok(Client {
            client_id: c.client_id.value.clone(),
            secret_hash: c.client_secret_hash.as_ref().map(|h| h.value.clone()),
            grants,
            scopes,
            audience: c.audience.value.clone(),
            redirect_uris: c.redirect_uris.iter().map(|u| u.value.clone()).collect(),
            name: c.name.clone().unwrap_or_else(|| c.client_id.value.clone()),
        })
    }

    /// A file the config reads: resolved against the config's directory,
    /// read, and recorded with what it held in [`Config::referenced_files`]
    /// and [`Config::files_digest`].
    fn read(&self, value: &str) -> (PathBuf, std::io::Result<Vec<u8>>) {
        let path = self.resolve(value);
        let contents = std::fs::read(&path);
        let mut files = self.files.borrow_mut();
        if !files.iter().any(|(seen, _)| *seen == path) {
            let digest = contents.as_ref().ok().map(crate::auth::cache::digest);
            files.push((path.clone(), digest));
        }
        (path, contents)
    }

    /// The files read so far, and a digest of what they held.
    fn named_files(&self) -> NamedFiles {
        let files = self.files.borrow();
        NamedFiles {
            paths: files.iter().map(|(path, _)| path.clone()).collect(),
            digest: super::load::files_digest(
                files
                    .iter()
                    .map(|(path, contents)| (path.as_path(), *contents)),
            ),
        }
    }

    /// A path resolved against the config's directory.
    fn resolve(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn match_rules(
        &self,
        raw: &super::schema::RawRouteMatching,
    ) -> Result<crate::routes::MatchRules, ConfigError> {
        let ignore_trailing_slash = match raw.trailing_slash.value.as_str() {
            "strict" => false,
            "ignore" => true,
            other => {
                return Err(self.err(
                    raw.trailing_slash.referenced,
                    format!("trailing_slash must be strict or ignore, not `{other}`"),
                ))
            }
        };
        Ok(crate::routes::MatchRules {
            case_insensitive: !raw.case_sensitive,
            ignore_trailing_slash,
        })
    }

    fn socket_addr(&self, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        value.value.parse().map_err(|_| {
            self.err(
                value.referenced,
                format!(
                    "`{}` is not a socket address (expected IP:PORT such as 0.0.0.0:8080)",
                    value.value
                ),
            )
        })
    }

    fn unique<'s>(
        &self,
        values: impl Iterator<Item = &'s Spanned<String>>,
        what: &str,
    ) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for value in values {
            if !seen.insert(value.value.as_str()) {
                return Err(self.err(
                    value.referenced,
                    format!("duplicate {what} `{}`", value.value),
                ));
            }
        }
        Ok(())
    }

    /// A duration, kept with its place in the file, that must not be zero.
    fn positive(
        &self,
        d: &Spanned<super::schema::HumanDuration>,
        what: &str,
    ) -> Result<(), ConfigError> {
        if d.value.0.is_zero() {
            return Err(self.err(d.referenced, format!("{what} must be greater than zero")));
        }
        Ok(())
    }

    /// Refuses a duration with a fraction of a second, where it would be
    /// cut off (token times are whole seconds).
    fn whole_seconds(
        &self,
        d: &Spanned<super::schema::HumanDuration>,
        what: &str,
    ) -> Result<(), ConfigError> {
        if d.value.0.subsec_nanos() != 0 {
            return Err(self.err(
                d.referenced,
                format!("{what} must be a whole number of seconds (token times are seconds)"),
            ));
        }
        Ok(())
    }

    fn server(&self, raw: &RawConfig) -> Result<ServerSettings, ConfigError> {
        let s = &raw.server;
        let listen = self.socket_addr(&s.listen)?;
        let tls = match &s.tls {
            None => None,
            Some(spanned) => {
                let read = |value: &str| {
                    let (path, contents) = self.read(value);
                    let contents = contents.map_err(|e| {
                        let message = if e.kind() == std::io::ErrorKind::NotFound {
                            format!("TLS file {} does not exist", path.display())
                        } else {
                            format!("TLS file {}: cannot read: {e}", path.display())
                        };
                        self.err(spanned.referenced, message)
                    })?;
                    Ok::<_, ConfigError>((path, contents))
                };
                let (cert_file, cert_pem) = read(&spanned.value.cert_file)?;
                let (key_file, key_pem) = read(&spanned.value.key_file)?;
                let files = TlsFiles {
                    cert_file,
                    key_file,
                };
                // Built once here so that a certificate or key the gateway
                // could not serve with is refused at its place, not at
                // startup.
                crate::server::tls::build(&files, &cert_pem, &key_pem)
                    .map_err(|e| self.err(spanned.referenced, format!("server.tls: {e}")))?;
                Some(files)
            }
        };
        let max_header_bytes = s.max_header_bytes.value;
        if !(8192..=1024 * 1024).contains(&max_header_bytes) {
            return Err(self.err(
                s.max_header_bytes.referenced,
                "max_header_bytes must be between 8192 and 1048576",
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&s.max_connections.value) {
            return Err(self.err(
                s.max_connections.referenced,
                format!("max_connections must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        if s.workers.value > MAX_WORKERS {
            return Err(self.err(
                s.workers.referenced,
                format!("workers must be between 0 (one per core) and {MAX_WORKERS}"),
            ));
        }
        self.positive(&s.header_read_timeout, "server.header_read_timeout")?;
        self.positive(&s.idle_timeout, "server.idle_timeout")?;
        Ok(ServerSettings {
            listen,
            tls,
            max_header_bytes,
            workers: s.workers.value,
            shutdown_grace: s.shutdown_grace,
            shutdown_delay: s.shutdown_delay,
            header_read_timeout: s.header_read_timeout.value.0,
            idle_timeout: s.idle_timeout.value.0,
            max_connections: s.max_connections.value,
            request_id: s.request_id,
        })
    }

    fn issuer(&self, spanned: &Spanned<RawIssuer>) -> Result<Issuer, ConfigError> {
        let raw = &spanned.value;
        let here = spanned.referenced;
        if raw.name.value.is_empty() {
            return Err(self.err(raw.name.referenced, "issuer name must not be empty"));
        }
        if raw.name.value == crate::admin::metrics::NO_ISSUER {
            return Err(self.err(
                raw.name.referenced,
                "issuer name `-` is reserved: it labels denials of tokens that claim no configured issuer",
            ));
        }
        if raw.issuer.value.is_empty() {
            return Err(self.err(raw.issuer.referenced, "issuer must not be empty"));
        }
        if raw.discovery {
            // Its metadata is found at a URL made from it (RFC 8414 3).
            let uri = http_url(&raw.issuer.value).map_err(|e| {
                self.err(
                    raw.issuer.referenced,
                    format!("with `discovery: true` the issuer must be its URL: {e}"),
                )
            })?;
            // The well-known path goes between host and path, so a query
            // would be lost from one metadata URL and swallow the other's.
            if uri.query().is_some() {
                return Err(self.err(
                    raw.issuer.referenced,
                    "with `discovery: true` the issuer must not have a query (RFC 8414 2)",
                ));
            }
        } else if has_http_scheme(&raw.issuer.value) {
            // Written as a URL, it must be one (RFC 8414 2): a port no
            // server has, a fragment or user information is a typo that
            // no token's `iss` would match.
            http_url(&raw.issuer.value).map_err(|e| {
                self.err(
                    raw.issuer.referenced,
                    format!("an issuer written as a URL must be a valid one: {e}"),
                )
            })?;
        }
        // Keys and introspection answers decide who gets in: fetched over
        // https beyond this host, unless the issuer itself is a plain
        // `http://` URL or the opt-in says otherwise (an issuer that is no
        // URL at all, `accounts.google.com`, gets no exception).
        let issuer_plain_http = has_scheme(&raw.issuer.value, "http://");
        let issuer_https = !issuer_plain_http && !raw.allow_plain_http_endpoints;
        let has_local_keys = raw.jwks_uri.is_some() || raw.jwks_file.is_some();
        if !has_local_keys && raw.introspection.is_none() && !raw.discovery {
            return Err(self.err(
                here,
                format!(
                    "issuer `{}` needs `jwks_uri`, `jwks_file`, `introspection` or `discovery: true`",
                    raw.name.value
                ),
            ));
        }
        // Introspected tokens too: an answer naming another API's audience
        // is refused, which takes knowing this one's (or, with client ids
        // alone, any audience is another API's).
        // Told at the empty entry where there is one, else at the issuer.
        let empty = raw
            .audiences
            .iter()
            .chain(&raw.client_ids)
            .find(|entry| entry.value.is_empty());
        if (raw.audiences.is_empty() && raw.client_ids.is_empty()) || empty.is_some() {
            return Err(self.err(
                empty.map_or(here, |entry| entry.referenced),
                format!(
                    "issuer `{}` needs at least one non-empty entry in `audiences` (tokens must be meant for this API), or in `client_ids` for an identity provider whose access tokens carry no `aud` (Amazon Cognito), and no empty one",
                    raw.name.value
                ),
            ));
        }
        let keys = match (&raw.jwks_uri, &raw.jwks_file) {
            (Some(uri), None) => KeySource::Remote(self.issuer_endpoint(uri, issuer_https)?),
            (None, Some(file)) => {
                let (path, text) = self.read(&file.value);
                let text = text.map_err(|e| {
                    self.err(
                        file.referenced,
                        format!("cannot read jwks_file {}: {e}", path.display()),
                    )
                })?;
                let set = KeySet::from_json(&text).map_err(|e| {
                    self.err(
                        file.referenced,
                        format!("jwks_file {}: {e}", path.display()),
                    )
                })?;
                KeySource::Static(Arc::new(set))
            }
            (Some(_), Some(file)) => {
                return Err(self.err(
                    file.referenced,
                    "set either `jwks_uri` or `jwks_file`, not both",
                ))
            }
            (None, None) if raw.discovery => KeySource::Discovered,
            (None, None) => KeySource::None,
        };
        // The issuer's `ca_file` serves its JWKS and discovery clients only
        // (an introspection endpoint has its own): where neither speaks
        // TLS, it would be silently ignored.
        if let Some(ca) = &raw.ca_file {
            let issuer_https = has_scheme(&raw.issuer.value, "https://");
            let unused = match &keys {
                KeySource::Remote(uri) if uri.scheme() == Some(&http::uri::Scheme::HTTPS) => None,
                KeySource::Discovered => None,
                _ if raw.discovery && issuer_https => None,
                KeySource::Remote(_) if raw.discovery => {
                    Some("its jwks_uri and its issuer URL, where discovery fetches the metadata, are plain http")
                }
                KeySource::Remote(_) => Some("its jwks_uri is plain http"),
                KeySource::Static(_) => Some("its keys come from jwks_file"),
                KeySource::None => Some(
                    "it only introspects (give the introspection endpoint's CA as introspection's own ca_file)",
                ),
            };
            if let Some(why) = unused {
                return Err(self.err(
                    ca.referenced,
                    format!("ca_file is for fetching this issuer's keys or metadata over https, which it never does: {why}"),
                ));
            }
        }
        let introspection = raw
            .introspection
            .as_ref()
            .map(|i| self.introspection(i, raw.discovery, issuer_https, !raw.audiences.is_empty()))
            .transpose()?;
        let mut algorithms = Vec::new();
        for written in &raw.algorithms.value {
            let name = &written.value;
            let alg = ASYMMETRIC_ALGORITHMS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| *a)
                .ok_or_else(|| {
                    let hint = if name.eq_ignore_ascii_case("none") || name.starts_with("HS") {
                        " (only asymmetric algorithms can be verified with an issuer's public keys)"
                    } else {
                        ""
                    };
                    self.err(
                        written.referenced,
                        format!(
                            "unsupported algorithm `{name}`{hint}; choose from RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
                        ),
                    )
                })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err(self.err(raw.algorithms.referenced, "algorithms must not be empty"));
        }
        // A fixed key set that verifies none of the algorithms would refuse
        // every token while the issuer reads as ready.
        if let (KeySource::Static(set), Some(file)) = (&keys, &raw.jwks_file) {
            if !algorithms.iter().any(|alg| set.verifies(*alg)) {
                return Err(self.err(
                    file.referenced,
                    format!(
                        "jwks_file has no key for any of the issuer's algorithms ({})",
                        raw.algorithms
                            .value
                            .iter()
                            .map(|name| name.value.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            // As for a fetched set: kept, so their tokens are bad signatures,
            // but named, since those tokens would otherwise fail without a
            // hint.
            let unusable = set.unusable_kids();
            if !unusable.is_empty() {
                self.warn(
                    file.referenced,
                    format!(
                        "jwks_file has keys scopegate cannot verify with (kids {unusable:?}: {}): tokens naming them get bad_signature",
                        crate::auth::jwks::UNUSABLE_KEY_CAUSES
                    ),
                    Some(&raw.name.value),
                );
            }
            if set.unread_entries() > 0 {
                self.warn(
                    file.referenced,
                    format!(
                        "jwks_file has {} entries past the first {}, which are not read",
                        set.unread_entries(),
                        crate::auth::jwks::MAX_KEYS
                    ),
                    Some(&raw.name.value),
                );
            }
            let exposed = set.exposed_kids();
            if !exposed.is_empty() {
                self.warn(
                    file.referenced,
                    format!(
                        "jwks_file has private keys (kids {exposed:?} carry `d`): they are not used, since whoever can read the file can sign with them; keep only their public part"
                    ),
                    Some(&raw.name.value),
                );
            }
        }
        let scope_claim = match raw.scope_claim.value.as_str() {
            "scope" => ScopeClaim::Scope,
            "scp" => ScopeClaim::Scp,
            "roles" => ScopeClaim::Roles,
            "permissions" => ScopeClaim::Permissions,
            other => {
                return Err(self.err(
                    raw.scope_claim.referenced,
                    format!(
                    "scope_claim must be `scope`, `scp`, `roles` or `permissions`, not `{other}`"
                ),
                ))
            }
        };
        self.positive(&raw.jwks_refresh_interval, "jwks_refresh_interval")?;
        self.positive(&raw.jwks_timeout, "jwks_timeout")?;
        // Allowed (tests refetch at once), but then each forged token with
        // an unknown `kid` or a bad signature costs the IdP a fetch, one
        // after another (RFC 8725 3.10: keys found through a token's
        // contents are a lever for attackers).
        let cooldown = &raw.jwks_refetch_cooldown;
        if cooldown.value.0.is_zero() && (raw.jwks_uri.is_some() || raw.discovery) {
            self.warn(
                cooldown.referenced,
                format!(
                    "issuer `{}` has `jwks_refetch_cooldown: 0s`: every token with an unknown kid or a bad signature makes it fetch its keys again, so a stream of forged tokens becomes a stream of fetches to the identity provider (the default is 30s)",
                    raw.name.value
                ),
                None,
            );
        }
        if raw.leeway.value.0 > MAX_LEEWAY {
            return Err(self.err(
                raw.leeway.referenced,
                "leeway may be at most 5m: it is for clock skew, and every token lives that much longer",
            ));
        }
        // Token times are whole seconds: `500ms` would silently be none.
        self.whole_seconds(&raw.leeway, "leeway")?;
        let require_typ = raw.require_typ.as_ref().map(|t| normalize_typ(&t.value));
        if let (Some(""), Some(written)) = (require_typ.as_deref(), &raw.require_typ) {
            return Err(self.err(
                written.referenced,
                "require_typ must name a type (at+jwt), or be left out: an empty one refuses every token",
            ));
        }
        Ok(Issuer {
            name: Arc::from(raw.name.value.as_str()),
            issuer: raw.issuer.value.clone(),
            audiences: raw.audiences.iter().map(|a| a.value.clone()).collect(),
            client_ids: raw.client_ids.iter().map(|c| c.value.clone()).collect(),
            keys,
            introspection,
            discovery: raw.discovery,
            endpoints_need_https: issuer_https,
            algorithms,
            leeway_secs: raw.leeway.value.0.as_secs(),
            require_typ,
            scope_claim,
            jwks_refresh_interval: raw.jwks_refresh_interval.value.0,
            jwks_refetch_cooldown: raw.jwks_refetch_cooldown.value.0,
            jwks_timeout: raw.jwks_timeout.value.0,
            ca_file: self.ca_file(raw.ca_file.as_ref())?,
        })
    }

    fn introspection(
        &self,
        spanned: &Spanned<RawIntrospection>,
        discovery: bool,
        issuer_https: bool,
        has_audiences: bool,
    ) -> Result<Introspection, ConfigError> {
        let raw = &spanned.value;
        let here = spanned.referenced;
        let require_audience = raw.require_audience.as_ref();
        if let Some(required) = require_audience.filter(|r| r.value && !has_audiences) {
            return Err(self.err(
                required.referenced,
                "require_audience needs `audiences` on the issuer: with only `client_ids`, the tokens name no API",
            ));
        }
        let endpoint = match &raw.endpoint {
            Some(e) => Some(self.issuer_endpoint(e, issuer_https)?),
            None if discovery => None,
            None => {
                return Err(self.err(
                    here,
                    "introspection needs `endpoint` (or `discovery: true` on the issuer)",
                ))
            }
        };
        if let (Some(ca), Some(endpoint)) = (&raw.ca_file, &endpoint) {
            if endpoint.scheme() != Some(&http::uri::Scheme::HTTPS) {
                return Err(self.err(
                    ca.referenced,
                    "ca_file is for an https introspection endpoint: this one is plain http",
                ));
            }
        }
        if raw.client_id.value.is_empty() {
            return Err(self.err(raw.client_id.referenced, "client_id must not be empty"));
        }
        let file = raw
            .client_secret_file
            .as_ref()
            .map(|f| (f.value.as_str(), f.referenced));
        let env = raw
            .client_secret_env
            .as_ref()
            .map(|v| (v.value.as_str(), v.referenced));
        let Some((secret, source)) = self.secret_from("client_secret", file, env)? else {
            return Err(self.err(
                here,
                "introspection needs client_secret_file or client_secret_env",
            ));
        };
        if secret.is_empty() {
            let (at, named) = source;
            return Err(self
                .err(
                    at,
                    format!("the introspection client secret in {named} is empty"),
                )
                .or_at(here));
        }
        let auth = match raw.auth_method.value.as_str() {
            "client_secret_basic" => ClientAuth::Basic,
            "client_secret_post" => ClientAuth::Post,
            other => {
                return Err(self.err(
                    raw.auth_method.referenced,
                    format!(
                    "auth_method must be client_secret_basic or client_secret_post, not `{other}`"
                ),
                ))
            }
        };
        self.positive(&raw.timeout, "introspection timeout")?;
        if raw.cache_ttl.value.0 > Duration::from_secs(24 * 3600)
            || raw.negative_cache_ttl.value.0 > Duration::from_secs(3600)
        {
            let at = if raw.cache_ttl.value.0 > Duration::from_secs(24 * 3600) {
                raw.cache_ttl.referenced
            } else {
                raw.negative_cache_ttl.referenced
            };
            return Err(self.err(
                at,
                "cache_ttl may be at most 24h and negative_cache_ttl at most 1h",
            ));
        }
        Ok(Introspection {
            endpoint,
            client_id: raw.client_id.value.clone(),
            client_secret: Secret::new(secret),
            auth,
            timeout: raw.timeout.value.0,
            cache_ttl: raw.cache_ttl.value.0,
            negative_cache_ttl: raw.negative_cache_ttl.value.0,
            ca_file: self.ca_file(raw.ca_file.as_ref())?,
            require_token_type: raw.require_token_type,
            require_audience: require_audience.is_some_and(|r| r.value),
        })
    }

    fn authorization_server(
        &self,
        spanned: &Spanned<RawAuthorizationServer>,
        issuer_index: usize,
    ) -> Result<(AuthorizationServerSettings, Issuer), ConfigError> {
        let raw = &spanned.value;
        let here = spanned.referenced;
        let issuer_uri = self.http_uri(&raw.issuer)?;
        let path_of = |p: &Spanned<String>| -> Result<String, ConfigError> {
            if crate::routes::is_canonical(&p.value) {
                Ok(p.value.clone())
            } else {
                Err(self.err(
                    p.referenced,
                    format!("`{}` is not a canonical path", p.value),
                ))
            }
        };
        if issuer_uri.query().is_some() {
            return Err(self.err(
                raw.issuer.referenced,
                "the authorization server's issuer must not have a query (RFC 8414 2)",
            ));
        }
        // Browsers take no `Secure` cookie from a plain-http origin other
        // than their own host: the sign-in page could never keep a session.
        let signs_users_in = raw.clients.iter().any(|c| {
            c.value
                .grants
                .iter()
                .any(|g| Grant::parse(&g.value) == Some(Grant::AuthorizationCode))
        });
        if signs_users_in && !browsers_keep_secure_cookies(&issuer_uri) {
            return Err(self.err(
                raw.issuer.referenced,
                "an http:// issuer on another host than loopback cannot sign users in (browsers refuse the sign-in page's Secure cookies over plain http): use an https:// issuer (TLS here or at an ingress in front)",
            ));
        }
        // The token endpoint takes client secrets and users' passwords, and
        // MUST be reached over TLS (RFC 6749 3.2, 2.3.1): an http:// issuer
        // beyond this host says its clients reach it without (the hosts
        // are those browsers keep Secure cookies from).
        if !raw.allow_plain_http && !browsers_keep_secure_cookies(&issuer_uri) {
            return Err(self.err(
                raw.issuer.referenced,
                "an http:// issuer on another host than loopback would take client secrets and passwords in cleartext (RFC 6749 3.2 requires TLS): use an https:// issuer (TLS here or at an ingress in front), or set `allow_plain_http: true` if a service mesh encrypts every client's hop",
            ));
        }
        let issuer_path = issuer_uri.path().trim_end_matches('/');
        let metadata = format!("/.well-known/oauth-authorization-server{issuer_path}");
        // Requests are matched canonical: another spelling is never asked for.
        if !crate::routes::is_canonical(&metadata) {
            return Err(self.err(
                raw.issuer.referenced,
                format!("the issuer's path is not canonical: its metadata at `{metadata}` could never be asked for"),
            ));
        }
        let paths = AuthorizationServerPaths {
            token: path_of(&raw.token_path)?,
            authorize: path_of(&raw.authorize_path)?,
            introspection: path_of(&raw.introspection_path)?,
            revocation: path_of(&raw.revocation_path)?,
            jwks: path_of(&raw.jwks_path)?,
            metadata,
        };
        // The sign-in cookies' `Path` is the authorize endpoint's, and no
        // route below it is served (browsers would send them along).
        if paths.authorize == "/" {
            return Err(self.err(
                raw.authorize_path.referenced,
                "authorize_path `/` would give the sign-in cookies to every path, and no route below it is served: use a path such as /oauth2/authorize",
            ));
        }
        // Requests go to the first endpoint whose path is theirs: a path
        // given twice would hide the later endpoint.
        let configured = [
            ("token_path", &raw.token_path),
            ("authorize_path", &raw.authorize_path),
            ("introspection_path", &raw.introspection_path),
            ("revocation_path", &raw.revocation_path),
            ("jwks_path", &raw.jwks_path),
        ];
        let key = |index: usize| {
            configured
                .get(index)
                .map_or("the metadata's, made from the issuer", |(key, _)| key)
        };
        let all = paths.all();
        for (index, path) in all.iter().enumerate() {
            if let Some(first) = all.iter().position(|p| p == path).filter(|&f| f < index) {
                // Point at the one written: the other may be a default,
                // written nowhere, or the metadata's path, derived.
                let location = [index, first]
                    .iter()
                    .filter_map(|&i| configured.get(i))
                    .map(|(_, p)| p.referenced)
                    .find(|&at| at != Location::UNKNOWN)
                    .unwrap_or(here);
                let metadata = if index < configured.len() {
                    format!(" (the metadata's is `{}`)", paths.metadata)
                } else {
                    String::new()
                };
                return Err(self.err(
                    location,
                    format!(
                        "authorization server path `{path}` is given to two endpoints, {} and {}{metadata}",
                        key(first),
                        key(index),
                    ),
                )
                .or_at(here));
            }
        }
        let mut keys = Vec::new();
        for key in &raw.signing_keys {
            let alg = match key.value.alg.as_str() {
                "ES256" => Algorithm::ES256,
                "RS256" => Algorithm::RS256,
                "PS256" => Algorithm::PS256,
                "EdDSA" => Algorithm::EdDSA,
                other => {
                    return Err(self.err(
                        key.referenced,
                        format!("signing alg must be ES256, RS256, PS256 or EdDSA, not `{other}`"),
                    ))
                }
            };
            let (path, pem) = self.read(&key.value.private_key_file);
            let pem = pem.map_err(|e| {
                self.err(
                    key.referenced,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let signing = SigningKey::from_pem(&key.value.kid, alg, &pem)
                .map_err(|e| self.err(key.referenced, format!("{}: {e}", path.display())))?;
            if keys.iter().any(|k: &SigningKey| k.kid() == signing.kid()) {
                return Err(self.err(key.referenced, format!("duplicate kid `{}`", signing.kid())));
            }
            keys.push(signing);
        }
        // Warned about once the rest is valid: a refused file needs no warning.
        let ephemeral = keys.is_empty();
        if ephemeral {
            keys.push(SigningKey::generate("ephemeral").map_err(|e| self.err(here, e))?);
        }
        let jwks = crate::issuer::keys::jwks_document(&keys);
        let key_set =
            KeySet::from_json(jwks.as_bytes()).map_err(|e| self.err(here, e.to_string()))?;
        let response_style = match raw.response_style.value.as_str() {
            "standard" => ResponseStyle::Standard,
            "apigee" => ResponseStyle::Apigee,
            other => {
                return Err(self.err(
                    raw.response_style.referenced,
                    format!("response_style must be `standard` or `apigee`, not `{other}`"),
                ))
            }
        };
        let store = match raw.store.as_ref().map(|s| (&s.value, s.referenced)) {
            None => StoreConfig::Memory,
            Some((RawStore::Name(name), _)) if name == "memory" => StoreConfig::Memory,
            // Not echoed: a `redis://:password@host` written without its
            // braces lands here.
            Some((RawStore::Name(_), at)) => {
                return Err(self.err(
                    at,
                    "store must be `memory`, `{ file: PATH }` or `{ redis: URL }`",
                ))
            }
            Some((RawStore::Backend(store), at)) => self.store(store, at)?,
        };
        let mut clients: Vec<Client> = Vec::new();
        for client in &raw.clients {
            let c = &client.value;
            if c.client_id.value.is_empty()
                || clients.iter().any(|x| x.client_id == c.client_id.value)
            {
                return Err(self.err(
                    c.client_id.referenced,
                    format!("client_id `{}` is empty or used twice", c.client_id.value),
                ));
            }
            clients.push(self.client(c).map_err(|e| e.or_at(client.referenced))?);
        }
        let mut users: Vec<User> = Vec::new();
        for user in &raw.users {
            let u = &user.value;
            crate::issuer::clients::check_argon2_hash(&u.password_hash.value).map_err(|e| {
                self.err(
                    u.password_hash.referenced,
                    format!("password_hash: {e} (make one with `scopegate hash-secret`)"),
                )
            })?;
            if u.username.value.is_empty() || users.iter().any(|x| x.username == u.username.value) {
                return Err(self.err(u.username.referenced, "username is empty or used twice"));
            }
            if clients.iter().any(|c| c.client_id == u.username.value) {
                return Err(self.err(
                    u.username.referenced,
                    format!(
                        "username `{}` is also a client_id: a client's own tokens carry its id as `sub`, so upstreams could not tell them from the user's (RFC 9068 section 5)",
                        u.username.value
                    ),
                ));
            }
            let scopes = u
                .scopes
                .as_ref()
                .map(|scopes| {
                    self.scope_tokens(scopes, &format!("user `{}`: scopes: ", u.username.value))
                })
                .transpose()?;
            users.push(User {
                username: u.username.value.clone(),
                password_hash: u.password_hash.value.clone(),
                scopes,
            });
        }
        self.warn_of_odd_argon2_parameters(raw);
        // Lifetimes are whole seconds (`expires_in`, `exp`): a fraction would
        // be cut off, and `500ms` would mint tokens that are born expired.
        let year = Duration::from_secs(366 * 24 * 3600);
        let lifetime = |ttl: &Spanned<super::schema::HumanDuration>, what: &str, most: Duration| {
            let d = ttl.value.0;
            let at = ttl.referenced;
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                Err(self.err(
                    at,
                    format!("{what} must be a whole number of seconds, at least 1s"),
                ))
            } else if d > most {
                Err(self.err(
                    at,
                    "token lifetimes may be at most a year (refresh_family_max_age: ten years)",
                ))
            } else {
                Ok(d)
            }
        };
        let access_token_ttl = lifetime(&raw.access_token_ttl, "access_token_ttl", year)?;
        let refresh_token_ttl = lifetime(&raw.refresh_token_ttl, "refresh_token_ttl", year)?;
        let refresh_family_max_age = lifetime(
            &raw.refresh_family_max_age,
            "refresh_family_max_age",
            year * 10,
        )?;
        let grace = &raw.refresh_token_reuse_grace;
        self.whole_seconds(grace, "refresh_token_reuse_grace")?;
        if grace.value.0 > MAX_REUSE_GRACE {
            return Err(self.err(
                grace.referenced,
                "refresh_token_reuse_grace may be at most 60s (a lost answer's retry comes within seconds; longer leaves a stolen token usable longer)",
            ));
        }
        let refresh_token_reuse_grace = grace.value.0;
        let mut audiences: Vec<String> = clients.iter().map(|c| c.audience.clone()).collect();
        audiences.sort();
        audiences.dedup();
        if audiences.is_empty() {
            audiences.push(raw.issuer.value.clone());
        }
        let mut algorithms: Vec<Algorithm> = keys.iter().map(SigningKey::algorithm).collect();
        algorithms.dedup();
        let issuer = Issuer {
            name: Arc::from(raw.name.value.as_str()),
            issuer: raw.issuer.value.clone(),
            audiences,
            client_ids: Vec::new(),
            keys: KeySource::Static(Arc::new(key_set)),
            introspection: None,
            discovery: false,
            endpoints_need_https: false,
            algorithms,
            leeway_secs: crate::issuer::LEEWAY_SECS,
            require_typ: Some("at+jwt".to_owned()),
            scope_claim: ScopeClaim::Scope,
            jwks_refresh_interval: Duration::from_secs(3600),
            jwks_refetch_cooldown: Duration::from_secs(3600),
            jwks_timeout: Duration::from_secs(5),
            ca_file: None,
        };
        if ephemeral {
            self.warn(
                here,
                "authorization_server has no signing_keys: generated an ephemeral ES256 key; tokens die with this process (demo only)",
                None,
            );
        }
        Ok((
            AuthorizationServerSettings {
                issuer: raw.issuer.value.clone(),
                issuer_index,
                paths,
                keys: Arc::new(keys),
                ephemeral_key: ephemeral,
                access_token_ttl,
                refresh_token_ttl,
                refresh_family_max_age,
                refresh_token_reuse_grace,
                response_style,
                store,
                clients,
                users,
            },
            issuer,
        ))
    }

    fn resource(&self, spanned: &Spanned<RawResource>) -> Result<ResourceMetadata, ConfigError> {
        let raw = &spanned.value;
        // Its metadata URL goes into every challenge as a quoted string.
        if raw
            .resource
            .value
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b == b'"' || b == b'\\')
        {
            return Err(self.err(
                raw.resource.referenced,
                "the resource identifier may hold only visible ASCII, without `\"` or `\\`",
            ));
        }
        let uri = self.http_uri(&raw.resource)?;
        if uri.query().is_some() || raw.resource.value.contains('#') {
            return Err(self.err(
                raw.resource.referenced,
                "the resource identifier must not have a query or fragment (RFC 9728 1.2)",
            ));
        }
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(self.err(
                raw.resource.referenced,
                "the resource needs scheme and host",
            ));
        };
        if scheme != "https" {
            return Err(self.err(
                raw.resource.referenced,
                "the resource identifier must be an https:// URL (RFC 9728 1.2)",
            ));
        }
        let suffix = uri.path().trim_end_matches('/');
        let path = format!("/.well-known/oauth-protected-resource{suffix}");
        // Requests are matched canonical: another spelling is never asked for.
        if !crate::routes::is_canonical(&path) {
            return Err(self.err(
                raw.resource.referenced,
                format!("the resource's path is not canonical: its metadata at `{path}` could never be asked for"),
            ));
        }
        let url = format!("{scheme}://{authority}{path}");
        let mut document = serde_json::json!({
            "resource": raw.resource.value,
            "bearer_methods_supported": ["header"],
        });
        for server in &raw.authorization_servers {
            let at = server.referenced;
            let server = &server.value;
            // Issuer identifiers (RFC 8414 2): no query or fragment; plain
            // http is taken as for issuers (a built-in one on loopback).
            let uri = http_url(server)
                .map_err(|e| self.err(at, format!("authorization_servers: {e}")))?;
            if uri.query().is_some() {
                return Err(self.err(
                    at,
                    format!("authorization_servers: `{server}` is no issuer identifier: it has a query (RFC 8414 2)"),
                ));
            }
        }
        if !raw.authorization_servers.is_empty() {
            let servers: Vec<&str> = raw
                .authorization_servers
                .iter()
                .map(|s| s.value.as_str())
                .collect();
            document["authorization_servers"] = servers.into();
        }
        if !raw.scopes_supported.is_empty() {
            let scopes = self.scope_tokens(&raw.scopes_supported, "scopes_supported: ")?;
            document["scopes_supported"] = scopes.into();
        }
        if let Some(name) = &raw.resource_name {
            document["resource_name"] = name.clone().into();
        }
        if let Some(Spanned {
            value: doc,
            referenced: doc_at,
            ..
        }) = &raw.resource_documentation
        {
            // A page, so a #fragment is fine.
            let is_web_url = url::Url::parse(doc)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !is_web_url {
                return Err(self.err(
                    *doc_at,
                    format!("resource_documentation: `{doc}` must be an http:// or https:// URL"),
                ));
            }
            document["resource_documentation"] = doc.clone().into();
        }
        Ok(ResourceMetadata {
            url,
            path,
            document: bytes::Bytes::from(document.to_string()),
        })
    }

    fn http_uri(&self, value: &Spanned<String>) -> Result<Uri, ConfigError> {
        http_url(&value.value).map_err(|message| self.err(value.referenced, message))
    }

    fn issuer_endpoint(
        &self,
        value: &Spanned<String>,
        issuer_https: bool,
    ) -> Result<Uri, ConfigError> {
        issuer_endpoint(&value.value, issuer_https)
            .map_err(|message| self.err(value.referenced, message))
    }

    fn upstream(
        &self,
        name: &str,
        spanned: &Spanned<RawUpstream>,
    ) -> Result<Upstream, ConfigError> {
        let raw = &spanned.value;
        let uri = self.http_uri(&raw.url)?;
        if uri.query().is_some() {
            return Err(self.err(raw.url.referenced, "upstream url must not have a query"));
        }
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(self.err(raw.url.referenced, "upstream url needs scheme and host"));
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        if !crate::routes::is_canonical(uri.path()) {
            return Err(self.err(
                raw.url.referenced,
                "upstream url path must be canonical (no dot segments, empty segments or needless escapes)",
            ));
        }
        self.positive(&raw.connect_timeout, "connect_timeout")?;
        self.positive(&raw.request_timeout, "request_timeout")?;
        self.positive(&raw.body_idle_timeout, "body_idle_timeout")?;
        self.positive(&raw.pool_idle_timeout, "pool_idle_timeout")?;
        if raw.http2_max_streams.value == 0 {
            return Err(self.err(
                raw.http2_max_streams.referenced,
                "http2_max_streams must be at least 1",
            ));
        }
        if let (Some(ca), false) = (&raw.ca_file, scheme == http::uri::Scheme::HTTPS) {
            return Err(self.err(
                ca.referenced,
                "ca_file is for an https upstream: this one is plain http",
            ));
        }
        if !(1..=MAX_UPSTREAM_REQUESTS).contains(&raw.max_requests.value) {
            return Err(self.err(
                raw.max_requests.referenced,
                format!("max_requests must be from 1 to {MAX_UPSTREAM_REQUESTS}"),
            ));
        }
        if raw.pool_max_idle_per_host.value > MAX_POOL_IDLE {
            return Err(self.err(
                raw.pool_max_idle_per_host.referenced,
                format!("pool_max_idle_per_host may be at most {MAX_POOL_IDLE} (room for each is reserved at start)"),
            ));
        }
        let http1_only = match &raw.http1_only {
            Some(only) if only.value && raw.http2_only => {
                return Err(self.err(
                    only.referenced,
                    "http1_only and http2_only exclude each other".to_owned(),
                ))
            }
            Some(only) => only.value,
            None => false,
        };
        Ok(Upstream {
            name: Arc::from(name),
            scheme,
            authority,
            base_path,
            connect_timeout: raw.connect_timeout.value.0,
            request_timeout: raw.request_timeout.value.0,
            body_idle_timeout: raw.body_idle_timeout.value.0,
            ca_file: self.ca_file(raw.ca_file.as_ref())?,
            http2_only: raw.http2_only,
            http1_only,
            http2_max_streams: raw.http2_max_streams.value,
            pool_max_idle_per_host: raw.pool_max_idle_per_host.value,
            pool_idle_timeout: raw.pool_idle_timeout.value.0,
            max_requests: raw.max_requests.value,
            url_at: raw.url.referenced,
        })
    }

    fn forward(
        &self,
        raw: &RawForward,
        parent: Option<&ForwardPolicy>,
        claims: &mut Vec<String>,
    ) -> Result<ForwardPolicy, ConfigError> {
        let strip_authorization = raw
            .strip_authorization
            .or(parent.map(|p| p.strip_authorization))
            .unwrap_or(false);
        let cors_preflight = raw
            .cors_preflight
            .or(parent.map(|p| p.cors_preflight))
            .unwrap_or(false);
        let (identity_headers, remove_headers) = match (&raw.identity_headers, parent) {
            (Some(map), _) => self.identity_headers(map, claims)?,
            (None, Some(p)) => (p.identity_headers.clone(), p.remove_headers.clone()),
            (None, None) => {
                let unknown = |text: &str| {
                    Spanned::new(text.to_owned(), Location::UNKNOWN, Location::UNKNOWN)
                };
                let defaults = SpannedPairs(
                    [
                        ("X-Auth-Client-Id", "client_id"),
                        ("X-Auth-Scopes", "scope"),
                        ("X-Auth-Subject", "sub"),
                    ]
                    .into_iter()
                    .map(|(h, c)| (unknown(h), unknown(c)))
                    .collect(),
                );
                self.identity_headers(&defaults, claims)?
            }
        };
        let remove_headers = match &raw.remove_headers {
            None => remove_headers,
            Some(names) => {
                let listed = self.removed_header_names(names)?;
                RemovedHeaders::new(remove_headers.iter().cloned().chain(listed), [])
            }
        };
        Ok(ForwardPolicy {
            strip_authorization,
            cors_preflight,
            identity_headers,
            remove_headers,
        })
    }

    /// `trusted_proxies`: CIDR blocks, or single addresses, each refused at
    /// its own place.
    fn trusted_proxies(&self, list: &[Spanned<String>]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        list.iter()
            .map(|spanned| {
                let entry = &spanned.value;
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .ok()
                    // Peers are compared as IPv4 when IPv4-mapped: a mapped
                    // block would never match.
                    .filter(|net| match net {
                        ipnet::IpNet::V6(v6) => v6.addr().to_ipv4_mapped().is_none(),
                        ipnet::IpNet::V4(_) => true,
                    })
                    .ok_or_else(|| {
                        self.err(
                            spanned.referenced,
                            format!(
                                "trusted_proxies: `{entry}` is neither an address nor a CIDR block (10.0.0.0/8, fd00::/8; IPv4 as IPv4, not ::ffff:)"
                            ),
                        )
                    })
            })
            .collect()
    }

    /// `forward.remove_headers`: header names, none that frames or routes
    /// the request (nor `Authorization`, which `strip_authorization` covers);
    /// each refused at its own place.
    fn removed_header_names(
        &self,
        names: &[Spanned<String>],
    ) -> Result<Vec<HeaderName>, ConfigError> {
        const KEPT: [&str; 7] = [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "te",
            "authorization",
        ];
        names
            .iter()
            .map(|spanned| {
                let name = &spanned.value;
                let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    self.err(spanned.referenced, format!("`{name}` is not a header name"))
                })?;
                // Removal covers every spelling (`content_length` too).
                if KEPT.contains(&dashed_spelling(parsed.as_str()).as_str()) {
                    return Err(self.err(
                        spanned.referenced,
                        format!(
                            "remove_headers cannot remove `{name}` (use strip_authorization for Authorization)"
                        ),
                    ));
                }
                Ok(parsed)
            })
            .collect()
    }

    /// `identity_headers`: header name → claim name, in the order written;
    /// a bad header name is told at its key, a missing claim at its value.
    #[allow(clippy::type_complexity)]
    fn identity_headers(
        &self,
        map: &SpannedPairs,
        claims: &mut Vec<String>,
    ) -> Result<(Vec<(HeaderName, usize)>, RemovedHeaders), ConfigError> {
        let mut set = Vec::new();
        let mut remove = Vec::new();
        for (key, value) in &map.0 {
            let (header, claim) = (&key.value, &value.value);
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                self.err(
                    key.referenced,
                    format!("`{header}` is not a valid header name"),
                )
            })?;
            // In every spelling: Rack, gunicorn and PHP read `_` as `-`, PHP `.` too.
            if RESERVED_HEADERS.contains(&dashed_spelling(name.as_str()).as_str()) {
                return Err(self.err(
                    key.referenced,
                    format!("`{header}` cannot be an identity header"),
                ));
            }
            if claim.is_empty() {
                return Err(self.err(value.referenced, format!("`{header}` needs a claim name")));
            }
            // `X-User` and `x-user` are one header, and `x_user` one to the
            // many servers that read `_` (PHP `.` too) as `-`: one would silently win.
            let dashed = |name: &HeaderName| dashed_spelling(name.as_str());
            if set.iter().any(|(other, _)| dashed(other) == dashed(&name)) {
                return Err(self.err(
                    key.referenced,
                    format!("`{header}` is another spelling of an identity header already listed"),
                ));
            }
            let slot = match claims.iter().position(|c| c == claim) {
                Some(slot) => slot,
                None => {
                    claims.push(claim.clone());
                    claims.len() - 1
                }
            };
            remove.push(name.clone());
            set.push((name, slot));
        }
        Ok((set, remove.into_iter().collect()))
    }

    fn methods(&self, route: &Spanned<RawRoute>) -> Result<Option<Vec<Method>>, ConfigError> {
        let Some(methods) = &route.value.methods else {
            return Ok(None);
        };
        if methods.value.is_empty() {
            return Err(self.err(
                methods.referenced,
                "methods must not be empty (omit it to allow every method)",
            ));
        }
        let mut parsed: Vec<Method> = Vec::with_capacity(methods.value.len());
        for spanned in &methods.value {
            let m = &spanned.value;
            let method = Method::from_bytes(m.as_bytes())
                .ok()
                // A token (RFC 9110 9.1: `M-SEARCH`, `VERSION-CONTROL` too)
                // with no lower-case letter, as requests are held to, and a
                // letter at least: `*` would read as "every method" to a
                // reader, and serve only a method named `*`.
                .filter(|_| {
                    !m.bytes().any(|b| b.is_ascii_lowercase())
                        && m.bytes().any(|b| b.is_ascii_uppercase())
                })
                .ok_or_else(|| {
                    self.err(
                        spanned.referenced,
                        format!("`{m}` is not an HTTP method (use upper case, e.g. GET)"),
                    )
                })?;
            if parsed.contains(&method) {
                return Err(self.err(spanned.referenced, format!("method `{m}` listed twice")));
            }
            if crate::routes::never_forwarded(&method) {
                return Err(self.err(
                    spanned.referenced,
                    format!("`{m}` is never forwarded (scopegate answers it with 501)"),
                ));
            }
            parsed.push(method);
        }
        Ok(Some(parsed))
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        spanned: &Spanned<RawRoute>,
        methods: &Option<Vec<Method>>,
        upstreams: &HashMap<&str, usize>,
        issuers: &HashMap<&str, usize>,
        introspecting: &[bool],
        default_forward: &Arc<ForwardPolicy>,
        claims: &mut Vec<String>,
    ) -> Result<Route, ConfigError> {
        let raw = &spanned.value;
        let upstream = *upstreams.get(raw.upstream.value.as_str()).ok_or_else(|| {
            self.err(
                raw.upstream.referenced,
                format!("unknown upstream `{}`", raw.upstream.value),
            )
        })?;
        let public = match raw.auth.as_ref().map(|a| a.value.as_str()) {
            None | Some("bearer") => false,
            Some("none") => true,
            Some(other) => {
                return Err(self.err(
                    raw.auth
                        .as_ref()
                        .map_or(spanned.referenced, |a| a.referenced),
                    format!("auth must be `bearer` or `none`, not `{other}`"),
                ))
            }
        };
        let access = if public {
            // At the first of them written (`scopes: []` lists none).
            let listed = [
                (!raw.scopes.value.is_empty()).then_some(raw.scopes.referenced),
                raw.any_scopes.as_ref().map(|l| l.referenced),
                raw.issuers.as_ref().map(|l| l.referenced),
            ]
            .into_iter()
            .flatten()
            .min_by_key(|at| (at.line(), at.column()));
            if let Some(at) = listed {
                return Err(self.err(
                    at,
                    "a route with `auth: none` cannot list scopes, any_scopes or issuers",
                ));
            }
            Access::Public
        } else {
            let any_scopes = match &raw.any_scopes {
                None => Vec::new(),
                // No token holds one of none: read as "no requirement", it
                // would open the route to every valid token.
                Some(list) if list.value.is_empty() => {
                    return Err(self.err(
                        list.referenced,
                        "any_scopes must not be empty (omit it to require no scope)",
                    ));
                }
                Some(list) => self.scope_tokens(&list.value, "")?,
            };
            let scopes =
                ScopeRequirement::new(self.scope_tokens(&raw.scopes.value, "")?, any_scopes)
                    .map_err(|e| self.err(spanned.referenced, e))?;
            let issuers = match &raw.issuers {
                None => None,
                Some(list) => {
                    if list.value.is_empty() {
                        return Err(self.err(list.referenced, "issuers must not be empty"));
                    }
                    let mut idx = Vec::new();
                    for item in &list.value {
                        let name = &item.value;
                        let i = *issuers.get(name.as_str()).ok_or_else(|| {
                            self.err(item.referenced, format!("unknown issuer `{name}`"))
                        })?;
                        if idx.contains(&i) {
                            return Err(
                                self.err(item.referenced, format!("issuer `{name}` listed twice"))
                            );
                        }
                        idx.push(i);
                    }
                    Some(idx)
                }
            };
            let serving: Vec<usize> = match &issuers {
                Some(list) => list.clone(),
                None => (0..introspecting.len()).collect(),
            };
            let mut introspectors = serving
                .into_iter()
                .filter(|i| introspecting.get(*i).copied().unwrap_or(false));
            let introspector = introspectors.next();
            if introspectors.next().is_some() {
                return Err(self.err(
                    raw.issuers
                        .as_ref()
                        .map_or(spanned.referenced, |l| l.referenced),
                    "more than one introspecting issuer serves this route; list one in `issuers:`",
                ));
            }
            Access::Bearer {
                scopes,
                issuers,
                introspector,
            }
        };
        let forward = match &raw.forward {
            None => Arc::clone(default_forward),
            Some(over) => Arc::new(self.forward(over, Some(default_forward), claims)?),
        };
        let name = match raw.name.as_ref().map(|n| (&n.value, n.referenced)) {
            Some((n, at)) if crate::server::pipeline::RESERVED_ROUTE_NAMES.contains(&n.as_str()) => {
                return Err(self.err(
                    at,
                    format!("route name `{n}` is reserved: it labels requests no route serves (unmatched ones, the built-in authorization server's, the resource metadata)"),
                ))
            }
            Some((n, _)) if !n.is_empty() => n.clone(),
            Some((_, at)) => return Err(self.err(at, "route name must not be empty")),
            None => match methods {
                Some(m) => format!(
                    "{} {}",
                    m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
                    raw.path.value
                ),
                None => raw.path.value.clone(),
            },
        };
        Ok(Route {
            name: Arc::from(name),
            index: 0,
            upstream,
            access,
            forward,
            path_at: raw.path.referenced,
        })
    }
}

/// `typ` values compare case-insensitively and may omit `application/` (RFC 7515 4.1.9).
pub fn normalize_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_client_and_user_hashes() {
        let client = Client {
            client_id: "svc".into(),
            secret_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into()),
            grants: vec![Grant::ClientCredentials],
            scopes: vec!["read".into()],
            audience: "api".into(),
            redirect_uris: vec![],
            name: "Service".into(),
        };
        let user = User {
            username: "alice".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$cGFzc3dvcmQ".into(),
            scopes: None,
        };
        for shown in [format!("{client:?}"), format!("{user:?}")] {
            assert!(!shown.contains("argon2"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(format!("{client:?}").contains("svc"));
        assert!(format!("{user:?}").contains("alice"));
    }

    #[test]
    fn an_upstream_loops_only_to_a_listener_that_takes_its_address() {
        let at = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let admin = at("127.0.0.1:9090");
        for (host, port, listen, loops) in [
            ("127.0.0.1", 8080, "0.0.0.0:8080", true),
            ("127.0.0.2", 8080, "0.0.0.0:8080", true),
            ("localhost", 8080, "0.0.0.0:8080", true),
            ("0.0.0.0", 8080, "0.0.0.0:8080", true),
            ("[::1]", 8080, "0.0.0.0:8080", false),
            ("[::1]", 8080, "[::]:8080", true),
            ("127.0.0.1", 8080, "[::]:8080", true),
            ("127.0.0.2", 8080, "127.0.0.1:8080", false),
            ("[::1]", 8080, "127.0.0.1:8080", false),
            ("[::]", 8080, "127.0.0.1:8080", false),
            ("localhost", 8080, "[::1]:8080", true),
            ("127.0.0.1", 3000, "0.0.0.0:8080", false),
            ("10.0.0.5", 8080, "0.0.0.0:8080", false),
            ("app.internal", 8080, "0.0.0.0:8080", false),
            ("127.0.0.1", 9090, "0.0.0.0:8080", true),
            ("127.0.0.1", 0, "127.0.0.1:0", false),
            ("[::ffff:127.0.0.1]", 8080, "0.0.0.0:8080", true),
            ("[::ffff:127.0.0.1]", 8080, "127.0.0.1:8080", true),
            ("[::ffff:0.0.0.0]", 8080, "127.0.0.1:8080", true),
            ("127.0.0.1", 8080, "[::ffff:127.0.0.1]:8080", true),
            ("[::ffff:10.0.0.5]", 8080, "0.0.0.0:8080", false),
        ] {
            assert_eq!(
                reaches_itself(host, port, &[at(listen), admin]),
                loops,
                "{host}:{port} against {listen}"
            );
        }
    }

    /// A URL's port is used as written or refused: never one the parser
    /// kept but could not read, which clients take for the default port.
    #[test]
    fn a_url_port_is_one_a_client_connects_to() {
        for good in [
            "http://127.0.0.1:3000",
            "http://127.0.0.1",
            "https://[::1]:65535/x",
            "https://[::1]/x",
            "http://h:0080",
        ] {
            assert!(http_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://127.0.0.1:300000",
            "http://127.0.0.1:3000x",
            "http://[::1]:65536",
            "http://h:0",
            "http://h:+80",
            "http://h:",
            "http://[::1]:",
        ] {
            let message = http_url(bad).map(|_| ()).unwrap_err();
            assert!(
                message.contains("has no valid port (1-65535)"),
                "{bad}: {message}"
            );
        }
    }

    /// Only an issuer written as an http(s) URL is checked as one: an
    /// `iss` may be any string (`accounts.google.com`).
    #[test]
    fn an_issuer_is_read_as_a_url_only_when_written_as_one() {
        for url in ["https://a", "HTTP://a:1", "Https://idp/x"] {
            assert!(has_http_scheme(url), "{url}");
        }
        for not in [
            "accounts.google.com",
            "urn:idp",
            "http:/a",
            "https:",
            "",
            "é",
        ] {
            assert!(!has_http_scheme(not), "{not}");
        }
    }

    #[test]
    fn a_refused_url_is_quoted_without_its_user_information() {
        for (value, fragment) in [
            (
                "https://svc:pa55word@idp.test/#x",
                "`https://***@idp.test/#x`",
            ),
            (
                "ftp://svc:pa55word@idp.test/",
                "must not carry user:password@",
            ),
            (
                "https://svc:pa55word @idp.test/",
                "`https://***@idp.test/` is not a URL",
            ),
            ("svc:pa55word @idp.test", "(a URL with an @, not shown)"),
            ("https://idp.test/#x", "`https://idp.test/#x`"),
        ] {
            let message = http_url(value).unwrap_err();
            assert!(message.contains(fragment), "{value}: {message}");
            assert!(!message.contains("pa55word"), "{value}: {message}");
        }
    }
}
