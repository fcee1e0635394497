//! Hostile HTTP/1.1 end to end: generated request streams (one to four
//! requests, pipelined on one connection, then a `Connection: close` sentinel)
//! written as raw bytes to a running gateway. Paths are spelled every way
//! that has fooled a gateway (dot segments, encoded slashes, absolute form,
//! matrix parameters), tokens (JWTs, and opaque ones checked by RFC 7662
//! introspection) are valid, expired, forged, inactive, for another
//! audience, duplicated or badly framed, and requests carry spoofed identity
//! headers, odd framing (both `Content-Length` and `Transfer-Encoding`, list
//! or signed lengths, unusual codings), requests hidden in their bodies,
//! folded or broken header lines, protocol switches (WebSocket, and `h2c`
//! that must never be passed on), forwarding headers scopegate does not set
//! and method overrides (which must never reach the upstream), WebDAV
//! `COPY` and `MOVE` with `Destination`s into other routes' paths,
//! `PROPFIND` and `LOCK` of collections at every `Depth`, and `HTTP/1.0`
//! or an unknown version.
//!
//! Whatever the bytes, the gateway must fail closed and stay well:
//! - every request the upstream receives is one the client sent as a request
//!   (never one hidden in a body, never one with both framing headers or a
//!   repeated `Content-Length` or a fragment on its target, never
//!   twice), and it presented exactly one valid bearer token whose scopes
//!   satisfy the route of the path and method *as forwarded*, which must be
//!   in canonical form, and of a `COPY` or `MOVE`'s one `Destination` as the
//!   most lenient upstream reads it; and a forwarded WebDAV request that
//!   acts on a collection's members (`COPY`, `MOVE`, and `PROPFIND` or
//!   `LOCK` but with one `Depth: 0`) reaches no path below its path or its
//!   `Destination` that the token does not cover or no route serves;
//! - the identity headers the upstream gets are the token's own, never the
//!   client's;
//! - the answers parse as HTTP/1 responses, in request order; each 2xx is
//!   exactly a request the upstream got, and carries that request's own
//!   upstream answer (which echoes its case id), never another's; 401 carries `WWW-Authenticate:
//!   Bearer`, 403 `error="insufficient_scope"` (RFC 6750); nothing is a
//!   gateway failure (500, 502-504) with a healthy upstream; none of the
//!   gateway's own answers contains a token's signature;
//! - a plain, allowed request is answered 200 wherever it falls in a stream;
//! - a fresh client is served after every case.
//!
//! - the upstream gets one `X-Forwarded-For` ending in the client's address,
//!   one `X-Forwarded-Proto` and at most one `X-Forwarded-Host`, and of the
//!   values a client sent for those two only what a trusted proxy sent as
//!   the one valid value.
//!
//! The same generated requests go over HTTP/2 (h2c) too, as far as HTTP/2
//! can carry them, judged by the same oracle; and below the HTTP/2 library,
//! as hand-built frames and header blocks ([`frames`]). A second gateway
//! trusts the test client as a proxy in front (`trusted_proxies`) and removes
//! `X-Tenant-Id` (`forward.remove_headers`), which must then never arrive in
//! any spelling. A third has a public catch-all route and `route_matching`
//! for an upstream that routes `/ADMIN/` as `/admin`: the scopes a forwarded
//! request needed are those of the route the upstream takes it to.
//!
//! A stream the gateway closes cleanly before answering all of it must have
//! announced the close (`Connection: close`) on its last answer, unless that
//! request asked for it; and nothing sent after a request that asked to
//! close (`Connection: close`, HTTP/1.0) is answered or forwarded.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 512 streams,
//! 128 over HTTP/2, and 256 hand-built HTTP/2 connections) for a longer
//! campaign.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use tokio::net::TcpStream;

/// How long a stream may take to be answered and closed; every generated
/// request is complete, so only a gateway that hangs reaches it.
const BOUND: Duration = Duration::from_secs(10);

/// The header that carries each request's case id to the upstream.
const CASE: &str = "x-case";

/// Identity values no token has: seeing one upstream means a spoof passed.
const SPOOFED: &str = "spoofed";

// ---------------------------------------------------------------------------
// Tokens.
// ---------------------------------------------------------------------------

/// The tokens a request may present: JWTs checked with the issuer's keys,
/// and opaque ones checked by introspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Tok {
    Read,
    Write,
    Admin,
    Other,
    Expired,
    BadSignature,
    WrongAudience,
    Garbage,
    OpaqueRead,
    OpaqueAdmin,
    /// Introspection says `active: false` (with claims a sloppy server adds).
    OpaqueInactive,
    /// Introspection says `"active": "true"`, a string.
    OpaqueActiveAsString,
    /// Active, but for another audience.
    OpaqueWrongAudience,
}

impl Tok {
    const ALL: [Tok; 13] = [
        Tok::Read,
        Tok::Write,
        Tok::Admin,
        Tok::Other,
        Tok::Expired,
        Tok::BadSignature,
        Tok::WrongAudience,
        Tok::Garbage,
        Tok::OpaqueRead,
        Tok::OpaqueAdmin,
        Tok::OpaqueInactive,
        Tok::OpaqueActiveAsString,
        Tok::OpaqueWrongAudience,
    ];

    /// The scope of a token that must be accepted; `None` for the others.
    fn valid_scope(self) -> Option<&'static str> {
        match self {
            Tok::Read | Tok::OpaqueRead => Some("orders:read"),
            Tok::Write => Some("orders:write"),
            Tok::Admin | Tok::OpaqueAdmin => Some("admin"),
            Tok::Other => Some("profile"),
            _ => None,
        }
    }

    fn sub(self) -> String {
        format!("sub-{self:?}").to_lowercase()
    }
}

/// The serialised token of every kind.
struct Tokens(HashMap<Tok, String>);

impl Tokens {
    fn mint(world: &World) -> Self {
        let now = now();
        let claims = |tok: Tok, scope: &str, aud: &str, iat: u64, exp: u64| {
            serde_json::json!({
                "iss": ISSUER, "aud": aud, "sub": tok.sub(), "client_id": "hostile",
                "scope": scope, "iat": iat, "exp": exp,
            })
        };
        let mut tokens = HashMap::new();
        for tok in Tok::ALL {
            let token = match tok {
                Tok::Expired => world
                    .key
                    .mint(&claims(tok, "admin", AUDIENCE, now - 7200, now - 3600))
                    .unwrap(),
                Tok::WrongAudience => world
                    .key
                    .mint(&claims(tok, "admin", "another-api", now, now + 7200))
                    .unwrap(),
                Tok::BadSignature => {
                    let token = world
                        .key
                        .mint(&claims(tok, "admin", AUDIENCE, now, now + 7200))
                        .unwrap();
                    // Change a character in the middle of the signature (the
                    // last one may only carry padding bits).
                    let mut bytes = token.into_bytes();
                    let at = bytes.len() - 10;
                    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                    String::from_utf8(bytes).unwrap()
                }
                Tok::Garbage => "not.a.jwt".to_owned(),
                Tok::OpaqueRead
                | Tok::OpaqueAdmin
                | Tok::OpaqueInactive
                | Tok::OpaqueActiveAsString
                | Tok::OpaqueWrongAudience => format!("op-{}", tok.sub()),
                _ => world
                    .key
                    .mint(&claims(
                        tok,
                        tok.valid_scope().unwrap(),
                        AUDIENCE,
                        now,
                        now + 7200,
                    ))
                    .unwrap(),
            };
            tokens.insert(tok, token);
        }
        Self(tokens)
    }

    fn get(&self, tok: Tok) -> &str {
        &self.0[&tok]
    }

    /// The signature segments of the real JWTs and the opaque tokens: no
    /// answer of the gateway may contain one.
    fn signatures(&self) -> Vec<&str> {
        self.0
            .values()
            .filter_map(|t| match t.rsplit_once('.') {
                Some((_, sig)) => (sig.len() > 20).then_some(sig),
                None => Some(t.as_str()),
            })
            .collect()
    }
}

/// `iss` of the introspecting issuer.
const OPAQUE_ISSUER: &str = "https://opaque.test";

/// An RFC 7662 endpoint that knows the opaque tokens by their text.
async fn introspection_endpoint() -> SocketAddr {
    use http_body_util::BodyExt;
    serve_fn(|request: http::Request<hyper::body::Incoming>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let token = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let tok = Tok::ALL
            .into_iter()
            .find(|t| token == format!("op-{}", t.sub()));
        let now = now();
        let answer = |tok: Tok, active: serde_json::Value, aud: &str| {
            serde_json::json!({
                "active": active, "iss": OPAQUE_ISSUER, "aud": aud,
                "sub": tok.sub(), "client_id": "hostile",
                "scope": tok.valid_scope().unwrap_or("admin"),
                "token_type": "Bearer", "iat": now, "exp": now + 7200,
            })
        };
        let answer = match tok {
            Some(tok @ (Tok::OpaqueRead | Tok::OpaqueAdmin)) => answer(tok, true.into(), AUDIENCE),
            Some(tok @ Tok::OpaqueWrongAudience) => answer(tok, true.into(), "another-api"),
            Some(tok @ Tok::OpaqueInactive) => answer(tok, false.into(), AUDIENCE),
            Some(tok @ Tok::OpaqueActiveAsString) => answer(tok, "true".into(), AUDIENCE),
            _ => serde_json::json!({ "active": false }),
        };
        let mut response = http::Response::new(full_body(answer.to_string()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    })
    .await
}

/// The standard world's config with a second issuer whose tokens are opaque.
fn config(world: &World, introspection: SocketAddr, secret: &std::path::Path) -> String {
    world.config_with(&format!(
        "  - name: opaque
    issuer: {OPAQUE_ISSUER}
    audiences: [{AUDIENCE}]
    introspection:
      endpoint: http://{introspection}/introspect
      client_id: scopegate
      client_secret_file: {}
",
        secret.display()
    ))
}

// ---------------------------------------------------------------------------
// Generated requests.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Auth {
    Absent,
    Bearer(Tok),
    /// `bearer`: the scheme is case-insensitive (RFC 9110 11.1).
    LowerScheme(Tok),
    /// `Bearer  t`: `1*SP` after the scheme (RFC 6750 2.1).
    TwoSpaces(Tok),
    Empty,
    Basic,
    Twice(Tok, Tok),
    InQuery(Tok),
    /// A token in the header and another in the query, under one of
    /// [`QUERY_NAMES`].
    HeaderAndQuery(Tok, usize),
}

/// Query parameter names, and whether some framework reads each as
/// `access_token` (escaped names are decoded by all; ASP.NET Core's query
/// ignores case; PHP reads `.`, space and `[` as `_`; Rack 2 splits on `;`).
const QUERY_NAMES: [(&str, bool); 13] = [
    ("access_token", true),
    ("[access_token]", true),
    ("Access_Token", true),
    ("access%5Ftoken", true),
    ("access.token", true),
    ("access+token", true),
    ("access[token", true),
    ("access_token[]", true),
    ("x=1;access_token", true),
    ("not_access_token", false),
    ("access_tokens", false),
    ("access-token", false),
    ("q=access_token&x", false),
];

impl Auth {
    /// The `Authorization` field values, one per header (none for a token
    /// in the query).
    fn values(&self, tokens: &Tokens) -> Vec<String> {
        let bearer = |prefix: &str, t: Tok| format!("{prefix}{}", tokens.get(t));
        match *self {
            Auth::Absent | Auth::InQuery(_) => vec![],
            Auth::Bearer(t) | Auth::HeaderAndQuery(t, _) => vec![bearer("Bearer ", t)],
            Auth::LowerScheme(t) => vec![bearer("bearer ", t)],
            Auth::TwoSpaces(t) => vec![bearer("Bearer  ", t)],
            Auth::Empty => vec!["Bearer ".to_owned()],
            Auth::Basic => vec!["Basic YWxpY2U6c2VjcmV0".to_owned()],
            Auth::Twice(a, b) => vec![bearer("Bearer ", a), bearer("Bearer ", b)],
        }
    }

    /// The token this request must be treated as presenting, if any: one
    /// valid token in one well-formed `Authorization` header.
    fn presented(&self) -> Option<Tok> {
        match self {
            Auth::Bearer(t)
            | Auth::LowerScheme(t)
            | Auth::TwoSpaces(t)
            | Auth::HeaderAndQuery(t, _)
                if t.valid_scope().is_some() =>
            {
                Some(*t)
            }
            _ => None,
        }
    }

    /// Whether the query carries a parameter read as `access_token`.
    fn query_token(&self) -> bool {
        match self {
            Auth::InQuery(_) => true,
            Auth::HeaderAndQuery(_, name) => QUERY_NAMES[*name].1,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
enum Body {
    None,
    /// `Content-Length`, written as one of several spellings of the same number.
    Length {
        bytes: Vec<u8>,
        spelling: u8,
    },
    /// `Transfer-Encoding` with the given value, body in two chunks.
    Chunked {
        bytes: Vec<u8>,
        coding: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    SpoofIdentity,
    ConnectionNamesIdentity,
    ConnectionClose,
    EvilHost,
    NoHost,
    TwoHosts,
    ExpectContinue,
    Upgrade,
    ForwardedFor,
    ObsFold,
    NoColon,
    NulInValue,
    TwoLengths,
    /// `Content-Length` twice with the same value (hyper keeps one).
    SameLengths,
    /// A `Content-Length` besides `Transfer-Encoding` (the smuggler's pair).
    BothFramings,
    /// Chunk extensions longer than a line a reader may keep.
    LongChunkExtension,
    /// Chunk sizes with 300 leading zeros: hyper reads them, the connection
    /// watch does not, so the request after is refused (fail closed).
    LongChunkSize,
    /// A `Content-Length` with 300 leading zeros: refused for the same
    /// reason.
    LongLength,
    LongHeader,
    /// `HTTP/1.0` on the request line (no keep-alive, no upgrades).
    Http10,
    /// A version hyper does not speak.
    UnknownVersion,
    /// Forwarding headers scopegate does not set, spellings with an
    /// underscore of those it sets, and a method override.
    ClientForwarding,
    /// An `h2c` upgrade (raw HTTP/2 past the route check, if passed on).
    H2cUpgrade,
    /// `X-Forwarded-Proto: FORWARDED_PROTOS[n]`: kept only from a trusted
    /// proxy, and only when it is the one valid value.
    ForwardedProto(u8),
    /// `X-Forwarded-Host: FORWARDED_HOSTS[n]`: as `X-Forwarded-Proto`.
    ForwardedHost(u8),
    /// `TENANT_ID_NAMES[n]: spoofed`: what the trusting lab's
    /// `forward.remove_headers` names, in one of its spellings.
    TenantId(u8),
    /// `Content-Type: GRPC_TYPES[n]`: over HTTP/2, a gRPC call (a `POST`,
    /// not gRPC-Web) is refused in gRPC's form.
    Grpc(u8),
    /// `Destination: DESTINATIONS[n]`: WebDAV's second path (`COPY`,
    /// `MOVE`), which must never lead out of what the token covers.
    Destination(u8),
    /// `Depth: DEPTHS[n]`: how far below its path a WebDAV request acts
    /// (RFC 4918 10.2; none is `infinity`).
    Depth(u8),
    /// `Connection: Depth, Destination`: both are removed on the way (RFC
    /// 9110 7.6.1), so the upstream reads none (HTTP/1 only).
    ConnectionNamesDav,
}

/// `Depth` values: the three of RFC 4918 10.2, and spellings of `0` that a
/// lenient server might read as `0` or as the default, `infinity`.
const DEPTHS: [&str; 8] = ["0", "1", "infinity", " 0 ", "00", "0, 1", "Infinity", "-0"];

/// Paths each lab routes somewhere (or refuses): what a WebDAV request on a
/// collection above them would reach too.
const PATHS_BELOW: [&str; 9] = [
    "/admin",
    "/admin/users/3",
    "/status",
    "/status/x",
    "/orders/7",
    "/orders/7/items",
    "/elsewhere/x",
    "/elsewhere/x/y",
    "/x",
];

/// `Destination` values (RFC 4918 10.3): paths of every route, spelled as
/// a request path may be, absolute URIs, and values that are no URI.
const DESTINATIONS: [&str; 27] = [
    "/admin/users/4",
    "//gw.test/admin/x",
    "//status/../admin/x",
    "http://gw.test/admin/x",
    "/status",
    "/orders/7",
    "/orders/7/items",
    "/elsewhere/x",
    "http://evil.example/elsewhere",
    "/status/../admin/x",
    "/status/..;/admin/x",
    "/status/%2e%2e/admin",
    "/%61dmin/x",
    "/ADMIN/x",
    "/Admin",
    "/admin%2fx",
    "/elsewhere%2f..%2fadmin",
    "//admin/x",
    "/elsewhere/..\\admin",
    "/elsewhere;x/../admin",
    "/admin/x?y=1",
    "/elsewhere/x#/../../admin",
    "admin/x",
    "*",
    "",
    "http://gw.test:80/status/./../admin",
    // `/status` with slashes merged first, `/admin/status` to RFC 3986.
    "/admin//../status",
];

/// Content types of gRPC calls; the first `GRPC_CALL_TYPES` are gRPC's own.
const GRPC_TYPES: [&str; 4] = [
    "application/grpc",
    "application/grpc+proto",
    "application/grpc-web",
    "application/grpcx",
];
const GRPC_CALL_TYPES: usize = 2;

/// `X-Forwarded-Proto` values a client or proxy may send; the first
/// `VALID_FORWARDED_PROTOS` of them are kept from a trusted proxy (trimmed,
/// lower-cased).
const FORWARDED_PROTOS: [&str; 5] = ["https", " HTTPS ", "ftp", "https, http", "javascript"];
const VALID_FORWARDED_PROTOS: usize = 2;
/// `X-Forwarded-Host` values; the first `VALID_FORWARDED_HOSTS` of them are
/// kept from a trusted proxy.
const FORWARDED_HOSTS: [&str; 5] = [
    "app.example.com",
    "app.example.com:8443",
    "user@evil.example",
    "evil.example, app.example.com",
    "evil.example/path",
];
const VALID_FORWARDED_HOSTS: usize = 2;
/// Spellings of the header the trusting lab removes (`X-Tenant-Id`).
const TENANT_ID_NAMES: [&str; 4] = ["X-Tenant-Id", "x_tenant_id", "X-TENANT-ID", "X-Tenant_Id"];

/// What a trusted proxy's forwarding headers in `extras` should become
/// upstream: (`X-Forwarded-Proto`, `X-Forwarded-Host`), each `None` unless
/// exactly one line with a valid value was sent.
fn trusted_forwarding(extras: &[Extra]) -> (Option<String>, Option<&'static str>) {
    // The one valid value among `values` sent as `which` lines, if any.
    let one_valid = |which: fn(&Extra) -> Option<u8>, values: &[&'static str], valid: usize| {
        let sent: Vec<usize> = extras.iter().filter_map(which).map(usize::from).collect();
        match sent.as_slice() {
            [n] if *n < valid => Some(values[*n]),
            _ => None,
        }
    };
    let proto = one_valid(
        |e| match e {
            Extra::ForwardedProto(n) => Some(*n),
            _ => None,
        },
        &FORWARDED_PROTOS,
        VALID_FORWARDED_PROTOS,
    );
    let host = one_valid(
        |e| match e {
            Extra::ForwardedHost(n) => Some(*n),
            _ => None,
        },
        &FORWARDED_HOSTS,
        VALID_FORWARDED_HOSTS,
    );
    (proto.map(|p| p.trim().to_ascii_lowercase()), host)
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    target: String,
    auth: Auth,
    body: Body,
    /// A request with a valid admin token for `/admin` inside the body.
    hides_request: bool,
    extras: Vec<Extra>,
    /// Built from a known-good (method, path, token) with nothing odd: must
    /// be answered 200 if it is answered at all.
    plain: bool,
}

/// (method, path, token) the standard world's routes allow.
const ALLOWED: &[(&str, &str, Option<Tok>)] = &[
    ("GET", "/orders/7", Some(Tok::Read)),
    ("POST", "/orders/7/items", Some(Tok::Write)),
    ("PUT", "/orders/7/items", Some(Tok::Write)),
    ("DELETE", "/orders/9/x", Some(Tok::Write)),
    ("GET", "/admin", Some(Tok::Admin)),
    ("GET", "/admin/users/3", Some(Tok::Admin)),
    ("GET", "/status", None),
    ("POST", "/status", Some(Tok::Read)),
    ("GET", "/orders/8", Some(Tok::OpaqueRead)),
    ("PUT", "/admin/x", Some(Tok::OpaqueAdmin)),
    ("MOVE", "/admin/users/3", Some(Tok::Admin)),
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "COPY",
    "MOVE", "PROPFIND", "LOCK",
];

const TARGETS: &[&str] = &[
    "/orders/7",
    "/orders/7/items",
    "/admin",
    "/admin/users/3",
    "/status",
    "/",
    "/orders",
    "/orders/",
    "/orders/./7",
    "//orders/7",
    "/orders//7",
    "/orders/7/",
    "/orders/%37",
    "/ORDERS/7",
    "/orders/7?x=1",
    "/orders/7?next=../../admin",
    "/orders/7;x=1",
    "/ordersX/7",
    "/orders/../admin",
    "/orders/7/..",
    "/orders/%2e%2e/admin",
    "/orders/%2E%2E%2Fadmin",
    "/orders/..%2fadmin",
    "/orders/7%2f8",
    "/orders/7%00",
    "/orders/%ZZ",
    "/orders/%20",
    "/orders/\\..\\admin",
    "/status/../admin",
    "/status/..;/admin",
    "/admin;x/users",
    "/orders;x/7",
    "/orders/7;x",
    "/status%3Bx",
    "/status;x",
    "/orders/%3A",
    "/orders/7/.%2e;x=1/admin/users",
    "/status;/../admin",
    "/status%2f..%2fadmin",
    "/status/.%2e/admin",
    "/status#/../admin",
    "/%61dmin",
    "/%41dmin",
    "/Admin",
    "/ADMIN/users/3",
    "/admin/",
    "/Orders/7/",
    "/admin%2f",
    "/admin/..",
    "/admin/%2e%2e/orders/7",
    "http://evil.example/admin",
    "http://gw.test/orders/7",
    "http://gw.test:80/status/../admin",
    "*",
    "gw.test:443",
];

fn tok() -> impl Strategy<Value = Tok> {
    prop::sample::select(Tok::ALL.to_vec())
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        2 => Just(Auth::Absent),
        8 => tok().prop_map(Auth::Bearer),
        1 => tok().prop_map(Auth::LowerScheme),
        1 => tok().prop_map(Auth::TwoSpaces),
        1 => Just(Auth::Empty),
        1 => Just(Auth::Basic),
        1 => (tok(), tok()).prop_map(|(a, b)| Auth::Twice(a, b)),
        1 => tok().prop_map(Auth::InQuery),
        1 => (tok(), 0..QUERY_NAMES.len()).prop_map(|(t, n)| Auth::HeaderAndQuery(t, n)),
    ]
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        Just(b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_vec()),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => Just(Body::None),
        2 => (body_bytes(), 0u8..5).prop_map(|(bytes, spelling)| Body::Length { bytes, spelling }),
        2 => (
            body_bytes(),
            prop::sample::select(vec![
                "chunked",
                "chunked",
                "chunked",
                "CHUNKED",
                "gzip, chunked",
                "chunked, identity",
                "xchunked",
                "chunked;q=1",
            ])
        )
            .prop_map(|(bytes, coding)| Body::Chunked { bytes, coding }),
    ]
}

/// Mostly extras a request may carry and still be served; now and then one
/// that breaks the head (the connection then ends).
fn extra() -> impl Strategy<Value = Extra> {
    prop_oneof![
        4 => prop::sample::select(vec![
            Extra::SpoofIdentity,
            Extra::ConnectionNamesIdentity,
            Extra::ConnectionClose,
            Extra::EvilHost,
            Extra::ExpectContinue,
            Extra::Upgrade,
            Extra::ForwardedFor,
            Extra::BothFramings,
            Extra::LongChunkExtension,
            Extra::LongChunkSize,
            Extra::Http10,
            Extra::ClientForwarding,
            Extra::H2cUpgrade,
        ]),
        2 => forwarding_extra(),
        1 => (0..GRPC_TYPES.len() as u8).prop_map(Extra::Grpc),
        1 => prop::sample::select(vec![
            Extra::NoHost,
            Extra::TwoHosts,
            Extra::ObsFold,
            Extra::NoColon,
            Extra::NulInValue,
            Extra::TwoLengths,
            Extra::SameLengths,
            Extra::LongLength,
            Extra::LongHeader,
            Extra::UnknownVersion,
        ]),
    ]
}

/// A forwarding header a proxy in front may send, or the header the
/// trusting lab removes.
fn forwarding_extra() -> impl Strategy<Value = Extra> {
    prop_oneof![
        (0..FORWARDED_PROTOS.len() as u8).prop_map(Extra::ForwardedProto),
        (0..FORWARDED_HOSTS.len() as u8).prop_map(Extra::ForwardedHost),
        (0..TENANT_ID_NAMES.len() as u8).prop_map(Extra::TenantId),
    ]
}

fn hostile() -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            3 => prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
            1 => prop::sample::select(METHODS.to_vec()),
        ],
        prop_oneof![
            1 => prop::sample::select(ALLOWED.iter().map(|a| a.1).collect::<Vec<_>>()),
            2 => prop::sample::select(TARGETS.to_vec()),
        ],
        auth(),
        body(),
        any::<bool>(),
        proptest::collection::vec(extra(), 0..=2),
    )
        .prop_map(|(method, target, auth, body, hides, extras)| Req {
            method,
            target: target.to_owned(),
            auth,
            hides_request: hides && !matches!(body, Body::None),
            body,
            extras,
            plain: false,
        })
}

/// A WebDAV `COPY` or `MOVE` with one or two `Destination`s (or none), or
/// a `PROPFIND` or `LOCK`, with one or two `Depth`s (or none), from any
/// path: the cases where a route's own check would let a request act on
/// another route's paths, or on paths below its own that no route serves.
fn webdav() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec!["COPY", "MOVE", "PROPFIND", "LOCK"]),
        prop_oneof![
            2 => prop::sample::select(ALLOWED.iter().map(|a| a.1).collect::<Vec<_>>()),
            1 => prop::sample::select(TARGETS.to_vec()),
            1 => prop::sample::select(vec!["/elsewhere/y", "/", "/admin/", "/Admin", "/elsewhere", "/status/"]),
        ],
        auth(),
        proptest::collection::vec(
            (0..DESTINATIONS.len() as u8).prop_map(Extra::Destination),
            0..=2,
        ),
        proptest::collection::vec((0..DEPTHS.len() as u8).prop_map(Extra::Depth), 0..=2),
        // 1 and 2: `Connection` names `Depth` and `Destination`; 2: with
        // the one `Depth: 0` that keeps a listing or lock to its collection
        // here.
        prop_oneof![2 => Just(0u8), 1 => Just(1), 1 => Just(2)],
    )
        .prop_map(|(method, target, auth, mut extras, depths, named)| {
            if named == 2 {
                extras.push(Extra::Depth(0));
            } else {
                extras.extend(depths);
            }
            if named > 0 {
                extras.push(Extra::ConnectionNamesDav);
            }
            Req {
                method,
                target: target.to_owned(),
                auth,
                body: Body::None,
                hides_request: false,
                extras,
                plain: false,
            }
        })
}

/// Other spellings of an allowed path: some mean the same path, some
/// another one, some must be refused.
fn respell(path: &str, how: u8) -> String {
    let (first, rest) = path[1..].split_once('/').unwrap_or((&path[1..], ""));
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("/{rest}")
    };
    match how {
        0 => format!("{path}%2f8"),
        1 => format!("{path}/%2e%2e/admin"),
        2 => format!("/{first}/.{rest}"),
        3 => format!("/{path}"),
        4 => format!("{path}/.."),
        5 => format!("{path}/../../admin/x"),
        6 => format!("{path}?q=%2f..%2f"),
        7 => format!("{path};x=1"),
        8 => path.replacen('/', "%2F", 2).replacen("%2F", "/", 1),
        9 => format!("{path}%00"),
        10 => format!("{path}%"),
        11 => format!("/{}{rest}", first.to_uppercase()),
        12 => format!("/{first}/%2E{rest}"),
        13 => format!("/status/..{path}"),
        14 => format!("/{first}%2f..%2fadmin{rest}"),
        // A letter spelt as a character Java's case mapping reads as it.
        15 => format!(
            "/{}{rest}",
            first
                .replacen('i', "%C4%B1", 1)
                .replacen('s', "%C5%BF", 1)
                .replacen('k', "%E2%84%AA", 1)
        ),
        _ => format!("{path}/"),
    }
}

/// An allowed request with one or two odd things about it: the cases where
/// a slip lets something through.
fn tweaked() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(ALLOWED.to_vec()),
        prop_oneof![2 => Just(None), 1 => (0u8..17).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => auth().prop_map(Some)],
        body(),
        any::<bool>(),
        proptest::collection::vec(extra(), 0..=2),
    )
        .prop_map(
            |((method, target, tok), spelling, auth, body, hides, extras)| Req {
                method,
                target: spelling.map_or_else(|| target.to_owned(), |how| respell(target, how)),
                auth: auth.unwrap_or(tok.map_or(Auth::Absent, Auth::Bearer)),
                hides_request: hides && !matches!(body, Body::None),
                body,
                extras,
                plain: false,
            },
        )
}

fn plain() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(ALLOWED.to_vec()),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..32),
        any::<bool>(),
    )
        .prop_map(|((method, target, tok), lower, bytes, with_body)| Req {
            method,
            target: target.to_owned(),
            auth: match tok {
                Some(t) if lower => Auth::LowerScheme(t),
                Some(t) => Auth::Bearer(t),
                None => Auth::Absent,
            },
            body: if with_body {
                Body::Length { bytes, spelling: 0 }
            } else {
                Body::None
            },
            hides_request: false,
            // WebDAV's methods need a Destination (RFC 4918 9.8.3, 9.9.3):
            // one within the route.
            extras: if matches!(method, "COPY" | "MOVE") {
                vec![Extra::Destination(0)]
            } else {
                Vec::new()
            },
            plain: true,
        })
}

fn stream() -> impl Strategy<Value = Vec<Req>> {
    proptest::collection::vec(
        prop_oneof![2 => plain(), 2 => tweaked(), 2 => hostile(), 1 => webdav()],
        1..=4,
    )
}

// ---------------------------------------------------------------------------
// Rendering, and what the oracle remembers of each request id.
// ---------------------------------------------------------------------------

/// What was sent under one case id.
#[derive(Debug, Clone)]
struct Sent {
    method: String,
    presented: Option<Tok>,
    /// Hidden in a body, or carrying both framing headers: never forwardable.
    never: Option<&'static str>,
    /// A query parameter some framework reads as `access_token`: never
    /// forwardable on a route that needs a token.
    query_token: bool,
    /// What a trusted proxy's `X-Forwarded-Proto` and `-Host` should become
    /// ([`trusted_forwarding`]).
    forwarded: (Option<String>, Option<&'static str>),
}

#[derive(Default)]
struct Ledger {
    next_id: u64,
    sent: HashMap<u64, Sent>,
    /// Upstream records already checked.
    checked: usize,
}

impl Ledger {
    fn id(&mut self, sent: Sent) -> u64 {
        self.next_id += 1;
        self.sent.insert(self.next_id, sent);
        self.next_id
    }
}

/// The body's bytes, maybe with a request hidden in them that would be
/// forwarded (valid admin token, allowed path) if it were ever read as a
/// request.
fn payload(req: &Req, tokens: &Tokens, ledger: &mut Ledger) -> Vec<u8> {
    let mut payload = match &req.body {
        Body::None => Vec::new(),
        Body::Length { bytes, .. } | Body::Chunked { bytes, .. } => bytes.clone(),
    };
    if req.hides_request {
        let hidden = ledger.id(Sent {
            method: "GET".to_owned(),
            presented: Some(Tok::Admin),
            never: Some("hidden in a request body"),
            query_token: false,
            forwarded: (None, None),
        });
        payload.extend_from_slice(
            format!(
                "GET /admin HTTP/1.1\r\nHost: gw.test\r\n{CASE}: {hidden}\r\nAuthorization: Bearer {}\r\n\r\n",
                tokens.get(Tok::Admin)
            )
            .as_bytes(),
        );
    }
    payload
}

/// The request target with an `access_token` query parameter if the
/// request puts its token there.
fn target(req: &Req, tokens: &Tokens) -> String {
    let mut target = req.target.clone();
    let glue = if target.contains('?') { '&' } else { '?' };
    match req.auth {
        Auth::InQuery(t) => {
            target = format!("{target}{glue}access_token={}", tokens.get(t));
        }
        // Another token: the one in the header may satisfy the route.
        Auth::HeaderAndQuery(_, name) => {
            target = format!(
                "{target}{glue}{}={}",
                QUERY_NAMES[name].0,
                tokens.get(Tok::Admin)
            );
        }
        _ => {}
    }
    target
}

fn render(req: &Req, tokens: &Tokens, ledger: &mut Ledger) -> (Vec<u8>, u64) {
    let ambiguous = matches!(req.body, Body::Chunked { .. })
        && req.extras.iter().any(|e| {
            matches!(
                e,
                Extra::BothFramings | Extra::TwoLengths | Extra::SameLengths | Extra::LongLength
            )
        });
    let target = target(req, tokens);
    let never = if ambiguous {
        Some("with both Content-Length and Transfer-Encoding")
    } else if req.extras.contains(&Extra::SameLengths) {
        Some("with Content-Length repeated")
    } else if req.extras.contains(&Extra::LongLength) {
        Some("with a Content-Length line over 256 bytes")
    } else if target.contains('#') {
        Some("with a fragment on the target")
    } else {
        None
    };
    let id = ledger.id(Sent {
        method: req.method.to_owned(),
        presented: req.auth.presented(),
        never,
        query_token: req.auth.query_token(),
        forwarded: trusted_forwarding(&req.extras),
    });
    let version = if req.extras.contains(&Extra::UnknownVersion) {
        "HTTP/1.2"
    } else if req.extras.contains(&Extra::Http10) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut head = format!("{} {target} {version}\r\n", req.method);
    let host = |head: &mut String| head.push_str("Host: gw.test\r\n");
    let extras = &req.extras;
    if extras.contains(&Extra::EvilHost) {
        head.push_str("Host: evil.example\r\n");
    } else if !extras.contains(&Extra::NoHost) {
        host(&mut head);
    }
    if extras.contains(&Extra::TwoHosts) {
        head.push_str("Host: other.example\r\n");
    }
    head.push_str(&format!("{CASE}: {id}\r\n"));
    // The field name's case varies with the scheme's.
    let name = match req.auth {
        Auth::LowerScheme(_) => "authorization",
        _ => "Authorization",
    };
    for value in req.auth.values(tokens) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    for extra in extras {
        match extra {
            Extra::SpoofIdentity => head.push_str(&format!(
                "X-Auth-Subject: {SPOOFED}\r\nX-Auth-Scopes: admin {SPOOFED}\r\nX-Auth-Client-Id: {SPOOFED}\r\n"
            )),
            Extra::ConnectionNamesIdentity => {
                head.push_str("Connection: X-Auth-Subject, X-Auth-Scopes\r\n")
            }
            Extra::ConnectionNamesDav => head.push_str("Connection: Depth, Destination\r\n"),
            Extra::ConnectionClose => head.push_str("Connection: close\r\n"),
            Extra::ExpectContinue => head.push_str("Expect: 100-continue\r\n"),
            Extra::Upgrade => head.push_str("Connection: upgrade\r\nUpgrade: websocket\r\n"),
            Extra::ForwardedFor => {
                head.push_str(&format!("X-Forwarded-For: 10.0.0.1\r\nX-Auth-Subject: {SPOOFED}\r\n"))
            }
            Extra::ClientForwarding => head.push_str(CLIENT_FORWARDING),
            Extra::H2cUpgrade => head.push_str(
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            ),
            Extra::ObsFold => head.push_str("X-Folded: a\r\n b\r\n"),
            Extra::NoColon => head.push_str("X-No-Colon\r\n"),
            Extra::NulInValue => head.push_str("X-Nul: a\0b\r\n"),
            Extra::LongHeader => head.push_str(&format!("X-Long: {}\r\n", "a".repeat(70_000))),
            Extra::ForwardedProto(n) => head.push_str(&format!(
                "X-Forwarded-Proto: {}\r\n",
                FORWARDED_PROTOS[usize::from(*n)]
            )),
            Extra::ForwardedHost(n) => head.push_str(&format!(
                "X-Forwarded-Host: {}\r\n",
                FORWARDED_HOSTS[usize::from(*n)]
            )),
            Extra::TenantId(n) => head.push_str(&format!(
                "{}: {SPOOFED}\r\n",
                TENANT_ID_NAMES[usize::from(*n)]
            )),
            Extra::Grpc(n) => head.push_str(&format!(
                "Content-Type: {}\r\n",
                GRPC_TYPES[usize::from(*n)]
            )),
            Extra::Destination(n) => head.push_str(&format!(
                "Destination: {}\r\n",
                DESTINATIONS[usize::from(*n)]
            )),
            Extra::Depth(n) => head.push_str(&format!("Depth: {}\r\n", DEPTHS[usize::from(*n)])),
            Extra::EvilHost
            | Extra::NoHost
            | Extra::TwoHosts
            | Extra::TwoLengths
            | Extra::SameLengths
            | Extra::BothFramings
            | Extra::LongChunkExtension
            | Extra::LongChunkSize
            | Extra::LongLength
            | Extra::Http10
            | Extra::UnknownVersion => {}
        }
    }

    let payload = payload(req, tokens, ledger);
    let mut body = Vec::new();
    let zeros = |extra| {
        if extras.contains(&extra) {
            "0".repeat(300)
        } else {
            String::new()
        }
    };
    let length_zeros = zeros(Extra::LongLength);
    match &req.body {
        Body::None => {
            if extras.contains(&Extra::LongLength) {
                head.push_str(&format!("Content-Length: {length_zeros}\r\n"));
            }
            if extras.contains(&Extra::TwoLengths) {
                head.push_str("Content-Length: 0\r\nContent-Length: 1\r\n");
            }
            if extras.contains(&Extra::SameLengths) {
                head.push_str("Content-Length: 0\r\ncontent-length: 0\r\n");
            }
        }
        Body::Length { spelling, .. } => {
            let n = payload.len();
            let value = match spelling {
                0 => format!("{length_zeros}{n}"),
                1 => format!("+{n}"),
                2 => format!("{n}, {n}"),
                3 => format!("0{length_zeros}{n}"),
                _ => format!(" {length_zeros}{n} "),
            };
            head.push_str(&format!("Content-Length: {value}\r\n"));
            if extras.contains(&Extra::SameLengths) {
                head.push_str(&format!("Content-Length: {value}\r\n"));
            }
            if extras.contains(&Extra::TwoLengths) {
                head.push_str(&format!("Content-Length: {}\r\n", n + 1));
            }
            body = payload;
        }
        Body::Chunked { coding, .. } => {
            head.push_str(&format!("Transfer-Encoding: {coding}\r\n"));
            let (a, b) = payload.split_at(payload.len() / 2);
            let extension = if extras.contains(&Extra::LongChunkExtension) {
                format!(";x={}", "e".repeat(300))
            } else {
                String::new()
            };
            let pad = zeros(Extra::LongChunkSize);
            for chunk in [a, b] {
                if !chunk.is_empty() {
                    body.extend_from_slice(
                        format!("{pad}{:x}{extension}\r\n", chunk.len()).as_bytes(),
                    );
                    body.extend_from_slice(chunk);
                    body.extend_from_slice(b"\r\n");
                }
            }
            body.extend_from_slice(format!("{pad}0\r\n\r\n").as_bytes());
            if extras.contains(&Extra::BothFramings) {
                // Covers only the first chunk: a server reading the length
                // would take the rest for the next request.
                head.push_str(&format!("Content-Length: {}\r\n", body.len().min(5)));
            }
            if extras.contains(&Extra::LongLength) {
                head.push_str(&format!("Content-Length: {length_zeros}3\r\n"));
            }
            if extras.contains(&Extra::TwoLengths) {
                head.push_str("Content-Length: 3\r\nContent-Length: 4\r\n");
            }
            if extras.contains(&Extra::SameLengths) {
                head.push_str("Content-Length: 3\r\nContent-Length: 3\r\n");
            }
        }
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    (bytes, id)
}

// ---------------------------------------------------------------------------
// The upstream side of the oracle.
// ---------------------------------------------------------------------------

/// What the standard world's routes require of `method path`, or `Err` when
/// no route may match it.
enum Need {
    Public,
    All(&'static str),
    Any(&'static [&'static str]),
}

/// A lower-case method (which servers would upper-case), CONNECT and TRACE
/// are refused before any route or token is looked at.
fn refused_method(method: &str) -> bool {
    method.bytes().any(|b| b.is_ascii_lowercase()) || matches!(method, "CONNECT" | "TRACE")
}

fn need(method: &str, path: &str) -> Result<Need, String> {
    // Refused before any route: a method servers would upper-case, and
    // CONNECT and TRACE.
    if refused_method(method) {
        return Err(format!("no route forwards {method}"));
    }
    let path = &routed(path);
    if path == "/status" {
        return Ok(Need::Public);
    }
    if path == "/admin" || path.starts_with("/admin/") {
        return Ok(Need::All("admin"));
    }
    if let Some(rest) = path.strip_prefix("/orders/").filter(|r| !r.is_empty()) {
        // HEAD goes where GET goes.
        if matches!(method, "GET" | "HEAD") && !rest.contains('/') {
            return Ok(Need::All("orders:read"));
        }
        if matches!(method, "POST" | "PUT" | "DELETE") {
            return Ok(Need::Any(&["orders:write", "orders:admin"]));
        }
    }
    Err(format!("no route allows {method} {path}"))
}

/// The spelling routes are chosen by, as an upstream reads the path: each
/// segment without its `;` parameters, and `%XX` escapes of `!$&'()*+,=:@`
/// and of `[]^|"{}` decoded.
fn routed(path: &str) -> String {
    let segments: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|segment| {
            let mut segment = segment.split(';').next().unwrap_or("").to_owned();
            for c in "!$&'()*+,=:@[]^|\"{}".chars() {
                let escape = format!("%{:02X}", c as u32);
                segment = segment.replace(&escape, &c.to_string());
            }
            segment
        })
        .collect();
    let last = segments.len().saturating_sub(1);
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if !segment.is_empty() {
            out.push('/');
            out.push_str(segment);
        } else if i == last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A forwarded path must be canonical: no empty, `.` or `..` segment (nor
/// one before `;` parameters, which Tomcat and Jetty resolve), no
/// backslash, no refused escape.
fn canonical(path: &str) -> bool {
    path.starts_with('/')
        && !path[1..]
            .split('/')
            .map(|s| s.split(';').next().unwrap_or(s))
            .any(|s| s == "." || s == "..")
        && !path.contains("//")
        && !path.contains('\\')
        && !["%2f", "%5c", "%00", "%2e"]
            .iter()
            .any(|e| path.to_ascii_lowercase().contains(e))
}

fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Checks every upstream record not checked yet; returns how often each
/// case id was seen in them.
/// What [`Extra::ClientForwarding`] sends.
const CLIENT_FORWARDING: &str = "Forwarded: for=10.0.0.1;host=internal\r\nX-Real-IP: 10.0.0.1\r\nX_Forwarded_For: 10.0.0.1\r\nX_Forwarded_Proto: https\r\nX-Forwarded_Host: evil\r\nX-Real_IP: 10.0.0.2\r\nX-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\n";

/// Headers no forwarded request may carry, whatever the client sent.
const NEVER_UPSTREAM: [&str; 9] = [
    "forwarded",
    "x-real-ip",
    "x-real_ip",
    "x_forwarded_for",
    "x_forwarded_proto",
    "x-forwarded_host",
    "x-http-method-override",
    "x-method-override",
    "http2-settings",
];

fn check_upstream(lab: &Lab) -> Result<HashMap<u64, usize>, String> {
    let ledger = &mut *lab.ledger.borrow_mut();
    // Each record is judged once, so that a failing case shrinks on its own
    // records.
    let fresh = lab.world.upstream.seen_since(ledger.checked);
    ledger.checked += fresh.len();
    let mut counts = HashMap::new();
    for record in &fresh {
        let id: u64 = record
            .headers
            .get(CASE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("the upstream got a request without a case id: {record:?}"))?;
        let sent = ledger
            .sent
            .get(&id)
            .ok_or_else(|| format!("the upstream got an unknown case id {id}"))?;
        let count = counts.entry(id).or_insert(0usize);
        *count += 1;
        let what = format!("{} {} (case {id})", record.method, record.path_and_query);
        for name in NEVER_UPSTREAM {
            if record.headers.contains_key(name) {
                return Err(format!("{name} reached the upstream: {what}"));
            }
        }
        if values(&record.headers, "upgrade")
            .iter()
            .any(|v| !v.eq_ignore_ascii_case("websocket"))
        {
            return Err(format!(
                "an upgrade other than WebSocket was passed on: {what}"
            ));
        }
        if *count > 1 {
            return Err(format!("forwarded twice: {what}"));
        }
        check_forwarding(&record.headers, sent, lab.trusting, &what)?;
        if let Some(reason) = sent.never {
            return Err(format!("forwarded a request {reason}: {what}"));
        }
        if record.method != sent.method {
            return Err(format!("method changed from {}: {what}", sent.method));
        }
        let path = record
            .path_and_query
            .split_once('?')
            .map_or(record.path_and_query.as_str(), |(p, _)| p);
        if !canonical(path) {
            return Err(format!("forwarded a path not in canonical form: {what}"));
        }
        let identity = [
            ("x-auth-subject", sent.presented.map(Tok::sub)),
            (
                "x-auth-scopes",
                sent.presented.and_then(Tok::valid_scope).map(str::to_owned),
            ),
            (
                "x-auth-client-id",
                sent.presented.map(|_| "hostile".to_owned()),
            ),
        ];
        match lab
            .need(&record.method, path)
            .map_err(|e| format!("{e}: {what}"))?
        {
            Need::Public => {
                // Identity headers, if any, only from the token itself.
                for (name, own) in &identity {
                    for value in values(&record.headers, name) {
                        if Some(&value) != own.as_ref() {
                            return Err(format!("{name}: {value} reached the upstream: {what}"));
                        }
                    }
                }
            }
            need => {
                if sent.query_token {
                    return Err(format!(
                        "forwarded a token route's request with a token in the query: {what}"
                    ));
                }
                let Some(tok) = sent.presented else {
                    return Err(format!("forwarded without a valid token: {what}"));
                };
                if !covers(&need, Some(tok)) {
                    return Err(format!(
                        "forwarded with a token of scope {:?}: {what}",
                        tok.valid_scope()
                    ));
                }
                for (name, own) in &identity {
                    let got = values(&record.headers, name);
                    if got.len() != 1 || Some(&got[0]) != own.as_ref() {
                        return Err(format!("{name} was {got:?}, not the token's: {what}"));
                    }
                }
            }
        }
        check_destination(lab, record, sent, &what)?;
        check_members(lab, record, path, sent, &what)?;
    }
    Ok(counts)
}

/// Whether the valid token `presented` (if any) satisfies `need`.
fn covers(need: &Need, presented: Option<Tok>) -> bool {
    let scope = presented.and_then(Tok::valid_scope);
    match need {
        Need::Public => true,
        Need::All(s) => scope == Some(*s),
        Need::Any(list) => scope.is_some_and(|scope| list.contains(&scope)),
    }
}

/// A forwarded `COPY` or `MOVE` carries exactly one `Destination`, and the
/// path an upstream may read in it needs nothing that the request's token
/// does not cover.
fn check_destination(lab: &Lab, record: &Seen, sent: &Sent, what: &str) -> Result<(), String> {
    if !matches!(record.method.as_str(), "COPY" | "MOVE") {
        return Ok(());
    }
    let destinations = values(&record.headers, "destination");
    if destinations.len() != 1 {
        return Err(format!("Destinations {destinations:?} forwarded: {what}"));
    }
    for destination in &destinations {
        for keep_empty in [false, true] {
            let path = read_as_upstream(destination, keep_empty);
            let need = lab
                .need(&record.method, &path)
                .map_err(|e| format!("Destination {destination:?} forwarded ({e}): {what}"))?;
            if !covers(&need, sent.presented) {
                return Err(format!(
                "Destination {destination:?} ({path}) forwarded with a token of scope {:?}: {what}",
                sent.presented.and_then(Tok::valid_scope)
            ));
            }
        }
    }
    Ok(())
}

/// A forwarded WebDAV request that acts on a collection's members (a
/// `COPY` or `MOVE`, at its path and its `Destination`; a `PROPFIND` or
/// `LOCK` but with one `Depth: 0`) reaches no path below either that the
/// request's token does not cover, or that no route serves.
fn check_members(
    lab: &Lab,
    record: &Seen,
    path: &str,
    sent: &Sent,
    what: &str,
) -> Result<(), String> {
    let mut collections = vec![path.to_owned()];
    match record.method.as_str() {
        "COPY" | "MOVE" => {
            for destination in values(&record.headers, "destination") {
                for keep_empty in [false, true] {
                    collections.push(read_as_upstream(&destination, keep_empty));
                }
            }
        }
        "PROPFIND" | "LOCK" => {
            if let [depth] = values(&record.headers, "depth").as_slice() {
                if depth.trim() == "0" {
                    return Ok(());
                }
            }
        }
        _ => return Ok(()),
    }
    for collection in &collections {
        let above = lab.as_upstream_reads(collection);
        let above = above.trim_end_matches('/');
        for below in PATHS_BELOW {
            if !lab
                .as_upstream_reads(below)
                .strip_prefix(above)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
            {
                continue;
            }
            let covered = lab
                .need(&record.method, below)
                .is_ok_and(|need| covers(&need, sent.presented));
            if !covered {
                return Err(format!(
                    "{} of {collection} forwarded, reaching {below} with a token of scope {:?}: {what}",
                    record.method,
                    sent.presented.and_then(Tok::valid_scope)
                ));
            }
        }
    }
    Ok(())
}

/// The path the most lenient upstream reads in a `Destination`: its URI's
/// path (a fragment, query and authority cut off), every `%XX` decoded, `\`
/// read as `/`, each segment's `;` parameters dropped (Tomcat), `.`
/// segments dropped and `..` ones resolved; empty segments dropped first
/// (servers that merge slashes) or, with `keep_empty`, kept as segments that
/// a `..` removes (RFC 3986 5.2.4, WHATWG URL).
fn read_as_upstream(destination: &str, keep_empty: bool) -> String {
    let mut path = destination;
    // An absolute URI, or a network-path reference (`//host/path`, as Go's
    // x/net/webdav reads it): the path after the authority.
    for scheme in ["http://", "https://", "//"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            path = rest.find('/').map_or("/", |slash| &rest[slash..]);
        }
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for (i, segment) in decoded.split('/').enumerate() {
        match segment.split(';').next().unwrap_or_default() {
            "" if keep_empty && i > 0 => segments.push(""),
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    format!("/{}", segments.join("/"))
}

/// The forwarding headers the upstream got: the client's address last in
/// `X-Forwarded-For`; one `X-Forwarded-Proto`, the trusted proxy's if it
/// sent one valid value, else the client connection's (`http`); at most one
/// `X-Forwarded-Host`, the trusted proxy's if it sent one valid value, and
/// never a value only the client sent otherwise. In the trusting lab,
/// `X-Tenant-Id` never arrives, in any spelling.
fn check_forwarding(
    headers: &http::HeaderMap,
    sent: &Sent,
    trusting: bool,
    what: &str,
) -> Result<(), String> {
    let forwarded_for = values(headers, "x-forwarded-for");
    let last = forwarded_for
        .first()
        .and_then(|line| line.rsplit(',').next())
        .map(str::trim);
    if forwarded_for.len() != 1 || last != Some("127.0.0.1") {
        return Err(format!(
            "X-Forwarded-For was {forwarded_for:?}, not a list ending in the client: {what}"
        ));
    }
    let (trusted_proto, trusted_host) = if trusting {
        (sent.forwarded.0.as_deref(), sent.forwarded.1)
    } else {
        (None, None)
    };
    let proto = values(headers, "x-forwarded-proto");
    if proto != [trusted_proto.unwrap_or("http")] {
        return Err(format!(
            "X-Forwarded-Proto was {proto:?} (trusted proxy sent {trusted_proto:?}): {what}"
        ));
    }
    let host = values(headers, "x-forwarded-host");
    match trusted_host {
        Some(trusted) if host != [trusted] => {
            return Err(format!(
                "X-Forwarded-Host was {host:?}, not the trusted proxy's {trusted}: {what}"
            ));
        }
        Some(_) => {}
        None => {
            if host.len() > 1 || host.iter().any(|h| FORWARDED_HOSTS.contains(&h.as_str())) {
                return Err(format!(
                    "X-Forwarded-Host was {host:?}, from a client or proxy not trusted with it: {what}"
                ));
            }
        }
    }
    if trusting {
        for name in ["x-tenant-id", "x_tenant_id", "x-tenant_id", "x_tenant-id"] {
            if headers.contains_key(name) {
                return Err(format!(
                    "{name}, which forward.remove_headers names, reached the upstream: {what}"
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// One case.
// ---------------------------------------------------------------------------

struct Lab {
    world: World,
    /// The gateway trusts the test client as a proxy in front
    /// (`trusted_proxies`) and removes `X-Tenant-Id`
    /// (`forward.remove_headers`).
    trusting: bool,
    /// The gateway has a public `/{*page}` catch-all route after the
    /// standard ones, and `route_matching` set for an upstream that routes
    /// case-insensitively and ignores a trailing slash (Express, or Spring,
    /// whose Java case mapping also reads `ı`, `ſ` and the Kelvin sign as
    /// `i`, `s` and `k`).
    catch_all: bool,
    gateway: Gateway,
    tokens: Tokens,
    ledger: RefCell<Ledger>,
    _secret: tempfile::TempDir,
}

impl Lab {
    /// `path` as this lab's upstream reads it: each segment's `;`
    /// parameters dropped, unreserved escapes decoded, and lower-cased (as
    /// Java does) behind the catch-all gateway (which routes
    /// case-insensitively).
    fn as_upstream_reads(&self, path: &str) -> String {
        let path = routed(&decode_unreserved(path));
        if self.catch_all {
            java_folded(&path.to_ascii_lowercase())
        } else {
            path
        }
    }

    /// What this lab's routes require of `method path` as the upstream
    /// routes it. Behind the catch-all gateway it routes as Express or
    /// Spring does (case-insensitively, by Java's case mapping, a trailing
    /// slash ignored), and any path no other
    /// route takes is public.
    fn need(&self, method: &str, path: &str) -> Result<Need, String> {
        if !self.catch_all {
            return need(method, path);
        }
        // The gateway forwards unreserved characters decoded; an upstream
        // would decode `%41` as `A` too.
        let mut upstream_path = java_folded(&decode_unreserved(path).to_ascii_lowercase());
        if upstream_path.len() > 1 && upstream_path.ends_with('/') {
            upstream_path.pop();
        }
        match need(method, &upstream_path) {
            Err(_) if !refused_method(method) => Ok(Need::Public),
            need => need,
        }
    }
}

/// `path` with `%XX` escapes of unreserved characters (RFC 3986 2.3)
/// decoded.
/// A lower-cased path as a Java upstream routing case-insensitively reads
/// it: `ı`, `ſ` and the Kelvin sign are `i`, `s` and `k` to its case
/// mapping.
fn java_folded(lower_case: &str) -> String {
    lower_case
        .replace("%c4%b1", "i")
        .replace("%c5%bf", "s")
        .replace("%e2%84%aa", "k")
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out
}

async fn run_case(lab: &Lab, stream: &[Req]) -> Result<(), String> {
    // A chunked body the connection watch cannot read: the request after
    // it is refused (fail closed), however plain.
    let unread_body = |req: &Req| {
        matches!(req.body, Body::Chunked { .. }) && req.extras.contains(&Extra::LongChunkSize)
    };
    let after_unread = "after a chunked body the gateway cannot follow";
    let stream: Vec<Req> = stream
        .iter()
        .enumerate()
        .map(|(n, req)| {
            let mut req = req.clone();
            if n > 0 && stream.get(n - 1).is_some_and(unread_body) {
                req.plain = false;
            }
            req
        })
        .collect();
    let stream = &stream[..];
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    {
        let mut ledger = lab.ledger.borrow_mut();
        let mut previous_unread = false;
        for req in stream {
            let (rendered, id) = render(req, &lab.tokens, &mut ledger);
            if previous_unread {
                if let Some(sent) = ledger.sent.get_mut(&id) {
                    sent.never = sent.never.or(Some(after_unread));
                }
            }
            previous_unread = unread_body(req);
            bytes.extend_from_slice(&rendered);
            ids.push(id);
        }
        let sentinel = ledger.id(Sent {
            method: "GET".to_owned(),
            presented: None,
            never: previous_unread.then_some(after_unread),
            query_token: false,
            forwarded: (None, None),
        });
        ids.push(sentinel);
        bytes.extend_from_slice(
            format!("GET /status HTTP/1.1\r\nHost: gw.test\r\n{CASE}: {sentinel}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
    }
    let mut methods: Vec<&str> = stream.iter().map(|r| r.method).collect();
    methods.push("GET");

    let (received, clean) = exchange(lab.gateway.addr, &bytes, BOUND).await?;
    let (answers, cut) = answers(&received, &methods)?;
    // After a reset the last answer may be cut short; after a clean close
    // none may be.
    if cut && clean {
        return Err(format!(
            "a response cut short: {:?}",
            String::from_utf8_lossy(&received)
        ));
    }
    let answers: Vec<Answer> = answers.into_iter().filter(|a| !a.cut).collect();
    if answers.len() > methods.len() {
        return Err(format!(
            "{} answers for {} requests",
            answers.len(),
            methods.len()
        ));
    }
    // A clean close before the last request is answered is announced
    // (RFC 9112 9.6): the client then knows which requests to send again.
    if clean && answers.len() < methods.len() {
        check_announced_close(&answers, stream)?;
    }

    // A fresh client is served, and by then every forwarded request of the
    // stream has been recorded (each was recorded before it was answered).
    fresh_client_served(lab).await?;

    let counts = check_upstream(lab)?;
    // RFC 9112 9.6: nothing sent after a request that asked to close the
    // connection is processed, let alone forwarded.
    if let Some(first_close) = stream.iter().position(asks_to_close) {
        if answers.len() > first_close + 1 {
            return Err(format!(
                "{} answers, past request {} that asked to close: {:?}",
                answers.len(),
                first_close + 1,
                stream.get(first_close)
            ));
        }
        if let Some(id) = ids[first_close + 1..]
            .iter()
            .find(|id| counts.contains_key(id))
        {
            return Err(format!(
                "case {id} forwarded, sent after request {} that asked to close: {:?}",
                first_close + 1,
                stream.get(first_close)
            ));
        }
    }
    for (n, answer) in answers.iter().enumerate() {
        let method = stream.get(n).map_or("GET", |r| r.method);
        judge(answer, stream.get(n), method, ids[n], &counts, &lab.tokens)?;
    }
    Ok(())
}

/// The request asks for the connection to end with its answer:
/// `Connection: close`, or HTTP/1.0 (without `keep-alive`).
fn asks_to_close(req: &Req) -> bool {
    req.extras
        .iter()
        .any(|e| matches!(e, Extra::ConnectionClose | Extra::Http10))
}

/// The last of `answers` says the connection closes after it, or answers a
/// request that asked for that (`Connection: close`, or HTTP/1.0).
fn check_announced_close(answers: &[Answer], stream: &[Req]) -> Result<(), String> {
    let Some(last) = answers.last() else {
        return Err("the connection closed cleanly with no answer".to_owned());
    };
    let asked = stream.get(answers.len() - 1).is_some_and(asks_to_close);
    if says_close(&last.head) || asked {
        return Ok(());
    }
    Err(format!(
        "{} of {} requests answered, then a clean close the last answer did not announce: {} to {:?}",
        answers.len(),
        stream.len() + 1,
        last.head,
        stream.get(answers.len() - 1)
    ))
}

/// A fresh client gets 200 for a plain request (recorded under a case id).
async fn fresh_client_served(lab: &Lab) -> Result<(), String> {
    let liveness = lab.ledger.borrow_mut().id(Sent {
        method: "GET".to_owned(),
        presented: Some(Tok::Read),
        never: None,
        query_token: false,
        forwarded: (None, None),
    });
    let auth = format!("Bearer {}", lab.tokens.get(Tok::Read));
    let case = liveness.to_string();
    let reply = get(
        &lab.gateway.url("/orders/7"),
        &[("authorization", &auth), (CASE, &case)],
    )
    .await?;
    if reply.status != 200 {
        return Err(format!(
            "a fresh client got {} after the case",
            reply.status
        ));
    }
    Ok(())
}

/// The checks on one answer: `req` is the request it answers (`None` for
/// the sentinel and hand-built HTTP/2 requests), `method` its method,
/// `counts` how often the upstream got each case id.
fn judge(
    answer: &Answer,
    req: Option<&Req>,
    method: &str,
    id: u64,
    counts: &HashMap<u64, usize>,
    tokens: &Tokens,
) -> Result<(), String> {
    let what = format!("answer ({} to case {id}, {req:?})", answer.status);
    if matches!(answer.status, 500 | 502..=504) {
        return Err(format!("a gateway failure with a healthy upstream: {what}"));
    }
    let www = answer.header("www-authenticate").unwrap_or_default();
    if answer.status == 401 && !www.starts_with("Bearer") {
        return Err(format!("401 without WWW-Authenticate: Bearer: {what}"));
    }
    if answer.status == 403 && !www.contains("error=\"insufficient_scope\"") {
        return Err(format!("403 without insufficient_scope: {what}"));
    }
    let forwarded = counts.get(&id).copied().unwrap_or(0) == 1;
    if (200..300).contains(&answer.status) != forwarded {
        return Err(format!("forwarded: {forwarded}, but {what}"));
    }
    // A forwarded request's answer is its own upstream answer, which echoes
    // its case id: never another request's (a desynchronised connection).
    if forwarded && method != "HEAD" {
        let echoed = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("case")?.as_str().map(str::to_owned));
        if echoed != Some(id.to_string()) {
            return Err(format!(
                "the answer of another request (echoed case {echoed:?}): {what}"
            ));
        }
    }
    if req.is_some_and(|r| r.plain) && answer.status != 200 {
        return Err(format!("a plain, allowed request was refused: {what}"));
    }
    // A lower-case method, CONNECT and TRACE are refused before any route
    // or token is looked at.
    if req.is_some_and(|r| refused_method(r.method))
        && matches!(answer.status, 401 | 403 | 404 | 405)
    {
        return Err(format!("a method no route forwards was routed: {what}"));
    }
    // The gateway's own answers (the upstream's echo may repeat a query).
    let text = format!("{}{}", answer.head, String::from_utf8_lossy(&answer.body));
    if !forwarded && tokens.signatures().iter().any(|s| text.contains(s)) {
        return Err(format!("an answer contains a token: {what}"));
    }
    Ok(())
}

/// A gateway in front of the standard world and an introspection endpoint,
/// on a runtime of its own.
fn lab() -> (tokio::runtime::Runtime, Lab) {
    lab_with(false, false)
}

/// The gateway of [`lab`]; `trusting`: it also trusts the test client as a
/// proxy in front (`trusted_proxies`) and removes `X-Tenant-Id`;
/// `catch_all`: it has a public catch-all route and lax route matching.
fn lab_with(trusting: bool, catch_all: bool) -> (tokio::runtime::Runtime, Lab) {
    let runtime = runtime();
    let lab = runtime.block_on(async {
        let world = World::new().await;
        let introspection = introspection_endpoint().await;
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("introspection-secret");
        std::fs::write(&secret_file, "hostile-introspection-secret\n").unwrap();
        let mut config = config(&world, introspection, &secret_file);
        if catch_all {
            // `routes:` is the standard config's last key.
            config.push_str(
                "  - path: /{*page}\n    upstream: app\n    auth: none\nroute_matching:\n  case_sensitive: false\n  trailing_slash: ignore\n",
            );
        }
        if trusting {
            config.push_str(
                "trusted_proxies: [127.0.0.1/32]\nforward:\n  remove_headers: [X-Tenant-Id]\n",
            );
        }
        let gateway = Gateway::start(&config).await;
        let tokens = Tokens::mint(&world);
        Lab {
            world,
            trusting,
            catch_all,
            gateway,
            tokens,
            ledger: RefCell::new(Ledger::default()),
            _secret: secret,
        }
    });
    (runtime, lab)
}

/// Runs `case` on `default_cases` generated values (or
/// `SCOPEGATE_HOSTILE_CASES`) against one lab.
fn campaign<S: Strategy>(
    default_cases: u32,
    strategy: S,
    case: impl AsyncFn(&Lab, S::Value) -> Result<(), String>,
) {
    let (runtime, lab) = lab();
    run_campaign(&runtime, &lab, default_cases, strategy, case);
}

/// The same request streams from a client the gateway trusts as a proxy in
/// front: it keeps that proxy's one valid `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (and nothing else it sent in their place), and
/// removes what `forward.remove_headers` names in every spelling, while
/// failing closed as before.
#[test]
fn hostile_requests_from_a_trusted_proxy_fail_closed_too() {
    let (runtime, lab) = lab_with(true, false);
    // Every request carries up to two such headers besides its own extras.
    let streams = stream()
        .prop_flat_map(|stream| {
            let forwarding = prop::collection::vec(
                prop::collection::vec(forwarding_extra(), 0..=2),
                stream.len(),
            );
            (Just(stream), forwarding)
        })
        .prop_map(|(mut stream, forwarding)| {
            for (req, extras) in stream.iter_mut().zip(forwarding) {
                req.extras.extend(extras);
            }
            stream
        });
    run_campaign(&runtime, &lab, 256, streams, async |lab, stream| {
        run_case(lab, &stream).await
    });
}

/// The same request streams to a gateway with a public `/{*page}`
/// catch-all after the standard routes, in front of an upstream that routes
/// case-insensitively and ignores a trailing slash (`route_matching` says
/// so): no spelling of a scoped path reaches the upstream as that path
/// through the public route.
#[test]
fn hostile_requests_never_reach_a_scoped_path_through_a_public_catch_all() {
    let (runtime, lab) = lab_with(false, true);
    run_campaign(&runtime, &lab, 256, stream(), async |lab, stream| {
        run_case(lab, &stream).await
    });
}

#[test]
fn hostile_request_streams_fail_closed_and_the_gateway_keeps_serving() {
    campaign(512, stream(), async |lab, stream| {
        run_case(lab, &stream).await
    });
}

// ---------------------------------------------------------------------------
// The same requests over HTTP/2 (h2c), as far as HTTP/2 can carry them.
// ---------------------------------------------------------------------------

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// An h2c connection to the gateway (whatever authority the requests name).
async fn h2_connect(addr: SocketAddr) -> Result<H2Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `req` as an HTTP/2 request, or `None` where HTTP/2 has no way to say it
/// (authority-form and `*` targets, `CONNECT`, targets that are no URI).
/// Framing, version and connection-level oddities have no HTTP/2 form and
/// are left out; the body goes as DATA with its length.
fn h2_request(
    req: &Req,
    tokens: &Tokens,
    ledger: &mut Ledger,
) -> Option<(http::Request<http_body_util::Full<bytes::Bytes>>, u64)> {
    let target = target(req, tokens);
    let uri = if target.starts_with('/') {
        format!("http://gw.test{target}")
    } else if target.starts_with("http://") {
        target
    } else {
        return None;
    };
    let method = http::Method::from_bytes(req.method.as_bytes()).ok()?;
    if method == http::Method::CONNECT {
        return None;
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    for value in req.auth.values(tokens) {
        builder = builder.header("authorization", value);
    }
    for extra in &req.extras {
        builder = match extra {
            Extra::SpoofIdentity => builder
                .header("x-auth-subject", SPOOFED)
                .header("x-auth-scopes", format!("admin {SPOOFED}"))
                .header("x-auth-client-id", SPOOFED),
            Extra::ForwardedFor => builder
                .header("x-forwarded-for", "10.0.0.1")
                .header("x-auth-subject", SPOOFED),
            Extra::EvilHost => builder.header("host", "evil.example"),
            Extra::ExpectContinue => builder.header("expect", "100-continue"),
            Extra::LongHeader => builder.header("x-long", "a".repeat(70_000)),
            Extra::ClientForwarding => builder
                .header("forwarded", "for=10.0.0.1;host=internal")
                .header("x-real-ip", "10.0.0.1")
                .header("x_forwarded_for", "10.0.0.1")
                .header("x-http-method-override", "DELETE"),
            Extra::ForwardedProto(n) => {
                builder.header("x-forwarded-proto", FORWARDED_PROTOS[usize::from(*n)])
            }
            Extra::ForwardedHost(n) => {
                builder.header("x-forwarded-host", FORWARDED_HOSTS[usize::from(*n)])
            }
            Extra::TenantId(n) => builder.header(TENANT_ID_NAMES[usize::from(*n)], SPOOFED),
            Extra::Grpc(n) => builder.header("content-type", GRPC_TYPES[usize::from(*n)]),
            Extra::Destination(n) => builder.header("destination", DESTINATIONS[usize::from(*n)]),
            Extra::Depth(n) => builder.header("depth", DEPTHS[usize::from(*n)]),
            _ => builder,
        };
    }
    let mut request = builder.body(http_body_util::Full::default()).ok()?;
    let id = ledger.id(Sent {
        method: req.method.to_owned(),
        presented: req.auth.presented(),
        never: None,
        query_token: req.auth.query_token(),
        forwarded: trusted_forwarding(&req.extras),
    });
    let body = payload(req, tokens, ledger);
    *request.body_mut() = http_body_util::Full::new(bytes::Bytes::from(body));
    request
        .headers_mut()
        .insert(CASE, http::HeaderValue::from(id));
    Some((request, id))
}

async fn run_case_h2(lab: &Lab, stream: &[Req]) -> Result<(), String> {
    use http_body_util::BodyExt;
    let mut answered = Vec::new();
    let mut sender = h2_connect(lab.gateway.addr).await?;
    let mut ended = false;
    for req in stream {
        let Some((request, id)) = h2_request(req, &lab.tokens, &mut lab.ledger.borrow_mut()) else {
            continue;
        };
        if sender.is_closed() || ended {
            sender = h2_connect(lab.gateway.addr).await?;
        }
        // 70 000 bytes of header fields are over `h2`'s abuse limit: the
        // connection ends with GOAWAY, which the client may not have read
        // when it sends the next request. That one goes on a new connection.
        ended = req.extras.contains(&Extra::LongHeader);
        let response = tokio::time::timeout(BOUND, sender.send_request(request))
            .await
            .map_err(|_| format!("no HTTP/2 answer within {BOUND:?} to {req:?}"))?;
        // A reset stream (a request HTTP/2 itself refuses) has no answer;
        // a plain one must have one.
        let response = match response {
            Ok(response) => response,
            Err(e) if req.plain => return Err(format!("a plain request failed: {e}: {req:?}")),
            Err(_) => continue,
        };
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(BOUND, body.collect())
            .await
            .map_err(|_| format!("no HTTP/2 body within {BOUND:?} to {req:?}"))?
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let mut head = format!("HTTP/2 {}\r\n", parts.status.as_u16());
        for (name, value) in &parts.headers {
            head.push_str(&format!(
                "{name}: {}\r\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let status = grpc_refusal_status(req, &parts, &body)?.unwrap_or(parts.status.as_u16());
        let answer = Answer {
            status,
            head,
            body,
            cut: false,
        };
        answered.push((req, id, answer));
    }
    let counts = check_upstream(lab)?;
    for (req, id, answer) in &answered {
        judge(answer, Some(req), req.method, *id, &counts, &lab.tokens)?;
    }
    Ok(())
}

/// A refusal in gRPC's form (HTTP 200, no body, `grpc-status`) must come
/// for a gRPC call and only for one; it is read back as the HTTP status the
/// gateway counts, for [`judge`]. `None`: not such a refusal.
fn grpc_refusal_status(
    req: &Req,
    parts: &http::response::Parts,
    body: &[u8],
) -> Result<Option<u16>, String> {
    let call = req.method == "POST"
        && req
            .extras
            .iter()
            .any(|e| matches!(e, Extra::Grpc(n) if usize::from(*n) < GRPC_CALL_TYPES));
    let Some(grpc_status) = parts.headers.get("grpc-status") else {
        return Ok(None);
    };
    let what = format!("{:?} {body:?} to {req:?}", parts.headers);
    if !call {
        return Err(format!("a gRPC refusal for no gRPC call: {what}"));
    }
    if parts.status != 200
        || !body.is_empty()
        || parts
            .headers
            .get("content-type")
            .is_none_or(|v| v != "application/grpc")
        || !parts.headers.contains_key("grpc-message")
    {
        return Err(format!("not a trailers-only gRPC refusal: {what}"));
    }
    let challenge = parts
        .headers
        .get("www-authenticate")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let status = match grpc_status.as_bytes() {
        b"16"
            if challenge
                .as_ref()
                .is_some_and(|c| c.contains("invalid_request")) =>
        {
            400
        }
        b"16" => 401,
        b"7" => 403,
        b"12" => 404,
        b"13" => 400,
        b"2" => 408,
        b"14" => 503,
        other => return Err(format!("grpc-status {other:?}: {what}")),
    };
    Ok(Some(status))
}

#[test]
fn hostile_requests_over_http2_fail_closed_too() {
    campaign(128, stream(), async |lab, stream| {
        run_case_h2(lab, &stream).await
    });
}

// ---------------------------------------------------------------------------
// Below the HTTP/2 library: hand-built frames and header blocks.
// ---------------------------------------------------------------------------

#[path = "hostile/frames.rs"]
mod frames;
