//! Interoperability with an authorization server nobody on the team wrote: the
//! npm package `oidc-provider` (pinned in `tests/interop/package-lock.json`),
//! started by `tests/interop/idp.mjs` on 127.0.0.1. Real tokens from its token
//! endpoint go through scopegate, which finds the IdP's keys and introspection
//! endpoint by discovery on the IdP's own metadata: RFC 9068 JWTs (ES256 and
//! RS256, `typ: at+jwt`), opaque tokens by RFC 7662 introspection, RFC 7009
//! revocation, and what still works once the IdP is gone.
//!
//! Needs `node` (and `npm` the first time, for `npm ci`). Without them the test
//! says so and passes, except under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

/// The client that gets tokens (client_credentials), and its secret.
const APP_CLIENT: &str = "app";
const APP_SECRET: &str = "app-secret";
/// scopegate's own client at the IdP, for introspection.
const SCOPEGATE_CLIENT: &str = "scopegate";
const SCOPEGATE_SECRET: &str = "scopegate-secret";
/// Resource indicators (RFC 8707) the IdP knows; each is its tokens' `aud`.
const JWT_ES256: &str = "urn:orders:jwt";
const JWT_RS256: &str = "urn:orders:rs256";
const OPAQUE: &str = "urn:orders:opaque";
const OTHER_API: &str = "urn:billing:jwt";
/// How long scopegate may cache an introspection answer in the main gateway.
/// The caching gateway's `cache_ttl`: long enough that a check right after
/// caching finds the entry even on a slow machine.
const CACHE_TTL: Duration = Duration::from_secs(8);

/// `oidc-provider` as a child process; killed when dropped.
struct Idp {
    child: Option<Child>,
    issuer: String,
}

impl Idp {
    /// Starts `idp.mjs` on a free port and waits for its ready line.
    fn start() -> Self {
        let mut child = Command::new("node")
            .args(["idp.mjs", "0"])
            .current_dir(interop_dir())
            // Holding stdin open keeps it alive; it exits when this process does.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node idp.mjs");
        let stdout = child.stdout.take().unwrap();
        // Own the child before anything can panic, so it is killed then too.
        let mut idp = Self {
            child: Some(child),
            issuer: String::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("idp.mjs printed no ready line within 60s");
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("idp.mjs ready line is not JSON ({e}): {line:?}"));
        assert_eq!(ready["ready"], true, "{line}");
        idp.issuer = ready["issuer"].as_str().expect("issuer").to_owned();
        idp
    }

    /// Kills the IdP and waits for it to be gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn form(pairs: &[(&str, &str)]) -> Bytes {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        form.append_pair(k, v);
    }
    Bytes::from(form.finish())
}

fn basic(client: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client}:{secret}")))
}

/// The IdP's endpoints, from its own OpenID Connect discovery document.
struct Endpoints {
    token: String,
    revocation: String,
}

impl Endpoints {
    async fn discover(issuer: &str) -> Self {
        let meta = get(&format!("{issuer}/.well-known/openid-configuration"), &[])
            .await
            .unwrap();
        assert_eq!(meta.status, 200, "{}", meta.text());
        let meta = meta.json();
        assert_eq!(meta["issuer"], issuer);
        let url = |name: &str| meta[name].as_str().expect(name).to_owned();
        Self {
            token: url("token_endpoint"),
            revocation: url("revocation_endpoint"),
        }
    }

    /// A client_credentials access token for `resource` with `scope`.
    async fn token(&self, resource: &str, scope: &str) -> String {
        let reply = send(
            "POST",
            &self.token,
            &[
                ("authorization", &basic(APP_CLIENT, APP_SECRET)),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ]),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "token endpoint: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert_eq!(body["scope"], scope, "{body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// RFC 7009 revocation, by the client the token was issued to.
    async fn revoke(&self, token: &str) {
        let reply = send(
            "POST",
            &self.revocation,
            &[
                ("authorization", &basic(APP_CLIENT, APP_SECRET)),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form(&[("token", token), ("token_type_hint", "access_token")]),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "revocation endpoint: {}", reply.text());
    }
}

/// The JOSE header of a compact JWS.
fn jose_header(token: &str) -> Value {
    let b64 = token.split('.').next().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// One issuer (the IdP) found by discovery only: keys and introspection
/// endpoint come from its metadata.
fn config(issuer: &str, secret_file: &str, upstream: &Upstream, cache_ttl: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
issuers:
  - name: oidc-provider
    issuer: {issuer}
    discovery: true
    audiences: [{JWT_ES256}, {JWT_RS256}, {OPAQUE}]
    algorithms: [ES256, RS256]
    require_typ: at+jwt
    introspection:
      client_id: {SCOPEGATE_CLIENT}
      client_secret_file: {secret_file}
      auth_method: client_secret_basic
      timeout: 2s
      cache_ttl: {cache_ttl}
      negative_cache_ttl: 0s
upstreams:
  app:
    url: http://{upstream}
    connect_timeout: 1s
    request_timeout: 5s
routes:
  - path: /orders/{{id}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /orders/{{*rest}}
    methods: [POST]
    upstream: app
    scopes: [orders:write]
"#,
        upstream = upstream.addr,
    )
}

fn assert_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(
        reply.status,
        status,
        "{what}: got {} ({}) {}",
        reply.status,
        reply.www_authenticate(),
        reply.text()
    );
}

async fn post_with_token(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send("POST", url, &[("authorization", &auth)], Bytes::from("{}"))
        .await
        .unwrap()
}

/// `GET url` with `token` until it answers `status`, for about
/// `CACHE_TTL` + 10 s (a cache entry ending); the last answer.
async fn answers_eventually(url: &str, token: &str, status: u16) -> Reply {
    let deadline = Instant::now() + CACHE_TTL + Duration::from_secs(10);
    loop {
        let reply = get_with_token(url, token).await;
        if reply.status == status || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_interop() {
    if !interop_node_modules("tests/interop.rs") {
        return;
    }
    let mut idp = tokio::task::spawn_blocking(Idp::start).await.unwrap();
    eprintln!("oidc-provider is up as {}", idp.issuer);
    let endpoints = Endpoints::discover(&idp.issuer).await;

    // Real tokens, straight from the IdP's token endpoint.
    let jwt_read = endpoints.token(JWT_ES256, "orders:read").await;
    let header = jose_header(&jwt_read);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    let jwt_write = endpoints.token(JWT_ES256, "orders:write").await;
    let rs256_read = endpoints.token(JWT_RS256, "orders:read").await;
    assert_eq!(jose_header(&rs256_read)["alg"], "RS256");
    let other_api = endpoints.token(OTHER_API, "orders:read").await;
    let opaque_read = endpoints.token(OPAQUE, "orders:read").await;
    assert_eq!(opaque_read.split('.').count(), 1, "opaque: {opaque_read}");
    let opaque_write = endpoints.token(OPAQUE, "orders:write").await;
    let opaque_revoked = endpoints.token(OPAQUE, "orders:read").await;
    let opaque_cached = endpoints.token(OPAQUE, "orders:read").await;
    // Never shown to scopegate before the IdP stops.
    let opaque_unseen = endpoints.token(OPAQUE, "orders:read").await;
    let jwt_unseen = endpoints.token(JWT_ES256, "orders:read").await;

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("introspection-secret");
    std::fs::write(&secret_file, format!("{SCOPEGATE_SECRET}\n")).unwrap();
    let secret_file = secret_file.to_str().unwrap();
    let upstream = Upstream::start().await;
    // Both gateways become ready only after discovery against the IdP's real
    // metadata gave them its JWKS and introspection endpoint.
    let gw = Gateway::start(&config(
        &idp.issuer,
        secret_file,
        &upstream,
        &format!("{}s", CACHE_TTL.as_secs()),
    ))
    .await;
    let uncached = Gateway::start(&config(&idp.issuer, secret_file, &upstream, "0s")).await;
    // Its entries outlast the test: what it still serves from its cache
    // needs no clock.
    let held = Gateway::start(&config(&idp.issuer, secret_file, &upstream, "1h")).await;
    let read = gw.url("/orders/42");

    // RFC 9068 JWTs, verified locally with the discovered keys.
    let ok = get_with_token(&read, &jwt_read).await;
    assert_status(&ok, 200, "ES256 JWT with orders:read");
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/orders/42");
    assert_eq!(seen.headers["x-auth-client-id"], APP_CLIENT);
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");
    let ok = get_with_token(&read, &rs256_read).await;
    assert_status(&ok, 200, "RS256 JWT with orders:read");
    let forbidden = get_with_token(&read, &jwt_write).await;
    assert_status(&forbidden, 403, "JWT without orders:read");
    assert!(
        forbidden
            .www_authenticate()
            .contains("error=\"insufficient_scope\""),
        "{}",
        forbidden.www_authenticate()
    );
    assert!(forbidden
        .www_authenticate()
        .contains("scope=\"orders:read\""));
    let ok = post_with_token(&gw.url("/orders/42/cancel"), &jwt_write).await;
    assert_status(&ok, 200, "JWT with orders:write on a write route");
    let wrong_aud = get_with_token(&read, &other_api).await;
    assert_status(&wrong_aud, 401, "JWT for another API (aud)");
    assert!(wrong_aud
        .www_authenticate()
        .contains("error=\"invalid_token\""));

    // Opaque tokens, introspected at the discovered endpoint.
    let ok = get_with_token(&read, &opaque_read).await;
    assert_status(&ok, 200, "opaque token with orders:read");
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-client-id"], APP_CLIENT);
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");
    let forbidden = get_with_token(&read, &opaque_write).await;
    assert_status(&forbidden, 403, "opaque token without orders:read");
    assert!(forbidden
        .www_authenticate()
        .contains("error=\"insufficient_scope\""));
    let ok = post_with_token(&gw.url("/orders/42/cancel"), &opaque_write).await;
    assert_status(&ok, 200, "opaque token with orders:write on a write route");
    let metrics = gw.metrics().await;
    let active = metric(
        &metrics,
        "scopegate_introspection_requests_total",
        &[("issuer", "oidc-provider"), ("result", "active")],
    );
    assert!(active >= 1.0, "{metrics}");

    // Revocation at the IdP: the uncached gateway sees it at once, the caching
    // ones once their entry (cache_ttl) ends.
    let ok = get_with_token(&read, &opaque_revoked).await;
    assert_status(&ok, 200, "opaque token before revocation");
    let ok = get_with_token(&held.url("/orders/42"), &opaque_revoked).await;
    assert_status(&ok, 200, "opaque token before revocation (cache_ttl 1h)");
    let ok = get_with_token(&uncached.url("/orders/42"), &opaque_revoked).await;
    assert_status(&ok, 200, "opaque token before revocation (uncached)");
    endpoints.revoke(&opaque_revoked).await;
    let revoked = get_with_token(&uncached.url("/orders/42"), &opaque_revoked).await;
    assert_status(&revoked, 401, "revoked opaque token (cache_ttl 0s)");
    assert!(revoked
        .www_authenticate()
        .contains("error=\"invalid_token\""));
    let cached = get_with_token(&held.url("/orders/42"), &opaque_revoked).await;
    assert_status(&cached, 200, "revoked opaque token still cached");
    let revoked = answers_eventually(&read, &opaque_revoked, 401).await;
    assert_status(
        &revoked,
        401,
        "revoked opaque token after its cache entry ended",
    );

    // The IdP goes away.
    let ok = get_with_token(&read, &opaque_cached).await;
    assert_status(&ok, 200, "opaque token cached before the IdP stops");
    let ok = get_with_token(&held.url("/orders/42"), &opaque_cached).await;
    assert_status(&ok, 200, "opaque token cached before the IdP stops (1h)");
    idp.stop();
    let ok = get_with_token(&held.url("/orders/42"), &opaque_cached).await;
    assert_status(&ok, 200, "cached opaque token while the IdP is down");
    let down = get_with_token(&read, &opaque_unseen).await;
    assert_status(&down, 503, "new opaque token while the IdP is down");
    assert!(down.header("retry-after").is_some(), "{:?}", down.headers);
    let ok = get_with_token(&read, &jwt_unseen).await;
    assert_status(&ok, 200, "new JWT while the IdP is down (cached keys)");
    let ok = get_with_token(&read, &jwt_read).await;
    assert_status(&ok, 200, "JWT seen before, while the IdP is down");
    let down = answers_eventually(&read, &opaque_cached, 503).await;
    assert_status(
        &down,
        503,
        "opaque token after its cache entry ended, IdP down",
    );
    let down = get_with_token(&uncached.url("/orders/42"), &opaque_read).await;
    assert_status(&down, 503, "opaque token, IdP down, cache_ttl 0s");
}
