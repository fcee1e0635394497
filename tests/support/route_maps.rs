//! Generated route maps and requests against them, with a reference of
//! how the gateway must answer each: shared by the route-map campaign
//! (`tests/auth/hostile_routes.rs`) and the reload campaign
//! (`tests/reload/hostile_reloads.rs`).
//!
//! A map has one to five routes under their own prefix (`/r0`, `/r1`, ...):
//! a pattern (a literal, a `{param}`, a `{*rest}`), a method list or none,
//! and either `auth: none` or a bearer route with `scopes` (all required),
//! `any_scopes` (one required) and `issuers` drawn at random; now and then a
//! twin of a route, on the same pattern with other methods; and now and then
//! `route_matching` for an upstream that routes case-insensitively and
//! ignores a trailing slash; and now and then `cors_preflight`, for the whole
//! map or a route. Two issuers (`a`, `b`) share the world's key.
//!
//! Some requests are CORS preflights: `OPTIONS` with `Origin` and the
//! method they ask about, mostly without a token.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;

use super::{claims, now, send, Gateway, World, AUDIENCE, ISSUER};

/// The issuers' `iss` values.
pub const ISSUERS: [(&str, &str); 2] = [("a", ISSUER), ("b", "https://idp-b.test")];
/// The scopes routes ask for and tokens carry.
pub const SCOPES: [&str; 4] = ["s1", "s2", "s3", "s4"];
pub const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// A pattern segment after the route's own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    Literal,
    Param,
    /// `{*rest}`, always last.
    Rest,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Its path starts `/r{prefix}`: its own, or its original's for a twin.
    pub prefix: usize,
    pub tail: Vec<Seg>,
    pub methods: Option<Vec<&'static str>>,
    pub public: bool,
    pub all: Vec<&'static str>,
    pub any: Vec<&'static str>,
    pub issuers: Option<Vec<&'static str>>,
    /// Its `forward: cors_preflight`, if it sets one.
    pub cors_preflight: Option<bool>,
}

#[derive(Debug, Clone, Copy)]
pub enum PathKind {
    /// Fits the pattern.
    Fits,
    /// One segment more.
    Longer,
    /// One segment fewer.
    Shorter,
}

#[derive(Debug, Clone)]
pub enum Token {
    Missing,
    Valid(&'static str, Vec<&'static str>),
    Expired,
}

#[derive(Debug, Clone)]
pub struct Req {
    /// A route prefix; one no route of the map has gets 404.
    pub prefix: usize,
    pub path: PathKind,
    /// Appended to the path: empty, a plain query, or one naming an
    /// access token (RFC 6750 2.3) in a spelling frameworks read.
    pub query: &'static str,
    pub spelling: Spelling,
    pub method: &'static str,
    pub token: Token,
    /// A CORS preflight (the method is `OPTIONS`) asking about this method.
    pub preflight: Option<&'static str>,
}

/// Queries that name an access token.
pub const TOKEN_QUERIES: [&str; 3] = [
    "?access_token=abc",
    "?x=1&Access_Token=abc",
    "?x=1;access%5Ftoken=abc",
];

/// A generated route map.
#[derive(Debug, Clone)]
pub struct Map {
    pub routes: Vec<RouteSpec>,
    /// `route_matching`: case-insensitive, and a trailing slash ignored
    /// (as Express routes); else RFC 3986's strict matching.
    pub lax: bool,
    /// The map's `forward: cors_preflight`.
    pub cors_preflight: bool,
}

/// How a request's path is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    AsRouted,
    UpperCase,
    TrailingSlash,
}

pub fn subset(of: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(of.to_vec(), 0..=max)
}

pub fn route() -> impl Strategy<Value = RouteSpec> {
    let tail = prop::sample::select(vec![
        vec![],
        vec![Seg::Param],
        vec![Seg::Literal],
        vec![Seg::Param, Seg::Literal],
        vec![Seg::Rest],
        vec![Seg::Literal, Seg::Rest],
    ]);
    let methods = prop::option::weighted(0.6, prop::sample::subsequence(METHODS.to_vec(), 1..=2));
    let issuers = prop::option::weighted(
        0.3,
        prop::sample::select(vec![vec!["a"], vec!["b"], vec!["a", "b"]]),
    );
    (
        tail,
        methods,
        prop::bool::weighted(0.2),
        subset(&SCOPES, 2),
        subset(&SCOPES, 2),
        issuers,
        prop::option::weighted(0.3, any::<bool>()),
    )
        .prop_map(
            |(tail, methods, public, all, any, issuers, cors_preflight)| {
                let mut route = RouteSpec {
                    prefix: 0,
                    tail,
                    methods,
                    public,
                    all,
                    any,
                    issuers,
                    cors_preflight,
                };
                if public {
                    route.make_public();
                }
                route
            },
        )
}

impl RouteSpec {
    fn make_public(&mut self) {
        self.public = true;
        (self.all, self.any, self.issuers) = (Vec::new(), Vec::new(), None);
    }
}

pub fn request(prefixes: usize) -> impl Strategy<Value = Req> {
    request_asking(prefixes, Vec::new())
}

/// [`request`], whose preflights ask mostly about the methods in `listed`
/// (those the map's routes name), so that they often meet a route.
pub fn request_asking(prefixes: usize, listed: Vec<&'static str>) -> impl Strategy<Value = Req> {
    let every = prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS",
    ]);
    let asked = if listed.is_empty() {
        every.boxed()
    } else {
        prop_oneof![1 => every, 2 => prop::sample::select(listed)].boxed()
    };
    let token = prop_oneof![
        1 => Just(Token::Missing),
        6 => (
            prop::sample::select(vec!["a", "b"]),
            subset(&SCOPES, 4),
        )
            .prop_map(|(issuer, scopes)| Token::Valid(issuer, scopes)),
        1 => Just(Token::Expired),
    ];
    (
        0..=prefixes,
        prop_oneof![
            6 => Just(PathKind::Fits),
            1 => Just(PathKind::Longer),
            1 => Just(PathKind::Shorter),
        ],
        prop_oneof![
            4 => Just(""),
            2 => Just("?q=1&r=%20x"),
            1 => prop::sample::select(TOKEN_QUERIES.to_vec()),
        ],
        prop_oneof![
            6 => Just(Spelling::AsRouted),
            1 => Just(Spelling::UpperCase),
            1 => Just(Spelling::TrailingSlash),
        ],
        prop::sample::select(vec!["GET", "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
        token,
        prop::option::weighted(0.25, (asked, prop::bool::weighted(0.2))),
    )
        .prop_map(
            |(prefix, path, query, spelling, method, token, preflight)| {
                let (method, token, preflight) = match preflight {
                    None => (method, token, None),
                    Some((asked, credentials)) => (
                        "OPTIONS",
                        if credentials { token } else { Token::Missing },
                        Some(asked),
                    ),
                };
                Req {
                    prefix,
                    path,
                    query,
                    spelling,
                    method,
                    token,
                    preflight,
                }
            },
        )
}

/// A map: routes under their own prefixes, perhaps a twin, perhaps lax.
pub fn map() -> impl Strategy<Value = Map> {
    (
        prop::collection::vec(route(), 1..=5),
        prop::option::weighted(
            0.4,
            any::<(prop::sample::Index, prop::sample::Index, bool)>(),
        ),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(mut routes, twin, lax, cors_preflight)| {
            for (i, r) in routes.iter_mut().enumerate() {
                r.prefix = i;
            }
            // A twin: the same pattern, with a method its original lacks,
            // and public where the original is not (or the other way); an
            // `OPTIONS` twin needs a token, so that a preflight the
            // original would let through must stop at it.
            if let Some((index, pick, options)) = twin {
                let original = index.get(&routes).clone();
                // OPTIONS too: a route of its own for preflights' method.
                let free: Vec<&'static str> = METHODS
                    .iter()
                    .chain(&["OPTIONS"])
                    .copied()
                    .filter(|m| original.methods.as_ref().is_some_and(|o| !o.contains(m)))
                    .collect();
                // Half the twins are `OPTIONS` ones (always free).
                let method = match (options, free.is_empty()) {
                    (_, true) => None,
                    (true, false) => Some("OPTIONS"),
                    (false, false) => Some(*pick.get(&free)),
                };
                if let Some(method) = method {
                    let mut twin = original;
                    twin.methods = Some(vec![method]);
                    if twin.public || method == "OPTIONS" {
                        twin.public = false;
                    } else {
                        twin.make_public();
                    }
                    routes.push(twin);
                }
            }
            Map {
                routes,
                lax,
                cors_preflight,
            }
        })
}

/// A map and `count` requests against it.
pub fn map_with_requests(
    count: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = (Map, Vec<Req>)> {
    map().prop_flat_map(move |map| {
        let prefixes = map.routes.iter().map(|r| r.prefix).max().unwrap_or(0) + 1;
        let mut listed: Vec<&'static str> = map
            .routes
            .iter()
            .flat_map(|r| r.methods.iter().flatten().copied())
            .collect();
        listed.sort_unstable();
        listed.dedup();
        (
            Just(map),
            prop::collection::vec(request_asking(prefixes, listed), count.clone()),
        )
    })
}

pub fn pattern(route: &RouteSpec) -> String {
    let mut out = format!("/r{}", route.prefix);
    for seg in &route.tail {
        out.push_str(match seg {
            Seg::Literal => "/x",
            Seg::Param => "/{id}",
            Seg::Rest => "/{*rest}",
        });
    }
    out
}

pub fn yaml(world: &World, map: &Map) -> String {
    let (routes, lax) = (&map.routes, map.lax);
    let mut out = "server:\n  listen: 127.0.0.1:0\n  shutdown_delay: 0s\n  shutdown_grace: 5s\nadmin:\n  listen: 127.0.0.1:0\n".to_owned();
    if lax {
        out.push_str("route_matching:\n  case_sensitive: false\n  trailing_slash: ignore\n");
    }
    out.push_str("issuers:\n");
    for (name, iss) in ISSUERS {
        out.push_str(&format!(
            "  - name: {name}\n    issuer: {iss}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n    algorithms: [ES256]\n    leeway: 0s\n",
            world.jwks.uri()
        ));
    }
    out.push_str(&format!(
        "upstreams:\n  app:\n    url: http://{}\n    connect_timeout: 1s\n    request_timeout: 2s\n",
        world.upstream.addr
    ));
    if map.cors_preflight {
        out.push_str("forward:\n  cors_preflight: true\n");
    }
    out.push_str("routes:\n");
    for r in routes {
        out.push_str(&format!(
            "  - path: \"{}\"\n    upstream: app\n",
            pattern(r)
        ));
        if let Some(m) = &r.methods {
            out.push_str(&format!("    methods: [{}]\n", m.join(", ")));
        }
        if r.public {
            out.push_str("    auth: none\n");
        }
        if !r.all.is_empty() {
            out.push_str(&format!("    scopes: [{}]\n", r.all.join(", ")));
        }
        if !r.any.is_empty() {
            out.push_str(&format!("    any_scopes: [{}]\n", r.any.join(", ")));
        }
        if let Some(issuers) = &r.issuers {
            out.push_str(&format!("    issuers: [{}]\n", issuers.join(", ")));
        }
        if let Some(cors_preflight) = r.cors_preflight {
            out.push_str(&format!(
                "    forward:\n      cors_preflight: {cors_preflight}\n"
            ));
        }
    }
    out
}

/// The concrete path of `req`, and whether it fits the pattern of the
/// routes under its prefix (`tail`; `None` when there are none), under
/// strict matching or `lax` matching.
pub fn path_of(req: &Req, tail: Option<&[Seg]>, lax: bool) -> (String, bool) {
    let (path, fits) = path_fitting(req, tail);
    match req.spelling {
        Spelling::AsRouted => (path, fits),
        Spelling::UpperCase if path == "/" => (path, fits),
        Spelling::UpperCase => (path.to_uppercase(), fits && lax),
        // A `{*rest}` takes the slash in with the rest.
        Spelling::TrailingSlash => {
            let absorbed = fits && tail.is_some_and(|t| t.last() == Some(&Seg::Rest));
            (format!("{path}/"), absorbed || fits && lax)
        }
    }
}

/// [`path_of`] as routed.
pub fn path_fitting(req: &Req, tail: Option<&[Seg]>) -> (String, bool) {
    let Some(tail) = tail else {
        return (format!("/r{}/x", req.prefix), false);
    };
    let mut segments = vec![format!("r{}", req.prefix)];
    for seg in tail {
        segments.push(
            match seg {
                Seg::Literal => "x",
                Seg::Param => "v7",
                Seg::Rest => "a/b",
            }
            .to_owned(),
        );
    }
    let ends_in_rest = tail.last() == Some(&Seg::Rest);
    let fits = match req.path {
        PathKind::Fits => true,
        PathKind::Longer => {
            segments.push("extra".to_owned());
            ends_in_rest
        }
        PathKind::Shorter => {
            segments.pop();
            false
        }
    };
    (format!("/{}", segments.join("/")), fits)
}

/// What a request must get.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    NotFound,
    /// 405 with these methods in `Allow`.
    NotAllowed(Vec<String>),
    /// 400 `invalid_request`: an access token in the query.
    TokenInQuery,
    /// 401 with a bare challenge.
    NoToken,
    /// 401 `invalid_token`.
    Invalid,
    /// 403 `insufficient_scope`.
    Insufficient,
    /// Forwarded, with these scopes as `x-auth-scopes` (none for a public route).
    Forwarded(Option<String>),
}

pub fn expected(map: &Map, req: &Req, fits: bool) -> Want {
    let candidates: Vec<&RouteSpec> = map
        .routes
        .iter()
        .filter(|r| r.prefix == req.prefix)
        .collect();
    if candidates.is_empty() || !fits {
        return Want::NotFound;
    }
    let serves = |r: &&RouteSpec, m: &str| r.methods.as_ref().is_none_or(|ms| ms.contains(&m));
    let route_of = |method: &str| match method {
        // HEAD goes where GET goes (no route here lists HEAD).
        "HEAD" => candidates
            .iter()
            .find(|r| r.methods.as_ref().is_some_and(|m| m.contains(&"GET")))
            .or_else(|| candidates.iter().find(|r| r.methods.is_none()))
            .copied(),
        m => candidates.iter().find(|r| serves(r, m)).copied(),
    };
    let chosen = route_of(req.method);
    // A preflight without credentials or a query token passes to the route
    // of the method it asks about, if that route lets preflights through
    // and no other route takes the OPTIONS request itself.
    if let (Some(asked), Token::Missing, false) = (
        req.preflight,
        &req.token,
        TOKEN_QUERIES.contains(&req.query),
    ) {
        if let Some(target) = route_of(asked) {
            let allowed = target.cors_preflight.unwrap_or(map.cors_preflight);
            if allowed && chosen.is_none_or(|own| std::ptr::eq(own, target)) {
                return Want::Forwarded(None);
            }
        }
    }
    let Some(route) = chosen else {
        let mut allow: Vec<String> = candidates
            .iter()
            .flat_map(|r| r.methods.iter().flatten())
            .map(|m| (*m).to_owned())
            .collect();
        if allow.iter().any(|m| m == "GET") {
            allow.push("HEAD".to_owned());
        }
        allow.sort();
        return Want::NotAllowed(allow);
    };
    if route.public {
        return Want::Forwarded(None);
    }
    if TOKEN_QUERIES.contains(&req.query) {
        return Want::TokenInQuery;
    }
    let (issuer, scopes) = match &req.token {
        Token::Missing => return Want::NoToken,
        Token::Expired => return Want::Invalid,
        Token::Valid(issuer, scopes) => (issuer, scopes),
    };
    if route
        .issuers
        .as_ref()
        .is_some_and(|list| !list.contains(issuer))
    {
        return Want::Invalid;
    }
    let all = route.all.iter().all(|s| scopes.contains(s));
    let any = route.any.is_empty() || route.any.iter().any(|s| scopes.contains(s));
    if !(all && any) {
        return Want::Insufficient;
    }
    Want::Forwarded((!scopes.is_empty()).then(|| scopes.join(" ")))
}

/// The `Authorization` header of `token`.
pub fn authorization(world: &World, token: &Token) -> Option<String> {
    let mut claims = claims("");
    match token {
        Token::Missing => return None,
        Token::Expired => claims["exp"] = json!(now() - 60),
        Token::Valid(issuer, scopes) => {
            let iss = ISSUERS
                .iter()
                .find(|(name, _)| name == issuer)
                .map(|(_, iss)| *iss);
            claims["iss"] = json!(iss);
            claims["scope"] = json!(scopes.join(" "));
        }
    }
    Some(format!("Bearer {}", world.key.mint(&claims).unwrap()))
}

/// Sends `req` to `gw`, which serves `map`, and judges the answer and what
/// the world's upstream saw by the reference; `Err` names the difference.
pub async fn judge(world: &World, gw: &Gateway, map: &Map, req: &Req) -> Result<(), String> {
    let tail = map
        .routes
        .iter()
        .find(|r| r.prefix == req.prefix)
        .map(|r| r.tail.as_slice());
    let (path, fits) = path_of(req, tail, map.lax);
    let path = format!("{path}{}", req.query);
    let want = expected(map, req, fits);
    let auth = authorization(world, &req.token);
    let mut headers: Vec<(&str, &str)> =
        auth.iter().map(|a| ("authorization", a.as_str())).collect();
    if let Some(asked) = req.preflight {
        headers.push(("origin", "https://app.test"));
        headers.push(("access-control-request-method", asked));
    }
    let before = world.upstream.count();
    let r = send(req.method, &gw.url(&path), &headers, Bytes::new()).await?;
    let seen = world.upstream.seen_since(before);
    let what = format!(
        "{} {path} (preflight for {:?}): want {want:?}",
        req.method, req.preflight
    );
    let challenge = r.www_authenticate();
    let fine = match &want {
        Want::NotFound => r.status == 404,
        Want::NotAllowed(methods) => {
            let mut allow: Vec<String> = r
                .header("allow")
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
            allow.sort();
            r.status == 405 && allow == *methods
        }
        Want::TokenInQuery => r.status == 400 && challenge.contains("error=\"invalid_request\""),
        Want::NoToken => {
            r.status == 401 && challenge.starts_with("Bearer") && !challenge.contains("error=")
        }
        Want::Invalid => r.status == 401 && challenge.contains("error=\"invalid_token\""),
        Want::Insufficient => r.status == 403 && challenge.contains("error=\"insufficient_scope\""),
        Want::Forwarded(scopes) => {
            let [request] = seen.as_slice() else {
                return Err(format!(
                    "{what}: forwarded {} times, got {}",
                    seen.len(),
                    r.status
                ));
            };
            let got = request
                .headers
                .get("x-auth-scopes")
                .and_then(|v| v.to_str().ok());
            // A preflight reaches the app as one.
            let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
            let preflight_kept = req.preflight.is_none_or(|asked| {
                header("origin") == Some("https://app.test")
                    && header("access-control-request-method") == Some(asked)
            });
            r.status == 200
                && request.method == req.method
                && request.path_and_query == path
                && got == scopes.as_deref()
                && preflight_kept
        }
    };
    if !fine {
        return Err(format!(
            "{what}, got {} {:?} {challenge:?} {}",
            r.status,
            r.header("allow"),
            r.text()
        ));
    }
    if !matches!(want, Want::Forwarded(_)) && !seen.is_empty() {
        return Err(format!("{what}: refused with {}, yet forwarded", r.status));
    }
    Ok(())
}
