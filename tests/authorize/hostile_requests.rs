//! Generated authorization requests, against a reference of RFC 6749 4.1
//! (with RFC 7636 PKCE, RFC 8252 loopback redirects and RFC 9207 `iss`) as
//! the built-in server applies it.
//!
//! Requests mix clients (public, confidential, unknown, one without the
//! authorization code grant, none), redirect URIs (registered, loopback on
//! another port, and every near miss: another host, path, port or scheme, a
//! trailing slash, a query, a fragment, user information, `localhost`,
//! scheme-relative, `javascript:`), response types, scopes, states (with
//! characters that need encoding), PKCE pairs right and wrong, unknown and
//! repeated parameters. The reference says:
//! - a repeated `client_id` or `redirect_uri`, or a client or redirect URI
//!   that does not check out, gets an error page and never a redirect (RFC
//!   6749 4.1.2.1);
//! - any other repeated parameter redirects `invalid_request`, and any
//!   other fault an error code that names it, to the request's own
//!   redirect URI, with the `state` exactly as sent (none when it was sent
//!   twice), and `iss`;
//! - a request with nothing wrong gets the sign-in page.

use super::*;

use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Challenge {
    S256,
    Plain,
    LowerCaseMethod,
    Short,
    NotBase64url,
    MethodOnly,
    WithoutMethod,
    None,
}

#[derive(Debug, Clone)]
struct AuthorizeRequest {
    client: Option<&'static str>,
    redirect_uri: Option<&'static str>,
    response_type: Option<&'static str>,
    scope: Option<Vec<&'static str>>,
    state: Option<String>,
    challenge: Challenge,
    extras: Vec<(&'static str, &'static str)>,
    /// Repeat the n-th parameter (modulo their count).
    repeat: Option<usize>,
}

/// Where the server may send each client's browser back: registered URIs,
/// and a loopback one on another port.
pub(super) fn registered(client: &str) -> &'static [&'static str] {
    match client {
        "spa" => &[
            APP_CB,
            APP_CB2,
            LOOPBACK_CB,
            "http://127.0.0.1:54321/callback",
        ],
        "spa2" | "wide" => &[APP_CB],
        "web" => &[WEB_CB],
        _ => &[],
    }
}

/// The URIs the requests present.
pub(super) const REDIRECTS: [&str; 16] = [
    APP_CB,
    APP_CB2,
    LOOPBACK_CB,
    "http://127.0.0.1:54321/callback",
    WEB_CB,
    "https://evil.test/cb",
    "https://app.test/cb/",
    "https://app.test/cb#x",
    "https://app.test/cb?next=/x",
    "https://app.test:443/cb",
    "http://app.test/cb",
    "http://user@127.0.0.1:5/callback",
    "http://localhost:5000/callback",
    "//evil.test/cb",
    "javascript:alert(1)",
    "",
];

fn request() -> impl Strategy<Value = AuthorizeRequest> {
    let client = proptest::option::weighted(
        0.95,
        proptest::sample::select(vec!["spa", "spa", "spa2", "web", "wide", "svc", "nobody"]),
    );
    let redirect_uri = proptest::option::weighted(
        0.85,
        prop_oneof![
            3 => proptest::sample::select(&REDIRECTS[..4]),
            2 => proptest::sample::select(&REDIRECTS[4..]),
        ],
    );
    let response_type = prop_oneof![
        12 => Just(Some("code")),
        1 => Just(Some("token")),
        1 => Just(Some("code id_token")),
        1 => Just(Some("CODE")),
        1 => Just(None),
    ];
    let scope = proptest::option::weighted(
        0.8,
        proptest::collection::vec(
            proptest::sample::select(vec!["orders:read", "reports:read", "admin", "openid", ""]),
            0..3,
        ),
    );
    let state = proptest::option::weighted(
        0.8,
        prop_oneof![
            "[ -~]{0,16}",
            Just(NASTY_STATE.to_owned()),
            Just("é✓\u{1F600}".to_owned())
        ],
    );
    let challenge = prop_oneof![
        8 => Just(Challenge::S256),
        1 => Just(Challenge::Plain),
        1 => Just(Challenge::LowerCaseMethod),
        1 => Just(Challenge::Short),
        1 => Just(Challenge::NotBase64url),
        1 => Just(Challenge::MethodOnly),
        1 => Just(Challenge::WithoutMethod),
        2 => Just(Challenge::None),
    ];
    let extras = proptest::collection::vec(
        proptest::sample::select(vec![
            ("prompt", "login"),
            ("nonce", "n-0S6"),
            ("foo", "bar"),
            ("", ""),
            ("%zz", "1"),
        ]),
        0..2,
    );
    (
        (client, redirect_uri, response_type, scope, state),
        (
            challenge,
            extras,
            proptest::option::weighted(0.08, 0..16usize),
        ),
    )
        .prop_map(
            |((client, redirect_uri, response_type, scope, state), (challenge, extras, repeat))| {
                AuthorizeRequest {
                    client,
                    redirect_uri,
                    response_type,
                    scope,
                    state,
                    challenge,
                    extras,
                    repeat,
                }
            },
        )
}

fn params_of(req: &AuthorizeRequest) -> Params {
    let mut p: Params = Vec::new();
    let mut add = |k: &str, v: &str| p.push((k.to_owned(), v.to_owned()));
    if let Some(c) = req.client {
        add("client_id", c);
    }
    if let Some(r) = req.redirect_uri {
        add("redirect_uri", r);
    }
    if let Some(t) = req.response_type {
        add("response_type", t);
    }
    if let Some(scope) = &req.scope {
        add("scope", &scope.join(" "));
    }
    if let Some(state) = &req.state {
        add("state", state);
    }
    let good = pkce().challenge;
    let (challenge, method) = match req.challenge {
        Challenge::S256 => (Some(good), Some("S256")),
        Challenge::Plain => (Some(good), Some("plain")),
        Challenge::LowerCaseMethod => (Some(good), Some("s256")),
        Challenge::Short => (Some(good[..42].to_owned()), Some("S256")),
        Challenge::NotBase64url => (Some(format!("{}+", &good[..42])), Some("S256")),
        Challenge::MethodOnly => (None, Some("S256")),
        Challenge::WithoutMethod => (Some(good), None),
        Challenge::None => (None, None),
    };
    if let Some(c) = challenge {
        add("code_challenge", &c);
    }
    if let Some(m) = method {
        add("code_challenge_method", m);
    }
    for (k, v) in &req.extras {
        add(k, v);
    }
    if let Some(n) = req.repeat.filter(|_| !p.is_empty()) {
        let again = p[n % p.len()].clone();
        p.push(again);
    }
    p
}

/// What a request must get.
#[derive(Debug)]
enum Expected {
    /// An error page (no redirect).
    Page,
    /// A redirect to `to` with one of `codes`, and `state`.
    Redirect {
        to: &'static str,
        codes: Vec<&'static str>,
        state: Option<String>,
    },
    SignIn,
}

/// The scopes each client may ask for (see `config`).
pub(super) fn scopes(client: &str) -> &'static [&'static str] {
    match client {
        "spa" => &["orders:read", "reports:read"],
        "wide" => &["orders:read", "admin"],
        _ => &["orders:read"],
    }
}

/// The names sent more than once, each once; a parameter without a value
/// counts as not sent (RFC 6749 3.1).
pub(super) fn repeated_names(sent: &Params) -> Vec<&str> {
    let mut names: Vec<&str> = sent
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k.as_str())
        .collect();
    names.sort_unstable();
    let mut repeated: Vec<&str> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    repeated.dedup();
    repeated
}

fn expected(req: &AuthorizeRequest, sent: &Params) -> Expected {
    // Parameters are decoded as the server does: `%zz` stays itself.
    let repeated = repeated_names(sent);
    if repeated.contains(&"client_id") || repeated.contains(&"redirect_uri") {
        return Expected::Page;
    }
    let Some(client) = req
        .client
        .filter(|c| ["spa", "spa2", "web", "wide"].contains(c))
    else {
        return Expected::Page;
    };
    let allowed = registered(client);
    let to = match req.redirect_uri.filter(|uri| !uri.is_empty()) {
        Some(uri) if allowed.contains(&uri) => uri,
        Some(_) => return Expected::Page,
        None if client == "spa" => return Expected::Page,
        None => allowed[0],
    };
    let state = req
        .state
        .clone()
        .filter(|s| !s.is_empty() && !repeated.contains(&"state"));
    if !repeated.is_empty() {
        return Expected::Redirect {
            to,
            codes: vec!["invalid_request"],
            state,
        };
    }
    let mut codes = Vec::new();
    match req.response_type {
        Some("code") => {}
        Some(_) => codes.push("unsupported_response_type"),
        None => codes.push("invalid_request"),
    }
    let scope_ok = req.scope.as_ref().is_none_or(|requested| {
        requested
            .iter()
            .filter(|s| !s.is_empty())
            .all(|s| scopes(client).contains(s))
    });
    if !scope_ok {
        codes.push("invalid_scope");
    }
    let public = client != "web";
    match req.challenge {
        Challenge::S256 => {}
        Challenge::None if !public => {}
        _ => codes.push("invalid_request"),
    }
    if codes.is_empty() {
        Expected::SignIn
    } else {
        Expected::Redirect { to, codes, state }
    }
}

async fn check(gw: &Gateway, req: AuthorizeRequest) -> Result<(), String> {
    let sent = params_of(&req);
    let expected = expected(&req, &sent);
    let r = get_authorize(gw, &sent, None).await;
    let location = r.header("location");
    let what = || format!("{sent:?} -> {} {location:?}", r.status);
    match expected {
        Expected::Page | Expected::SignIn => {
            let status = if matches!(expected, Expected::Page) {
                400
            } else {
                200
            };
            let html = r.header("content-type").as_deref() == Some("text/html; charset=utf-8");
            if r.status != status || location.is_some() || !html {
                return Err(format!("expected a {status} page: {}", what()));
            }
            if status == 200 && !r.text().contains("<h1>Sign in</h1>") {
                return Err(format!("expected the sign-in page: {}", what()));
            }
        }
        Expected::Redirect { to, codes, state } => {
            let Some(location) = location.as_deref().filter(|_| r.status == 303) else {
                return Err(format!("expected a redirect to {to}: {}", what()));
            };
            // No registered URI here has a query of its own.
            let (base, query) = location.split_once('?').unwrap_or((location, ""));
            if base != to {
                return Err(format!("redirected elsewhere than {to}: {}", what()));
            }
            let got: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let get = |name: &str| got.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let fine = get("error").is_some_and(|e| codes.contains(&e))
                && get("error_description").is_some()
                && get("iss") == Some(ISS)
                && get("state") == state.as_deref()
                && get("code").is_none();
            if !fine {
                return Err(format!(
                    "expected one of {codes:?}, the state and iss: {}",
                    what()
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn hostile_authorization_requests_get_what_rfc_6749_says() {
    let runtime = runtime();
    let (_upstream, gw) = runtime.block_on(start());
    run_campaign(&runtime, &gw, 384, request(), async |gw, req| {
        check(gw, req).await
    });
}
