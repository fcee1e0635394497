//! The request path, top to bottom: canonicalise → match route → authenticate
//! → authorize → forward. Each phase either hands the next one what it needs or
//! ends the request with a [`GatewayError`].

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_METHOD, ALLOW, AUTHORIZATION,
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus::{Histogram, IntCounter};

use crate::admin::metrics::{Metrics, NO_ISSUER};
use crate::auth::jwt::TokenError;
use crate::auth::{admit_preflight, authorize, Authenticator, Permit, Refused, VerifiedToken};
use crate::config::{Access, Config, ResourceMetadata, Route};
use crate::error::{is_grpc, ChallengeContext, GatewayError};
use crate::issuer::store::Store;
use crate::issuer::AuthorizationServer;
use crate::proxy::headers::{announce_close, connection_names};
use crate::proxy::places::Places;
use crate::proxy::request_id::{RequestId, RequestIds, X_REQUEST_ID};
use crate::proxy::{Body, ClientInfo, Forwarder};
use crate::routes::{canonicalize, has_segments_to_resolve, Lookup, RouteTable};

/// Everything a request needs, built once from a validated [`Config`].
pub struct Gateway {
    routes: RouteTable<Route>,
    auth: Arc<Authenticator>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    challenge: ChallengeContext,
    resource: Option<ResourceMetadata>,
    auth_fingerprint: String,
    authorization_server: Option<(usize, Arc<AuthorizationServer>)>,
    hot_metrics: HotMetrics,
    tls: Option<Arc<crate::server::tls::Inbound>>,
    /// `server.request_id`: gives each request its id.
    request_ids: Option<RequestIds>,
}

/// Label lookups for the common outcomes, resolved once and then reused, so
/// an allowed request does not hash its labels into the registry's maps.
/// Series are still created on first use, like `with_label_values`.
struct HotMetrics {
    /// Per route (by [`Route::index`]).
    routes: Vec<RouteMetrics>,
    /// `decision="allow", reason="ok"` per issuer index.
    allowed: Vec<OnceLock<IntCounter>>,
    /// `decision="allow"` with `reason="public"` (a route without a token
    /// check) and `reason="preflight"` (a CORS preflight let through).
    public: OnceLock<IntCounter>,
    preflight: OnceLock<IntCounter>,
}

/// The statuses besides 200 a route's answers commonly have, whose
/// counters are kept too.
const COMMON_STATUSES: [StatusCode; 8] = [
    StatusCode::CREATED,
    StatusCode::NO_CONTENT,
    StatusCode::PARTIAL_CONTENT,
    StatusCode::NOT_MODIFIED,
    StatusCode::BAD_REQUEST,
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
];

/// One route's resolved series.
#[derive(Default)]
struct RouteMetrics {
    /// Its latency histogram.
    latency: OnceLock<Histogram>,
    /// Its `status="200"` counter per method (by [`method_slot`]).
    ok: [OnceLock<IntCounter>; METHOD_SLOTS],
    /// Per method, its counter for each of [`COMMON_STATUSES`]: made at
    /// the route's first such answer (a table of 10 000 routes would
    /// otherwise hold them all from the start).
    common: OnceLock<Box<[[OnceLock<IntCounter>; COMMON_STATUSES.len()]; METHOD_SLOTS]>>,
}

impl HotMetrics {
    fn new(routes: usize, issuers: usize) -> Self {
        Self {
            routes: (0..routes).map(|_| RouteMetrics::default()).collect(),
            allowed: (0..issuers).map(|_| OnceLock::new()).collect(),
            public: OnceLock::new(),
            preflight: OnceLock::new(),
        }
    }
}

/// `allow` (a sorted `Allow` value) with GET and HEAD among its methods.
fn with_get_and_head(allow: &HeaderValue) -> HeaderValue {
    let mut methods: Vec<&str> = allow
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .chain(["GET", "HEAD"])
        .collect();
    methods.sort_unstable();
    methods.dedup();
    HeaderValue::from_str(&methods.join(", ")).unwrap_or_else(|_| allow.clone())
}

/// WebDAV's second path (RFC 4918 10.3).
static DESTINATION: HeaderName = HeaderName::from_static("destination");
/// WebDAV's `Depth` (RFC 4918 10.2): how far below a collection a method acts.
static DEPTH: HeaderName = HeaderName::from_static("depth");

/// Route label for requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// Route label for the built-in authorization server's endpoints.
pub const AUTHORIZATION_SERVER: &str = "authorization_server";

/// Route label for the RFC 9728 protected resource metadata document.
pub const RESOURCE_METADATA: &str = "resource_metadata";

/// The route labels no configured route may take.
pub const RESERVED_ROUTE_NAMES: [&str; 3] = [UNMATCHED, AUTHORIZATION_SERVER, RESOURCE_METADATA];

/// A reload of a server without configured keys would generate a new key and
/// end every token the running one signed: it keeps the running key instead
/// (and so, the issuer's keys being the same, the verified-token cache).
fn keep_ephemeral_key(
    config: &mut Config,
    settings: &mut crate::config::AuthorizationServerSettings,
    running: &crate::config::AuthorizationServerSettings,
) -> Result<(), String> {
    settings.keys = Arc::clone(&running.keys);
    let jwks = crate::issuer::keys::jwks_document(&settings.keys);
    let key_set = crate::auth::jwks::KeySet::from_json(jwks.as_bytes())
        .map_err(|e| format!("authorization server keys: {e}"))?;
    if let Some(issuer) = config.issuers.get_mut(settings.issuer_index) {
        issuer.keys = crate::config::KeySource::Static(Arc::new(key_set));
    }
    Ok(())
}

/// A retired gateway's last requests (and a refused reload's setup) may have
/// counted under names the running config no longer has: they go with it.
impl Drop for Gateway {
    fn drop(&mut self) {
        self.metrics.forget_retired();
        tracing::debug!("a retired configuration is released");
    }
}

impl Gateway {
    /// Builds the runtime from a config. Opens the authorization server's
    /// store (a redis connection, a file) when one is configured.
    pub async fn new(config: Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        Self::build(config, metrics, None).await
    }

    /// Like [`Self::new`], keeping from `previous` what did not change: the
    /// authenticator (key sets, caches) when the issuers are the same, and the
    /// authorization server's store when its configuration is the same.
    pub async fn build(
        mut config: Config,
        metrics: Arc<Metrics>,
        previous: Option<&Gateway>,
    ) -> Result<Self, String> {
        let authorization_server = match config.authorization_server.take() {
            Some(mut settings) => {
                let running = previous.and_then(|p| p.authorization_server.as_ref());
                if let Some((_, server)) =
                    running.filter(|(_, s)| settings.ephemeral_key && s.settings().ephemeral_key)
                {
                    keep_ephemeral_key(&mut config, &mut settings, server.settings())?;
                }
                let reusable = running
                    .filter(|(_, s)| s.settings().store == settings.store)
                    .map(|(_, s)| s.store().clone());
                let store = match reusable {
                    Some(store) => store,
                    None => Store::open(&settings.store)
                        .await
                        .map_err(|e| format!("authorization_server.store does not open: {e}"))?,
                };
                Some((
                    settings.issuer_index,
                    Arc::new(AuthorizationServer::new(
                        settings,
                        store,
                        Arc::clone(&metrics),
                        running.map(|(_, s)| &**s),
                    )),
                ))
            }
            None => None,
        };
        let auth = match previous {
            Some(p) if p.auth_fingerprint == config.auth_fingerprint() => {
                Reuse::Whole(Arc::clone(&p.auth))
            }
            Some(p) => Reuse::Issuers(Arc::clone(&p.auth)),
            None => Reuse::Nothing,
        };
        // Off the runtime: building the clients and the TLS acceptor reads
        // CA bundles, certificates and keys.
        let tls = previous.and_then(|p| p.tls.clone());
        let places = previous.map(|p| p.forwarder.places()).unwrap_or_default();
        let mut gateway = tokio::task::spawn_blocking(move || {
            Self::reusing(config, metrics, auth, tls.as_ref(), &places)
        })
        .await
        .map_err(|e| format!("building the gateway failed: {e}"))??;
        gateway.authorization_server = authorization_server;
        Ok(gateway)
    }

    /// Builds from a config with no authorization server, keeping `auth`,
    /// `tls` if its certificate and key are the same, and the upstreams'
    /// `places` where they keep their names and limits.
    fn reusing(
        config: Config,
        metrics: Arc<Metrics>,
        auth: Reuse,
        tls: Option<&Arc<crate::server::tls::Inbound>>,
        places: &[(Arc<str>, Arc<Places>)],
    ) -> Result<Self, String> {
        let auth_fingerprint = config.auth_fingerprint();
        let auth = match auth {
            Reuse::Whole(auth) => auth,
            rebuilt => {
                let mut fresh = Authenticator::new(
                    config.issuers,
                    config.identity_claims,
                    config.cache_max_entries,
                    Arc::clone(&metrics),
                )?;
                if let Reuse::Issuers(previous) = rebuilt {
                    fresh.inherit_issuers(&previous);
                }
                Arc::new(fresh)
            }
        };
        let forwarder = Forwarder::new(
            config.upstreams,
            config.trusted_proxies,
            Arc::clone(&metrics),
            places,
        )?;
        let hot_metrics = HotMetrics::new(config.routes.len(), auth.issuer_count());
        let request_ids = if config.server.request_id {
            Some(RequestIds::new()?)
        } else {
            None
        };
        let tls = config
            .server
            .tls
            .as_ref()
            .map(|files| crate::server::tls::inbound(files, tls))
            .transpose()?;
        Ok(Self {
            tls,
            hot_metrics,
            request_ids,
            routes: config.routes,
            auth,
            forwarder,
            metrics,
            challenge: ChallengeContext::new(config.resource.as_ref().map(|r| r.url.as_str())),
            resource: config.resource,
            auth_fingerprint,
            authorization_server: None,
        })
    }

    /// The acceptor for inbound TLS, from this config's certificate files.
    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls
            .as_deref()
            .map(crate::server::tls::Inbound::acceptor)
    }

    /// This config's inbound certificate, which may be rotated in place.
    pub fn tls(&self) -> Option<&Arc<crate::server::tls::Inbound>> {
        self.tls.as_ref()
    }

    /// Exports when the certificate this config serves expires, once it is
    /// the one in force (at start, on a reload, after a rotation). Without
    /// TLS the gauge keeps what it had: the listener goes on with the
    /// acceptor last in force until a restart.
    pub fn export_certificate_expiry(&self) {
        let Some(inbound) = &self.tls else {
            return;
        };
        let expiry = inbound.expiry();
        if expiry.is_none() {
            tracing::warn!("the served TLS certificate's expiry does not read as X.509: scopegate_tls_certificate_expiry_timestamp_seconds is 0");
        }
        self.metrics.tls_certificate_expiry.set(expiry.unwrap_or(0));
    }

    /// The metrics it counts into (shared by every config of a server).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The authenticator (readiness, refreshers, tests).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Handles one request end to end, and records its metrics and access log.
    pub async fn handle(&self, request: Request<Incoming>, client: &ClientInfo) -> Response<Body> {
        let started = Instant::now();
        let request_id = self
            .request_ids
            .as_ref()
            .map(|ids| ids.assign(request.headers(), || self.forwarder.trusts(client)));
        let slot = method_slot(request.method());
        let method = METHOD_LABELS.get(slot).copied().unwrap_or("other");
        let grpc = is_grpc(&request);
        let matched = OnceLock::new();
        // The label of a request no route serves: set by the built-in
        // endpoints, else `unmatched`.
        let served_by = OnceLock::new();
        let mut abandoned = Abandoned {
            gateway: self,
            matched: &matched,
            served_by: &served_by,
            started,
            slot,
            method,
            request_id: request_id.as_ref(),
            armed: true,
        };
        let (route, outcome, body_left) = self
            .pipeline(request, client, request_id.as_ref(), &matched, &served_by)
            .await;
        abandoned.armed = false;
        let served_by = served_by.get().copied().unwrap_or(UNMATCHED);
        // A refusal's status as HTTP states it, for the metrics and the
        // access log, also when a gRPC client gets it as `grpc-status`.
        let (mut response, reason, status) = match outcome {
            Ok(response) => {
                let status = response.status();
                // As the decision metric says: a public route took no token,
                // and a built-in endpoint may have refused on its own.
                let reason = match route {
                    Some(route) if matches!(route.access, Access::Public) => "public",
                    Some(_) => "ok",
                    None => response
                        .extensions()
                        .get::<crate::issuer::Refused>()
                        .map_or("ok", |refused| refused.0),
                };
                (response, reason, status)
            }
            Err(error) => {
                let (reason, status) = (error.reason(), error.status());
                let mut response = if grpc {
                    error.into_grpc_response(&self.challenge)
                } else {
                    error.into_response(&self.challenge)
                };
                if route.is_some_and(|r| r.forward.cors_preflight) {
                    GatewayError::expose_to_browsers(response.headers_mut());
                }
                (response, reason, status)
            }
        };
        // An answer scopegate wrote itself to a HEAD request keeps only its
        // length: hyper leaves an HTTP/2 one's body in, which a client
        // takes for a protocol error (RFC 9113 8.1.1).
        if method == "HEAD" {
            drop_head_body(&mut response);
        }
        // The connection ends with the answer (hyper does not read a body's
        // rest as a next request), so the answer says so (RFC 9112 9.6) and
        // the client sends nothing more on it.
        if body_left {
            announce_close(response.headers_mut());
            client.linger_on_close();
        }
        // An upstream's own id stays on its answer.
        if let Some(id) = &request_id {
            if let http::header::Entry::Vacant(slot) = response.headers_mut().entry(&X_REQUEST_ID) {
                slot.insert(id.header());
            }
        }
        let route_name = route.map_or(served_by, |r| &r.name);
        let elapsed = started.elapsed();
        self.record(
            route,
            served_by,
            slot,
            method,
            Counted::Answered(status),
            elapsed.as_secs_f64(),
        );
        tracing::info!(
            target: "scopegate::access",
            route = route_name,
            method,
            status = status.as_u16(),
            reason,
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            request_id = request_id.as_ref().map_or("-", RequestId::as_str),
        );
        response
    }

    /// The phases. Returns the matched route (for labels), the outcome, and
    /// whether an HTTP/1 request body was left unread (the connection then
    /// ends with the answer).
    async fn pipeline<'a>(
        &'a self,
        request: Request<Incoming>,
        client: &ClientInfo,
        request_id: Option<&RequestId>,
        matched: &OnceLock<&'a Route>,
        served_by: &OnceLock<&'static str>,
    ) -> (
        Option<&'a Route>,
        Result<Response<Body>, GatewayError>,
        bool,
    ) {
        match self.check(&request, matched, served_by).await {
            // 5. Forward. A path that canonicalisation left as it was goes
            // upstream as received.
            Verdict::Forward { permit, rewritten } => {
                let route = permit.route();
                // RFC 9110 7.6.2: an OPTIONS request with `Max-Forwards: 0`
                // is answered here, as its final recipient (TRACE is never
                // forwarded), with the methods the path is routed for (RFC
                // 9110 9.3.7); another value goes on one less.
                if request.method() == Method::OPTIONS
                    && crate::proxy::headers::no_forwards_left(request.headers())
                {
                    let path = rewritten.as_deref().unwrap_or(request.uri().path());
                    let allow = self.allow(path);
                    let body_left = body_pending(&request) && !skip_body(request).await;
                    let mut answer = Response::new(Either::Right(Full::new(bytes::Bytes::new())));
                    if let Some(allow) = allow {
                        answer.headers_mut().insert(ALLOW, allow);
                    }
                    return (Some(route), Ok(answer), body_left);
                }
                // At the upstream's `max_requests`: refused before anything
                // went, so the body is skipped and the connection kept, as
                // for a refusal by the route.
                let admitted = match self.forwarder.admit(permit) {
                    Ok(admitted) => admitted,
                    Err(error) => {
                        let body_left = body_pending(&request) && !skip_body(request).await;
                        return (Some(route), Err(error), body_left);
                    }
                };
                let pending = body_pending(&request);
                let mut upload = None;
                let result = self
                    .forwarder
                    .forward(
                        admitted,
                        request,
                        rewritten.as_deref(),
                        client,
                        request_id,
                        &mut upload,
                    )
                    .await;
                // A failed forward leaves the body unread if it never got
                // on its way, or stopped before its end.
                let body_left =
                    result.is_err() && pending && upload.is_none_or(|u| u.ended.get().is_none());
                (Some(route), result, body_left)
            }
            Verdict::Deny(route, error) => {
                let body_left = body_pending(&request)
                    && (error.ends_connection() || !skip_body(request).await);
                (route, Err(error), body_left)
            }
            Verdict::AuthorizationServer(server, path) => {
                let mut request = request;
                let pending = body_pending(&request);
                // Only POSTs carry what the endpoints read: a body sent
                // with another method is skipped before the answer (the
                // sign-in page, the key set), so the connection goes on,
                // or is closed, said so, when it is too large or too slow.
                let reads_body = request.method() == http::Method::POST;
                let skipped_short = pending && !reads_body && !drain_body(&mut request).await;
                let form_read = (pending && reads_body).then(crate::issuer::FormRead::default);
                if let Some(read) = &form_read {
                    request.extensions_mut().insert(read.clone());
                }
                // Boxed: the endpoints' futures are large, and inline they
                // would be moved with every proxied request's future.
                let response = Box::pin(server.handle(request, &path)).await;
                // A POST's form is read only to answer it: an error may have
                // left it unread (a form too large or too slow, or refused
                // before it was read).
                let failed =
                    response.status().is_client_error() || response.status().is_server_error();
                let unread =
                    form_read.is_none_or(|read| !read.0.load(std::sync::atomic::Ordering::Relaxed));
                (
                    None,
                    Ok(response),
                    skipped_short || (pending && reads_body && failed && unread),
                )
            }
            Verdict::ResourceMetadata(resource) => {
                let body_left = body_pending(&request) && !skip_body(request).await;
                (None, Ok(resource_metadata_response(resource)), body_left)
            }
        }
    }

    /// The `Allow` value for a routed path (`None`: a route there takes
    /// any method).
    fn allow(&self, canonical_path: &str) -> Option<HeaderValue> {
        let allow = self.routes.allow(canonical_path)?;
        Some(self.with_resource_methods(canonical_path, allow))
    }

    /// `allow` with GET and HEAD added on the resource metadata's path,
    /// which is served for them whatever methods a route there has.
    fn with_resource_methods(&self, canonical_path: &str, allow: &HeaderValue) -> HeaderValue {
        match &self.resource {
            Some(resource) if canonical_path == &*resource.path => with_get_and_head(allow),
            _ => allow.clone(),
        }
    }

    /// Phases 1 to 4: canonicalise the path, match a route, authenticate,
    /// authorize. Only a [`Verdict::Forward`] carries the permit forwarding
    /// needs.
    async fn check<'a>(
        &'a self,
        request: &Request<Incoming>,
        matched: &OnceLock<&'a Route>,
        served_by: &OnceLock<&'static str>,
    ) -> Verdict<'a> {
        if let Err(e) = check_framing(request) {
            return Verdict::Deny(None, e);
        }
        // Before the path: a CONNECT's target (`host:443`) has none, and its
        // client may send tunnel bytes at once, which must not be read as a
        // next request.
        if crate::routes::never_forwarded(request.method()) {
            return Verdict::Deny(None, GatewayError::UnsupportedMethod);
        }

        // A method servers would upper-case, refused on every path (the
        // built-in endpoints' too).
        if request
            .method()
            .as_str()
            .bytes()
            .any(|b| b.is_ascii_lowercase())
        {
            return Verdict::Deny(None, GatewayError::BadMethod);
        }

        // 1. Canonicalise the path.
        let path = match canonicalize(request.uri().path()) {
            Ok(path) => path,
            Err(e) => return Verdict::Deny(None, GatewayError::BadPath(e)),
        };
        if let Some((_, server)) = &self.authorization_server {
            if server.owns(&path) {
                let _ = served_by.set(AUTHORIZATION_SERVER);
                return Verdict::AuthorizationServer(server, path.into_owned());
            }
            // Browsers match cookie paths on the path as sent.
            if server.below_sign_in(&path) || server.below_sign_in(request.uri().path()) {
                return Verdict::Deny(None, GatewayError::RouteNotFound);
            }
        }
        if let Some(resource) = &self.resource {
            // HEAD where GET is served (RFC 9110 9.3.2), as everywhere.
            let method = request.method();
            if *path == *resource.path && (method == Method::GET || method == Method::HEAD) {
                let _ = served_by.set(RESOURCE_METADATA);
                return Verdict::ResourceMetadata(resource);
            }
        }

        // 2. Match a route.
        // As every upstream would read it (`/admin;x/users` is Tomcat's
        // `/admin/users`, Express's `/admin;x/users`); the canonical
        // spelling is forwarded.
        let lookup = match self.routes.route(request.method(), &path) {
            Ok(lookup) => lookup,
            Err(e) => return Verdict::Deny(None, GatewayError::BadPath(e)),
        };
        // A CORS preflight asks about another method: that method's route
        // may let it through without a token.
        if request.method() == Method::OPTIONS {
            if let Some(permit) = self.preflight(request, &path, lookup) {
                let _ = matched.set(permit.route());
                self.hot_metrics
                    .preflight
                    .get_or_init(|| self.decision_counter(NO_ISSUER, "allow", "preflight"))
                    .inc();
                return Verdict::Forward {
                    permit,
                    rewritten: rewritten(path),
                };
            }
        }
        let route = match lookup {
            Lookup::Matched(route) => route,
            Lookup::MethodNotAllowed { allow } => {
                let allow = self.with_resource_methods(&path, allow);
                return Verdict::Deny(None, GatewayError::MethodNotAllowed { allow });
            }
            // The resource metadata's path exists, for GET and HEAD (RFC
            // 9110 15.5.6).
            Lookup::NotFound if self.resource.as_ref().is_some_and(|r| *path == *r.path) => {
                return Verdict::Deny(
                    None,
                    GatewayError::MethodNotAllowed {
                        allow: HeaderValue::from_static("GET, HEAD"),
                    },
                )
            }
            Lookup::NotFound => return Verdict::Deny(None, GatewayError::RouteNotFound),
        };
        let _ = matched.set(route);
        if let Err(e) = self.check_webdav(request, &path, route) {
            return Verdict::Deny(Some(route), e);
        }

        // 3. Authenticate (bearer routes only).
        let identity = match self.authenticate(route, request).await {
            Ok(identity) => identity,
            Err(Refused { issuer, error }) => {
                let issuer = issuer.map_or(NO_ISSUER, |index| self.auth.issuer_name(index));
                self.decision(issuer, "deny", error.reason());
                return Verdict::Deny(Some(route), error);
            }
        };

        // 4. Authorize: the only way to obtain a Permit.
        let issuer = identity
            .as_ref()
            .map_or(NO_ISSUER, |t| self.auth.issuer_name(t.issuer));
        let permit = match authorize(route, identity.clone()) {
            Ok(permit) => permit,
            Err(e) => {
                self.decision(issuer, "deny", e.reason());
                return Verdict::Deny(Some(route), e);
            }
        };
        match &identity {
            Some(token) => self.allowed(token.issuer),
            None => self
                .hot_metrics
                .public
                .get_or_init(|| self.decision_counter(issuer, "allow", "public"))
                .inc(),
        }
        Verdict::Forward {
            permit,
            rewritten: rewritten(path),
        }
    }

    /// The WebDAV methods that act on more than the request's path: other
    /// methods pay one match and no lookup.
    fn check_webdav(
        &self,
        request: &Request<Incoming>,
        path: &str,
        route: &Route,
    ) -> Result<(), GatewayError> {
        match request.method().as_str() {
            "COPY" | "MOVE" => self.check_destination(request, path, route),
            "PROPFIND" | "LOCK" => self.check_collection_reads(request, path, route),
            _ => Ok(()),
        }
    }

    /// WebDAV's `COPY` and `MOVE` act on a second path, their `Destination`
    /// (RFC 4918 10.3, an absolute URI or path): there must be exactly one,
    /// and its path, read canonical, must be served by the route the request
    /// matched, so that a public route cannot copy or move into paths
    /// another route guards. It is forwarded as received, so an upstream
    /// with a `base_path` takes none (the upstream would read it without
    /// the prefix, as a path some other route's upstream may serve). A
    /// collection is copied or moved with its members, so no path below
    /// the request's `path` or the `Destination` may be another route's
    /// either.
    fn check_destination(
        &self,
        request: &Request<Incoming>,
        path: &str,
        route: &Route,
    ) -> Result<(), GatewayError> {
        let mut values = request.headers().get_all(&DESTINATION).iter();
        let value = match (values.next(), values.next()) {
            // Required (RFC 4918 9.8.3, 9.9.3): refused here rather than
            // left to an upstream that might read its absence its own way.
            // One that `Connection` names is removed on the way, so the
            // upstream would get none.
            (None, _) => return Err(GatewayError::ForeignDestination),
            _ if connection_names(request.headers(), &DESTINATION) => {
                return Err(GatewayError::ForeignDestination)
            }
            (Some(value), None) if !self.forwarder.has_base_path(route.upstream) => value,
            (Some(_), _) => return Err(GatewayError::ForeignDestination),
        };
        // `//host/path` is no path-absolute (RFC 3986 3.3), and RFC 4918
        // allows no other relative reference: the http crate would read it as
        // a path, but a WebDAV server may read it as a network-path
        // reference (Go's x/net/webdav takes `//its-own-host/guarded/x` as
        // `/guarded/x`).
        if value.as_bytes().starts_with(b"//") {
            return Err(GatewayError::ForeignDestination);
        }
        let target =
            http::Uri::try_from(value.as_bytes()).map_err(|_| GatewayError::ForeignDestination)?;
        // Forwarded as received, it must leave readers nothing to resolve:
        // `/a//../b` is `/b` merged first (as here) but `/a/b` to RFC 3986
        // and WHATWG URL readers.
        if has_segments_to_resolve(target.path()) {
            return Err(GatewayError::ForeignDestination);
        }
        let destination =
            canonicalize(target.path()).map_err(|_| GatewayError::ForeignDestination)?;
        match self.routes.route(request.method(), &destination) {
            Ok(Lookup::Matched(served)) if served.index == route.index => {}
            _ => return Err(GatewayError::ForeignDestination),
        }
        // A collection goes with its members (RFC 4918 9.8.3, 9.9.2), at
        // the source and at the destination: none may be another route's.
        for collection in [path, &*destination] {
            if !self
                .routes
                .serves_alone_below(request.method(), collection, route)
            {
                return Err(GatewayError::ForeignDestination);
            }
        }
        Ok(())
    }

    /// WebDAV's `PROPFIND` and `LOCK` act on a collection's members unless
    /// their `Depth` is `0` (RFC 4918 9.1, 9.10.3: no `Depth` means
    /// `infinity`): a `PROPFIND` lists their names and properties, a `LOCK`
    /// locks them all. Below a public route that would reach the members of
    /// another route's paths, so anything but one `Depth: 0` needs every
    /// path below the request's to be the matched route's own.
    fn check_collection_reads(
        &self,
        request: &Request<Incoming>,
        path: &str,
        route: &Route,
    ) -> Result<(), GatewayError> {
        let mut depths = request.headers().get_all(&DEPTH).iter();
        // A `Depth` that `Connection` names is removed on the way (RFC 9110
        // 7.6.1): the upstream gets none, which is `infinity`.
        let only_itself = matches!(
            (depths.next(), depths.next()),
            (Some(depth), None) if depth.as_bytes().trim_ascii() == b"0"
        ) && !connection_names(request.headers(), &DEPTH);
        if only_itself
            || self
                .routes
                .serves_alone_below(request.method(), path, route)
        {
            Ok(())
        } else {
            Err(GatewayError::CollectionSpansRoutes)
        }
    }

    /// The permit of a CORS preflight (an `OPTIONS` with an `Origin` and one
    /// `Access-Control-Request-Method`, both forwarded as received; no
    /// credentials, no body, no upgrade) to the route serving the method it
    /// asks about, if that route has `cors_preflight`. A route that itself
    /// matched the `OPTIONS` request (`options`) is kept to: another route's
    /// setting does not reach it.
    fn preflight<'a>(
        &'a self,
        request: &Request<Incoming>,
        path: &str,
        options: Lookup<'a, Route>,
    ) -> Option<Permit<'a>> {
        let headers = request.headers();
        if headers.get(ORIGIN).is_none_or(HeaderValue::is_empty)
            || headers.contains_key(AUTHORIZATION)
            || headers.contains_key(UPGRADE)
            || !http_body::Body::is_end_stream(request.body())
            || sends_an_access_token_in_the_uri(request.uri())
            || !connection_keeps_every_header(headers)
        {
            return None;
        }
        let mut asked = headers.get_all(ACCESS_CONTROL_REQUEST_METHOD).iter();
        let (Some(asked), None) = (asked.next(), asked.next()) else {
            return None;
        };
        let method = Method::from_bytes(asked.as_bytes()).ok()?;
        if crate::routes::never_forwarded(&method)
            || method.as_str().bytes().any(|b| b.is_ascii_lowercase())
        {
            return None;
        }
        let Ok(Lookup::Matched(route)) = self.routes.route(&method, path) else {
            return None;
        };
        if let Lookup::Matched(own) = options {
            if !std::ptr::eq(own, route) {
                return None;
            }
        }
        // The app must see what made it a preflight here.
        if route
            .forward
            .remove_headers
            .iter()
            .any(|name| name == ORIGIN || name == ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        admit_preflight(route)
    }

    async fn authenticate(
        &self,
        route: &Route,
        request: &Request<Incoming>,
    ) -> Result<Option<Arc<VerifiedToken>>, Refused> {
        let token = self.authenticate_token(route, request).await?;
        // Tokens of the built-in issuer can be revoked; check on every request.
        if let (Some(token), Some((index, server))) = (&token, &self.authorization_server) {
            if token.issuer == *index {
                // Boxed: store futures (redis) are large; only this issuer's
                // tokens pay for the allocation.
                let revoked =
                    Box::pin(server.revoked_ids(token.jti.as_deref(), token.session.as_deref()))
                        .await
                        .map_err(|_| Refused::by(*index, GatewayError::StoreUnavailable))?;
                if revoked {
                    return Err(Refused::by(
                        *index,
                        GatewayError::InvalidToken(TokenError::Inactive),
                    ));
                }
            }
        }
        Ok(token)
    }

    async fn authenticate_token(
        &self,
        route: &Route,
        request: &Request<Incoming>,
    ) -> Result<Option<Arc<VerifiedToken>>, Refused> {
        match &route.access {
            Access::Public => Ok(None),
            Access::Bearer {
                issuers,
                introspector,
                ..
            } => {
                // RFC 6750 3.1: one way of sending the token. A second one
                // in the query would go upstream unchecked, where many
                // frameworks read `access_token`.
                if sends_an_access_token_in_the_uri(request.uri()) {
                    return Err(Refused::from(GatewayError::InvalidRequest(
                        "the access token must be sent in the Authorization header only, not in the query",
                    )));
                }
                self.auth
                    .authenticate(request.headers(), issuers.as_deref(), *introspector)
                    .await
                    .map(Some)
            }
        }
    }

    /// Counts a finished request and observes its latency. `method` is the
    /// label of `slot`.
    fn record(
        &self,
        route: Option<&Route>,
        served_by: &'static str,
        slot: usize,
        method: &'static str,
        counted: Counted,
        secs: f64,
    ) {
        let status_label = counted.label();
        let hot = route.and_then(|r| self.hot_metrics.routes.get(r.index));
        let (Some(route), Some(hot)) = (route, hot) else {
            self.metrics
                .requests
                .with_label_values(&[served_by, method, status_label])
                .inc();
            self.metrics
                .request_duration
                .with_label_values(&[served_by])
                .observe(secs);
            return;
        };
        let name: &str = &route.name;
        hot.latency
            .get_or_init(|| self.metrics.request_duration.with_label_values(&[name]))
            .observe(secs);
        let series = || {
            self.metrics
                .requests
                .with_label_values(&[name, method, status_label])
        };
        let Counted::Answered(status) = counted else {
            return series().inc();
        };
        let cached = if status == StatusCode::OK {
            hot.ok.get(slot)
        } else {
            COMMON_STATUSES
                .iter()
                .position(|&common| common == status)
                .and_then(|at| {
                    let common = hot.common.get_or_init(|| {
                        Box::new(std::array::from_fn(|_| {
                            std::array::from_fn(|_| OnceLock::new())
                        }))
                    });
                    common.get(slot)?.get(at)
                })
        };
        match cached {
            Some(counter) => counter.get_or_init(series).inc(),
            None => series().inc(),
        }
    }

    /// Counts an allowed request of a token of issuer `index`.
    fn allowed(&self, index: usize) {
        match self.hot_metrics.allowed.get(index) {
            Some(slot) => slot
                .get_or_init(|| {
                    self.metrics.auth_decisions.with_label_values(&[
                        self.auth.issuer_name(index),
                        "allow",
                        "ok",
                    ])
                })
                .inc(),
            None => self.decision(self.auth.issuer_name(index), "allow", "ok"),
        }
    }

    fn decision(&self, issuer: &str, decision: &str, reason: &str) {
        self.decision_counter(issuer, decision, reason).inc();
    }

    fn decision_counter(&self, issuer: &str, decision: &str, reason: &str) -> IntCounter {
        self.metrics
            .auth_decisions
            .with_label_values(&[issuer, decision, reason])
    }
}

/// What phases 1 to 4 decided for a request.
enum Verdict<'a> {
    /// Passed its route's check. `rewritten`: the canonical path, when it
    /// is not the path as received.
    Forward {
        permit: Permit<'a>,
        rewritten: Option<String>,
    },
    /// Refused, with the route if one matched (for labels).
    Deny(Option<&'a Route>, GatewayError),
    /// An endpoint of the built-in authorization server, at this path.
    AuthorizationServer(&'a AuthorizationServer, String),
    /// The RFC 9728 protected resource metadata.
    ResourceMetadata(&'a ResourceMetadata),
}

/// How much of a refused request's body is read and dropped so that its
/// connection can take the next request (as nginx and Go do).
const SKIPPED_BODY_LIMIT: u64 = 64 * 1024;
/// How long a refusal waits for that body: one already sent (most) comes
/// at once; one that does not is cut off with the connection.
const SKIPPED_BODY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether `Connection` names no header (only `keep-alive` or `close`):
/// one it names is removed before forwarding.
fn connection_keeps_every_header(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .all(|value| {
            value.to_str().is_ok_and(|value| {
                value.split(',').map(str::trim).all(|token| {
                    token.is_empty()
                        || token.eq_ignore_ascii_case("keep-alive")
                        || token.eq_ignore_ascii_case("close")
                })
            })
        })
}

/// The canonical path, when it is not the path as received.
fn rewritten(path: Cow<'_, str>) -> Option<String> {
    match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(path) => Some(path),
    }
}

/// An HTTP/1 request whose body has not all been read.
fn body_pending(request: &Request<Incoming>) -> bool {
    request.version() < Version::HTTP_2 && !http_body::Body::is_end_stream(request.body())
}

/// Reads and drops a refused request's body, when it is small and comes
/// at once: whether it ended. Not one that waits for `100 Continue`: that
/// client sends no body after a final answer.
async fn skip_body(mut request: Request<Incoming>) -> bool {
    drain_body(&mut request).await
}

/// [`skip_body`] for a request that is answered afterwards: its body is
/// read to its end, if it is small and quick enough.
async fn drain_body(request: &mut Request<Incoming>) -> bool {
    use http_body_util::BodyExt as _;
    let expects_continue = request.headers().contains_key(http::header::EXPECT);
    let body = request.body_mut();
    let declared = http_body::Body::size_hint(&body).lower();
    if expects_continue || declared > SKIPPED_BODY_LIMIT {
        return false;
    }
    let read = async {
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
                if read > SKIPPED_BODY_LIMIT {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(SKIPPED_BODY_WAIT, read)
        .await
        .unwrap_or(false)
}

/// Refuses requests whose framing or target is ambiguous: both Content-Length
/// and Transfer-Encoding, repeated Content-Length, a fragment on the target, a transfer coding besides
/// `chunked`, a WebSocket handshake that is not a `GET` without a body, a
/// missing, repeated or malformed Host on HTTP/1.1, or an HTTP/2 `host`
/// naming another entity than `:authority`.
fn check_framing(request: &Request<Incoming>) -> Result<(), GatewayError> {
    let headers = request.headers();
    // Names, not lines: an HTTP/2 client sends each cookie as a field of
    // its own (RFC 9113 8.2.3), where HTTP/1.1 has one `Cookie` line.
    if headers.keys_len() > crate::error::MAX_REQUEST_HEADERS {
        return Err(GatewayError::TooManyHeaders);
    }
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    // hyper drops a Content-Length sent with Transfer-Encoding, keeps one of
    // equal repeated ones, and the target's fragment is cut off; the
    // connection watch (`super::framing`) marks such requests.
    match request.extensions().get::<super::framing::HeadFlaw>() {
        Some(super::framing::HeadFlaw::Fragment) => {
            return Err(GatewayError::BadPath(crate::routes::PathError::Fragment));
        }
        Some(super::framing::HeadFlaw::Unfollowable) => {
            return Err(GatewayError::UnfollowableFraming);
        }
        Some(
            super::framing::HeadFlaw::LengthAndCoding | super::framing::HeadFlaw::RepeatedLength,
        ) => return Err(GatewayError::AmbiguousFraming),
        None => {}
    }
    if lengths > 1 || (lengths == 1 && headers.contains_key(TRANSFER_ENCODING)) {
        return Err(GatewayError::AmbiguousFraming);
    }
    // A request with Transfer-Encoding has a body: a bodiless one (most)
    // costs no lookup.
    if !http_body::Body::is_end_stream(request.body())
        && !crate::proxy::headers::only_chunked(headers)
    {
        return Err(GatewayError::UnsupportedTransferCoding);
    }
    // The requests that would become tunnels (`Connection: upgrade` too).
    // hyper marks only HTTP/1.1 requests with `Upgrade`, so the common
    // request pays one empty-extensions check.
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some()
        && crate::proxy::headers::asks_for_websocket(headers)
        && crate::proxy::headers::connection_names(headers, &UPGRADE)
        && (request.method() != Method::GET || !http_body::Body::is_end_stream(request.body()))
    {
        return Err(GatewayError::BadWebSocketHandshake);
    }
    // With no userinfo (`@`, RFC 9110 4.2.4), the host is empty exactly
    // when the authority starts with the port's colon. A target's authority
    // (absolute form, HTTP/2 `:authority`) is held to the same rule: it is
    // what `X-Forwarded-Host` carries.
    let usable =
        |a: &http::uri::Authority| !a.as_str().contains('@') && !a.as_str().starts_with(':');
    if request.uri().authority().is_some_and(|a| !usable(a)) {
        return Err(GatewayError::BadHost);
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(GatewayError::BadHost),
        // The usual `name[:port]` needs no parse (which copies it): only
        // an HTTP/2 request compares it with `:authority`.
        (Some(host), None)
            if request.version() != Version::HTTP_2 && is_plain_host(host.as_bytes()) => {}
        (Some(host), None) => {
            let host = std::str::from_utf8(host.as_bytes())
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .filter(usable)
                .ok_or(GatewayError::BadHost)?;
            // RFC 9113 8.3.1: an HTTP/2 `host` naming another entity than
            // `:authority` makes the request malformed. (An HTTP/1.1
            // absolute-form target overrides `Host` instead, RFC 9112 3.2.2.)
            if request.version() == Version::HTTP_2 {
                if let Some(authority) = request.uri().authority() {
                    if !same_entity(authority, &host, request.uri().scheme()) {
                        return Err(GatewayError::BadHost);
                    }
                }
            }
        }
        (None, None) if request.version() == Version::HTTP_11 => return Err(GatewayError::BadHost),
        _ => {}
    }
    Ok(())
}

/// Whether `host` is a plain `name[:port]` (letters, digits, `.` and `-`,
/// then a colon and digits or nothing), which [`http::uri::Authority`]
/// parses and which has neither userinfo nor an empty host.
fn is_plain_host(host: &[u8]) -> bool {
    let (name, port) = match memchr::memchr(b':', host) {
        Some(colon) => (host.get(..colon), host.get(colon + 1..)),
        None => (Some(host), None),
    };
    name.is_some_and(|n| {
        !n.is_empty()
            && n.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    }) && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// Whether two authorities name the same host and port once normalised
/// (RFC 3986 6.2.3: host case, an omitted port being the scheme's default).
fn same_entity(
    a: &http::uri::Authority,
    b: &http::uri::Authority,
    scheme: Option<&http::uri::Scheme>,
) -> bool {
    let default_port = match scheme.map(http::uri::Scheme::as_str) {
        Some("https") => 443,
        _ => 80,
    };
    a.host().eq_ignore_ascii_case(b.host())
        && a.port_u16().unwrap_or(default_port) == b.port_u16().unwrap_or(default_port)
}

/// Empties the body of an answer to HEAD that scopegate wrote itself,
/// keeping its length in `Content-Length` (an upstream's answer has none).
fn drop_head_body(response: &mut Response<Body>) {
    let Either::Right(full) = response.body() else {
        return;
    };
    let length = http_body::Body::size_hint(full).exact().unwrap_or(0);
    if length == 0 {
        return;
    }
    response
        .headers_mut()
        .entry(CONTENT_LENGTH)
        .or_insert_with(|| HeaderValue::from(length));
    *response.body_mut() = Either::Right(Full::new(bytes::Bytes::new()));
}

/// The RFC 9728 document (public, cacheable, readable from any origin:
/// a browser app that got a challenge naming it reads it from its own).
fn resource_metadata_response(resource: &ResourceMetadata) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(resource.document.clone())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Method labels, bounded: extension methods are "other". A method's index
/// here ([`method_slot`]) also keys its per-route counters.
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// How many methods [`method_slot`] tells apart.
const METHOD_SLOTS: usize = METHOD_LABELS.len();

/// The method's index in [`METHOD_LABELS`].
fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// What a rebuilt gateway takes over from the one it replaces.
enum Reuse {
    /// The whole authenticator: its issuers, identity claims and cache size
    /// are unchanged.
    Whole(Arc<Authenticator>),
    /// The key sets and discovery results of issuers configured as before.
    Issuers(Arc<Authenticator>),
    /// Nothing (the first build).
    Nothing,
}

/// Records a request whose answer never came: its client went away (an
/// HTTP/2 stream reset, a closed connection), or its connection was closed
/// under it (an idle or stalled connection, the end of shutdown grace):
/// hyper then drops the request's future, and without this the request
/// would be missing from the metrics and the access log, just when an
/// upstream was slow enough for clients to give up. Counted with status 499
/// (nginx's "client closed request").
struct Abandoned<'a> {
    gateway: &'a Gateway,
    matched: &'a OnceLock<&'a Route>,
    /// The built-in endpoint that took the request, if one did.
    served_by: &'a OnceLock<&'static str>,
    started: Instant,
    slot: usize,
    method: &'static str,
    request_id: Option<&'a RequestId>,
    /// Cleared once the pipeline answered.
    armed: bool,
}

/// The status abandoned requests are counted and logged with.
const CLIENT_CLOSED: u16 = 499;

/// What a finished request is counted as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// It got this answer.
    Answered(StatusCode),
    /// Its client left, or its connection was closed, before the answer.
    Abandoned,
}

impl Counted {
    /// The `status` label: see [`status_label`]; abandoned requests `499`,
    /// which no answer's label is (an upstream's own 499 is `4xx`).
    fn label(&self) -> &str {
        match self {
            Counted::Answered(status) => status_label(status),
            Counted::Abandoned => "499",
        }
    }
}

/// Whether a query string has a parameter some framework reads as
/// `access_token`: names percent-decoded (`access%5Ftoken`; all of them
/// decode names), in any case (ASP.NET Core's query is case-insensitive),
/// with leading spaces and brackets dropped (PHP, Rack 2, Express's `qs`),
/// `.`, space or `[` read as `_` (PHP's names), as an array or with a
/// trailing `]` or NUL after it (`access_token[]`, `access_token]`,
/// `access_token%00`), and with `;` separating parameters as `&` does
/// (Rack 2). Only names are decoded, and only when escaped: values are
/// never looked at.
fn names_an_access_token(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let raw = pair.split('=').next().unwrap_or_default();
        if raw.bytes().any(|b| b == b'%' || b == b'+') {
            let plus_as_space = raw.replace('+', " ");
            let decoded = percent_encoding::percent_decode_str(&plus_as_space).collect::<Vec<u8>>();
            reads_as_access_token(&decoded)
        } else {
            reads_as_access_token(raw.as_bytes())
        }
    })
}

/// Whether the query, or what routers that end the path at its first `;`
/// (find-my-way, so Fastify) read as the query, names an access token.
fn sends_an_access_token_in_the_uri(uri: &http::Uri) -> bool {
    uri.query().is_some_and(names_an_access_token)
        || uri
            .path()
            .split_once(';')
            .is_some_and(|(_, parameters)| names_an_access_token(parameters))
}

/// See [`names_an_access_token`].
fn reads_as_access_token(name: &[u8]) -> bool {
    const NAME: &[u8] = b"access_token";
    let start = name
        .iter()
        .position(|&b| !matches!(b, b' ' | b'[' | b']'))
        .unwrap_or(name.len());
    let name = &name[start..];
    let (Some(head), rest) = (name.get(..NAME.len()), name.get(NAME.len()..)) else {
        return false;
    };
    let same = head.iter().zip(NAME).all(|(&c, &wanted)| {
        let c = match c {
            b'.' | b' ' | b'[' => b'_',
            c => c.to_ascii_lowercase(),
        };
        c == wanted
    });
    same && rest.is_none_or(|rest| matches!(rest.first(), None | Some(b'[' | b']' | 0)))
}

/// The `status` label of an answer: its code when registered, else its
/// class (`2xx`...) or `other` past 599. An upstream may answer any code
/// from 100 to 999, and each would be a series per route and method.
fn status_label(status: &StatusCode) -> &str {
    if status.canonical_reason().is_some() {
        return status.as_str();
    }
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        // A panic is not a client leaving (and is reported as such).
        if !self.armed || std::thread::panicking() {
            return;
        }
        let route = self.matched.get().copied();
        let served_by = self.served_by.get().copied().unwrap_or(UNMATCHED);
        let elapsed = self.started.elapsed();
        self.gateway.record(
            route,
            served_by,
            self.slot,
            self.method,
            Counted::Abandoned,
            elapsed.as_secs_f64(),
        );
        tracing::info!(
            target: "scopegate::access",
            route = route.map_or(served_by, |r| &*r.name),
            method = self.method,
            status = CLIENT_CLOSED,
            reason = "client_closed",
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            request_id = self.request_id.map_or("-", RequestId::as_str),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string `is_plain_host` takes (here: all of up to four bytes of
    /// an alphabet with the characters that matter) parses as an authority
    /// with neither userinfo nor an empty host, so skipping the parse
    /// changes no verdict; and the usual forms are taken.
    #[test]
    fn a_plain_host_is_one_the_parse_would_take() {
        const ALPHABET: &[u8] = b"a0.-:@[]%_ ";
        let mut taken = 0;
        for len in 1..=4u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                let mut host = Vec::new();
                for _ in 0..len {
                    host.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                if is_plain_host(&host) {
                    taken += 1;
                    let text = std::str::from_utf8(&host).unwrap();
                    let parsed = text.parse::<http::uri::Authority>();
                    assert!(
                        parsed.is_ok_and(
                            |a| !a.as_str().contains('@') && !a.as_str().starts_with(':')
                        ),
                        "{text:?}"
                    );
                }
            }
        }
        assert!(taken > 100, "{taken}");
        for usual in ["127.0.0.1:8080", "api.example.com", "gw:443", "localhost:"] {
            assert!(is_plain_host(usual.as_bytes()), "{usual}");
        }
        for unusual in ["", ":80", "a:b", "a@b", "[::1]:80", "a b", "a:8:0"] {
            assert!(!is_plain_host(unusual.as_bytes()), "{unusual}");
        }
    }
}
