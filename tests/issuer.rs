//! The built-in authorization server, end to end through the gateway's
//! listener: every grant, error and response field of the token endpoint
//! (seed 000's client credentials request and sample response), JWKS and RFC
//! 8414 metadata, RFC 7662 introspection, RFC 7009 revocation, signing keys
//! from PEM files, and the memory, file and redis stores. Two campaigns of
//! generated cases (`SCOPEGATE_HOSTILE_CASES` sets how many): hostile token
//! requests (`hostile_token_requests`, default 256) and token lifecycles of
//! introspection, revocation, refresh and use (`token_lifecycles`, default
//! 128).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

/// The built-in server's `iss`.
const ISS: &str = "https://as.test";
/// The seed's token path.
const TOKEN: &str = "/auth/v2/accesstoken";
const INTROSPECT: &str = "/oauth2/introspect";
const REVOKE: &str = "/oauth2/revoke";
const JWKS: &str = "/.well-known/jwks.json";
const METADATA: &str = "/.well-known/oauth-authorization-server";
/// Every client's secret (one argon2 hash keeps the suite fast).
const SECRET: &str = "s3cret-value";
/// Every user's password.
const PASSWORD: &str = "wonderland";

fn secret_hash() -> String {
    argon2_hash(SECRET)
}

fn password_hash() -> String {
    argon2_hash(PASSWORD)
}

/// A gateway config with the built-in authorization server. `extra` is more
/// of the `authorization_server:` block (indented two spaces).
///
/// Clients: `svc` (client_credentials + refresh_token; orders:read
/// reports:read), `plain` (client_credentials only; orders:read), `other`
/// (like svc; orders:read), `pw` (password + refresh_token; orders:read
/// admin), `pw2` (password only; orders:read), `web` (authorization_code + refresh_token). Users: `alice`
/// (limited to orders:read) and `bob`. Routes: `/orders/{id}` (GET,
/// orders:read), `/reports` (reports:read), `/admin` (admin), `/local-only`
/// (orders:read, issuer `local` only).
fn config(upstream: SocketAddr, extra: &str) -> String {
    let h = secret_hash();
    let p = password_hash();
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
authorization_server:
  issuer: {ISS}
  token_path: {TOKEN}
  access_token_ttl: 1h
  refresh_token_ttl: 30m
{extra}  clients:
    - client_id: svc
      client_secret_hash: "{h}"
      grants: [client_credentials, refresh_token]
      scopes: [orders:read, reports:read]
      audience: orders-api
    - client_id: plain
      client_secret_hash: "{h}"
      scopes: [orders:read]
      audience: orders-api
    - client_id: other
      client_secret_hash: "{h}"
      grants: [client_credentials, refresh_token]
      scopes: [orders:read]
      audience: orders-api
    - client_id: pw
      client_secret_hash: "{h}"
      grants: [password, refresh_token]
      scopes: [orders:read, admin]
      audience: orders-api
    - client_id: pw2
      client_secret_hash: "{h}"
      grants: [password]
      scopes: [orders:read]
      audience: orders-api
    - client_id: web
      client_secret_hash: "{h}"
      grants: [authorization_code, refresh_token]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [https://app.test/cb]
    - client_id: spa
      grants: [authorization_code, refresh_token]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [https://app.test/cb]
  users:
    - username: alice
      password_hash: "{p}"
      scopes: [orders:read]
    - username: bob
      password_hash: "{p}"
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
  - path: /reports
    upstream: app
    scopes: [reports:read]
  - path: /admin
    upstream: app
    scopes: [admin]
  - path: /local-only
    upstream: app
    scopes: [orders:read]
    issuers: [local]
"#
    )
}

/// An upstream and a gateway on the standard config plus `extra`.
async fn start(extra: &str) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, extra)).await;
    (upstream, gw)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The form-body credentials of a client (client_secret_post).
fn creds(client: &str) -> String {
    format!("client_id={client}&client_secret={}", enc(SECRET))
}

/// An `Authorization: Basic` value.
fn basic(client: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client}:{secret}")))
}

/// POSTs a form body.
async fn post_form(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send("POST", url, &all, Bytes::from(body.to_owned()))
        .await
        .unwrap()
}

/// POSTs a form body to the token endpoint.
async fn token_request(gw: &Gateway, body: &str) -> Reply {
    post_form(&gw.url(TOKEN), &[], body).await
}

/// A client credentials grant (form credentials); asserts 200.
async fn client_credentials(gw: &Gateway, client: &str) -> Value {
    let r = token_request(
        gw,
        &format!("grant_type=client_credentials&{}", creds(client)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A refresh grant by `client` (form credentials).
async fn refresh(gw: &Gateway, client: &str, refresh_token: &str) -> Reply {
    token_request(
        gw,
        &format!(
            "grant_type=refresh_token&refresh_token={}&{}",
            enc(refresh_token),
            creds(client)
        ),
    )
    .await
}

/// A password grant by `pw`.
async fn password(gw: &Gateway, username: &str, password: &str) -> Reply {
    password_by(gw, "pw", username, password).await
}

/// A password grant by `client`.
async fn password_by(gw: &Gateway, client: &str, username: &str, password: &str) -> Reply {
    token_request(
        gw,
        &format!(
            "grant_type=password&username={}&password={}&{}",
            enc(username),
            enc(password),
            creds(client)
        ),
    )
    .await
}

async fn introspect(gw: &Gateway, client: &str, token: &str) -> Reply {
    post_form(
        &gw.url(INTROSPECT),
        &[],
        &format!("token={}&{}", enc(token), creds(client)),
    )
    .await
}

async fn revoke(gw: &Gateway, client: &str, token: &str) -> Reply {
    post_form(
        &gw.url(REVOKE),
        &[],
        &format!("token={}&{}", enc(token), creds(client)),
    )
    .await
}

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {v}"))
        .to_owned()
}

/// An OAuth error response: status, `error`, and no caching.
#[track_caller]
fn assert_oauth_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let description = r.json()["error_description"].clone();
    let description = description
        .as_str()
        .unwrap_or_else(|| panic!("no description: {}", r.text()));
    // RFC 6749 5.2: printable ASCII but `"` and `\`.
    assert!(
        description
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
        "{description:?}"
    );
}

/// The gateway accepts `token` on `/orders/{id}`.
async fn assert_accepted(gw: &Gateway, token: &str) {
    let r = get_with_token(&gw.url("/orders/7"), token).await;
    assert_eq!(r.status, 200, "{} {}", r.text(), r.www_authenticate());
}

/// The gateway refuses `token` on `/orders/{id}` as an invalid token.
async fn assert_refused(gw: &Gateway, token: &str) {
    let r = get_with_token(&gw.url("/orders/7"), token).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.www_authenticate().contains("error=\"invalid_token\""),
        "{}",
        r.www_authenticate()
    );
}

/// Writes a fresh P-256 PEM key into `dir`; returns its path and contents.
fn write_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let pem = p256_pem();
    let path = dir.join(name);
    std::fs::write(&path, &pem).unwrap();
    (path, pem)
}

/// `signing_keys:` with one ES256 key file.
fn signing_key_yaml(kid: &str, path: &Path) -> String {
    format!(
        "  signing_keys:\n    - kid: \"{kid}\"\n      alg: ES256\n      private_key_file: \"{}\"\n",
        path.display()
    )
}

/// `signing_keys:` with a key written to `dir`, and the redis at `url` as
/// the store: what replicas sharing one state need.
fn redis_store_yaml(dir: &Path, url: &str) -> String {
    let (key, _) = write_key(dir, "signing.pem");
    format!(
        "{}  store: {{ redis: \"{url}\" }}\n",
        signing_key_yaml("k1", &key),
    )
}

/// The standard config with a signing key written to `dir` and a file
/// store there (`state.redb`).
fn file_store_config(upstream: SocketAddr, dir: &Path) -> String {
    let (key, _) = write_key(dir, "signing.pem");
    let extra = format!(
        "{}  store: {{ file: \"{}\" }}\n",
        signing_key_yaml("k1", &key),
        dir.join("state.redb").display()
    );
    config(upstream, &extra)
}

// ---------------------------------------------------------------------------
// client_credentials
// ---------------------------------------------------------------------------

/// A client granted no scope gets a token without a `scope` field: `""` is
/// no scope value (RFC 6749 3.3).
#[tokio::test]
async fn a_token_of_no_scope_has_no_scope_field() {
    let upstream = Upstream::start().await;
    let bare = config(upstream.addr, "").replace(
        "      grants: [password]\n      scopes: [orders:read]\n",
        "      grants: [client_credentials]\n      scopes: []\n",
    );
    assert!(bare.contains("scopes: []"));
    let gw = Gateway::start(&bare).await;
    let body = client_credentials(&gw, "pw2").await;
    assert!(body["access_token"].is_string(), "{body}");
    assert!(body.get("scope").is_none(), "{body}");
}

#[tokio::test]
async fn client_credentials_exactly_as_seed_000() {
    let (upstream, gw) = start("").await;
    // The seed's request: grant_type in the query, credentials in the form body.
    let r = post_form(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials"),
        &[("cache-control", "no-cache")],
        &creds("svc"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(r.header("pragma").as_deref(), Some("no-cache"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["status"], "approved", "{body}");
    assert_eq!(body["scope"], "orders:read reports:read", "{body}");
    assert_eq!(body["expires_in"].as_u64(), Some(3600), "{body}");
    // The client may refresh: the seed's refresh fields are all there.
    let refresh_token = s(&body, "refresh_token");
    assert!(refresh_token.len() >= 32, "{body}");
    assert_eq!(
        body["refresh_token_expires_in"].as_u64(),
        Some(1800),
        "{body}"
    );
    let issued_at = body["refresh_token_issued_at"]
        .as_u64()
        .expect("refresh_token_issued_at is a number");
    assert!(
        issued_at.abs_diff(now()) <= 60,
        "refresh_token_issued_at {issued_at} is not seconds since epoch near {}",
        now()
    );
    assert_eq!(body["refresh_count"].as_u64(), Some(0), "{body}");

    // The access token is an RFC 9068 JWT.
    let access = s(&body, "access_token");
    assert_ne!(access, refresh_token);
    let header = jwt_part(&access, 0);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert!(header["kid"].is_string(), "{header}");
    let claims = jwt_part(&access, 1);
    assert_eq!(claims["iss"], ISS, "{claims}");
    assert_eq!(claims["sub"], "svc", "{claims}");
    assert_eq!(claims["aud"], "orders-api", "{claims}");
    assert_eq!(claims["client_id"], "svc", "{claims}");
    assert_eq!(claims["scope"], "orders:read reports:read", "{claims}");
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(iat.abs_diff(now()) <= 60, "{claims}");
    assert_eq!(exp, iat + 3600, "{claims}");
    assert!(!s(&claims, "jti").is_empty(), "{claims}");

    // The gateway accepts it where its scope suffices, and only there.
    assert_accepted(&gw, &access).await;
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/orders/7");
    assert_eq!(seen.headers["x-auth-subject"], "svc");
    let reports = get_with_token(&gw.url("/reports"), &access).await;
    assert_eq!(reports.status, 200, "{}", reports.text());
    let local = get_with_token(&gw.url("/local-only"), &access).await;
    assert_eq!(local.status, 200, "the built-in issuer is named `local`");
    let admin = get_with_token(&gw.url("/admin"), &access).await;
    assert_eq!(admin.status, 403, "{}", admin.text());
    assert!(
        admin
            .www_authenticate()
            .contains("error=\"insufficient_scope\""),
        "{}",
        admin.www_authenticate()
    );
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn basic_auth_scope_subset_and_no_refresh_without_the_grant() {
    let (_upstream, gw) = start("").await;
    // client_secret_basic, grant_type in the body, a subset of the scopes.
    let auth = basic("svc", SECRET);
    let r = post_form(
        &gw.url(TOKEN),
        &[("authorization", &auth)],
        "grant_type=client_credentials&scope=orders:read",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["scope"], "orders:read", "{body}");
    let access = s(&body, "access_token");
    assert_eq!(jwt_part(&access, 1)["scope"], "orders:read");
    assert_accepted(&gw, &access).await;
    let reports = get_with_token(&gw.url("/reports"), &access).await;
    assert_eq!(
        reports.status, 403,
        "the subset must not carry reports:read"
    );

    // A client without the refresh_token grant gets no refresh fields.
    let body = client_credentials(&gw, "plain").await;
    assert_eq!(body["scope"], "orders:read", "{body}");
    for field in [
        "refresh_token",
        "refresh_token_expires_in",
        "refresh_token_issued_at",
        "refresh_count",
    ] {
        assert!(body.get(field).is_none(), "{field} in {body}");
    }
    assert!(jwt_part(&s(&body, "access_token"), 1).get("sid").is_none());
    assert_accepted(&gw, &s(&body, "access_token")).await;
}

#[tokio::test]
async fn scope_outside_the_clients_is_invalid_scope() {
    let (_upstream, gw) = start("").await;
    for scope in [
        "admin",
        "orders:read admin",
        "nonsense",
        "a\"b",
        "c\\d",
        "caf\u{e9}",
    ] {
        let r = token_request(
            &gw,
            &format!(
                "grant_type=client_credentials&scope={}&{}",
                enc(scope),
                creds("svc")
            ),
        )
        .await;
        assert_oauth_error(&r, 400, "invalid_scope");
        let description = r.json()["error_description"].to_string();
        assert!(description.contains("for this client\""), "{description}");
    }
    // A parameter without a value counts as not sent (RFC 6749 3.1): `scope=`
    // asks for what no scope asks for, the client's scopes; so does a
    // `scope` of blanks, which names no scope.
    for scope in ["", "%20", "+++"] {
        let r = token_request(
            &gw,
            &format!(
                "grant_type=client_credentials&scope={scope}&{}",
                creds("svc")
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{scope:?}: {}", r.text());
        assert_eq!(
            r.json()["scope"],
            "orders:read reports:read",
            "{scope:?}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn apigee_response_style_matches_the_seed_sample() {
    let (_upstream, gw) = start("  response_style: apigee\n").await;
    let r = post_form(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials"),
        &[("cache-control", "no-cache")],
        &creds("svc"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.json();
    assert_eq!(body["token_type"], "BearerToken", "{body}");
    // Only grant_type may ride in the query: a scope there would otherwise
    // be ignored and the token granted every scope of the client.
    let misplaced = post_form(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials&scope=orders:read"),
        &[],
        &creds("svc"),
    )
    .await;
    assert_oauth_error(&misplaced, 400, "invalid_request");
    // So may grant_type only once, in the query or in the body.
    let twice = post_form(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials"),
        &[],
        &format!("{}&grant_type=client_credentials", creds("svc")),
    )
    .await;
    assert_oauth_error(&twice, 400, "invalid_request");
    // A parameter the server does not know is ignored (RFC 6749 3.2): a
    // cache-buster, say.
    let ignored = post_form(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials&cb=17"),
        &[],
        &creds("svc"),
    )
    .await;
    assert_eq!(ignored.status, 200, "{}", ignored.text());
    assert_eq!(body["status"], "approved", "{body}");
    assert_eq!(body["scope"], "orders:read reports:read", "{body}");
    assert_eq!(body["expires_in"], "3600", "{body}");
    assert_eq!(body["refresh_token_expires_in"], "1800", "{body}");
    assert_eq!(body["refresh_count"], "0", "{body}");
    let issued_ms = s(&body, "refresh_token_issued_at");
    assert_eq!(issued_ms.len(), 13, "milliseconds expected: {issued_ms}");
    let issued_ms: u64 = issued_ms.parse().unwrap();
    assert!(issued_ms.abs_diff(now() * 1000) <= 60_000, "{issued_ms}");
    let access = s(&body, "access_token");
    assert_accepted(&gw, &access).await;

    // Refreshing keeps the style.
    let r = refresh(&gw, "svc", &s(&body, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["token_type"], "BearerToken", "{body}");
    assert_eq!(body["refresh_count"], "1", "{body}");
    assert_eq!(body["expires_in"], "3600", "{body}");
}

// ---------------------------------------------------------------------------
// refresh_token
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refresh_rotates_and_counts() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let r0 = s(&first, "refresh_token");

    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let second = r.json();
    let r1 = s(&second, "refresh_token");
    assert_ne!(r1, r0, "the refresh token must rotate");
    assert_eq!(second["refresh_count"].as_u64(), Some(1), "{second}");
    assert_eq!(second["scope"], first["scope"], "{second}");
    assert_eq!(second["token_type"], "Bearer");
    assert_eq!(second["refresh_token_expires_in"].as_u64(), Some(1800));
    let a1 = s(&second, "access_token");
    assert_ne!(a1, s(&first, "access_token"));
    let c1 = jwt_part(&a1, 1);
    assert_eq!(c1["sub"], "svc");
    assert_eq!(c1["scope"], "orders:read reports:read");
    assert_eq!(
        c1["sid"],
        jwt_part(&s(&first, "access_token"), 1)["sid"],
        "one grant, one family"
    );
    // The grant's handle, which names it to the token endpoint, is in its
    // refresh tokens only: whoever is shown an access token cannot name the
    // grant (nor end it by posing as a thief).
    let handle = r0.split('.').next().unwrap();
    assert_eq!(r1.split('.').next(), Some(handle));
    assert!(handle.len() >= 43, "{r0}");
    for token in [&a1, &s(&first, "access_token")] {
        let claims = jwt_part(token, 1).to_string();
        assert!(!claims.contains(handle), "{claims}");
    }
    assert_accepted(&gw, &a1).await;

    let r = refresh(&gw, "svc", &r1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let third = r.json();
    assert_eq!(third["refresh_count"].as_u64(), Some(2), "{third}");
    assert_eq!(third["scope"], first["scope"], "{third}");
    let r2 = s(&third, "refresh_token");
    assert!(r2 != r1 && r2 != r0);
    assert_accepted(&gw, &s(&third, "access_token")).await;

    // Narrowing on refresh is allowed; widening is not.
    let r = token_request(
        &gw,
        &format!(
            "grant_type=refresh_token&refresh_token={}&scope=admin&{}",
            enc(&r2),
            creds("svc")
        ),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_scope");
}

/// RFC 6749 6: a refresh may ask for fewer scopes for its access token, but
/// the grant keeps its scope; a later refresh without `scope` gets all of it.
#[tokio::test]
async fn narrowing_on_refresh_does_not_narrow_the_grant() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let narrowed = |refresh_token: &str, scope: &str| {
        format!(
            "grant_type=refresh_token&refresh_token={}&scope={scope}&{}",
            enc(refresh_token),
            creds("svc")
        )
    };
    let r = token_request(&gw, &narrowed(&s(&first, "refresh_token"), "orders:read")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read");
    assert_eq!(
        jwt_part(&s(&r.json(), "access_token"), 1)["scope"],
        "orders:read"
    );

    let r = refresh(&gw, "svc", &s(&r.json(), "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read reports:read");
    let r = token_request(
        &gw,
        &narrowed(&s(&r.json(), "refresh_token"), "reports:read"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "reports:read");
}

/// A refresh refused for its request (a scope beyond the grant) leaves the
/// token as it was: the client's corrected retry gets tokens, where a burnt
/// token would read as a replay and end the grant (RFC 9700 4.14.2 means a
/// use that was honoured).
#[tokio::test]
async fn a_refused_refresh_leaves_the_token_usable() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let rt = s(&first, "refresh_token");
    let r = token_request(
        &gw,
        &format!(
            "grant_type=refresh_token&refresh_token={}&scope=admin&{}",
            enc(&rt),
            creds("svc")
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_scope");
    assert_eq!(
        r.json()["error_description"],
        "scope `admin` is not allowed by the grant this refresh token belongs to"
    );

    let r = refresh(&gw, "svc", &rt).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let next = s(&r.json(), "refresh_token");
    // Honoured once, the token is used up: presenting it again ends the grant.
    let r = refresh(&gw, "svc", &rt).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("already used"), "{}", r.text());
    let r = refresh(&gw, "svc", &next).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

/// A refresh mints what the grant's user and client may have now: a user
/// removed from the config ends the grant, and a scope taken from the client
/// is no longer minted (the store outlives the config, here across a
/// restart on the same file).
#[tokio::test]
async fn a_refresh_follows_the_users_and_scopes_of_the_current_config() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let yaml = file_store_config(upstream.addr, dir.path());
    let gw = Gateway::start(&yaml).await;
    let bob = password(&gw, "bob", PASSWORD).await;
    assert_eq!(bob.status, 200, "{}", bob.text());
    let svc = client_credentials(&gw, "svc").await;
    gw.stop().await;

    let without_bob = yaml.replace(
        &format!(
            "    - username: bob\n      password_hash: \"{}\"\n",
            password_hash()
        ),
        "",
    );
    let narrower = without_bob.replace(
        "      scopes: [orders:read, reports:read]\n",
        "      scopes: [orders:read]\n",
    );
    assert!(narrower.len() < without_bob.len() && without_bob.len() < yaml.len());
    let gw = Gateway::start(&narrower).await;
    let r = refresh(&gw, "pw", &s(&bob.json(), "refresh_token")).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let r = refresh(&gw, "svc", &s(&svc, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read");
    assert_eq!(
        jwt_part(&s(&r.json(), "access_token"), 1)["scope"],
        "orders:read"
    );
}

/// A refresh whose grant's scopes have all been taken from the client
/// since (a restart on the same file store, as after a reload) is
/// `invalid_scope`, not a token of no scope whose response names none (RFC
/// 6749 3.3, 5.1; without `scope` a refresh asks for the grant's, RFC 6749
/// 6), and its refresh token introspects as inactive.
#[tokio::test]
async fn a_refresh_with_none_of_its_scopes_left_is_invalid_scope() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let yaml = file_store_config(upstream.addr, dir.path());
    let gw = Gateway::start(&yaml).await;
    let r = token_request(
        &gw,
        &format!(
            "grant_type=password&username=bob&password={}&scope=admin&{}",
            enc(PASSWORD),
            creds("pw")
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rt = s(&r.json(), "refresh_token");
    assert_eq!(introspect(&gw, "pw", &rt).await.json()["active"], true);
    gw.stop().await;

    let narrower = yaml.replace("scopes: [orders:read, admin]\n", "scopes: [orders:read]\n");
    assert!(narrower.len() < yaml.len());
    let gw = Gateway::start(&narrower).await;
    let v = introspect(&gw, "pw", &rt).await.json();
    assert_eq!(v, json!({"active": false}));
    let r = refresh(&gw, "pw", &rt).await;
    assert_oauth_error(&r, 400, "invalid_scope");
}

#[tokio::test]
async fn refresh_replay_revokes_the_whole_family() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let (a0, r0) = (s(&first, "access_token"), s(&first, "refresh_token"));
    // Another grant of the same client, which must survive.
    let unrelated = client_credentials(&gw, "svc").await;
    let unrelated_access = s(&unrelated, "access_token");

    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a1, r1) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    // Both access tokens work (and are now in the gateway's cache).
    assert_accepted(&gw, &a0).await;
    assert_accepted(&gw, &a1).await;

    // The rotated token is replayed: refused, and the grant ends.
    let replay = refresh(&gw, "svc", &r0).await;
    assert_oauth_error(&replay, 400, "invalid_grant");
    let newest = refresh(&gw, "svc", &r1).await;
    assert_oauth_error(&newest, 400, "invalid_grant");
    assert_refused(&gw, &a0).await;
    assert_refused(&gw, &a1).await;
    // Other grants are untouched.
    assert_accepted(&gw, &unrelated_access).await;
    let r = refresh(&gw, "svc", &s(&unrelated, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // One replay is counted (the newest token's refusal is not one).
    let text = gw.metrics().await;
    let replays = |kind| metric(&text, "scopegate_issuer_replays_total", &[("kind", kind)]);
    assert_eq!(replays("refresh_token"), 1.0, "{text}");
    assert_eq!(replays("code"), 0.0, "{text}");
    let refreshes = |result| {
        metric(
            &text,
            "scopegate_issuer_token_requests_total",
            &[("grant", "refresh_token"), ("result", result)],
        )
    };
    assert_eq!(refreshes("issued"), 2.0, "{text}");
    assert_eq!(refreshes("invalid_grant"), 2.0, "{text}");
}

/// A rotated refresh token presented again counts as a replay (and logs
/// one) only until its grant has ended: once the first replay has revoked
/// the grant, the same token again is `invalid_grant` and no new replay
/// (README, metrics: "a rotated refresh token's only until its grant has
/// ended").
#[tokio::test]
async fn a_rotated_refresh_token_counts_as_a_replay_only_until_its_grant_has_ended() {
    let (_upstream, gw) = start("").await;
    let r0 = s(&client_credentials(&gw, "svc").await, "refresh_token");
    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let replays = |text: &str| {
        metric(
            text,
            "scopegate_issuer_replays_total",
            &[("kind", "refresh_token")],
        )
    };
    // The replay that ends the grant: counted once.
    let r = refresh(&gw, "svc", &r0).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_eq!(replays(&gw.metrics().await), 1.0);
    // The grant has ended; the same rotated token again is no new replay.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let r = refresh(&gw, "svc", &r0).await;
        assert_oauth_error(&r, 400, "invalid_grant");
        answers.push(r.json()["error_description"].clone());
    }
    let text = gw.metrics().await;
    assert_eq!(
        replays(&text),
        1.0,
        "a rotated token of a grant that has already ended was counted as another replay"
    );
    assert!(
        answers.iter().all(|a| a == "the grant has been revoked"),
        "{answers:?}"
    );
    // Nor is one of a grant its client ended (RFC 7009).
    let grant = client_credentials(&gw, "svc").await;
    let r = refresh(&gw, "svc", &s(&grant, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        revoke(&gw, "svc", &s(&r.json(), "refresh_token"))
            .await
            .status,
        200
    );
    let r = refresh(&gw, "svc", &s(&grant, "refresh_token")).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_eq!(replays(&gw.metrics().await), 1.0);
}

/// The counters an alert on a stolen token or a failing store keys on are
/// exported at 0 before their first event, so that `increase()` sees that
/// event (a series' first sample is no increase), as are the config
/// reload results.
#[tokio::test]
async fn alert_counters_start_at_zero() {
    let (_upstream, gw) = start("").await;
    let text = gw.metrics().await;
    for kind in ["code", "refresh_token"] {
        let value = exported(&text, "scopegate_issuer_replays_total", &[("kind", kind)]);
        assert_eq!(value, Some(0.0), "{kind}: {text}");
    }
    for reason in ["backend", "corrupt", "full", "config"] {
        let labels = [("store", "memory"), ("kind", reason)];
        let value = exported(&text, "scopegate_issuer_store_errors_total", &labels);
        assert_eq!(value, Some(0.0), "{reason}: {text}");
    }
    for result in ["success", "invalid", "setup_failed", "not_ready"] {
        let value = exported(
            &text,
            "scopegate_config_reloads_total",
            &[("result", result)],
        );
        assert_eq!(value, Some(0.0), "{result}: {text}");
    }
}

/// With `refresh_token_reuse_grace`, a client whose refresh answer was lost
/// may send its token again within the grace: it gets new tokens, and the
/// token the lost answer carried is replaced. A third use, or the lost
/// token turning up, is a replay that ends the grant. Without the grace
/// (the default), the retry itself is one (`refresh_replay_revokes_...`).
#[tokio::test]
async fn a_refresh_whose_answer_was_lost_may_be_retried_within_the_grace() {
    let (_upstream, gw) = start("  refresh_token_reuse_grace: 30s\n").await;
    let first = client_credentials(&gw, "svc").await;
    let r0 = s(&first, "refresh_token");
    let lost = refresh(&gw, "svc", &r0).await;
    assert_eq!(lost.status, 200, "{}", lost.text());
    let r1 = s(&lost.json(), "refresh_token");
    // Usable once more, it is live: active to its client until the grace
    // ends, and another client may not revoke it (RFC 7009 2.1).
    let answer = introspect(&gw, "svc", &r0).await.json();
    assert_eq!(answer["active"], true, "{answer}");
    let exp = answer["exp"].as_u64().unwrap();
    assert!(exp <= now_unix() + 30 && exp + 60 > now_unix(), "{answer}");
    assert_oauth_error(&revoke(&gw, "other", &r0).await, 400, "unauthorized_client");
    let retry = refresh(&gw, "svc", &r0).await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["refresh_count"].as_u64(), Some(2));
    let (a2, r2) = (
        s(&retry.json(), "access_token"),
        s(&retry.json(), "refresh_token"),
    );
    assert_accepted(&gw, &a2).await;
    // The grant goes on with the retry's token ...
    let r = refresh(&gw, "svc", &r2).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a3, r3) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    // ... and the lost answer's token, turning up, is a replay.
    let r = refresh(&gw, "svc", &r1).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_refused(&gw, &a3).await;
    assert_oauth_error(&refresh(&gw, "svc", &r3).await, 400, "invalid_grant");

    // Two requests with one token at once: one rotates it, the other is
    // that rotation's retry (the next generation after it), whichever comes
    // first, and the token the first got is then a replay.
    for _ in 0..5 {
        let grant = client_credentials(&gw, "svc").await;
        let r0 = s(&grant, "refresh_token");
        let (a, b) = tokio::join!(refresh(&gw, "svc", &r0), refresh(&gw, "svc", &r0));
        let mut answers: Vec<Value> = [a, b]
            .iter()
            .map(|r| {
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()
            })
            .collect();
        answers.sort_by_key(|a| a["refresh_count"].as_u64());
        let counts: Vec<_> = answers
            .iter()
            .map(|a| a["refresh_count"].as_u64())
            .collect();
        assert_eq!(counts, [Some(1), Some(2)]);
        let r = refresh(&gw, "svc", &s(&answers[0], "refresh_token")).await;
        assert_oauth_error(&r, 400, "invalid_grant");
        assert!(r.text().contains("already used"), "{}", r.text());
    }

    // A retry is once: the same token a third time ends the grant.
    let second = client_credentials(&gw, "svc").await;
    let r0 = s(&second, "refresh_token");
    for _ in 0..2 {
        let r = refresh(&gw, "svc", &r0).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = refresh(&gw, "svc", &r0).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_refused(&gw, &s(&second, "access_token")).await;
}

/// A refresh token is recognised as rotated however many rotations ago it
/// was replaced, and after its own lifetime, for as long as the grant is
/// in use: a thief who used a stolen token first and keeps refreshing is
/// caught when the client comes back with the token it has.
#[tokio::test]
async fn a_token_rotated_long_ago_still_reads_as_a_replay() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &config(upstream.addr, "").replace("refresh_token_ttl: 30m", "refresh_token_ttl: 5s"),
    )
    .await;
    let first = client_credentials(&gw, "svc").await;
    let stolen = s(&first, "refresh_token");
    let expires = now_unix() + 5;
    // The thief refreshes with it first, and again and again, past the
    // time the stolen token would have expired.
    let mut latest = stolen.clone();
    let mut access = Vec::new();
    while now_unix() <= expires + 1 {
        let r = refresh(&gw, "svc", &latest).await;
        assert_eq!(r.status, 200, "{}", r.text());
        latest = s(&r.json(), "refresh_token");
        access.push(s(&r.json(), "access_token"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(access.len() >= 3, "{}", access.len());
    assert_accepted(&gw, access.last().unwrap()).await;
    // The client comes back with the token it was given: a replay, and the
    // grant ends for the thief too.
    let r = refresh(&gw, "svc", &stolen).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert!(r.text().contains("already used"), "{}", r.text());
    let r = refresh(&gw, "svc", &latest).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_refused(&gw, access.last().unwrap()).await;
}

/// Another client presenting a grant's rotated refresh token is refused
/// without ending the grant: it is no replay by the grant's client.
#[tokio::test]
async fn a_rotated_token_from_another_client_leaves_the_grant() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let r0 = s(&first, "refresh_token");
    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a1, r1) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    let r = refresh(&gw, "other", &r0).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert!(r.text().contains("another client"), "{}", r.text());
    assert_accepted(&gw, &a1).await;
    let r = refresh(&gw, "svc", &r1).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Tokens that name a grant but are not one of its tokens (a guessed
/// secret, a generation not reached, another spelling of one) are unknown:
/// refused, and the grant goes on.
#[tokio::test]
async fn a_forged_refresh_token_of_a_real_grant_is_unknown() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let r0 = s(&first, "refresh_token");
    let mut parts = r0.splitn(3, '.');
    let (handle, generation, secret) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    assert_eq!(generation, "0", "{r0}");
    let forged = [
        format!("{handle}.0.{}", "A".repeat(secret.len())),
        format!("{handle}.0.{secret}x"),
        format!("{handle}.1.{secret}"),
        format!("{handle}.00.{secret}"),
        format!("{handle}.+0.{secret}"),
        format!("{handle}.-1.{secret}"),
        format!("{handle}.4294967296.{secret}"),
        format!("{handle}..{secret}"),
        format!("{handle}.0."),
        format!(".0.{secret}"),
        format!("{handle}.0"),
        handle.to_owned(),
    ];
    for token in &forged {
        let r = refresh(&gw, "svc", token).await;
        assert_oauth_error(&r, 400, "invalid_grant");
        assert!(r.text().contains("unknown"), "{token}: {}", r.text());
    }
    assert_accepted(&gw, &s(&first, "access_token")).await;
    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn refresh_token_of_another_client_or_unknown_is_invalid_grant() {
    let (_upstream, gw) = start("").await;
    let svc = client_credentials(&gw, "svc").await;
    let r = refresh(&gw, "other", &s(&svc, "refresh_token")).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // The refused attempt did not spend the owner's token nor end its grant.
    assert_accepted(&gw, &s(&svc, "access_token")).await;
    let owner = refresh(&gw, "svc", &s(&svc, "refresh_token")).await;
    assert_eq!(owner.status, 200, "{}", owner.text());
    assert_eq!(owner.json()["refresh_count"].as_u64(), Some(1));
    assert_accepted(&gw, &s(&svc, "access_token")).await;
    let svc = owner.json();

    let r = refresh(&gw, "svc", "bm90LWEtcmVhbC1yZWZyZXNoLXRva2VuLWF0LWFsbC0hIQ").await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // An access token is not a refresh token.
    let r = refresh(&gw, "svc", &s(&svc, "access_token")).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let r = token_request(&gw, &format!("grant_type=refresh_token&{}", creds("svc"))).await;
    assert_oauth_error(&r, 400, "invalid_request");
    // A client without the refresh_token grant may not refresh.
    let r = refresh(&gw, "plain", &s(&svc, "refresh_token")).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

// ---------------------------------------------------------------------------
// password
// ---------------------------------------------------------------------------

#[tokio::test]
async fn password_grant_is_off_unless_the_client_has_it() {
    let (_upstream, gw) = start("").await;
    let r = token_request(
        &gw,
        &format!(
            "grant_type=password&username=alice&password={}&{}",
            enc(PASSWORD),
            creds("svc")
        ),
    )
    .await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

#[tokio::test]
async fn password_grant_issues_a_user_token() {
    let (upstream, gw) = start("").await;
    let r = password(&gw, "alice", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.json();
    // alice is limited to orders:read although the client may also ask for admin.
    assert_eq!(body["scope"], "orders:read", "{body}");
    assert_eq!(body["refresh_count"].as_u64(), Some(0), "{body}");
    let access = s(&body, "access_token");
    let claims = jwt_part(&access, 1);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["client_id"], "pw", "{claims}");
    assert_accepted(&gw, &access).await;
    assert_eq!(upstream.last().headers["x-auth-subject"], "alice");
    let admin = get_with_token(&gw.url("/admin"), &access).await;
    assert_eq!(admin.status, 403);

    // Asking alice for admin is refused; bob (no user limit) gets it.
    let r = token_request(
        &gw,
        &format!(
            "grant_type=password&username=alice&password={}&scope=admin&{}",
            enc(PASSWORD),
            creds("pw")
        ),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_scope");
    assert_eq!(
        r.json()["error_description"],
        "scope `admin` is not allowed for this client and user"
    );
    let r = password(&gw, "bob", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read admin");
    let admin = get_with_token(&gw.url("/admin"), &s(&r.json(), "access_token")).await;
    assert_eq!(admin.status, 200, "{}", admin.text());

    // The user's grant refreshes with the user as subject.
    let r = refresh(&gw, "pw", &s(&body, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwt_part(&s(&r.json(), "access_token"), 1)["sub"], "alice");
    assert_eq!(r.json()["scope"], "orders:read");

    let wrong = password(&gw, "alice", "not-the-password").await;
    assert_oauth_error(&wrong, 400, "invalid_grant");
    let unknown = password(&gw, "mallory", PASSWORD).await;
    assert_oauth_error(&unknown, 400, "invalid_grant");
    let r = token_request(
        &gw,
        &format!("grant_type=password&username=alice&{}", creds("pw")),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
}

/// Counted per user and client: the client that guessed is locked for
/// that user, other users and other clients are not (a client cannot lock a
/// user out of the others).
#[tokio::test]
async fn password_failures_are_rate_limited_per_user_and_client() {
    let (_upstream, gw) = start("").await;
    for attempt in 1..=5 {
        let r = password(&gw, "alice", &format!("guess-{attempt}")).await;
        assert_oauth_error(&r, 400, "invalid_grant");
    }
    // Locked now, even with the right password.
    let r = password(&gw, "alice", PASSWORD).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry > 0);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    // Another user, and the client itself, are not locked.
    let r = password(&gw, "bob", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Nor is the user through another client.
    let r = password_by(&gw, "pw2", "alice", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = password(&gw, "alice", PASSWORD).await;
    assert_eq!(r.status, 429, "{}", r.text());
}

/// A form body that stops arriving gets 408 once the form's time is up,
/// and the connection closes: otherwise an unauthenticated client could
/// hold connection slots at the token endpoint forever.
#[tokio::test]
async fn a_stalled_form_body_gets_408_and_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_upstream, gw) = start("").await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type="
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        scopegate::issuer::FORM_READ_TIMEOUT * 3,
        stream.read_to_end(&mut out),
    )
    .await;
    assert!(read.is_ok(), "the connection stayed open");
    let reply = RawReply::parse(&String::from_utf8_lossy(&out));
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(
        reply.error().as_deref(),
        Some("invalid_request"),
        "{reply:?}"
    );
    // The endpoint still serves.
    assert!(client_credentials(&gw, "svc").await["access_token"].is_string());
}

/// Guesses sent all at once get no more tries than guesses sent one by one:
/// checks under way count against the limit (before, all of a burst found
/// the user unlimited and every one was checked).
#[tokio::test]
async fn a_burst_of_guesses_gets_no_more_tries_than_the_limit() {
    let (_upstream, gw) = start("").await;
    let gw = std::sync::Arc::new(gw);
    let mut set = tokio::task::JoinSet::new();
    for attempt in 0..20 {
        let gw = std::sync::Arc::clone(&gw);
        set.spawn(async move {
            password(&gw, "alice", &format!("burst-{attempt}"))
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = set.join_next().await {
        statuses.push(status.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 400).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, refused), (5, 15), "{statuses:?}");
}

/// A burst of right passwords is held back only until the first checks pass:
/// nothing is refused (a place under the limit is not a failure).
#[tokio::test]
async fn a_burst_of_right_passwords_is_served() {
    let (_upstream, gw) = start("").await;
    let gw = std::sync::Arc::new(gw);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let gw = std::sync::Arc::clone(&gw);
        set.spawn(async move { password(&gw, "bob", PASSWORD).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(status) = set.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(statuses, vec![200; 12]);
}

// ---------------------------------------------------------------------------
// authorization_code (the exchange; codes come from an authorization endpoint)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn authorization_code_exchange_refuses_what_it_cannot_honour() {
    let (_upstream, gw) = start("").await;
    let r = token_request(
        &gw,
        &format!(
            "grant_type=authorization_code&code=never-issued&redirect_uri={}&code_verifier={}&{}",
            enc("https://app.test/cb"),
            "a".repeat(43),
            creds("web")
        ),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let r = token_request(
        &gw,
        &format!("grant_type=authorization_code&{}", creds("web")),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    let r = token_request(
        &gw,
        &format!("grant_type=authorization_code&code=x&{}", creds("svc")),
    )
    .await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

// ---------------------------------------------------------------------------
// Request and client authentication errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_endpoint_request_errors() {
    let (upstream, gw) = start("").await;
    let r = token_request(&gw, &creds("svc")).await;
    assert_oauth_error(&r, 400, "invalid_request");

    let r = token_request(
        &gw,
        &format!("grant_type=urn:example:magic&{}", creds("svc")),
    )
    .await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");

    // RFC 6749 2.3.1: never in the query string.
    let r = post_form(
        &gw.url(&format!(
            "{TOKEN}?grant_type=client_credentials&client_id=svc&client_secret={}",
            enc(SECRET)
        )),
        &[],
        "",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert!(
        s(&r.json(), "error_description").contains("2.3.1"),
        "{}",
        r.text()
    );
    let r = post_form(
        &gw.url(&format!("{TOKEN}?client_secret={}", enc(SECRET))),
        &[],
        "grant_type=client_credentials&client_id=svc",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert!(s(&r.json(), "error_description").contains("2.3.1"));

    // Basic and the form body together.
    let auth = basic("svc", SECRET);
    let r = post_form(
        &gw.url(TOKEN),
        &[("authorization", &auth)],
        &format!("grant_type=client_credentials&{}", creds("svc")),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");

    // Repeated parameters are refused (RFC 6749 3.1).
    let r = token_request(
        &gw,
        &format!(
            "grant_type=client_credentials&grant_type=client_credentials&{}",
            creds("svc")
        ),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");

    // No credentials at all: a 401 names the scheme to use (RFC 6749 5.2,
    // RFC 9110 11.6.1).
    let r = token_request(&gw, "grant_type=client_credentials").await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(r.www_authenticate().starts_with("Basic realm="), "{r:?}");

    // Only POST.
    let r = get(&gw.url(TOKEN), &[]).await.unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    let r = get(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials&client_id=svc"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405, "{}", r.text());

    // A JSON body instead of a form.
    let body =
        json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET});
    let r = send(
        "POST",
        &gw.url(TOKEN),
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap();
    assert_oauth_error(&r, 400, "invalid_request");

    // The endpoint never reached the upstream.
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn wrong_secret_is_invalid_client_with_a_basic_challenge_only_for_basic() {
    let (_upstream, gw) = start("").await;
    let auth = basic("svc", "wrong-secret");
    let r = post_form(
        &gw.url(TOKEN),
        &[("authorization", &auth)],
        "grant_type=client_credentials",
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
    let challenge = r.www_authenticate();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    let r = token_request(
        &gw,
        "grant_type=client_credentials&client_id=other&client_secret=wrong-secret",
    )
    .await;
    // Credentials in the form: RFC 6749 5.2's 400, with no challenge (a
    // browser would prompt for a password on a single-page app's request).
    assert_oauth_error(&r, 400, "invalid_client");
    assert_eq!(r.www_authenticate(), "", "{r:?}");

    // An unknown client looks the same as a wrong secret.
    let r = token_request(
        &gw,
        &format!("grant_type=client_credentials&client_id=ghost&client_secret={SECRET}"),
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_client");
}

/// A flood of made-up client ids with secrets (no failure limit holds back
/// a fresh id, and each costs a decoy check) does not take the places of
/// real checks: a client whose secret is not yet remembered gets its token
/// while the flood is under way, and the flood is refused as unknown
/// clients are, not with 503.
#[tokio::test]
async fn a_flood_of_made_up_client_ids_leaves_real_clients_their_checks() {
    let (_upstream, gw) = start("").await;
    let flood: Vec<_> = (0..150)
        .map(|i| {
            let url = gw.url(TOKEN);
            tokio::spawn(async move {
                let body = format!(
                    "grant_type=client_credentials&client_id=made-up-{i}&client_secret=guess"
                );
                post_form(&url, &[], &body).await
            })
        })
        .collect();
    // Under way: some answered, others not yet.
    while !flood.iter().any(tokio::task::JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client_credentials(&gw, "svc").await;
    assert!(
        !flood.iter().all(tokio::task::JoinHandle::is_finished),
        "the flood was over before the real client came"
    );
    for answer in flood {
        let r = answer.await.unwrap();
        assert_oauth_error(&r, 400, "invalid_client");
    }
}

/// Every failed client authentication gets the same answer, so that the
/// token, introspection and revocation endpoints do not tell which client
/// ids exist, or which are public (RFC 6749 5.2 lists an unknown client and
/// a missing secret under one error). A secret sent for an unknown id costs
/// a check and counts towards the limit as a wrong one does, so the limit
/// does not tell them apart either. A public client has no secret to guess:
/// nothing counts against it, so made-up secrets cannot lock its users out.
#[tokio::test]
async fn failed_client_authentication_does_not_tell_known_clients_from_unknown() {
    let (_upstream, gw) = start("").await;
    let answer = |r: Reply| (r.status, r.www_authenticate(), r.text());
    // Without a secret: not counted, so repeatable.
    let body = |id: &str| format!("grant_type=client_credentials&client_id={id}");
    let unknown = answer(token_request(&gw, &body("nobody")).await);
    assert_eq!(unknown.0, 400, "{unknown:?}");
    for known in ["svc", "spa"] {
        assert_eq!(
            answer(token_request(&gw, &body(known)).await),
            unknown,
            "{known}"
        );
    }
    // With a wrong secret: the same answers up to the limit, then 429 for
    // a confidential client and an unknown one alike.
    for id in ["svc", "spa", "nobody"] {
        let body = format!("grant_type=client_credentials&client_id={id}&client_secret=wrong");
        for attempt in 1..=5 {
            let r = answer(token_request(&gw, &body).await);
            assert_eq!(r, unknown, "{id}, attempt {attempt}");
        }
        let limited = if id == "spa" { 400 } else { 429 };
        assert_eq!(token_request(&gw, &body).await.status, limited, "{id}");
    }
    // The same over HTTP Basic and at the introspection endpoint.
    let basic_answer = |id: &str| {
        let auth = basic(id, "wrong-secret");
        let url = gw.url(TOKEN);
        async move {
            answer(
                post_form(
                    &url,
                    &[("authorization", &auth)],
                    "grant_type=client_credentials",
                )
                .await,
            )
        }
    };
    let known = basic_answer("other").await;
    assert_eq!(known.0, 401, "{known:?}");
    assert_eq!(known, basic_answer("ghost").await);
    let introspect_answer = |id: &str| {
        let body = format!("token=x&client_id={id}");
        let url = gw.url(INTROSPECT);
        async move { answer(post_form(&url, &[], &body).await) }
    };
    // RFC 7662 2.3: a 401 with the challenge, even for form credentials.
    let known = introspect_answer("other").await;
    assert_eq!(known.0, 401, "{known:?}");
    assert!(known.1.starts_with("Basic realm="), "{known:?}");
    assert_eq!(known, introspect_answer("ghost").await);
    gw.stop().await;
}

#[tokio::test]
async fn repeated_client_authentication_failures_are_rate_limited() {
    let (_upstream, gw) = start("").await;
    for attempt in 1..=5 {
        let r = token_request(
            &gw,
            &format!("grant_type=client_credentials&client_id=svc&client_secret=guess-{attempt}"),
        )
        .await;
        assert_oauth_error(&r, 400, "invalid_client");
    }
    // Locked, even with the right secret.
    let r = token_request(
        &gw,
        &format!("grant_type=client_credentials&{}", creds("svc")),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry > 0);
    // Credentials in the form: no challenge, as for their 400s.
    assert_eq!(r.header("www-authenticate"), None);
    // The lock also covers introspection and Basic, and only this client.
    // Both are a 401 with the Basic challenge, which RFC 7662 2.3 asks of
    // introspection and RFC 6749 5.2 after Basic, and with `Retry-After`.
    let r = introspect(&gw, "svc", "x").await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"scopegate\"")
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");
    let r = post_form(
        &gw.url(TOKEN),
        &[("authorization", &basic("svc", SECRET))],
        "grant_type=client_credentials",
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"scopegate\"")
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");
    let body = client_credentials(&gw, "other").await;
    assert_eq!(body["status"], "approved");
}

/// Guesses at a client's secret lock out the guesser, not the client: a
/// secret checked before is no guess and passes, and a public client (no
/// secret to guess) is never locked, so its users can still sign in.
#[tokio::test]
async fn guesses_do_not_lock_out_a_known_secret_or_a_public_client() {
    let (_upstream, gw) = start("").await;
    client_credentials(&gw, "other").await;
    for id in ["other", "spa"] {
        for attempt in 1..=8 {
            let r = token_request(
                &gw,
                &format!(
                    "grant_type=client_credentials&client_id={id}&client_secret=guess-{attempt}"
                ),
            )
            .await;
            if id == "other" && attempt > 5 {
                assert_eq!(r.status, 429, "{}", r.text());
            } else {
                assert_oauth_error(&r, 400, "invalid_client");
            }
        }
    }
    let body = client_credentials(&gw, "other").await;
    assert_eq!(body["status"], "approved");
    // The public client's own request (a refresh by `spa`, which has no
    // refresh token here) gets past client authentication.
    let r = token_request(
        &gw,
        "grant_type=refresh_token&refresh_token=unknown&client_id=spa",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // So does one sending its id as `Basic spa:` (an empty password, as
    // golang.org/x/oauth2 does), as an empty `client_secret=` would.
    for form in ["", "&client_secret="] {
        let r = post_form(
            &gw.url(TOKEN),
            &[("authorization", &basic("spa", ""))],
            &format!("grant_type=refresh_token&refresh_token=unknown{form}"),
        )
        .await;
        assert_oauth_error(&r, 400, "invalid_grant");
    }
}

/// RFC 6749 2.3: one authentication method per request, even when the form
/// sends a secret without a client id.
#[tokio::test]
async fn basic_with_a_secret_in_the_form_too_is_refused() {
    let (_upstream, gw) = start("").await;
    let auth = basic("svc", SECRET);
    let r = post_form(
        &gw.url(TOKEN),
        &[("authorization", &auth)],
        "grant_type=client_credentials&client_secret=other",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_request");
}

/// Two `Authorization` headers are two sets of credentials (RFC 6749 5.2:
/// `invalid_request` "includes multiple credentials"; RFC 9110 11.6.2 allows
/// one such field): refused at the token, introspection and revocation
/// endpoints alike, not answered as the first header's client, whichever
/// client a proxy in front would have read.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let (_upstream, gw) = start("").await;
    let first = basic("other", SECRET);
    let second = basic("svc", SECRET);
    let both = [
        ("authorization", first.as_str()),
        ("authorization", second.as_str()),
    ];
    let r = post_form(&gw.url(TOKEN), &both, "grant_type=client_credentials").await;
    assert_oauth_error(&r, 400, "invalid_request");
    let token = s(&client_credentials(&gw, "svc").await, "access_token");
    for path in [INTROSPECT, REVOKE] {
        let r = post_form(&gw.url(path), &both, &format!("token={}", enc(&token))).await;
        assert_oauth_error(&r, 400, "invalid_request");
    }
    // The token is still live: the refused revocation did nothing.
    assert_accepted(&gw, &token).await;
}

/// Only a checked secret counts towards the limit: requests without one,
/// for a known or an unknown client, cost no check and guess nothing, so
/// they neither lock a client out nor fill the limiter's table.
#[tokio::test]
async fn requests_without_a_secret_do_not_count_as_failures() {
    let (_upstream, gw) = start("").await;
    for client_id in ["svc", "nobody"] {
        for _ in 0..10 {
            let r = token_request(
                &gw,
                &format!("grant_type=client_credentials&client_id={client_id}"),
            )
            .await;
            assert_oauth_error(&r, 400, "invalid_client");
        }
    }
    let body = client_credentials(&gw, "svc").await;
    assert_eq!(body["status"], "approved");
    // A wrong secret for an unknown client still counts, as for a known one.
    for attempt in 1..=5 {
        let r = token_request(
            &gw,
            &format!(
                "grant_type=client_credentials&client_id=nobody&client_secret=guess-{attempt}"
            ),
        )
        .await;
        assert_oauth_error(&r, 400, "invalid_client");
    }
    let r = token_request(
        &gw,
        "grant_type=client_credentials&client_id=nobody&client_secret=guess",
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
}

/// A single-page app on another origin may call the token and revocation
/// endpoints when its origin is a registered redirect URI's, and read the
/// public key set and metadata from anywhere; introspection is for resource
/// servers and answers no browser.
#[tokio::test]
async fn browser_apps_get_cors_answers_from_the_endpoints_they_call() {
    let (_upstream, gw) = start("").await;
    let app = "https://app.test";
    let preflight = |path: &'static str, origin: &'static str, method: &'static str| {
        let url = gw.url(path);
        async move {
            send(
                "OPTIONS",
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", "content-type"),
                ],
                Bytes::new(),
            )
            .await
            .unwrap()
        }
    };
    for path in [TOKEN, REVOKE] {
        let r = preflight(path, app, "POST").await;
        assert_eq!(r.status, 204, "{path}: {}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some(app)
        );
        assert_eq!(
            r.header("access-control-allow-methods").as_deref(),
            Some("POST")
        );
        let allowed = r.header("access-control-allow-headers").unwrap_or_default();
        assert!(
            allowed.to_ascii_lowercase().contains("content-type"),
            "{allowed}"
        );
        assert!(r.header("access-control-max-age").is_some(), "{path}");
        assert_eq!(r.header("access-control-allow-credentials"), None);
        // Another origin, or another method: no CORS headers, a refusal.
        for r in [
            preflight(path, "https://evil.test", "POST").await,
            preflight(path, "null", "POST").await,
            preflight(path, app, "PUT").await,
        ] {
            assert_eq!(r.status, 204, "{path}: {}", r.text());
            assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
        }
    }
    let r = preflight(INTROSPECT, app, "POST").await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    // The public documents, from any origin, and saying so without an
    // `Origin` too (caches keep them).
    for path in [JWKS, METADATA] {
        for headers in [&[("origin", "https://anywhere.test")][..], &[]] {
            let r = send("GET", &gw.url(path), headers, Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(
                r.header("access-control-allow-origin").as_deref(),
                Some("*")
            );
        }
    }
    // The real requests: the app's origin may read the answer, success or
    // error, another origin may not; an OPTIONS that is no preflight is
    // still a 405.
    let code_exchange = "grant_type=authorization_code&code=nope&redirect_uri=https%3A%2F%2Fapp.test%2Fcb&client_id=spa&code_verifier=0123456789012345678901234567890123456789abc";
    let r = post_form(&gw.url(TOKEN), &[("origin", app)], code_exchange).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some(app)
    );
    assert_eq!(r.header("vary").as_deref(), Some("Origin"));
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(exposed.contains("Retry-After"), "{exposed}");
    let r = post_form(&gw.url(TOKEN), &[], code_exchange).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary").as_deref(), Some("Origin"));
    let r = post_form(
        &gw.url(TOKEN),
        &[("origin", app)],
        &format!("grant_type=client_credentials&{}", creds("svc")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some(app)
    );
    let r = post_form(
        &gw.url(TOKEN),
        &[("origin", "https://evil.test")],
        code_exchange,
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = post_form(&gw.url(INTROSPECT), &[("origin", app)], "token=x").await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = send("OPTIONS", &gw.url(TOKEN), &[("origin", app)], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// JWKS, metadata, signing keys
// ---------------------------------------------------------------------------

/// The built-in server's endpoints have a route label of their own in the
/// request metrics, so its failures (a full store's 503, a flood of failed
/// client authentications)
/// are not lost among 404 scans under `unmatched`; token requests are
/// counted by grant type and result as well.
#[tokio::test]
async fn authorization_server_requests_are_labelled_as_such() {
    let (_upstream, gw) = start("").await;
    client_credentials(&gw, "svc").await;
    let r = token_request(
        &gw,
        "grant_type=client_credentials&client_id=svc&client_secret=wrong",
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_client");
    let r = token_request(&gw, &format!("grant_type=implicit&{}", creds("svc"))).await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
    assert_eq!(get(&gw.url("/nowhere"), &[]).await.unwrap().status, 404);
    let text = gw.metrics().await;
    let tokens = |grant, result| {
        metric(
            &text,
            "scopegate_issuer_token_requests_total",
            &[("grant", grant), ("result", result)],
        )
    };
    assert_eq!(tokens("client_credentials", "issued"), 1.0, "{text}");
    assert_eq!(
        tokens("client_credentials", "invalid_client"),
        1.0,
        "{text}"
    );
    assert_eq!(tokens("-", "unsupported_grant_type"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "scopegate_issuer_token_requests_total", &[]),
        3.0,
        "{text}"
    );
    let requests = |route, status| {
        metric(
            &text,
            "scopegate_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("authorization_server", "200"), 1.0, "{text}");
    assert_eq!(requests("authorization_server", "400"), 2.0, "{text}");
    assert_eq!(requests("unmatched", "404"), 1.0, "{text}");
    assert_eq!(requests("unmatched", "200"), 0.0, "{text}");
}

/// An endpoint's error answer to an HTTP/1 request whose body it did not
/// read (a wrong method, a form cut short) says that the connection ends
/// with it (RFC 9112 9.6); an answer, error or not, given after the form
/// was read whole keeps the connection (a wrong secret, an expired refresh
/// token: each would otherwise cost the client a new connection).
#[tokio::test]
async fn an_endpoint_refusing_an_unread_body_says_the_connection_closes() {
    let (_upstream, gw) = start("").await;
    answers_and_closes(
        &gw,
        &format!("PUT {TOKEN} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nab"),
        405,
    )
    .await;

    client_credentials(&gw, "svc").await;
    let form = format!("grant_type=client_credentials&{}", creds("svc"));
    answers_and_goes_on(
        &gw,
        &format!(
            "POST {TOKEN} HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;

    for (form, status) in [
        (
            "grant_type=client_credentials&client_id=svc&client_secret=wrong".to_owned(),
            400,
        ),
        (
            format!(
                "grant_type=refresh_token&refresh_token=nope&{}",
                creds("svc")
            ),
            400,
        ),
        (format!("token=nope&{}", creds("svc")), 200),
    ] {
        for path in [TOKEN, INTROSPECT] {
            if (path == INTROSPECT) != form.starts_with("token=") {
                continue;
            }
            answers_and_goes_on_with(
                &gw,
                &format!(
                    "POST {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                    form.len()
                ),
                status,
            )
            .await;
        }
    }
    // A wrong secret over Basic: 401 with its challenge, the connection kept.
    let auth = basic("svc", "wrong");
    let form = "grant_type=client_credentials";
    answers_and_goes_on_with(
        &gw,
        &format!(
            "POST {TOKEN} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
        401,
    )
    .await;
    // Refused before its form was read (a parameter twice in the query):
    // the close is said.
    answers_and_closes(
        &gw,
        &format!("POST {TOKEN}?scope=a&scope=b HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\nab"),
        400,
    )
    .await;

    // An endpoint that reads no body (the key set) answers after skipping
    // it: a whole one leaves the connection for the next request, one that
    // does not come gets the close said.
    answers_and_goes_on(
        &gw,
        &format!("GET {JWKS} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\n0123456789"),
    )
    .await;
    answers_and_closes(
        &gw,
        &format!("GET {JWKS} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nab"),
        200,
    )
    .await;
}

/// Sends `request` and, on the same connection, one for `/nowhere`: the
/// first is answered 200 without a close, and the second 404.
async fn answers_and_goes_on(gw: &Gateway, request: &str) {
    answers_and_goes_on_with(gw, request, 200).await;
}

/// [`answers_and_goes_on`] for an answer of `status`.
async fn answers_and_goes_on_with(gw: &Gateway, request: &str, status: u16) {
    let next = "GET /nowhere HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let text = raw(gw.addr, format!("{request}{next}").as_bytes()).await;
    let reply = RawReply::parse(&text);
    assert_eq!(reply.status, status, "{text}");
    assert_eq!(reply.header("connection"), None, "{text}");
    assert!(
        text.contains("HTTP/1.1 404"),
        "the next request went unanswered: {text}"
    );
}

/// Sends `request` (its body cut short): answered `status`, saying the
/// connection closes.
async fn answers_and_closes(gw: &Gateway, request: &str, status: u16) {
    let text = raw(gw.addr, request.as_bytes()).await;
    let reply = RawReply::parse(&text);
    assert_eq!(reply.status, status, "{text}");
    assert_eq!(
        reply.header("connection").as_deref(),
        Some("close"),
        "{text}"
    );
}

#[tokio::test]
async fn jwks_and_authorization_server_metadata() {
    let (_upstream, gw) = start("").await;
    let body = client_credentials(&gw, "svc").await;
    let kid = s(&jwt_part(&s(&body, "access_token"), 0), "kid");

    let r = get(&gw.url(JWKS), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let jwks = r.json();
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kid"], kid.as_str(), "{jwks}");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    for k in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(k.get(private).is_none(), "private `{private}` in {k}");
        }
    }

    let r = get(&gw.url(METADATA), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["issuer"], ISS, "{m}");
    assert_eq!(m["token_endpoint"], format!("{ISS}{TOKEN}"), "{m}");
    assert_eq!(m["jwks_uri"], format!("{ISS}{JWKS}"), "{m}");
    assert_eq!(m["introspection_endpoint"], format!("{ISS}{INTROSPECT}"));
    assert_eq!(m["revocation_endpoint"], format!("{ISS}{REVOKE}"));
    // Answers go in the query only: the default would say fragment too.
    assert_eq!(m["response_modes_supported"], serde_json::json!(["query"]));
    // Public clients may revoke their tokens (RFC 7009 2.1), so `none` is listed.
    assert_eq!(
        m["revocation_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"]),
        "{m}"
    );
    let grants: Vec<&str> = m["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for g in [
        "client_credentials",
        "refresh_token",
        "password",
        "authorization_code",
    ] {
        assert!(grants.contains(&g), "{g} missing from {m}");
    }

    // Read-only documents.
    let r = send("POST", &gw.url(JWKS), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
}

#[tokio::test]
async fn signing_keys_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_pem) = write_key(dir.path(), "2026-11.pem");
    let (second, second_pem) = write_key(dir.path(), "2026-05.pem");
    let extra = format!(
        "{}    - kid: \"2026-05\"\n      alg: ES256\n      private_key_file: \"{}\"\n",
        signing_key_yaml("2026-11", &first),
        second.display()
    );
    let (_upstream, gw) = start(&extra).await;

    // Only the first key signs.
    let body = client_credentials(&gw, "svc").await;
    let access = s(&body, "access_token");
    assert_eq!(jwt_part(&access, 0)["kid"], "2026-11");
    assert_accepted(&gw, &access).await;

    // Both are published, and they are the keys of the files.
    let jwks = get(&gw.url(JWKS), &[]).await.unwrap().json();
    let keys = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, ["2026-11", "2026-05"], "{jwks}");
    let es256 = jsonwebtoken::Algorithm::ES256;
    let key1 =
        scopegate::demo::SigningKey::from_pem("2026-11", es256, first_pem.as_bytes()).unwrap();
    let key2 =
        scopegate::demo::SigningKey::from_pem("2026-05", es256, second_pem.as_bytes()).unwrap();
    assert_eq!(&keys[0], key1.public_jwk(), "{jwks}");
    assert_eq!(&keys[1], key2.public_jwk(), "{jwks}");
    assert!(keys.iter().all(|k| k.get("d").is_none()));

    // A token signed by the second key (say, before a rotation) still verifies.
    let t = now();
    let claims = json!({
        "iss": ISS, "sub": "svc", "aud": "orders-api", "client_id": "svc",
        "scope": "orders:read", "iat": t, "exp": t + 600, "jti": "minted-by-key-2",
    });
    assert_accepted(&gw, &key2.mint(&claims).unwrap()).await;
    // A key that is not listed, claiming a listed kid, does not.
    let impostor =
        scopegate::demo::SigningKey::from_pem("2026-05", es256, p256_pem().as_bytes()).unwrap();
    assert_refused(&gw, &impostor.mint(&claims).unwrap()).await;
}

/// RSA keys (PKCS#8 PEM, as `openssl genpkey` writes them) sign tokens the
/// gateway accepts, with RS256 and with PS256.
#[tokio::test]
async fn rsa_signing_keys_sign_tokens() {
    for alg in ["RS256", "PS256"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsa.pem");
        std::fs::write(&path, rsa_pem()).unwrap();
        let extra = format!(
            "  signing_keys:\n    - kid: rsa\n      alg: {alg}\n      private_key_file: \"{}\"\n",
            path.display()
        );
        let (_upstream, gw) = start(&extra).await;
        let body = client_credentials(&gw, "svc").await;
        let access = s(&body, "access_token");
        assert_eq!(jwt_part(&access, 0)["alg"], alg);
        assert_accepted(&gw, &access).await;
        let jwks = get(&gw.url(JWKS), &[]).await.unwrap().json();
        assert_eq!(jwks["keys"][0]["kty"], "RSA", "{jwks}");
        assert_eq!(jwks["keys"][0]["alg"], alg, "{jwks}");
    }
}

// ---------------------------------------------------------------------------
// Introspection (RFC 7662)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn introspection_requires_client_auth_and_reports_token_state() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let (a0, r0) = (s(&first, "access_token"), s(&first, "refresh_token"));

    // No client authentication.
    let r = post_form(&gw.url(INTROSPECT), &[], &format!("token={}", enc(&a0))).await;
    assert_oauth_error(&r, 401, "invalid_client");
    let r = post_form(
        &gw.url(INTROSPECT),
        &[],
        &format!("token={}&client_id=svc&client_secret=nope", enc(&a0)),
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(r.www_authenticate().starts_with("Basic realm="), "{r:?}");

    // An access token (any registered client may ask; Basic works too).
    let auth = basic("other", SECRET);
    let r = post_form(
        &gw.url(INTROSPECT),
        &[("authorization", &auth)],
        &format!("token={}", enc(&a0)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let v = r.json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["scope"], "orders:read reports:read", "{v}");
    assert_eq!(v["client_id"], "svc", "{v}");
    assert_eq!(v["sub"], "svc", "{v}");
    assert_eq!(v["exp"], jwt_part(&a0, 1)["exp"], "{v}");
    assert_eq!(v["iss"], ISS, "{v}");

    // A refresh token, to the client it was issued to only.
    let v = introspect(&gw, "svc", &r0).await.json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["token_use"], "refresh_token", "{v}");
    assert_eq!(v.get("token_type"), None, "an access token's field: {v}");
    assert_eq!(v["client_id"], "svc", "{v}");
    assert_eq!(v["scope"], "orders:read reports:read", "{v}");
    let v = introspect(&gw, "other", &r0).await.json();
    assert_eq!(v, json!({"active": false}));

    // Once used (rotated), it is inactive; its successor is active.
    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r1 = s(&r.json(), "refresh_token");
    let v = introspect(&gw, "svc", &r0).await.json();
    assert_eq!(v, json!({"active": false}));
    let v = introspect(&gw, "svc", &r1).await.json();
    assert_eq!(v["active"], true, "{v}");

    // A revoked access token is inactive.
    let plain = s(&client_credentials(&gw, "plain").await, "access_token");
    assert_eq!(
        introspect(&gw, "plain", &plain).await.json()["active"],
        true
    );
    let revoked = revoke(&gw, "plain", &plain).await;
    assert_eq!(revoked.status, 200);
    // The body says nothing (RFC 7009 2.2) but is the JSON it is labelled.
    assert_eq!(
        revoked.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(revoked.json(), serde_json::json!({}));
    let v = introspect(&gw, "plain", &plain).await.json();
    assert_eq!(v, json!({"active": false}));

    // Garbage, and a JWT that is not ours.
    for junk in [
        "garbage",
        "a.b.c",
        World::new().await.token("orders:read").as_str(),
    ] {
        let r = introspect(&gw, "svc", junk).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"active": false}), "{junk}");
    }
    let r = post_form(&gw.url(INTROSPECT), &[], &creds("svc")).await;
    assert_oauth_error(&r, 400, "invalid_request");
}

/// A replica whose clock runs a few seconds ahead mints tokens whose `iat`
/// is in this replica's future: they are active here all the same, as the
/// gateway accepts them, while a token issued well in the future is not,
/// and `exp` is exact (the caller applies its own leeway).
#[tokio::test]
async fn introspection_allows_a_replica_clock_a_little_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, pem) = write_key(dir.path(), "shared.pem");
    let (_upstream, gw) = start(&signing_key_yaml("shared", &key_file)).await;
    let key = scopegate::demo::SigningKey::from_pem(
        "shared",
        jsonwebtoken::Algorithm::ES256,
        pem.as_bytes(),
    )
    .unwrap();
    let mint = |iat: u64, exp: u64, jti: &str| {
        key.mint(&json!({
            "iss": ISS, "sub": "svc", "aud": "orders-api", "client_id": "svc",
            "scope": "orders:read", "iat": iat, "exp": exp, "jti": jti,
        }))
        .unwrap()
    };
    let t = now();
    let ahead = mint(t + 10, t + 610, "ahead");
    let answer = introspect(&gw, "svc", &ahead).await.json();
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["iat"], t + 10, "{answer}");
    assert_accepted(&gw, &ahead).await;

    let far_ahead = mint(t + 600, t + 1200, "far-ahead");
    let answer = introspect(&gw, "svc", &far_ahead).await.json();
    assert_eq!(answer, json!({ "active": false }));

    let expired = mint(t - 600, t - 1, "expired");
    let answer = introspect(&gw, "svc", &expired).await.json();
    assert_eq!(answer, json!({ "active": false }));
}

/// Client credentials never go in the query string (RFC 6749 2.3.1), at
/// the revocation and introspection endpoints as at the token endpoint: a
/// `client_id` there is refused with 400 `invalid_request` as a
/// `client_secret` is, though the request is otherwise fine (the control).
#[tokio::test]
async fn revocation_and_introspection_refuse_a_client_id_in_the_query() {
    let (_upstream, gw) = start("").await;
    let token = s(&client_credentials(&gw, "svc").await, "access_token");
    let auth = basic("svc", SECRET);
    let cases = [
        // A public client, as a single-page app revokes.
        (
            REVOKE,
            "spa",
            vec![],
            format!("token={}&client_id=spa", enc("unknown")),
        ),
        (
            INTROSPECT,
            "svc",
            vec![("authorization", auth.as_str())],
            format!("token={}", enc(&token)),
        ),
        (
            REVOKE,
            "svc",
            vec![("authorization", auth.as_str())],
            format!("token={}", enc(&token)),
        ),
    ];
    for (path, client, headers, body) in &cases {
        for query in [format!("?client_id={client}"), String::new()] {
            let r = post_form(&gw.url(&format!("{path}{query}")), headers, body).await;
            if query.is_empty() {
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                continue;
            }
            assert_oauth_error(&r, 400, "invalid_request");
            assert!(
                s(&r.json(), "error_description").contains("2.3.1"),
                "{path}{query}: {}",
                r.text()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Revocation (RFC 7009)
// ---------------------------------------------------------------------------

/// Waits until the clock has passed `exp` (a NumericDate) by a second.
async fn wait_past(exp: u64) {
    while now_unix() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The gateway accepts this server's tokens up to 30 s past `exp`: a token
/// revoked before `exp`, or in those 30 s, must stay refused through them.
#[tokio::test]
async fn a_revocation_outlives_the_gateways_leeway() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &config(upstream.addr, "").replace("access_token_ttl: 1h", "access_token_ttl: 1s"),
    )
    .await;
    let revoked_early = s(&client_credentials(&gw, "plain").await, "access_token");
    let revoked_late = s(&client_credentials(&gw, "plain").await, "access_token");
    let untouched = s(&client_credentials(&gw, "plain").await, "access_token");
    assert_eq!(revoke(&gw, "plain", &revoked_early).await.status, 200);
    assert_refused(&gw, &revoked_early).await;
    let exp = [&revoked_early, &revoked_late, &untouched]
        .iter()
        .map(|t| jwt_part(t, 1)["exp"].as_u64().unwrap())
        .max()
        .unwrap();
    wait_past(exp).await;
    // Past `exp`, within the leeway: still good unless revoked.
    assert_accepted(&gw, &untouched).await;
    assert_refused(&gw, &revoked_early).await;
    assert_eq!(revoke(&gw, "plain", &revoked_late).await.status, 200);
    assert_refused(&gw, &revoked_late).await;
}

/// `refresh_family_max_age` caps a grant however often it is refreshed: its
/// refresh tokens, the first and each rotated one, expire at the cap rather
/// than `refresh_token_ttl` (30m here) after their issue, and once the cap
/// has passed the current refresh token is refused. The cap is 5 s, so that
/// the first refresh comes within it on a loaded machine too.
#[tokio::test]
async fn refresh_family_max_age_caps_every_refresh_token_of_a_grant() {
    let (_upstream, gw) = start("  refresh_family_max_age: 5s\n").await;
    let grant = client_credentials(&gw, "svc").await;
    let first = grant["refresh_token_expires_in"].as_u64().unwrap();
    assert!(
        first <= 5,
        "the first refresh token outlives the cap: {grant}"
    );

    let r = refresh(&gw, "svc", &s(&grant, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = r.json();
    let second = rotated["refresh_token_expires_in"].as_u64().unwrap();
    assert!(
        second <= 5,
        "a rotated refresh token outlives the cap: {rotated}"
    );

    // Past the cap (and so past the rotated token's end, 30m before it).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = refresh(&gw, "svc", &s(&rotated, "refresh_token")).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

/// Access tokens minted near a grant's end live past it: revoking the grant
/// must cover them until they are dead to the gateway too. The grant lives
/// 5 s, so that the revocation comes within it on a loaded machine too (one
/// of 1 s had ended first, once, under a CI run beside a benchmark).
#[tokio::test]
async fn a_revoked_grant_stays_revoked_while_its_access_tokens_live() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &config(upstream.addr, "  refresh_family_max_age: 5s\n")
            .replace("refresh_token_ttl: 30m", "refresh_token_ttl: 5s"),
    )
    .await;
    let grant = client_credentials(&gw, "svc").await;
    let access = s(&grant, "access_token");
    assert_accepted(&gw, &access).await;
    assert_eq!(
        revoke(&gw, "svc", &s(&grant, "refresh_token")).await.status,
        200
    );
    assert_refused(&gw, &access).await;
    wait_past(jwt_part(&access, 1)["iat"].as_u64().unwrap() + 5).await;
    assert_refused(&gw, &access).await;
}

/// Until when the file store in `dir` keeps the revocation of the grant
/// whose access tokens carry `sid`.
fn stored_grant_revocation(dir: &Path, sid: &str) -> u64 {
    let db = redb::Database::open(dir.join("state.redb")).unwrap();
    let families: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("revoked_families");
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(families).unwrap();
    let until = redb::ReadableTable::get(&table, sid)
        .unwrap()
        .expect("the grant's revocation is stored")
        .value();
    until
}

/// README: "A revocation lasts as long as the gateway accepts the token
/// (...; a grant's, until its last access token is dead)", and no longer:
/// every revocation holds one of the memory or file store's places, shared
/// with new grants and codes. Once a grant is revoked no token of it can be
/// minted: its last refresh token dies within `refresh_token_ttl` (30m
/// here) and its last access token within `access_token_ttl` (1h), not at
/// the end of the grant's `refresh_family_max_age` (30 days by default),
/// which would let a steady stream of logouts fill the store for everyone.
#[tokio::test]
async fn a_revoked_grant_holds_its_store_place_no_longer_than_its_tokens_live() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&file_store_config(upstream.addr, dir.path())).await;
    let grant = client_credentials(&gw, "svc").await;
    let access = s(&grant, "access_token");
    let sid = s(&jwt_part(&access, 1), "sid");
    let exp = jwt_part(&access, 1)["exp"].as_u64().unwrap();
    let revoked_at = now_unix();
    let r = revoke(&gw, "svc", &s(&grant, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(&gw, &access).await;
    gw.stop().await;

    let until = stored_grant_revocation(dir.path(), &sid);
    // Past the last access token's exp and the gateway's leeway, and past
    // the grant's last refresh token.
    assert!(
        until > exp + 30,
        "the revocation ends before its access token"
    );
    assert!(until > revoked_at + 1800);
    let needed = revoked_at + 3600 + 31 + 60;
    assert!(
        until <= needed,
        "the revocation of a grant whose tokens are all dead by {needed} is kept until {until}"
    );
}

/// A reload that shortens the lifetimes leaves the tokens minted before it
/// their own: a grant revoked after it stays revoked until the access token
/// it minted under the old `access_token_ttl` is dead, and no longer.
#[tokio::test]
async fn a_grant_revoked_after_a_reload_shortened_the_lifetimes_outlives_its_older_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let yaml = file_store_config(upstream.addr, dir.path());
    kubelet_write(dir.path(), 1, &yaml);
    let gw = start_reloading(dir.path().join("scopegate.yaml"))
        .await
        .gateway;
    let grant = client_credentials(&gw, "svc").await;
    let access = s(&grant, "access_token");
    let sid = s(&jwt_part(&access, 1), "sid");
    let exp = jwt_part(&access, 1)["exp"].as_u64().unwrap();

    let shorter = yaml
        .replace("access_token_ttl: 1h", "access_token_ttl: 1m")
        .replace("refresh_token_ttl: 30m", "refresh_token_ttl: 2m");
    kubelet_write(dir.path(), 2, &shorter);
    let reloaded = r#"scopegate_config_reloads_total{result="success"} 1"#;
    assert!(
        wait_for_metrics(&gw, |m| m.contains(reloaded)).await,
        "{}",
        gw.metrics().await
    );
    let fresh = client_credentials(&gw, "svc").await;
    assert!(fresh["expires_in"].as_u64().unwrap() <= 60, "{fresh}");
    let revoked_at = now_unix();
    let r = revoke(&gw, "svc", &s(&grant, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(&gw, &access).await;
    gw.stop().await;

    let until = stored_grant_revocation(dir.path(), &sid);
    assert!(
        until > exp + 30,
        "the revocation ends at {until}, before the access token minted before the reload \
         ({exp} and the leeway)"
    );
    assert!(
        until <= revoked_at + 3600 + 31 + 60,
        "the revocation is kept until {until}, past every token of the grant"
    );
}

/// As across a reload, so across a restart (or on another replica sharing
/// the store): the grant's record keeps the latest `exp` of its access
/// tokens, and its revocation outlives the one minted under the longer
/// `access_token_ttl` before.
#[tokio::test]
async fn a_grant_revoked_after_a_restart_shortened_the_lifetimes_outlives_its_older_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let yaml = file_store_config(upstream.addr, dir.path());
    let gw = Gateway::start(&yaml).await;
    let grant = client_credentials(&gw, "svc").await;
    let access = s(&grant, "access_token");
    let sid = s(&jwt_part(&access, 1), "sid");
    let exp = jwt_part(&access, 1)["exp"].as_u64().unwrap();
    gw.stop().await;

    let shorter = yaml
        .replace("access_token_ttl: 1h", "access_token_ttl: 1m")
        .replace("refresh_token_ttl: 30m", "refresh_token_ttl: 2m");
    let gw = Gateway::start(&shorter).await;
    let revoked_at = now_unix();
    let r = revoke(&gw, "svc", &s(&grant, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(&gw, &access).await;
    gw.stop().await;

    let until = stored_grant_revocation(dir.path(), &sid);
    assert!(
        until > exp + 30,
        "the revocation ends at {until}, before the access token minted before the restart \
         ({exp} and the leeway)"
    );
    assert!(
        until <= revoked_at + 3600 + 31 + 60,
        "the revocation is kept until {until}, past every token of the grant"
    );
}

#[tokio::test]
async fn revoking_an_access_token_takes_effect_at_once() {
    let (upstream, gw) = start("").await;
    let access = s(&client_credentials(&gw, "plain").await, "access_token");
    // Accepted twice: the second time from the gateway's verification cache.
    assert_accepted(&gw, &access).await;
    assert_accepted(&gw, &access).await;
    assert_eq!(upstream.count(), 2);

    // Only its own client may revoke it; another is refused (RFC 7009 2.1:
    // "the client is informed of the error"), and the token stays good.
    let r = revoke(&gw, "other", &access).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
    assert_accepted(&gw, &access).await;

    // Revocation needs client authentication.
    let r = post_form(&gw.url(REVOKE), &[], &format!("token={}", enc(&access))).await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert_accepted(&gw, &access).await;

    let r = revoke(&gw, "plain", &access).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(&gw, &access).await;
    assert_eq!(
        upstream.count(),
        4,
        "the refused request reached the upstream"
    );
    // A new token of the same client is fine.
    assert_accepted(
        &gw,
        &s(&client_credentials(&gw, "plain").await, "access_token"),
    )
    .await;

    // Unknown tokens are not an error (RFC 7009 2.2).
    let r = revoke(&gw, "plain", "never-issued").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&gw.url(REVOKE), &[]).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_grant() {
    let (_upstream, gw) = start("").await;
    let first = client_credentials(&gw, "svc").await;
    let a0 = s(&first, "access_token");
    let r = refresh(&gw, "svc", &s(&first, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a1, r1) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    let unrelated = s(&client_credentials(&gw, "svc").await, "access_token");
    assert_accepted(&gw, &a0).await;
    assert_accepted(&gw, &a1).await;

    // Another client cannot revoke it, nor its access token, and is told
    // so (RFC 7009 2.1).
    assert_oauth_error(&revoke(&gw, "other", &r1).await, 400, "unauthorized_client");
    assert_oauth_error(&revoke(&gw, "other", &a1).await, 400, "unauthorized_client");
    assert_accepted(&gw, &a1).await;

    let r = revoke(&gw, "svc", &r1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = refresh(&gw, "svc", &r1).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_refused(&gw, &a0).await;
    assert_refused(&gw, &a1).await;
    assert_eq!(introspect(&gw, "svc", &a1).await.json()["active"], false);
    assert_accepted(&gw, &unrelated).await;

    // Its client revoking with a rotated refresh token ends the grant too;
    // another client is answered as for a token that is not live, and the
    // grant goes on.
    let second = client_credentials(&gw, "svc").await;
    let r = refresh(&gw, "svc", &s(&second, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a2, r2) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    let r = revoke(&gw, "other", &s(&second, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_accepted(&gw, &a2).await;
    let r = revoke(&gw, "svc", &s(&second, "refresh_token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(&gw, &a2).await;
    assert_oauth_error(&refresh(&gw, "svc", &r2).await, 400, "invalid_grant");
}

// ---------------------------------------------------------------------------
// Stores
// ---------------------------------------------------------------------------

#[tokio::test]
async fn file_store_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.redb");
    let upstream = Upstream::start().await;
    let yaml = file_store_config(upstream.addr, dir.path());

    let gw = Gateway::start(&yaml).await;
    let first = client_credentials(&gw, "svc").await;
    let (a0, r0) = (s(&first, "access_token"), s(&first, "refresh_token"));
    let r = refresh(&gw, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a1, r1) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    let revoked = s(&client_credentials(&gw, "plain").await, "access_token");
    assert_eq!(revoke(&gw, "plain", &revoked).await.status, 200);
    assert_refused(&gw, &revoked).await;
    gw.stop().await;
    assert!(db.exists());

    let gw = Gateway::start(&yaml).await;
    // Same key: the old access tokens verify; the revocation held.
    assert_accepted(&gw, &a0).await;
    assert_accepted(&gw, &a1).await;
    assert_refused(&gw, &revoked).await;
    // The refresh token issued before the restart still works, and counts on.
    let r = refresh(&gw, "svc", &r1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["refresh_count"].as_u64(), Some(2), "{}", r.text());
    let r2 = s(&r.json(), "refresh_token");
    // The grant's generation survived too: replaying the first token ends
    // the grant.
    let replay = refresh(&gw, "svc", &r0).await;
    assert_oauth_error(&replay, 400, "invalid_grant");
    assert_oauth_error(&refresh(&gw, "svc", &r2).await, 400, "invalid_grant");
    assert_refused(&gw, &a0).await;
    gw.stop().await;
}

/// Sends one keep-alive request on a new connection to `addr` and reads its
/// answer's head, leaving the connection open.
async fn keep_alive_request(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("no answer")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    stream
}

/// `server::run` returns once the connections it served have ended, and
/// with them what they held: neither a scraper's keep-alive connection to
/// the admin port nor a client's to the proxy keeps the store file locked
/// (the same file opens again at once, as after a restart in place).
#[tokio::test]
async fn a_stopped_gateway_leaves_its_store_file_free() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let yaml = file_store_config(upstream.addr, dir.path());
    for _ in 0..3 {
        let gw = Gateway::start(&yaml).await;
        let scraper = keep_alive_request(gw.admin, "/metrics").await;
        let client = keep_alive_request(gw.addr, "/orders/7").await;
        gw.stop().await;
        let again = Gateway::try_start(&yaml).await.unwrap();
        again.stop().await;
        drop((scraper, client));
    }
}

#[tokio::test]
async fn redis_store_is_shared_by_replicas() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let extra = redis_store_yaml(dir.path(), &redis.url());
    let upstream = Upstream::start().await;
    let yaml = config(upstream.addr, &extra);
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;

    let first = client_credentials(&a, "svc").await;
    let (a0, r0) = (s(&first, "access_token"), s(&first, "refresh_token"));
    // Tokens from A are accepted by B, and B can introspect A's refresh token.
    assert_accepted(&b, &a0).await;
    assert_eq!(introspect(&b, "svc", &r0).await.json()["active"], true);

    // Rotated on A ...
    let r = refresh(&a, "svc", &r0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a1, r1) = (s(&r.json(), "access_token"), s(&r.json(), "refresh_token"));
    assert_eq!(r.json()["refresh_count"].as_u64(), Some(1));
    assert_accepted(&a, &a1).await;
    assert_accepted(&b, &a1).await;
    // ... replayed on B: refused, and the family is revoked everywhere.
    let replay = refresh(&b, "svc", &r0).await;
    assert_oauth_error(&replay, 400, "invalid_grant");
    assert_oauth_error(&refresh(&a, "svc", &r1).await, 400, "invalid_grant");
    assert_oauth_error(&refresh(&b, "svc", &r1).await, 400, "invalid_grant");
    for gw in [&a, &b] {
        assert_refused(gw, &a0).await;
        assert_refused(gw, &a1).await;
    }

    // An access token revoked on B is refused by A.
    let plain = s(&client_credentials(&a, "plain").await, "access_token");
    assert_accepted(&a, &plain).await;
    assert_eq!(revoke(&b, "plain", &plain).await.status, 200);
    assert_refused(&a, &plain).await;

    a.stop().await;
    b.stop().await;
    drop(redis);
}

/// Introspecting a refresh token answers as a refresh with it would go
/// under the config that stands (here a second replica sharing the store,
/// as after a reload): inactive once its user is removed or its client has
/// lost the refresh_token grant, and with the scope a refresh could still
/// get once a scope is taken from the client.
#[tokio::test]
async fn a_refresh_token_is_introspected_as_the_config_stands() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let extra = redis_store_yaml(dir.path(), &redis.url());
    let (upstream, before) = start(&extra).await;
    let token_of = |r: Reply| {
        assert_eq!(r.status, 200, "{}", r.text());
        s(&r.json(), "refresh_token")
    };
    let alice = token_of(password(&before, "alice", PASSWORD).await);
    let bob = token_of(password(&before, "bob", PASSWORD).await);
    let svc = token_of(
        token_request(
            &before,
            &format!("grant_type=client_credentials&{}", creds("svc")),
        )
        .await,
    );
    let v = introspect(&before, "pw", &bob).await.json();
    assert_eq!(
        (&v["active"], &v["scope"]),
        (&json!(true), &json!("orders:read admin")),
        "{v}"
    );

    // After: alice removed, admin taken from pw, svc without refresh_token.
    let after_yaml = config(upstream.addr, &extra)
        .replace(
            "    - username: alice\n      password_hash",
            "    - username: carol\n      password_hash",
        )
        .replace(
            "scopes: [orders:read, admin]\n      audience: orders-api",
            "scopes: [orders:read]\n      audience: orders-api-v2",
        )
        .replace(
            "grants: [client_credentials, refresh_token]\n      scopes: [orders:read, reports:read]",
            "grants: [client_credentials]\n      scopes: [orders:read, reports:read]",
        );
    assert!(!after_yaml.contains("alice") && !after_yaml.contains("orders:read, admin"));
    let after = Gateway::start(&after_yaml).await;
    let v = introspect(&after, "pw", &bob).await.json();
    assert_eq!(
        (&v["active"], &v["scope"], &v["aud"]),
        (&json!(true), &json!("orders:read"), &json!("orders-api-v2")),
        "{v}"
    );
    let r = refresh(&after, "pw", &bob).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read");
    let claims = jwt_part(&s(&r.json(), "access_token"), 1);
    assert_eq!(claims["aud"], "orders-api-v2", "{claims}");
    for (client, token, why) in [("pw", &alice, "user removed"), ("svc", &svc, "grant taken")] {
        let v = introspect(&after, client, token).await.json();
        assert_eq!(v, json!({"active": false}), "{why}");
        assert_oauth_error(
            &refresh(&after, client, token).await,
            400,
            if client == "svc" {
                "unauthorized_client"
            } else {
                "invalid_grant"
            },
        );
    }
    // The same tokens, still active where the config is as it was.
    assert_eq!(
        introspect(&before, "pw", &alice).await.json()["active"],
        true
    );
    assert_eq!(
        introspect(&before, "svc", &svc).await.json()["active"],
        true
    );
    before.stop().await;
    after.stop().await;
    drop(redis);
}

/// With the store gone, a built-in token's revocation check fails closed
/// (503, `store_unavailable`) and the log says why, once for many requests.
#[tokio::test]
async fn a_store_gone_at_a_revocation_check_is_a_503_logged_with_its_cause() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (logs, _capturing) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let extra = redis_store_yaml(dir.path(), &redis.url());
    let (_upstream, gw) = start(&extra).await;
    let access = s(&client_credentials(&gw, "svc").await, "access_token");
    assert_accepted(&gw, &access).await;
    drop(redis);
    for _ in 0..3 {
        let r = get_with_token(&gw.url("/orders/7"), &access).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    }
    // The token and introspection endpoints, too, answer 503 without
    // their store (and log it once, too).
    for _ in 0..3 {
        let r = token_request(
            &gw,
            &format!("grant_type=client_credentials&{}", creds("svc")),
        )
        .await;
        assert_oauth_error(&r, 503, "temporarily_unavailable");
        // Soon enough for a retry within refresh_token_reuse_grace (at
        // most 60 s), as the gateway's own store 503 asks.
        assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    }
    let r = introspect(&gw, "svc", &access).await;
    assert_oauth_error(&r, 503, "temporarily_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"reason="store_unavailable""#),
        "{metrics}"
    );
    // Each failed store operation is counted once, by store and kind.
    assert_eq!(
        metric(
            &metrics,
            "scopegate_issuer_store_errors_total",
            &[("store", "redis"), ("kind", "backend")]
        ),
        7.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "scopegate_issuer_token_requests_total",
            &[
                ("grant", "client_credentials"),
                ("result", "temporarily_unavailable")
            ]
        ),
        3.0,
        "{metrics}"
    );
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("revocation check failed"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one line, in each of the two formats: {text}"
    );
    assert!(lines.iter().all(|l| l.contains("redis")), "{lines:?}");
    let endpoint_lines = text
        .lines()
        .filter(|l| l.contains("authorization server store failed"))
        .count();
    assert_eq!(
        endpoint_lines, 2,
        "one line, in each of the two formats: {text}"
    );
    assert!(!text.contains(&access), "a token in the log");
}

/// A Redis that stops answering (a proxy in front of it closes the
/// connection and takes new ones that nothing answers, its host gone): the
/// redis client's reconnection, four attempts of up to 5 s each, goes on
/// in the background while each request waiting for it gets 503 when the
/// store's 5 s are up. Before, every request waited for the whole
/// reconnection (20 s at least), holding its connection, and the bound
/// here (12 s, between the two with room either side) ran out.
#[tokio::test]
async fn a_redis_that_stops_answering_gets_requests_a_503_in_the_store_timeout() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let address = RedisAddress::start(&redis.address()).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = redis_store_yaml(dir.path(), &address.url());
    let (_upstream, gw) = start(&extra).await;
    let access = s(&client_credentials(&gw, "svc").await, "access_token");
    assert_accepted(&gw, &access).await;
    address.hangs();
    let bound = Duration::from_secs(12);
    // The first may find the connection closed at once; the second waits
    // for the reconnection that started.
    for _ in 0..2 {
        let r = tokio::time::timeout(bound, get_with_token(&gw.url("/orders/7"), &access))
            .await
            .expect("the revocation check waited for the whole reconnection");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    }
    let r = tokio::time::timeout(
        bound,
        token_request(
            &gw,
            &format!("grant_type=client_credentials&{}", creds("svc")),
        ),
    )
    .await
    .expect("the token endpoint waited for the whole reconnection");
    assert_oauth_error(&r, 503, "temporarily_unavailable");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scopegate_issuer_store_errors_total",
            &[("store", "redis"), ("kind", "backend")]
        ),
        3.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------

#[tokio::test]
async fn demo_config_runs_the_seed_flow() {
    let upstream = Upstream::start().await;
    let (client_id, client_secret) = scopegate::demo::DEMO_CLIENT;
    let hash = scopegate::issuer::clients::hash_secret(client_secret).unwrap();
    let (_, password) = scopegate::demo::DEMO_USER;
    let password_hash = scopegate::issuer::clients::hash_secret(password).unwrap();
    // The issuer is named by the demo's listen address; the test gateway
    // listens on port 0 whatever the YAML says.
    let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let yaml =
        scopegate::demo::demo_config_yaml(listen, admin, upstream.addr, &hash, &password_hash);
    let gw = Gateway::start(&yaml).await;

    // 1. The seed's request.
    let r = post_form(
        &gw.url("/auth/v2/accesstoken?grant_type=client_credentials"),
        &[("cache-control", "no-cache")],
        &format!(
            "client_id={}&client_secret={}",
            enc(client_id),
            enc(client_secret)
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "approved", "{body}");
    assert_eq!(body["refresh_count"].as_u64(), Some(0), "{body}");
    let access = s(&body, "access_token");
    assert_eq!(jwt_part(&access, 1)["aud"], scopegate::demo::DEMO_AUDIENCE);

    // 2. A protected route.
    let r = get_with_token(&gw.url("/orders/42"), &access).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.last().path_and_query, "/orders/42");

    // 3. Refresh with Basic credentials.
    let auth = basic(client_id, client_secret);
    let r = post_form(
        &gw.url("/auth/v2/accesstoken"),
        &[("authorization", &auth)],
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            enc(&s(&body, "refresh_token"))
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["refresh_count"].as_u64(), Some(1), "{}", r.text());

    // 4. The token lacks `admin`.
    let r = get_with_token(&gw.url("/admin"), &access).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // 5. No token, and a public route.
    assert_eq!(get(&gw.url("/orders/42"), &[]).await.unwrap().status, 401);
    assert_eq!(get(&gw.url("/public"), &[]).await.unwrap().status, 200);
    // The metadata and keys the demo advertises.
    assert_eq!(get(&gw.url(METADATA), &[]).await.unwrap().status, 200);
    assert_eq!(get(&gw.url(JWKS), &[]).await.unwrap().status, 200);
}

#[path = "issuer/hostile_token_requests.rs"]
mod hostile_token_requests;

#[path = "issuer/token_lifecycles.rs"]
mod token_lifecycles;

/// The access log's reason says why the built-in server refused (its RFC
/// 6749 `error` code) and that a public route took no token, as the
/// decision metric does: a bare `ok` beside a 400 or 401 read as an
/// allowed request in the audit trail.
#[tokio::test]
async fn the_access_log_names_the_built_in_servers_refusals_and_public_routes() {
    let (logs, _capturing) = Logs::capture();
    let upstream = Upstream::start().await;
    let config = config(upstream.addr, "").replace(
        "routes:\n",
        "routes:\n  - path: /open\n    upstream: app\n    auth: none\n",
    );
    let gw = Gateway::start(&config).await;
    let cases = [
        (
            token_request(
                &gw,
                "grant_type=client_credentials&client_id=svc&client_secret=wrong",
            )
            .await,
            400,
            "reason=\"invalid_client\"",
        ),
        (
            token_request(&gw, &format!("grant_type=password&{}", creds("svc"))).await,
            400,
            "reason=\"unauthorized_client\"",
        ),
        (
            introspect(&gw, "svc", "not-a-token").await,
            200,
            "reason=\"ok\"",
        ),
        (
            get(&gw.url("/open"), &[]).await.unwrap(),
            200,
            "reason=\"public\"",
        ),
    ];
    for (reply, status, reason) in cases {
        assert_eq!(reply.status, status, "{}", reply.text());
        let line = logs.access_line_of(&reply).await;
        assert!(line.contains(&format!("status={status}")), "{line}");
        assert!(line.contains(reason), "{reason} missing: {line}");
    }
    gw.stop().await;
}
