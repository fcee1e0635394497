//! Generated token requests, hostile and ordinary, against a reference of
//! RFC 6749 as the built-in server applies it.
//!
//! Each request mixes a method, a content type, client authentication
//! (form body, Basic, both, two Basic headers, malformed, none; right and
//! wrong secrets), a grant (the four supported, unknown ones, none), a
//! scope, parameters the server does not know (which it must ignore, RFC
//! 6749 3.2), repeated ones (which it must refuse, 3.1), query parameters
//! and undecodable bytes. The
//! reference says whether the request must succeed, and if not, which error
//! codes name something that is wrong with it:
//! - a request with nothing wrong gets 200, with the scope the reference
//!   grants, a refresh token exactly for clients allowed one, and an access
//!   token the gateway accepts on a route of a granted scope and refuses on
//!   others;
//! - any other request gets an RFC 6749 5.2 error whose code names one of
//!   its faults, with the status of that code, `Cache-Control: no-store`, and
//!   a Basic challenge exactly on a 401;
//! - a 405 names the method allowed.
//!
//! Wrong secrets go only to client `other` and unregistered ids, and wrong
//! passwords only to the unknown user `mallory`, so the failure limiter
//! (429) never locks out a client or user whose requests must succeed.

use super::*;

use proptest::prelude::*;

/// A client's authentication in a generated request.
#[derive(Debug, Clone)]
enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    Form(Who),
    /// HTTP Basic (RFC 6749 2.3.1: both parts form-encoded first).
    Basic(Who),
    /// Basic and the same `client_id` in the body (RFC 6749 3.2.1: the
    /// client names itself; one method still).
    Both,
    /// Basic and another client's `client_id` and secret in the body.
    TwoMethods,
    /// An `Authorization` value that is no usable Basic credential.
    Malformed(Malformed),
    /// Two `Authorization` headers with Basic credentials (RFC 6749 5.2:
    /// multiple credentials), whoever each names.
    TwoHeaders(Who, Who),
    None,
}

#[derive(Debug, Clone, Copy)]
enum Who {
    /// A registered client with its right secret.
    Registered(&'static str),
    /// `other` with a wrong secret.
    WrongSecret,
    /// `other` with no secret (the form only).
    NoSecret,
    /// An unregistered id.
    Unregistered(u32),
}

#[derive(Debug, Clone, Copy)]
enum Malformed {
    NotBase64,
    NoColon,
    NotUtf8AfterDecoding,
    OtherScheme,
    SchemeOnly,
}

impl Malformed {
    fn header(self) -> String {
        match self {
            Self::NotBase64 => "Basic !!!".to_owned(),
            Self::NoColon => format!("Basic {}", STANDARD.encode("other")),
            Self::NotUtf8AfterDecoding => format!("Basic {}", STANDARD.encode("other:%FF")),
            Self::OtherScheme => "Bearer abc".to_owned(),
            Self::SchemeOnly => "Basic".to_owned(),
        }
    }

    /// What the server must answer: any of these is a client
    /// authentication it cannot use (RFC 6749 5.2; 401 with the Basic
    /// challenge, since it came in the header).
    fn code(self) -> &'static str {
        "invalid_client"
    }
}

#[derive(Debug, Clone)]
enum GrantRequest {
    ClientCredentials,
    Password {
        username: Option<&'static str>,
        password: Option<bool>,
    },
    Refresh(Option<String>),
    Code(Option<String>),
    Unsupported(&'static str),
    Missing,
}

impl GrantRequest {
    fn grant_type(&self) -> Option<&'static str> {
        Some(match self {
            Self::ClientCredentials => "client_credentials",
            Self::Password { .. } => "password",
            Self::Refresh(_) => "refresh_token",
            Self::Code(_) => "authorization_code",
            Self::Unsupported(other) => other,
            Self::Missing => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Query {
    None,
    /// `grant_type` in the query too, the same as the body's.
    SameGrant,
    /// `grant_type` in the query, another than the body's.
    OtherGrant,
    /// `grant_type` in the query only.
    OnlyGrant,
    /// `client_id` in the query (RFC 6749 2.3.1: never).
    ClientId,
    /// A `scope` in the query, which would otherwise go unseen.
    Scope,
    /// A parameter the server does not know (a cache-buster): ignored.
    Unknown,
}

#[derive(Debug, Clone)]
struct TokenRequest {
    method: &'static str,
    content_type: Option<&'static str>,
    auth: ClientAuth,
    grant: GrantRequest,
    scope: Option<Vec<&'static str>>,
    /// Spaces in `scope` as `%20` instead of `+`.
    percent_spaces: bool,
    /// Raw `name=value` pieces the server does not know.
    extras: Vec<&'static str>,
    /// Repeat the body's first parameter.
    repeat_first: bool,
    query: Query,
    reversed: bool,
}

/// The registered clients whose requests may succeed.
const CLIENTS: [&str; 4] = ["svc", "plain", "pw", "web"];

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        6 => proptest::sample::select(&CLIENTS[..]).prop_map(Who::Registered),
        1 => Just(Who::WrongSecret),
        1 => Just(Who::NoSecret),
        1 => any::<u32>().prop_map(Who::Unregistered),
    ]
}

fn client_auth() -> impl Strategy<Value = ClientAuth> {
    prop_oneof![
        6 => who().prop_map(ClientAuth::Form),
        4 => who().prop_map(ClientAuth::Basic),
        1 => Just(ClientAuth::Both),
        1 => Just(ClientAuth::TwoMethods),
        2 => proptest::sample::select(vec![
            Malformed::NotBase64,
            Malformed::NoColon,
            Malformed::NotUtf8AfterDecoding,
            Malformed::OtherScheme,
            Malformed::SchemeOnly,
        ])
        .prop_map(ClientAuth::Malformed),
        1 => (who(), who()).prop_map(|(first, second)| ClientAuth::TwoHeaders(first, second)),
        1 => Just(ClientAuth::None),
    ]
}

fn grant() -> impl Strategy<Value = GrantRequest> {
    let opaque = proptest::option::weighted(0.8, "[A-Za-z0-9_-]{1,40}");
    prop_oneof![
        8 => Just(GrantRequest::ClientCredentials),
        // A right password costs an argon2 check: rare.
        1 => Just(GrantRequest::Password { username: Some("alice"), password: Some(true) }),
        1 => Just(GrantRequest::Password { username: Some("bob"), password: Some(true) }),
        2 => (
            proptest::option::weighted(0.8, Just("mallory")),
            proptest::option::weighted(0.8, any::<bool>()),
        )
            .prop_map(|(username, password)| GrantRequest::Password { username, password }),
        1 => Just(GrantRequest::Password { username: Some("alice"), password: None }),
        2 => opaque.clone().prop_map(GrantRequest::Refresh),
        2 => opaque.prop_map(GrantRequest::Code),
        2 => proptest::sample::select(vec![
            "implicit",
            "CLIENT_CREDENTIALS",
            "client_credentials ",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "",
        ])
        .prop_map(GrantRequest::Unsupported),
        1 => Just(GrantRequest::Missing),
    ]
}

fn token_request() -> impl Strategy<Value = TokenRequest> {
    let method = prop_oneof![20 => Just("POST"), 1 => Just("GET"), 1 => Just("PUT")];
    let content_type = prop_oneof![
        12 => Just(Some("application/x-www-form-urlencoded")),
        2 => Just(Some("application/x-www-form-urlencoded; charset=UTF-8")),
        2 => Just(Some("Application/X-WWW-Form-URLEncoded")),
        1 => Just(Some("application/json")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ];
    let scope = proptest::option::weighted(
        0.6,
        proptest::collection::vec(
            proptest::sample::select(vec![
                "orders:read",
                "reports:read",
                "admin",
                "openid",
                "bad\"scope",
                "",
            ]),
            0..4,
        ),
    );
    let extras = proptest::collection::vec(
        proptest::sample::select(vec![
            "resource=https%3A%2F%2Fapi.test%2F",
            "audience=elsewhere",
            "state=xyz",
            "foo=bar",
            "=",
            "%zz=1",
            "k%FFey=v",
            "x=%FF",
            "",
        ]),
        0..3,
    );
    let query = prop_oneof![
        12 => Just(Query::None),
        1 => Just(Query::SameGrant),
        1 => Just(Query::OtherGrant),
        1 => Just(Query::OnlyGrant),
        1 => Just(Query::ClientId),
        1 => Just(Query::Scope),
        1 => Just(Query::Unknown),
    ];
    (
        (method, content_type, client_auth(), grant(), scope),
        (
            any::<bool>(),
            extras,
            proptest::bool::weighted(0.1),
            query,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (method, content_type, auth, grant, scope),
                (percent_spaces, extras, repeat_first, query, reversed),
            )| TokenRequest {
                method,
                content_type,
                auth,
                grant,
                scope,
                percent_spaces,
                extras,
                repeat_first,
                query,
                reversed,
            },
        )
}

/// The secret a generated request presents for `who` (`None`: no secret).
fn secret_of(who: Who) -> Option<&'static str> {
    match who {
        Who::Registered(_) | Who::Unregistered(_) => Some(SECRET),
        Who::WrongSecret => Some("not-the-secret"),
        Who::NoSecret => None,
    }
}

fn id_of(who: Who) -> String {
    match who {
        Who::Registered(id) => id.to_owned(),
        Who::WrongSecret | Who::NoSecret => "other".to_owned(),
        Who::Unregistered(n) => format!("nobody-{n}"),
    }
}

/// The raw request: path and query, headers, body.
fn render(req: &TokenRequest) -> (String, Vec<(&'static str, String)>, String) {
    let mut body: Vec<String> = Vec::new();
    let mut query: Vec<String> = Vec::new();
    let mut headers: Vec<(&'static str, String)> = Vec::new();
    if let Some(content_type) = req.content_type {
        headers.push(("content-type", content_type.to_owned()));
    }
    if let Some(grant_type) = req.grant.grant_type() {
        let pair = format!("grant_type={}", enc(grant_type));
        match req.query {
            Query::OnlyGrant => query.push(pair),
            Query::SameGrant => {
                query.push(pair.clone());
                body.push(pair);
            }
            Query::OtherGrant => {
                query.push("grant_type=refresh_token_x".to_owned());
                body.push(pair);
            }
            _ => body.push(pair),
        }
    } else if req.query == Query::OnlyGrant {
        query.push("grant_type=client_credentials".to_owned());
    }
    if req.query == Query::ClientId {
        query.push("client_id=svc".to_owned());
    }
    if req.query == Query::Scope {
        query.push("scope=orders%3Aread".to_owned());
    }
    if req.query == Query::Unknown {
        query.push("cb=17".to_owned());
    }
    let basic = |who: Who| {
        let (id, secret) = (id_of(who), secret_of(who).unwrap_or(""));
        let pair = format!("{}:{}", enc(&id), enc(secret));
        format!("Basic {}", STANDARD.encode(pair))
    };
    match &req.auth {
        ClientAuth::Form(who) => {
            body.push(format!("client_id={}", enc(&id_of(*who))));
            if let Some(secret) = secret_of(*who) {
                body.push(format!("client_secret={}", enc(secret)));
            }
        }
        ClientAuth::Basic(who) => headers.push(("authorization", basic(*who))),
        ClientAuth::Both => {
            headers.push(("authorization", basic(Who::Registered("svc"))));
            body.push("client_id=svc".to_owned());
        }
        ClientAuth::TwoMethods => {
            headers.push(("authorization", basic(Who::Registered("svc"))));
            body.push(format!("client_id=other&client_secret={}", enc("wrong")));
        }
        ClientAuth::Malformed(m) => headers.push(("authorization", m.header())),
        ClientAuth::TwoHeaders(first, second) => {
            headers.push(("authorization", basic(*first)));
            headers.push(("authorization", basic(*second)));
        }
        ClientAuth::None => {}
    }
    match &req.grant {
        GrantRequest::Password { username, password } => {
            if let Some(username) = username {
                body.push(format!("username={username}"));
            }
            match password {
                Some(true) => body.push(format!("password={}", enc(PASSWORD))),
                Some(false) => body.push("password=guess".to_owned()),
                None => {}
            }
        }
        GrantRequest::Refresh(Some(token)) => body.push(format!("refresh_token={token}")),
        GrantRequest::Code(Some(code)) => body.push(format!("code={code}")),
        _ => {}
    }
    if let Some(scope) = &req.scope {
        let mut value = enc(&scope.join(" "));
        if req.percent_spaces {
            value = value.replace('+', "%20");
        }
        body.push(format!("scope={value}"));
    }
    body.extend(req.extras.iter().map(|e| (*e).to_owned()));
    if req.reversed {
        body.reverse();
    }
    if req.repeat_first {
        if let Some(first) = body.first().cloned() {
            body.push(first);
        }
    }
    let target = if query.is_empty() {
        TOKEN.to_owned()
    } else {
        format!("{TOKEN}?{}", query.join("&"))
    };
    (target, headers, body.join("&"))
}

/// What a request must get: success with a scope and whether a refresh
/// token comes with it, or one of a set of error codes (with whether a 429
/// of the failure limiter may stand for it).
#[derive(Debug)]
enum Expected {
    Granted {
        scope: String,
        refresh: bool,
    },
    MethodNotAllowed,
    Refused {
        codes: Vec<&'static str>,
        limited: bool,
    },
}

/// The grants and scopes of the registered clients (see `config`).
fn client(id: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match id {
        "svc" => (
            &["client_credentials", "refresh_token"],
            &["orders:read", "reports:read"],
        ),
        "plain" => (&["client_credentials"], &["orders:read"]),
        "other" => (&["client_credentials", "refresh_token"], &["orders:read"]),
        "pw" => (&["password", "refresh_token"], &["orders:read", "admin"]),
        "web" => (&["authorization_code", "refresh_token"], &["orders:read"]),
        _ => return None,
    })
}

/// RFC 6749 3.3 as the server grants it: the requested scopes (each allowed
/// to the client and the user, duplicates once, in order), or all allowed
/// when none is asked for (a `scope` of blanks asks for none).
fn granted(requested: Option<&str>, allowed: &[&str], user: Option<&[&str]>) -> Option<String> {
    let permitted = |s: &str| allowed.contains(&s) && user.is_none_or(|u| u.contains(&s));
    let Some(requested) = requested.filter(|r| r.split(' ').any(|t| !t.is_empty())) else {
        return Some(
            allowed
                .iter()
                .filter(|s| permitted(s))
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
        );
    };
    let mut out: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !permitted(scope) {
            return None;
        }
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    Some(out.join(" "))
}

/// Decoded parameters, and whether a name repeats. One without a value
/// counts as not sent (RFC 6749 3.1).
fn params(raw: &str) -> (Vec<(String, String)>, bool) {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    let repeated = names.windows(2).any(|w| w[0] == w[1]);
    (pairs, repeated)
}

fn expected(req: &TokenRequest, target: &str, body: &str) -> Expected {
    if req.method != "POST" {
        return Expected::MethodNotAllowed;
    }
    let mut codes: Vec<&'static str> = Vec::new();
    let mut limited = false;
    let is_form = req.content_type.is_some_and(|t| {
        t.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    let (form, body_repeats) = if body.is_empty() || is_form {
        params(body)
    } else {
        codes.push("invalid_request");
        (Vec::new(), false)
    };
    let (query, query_repeats) = params(target.split_once('?').map_or("", |(_, q)| q));
    if body_repeats || query_repeats {
        codes.push("invalid_request");
    }
    let get = |pairs: &[(String, String)], name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // Of the token request parameters, only grant_type may ride in the
    // query (and credentials are refused); others are ignored there.
    let misplaced = [
        "scope",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "username",
        "password",
        "resource",
        "audience",
        "client_assertion",
        "client_assertion_type",
        "client_id",
        "client_secret",
    ];
    if query.iter().any(|(k, _)| misplaced.contains(&k.as_str())) {
        codes.push("invalid_request");
    }
    let grant_type = match (get(&form, "grant_type"), get(&query, "grant_type")) {
        // Sent once (RFC 6749 3.2), even with the same value.
        (Some(_), Some(_)) => {
            codes.push("invalid_request");
            None
        }
        (Some(g), None) | (None, Some(g)) => Some(g),
        (None, None) => {
            codes.push("invalid_request");
            None
        }
    };
    // Who authenticated, if anyone.
    let authenticated: Option<&str> = match &req.auth {
        ClientAuth::Form(who) | ClientAuth::Basic(who) => match who {
            Who::Registered(id) => Some(id),
            _ => {
                codes.push("invalid_client");
                limited = true;
                None
            }
        },
        ClientAuth::Both => Some("svc"),
        ClientAuth::TwoMethods | ClientAuth::TwoHeaders(..) => {
            codes.push("invalid_request");
            None
        }
        ClientAuth::Malformed(m) => {
            codes.push(m.code());
            None
        }
        ClientAuth::None => {
            codes.push("invalid_client");
            None
        }
    };
    let supported = [
        "client_credentials",
        "refresh_token",
        "password",
        "authorization_code",
    ];
    let grant_type = grant_type.filter(|g| {
        let known = supported.contains(&g.as_str());
        if !known {
            codes.push("unsupported_grant_type");
        }
        known
    });
    let (Some(id), Some(grant_type)) = (authenticated, grant_type) else {
        return Expected::Refused { codes, limited };
    };
    let Some((grants, scopes)) = client(id) else {
        unreachable!("only registered clients authenticate");
    };
    if !grants.contains(&grant_type.as_str()) {
        codes.push("unauthorized_client");
        return Expected::Refused { codes, limited };
    }
    let scope = get(&form, "scope");
    let user_scopes: Option<&[&str]> = match grant_type.as_str() {
        "client_credentials" => None,
        "password" => match (get(&form, "username"), get(&form, "password")) {
            (Some(user), Some(password)) if password == PASSWORD && user == "alice" => {
                Some(&["orders:read"])
            }
            (Some(user), Some(password)) if password == PASSWORD && user == "bob" => None,
            (Some(_), Some(_)) => {
                codes.push("invalid_grant");
                limited = true;
                return Expected::Refused { codes, limited };
            }
            _ => {
                codes.push("invalid_request");
                return Expected::Refused { codes, limited };
            }
        },
        // Generated refresh tokens and codes were never issued.
        "refresh_token" => {
            codes.push(if get(&form, "refresh_token").is_some() {
                "invalid_grant"
            } else {
                "invalid_request"
            });
            return Expected::Refused { codes, limited };
        }
        _ => {
            codes.push(if get(&form, "code").is_some() {
                "invalid_grant"
            } else {
                "invalid_request"
            });
            return Expected::Refused { codes, limited };
        }
    };
    match granted(scope.as_deref(), scopes, user_scopes) {
        Some(scope) if codes.is_empty() => Expected::Granted {
            scope,
            refresh: grants.contains(&"refresh_token"),
        },
        Some(_) => Expected::Refused { codes, limited },
        None => {
            codes.push("invalid_scope");
            Expected::Refused { codes, limited }
        }
    }
}

/// The status RFC 6749 5.2 gives an error code: 400, but `invalid_client`
/// is a 401 (with a challenge, RFC 9110 11.6.1) to a client that tried an
/// `Authorization` header or sent no credentials at all.
fn status_of(code: &str, auth: &ClientAuth) -> u16 {
    match (code, auth) {
        ("invalid_client", ClientAuth::Form(_)) => 400,
        ("invalid_client", _) => 401,
        _ => 400,
    }
}

async fn check(lab: &(Upstream, Gateway), req: TokenRequest) -> Result<(), String> {
    let gw = &lab.1;
    let (target, headers, body) = render(&req);
    let expected = expected(&req, &target, &body);
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = send(
        req.method,
        &gw.url(&target),
        &header_refs,
        Bytes::from(body.clone()),
    )
    .await?;
    let what = || {
        format!(
            "{} {target} {header_refs:?} {body:?} -> {} {}",
            req.method,
            r.status,
            r.text()
        )
    };
    let json: Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("not JSON ({e}): {}", what()))?;
    let error = json["error"].as_str();
    if r.header("cache-control").as_deref() != Some("no-store") {
        return Err(format!("no Cache-Control: no-store: {}", what()));
    }
    match expected {
        Expected::MethodNotAllowed => {
            if r.status != 405 || r.header("allow").as_deref() != Some("POST") {
                return Err(format!("expected 405 with Allow: POST: {}", what()));
            }
        }
        Expected::Granted { scope, refresh } => {
            if r.status != 200 {
                return Err(format!("expected a token with scope {scope:?}: {}", what()));
            }
            let fields = (
                json["token_type"].as_str(),
                json["expires_in"].as_u64(),
                json["scope"].as_str(),
                json["refresh_token"].is_string(),
            );
            // No scope granted: no `scope` field ("" is no scope value).
            let want_scope = (!scope.is_empty()).then_some(scope.as_str());
            if fields != (Some("Bearer"), Some(3600), want_scope, refresh) {
                return Err(format!(
                    "expected scope {scope:?}, refresh {refresh}: {}",
                    what()
                ));
            }
            let token = json["access_token"].as_str().ok_or_else(what)?;
            let orders = get_with_token(&gw.url("/orders/7"), token).await.status;
            let wanted = if scope.split(' ').any(|s| s == "orders:read") {
                200
            } else {
                403
            };
            if orders != wanted {
                return Err(format!(
                    "the token got {orders} on /orders/7, not {wanted}: {}",
                    what()
                ));
            }
        }
        Expected::Refused { codes, limited } => {
            let Some(code) = error.filter(|e| codes.contains(e)) else {
                return Err(format!("expected one of {codes:?}: {}", what()));
            };
            let status_ok = r.status == status_of(code, &req.auth) || (limited && r.status == 429);
            if !status_ok {
                return Err(format!("wrong status for {code}: {}", what()));
            }
            // Every 401 carries RFC 6749 5.2's challenge, and only a 401: a
            // client over its failure limit after Basic gets a 401 too, a
            // user's failure limit (`invalid_grant`) challenges no client.
            let challenge = r.www_authenticate();
            if (r.status == 401) != challenge.starts_with("Basic ") {
                return Err(format!("a Basic challenge if and only if 401: {}", what()));
            }
            let basic = matches!(req.auth, ClientAuth::Basic(_) | ClientAuth::Both);
            if r.status == 429 && code == "invalid_client" && basic {
                return Err(format!("429, not 401, after Basic: {}", what()));
            }
            if !json["error_description"].is_string() {
                return Err(format!("no error_description: {}", what()));
            }
        }
    }
    Ok(())
}

#[test]
fn hostile_token_requests_get_what_rfc_6749_says() {
    let runtime = runtime();
    let lab = runtime.block_on(start(""));
    run_campaign(&runtime, &lab, 256, token_request(), async |lab, req| {
        check(lab, req).await
    });
    // Still serving.
    runtime.block_on(async {
        let token = client_credentials(&lab.1, "svc").await;
        assert_eq!(token["scope"], "orders:read reports:read");
    });
}
