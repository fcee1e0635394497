//! The built-in authorization server's endpoints, as a client on the network
//! reaches them: `AuthorizationServer::handle` behind a hyper HTTP/1.1
//! connection (in memory), fed requests built from a small text format:
//!
//! ```text
//! POST token?query            <- method, endpoint alias or path, query
//! Content-Type: application/x-www-form-urlencoded
//! Authorization: Basic ...    <- any header lines
//!                             <- empty line
//! grant_type=...              <- body
//! ```
//!
//! Aliases: `token`, `introspect`, `revoke`, `authorize`, `jwks`, `metadata`.
//! A fresh server (memory store) per input, with three clients (`svc` and
//! `web` confidential, `spa` public), one user, and two authorization codes
//! planted: `pkce-code` (for `spa`, S256 challenge of the RFC 7636 example
//! verifier) and `web-code` (for `web`, no challenge).
//!
//! Checks: no 5xx; a refused token request never carries a token, names a
//! known `error` code with an RFC 6749 `error_description`, and a 401 comes
//! with a Basic challenge; a token is issued only when an independent reading
//! of the request finds the right credentials for its grant (a code only with
//! its client, `redirect_uri` and PKCE verifier; no refresh token exists, so
//! that grant never succeeds), and the token's claims name that client, the
//! issuer, and scopes within the client's (exactly the ones asked for, when
//! asked); introspection answers only authenticated confidential clients and
//! finds no token active; revocation answers only authenticated clients; the
//! authorization endpoint never redirects with a code (no session exists).
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{AsciiSet, CONTROLS};
use scopegate::admin::metrics::Metrics;
use scopegate::auth::cache::digest;
use scopegate::config::AuthorizationServerSettings;
use scopegate::issuer::store::{CodeRecord, Store, StoreConfig};
use scopegate::issuer::token::s256;
use scopegate::issuer::AuthorizationServer;
use serde_json::Value;

const ISSUER: &str = "https://as.example";
const SVC_SECRET: &str = "s3cret";
/// Reserved and non-ASCII characters: Basic must carry them form-urlencoded.
const WEB_SECRET: &str = "w3b:p@ss+w\u{f6}rd %";
const ALICE_PASSWORD: &str = "wonderland";
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const PKCE_CODE: &str = "pkce-code";
const WEB_CODE: &str = "web-code";
const SPA_REDIRECT: &str = "https://app.example/cb";
const WEB_REDIRECT: &str = "https://web.example/cb";

/// Every `error` the endpoints answer with.
const ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "unauthorized_client",
    "unsupported_grant_type",
    "temporarily_unavailable",
    "not_found",
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    settings: AuthorizationServerSettings,
    metrics: Arc<Metrics>,
}

/// Cheap argon2 (m=8 KiB, t=1): the checks are real, but fast.
fn cheap_hash(secret: &str) -> String {
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").expect("salt");
    hasher
        .hash_password(secret.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let yaml = format!(
            r#"
server:
  listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9090
authorization_server:
  issuer: {ISSUER}
  clients:
    - client_id: svc
      client_secret_hash: "{svc}"
      grants: [client_credentials, refresh_token, password]
      scopes: [orders:read, orders:write]
      audience: orders-api
    - client_id: web
      client_secret_hash: "{web}"
      grants: [authorization_code]
      scopes: [orders:read, orders:write]
      audience: orders-api
      redirect_uris: [{WEB_REDIRECT}]
    - client_id: spa
      grants: [authorization_code, refresh_token]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [{SPA_REDIRECT}]
  users:
    - username: alice
      password_hash: "{alice}"
      scopes: [orders:read]
upstreams:
  echo:
    url: http://127.0.0.1:3000
routes:
  - path: /orders/{{id}}
    methods: [GET]
    upstream: echo
    scopes: [orders:read]
"#,
            svc = cheap_hash(SVC_SECRET),
            web = cheap_hash(WEB_SECRET),
            alice = cheap_hash(ALICE_PASSWORD),
        );
        let config = scopegate::config::load_str("fuzz.yaml", &std::env::temp_dir(), &yaml)
            .unwrap_or_else(|e| panic!("fixture config: {e}"));
        let settings = config.authorization_server.expect("authorization_server");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture {
            runtime,
            settings,
            metrics: Arc::new(Metrics::new().expect("metrics")),
        }
    })
}

/// The settings again, for a fresh server (they are not `Clone`).
fn copy(s: &AuthorizationServerSettings) -> AuthorizationServerSettings {
    AuthorizationServerSettings {
        issuer: s.issuer.clone(),
        issuer_index: s.issuer_index,
        paths: s.paths.clone(),
        keys: Arc::clone(&s.keys),
        ephemeral_key: s.ephemeral_key,
        access_token_ttl: s.access_token_ttl,
        refresh_token_ttl: s.refresh_token_ttl,
        refresh_family_max_age: s.refresh_family_max_age,
        refresh_token_reuse_grace: s.refresh_token_reuse_grace,
        response_style: s.response_style,
        store: s.store.clone(),
        clients: s.clients.clone(),
        users: s.users.clone(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Token,
    Introspect,
    Revoke,
    Authorize,
    Jwks,
    Metadata,
    Other,
}

/// Bytes a request target cannot carry as they are.
const TARGET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');
const PATH: &AsciiSet = &TARGET.add(b'?');

/// Framing headers are the connection's business, not the endpoint's.
const SKIPPED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

struct Input {
    endpoint: Endpoint,
    request: Request<Full<Bytes>>,
    /// The body's pairs and the query's, as sent.
    form: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

fn parse_input(data: &[u8], settings: &AuthorizationServerSettings) -> Option<Input> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let start = lines.next()?;
    let (method, target) = match start.iter().position(|&b| b == b' ') {
        Some(at) => (&start[..at], &start[at + 1..]),
        None => (&b"POST"[..], start),
    };
    let method = Method::from_bytes(method).ok()?;
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    };
    let p = &settings.paths;
    let path = match path {
        b"token" => p.token.clone(),
        b"introspect" => p.introspection.clone(),
        b"revoke" => p.revocation.clone(),
        b"authorize" => p.authorize.clone(),
        b"jwks" => p.jwks.clone(),
        b"metadata" => p.metadata.clone(),
        other => {
            let encoded = percent_encoding::percent_encode(other, PATH).to_string();
            format!("/{}", encoded.trim_start_matches('/'))
        }
    };
    let endpoint = [
        (&p.token, Endpoint::Token),
        (&p.introspection, Endpoint::Introspect),
        (&p.revocation, Endpoint::Revoke),
        (&p.authorize, Endpoint::Authorize),
        (&p.jwks, Endpoint::Jwks),
        (&p.metadata, Endpoint::Metadata),
    ]
    .into_iter()
    .find(|(known, _)| **known == path)
    .map_or(Endpoint::Other, |(_, endpoint)| endpoint);
    let uri = match query {
        Some(q) => format!("{path}?{}", percent_encoding::percent_encode(q, TARGET)),
        None => path,
    };
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(name) = HeaderName::from_bytes(line[..colon].trim_ascii()) else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()) else {
            continue;
        };
        if !SKIPPED.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    let request = builder.body(Full::new(Bytes::copy_from_slice(body))).ok()?;
    let query = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let form = url::form_urlencoded::parse(body).into_owned().collect();
    Some(Input {
        endpoint,
        request,
        form,
        query,
    })
}

/// One request over an in-memory HTTP/1.1 connection to the server.
async fn exchange(
    server: &AuthorizationServer,
    request: Request<Full<Bytes>>,
) -> Option<Response<Bytes>> {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
        let path = request.uri().path().to_owned();
        Ok::<_, Infallible>(server.handle(request, &path).await)
    });
    let serve = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(server_io), service);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(client_io))
            .await
            .ok()?;
    let ask = async move {
        let response = sender.send_request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Response::from_parts(parts, body))
    };
    let (_, _, answer) = tokio::join!(serve, connection, ask);
    answer
}

/// The value of the only pair named `name`, when there is exactly one with
/// a value (the endpoints refuse repeats and ignore empty values).
fn only<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found = pairs.iter().filter(|(k, v)| k == name && !v.is_empty());
    let first = found.next()?;
    found.next().is_none().then_some(first.1.as_str())
}

/// The credentials the request presents, read independently of the crate:
/// the form's `client_id`/`client_secret`, and every `Authorization: Basic`
/// value's form-urlencoded `id:secret`.
fn credentials(input: &Input) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    if let Some(id) = only(&input.form, "client_id") {
        out.push((
            id.to_owned(),
            only(&input.form, "client_secret").map(str::to_owned),
        ));
    }
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    for value in input.request.headers().get_all(AUTHORIZATION) {
        let Ok(value) = value.to_str() else { continue };
        let Some(encoded) = value
            .get(..6)
            .filter(|s| s.eq_ignore_ascii_case("basic "))
            .and_then(|_| value.get(6..))
        else {
            continue;
        };
        let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
            continue;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            continue;
        };
        let Some((id, secret)) = decoded.split_once(':') else {
            continue;
        };
        if let (Some(id), Some(secret)) = (decode(id), decode(secret)) {
            out.push((id, Some(secret).filter(|s| !s.is_empty())));
        }
    }
    out
}

/// Whether the request proves it is the confidential client `id`.
fn proves(input: &Input, id: &str, secret: &str) -> bool {
    credentials(input)
        .iter()
        .any(|(i, s)| i == id && s.as_deref() == Some(secret))
}

/// Whether the request names the public client `spa` without a secret.
fn names_spa(input: &Input) -> bool {
    credentials(input)
        .iter()
        .any(|(i, s)| i == "spa" && s.is_none())
}

fn scopes_of(s: &str) -> Vec<&str> {
    let mut out: Vec<&str> = s.split(' ').filter(|s| !s.is_empty()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// An issued token's answer: who may have got it, and its claims.
fn check_issued(input: &Input, answer: &serde_json::Map<String, Value>) {
    let grant = only(&input.form, "grant_type").or_else(|| only(&input.query, "grant_type"));
    let code = only(&input.form, "code");
    let redirect = only(&input.form, "redirect_uri");
    let (client, allowed): (&str, &[&str]) = match grant {
        Some("client_credentials") => {
            assert!(
                proves(input, "svc", SVC_SECRET),
                "token without svc's secret"
            );
            ("svc", &["orders:read", "orders:write"])
        }
        Some("password") => {
            assert!(
                proves(input, "svc", SVC_SECRET),
                "token without svc's secret"
            );
            assert_eq!(only(&input.form, "username"), Some("alice"));
            assert_eq!(only(&input.form, "password"), Some(ALICE_PASSWORD));
            ("svc", &["orders:read"])
        }
        Some("authorization_code") if code == Some(PKCE_CODE) => {
            assert!(names_spa(input), "pkce-code redeemed without spa");
            assert_eq!(only(&input.form, "code_verifier"), Some(VERIFIER));
            assert_eq!(redirect, Some(SPA_REDIRECT));
            ("spa", &["orders:read"])
        }
        Some("authorization_code") if code == Some(WEB_CODE) => {
            assert!(
                proves(input, "web", WEB_SECRET),
                "web-code without web's secret"
            );
            assert_eq!(redirect, Some(WEB_REDIRECT));
            assert!(only(&input.form, "code_verifier").is_none());
            ("web", &["orders:read"])
        }
        other => panic!("a token for grant {other:?}, code {code:?}"),
    };
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .expect("access_token");
    let jwt = scopegate::auth::jwt::parse_compact(token).expect("an access token is a JWT");
    assert_eq!(jwt.typ.as_deref(), Some("at+jwt"));
    let claims = &jwt.claims;
    assert_eq!(
        claims.get("client_id").and_then(Value::as_str),
        Some(client)
    );
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    assert_eq!(
        claims.get("aud").and_then(Value::as_str),
        Some("orders-api")
    );
    let granted = claims
        .get("scope")
        .and_then(Value::as_str)
        .expect("scope claim");
    let granted = scopes_of(granted);
    assert!(
        granted.iter().all(|s| allowed.contains(s)),
        "{client} granted {granted:?}"
    );
    let answered = answer.get("scope").and_then(Value::as_str).unwrap_or("");
    assert_eq!(scopes_of(answered), granted, "answer and token disagree");
    if matches!(grant, Some("client_credentials" | "password")) {
        if let Some(asked) = only(&input.form, "scope").filter(|s| !scopes_of(s).is_empty()) {
            assert_eq!(scopes_of(asked), granted, "asked {asked:?}");
        }
    }
    // Refresh tokens only for clients with the refresh grant (not `web`).
    assert_eq!(answer.contains_key("refresh_token"), client != "web");
}

fn check(input: &Input, response: &Response<Bytes>) {
    let status = response.status();
    // `FUZZ_SHOW=1`: each answer on stderr, to see what a seed reaches.
    if std::env::var_os("FUZZ_SHOW").is_some() {
        eprintln!("{status} {:?}", String::from_utf8_lossy(response.body()));
    }
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status}: {:?}",
        response.body()
    );
    if input.endpoint == Endpoint::Authorize {
        // No session, so no code: a redirect to the client carries an error.
        if let Some(location) = response.headers().get(LOCATION) {
            let location = location.to_str().expect("Location is ASCII");
            let query = location.split_once('?').map_or("", |(_, q)| q);
            assert!(
                url::form_urlencoded::parse(query.as_bytes()).all(|(k, _)| k != "code"),
                "a code without a session: {location}"
            );
        }
        return;
    }
    if status == StatusCode::UNAUTHORIZED {
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .expect("a 401 has a challenge");
        assert!(challenge.as_bytes().starts_with(b"Basic "));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert!(response.headers().contains_key(ALLOW));
    }
    // A CORS preflight's 204, and HEAD, have no body.
    if input.request.method() == Method::HEAD || status == StatusCode::NO_CONTENT {
        return;
    }
    let body: Value = serde_json::from_slice(response.body())
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {:?}", response.body()));
    let answer = body.as_object().expect("a JSON object");
    if status != StatusCode::OK {
        assert!(!answer.contains_key("access_token") && !answer.contains_key("refresh_token"));
        let code = answer.get("error").and_then(Value::as_str).expect("error");
        assert!(ERROR_CODES.contains(&code), "error {code}");
        if let Some(description) = answer.get("error_description") {
            let description = description.as_str().expect("a string");
            assert!(
                description
                    .bytes()
                    .all(|b| (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\'),
                "error_description {description:?}"
            );
        }
        return;
    }
    let confidential = proves(input, "svc", SVC_SECRET) || proves(input, "web", WEB_SECRET);
    match input.endpoint {
        Endpoint::Token => check_issued(input, answer),
        Endpoint::Introspect => {
            assert!(confidential, "introspection for an unauthenticated caller");
            assert_eq!(body, serde_json::json!({ "active": false }));
        }
        Endpoint::Revoke => {
            assert!(
                confidential || names_spa(input),
                "revocation for an unauthenticated caller"
            );
            assert!(answer.is_empty());
        }
        Endpoint::Jwks | Endpoint::Metadata => {
            assert!(matches!(
                *input.request.method(),
                Method::GET | Method::HEAD
            ));
        }
        Endpoint::Other | Endpoint::Authorize => panic!("200 for {:?}", input.request.uri()),
    }
}

async fn plant_codes(store: &Store) {
    let now = scopegate::auth::jwt::now_unix();
    for (code, client, redirect, challenge) in [
        (PKCE_CODE, "spa", SPA_REDIRECT, Some(s256(VERIFIER))),
        (WEB_CODE, "web", WEB_REDIRECT, None),
    ] {
        let record = CodeRecord {
            client_id: client.to_owned(),
            redirect_uri: redirect.to_owned(),
            redirect_uri_sent: true,
            scope: "orders:read".to_owned(),
            subject: "alice".to_owned(),
            code_challenge: challenge,
            expires_at: now + 600,
            family: format!("family-{code}"),
        };
        store
            .put_code(&digest(code), &record)
            .await
            .expect("memory store");
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Some(input) = parse_input(data, &fixture.settings) else {
        return;
    };
    fixture.runtime.block_on(async {
        let store = Store::open(&StoreConfig::Memory)
            .await
            .expect("memory store");
        let server = AuthorizationServer::new(
            copy(&fixture.settings),
            store,
            Arc::clone(&fixture.metrics),
            None,
        );
        plant_codes(server.store()).await;
        let request = {
            let mut copy = Request::builder()
                .method(input.request.method())
                .uri(input.request.uri());
            for (name, value) in input.request.headers() {
                copy = copy.header(name, value);
            }
            copy.body(input.request.body().clone()).expect("same parts")
        };
        let response = exchange(&server, request)
            .await
            .expect("the server answers");
        check(&input, &response);
    });
});
