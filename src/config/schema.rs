//! The YAML file as written by people: every key checked, every default explicit.
//!
//! These types only exist between parsing and validation; the rest of scopegate
//! sees the validated types in [`super::validate`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A duration written as humantime text (`5s`, `1h 30m`), for fields kept
/// with their location so that a check of the value can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bounded_duration::deserialize(deserializer).map(HumanDuration)
    }
}

/// Durations as humantime text, at most [`bounded_duration::MAX`]: a longer
/// one is no setting anybody means, and added to a clock it would overflow.
pub mod bounded_duration {
    use std::time::Duration;

    use serde::{de::Error as _, Deserializer};

    /// The longest duration any setting takes: ten years (of humantime's
    /// 365.25 days, so that it prints as `10years`).
    pub const MAX: Duration = Duration::from_secs(10 * 31_557_600);

    /// Reads humantime text (`5s`, `1h 30m`) and refuses more than [`MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let duration: Duration = humantime_serde::deserialize(deserializer)?;
        if duration > MAX {
            return Err(D::Error::custom(format!(
                "duration {} is longer than the most any setting takes ({})",
                humantime::format_duration(duration),
                humantime::format_duration(MAX)
            )));
        }
        Ok(duration)
    }
}

/// An optional key that is written must have a value: YAML's null (`~`, or
/// nothing after the colon, as a list whose items are all commented out
/// leaves it) would otherwise read as the key left out, and for the lists
/// that restrict (a route's `methods` and `issuers`, a user's `scopes`) that
/// means no restriction at all.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "has no value (null): write the value, or leave the key out",
        )),
    }
}

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The proxy listener.
    #[serde(default)]
    pub server: RawServer,
    /// The admin listener (metrics and probes).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Token issuers whose tokens routes accept.
    #[serde(default)]
    pub issuers: Vec<Spanned<RawIssuer>>,
    /// Named upstream resource servers.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// Default forwarding behaviour; routes may override it.
    #[serde(default)]
    pub forward: RawForward,
    /// Addresses (CIDR blocks or single IPs) of the proxies in front whose
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are passed on, each kept
    /// with its place.
    #[serde(default, deserialize_with = "present")]
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// The verified-token cache.
    #[serde(default)]
    pub cache: RawCache,
    /// How request paths are matched to routes (case, trailing slash).
    #[serde(default)]
    pub route_matching: RawRouteMatching,
    /// The route → scope map.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// RFC 9728 protected resource metadata, served and advertised in challenges.
    #[serde(default, deserialize_with = "present")]
    pub resource: Option<Spanned<RawResource>>,
    /// The built-in authorization server.
    #[serde(default, deserialize_with = "present")]
    pub authorization_server: Option<Spanned<RawAuthorizationServer>>,
}

/// `authorization_server:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorizationServer {
    /// Issuer identifier (`iss` of its tokens); it becomes an accepted issuer.
    pub issuer: Spanned<String>,
    /// Issuer name used by routes and metrics.
    #[serde(default = "default_as_name")]
    pub name: Spanned<String>,
    /// Token endpoint path, e.g. `/oauth2/token` or `/auth/v2/accesstoken`.
    #[serde(default = "default_token_path")]
    pub token_path: Spanned<String>,
    /// Authorization endpoint path (authorization code grant).
    #[serde(default = "default_authorize_path")]
    pub authorize_path: Spanned<String>,
    /// Introspection endpoint path (RFC 7662).
    #[serde(default = "default_introspection_path")]
    pub introspection_path: Spanned<String>,
    /// Revocation endpoint path (RFC 7009).
    #[serde(default = "default_revocation_path")]
    pub revocation_path: Spanned<String>,
    /// JWKS path.
    #[serde(default = "default_jwks_path")]
    pub jwks_path: Spanned<String>,
    /// PEM signing keys; the first signs, all verify.
    #[serde(default)]
    pub signing_keys: Vec<Spanned<RawSigningKey>>,
    /// Access token lifetime.
    #[serde(default = "default_access_ttl")]
    pub access_token_ttl: Spanned<HumanDuration>,
    /// Refresh token lifetime (each rotation starts a new one).
    #[serde(default = "default_refresh_ttl")]
    pub refresh_token_ttl: Spanned<HumanDuration>,
    /// Rotation never extends a refresh family past this age.
    #[serde(default = "default_family_age")]
    pub refresh_family_max_age: Spanned<HumanDuration>,
    /// How long after a rotation the replaced refresh token may be used
    /// once more, by a client whose answer was lost, instead of reading as a
    /// replay (0s: never, RFC 9700's strict reading).
    #[serde(default = "default_reuse_grace")]
    pub refresh_token_reuse_grace: Spanned<HumanDuration>,
    /// `standard` (RFC 6749) or `apigee` (the seeds' sample).
    #[serde(default = "default_response_style")]
    pub response_style: Spanned<String>,
    /// `memory`, `{ file: path }` or `{ redis: url }`.
    #[serde(default, deserialize_with = "present")]
    pub store: Option<Spanned<RawStore>>,
    /// Registered clients.
    #[serde(default)]
    pub clients: Vec<Spanned<RawClient>>,
    /// Resource owners for the password and authorization code grants.
    #[serde(default)]
    pub users: Vec<Spanned<RawUser>>,
    /// Serve the endpoints at an `http://` issuer beyond this host: only
    /// where something the gateway cannot see encrypts every client's hop
    /// (a service mesh's mutual TLS), as RFC 6749 3.2 requires TLS.
    #[serde(default)]
    pub allow_plain_http: bool,
}

/// A signing key file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKey {
    /// Key id published in the JWKS and the token header.
    pub kid: String,
    /// `ES256`, `RS256`, `PS256` or `EdDSA`.
    pub alg: String,
    /// PKCS#8 PEM private key.
    pub private_key_file: String,
}

/// The state store: `memory`, or a mapping naming one backend. Only these
/// two forms: a list (`[memory]`) is refused rather than read field by field
/// into a file store, as serde reads a struct written as a sequence.
#[derive(Debug)]
pub enum RawStore {
    /// `memory`.
    Name(String),
    /// `{ file: path }` or `{ redis: url, ... }`: which one, and whether its
    /// fields go together, is checked in validation, at each field's place.
    Backend(Box<RawStoreBackend>),
}

impl<'de> Deserialize<'de> for RawStore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Store;
        impl<'de> serde::de::Visitor<'de> for Store {
            type Value = RawStore;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the store: `memory`, `{ file: PATH }` or `{ redis: URL }`")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RawStore, E> {
                Ok(RawStore::Name(name.to_owned()))
            }
            // Read straight from the parser (not buffered, as an untagged
            // enum would): each field keeps its own place.
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawStore, A::Error> {
                RawStoreBackend::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|backend| RawStore::Backend(Box::new(backend)))
            }
        }
        deserializer.deserialize_any(Store)
    }
}

/// `store: { file: path }` or `store: { redis: url, ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreBackend {
    /// The redb file.
    #[serde(default, deserialize_with = "present")]
    pub file: Option<Spanned<String>>,
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS.
    #[serde(default, deserialize_with = "present")]
    pub redis: Option<Spanned<String>>,
    /// PEM certificates that sign a `rediss://` server's (default: the
    /// Mozilla roots).
    #[serde(default, deserialize_with = "present")]
    pub ca_file: Option<Spanned<String>>,
    /// A file holding the redis password (a Secret's volume), in place of
    /// one in the URL (which a ConfigMap would show).
    #[serde(default, deserialize_with = "present")]
    pub password_file: Option<Spanned<String>>,
    /// An environment variable holding the redis password, likewise.
    #[serde(default, deserialize_with = "present")]
    pub password_env: Option<Spanned<String>>,
}

impl std::fmt::Debug for RawStoreBackend {
    /// The URL's password redacted, as in the validated store config: a
    /// config printed while debugging must not hand out the store.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStoreBackend")
            .field("file", &self.file.as_ref().map(|s| &s.value))
            .field(
                "redis",
                &self
                    .redis
                    .as_ref()
                    .map(|s| crate::issuer::store::redact_url(&s.value)),
            )
            .field("ca_file", &self.ca_file.as_ref().map(|s| &s.value))
            .field(
                "password_file",
                &self.password_file.as_ref().map(|s| &s.value),
            )
            .field(
                "password_env",
                &self.password_env.as_ref().map(|s| &s.value),
            )
            .finish()
    }
}

/// A registered client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// The client id (API key).
    pub client_id: Spanned<String>,
    /// Argon2 PHC hash of the secret (`scopegate hash-secret`); absent for public clients.
    #[serde(default, deserialize_with = "present")]
    pub client_secret_hash: Option<Spanned<String>>,
    /// Allowed grants, each kept with its place (the default's is unknown).
    #[serde(default = "default_grants")]
    pub grants: Vec<Spanned<String>>,
    /// Scopes the client may request, each kept with its place.
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// `aud` of its access tokens.
    pub audience: Spanned<String>,
    /// Registered redirect URIs (authorization code grant), each kept
    /// with its place.
    #[serde(default)]
    pub redirect_uris: Vec<Spanned<String>>,
    /// Display name on the consent page.
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
}

/// A resource owner.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// Sign-in name (becomes `sub`).
    pub username: Spanned<String>,
    /// Argon2 PHC hash of the password.
    pub password_hash: Spanned<String>,
    /// Scopes this user may grant (absent: any the client may request),
    /// each kept with its place.
    #[serde(default, deserialize_with = "present")]
    pub scopes: Option<Vec<Spanned<String>>>,
}

/// `server:`: the proxy listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address the proxy listens on.
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Optional inbound TLS.
    #[serde(default, deserialize_with = "present")]
    pub tls: Option<Spanned<RawTls>>,
    /// Largest accepted request head; larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Spanned<usize>,
    /// Runtime worker threads; 0 means one per core.
    #[serde(default = "default_workers")]
    pub workers: Spanned<usize>,
    /// How long in-flight requests may take to finish at shutdown.
    #[serde(default = "default_shutdown_grace", with = "bounded_duration")]
    pub shutdown_grace: Duration,
    /// How long to keep serving (unready) after SIGTERM before draining.
    #[serde(default = "default_shutdown_delay", with = "bounded_duration")]
    pub shutdown_delay: Duration,
    /// How long a client may take to send a request head (slowloris guard).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Spanned<HumanDuration>,
    /// Open client connections at most; further ones wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// How long a client connection may stay open with no request in flight,
    /// or with a response its client takes nothing of.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Spanned<HumanDuration>,
    /// Give each request an `X-Request-Id` (kept from a trusted proxy).
    #[serde(default = "default_true")]
    pub request_id: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: None,
            max_header_bytes: default_max_header_bytes(),
            workers: default_workers(),
            shutdown_grace: default_shutdown_grace(),
            shutdown_delay: default_shutdown_delay(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            request_id: true,
        }
    }
}

/// `server.tls`: certificate chain and key, PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `admin:`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address for `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// One entry of `issuers:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Short name used by routes and metrics.
    pub name: Spanned<String>,
    /// Exact value of the `iss` claim.
    pub issuer: Spanned<String>,
    /// `aud` must contain one of these, each kept with its place (an empty
    /// one is told at itself).
    #[serde(default)]
    pub audiences: Vec<Spanned<String>>,
    /// `client_id` must be one of these: for an identity provider whose
    /// access tokens carry no `aud` (Amazon Cognito). Each kept with its
    /// place, as `audiences`.
    #[serde(default)]
    pub client_ids: Vec<Spanned<String>>,
    /// Where the issuer publishes its keys.
    #[serde(default, deserialize_with = "present")]
    pub jwks_uri: Option<Spanned<String>>,
    /// A local JWKS file instead of `jwks_uri`.
    #[serde(default, deserialize_with = "present")]
    pub jwks_file: Option<Spanned<String>>,
    /// Extra CA bundle (PEM) for the JWKS endpoint and discovery, over
    /// https (refused where neither is).
    #[serde(default, deserialize_with = "present")]
    pub ca_file: Option<Spanned<String>>,
    /// Allowed signature algorithms, the list and each name kept with its
    /// place (an empty list is told at the list, a bad name at the name).
    #[serde(default = "default_algorithms")]
    pub algorithms: Spanned<Vec<Spanned<String>>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Spanned<HumanDuration>,
    /// Required JOSE `typ` header (RFC 9068: `at+jwt`).
    #[serde(default, deserialize_with = "present")]
    pub require_typ: Option<Spanned<String>>,
    /// Claim that carries the scopes: `scope`, `scp`, `roles` or `permissions`.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: Spanned<String>,
    /// How often keys are refreshed when the IdP sends no Cache-Control.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_interval: Spanned<HumanDuration>,
    /// Least time between two fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_refetch_cooldown: Spanned<HumanDuration>,
    /// Timeout of one JWKS fetch.
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout: Spanned<HumanDuration>,
    /// RFC 7662 introspection for opaque tokens.
    #[serde(default, deserialize_with = "present")]
    pub introspection: Option<Spanned<RawIntrospection>>,
    /// Fetch RFC 8414 / OpenID metadata for `jwks_uri` and the introspection endpoint.
    #[serde(default)]
    pub discovery: bool,
    /// Let an `https` issuer's key and introspection endpoints be plain
    /// `http` beyond this host (an in-cluster Service on a trusted network).
    #[serde(default)]
    pub allow_plain_http_endpoints: bool,
}

/// `issuers[].introspection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// The introspection endpoint; may come from discovery instead.
    #[serde(default, deserialize_with = "present")]
    pub endpoint: Option<Spanned<String>>,
    /// scopegate's client id at the authorization server.
    pub client_id: Spanned<String>,
    /// File holding the client secret (a mounted Secret).
    #[serde(default, deserialize_with = "present")]
    pub client_secret_file: Option<Spanned<String>>,
    /// Environment variable holding the client secret.
    #[serde(default, deserialize_with = "present")]
    pub client_secret_env: Option<Spanned<String>>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default = "default_auth_method")]
    pub auth_method: Spanned<String>,
    /// Timeout of one introspection call.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Spanned<HumanDuration>,
    /// Upper bound on how long an active answer is cached (never past `exp`).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Spanned<HumanDuration>,
    /// How long an inactive answer is cached; 0 turns it off.
    #[serde(default = "default_negative_cache_ttl")]
    pub negative_cache_ttl: Spanned<HumanDuration>,
    /// Extra CA bundle (PEM) for the endpoint, which must then be https.
    #[serde(default, deserialize_with = "present")]
    pub ca_file: Option<Spanned<String>>,
    /// Take only answers that name the token an access token (`token_type`,
    /// `token_use` or `typ`), for servers whose refresh-token answers name
    /// no kind at all.
    #[serde(default)]
    pub require_token_type: bool,
    /// Take only answers whose `aud` names one of the issuer's `audiences`,
    /// refusing those without `aud`, for servers that always send it: a
    /// token they issued for another API is then refused even if their
    /// answer left its audience out.
    #[serde(default, deserialize_with = "present")]
    pub require_audience: Option<Spanned<bool>>,
}

/// `resource:`: RFC 9728 protected resource metadata.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    /// The resource identifier (an https URL).
    pub resource: Spanned<String>,
    /// Authorization servers (issuer identifiers) clients should use.
    #[serde(default)]
    pub authorization_servers: Vec<Spanned<String>>,
    /// Scopes the resource understands, each kept with its place.
    #[serde(default)]
    pub scopes_supported: Vec<Spanned<String>>,
    /// Human-readable name.
    #[serde(default, deserialize_with = "present")]
    pub resource_name: Option<String>,
    /// Documentation URL.
    #[serde(default, deserialize_with = "present")]
    pub resource_documentation: Option<Spanned<String>>,
}

/// One entry of `upstreams:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Base URL: `http://` or `https://`.
    pub url: Spanned<String>,
    /// Timeout to establish a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Spanned<HumanDuration>,
    /// Timeout until the upstream's response head arrives.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Spanned<HumanDuration>,
    /// Longest silence allowed between parts of the upstream's response body;
    /// past it the response is cut off (the client sees it end early).
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: Spanned<HumanDuration>,
    /// Extra CA bundle (PEM) for an https upstream.
    #[serde(default, deserialize_with = "present")]
    pub ca_file: Option<Spanned<String>>,
    /// Speak HTTP/2 only to this upstream: without TLS (h2c) to a
    /// plain-http one; an https one must agree to h2 by ALPN.
    #[serde(default)]
    pub http2_only: bool,
    /// Speak HTTP/1.1 only to this upstream: to an https one, offer no
    /// ALPN, for an upstream whose HTTP/2 is broken or limited.
    #[serde(default, deserialize_with = "present")]
    pub http1_only: Option<Spanned<bool>>,
    /// Requests one HTTP/2 connection carries at once before another is
    /// opened (keep it at most the upstream's own
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: Spanned<usize>,
    /// Idle pooled connections kept per host (room for them is reserved
    /// up front, so it is bounded).
    #[serde(default = "default_pool_idle")]
    pub pool_max_idle_per_host: Spanned<usize>,
    /// A pooled connection idle longer than this is never used again (keep
    /// it below the upstream's own keep-alive timeout).
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Spanned<HumanDuration>,
    /// Requests in flight to this upstream at once, from every client
    /// together (until each answer's body has ended); more get 503. Bounds
    /// the connections and memory clients can make the gateway hold.
    #[serde(default = "default_max_requests")]
    pub max_requests: Spanned<usize>,
}

/// `forward:` and a route's `forward:` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// Remove the `Authorization` header before forwarding.
    #[serde(default, deserialize_with = "present")]
    pub strip_authorization: Option<bool>,
    /// Pass a CORS preflight for a method the route serves to the upstream
    /// without a token (browsers send preflights without credentials).
    #[serde(default, deserialize_with = "present")]
    pub cors_preflight: Option<bool>,
    /// Header name → claim name, set from the verified token.
    #[serde(default, deserialize_with = "present")]
    pub identity_headers: Option<SpannedPairs>,
    /// Further headers removed from every request, in every spelling (ones
    /// the upstream trusts that scopegate does not know of), each kept with
    /// its place.
    #[serde(default, deserialize_with = "present")]
    pub remove_headers: Option<Vec<Spanned<String>>>,
}

/// A mapping of text to text (`identity_headers`) whose keys and values
/// are each kept with their place, in the order written: an error about one
/// entry is told at its own key or value, not at the mapping. Keys written
/// twice are refused by the parser, as in every mapping.
#[derive(Debug)]
pub struct SpannedPairs(pub Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for SpannedPairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = SpannedPairs;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of names to names")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(SpannedPairs(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// `route_matching:`: set it to what the upstream's router does, so that a
/// spelling it takes for a route's path is held to that route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteMatching {
    /// `false`: `/ADMIN` is routed as `/admin` (Express, ASP.NET Core).
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    /// `strict` (default) or `ignore`: `/admin/` is routed as `/admin`.
    #[serde(default = "default_trailing_slash")]
    pub trailing_slash: Spanned<String>,
}

impl Default for RawRouteMatching {
    fn default() -> Self {
        Self {
            case_sensitive: true,
            trailing_slash: default_trailing_slash(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_trailing_slash() -> Spanned<String> {
    unspanned("strict".to_owned())
}

/// `cache:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Verified tokens kept at most.
    #[serde(default = "default_cache_entries")]
    pub max_entries: Spanned<u64>,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
        }
    }
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name used in metrics and logs; defaults to the methods and path.
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Spanned<String>>,
    /// Path pattern: `/orders/{id}`, `/orders/{*rest}`.
    pub path: Spanned<String>,
    /// Allowed methods, each kept with its place; absent means any.
    #[serde(default, deserialize_with = "present")]
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Name of an entry of `upstreams:`.
    pub upstream: Spanned<String>,
    /// Every listed scope is required; the list and each scope are kept
    /// with their places.
    #[serde(default = "no_scopes")]
    pub scopes: Spanned<Vec<Spanned<String>>>,
    /// At least one listed scope is required (so never written empty);
    /// each is kept with its place.
    #[serde(default, deserialize_with = "present")]
    pub any_scopes: Option<Spanned<Vec<Spanned<String>>>>,
    /// `bearer` (default) or `none` for a public route.
    #[serde(default, deserialize_with = "present")]
    pub auth: Option<Spanned<String>>,
    /// Accept tokens only from these issuers, each kept with its place.
    #[serde(default, deserialize_with = "present")]
    pub issuers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Per-route forwarding override.
    #[serde(default, deserialize_with = "present")]
    pub forward: Option<RawForward>,
}

fn no_scopes() -> Spanned<Vec<Spanned<String>>> {
    unspanned(Vec::new())
}

fn default_listen() -> Spanned<String> {
    unspanned("0.0.0.0:8080".to_owned())
}
fn default_admin_listen() -> Spanned<String> {
    unspanned("127.0.0.1:9090".to_owned())
}
fn default_max_header_bytes() -> Spanned<usize> {
    unspanned(16 * 1024)
}
fn default_idle_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(60)))
}

fn default_workers() -> Spanned<usize> {
    unspanned(0)
}

fn default_max_connections() -> Spanned<usize> {
    unspanned(10_000)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_header_read_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(10)))
}
fn default_algorithms() -> Spanned<Vec<Spanned<String>>> {
    unspanned(vec![
        unspanned("RS256".to_owned()),
        unspanned("ES256".to_owned()),
    ])
}
fn default_leeway() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(30)))
}
fn default_scope_claim() -> Spanned<String> {
    unspanned("scope".to_owned())
}
fn default_jwks_refresh() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(300)))
}
fn default_jwks_cooldown() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(30)))
}
fn default_jwks_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(5)))
}
fn default_as_name() -> Spanned<String> {
    unspanned("local".to_owned())
}
fn default_token_path() -> Spanned<String> {
    unspanned("/oauth2/token".to_owned())
}
fn default_authorize_path() -> Spanned<String> {
    unspanned("/oauth2/authorize".to_owned())
}
fn default_introspection_path() -> Spanned<String> {
    unspanned("/oauth2/introspect".to_owned())
}
fn default_revocation_path() -> Spanned<String> {
    unspanned("/oauth2/revoke".to_owned())
}
fn default_jwks_path() -> Spanned<String> {
    unspanned("/.well-known/jwks.json".to_owned())
}
fn default_access_ttl() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(3600)))
}
fn default_refresh_ttl() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(1800)))
}
fn default_family_age() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(30 * 24 * 3600)))
}
fn default_reuse_grace() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::ZERO))
}
fn default_response_style() -> Spanned<String> {
    unspanned("standard".to_owned())
}
fn default_grants() -> Vec<Spanned<String>> {
    vec![unspanned("client_credentials".to_owned())]
}
fn default_auth_method() -> Spanned<String> {
    unspanned("client_secret_basic".to_owned())
}
fn default_introspection_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(2)))
}
fn default_cache_ttl() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(300)))
}
fn default_negative_cache_ttl() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(5)))
}
fn default_connect_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(2)))
}
fn default_body_idle_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(60)))
}

fn default_request_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(30)))
}
fn default_pool_idle() -> Spanned<usize> {
    unspanned(64)
}
/// Envoy's default for a cluster's `max_requests` circuit breaker.
fn default_max_requests() -> Spanned<usize> {
    unspanned(1024)
}
/// RFC 9113 6.5.2 asks servers to allow at least 100.
fn default_http2_max_streams() -> Spanned<usize> {
    unspanned(100)
}
fn default_pool_idle_timeout() -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(90)))
}
fn default_cache_entries() -> Spanned<u64> {
    unspanned(100_000)
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

#[cfg(test)]
mod tests {
    /// `{:?}` of the config as read redacts a Redis URL's password, as the
    /// validated store config's does.
    #[test]
    fn debug_of_the_raw_config_hides_a_redis_password() {
        let yaml = "authorization_server:\n  issuer: http://127.0.0.1:8080\n  store: { redis: \"redis://:pw-2c9e41@127.0.0.1:6379/0\" }\n";
        let raw = crate::config::load::parse("t.yaml", yaml).unwrap();
        let shown = format!("{raw:?}");
        assert!(!shown.contains("pw-2c9e41"), "{shown}");
        assert!(
            shown.contains("redis://<redacted>@127.0.0.1:6379/0"),
            "{shown}"
        );
    }
}
