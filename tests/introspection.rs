//! Opaque tokens end to end: RFC 7662 introspection (client authentication,
//! answer checks, caching, failing closed), issuers with both JWKS and
//! introspection, RFC 8414 / OpenID discovery, and RFC 9728 resource metadata;
//! and campaigns of generated hostile answers ([`hostile_answers`]) and
//! metadata documents ([`hostile_metadata`]).
//! Every server here is real and listens on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// `iss` of the introspecting issuer.
const OPAQUE_ISSUER: &str = "https://opaque.test";
/// scopegate's client id at the introspection endpoint.
const CLIENT_ID: &str = "scopegate";
/// scopegate's client secret at the introspection endpoint.
const CLIENT_SECRET: &str = "s3cret-introspection-value";
/// The description of `TokenError::Inactive`.
const NOT_ACTIVE: &str = "the token is not active";

// ---------------------------------------------------------------------------
// A tiny HTTP server on 127.0.0.1:0.
// ---------------------------------------------------------------------------

async fn spawn_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    r
}

// ---------------------------------------------------------------------------
// The introspection endpoint.
// ---------------------------------------------------------------------------

/// How the introspection endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 with the token's answer (`{"active":false}` for unknown tokens).
    Serve,
    /// 500.
    Status500,
    /// 503 without `Retry-After`.
    Status503,
    /// 200 with a body that is not JSON.
    Garbage,
    /// Holds the call until the mode changes.
    Hang,
    /// 429 with `Retry-After: 5`.
    TooMany,
}

/// Which client authentication the endpoint insists on (401 otherwise).
#[derive(Debug, Clone)]
enum ClientCheck {
    Off,
    Basic { id: String, secret: String },
    Post { id: String, secret: String },
}

/// One introspection call as the endpoint saw it.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    headers: HeaderMap,
    form: Vec<(String, String)>,
}

impl Call {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn param(&self, name: &str) -> Option<String> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

struct IdpState {
    answers: HashMap<String, Value>,
    mode: Mode,
    delay: Duration,
    check: ClientCheck,
    calls: Vec<Call>,
}

/// An RFC 7662 endpoint that records calls and answers from a token map.
struct IntrospectionServer {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
}

impl IntrospectionServer {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(IdpState {
            answers: HashMap::new(),
            mode: Mode::Serve,
            delay: Duration::ZERO,
            check: ClientCheck::Off,
            calls: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let addr = spawn_server(move |req| introspection_answer(Arc::clone(&shared), req)).await;
        Self { addr, state }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    fn answer(&self, token: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(token.to_owned(), answer);
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    fn require_client(&self, check: ClientCheck) {
        self.state.lock().unwrap().check = check;
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    fn count(&self) -> usize {
        self.state.lock().unwrap().calls.len()
    }

    /// Waits (bounded) until at least `n` calls arrived.
    async fn wait_for_calls(&self, n: usize) {
        for _ in 0..500 {
            if self.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the introspection endpoint never saw {n} call(s)");
    }
}

async fn introspection_answer(
    state: Arc<Mutex<IdpState>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let call = Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        form: url::form_urlencoded::parse(&body).into_owned().collect(),
    };
    let delay = {
        let mut s = state.lock().unwrap();
        s.calls.push(call.clone());
        s.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // Hang: hold the call until the test changes the mode (bounded: an hour).
    for _ in 0..180_000 {
        if state.lock().unwrap().mode != Mode::Hang {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = state.lock().unwrap();
    match s.mode {
        Mode::Status500 => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            r#"{"error":"server_error"}"#.to_owned(),
        ),
        Mode::Status503 => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            r#"{"error":"temporarily_unavailable"}"#.to_owned(),
        ),
        Mode::Garbage => reply(
            StatusCode::OK,
            "application/json",
            "<html>not json</html>".to_owned(),
        ),
        Mode::TooMany => {
            let mut r = reply(
                StatusCode::TOO_MANY_REQUESTS,
                "application/json",
                r#"{"error":"slow_down"}"#.to_owned(),
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("5"));
            r
        }
        Mode::Serve | Mode::Hang => {
            if !client_authenticated(&s.check, &call) {
                return reply(
                    StatusCode::UNAUTHORIZED,
                    "application/json",
                    r#"{"error":"invalid_client"}"#.to_owned(),
                );
            }
            let token = call.param("token").unwrap_or_default();
            let answer = s
                .answers
                .get(&token)
                .cloned()
                .unwrap_or_else(|| json!({ "active": false }));
            reply(StatusCode::OK, "application/json", answer.to_string())
        }
    }
}

/// Undoes `application/x-www-form-urlencoded` for one component.
fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// RFC 6749 2.3.1: exactly one method, with matching credentials.
fn client_authenticated(check: &ClientCheck, call: &Call) -> bool {
    match check {
        ClientCheck::Off => true,
        ClientCheck::Basic { id, secret } => {
            if call.param("client_id").is_some() || call.param("client_secret").is_some() {
                return false;
            }
            let Some(encoded) = call
                .header("authorization")
                .and_then(|h| h.strip_prefix("Basic ").map(str::to_owned))
            else {
                return false;
            };
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                return false;
            };
            let decoded = String::from_utf8(decoded).unwrap_or_default();
            let Some((user, pass)) = decoded.split_once(':') else {
                return false;
            };
            form_decode(user) == *id && form_decode(pass) == *secret
        }
        ClientCheck::Post { id, secret } => {
            call.header("authorization").is_none()
                && call.param("client_id").as_deref() == Some(id)
                && call.param("client_secret").as_deref() == Some(secret)
        }
    }
}

fn basic_check() -> ClientCheck {
    ClientCheck::Basic {
        id: CLIENT_ID.to_owned(),
        secret: CLIENT_SECRET.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Authorization server metadata.
// ---------------------------------------------------------------------------

/// Serves metadata documents by path (404 elsewhere, no answer at all on a
/// path set to hang) and records the paths asked.
struct MetadataServer {
    addr: SocketAddr,
    /// Status and body by path.
    documents: Arc<Mutex<HashMap<String, (StatusCode, String)>>>,
    hanging: Arc<Mutex<Vec<String>>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl MetadataServer {
    async fn start() -> Self {
        let documents: Arc<Mutex<HashMap<String, (StatusCode, String)>>> = Arc::default();
        let hanging: Arc<Mutex<Vec<String>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (d, g, h) = (
            Arc::clone(&documents),
            Arc::clone(&hanging),
            Arc::clone(&hits),
        );
        let addr = spawn_server(move |req: Request<Incoming>| {
            let (d, g, h) = (Arc::clone(&d), Arc::clone(&g), Arc::clone(&h));
            async move {
                let path = req.uri().path().to_owned();
                h.lock().unwrap().push(path.clone());
                if g.lock().unwrap().contains(&path) {
                    std::future::pending::<()>().await;
                }
                match d.lock().unwrap().get(&path) {
                    Some((status, doc)) => reply(*status, "application/json", doc.clone()),
                    None => reply(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
                }
            }
        })
        .await;
        Self {
            addr,
            documents,
            hanging,
            hits,
        }
    }

    /// Requests for `path` are taken and never answered.
    fn hang(&self, path: &str) {
        self.hanging.lock().unwrap().push(path.to_owned());
    }

    /// The issuer identifier this server speaks for.
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, path: &str, document: &Value) {
        self.set_raw(path, StatusCode::OK, document.to_string());
    }

    /// Answers `path` with `status` and `body` (any bytes, as text).
    fn set_raw(&self, path: &str, status: StatusCode, body: String) {
        self.documents
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body));
    }

    /// Serves the document at `from` at `to` instead.
    fn move_document(&self, from: &str, to: &str) {
        let mut documents = self.documents.lock().unwrap();
        let document = documents.remove(from).unwrap();
        documents.insert(to.to_owned(), document);
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits (bounded) until discovery has asked for a document.
    async fn wait_for_a_request(&self) {
        for _ in 0..500 {
            if !self.hits().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("discovery never asked for metadata");
    }
}

const RFC8414_PATH: &str = "/.well-known/oauth-authorization-server";
const OIDC_PATH: &str = "/.well-known/openid-configuration";

// ---------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------

/// A client secret in a temporary file.
struct SecretFile {
    _dir: tempfile::TempDir,
    path: String,
}

impl SecretFile {
    fn new(secret: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("introspection-secret");
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        Self {
            path: path.display().to_string(),
            _dir: dir,
        }
    }

    /// `client_id` and `client_secret_file` lines of an `introspection:` block.
    fn credentials(&self) -> String {
        format!(
            "      client_id: {CLIENT_ID}\n      client_secret_file: {}\n",
            self.path
        )
    }
}

/// The introspecting issuer `opaque`. `credentials` and `extra` are lines of
/// its `introspection:` block (6 spaces in).
fn opaque_issuer(endpoint: &str, credentials: &str, extra: &str) -> String {
    format!(
        "  - name: opaque
    issuer: {OPAQUE_ISSUER}
    audiences: [{AUDIENCE}]
    introspection:
      endpoint: {endpoint}
{credentials}{extra}"
    )
}

/// The JWT issuer `test` of the support World.
fn jwt_issuer(jwks_uri: &str) -> String {
    format!(
        "  - name: test
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {jwks_uri}
    algorithms: [ES256]
"
    )
}

/// A gateway config with these `issuers:` entries and the standard routes:
/// `/orders/{id}` (GET, orders:read), `/orders/{*rest}` (POST..., any of
/// orders:write/orders:admin), `/status` (public), `/admin` (admin).
/// `top_extra` is appended at the top level.
fn gateway_yaml(upstream: SocketAddr, issuers: &str, top_extra: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
issuers:
{issuers}upstreams:
  app:
    url: http://{upstream}
    connect_timeout: 1s
    request_timeout: 2s
routes:
  - path: /orders/{{id}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /orders/{{*rest}}
    methods: [POST, PUT, DELETE]
    upstream: app
    any_scopes: [orders:write, orders:admin]
  - path: /status
    upstream: app
    auth: none
  - path: /admin
    upstream: app
    scopes: [admin]
{top_extra}"#
    )
}

/// An introspection answer for an active token of the `opaque` issuer.
fn active(scope: &str) -> Value {
    json!({
        "active": true,
        "iss": OPAQUE_ISSUER,
        "aud": AUDIENCE,
        "sub": "bob",
        "client_id": "reports",
        "scope": scope,
        "token_type": "Bearer",
        "iat": now(),
        "exp": now() + 600,
    })
}

/// The usual setup: one introspecting issuer (client_secret_basic, checked by
/// the endpoint), a recording upstream, and a ready gateway.
struct Opaque {
    idp: IntrospectionServer,
    upstream: Upstream,
    gw: Gateway,
    _secret: SecretFile,
}

impl Opaque {
    /// `extra`: lines of the `introspection:` block (6 spaces in).
    async fn start(extra: &str) -> Self {
        Self::start_with(extra, "").await
    }

    async fn start_with(extra: &str, top_extra: &str) -> Self {
        let idp = IntrospectionServer::start().await;
        idp.require_client(basic_check());
        let upstream = Upstream::start().await;
        let secret = SecretFile::new(CLIENT_SECRET);
        let issuers = opaque_issuer(&idp.endpoint(), &secret.credentials(), extra);
        let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, top_extra)).await;
        Self {
            idp,
            upstream,
            gw,
            _secret: secret,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        get_with_token(&self.gw.url(path), token).await
    }

    /// Asks with `token` until it is served (bounded): calls held back go
    /// on once the hold is over.
    async fn wait_until_served(&self, token: &str) {
        for _ in 0..100 {
            if self.get("/orders/1", token).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("calls were held back for good");
    }
}

// ---------------------------------------------------------------------------
// Assertions.
// ---------------------------------------------------------------------------

fn assert_invalid_token(reply: &Reply, description: &str) {
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        reply.www_authenticate(),
        format!(
            "Bearer realm=\"scopegate\", error=\"invalid_token\", \
             error_description=\"{description}\""
        )
    );
    assert_eq!(reply.json()["error"], "invalid_token");
}

fn assert_insufficient_scope(reply: &Reply, scope: &str) {
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        reply.www_authenticate(),
        format!(
            "Bearer realm=\"scopegate\", error=\"insufficient_scope\", \
             error_description=\"the token does not grant the scopes this route requires\", \
             scope=\"{scope}\""
        )
    );
    assert_eq!(reply.json()["error"], "insufficient_scope");
}

fn assert_unavailable(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.text());
    let retry = reply
        .header("retry-after")
        .expect("503 without Retry-After");
    assert!(retry.parse::<u64>().is_ok(), "Retry-After: {retry}");
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert!(reply.header("www-authenticate").is_none());
}

fn introspection_results(text: &str, result: &str) -> f64 {
    metric(
        text,
        "scopegate_introspection_requests_total",
        &[("issuer", "opaque"), ("result", result)],
    )
}

// ---------------------------------------------------------------------------
// 1. Active tokens and client authentication.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn active_opaque_token_is_forwarded_with_identity_from_the_answer() {
    let s = Opaque::start("").await;
    s.idp.answer("opaque-1", active("orders:read orders:write"));

    let ok = s.get("/orders/42?x=1", "opaque-1").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = s.upstream.last();
    assert_eq!(seen.path_and_query, "/orders/42?x=1");
    assert_eq!(seen.headers["x-auth-subject"], "bob");
    assert_eq!(seen.headers["x-auth-client-id"], "reports");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read orders:write");

    let calls = s.idp.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/introspect");
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    // client_secret_basic: credentials only in the header, never in the form.
    assert_eq!(
        call.form,
        vec![
            ("token".to_owned(), "opaque-1".to_owned()),
            ("token_type_hint".to_owned(), "access_token".to_owned()),
        ]
    );
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert_eq!(
        call.header("authorization"),
        Some(format!("Basic {expected}"))
    );
}

#[tokio::test]
async fn client_secret_basic_form_encodes_id_and_secret_from_env() {
    let id = "scope gate:1";
    let secret = "p@ss:w/rd+&=\u{e9}";
    let var = "SCOPEGATE_TEST_INTROSPECTION_SECRET_BASIC_ENCODING";
    std::env::set_var(var, secret);

    let idp = IntrospectionServer::start().await;
    idp.require_client(ClientCheck::Basic {
        id: id.to_owned(),
        secret: secret.to_owned(),
    });
    idp.answer("opaque-enc", active("orders:read"));
    let upstream = Upstream::start().await;
    let credentials = format!(
        "      client_id: '{id}'
      client_secret_env: {var}
      auth_method: client_secret_basic
"
    );
    let issuers = opaque_issuer(&idp.endpoint(), &credentials, "");
    let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;

    let ok = get_with_token(&gw.url("/orders/1"), "opaque-enc").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // RFC 6749 2.3.1: application/x-www-form-urlencoded, then Basic.
    let expected = base64::engine::general_purpose::STANDARD
        .encode("scope+gate%3A1:p%40ss%3Aw%2Frd%2B%26%3D%C3%A9");
    assert_eq!(
        idp.calls()[0].header("authorization"),
        Some(format!("Basic {expected}"))
    );
}

#[tokio::test]
async fn client_secret_post_sends_credentials_in_the_form() {
    let idp = IntrospectionServer::start().await;
    idp.require_client(ClientCheck::Post {
        id: CLIENT_ID.to_owned(),
        secret: CLIENT_SECRET.to_owned(),
    });
    idp.answer("opaque-post", active("orders:read"));
    let upstream = Upstream::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = opaque_issuer(
        &idp.endpoint(),
        &secret.credentials(),
        "      auth_method: client_secret_post\n",
    );
    let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;

    let ok = get_with_token(&gw.url("/orders/1"), "opaque-post").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let call = &idp.calls()[0];
    assert_eq!(call.header("authorization"), None);
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(call.param("token").as_deref(), Some("opaque-post"));
    assert_eq!(
        call.param("token_type_hint").as_deref(),
        Some("access_token")
    );
    assert_eq!(call.param("client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(call.param("client_secret").as_deref(), Some(CLIENT_SECRET));
}

#[tokio::test]
async fn rejected_client_credentials_fail_closed() {
    let s = Opaque::start("").await;
    s.idp.require_client(ClientCheck::Basic {
        id: CLIENT_ID.to_owned(),
        secret: "another-secret".to_owned(),
    });
    s.idp.answer("opaque-cred", active("orders:read"));

    let refused = s.get("/orders/1", "opaque-cred").await;
    assert_unavailable(&refused);
    assert_eq!(s.upstream.count(), 0);
    // Told apart from the server failing: the gateway's own credentials
    // are wrong, which a config change fixes.
    let metrics = s.gw.metrics().await;
    assert_eq!(
        introspection_results(&metrics, "unauthorized"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "http_error"),
        0.0,
        "{metrics}"
    );
}

/// A JWT of the introspecting issuer (which publishes no keys), signed by
/// a key of its own and expiring at `exp`.
fn keyless_issuers_jwt(exp: u64) -> String {
    let key = scopegate::demo::SigningKey::generate("k").unwrap();
    let mut claims = claims("orders:read");
    claims["iss"] = OPAQUE_ISSUER.into();
    claims["exp"] = exp.into();
    key.mint(&claims).unwrap()
}

#[tokio::test]
async fn jwt_shaped_token_of_a_keyless_issuer_is_introspected() {
    let s = Opaque::start("").await;
    let token = keyless_issuers_jwt(now() + 600);
    s.idp.answer(&token, active("orders:read"));

    let ok = s.get("/orders/1", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.idp.count(), 1);
    assert_eq!(s.idp.calls()[0].param("token"), Some(token));
}

/// An answer without `exp` for a JWT of a keyless issuer is cached no
/// longer than the JWT's own `exp`: past it, the server is asked again
/// (here it has since said inactive), though `cache_ttl` is an hour.
#[tokio::test]
async fn answer_for_a_jwt_is_cached_no_longer_than_the_jwts_exp() {
    let s = Opaque::start("      cache_ttl: 1h\n").await;
    // Time for two requests before it, on a slow machine too.
    let exp = now() + 6;
    let token = keyless_issuers_jwt(exp);
    let mut without_exp = active("orders:read");
    without_exp.as_object_mut().unwrap().remove("exp");
    s.idp.answer(&token, without_exp);

    let ok = s.get("/orders/1", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = s.get("/orders/1", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.idp.count(), 1, "the answer was not cached");

    s.idp.answer(&token, json!({ "active": false }));
    while now() < exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_invalid_token(&s.get("/orders/1", &token).await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 2);
}

// ---------------------------------------------------------------------------
// 2. Scopes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_scope_is_403_on_miss_and_on_cache_hit() {
    let s = Opaque::start("").await;
    s.idp.answer("reader", active("orders:read"));
    s.idp.answer("reader-2", active("orders:read"));

    // Cache miss straight to a route needing another scope.
    let denied = s.get("/admin", "reader-2").await;
    assert_insufficient_scope(&denied, "admin");
    assert_eq!(s.idp.count(), 1);

    // Cached as active on an allowed route, then refused elsewhere without a call.
    let ok = s.get("/orders/1", "reader").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.idp.count(), 2);
    let denied = s.get("/admin", "reader").await;
    assert_insufficient_scope(&denied, "admin");
    let post = send(
        "POST",
        &s.gw.url("/orders/1/items"),
        &[("authorization", "Bearer reader")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_insufficient_scope(&post, "orders:write");
    assert_eq!(s.idp.count(), 2, "scope checks must not introspect again");
    assert_eq!(s.upstream.count(), 1);
}

/// `scope_claim: scp` says where the issuer's JWTs carry their scopes; an
/// introspection answer carries them in `scope` (RFC 7662 2.2) all the same,
/// and one with only `scp` is read as configured.
#[tokio::test]
async fn introspected_scopes_are_read_from_scope_whatever_the_jwt_claim() {
    let s = Opaque::start("    scope_claim: scp\n").await;
    s.idp.answer("reader", active("orders:read"));
    let ok = s.get("/orders/1", "reader").await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    let mut scp_only = active("");
    scp_only.as_object_mut().unwrap().remove("scope");
    scp_only["scp"] = json!(["orders:read"]);
    s.idp.answer("reader-scp", scp_only);
    let ok = s.get("/orders/1", "reader-scp").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_insufficient_scope(&s.get("/admin", "reader").await, "admin");
}

// ---------------------------------------------------------------------------
// 3. What counts as active.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn only_a_matching_boolean_active_answer_is_accepted() {
    let s = Opaque::start("").await;
    let with = |changes: Value| {
        let mut answer = active("orders:read");
        for (k, v) in changes.as_object().unwrap() {
            answer[k] = v.clone();
        }
        answer
    };
    // Ory Hydra's shape: no `token_type`, the kind in `token_use`.
    let hydra = |kind: &str| {
        let mut answer = with(json!({ "token_use": kind }));
        answer.as_object_mut().unwrap().remove("token_type");
        answer
    };
    let refused = [
        ("inactive", json!({ "active": false })),
        ("string-true", with(json!({ "active": "true" }))),
        ("number-one", with(json!({ "active": 1 }))),
        ("wrong-iss", with(json!({ "iss": "https://evil.test" }))),
        ("wrong-aud", with(json!({ "aud": "another-api" }))),
        (
            "wrong-aud-list",
            with(json!({ "aud": ["another-api", "third-api"] })),
        ),
        // Ory Hydra's for a token granted no audience: none of ours.
        ("empty-aud-list", with(json!({ "aud": [] }))),
        ("expired", with(json!({ "exp": now() - 3600 }))),
        (
            "string-exp",
            with(json!({ "exp": (now() + 600).to_string() })),
        ),
        // Another kind of token: by `token_type`, or by Ory Hydra's
        // `token_use` when `token_type` is left out.
        (
            "refresh-type",
            with(json!({ "token_type": "refresh_token" })),
        ),
        ("refresh-use", hydra("refresh_token")),
        // Keycloak's `typ`: refresh, offline and ID tokens.
        ("keycloak-refresh", with(json!({ "typ": "Refresh" }))),
        ("keycloak-offline", with(json!({ "typ": "Offline" }))),
        ("keycloak-id", with(json!({ "typ": "ID" }))),
        ("keycloak-logout", with(json!({ "typ": "Logout" }))),
        // Bound to a DPoP key or a client certificate: not a bearer token.
        (
            "dpop-bound",
            with(json!({ "cnf": { "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" } })),
        ),
        (
            "mtls-bound",
            with(json!({ "cnf": { "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2" } })),
        ),
    ];
    for (token, answer) in &refused {
        s.idp.answer(token, answer.clone());
    }
    for (token, _) in &refused {
        let reply = s.get("/orders/1", token).await;
        assert_invalid_token(&reply, NOT_ACTIVE);
    }
    // Unknown to the endpoint: it answers inactive.
    assert_invalid_token(&s.get("/orders/1", "never-issued").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), refused.len() + 1);
    assert_eq!(s.upstream.count(), 0);
    // The server's own "inactive" (an `active` that is not `true`) is told
    // apart from active answers refused here (a misconfigured `iss` or
    // audience shows in the metric).
    let metrics = s.gw.metrics().await;
    assert_eq!(introspection_results(&metrics, "inactive"), 4.0);
    assert_eq!(
        introspection_results(&metrics, "refused"),
        (refused.len() - 3) as f64
    );

    s.idp.answer(
        "good",
        with(json!({ "aud": ["another-api", AUDIENCE], "exp": now() + 300 })),
    );
    let ok = s.get("/orders/1", "good").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    s.idp.answer("hydra-access", hydra("access_token"));
    let ok = s.get("/orders/1", "hydra-access").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    s.idp
        .answer("keycloak-access", with(json!({ "typ": "Bearer" })));
    let ok = s.get("/orders/1", "keycloak-access").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.upstream.count(), 3);
}

/// Spring Authorization Server names only an access token's kind, and
/// answers for an active refresh token (whatever `token_type_hint` says)
/// with no kind at all, no `aud`, `iss` or `scope`: on a route needing no
/// scope it would pass. `require_token_type: true` takes only answers that
/// name an access token, in `token_type`, `token_use` or Keycloak's `typ`.
#[tokio::test]
async fn require_token_type_refuses_answers_naming_no_kind_of_token() {
    const ANY_TOKEN: &str = "  - path: /me\n    upstream: app\n";
    let spring_refresh = json!({
        "active": true,
        "client_id": "reports",
        "iat": now(),
        "exp": now() + 600,
    });
    let without = Opaque::start_with("", ANY_TOKEN).await;
    without.idp.answer("refresh", spring_refresh.clone());
    assert_eq!(without.get("/me", "refresh").await.status, 200);

    let s = Opaque::start_with("      require_token_type: true\n", ANY_TOKEN).await;
    s.idp.answer("refresh", spring_refresh);
    assert_invalid_token(&s.get("/me", "refresh").await, NOT_ACTIVE);
    let mut named = Vec::new();
    for (member, kind) in [
        ("token_type", "Bearer"),
        ("token_use", "access_token"),
        ("typ", "Bearer"),
    ] {
        let mut answer = active("");
        answer.as_object_mut().unwrap().remove("token_type");
        answer[member] = json!(kind);
        let token = format!("access-{member}");
        s.idp.answer(&token, answer);
        named.push(token);
    }
    for token in &named {
        let reply = s.get("/me", token).await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.text());
    }
    assert_eq!(s.upstream.count(), named.len());
}

/// An answer without `aud` is taken on the endpoint's word; with
/// `require_audience: true` it is refused, and only answers whose `aud`
/// names this API pass, so a server that leaves out the audience of a token
/// it issued for another API cannot let that token through.
#[tokio::test]
async fn require_audience_refuses_answers_without_aud() {
    let mut no_aud = active("orders:read");
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut other_api = active("orders:read");
    other_api["aud"] = json!("billing-api");
    let mut listed = active("orders:read");
    listed["aud"] = json!(["billing-api", AUDIENCE]);

    let without = Opaque::start_with("", "").await;
    without.idp.answer("no-aud", no_aud.clone());
    without.idp.answer("other-api", other_api.clone());
    assert_eq!(without.get("/orders/1", "no-aud").await.status, 200);
    assert_invalid_token(&without.get("/orders/1", "other-api").await, NOT_ACTIVE);

    let s = Opaque::start_with("      require_audience: true\n", "").await;
    s.idp.answer("no-aud", no_aud);
    s.idp.answer("other-api", other_api);
    s.idp.answer("own-api", active("orders:read"));
    s.idp.answer("listed", listed);
    assert_invalid_token(&s.get("/orders/1", "no-aud").await, NOT_ACTIVE);
    assert_invalid_token(&s.get("/orders/1", "other-api").await, NOT_ACTIVE);
    for token in ["own-api", "listed"] {
        let reply = s.get("/orders/1", token).await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.text());
    }
    assert_eq!(s.upstream.count(), 2);
}

/// An issuer with `client_ids` and no `audiences` (tokens that name no
/// API): an answer with an `aud` is meant for another API, but Ory Hydra's
/// empty `"aud": []`, for a token granted no audience, names none, as an
/// answer without `aud` does.
#[tokio::test]
async fn with_client_ids_alone_an_empty_aud_names_no_other_api() {
    let idp = IntrospectionServer::start().await;
    idp.require_client(basic_check());
    let upstream = Upstream::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = opaque_issuer(&idp.endpoint(), &secret.credentials(), "");
    let audiences = format!("audiences: [{AUDIENCE}]");
    assert!(issuers.contains(&audiences), "{issuers}");
    let issuers = issuers.replace(&audiences, "client_ids: [reports]");
    let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;
    let answer = |aud: Option<Value>| {
        let mut answer = active("orders:read");
        match aud {
            Some(aud) => answer["aud"] = aud,
            None => {
                answer.as_object_mut().unwrap().remove("aud");
            }
        }
        answer
    };
    idp.answer("hydra", answer(Some(json!([]))));
    idp.answer("no-aud", answer(None));
    idp.answer("another-api", answer(Some(json!([AUDIENCE]))));
    for (token, status) in [("hydra", 200), ("no-aud", 200), ("another-api", 401)] {
        let reply = get_with_token(&gw.url("/orders/1"), token).await;
        assert_eq!(reply.status, status, "{token}: {}", reply.text());
    }
    assert_eq!(upstream.count(), 2);
}

/// An answer refused because its `nbf` (or `iat`) is still ahead of the
/// clock is remembered, but only until it becomes valid (here well short of
/// the hour `negative_cache_ttl` allows): it then passes.
#[tokio::test]
async fn answer_not_valid_yet_is_refused_with_or_without_exp() {
    let s = Opaque::start("      negative_cache_ttl: 1h\n").await;
    let mut with_exp = active("orders:read");
    with_exp["nbf"] = (now() + 3600).into();
    let mut without_exp = with_exp.clone();
    without_exp.as_object_mut().unwrap().remove("exp");
    s.idp.answer("nbf-and-exp", with_exp);
    s.idp.answer("nbf-only", without_exp);
    assert_invalid_token(&s.get("/orders/1", "nbf-and-exp").await, NOT_ACTIVE);
    assert_invalid_token(&s.get("/orders/1", "nbf-only").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 2);
    // Remembered (an hour away): not asked again.
    assert_invalid_token(&s.get("/orders/1", "nbf-only").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 2);

    // Valid in six seconds, beyond the 30 s leeway (time enough for the
    // first request to come before it, on a slow machine too).
    let mut soon = active("orders:read");
    soon["nbf"] = (now() + 36).into();
    s.idp.answer("soon", soon);
    assert_invalid_token(&s.get("/orders/1", "soon").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 3);
    let mut passed = false;
    for _ in 0..200 {
        if s.get("/orders/1", "soon").await.status == 200 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(passed, "an answer valid later stayed refused");
    assert_eq!(s.upstream.count(), 1);

    let mut started = active("orders:read");
    started.as_object_mut().unwrap().remove("exp");
    started["nbf"] = (now() - 60).into();
    s.idp.answer("started", started);
    let ok = s.get("/orders/1", "started").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.upstream.count(), 2);
}

// ---------------------------------------------------------------------------
// 4. Caching.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn active_answer_is_cached() {
    let s = Opaque::start("").await;
    s.idp.answer("cached", active("orders:read"));
    for _ in 0..3 {
        let ok = s.get("/orders/1", "cached").await;
        assert_eq!(ok.status, 200, "{}", ok.text());
    }
    assert_eq!(s.idp.count(), 1);
    assert_eq!(s.upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_uncached_token_share_one_call() {
    let s = Opaque::start("").await;
    s.idp.answer("popular", active("orders:read"));
    s.idp.set_delay(Duration::from_millis(200));

    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = s.gw.url(&format!("/orders/{i}"));
        set.spawn(async move { get_with_token(&url, "popular").await.status });
    }
    let mut statuses = Vec::new();
    while let Some(status) = set.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(statuses, vec![200; 20]);
    assert_eq!(s.idp.count(), 1, "concurrent lookups must be merged");
    assert_eq!(s.upstream.count(), 20);
}

/// Calls for different tokens are not merged, but a flood of them must not
/// become a flood at the authorization server: at most
/// `MAX_CALLS_IN_FLIGHT` wait on it at once, and the rest wait their turn.
#[tokio::test]
async fn calls_in_flight_to_the_endpoint_are_bounded() {
    const LIMIT: usize = scopegate::auth::introspect::MAX_CALLS_IN_FLIGHT;
    const TOKENS: usize = LIMIT + 16;
    let endpoint = HeldEndpoint::start().await;
    let upstream = Upstream::start().await;
    let gw = endpoint.gateway(upstream.addr, "30s").await;

    let mut flood = flood(&gw, 0..TOKENS);
    endpoint.wait_until_holding(LIMIT).await;
    endpoint.release();
    let mut statuses = Vec::new();
    while let Some(status) = flood.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(
        statuses,
        vec![200; TOKENS],
        "every token is answered in turn"
    );
    assert_eq!(endpoint.most(), LIMIT);
    assert_eq!(upstream.count(), TOKENS);
}

/// Requests that go away (their clients closed the connection) do not free
/// their calls' slots while the server still works on those calls: the
/// calls run on to their answers, counted as `abandoned`, and later calls
/// wait for the slots, so a flood of requests cancelled at once cannot reach
/// the server without bound.
#[tokio::test]
async fn calls_of_requests_that_went_away_keep_their_slots() {
    use tokio::io::AsyncWriteExt;
    const LIMIT: usize = scopegate::auth::introspect::MAX_CALLS_IN_FLIGHT;
    const LATER: usize = 16;
    let endpoint = HeldEndpoint::start().await;
    let upstream = Upstream::start().await;
    let gw = endpoint.gateway(upstream.addr, "30s").await;

    let mut gone = Vec::new();
    for i in 0..LIMIT {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "GET /orders/{i} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer gone-{i}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        gone.push(stream);
    }
    endpoint.wait_until_holding(LIMIT).await;
    drop(gone);
    let mut later = flood(&gw, 0..LATER);
    let misses = (LIMIT + LATER) as f64;
    assert!(
        wait_for_metrics(&gw, |m| metric(
            m,
            "scopegate_token_cache_requests_total",
            &[("kind", "introspection"), ("result", "miss")]
        ) == misses)
        .await
    );
    endpoint.release();
    while let Some(status) = later.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(endpoint.most(), LIMIT, "later calls waited for the slots");
    assert!(
        wait_for_metrics(&gw, |m| introspection_results(m, "abandoned")
            == LIMIT as f64)
        .await,
        "{}",
        gw.metrics().await
    );
    assert_eq!(upstream.count(), LATER);
}

/// A call that finds no free slot within the call timeout is refused as
/// `busy` rather than queued for ever. The endpoint answers each call after
/// 4 s and the timeout is 6 s: of 192 requests sent at once, the first 64
/// calls take the slots; the next 64 take them when those are answered (at
/// 4 s, within their 6 s wait), and the last 64, whose wait ends at 6 s,
/// find none: the slots are held until about 8 s. Every call is answered,
/// so no backoff ([`calls_failing_in_a_row_hold_calls_back`]) comes in.
#[tokio::test]
async fn a_call_that_finds_no_slot_in_time_is_busy() {
    const LIMIT: usize = scopegate::auth::introspect::MAX_CALLS_IN_FLIGHT;
    let s = Opaque::start("      timeout: 6s\n").await;
    for i in 0..3 * LIMIT {
        s.idp.answer(&format!("flood-{i}"), active("orders:read"));
    }
    s.idp.set_delay(Duration::from_secs(4));

    let mut all = flood(&s.gw, 0..3 * LIMIT);
    let mut statuses = Vec::new();
    while let Some(status) = all.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses.sort_unstable();
    let mut want = vec![200; 2 * LIMIT];
    want.extend([503; LIMIT]);
    assert_eq!(statuses, want);
    let metrics = s.gw.metrics().await;
    assert_eq!(
        introspection_results(&metrics, "busy"),
        LIMIT as f64,
        "{metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "active"),
        (2 * LIMIT) as f64,
        "{metrics}"
    );
    assert_eq!(s.idp.count(), 2 * LIMIT);
    assert_eq!(s.upstream.count(), 2 * LIMIT);
}

/// An introspection endpoint that holds every call until released, and
/// counts how many it held at once and how many it took in all.
struct HeldEndpoint {
    addr: SocketAddr,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    secret: SecretFile,
}

impl HeldEndpoint {
    /// Answering every call, once released, with an active token.
    async fn start() -> Self {
        Self::answering(StatusCode::OK, None, active("orders:read").to_string()).await
    }

    /// Answering every call, once released, with 429 and `Retry-After: 10`.
    async fn asking_to_wait() -> Self {
        Self::answering(
            StatusCode::TOO_MANY_REQUESTS,
            Some(("retry-after", "10")),
            r#"{"error":"slow_down"}"#.to_owned(),
        )
        .await
    }

    /// Answering every call, once released, with `status`, a `header` if
    /// given, and `body`.
    async fn answering(
        status: StatusCode,
        header: Option<(&'static str, &'static str)>,
        body: String,
    ) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let addr = {
            let (in_flight, most, calls) = (
                Arc::clone(&in_flight),
                Arc::clone(&most),
                Arc::clone(&calls),
            );
            spawn_server(move |_request: Request<Incoming>| {
                let (in_flight, most, calls, mut gate, body) = (
                    Arc::clone(&in_flight),
                    Arc::clone(&most),
                    Arc::clone(&calls),
                    gate.clone(),
                    body.clone(),
                );
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let mut reply = Response::new(Full::new(Bytes::from(body)));
                    *reply.status_mut() = status;
                    if let Some((name, value)) = header {
                        reply.headers_mut().insert(name, value.parse().unwrap());
                    }
                    reply
                }
            })
            .await
        };
        Self {
            addr,
            in_flight,
            most,
            calls,
            release,
            secret: SecretFile::new(CLIENT_SECRET),
        }
    }

    /// The `opaque` issuer introspecting here with this call `timeout`.
    fn issuers(&self, timeout: &str) -> String {
        opaque_issuer(
            &format!("http://{}/introspect", self.addr),
            &self.secret.credentials(),
            &format!("      timeout: {timeout}\n"),
        )
    }

    /// A gateway introspecting here with this call `timeout`.
    async fn gateway(&self, upstream: SocketAddr, timeout: &str) -> Gateway {
        Gateway::start(&gateway_yaml(upstream, &self.issuers(timeout), "")).await
    }

    /// The calls taken in all.
    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait_until_holding(&self, calls: usize) {
        for _ in 0..1000 {
            if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) >= calls {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the endpoint never held {calls} calls");
    }

    fn release(&self) {
        self.release.send_replace(true);
    }

    /// The most calls held at once.
    fn most(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Waits until the gateway has applied its first reload.
async fn wait_for_the_first_reload(gw: &Gateway) {
    assert!(
        wait_for_metrics(gw, |m| m
            .contains(r#"scopegate_config_reloads_total{result="success"} 1"#))
        .await,
        "the reload was not applied: {}",
        gw.metrics().await
    );
}

/// Sends the opaque tokens numbered `tokens` at once; yields their statuses.
fn flood(gw: &Gateway, tokens: std::ops::Range<usize>) -> tokio::task::JoinSet<u16> {
    let mut set = tokio::task::JoinSet::new();
    for i in tokens {
        let url = gw.url(&format!("/orders/{i}"));
        set.spawn(async move { get_with_token(&url, &format!("flood-{i}")).await.status });
    }
    set
}

/// Waits until the gateway has counted `misses` introspection cache misses:
/// that many requests are in, each with a call made or waiting for a slot.
async fn wait_for_introspection_misses(gw: &Gateway, misses: usize) {
    assert!(
        wait_for_metrics(gw, |m| metric(
            m,
            "scopegate_token_cache_requests_total",
            &[("kind", "introspection"), ("result", "miss")]
        ) == misses as f64)
        .await,
        "{}",
        gw.metrics().await
    );
}

/// Sends a request with `token` on a connection of its own, waits until the
/// endpoint holds its call (the `calls_before`+1th), then goes away (closes
/// the connection) and waits until the gateway has counted the request as
/// given up by its client (499).
async fn send_and_go_away(gw: &Gateway, endpoint: &HeldEndpoint, token: &str, calls_before: usize) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request =
        format!("GET /orders/1 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    endpoint.wait_until_holding(1).await;
    assert_eq!(endpoint.calls(), calls_before + 1);
    drop(stream);
    assert!(
        wait_for_metrics(gw, |m| m.lines().any(|l| l
            .starts_with("scopegate_requests_total")
            && l.contains(r#"status="499""#)))
        .await,
        "the request whose client went away was never dropped: {}",
        gw.metrics().await
    );
}

/// A 429 with `Retry-After` holds calls back (README: "uncached tokens get
/// that 503 without a call for that long") also when it answers a call
/// whose request went away (its client timed out: the usual case when the
/// endpoint is overloaded): the call itself reads it, not the request.
#[tokio::test]
async fn retry_after_of_an_abandoned_call_still_holds_calls_back() {
    let endpoint = HeldEndpoint::asking_to_wait().await;
    let upstream = Upstream::start().await;
    let gw = endpoint.gateway(upstream.addr, "30s").await;

    send_and_go_away(&gw, &endpoint, "gone-token", 0).await;
    // The call runs on to its end: 429, Retry-After: 10.
    endpoint.release();
    wait_for_the_abandoned_call(&gw).await;

    // Well within the ten seconds asked for.
    assert_unavailable(&get_with_token(&gw.url("/orders/1"), "another-token").await);
    let metrics = gw.metrics().await;
    assert_eq!(
        endpoint.calls(),
        1,
        "a call within the Retry-After: {metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "held_back"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "http_error"),
        1.0,
        "{metrics}"
    );
}

/// The answer to a call whose request went away lands in the cache all the
/// same: a client that gave up on a slow endpoint and retries the token is
/// answered from it, instead of costing the endpoint a call per retry (a
/// slow endpoint with impatient clients would never catch up).
#[tokio::test]
async fn the_answer_of_an_abandoned_call_is_not_wasted() {
    let endpoint = HeldEndpoint::start().await;
    let upstream = Upstream::start().await;
    let gw = endpoint.gateway(upstream.addr, "30s").await;

    send_and_go_away(&gw, &endpoint, "slow-token", 0).await;
    endpoint.release();
    wait_for_the_abandoned_call(&gw).await;
    let reply = get_with_token(&gw.url("/orders/1"), "slow-token").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(endpoint.calls(), 1, "the retry called the endpoint again");
    let metrics = gw.metrics().await;
    assert_eq!(introspection_results(&metrics, "active"), 1.0, "{metrics}");
    assert_eq!(upstream.count(), 1);
}

/// Waits until the call the gateway's request left has ended, counted as
/// `abandoned`.
async fn wait_for_the_abandoned_call(gw: &Gateway) {
    assert!(
        wait_for_metrics(gw, |m| introspection_results(m, "abandoned") == 1.0).await,
        "{}",
        gw.metrics().await
    );
}

/// A request for a token whose call is in flight, waiting with the request
/// that made the call, takes over the wait when that request goes away: it
/// gets the call's answer, with no second call, and the call is not
/// counted as `abandoned`, since a request still waited for it.
#[tokio::test]
async fn a_request_taking_over_the_wait_for_a_call_makes_no_second_call() {
    use tokio::io::AsyncWriteExt;
    let endpoint = HeldEndpoint::start().await;
    let upstream = Upstream::start().await;
    let gw = endpoint.gateway(upstream.addr, "30s").await;

    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = "GET /orders/1 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer shared\r\n\r\n";
    first.write_all(request.as_bytes()).await.unwrap();
    endpoint.wait_until_holding(1).await;
    let url = gw.url("/orders/1");
    let second = tokio::spawn(async move { get_with_token(&url, "shared").await });
    wait_for_introspection_misses(&gw, 2).await;
    drop(first);
    assert!(
        wait_for_metrics(&gw, |m| m.lines().any(|l| l
            .starts_with("scopegate_requests_total")
            && l.contains(r#"status="499""#)))
        .await,
        "{}",
        gw.metrics().await
    );
    // A second call would come at once; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint.calls(), 1, "the request taking over made a call");
    endpoint.release();
    let reply = second.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(endpoint.calls(), 1);
    let metrics = gw.metrics().await;
    assert_eq!(
        introspection_results(&metrics, "abandoned"),
        0.0,
        "{metrics}"
    );
    assert_eq!(introspection_results(&metrics, "active"), 1.0, "{metrics}");
}

/// A request waiting for a call slot when the endpoint answers 429 with
/// `Retry-After` makes no call once it gets the slot: the hold-back is
/// looked at again then, and each call records its `Retry-After` before
/// freeing its slot.
#[tokio::test]
async fn a_call_waiting_for_a_slot_is_held_back_by_a_retry_after_that_came_meanwhile() {
    const LIMIT: usize = scopegate::auth::introspect::MAX_CALLS_IN_FLIGHT;
    let endpoint = HeldEndpoint::asking_to_wait().await;
    let upstream = Upstream::start().await;
    let gw = endpoint.gateway(upstream.addr, "30s").await;

    let mut flood = flood(&gw, 0..LIMIT + 1);
    endpoint.wait_until_holding(LIMIT).await;
    // The last request is in, waiting for a slot.
    wait_for_introspection_misses(&gw, LIMIT + 1).await;
    assert_eq!(endpoint.calls(), LIMIT);
    endpoint.release();
    while let Some(status) = flood.join_next().await {
        assert_eq!(status.unwrap(), 503);
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        endpoint.calls(),
        LIMIT,
        "a call after a 429 with Retry-After: {metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "held_back"),
        1.0,
        "{metrics}"
    );
}

/// A reload that builds the issuer's introspection anew (here: the call
/// `timeout` lowered while the endpoint is slow, when an operator would)
/// keeps its call slots: the retired config's calls, still in flight, hold
/// theirs, so the endpoint never gets more than `MAX_CALLS_IN_FLIGHT` calls
/// of the issuer at once.
#[tokio::test]
async fn a_reload_does_not_double_the_calls_in_flight_to_the_endpoint() {
    const LIMIT: usize = scopegate::auth::introspect::MAX_CALLS_IN_FLIGHT;
    let endpoint = HeldEndpoint::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |timeout: &str| gateway_yaml(upstream.addr, &endpoint.issuers(timeout), "");
    kubelet_write(dir.path(), 1, &config("30s"));
    let gw = start_reloading(dir.path().join("scopegate.yaml"))
        .await
        .gateway;

    let mut first = flood(&gw, 0..LIMIT);
    endpoint.wait_until_holding(LIMIT).await;
    kubelet_write(dir.path(), 2, &config("20s"));
    wait_for_the_first_reload(&gw).await;
    let mut second = flood(&gw, LIMIT..2 * LIMIT);
    wait_for_introspection_misses(&gw, 2 * LIMIT).await;
    // Calls past the bound would come at once; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_once = endpoint.calls();
    endpoint.release();
    while let Some(status) = first.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    while let Some(status) = second.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(at_once, LIMIT, "calls in flight at once after a reload");
    assert_eq!(endpoint.most(), LIMIT);
    assert_eq!(endpoint.calls(), 2 * LIMIT);
}

/// A reload that moves the issuer to another introspection endpoint starts
/// that endpoint's calls afresh: the old endpoint's `Retry-After` says
/// nothing about the new one, which is asked at once.
#[tokio::test]
async fn a_reload_to_another_endpoint_leaves_the_old_ones_hold_back_behind() {
    let old = HeldEndpoint::asking_to_wait().await;
    old.release();
    let new = HeldEndpoint::start().await;
    new.release();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |endpoint: &HeldEndpoint| gateway_yaml(upstream.addr, &endpoint.issuers("5s"), "");
    kubelet_write(dir.path(), 1, &config(&old));
    let gw = start_reloading(dir.path().join("scopegate.yaml"))
        .await
        .gateway;

    assert_unavailable(&get_with_token(&gw.url("/orders/1"), "first-token").await);
    assert_unavailable(&get_with_token(&gw.url("/orders/1"), "held-token").await);
    assert_eq!(old.calls(), 1, "held back after the Retry-After");

    kubelet_write(dir.path(), 2, &config(&new));
    wait_for_the_first_reload(&gw).await;
    let reply = get_with_token(&gw.url("/orders/1"), "second-token").await;
    assert_eq!(
        reply.status,
        200,
        "{}: {}",
        reply.text(),
        gw.metrics().await
    );
    assert_eq!((old.calls(), new.calls()), (1, 1));
}

#[tokio::test]
async fn inactive_answer_is_cached_for_negative_cache_ttl() {
    let s = Opaque::start("      negative_cache_ttl: 1h\n").await;
    s.idp.answer("later-active", json!({ "active": false }));
    assert_invalid_token(&s.get("/orders/1", "later-active").await, NOT_ACTIVE);
    // The endpoint would now say active, but the inactive answer is cached.
    s.idp.answer("later-active", active("orders:read"));
    assert_invalid_token(&s.get("/orders/1", "later-active").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 1);
    assert_eq!(s.upstream.count(), 0);
    // Counted under the issuer that introspected it.
    let text = s.gw.metrics().await;
    let denied = metric(
        &text,
        "scopegate_auth_decisions_total",
        &[
            ("issuer", "opaque"),
            ("decision", "deny"),
            ("reason", "inactive"),
        ],
    );
    assert_eq!(denied, 2.0, "{text}");
}

#[tokio::test]
async fn zero_negative_cache_ttl_asks_every_time() {
    let s = Opaque::start("      negative_cache_ttl: 0s\n").await;
    s.idp.answer("later-active", json!({ "active": false }));
    for n in 1..=3 {
        assert_invalid_token(&s.get("/orders/1", "later-active").await, NOT_ACTIVE);
        assert_eq!(s.idp.count(), n);
    }
    s.idp.answer("later-active", active("orders:read"));
    let ok = s.get("/orders/1", "later-active").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.idp.count(), 4);
}

// ---------------------------------------------------------------------------
// 5. Revocation.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revocation_takes_effect_when_the_cache_entry_expires() {
    // Long enough for the "still cached" requests below on a slow machine.
    let s = Opaque::start("      cache_ttl: 5s\n      negative_cache_ttl: 0s\n").await;
    // One answer with a far `exp`, one without `exp`: cache_ttl bounds both.
    let mut no_exp = active("orders:read");
    no_exp.as_object_mut().unwrap().remove("exp");
    let tokens = [("revoked-soon", active("orders:read")), ("no-exp", no_exp)];
    for (token, answer) in &tokens {
        s.idp.answer(token, answer.clone());
        assert_eq!(s.get("/orders/1", token).await.status, 200);
    }

    for (token, _) in &tokens {
        s.idp.answer(token, json!({ "active": false }));
        let cached = s.get("/orders/1", token).await;
        assert_eq!(cached.status, 200, "still cached: {}", cached.text());
    }
    assert_eq!(s.idp.count(), 2);

    // Past cache_ttl since the entries were made (before this sleep).
    tokio::time::sleep(Duration::from_millis(5500)).await;
    for (token, _) in &tokens {
        assert_invalid_token(&s.get("/orders/1", token).await, NOT_ACTIVE);
    }
    assert_eq!(s.idp.count(), 4);
    assert_eq!(s.upstream.count(), 4);
}

#[tokio::test]
async fn zero_cache_ttl_makes_revocation_immediate() {
    let s = Opaque::start("      cache_ttl: 0s\n").await;
    s.idp.answer("revoked-now", active("orders:read"));
    assert_eq!(s.get("/orders/1", "revoked-now").await.status, 200);
    assert_eq!(s.get("/orders/1", "revoked-now").await.status, 200);
    assert_eq!(s.idp.count(), 2, "cache_ttl: 0s must not cache");

    s.idp.answer("revoked-now", json!({ "active": false }));
    assert_invalid_token(&s.get("/orders/1", "revoked-now").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 3);
    assert_eq!(s.upstream.count(), 2);
}

#[tokio::test]
async fn cache_entry_never_outlives_the_answers_exp() {
    let s = Opaque::start("      cache_ttl: 1h\n      negative_cache_ttl: 0s\n").await;
    // exp one second ahead, leeway 30s: active now; the entry must expire with exp.
    let mut answer = active("orders:read");
    answer["exp"] = (now() + 1).into();
    s.idp.answer("short-lived", answer);
    assert_eq!(s.get("/orders/1", "short-lived").await.status, 200);

    s.idp.answer("short-lived", json!({ "active": false }));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_invalid_token(&s.get("/orders/1", "short-lived").await, NOT_ACTIVE);
    assert_eq!(s.idp.count(), 2);
}

// ---------------------------------------------------------------------------
// 6. Failures fail closed and are not cached.
// ---------------------------------------------------------------------------

/// One request fails with 503 in `mode`, is counted as `label`, and the same
/// token works as soon as the endpoint answers again; the metrics then.
async fn fails_closed_then_recovers(mode: Mode, extra: &str, label: &str) -> String {
    let s = Opaque::start(extra).await;
    s.idp.answer("flaky", active("orders:read"));
    s.idp.set_mode(mode);

    let failed = s.get("/orders/1", "flaky").await;
    assert_unavailable(&failed);
    assert_eq!(s.upstream.count(), 0);
    assert_eq!(s.idp.count(), 1);
    let metrics = s.gw.metrics().await;
    assert_eq!(introspection_results(&metrics, label), 1.0, "{metrics}");
    assert_eq!(introspection_results(&metrics, "active"), 0.0);

    s.idp.set_mode(Mode::Serve);
    let ok = s.get("/orders/1", "flaky").await;
    assert_eq!(
        ok.status,
        200,
        "the failure must not be cached: {}",
        ok.text()
    );
    assert_eq!(s.idp.count(), 2);
    assert_eq!(s.upstream.count(), 1);
    let metrics = s.gw.metrics().await;
    assert_eq!(introspection_results(&metrics, "active"), 1.0, "{metrics}");
    metrics
}

/// A 429 (or 503) with `Retry-After` holds calls back that long (at most
/// 10 s): new tokens meanwhile get 503 without a call, counted as
/// `held_back`; then calls go on.
#[tokio::test]
async fn retry_after_holds_calls_back() {
    let s = Opaque::start("").await;
    s.idp.answer("later", active("orders:read"));
    s.idp.set_mode(Mode::TooMany);
    assert_unavailable(&s.get("/orders/1", "first").await);
    assert_eq!(s.idp.count(), 1);
    // Within the five seconds asked for: no call.
    assert_unavailable(&s.get("/orders/1", "second").await);
    assert_eq!(s.idp.count(), 1, "a call was made while held back");
    let metrics = s.gw.metrics().await;
    assert_eq!(
        introspection_results(&metrics, "http_error"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "held_back"),
        1.0,
        "{metrics}"
    );
    // Failures no call has had yet are exported at 0, for alerts.
    let timeouts = exported(
        &metrics,
        "scopegate_introspection_requests_total",
        &[("issuer", "opaque"), ("result", "timeout")],
    );
    assert_eq!(timeouts, Some(0.0), "{metrics}");
    // The latency is of calls made: the one held back made none.
    assert_eq!(
        metric(
            &metrics,
            "scopegate_introspection_duration_seconds_count",
            &[("issuer", "opaque")]
        ),
        1.0,
        "{metrics}"
    );
    s.idp.set_mode(Mode::Serve);
    s.wait_until_served("later").await;
    assert_eq!(s.idp.count(), 2);
}

/// Calls that get no answer five times in a row (here a 500 each) hold
/// calls back, a second first and doubling while they go on failing: new
/// tokens meanwhile get 503 without a call, counted as `held_back`, so an
/// endpoint that is down is not sent a call for every new token. An answer
/// ends it.
#[tokio::test]
async fn calls_failing_in_a_row_hold_calls_back() {
    let s = Opaque::start("").await;
    s.idp.set_mode(Mode::Status500);
    for n in 0..5 {
        assert_unavailable(&s.get("/orders/1", &format!("failing-{n}")).await);
    }
    assert_eq!(s.idp.count(), 5);
    // Held back now: no call for a new token.
    assert_unavailable(&s.get("/orders/1", "held").await);
    assert_eq!(s.idp.count(), 5, "a call was made while held back");
    let metrics = s.gw.metrics().await;
    assert_eq!(
        introspection_results(&metrics, "http_error"),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        introspection_results(&metrics, "held_back"),
        1.0,
        "{metrics}"
    );

    // The endpoint answers again: once the hold is over, a call is made,
    // and its answer ends the backoff.
    s.idp.set_mode(Mode::Serve);
    s.idp.answer("back", active("orders:read"));
    s.wait_until_served("back").await;
    assert_eq!(s.idp.count(), 6);
    // The count starts again: four failures in a row hold nothing back.
    s.idp.set_mode(Mode::Status500);
    for n in 0..4 {
        assert_unavailable(&s.get("/orders/1", &format!("again-{n}")).await);
    }
    assert_eq!(s.idp.count(), 10, "held back before five failures in a row");
}

#[tokio::test]
async fn status_500_fails_closed_uncached() {
    fails_closed_then_recovers(Mode::Status500, "", "http_error").await;
}

/// A 503 (without `Retry-After`) is the server failing, not a refusal of
/// the gateway's credentials: `http_error`, as a 500.
#[tokio::test]
async fn status_503_fails_closed_uncached() {
    let metrics = fails_closed_then_recovers(Mode::Status503, "", "http_error").await;
    let unauthorized = exported(
        &metrics,
        "scopegate_introspection_requests_total",
        &[("issuer", "opaque"), ("result", "unauthorized")],
    );
    // Exported at 0 before any refusal, for alerts.
    assert_eq!(unauthorized, Some(0.0), "{metrics}");
}

#[tokio::test]
async fn non_json_answer_fails_closed_uncached() {
    fails_closed_then_recovers(Mode::Garbage, "", "invalid_response").await;
}

#[tokio::test]
async fn hanging_endpoint_times_out_closed_uncached() {
    fails_closed_then_recovers(Mode::Hang, "      timeout: 3s\n", "timeout").await;
}

#[tokio::test]
async fn refused_connection_fails_closed_uncached() {
    let (_reserved, dead) = refusing_address();
    let endpoint = format!("http://{dead}/introspect");
    let upstream = Upstream::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = opaque_issuer(&endpoint, &secret.credentials(), "      timeout: 2s\n");
    let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;

    for n in 1..=2 {
        let failed = get_with_token(&gw.url("/orders/1"), "nowhere").await;
        assert_unavailable(&failed);
        // Not cached: every request tries again.
        let metrics = gw.metrics().await;
        assert_eq!(
            introspection_results(&metrics, "network_error"),
            f64::from(n),
            "{metrics}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

/// An answer whose connection breaks off mid-body is the network's
/// failure (`network_error`), not a malformed answer (`invalid_response`).
#[tokio::test]
async fn an_answer_cut_off_mid_body_is_a_network_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf).await;
                // A 200 promising 4 000 bytes, then the connection ends.
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                          Content-Length: 4000\r\n\r\n{\"active\":true,",
                    )
                    .await;
            });
        }
    });
    let upstream = Upstream::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let endpoint = format!("http://{cut}/introspect");
    let issuers = opaque_issuer(&endpoint, &secret.credentials(), "");
    let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;

    assert_unavailable(&get_with_token(&gw.url("/orders/1"), "cut").await);
    let metrics = gw.metrics().await;
    assert_eq!(
        (
            introspection_results(&metrics, "network_error"),
            introspection_results(&metrics, "invalid_response"),
        ),
        (1.0, 0.0),
        "{metrics}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn other_routes_answer_while_introspection_hangs() {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.answer("slow", active("orders:read"));
    idp.set_mode(Mode::Hang);
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = format!(
        "{}{}",
        jwt_issuer(&world.jwks.uri()),
        opaque_issuer(
            &idp.endpoint(),
            &secret.credentials(),
            "      timeout: 30s\n"
        )
    );
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    let url = gw.url("/orders/1");
    let hanging = tokio::spawn(async move { get_with_token(&url, "slow").await });
    idp.wait_for_calls(1).await;

    let public = tokio::time::timeout(Duration::from_secs(10), get(&gw.url("/status"), &[]))
        .await
        .expect("public route blocked by a hanging introspection")
        .unwrap();
    assert_eq!(public.status, 200);
    let jwt = tokio::time::timeout(
        Duration::from_secs(10),
        get_with_token(&gw.url("/orders/2"), &world.token("orders:read")),
    )
    .await
    .expect("JWT route blocked by a hanging introspection");
    assert_eq!(jwt.status, 200, "{}", jwt.text());
    assert!(
        !hanging.is_finished(),
        "the introspection call should still hang"
    );
    assert_eq!(idp.count(), 1, "a JWT must not be introspected");

    // Release the endpoint: the waiting request completes with its answer.
    idp.set_mode(Mode::Serve);
    let released = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("request still hanging after the endpoint answered")
        .unwrap();
    assert_eq!(released.status, 200, "{}", released.text());
    assert_eq!(world.upstream.count(), 3);
}

/// An HTTP/2 connection to the endpoint that stops answering (a NAT that
/// dropped it silently, a wedged peer) is given up after a ping goes
/// unanswered: calls then take a new connection. Timed-out calls alone do
/// not close a shared HTTP/2 connection, so without the ping every call
/// would go down the dead one for as long as calls keep coming.
#[tokio::test]
async fn a_dead_http2_connection_to_the_endpoint_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("idp.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&versions);
    let idp = serve_fn_tls(
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        move |request: Request<Incoming>| {
            seen.lock().unwrap().push(request.version());
            async { Response::new(full_body(active("orders:read").to_string())) }
        },
    )
    .await;
    let relay = FreezingRelay::start(idp).await;
    let upstream = Upstream::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = opaque_issuer(
        &format!("https://{}/introspect", relay.addr),
        &secret.credentials(),
        &format!("      timeout: 1s\n      ca_file: {}\n", cert.display()),
    );
    let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;

    let first = get_with_token(&gw.url("/orders/1"), "before").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(*versions.lock().unwrap(), [http::Version::HTTP_2]);
    relay.freeze();
    // The next call goes down the frozen connection and times out; within
    // a ping interval and a timeout, the connection is given up.
    let frozen = get_with_token(&gw.url("/orders/1"), "frozen-0").await;
    assert_eq!(frozen.status, 503, "{}", frozen.text());
    let mut answered = None;
    for attempt in 1..=40 {
        let r = get_with_token(&gw.url("/orders/1"), &format!("frozen-{attempt}")).await;
        if r.status == 200 {
            answered = Some(attempt);
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        answered.is_some(),
        "every call went down the frozen connection"
    );
    assert_eq!(relay.accepted(), 2, "one new connection");
}

/// A TCP relay whose connections opened so far can be frozen: they stop
/// carrying bytes either way but stay open.
struct FreezingRelay {
    addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    frozen_below: Arc<std::sync::atomic::AtomicUsize>,
}

impl FreezingRelay {
    async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let (count, frozen) = (Arc::clone(&accepted), Arc::clone(&frozen_below));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, id, Arc::clone(&frozen)));
                tokio::spawn(pipe(server_read, client_write, id, Arc::clone(&frozen)));
            }
        });

        async fn pipe(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            id: usize,
            frozen_below: Arc<AtomicUsize>,
        ) {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if id < frozen_below.load(Ordering::SeqCst) {
                    // Holds both ends open, carrying nothing.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }

        Self {
            addr,
            accepted,
            frozen_below,
        }
    }

    /// Freezes every connection accepted so far.
    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// 7. One issuer with both JWKS and introspection.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mixed_issuer_verifies_jwts_locally_and_introspects_the_rest() {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.require_client(basic_check());
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = format!(
        "  - name: both
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {}
    algorithms: [ES256]
    introspection:
      endpoint: {}
{}",
        world.jwks.uri(),
        idp.endpoint(),
        secret.credentials()
    );
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    let jwt = get_with_token(&gw.url("/orders/1"), &world.token("orders:read")).await;
    assert_eq!(jwt.status, 200, "{}", jwt.text());
    assert_eq!(world.upstream.last().headers["x-auth-subject"], "alice");
    assert_eq!(idp.count(), 0, "a JWT must be verified locally");

    let mut answer = active("orders:read");
    answer["iss"] = ISSUER.into();
    idp.answer("opaque-mixed", answer);
    let opaque = get_with_token(&gw.url("/orders/2"), "opaque-mixed").await;
    assert_eq!(opaque.status, 200, "{}", opaque.text());
    assert_eq!(world.upstream.last().headers["x-auth-subject"], "bob");
    assert_eq!(idp.count(), 1);

    // A JWT that fails verification is refused, not introspected.
    let mut expired = claims("orders:read");
    expired["exp"] = (now() - 3600).into();
    let expired = world.key.mint(&expired).unwrap();
    let refused = get_with_token(&gw.url("/orders/3"), &expired).await;
    assert_invalid_token(&refused, "the token has expired");
    assert_eq!(idp.count(), 1);
    assert_eq!(world.upstream.count(), 2);
}

#[tokio::test]
async fn opaque_token_on_a_route_without_an_introspecting_issuer_is_401() {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.answer("opaque-elsewhere", active("orders:read"));
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = format!(
        "{}{}",
        jwt_issuer(&world.jwks.uri()),
        opaque_issuer(&idp.endpoint(), &secret.credentials(), "")
    );
    let extra_route =
        "  - path: /jwt-only\n    upstream: app\n    scopes: [orders:read]\n    issuers: [test]\n";
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, extra_route)).await;

    let refused = get_with_token(&gw.url("/jwt-only"), "opaque-elsewhere").await;
    assert_invalid_token(&refused, "the token is not a compact JWS");
    assert_eq!(idp.count(), 0);
    let ok = get_with_token(&gw.url("/orders/1"), "opaque-elsewhere").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // A cached introspection result still respects the route's `issuers:`.
    let refused = get_with_token(&gw.url("/jwt-only"), "opaque-elsewhere").await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(world.upstream.count(), 1);
    // A JWT naming the introspection-only issuer, on the JWT-only route: not
    // accepted there (401), not a key outage (503).
    let part = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
    let keyless = format!(
        "{}.{}.c2ln",
        part(serde_json::json!({"alg": "ES256", "typ": "JWT"})),
        part(serde_json::json!({"iss": OPAQUE_ISSUER, "exp": now() + 60})),
    );
    let refused = get_with_token(&gw.url("/jwt-only"), &keyless).await;
    assert_invalid_token(&refused, "the token issuer is not accepted on this route");
    assert_eq!(idp.count(), 1);
    assert_eq!(world.upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// 8. Configuration.
// ---------------------------------------------------------------------------

#[test]
fn an_introspecting_issuer_must_name_its_audiences() {
    let secret = SecretFile::new(CLIENT_SECRET);
    let yaml = format!(
        "issuers:
  - name: legacy
    issuer: https://legacy.test
    introspection:
      endpoint: http://127.0.0.1:9/introspect
{}upstreams:
  app:
    url: http://127.0.0.1:9
routes:
  - path: /orders
    upstream: app
",
        secret.credentials()
    );
    let error = scopegate::config::load_str("test.yaml", Path::new("."), &yaml).unwrap_err();
    assert!(error.to_string().starts_with("test.yaml:2:5: "), "{error}");
    assert!(error.to_string().contains("`audiences`"), "{error}");
}

#[test]
fn a_route_served_by_two_introspecting_issuers_must_name_one() {
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuer = |name: &str| {
        format!(
            "  - name: {name}
    issuer: https://{name}.test
    audiences: [api]
    introspection:
      endpoint: http://127.0.0.1:9/introspect
{}",
            secret.credentials()
        )
    };
    let yaml = |route_issuers: &str| {
        format!(
            "issuers:
{}{}upstreams:
  app:
    url: http://127.0.0.1:9
routes:
  - path: /orders
    upstream: app
    scopes: [orders:read]
{route_issuers}  - path: /status
    upstream: app
    auth: none
",
            issuer("one"),
            issuer("two")
        )
    };
    let load = |text: &str| scopegate::config::load_str("test.yaml", Path::new("."), text);
    let ambiguous = "more than one introspecting issuer serves this route; list one in `issuers:`";

    let error =
        load(&yaml("")).expect_err("two introspecting issuers on one route must be refused");
    assert_eq!(error.message, ambiguous);
    assert_eq!(error.file, "test.yaml");
    assert!(error.line.is_some(), "{error}");

    let error = load(&yaml("    issuers: [one, two]\n"))
        .expect_err("listing both introspecting issuers is still ambiguous");
    assert_eq!(error.message, ambiguous);

    for name in ["one", "two"] {
        load(&yaml(&format!("    issuers: [{name}]\n")))
            .unwrap_or_else(|e| panic!("issuers: [{name}] must load: {e}"));
    }
}

#[test]
fn introspection_block_is_validated() {
    let secret = SecretFile::new(CLIENT_SECRET);
    let empty = SecretFile::new("");
    let var = "SCOPEGATE_TEST_INTROSPECTION_SECRET_VALIDATION_UNSET";
    std::env::remove_var(var);
    let file = format!("      client_secret_file: {}\n", secret.path);
    let yaml = |issuer_extra: &str, introspection: &str| {
        format!(
            "issuers:
  - name: opaque
    issuer: {OPAQUE_ISSUER}
    audiences: [{AUDIENCE}]
{issuer_extra}    introspection:
{introspection}upstreams:
  app:
    url: http://127.0.0.1:9
routes:
  - path: /orders
    upstream: app
    scopes: [orders:read]
"
        )
    };
    let endpoint = "      endpoint: http://127.0.0.1:9/introspect\n";
    let id = "      client_id: scopegate\n";
    let cases = [
        (
            yaml("", &format!("{id}{file}")),
            "introspection needs `endpoint` (or `discovery: true` on the issuer)".to_owned(),
        ),
        (
            yaml(
                "",
                &format!("      endpoint: ftp://127.0.0.1/introspect\n{id}{file}"),
            ),
            "`ftp://127.0.0.1/introspect` must be an absolute http:// or https:// URL".to_owned(),
        ),
        (
            yaml("", &format!("{endpoint}      client_id: ''\n{file}")),
            "client_id must not be empty".to_owned(),
        ),
        (
            yaml("", &format!("{endpoint}{id}")),
            "introspection needs client_secret_file or client_secret_env".to_owned(),
        ),
        (
            yaml(
                "",
                &format!("{endpoint}{id}{file}      client_secret_env: {var}\n"),
            ),
            "set either client_secret_file or client_secret_env, not both".to_owned(),
        ),
        (
            yaml(
                "",
                &format!("{endpoint}{id}      client_secret_env: {var}\n"),
            ),
            format!("environment variable `{var}` is not set"),
        ),
        (
            yaml(
                "",
                &format!("{endpoint}{id}      client_secret_file: {}\n", empty.path),
            ),
            format!(
                "the introspection client secret in client_secret_file {} is empty",
                empty.path
            ),
        ),
        (
            yaml(
                "",
                &format!("{endpoint}{id}{file}      auth_method: private_key_jwt\n"),
            ),
            "auth_method must be client_secret_basic or client_secret_post, not `private_key_jwt`"
                .to_owned(),
        ),
        (
            yaml("", &format!("{endpoint}{id}{file}      timeout: 0s\n")),
            "introspection timeout must be greater than zero".to_owned(),
        ),
        (
            yaml("", &format!("{endpoint}{id}{file}      cache_ttl: 25h\n")),
            "cache_ttl may be at most 24h and negative_cache_ttl at most 1h".to_owned(),
        ),
        (
            yaml(
                "",
                &format!("{endpoint}{id}{file}      negative_cache_ttl: 300000000000y\n"),
            ),
            "duration 300000000000years is longer than the most any setting takes (10years)"
                .to_owned(),
        ),
    ];
    for (text, message) in &cases {
        let error = scopegate::config::load_str("test.yaml", Path::new("."), text)
            .err()
            .unwrap_or_else(|| panic!("must be refused ({message}):\n{text}"));
        assert_eq!(error.message, *message, "{text}");
        assert!(error.line.is_some(), "{error}");
    }

    // Inline secrets are not part of the schema.
    let inline = yaml("", &format!("{endpoint}{id}      client_secret: hunter2\n"));
    let error = scopegate::config::load_str("test.yaml", Path::new("."), &inline)
        .expect_err("an inline client_secret must be refused");
    assert!(error.message.contains("client_secret"), "{error}");
    assert!(!error.message.contains("hunter2"), "{error}");

    // A secret pasted where its variable's name belongs is not echoed,
    // upper case (an AWS key id, base32) or not.
    for pasted in ["s3cr3t-Value", "AKIAIOSFODNN7EXAMPLE3KQ"] {
        let yaml = yaml(
            "",
            &format!("{endpoint}{id}      client_secret_env: {pasted}\n"),
        );
        let error = scopegate::config::load_str("test.yaml", Path::new("."), &yaml)
            .expect_err("an unset variable must be refused");
        assert!(
            error
                .message
                .contains("client_secret_env names no variable"),
            "{error}"
        );
        assert!(!error.to_string().contains(pasted), "{error}");
    }

    // A missing secret file in a directory that exists is named.
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("scopegate-secret");
    let missing = yaml(
        "",
        &format!(
            "{endpoint}{id}      client_secret_file: {}\n",
            absent.display()
        ),
    );
    let error = scopegate::config::load_str("test.yaml", Path::new("."), &missing)
        .expect_err("a missing secret file must be refused");
    assert!(
        error.message.starts_with(&format!(
            "cannot read client_secret_file {}: ",
            absent.display()
        )),
        "{error}"
    );

    // A secret pasted where its file's path belongs is not echoed: one
    // without a `/`, or with `/`s that name no directory.
    for pasted in ["s3cr3t-Value", "q8T/zR+kV2/xmW9pL0bN"] {
        let yaml = yaml(
            "",
            &format!("{endpoint}{id}      client_secret_file: {pasted}\n"),
        );
        let error = scopegate::config::load_str("test.yaml", dir.path(), &yaml)
            .expect_err("a missing secret file must be refused");
        assert!(
            error
                .message
                .starts_with("cannot read client_secret_file: "),
            "{error}"
        );
        assert!(error.line.is_some(), "{error}");
        assert!(!error.to_string().contains(pasted), "{error}");
    }

    // Discovery may supply the endpoint.
    scopegate::config::load_str(
        "test.yaml",
        Path::new("."),
        &yaml("    discovery: true\n", &format!("{id}{file}")),
    )
    .unwrap_or_else(|e| panic!("discovery: true without endpoint must load: {e}"));
}

// ---------------------------------------------------------------------------
// 9. Discovery.
// ---------------------------------------------------------------------------

/// `scopegate_discovery_attempts_total` of the issuer `found` (see
/// [`discovered_issuer`]) with `result`.
fn found_attempts(text: &str, result: &str) -> f64 {
    metric(
        text,
        "scopegate_discovery_attempts_total",
        &[("issuer", "found"), ("result", result)],
    )
}

/// An issuer found by discovery, with introspection but no endpoint.
fn discovered_issuer(issuer: &str, secret: &SecretFile) -> String {
    format!(
        "  - name: found
    issuer: {issuer}
    audiences: [{AUDIENCE}]
    discovery: true
    algorithms: [ES256]
    introspection:
{}",
        secret.credentials()
    )
}

/// JWT and opaque token both work against an issuer set up by discovery.
async fn discovered_issuer_works(
    world: &World,
    idp: &IntrospectionServer,
    issuer: &str,
    gw: &Gateway,
) {
    let mut claims = claims("orders:read");
    claims["iss"] = issuer.into();
    let jwt = world.key.mint(&claims).unwrap();
    let ok = get_with_token(&gw.url("/orders/1"), &jwt).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        idp.count(),
        0,
        "a JWT must be verified with the discovered keys"
    );
    assert!(world.jwks.fetches() >= 1);

    let mut answer = active("orders:read");
    answer["iss"] = issuer.into();
    idp.answer("opaque-found", answer);
    let ok = get_with_token(&gw.url("/orders/2"), "opaque-found").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        idp.count(),
        1,
        "the discovered introspection endpoint must be used"
    );
    assert_eq!(world.upstream.count(), 2);
}

/// An issuer found by RFC 8414 discovery: its world (keys and upstream),
/// introspection server, metadata server, client secret file, and the
/// `issuers:` entry.
async fn rfc8414_lab() -> (
    World,
    IntrospectionServer,
    MetadataServer,
    SecretFile,
    String,
) {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.require_client(basic_check());
    let meta = MetadataServer::start().await;
    meta.set(
        RFC8414_PATH,
        &json!({
            "issuer": meta.base(),
            "jwks_uri": world.jwks.uri(),
            "introspection_endpoint": idp.endpoint(),
        }),
    );
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = discovered_issuer(&meta.base(), &secret);
    (world, idp, meta, secret, issuers)
}

#[tokio::test]
async fn discovery_via_rfc8414_metadata() {
    let (world, idp, meta, _secret, issuers) = rfc8414_lab().await;
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;
    assert_eq!(meta.hits().first().map(String::as_str), Some(RFC8414_PATH));
    assert!(!meta.hits().iter().any(|p| p == OIDC_PATH));
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration() {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.require_client(basic_check());
    let meta = MetadataServer::start().await;
    meta.set(
        OIDC_PATH,
        &json!({
            "issuer": meta.base(),
            "jwks_uri": world.jwks.uri(),
            "introspection_endpoint": idp.endpoint(),
            "authorization_endpoint": format!("{}/authorize", meta.base()),
        }),
    );
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = discovered_issuer(&meta.base(), &secret);
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;
    let hits = meta.hits();
    let first_oidc = hits.iter().position(|p| p == OIDC_PATH).unwrap();
    assert!(
        hits[..first_oidc].iter().any(|p| p == RFC8414_PATH),
        "RFC 8414 must be tried first: {hits:?}"
    );
}

/// RFC 8414 3.3: a document for another issuer must not be used, but the
/// other metadata URL may still serve this issuer's (a host that answers
/// the RFC 8414 URL of any path with its root issuer's metadata): nothing
/// of the first is used, the second is.
#[tokio::test]
async fn discovery_passes_over_another_issuers_metadata_to_the_next_url() {
    let (world, idp, meta, _secret, issuers) = rfc8414_lab().await;
    meta.move_document(RFC8414_PATH, OIDC_PATH);
    let elsewhere = IntrospectionServer::start().await;
    meta.set(
        RFC8414_PATH,
        &json!({
            "issuer": "https://root.test",
            "jwks_uri": "https://root.test/keys",
            "introspection_endpoint": elsewhere.endpoint(),
        }),
    );
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;
    assert_eq!(elsewhere.count(), 0);
    let hits = meta.hits();
    assert_eq!(
        hits.first().map(String::as_str),
        Some(RFC8414_PATH),
        "{hits:?}"
    );
}

/// A metadata URL that takes the connection and never answers (a proxy in
/// front of the provider waiting on a dead backend) does not use up the
/// whole attempt: the next URL is still tried.
#[tokio::test]
async fn discovery_falls_back_when_the_first_url_never_answers() {
    let (world, idp, meta, _secret, issuers) = rfc8414_lab().await;
    let document = json!({
        "issuer": meta.base(),
        "jwks_uri": world.jwks.uri(),
        "introspection_endpoint": idp.endpoint(),
    });
    meta.hang(RFC8414_PATH);
    meta.set(OIDC_PATH, &document);
    // Ready only after the first URL's time is up: longer than `start` waits.
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;
    for _ in 0..300 {
        if gw.readyz().await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;
    let hits = meta.hits();
    assert_eq!(hits.first().map(String::as_str), Some(RFC8414_PATH));
    assert!(hits.iter().any(|p| p == OIDC_PATH), "{hits:?}");
}

/// A reload that rebuilds the verified-token caches (here: a new cache
/// size) keeps what discovery found and the keys it led to: with the
/// metadata and the JWKS both failing just then, the reload is applied at
/// once, and the issuer's JWTs and opaque tokens keep working. The kept
/// keys are not fetched again before they are due.
#[tokio::test]
async fn a_reload_keeps_what_discovery_found_while_the_provider_is_down() {
    let (world, idp, meta, _secret, issuers) = rfc8414_lab().await;
    let dir = tempfile::tempdir().unwrap();
    kubelet_write(
        dir.path(),
        1,
        &gateway_yaml(world.upstream.addr, &issuers, ""),
    );
    let gw = start_reloading(dir.path().join("scopegate.yaml"))
        .await
        .gateway;
    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;

    meta.documents.lock().unwrap().clear();
    world.jwks.set_mode(JwksMode::Fail);
    let (meta_hits, jwks_fetches) = (meta.hits().len(), world.jwks.fetches());
    let resized = gateway_yaml(
        world.upstream.addr,
        &issuers,
        "cache:\n  max_entries: 5000\n",
    );
    kubelet_write(dir.path(), 2, &resized);
    wait_for_the_first_reload(&gw).await;

    // Fresh tokens, so that no cache answers for them; the JWKS fails, so
    // the JWT passes on the keys kept.
    let mut claims = claims("orders:read");
    claims["iss"] = meta.base().into();
    claims["jti"] = "after-the-reload".into();
    let jwt = world.key.mint(&claims).unwrap();
    let ok = get_with_token(&gw.url("/orders/3"), &jwt).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let mut answer = active("orders:read");
    answer["iss"] = meta.base().into();
    idp.answer("opaque-after", answer);
    let ok = get_with_token(&gw.url("/orders/4"), "opaque-after").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(idp.count(), 2);
    assert_eq!(meta.hits().len(), meta_hits, "discovery ran again");
    // Time for a refresher that fetched at once to have done so, and for
    // its first retries (from 250 ms) too, on a loaded machine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        world.jwks.fetches(),
        jwks_fetches,
        "the kept keys were fetched again before they were due"
    );
}

/// Keys at a configured `jwks_uri` need no discovery: while no metadata
/// can be had, JWTs are verified all the same. The gateway stays unready
/// until discovery succeeds.
#[tokio::test]
async fn a_configured_jwks_uri_serves_while_discovery_fails() {
    let world = World::new().await;
    // No documents: both well-known URLs answer 404.
    let meta = MetadataServer::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = format!(
        "{}    jwks_uri: {}\n",
        discovered_issuer(&meta.base(), &secret),
        world.jwks.uri()
    );
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;
    let mut claims = claims("orders:read");
    claims["iss"] = meta.base().into();
    let auth = format!("Bearer {}", world.key.mint(&claims).unwrap());
    assert!(
        wait_for_status_with(&gw.url("/orders/1"), &[("authorization", &auth)], 200).await,
        "a JWT waited for discovery, with its keys' URL configured"
    );
    let failed = |text: &str| {
        metric(
            text,
            "scopegate_discovery_attempts_total",
            &[("issuer", "found"), ("result", "unavailable")],
        )
    };
    assert!(
        wait_for_metrics(&gw, |m| failed(m) >= 1.0).await,
        "no failed discovery attempt was counted"
    );
    assert_eq!(gw.readyz().await, 503);
}

/// Discovery that fails at first (no metadata published yet: both URLs
/// answer 404) is tried again with backoff: once the provider publishes its
/// metadata, the gateway turns ready and both kinds of token pass.
#[tokio::test]
async fn discovery_is_tried_again_until_the_metadata_is_published() {
    let (world, idp, meta, _secret, issuers) = rfc8414_lab().await;
    meta.move_document(RFC8414_PATH, "/later");
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;
    assert!(
        wait_for_metrics(&gw, |m| found_attempts(m, "unavailable") >= 1.0).await,
        "no failed discovery attempt was counted"
    );
    assert_eq!(gw.readyz().await, 503);

    meta.move_document("/later", RFC8414_PATH);
    assert!(
        wait_for_metrics(&gw, |m| found_attempts(m, "success") >= 1.0).await,
        "discovery was not tried again"
    );
    // Then the keys it names are fetched.
    let mut ready = false;
    for _ in 0..400 {
        ready = gw.readyz().await == 200;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "not ready once discovery succeeded");
    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;
}

/// Metadata that names no introspection endpoint yet (a provider rolling
/// it out) is applied, counted `incomplete`, and asked again with backoff:
/// once it names one, opaque tokens are introspected, with no restart.
#[tokio::test]
async fn discovery_is_tried_again_until_the_metadata_names_an_introspection_endpoint() {
    let (world, idp, meta, _secret, issuers) = rfc8414_lab().await;
    let complete = json!({
        "issuer": meta.base(),
        "jwks_uri": world.jwks.uri(),
        "introspection_endpoint": idp.endpoint(),
    });
    let mut without = complete.clone();
    without["introspection_endpoint"] = Value::Null;
    meta.set(RFC8414_PATH, &without);
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;
    assert!(
        wait_for_metrics(&gw, |m| found_attempts(m, "incomplete") >= 1.0).await,
        "no incomplete discovery attempt was counted"
    );
    let mut answer = active("orders:read");
    answer["iss"] = meta.base().into();
    idp.answer("opaque-later", answer);
    assert_unavailable(&get_with_token(&gw.url("/orders/1"), "opaque-later").await);
    assert_eq!(idp.count(), 0, "introspected without an endpoint");
    assert_eq!(gw.readyz().await, 503);

    meta.set(RFC8414_PATH, &complete);
    assert!(
        wait_for_metrics(&gw, |m| found_attempts(m, "success") >= 1.0).await,
        "discovery was not tried again after an incomplete attempt"
    );
    let ok = get_with_token(&gw.url("/orders/1"), "opaque-later").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(idp.count(), 1);
    assert!(
        wait_for_status(&format!("http://{}/readyz", gw.admin), 200).await,
        "not ready once the metadata named an introspection endpoint"
    );
}

/// A `jwks_uri` and an introspection `endpoint` in the config win over
/// those the metadata names (here: a port nothing listens on, and another
/// introspection server): discovery still has to succeed for readiness.
#[tokio::test]
async fn configured_endpoints_win_over_discovered_ones() {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.require_client(basic_check());
    let elsewhere = IntrospectionServer::start().await;
    let meta = MetadataServer::start().await;
    meta.set(
        RFC8414_PATH,
        &json!({
            "issuer": meta.base(),
            "jwks_uri": "http://127.0.0.1:9/keys",
            "introspection_endpoint": elsewhere.endpoint(),
        }),
    );
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = format!(
        "  - name: found
    issuer: {}
    audiences: [{AUDIENCE}]
    discovery: true
    algorithms: [ES256]
    jwks_uri: {}
    introspection:
      endpoint: {}
{}",
        meta.base(),
        world.jwks.uri(),
        idp.endpoint(),
        secret.credentials()
    );
    let gw = Gateway::start(&gateway_yaml(world.upstream.addr, &issuers, "")).await;
    assert_eq!(meta.hits().first().map(String::as_str), Some(RFC8414_PATH));

    discovered_issuer_works(&world, &idp, &meta.base(), &gw).await;
    assert_eq!(elsewhere.count(), 0);
}

#[tokio::test]
async fn discovery_refuses_metadata_for_another_issuer() {
    discovery_refuses(|_, world, idp| {
        json!({
            "issuer": "https://impostor.test",
            "jwks_uri": world.jwks.uri(),
            "introspection_endpoint": idp.endpoint(),
        })
    })
    .await;
}

/// A published `jwks_uri` that cannot be called (here relative) is not "no
/// keys": the issuer stays unready and discovery is tried again, instead of
/// its JWTs being turned away as an introspection-only issuer's.
#[tokio::test]
async fn discovery_with_an_unusable_jwks_uri_stays_unready() {
    discovery_refuses(|meta, _, idp| {
        json!({
            "issuer": meta.base(),
            "jwks_uri": "/jwks",
            "introspection_endpoint": idp.endpoint(),
        })
    })
    .await;
}

/// An issuer with only `discovery: true`, whose metadata names no
/// `jwks_uri` (RFC 8414 allows that), could check no token: it stays
/// unready and its tokens get 503, rather than ready with every JWT refused.
#[tokio::test]
async fn discovery_without_keys_for_an_issuer_without_introspection_stays_unready() {
    let world = World::new().await;
    let meta = MetadataServer::start().await;
    let document = json!({ "issuer": meta.base() });
    meta.set(RFC8414_PATH, &document);
    meta.set(OIDC_PATH, &document);
    let issuers = format!(
        "  - name: found\n    issuer: {}\n    audiences: [{AUDIENCE}]\n    discovery: true\n    algorithms: [ES256]\n",
        meta.base()
    );
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;
    meta.wait_for_a_request().await;
    let mut claims = claims("orders:read");
    claims["iss"] = meta.base().into();
    let jwt = world.key.mint(&claims).unwrap();
    for _ in 0..20 {
        assert_eq!(
            gw.readyz().await,
            503,
            "ready without any way to check a token"
        );
        assert_unavailable(&get_with_token(&gw.url("/orders/1"), &jwt).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(world.upstream.count(), 0);
}

/// Endpoints in metadata are held to what configured ones must be: a
/// relative introspection endpoint (which the client cannot call) is left
/// out, so the issuer stays unready and its opaque tokens get 503 without a
/// call, while its JWTs, whose keys the metadata names properly, pass.
#[tokio::test]
async fn discovery_leaves_out_a_relative_introspection_endpoint() {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.answer("opaque-ok", active("orders:read"));
    let meta = MetadataServer::start().await;
    let document = json!({
        "issuer": meta.base(),
        "jwks_uri": world.jwks.uri(),
        "introspection_endpoint": "/introspect",
    });
    meta.set(RFC8414_PATH, &document);
    meta.set(OIDC_PATH, &document);
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = discovered_issuer(&meta.base(), &secret);
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    let mut claims = claims("orders:read");
    claims["iss"] = meta.base().into();
    let jwt = world.key.mint(&claims).unwrap();
    let mut passed = false;
    for _ in 0..200 {
        if get_with_token(&gw.url("/orders/1"), &jwt).await.status == 200 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(passed, "the JWT of a discovered issuer never passed");
    for _ in 0..10 {
        assert_eq!(
            gw.readyz().await,
            503,
            "ready without an introspection endpoint"
        );
        assert_unavailable(&get_with_token(&gw.url("/orders/1"), "opaque-ok").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.count(), 0);
}

/// Serves the metadata `document` makes for both well-known paths and
/// checks that nothing of it is used: the gateway stays unready, and tokens
/// of the issuer get 503 without a call to its endpoints.
async fn discovery_refuses(
    document: impl Fn(&MetadataServer, &World, &IntrospectionServer) -> Value,
) {
    let world = World::new().await;
    let idp = IntrospectionServer::start().await;
    idp.answer("opaque-wrong", active("orders:read"));
    let meta = MetadataServer::start().await;
    let refused = document(&meta, &world, &idp);
    meta.set(RFC8414_PATH, &refused);
    meta.set(OIDC_PATH, &refused);
    let secret = SecretFile::new(CLIENT_SECRET);
    let issuers = discovered_issuer(&meta.base(), &secret);
    let gw = Gateway::start_unready(&gateway_yaml(world.upstream.addr, &issuers, "")).await;

    meta.wait_for_a_request().await;
    for _ in 0..20 {
        assert_eq!(gw.readyz().await, 503, "refused metadata was accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nothing from the refused metadata is used.
    let mut claims = claims("orders:read");
    claims["iss"] = meta.base().into();
    let jwt = get_with_token(&gw.url("/orders/1"), &world.key.mint(&claims).unwrap()).await;
    assert_unavailable(&jwt);
    let opaque = get_with_token(&gw.url("/orders/1"), "opaque-wrong").await;
    assert_unavailable(&opaque);
    assert_eq!(idp.count(), 0);
    assert_eq!(world.jwks.fetches(), 0);
    assert_eq!(world.upstream.count(), 0);
}

// ---------------------------------------------------------------------------
// 10. RFC 9728 protected resource metadata.
// ---------------------------------------------------------------------------

/// A route on the metadata document's path for another method: the
/// document is still served for GET and HEAD, so a method neither serves
/// gets 405 naming all of them.
#[tokio::test]
async fn a_route_beside_the_resource_metadata_keeps_get_and_head_allowed() {
    let extra = "  - path: /.well-known/oauth-protected-resource/orders
    methods: [POST]
    upstream: app
    auth: none
resource:
  resource: https://api.example.com/orders
  authorization_servers: [https://opaque.test]
";
    let s = Opaque::start_with("", extra).await;
    let url = s.gw.url("/.well-known/oauth-protected-resource/orders");
    let doc = get(&url, &[]).await.unwrap();
    assert_eq!(doc.status, 200, "{}", doc.text());
    assert!(
        doc.text().contains("authorization_servers"),
        "{}",
        doc.text()
    );
    let post = send("POST", &url, &[], Bytes::new()).await.unwrap();
    assert_eq!(post.status, 200, "{}", post.text());
    assert_eq!(s.upstream.count(), 1);
    let put = send("PUT", &url, &[], Bytes::new()).await.unwrap();
    assert_eq!(put.status, 405, "{}", put.text());
    assert_eq!(put.header("allow").as_deref(), Some("GET, HEAD, POST"));
    assert_eq!(s.upstream.count(), 1);
    // Only there: elsewhere a 405 names its routes' methods alone.
    let elsewhere = get(&s.gw.url("/orders/1/items"), &[]).await.unwrap();
    assert_eq!(elsewhere.status, 405, "{}", elsewhere.text());
    assert_eq!(
        elsewhere.header("allow").as_deref(),
        Some("DELETE, POST, PUT")
    );
}

#[tokio::test]
async fn resource_metadata_is_served_and_named_in_every_challenge() {
    let resource = "resource:
  resource: https://api.example.com/orders
  authorization_servers: [https://opaque.test]
  scopes_supported: [orders:read, orders:write]
";
    let s = Opaque::start_with("", resource).await;
    let metadata_url = "https://api.example.com/.well-known/oauth-protected-resource/orders";
    let suffix = format!(", resource_metadata=\"{metadata_url}\"");

    let doc = get(
        &s.gw.url("/.well-known/oauth-protected-resource/orders"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(doc.status, 200, "{}", doc.text());
    assert_eq!(
        doc.header("content-type").as_deref(),
        Some("application/json")
    );
    // Public, as the authorization server's metadata: a browser app on
    // another origin that got a challenge may read it, and so may caches
    // serve it to one.
    assert_eq!(
        doc.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let doc = doc.json();
    assert_eq!(doc["resource"], "https://api.example.com/orders");
    assert_eq!(doc["authorization_servers"], json!(["https://opaque.test"]));
    assert_eq!(
        doc["scopes_supported"],
        json!(["orders:read", "orders:write"])
    );
    // HEAD where GET is served (RFC 9110 9.3.2).
    let head = send(
        "HEAD",
        &s.gw.url("/.well-known/oauth-protected-resource/orders"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(head.body.is_empty());
    let length = doc.to_string().len().to_string();
    assert_eq!(
        head.header("content-length").as_deref(),
        Some(length.as_str())
    );
    // Over HTTP/2 too, where hyper would send the body on: DATA on a HEAD
    // stream is a protocol error to the client.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = http::Request::head(s.gw.url("/.well-known/oauth-protected-resource/orders"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"].to_str().unwrap(),
        length
    );
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("the HEAD answer's body broke the stream")
        .to_bytes();
    assert!(body.is_empty());
    assert_eq!(s.upstream.count(), 0);
    // Counted as what it is, not as a request no route matched.
    let text = s.gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "scopegate_requests_total",
            &[("route", "resource_metadata"), ("status", "200")]
        ),
        3.0,
        "{text}"
    );

    // Another method on the document's path: 405 naming GET and HEAD.
    let post = send(
        "POST",
        &s.gw.url("/.well-known/oauth-protected-resource/orders"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405, "{}", post.text());
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
    // A small body sent with a GET is skipped and the connection kept: the
    // request after it is answered too.
    let (both, statuses) = answers_on_one_connection(
        s.gw.addr,
        b"GET /.well-known/oauth-protected-resource/orders HTTP/1.1\r\nHost: gw.test\r\n\
          Content-Length: 5\r\n\r\nhello\
          GET /.well-known/oauth-protected-resource/orders HTTP/1.1\r\nHost: gw.test\r\n\
          Connection: close\r\n\r\n",
        &["GET", "GET"],
    )
    .await;
    assert_eq!(statuses, [200, 200], "the connection was not kept");
    assert!(!says_close(&both[0].head), "{}", both[0].head);

    let missing = get(&s.gw.url("/orders/1"), &[]).await.unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.www_authenticate(),
        format!("Bearer realm=\"scopegate\"{suffix}")
    );

    s.idp.answer("reader", active("orders:read"));
    let inactive = s.get("/orders/1", "inactive-token").await;
    assert_eq!(inactive.status, 401);
    assert_eq!(
        inactive.www_authenticate(),
        format!(
            "Bearer realm=\"scopegate\", error=\"invalid_token\", \
             error_description=\"{NOT_ACTIVE}\"{suffix}"
        )
    );

    let unknown_jwt = World::new().await.token("orders:read");
    let foreign = s.get("/orders/1", &unknown_jwt).await;
    assert_eq!(foreign.status, 401);
    assert!(
        foreign
            .www_authenticate()
            .starts_with("Bearer realm=\"scopegate\", error=\"invalid_token\"")
            && foreign.www_authenticate().ends_with(&suffix),
        "{}",
        foreign.www_authenticate()
    );

    let forbidden = s.get("/admin", "reader").await;
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden
            .www_authenticate()
            .starts_with("Bearer realm=\"scopegate\", error=\"insufficient_scope\"")
            && forbidden.www_authenticate().contains("scope=\"admin\"")
            && forbidden.www_authenticate().ends_with(&suffix),
        "{}",
        forbidden.www_authenticate()
    );
    assert_eq!(s.upstream.count(), 0);
}

// ---------------------------------------------------------------------------
// 11. Metrics.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cache_hits_are_counted_and_no_metric_or_log_shows_a_token_or_secret() {
    let (logs, _capturing) = Logs::capture();
    let s = Opaque::start("").await;
    let token = "opaque-metrics-token-4b1d";
    s.idp.answer(token, active("orders:read"));
    let hits = |text: &str| {
        metric(
            text,
            "scopegate_token_cache_requests_total",
            &[("kind", "introspection"), ("result", "hit")],
        )
    };
    let misses = |text: &str| {
        metric(
            text,
            "scopegate_token_cache_requests_total",
            &[("kind", "introspection"), ("result", "miss")],
        )
    };

    assert_eq!(s.get("/orders/1", token).await.status, 200);
    let before = s.gw.metrics().await;
    assert_eq!(misses(&before), 1.0, "{before}");
    assert_eq!(s.get("/orders/1", token).await.status, 200);
    assert_eq!(s.get("/orders/2", token).await.status, 200);
    let after = s.gw.metrics().await;
    assert_eq!(hits(&after), hits(&before) + 2.0, "{after}");
    assert_eq!(misses(&after), 1.0);
    assert_eq!(introspection_results(&after, "active"), 1.0);
    assert_eq!(
        metric(
            &after,
            "scopegate_introspection_duration_seconds_count",
            &[("issuer", "opaque")]
        ),
        1.0
    );

    // A failing and an inactive token too, then look for leaks.
    s.idp.set_mode(Mode::Status500);
    let failing = "opaque-failing-token-9c2e";
    assert_eq!(s.get("/orders/1", failing).await.status, 503);
    s.idp.set_mode(Mode::Serve);
    let inactive = "opaque-inactive-token-77aa";
    assert_eq!(s.get("/orders/1", inactive).await.status, 401);
    let text = s.gw.metrics().await;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    for secret in [token, failing, inactive, CLIENT_SECRET, basic.as_str()] {
        assert!(!text.contains(secret), "metrics leak `{secret}`");
    }
    assert_eq!(introspection_results(&text, "inactive"), 1.0, "{text}");
    assert_eq!(introspection_results(&text, "http_error"), 1.0, "{text}");
    // The failure is logged with its cause, without the token that met it.
    assert!(
        logs.text().lines().any(|l| l.contains("WARN")
            && l.contains("introspection failed")
            && l.contains("result=\"http_error\"")
            && l.contains("answered 500")),
        "{}",
        logs.text()
    );
    // Stopped, so that what it logs as connections end is read too.
    let Opaque { gw, .. } = s;
    gw.stop().await;
    logs.assert_none_of(&[
        ("the active token", token),
        ("the token whose introspection failed", failing),
        ("the inactive token", inactive),
        ("the introspection client secret", CLIENT_SECRET),
        ("the introspection client credentials", &basic),
    ]);
}

#[path = "introspection/hostile_answers.rs"]
mod hostile_answers;
#[path = "introspection/hostile_metadata.rs"]
mod hostile_metadata;

/// Two issuers introspecting at one endpoint: an answer tells whose token
/// it is only by its `iss` (RFC 7662 4 leaves the check to the server, which
/// cannot tell the two apart), so each takes only answers naming it. Issuers
/// at endpoints of their own still take answers without `iss`.
#[tokio::test]
async fn issuers_sharing_an_endpoint_take_only_answers_naming_them() {
    let upstream = Upstream::start().await;
    let secret = SecretFile::new(CLIENT_SECRET);
    let config = |opaque_endpoint: &str, other_endpoint: &str| {
        format!(
            "server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
issuers:
  - name: opaque
    issuer: {OPAQUE_ISSUER}
    audiences: [{AUDIENCE}]
    introspection:
      endpoint: {opaque_endpoint}
{cred}  - name: other
    issuer: https://other.test
    audiences: [{AUDIENCE}]
    introspection:
      endpoint: {other_endpoint}
{cred}upstreams:
  app:
    url: http://{up}
routes:
  - path: /a
    upstream: app
    issuers: [opaque]
  - path: /b
    upstream: app
    issuers: [other]
",
            cred = secret.credentials(),
            up = upstream.addr,
        )
    };
    let without_iss = || {
        let mut answer = active("");
        answer.as_object_mut().unwrap().remove("iss");
        answer
    };
    let mut of_other = active("");
    of_other["iss"] = "https://other.test".into();

    let idp = IntrospectionServer::start().await;
    // The same endpoint, spelled otherwise: the same server all the same.
    let spelled_otherwise = idp
        .endpoint()
        .replace("http://127.0.0.1:", "HTTP://127.0.0.1:");
    let gw = Gateway::start(&config(&idp.endpoint(), &spelled_otherwise)).await;
    idp.answer("no-iss", without_iss());
    idp.answer("opaque-token", active(""));
    idp.answer("other-token", of_other.clone());
    for (path, token, status) in [
        ("/a", "no-iss", 401),
        ("/b", "no-iss", 401),
        ("/a", "opaque-token", 200),
        ("/b", "opaque-token", 401),
        ("/a", "other-token", 401),
        ("/b", "other-token", 200),
    ] {
        let reply = get_with_token(&gw.url(path), token).await;
        assert_eq!(reply.status, status, "{path} {token}: {reply:?}");
    }

    // Endpoints of their own: the endpoint's word is enough.
    let second = IntrospectionServer::start().await;
    let gw = Gateway::start(&config(&idp.endpoint(), &second.endpoint())).await;
    second.answer("no-iss", without_iss());
    for (path, status) in [("/a", 200), ("/b", 200)] {
        let reply = get_with_token(&gw.url(path), "no-iss").await;
        assert_eq!(reply.status, status, "{path}: {reply:?}");
    }
}
