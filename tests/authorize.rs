//! The authorization endpoint (authorization code + PKCE) over real sockets,
//! driven like a browser would, without a browser: pages are fetched, their
//! forms' hidden fields are read back and posted with the cookies the server
//! set. Every error case of the endpoint, the pages' security headers and
//! cookies, and the code exchange at the token endpoint (PKCE, bindings,
//! single use with revocation on replay, no PKCE downgrade, expiry). And a
//! campaign of generated hostile authorization requests
//! (`hostile_requests`; `SCOPEGATE_HOSTILE_CASES` cases, default 384), and
//! one of whole sign-in flows with changed forms, cookies and token
//! requests (`hostile_flows`, default 160).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use scopegate::issuer::token::s256;
use serde_json::Value;

/// The built-in server's `iss`.
const ISS: &str = "https://as.test";
const AUTHORIZE: &str = "/oauth2/authorize";
const TOKEN: &str = "/oauth2/token";
/// `spa`'s registered redirect URIs (it has three, so it must name one).
const APP_CB: &str = "https://app.test/cb";
const APP_CB2: &str = "https://app.test/cb2";
const LOOPBACK_CB: &str = "http://127.0.0.1/callback";
/// `web`'s only redirect URI.
const WEB_CB: &str = "https://web.test/cb";
/// Every user's password.
const PASSWORD: &str = "correct horse battery";
/// The confidential clients' secret.
const SECRET: &str = "web-s3cret";
/// A `state` with characters that need encoding, and HTML metacharacters.
const NASTY_STATE: &str = "a b&c=d/é?#%+\"'<x>;,~";

fn password_hash() -> String {
    argon2_hash(PASSWORD)
}

fn secret_hash() -> String {
    argon2_hash(SECRET)
}

/// Clients: `spa` (public; authorization_code + refresh_token; orders:read
/// reports:read; three redirect URIs incl. a loopback one), `spa2` (public;
/// orders:read; APP_CB), `web` (confidential; orders:read; WEB_CB), `wide`
/// (public; orders:read admin; APP_CB), `svc` (confidential,
/// client_credentials only). Users: `alice`, `bob`, `dave` (any scope),
/// `carol` (orders:read only). Routes: `/orders/{id}` (GET, orders:read), `/admin`
/// (admin). `extra` is more of the `authorization_server:` block.
fn config(upstream: SocketAddr, extra: &str) -> String {
    let p = password_hash();
    let h = secret_hash();
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
authorization_server:
  issuer: {ISS}
  access_token_ttl: 1h
  refresh_token_ttl: 30m
{extra}  clients:
    - client_id: spa
      name: Orders <SPA>
      grants: [authorization_code, refresh_token]
      scopes: [orders:read, reports:read]
      audience: orders-api
      redirect_uris: [{APP_CB}, {APP_CB2}, {LOOPBACK_CB}]
    - client_id: spa2
      grants: [authorization_code]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [{APP_CB}]
    - client_id: web
      client_secret_hash: "{h}"
      grants: [authorization_code]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [{WEB_CB}]
    - client_id: wide
      grants: [authorization_code]
      scopes: [orders:read, admin]
      audience: orders-api
      redirect_uris: [{APP_CB}]
    - client_id: svc
      client_secret_hash: "{h}"
      grants: [client_credentials]
      scopes: [orders:read]
      audience: orders-api
  users:
    - username: alice
      password_hash: "{p}"
    - username: bob
      password_hash: "{p}"
    - username: carol
      password_hash: "{p}"
      scopes: [orders:read]
    - username: dave
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
  - path: /admin
    upstream: app
    scopes: [admin]
"#
    )
}

async fn start() -> (Upstream, Gateway) {
    start_with("").await
}

async fn start_with(extra: &str) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, extra)).await;
    (upstream, gw)
}

// ---------------------------------------------------------------------------
// Helpers: parameters, forms, cookies, redirects
// ---------------------------------------------------------------------------

type Params = Vec<(String, String)>;

/// A PKCE pair: a 43-character verifier and its S256 challenge.
struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = scopegate::issuer::random_token().unwrap();
    assert_eq!(verifier.len(), 43);
    Pkce {
        challenge: s256(&verifier),
        verifier,
    }
}

/// A valid authorization request for `client` (with S256 PKCE when given).
fn params(client: &str, redirect_uri: &str, scope: &str, challenge: Option<&str>) -> Params {
    let mut p: Params = vec![
        ("response_type".into(), "code".into()),
        ("client_id".into(), client.into()),
        ("redirect_uri".into(), redirect_uri.into()),
        ("scope".into(), scope.into()),
        ("state".into(), NASTY_STATE.into()),
    ];
    if let Some(c) = challenge {
        p.push(("code_challenge".into(), c.into()));
        p.push(("code_challenge_method".into(), "S256".into()));
    }
    p
}

/// Replaces (or adds) a parameter.
fn with(mut p: Params, key: &str, value: &str) -> Params {
    p.retain(|(k, _)| k != key);
    p.push((key.into(), value.into()));
    p
}

/// Removes a parameter.
fn without(mut p: Params, key: &str) -> Params {
    p.retain(|(k, _)| k != key);
    p
}

fn encode<K: AsRef<str>, V: AsRef<str>>(p: &[(K, V)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in p {
        s.append_pair(k.as_ref(), v.as_ref());
    }
    s.finish()
}

fn authorize_url(gw: &Gateway, p: &Params) -> String {
    gw.url(&format!("{AUTHORIZE}?{}", encode(p)))
}

/// GET the authorization endpoint, with an optional `Cookie` header.
async fn get_authorize(gw: &Gateway, p: &Params, cookie: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    get(&authorize_url(gw, p), &headers).await.unwrap()
}

/// POST a form to the authorization endpoint, with an optional `Cookie` header.
async fn post_authorize(gw: &Gateway, form: &Params, cookie: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    send(
        "POST",
        &gw.url(AUTHORIZE),
        &headers,
        Bytes::from(encode(form)),
    )
    .await
    .unwrap()
}

fn field(fields: &Params, name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the form has no `{name}` field: {fields:?}"))
}

/// The redirect's target without its query, and its query parameters;
/// `Err` for no 303 with a `Location`, or a parameter in it twice.
fn redirect_parts(r: &Reply) -> Result<(String, HashMap<String, String>), String> {
    let location = r
        .header("location")
        .filter(|_| r.status == 303)
        .ok_or_else(|| format!("not a redirect: {} {}", r.status, r.text()))?;
    let (base, query) = location.split_once('?').unwrap_or((&location, ""));
    let mut pairs = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
        if pairs.insert(k.clone(), v).is_some() {
            return Err(format!("repeated `{k}` in {location}"));
        }
    }
    Ok((base.to_owned(), pairs))
}

/// [`redirect_parts`], which must succeed.
#[track_caller]
fn redirect(r: &Reply) -> (String, HashMap<String, String>) {
    redirect_parts(r).unwrap_or_else(|e| panic!("{e}"))
}

/// An error redirect to `base` with `error`, the state echoed exactly, `iss`, and no code.
#[track_caller]
fn assert_error_redirect(r: &Reply, base: &str, error: &str) {
    let (to, q) = redirect(r);
    assert_eq!(to, base, "{:?}", r.header("location"));
    assert_eq!(q.get("error").map(String::as_str), Some(error), "{q:?}");
    assert!(q.contains_key("error_description"), "{q:?}");
    assert_eq!(
        q.get("state").map(String::as_str),
        Some(NASTY_STATE),
        "{q:?}"
    );
    assert_eq!(q.get("iss").map(String::as_str), Some(ISS), "{q:?}");
    assert!(!q.contains_key("code"), "{q:?}");
}

/// `Err` unless `r` is an HTML page (never a redirect) with one of
/// `statuses` and the security headers.
fn page_faults(r: &Reply, statuses: &[u16]) -> Result<(), String> {
    if !statuses.contains(&r.status) {
        return Err(format!(
            "want one of {statuses:?}, got {} {}",
            r.status,
            r.text()
        ));
    }
    if let Some(location) = r.header("location") {
        return Err(format!("must not redirect: {location}"));
    }
    let content_type = r.header("content-type");
    if content_type.as_deref() != Some("text/html; charset=utf-8") {
        return Err(format!("content-type {content_type:?}"));
    }
    security_header_faults(r)
}

/// `Err` unless `r` has a CSP with `frame-ancestors 'none'` and
/// `default-src 'none'`, `X-Frame-Options: DENY`, and no caching.
fn security_header_faults(r: &Reply) -> Result<(), String> {
    let csp = r.header("content-security-policy").unwrap_or_default();
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    let fine = directives.contains(&"frame-ancestors 'none'")
        && directives.contains(&"default-src 'none'")
        && r.header("x-frame-options").as_deref() == Some("DENY")
        && r.header("cache-control").as_deref() == Some("no-store");
    match fine {
        true => Ok(()),
        false => Err(format!("security headers: {:?}", r.headers)),
    }
}

/// An HTML page (never a redirect) with `status`.
#[track_caller]
fn assert_page(r: &Reply, status: u16) {
    if let Err(e) = page_faults(r, &[status]) {
        panic!("{e}");
    }
}

/// A cookie set with `HttpOnly`, `Secure`, `SameSite=Lax` and the endpoint's path.
#[track_caller]
fn assert_cookie_attributes(r: &Reply, name: &str) {
    let header = set_cookie(r, name).unwrap_or_else(|| panic!("no {name} cookie"));
    let attrs: Vec<String> = header
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for want in ["httponly", "secure", "samesite=lax"] {
        assert!(attrs.iter().any(|a| a == want), "{name}: {header}");
    }
    assert!(
        attrs.iter().any(|a| *a == format!("path={AUTHORIZE}")),
        "{header}"
    );
}

/// Fetches the sign-in page for `p` and posts it back with these
/// credentials, as a browser would (the page's hidden fields and its CSRF
/// cookie). Returns the login page and the reply to the post.
async fn sign_in(gw: &Gateway, p: &Params, username: &str, password: &str) -> (Reply, Reply) {
    sign_in_from(gw, p, username, password, None).await
}

/// The name of `user`'s device cookie: `__Secure-sg_device_` and 16 hex digits of
/// the SHA-256 of the user name.
fn device_cookie(user: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, user.as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("__Secure-sg_device_{hex}")
}

/// [`sign_in`] from a browser that also holds `device` (device cookie
/// pairs from earlier sign-ins, `; `-separated).
async fn sign_in_from(
    gw: &Gateway,
    p: &Params,
    username: &str,
    password: &str,
    device: Option<&str>,
) -> (Reply, Reply) {
    let page = get_authorize(gw, p, device).await;
    assert_page(&page, 200);
    assert!(page.text().contains("<h1>Sign in</h1>"), "{}", page.text());
    let mut form = hidden_fields(&page.text());
    assert_eq!(field(&form, "action"), "login");
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    let mut cookies = cookie_pair(&page, "__Secure-sg_csrf");
    if let Some(device) = device {
        cookies = format!("{cookies}; {device}");
    }
    let reply = post_authorize(gw, &form, Some(&cookies)).await;
    (page, reply)
}

/// Signs in successfully; returns the consent page and the session cookie pair.
async fn consent(gw: &Gateway, p: &Params, username: &str) -> (Reply, String) {
    let (_, reply) = sign_in(gw, p, username, PASSWORD).await;
    assert_page(&reply, 200);
    assert!(
        reply.text().contains("<h1>Allow access?</h1>"),
        "{}",
        reply.text()
    );
    let session = cookie_pair(&reply, "__Secure-sg_session");
    (reply, session)
}

/// Posts the consent page's form with `action` (approve or deny).
async fn decide(gw: &Gateway, consent_page: &Reply, session: &str, action: &str) -> Reply {
    let mut form = hidden_fields(&consent_page.text());
    form.push(("action".into(), action.into()));
    post_authorize(gw, &form, Some(session)).await
}

/// With an existing session: GET shows consent at once; approve; the code.
async fn code_with_session(gw: &Gateway, p: &Params, session: &str) -> String {
    let page = get_authorize(gw, p, Some(session)).await;
    assert_page(&page, 200);
    assert!(page.text().contains("Allow access?"), "{}", page.text());
    let r = decide(gw, &page, session, "approve").await;
    let (_, q) = redirect(&r);
    q.get("code").cloned().expect("no code")
}

/// Token request parameters for an authorization code.
struct Exchange<'a> {
    client: &'a str,
    secret: Option<&'a str>,
    code: &'a str,
    redirect_uri: Option<&'a str>,
    verifier: Option<&'a str>,
}

async fn exchange(gw: &Gateway, e: Exchange<'_>) -> Reply {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", e.code),
        ("client_id", e.client),
    ];
    if let Some(s) = e.secret {
        form.push(("client_secret", s));
    }
    if let Some(r) = e.redirect_uri {
        form.push(("redirect_uri", r));
    }
    if let Some(v) = e.verifier {
        form.push(("code_verifier", v));
    }
    send(
        "POST",
        &gw.url(TOKEN),
        &[("content-type", "application/x-www-form-urlencoded")],
        Bytes::from(encode(&form)),
    )
    .await
    .unwrap()
}

/// `spa` exchanging `code` at APP_CB with `verifier`.
async fn spa_exchange(gw: &Gateway, code: &str, verifier: Option<&str>) -> Reply {
    exchange(
        gw,
        Exchange {
            client: "spa",
            secret: None,
            code,
            redirect_uri: Some(APP_CB),
            verifier,
        },
    )
    .await
}

#[track_caller]
fn assert_oauth_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
    assert!(r.json().get("access_token").is_none(), "{}", r.text());
}

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {v}"))
        .to_owned()
}

async fn orders_status(gw: &Gateway, token: &str) -> Reply {
    get_with_token(&gw.url("/orders/7"), token).await
}

// ---------------------------------------------------------------------------
// Client and redirect URI: an error page, never a redirect
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_or_missing_client_is_an_error_page_not_a_redirect() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    // A request that would otherwise redirect an error (response_type=token):
    // the client is checked first, so nothing may go to the redirect URI.
    let base = with(
        params("spa", APP_CB, "orders:read", Some(&c.challenge)),
        "response_type",
        "token",
    );
    for (what, p) in [
        ("unknown client", with(base.clone(), "client_id", "nobody")),
        ("missing client_id", without(base.clone(), "client_id")),
        (
            "client without the authorization_code grant",
            with(base.clone(), "client_id", "svc"),
        ),
    ] {
        let r = get_authorize(&gw, &p, None).await;
        assert_page(&r, 400);
        assert!(
            r.text().contains("This sign-in link is not valid"),
            "{what}: {}",
            r.text()
        );
        assert!(set_cookie(&r, "__Secure-sg_csrf").is_none(), "{what}");
        // The same through POST.
        let r = post_authorize(&gw, &with(p, "action", "login"), None).await;
        assert_page(&r, 400);
    }
}

#[tokio::test]
async fn redirect_uri_must_be_registered_exactly() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let base = with(
        params("spa", APP_CB, "orders:read", Some(&c.challenge)),
        "response_type",
        "token",
    );
    // `None`: no redirect_uri at all (spa has several registered).
    for (what, redirect_uri) in [
        ("unregistered", Some("https://evil.test/cb")),
        ("extra path", Some("https://app.test/cb/extra")),
        ("trailing slash", Some("https://app.test/cb/")),
        ("extra query", Some("https://app.test/cb?next=/x")),
        (
            "different port (not loopback)",
            Some("https://app.test:8443/cb"),
        ),
        ("other scheme", Some("http://app.test/cb")),
        ("another client's URI", Some(WEB_CB)),
        (
            "loopback with another path",
            Some("http://127.0.0.1:5000/other"),
        ),
        (
            "localhost is not the registered 127.0.0.1",
            Some("http://localhost:5000/callback"),
        ),
        (
            "loopback with a fragment (RFC 6749 3.1.2)",
            Some("http://127.0.0.1:5000/callback#x"),
        ),
        ("missing, with several registered", None),
    ] {
        let p = match redirect_uri {
            Some(uri) => with(base.clone(), "redirect_uri", uri),
            None => without(base.clone(), "redirect_uri"),
        };
        let r = get_authorize(&gw, &p, None).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_page(&r, 400);
        assert!(
            r.text().contains("not registered") || r.text().contains("no redirect URI"),
            "{what}: {}",
            r.text()
        );
    }
    // The control: the registered URI is accepted (the sign-in page).
    let r = get_authorize(
        &gw,
        &params("spa", APP_CB, "orders:read", Some(&c.challenge)),
        None,
    )
    .await;
    assert_page(&r, 200);
}

#[tokio::test]
async fn loopback_redirect_uri_may_use_another_port() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let presented = "http://127.0.0.1:53999/callback";
    let p = params("spa", presented, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;
    // The code goes to the port the request named ...
    let r = decide(&gw, &page, &session, "approve").await;
    let (to, q) = redirect(&r);
    assert_eq!(to, presented);
    let code = q.get("code").expect("no code");
    // ... and is bound to that exact URI, not the registered one.
    let r = exchange(
        &gw,
        Exchange {
            client: "spa",
            secret: None,
            code,
            redirect_uri: Some(presented),
            verifier: Some(&c.verifier),
        },
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Errors after the client check go to the presented loopback URI too.
    let r = get_authorize(&gw, &with(p, "response_type", "token"), None).await;
    assert_error_redirect(&r, presented, "unsupported_response_type");
}

#[tokio::test]
async fn a_loopback_redirect_uri_may_vary_its_port_only_to_a_port() {
    // RFC 8252 7.3 lets the port vary; what follows the colon must still be
    // one, or the URI is invalid and RFC 6749 4.1.2.1 forbids redirecting to
    // it: the error page, never a redirect (here, for an error that would
    // otherwise go to the redirect URI at once).
    let (_upstream, gw) = start().await;
    let c = pkce();
    for port in ["-9", "+9", "65536", "99999999", "9a", "0x1f", " 9"] {
        let uri = format!("http://127.0.0.1:{port}/callback");
        let p = params("spa", &uri, "orders:read", Some(&c.challenge));
        let r = get_authorize(&gw, &with(p, "response_type", "token"), None).await;
        if let Err(e) = page_faults(&r, &[400]) {
            panic!("{uri}: {e}");
        }
    }
    // Ports as browsers read them: any decimal up to 65535, leading zeros
    // too, or none after the colon (the scheme's default).
    for port in ["65535", "08080", "0", ""] {
        let uri = format!("http://127.0.0.1:{port}/callback");
        let p = params("spa", &uri, "orders:read", Some(&c.challenge));
        let r = get_authorize(&gw, &with(p, "response_type", "token"), None).await;
        assert_error_redirect(&r, &uri, "unsupported_response_type");
    }
}

#[tokio::test]
async fn a_single_registered_redirect_uri_may_be_omitted() {
    // RFC 6749 3.1.2.3: with one registered URI the request may leave it out;
    // the code is then bound to the registered one.
    let (_upstream, gw) = start().await;
    let p = without(params("web", WEB_CB, "orders:read", None), "redirect_uri");
    let (page, session) = consent(&gw, &p, "alice").await;
    let r = decide(&gw, &page, &session, "approve").await;
    let (to, q) = redirect(&r);
    assert_eq!(to, WEB_CB);
    let r = exchange(
        &gw,
        Exchange {
            client: "web",
            secret: Some(SECRET),
            code: &q["code"],
            redirect_uri: Some(WEB_CB),
            verifier: None,
        },
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------------------
// Errors reported at the redirect URI
// ---------------------------------------------------------------------------

/// A known client that may not use the code grant, asking at a redirect URI
/// registered for it, is told so there (RFC 6749 4.1.2.1); so is a request
/// for a response mode other than the query.
#[tokio::test]
async fn unauthorized_clients_and_other_response_modes_are_told_at_the_redirect_uri() {
    let upstream = Upstream::start().await;
    let config = config(upstream.addr, "").replace(
        "      grants: [client_credentials]\n      scopes: [orders:read]\n      audience: orders-api\n",
        "      grants: [client_credentials]\n      scopes: [orders:read]\n      audience: orders-api\n      redirect_uris: [https://svc.test/cb]\n",
    );
    assert!(config.contains("https://svc.test/cb"));
    let gw = Gateway::start(&config).await;
    let c = pkce();
    let r = get_authorize(
        &gw,
        &params(
            "svc",
            "https://svc.test/cb",
            "orders:read",
            Some(&c.challenge),
        ),
        None,
    )
    .await;
    assert_error_redirect(&r, "https://svc.test/cb", "unauthorized_client");

    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    for mode in ["fragment", "form_post"] {
        let r = get_authorize(&gw, &with(p.clone(), "response_mode", mode), None).await;
        assert_error_redirect(&r, APP_CB, "invalid_request");
    }
    // The query, said or not, is the sign-in page.
    let r = get_authorize(&gw, &with(p.clone(), "response_mode", "query"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn response_type_token_is_unsupported_and_state_comes_back_untouched() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let r = get_authorize(&gw, &with(p.clone(), "response_type", "token"), None).await;
    assert_error_redirect(&r, APP_CB, "unsupported_response_type");
    // Percent-encoded on the wire (no raw space, quote, '<' or second '#').
    let location = r.header("location").unwrap();
    assert!(
        !location.contains(' ') && !location.contains('<') && !location.contains('"'),
        "{location}"
    );
    assert_eq!(location.matches('#').count(), 0, "{location}");
    assert!(set_cookie(&r, "__Secure-sg_csrf").is_none());
    // Without response_type at all: invalid_request.
    let r = get_authorize(&gw, &without(p.clone(), "response_type"), None).await;
    assert_error_redirect(&r, APP_CB, "invalid_request");
    // Without state, none comes back (and iss still does).
    let r = get_authorize(
        &gw,
        &without(with(p, "response_type", "token"), "state"),
        None,
    )
    .await;
    let (_, q) = redirect(&r);
    assert!(!q.contains_key("state"), "{q:?}");
    assert_eq!(q.get("iss").map(String::as_str), Some(ISS));
}

/// A parameter sent twice (RFC 6749 3.1) is `invalid_request` at the
/// redirect URI, with `state` and `iss`, once the client and redirect URI
/// check out (RFC 6749 4.1.2.1): only a repeated `client_id` or
/// `redirect_uri`, which leaves no redirect URI to trust, gets the error
/// page. A `state` sent twice is not echoed.
#[tokio::test]
async fn a_repeated_parameter_is_invalid_request_at_the_redirect_uri() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let twice = |name: &str, value: &str| {
        let mut q = p.clone();
        q.push((name.into(), value.into()));
        q
    };
    let r = get_authorize(&gw, &twice("scope", "orders:read"), None).await;
    assert_error_redirect(&r, APP_CB, "invalid_request");
    // So for the pages' forms.
    let r = post_authorize(&gw, &twice("scope", "reports:read"), None).await;
    assert_error_redirect(&r, APP_CB, "invalid_request");
    let r = get_authorize(&gw, &twice("state", "other"), None).await;
    let (to, q) = redirect(&r);
    assert_eq!(to, APP_CB);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert!(!q.contains_key("state"), "{q:?}");
    assert_eq!(q.get("iss").map(String::as_str), Some(ISS), "{q:?}");
    for (name, value) in [
        ("client_id", "spa"),
        ("redirect_uri", APP_CB),
        ("redirect_uri", APP_CB2),
    ] {
        assert_page(&get_authorize(&gw, &twice(name, value), None).await, 400);
    }
    // The client and redirect URI still come first.
    let elsewhere = with(
        twice("scope", "orders:read"),
        "redirect_uri",
        "https://evil.test/cb",
    );
    assert_page(&get_authorize(&gw, &elsewhere, None).await, 400);
    // The control: a second `scope` without a value counts as not sent.
    assert_page(&get_authorize(&gw, &twice("scope", ""), None).await, 200);
}

#[tokio::test]
async fn state_is_escaped_in_the_pages() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = with(
        params("spa", APP_CB, "orders:read", Some(&c.challenge)),
        "state",
        "\"><script>alert(1)</script>",
    );
    let r = get_authorize(&gw, &p, None).await;
    assert_page(&r, 200);
    assert!(!r.text().contains("<script>"), "{}", r.text());
    assert_eq!(
        field(&hidden_fields(&r.text()), "state"),
        "\"><script>alert(1)</script>"
    );
    // The client's display name is escaped too.
    assert!(r.text().contains("Orders &lt;SPA&gt;"), "{}", r.text());
}

#[tokio::test]
async fn scope_outside_the_clients_is_invalid_scope() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    for scope in ["orders:read admin", "admin", "orders:write"] {
        let r = get_authorize(&gw, &params("spa", APP_CB, scope, Some(&c.challenge)), None).await;
        assert_error_redirect(&r, APP_CB, "invalid_scope");
    }
    // The control: a subset is fine.
    let r = get_authorize(
        &gw,
        &params("spa", APP_CB, "reports:read", Some(&c.challenge)),
        None,
    )
    .await;
    assert_page(&r, 200);
}

/// A `scope` of blanks is read as left out, on the consent page and in the
/// code alike: the page lists the client's scopes, and the token grants
/// what the page listed. (Read as no scopes, the page showed none while its
/// form, posting the empty field back, got the client's defaults.)
#[tokio::test]
async fn a_blank_scope_is_the_clients_default_on_the_page_and_in_the_token() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "  ", Some(&c.challenge));
    // Signed in, the consent page comes straight from the request.
    let (_, session) = consent(&gw, &p, "alice").await;
    let page = get_authorize(&gw, &p, Some(&session)).await;
    assert_page(&page, 200);
    let html = page.text();
    for shown in ["(orders:read)", "(reports:read)"] {
        assert!(html.contains(shown), "{shown} not listed: {html}");
    }
    assert!(!html.contains("Know who you are"), "{html}");
    let r = decide(&gw, &page, &session, "approve").await;
    let code = redirect(&r).1["code"].clone();
    let r = spa_exchange(&gw, &code, Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["scope"],
        "orders:read reports:read",
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn public_clients_must_use_s256_pkce() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    const PLAIN: &str = "code_challenge_method must be S256 (plain is not allowed)";
    for (what, p, description) in [
        (
            "no code_challenge",
            without(
                without(p.clone(), "code_challenge"),
                "code_challenge_method",
            ),
            "public clients must use PKCE (code_challenge)",
        ),
        (
            "plain",
            with(p.clone(), "code_challenge_method", "plain"),
            PLAIN,
        ),
        (
            "plain with a verifier-shaped challenge",
            with(
                with(p.clone(), "code_challenge_method", "plain"),
                "code_challenge",
                &c.verifier,
            ),
            PLAIN,
        ),
        (
            "method missing (defaults to plain)",
            without(p.clone(), "code_challenge_method"),
            "code_challenge_method=S256 is required",
        ),
        (
            "method without challenge",
            without(p.clone(), "code_challenge"),
            "code_challenge_method without code_challenge",
        ),
        (
            "challenge not a SHA-256",
            with(p.clone(), "code_challenge", "too-short"),
            "code_challenge is not a base64url SHA-256",
        ),
    ] {
        let r = get_authorize(&gw, &p, None).await;
        assert_eq!(r.status, 303, "{what}: {}", r.text());
        assert_error_redirect(&r, APP_CB, "invalid_request");
        assert_eq!(
            redirect(&r).1.get("error_description").map(String::as_str),
            Some(description),
            "{what}"
        );
    }
    // plain is refused for a confidential client too.
    let r = get_authorize(
        &gw,
        &with(
            params("web", WEB_CB, "orders:read", Some(&c.challenge)),
            "code_challenge_method",
            "plain",
        ),
        None,
    )
    .await;
    assert_error_redirect(&r, WEB_CB, "invalid_request");
    // The control.
    let r = get_authorize(&gw, &p, None).await;
    assert_page(&r, 200);
}

// ---------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------

/// `authorize_path` moves the authorization endpoint: the metadata names it
/// (RFC 8414 `authorization_endpoint`), the sign-in page is served there,
/// posts its forms back there and scopes its cookies to it, a user signs in
/// and approves there and the code is redeemed, and the default path
/// answers 404.
#[tokio::test]
async fn a_configured_authorize_path_is_the_endpoint_the_metadata_names() {
    const MOVED: &str = "/login/authorize";
    let (_upstream, gw) = start_with(&format!("  authorize_path: {MOVED}\n")).await;
    let metadata = get(&gw.url("/.well-known/oauth-authorization-server"), &[])
        .await
        .unwrap();
    assert_eq!(metadata.status, 200, "{}", metadata.text());
    assert_eq!(
        metadata.json()["authorization_endpoint"],
        format!("{ISS}{MOVED}"),
        "{}",
        metadata.text()
    );

    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let query = encode(&p);
    let default = get(&gw.url(&format!("{AUTHORIZE}?{query}")), &[])
        .await
        .unwrap();
    assert_eq!(default.status, 404, "{}", default.text());

    let page = get(&gw.url(&format!("{MOVED}?{query}")), &[])
        .await
        .unwrap();
    assert_page(&page, 200);
    assert!(page.text().contains("<h1>Sign in</h1>"), "{}", page.text());
    assert!(
        page.text().contains(&format!("action=\"{MOVED}\"")),
        "{}",
        page.text()
    );
    let csrf = set_cookie(&page, "__Secure-sg_csrf").unwrap();
    assert!(csrf.contains(&format!("Path={MOVED};")), "{csrf}");

    let post = |form: Params, cookie: String| {
        let url = gw.url(MOVED);
        async move {
            send(
                "POST",
                &url,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookie),
                ],
                Bytes::from(encode(&form)),
            )
            .await
            .unwrap()
        }
    };
    let mut form = hidden_fields(&page.text());
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), PASSWORD.into()));
    let consent = post(form, cookie_pair(&page, "__Secure-sg_csrf")).await;
    assert_page(&consent, 200);
    assert!(
        consent.text().contains("<h1>Allow access?</h1>"),
        "{}",
        consent.text()
    );
    let mut form = hidden_fields(&consent.text());
    form.push(("action".into(), "approve".into()));
    let approved = post(form, cookie_pair(&consent, "__Secure-sg_session")).await;
    let (to, q) = redirect(&approved);
    assert_eq!(to, APP_CB);
    let r = spa_exchange(&gw, &q["code"], Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        orders_status(&gw, &s(&r.json(), "access_token"))
            .await
            .status,
        200
    );
}

/// `HEAD` on the authorization endpoint is answered as `GET` without the
/// body (RFC 9110 9.3.2); another method gets 405 naming the three, and a
/// lower-case one 400, as everywhere.
#[tokio::test]
async fn head_on_the_sign_in_page_is_answered_as_get() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let page = get_authorize(&gw, &p, None).await;
    assert_page(&page, 200);
    let head = send("HEAD", &authorize_url(&gw, &p), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(head.status, 200, "{}", head.text());
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), page.header("content-type"));
    assert!(set_cookie(&head, "__Secure-sg_csrf").is_some());
    let put = send("PUT", &authorize_url(&gw, &p), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow").as_deref(), Some("GET, HEAD, POST"));
    // A lower-case method is refused here as on every path.
    for (method, path) in [("get", AUTHORIZE), ("post", TOKEN)] {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let reply = raw_reply(gw.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 400, "{method} {path}: {reply:?}");
    }
}

/// A sign-in form that stops arriving gets 408 once the form's time is up,
/// and the connection closes, as at the token endpoint (README: "sent whole
/// within 10 s (408 and the connection closed after that").
#[tokio::test]
async fn a_stalled_sign_in_form_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_upstream, gw) = start().await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {AUTHORIZE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nclient_id="
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
        reply.header("connection").as_deref(),
        Some("close"),
        "{reply:?}"
    );
}

/// Browsers send the sign-in cookies (`Path=/oauth2/authorize`) with every
/// request below that path too (RFC 6265 5.1.4): no route may forward them
/// there, or the app would read the session and its CSRF value. Routes
/// written there are refused (tests/config.rs); this one only happens to
/// match there.
#[tokio::test]
async fn paths_below_the_sign_in_page_reach_no_upstream() {
    let upstream = Upstream::start().await;
    let wide = "  - path: /{a}/{b}/x\n    upstream: app\n    auth: none\n";
    let gw = Gateway::start(&format!("{}{wide}", config(upstream.addr, ""))).await;
    let cookie = [("cookie", "__Secure-sg_session=s; __Secure-sg_csrf=c")];
    for path in [
        "/oauth2/authorize/x",
        "/oauth2/authorize/x?a=b",
        "/oauth2//authorize/x",
        "/oauth2/authorize/./x",
        "/oauth2/authorize/../authorize/x",
    ] {
        let r = get(&gw.url(path), &cookie).await.unwrap();
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    assert_eq!(upstream.count(), 0, "{:?}", upstream.seen());
    // The control: a sibling the cookies do not go to is the route's, and
    // the sign-in page itself is still served.
    let r = get(&gw.url("/oauth2/authorizex/x"), &cookie).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.last().path_and_query, "/oauth2/authorizex/x");
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    assert_page(&get_authorize(&gw, &p, None).await, 200);
}

#[tokio::test]
async fn sign_in_requires_the_double_submit_csrf_cookie() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let page = get_authorize(&gw, &p, None).await;
    assert_page(&page, 200);
    let mut form = hidden_fields(&page.text());
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), PASSWORD.into()));
    let cookie = cookie_pair(&page, "__Secure-sg_csrf");
    assert_eq!(cookie, format!("__Secure-sg_csrf={}", field(&form, "csrf")));

    let refused = |r: &Reply, what: &str| {
        assert_page(r, 403);
        assert!(set_cookie(r, "__Secure-sg_session").is_none(), "{what}");
        assert!(r.text().contains("Request refused"), "{what}: {}", r.text());
    };
    // No cookie.
    refused(&post_authorize(&gw, &form, None).await, "no cookie");
    // A cookie that does not match the form.
    let other = format!(
        "__Secure-sg_csrf={}",
        scopegate::issuer::random_token().unwrap()
    );
    refused(
        &post_authorize(&gw, &form, Some(&other)).await,
        "mismatched cookie",
    );
    // The right cookie, the form's token changed.
    refused(
        &post_authorize(&gw, &with(form.clone(), "csrf", "forged"), Some(&cookie)).await,
        "mismatched form token",
    );
    // The form's token missing, the cookie present.
    refused(
        &post_authorize(&gw, &without(form.clone(), "csrf"), Some(&cookie)).await,
        "no form token",
    );
    // The control: the page's own cookie and form succeed.
    let r = post_authorize(&gw, &form, Some(&cookie)).await;
    assert_page(&r, 200);
    assert!(set_cookie(&r, "__Secure-sg_session").is_some());
}

/// A second sign-in page opened meanwhile (another tab, a restored page)
/// keeps the browser's CSRF cookie, so the first page's form still works.
#[tokio::test]
async fn a_second_sign_in_page_keeps_the_first_ones_form_valid() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let first = get_authorize(&gw, &p, None).await;
    assert_page(&first, 200);
    let first_cookie = cookie_pair(&first, "__Secure-sg_csrf");
    let second = get_authorize(&gw, &p, Some(&first_cookie)).await;
    assert_page(&second, 200);
    // The browser now holds what the second page set.
    let held = cookie_pair(&second, "__Secure-sg_csrf");
    let mut form = hidden_fields(&first.text());
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), PASSWORD.into()));
    let r = post_authorize(&gw, &form, Some(&held)).await;
    assert_page(&r, 200);
    assert!(
        set_cookie(&r, "__Secure-sg_session").is_some(),
        "{}",
        r.text()
    );
    // A cookie that is no token of ours is not taken back: not a short
    // one, nor one of a token's length but other characters (which the
    // form would otherwise carry into the page).
    let b64 = "A".repeat(42);
    for forged in [
        "forged".to_owned(),
        b64.clone(),
        format!("{b64}AA"),
        format!("{b64}."),
        format!("{b64}!"),
        format!("{b64}="),
        format!("{b64}+"),
        format!("{b64}/"),
        format!("{b64}<"),
        format!("{b64}\""),
    ] {
        let planted_cookie = format!("__Secure-sg_csrf={forged}");
        let planted = get_authorize(&gw, &p, Some(&planted_cookie)).await;
        assert_page(&planted, 200);
        let issued = cookie_pair(&planted, "__Secure-sg_csrf");
        assert_ne!(issued, planted_cookie);
        assert_ne!(field(&hidden_fields(&planted.text()), "csrf"), forged);
        assert!(!planted.text().contains(&forged), "{forged}");
    }
}

/// A browser sends every cookie of the host on one line (RFC 6265 5.4):
/// another application's cookie with UTF-8 in its value must not hide the
/// sign-in's own cookies.
#[tokio::test]
async fn another_apps_utf8_cookie_does_not_hide_ours() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let foreign = "city=Z\u{fc}rich";
    let (_, reply) = sign_in_from(&gw, &p, "alice", PASSWORD, Some(foreign)).await;
    assert_page(&reply, 200);
    assert!(reply.text().contains("Allow access?"), "{}", reply.text());
    let session = cookie_pair(&reply, "__Secure-sg_session");
    let code = code_with_session(&gw, &p, &format!("{foreign}; {session}")).await;
    assert!(!code.is_empty());
}

#[tokio::test]
async fn wrong_password_is_400_and_five_failures_lock_the_user() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    for attempt in 1..=5 {
        let (_, r) = sign_in(&gw, &p, "bob", "wrong password").await;
        // Not 401: a form has no challenge for `WWW-Authenticate`.
        assert_page(&r, 400);
        assert!(r.headers.get("www-authenticate").is_none());
        assert!(
            r.text().contains("Wrong user name or password."),
            "attempt {attempt}: {}",
            r.text()
        );
        assert!(r.text().contains("<h1>Sign in</h1>"));
        assert!(set_cookie(&r, "__Secure-sg_session").is_none());
        // The page can be submitted again (the CSRF cookie set anew).
        assert!(set_cookie(&r, "__Secure-sg_csrf").is_some());
    }
    // The sixth attempt is refused even with the right password.
    let (_, r) = sign_in(&gw, &p, "bob", PASSWORD).await;
    assert_page(&r, 429);
    assert!(
        r.text().contains("Too many failed sign-ins"),
        "{}",
        r.text()
    );
    assert!(set_cookie(&r, "__Secure-sg_session").is_none());
    // Per user: alice is not affected.
    let (r, _) = consent(&gw, &p, "alice").await;
    assert_eq!(r.status, 200);
    // An unknown user is a wrong password, not a different answer.
    let (_, r) = sign_in(&gw, &p, "nobody", PASSWORD).await;
    assert_page(&r, 400);
}

/// Failed sign-ins from other browsers do not lock a user out of the
/// browser they signed in from before (its device cookie has a budget of
/// its own), and that budget runs out as the shared one does.
#[tokio::test]
async fn others_failures_do_not_lock_a_user_out_of_a_known_browser() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let (_, known) = sign_in(&gw, &p, "bob", PASSWORD).await;
    assert_page(&known, 200);
    assert_cookie_attributes(&known, &device_cookie("bob"));
    let device = cookie_pair(&known, &device_cookie("bob"));
    let device_jwt = device.split_once('=').unwrap().1.to_owned();
    // Someone else guesses until bob is locked for unknown browsers.
    for _ in 1..=5 {
        let (_, r) = sign_in(&gw, &p, "bob", "guess").await;
        assert_page(&r, 400);
    }
    let (_, r) = sign_in(&gw, &p, "bob", PASSWORD).await;
    assert_page(&r, 429);
    // Bob's own browser still signs him in.
    let (_, r) = sign_in_from(&gw, &p, "bob", PASSWORD, Some(&device)).await;
    assert_page(&r, 200);
    assert!(r.text().contains("<h1>Allow access?</h1>"), "{}", r.text());
    // The cookie counts only for the user it signed in (even under that
    // user's cookie name), and only untampered.
    let (_, r) = sign_in_from(&gw, &p, "bob", PASSWORD, Some(&format!("{device}x"))).await;
    assert_page(&r, 429);
    let as_alice = format!("{}={device_jwt}", device_cookie("alice"));
    for _ in 1..=5 {
        let (_, r) = sign_in_from(&gw, &p, "alice", "guess", Some(&as_alice)).await;
        assert_page(&r, 400);
    }
    let (_, r) = sign_in(&gw, &p, "alice", PASSWORD).await;
    assert_page(&r, 429);
    // Two users of one browser each keep their own: carol signing in there
    // sets hers and leaves bob's be.
    let (_, r) = sign_in_from(&gw, &p, "bob", PASSWORD, Some(&device)).await;
    assert_page(&r, 200);
    let (_, carol) = sign_in_from(&gw, &p, "carol", PASSWORD, Some(&device)).await;
    assert_page(&carol, 200);
    assert!(set_cookie(&carol, &device_cookie("carol")).is_some());
    assert!(set_cookie(&carol, &device_cookie("bob")).is_none());
    // Guesses from the known browser use up its own budget.
    for _ in 1..=5 {
        let (_, r) = sign_in_from(&gw, &p, "bob", "guess", Some(&device)).await;
        assert_page(&r, 400);
    }
    let (_, r) = sign_in_from(&gw, &p, "bob", PASSWORD, Some(&device)).await;
    assert_page(&r, 429);
}

/// The sign-in page's lock-out 429 says when to come back, as the token
/// endpoint's does (README: "429 with `Retry-After` after five wrong
/// secrets or passwords for one name within a minute").
#[tokio::test]
async fn sign_in_failure_limit_429_says_retry_after() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    for _ in 1..=5 {
        let (_, r) = sign_in(&gw, &p, "bob", "wrong password").await;
        assert_page(&r, 400);
        assert_eq!(r.header("retry-after"), None);
    }
    let (_, r) = sign_in(&gw, &p, "bob", PASSWORD).await;
    assert_page(&r, 429);
    assert_eq!(
        r.header("retry-after").as_deref(),
        Some("60"),
        "{:?}",
        r.headers
    );
}

// ---------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------

#[tokio::test]
async fn approve_without_a_valid_session_shows_the_sign_in_page() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;

    // A session issued by another server (same issuer, other key).
    let (_other_upstream, other) = start().await;
    let (_, foreign) = consent(&other, &p, "alice").await;
    // A tampered one: the payload's last character changed.
    let value = session.trim_start_matches("__Secure-sg_session=");
    let mut parts: Vec<String> = value.split('.').map(str::to_owned).collect();
    let last = parts[1].pop().unwrap();
    parts[1].push(if last == 'A' { 'B' } else { 'A' });
    let tampered = format!("__Secure-sg_session={}", parts.join("."));

    for (what, cookie) in [
        ("no session", None),
        ("garbage", Some("__Secure-sg_session=not-a-jwt")),
        ("foreign key", Some(foreign.as_str())),
        ("tampered", Some(tampered.as_str())),
    ] {
        for action in ["approve", "deny"] {
            let mut form = hidden_fields(&page.text());
            form.push(("action".into(), action.into()));
            let r = post_authorize(&gw, &form, cookie).await;
            assert_page(&r, 200);
            assert!(
                r.text().contains("<h1>Sign in</h1>") && r.text().contains("Your session ended"),
                "{what}/{action}: {}",
                r.text()
            );
        }
        // And GET shows the sign-in page, not consent.
        let r = get_authorize(&gw, &p, cookie).await;
        assert!(r.text().contains("<h1>Sign in</h1>"), "{what}");
    }
    // The control: the real session approves.
    let r = decide(&gw, &page, &session, "approve").await;
    assert!(redirect(&r).1.contains_key("code"));
}

/// A session is signed with the same key as access tokens, and names the
/// same issuer and user; its `typ` (RFC 8725 3.11) is all that keeps it from
/// passing for one. A stolen session cookie must not work as a bearer token,
/// at the gateway or at introspection (where a resource server would ask).
#[tokio::test]
async fn a_session_is_no_access_token() {
    let (upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;
    let session_jwt = session
        .trim_start_matches("__Secure-sg_session=")
        .to_owned();
    // The device cookie is signed the same way: no bearer token either, and
    // no session.
    let device_jwt = cookie_pair(&page, &device_cookie("alice"))
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let r = get_authorize(&gw, &p, Some(&format!("__Secure-sg_session={device_jwt}"))).await;
    assert!(r.text().contains("<h1>Sign in</h1>"), "{}", r.text());

    for token in [&session_jwt, &device_jwt] {
        let r = get_with_token(&gw.url("/orders/1"), token).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let form = |token: &str| {
        encode(&[
            ("token", token),
            ("client_id", "svc"),
            ("client_secret", SECRET),
        ])
    };
    let url = gw.url("/oauth2/introspect");
    let introspect = |token: String| {
        send(
            "POST",
            &url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(form(&token)),
        )
    };
    for token in [&session_jwt, &device_jwt] {
        let r = introspect(token.clone()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), serde_json::json!({ "active": false }));
    }

    // The control: the session still works, and its access token is active.
    let r = decide(&gw, &page, &session, "approve").await;
    let code = redirect(&r).1["code"].clone();
    let r = spa_exchange(&gw, &code, Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = introspect(access.clone()).await.unwrap();
    assert_eq!(r.json()["active"], true, "{}", r.text());
    assert_eq!(
        get_with_token(&gw.url("/orders/1"), &access).await.status,
        200
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn consent_with_a_wrong_csrf_token_is_forbidden() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let (login_page, _) = sign_in(&gw, &p, "alice", "wrong").await;
    let (page, session) = consent(&gw, &p, "alice").await;
    let form = hidden_fields(&page.text());
    let login_csrf = field(&hidden_fields(&login_page.text()), "csrf");
    for action in ["approve", "deny"] {
        for (what, csrf) in [
            ("forged", Some("forged")),
            ("the sign-in form's token", Some(login_csrf.as_str())),
            ("missing", None),
        ] {
            let f = match csrf {
                Some(v) => with(form.clone(), "csrf", v),
                None => without(form.clone(), "csrf"),
            };
            let r = post_authorize(&gw, &with(f, "action", action), Some(&session)).await;
            assert_page(&r, 403);
            assert!(
                r.text().contains("Request refused"),
                "{action}/{what}: {}",
                r.text()
            );
        }
    }
    // Another session's token does not fit this session either.
    let (other_page, _) = consent(&gw, &p, "bob").await;
    let r = decide(&gw, &other_page, &session, "approve").await;
    assert_page(&r, 403);
    // The control.
    let r = decide(&gw, &page, &session, "approve").await;
    assert!(redirect(&r).1.contains_key("code"));
}

#[tokio::test]
async fn deny_redirects_access_denied_with_state_and_iss() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB2, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;
    let r = decide(&gw, &page, &session, "deny").await;
    assert_error_redirect(&r, APP_CB2, "access_denied");
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    // An unknown action is neither.
    let r = decide(&gw, &page, &session, "maybe").await;
    assert_page(&r, 400);
}

/// A store that fails once the user has approved is told to the client at
/// its (validated) redirect URI, as `temporarily_unavailable` with `state`
/// and `iss` (RFC 6749 4.1.2.1), not on a page the client never sees.
#[tokio::test]
async fn a_store_failure_at_approval_is_told_at_the_redirect_uri() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (_upstream, gw) = start_with(&format!("  store: {{ redis: \"{}\" }}\n", redis.url())).await;
    let c = pkce();
    let p = params("spa", APP_CB2, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;
    drop(redis);
    let r = decide(&gw, &page, &session, "approve").await;
    assert_error_redirect(&r, APP_CB2, "temporarily_unavailable");
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let text = gw.metrics().await;
    let errors = metric(
        &text,
        "scopegate_issuer_store_errors_total",
        &[("store", "redis"), ("kind", "backend")],
    );
    assert_eq!(errors, 1.0, "{text}");
}

#[tokio::test]
async fn approve_redirects_with_code_state_and_iss_and_the_token_works() {
    let (upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;
    // The consent page names the client, the user and the scope in words.
    let text = page.text();
    assert!(
        text.contains("Signed in as <strong>alice</strong>"),
        "{text}"
    );
    assert!(text.contains("Orders &lt;SPA&gt;"), "{text}");
    assert!(text.contains("Read your orders (orders:read)"), "{text}");
    assert!(text.contains(">Allow</button>") && text.contains(">Deny</button>"));

    let r = decide(&gw, &page, &session, "approve").await;
    let (to, q) = redirect(&r);
    assert_eq!(to, APP_CB);
    assert_eq!(q.get("state").map(String::as_str), Some(NASTY_STATE));
    assert_eq!(q.get("iss").map(String::as_str), Some(ISS));
    let code = q.get("code").expect("no code").clone();
    assert!(code.len() >= 43, "{code}");
    assert!(!q.contains_key("error"));

    let r = spa_exchange(&gw, &code, Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "orders:read");
    assert!(body["refresh_token"].is_string(), "{body}");
    let access = s(&body, "access_token");
    let r = orders_status(&gw, &access).await;
    assert_eq!(r.status, 200, "{} {}", r.text(), r.www_authenticate());
    assert_eq!(upstream.last().path_and_query, "/orders/7");
    // The token carries the user, not the client.
    let claims = jwt_part(&access, 1);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "spa");
    assert_eq!(claims["iss"], ISS);
}

#[tokio::test]
async fn pages_carry_security_headers_and_cookie_attributes() {
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    // Sign-in page and its CSRF cookie.
    let page = get_authorize(&gw, &p, None).await;
    assert_page(&page, 200);
    assert_cookie_attributes(&page, "__Secure-sg_csrf");
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        page.header("referrer-policy").as_deref(),
        Some("no-referrer")
    );
    let csp = page.header("content-security-policy").unwrap();
    // The forms may post to the endpoint and be redirected to the client only.
    assert!(
        csp.contains("form-action 'self' https://app.test;"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // Consent page and the session cookie.
    let (consent_page, _) = consent(&gw, &p, "alice").await;
    assert_page(&consent_page, 200);
    assert_cookie_attributes(&consent_page, "__Secure-sg_session");
    assert_cookie_attributes(&consent_page, &device_cookie("alice"));
    // Error pages.
    let r = get_authorize(&gw, &with(p.clone(), "client_id", "nobody"), None).await;
    assert_page(&r, 400);
    let (_, r) = sign_in(&gw, &p, "alice", "wrong").await;
    assert_page(&r, 400);
    let r = post_authorize(&gw, &with(p.clone(), "action", "login"), None).await;
    assert_page(&r, 403);
    // Other methods.
    let r = send("PUT", &authorize_url(&gw, &p), &[], Bytes::new())
        .await
        .unwrap();
    assert_page(&r, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD, POST"));
}

// ---------------------------------------------------------------------------
// The code exchange
// ---------------------------------------------------------------------------

/// A gateway, a signed-in `alice` session for `spa`, and a way to get codes.
struct Codes {
    _upstream: Upstream,
    gw: Gateway,
    session: String,
}

impl Codes {
    async fn start() -> Self {
        let (upstream, gw) = start().await;
        let c = pkce();
        let (_, session) = consent(
            &gw,
            &params("spa", APP_CB, "orders:read", Some(&c.challenge)),
            "alice",
        )
        .await;
        Self {
            _upstream: upstream,
            gw,
            session,
        }
    }

    /// A code for `client` at `redirect_uri` with this challenge.
    async fn code(&self, client: &str, redirect_uri: &str, challenge: Option<&str>) -> String {
        code_with_session(
            &self.gw,
            &params(client, redirect_uri, "orders:read", challenge),
            &self.session,
        )
        .await
    }

    /// A code for `spa` redeemed once (asserted 200): its PKCE pair, the
    /// code, and the token answer.
    async fn redeemed(&self) -> (Pkce, String, Value) {
        let c = pkce();
        let code = self.code("spa", APP_CB, Some(&c.challenge)).await;
        let first = spa_exchange(&self.gw, &code, Some(&c.verifier)).await;
        assert_eq!(first.status, 200, "{}", first.text());
        (c, code, first.json())
    }
}

#[tokio::test]
async fn exchange_with_a_wrong_verifier_is_invalid_grant() {
    let t = Codes::start().await;
    let c = pkce();
    let code = t.code("spa", APP_CB, Some(&c.challenge)).await;
    let r = spa_exchange(&t.gw, &code, Some(&pkce().verifier)).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // The failed attempt spent the code.
    let r = spa_exchange(&t.gw, &code, Some(&c.verifier)).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn verifier_must_be_43_to_128_unreserved_characters() {
    let t = Codes::start().await;
    // Each verifier matches its challenge: only its shape refuses it.
    for (what, verifier) in [
        ("42 characters", "a".repeat(42)),
        ("129 characters", "b".repeat(129)),
        ("a reserved character", format!("{}!", "c".repeat(42))),
        ("a space", format!("{} ", "d".repeat(42))),
    ] {
        let code = t.code("spa", APP_CB, Some(&s256(&verifier))).await;
        let r = spa_exchange(&t.gw, &code, Some(&verifier)).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_oauth_error(&r, 400, "invalid_grant");
    }
    // The bounds themselves are fine.
    for verifier in ["e".repeat(43), "f~._-".repeat(25) + "gh1"] {
        assert!(verifier.len() == 43 || verifier.len() == 128);
        let code = t.code("spa", APP_CB, Some(&s256(&verifier))).await;
        let r = spa_exchange(&t.gw, &code, Some(&verifier)).await;
        assert_eq!(r.status, 200, "{}: {}", verifier.len(), r.text());
    }
}

#[tokio::test]
async fn missing_verifier_is_invalid_grant() {
    let t = Codes::start().await;
    let c = pkce();
    let code = t.code("spa", APP_CB, Some(&c.challenge)).await;
    let r = spa_exchange(&t.gw, &code, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // An empty one too (a fresh code).
    let code = t.code("spa", APP_CB, Some(&c.challenge)).await;
    let r = spa_exchange(&t.gw, &code, Some("")).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

#[tokio::test]
async fn code_is_bound_to_its_client_and_redirect_uri() {
    let t = Codes::start().await;
    let c = pkce();
    // Each with a fresh code issued to `spa` at APP_CB, and the right verifier.
    for (label, client, redirect_uri) in [
        (
            "another client (public, same redirect URI)",
            "spa2",
            Some(APP_CB),
        ),
        ("another registered redirect URI", "spa", Some(APP_CB2)),
        ("no redirect URI (the request named one)", "spa", None),
    ] {
        let code = t.code("spa", APP_CB, Some(&c.challenge)).await;
        let exchange_as = Exchange {
            client,
            secret: None,
            code: &code,
            redirect_uri,
            verifier: Some(&c.verifier),
        };
        let r = exchange(&t.gw, exchange_as).await;
        assert_eq!(r.status, 400, "{label}: {}", r.text());
        assert_oauth_error(&r, 400, "invalid_grant");
    }
    // The control.
    let code = t.code("spa", APP_CB, Some(&c.challenge)).await;
    let r = spa_exchange(&t.gw, &code, Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A used code presented by another client (one that learned it from a
/// leaked redirect) is refused and ends nothing: only its own client's
/// replay revokes what it issued.
#[tokio::test]
async fn a_used_code_from_another_client_leaves_the_grant() {
    let t = Codes::start().await;
    let (c, code, first) = t.redeemed().await;
    let access = s(&first, "access_token");
    let replay = exchange(
        &t.gw,
        Exchange {
            client: "spa2",
            secret: None,
            code: &code,
            redirect_uri: Some(APP_CB),
            verifier: Some(&c.verifier),
        },
    )
    .await;
    assert_oauth_error(&replay, 400, "invalid_grant");
    assert!(
        replay.text().contains("another client"),
        "{}",
        replay.text()
    );
    assert_eq!(orders_status(&t.gw, &access).await.status, 200);
}

#[tokio::test]
async fn code_replay_is_invalid_grant_and_revokes_what_it_issued() {
    let t = Codes::start().await;
    let (c, code, first) = t.redeemed().await;
    let access = s(&first, "access_token");
    let refresh = s(&first, "refresh_token");
    assert_eq!(orders_status(&t.gw, &access).await.status, 200);
    // An unrelated grant, to show the revocation is targeted.
    let other = pkce();
    let other_code = t.code("spa", APP_CB, Some(&other.challenge)).await;
    let r = spa_exchange(&t.gw, &other_code, Some(&other.verifier)).await;
    let other_access = s(&r.json(), "access_token");

    let replay = spa_exchange(&t.gw, &code, Some(&c.verifier)).await;
    assert_oauth_error(&replay, 400, "invalid_grant");
    // The first exchange's access token is refused now ...
    let r = orders_status(&t.gw, &access).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.www_authenticate().contains("error=\"invalid_token\""),
        "{}",
        r.www_authenticate()
    );
    // ... and so is its refresh token.
    let r = send(
        "POST",
        &t.gw.url(TOKEN),
        &[("content-type", "application/x-www-form-urlencoded")],
        Bytes::from(encode(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", "spa"),
        ])),
    )
    .await
    .unwrap();
    assert_oauth_error(&r, 400, "invalid_grant");
    // The other grant still works.
    assert_eq!(orders_status(&t.gw, &other_access).await.status, 200);
    // One replay is counted: the code's (the refresh token's refusal, its
    // grant revoked, is not one).
    let text = t.gw.metrics().await;
    let replays = |kind| metric(&text, "scopegate_issuer_replays_total", &[("kind", kind)]);
    assert_eq!(replays("code"), 1.0, "{text}");
    assert_eq!(replays("refresh_token"), 0.0, "{text}");
}

#[tokio::test]
async fn verifier_for_a_code_issued_without_a_challenge_is_refused() {
    // A confidential client may skip PKCE; a code issued without a challenge
    // must then not be redeemable with a verifier (no PKCE downgrade).
    let t = Codes::start().await;
    let code = t.code("web", WEB_CB, None).await;
    let r = exchange(
        &t.gw,
        Exchange {
            client: "web",
            secret: Some(SECRET),
            code: &code,
            redirect_uri: Some(WEB_CB),
            verifier: Some(&pkce().verifier),
        },
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // The control: the same kind of code without a verifier.
    let code = t.code("web", WEB_CB, None).await;
    let r = exchange(
        &t.gw,
        Exchange {
            client: "web",
            secret: Some(SECRET),
            code: &code,
            redirect_uri: Some(WEB_CB),
            verifier: None,
        },
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A confidential client's code is useless without its secret.
    let code = t.code("web", WEB_CB, None).await;
    let r = exchange(
        &t.gw,
        Exchange {
            client: "web",
            secret: None,
            code: &code,
            redirect_uri: Some(WEB_CB),
            verifier: None,
        },
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_client");
}

#[tokio::test]
async fn expired_code_is_invalid_grant() {
    // A code lives 60 s. Instead of waiting, two codes are written into a
    // file store before the gateway opens it: one expired a second ago, one
    // live. Both are then redeemed through the token endpoint.
    use scopegate::auth::cache::digest;
    use scopegate::issuer::store::{CodeRecord, Store, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.redb");
    let c = pkce();
    let now = now();
    let record = |expires_at: u64| CodeRecord {
        client_id: "spa".into(),
        redirect_uri: APP_CB.into(),
        redirect_uri_sent: true,
        scope: "orders:read".into(),
        subject: "alice".into(),
        code_challenge: Some(c.challenge.clone()),
        expires_at,
        family: scopegate::issuer::random_token().unwrap(),
    };
    let (expired, live) = ("expired-code", "live-code");
    {
        let store = Store::open(&StoreConfig::File(db.clone())).await.unwrap();
        store
            .put_code(&digest(expired), &record(now - 1))
            .await
            .unwrap();
        store
            .put_code(&digest(live), &record(now + 60))
            .await
            .unwrap();
    }
    let (_upstream, gw) = start_with(&format!("  store: {{ file: \"{}\" }}\n", db.display())).await;
    let r = spa_exchange(&gw, expired, Some(&c.verifier)).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let r = spa_exchange(&gw, live, Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        orders_status(&gw, &s(&r.json(), "access_token"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_code_grants_no_more_than_the_user_may() {
    // carol may grant orders:read only; the `wide` client may ask for admin.
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("wide", APP_CB, "orders:read admin", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "carol").await;
    assert!(
        !page.text().contains("Administer") && !page.text().contains("Use admin"),
        "consent offers a scope carol cannot grant: {}",
        page.text()
    );
    let r = decide(&gw, &page, &session, "approve").await;
    let (_, q) = redirect(&r);
    let r = exchange(
        &gw,
        Exchange {
            client: "wide",
            secret: None,
            code: &q["code"],
            redirect_uri: Some(APP_CB),
            verifier: Some(&c.verifier),
        },
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read", "{}", r.text());
    let access = s(&r.json(), "access_token");
    assert_eq!(get_with_token(&gw.url("/admin"), &access).await.status, 403);
    assert_eq!(orders_status(&gw, &access).await.status, 200);
    // alice (no limit) gets both.
    let (page, session) = consent(&gw, &p, "alice").await;
    assert!(page.text().contains("Use admin"), "{}", page.text());
    let r = decide(&gw, &page, &session, "approve").await;
    let (_, q) = redirect(&r);
    let r = exchange(
        &gw,
        Exchange {
            client: "wide",
            secret: None,
            code: &q["code"],
            redirect_uri: Some(APP_CB),
            verifier: Some(&c.verifier),
        },
    )
    .await;
    assert_eq!(r.json()["scope"], "orders:read admin", "{}", r.text());
}

/// A request for scopes none of which the user may grant is `invalid_scope`
/// at the redirect URI, with `state` and `iss`: at sign-in, on a signed-in
/// visit and at approval alike. It got a consent page of no scope and then
/// a code of none, whose token response named no scope and so told the
/// client it had what it asked for (RFC 6749 3.3, 5.1).
#[tokio::test]
async fn a_request_the_user_may_grant_none_of_is_invalid_scope() {
    // carol may grant orders:read only; the `wide` client may ask for admin.
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("wide", APP_CB, "admin", Some(&c.challenge));
    let (_, r) = sign_in(&gw, &p, "carol", PASSWORD).await;
    assert_error_redirect(&r, APP_CB, "invalid_scope");
    // Signed in all the same.
    let session = cookie_pair(&r, "__Secure-sg_session");
    let r = get_authorize(&gw, &p, Some(&session)).await;
    assert_error_redirect(&r, APP_CB, "invalid_scope");
    // A consent form changed to ask for admin.
    let (page, session) = consent(&gw, &with(p.clone(), "scope", "orders:read"), "carol").await;
    let mut form = with(hidden_fields(&page.text()), "scope", "admin");
    form.push(("action".into(), "approve".into()));
    let r = post_authorize(&gw, &form, Some(&session)).await;
    assert_error_redirect(&r, APP_CB, "invalid_scope");
    // The control: alice may grant admin.
    let (page, _) = consent(&gw, &p, "alice").await;
    assert!(page.text().contains("Use admin"), "{}", page.text());
}

/// A code or a refresh token whose grant's scopes have all been taken from
/// the user since (a reload; here records written into the store as an
/// earlier config approved them) is `invalid_scope` at the token endpoint,
/// not a token of no scope whose response names none (RFC 6749 3.3, 5.1;
/// a refresh without `scope` asks for the grant's, RFC 6749 6). A grant
/// with a scope left gets that scope (the control).
#[tokio::test]
async fn a_grant_with_none_of_its_scopes_left_is_invalid_scope_at_the_token_endpoint() {
    use scopegate::auth::cache::digest;
    use scopegate::issuer::store::{CodeRecord, RefreshRecord, Store, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.redb");
    let c = pkce();
    let now = now();
    let code = |client: &str, scope: &str| CodeRecord {
        client_id: client.into(),
        redirect_uri: APP_CB.into(),
        redirect_uri_sent: true,
        scope: scope.into(),
        subject: "carol".into(),
        code_challenge: Some(c.challenge.clone()),
        expires_at: now + 60,
        family: scopegate::issuer::random_token().unwrap(),
    };
    let refresh_token = |handle: &str| format!("{handle}.0.secret-{handle}");
    let grant = |handle: &str, scope: &str| RefreshRecord {
        family: format!("family-{handle}"),
        client_id: "spa".into(),
        subject: "carol".into(),
        scope: scope.into(),
        audience: "orders-api".into(),
        issued_at: now,
        expires_at: now + 600,
        family_expires_at: now + 3600,
        refresh_count: 0,
        token: digest(refresh_token(handle)),
        previous: None,
        retry_until: 0,
        user_grant: true,
        access_expires_at: now + 3600,
    };
    {
        let store = Store::open(&StoreConfig::File(db.clone())).await.unwrap();
        for (name, record) in [
            ("admin-code", code("wide", "admin")),
            ("both-code", code("wide", "orders:read admin")),
        ] {
            store.put_code(&digest(name), &record).await.unwrap();
        }
        for (handle, scope) in [
            ("reports", "reports:read"),
            ("both", "orders:read reports:read"),
        ] {
            store
                .put_refresh(&digest(handle), &grant(handle, scope))
                .await
                .unwrap();
        }
    }
    let (_upstream, gw) = start_with(&format!("  store: {{ file: \"{}\" }}\n", db.display())).await;
    let redeem = |code: &'static str| Exchange {
        client: "wide",
        secret: None,
        code,
        redirect_uri: Some(APP_CB),
        verifier: Some(&c.verifier),
    };
    let refresh = |handle: &str| {
        let token = refresh_token(handle);
        let gw = &gw;
        async move {
            token_form(
                gw,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &token),
                    ("client_id", "spa"),
                ],
                None,
            )
            .await
        }
    };
    let r = exchange(&gw, redeem("admin-code")).await;
    assert_oauth_error(&r, 400, "invalid_scope");
    let r = refresh("reports").await;
    assert_oauth_error(&r, 400, "invalid_scope");
    // The controls.
    let r = exchange(&gw, redeem("both-code")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read", "{}", r.text());
    let r = refresh("both").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read", "{}", r.text());
}

/// RFC 6749 4.1.3: `redirect_uri` is required at the token endpoint only if
/// the authorization request named it; if sent anyway it must still match.
#[tokio::test]
async fn redirect_uri_omitted_at_authorize_may_be_omitted_at_the_token_endpoint() {
    let t = Codes::start().await;
    let c = pkce();
    let unnamed = without(
        params("spa2", APP_CB, "orders:read", Some(&c.challenge)),
        "redirect_uri",
    );
    let spa2 = |code, redirect_uri| Exchange {
        client: "spa2",
        secret: None,
        code,
        redirect_uri,
        verifier: Some(&c.verifier),
    };
    let code = code_with_session(&t.gw, &unnamed, &t.session).await;
    let r = exchange(&t.gw, spa2(&code, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let code = code_with_session(&t.gw, &unnamed, &t.session).await;
    let r = exchange(&t.gw, spa2(&code, Some(APP_CB))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let code = code_with_session(&t.gw, &unnamed, &t.session).await;
    let r = exchange(&t.gw, spa2(&code, Some(APP_CB2))).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // Named at authorize: required at the token endpoint.
    let named = params("spa2", APP_CB, "orders:read", Some(&c.challenge));
    let code = code_with_session(&t.gw, &named, &t.session).await;
    let r = exchange(&t.gw, spa2(&code, None)).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

// ---------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------

/// A `Cookie` pair's value.
fn cookie_value(pair: &str) -> &str {
    pair.split_once('=').map_or("", |(_, v)| v)
}

/// A token request with these form fields (and maybe HTTP Basic).
async fn token_form(gw: &Gateway, form: &[(&str, &str)], basic: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(b) = basic {
        headers.push(("authorization", b));
    }
    send("POST", &gw.url(TOKEN), &headers, Bytes::from(encode(form)))
        .await
        .unwrap()
}

#[tokio::test]
async fn sign_ins_and_token_requests_log_no_credential() {
    let (logs, _capturing) = Logs::capture();
    let (_upstream, gw) = start().await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    // A wrong password, then the right one.
    let wrong_password = "not-my-horse-3f9c";
    let (page, refused) = sign_in(&gw, &p, "alice", wrong_password).await;
    assert_page(&refused, 400);
    let csrf = cookie_pair(&page, "__Secure-sg_csrf");
    let (consent_page, session) = consent(&gw, &p, "alice").await;
    let r = decide(&gw, &consent_page, &session, "approve").await;
    let code = redirect(&r).1.get("code").expect("no code").clone();
    let first = spa_exchange(&gw, &code, Some(&c.verifier)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let access = s(&first.json(), "access_token");
    let refresh = s(&first.json(), "refresh_token");
    assert_eq!(orders_status(&gw, &access).await.status, 200);
    // A refresh, then its replay and the code's (both logged as warnings).
    let rotate = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", "spa"),
    ];
    let second = token_form(&gw, &rotate, None).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let next_access = s(&second.json(), "access_token");
    let next_refresh = s(&second.json(), "refresh_token");
    assert_oauth_error(&token_form(&gw, &rotate, None).await, 400, "invalid_grant");
    assert_oauth_error(
        &spa_exchange(&gw, &code, Some(&c.verifier)).await,
        400,
        "invalid_grant",
    );
    assert_eq!(orders_status(&gw, &next_access).await.status, 401);
    // A confidential client: a wrong secret in the form, the right one over Basic.
    let wrong_secret = "not-the-web-s3cret-51d0";
    let grant = [("grant_type", "client_credentials")];
    let r = token_form(
        &gw,
        &[
            grant[0],
            ("client_id", "svc"),
            ("client_secret", wrong_secret),
        ],
        None,
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_client");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("svc:{SECRET}")
        )
    );
    let r = token_form(&gw, &grant, Some(&basic)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let service_access = s(&r.json(), "access_token");
    assert_eq!(orders_status(&gw, &service_access).await.status, 200);
    // A secret sent as the client id (id and secret swapped).
    let swapped = "swapped-in-s3cret-8d2a";
    let r = token_form(
        &gw,
        &[grant[0], ("client_id", swapped), ("client_secret", "svc")],
        None,
    )
    .await;
    assert_oauth_error(&r, 400, "invalid_client");
    // Stopped, so that what it logs as connections end is read too.
    gw.stop().await;

    let text = logs.text();
    for warning in ["refresh token replayed", "authorization code replayed"] {
        assert!(text.contains(warning), "`{warning}` not logged:\n{text}");
    }
    let signature = |token: &str| token.rsplit('.').next().unwrap().to_owned();
    logs.assert_none_of(&[
        ("the password", PASSWORD),
        (
            "the password, form-encoded",
            &encode(&[("p", PASSWORD)])[2..],
        ),
        ("a wrong password", wrong_password),
        ("the client secret", SECRET),
        ("a wrong client secret", wrong_secret),
        ("a secret sent as the client id", swapped),
        ("the Basic credentials", basic.trim_start_matches("Basic ")),
        ("the code", &code),
        ("the PKCE verifier", &c.verifier),
        ("the session cookie", cookie_value(&session)),
        ("the CSRF cookie", cookie_value(&csrf)),
        ("an access token", &access),
        ("an access token's signature", &signature(&access)),
        (
            "a rotated access token's signature",
            &signature(&next_access),
        ),
        ("a service token's signature", &signature(&service_access)),
        ("a refresh token", &refresh),
        ("a rotated refresh token", &next_refresh),
    ]);
}

#[path = "authorize/hostile_flows.rs"]
mod hostile_flows;
#[path = "authorize/hostile_requests.rs"]
mod hostile_requests;
#[path = "authorize/oauth4webapi.rs"]
mod oauth4webapi;

/// A code approved through the pages is good for 60 s and the store holds
/// only its digest: with the redis store, its record is under
/// `scopegate:ac:<hex SHA-256 of the code>`, says it expires 60 s after the
/// approval (the key itself lives the replay grace longer, so a late replay
/// is still told from an unknown code), and no Redis key or value holds the
/// code itself.
#[tokio::test]
async fn an_approved_code_lives_60_s_and_is_stored_as_its_digest() {
    use scopegate::issuer::store::CODE_REPLAY_GRACE_SECS;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (_upstream, gw) = start_with(&format!("  store: {{ redis: \"{}\" }}\n", redis.url())).await;
    let c = pkce();
    let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
    let (page, session) = consent(&gw, &p, "alice").await;
    let t0 = now();
    let approved = decide(&gw, &page, &session, "approve").await;
    let t1 = now();
    let code = redirect(&approved).1.get("code").expect("no code").clone();

    let client = ::redis::Client::open(redis.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, code.as_bytes());
    let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("scopegate:ac:{hex}");
    assert!(keys.contains(&key), "no {key} in {keys:?}");
    let record: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let record: Value = serde_json::from_str(&record).unwrap();
    let expires_at = record["expires_at"].as_u64().unwrap();
    assert!(
        (t0 + 60..=t1 + 60).contains(&expires_at),
        "approved within [{t0}, {t1}], the code expires at {expires_at}"
    );
    let expiretime: u64 = ::redis::cmd("EXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(expiretime, expires_at + CODE_REPLAY_GRACE_SECS);
    for key in &keys {
        assert!(!key.contains(&code), "{key}");
        let value: Option<String> = ::redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value = value.unwrap_or_default();
        assert!(!value.contains(&code), "{key}: {value}");
    }

    // The record so addressed is the live code.
    let r = spa_exchange(&gw, &code, Some(&c.verifier)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A code approved under one config and redeemed under another (a reload,
/// or a replica not yet rolled; here two replicas sharing a redis store)
/// gets the grant as the redeeming config stands: a user removed since
/// gets no token, and a scope since taken from the client is left out, as
/// a refresh would have them.
#[tokio::test]
async fn a_code_is_redeemed_under_the_config_that_stands_then() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let extra = format!("  store: {{ redis: \"{}\" }}\n", redis.url());
    let (upstream, before) = start_with(&extra).await;
    // The config after: alice removed, and reports:read taken from `spa`.
    let after_yaml: String = config(upstream.addr, &extra)
        .lines()
        .scan(false, |skip_next, line| {
            let skip = *skip_next || line == "    - username: alice";
            *skip_next = line == "    - username: alice";
            Some((!skip).then(|| format!("{line}\n")))
        })
        .flatten()
        .collect::<String>()
        .replace(
            "scopes: [orders:read, reports:read]",
            "scopes: [orders:read]",
        );
    assert!(!after_yaml.contains("alice"), "{after_yaml}");
    let after = Gateway::start(&after_yaml).await;
    for (user, want) in [("alice", None), ("bob", Some("orders:read"))] {
        let c = pkce();
        let p = params(
            "spa",
            APP_CB,
            "orders:read reports:read",
            Some(&c.challenge),
        );
        let (page, session) = consent(&before, &p, user).await;
        let r = decide(&before, &page, &session, "approve").await;
        let code = redirect(&r).1.get("code").expect("no code").clone();
        let r = spa_exchange(&after, &code, Some(&c.verifier)).await;
        match want {
            None => {
                assert_oauth_error(&r, 400, "invalid_grant");
                assert_eq!(
                    r.json()["error_description"],
                    "the user of this grant no longer exists"
                );
            }
            Some(scope) => {
                assert_eq!(r.status, 200, "{}", r.text());
                assert_eq!(r.json()["scope"], scope, "{}", r.text());
                let claims = jwt_part(&s(&r.json(), "access_token"), 1);
                assert_eq!(claims["scope"], scope);
            }
        }
    }
}
