//! The proxy end to end over real sockets: path canonicalisation and matching,
//! header hygiene, framing and Host checks, upstream failures, streaming bodies
//! both ways, protocol upgrades, HTTP/2 on both sides, graceful shutdown and
//! the request metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// Every scope the standard world's routes ask for.
const ALL_SCOPES: &str = "orders:read orders:write admin";

/// Generous bound for anything that should happen promptly; a hang fails the
/// test instead of blocking it.
const BOUND: Duration = Duration::from_secs(20);

/// A raw HTTP/1.1 request with `Host: gw.test` and `Connection: close` (so the
/// gateway ends the connection after answering and [`raw`] returns).
fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The standard world's config with its upstream replaced by `addr`.
fn config_for(world: &World, addr: SocketAddr) -> String {
    world
        .config()
        .replace(&world.upstream.addr.to_string(), &addr.to_string())
}

/// Polls `check` until it holds (bounded: panics after [`BOUND`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of one sample line (`name{labels} value`) of the metrics text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// 64-bit FNV-1a, to compare bodies without keeping them.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

// ---------------------------------------------------------------------------
// 1. Paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn equivalent_spellings_are_forwarded_in_canonical_form() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));

    // (request target, what the upstream must see)
    let cases = [
        ("/orders/42", "/orders/42"),
        ("/orders/%34%32", "/orders/42"),
        ("/%6Frders/42", "/orders/42"),
        ("/orders/42?a=%2F&b=..", "/orders/42?a=%2F&b=.."),
        ("/status/../orders/42?a=%2F&b=..", "/orders/42?a=%2F&b=.."),
        ("/x/%2e%2e/orders/42?a=%2F&b=..", "/orders/42?a=%2F&b=.."),
        ("/x/%2E%2E/orders/42", "/orders/42"),
        ("/x/.%2e/orders/42", "/orders/42"),
        ("//orders//42", "/orders/42"),
        ("/orders/./42", "/orders/42"),
        ("/a/b/../../orders/42", "/orders/42"),
        ("/orders/%7e42", "/orders/~42"),
        ("/orders/a%3ab", "/orders/a%3Ab"),
        ("/orders/a%20b", "/orders/a%20b"),
    ];
    for (i, (target, forwarded)) in cases.iter().enumerate() {
        let reply = raw_reply(
            gw.addr,
            &request("GET", target, &[("Authorization", &auth)]),
        )
        .await;
        assert_eq!(reply.status, 200, "{target}: {reply:?}");
        assert_eq!(world.upstream.count(), i + 1, "{target}");
        let seen = world.upstream.last();
        assert_eq!(seen.method, "GET", "{target}");
        assert_eq!(seen.path_and_query, *forwarded, "{target}");
    }
}

/// A path with `;` parameters or `%3A`-style escapes is read one way by
/// servers that drop the first or decode the second (Tomcat, Go, Spring),
/// another by servers that end the path at its first `;` (find-my-way, so
/// Fastify) and another by servers that keep them (Express): where the readings
/// are different routes, it is refused, whichever route is the weaker;
/// where they are one route, it passes that route's checks and goes
/// upstream as received.
#[tokio::test]
async fn paths_two_kinds_of_server_read_as_different_routes_are_refused() {
    let world = World::new().await;
    let config = world.config().replace(
        "routes:\n",
        "routes:\n  - path: /v1/docs:purge\n    methods: [POST]\n    upstream: app\n    scopes: [admin]\n  - path: /api/{version}/cache:flush\n    methods: [POST]\n    upstream: app\n    scopes: [admin]\n  - path: \"/search/a[b]\"\n    upstream: app\n    scopes: [admin]\n  - path: /public/{*rest}\n    upstream: app\n    auth: none\n  - path: /{tenant}/{*rest}\n    upstream: app\n    scopes: [orders:read]\n  - path: /{*page}\n    upstream: app\n    auth: none\n",
    );
    let gw = Gateway::start(&config).await;
    let admin = bearer(&world.token(ALL_SCOPES));
    for (method, target) in [
        // Tomcat: /admin/users (admin); Express: the public catch-all.
        ("GET", "/admin;jsessionid=1/users"),
        ("GET", "/admin;x"),
        // Go: the purge route (admin); Express: the public catch-all.
        ("POST", "/v1/docs%3Apurge"),
        ("POST", "/v1/docs%3apurge;x"),
        // Tomcat: the public route; Express: the tenant route.
        ("GET", "/public;x/secret"),
        // A segment of parameters only: none for Tomcat, `{version}` for
        // Go, which also decodes `%3A` and runs cache:flush (admin).
        ("POST", "/api/;v/cache%3Aflush"),
        ("GET", "/admin/;x/users"),
        // Go: the bracket route (admin); Express: the tenant route.
        ("GET", "/search/a%5Bb%5D"),
        ("GET", "/search/a%5bb]"),
        // find-my-way (Fastify), which ends the path at its first `;`:
        // `/orders/{id}`; Tomcat and Express: the tenant route.
        ("GET", "/orders/42;x/y"),
        // find-my-way: the public catch-all; the others: the tenant route.
        ("GET", "/docs;x/orders/1"),
    ] {
        for auth in [None, Some(admin.as_str())] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let reply = raw_reply(gw.addr, &request(method, target, &headers)).await;
            assert_eq!(reply.status, 400, "{method} {target}: {reply:?}");
            assert_eq!(reply.error().as_deref(), Some("invalid_request"));
        }
    }
    assert_eq!(world.upstream.count(), 0);

    // One route either way: its checks, and the spelling received goes on.
    for target in ["/admin/x;y/users", "/search/a[b]"] {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(reply.status, 401, "{target}: {reply:?}");
    }
    for (target, forwarded) in [
        ("/admin/x;y/users", "/admin/x;y/users"),
        ("/orders/7;v=1", "/orders/7;v=1"),
        ("/orders/a%3ab", "/orders/a%3Ab"),
        ("/search/a[b]", "/search/a[b]"),
        ("/orders/a%5Bb%5D", "/orders/a%5Bb%5D"),
    ] {
        let reply = raw_reply(
            gw.addr,
            &request("GET", target, &[("Authorization", &admin)]),
        )
        .await;
        assert_eq!(reply.status, 200, "{target}: {reply:?}");
        assert_eq!(world.upstream.last().path_and_query, forwarded);
    }
}

/// `config` with a public `/{*page}` route first, where a path that no
/// other route takes ends up.
fn beside_a_public_catch_all(config: &str) -> String {
    config.replace(
        "routes:\n",
        "routes:\n  - path: /{*page}\n    upstream: app\n    auth: none\n",
    )
}

/// With `route_matching` set to what an Express or ASP.NET Core upstream
/// does (case ignored, a trailing slash ignored), `/ADMIN` and `/admin/`
/// are held to `/admin`'s scopes instead of reaching a public catch-all;
/// by default they are other paths.
#[tokio::test]
async fn route_matching_can_fold_case_and_trailing_slash_like_the_upstream() {
    let world = World::new().await;
    let with_catch_all = beside_a_public_catch_all(&world.config());
    let folding = with_catch_all.replace(
        "routes:\n",
        "route_matching:\n  case_sensitive: false\n  trailing_slash: ignore\nroutes:\n",
    );
    let variants = ["/ADMIN", "/admin/", "/Admin/Users/3", "/Orders/42"];

    let gw = Gateway::start(&folding).await;
    for target in variants {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(reply.status, 401, "{target}: {reply:?}");
    }
    assert_eq!(world.upstream.count(), 0);
    let admin = bearer(&world.token("admin"));
    let reply = raw_reply(
        gw.addr,
        &request("GET", "/ADMIN/", &[("Authorization", &admin)]),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Forwarded as received.
    assert_eq!(world.upstream.last().path_and_query, "/ADMIN/");
    drop(gw);

    let gw = Gateway::start(&with_catch_all).await;
    for target in variants {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(
            reply.status, 200,
            "{target} is another path by default: {reply:?}"
        );
    }
}

/// Where routing ignores case, a character that a server folding case by
/// Unicode reads as ASCII letters (Java: `ı` is `I`, `ſ` is `S`, the
/// Kelvin sign is `k`) is refused: Spring would route `/adm%C4%B1n` as
/// `/admin`, where folding ASCII alone left it the public catch-all's. By
/// default (case kept) they are other paths, as to the upstream.
#[tokio::test]
async fn case_folding_into_ascii_is_refused_where_case_is_ignored() {
    let world = World::new().await;
    let with_catch_all = beside_a_public_catch_all(&world.config());
    let folding = with_catch_all.replace(
        "routes:\n",
        "route_matching:\n  case_sensitive: false\nroutes:\n",
    );
    let variants = [
        "/adm%C4%B1n",
        "/ADM%c4%b1N/users",
        "/order%C5%BF/42",
        "/%E2%84%AA",
        "/stra%C3%9Fe",
    ];

    let gw = Gateway::start(&folding).await;
    for target in variants {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(reply.status, 400, "{target}: {reply:?}");
        assert_eq!(
            reply.error().as_deref(),
            Some("invalid_request"),
            "{target}"
        );
    }
    assert_eq!(world.upstream.count(), 0);
    // Other characters beyond ASCII are routed as before.
    let reply = raw_reply(gw.addr, &request("GET", "/caf%C3%A9", &[])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    drop(gw);

    let gw = Gateway::start(&with_catch_all).await;
    for target in variants {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(
            reply.status, 200,
            "{target} is another path by default: {reply:?}"
        );
    }
}

#[tokio::test]
async fn ambiguous_paths_are_refused_with_400() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token(ALL_SCOPES));

    // (request target, JSON `error`, or None where hyper refuses the request
    // line itself and answers with an empty body)
    let cases: &[(&str, Option<&str>)] = &[
        ("/orders/a%2Fb", Some("invalid_request")),
        ("/orders/a%2fb", Some("invalid_request")),
        ("/orders/..%2f..%2fadmin", Some("invalid_request")),
        ("/orders/a%5Cb", Some("invalid_request")),
        ("/orders/a%5cb", Some("invalid_request")),
        ("/orders/a%00", Some("invalid_request")),
        ("/orders/a%0Ab", Some("invalid_request")),
        ("/orders/a%1fb", Some("invalid_request")),
        ("/orders/a%7F", Some("invalid_request")),
        ("/orders/a%zz", Some("invalid_request")),
        ("/orders/a%4", Some("invalid_request")),
        ("/orders/a\\b", Some("invalid_request")),
        ("/status\\..\\admin", Some("invalid_request")),
        // Servers that drop `;` parameters before dot segments (Tomcat,
        // Jetty) would resolve these to /admin/users.
        ("/orders/..;/admin/users", Some("invalid_request")),
        // Tomcat's /status, Express's no route at all.
        ("/status;x", Some("invalid_request")),
        (
            "/orders/7/%2e%2e;x=1/../admin/users",
            Some("invalid_request"),
        ),
        ("/orders/a\x01b", None),
        ("/orders/a\x7fb", None),
        ("/orders/a\tb", None),
    ];
    for (target, error) in cases {
        let reply = raw_reply(
            gw.addr,
            &request("GET", target, &[("Authorization", &auth)]),
        )
        .await;
        assert_eq!(reply.status, 400, "{target:?}: {reply:?}");
        match error {
            Some(code) => {
                assert_eq!(reply.error().as_deref(), Some(*code), "{target:?}");
                // The description never echoes the path.
                assert!(!reply.body.contains("orders"), "{target:?}: {}", reply.body);
            }
            None => assert_eq!(reply.error(), None, "{target:?}: {reply:?}"),
        }
    }
    assert_eq!(world.upstream.count(), 0);
}

/// A method with lower-case letters is refused before any route: servers
/// that upper-case it (Django, Flask) would run the DELETE handler for a
/// `delete` that an any-method route let through.
#[tokio::test]
async fn lower_case_methods_are_refused_with_400() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token(ALL_SCOPES));
    for (method, target) in [
        ("delete", "/status"),
        ("Delete", "/admin/users/3"),
        ("get", "/orders/42"),
        ("pUT", "/orders/42"),
    ] {
        let reply = raw_reply(
            gw.addr,
            &request(method, target, &[("Authorization", &auth)]),
        )
        .await;
        assert_eq!(reply.status, 400, "{method} {target}: {reply:?}");
        assert_eq!(reply.error().as_deref(), Some("invalid_request"));
    }
    assert_eq!(world.upstream.count(), 0);
    // Upper case still goes through.
    let reply = raw_reply(gw.addr, &request("DELETE", "/status", &[])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// `forward.remove_headers` names headers the upstream trusts that scopegate
/// does not know of: removed from every request (in every spelling), on
/// every route, wherever they are listed; names that frame or route the
/// request cannot be listed.
#[tokio::test]
async fn listed_headers_are_removed_on_every_route() {
    let world = World::new().await;
    let config = world.config().replace(
        "routes:\n",
        "forward:\n  remove_headers: [X-Tenant-Id, X-Forwarded-For]\nroutes:\n  - path: /partner\n    upstream: app\n    scopes: [orders:read]\n    forward:\n      remove_headers: [X-Partner-Role]\n",
    );
    assert!(config.contains("X-Partner-Role"));
    let gw = Gateway::start(&config).await;
    let auth = bearer(&world.token("orders:read"));
    let sent = [
        ("Authorization", auth.as_str()),
        ("X-Tenant-Id", "acme"),
        ("x_tenant_id", "acme"),
        ("X-Partner-Role", "admin"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Kept", "yes"),
    ];
    for path in ["/partner", "/orders/42", "/status"] {
        let reply = raw_reply(gw.addr, &request("GET", path, &sent)).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let seen = world.upstream.last();
        for name in ["x-tenant-id", "x_tenant_id", "x-partner-role"] {
            assert!(seen.headers.get(name).is_none(), "{path}: {name}");
        }
        assert_eq!(seen.headers["x-kept"], "yes", "{path}");
        // A client's chain the operator removes is not joined in: the
        // upstream gets the peer's address alone.
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "{path}");
    }

    for name in [
        "Host",
        "Content-Length",
        "content_length",
        "Authorization",
        "bad name",
    ] {
        let refused = world.config().replace(
            "routes:\n",
            &format!("forward:\n  remove_headers: [\"{name}\"]\nroutes:\n"),
        );
        assert_config_refused(&refused, name);
    }
}

/// `CONNECT` and `TRACE` are refused before any route, also on routes that
/// allow every method: forwarded, a CONNECT an upstream took would leave
/// the client with a bodiless 200, and a TRACE echoes the identity headers.
/// The connection ends with the answer (a CONNECT's client may already be
/// sending tunnel bytes).
#[tokio::test]
async fn connect_and_trace_are_refused_with_501() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token(ALL_SCOPES));
    // CONNECT's own form (host and port) too: refused before the target.
    for (method, target, status, error) in [
        ("CONNECT", "/status", 501, "not_implemented"),
        ("CONNECT", "upstream.test:443", 501, "not_implemented"),
        ("TRACE", "/status", 501, "not_implemented"),
        ("TRACE", "/orders/42", 501, "not_implemented"),
    ] {
        let reply = raw_reply(
            gw.addr,
            &request(method, target, &[("Authorization", &auth)]),
        )
        .await;
        assert_eq!(reply.status, status, "{method} {target}: {reply:?}");
        assert_eq!(reply.error().as_deref(), Some(error));
        assert_eq!(reply.header("connection").as_deref(), Some("close"));
    }
    assert_eq!(world.upstream.count(), 0);
    // Other methods on the any-method route still go through.
    let reply = raw_reply(gw.addr, &request("OPTIONS", "/status", &[])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn prefix_tricks_unknown_paths_and_wrong_methods() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;

    // No token anywhere. Not a route: 404 whatever the token would be.
    let not_found = [
        "/administrator",
        "/Admin",
        "/ADMIN/x",
        "/admin/",
        "/status/",
        "/status%3Bx",
        "/status%3bx",
        "/Status",
        "/nope",
        "/",
        "/orders",
        "/orders/",
    ];
    for target in not_found {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(reply.status, 404, "{target}: {reply:?}");
        assert_eq!(reply.error().as_deref(), Some("not_found"), "{target}");
    }

    // Protected routes, however spelled: 401 with the bare challenge.
    let needs_token = [
        ("GET", "/admin"),
        ("GET", "/admin/x"),
        ("DELETE", "/admin/x"),
        ("GET", "/%61dmin"),
        ("GET", "//admin"),
        ("GET", "/status/../admin"),
        ("GET", "/status/%2e%2e/admin/users"),
        ("GET", "/orders/42"),
        ("POST", "/orders/42"),
    ];
    for (method, target) in needs_token {
        let reply = raw_reply(gw.addr, &request(method, target, &[])).await;
        assert_eq!(reply.status, 401, "{method} {target}: {reply:?}");
        assert_eq!(reply.error().as_deref(), Some("unauthorized"));
        assert_eq!(
            reply.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"scopegate\""),
            "{method} {target}"
        );
    }

    // A route has the path but not the method: 405 listing every method of
    // every pattern that matches (HEAD wherever GET is).
    let wrong_method = [
        ("PATCH", "/orders/42", "DELETE, GET, HEAD, POST, PUT"),
        ("GET", "/orders/42/items", "DELETE, POST, PUT"),
        ("HEAD", "/orders/42/items", "DELETE, POST, PUT"),
        ("PATCH", "/orders/42/items", "DELETE, POST, PUT"),
    ];
    for (method, target, allow) in wrong_method {
        let reply = raw_reply(gw.addr, &request(method, target, &[])).await;
        assert_eq!(reply.status, 405, "{method} {target}: {reply:?}");
        // An answer to HEAD has no body.
        let error = (method != "HEAD").then_some("method_not_allowed");
        assert_eq!(reply.error().as_deref(), error);
        assert_eq!(reply.header("allow").as_deref(), Some(allow));
    }
    assert_eq!(world.upstream.count(), 0);

    // With an admin token the trailing-slash spelling is still not a route,
    // and a token without `admin` cannot reach /admin through a detour.
    let admin = bearer(&world.token("admin"));
    let reply = raw_reply(
        gw.addr,
        &request("GET", "/admin/", &[("Authorization", &admin)]),
    )
    .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.error().as_deref(), Some("not_found"));
    let reader = bearer(&world.token("orders:read"));
    let reply = raw_reply(
        gw.addr,
        &request("GET", "/orders/../admin", &[("Authorization", &reader)]),
    )
    .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.error().as_deref(), Some("insufficient_scope"));
    assert_eq!(world.upstream.count(), 0);

    // The public route itself is forwarded as spelled.
    let reply = raw_reply(gw.addr, &request("GET", "/status", &[])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(world.upstream.last().path_and_query, "/status");
}

// ---------------------------------------------------------------------------
// 2. Headers
// ---------------------------------------------------------------------------

/// Sends `GET /orders/42` with `headers` over a raw connection, checks that
/// it was forwarded (200), and returns what the upstream saw.
async fn forwarded_get(gw: &Gateway, world: &World, headers: &[(&str, &str)]) -> Seen {
    let reply = raw_reply(gw.addr, &request("GET", "/orders/42", headers)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    world.upstream.last()
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));

    let spoofs: &[(&str, &str)] = &[
        ("X-Auth-Subject", "mallory"),
        ("x-auth-subject", "mallory2"),
        ("X_Auth_Subject", "mallory3"),
        ("x_auth_scopes", "admin"),
        ("X-Auth-Scopes", "admin"),
        ("X-Auth-Client-Id", "evil"),
        ("X_AUTH_CLIENT_ID", "evil2"),
        // Mixed spellings: CGI-style servers read them as the same name.
        ("X-Auth_Subject", "mallory4"),
        ("x_auth-scopes", "admin2"),
        // PHP reads `.` in a variable name as `_`.
        ("X-Auth.Subject", "mallory5"),
        ("x.auth.scopes", "admin3"),
    ];
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(spoofs);
    let reply = raw_reply(gw.addr, &request("GET", "/orders/42", &headers)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = world.upstream.last();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("x-auth-subject"), ["alice"]);
    assert_eq!(all("x-auth-scopes"), ["orders:read"]);
    assert_eq!(all("x-auth-client-id"), ["billing"]);
    for underscored in [
        "x_auth_subject",
        "x_auth_scopes",
        "x_auth_client_id",
        "x-auth_subject",
        "x_auth-scopes",
        "x-auth.subject",
        "x.auth.scopes",
    ] {
        assert!(all(underscored).is_empty(), "{underscored}: {seen:?}");
    }

    // A public route has no identity, and strips the spoofs all the same.
    let reply = raw_reply(gw.addr, &request("GET", "/status", spoofs)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, "/status");
    for (name, _) in spoofs {
        assert!(!seen.headers.contains_key(*name), "{name}: {seen:?}");
    }
    assert_eq!(world.upstream.count(), 2);
}

/// A route may name more identity headers than the handful the forwarder
/// makes room for ahead: each is set all the same.
#[tokio::test]
async fn every_identity_header_a_route_names_is_set() {
    let world = World::new().await;
    let names = [
        ("X-Subject", "sub"),
        ("X-Issuer", "iss"),
        ("X-Audience", "aud"),
        ("X-Client", "client_id"),
        ("X-Scope", "scope"),
        ("X-Issued", "iat"),
        ("X-Expires", "exp"),
        ("X-Groups", "groups"),
    ];
    let map = names
        .iter()
        .map(|(header, claim)| format!("{header}: {claim}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = world.config().replace(
        "routes:\n",
        &format!("routes:\n  - path: /everyone\n    upstream: app\n    scopes: [orders:read]\n    forward:\n      identity_headers: {{ {map} }}\n"),
    );
    let gw = Gateway::start(&config).await;
    let mut claims = claims("orders:read");
    claims["groups"] = serde_json::json!(["billing"]);
    let token = world.key.mint(&claims).unwrap();
    let reply = get_with_token(&gw.url("/everyone"), &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = world.upstream.last();
    for (header, claim) in names {
        let want = match &claims[claim] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Array(_) => "billing".to_owned(),
            other => other.to_string(),
        };
        assert_eq!(
            seen.headers.get(header).map(|v| v.to_str().unwrap()),
            Some(want.as_str()),
            "{header}"
        );
    }
}

/// A claim whose header value would read as another (blanks at an end,
/// which parsers trim; array elements holding a blank, which would read as
/// two) sets no header at all; plain ones still do.
#[tokio::test]
async fn ambiguous_claim_values_set_no_identity_header() {
    let world = World::new().await;
    let config = world.config().replace(
        "routes:\n",
        "routes:\n  - path: /groups\n    upstream: app\n    scopes: [orders:read]\n    forward:\n      identity_headers: { X-Groups: groups, X-Subject: sub }\n",
    );
    let gw = Gateway::start(&config).await;
    let cases = [
        (
            serde_json::json!(" alice"),
            serde_json::json!(["billing", "admin"]),
            None,
            Some("billing admin"),
        ),
        (
            serde_json::json!("alice\t"),
            serde_json::json!(["billing admin"]),
            None,
            None,
        ),
        (
            serde_json::json!("alice"),
            serde_json::json!(["billing", ""]),
            Some("alice"),
            None,
        ),
        (
            serde_json::json!("al ice"),
            serde_json::json!(["bil\tling"]),
            Some("al ice"),
            None,
        ),
        // A number passes as JSON writes it, unless it is past what a
        // parser holds exactly (2^64 arrives as a float, 1.8446744073709552e19).
        (
            serde_json::json!(42),
            serde_json::json!(["billing"]),
            Some("42"),
            Some("billing"),
        ),
        (
            serde_json::json!(18_446_744_073_709_551_616.0_f64),
            serde_json::json!(["billing"]),
            None,
            Some("billing"),
        ),
    ];
    for (sub, groups, want_subject, want_groups) in cases {
        let mut claims = claims("orders:read");
        claims["sub"] = sub.clone();
        claims["groups"] = groups.clone();
        let token = world.key.mint(&claims).unwrap();
        let reply = get_with_token(&gw.url("/groups"), &token).await;
        assert_eq!(reply.status, 200, "{sub} {groups}: {}", reply.text());
        let seen = world.upstream.last();
        let value = |name: &str| {
            seen.headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(value("x-subject").as_deref(), want_subject, "{sub}");
        assert_eq!(value("x-groups").as_deref(), want_groups, "{groups}");
    }
}

#[tokio::test]
async fn every_route_strips_identity_forwarding_and_method_override_headers() {
    let world = World::new().await;
    let config = world.config().replace(
        "routes:\n",
        "routes:\n  - path: /partner\n    upstream: app\n    scopes: [orders:read]\n    forward:\n      identity_headers: { X-Partner: sub }\n",
    );
    let gw = Gateway::start(&config).await;
    let auth = bearer(&world.token("orders:read"));
    let spoofs = [
        ("Authorization", auth.as_str()),
        ("X-Auth-Subject", "mallory"),
        ("X-Auth-Scopes", "admin"),
        ("X-Partner", "mallory"),
        ("X_Partner", "mallory"),
        ("Forwarded", "for=10.0.0.1;proto=https;host=internal"),
        ("X-Real-IP", "10.0.0.1"),
        ("X_Forwarded_For", "10.0.0.1"),
        ("X_Forwarded_Proto", "https"),
        ("X_Forwarded_Host", "internal"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
    ];
    // Scheme, port, prefix, path and address claims that frameworks trust
    // (gunicorn, Rack, Spring, Symfony), in both spellings.
    let trusted_elsewhere = [
        "X-Forwarded-Ssl",
        "X-Forwarded-Scheme",
        "X-Forwarded-Protocol",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Forwarded-Server",
        "X-Forwarded-Uri",
        "X-Original-URL",
        "X-Rewrite-URL",
        "Front-End-Https",
        "True-Client-IP",
        "X-Client-IP",
        // gunicorn's forwarder_headers: the mount prefix it strips from the
        // path, the path itself, and an authenticated user.
        "SCRIPT-NAME",
        "Path-Info",
        "Remote-User",
        "X-Script-Name",
        // Users and tokens other auth proxies vouch for (oauth2-proxy,
        // Grafana's auth proxy, Apache, Envoy's client certificate), which
        // apps moved from behind them still read.
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Groups",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Access-Token",
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X-Auth-Request-Groups",
        "X-Auth-Request-Preferred-Username",
        "X-Auth-Request-Access-Token",
        "X-Forwarded-Client-Cert",
        "X-WEBAUTH-USER",
        "X-Remote-User",
        // httpoxy: CGI files it as HTTP_PROXY.
        "Proxy",
    ];
    let underscored: Vec<String> = trusted_elsewhere
        .iter()
        .map(|name| name.replace('-', "_"))
        .collect();
    let spoofs: Vec<(&str, &str)> = spoofs
        .into_iter()
        .chain(trusted_elsewhere.iter().map(|name| (*name, "on")))
        .chain(underscored.iter().map(|name| (name.as_str(), "on")))
        .collect();
    let lowered: Vec<String> = trusted_elsewhere
        .iter()
        .map(|name| name.to_ascii_lowercase())
        .chain(underscored.iter().map(|name| name.to_ascii_lowercase()))
        .collect();
    let never: Vec<&str> = [
        "forwarded",
        "x-real-ip",
        "x_forwarded_for",
        "x_forwarded_proto",
        "x_forwarded_host",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .into_iter()
    .chain(lowered.iter().map(String::as_str))
    .collect();
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("/partner", &[("x-partner", "alice")]),
        (
            "/orders/42",
            &[
                ("x-auth-subject", "alice"),
                ("x-auth-scopes", "orders:read"),
            ],
        ),
        ("/status", &[]),
    ];
    for (path, expected) in cases {
        let reply = raw_reply(gw.addr, &request("GET", path, &spoofs)).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let seen = world.upstream.last();
        assert_eq!(seen.path_and_query, path);
        for name in ["x-auth-subject", "x-auth-scopes", "x-partner", "x_partner"]
            .into_iter()
            .chain(never.iter().copied())
        {
            let values: Vec<&str> = seen
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            let wanted: Vec<&str> = expected
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(values, wanted, "{path}: {name}");
        }
    }
}

/// A route may list any method name HTTP allows (a token: `M-SEARCH`,
/// `VERSION-CONTROL`), and takes requests with it; lower-case letters stay
/// refused, in the config as in requests.
#[tokio::test]
async fn a_route_may_list_methods_with_dashes_and_digits() {
    let world = World::new().await;
    let config = world.config().replace(
        "routes:\n",
        "routes:\n  - path: /dav/{*p}\n    methods: [VERSION-CONTROL, M-SEARCH, BIND2]\n    upstream: app\n    auth: none\n",
    );
    let gw = Gateway::start(&config).await;
    for method in ["VERSION-CONTROL", "M-SEARCH", "BIND2"] {
        let reply = raw_reply(gw.addr, &request(method, "/dav/a", &[])).await;
        assert_eq!(reply.status, 200, "{method}: {reply:?}");
        assert_eq!(world.upstream.last().method, method);
    }
    let reply = raw_reply(gw.addr, &request("GET", "/dav/a", &[])).await;
    assert_eq!(reply.status, 405, "{reply:?}");
    let lower = world.config().replace(
        "routes:\n",
        "routes:\n  - path: /dav/{*p}\n    methods: [M-search]\n    upstream: app\n",
    );
    assert_config_refused(&lower, "`M-search` is not an HTTP method");
    // `*` is a token, but no method anyone means.
    let star = lower.replace("[M-search]", "[\"*\"]");
    assert_config_refused(&star, "`*` is not an HTTP method");
}

/// A target that the upstream's `base_path` makes longer than a request
/// target may be (65 534 bytes) gets 414, not sent; one byte less goes.
#[tokio::test]
async fn a_target_too_long_for_the_upstreams_base_path_gets_414() {
    let world = World::new().await;
    let addr = world.upstream.addr.to_string();
    let config = world
        .config()
        .replace(
            &format!("url: http://{addr}\n"),
            &format!("url: http://{addr}/base\n"),
        )
        .replace(
            "  shutdown_delay: 0s\n",
            "  shutdown_delay: 0s\n  max_header_bytes: 1048576\n",
        )
        .replace(
            "routes:\n",
            "routes:\n  - path: /long/{*p}\n    upstream: app\n    auth: none\n",
        );
    assert!(config.contains("/base\n") && config.contains("max_header_bytes"));
    let gw = Gateway::start(&config).await;
    // "/base" + "/long/" + filler: 65 535 bytes, one too many.
    let too_long = format!("/long/{}", "a".repeat(65_524));
    let reply = raw_reply(gw.addr, &request("GET", &too_long, &[])).await;
    assert_eq!(reply.status, 414, "{}", reply.head);
    assert_eq!(world.upstream.count(), 0);
    let longest = format!("/long/{}", "a".repeat(65_523));
    let reply = raw_reply(gw.addr, &request("GET", &longest, &[])).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(world.upstream.last().path_and_query.len(), 65_534);
}

/// A method, a path and the headers sent with them.
type DavCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Routes with a guarded `/files/private/{*p}` beside a public catch-all,
/// for [`World::config`]'s `routes:` line.
const PRIVATE_FILES_BESIDE_A_CATCH_ALL: &str = "routes:\n  - path: /files/private/{*p}\n    upstream: app\n    scopes: [admin]\n  - path: /{*page}\n    upstream: app\n    auth: none\n";

/// Sends each case: each gets 400 naming `said`, and none reaches the
/// upstream.
async fn assert_refused(gw: &Gateway, world: &World, cases: &[DavCase<'_>], said: &str) {
    let before = world.upstream.count();
    for &(method, path, headers) in cases {
        let reply = raw_reply(gw.addr, &request(method, path, headers)).await;
        assert_eq!(reply.status, 400, "{method} {path} {headers:?}: {reply:?}");
        assert!(reply.body.contains(said), "{method} {path}: {reply:?}");
    }
    assert_eq!(world.upstream.count(), before);
}

/// Sends each case: each gets 200, and reaches the upstream with its
/// method and path as sent.
async fn assert_forwarded_as_sent(gw: &Gateway, world: &World, cases: &[DavCase<'_>]) {
    for &(method, path, headers) in cases {
        let reply = raw_reply(gw.addr, &request(method, path, headers)).await;
        assert_eq!(reply.status, 200, "{method} {path}: {reply:?}");
        let seen = world.upstream.last();
        assert_eq!(
            (seen.method.as_str(), seen.path_and_query.as_str()),
            (method, path)
        );
    }
}

/// WebDAV's `COPY` and `MOVE` act on their `Destination` too (RFC 4918
/// 10.3): there must be exactly one, a path of the route the request
/// matched, so that a public route cannot copy or move into one that needs
/// a token.
#[tokio::test]
async fn a_webdav_destination_must_stay_within_the_route() {
    let world = World::new().await;
    let config = world.config().replace(
        "routes:\n",
        "routes:\n  - path: /files/public/{*p}\n    upstream: app\n    auth: none\n  - path: /files/public/locked\n    upstream: app\n    scopes: [admin]\n  - path: /files/private/{*p}\n    upstream: app\n    scopes: [admin]\n",
    );
    let gw = Gateway::start(&config).await;
    let admin = bearer(&world.token("admin"));
    let refused: [DavCase; 13] = [
        (
            "COPY",
            "/files/public/a",
            &[("Destination", "/files/private/a")],
        ),
        // A path another route guards, though every path below it is the
        // public route's.
        (
            "MOVE",
            "/files/public/a",
            &[("Destination", "/files/public/locked")],
        ),
        // `/files/public/b` with slashes merged first (as scopegate reads
        // it), `/files/private/public/b` to RFC 3986 and WHATWG URL readers:
        // forwarded as received, a path with anything to resolve is refused.
        (
            "MOVE",
            "/files/public/a",
            &[("Destination", "/files/private//../public/b")],
        ),
        (
            "COPY",
            "/files/public/a",
            &[("Destination", "/files/public/./b")],
        ),
        // None at all: required (RFC 4918 9.8.3, 9.9.3).
        ("COPY", "/files/public/a", &[]),
        ("MOVE", "/files/public/a", &[]),
        // A network-path reference: Go's x/net/webdav reads the path after
        // its own host (the upstream's authority, which a client can guess).
        (
            "MOVE",
            "/files/public/a",
            &[("Destination", "//gw.test/files/private/a")],
        ),
        (
            "COPY",
            "/files/public/a",
            &[("Destination", "//files/public/b")],
        ),
        (
            "MOVE",
            "/files/public/a",
            &[("Destination", "https://gw.test/files/public/../private/a")],
        ),
        (
            "MOVE",
            "/files/public/a",
            &[("Destination", "/files/public/%2e%2e/private/a")],
        ),
        (
            "COPY",
            "/files/public/a",
            &[("Destination", "/files/public/a%2fb")],
        ),
        (
            "COPY",
            "/files/public/a",
            &[
                ("Destination", "/files/public/b"),
                ("Destination", "/files/private/b"),
            ],
        ),
        // Out of a guarded route too: each route's paths are its own.
        (
            "MOVE",
            "/files/private/a",
            &[
                ("Authorization", &admin),
                ("Destination", "/files/public/a"),
            ],
        ),
    ];
    assert_refused(&gw, &world, &refused, "Destination").await;

    let within: [DavCase; 3] = [
        (
            "COPY",
            "/files/public/a",
            &[("Destination", "http://gw.test/files/public/b")],
        ),
        (
            "MOVE",
            "/files/private/a",
            &[
                ("Authorization", &admin),
                ("Destination", "/files/private/b"),
            ],
        ),
        // Only COPY and MOVE act on it.
        (
            "GET",
            "/files/public/a",
            &[("Destination", "/files/private/a")],
        ),
    ];
    for (method, path, headers) in within {
        let reply = raw_reply(gw.addr, &request(method, path, headers)).await;
        assert_eq!(reply.status, 200, "{method} {path}: {reply:?}");
        let seen = world.upstream.last();
        assert_eq!(seen.method, method);
        assert_eq!(seen.headers["destination"], headers.last().unwrap().1);
    }

    // To an upstream with a base_path, none: it would read the Destination
    // without its prefix, as a path another route's upstream may serve.
    let addr = world.upstream.addr.to_string();
    let prefixed = config.replace(
        &format!("url: http://{addr}\n"),
        &format!("url: http://{addr}/dav\n"),
    );
    assert!(prefixed.contains("/dav\n"));
    let gw = Gateway::start(&prefixed).await;
    let seen = world.upstream.count();
    let copy = request(
        "COPY",
        "/files/public/a",
        &[("Destination", "/files/public/b")],
    );
    let reply = raw_reply(gw.addr, &copy).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(world.upstream.count(), seen);
}

/// A WebDAV `COPY` or `MOVE` of a collection acts on every member below it
/// too (RFC 4918 9.8.3, 9.9.2: `Depth: infinity`, MOVE always), at the
/// source and under the `Destination`: where another route serves paths
/// below either, a public route would copy a guarded subtree out (`COPY
/// /files` to `/copy`, `/files/private/x` then public as
/// `/copy/private/x`) or a public collection into one (`COPY /staging` to
/// `/files`, its `private/x` landing in `/files/private/x`).
#[tokio::test]
async fn a_webdav_copy_or_move_may_not_take_another_routes_paths_below_it() {
    let world = World::new().await;
    let config = world
        .config()
        .replace("routes:\n", PRIVATE_FILES_BESIDE_A_CATCH_ALL);
    let gw = Gateway::start(&config).await;
    let admin = bearer(&world.token("admin"));
    let refused: [DavCase; 6] = [
        ("COPY", "/files", &[("Destination", "/copy")]),
        ("MOVE", "/files/", &[("Destination", "/moved")]),
        ("COPY", "/files/private", &[("Destination", "/copy")]),
        (
            "MOVE",
            "/%66iles",
            &[("Destination", "http://gw.test/moved")],
        ),
        // Into: the members of `/staging` land below `/files/private/`.
        ("COPY", "/staging", &[("Destination", "/files")]),
        (
            "MOVE",
            "/staging",
            &[("Authorization", &admin), ("Destination", "/files/")],
        ),
    ];
    assert_refused(&gw, &world, &refused, "Destination").await;

    // Collections no other route reaches into still copy and move.
    let within: [DavCase; 3] = [
        ("COPY", "/docs", &[("Destination", "/docs-copy")]),
        ("MOVE", "/files/public/a", &[("Destination", "/files/b")]),
        (
            "COPY",
            "/files/private/a",
            &[
                ("Authorization", &admin),
                ("Destination", "/files/private/b"),
            ],
        ),
    ];
    assert_forwarded_as_sent(&gw, &world, &within).await;
}

#[tokio::test]
async fn a_deep_propfind_or_lock_may_not_reach_another_routes_paths_below_it() {
    let world = World::new().await;
    let config = world
        .config()
        .replace("routes:\n", PRIVATE_FILES_BESIDE_A_CATCH_ALL);
    let gw = Gateway::start(&config).await;
    let admin = bearer(&world.token("admin"));
    // No Depth is infinity for both (RFC 4918 9.1, 9.10.3): a listing or a
    // lock of `/files` would take in `/files/private/...`.
    let refused: [DavCase; 7] = [
        ("PROPFIND", "/files", &[]),
        ("PROPFIND", "/files/", &[("Depth", "1")]),
        ("PROPFIND", "/files/private", &[("Depth", "infinity")]),
        ("PROPFIND", "/%66iles", &[("Depth", "0"), ("Depth", "0")]),
        ("PROPFIND", "/files;v", &[("Depth", "00")]),
        ("LOCK", "/files", &[]),
        (
            "LOCK",
            "/files",
            &[("Authorization", &admin), ("Depth", "infinity")],
        ),
    ];
    assert_refused(&gw, &world, &refused, "Depth: 0").await;

    // Depth 0, and collections no other route reaches into, pass.
    let passed: [DavCase; 5] = [
        ("PROPFIND", "/files", &[("Depth", "0")]),
        ("LOCK", "/files", &[("Depth", " 0 ")]),
        ("PROPFIND", "/docs", &[]),
        ("PROPFIND", "/files/public", &[("Depth", "1")]),
        (
            "PROPFIND",
            "/files/private/a",
            &[("Authorization", &admin), ("Depth", "infinity")],
        ),
    ];
    assert_forwarded_as_sent(&gw, &world, &passed).await;
}

/// A field that `Connection` names is removed before the request goes on
/// (RFC 9110 7.6.1): the upstream gets a `PROPFIND /files` with `Depth: 0,
/// Connection: depth` without its `Depth`, which is `infinity`, and lists
/// `/files/private/...` through the public route; a `COPY` whose
/// `Destination` is named gets none. Each counts as the upstream gets it.
#[tokio::test]
async fn a_webdav_header_that_connection_names_counts_as_not_sent() {
    let world = World::new().await;
    let config = world
        .config()
        .replace("routes:\n", PRIVATE_FILES_BESIDE_A_CATCH_ALL);
    let gw = Gateway::start(&config).await;
    let depth: [DavCase; 3] = [
        (
            "PROPFIND",
            "/files",
            &[("Depth", "0"), ("Connection", "Depth")],
        ),
        (
            "LOCK",
            "/files",
            &[("Depth", "0"), ("Connection", "keep-alive, depth")],
        ),
        (
            "PROPFIND",
            "/files/",
            &[("Connection", "DEPTH"), ("Depth", "0")],
        ),
    ];
    assert_refused(&gw, &world, &depth, "Depth: 0").await;
    let destination: [DavCase; 1] = [(
        "COPY",
        "/files/public/a",
        &[
            ("Destination", "/files/public/b"),
            ("Connection", "destination"),
        ],
    )];
    assert_refused(&gw, &world, &destination, "Destination").await;

    // Where nothing below is another route's, infinity passes, and goes on
    // without the named field.
    let passed: [DavCase; 1] = [(
        "PROPFIND",
        "/docs",
        &[("Depth", "0"), ("Connection", "depth")],
    )];
    assert_forwarded_as_sent(&gw, &world, &passed).await;
    let seen = world.upstream.last();
    assert!(!seen.headers.contains_key("depth"), "{:?}", seen.headers);
}

/// Paths below a collection that no route serves are refused by the
/// gateway, so a deep `PROPFIND` or `LOCK`, or a `COPY` or `MOVE`, of the
/// collection must not reach them through its route either: `/status` is
/// an exact route, and its members are no route's.
#[tokio::test]
async fn a_collection_may_not_take_in_paths_no_route_serves() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let admin = bearer(&world.token("admin"));
    let refused: [DavCase; 3] = [
        ("PROPFIND", "/status", &[]),
        ("LOCK", "/status", &[("Depth", "infinity")]),
        ("PROPFIND", "/status", &[("Depth", "1")]),
    ];
    assert_refused(&gw, &world, &refused, "Depth: 0").await;
    assert_refused(
        &gw,
        &world,
        &[("COPY", "/status", &[("Destination", "/status")])],
        "Destination",
    )
    .await;

    // Depth 0 reads the exact route's own path; `/admin/{*rest}` serves
    // every path below `/admin/x`.
    let passed: [DavCase; 2] = [
        ("PROPFIND", "/status", &[("Depth", "0")]),
        (
            "PROPFIND",
            "/admin/x",
            &[("Authorization", &admin), ("Depth", "1")],
        ),
    ];
    assert_forwarded_as_sent(&gw, &world, &passed).await;
}

#[tokio::test]
async fn connection_header_cannot_remove_scopegate_identity_headers() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("Connection", "X-Auth-Subject, X-Auth-Scopes"),
            ("Connection", "x-auth-client-id"),
            ("X-Auth-Subject", "mallory"),
        ],
    )
    .await;
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");
    assert_eq!(seen.headers["x-auth-client-id"], "billing");
    assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1);
}

/// RFC 9110 7.6.2: an OPTIONS request with `Max-Forwards: 0` is answered
/// by the gateway, its final recipient, and one with more forwards left
/// reaches the upstream with this hop counted off.
#[tokio::test]
async fn options_max_forwards_is_counted_and_zero_is_answered_here() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let before = world.upstream.count();
    let here = send(
        "OPTIONS",
        &gw.url("/status"),
        &[("Max-Forwards", "0")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(here.status, 200, "{}", here.text());
    assert_eq!(
        world.upstream.count(),
        before,
        "Max-Forwards: 0 was forwarded"
    );
    // `/status` takes any method: nothing to list.
    assert_eq!(here.header("allow"), None);
    // A body sent with it is skipped and the connection kept: the request
    // after it is answered too, and reaches the upstream.
    let (both, statuses) = answers_on_one_connection(
        gw.addr,
        b"OPTIONS /status HTTP/1.1\r\nHost: gw.test\r\nMax-Forwards: 0\r\nContent-Length: 5\r\n\r\nhello\
          GET /status HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        &["OPTIONS", "GET"],
    )
    .await;
    assert_eq!(statuses, [200, 200], "the connection was not kept");
    assert!(!says_close(&both[0].head), "{}", both[0].head);
    assert_eq!(world.upstream.count(), before + 1, "the GET did not go up");
    for (sent, forwarded) in [("3", "2"), (" 1 ", "0")] {
        let on = send(
            "OPTIONS",
            &gw.url("/status"),
            &[("Max-Forwards", sent)],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(on.status, 200, "{}", on.text());
        let seen = world.upstream.last();
        assert_eq!(seen.method, "OPTIONS");
        assert_eq!(seen.headers["max-forwards"], forwarded, "sent {sent:?}");
    }
    // Other methods pass it on as it came (RFC 9110 7.6.2 counts only
    // OPTIONS and TRACE).
    let get = send(
        "GET",
        &gw.url("/status"),
        &[("Max-Forwards", "0")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(world.upstream.last().headers["max-forwards"], "0");
}

/// The answer the gateway gives an `OPTIONS` with `Max-Forwards: 0` lists
/// the methods routed for the path (RFC 9110 9.3.7), as a 405 would: the
/// methods of every route matching it, after the route's own check.
#[tokio::test]
async fn options_answered_here_lists_the_routed_methods() {
    let world = World::new().await;
    let config = world
        .config()
        .replace("methods: [GET]", "methods: [GET, OPTIONS]");
    let gw = Gateway::start(&config).await;
    let before = world.upstream.count();
    let auth = bearer(&world.token("orders:read"));
    let here = send(
        "OPTIONS",
        &gw.url("/orders/7"),
        &[("Max-Forwards", "0"), ("Authorization", &auth)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(here.status, 200, "{}", here.text());
    assert_eq!(
        here.header("allow").as_deref(),
        Some("DELETE, GET, HEAD, OPTIONS, POST, PUT")
    );
    assert_eq!(world.upstream.count(), before, "it was forwarded");
    // Still after the route's check: no token, no answer about the path.
    let refused = send(
        "OPTIONS",
        &gw.url("/orders/7"),
        &[("Max-Forwards", "0")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.header("allow"), None);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("Connection", "X-Named-One, keep-alive"),
            ("Connection", "x-named-two, Host"),
            ("X-Named-One", "1"),
            ("X-Named-Two", "2"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("X-Kept", "yes"),
        ],
    )
    .await;
    for name in [
        "x-named-one",
        "x-named-two",
        "keep-alive",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(!seen.headers.contains_key(name), "{name}: {seen:?}");
    }
    // Whatever Connection the upstream sees is the client library's own, never
    // one naming the client's headers.
    for v in seen.headers.get_all("connection") {
        let v = v.to_str().unwrap().to_ascii_lowercase();
        assert!(!v.contains("x-named") && !v.contains("upgrade"), "{v}");
    }
    assert_eq!(seen.headers["x-kept"], "yes");
    // `te: trailers` alone is passed on (gRPC needs it), as this hop's.
    assert_eq!(seen.headers["te"], "trailers");
    assert!(
        seen.headers
            .get_all("connection")
            .iter()
            .any(|v| v.to_str().unwrap().eq_ignore_ascii_case("te")),
        "{seen:?}"
    );
    assert_eq!(seen.headers["authorization"], auth.as_str());
    // A Connection header naming Host does not hide the original host.
    assert_eq!(seen.headers["x-forwarded-host"], "gw.test");
}

/// Behind a proxy in `trusted_proxies` (an ingress that ends TLS), the
/// scheme and host it forwarded reach the app: one well-formed value each.
/// Anything else, or from a peer not listed, is replaced as always.
#[tokio::test]
async fn a_trusted_proxys_scheme_and_host_are_kept() {
    let world = World::new().await;
    let auth = bearer(&world.token("orders:read"));
    let trusting = |list: &str| {
        let config = world
            .config()
            .replace("routes:\n", &format!("trusted_proxies: {list}\nroutes:\n"));
        assert!(config.contains("trusted_proxies"));
        config
    };
    let gw = Gateway::start(&trusting("[10.0.0.0/8, 127.0.0.1]")).await;
    // (headers sent, X-Forwarded-Proto and X-Forwarded-Host the app gets)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (
            &[
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "api.example.com"),
            ],
            "https",
            "api.example.com",
        ),
        (&[("X-Forwarded-Proto", "HTTPS")], "https", "gw.test"),
        (
            &[("X-Forwarded-Host", "api.example.com:8443")],
            "http",
            "api.example.com:8443",
        ),
        (
            &[
                ("X-Forwarded-Proto", "javascript"),
                ("X-Forwarded-Host", "a b"),
            ],
            "http",
            "gw.test",
        ),
        (
            &[
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-Host", "user@api.example.com"),
            ],
            "http",
            "gw.test",
        ),
        (&[], "http", "gw.test"),
    ];
    for (sent, proto, host) in cases {
        let headers: Vec<(&str, &str)> = [("Authorization", auth.as_str())]
            .into_iter()
            .chain(sent.iter().copied())
            .collect();
        let seen = forwarded_get(&gw, &world, &headers).await;
        assert_eq!(seen.headers["x-forwarded-proto"], proto, "{sent:?}");
        assert_eq!(seen.headers["x-forwarded-host"], host, "{sent:?}");
        assert_eq!(seen.headers.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(seen.headers.get_all("x-forwarded-host").iter().count(), 1);
    }

    // Loopback not listed: replaced.
    let gw = Gateway::start(&trusting("[10.0.0.0/8]")).await;
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "api.example.com"),
        ],
    )
    .await;
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "gw.test");

    // A block no peer can be in: peers are compared as IPv4 when mapped.
    for bad in ["10.0.0.0/33", "::ffff:10.0.0.0/104", "ten"] {
        assert_config_refused(&trusting(&format!("[\"{bad}\"]")), bad);
    }
}

/// Every forwarded request names this hop in `Via` (RFC 9110 7.6.3: an
/// HTTP-to-HTTP gateway must), with the protocol the client's request came
/// in; the hops before it keep their lines, in order.
#[tokio::test]
async fn forwarded_requests_name_this_hop_in_via() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));
    let vias = |seen: &Seen| -> Vec<String> {
        seen.headers
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let seen = forwarded_get(&gw, &world, &[("Authorization", &auth)]).await;
    assert_eq!(vias(&seen), ["1.1 scopegate"]);
    let seen = forwarded_get(
        &gw,
        &world,
        &[("Authorization", &auth), ("Via", "1.1 edge, 1.0 lb")],
    )
    .await;
    assert_eq!(vias(&seen), ["1.1 edge, 1.0 lb", "1.1 scopegate"]);
    // HTTP/1.0 from the client: the hop says so, though the upstream gets
    // HTTP/1.1.
    let http10 =
        format!("GET /orders/42 HTTP/1.0\r\nHost: gw.test\r\nAuthorization: {auth}\r\n\r\n");
    let reply = raw_reply(gw.addr, http10.as_bytes()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(vias(&world.upstream.last()), ["1.0 scopegate"]);
    // HTTP/2 from the client.
    let request = Request::get(gw.url("/orders/42"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let reply = client.request(request).await.unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(vias(&world.upstream.last()), ["2 scopegate"]);
}

#[tokio::test]
async fn forwarding_headers_are_set() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));

    // No prior X-Forwarded-*: the gateway sets them; client spoofs of Proto and
    // Host are replaced, not appended to.
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "gw.test");
    assert_eq!(seen.headers.get_all("x-forwarded-proto").iter().count(), 1);
    assert_eq!(seen.headers.get_all("x-forwarded-host").iter().count(), 1);

    // A client-sent X-Forwarded-For is appended to.
    let reply = raw_reply(
        gw.addr,
        &request(
            "GET",
            "/orders/42",
            &[("Authorization", &auth), ("X-Forwarded-For", "203.0.113.7")],
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = world.upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    // `Connection` naming it does not erase the chain a proxy in front
    // built (as it cannot erase `Host` or `X-Forwarded-Proto`).
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("X-Forwarded-For", "203.0.113.7"),
            ("Connection", "X-Forwarded-For"),
        ],
    )
    .await;
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");

    // Its lines are one list (a proxy in front may add a line of its own):
    // none is lost, and no other spelling gets past.
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "198.51.100.2, 192.0.2.9"),
            ("X-Forwarded_For", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "203.0.113.7, 198.51.100.2, 192.0.2.9, 127.0.0.1"
    );
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert!(
        !seen.headers.contains_key("x-forwarded_for"),
        "{:?}",
        seen.headers
    );

    // An absolute-form target's authority, not Host, is what the client
    // asked for (RFC 9112 3.2.2).
    let reply = raw_reply(
        gw.addr,
        &request(
            "GET",
            "http://api.example.com/orders/42",
            &[("Authorization", &auth)],
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        world.upstream.last().headers["x-forwarded-host"],
        "api.example.com"
    );

    // Through the ordinary client, the original Host is the gateway's address.
    let reply = get_with_token(&gw.url("/orders/42"), &world.token("orders:read")).await;
    assert_eq!(reply.status, 200);
    let seen = world.upstream.last();
    assert_eq!(
        seen.headers["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );
    assert_eq!(
        seen.headers["host"],
        world.upstream.addr.to_string().as_str()
    );
}

/// A request id made here: 32 lower-case hex digits.
fn is_made_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every request gets an `X-Request-Id`, the app the same one as the
/// client, refusals too; a client's own (no trusted proxy) is replaced, and
/// an upstream's own id stays on its answer.
#[tokio::test]
async fn each_request_gets_an_id_upstream_and_on_its_answer() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));

    let reply = get(
        &gw.url("/orders/1"),
        &[("authorization", &auth), ("x-request-id", "client-chosen")],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let id = reply.header("x-request-id").unwrap();
    assert!(is_made_id(&id), "{id}");
    let seen = world.upstream.last();
    assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
    assert_eq!(seen.headers["x-request-id"], id.as_str());
    let next = get(&gw.url("/orders/1"), &[("authorization", &auth)])
        .await
        .unwrap()
        .header("x-request-id")
        .unwrap();
    assert!(is_made_id(&next) && next != id, "{next} after {id}");

    // `Connection` naming it does not keep it from the app, and another
    // spelling (Rack and gunicorn read `X_Request_Id` as the same name)
    // does not reach it.
    let seen = forwarded_get(
        &gw,
        &world,
        &[
            ("Authorization", &auth),
            ("Connection", "x-request-id"),
            ("X_Request_Id", "forged"),
        ],
    )
    .await;
    assert!(is_made_id(seen.headers["x-request-id"].to_str().unwrap()));
    assert!(
        !seen.headers.contains_key("x_request_id"),
        "{:?}",
        seen.headers
    );

    // No identity header may take its name.
    assert_config_refused(
        &world.config().replace(
            "routes:\n",
            "forward:\n  identity_headers: { X-Request-Id: jti }\nroutes:\n",
        ),
        "cannot be an identity header",
    );

    // Refusals and scopegate's own answers carry one as well.
    let forwarded = world.upstream.count();
    for (path, headers, status) in [
        ("/orders/1", vec![], 401),
        ("/admin", vec![("authorization", auth.as_str())], 403),
        ("/nowhere", vec![], 404),
        ("/orders/a%2Fb", vec![], 400),
    ] {
        let reply = get(&gw.url(path), &headers).await.unwrap();
        assert_eq!(reply.status, status, "{path}");
        let id = reply.header("x-request-id").unwrap_or_default();
        assert!(is_made_id(&id), "{path}: {id:?}");
    }
    assert_eq!(world.upstream.count(), forwarded);

    // An upstream's own id stays on its answer.
    let upstream = serve_fn(|_req: Request<Incoming>| async {
        let mut response = Response::new(full_body("ok"));
        response
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("app-42"));
        response
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let reply = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id").as_deref(), Some("app-42"));
}

/// A trusted proxy's id (an ingress's) is kept, when it is one of 1 to 128
/// visible characters; `server.request_id: false` leaves the header alone.
#[tokio::test]
async fn a_trusted_proxys_request_id_is_kept_and_ids_can_be_turned_off() {
    let world = World::new().await;
    let auth = bearer(&world.token("orders:read"));
    let trusting = world
        .config()
        .replace("routes:\n", "trusted_proxies: [127.0.0.1]\nroutes:\n");
    let gw = Gateway::start(&trusting).await;
    let long = "i".repeat(128);
    let too_long = "i".repeat(129);
    for (sent, kept) in [
        (vec!["ingress-7f3a"], true),
        (vec![long.as_str()], true),
        (vec![too_long.as_str()], false),
        (vec!["a b"], false),
        (vec!["one", "two"], false),
    ] {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(sent.iter().map(|id| ("X-Request-Id", *id)));
        let reply = raw_reply(gw.addr, &request("GET", "/orders/42", &headers)).await;
        assert_eq!(reply.status, 200, "{sent:?}");
        let answered = reply.header("x-request-id").unwrap();
        let seen = world.upstream.last();
        assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(seen.headers["x-request-id"], answered.as_str(), "{sent:?}");
        if kept {
            assert_eq!(answered, sent[0]);
        } else {
            assert!(is_made_id(&answered), "{sent:?}: {answered}");
        }
    }

    let off = world.config().replace(
        "  shutdown_grace: 5s\n",
        "  shutdown_grace: 5s\n  request_id: false\n",
    );
    assert!(off.contains("request_id: false"));
    let gw = Gateway::start(&off).await;
    let reply = get(
        &gw.url("/orders/1"),
        &[("authorization", &auth), ("x-request-id", "client-chosen")],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), None);
    assert_eq!(
        world.upstream.last().headers["x-request-id"],
        "client-chosen"
    );
    let reply = get(&gw.url("/orders/1"), &[]).await.unwrap();
    assert_eq!((reply.status, reply.header("x-request-id")), (401, None));
}

#[tokio::test]
async fn strip_authorization_default_global_and_per_route() {
    let world = World::new().await;
    let base = world.config();
    let global = base.replace(
        "routes:\n",
        "forward:\n  strip_authorization: true\nroutes:\n",
    );
    let route_strip = base.replace(
        "    scopes: [orders:read]\n",
        "    scopes: [orders:read]\n    forward:\n      strip_authorization: true\n",
    );
    let route_keep = global.replace(
        "    scopes: [orders:read]\n",
        "    scopes: [orders:read]\n    forward:\n      strip_authorization: false\n",
    );
    assert_ne!(global, base);
    assert_ne!(route_strip, base);
    assert_ne!(route_keep, global);

    let token = world.token(ALL_SCOPES);
    let auth = bearer(&token);
    // (config, Authorization on GET /orders/42, on DELETE /orders/42)
    let cases = [
        ("default", &base, true, true),
        ("global strip", &global, false, false),
        ("route strip", &route_strip, false, true),
        ("route keeps over global strip", &route_keep, true, false),
    ];
    for (name, yaml, get_keeps, delete_keeps) in cases {
        let gw = Gateway::start(yaml).await;
        for (method, keeps) in [("GET", get_keeps), ("DELETE", delete_keeps)] {
            let before = world.upstream.count();
            let reply = raw_reply(
                gw.addr,
                &request(method, "/orders/42", &[("Authorization", &auth)]),
            )
            .await;
            assert_eq!(reply.status, 200, "{name} {method}: {reply:?}");
            assert_eq!(world.upstream.count(), before + 1);
            let seen = world.upstream.last();
            assert_eq!(seen.method, method);
            let forwarded = seen
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap());
            assert_eq!(forwarded, keeps.then_some(auth.as_str()), "{name} {method}");
            // Identity headers are set whatever happens to Authorization.
            assert_eq!(seen.headers["x-auth-subject"], "alice", "{name} {method}");
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Host and framing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_host_is_refused_and_the_connection_closed() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;

    // All on the public route, so anything not refused would be forwarded.
    let cases: &[(&str, &[u8])] = &[
        (
            "userinfo in Host",
            b"GET /status HTTP/1.1\r\nHost: a@b\r\n\r\n",
        ),
        (
            "two Host headers",
            b"GET /status HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        ),
        (
            "two equal Host headers",
            b"GET /status HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
        ),
        ("no Host on HTTP/1.1", b"GET /status HTTP/1.1\r\n\r\n"),
        ("empty Host", b"GET /status HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "Host with a port and no host",
            b"GET /status HTTP/1.1\r\nHost: :8080\r\n\r\n",
        ),
        (
            "Host with a path",
            b"GET /status HTTP/1.1\r\nHost: a.test/x\r\n\r\n",
        ),
        (
            "userinfo in an absolute target",
            b"GET http://api.example.com@evil.test/status HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        ),
    ];
    for (name, bytes) in cases {
        // No `Connection: close` from the client: the gateway must close.
        let reply = raw_reply(gw.addr, bytes).await;
        assert_eq!(reply.status, 400, "{name}: {reply:?}");
        assert_eq!(reply.error().as_deref(), Some("invalid_request"), "{name}");
        assert_eq!(
            reply.header("connection").as_deref(),
            Some("close"),
            "{name}"
        );
    }
    assert_eq!(world.upstream.count(), 0);
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;

    // (name, bytes, JSON error or None where hyper refuses the head itself)
    let cases: &[(&str, &[u8], Option<&str>)] = &[
        (
            "Content-Length then Transfer-Encoding",
            b"POST /status HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Some("invalid_request"),
        ),
        (
            "Transfer-Encoding then Content-Length",
            b"POST /status HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Some("invalid_request"),
        ),
        (
            // hyper keeps one of two equal lines; the connection watch
            // counts them.
            "two equal Content-Length",
            b"POST /status HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhelloGET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Some("invalid_request"),
        ),
        (
            // RFC 9112 3.2: no fragment on the wire; the `http` crate cuts
            // it off, the connection watch sees it.
            "a fragment on the target",
            b"GET /status#top HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Some("invalid_request"),
        ),
        (
            "two differing Content-Length",
            b"POST /status HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            None,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /status HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            None,
        ),
    ];
    for (name, bytes, error) in cases {
        let text = raw(gw.addr, bytes).await;
        let reply = RawReply::parse(&text);
        assert_eq!(reply.status, 400, "{name}: {text}");
        assert_eq!(reply.error().as_deref(), *error, "{name}: {text}");
        // One response only: the smuggled second request is never answered.
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: {text}");
        if name.contains("fragment") {
            assert!(reply.body.contains("fragment"), "{name}: {text}");
        }
    }
    assert_eq!(world.upstream.count(), 0);

    // A coding hyper would not undo (only `chunked`) is not passed on as if
    // the body were plain (RFC 9112 6.1: 501).
    for codings in ["gzip, chunked", "gzip\r\nTransfer-Encoding: chunked"] {
        let text = raw(
            gw.addr,
            format!(
                "POST /status HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: {codings}\r\n\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let reply = RawReply::parse(&text);
        assert_eq!(reply.status, 501, "{codings}: {text}");
        assert_eq!(reply.error().as_deref(), Some("not_implemented"), "{text}");
    }
    assert_eq!(world.upstream.count(), 0);

    // The watch follows the connection as hyper does, so a request with
    // both headers is refused after: an upgrade that did not happen (the
    // upstream answered 200, or the gateway refused it; the connection stays
    // HTTP/1), and a long chunk extension.
    let token = world.token("orders:read");
    let auth = format!("Authorization: Bearer {token}\r\n");
    let upgrade = "Connection: upgrade\r\nUpgrade: websocket\r\n";
    let extension = "x".repeat(400);
    let firsts = [
        (
            "upgrade the upstream declines",
            format!("GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\n{auth}{upgrade}\r\n"),
            "200",
        ),
        (
            "upgrade without a token",
            format!("GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\n{upgrade}\r\n"),
            "401",
        ),
        (
            "long chunk extension",
            format!(
                "POST /status HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3;x={extension}\r\nabc\r\n0\r\n\r\n"
            ),
            "200",
        ),
    ];
    for (name, first, status) in firsts {
        let stream = format!(
            "{first}GET /orders/2 HTTP/1.1\r\nHost: gw.test\r\n{auth}\
             Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        let before = world.upstream.count();
        let text = raw(gw.addr, stream.as_bytes()).await;
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| text.get(at + 9..at + 12))
            .collect();
        assert_eq!(statuses, [status, "400"], "{name}: {text}");
        assert!(text.contains("invalid_request"), "{name}: {text}");
        let forwarded = world.upstream.count() - before;
        assert_eq!(forwarded, usize::from(status == "200"), "{name}");
    }
}

/// Where the connection watch cannot follow what hyper accepts, it fails
/// closed: a length it cannot read refuses its own request, a chunked body
/// it cannot read refuses the next request on the connection.
#[tokio::test]
async fn framing_the_watch_cannot_follow_is_refused() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let next = "GET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n";

    // hyper reads any number of leading zeros or spaces in Content-Length.
    for (name, padding) in [
        ("300 leading zeros", "0".repeat(300)),
        ("300 spaces", " ".repeat(300)),
    ] {
        let stream = format!(
            "POST /status HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {padding}5\r\n\r\nhello{next}"
        );
        let text = raw(gw.addr, stream.as_bytes()).await;
        let reply = RawReply::parse(&text);
        assert_eq!(reply.status, 400, "{name}: {text}");
        assert_eq!(reply.error().as_deref(), Some("invalid_request"), "{name}");
        assert!(
            reply.body.contains("could not be followed"),
            "{name}: {text}"
        );
        assert_eq!(
            reply.header("connection").as_deref(),
            Some("close"),
            "{name}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: {text}");
    }
    assert_eq!(world.upstream.count(), 0);

    // The chunked request is forwarded as hyper reads it; what follows it
    // is not trusted. A trailer line ending in a bare LF is one hyper reads
    // on past (to CR LF CR LF), so the POST below would hide the fragment
    // request from the watch inside its "body".
    let smuggled = "GET /status#top HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let hiding = format!(
        "POST /status HTTP/1.1\nContent-Length: {}\n\n\r\n\r\n",
        smuggled.len() + 4
    );
    let chunked = "POST /status HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases = [
        (
            "a chunk size of 300 leading zeros",
            format!("{chunked}{}3\r\nabc\r\n0\r\n\r\n{next}", "0".repeat(300)),
        ),
        (
            "a trailer ending in a bare LF",
            format!("{chunked}3\r\nabc\r\n0\r\nX-T: 1\n\n{hiding}{smuggled}"),
        ),
    ];
    for (name, stream) in cases {
        let before = world.upstream.count();
        let text = raw(gw.addr, stream.as_bytes()).await;
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| text.get(at + 9..at + 12))
            .collect();
        assert_eq!(statuses, ["200", "400"], "{name}: {text}");
        assert!(text.contains("could not be followed"), "{name}: {text}");
        assert_eq!(world.upstream.count() - before, 1, "{name}");
    }
}

#[tokio::test]
async fn oversize_header_block_is_refused_with_431() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let big = "a".repeat(20 * 1024);
    let reply = raw_reply(gw.addr, &request("GET", "/status", &[("X-Big", &big)])).await;
    assert_eq!(reply.status, 431, "{}", reply.head);
    assert_eq!(world.upstream.count(), 0);
    // hyper answered it, before any request: counted all the same, as is
    // a head it cannot parse.
    let reply = raw_reply(gw.addr, b"GET /status HTTP/1.1\r\nHost gw.test\r\n\r\n").await;
    assert_eq!(reply.status, 400, "{}", reply.head);
    let head_errors = |text: &str, kind| {
        metric(
            text,
            "scopegate_client_head_errors_total",
            &[("kind", kind)],
        )
    };
    let counted = wait_for_metrics(&gw, |text| {
        head_errors(text, "too_large") == 1.0 && head_errors(text, "malformed") == 1.0
    })
    .await;
    assert!(counted, "{}", gw.metrics().await);

    // Just under the limit is fine.
    let fits = "a".repeat(12 * 1024);
    let reply = raw_reply(gw.addr, &request("GET", "/status", &[("X-Big", &fits)])).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(world.upstream.count(), 1);
    assert_eq!(world.upstream.last().headers["x-big"].len(), fits.len());
}

/// A request target over hyper's 65 534 bytes, which only a
/// `max_header_bytes` above 64 KiB lets in whole, is answered 414 by hyper
/// and counted, as the README says, under `too_large` (hyper's error does
/// not tell it from a head too large).
#[tokio::test]
async fn an_overlong_target_is_refused_with_414_and_counted_as_too_large() {
    let world = World::new().await;
    let config = world.config().replace(
        "  shutdown_grace: 5s\n",
        "  shutdown_grace: 5s\n  max_header_bytes: 131072\n",
    );
    assert!(config.contains("max_header_bytes"));
    let gw = Gateway::start(&config).await;
    let target = format!("/status?{}", "a".repeat(70_000));
    let reply = raw_reply(gw.addr, &request("GET", &target, &[])).await;
    assert_eq!(reply.status, 414, "{}", reply.head);
    let counted = wait_for_metrics(&gw, |text| {
        metric(
            text,
            "scopegate_client_head_errors_total",
            &[("kind", "too_large")],
        ) == 1.0
    })
    .await;
    assert!(counted, "{}", gw.metrics().await);
    assert_eq!(world.upstream.count(), 0);
}

/// A refused upload's answer reaches a client that writes its whole body
/// before it reads (as most HTTP libraries do): after answering, the
/// gateway reads and drops the rest for a while before it closes the
/// socket (RFC 9112 9.6). Closed at once, with megabytes unread, the
/// kernel reset the connection under the client's writes, and the 401
/// that would have sent it to refresh its token was lost.
#[tokio::test]
async fn a_refused_uploads_answer_reaches_a_client_still_sending() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let body_len = 4 * 1024 * 1024;
    let head =
        format!("GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {body_len}\r\n\r\n");
    let (mut reader, mut writer) = TcpStream::connect(gw.addr).await.unwrap().into_split();
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&vec![b'x'; body_len]).await?;
        writer.shutdown().await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer))
        .await
        .expect("the connection was kept open");
    let sent = sending.await.unwrap();
    assert!(sent.is_ok(), "the body could not be sent: {sent:?}");
    assert!(read.is_ok(), "the answer could not be read: {read:?}");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert_eq!(world.upstream.count(), 0);
}

/// The same for an upstream's answer that comes before the upload has all
/// come (a 413 from an upstream that reads the head, answers, and closes
/// taking none of the body): the gateway passes it on with `Connection:
/// close`, and then reads and drops what the client still sends before it
/// closes the socket. It closed at once, and the kernel's reset under the
/// client's writes broke the upload: a client that writes its whole body
/// before it reads got that error (EPIPE) instead of the 413.
#[tokio::test]
async fn an_upstreams_early_answer_reaches_a_client_still_sending() {
    // A small receive buffer, and a body larger than the gateway's send
    // buffer can take (at most 4 MiB here) and at most the 16 MiB a
    // lingering close reads: most of it is still to come when the
    // upstream closes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let upstream = listener.local_addr().unwrap();
    let (close, closing) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut buf).await.unwrap(), 1);
            head.push(buf[0]);
        }
        tcp.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        tcp.shutdown().await.unwrap();
        // Closed, with the body unread, once the gateway has taken the
        // answer (a reset before that would make it a 502).
        let _ = closing.await;
    });
    let world = World::new().await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let body_len = 16 * 1024 * 1024;
    let head =
        format!("POST /status HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {body_len}\r\n\r\n");
    let (mut reader, mut writer) = TcpStream::connect(gw.addr).await.unwrap().into_split();
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&vec![b'x'; body_len]).await?;
        writer.shutdown().await
    });
    let answered = wait_for_metrics(&gw, |text| {
        metric(text, "scopegate_requests_total", &[("status", "413")]) == 1.0
    })
    .await;
    assert!(answered, "{}", gw.metrics().await);
    close.send(()).unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer))
        .await
        .expect("the connection was kept open");
    let sent = sending.await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        sent.is_ok(),
        "the body could not be sent: {sent:?} ({answer})"
    );
    assert!(
        read.is_ok(),
        "the answer could not be read: {read:?} ({answer})"
    );
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
}

// ---------------------------------------------------------------------------
// 4. Upstream failures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unreachable_upstream_is_502_and_the_gateway_keeps_serving() {
    let (logs, _capturing) = Logs::capture();
    let world = World::new().await;
    let (_reserved, dead) = refusing_address();
    let live = Upstream::start().await;
    let yaml = config_for(&world, dead).replace(
        "routes:\n",
        &format!(
            "  live:\n    url: http://{}\nroutes:\n  - path: /live\n    upstream: live\n    auth: none\n",
            live.addr
        ),
    );
    let gw = Gateway::start(&yaml).await;

    let reply = get_with_token(&gw.url("/orders/42"), &world.token("orders:read")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"], "bad_gateway");
    let reply = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"], "bad_gateway");

    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "scopegate_upstream_errors_total{kind=\"connect\",upstream=\"app\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    // The log says what failed, down to the refused connection.
    let logged = logs.text();
    assert!(
        logged.lines().any(|l| l.contains("upstream request failed")
            && l.to_lowercase().contains("connection refused")),
        "{logged}"
    );

    // Still serving: another upstream answers through the same gateway.
    let reply = get(&gw.url("/live"), &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(live.last().path_and_query, "/live");
    assert_eq!(world.upstream.count(), 0);
}

/// A request whose client gives up before the answer (an HTTP/2 stream
/// reset while the upstream is slow) is still counted, with status 499,
/// under its route: hyper drops the request's future, and it used to leave
/// no metric and no access-log line.
#[tokio::test]
async fn a_request_its_client_gave_up_on_is_counted_as_499() {
    let (logs, _guard) = Logs::capture();
    let world = World::new().await;
    // The abort must come before the request times out (a 504), however
    // slow the machine.
    let config = world
        .config()
        .replace("    request_timeout: 2s\n", "    request_timeout: 60s\n");
    assert!(config.contains("request_timeout: 60s"));
    let gw = Gateway::start(&config).await;
    world.upstream.set_mode(UpstreamMode::Hang);
    let request = Request::get(gw.url("/orders/42"))
        .header("authorization", bearer(&world.token("orders:read")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let pending = tokio::spawn(async move { client.request(request).await });
    eventually("the upstream has the request", || async {
        world.upstream.count() == 1
    })
    .await;
    pending.abort();
    let name = r#"scopegate_requests_total{method="GET",route="GET /orders/{id}",status="499"}"#;
    eventually("the abandoned request is counted", || async {
        sample(&gw.metrics().await, name) == Some(1.0)
    })
    .await;
    let logged = |line: &&str| {
        line.contains("scopegate::access")
            && line.contains("status=499")
            && line.contains("reason=\"client_closed\"")
            && line.contains("route=\"GET /orders/{id}\"")
    };
    eventually("the abandoned request is logged", || async {
        logs.text().lines().filter(logged).count() == 1
    })
    .await;
}

/// Each access-log line gives the request's latency in microseconds, from
/// its arrival to its answer: a request to an upstream that takes 300 ms to
/// answer is logged with at least that; a refusal has its latency too.
#[tokio::test]
async fn the_access_log_gives_each_requests_latency() {
    const SLOW: Duration = Duration::from_millis(300);
    let (logs, _guard) = Logs::capture();
    let world = World::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    // Bodiless requests: each head is answered, slowly.
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        tokio::time::sleep(SLOW).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let latency = |line: &str| -> u64 {
        let digits: String = line
            .split("latency_us=")
            .nth(1)
            .unwrap_or_else(|| panic!("no latency_us: {line}"))
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("latency_us is no number: {line}"))
    };
    for (path, status) in [("/status", 200), ("/orders/1", 401)] {
        let reply = get(&gw.url(path), &[]).await.unwrap();
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        let line = logs.access_line_of(&reply).await;
        let micros = latency(&line);
        if status == 200 {
            assert!(micros >= SLOW.as_micros() as u64, "{line}");
        }
    }
}

/// A request may have at most 100 header names over HTTP/2, as an HTTP/1.1
/// head at most 100 lines (hyper refuses more): more get 431 and never
/// reach the upstream. Cookies, which an HTTP/2 client sends as a field
/// each, count once. Without the bound, an HTTP/2 request of 24 576 names
/// (under a large `max_header_bytes`) made the forwarding headers' insert
/// panic.
#[tokio::test]
async fn a_request_with_more_than_100_header_fields_gets_431() {
    let world = World::new().await;
    // An upstream that answers any head (hyper's own stops at 100 fields,
    // and the gateway adds its forwarding headers).
    let (upstream, _) = counting_upstream(Behaviour::KeepAlive).await;
    // The largest head allowed: the field count is what is refused.
    let config = config_for(&world, upstream).replace(
        "  shutdown_delay: 0s\n",
        "  shutdown_delay: 0s\n  max_header_bytes: 1048576\n",
    );
    assert!(config.contains("max_header_bytes"));
    let gw = Gateway::start(&config).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    // Names besides `cookie` (sent as 50 fields), and what they get.
    for (fields, want) in [
        (99, StatusCode::OK),
        (100, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        (24_576, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let mut request = Request::get(gw.url("/status"));
        for i in 0..fields {
            request = request.header(format!("{i:x}"), "1");
        }
        // (The largest map the client can build has no room for them.)
        for i in 0..if fields < 1000 { 50 } else { 0 } {
            request = request.header("cookie", format!("c{i}=1"));
        }
        let response = tokio::time::timeout(
            BOUND,
            client.request(request.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, want, "{fields} fields over HTTP/2: {body:?}");
        let expected: &[u8] = if status == StatusCode::OK {
            b"ok"
        } else {
            b"{\"error\":\"request_header_fields_too_large\""
        };
        assert!(body.starts_with(expected), "{fields}: {body:?}");
    }
    let mut head = String::new();
    for i in 0..101 {
        head.push_str(&format!("X-Field-{i}: 1\r\n"));
    }
    let reply = raw_reply(
        gw.addr,
        format!("GET /status HTTP/1.1\r\nHost: gw.test\r\n{head}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 431, "{reply:?}");
}

/// `max_requests` bounds the requests in flight to an upstream, from every
/// client together, until each answer's body has ended: one more gets 503
/// with `Retry-After` at once, counted as `kind="overloaded"`, and never
/// reaches the upstream; once the body ends, the place is free again.
#[tokio::test]
async fn an_upstream_at_its_max_requests_gets_no_more() {
    let world = World::new().await;
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    // The first answer's body waits for the test; later ones are whole.
    let upstream = serve_fn(move |_req: Request<Incoming>| {
        let gate = Arc::clone(&gate);
        let first = count.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let (tx, body) = channel_body();
            tx.send(Bytes::from_static(b"first")).await.unwrap();
            if first {
                tokio::spawn(async move {
                    gate.notified().await;
                    drop(tx);
                });
            }
            Response::new(body.boxed())
        }
    })
    .await;
    let config = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    max_requests: 1\n",
    );
    assert!(config.contains("max_requests: 1"));
    let gw = Gateway::start(&config).await;

    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::get(gw.url("/status"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(BOUND, client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Its body is still coming: the one place is taken.
    let refused = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    assert_eq!(refused.json()["error"], "service_unavailable");
    assert_eq!(served.load(Ordering::SeqCst), 1, "the refused one went up");
    assert_eq!(upstream_errors(&gw.metrics().await, "overloaded"), 1.0);
    // Refused before anything went: a small body is skipped and the
    // connection kept, as for other refusals.
    let (_, statuses) = answers_on_one_connection(
        gw.addr,
        b"POST /status HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /status HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        &["POST", "GET"],
    )
    .await;
    assert_eq!(statuses, [503, 503], "the connection was not kept");

    release.notify_one();
    let body = tokio::time::timeout(BOUND, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"first");
    let reply = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

/// A gateway with `body_idle_timeout: 1s` and `max_requests: 1` before an
/// upstream that answers each head at once and reads whatever follows, and
/// a client connection whose upload (`length` bytes declared, `first`
/// sent) has had its 200; with the upstream's connection count and the
/// connection to send the rest on.
async fn upload_answered_early(
    length: usize,
    first: &[u8],
) -> (World, Gateway, Arc<AtomicUsize>, TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::new().await;
    let (upstream, connections) = counting_upstream(Behaviour::KeepAlive).await;
    let config = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    body_idle_timeout: 1s\n    max_requests: 1\n",
    );
    assert!(config.contains("max_requests: 1"));
    let gw = Gateway::start(&config).await;
    let auth = bearer(&world.token("orders:write"));
    let mut uploader = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /orders/1 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {auth}\r\nContent-Length: {length}\r\n\r\n"
    );
    uploader.write_all(head.as_bytes()).await.unwrap();
    uploader.write_all(first).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, uploader.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    (world, gw, connections, uploader)
}

/// A request keeps its `max_requests` place while its upload still goes
/// out after the answer (the upstream connection is still its): it was
/// given back with the answer, and a slow uploader made the gateway open a
/// connection per request past the limit.
#[tokio::test]
async fn an_upload_going_on_after_its_answer_keeps_its_place() {
    use tokio::io::AsyncWriteExt;
    let (_world, gw, connections, mut uploader) = upload_answered_early(20, b"0123456789").await;
    // Half the upload is still to come: the place is still taken.
    let refused = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // The rest: the place comes back once the upload is seen to be done.
    uploader.write_all(b"0123456789").await.unwrap();
    eventually("the place is given back", || async {
        get(&gw.url("/status"), &[]).await.unwrap().status == 200
    })
    .await;
}

/// An upload going on after its answer that the upstream keeps taking, as
/// the client sends it a little at a time, is no stall: each
/// `body_idle_timeout` the gateway's watch of it sees progress or the
/// client's turn, so it neither closes the upstream connection nor counts a
/// stall. Guards `watch_upload`
/// and `UploadMark` against taking a client's pauses for an upstream that
/// stopped reading.
#[tokio::test]
async fn an_upload_trickling_on_after_its_answer_is_not_taken_for_a_stall() {
    use tokio::io::AsyncWriteExt;
    let (_world, gw, _, mut uploader) = upload_answered_early(12, b"ab").await;
    // The rest, a byte every 300 ms: 3 s, three watches of 1 s.
    for byte in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        uploader
            .write_all(&[*byte])
            .await
            .expect("the gateway stopped taking the upload");
    }
    eventually("the place is given back", || async {
        get(&gw.url("/status"), &[]).await.unwrap().status == 200
    })
    .await;
    let metrics = gw.metrics().await;
    assert_eq!(stalled_uploads(&metrics), 0.0, "{metrics}");
}

/// `request_timeout` runs from the end of the request body: an upload that
/// takes longer than it (here 4 s of steady bytes against 2 s) reaches the
/// upstream and gets its answer, where it used to get 504 mid-upload.
#[tokio::test]
async fn an_upload_longer_than_the_request_timeout_is_not_cut_off() {
    let world = World::new().await;
    let config = world.config();
    assert!(config.contains("    request_timeout: 2s\n"));
    let gw = Gateway::start(&config).await;
    let reply = trickled_upload(&gw, &world.token("orders:write"), b"uploaded").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(world.upstream.last().body_len, 8);
}

/// POSTs `body` to `/orders/1` through `gw` a byte each 500 ms (after a
/// first pause), and reads the answer to the connection's close.
async fn trickled_upload(gw: &Gateway, token: &str, body: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /orders/1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for byte in body {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    RawReply::parse(&String::from_utf8_lossy(&answer))
}

/// The same upload, 3.5 s of steady bytes against a 2 s timeout, to an
/// upstream that answers 1.4 s after the body's end: within the timeout as
/// it runs from that end, so the answer is waited for. The wait used to be
/// cut off at the first check after the end (at 4 s, where 4 s from the
/// head had passed).
#[tokio::test]
async fn an_answer_within_request_timeout_of_an_uploads_end_is_waited_for() {
    let world = World::new().await;
    let upstream = serve_fn(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        tokio::time::sleep(Duration::from_millis(1400)).await;
        Response::new(full_body(body))
    })
    .await;
    let config = config_for(&world, upstream);
    assert!(config.contains("    request_timeout: 2s\n"));
    let gw = Gateway::start(&config).await;
    let reply = trickled_upload(&gw, &world.token("orders:write"), b"written").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "written");
}

/// An upload the upstream takes slowly but steadily, for longer than
/// `request_timeout`, is not cut off either: progress while the gateway
/// waits on the upstream (not on the client) keeps the wait going. The
/// upstream pauses 10 ms per 64 KiB of the first 16 MiB (at least 2.56 s
/// against a 2 s timeout), then reads the last 16 MiB at full speed, so
/// what the sockets still hold when the upload ends is read long before
/// the timeout that starts then.
#[tokio::test]
async fn an_upload_the_upstream_takes_slowly_is_not_cut_off() {
    let world = World::new().await;
    let upstream = serve_fn(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let (mut len, mut since_pause) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len();
                since_pause += data.len();
                while since_pause >= 64 << 10 && len <= 16 << 20 {
                    since_pause -= 64 << 10;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Response::new(full_body(len.to_string()))
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let auth = bearer(&world.token("orders:write"));
    let size = 32 << 20;
    let reply = send(
        "POST",
        &gw.url("/orders/new"),
        &[("authorization", &auth)],
        Bytes::from(vec![b'x'; size]),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), size.to_string());
}

/// An upstream that stops taking an upload (and never answers) still gets
/// the request 504 once the upload made no progress for `request_timeout`:
/// waiting for the upload's end must not wait for good.
#[tokio::test]
async fn an_upload_the_upstream_stopped_taking_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::new().await;
    // The head, and then nothing is read or written.
    let upstream = silent_upstream().await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let auth = bearer(&world.token("orders:write"));
    let size = 64 << 20;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /orders/1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Length: {size}\r\n\r\n"
    );
    let uploading = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..size / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, read.read(&mut answer))
        .await
        .expect("no answer: the gateway waited for the upload for good")
        .unwrap();
    let reply = RawReply::parse(&String::from_utf8_lossy(&answer[..n]));
    assert_eq!(reply.status, 504, "{reply:?}");
    uploading.abort();
}

#[tokio::test]
async fn hanging_upstream_is_504_and_the_gateway_keeps_serving() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    world.upstream.set_mode(UpstreamMode::Hang);

    // request_timeout is 2s; the client's own bound is 30s.
    let reply = get_with_token(&gw.url("/orders/42"), &world.token("orders:read")).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"], "gateway_timeout");
    assert_eq!(
        world.upstream.count(),
        1,
        "the upstream did get the request"
    );

    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "scopegate_upstream_errors_total{kind=\"timeout\",upstream=\"app\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    world.upstream.set_mode(UpstreamMode::Echo);
    let reply = get_with_token(&gw.url("/orders/43"), &world.token("orders:read")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(world.upstream.last().path_and_query, "/orders/43");
}

/// A request whose whole body went up before the upstream hung is 504
/// once `request_timeout` has passed since the upload ended: the wait that
/// leaves long uploads alone still ends.
#[tokio::test]
async fn hanging_upstream_after_a_whole_upload_is_504() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    world.upstream.set_mode(UpstreamMode::Hang);
    let auth = bearer(&world.token("orders:write"));
    let reply = send(
        "POST",
        &gw.url("/orders/1"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(b"{\"item\":1}"),
    )
    .await
    .expect("no answer: the gateway waited for the upstream for good");
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"], "gateway_timeout");
    assert_eq!(
        world.upstream.count(),
        1,
        "the upstream did get the request"
    );
}

// ---------------------------------------------------------------------------
// 5. Bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn large_request_body_arrives_intact() {
    let world = World::new().await;
    // Answers with the length and checksum of what it received.
    let upstream = serve_fn(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let (mut len, mut hash) = (0usize, FNV_OFFSET);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len();
                hash = fnv1a(hash, &data);
            }
        }
        Response::new(full_body(format!("{len} {hash:016x}")))
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;

    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = format!("{} {:016x}", body.len(), fnv1a(FNV_OFFSET, &body));
    let auth = bearer(&world.token("orders:write"));
    let reply = send(
        "POST",
        &gw.url("/orders/new"),
        &[("authorization", &auth)],
        Bytes::from(body),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), expected);

    // The recording upstream agrees on the length.
    let gw = Gateway::start(&world.config()).await;
    let reply = send(
        "PUT",
        &gw.url("/orders/7"),
        &[("authorization", &auth)],
        Bytes::from(vec![b'x'; 5 * 1024 * 1024]),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["body_len"], 5 * 1024 * 1024);
    assert_eq!(world.upstream.last().body_len, 5 * 1024 * 1024);
}

#[tokio::test]
async fn response_bodies_stream_through() {
    let world = World::new().await;
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    // Sends the head and "first", then waits for the test before "second".
    let upstream = serve_fn(move |_req: Request<Incoming>| {
        let gate = Arc::clone(&gate);
        async move {
            let (tx, body) = channel_body();
            tx.send(Bytes::from_static(b"first")).await.unwrap();
            tokio::spawn(async move {
                gate.notified().await;
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            Response::new(body.boxed())
        }
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;

    let outcome = tokio::time::timeout(BOUND, async {
        let client: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = Request::get(gw.url("/status"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::new();
        // If the gateway buffered whole bodies, this would never complete.
        while received.len() < 5 {
            let frame = body.frame().await.expect("body ended early").unwrap();
            received.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(received, b"first");
        release.notify_one();
        while let Some(frame) = body.frame().await {
            received.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        received
    })
    .await;
    let received = outcome.expect("the first chunk never arrived: response body was buffered");
    assert_eq!(received, b"firstsecond");
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let world = World::new().await;
    let (first_seen, mut first_seen_rx) = mpsc::unbounded_channel::<Bytes>();
    // Reports the first chunk as soon as it arrives, then reads the rest.
    let upstream = serve_fn(move |req: Request<Incoming>| {
        let first_seen = first_seen.clone();
        async move {
            let mut body = req.into_body();
            let mut received = Vec::new();
            let mut reported = false;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    received.extend_from_slice(&data);
                    if !reported {
                        reported = true;
                        let _ = first_seen.send(Bytes::copy_from_slice(&received));
                    }
                }
            }
            Response::new(full_body(received))
        }
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;

    let (tx, body) = channel_body();
    let client: Client<_, ChannelBody> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::post(gw.url("/orders/new"))
        .header("authorization", bearer(&world.token("orders:write")))
        .body(body)
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });

    tx.send(Bytes::from_static(b"first-")).await.unwrap();
    // If the gateway buffered whole request bodies, the upstream would not see
    // anything before the client finished sending.
    let first = tokio::time::timeout(BOUND, first_seen_rx.recv())
        .await
        .expect("the upstream never saw the first chunk: request body was buffered")
        .unwrap();
    assert!(b"first-".starts_with(&first), "{first:?}");
    tx.send(Bytes::from_static(b"rest")).await.unwrap();
    drop(tx);
    let (status, body) = tokio::time::timeout(BOUND, in_flight)
        .await
        .expect("no response")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"first-rest");
}

// ---------------------------------------------------------------------------
// 6. Upgrades
// ---------------------------------------------------------------------------

/// An upstream answering upgrade requests with 101 and then echoing bytes;
/// it records the headers it saw.
async fn echo_upgrade_upstream(seen: Arc<Mutex<Vec<http::HeaderMap>>>) -> SocketAddr {
    serve_fn(echo_upgrade(seen)).await
}

/// A test upstream's request handler.
trait UpstreamHandler:
    Fn(
        Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<F> UpstreamHandler for F where
    F: Fn(
            Request<Incoming>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// [`echo_upgrade_upstream`]'s handler.
fn echo_upgrade(seen: Arc<Mutex<Vec<http::HeaderMap>>>) -> impl UpstreamHandler {
    switching_upgrade(seen, Handshake::Proper)
}

/// What a switching test upstream answers a WebSocket key with.
#[derive(Debug, Clone, Copy)]
enum Handshake {
    /// The accept value RFC 6455 4.2.2 makes from the key.
    Proper,
    /// No `Sec-WebSocket-Accept` at all.
    NoAccept,
    /// An accept value made from another key.
    WrongAccept,
}

/// The `Sec-WebSocket-Accept` for `key` (RFC 6455 4.2.2), computed here
/// rather than by the code under test.
fn accept_for(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    hash.update(key);
    hash.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(hash.finish())
}

/// A handler that switches every request asking to upgrade and echoes the
/// tunnel's bytes, answering the key as `handshake` says.
fn switching_upgrade(
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    handshake: Handshake,
) -> impl UpstreamHandler {
    move |mut req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            seen.lock().unwrap().push(req.headers().clone());
            if !req.headers().contains_key("upgrade") {
                return Response::new(full_body("no upgrade"));
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map_or(&b""[..], |k| k.as_bytes());
            let accept = match handshake {
                Handshake::Proper => Some(accept_for(key)),
                Handshake::NoAccept => None,
                Handshake::WrongAccept => Some(accept_for(b"another key")),
            };
            // With this hop's own headers, which the client must not get.
            let mut response = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade, X-Internal")
                .header("upgrade", "websocket")
                .header("x-internal", "secret")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic realm=\"internal\"");
            if let Some(accept) = accept {
                response = response.header("sec-websocket-accept", accept);
            }
            response.body(full_body(Bytes::new())).unwrap()
        })
    }
}

/// An upstream that answers 101 without the handshake's accept value (one
/// that reflects a status, say, and goes on reading HTTP) is not joined to
/// the client: the client's next bytes would reach it as requests no route
/// or token check saw (RFC 6455 4.1).
#[tokio::test]
async fn a_switch_without_the_websocket_handshake_is_not_tunnelled() {
    let world = World::new().await;
    let token = world.token("orders:read");
    for handshake in [Handshake::NoAccept, Handshake::WrongAccept] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = serve_fn(switching_upgrade(Arc::clone(&seen), handshake)).await;
        let gw = Gateway::start(&config_for(&world, upstream)).await;
        let auth = bearer(&token);
        let reply = raw_reply(
            gw.addr,
            &request(
                "GET",
                "/orders/42",
                &[
                    ("Authorization", &auth),
                    ("Connection", "Upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ("Sec-WebSocket-Version", "13"),
                ],
            ),
        )
        .await;
        assert_eq!(reply.status, 502, "{handshake:?}: {reply:?}");
        let metrics = gw.metrics().await;
        assert_eq!(
            upstream_errors(&metrics, "protocol"),
            1.0,
            "{handshake:?}: {metrics}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "{handshake:?}");
    }
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let token = world.token("orders:read");

    let outcome = tokio::time::timeout(BOUND, async {
        let (mut stream, response) = upgrade_to_websocket(gw.addr, &token).await;
        let reply = RawReply::parse(&response);
        assert_eq!(reply.header("upgrade").as_deref(), Some("websocket"));
        // The upstream's hop-by-hop headers stay on its hop.
        assert!(reply
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
        for hop in ["x-internal", "keep-alive", "proxy-authenticate"] {
            assert!(reply.header(hop).is_none(), "{hop} reached the client");
        }

        for message in [&b"hello over the tunnel"[..], &b"and again"[..]] {
            stream.write_all(message).await.unwrap();
            let mut echoed = vec![0u8; message.len()];
            stream.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, message);
        }
    })
    .await;
    outcome.expect("the upgraded connection did not echo");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["upgrade"], "websocket");
    assert!(seen[0]["connection"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    assert_eq!(seen[0]["x-auth-subject"], "alice");
    assert_eq!(seen[0]["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
}

/// A WebSocket tunnel holds its upstream's `max_requests` place for as long
/// as it is open (it is a connection to the upstream like a request's), and
/// gives it back when the client closes it.
#[tokio::test]
async fn a_websocket_tunnel_keeps_its_place_until_it_closes() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let config = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    max_requests: 1\n",
    );
    assert!(config.contains("max_requests: 1"));
    let gw = Gateway::start(&config).await;
    let token = world.token("orders:read");
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];

    let tunnel = tokio::time::timeout(BOUND, open_tunnel(gw.addr, &token))
        .await
        .expect("the tunnel did not echo");
    let refused = get(&gw.url("/orders/42"), &headers).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(upstream_errors(&gw.metrics().await, "overloaded"), 1.0);
    assert_eq!(seen.lock().unwrap().len(), 1, "the refused one went up");

    drop(tunnel);
    assert!(
        wait_for_status_with(&gw.url("/orders/42"), &headers, 200).await,
        "the closed tunnel kept its place"
    );
}

/// HTTP/2 carries no `Upgrade`: to an https upstream that offers h2 (and
/// already serves the gateway's other requests over it), a WebSocket
/// request goes over an HTTP/1.1 connection of its own.
#[tokio::test]
async fn websocket_goes_over_http1_to_an_upstream_that_offers_h2() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (upstream, cert) = tls_upstream(dir.path(), echo_upgrade(Arc::clone(&seen))).await;
    let config = config_for(&world, upstream).replace(
        &format!("url: http://{upstream}"),
        &format!("url: https://{upstream}"),
    );
    let gw = Gateway::start(&trusting(&config, &cert)).await;
    let token = world.token("orders:read");

    let reply = h2_get(&gw.url("/orders/1"), &token).await;
    assert_eq!(reply.1, StatusCode::OK, "{reply:?}");
    let outcome = tokio::time::timeout(BOUND, open_tunnel(gw.addr, &token)).await;
    outcome.expect("the tunnel did not echo");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// A WebSocket's HTTP/1.1 connection says nothing of what the upstream
/// speaks: requests past `http2_max_streams` afterwards still open HTTP/2
/// connections one at a time, so two at once past a full connection share
/// one new connection rather than opening one each.
#[tokio::test]
async fn a_websocket_leaves_an_h2_upstream_opened_one_connection_at_a_time() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let acceptor = scopegate::server::tls::acceptor(&scopegate::config::TlsFiles {
        cert_file: cert.clone(),
        key_file: key,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let h2_connections = Arc::new(AtomicUsize::new(0));
    let (arrived, mut arrivals) = mpsc::unbounded_channel::<String>();
    let (release, released) = tokio::sync::watch::channel(false);
    let switching = echo_upgrade(Arc::new(Mutex::new(Vec::new())));
    // Holds each plain request until released; switches each WebSocket one.
    let handler = move |req: Request<Incoming>| {
        let (arrived, mut released, switching) =
            (arrived.clone(), released.clone(), switching.clone());
        async move {
            if req.headers().contains_key("upgrade") {
                return Ok::<_, std::convert::Infallible>(switching(req).await);
            }
            let path = req.uri().path().to_owned();
            let _ = arrived.send(path.clone());
            let _ = released.wait_for(|go| *go).await;
            Ok(Response::new(full_body(path)))
        }
    };
    let counted = Arc::clone(&h2_connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler, counted) = (acceptor.clone(), handler.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        hyper::service::service_fn(handler),
                    )
                    .await;
            });
        }
    });
    let config = config_for(&world, upstream)
        .replace(
            &format!("url: http://{upstream}"),
            &format!("url: https://{upstream}"),
        )
        .replace(
            "    request_timeout: 2s\n",
            "    request_timeout: 2s\n    http2_max_streams: 2\n",
        );
    assert!(config.contains("http2_max_streams"));
    let gw = Gateway::start(&trusting(&config, &cert)).await;
    let token = world.token("orders:read");

    // Two held requests fill the first connection: one after the other,
    // as before one connection agreed on h2, each request opens its own.
    let mut first = Vec::new();
    for k in 0..2 {
        first.push(held_requests(&gw, &token, k, 1));
        tokio::time::timeout(BOUND, arrivals.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(h2_connections.load(Ordering::SeqCst), 1);
    let tunnel = tokio::time::timeout(BOUND, open_tunnel(gw.addr, &token)).await;
    drop(tunnel.expect("the tunnel did not echo"));
    // Two at once past the full connection: one new connection takes both.
    let burst = held_requests(&gw, &token, 2, 2);
    for _ in 0..2 {
        tokio::time::timeout(BOUND, arrivals.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(h2_connections.load(Ordering::SeqCst), 2);
    release.send(true).unwrap();
    for (k, held) in first.into_iter().enumerate() {
        assert_eq!(all_answered(held).await, [format!("/orders/{k}")]);
    }
    assert_eq!(all_answered(burst).await, ["/orders/2", "/orders/3"]);
    assert_eq!(h2_connections.load(Ordering::SeqCst), 2);
}

/// To an upstream that speaks HTTP/2 only, a WebSocket request cannot go:
/// 502, counted as a protocol error, rather than a plain request the
/// upstream would take for something else.
#[tokio::test]
async fn websocket_to_an_http2_only_upstream_is_refused() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let config = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&config).await;
    let token = world.token("orders:read");
    let reply = get(
        &gw.url("/orders/42"),
        &[
            ("authorization", &bearer(&token)),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    let metrics = gw.metrics().await;
    assert_eq!(upstream_errors(&metrics, "protocol"), 1.0, "{metrics}");
    assert!(seen.lock().unwrap().is_empty());
}

/// Asks the gateway to upgrade `/orders/42` to WebSocket; returns the stream
/// after a `101` and the response head.
async fn upgrade_to_websocket(addr: SocketAddr, token: &str) -> (TcpStream, String) {
    switch_with(addr, token, "").await
}

/// [`upgrade_to_websocket`] with `extra` header lines (each ending in CRLF)
/// in the request.
async fn switch_with(addr: SocketAddr, token: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /orders/42 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\
         {WEBSOCKET_HANDSHAKE}{extra}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{response:?}");
        response.push(byte[0]);
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    (stream, response)
}

/// Opens a WebSocket tunnel through the gateway to `/orders/42` and checks
/// that it echoes.
async fn open_tunnel(addr: SocketAddr, token: &str) -> TcpStream {
    let (mut stream, _) = upgrade_to_websocket(addr, token).await;
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    stream
}

/// A tunnel is still its client's connection: it keeps the connection's
/// `max_connections` slot and its place in the open connections gauge, and
/// ends after `body_idle_timeout` with no byte either way.
#[tokio::test]
async fn a_tunnel_keeps_its_connection_slot_until_it_ends_idle() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let config = config_for(&world, upstream)
        .replace(
            "  shutdown_delay: 0s\n",
            "  shutdown_delay: 0s\n  max_connections: 1\n",
        )
        .replace(
            "    request_timeout: 2s\n",
            "    request_timeout: 2s\n    body_idle_timeout: 3s\n",
        );
    assert!(config.contains("max_connections: 1") && config.contains("body_idle_timeout: 3s"));
    let gw = Gateway::start(&config).await;
    let open = |text: String| metric(&text, "scopegate_open_connections", &[]);

    let mut tunnel = tokio::time::timeout(BOUND, open_tunnel(gw.addr, &world.token("orders:read")))
        .await
        .expect("no tunnel");
    assert_eq!(open(gw.metrics().await), 1.0, "the tunnel left the gauge");
    // Idle: the gateway ends it (EOF), and the slot is free again.
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, tunnel.read_to_end(&mut rest))
        .await
        .expect("an idle tunnel was kept open")
        .unwrap();
    let reply = tokio::time::timeout(BOUND, get(&gw.url("/status"), &[]))
        .await
        .expect("the slot was not given back")
        .unwrap();
    assert_eq!(reply.status, 200);
    eventually("the gauge to drop", || {
        let gw = &gw;
        async move { open(gw.metrics().await) == 0.0 }
    })
    .await;
}

/// A tunnel ends when the gateway stops accepting the token that opened it
/// (`exp` plus the issuer's 30 s leeway), however busy it is: the token was
/// checked once, at the upgrade. A token past `exp` but within the leeway
/// still gets a working tunnel until then.
#[tokio::test]
async fn a_busy_tunnel_ends_when_its_token_expires() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    // Several seconds of tunnel, so that a slow machine still upgrades in
    // time and echoes more than once.
    let accepted_until = now() + 8;
    let mut expiring = claims("orders:read");
    expiring["exp"] = (accepted_until - 30).into();
    let token = world.key.mint(&expiring).unwrap();

    let mut tunnel = tokio::time::timeout(BOUND, open_tunnel(gw.addr, &token))
        .await
        .expect("no tunnel");
    let echoes = tokio::time::timeout(BOUND, async {
        let mut echoes = 0;
        loop {
            let mut echoed = [0u8; 4];
            if tunnel.write_all(b"ping").await.is_err()
                || tunnel.read_exact(&mut echoed).await.is_err()
            {
                return echoes;
            }
            echoes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a busy tunnel outlived its token");
    assert!(echoes >= 2, "the tunnel closed at once ({echoes} echoes)");
    assert!(
        now() + 1 >= accepted_until,
        "the tunnel closed before the token's end"
    );
}

/// Only WebSocket is tunnelled: an `h2c` upgrade through the gateway would
/// let raw HTTP/2 reach the upstream past route matching and token checks.
#[tokio::test]
async fn only_websocket_upgrades_are_passed_on() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let auth = bearer(&world.token("orders:read"));
    for upgrade in ["h2c", "websocket, h2c", "TLS/1.2"] {
        let reply = raw_reply(
            gw.addr,
            &request(
                "GET",
                "/orders/42",
                &[
                    ("Authorization", auth.as_str()),
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", upgrade),
                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
            ),
        )
        .await;
        assert_eq!(reply.status, 200, "{upgrade}: {reply:?}");
        let seen = seen.lock().unwrap().pop().unwrap();
        for name in ["upgrade", "connection", "http2-settings"] {
            assert!(
                !seen.contains_key(name),
                "{upgrade}: {name} passed on: {seen:?}"
            );
        }
    }
}

/// The header lines of a WebSocket handshake (RFC 6455 4.1), each ending
/// in CRLF.
const WEBSOCKET_HANDSHAKE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A WebSocket handshake is a GET without a body (RFC 6455 4.1). Another is
/// refused before the upstream, which, switching at once, would read the
/// body as frames; the connection ends with the refusal. A GET with
/// `Content-Length: 0` has no body and switches.
#[tokio::test]
async fn a_websocket_handshake_with_a_body_or_another_method_is_refused() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let read = world.token("orders:read");
    let write = world.token("orders:write");
    let head = |method: &str, token: &str| {
        format!(
            "{method} /orders/42 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\
             {WEBSOCKET_HANDSHAKE}"
        )
    };
    let cases = [
        (
            "GET with a Content-Length body",
            format!("{}Content-Length: 5\r\n\r\nhello", head("GET", &read)),
        ),
        (
            "GET with a chunked body",
            format!(
                "{}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                head("GET", &read)
            ),
        ),
        (
            "POST without a body",
            format!("{}\r\n", head("POST", &write)),
        ),
        (
            "PUT with a body",
            format!("{}Content-Length: 2\r\n\r\n{{}}", head("PUT", &write)),
        ),
    ];
    for (name, bytes) in cases {
        let text = tokio::time::timeout(BOUND, raw(gw.addr, bytes.as_bytes()))
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection stayed open"));
        let reply = RawReply::parse(&text);
        assert_eq!(reply.status, 400, "{name}: {text}");
        assert_eq!(reply.error().as_deref(), Some("invalid_request"), "{name}");
        assert!(reply.body.contains("WebSocket handshake"), "{name}: {text}");
        assert_eq!(
            reply.header("connection").as_deref(),
            Some("close"),
            "{name}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: {text}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused handshake went upstream"
    );

    // Without `Connection: upgrade` nothing asks to switch: an ordinary
    // request, whose `Upgrade` stays on this hop.
    let text = raw(
        gw.addr,
        format!(
            "POST /orders/42 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {write}\r\n\
             Connection: close\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(RawReply::parse(&text).status, 200, "{text}");
    let forwarded = seen.lock().unwrap().pop().expect("not forwarded");
    assert!(!forwarded.contains_key("upgrade"), "{forwarded:?}");

    let (mut stream, _) =
        tokio::time::timeout(BOUND, switch_with(gw.addr, &read, "Content-Length: 0\r\n"))
            .await
            .expect("no answer to a handshake with Content-Length: 0");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(BOUND, stream.read_exact(&mut echoed))
        .await
        .expect("the tunnel did not echo")
        .unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn upgrade_without_token_is_refused_before_the_upstream() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = echo_upgrade_upstream(Arc::clone(&seen)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let reply = raw_reply(
        gw.addr,
        &request(
            "GET",
            "/orders/42",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
        ),
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.error().as_deref(), Some("unauthorized"));
    assert!(seen.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// 7. HTTP/2
// ---------------------------------------------------------------------------

/// An upstream that reports the HTTP version it was spoken to with.
async fn version_upstream(versions: Arc<Mutex<Vec<http::Version>>>) -> SocketAddr {
    serve_fn(move |req: Request<Incoming>| {
        let versions = Arc::clone(&versions);
        async move {
            versions.lock().unwrap().push(req.version());
            let body = format!(
                "{:?} {} {}",
                req.version(),
                req.uri().path(),
                req.headers()
                    .get("x-auth-subject")
                    .map_or("-", |v| v.to_str().unwrap())
            );
            Response::new(full_body(body))
        }
    })
    .await
}

/// Sends `request` over h2c (prior knowledge), bounded by [`BOUND`].
async fn h2_send(request: Request<Full<Bytes>>) -> Response<Incoming> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    tokio::time::timeout(BOUND, client.request(request))
        .await
        .expect("h2 request timed out")
        .unwrap()
}

async fn h2_get(url: &str, token: &str) -> (http::Version, StatusCode, String) {
    let request = Request::get(url)
        .header("authorization", bearer(token))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2_send(request).await;
    let version = response.version();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

/// RFC 9113 8.2.3: an HTTP/2 client's split `cookie` fields reach an
/// HTTP/1.1 upstream as one line.
#[tokio::test]
async fn split_h2_cookies_reach_an_http1_upstream_as_one_line() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let request = Request::get(gw.url("/orders/1"))
        .header("authorization", bearer(&world.token("orders:read")))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2_send(request).await;
    assert_eq!(response.status(), 200);
    let seen = world.upstream.last();
    let cookies: Vec<&str> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

/// RFC 9113 8.3.1: an HTTP/2 `host` naming another entity than `:authority`
/// makes the request malformed (400, never forwarded); one naming the same
/// host and port in other letters' case goes on.
#[tokio::test]
async fn an_h2_host_other_than_its_authority_gets_400() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let token = world.token("orders:read");
    let port = gw.addr.port();
    let with_host = |host: String| {
        Request::get(format!("http://localhost:{port}/orders/1"))
            .header("authorization", bearer(&token))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let refused = h2_send(with_host(format!("elsewhere.example:{port}"))).await;
    assert_eq!(refused.status(), 400);
    let refused = h2_send(with_host("localhost".to_owned())).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(world.upstream.count(), 0);
    let same = h2_send(with_host(format!("LocalHost:{port}"))).await;
    assert_eq!(same.status(), 200);
    assert_eq!(world.upstream.count(), 1);
}

/// An HTTP/2 connection (prior knowledge) made with the h2 crate, which
/// sends what it is given where hyper's client would tidy it, ready for
/// a request.
async fn h2_raw_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

/// What an HTTP/2 client's raw headers lead to, sent with the h2 crate
/// (which keeps a repeated `content-length` and any `:scheme`): the status,
/// or `None` when the stream was reset.
async fn h2_raw_status(addr: SocketAddr, request: Request<()>, body: &'static [u8]) -> Option<u16> {
    let mut client = h2_raw_client(addr).await;
    let (response, mut stream) = client.send_request(request, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream.send_data(Bytes::from_static(body), true).unwrap();
    }
    let response = tokio::time::timeout(BOUND, response)
        .await
        .expect("no answer");
    response.ok().map(|r| r.status().as_u16())
}

/// An HTTP/2 request with two `content-length` fields is refused (400)
/// even when they agree, as on HTTP/1.1; and `:scheme https` makes an
/// authority without a port the same entity as a `host` naming port 443.
#[tokio::test]
async fn h2_repeated_content_length_is_refused_and_https_means_port_443() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let writer = world.token("orders:write");
    let twice = Request::post("http://gw.test/orders/1/items")
        .header("authorization", bearer(&writer))
        .header("content-length", "3")
        .header("content-length", "3")
        .body(())
        .unwrap();
    assert_eq!(h2_raw_status(gw.addr, twice, b"abc").await, Some(400));
    assert_eq!(world.upstream.count(), 0);
    let once = Request::post("http://gw.test/orders/1/items")
        .header("authorization", bearer(&writer))
        .header("content-length", "3")
        .body(())
        .unwrap();
    assert_eq!(h2_raw_status(gw.addr, once, b"abc").await, Some(200));
    assert_eq!(world.upstream.count(), 1);

    let reader = world.token("orders:read");
    let https = |host: &str| {
        Request::get("https://gw.test/orders/1")
            .header("authorization", bearer(&reader))
            .header("host", host)
            .body(())
            .unwrap()
    };
    assert_eq!(
        h2_raw_status(gw.addr, https("gw.test:443"), b"").await,
        Some(200)
    );
    assert_eq!(
        h2_raw_status(gw.addr, https("gw.test:80"), b"").await,
        Some(400)
    );
    assert_eq!(world.upstream.count(), 2);
}

/// A HEAD answered by the gateway itself (here a 401) has no content
/// (RFC 9110 9.3.2) but keeps the length a GET would have got; over
/// HTTP/2 its stream ends with the headers, no DATA frame following.
#[tokio::test]
async fn a_head_answered_here_over_h2_ends_with_its_headers() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let mut client = h2_raw_client(gw.addr).await;
    let request = Request::head("http://gw.test/orders/1").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(BOUND, response)
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(response.status(), 401);
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 0, "{length}");
    assert!(
        response.body().is_end_stream(),
        "DATA follows a HEAD answer's headers"
    );
}

/// RFC 9113 8.1.1: an HTTP/2 request whose DATA frames are longer than its
/// `content-length` is malformed. Going to an HTTP/1.1 upstream, the bytes
/// past the length must not arrive as a request of their own (the H2.CL
/// desync): here a request for `/admin` with an admin token.
#[tokio::test]
async fn h2_body_longer_than_its_content_length_is_not_smuggled_upstream() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let writer = world.token("orders:write");
    let admin = world.token("admin");
    let smuggled = format!(
        "GET /admin HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {admin}\r\nX-Smuggled: 1\r\n\r\n"
    );
    for length in ["0", "3"] {
        let mut client = h2_raw_client(gw.addr).await;
        let request = Request::post("http://gw.test/orders/1/items")
            .header("authorization", bearer(&writer))
            .header("content-length", length)
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(request, false).unwrap();
        stream
            .send_data(Bytes::from(format!("abc{smuggled}")), true)
            .unwrap();
        match tokio::time::timeout(BOUND, response)
            .await
            .expect("no answer")
        {
            // The stream reset, or an error status: either is fine.
            Err(_) => {}
            Ok(response) => assert!(
                !response.status().is_success(),
                "content-length {length}: {}",
                response.status()
            ),
        }
    }
    // Whatever reached the upstream, nothing of it was the hidden request.
    for seen in world.upstream.seen() {
        assert!(seen.headers.get("x-smuggled").is_none(), "{seen:?}");
        assert!(!seen.path_and_query.starts_with("/admin"), "{seen:?}");
        assert!(seen.body_len <= 3, "{seen:?}");
    }
    // A well-formed HTTP/2 request on the same gateway still goes through.
    let (version, status, _) = h2_get(&gw.url("/orders/5"), &world.token("orders:read")).await;
    assert_eq!((version, status), (http::Version::HTTP_2, StatusCode::OK));
}

#[tokio::test]
async fn h2c_client_to_http1_upstream() {
    let world = World::new().await;
    let versions = Arc::new(Mutex::new(Vec::new()));
    let upstream = version_upstream(Arc::clone(&versions)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;

    let (version, status, body) =
        h2_get(&gw.url("/orders/%34%32"), &world.token("orders:read")).await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "HTTP/1.1 /orders/42 alice");
    assert_eq!(*versions.lock().unwrap(), [http::Version::HTTP_11]);

    // Refusals over h2 are the same JSON answers, and nothing is forwarded.
    let (_, status, body) = h2_get(&gw.url("/admin"), &world.token("orders:read")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "insufficient_scope");
    assert_eq!(versions.lock().unwrap().len(), 1);
}

/// A shared HTTP/2 upstream connection whose peer falls silent (a NAT or
/// load balancer dropped it without a word; the socket stays open) is found
/// dead by its pings and replaced: requests time out only until then.
#[tokio::test]
async fn a_silent_http2_upstream_connection_is_replaced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            let mut frozen = frozen.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                let body = if first { "first" } else { "later" };
                loop {
                    tokio::select! {
                        next = connection.accept() => {
                            let Some(Ok((_request, mut respond))) = next else { return };
                            let response = http::Response::new(());
                            if let Ok(mut send) = respond.send_response(response, false) {
                                let _ = send.send_data(Bytes::from_static(body.as_bytes()), true);
                            }
                        }
                        // Falls silent: never polled again, so no frame is
                        // read or written (pings included); the socket stays.
                        _ = frozen.changed(), if first => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            });
        }
    });
    let world = World::new().await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let token = world.token("orders:read");
    let reply = get_with_token(&gw.url("/orders/1"), &token).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "first"));

    freeze.send(true).unwrap();
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        let reply = get_with_token(&gw.url("/orders/2"), &token).await;
        statuses.push(reply.status);
        if reply.status == 200 {
            assert_eq!(reply.text(), "later");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&200), "never replaced: {statuses:?}");
    // Timed out while the dead connection was taken for alive (504), or cut
    // off when the pings gave it up under a request (502).
    assert!(
        statuses.iter().all(|s| [200, 502, 504].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// What [`body_recording_upstream`] saw of each request: its version, body
/// and trailers.
type SeenBodies = Arc<Mutex<Vec<(http::Version, Vec<u8>, Option<http::HeaderMap>)>>>;

/// An upstream that records each request's version, body and trailers.
async fn body_recording_upstream(seen: SeenBodies) -> SocketAddr {
    serve_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let version = req.version();
            let collected = req.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes().to_vec();
            seen.lock().unwrap().push((version, body, trailers));
            Response::new(full_body("ok"))
        }
    })
    .await
}

/// A GET with a chunked body (Elasticsearch's search, for one) reaches an
/// HTTP/1.1 upstream with its body: hyper would send a GET body of unknown
/// length as `Content-Length: 0` and drop it.
#[tokio::test]
async fn a_get_body_of_unknown_length_reaches_an_http1_upstream() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = body_recording_upstream(Arc::clone(&seen)).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let auth = bearer(&world.token("orders:read"));
    let mut bytes = request(
        "GET",
        "/orders/1",
        &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
    );
    bytes.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let reply = raw_reply(gw.addr, &bytes).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, http::Version::HTTP_11);
    assert_eq!(seen[0].1, b"hello world");
}

/// A GET body of known length goes on as it came, with its
/// `Content-Length`: only one of unknown length is sent chunked, which some
/// servers refuse on a GET.
#[tokio::test]
async fn a_get_body_of_known_length_keeps_its_length_to_an_http1_upstream() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let auth = bearer(&world.token("orders:read"));
    let mut bytes = request(
        "GET",
        "/orders/1",
        &[("Authorization", &auth), ("Content-Length", "11")],
    );
    bytes.extend_from_slice(b"hello world");
    let reply = raw_reply(gw.addr, &bytes).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = world.upstream.last();
    assert_eq!(seen.body_len, 11);
    let framing = ["content-length", "transfer-encoding"].map(|name| seen.headers.get(name));
    assert_eq!(framing, [Some(&http::HeaderValue::from_static("11")), None]);
}

/// An answer's trailers reach an HTTP/1.1 client that takes them (`TE:
/// trailers`): the upstream's `Trailer` header, by which hyper sends an
/// HTTP/1.1 client only the fields it announces, is kept.
#[tokio::test]
async fn answer_trailers_reach_an_http1_client_that_takes_them() {
    let world = World::new().await;
    let upstream = serve_fn(|_req: Request<Incoming>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        // Of unknown length, so that it goes chunked, with room for trailers.
        let frames = [
            Ok(hyper::body::Frame::data(Bytes::from("hello"))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert("trailer", http::HeaderValue::from_static("X-Checksum"));
        response
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let text = raw(
        gw.addr,
        b"GET /status HTTP/1.1\r\nHost: gw.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\ntrailer: x-checksum\r\n"), "{text}");
    assert!(text.contains("\r\n0\r\nx-checksum: abc\r\n\r\n"), "{text}");
}

/// An HTTP/1.1 upstream's trailer fields reach an HTTP/2 client without
/// the hop-by-hop ones (RFC 9113 8.2.2): a `keep-alive` or `connection`
/// field among them made h2 reset the stream after its data, and the
/// client lost the trailers (`grpc-status`) with it.
#[tokio::test]
async fn hop_by_hop_trailer_fields_do_not_reach_an_http2_client() {
    let world = World::new().await;
    let (upstream, _) = counting_upstream(Behaviour::BadFirst(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n\
          5\r\nhello\r\n0\r\ngrpc-status: 0\r\nkeep-alive: timeout=5\r\n\
          connection: x-hop\r\nx-hop: 1\r\nx-checksum: abc\r\n\r\n",
    ))
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let request = Request::get(gw.url("/status"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2_send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let collected = tokio::time::timeout(BOUND, response.into_body().collect())
        .await
        .unwrap()
        .expect("the stream was reset");
    let trailers = collected.trailers().cloned().expect("no trailers");
    assert_eq!(&collected.to_bytes()[..], b"hello");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-checksum"], "abc");
    for hop in ["keep-alive", "connection", "x-hop"] {
        assert!(!trailers.contains_key(hop), "{hop} reached the client");
    }
}

/// A field the answer's head names in `Connection` is this hop's in the
/// trailers too (RFC 9110 7.6.1): it reaches neither an HTTP/1.1 client
/// (nor the `Trailer` header announcing it) nor an HTTP/2 one.
#[tokio::test]
async fn a_trailer_field_the_answers_connection_header_names_is_not_passed_on() {
    let world = World::new().await;
    let upstream = serve_fn(|_req: Request<Incoming>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-hop", http::HeaderValue::from_static("hop-secret"));
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        let frames = [
            Ok(hyper::body::Frame::data(Bytes::from("hello"))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert("connection", http::HeaderValue::from_static("X-Hop"));
        headers.insert("x-hop", http::HeaderValue::from_static("head-hop"));
        headers.insert(
            "trailer",
            http::HeaderValue::from_static("x-hop, X-Checksum"),
        );
        response
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let text = raw(
        gw.addr,
        b"GET /status HTTP/1.1\r\nHost: gw.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\ntrailer: x-checksum\r\n"), "{text}");
    assert!(text.contains("\r\n0\r\nx-checksum: abc\r\n\r\n"), "{text}");
    assert!(!text.contains("hop"), "{text}");

    let request = Request::get(gw.url("/status"))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2_send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("x-hop"));
    let collected = tokio::time::timeout(BOUND, response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned().expect("no trailers");
    assert_eq!(trailers["x-checksum"], "abc");
    assert!(!trailers.contains_key("x-hop"), "{trailers:?}");
}

/// Request trailers are dropped: to an HTTP/2 upstream they would carry
/// fields the request head may not (a spoofed identity header, a method
/// override) past the gateway's header hygiene.
#[tokio::test]
async fn request_trailers_do_not_reach_an_http2_upstream() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = body_recording_upstream(Arc::clone(&seen)).await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let auth = bearer(&world.token("orders:write"));
    let mut bytes = request(
        "POST",
        "/orders/1",
        &[
            ("Authorization", &auth),
            ("Transfer-Encoding", "chunked"),
            ("Trailer", "X-Auth-Subject"),
        ],
    );
    bytes.extend_from_slice(
        b"5\r\nhello\r\n0\r\nX-Auth-Subject: admin\r\nX-HTTP-Method-Override: DELETE\r\n\r\n",
    );
    let reply = raw_reply(gw.addr, &bytes).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, http::Version::HTTP_2);
    assert_eq!(seen[0].1, b"hello");
    assert_eq!(seen[0].2, None, "trailers reached the upstream");
}

/// gRPC: `te: trailers` from an HTTP/2 client reaches an HTTP/2 upstream
/// (gRPC servers refuse a request without it), and nothing else of TE.
#[tokio::test]
async fn te_trailers_reaches_an_http2_upstream() {
    let world = World::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let seen = Arc::clone(&seen);
        serve_fn(move |req: Request<Incoming>| {
            let seen = Arc::clone(&seen);
            async move {
                let te: Vec<String> = req
                    .headers()
                    .get_all("te")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                seen.lock().unwrap().push((req.version(), te));
                Response::new(full_body("ok"))
            }
        })
        .await
    };
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let request = Request::post(gw.url("/orders/1"))
        .header("authorization", bearer(&world.token("orders:write")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let response = h2_send(request).await;
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        [(http::Version::HTTP_2, vec!["trailers".to_owned()])]
    );
}

/// A gRPC client reads a refusal from `grpc-status`: scopegate answers a
/// gRPC call it refuses as gRPC does (HTTP 200, no body, the status and an
/// escaped message), keeping the challenge; the metrics and the access log
/// still count the HTTP status. Not gRPC-Web, and not over HTTP/1.1.
#[tokio::test]
async fn refused_grpc_calls_get_a_grpc_status() {
    let (logs, _guard) = Logs::capture();
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let reader = bearer(&world.token("orders:read"));
    let writer = bearer(&world.token("orders:write"));
    let call = |path: &str, content_type: &str, authorization: Option<&str>| {
        let mut request = Request::post(gw.url(path))
            .header("content-type", content_type)
            .header("te", "trailers");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    // (what, request, grpc-status, grpc-message, challenge, HTTP status logged)
    let cases = [
        (
            "no token",
            call("/orders/1/items", "application/grpc", None),
            "16",
            "a bearer token is required",
            Some("Bearer realm=\"scopegate\""),
            401,
        ),
        (
            "not a JWT",
            call(
                "/orders/1/items",
                "application/grpc+proto",
                Some("Bearer not-a-jwt"),
            ),
            "16",
            "the token is not a compact JWS",
            Some("error=\"invalid_token\""),
            401,
        ),
        (
            "a scope short",
            call("/orders/1/items", "application/grpc", Some(&reader)),
            "7",
            "the token does not grant the scopes this route requires",
            Some("scope=\"orders:write"),
            403,
        ),
        (
            "no route",
            call("/billing.Invoices/List", "application/grpc", Some(&writer)),
            "12",
            "no route matches this path",
            None,
            404,
        ),
    ];
    for (what, request, status, message, challenge, logged) in cases {
        let response = h2_send(request).await;
        assert_eq!(response.status(), 200, "{what}");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let line = logs.access_line(&id).await.unwrap_or_default();
        assert!(line.contains(&format!("status={logged}")), "{what}: {line}");
        // Trailers-only: the header block ends the stream.
        assert!(http_body::Body::is_end_stream(response.body()), "{what}");
        assert!(!response.headers().contains_key("content-length"), "{what}");
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/grpc"),
            "{what}"
        );
        assert_eq!(header("grpc-status").as_deref(), Some(status), "{what}");
        assert_eq!(header("grpc-message").as_deref(), Some(message), "{what}");
        match challenge {
            Some(part) => assert!(
                header("www-authenticate").is_some_and(|v| v.contains(part)),
                "{what}: {headers:?}"
            ),
            None => assert!(!headers.contains_key("www-authenticate"), "{what}"),
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "{what}: {body:?}");
    }
    assert_eq!(world.upstream.count(), 0);

    // gRPC-Web keeps its status in the body, and HTTP/1.1 carries no gRPC:
    // plain refusals.
    let response = h2_send(call("/orders/1/items", "application/grpc-web", None)).await;
    assert_eq!(response.status(), 401);
    assert!(!response.headers().contains_key("grpc-status"));
    let reply = send(
        "POST",
        &gw.url("/orders/1/items"),
        &[("content-type", "application/grpc")],
        Bytes::from_static(b"\0\0\0\0\0"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401);
    assert!(reply.header("grpc-status").is_none());
    // An allowed call is the upstream's to answer.
    let response = h2_send(call("/orders/1/items", "application/grpc", Some(&writer))).await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("grpc-status"));
    assert_eq!(world.upstream.count(), 1);

    let metrics = gw.metrics().await;
    let requests = |route: &str, status: &str| {
        metric(
            &metrics,
            "scopegate_requests_total",
            &[("route", route), ("method", "POST"), ("status", status)],
        )
    };
    let route = "POST,PUT,DELETE /orders/{*rest}";
    assert_eq!(requests(route, "401"), 4.0, "{metrics}");
    assert_eq!(requests(route, "403"), 1.0, "{metrics}");
    assert_eq!(requests(route, "200"), 1.0, "{metrics}");

    // A call only a GET would be: no gRPC (gRPC calls are POSTs).
    let mut get = call("/orders/1", "application/grpc", None);
    *get.method_mut() = http::Method::GET;
    assert_eq!(h2_send(get).await.status(), 401);
    // An upstream that cannot be reached: UNAVAILABLE.
    let (_refusing, down) = refusing_address();
    let gw = Gateway::start(&config_for(&world, down)).await;
    let request = Request::post(gw.url("/orders/1/items"))
        .header("content-type", "application/grpc")
        .header("authorization", &writer)
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let response = h2_send(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(
        response.headers()["grpc-message"],
        "the upstream is unavailable"
    );
}

#[tokio::test]
async fn h2c_upstream() {
    let world = World::new().await;
    let versions = Arc::new(Mutex::new(Vec::new()));
    let upstream = version_upstream(Arc::clone(&versions)).await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    assert!(yaml.contains("http2_only: true"));
    let gw = Gateway::start(&yaml).await;

    let token = world.token("orders:read");
    let reply = get_with_token(&gw.url("/orders/42"), &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "HTTP/2.0 /orders/42 alice");
    let (version, status, body) = h2_get(&gw.url("/orders/43"), &token).await;
    assert_eq!((version, status), (http::Version::HTTP_2, StatusCode::OK));
    assert_eq!(body, "HTTP/2.0 /orders/43 alice");
    assert_eq!(
        *versions.lock().unwrap(),
        [http::Version::HTTP_2, http::Version::HTTP_2]
    );
}

/// An h2c upstream that reads the frames itself, reports each request's
/// header block (HPACK, as the gateway encoded it) and answers `200` with no
/// body.
async fn header_block_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (blocks, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let blocks = blocks.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                // An empty SETTINGS frame.
                if tcp.read_exact(&mut preface).await.is_err()
                    || tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.is_err()
                {
                    return;
                }
                loop {
                    let mut head = [0u8; 9];
                    if tcp.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let length = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let (kind, flags, stream) =
                        (head[3], head[4], [head[5], head[6], head[7], head[8]]);
                    let mut payload = vec![0u8; length];
                    if tcp.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let reply = match kind {
                        // SETTINGS: acknowledged.
                        4 if flags & 1 == 0 => vec![0, 0, 0, 4, 1, 0, 0, 0, 0],
                        // HEADERS, whole (END_HEADERS), without padding or
                        // priority: answered `:status: 200` (static index
                        // 8), which ends the stream.
                        1 => {
                            assert_eq!(flags & 0x2c, 0x04, "one unpadded HEADERS frame");
                            let _ = blocks.send(payload);
                            let mut reply = vec![0, 0, 1, 1, 0x05];
                            reply.extend_from_slice(&stream);
                            reply.push(0x88);
                            reply
                        }
                        // PING: answered.
                        6 if flags & 1 == 0 => {
                            let mut reply = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                            reply.extend_from_slice(&payload);
                            reply
                        }
                        _ => continue,
                    };
                    if tcp.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// The literal fields of an HPACK header block (RFC 7541 6), as (first
/// bits of the representation, static-table index of the name): `0001` is
/// never indexed, `0000` without indexing, `01` with incremental indexing.
fn hpack_literals(block: &[u8]) -> Vec<(u8, usize)> {
    // An integer with an N-bit prefix (RFC 7541 5.1).
    fn integer(block: &[u8], at: &mut usize, prefix: u8) -> usize {
        let max = (1usize << prefix) - 1;
        let mut value = usize::from(block[*at]) & max;
        *at += 1;
        if value == max {
            let mut shift = 0;
            loop {
                let byte = block[*at];
                *at += 1;
                value += usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        value
    }
    let mut literals = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let (kind, prefix) = match first {
            0x80.. => (0x80, 7),
            0x40..=0x7f => (0x40, 6),
            0x20..=0x3f => (0x20, 5),
            0x10..=0x1f => (0x10, 4),
            _ => (0x00, 4),
        };
        let index = integer(block, &mut at, prefix);
        if kind == 0x80 || kind == 0x20 {
            continue;
        }
        // A literal: a name string unless indexed, then the value string.
        let strings = if index == 0 { 2 } else { 1 };
        for _ in 0..strings {
            let length = integer(block, &mut at, 7);
            at += length;
        }
        literals.push((kind, index));
    }
    literals
}

/// A client's credentials reach an HTTP/2 upstream as never-indexed
/// literals (RFC 7541 7.1.3), so that an intermediary behind it (a mesh
/// proxy) does not put them in an HPACK table it shares between clients
/// either. The other fields may be indexed.
#[tokio::test]
async fn credentials_reach_an_http2_upstream_never_indexed() {
    const NEVER_INDEXED: u8 = 0x10;
    const AUTHORIZATION: usize = 23;
    const COOKIE: usize = 32;
    let world = World::new().await;
    let (upstream, mut blocks) = header_block_upstream().await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    assert!(yaml.contains("http2_only: true"));
    let gw = Gateway::start(&yaml).await;
    let auth = format!("Bearer {}", world.token("orders:read"));
    let reply = get(
        &gw.url("/orders/1"),
        &[("authorization", &auth), ("cookie", "session=s3cr3t")],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let literals = hpack_literals(&blocks.recv().await.unwrap());
    for name in [AUTHORIZATION, COOKIE] {
        let kinds: Vec<u8> = literals
            .iter()
            .filter(|(_, index)| *index == name)
            .map(|(kind, _)| *kind)
            .collect();
        assert_eq!(kinds, [NEVER_INDEXED], "static name {name} in {literals:?}");
    }
    assert!(
        literals.iter().any(|(kind, _)| *kind != NEVER_INDEXED),
        "{literals:?}"
    );
}

/// An h2c upstream that holds every answer until released: it allows
/// `max_streams` streams per connection, takes `max_connections`
/// connections and then no more (connecting is refused), and reports each
/// request's path with the number of the connection it came on.
struct HeldH2Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections the gateway has closed.
    closed: Arc<AtomicUsize>,
    arrivals: mpsc::UnboundedReceiver<(usize, String)>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldH2Upstream {
    async fn start(max_streams: u32, max_connections: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let (release, released) = tokio::sync::watch::channel(false);
        let (accepted, ended) = (Arc::clone(&connections), Arc::clone(&closed));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let number = accepted.fetch_add(1, Ordering::SeqCst);
                let (arrived, released) = (arrived.clone(), released.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (arrived, mut released) = (arrived.clone(), released.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let _ = arrived.send((number, path.clone()));
                        let _ = released.wait_for(|go| *go).await;
                        Ok::<_, std::convert::Infallible>(Response::new(full_body(path)))
                    }
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(tcp), service);
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let _ = connection.await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
                if number + 1 == max_connections {
                    return;
                }
            }
        });
        Self {
            addr,
            connections,
            closed,
            arrivals,
            release,
        }
    }

    /// The next `n` arrivals: (connection number, path), bounded.
    async fn arrived(&mut self, n: usize) -> Vec<(usize, String)> {
        let mut seen = Vec::new();
        while seen.len() < n {
            match tokio::time::timeout(BOUND, self.arrivals.recv()).await {
                Ok(Some(arrival)) => seen.push(arrival),
                _ => panic!(
                    "only {seen:?} reached the upstream, on {} connections",
                    self.connections.load(Ordering::SeqCst)
                ),
            }
        }
        seen
    }

    /// A gateway with `http2_max_streams` to it (and `extra` upstream lines).
    async fn gateway(&self, world: &World, max_streams: usize, extra: &str) -> Gateway {
        let yaml = config_for(world, self.addr).replace(
            "    request_timeout: 2s\n",
            &format!(
                "    request_timeout: 30s\n    http2_only: true\n    http2_max_streams: {max_streams}\n{extra}"
            ),
        );
        assert!(yaml.contains("http2_max_streams"));
        Gateway::start(&yaml).await
    }
}

/// `n` requests at once through `gw`, to `/orders/{first..first+n}`.
fn held_requests(gw: &Gateway, token: &str, first: usize, n: usize) -> tokio::task::JoinSet<Reply> {
    let mut held = tokio::task::JoinSet::new();
    for k in first..first + n {
        let url = gw.url(&format!("/orders/{k}"));
        let token = token.to_owned();
        held.spawn(async move { get_with_token(&url, &token).await });
    }
    held
}

/// Each reply 200, with its path as the body; the paths, sorted.
async fn all_answered(mut held: tokio::task::JoinSet<Reply>) -> Vec<String> {
    let mut paths = Vec::new();
    while let Some(reply) = held.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        paths.push(reply.text());
    }
    paths.sort();
    paths
}

/// Long-lived requests (gRPC streams) to an HTTP/2 upstream take one
/// stream each: past `http2_max_streams` on a connection, the next request
/// goes on another connection rather than waiting for a slot. Here the
/// upstream allows two streams per connection and holds every answer, so
/// five requests only all reach it on three connections; once answered,
/// their slots serve later requests, on the oldest connection first.
#[tokio::test]
async fn h2c_upstream_streams_past_the_limit_open_another_connection() {
    let mut upstream = HeldH2Upstream::start(2, usize::MAX).await;
    let world = World::new().await;
    let gw = upstream.gateway(&world, 2, "").await;
    let token = world.token("orders:read");

    let held = held_requests(&gw, &token, 0, 5);
    let mut on: Vec<usize> = upstream.arrived(5).await.iter().map(|a| a.0).collect();
    on.sort_unstable();
    assert_eq!(on, [0, 0, 1, 1, 2]);
    upstream.release.send(true).unwrap();
    assert_eq!(
        all_answered(held).await,
        [
            "/orders/0",
            "/orders/1",
            "/orders/2",
            "/orders/3",
            "/orders/4"
        ]
    );
    // The slots came back: two at once go on the first connection again.
    let held = held_requests(&gw, &token, 5, 2);
    assert_eq!(all_answered(held).await, ["/orders/5", "/orders/6"]);
    let on: Vec<usize> = upstream.arrived(2).await.iter().map(|a| a.0).collect();
    assert_eq!(on, [0, 0]);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 3);
}

/// The connections a burst opened past the first close once idle for
/// `pool_idle_timeout`; the first stays open and takes the next request.
/// So too with no room for idle HTTP/1.1 connections, which HTTP/2 ones do
/// not take.
#[tokio::test]
async fn h2c_upstream_connections_past_the_first_close_when_idle() {
    let world = World::new().await;
    let token = world.token("orders:read");
    for extra in ["", "    pool_max_idle_per_host: 0\n"] {
        let mut upstream = HeldH2Upstream::start(10, usize::MAX).await;
        let gw = upstream
            .gateway(&world, 1, &format!("    pool_idle_timeout: 1s\n{extra}"))
            .await;

        let held = held_requests(&gw, &token, 0, 3);
        let mut on: Vec<usize> = upstream.arrived(3).await.iter().map(|a| a.0).collect();
        on.sort_unstable();
        assert_eq!(on, [0, 1, 2], "{extra}");
        upstream.release.send(true).unwrap();
        all_answered(held).await;
        let deadline = tokio::time::Instant::now() + BOUND;
        while upstream.closed.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(upstream.closed.load(Ordering::SeqCst), 2, "{extra}");
        let reply = get_with_token(&gw.url("/orders/3"), &token).await;
        assert_eq!(reply.status, 200);
        assert_eq!(upstream.arrived(1).await[0].0, 0);
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 3, "{extra}");
        assert_eq!(upstream.closed.load(Ordering::SeqCst), 2, "{extra}");
    }
}

/// The pool's clock runs at one pace however many connections it opened:
/// ten connections a burst opened, idle for two seconds of a ten-second
/// `pool_idle_timeout`, are all still open.
#[tokio::test]
async fn h2c_upstream_connections_stay_open_within_pool_idle_timeout() {
    let mut upstream = HeldH2Upstream::start(10, usize::MAX).await;
    let world = World::new().await;
    let gw = upstream
        .gateway(&world, 1, "    pool_idle_timeout: 10s\n")
        .await;
    let token = world.token("orders:read");

    let held = held_requests(&gw, &token, 0, 10);
    upstream.arrived(10).await;
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 10);
    upstream.release.send(true).unwrap();
    all_answered(held).await;
    // Two ticks of the pool's clock (one a second), well within the timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(upstream.closed.load(Ordering::SeqCst), 0);
    let held = held_requests(&gw, &token, 10, 10);
    assert_eq!(all_answered(held).await.len(), 10);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 10);
}

/// A connection past the first that carries a long request (a gRPC stream)
/// is not idle, however long that request lasts: past a few ticks of a
/// one-second `pool_idle_timeout`, its free slot still takes the next
/// request, and no third connection opens.
#[tokio::test]
async fn h2c_upstream_connection_carrying_a_long_request_is_not_retired() {
    let mut upstream = HeldH2Upstream::start(10, usize::MAX).await;
    let world = World::new().await;
    let gw = upstream
        .gateway(&world, 2, "    pool_idle_timeout: 1s\n")
        .await;
    let token = world.token("orders:read");

    let held = held_requests(&gw, &token, 0, 3);
    let mut on: Vec<usize> = upstream.arrived(3).await.iter().map(|a| a.0).collect();
    on.sort_unstable();
    assert_eq!(on, [0, 0, 1]);
    // Four ticks of the pool's clock (one each half second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let next = held_requests(&gw, &token, 3, 1);
    assert_eq!(upstream.arrived(1).await[0], (1, "/orders/3".to_owned()));
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    upstream.release.send(true).unwrap();
    assert_eq!(all_answered(held).await.len(), 3);
    assert_eq!(all_answered(next).await, ["/orders/3"]);
}

/// An HTTP/2 stream stays open while its request body goes out, even once
/// the answer has ended (an upstream may answer first): its slot is held
/// until the upload ends too. With one stream per connection, a request
/// made meanwhile takes a second connection; afterwards, no third opens.
#[tokio::test]
async fn h2c_upstream_stream_slot_is_held_until_the_upload_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    // (connection number, the body as read to its end)
    let (uploaded, mut uploads) = mpsc::unbounded_channel::<(usize, Vec<u8>)>();
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let number = accepted.fetch_add(1, Ordering::SeqCst);
            let uploaded = uploaded.clone();
            // Answers at once, and reads the body on after the answer.
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let uploaded = uploaded.clone();
                async move {
                    tokio::spawn(async move {
                        if let Ok(body) = req.into_body().collect().await {
                            let _ = uploaded.send((number, body.to_bytes().to_vec()));
                        }
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(full_body("early")))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    let world = World::new().await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n    http2_max_streams: 1\n",
    );
    let gw = Gateway::start(&yaml).await;
    let token = world.token("orders:read orders:write");

    // An upload that is not over when its answer comes.
    let mut upload = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /orders/1/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while find(&received, b"early").is_none() {
        let n = tokio::time::timeout(BOUND, upload.read(&mut buf))
            .await
            .expect("no answer to the upload")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let reply = get_with_token(&gw.url("/orders/2"), &token).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "early"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // The upload ends, and with it the stream: its slot serves again.
    upload.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut next = async || {
        tokio::time::timeout(BOUND, uploads.recv())
            .await
            .expect("nothing more reached the upstream")
            .unwrap()
    };
    // The GET's empty body, then the upload, whole, on the first connection.
    assert_eq!(next().await, (1, Vec::new()));
    assert_eq!(next().await, (0, b"hello world".to_vec()));
    let reply = get_with_token(&gw.url("/orders/3"), &token).await;
    assert_eq!(reply.status, 200);
    assert_eq!(next().await, (0, Vec::new()));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// Starts an upload to `path` that never ends (chunks for as long as the
/// gateway takes them, from a task that outlives the call), and returns
/// once its answer has come whole: the upstreams below answer before
/// reading the body.
async fn endless_upload(gw: &Gateway, token: &str, path: &str) {
    let mut upload = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = upload.into_split();
    tokio::spawn(async move {
        let chunk = format!("4000\r\n{}\r\n", "u".repeat(0x4000));
        while writer.write_all(chunk.as_bytes()).await.is_ok() {}
    });
    early_answer(&mut reader).await;
}

/// Reads an answer of `200 OK` with the body `early` (those of the
/// upstreams below).
async fn early_answer(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while find(&received, b"early").is_none() {
        let n = tokio::time::timeout(BOUND, reader.read(&mut buf))
            .await
            .expect("no answer to the upload")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"), "{received:?}");
}

/// A gateway in front of the h2c `upstream` with `body_idle_timeout: 1s`,
/// and `extra` upstream settings.
async fn h2c_gateway_that_waits_1s(world: &World, upstream: SocketAddr, extra: &str) -> Gateway {
    let yaml = config_for(world, upstream).replace(
        "    request_timeout: 2s\n",
        &format!(
            "    request_timeout: 2s\n    body_idle_timeout: 1s\n    http2_only: true\n{extra}"
        ),
    );
    Gateway::start(&yaml).await
}

/// Waits for `stalls` to be counted, then for the stuck stream's
/// connection to close (the last body `unread` kept ends).
async fn stalls_are_counted_and_the_connection_closed(
    gw: &Gateway,
    unread: &Mutex<Vec<Incoming>>,
    stalls: f64,
) {
    assert!(
        wait_for_metrics(gw, |m| stalled_uploads(m) == stalls).await,
        "not {stalls} stalls counted: {}",
        gw.metrics().await
    );
    assert!(
        last_unread_body_ends(unread).await,
        "the stuck stream's connection stayed open"
    );
}

/// Upstream stalls of an upload still going out after its answer ended are
/// counted here (`body_idle_timeout` of silence).
fn stalled_uploads(metrics: &str) -> f64 {
    metric(
        metrics,
        "scopegate_upstream_errors_total",
        &[("upstream", "app"), ("kind", "body_timeout")],
    )
}

/// An h2c upstream that answers every request at once and reads none of
/// any request body (keeping them, so their streams stay open, with
/// `window` bytes of each stream's body let in); counts its connections.
/// Its answer is `early`, or, if `answer_stalls`, `early` and then nothing
/// more, never ending.
async fn unreading_h2_upstream(
    window: u32,
    answer_stalls: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<Incoming>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let unread = Arc::new(Mutex::new(Vec::new()));
    let (accepted, kept) = (Arc::clone(&connections), Arc::clone(&unread));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let kept = Arc::clone(&kept);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                kept.lock().unwrap().push(req.into_body());
                async move {
                    if !answer_stalls {
                        return Ok::<_, std::convert::Infallible>(Response::new(full_body(
                            "early",
                        )));
                    }
                    let (more, body) = channel_body();
                    more.send(Bytes::from_static(b"early")).await.unwrap();
                    // Never ends: the sender lives on with the task.
                    tokio::spawn(async move {
                        more.closed().await;
                    });
                    Ok(Response::new(body.boxed()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(window)
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (upstream, connections, unread)
}

/// Whether the last request body `unread` kept ends (its connection
/// closed) within [`BOUND`].
async fn last_unread_body_ends(unread: &Mutex<Vec<Incoming>>) -> bool {
    let mut body = unread.lock().unwrap().pop().unwrap();
    let ended = tokio::time::timeout(BOUND, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await
    .is_ok();
    // Kept: h2's `unstable` feature (on for the frame tests) asserts, as
    // the last handle of a connection that ended with streams open goes,
    // that none are; this one would be that last handle.
    std::mem::forget(body);
    ended
}

/// An HTTP/2 upstream that answers at once and then takes none of the rest
/// of the upload (it neither reads the body nor ends the stream): after
/// `body_idle_timeout`, the gateway closes that connection, which carries
/// nothing else, and the next request goes on a new one.
#[tokio::test]
async fn h2c_upstream_that_stops_taking_an_answered_upload_is_closed() {
    let (upstream, connections, unread) = unreading_h2_upstream(65_535, false).await;
    let world = World::new().await;
    let gw = h2c_gateway_that_waits_1s(&world, upstream, "").await;
    let token = world.token("orders:read orders:write");

    endless_upload(&gw, &token, "/orders/1/items").await;
    stalls_are_counted_and_the_connection_closed(&gw, &unread, 1.0).await;
    let reply = get_with_token(&gw.url("/orders/2"), &token).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "early"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// The same when the answer breaks off: it stalls for `body_idle_timeout`
/// and is cut off (counted), while the upload the upstream takes none of
/// goes on; that stall is caught too (counted again), and the connection
/// closed.
#[tokio::test]
async fn h2c_upstream_that_stops_taking_an_upload_under_a_cut_off_answer_is_closed() {
    let (upstream, _, unread) = unreading_h2_upstream(65_535, true).await;
    let world = World::new().await;
    let gw = h2c_gateway_that_waits_1s(&world, upstream, "").await;
    let token = world.token("orders:read orders:write");

    endless_upload(&gw, &token, "/orders/1/items").await;
    stalls_are_counted_and_the_connection_closed(&gw, &unread, 2.0).await;
}

/// The same once the whole body has been read from the client, but not
/// sent: the upstream's window lets none of it in (once its settings have
/// come, with a first request), and hyper holds it. The stream's slot is
/// not freed when the answer ends (the connection would take more requests
/// past `http2_max_streams`), and the stall is caught.
#[tokio::test]
async fn h2c_upstream_that_takes_none_of_a_whole_answered_body_is_closed() {
    let (upstream, connections, unread) = unreading_h2_upstream(0, false).await;
    let world = World::new().await;
    let gw = h2c_gateway_that_waits_1s(&world, upstream, "    http2_max_streams: 1\n").await;
    let token = world.token("orders:read orders:write");
    let reply = get_with_token(&gw.url("/orders/1"), &token).await;
    assert_eq!(reply.status, 200);

    let mut upload = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "POST /orders/1/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\n\r\nhello"
    );
    upload.write_all(request.as_bytes()).await.unwrap();
    early_answer(&mut upload).await;
    stalls_are_counted_and_the_connection_closed(&gw, &unread, 1.0).await;
    let reply = get_with_token(&gw.url("/orders/2"), &token).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "early"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// Requests with bodies, read whole by the upstream before it answers, leave
/// their upstream connection to the next request: pooled over HTTP/1.1, and
/// over HTTP/2 with the stream's slot free again (one slot per connection
/// here), rather than taken for uploads still going out.
#[tokio::test]
async fn uploads_leave_their_upstream_connection_reusable() {
    for http2 in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(full_body(body.len().to_string())))
                });
                let io = TokioIo::new(tcp);
                tokio::spawn(async move {
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        let world = World::new().await;
        let extra = if http2 {
            "    http2_only: true\n    http2_max_streams: 1\n"
        } else {
            ""
        };
        let yaml = config_for(&world, upstream).replace(
            "    request_timeout: 2s\n",
            &format!("    request_timeout: 2s\n{extra}"),
        );
        let gw = Gateway::start(&yaml).await;
        let auth = bearer(&world.token("orders:write"));
        for size in [1, 100_000, 5, 300_000] {
            let reply = send(
                "POST",
                &gw.url("/orders/1/items"),
                &[("authorization", &auth)],
                Bytes::from(vec![b'x'; size]),
            )
            .await
            .unwrap();
            assert_eq!(
                (reply.status, reply.text()),
                (200, size.to_string()),
                "http2: {http2}"
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "http2: {http2}");
    }
}

/// An HTTP/1.1 upstream that answers at once and then neither reads the
/// rest of the upload nor closes has its connection closed by the gateway
/// after `body_idle_timeout`, instead of holding it (and the client's upload)
/// for ever.
#[tokio::test]
async fn http1_upstream_that_stops_taking_an_answered_upload_is_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (go_on, resume) = tokio::sync::oneshot::channel::<()>();
    let (closed, mut was_closed) = mpsc::unbounded_channel::<bool>();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut buf).await.unwrap(), 1);
            head.push(buf[0]);
        }
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
            .await
            .unwrap();
        // Reads nothing more until told, then drains what was sent: the
        // end comes only if the gateway closed the connection.
        let _ = resume.await;
        let mut rest = vec![0u8; 1 << 16];
        let ended = tokio::time::timeout(BOUND, async {
            loop {
                match tcp.read(&mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok();
        let _ = closed.send(ended);
    });
    let world = World::new().await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    body_idle_timeout: 1s\n",
    );
    let gw = Gateway::start(&yaml).await;
    let token = world.token("orders:read orders:write");

    endless_upload(&gw, &token, "/orders/1/items").await;
    assert!(
        wait_for_metrics(&gw, |m| stalled_uploads(m) == 1.0).await,
        "the stall was not counted: {}",
        gw.metrics().await
    );
    go_on.send(()).unwrap();
    assert_eq!(
        was_closed.recv().await,
        Some(true),
        "the upstream connection stayed open"
    );
}

/// When no further connection can be opened, a full one takes the request
/// past `http2_max_streams` (its upstream queues or refuses it) instead of
/// failing it: the upstream here allows more streams than the gateway's
/// limit of one, and refuses a second connection.
#[tokio::test]
async fn h2c_upstream_full_connection_takes_more_when_no_other_opens() {
    let mut upstream = HeldH2Upstream::start(10, 1).await;
    let world = World::new().await;
    let gw = upstream.gateway(&world, 1, "").await;
    let token = world.token("orders:read");

    let held = held_requests(&gw, &token, 0, 3);
    let on: Vec<usize> = upstream.arrived(3).await.iter().map(|a| a.0).collect();
    assert_eq!(on, [0, 0, 0]);
    upstream.release.send(true).unwrap();
    assert_eq!(
        all_answered(held).await,
        ["/orders/0", "/orders/1", "/orders/2"]
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}

/// A response header block larger than h2's 16 KiB default (a large policy
/// header, many cookies) passes over HTTP/2 as it does over HTTP/1.1.
#[tokio::test]
async fn large_response_headers_pass_from_an_http2_upstream() {
    let world = World::new().await;
    let upstream = serve_fn(|_req: Request<Incoming>| async move {
        let mut response = Response::new(full_body("ok"));
        for i in 0..40 {
            let name = http::HeaderName::try_from(format!("x-large-{i}")).unwrap();
            let value = http::HeaderValue::try_from("v".repeat(1000)).unwrap();
            response.headers_mut().insert(name, value);
        }
        response
    })
    .await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let reply = get_with_token(&gw.url("/orders/42"), &world.token("orders:read")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-large-39").map(|v| v.len()), Some(1000));
}

/// An upstream's offer to switch protocols stays between it and scopegate,
/// but a 426 keeps the `Upgrade` it must name (RFC 9110 15.5.22), and the
/// `Connection: upgrade` that goes with it (7.8).
#[tokio::test]
async fn upgrade_offers_stop_here_but_a_426_names_its_protocol() {
    let world = World::new().await;
    let upstream = serve_fn(|req: Request<Incoming>| async move {
        let status = if req.uri().path() == "/status" {
            200
        } else {
            426
        };
        Response::builder()
            .status(status)
            .header("connection", "Upgrade")
            .header("upgrade", "TLS/1.2")
            .body(full_body("x"))
            .unwrap()
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let offer = raw_reply(gw.addr, &request("GET", "/status", &[])).await;
    assert_eq!(offer.status, 200, "{offer:?}");
    assert_eq!(offer.header("upgrade"), None, "{offer:?}");
    let auth = bearer(&world.token("admin"));
    let required = raw_reply(
        gw.addr,
        &request("GET", "/admin", &[("Authorization", &auth)]),
    )
    .await;
    assert_eq!(required.status, 426, "{required:?}");
    assert_eq!(required.header("upgrade").as_deref(), Some("TLS/1.2"));
    // With the `Connection: upgrade` a sender of `Upgrade` sends (7.8).
    let connection = |reply: &RawReply| {
        reply
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert!(connection(&required).contains("upgrade"), "{required:?}");
    assert!(!connection(&offer).contains("upgrade"), "{offer:?}");
}

/// An absolute-form target without a path (`http://host?x=1`) is the path
/// `/`; an HTTP/2 upstream gets `:path: /?x=1`, not the received `?x=1`,
/// which it must refuse.
#[tokio::test]
async fn an_absolute_target_without_a_path_reaches_an_http2_upstream_as_slash() {
    let world = World::new().await;
    // What the upstream's `:path` held, as received.
    let upstream = serve_fn(|req: Request<Incoming>| async move {
        let target = req.uri().path_and_query().map(|pq| pq.as_str().to_owned());
        Response::new(full_body(format!("{:?} {target:?}", req.version())))
    })
    .await;
    let yaml = config_for(&world, upstream)
        .replace(
            "    request_timeout: 2s\n",
            "    request_timeout: 2s\n    http2_only: true\n",
        )
        .replace(
            "routes:\n",
            "routes:\n  - path: /\n    upstream: app\n    auth: none\n",
        );
    let gw = Gateway::start(&yaml).await;
    for target in ["http://gw.test?x=1", "http://gw.test/?x=1"] {
        let reply = raw_reply(gw.addr, &request("GET", target, &[])).await;
        assert_eq!(reply.status, 200, "{target}: {reply:?}");
        assert_eq!(reply.body, "HTTP/2.0 Some(\"/?x=1\")", "{target}");
    }
}

/// Clients that stop reading keep their streams' share of the one HTTP/2
/// connection to an upstream filled; that share is small enough that eight
/// of them (each with a 16 MiB answer) leave room for everyone else's
/// answers on the same connection.
#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_a_shared_http2_upstream() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const STALLED: usize = 8;
    const CHUNK: usize = 64 << 10;
    const BIG: usize = 16 << 20;
    let world = World::new().await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let upstream = serve_fn(move |req: Request<Incoming>| {
        let sent = Arc::clone(&counter);
        async move {
            if req.uri().query() != Some("big") {
                return Response::new(full_body("ok"));
            }
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; CHUNK]);
                for _ in 0..BIG / CHUNK {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                    sent.fetch_add(CHUNK, Ordering::SeqCst);
                }
            });
            Response::new(body.boxed())
        }
    })
    .await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(gw.addr).await.unwrap();
        stream
            .write_all(b"GET /status?big HTTP/1.1\r\nhost: gw.test\r\n\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Until the answers stop moving: every stalled stream's window is full.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(last < STALLED * BIG, "the stalled clients took every byte");

    let reply = tokio::time::timeout(BOUND, get(&gw.url("/status"), &[]))
        .await
        .expect("an answer stuck behind the stalled streams")
        .unwrap();
    assert_eq!((reply.status, reply.text()), (200, "ok".to_owned()));
    drop(stalled);
}

/// A slow HTTP/1.1 reader holds back its upstream: while it reads nothing,
/// the upstream gets no further than what socket buffers hold (the gateway
/// itself keeps little), and once it reads on, a little at a
/// time, the whole answer arrives, every byte in its place.
#[tokio::test]
async fn a_slow_http1_reader_holds_back_its_upstream_and_gets_every_byte() {
    const CHUNK: usize = 64 << 10;
    // What the two hops' socket buffers may hold as Linux autotunes them
    // (the gateway's receiving one up to `tcp_rmem`'s maximum, each sending
    // one up to `tcp_wmem`'s; the client's is set small below), plus 8 MiB
    // for hyper's buffers and the test upstream's channel.
    let kernel_max = |name: &str, or: usize| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(or)
    };
    let held_at_most =
        kernel_max("tcp_rmem", 32 << 20) + 2 * kernel_max("tcp_wmem", 4 << 20) + (8 << 20);
    let total = (2 * held_at_most).next_multiple_of(CHUNK);
    let pattern = |offset: usize| ((offset / CHUNK) % 251) as u8;
    let world = World::new().await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let upstream = serve_fn(move |_req: Request<Incoming>| {
        let sent = Arc::clone(&counter);
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for offset in (0..total).step_by(CHUNK) {
                    let chunk = Bytes::from(vec![pattern(offset); CHUNK]);
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                    sent.fetch_add(CHUNK, Ordering::SeqCst);
                }
            });
            let mut response = Response::new(body.boxed());
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, total.into());
            response
        }
    })
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /status HTTP/1.1\r\nhost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 16 << 10];
    let mut head = Vec::new();
    let mut body = Vec::new();
    while body.is_empty() {
        let n = tokio::time::timeout(BOUND, stream.read(&mut buffer))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body = head.split_off(end + 4);
            if body.is_empty() {
                break;
            }
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut received = body.len();
    // Run by run of one chunk's byte (a per-byte check is slow unoptimised).
    let check = |bytes: &[u8], from: usize| {
        let mut at = 0;
        while at < bytes.len() {
            let offset = from + at;
            let run = (CHUNK - offset % CHUNK).min(bytes.len() - at);
            assert!(
                bytes[at..at + run].iter().all(|&b| b == pattern(offset)),
                "bytes out of place in {offset}..{}",
                offset + run
            );
            at += run;
        }
    };
    check(&body, 0);

    // Reading nothing: the upstream stops once the buffers are full (no
    // progress for three samples in a row).
    let (mut last, mut still) = (usize::MAX, 0);
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still == 3 {
            break;
        }
    }
    assert!(
        last < received + held_at_most,
        "the upstream sent {last} bytes to a client that read {received}"
    );

    // Reading slowly, 16 KiB at a time with a pause every MiB: all of it.
    tokio::time::timeout(Duration::from_secs(120), async {
        while received < total {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the answer ended after {received} bytes");
            check(&buffer[..n], received);
            if (received + n) / (1 << 20) != received / (1 << 20) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            received += n;
        }
    })
    .await
    .expect("the rest of the answer never came");
    assert_eq!(received, total);
    assert_eq!(sent.load(Ordering::SeqCst), total);
}

/// To an HTTP/2 upstream, a burst of requests arriving before any
/// connection is open opens one connection, which they all share, rather
/// than one each.
#[tokio::test]
async fn a_burst_to_an_http2_upstream_opens_one_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const BURST: usize = 16;
    let world = World::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full_body("ok")))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let url = gw.url("/status");
        burst.spawn(async move { get(&url, &[]).await.unwrap().status });
    }
    let mut statuses = Vec::new();
    while let Some(status) = burst.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(statuses, [200; BURST]);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// 8. Graceful shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_lets_the_in_flight_request_finish() {
    let world = World::new().await;
    let (arrived, mut arrived_rx) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let upstream = serve_fn(move |_req: Request<Incoming>| {
        let (arrived, gate) = (arrived.clone(), Arc::clone(&gate));
        async move {
            let _ = arrived.send(());
            gate.notified().await;
            Response::new(full_body("finished"))
        }
    })
    .await;
    // The request stays in flight until released, however slow the machine
    // (the grace bounds the wait from shutdown to the release).
    let config = config_for(&world, upstream)
        .replace("    request_timeout: 2s\n", "    request_timeout: 60s\n")
        .replace("  shutdown_grace: 5s\n", "  shutdown_grace: 60s\n");
    assert!(config.contains("request_timeout: 60s") && config.contains("shutdown_grace: 60s"));
    let mut gw = Gateway::start(&config).await;

    let url = gw.url("/status");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::timeout(BOUND, arrived_rx.recv())
        .await
        .expect("the request never reached the upstream")
        .unwrap();

    gw.trigger_shutdown();
    let admin = gw.admin;
    eventually("readyz turns 503", || async move {
        get(&format!("http://{admin}/readyz"), &[])
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    let addr = gw.addr;
    eventually("the listener closes", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(!gw.task.is_finished(), "stopped with a request in flight");
    assert!(!in_flight.is_finished());

    release.notify_one();
    let reply = tokio::time::timeout(BOUND, in_flight)
        .await
        .expect("the in-flight request never finished")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "finished");

    let result = tokio::time::timeout(BOUND, &mut gw.task)
        .await
        .expect("the gateway did not stop after draining")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(TcpStream::connect(gw.addr).await.is_err());
    assert!(get(&gw.url("/status"), &[]).await.is_err());
}

// ---------------------------------------------------------------------------
// 9. Metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn request_metrics_have_bounded_labels() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let token = world.token("orders:read");

    for id in ["42", "43"] {
        let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
        assert_eq!(reply.status, 200);
    }
    let reply = get(&gw.url("/secret-path-4711/x"), &[]).await.unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"], "not_found");
    // Counted through the route's resolved series, per method.
    for (method, id) in [("GET", 99), ("GET", 98), ("HEAD", 97)] {
        let reply = send(method, &gw.url(&format!("/orders/{id}")), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{method}");
    }
    let reply = send("FOOBAR", &gw.url("/status"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(world.upstream.last().method, "FOOBAR");
    let reply = send("FOOBAR", &gw.url("/orders/42"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    // Each registered method is its own label.
    let registered = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    for method in registered {
        let reply = send(method, &gw.url("/status"), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
    }
    // CONNECT and TRACE are refused before routing, each under its own label.
    let reply = send("TRACE", &gw.url("/status"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 501, "{}", reply.text());
    let reply = raw_reply(
        gw.addr,
        b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 501, "{reply:?}");

    let metrics = gw.metrics().await;
    let own_labels = registered
        .map(|method| (method, "/status", "200"))
        .into_iter()
        .chain([
            ("CONNECT", "unmatched", "501"),
            ("TRACE", "unmatched", "501"),
        ]);
    for (method, route, status) in own_labels {
        let series = format!(
            r#"scopegate_requests_total{{method="{method}",route="{route}",status="{status}"}}"#
        );
        assert_eq!(sample(&metrics, &series), Some(1.0), "{series}\n{metrics}");
    }
    let expected = [
        (
            r#"scopegate_requests_total{method="GET",route="GET /orders/{id}",status="200"}"#,
            2.0,
        ),
        (
            r#"scopegate_requests_total{method="GET",route="GET /orders/{id}",status="401"}"#,
            2.0,
        ),
        (
            r#"scopegate_requests_total{method="HEAD",route="GET /orders/{id}",status="401"}"#,
            1.0,
        ),
        (
            r#"scopegate_requests_total{method="GET",route="unmatched",status="404"}"#,
            1.0,
        ),
        (
            r#"scopegate_requests_total{method="other",route="/status",status="200"}"#,
            1.0,
        ),
        (
            r#"scopegate_requests_total{method="other",route="unmatched",status="405"}"#,
            1.0,
        ),
    ];
    for (series, value) in expected {
        assert_eq!(sample(&metrics, series), Some(value), "{series}\n{metrics}");
    }
    assert!(!metrics.contains("FOOBAR"), "{metrics}");
    assert!(!metrics.contains("secret-path-4711"), "{metrics}");
    assert!(!metrics.contains("/orders/42"), "{metrics}");
    assert!(!metrics.contains(&token), "token in metrics");
    assert!(!metrics.contains(token.split('.').nth(1).unwrap()));
    assert!(!metrics.contains("alice"), "{metrics}");
}

// ---------------------------------------------------------------------------
// 10. Upstream connections
// ---------------------------------------------------------------------------

/// How [`counting_upstream`] treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers every request, keeps the connection open.
    KeepAlive,
    /// Answers every request with these bytes, keeps the connection open.
    KeepAliveWith(&'static [u8]),
    /// Closes each connection right after its first answer without saying
    /// so, as an upstream that drops idle keep-alive connections does.
    CloseAfterReply,
    /// Closes each connection as it accepts it, reading nothing.
    CloseAtOnce,
    /// Answers the first connection's request with these bytes (an answer
    /// the gateway must refuse) and closes it, then behaves.
    BadFirst(&'static [u8]),
    /// Answers the first connection's first request, then reads its second
    /// and closes it unanswered, as an upstream whose keep-alive runs out
    /// just as a request arrives does; later connections behave.
    DropFirstsSecond,
    /// Answers the first connection's first request, then its second with
    /// these bytes (an answer the gateway must refuse), and closes it; later
    /// connections behave.
    BadFirstsSecond(&'static [u8]),
}

/// A raw HTTP/1.1 upstream answering requests with 200 "ok" (keep-alive
/// framing) as `behaviour` says, counting the connections it accepted.
async fn counting_upstream(behaviour: Behaviour) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, accepted, _) = recording_upstream(behaviour).await;
    (addr, accepted)
}

/// [`counting_upstream`], also keeping each request head it read (the
/// lines before the blank one, as sent), in order of arrival.
async fn recording_upstream(
    behaviour: Behaviour,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (counter, recorded) = (Arc::clone(&accepted), Arc::clone(&heads));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let recorded = Arc::clone(&recorded);
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            let (bad, answer) = match behaviour {
                Behaviour::BadFirst(bytes) if first => (Some(bytes), None),
                Behaviour::KeepAliveWith(bytes) => (None, Some(bytes)),
                _ => (None, None),
            };
            if behaviour == Behaviour::CloseAtOnce {
                continue;
            }
            let close_after_reply = bad.is_some() || behaviour == Behaviour::CloseAfterReply;
            // What the first connection does with its second request.
            let second = first.then_some(behaviour);
            let mut answered = 0;
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        recorded.lock().unwrap().push(head);
                        buffer.drain(..end + 4);
                        let bad = match second.filter(|_| answered == 1) {
                            Some(Behaviour::DropFirstsSecond) => return,
                            Some(Behaviour::BadFirstsSecond(bytes)) => Some(bytes),
                            _ => bad,
                        };
                        answered += 1;
                        let reply: &[u8] = bad
                            .or(answer)
                            .unwrap_or(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        let close = close_after_reply || bad.is_some();
                        if stream.write_all(reply).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted, heads)
}

/// Sends five sequential requests through a gateway in front of
/// [`counting_upstream`]; all must be answered 200 "ok". Returns how many
/// upstream connections were opened, and the gateway's metrics.
async fn five_requests(behaviour: Behaviour) -> (usize, String) {
    let world = World::new().await;
    let (upstream, accepted) = counting_upstream(behaviour).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let token = world.token("orders:read");
    for id in 0..5 {
        let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    }
    (accepted.load(Ordering::SeqCst), gw.metrics().await)
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (connections, _) = five_requests(Behaviour::KeepAlive).await;
    assert_eq!(connections, 1, "one pooled connection");
}

/// Answers besides 200 are counted under their own status, per route and
/// method, each time.
#[tokio::test]
async fn upstream_answers_are_counted_under_their_status() {
    let world = World::new().await;
    let (upstream, _) =
        counting_upstream(Behaviour::KeepAliveWith(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let token = world.token("orders:read");
    for id in 0..3 {
        let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
        assert_eq!(reply.status, 204);
    }
    let metrics = gw.metrics().await;
    let series = r#"scopegate_requests_total{method="GET",route="GET /orders/{id}",status="204"}"#;
    assert_eq!(sample(&metrics, series), Some(3.0), "{metrics}");
}

/// A chunked answer is given back to the pool whole, also when it ends in
/// trailer fields (the last frame the client side asks for).
#[tokio::test]
async fn upstream_connections_are_reused_after_chunked_answers() {
    for (answer, what) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            "chunked",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
            "chunked with a trailer",
        ),
    ] {
        let (connections, _) = five_requests(Behaviour::KeepAliveWith(answer)).await;
        assert_eq!(connections, 1, "{what}: one pooled connection");
    }
}

/// A pooled connection idle longer than `pool_idle_timeout` is not used
/// again (an upstream with a shorter keep-alive would be closing it just
/// then); one idle for less is.
#[tokio::test]
async fn pooled_connections_idle_past_pool_idle_timeout_are_not_reused() {
    let world = World::new().await;
    let token = world.token("orders:read");
    for (timeout, connections) in [("1s", 2), ("1h", 1)] {
        let (upstream, accepted) = counting_upstream(Behaviour::KeepAlive).await;
        let yaml = config_for(&world, upstream).replace(
            "    request_timeout: 2s\n",
            &format!("    request_timeout: 2s\n    pool_idle_timeout: {timeout}\n"),
        );
        assert!(yaml.contains("pool_idle_timeout"));
        let gw = Gateway::start(&yaml).await;
        let first = get_with_token(&gw.url("/orders/1"), &token).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = get_with_token(&gw.url("/orders/2"), &token).await;
        assert_eq!((first.status, second.status), (200, 200));
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{timeout}");
    }
}

/// A pooled connection that sat idle may be closing just as a request goes
/// out on it. A bodiless GET is then sent again on a new connection (RFC
/// 9110 9.2.2); a POST is not, since the upstream may have processed it.
/// The copy sent again is the request as it went out the first time, its
/// `TE` announced in `Connection` once, not twice. A GET whose answer is
/// malformed is not sent again: its connection did not break, and the
/// upstream answered.
#[tokio::test]
async fn idle_connection_closing_under_a_request_costs_no_idempotent_request() {
    let world = World::new().await;
    let token = world.token("orders:read orders:write");
    let malformed = Behaviour::BadFirstsSecond(b"HTCPCP/1.0 418 \x01\x02\r\n\r\n");
    for (behaviour, method, status, connections) in [
        (Behaviour::DropFirstsSecond, "GET", 200, 2),
        (Behaviour::DropFirstsSecond, "POST", 502, 1),
        (malformed, "GET", 502, 1),
    ] {
        let (upstream, accepted, heads) = recording_upstream(behaviour).await;
        let gw = Gateway::start(&config_for(&world, upstream)).await;
        let first = get_with_token(&gw.url("/orders/1"), &token).await;
        assert_eq!(first.status, 200);
        // Idle across ticks of the pool's clock (one a second), well within
        // the default `pool_idle_timeout` (90 s).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let auth = format!("Bearer {token}");
        let second = send(
            method,
            &gw.url("/orders/2"),
            &[("authorization", &auth), ("te", "trailers")],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            second.status,
            status,
            "{behaviour:?} {method}: {}",
            second.text()
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            connections,
            "{behaviour:?} {method}"
        );
        let heads = heads.lock().unwrap().clone();
        assert_eq!(
            heads.len(),
            connections + 1,
            "{behaviour:?} {method}: {heads:?}"
        );
        for head in &heads {
            let lower = head.to_ascii_lowercase();
            let lines: Vec<&str> = lower.lines().collect();
            if lines[0].contains("/orders/2") {
                let connection: Vec<&str> = lines
                    .iter()
                    .copied()
                    .filter(|l| l.starts_with("connection:"))
                    .collect();
                assert_eq!(
                    connection,
                    ["connection: te"],
                    "{behaviour:?} {method}: {head}"
                );
            }
        }
    }
}

/// An upstream that closes each connection as it accepts it: every request
/// is a 502 on the one connection opened for it. Only a request on a pooled
/// connection that sat idle goes again when its connection breaks (the
/// upstream's keep-alive may have just run out); on a new one, the upstream
/// is turning connections away, and sending again would open one after
/// another until the request's timeout.
#[tokio::test]
async fn an_upstream_closing_new_connections_at_once_costs_one_each() {
    let world = World::new().await;
    let token = world.token("orders:read");
    let (upstream, accepted) = counting_upstream(Behaviour::CloseAtOnce).await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    for id in 0..20 {
        let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
        assert_eq!(accepted.load(Ordering::SeqCst), id + 1, "request {id}");
    }
}

#[tokio::test]
async fn upstream_closing_idle_connections_costs_no_request() {
    let (connections, metrics) = five_requests(Behaviour::CloseAfterReply).await;
    assert_eq!(connections, 5, "a new connection each time");
    for kind in ["connect", "protocol", "timeout"] {
        assert_eq!(upstream_errors(&metrics, kind), 0.0, "{kind}: {metrics}");
    }
}

#[tokio::test]
async fn malformed_upstream_answer_is_502_and_its_connection_is_not_reused() {
    let world = World::new().await;
    let token = world.token("orders:read");
    let answers: [(&str, &'static [u8]); 4] = [
        ("not HTTP", b"HTCPCP/1.0 418 \x01\x02\r\n\r\n"),
        // RFC 9112 6.3: maybe response splitting; forwarded, the length
        // would describe a body it is not.
        (
            "both framing headers",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "a switch nobody asked for",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        ),
        // RFC 9112 7: hyper undoes the chunking only; the gzip coding would
        // reach the client undone, its header (hop-by-hop) gone.
        (
            "a coding besides chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
    ];
    for (name, answer) in answers {
        let (upstream, accepted) = counting_upstream(Behaviour::BadFirst(answer)).await;
        let gw = Gateway::start(&config_for(&world, upstream)).await;

        let reply = get_with_token(&gw.url("/orders/1"), &token).await;
        assert_eq!(reply.status, 502, "{name}: {}", reply.text());
        let metrics = gw.metrics().await;
        let protocol = upstream_errors(&metrics, "protocol");
        assert_eq!(protocol, 1.0, "{name}: {metrics}");

        for id in 2..5 {
            let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
            assert_eq!((reply.status, reply.text().as_str()), (200, "ok"), "{name}");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "{name}: the broken one, then one pooled"
        );
    }
}

/// Upstream answers pass through with their code, but the `status` label
/// of an unregistered code is its class (or `other` past 599): an upstream
/// may answer anything from 100 to 999, each a series per route and method.
/// An upstream's own 499 is no exception: `499` is for abandoned requests.
#[tokio::test]
async fn unregistered_status_codes_are_counted_by_class() {
    let world = World::new().await;
    let token = world.token("orders:read");
    let answers: [(u16, &str, &'static [u8]); 6] = [
        (
            418,
            "418",
            b"HTTP/1.1 418 Teapot\r\nContent-Length: 2\r\n\r\nok",
        ),
        // Not counted as a client that left (the label of abandoned requests).
        (
            499,
            "4xx",
            b"HTTP/1.1 499 Client Closed Request\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            299,
            "2xx",
            b"HTTP/1.1 299 Odd\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            399,
            "3xx",
            b"HTTP/1.1 399 Odd\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            599,
            "5xx",
            b"HTTP/1.1 599 Odd\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            799,
            "other",
            b"HTTP/1.1 799 Odd\r\nContent-Length: 2\r\n\r\nok",
        ),
    ];
    for (code, label, answer) in answers {
        let (upstream, _) = counting_upstream(Behaviour::BadFirst(answer)).await;
        let gw = Gateway::start(&config_for(&world, upstream)).await;
        let reply = get_with_token(&gw.url("/orders/1"), &token).await;
        assert_eq!(reply.status, code, "{}", reply.text());
        let metrics = gw.metrics().await;
        let counted = metric(&metrics, "scopegate_requests_total", &[("status", label)]);
        assert_eq!(counted, 1.0, "{code}: {metrics}");
        assert!(!metrics.contains(&format!("status=\"{code}\"")) || label == "418");
    }
}

/// The gateway answers in its own HTTP version (RFC 9110 2.5): an HTTP/1.0
/// upstream's answer reaches an HTTP/1.1 client as HTTP/1.1, which it would
/// otherwise read as ending the connection (RFC 9112 9.3).
#[tokio::test]
async fn an_http10_upstreams_answer_goes_out_as_http11() {
    let world = World::new().await;
    let (upstream, _) = counting_upstream(Behaviour::BadFirst(
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let answer = raw(gw.addr, &request("GET", "/status", &[])).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}

/// `scopegate_upstream_errors_total` of one kind, over all upstreams.
fn upstream_errors(metrics: &str, kind: &str) -> f64 {
    metric(
        metrics,
        "scopegate_upstream_errors_total",
        &[("kind", kind)],
    )
}

/// An upstream over TLS (offering h2 and HTTP/1.1 by ALPN) with a
/// self-signed certificate written to `dir`; returns its address and the
/// certificate.
async fn tls_upstream<F, Fut>(dir: &std::path::Path, handler: F) -> (SocketAddr, std::path::PathBuf)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    let (cert, key) = self_signed(dir);
    let acceptor = scopegate::server::tls::acceptor(&scopegate::config::TlsFiles {
        cert_file: cert.clone(),
        key_file: key,
    })
    .unwrap();
    (serve_fn_tls(acceptor, handler).await, cert)
}

/// `config` with its upstream trusting `cert` (`ca_file`).
fn trusting(config: &str, cert: &std::path::Path) -> String {
    let trusted = config.replace(
        "    request_timeout: 2s\n",
        &format!("    request_timeout: 2s\n    ca_file: {}\n", cert.display()),
    );
    assert!(trusted.contains("ca_file"));
    trusted
}

#[tokio::test]
async fn https_upstream_is_verified_and_speaks_h2_by_alpn() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&versions);
    let (upstream, cert) = tls_upstream(dir.path(), move |req: Request<Incoming>| {
        seen.lock().unwrap().push(req.version());
        async { Response::new(full_body("tls")) }
    })
    .await;
    let https = config_for(&world, upstream).replace(
        &format!("url: http://{upstream}"),
        &format!("url: https://{upstream}"),
    );
    let token = world.token("orders:read");

    // Without the CA the upstream's certificate is refused: 502, counted.
    let gw = Gateway::start(&https).await;
    let reply = get_with_token(&gw.url("/orders/1"), &token).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let metrics = gw.metrics().await;
    assert_eq!(upstream_errors(&metrics, "connect"), 1.0, "{metrics}");
    assert!(versions.lock().unwrap().is_empty());

    // With it: TLS, and HTTP/2 because the upstream offers h2 first.
    let gw = Gateway::start(&trusting(&https, &cert)).await;
    for id in 0..3 {
        let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "tls"));
    }
    assert_eq!(*versions.lock().unwrap(), [http::Version::HTTP_2; 3]);

    // `http1_only` offers no ALPN: HTTP/1.1, for an upstream whose HTTP/2
    // is broken or limited.
    let http1 = trusting(&https, &cert).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http1_only: true\n",
    );
    let gw = Gateway::start(&http1).await;
    for id in 0..2 {
        let reply = get_with_token(&gw.url(&format!("/orders/{id}")), &token).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "tls"));
    }
    assert_eq!(versions.lock().unwrap()[3..], [http::Version::HTTP_11; 2]);
    let both = http1.replace(
        "    http1_only: true\n",
        "    http1_only: true\n    http2_only: true\n",
    );
    assert_config_refused(&both, "http1_only and http2_only exclude each other");
}

/// A TLS acceptor for `certified` offering `alpn` (empty: taking no part
/// in ALPN).
fn acceptor_offering(
    certified: &rcgen::CertifiedKey<rcgen::KeyPair>,
    alpn: Vec<Vec<u8>>,
) -> tokio_rustls::TlsAcceptor {
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = alpn;
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}

/// A request an HTTP/2 connection did not take (a GOAWAY naming no stream)
/// goes again on a new connection; where that one agreed on HTTP/1.1 (a
/// rollout behind one address, pods with and without h2), it goes in
/// origin form, as every HTTP/1.1 request does. It went in the absolute
/// form it was given for HTTP/2, which servers routing on the raw target
/// do not take.
#[tokio::test]
async fn a_request_sent_again_over_http11_after_a_goaway_goes_in_origin_form() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("mixed.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    let (h2_first, http1_next) = (
        acceptor_offering(&certified, vec![b"h2".to_vec()]),
        acceptor_offering(&certified, vec![b"http/1.1".to_vec()]),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&targets);
    tokio::spawn(async move {
        // The first connection: h2, and at once a GOAWAY taking no stream.
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = h2_first.accept(tcp).await.unwrap();
        let mut connection = h2::server::handshake(tls).await.unwrap();
        connection.abrupt_shutdown(h2::Reason::NO_ERROR);
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        // Every later one: HTTP/1.1, recording the request target.
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = http1_next.accept(tcp).await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(req.uri().to_string());
                    async { Ok::<_, std::convert::Infallible>(Response::new(full_body("h1"))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let https = config_for(&world, upstream).replace(
        &format!("url: http://{upstream}"),
        &format!("url: https://{upstream}"),
    );
    let gw = Gateway::start(&trusting(&https, &cert)).await;
    let reply = get_with_token(&gw.url("/orders/1"), &world.token("orders:read")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "h1"));
    assert_eq!(*targets.lock().unwrap(), ["/orders/1"]);
}

/// `http2_only` to an https upstream offers only h2 by ALPN: an upstream
/// that speaks HTTP/1.1 alone is a connect failure (502) rather than
/// HTTP/2 sent over a session that agreed to HTTP/1.1, and one that speaks
/// h2 is served over it. Without `http2_only` the HTTP/1.1-only upstream
/// is served over HTTP/1.1.
#[tokio::test]
async fn http2_only_to_an_https_upstream_takes_h2_by_alpn_or_nothing() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("h1.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    let versions = Arc::new(Mutex::new(Vec::new()));
    // An HTTP/1.1 server that says so by ALPN, and one that takes no part
    // in ALPN (it chooses nothing, so HTTP/1.1 it is).
    let mut http1_only = Vec::new();
    for alpn in [vec![b"http/1.1".to_vec()], Vec::new()] {
        let seen = Arc::clone(&versions);
        http1_only.push(
            serve_fn_tls(
                acceptor_offering(&certified, alpn),
                move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(req.version());
                    async { Response::new(full_body("h1")) }
                },
            )
            .await,
        );
    }
    let https = |upstream: SocketAddr, cert: &std::path::Path, http2_only: bool| {
        let config = trusting(
            &config_for(&world, upstream).replace(
                &format!("url: http://{upstream}"),
                &format!("url: https://{upstream}"),
            ),
            cert,
        );
        if http2_only {
            config.replace(
                "    request_timeout: 2s\n",
                "    request_timeout: 2s\n    http2_only: true\n",
            )
        } else {
            config
        }
    };
    let token = world.token("orders:read");

    for upstream in &http1_only {
        let gw = Gateway::start(&https(*upstream, &cert, true)).await;
        let reply = get_with_token(&gw.url("/orders/1"), &token).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
        assert_eq!(upstream_errors(&gw.metrics().await, "connect"), 1.0);
        assert!(versions.lock().unwrap().is_empty());

        let gw = Gateway::start(&https(*upstream, &cert, false)).await;
        let reply = get_with_token(&gw.url("/orders/1"), &token).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "h1"));
        assert_eq!(*versions.lock().unwrap(), [http::Version::HTTP_11]);
        versions.lock().unwrap().clear();
    }

    let both_dir = tempfile::tempdir().unwrap();
    let h2_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&h2_seen);
    let (both, both_cert) = tls_upstream(both_dir.path(), move |req: Request<Incoming>| {
        seen.lock().unwrap().push(req.version());
        async { Response::new(full_body("h2")) }
    })
    .await;
    let gw = Gateway::start(&https(both, &both_cert, true)).await;
    let reply = get_with_token(&gw.url("/orders/1"), &token).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "h2"));
    assert_eq!(*h2_seen.lock().unwrap(), [http::Version::HTTP_2]);
}

/// How [`refusing_upstream`] turns down a stream.
#[derive(Clone, Copy)]
enum Refusal {
    /// GOAWAY naming the stream before as the last one taken, then close.
    GoAway(h2::Reason),
    /// RST_STREAM `REFUSED_STREAM`; the connection lives on.
    Reset,
    /// Answers the stream's head, says GOAWAY naming it as the last one
    /// taken, and keeps the connection open while the stream's body goes on
    /// (a draining server with a long response in flight).
    Draining,
}

/// An h2c upstream written frame by frame (`h2`'s codec): it answers each
/// request with 200 and its path, but turns down every `every`-th stream of
/// a connection. RFC 9113 8.7: a stream above GOAWAY's last stream id, or
/// reset with `REFUSED_STREAM`, was not processed and may be sent again.
/// Counts the requests it answered.
async fn refusing_upstream(every: u32, refusal: Refusal) -> (SocketAddr, Arc<AtomicUsize>) {
    use h2::frame::{Data, Frame, GoAway, Headers, Pseudo, Reset, StreamId};
    use http::HeaderMap;

    async fn send(codec: &mut H2Codec, frame: Frame<Bytes>) {
        assert!(send_frame(codec, frame).await, "the gateway went away");
    }

    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    let addr = serve_raw_h2(move |mut codec| {
        let counter = Arc::clone(&counter);
        async move {
            let (mut taken, mut last) = (0, 0u32);
            while let Some(headers) = next_h2_headers(&mut codec).await {
                let id = headers.stream_id();
                taken += 1;
                let drained =
                    matches!(refusal, Refusal::Draining) && counter.load(Ordering::SeqCst) > 0;
                if taken % every == 0 && !drained {
                    match refusal {
                        Refusal::GoAway(reason) => {
                            let goaway = GoAway::new(StreamId::from(last), reason);
                            send(&mut codec, goaway.into()).await;
                            // Closed once the peer has read the GOAWAY.
                            let _ = futures_util::StreamExt::next(&mut codec).await;
                            return;
                        }
                        Refusal::Reset => {
                            let reset = Reset::new(id, h2::Reason::REFUSED_STREAM);
                            send(&mut codec, reset.into()).await;
                            continue;
                        }
                        Refusal::Draining => {
                            let head = Headers::new(
                                id,
                                Pseudo::response(StatusCode::OK),
                                HeaderMap::new(),
                            );
                            send(&mut codec, head.into()).await;
                            send(&mut codec, Data::new(id, Bytes::from("draining")).into()).await;
                            let goaway = GoAway::new(id, h2::Reason::NO_ERROR);
                            send(&mut codec, goaway.into()).await;
                            counter.fetch_add(1, Ordering::SeqCst);
                            // Streams above the last one are ignored.
                            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut codec).await
                            {
                            }
                            return;
                        }
                    }
                }
                if !headers.is_end_stream() {
                    // The body: not needed for the answer.
                    while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut codec).await {
                        if matches!(&frame, Frame::Data(d) if d.is_end_stream()) {
                            break;
                        }
                    }
                }
                let (pseudo, _) = headers.into_parts();
                let path = pseudo.path.map(|p| p.to_string()).unwrap_or_default();
                let head = Headers::new(id, Pseudo::response(StatusCode::OK), HeaderMap::new());
                send(&mut codec, head.into()).await;
                let mut data = Data::new(id, Bytes::from(path));
                data.set_end_stream(true);
                send(&mut codec, data.into()).await;
                counter.fetch_add(1, Ordering::SeqCst);
                last = u32::from(id);
            }
        }
    })
    .await;
    (addr, answered)
}

/// Upstreams refuse streams in the normal run of things (a graceful GOAWAY
/// at the end of a connection's life, `REFUSED_STREAM` under load): a
/// bodiless request they did not process is sent again on a new
/// connection instead of failing with 502. So is one above the last stream
/// id of a GOAWAY with an error code, which was not processed either (RFC
/// 9113 6.8). One with a body cannot be sent again (it was streamed), and
/// is a 502.
#[tokio::test]
async fn h2c_upstream_refusals_are_sent_again_when_they_can_be() {
    let world = World::new().await;
    let token = world.token("orders:read orders:write");
    for refusal in [
        Refusal::GoAway(h2::Reason::NO_ERROR),
        Refusal::GoAway(h2::Reason::INTERNAL_ERROR),
        Refusal::Reset,
    ] {
        let (upstream, answered) = refusing_upstream(3, refusal).await;
        let yaml = config_for(&world, upstream).replace(
            "    request_timeout: 2s\n",
            "    request_timeout: 2s\n    http2_only: true\n",
        );
        let gw = Gateway::start(&yaml).await;
        for n in 0..12 {
            let path = format!("/orders/{n}");
            let reply = get_with_token(&gw.url(&path), &token).await;
            assert_eq!((reply.status, reply.text()), (200, path));
        }
        assert_eq!(answered.load(Ordering::SeqCst), 12);
        // Two answered, the third (with a body) refused.
        let auth = format!("Bearer {token}");
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let url = gw.url("/orders/1/items");
            let headers = [("authorization", auth.as_str())];
            let reply = send("POST", &url, &headers, Bytes::from("a body")).await;
            statuses.push(reply.unwrap().status);
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 502]);
        let metrics = gw.metrics().await;
        assert_eq!(upstream_errors(&metrics, "protocol"), 1.0, "{metrics}");
    }

    // An upstream that says GOAWAY with an error code on its connection's
    // second stream, naming the first as the last one taken: the second
    // GET was not processed, and goes again on a new connection.
    let (upstream, answered) =
        refusing_upstream(2, Refusal::GoAway(h2::Reason::INTERNAL_ERROR)).await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let first = get_with_token(&gw.url("/orders/1"), &token).await;
    let second = get_with_token(&gw.url("/orders/2"), &token).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(second.text(), "/orders/2");
    assert_eq!(answered.load(Ordering::SeqCst), 2);
}

/// RFC 9113 6.8 / 8.7: streams above a GOAWAY's last stream id were not
/// processed, whatever its error code, and "can be safely retried". An h2c
/// upstream that turns down the first stream of its first connection with
/// `GOAWAY(last_stream_id = 0, ENHANCE_YOUR_CALM)` (as servers under load
/// do) processed nothing: a bodiless GET it never saw goes again on a new
/// connection, as it does after `GOAWAY(NO_ERROR)`, instead of getting 502.
#[tokio::test]
async fn a_get_above_an_error_goaways_last_stream_id_is_sent_again() {
    use h2::frame::{Data, GoAway, Headers, Pseudo, StreamId};
    let connections = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (conns, served) = (Arc::clone(&connections), Arc::clone(&answered));
    let upstream = serve_raw_h2(move |mut codec| {
        let first = conns.fetch_add(1, Ordering::SeqCst) == 0;
        let served = Arc::clone(&served);
        async move {
            while let Some(headers) = next_h2_headers(&mut codec).await {
                let id = headers.stream_id();
                if first {
                    // Nothing processed: last stream id 0.
                    let goaway = GoAway::new(StreamId::from(0), h2::Reason::ENHANCE_YOUR_CALM);
                    send_frame(&mut codec, goaway.into()).await;
                    let _ = futures_util::StreamExt::next(&mut codec).await;
                    return;
                }
                let head =
                    Headers::new(id, Pseudo::response(StatusCode::OK), http::HeaderMap::new());
                send_frame(&mut codec, head.into()).await;
                let mut data = Data::new(id, Bytes::from("fresh"));
                data.set_end_stream(true);
                send_frame(&mut codec, data.into()).await;
                served.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let world = World::new().await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let reply = get_with_token(&gw.url("/orders/1"), &world.token("orders:read")).await;
    let metrics = gw.metrics().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "fresh"),
        "upstream connections: {}, protocol errors counted: {}",
        connections.load(Ordering::SeqCst),
        metric(
            &metrics,
            "scopegate_upstream_errors_total",
            &[("kind", "protocol")]
        )
    );
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// A request an HTTP/2 upstream does not take goes again at most twice,
/// each time on a new connection: an upstream that turns every stream down
/// (GOAWAY naming none taken, or `REFUSED_STREAM`) sees it on three
/// connections, and the client gets 502, instead of the request going round
/// until its timeout.
#[tokio::test]
async fn a_request_no_connection_takes_is_sent_again_twice_at_most() {
    use h2::frame::{GoAway, Reset, StreamId};
    let world = World::new().await;
    let token = world.token("orders:read");
    for goaway in [true, false] {
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = Arc::clone(&connections);
        let upstream = serve_raw_h2(move |mut codec| {
            conns.fetch_add(1, Ordering::SeqCst);
            async move {
                while let Some(headers) = next_h2_headers(&mut codec).await {
                    if goaway {
                        let frame = GoAway::new(StreamId::from(0), h2::Reason::NO_ERROR);
                        send_frame(&mut codec, frame.into()).await;
                        let _ = futures_util::StreamExt::next(&mut codec).await;
                        return;
                    }
                    let reset = Reset::new(headers.stream_id(), h2::Reason::REFUSED_STREAM);
                    send_frame(&mut codec, reset.into()).await;
                }
            }
        })
        .await;
        let yaml = config_for(&world, upstream).replace(
            "    request_timeout: 2s\n",
            "    request_timeout: 2s\n    http2_only: true\n",
        );
        let gw = Gateway::start(&yaml).await;
        let reply = get_with_token(&gw.url("/orders/1"), &token).await;
        let metrics = gw.metrics().await;
        assert_eq!(reply.status, 502, "goaway: {goaway}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            3,
            "goaway: {goaway}: one connection and two more"
        );
        assert_eq!(upstream_errors(&metrics, "protocol"), 1.0, "{metrics}");
    }
}

/// A bodiless request that reached an HTTP/2 upstream goes again only when
/// the upstream did not process it: a GET it reset with `INTERNAL_ERROR`
/// (not `REFUSED_STREAM`), and a POST whose connection closed under it (the
/// upstream may have acted on it), are each a 502 on one connection.
#[tokio::test]
async fn an_h2_request_the_upstream_may_have_processed_is_not_sent_again() {
    use h2::frame::Reset;
    let world = World::new().await;
    let auth = bearer(&world.token("orders:read orders:write"));
    for (method, reset) in [("GET", true), ("POST", false)] {
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = Arc::clone(&connections);
        let upstream = serve_raw_h2(move |mut codec| {
            conns.fetch_add(1, Ordering::SeqCst);
            async move {
                let Some(headers) = next_h2_headers(&mut codec).await else {
                    return;
                };
                if reset {
                    let frame = Reset::new(headers.stream_id(), h2::Reason::INTERNAL_ERROR);
                    send_frame(&mut codec, frame.into()).await;
                    while next_h2_headers(&mut codec).await.is_some() {}
                }
                // Otherwise the connection closes, unanswered.
            }
        })
        .await;
        let yaml = config_for(&world, upstream).replace(
            "    request_timeout: 2s\n",
            "    request_timeout: 2s\n    http2_only: true\n",
        );
        let gw = Gateway::start(&yaml).await;
        let reply = send(
            method,
            &gw.url("/orders/1"),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 502, "{method}: {}", reply.text());
        assert_eq!(connections.load(Ordering::SeqCst), 1, "{method}");
    }
}

/// A draining upstream (GOAWAY, with a long response still in flight on
/// the connection) takes no new stream: the next request, even one with a
/// body, goes on a new connection and is answered, instead of failing on
/// the connection that could not take it.
#[tokio::test]
async fn h2c_upstream_draining_connection_takes_no_new_requests() {
    let world = World::new().await;
    let token = world.token("orders:read orders:write");
    let (upstream, answered) = refusing_upstream(1, Refusal::Draining).await;
    let yaml = config_for(&world, upstream).replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    // The long response: its head and first bytes, and no end.
    let mut long = TcpStream::connect(gw.addr).await.unwrap();
    let request =
        format!("GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\r\n");
    long.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while find(&received, b"draining").is_none() {
        let n = long.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // A POST with a body: it never went out on the draining connection, so
    // it may go on a new one, body and all.
    let auth = format!("Bearer {token}");
    let url = gw.url("/orders/2/items");
    let headers = [("authorization", auth.as_str())];
    let second = send("POST", &url, &headers, Bytes::from("a body")).await;
    let second = second.unwrap();
    assert_eq!(
        (second.status, second.text()),
        (200, "/orders/2/items".to_owned())
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2);
}

/// A gateway serving TLS (a self-signed certificate, returned) with
/// `server_extra` in its `server:`, and one public route, `/open`, to a
/// recording upstream.
async fn tls_gateway(
    server_extra: &str,
) -> (Upstream, tempfile::TempDir, std::path::PathBuf, Gateway) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let gw = Gateway::start(&format!(
        "server:\n  listen: 127.0.0.1:0\n{server_extra}  tls:\n    cert_file: {}\n    key_file: {}\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  app:\n    url: http://{}\nroutes:\n  - path: /open\n    upstream: app\n    auth: none\n",
        cert.display(),
        key.display(),
        upstream.addr
    ))
    .await;
    (upstream, dir, cert, gw)
}

/// `header_read_timeout` bounds the TLS handshake and the first request
/// head together, from accept: a client that takes most of it before its
/// handshake has only the rest for its request (it used to get the whole
/// timeout again once the handshake was done).
#[tokio::test]
async fn the_first_request_head_must_arrive_within_header_read_timeout_of_accept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, _dir, cert, gw) = tls_gateway("  header_read_timeout: 4s\n").await;
    let roots = scopegate::proxy::client::trusted_roots(Some(&cert)).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let request = b"GET /open HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    // Waits before the handshake and after it; `late` makes the two
    // together longer than the timeout, while each is shorter. The
    // handshake has 3 s of the timeout left, room for a slow host.
    for (before, after, late) in [(0, 0, false), (1_000, 3_800, true)] {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(before)).await;
        let mut tls = connector.connect(name.clone(), stream).await.unwrap();
        tokio::time::sleep(Duration::from_millis(after)).await;
        let mut answer = Vec::new();
        // A write may fail once the gateway has closed the connection.
        let _ = tls.write_all(request).await;
        let read = tokio::time::timeout(BOUND, tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        if late {
            // Closed (with or without a TLS close_notify), not kept open.
            assert!(read.is_ok(), "the late connection was kept open");
            assert!(answer.is_empty(), "answered after the deadline: {answer}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    assert_eq!(upstream.count(), 1);
}

/// Inbound TLS offers h2, HTTP/1.1 and HTTP/1.0 by ALPN: a client offering
/// h2 and HTTP/1.1 is served over h2, one offering only HTTP/1.1, only
/// HTTP/1.0 (curl's `--http1.0`), or no ALPN at all, over HTTP/1.x.
#[tokio::test]
async fn inbound_tls_serves_h2_or_http1_as_alpn_chose() {
    let (_upstream, _dir, cert, gw) = tls_gateway("").await;
    let roots = scopegate::proxy::client::trusted_roots(Some(&cert)).unwrap();
    for (offered, chosen) in [
        (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
        (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
        (&[&b"http/1.0"[..]][..], Some(&b"http/1.0"[..])),
        (&[][..], None),
    ] {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, stream).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), chosen, "{offered:?}");
        let request = Request::get("https://gw.test/open")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = if chosen == Some(b"h2") {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            let (mut parts, body) = request.into_parts();
            parts.uri = "/open".parse().unwrap();
            parts
                .headers
                .insert(http::header::HOST, "gw.test".parse().unwrap());
            sender
                .send_request(Request::from_parts(parts, body))
                .await
                .unwrap()
        };
        assert_eq!(response.status(), StatusCode::OK, "{offered:?}");
        let version = if chosen == Some(b"h2") {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(response.version(), version, "{offered:?}");
    }
}

/// An HTTP/1.1 upstream's answer may have up to 100 header fields (hyper's
/// parser, as Envoy's default `max_headers_count`); one with 101 is a
/// protocol error, 502, as the README says.
#[tokio::test]
async fn an_http1_answer_of_more_than_100_header_fields_is_a_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.extend_from_slice(&byte);
                }
                // The path names the number of fields: /orders/<n>.
                let text = String::from_utf8_lossy(&head);
                let fields: usize = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.rsplit('/').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let mut answer =
                    String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n");
                for i in 0..fields - 2 {
                    answer.push_str(&format!("Set-Cookie: c{i}=v\r\n"));
                }
                answer.push_str("\r\nok");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let world = World::new().await;
    let gw = Gateway::start(&config_for(&world, upstream)).await;
    let token = world.token("orders:read");
    // (The test's own client reads at most 100 fields too, and the gateway
    // adds a few to its answer.)
    let reply = get_with_token(&gw.url("/orders/95"), &token).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert_eq!(reply.headers.get_all("set-cookie").iter().count(), 93);
    let reply = get_with_token(&gw.url("/orders/101"), &token).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"kind="protocol""#), "{metrics}");
}

/// A connection accepted before the drain whose TLS handshake ends after the
/// drain started (a slow client, or one whose handshake was under way when
/// `shutdown_delay` ran out) gets its GOAWAY at once: the drain step had
/// passed before the connection watched for steps, so it kept serving new
/// requests, and the drain waited the whole `shutdown_grace` for it.
#[tokio::test]
async fn an_h2_connection_whose_tls_handshake_ends_during_the_drain_gets_a_goaway() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let mut gw = Gateway::start(&format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_delay: 1s\n  shutdown_grace: 20s\n  tls:\n    cert_file: {}\n    key_file: {}\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  app:\n    url: http://{}\nroutes:\n  - path: /open\n    upstream: app\n    auth: none\n",
        cert.display(),
        key.display(),
        upstream.addr
    ))
    .await;

    // Accepted while serving (the gateway counts it); its handshake waits
    // for the ClientHello.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    eventually("the connection is accepted", || async {
        gw.metrics()
            .await
            .contains("\nscopegate_open_connections 1\n")
    })
    .await;
    gw.trigger_shutdown();
    // Past shutdown_delay (1 s): the listener is closed in the step that
    // starts the drain.
    let addr = gw.addr;
    eventually("the listener closes", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;

    let roots = scopegate::proxy::client::trusted_roots(Some(&cert)).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // A fixed gateway may close the connection at once instead (nothing of
    // it is in flight): that sends the client away too.
    let mut sent_away = true;
    if let Ok((mut sender, connection)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
    {
        let client_connection = tokio::spawn(connection);
        // A request may be taken or refused by the GOAWAY; either way the
        // connection must end once nothing is in flight. The sender is kept,
        // as a client does that means to send more.
        let _ = sender
            .send_request(
                Request::get("https://gw.test/open")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        sent_away = tokio::time::timeout(Duration::from_secs(6), client_connection)
            .await
            .is_ok();
        drop(sender);
    }
    assert!(
        sent_away,
        "the HTTP/2 connection that finished its TLS handshake during the drain got no GOAWAY: still open 6 s after its request"
    );
    // Well within shutdown_grace (20 s), which it would wait out otherwise.
    let drained = tokio::time::timeout(Duration::from_secs(10), &mut gw.task).await;
    assert!(
        drained.is_ok(),
        "the drain waited for an idle HTTP/2 connection that was never sent away"
    );
}

/// A connection accepted before shutdown whose first HTTP/1.1 request comes
/// only after the drain began (here over TLS, its handshake done then; a
/// plain one whose request is on its way is the same) gets that request
/// answered, with `Connection: close`, as one accepted during
/// `shutdown_delay` does. It was closed unanswered: the client, on a
/// connection it had never used, could not tell whether its request (a
/// POST, say) was taken, and reported an error.
#[tokio::test]
async fn a_first_http1_request_after_the_drain_began_is_answered() {
    for tls in [true, false] {
        let extra = "  shutdown_delay: 0s\n  shutdown_grace: 20s\n";
        let (upstream, _dir, cert, mut gw) = if tls {
            tls_gateway(extra).await
        } else {
            let upstream = Upstream::start().await;
            let gw = Gateway::start(&format!(
                "server:\n  listen: 127.0.0.1:0\n{extra}admin:\n  listen: 127.0.0.1:0\nupstreams:\n  app:\n    url: http://{}\nroutes:\n  - path: /open\n    upstream: app\n    auth: none\n",
                upstream.addr
            ))
            .await;
            (
                upstream,
                tempfile::tempdir().unwrap(),
                std::path::PathBuf::new(),
                gw,
            )
        };
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        // Taken by the gateway (it counts it) before the shutdown.
        eventually("the connection is accepted", || async {
            gw.metrics()
                .await
                .contains("\nscopegate_open_connections 1\n")
        })
        .await;
        gw.trigger_shutdown();
        // The listener is closed in the step that starts the drain.
        let addr = gw.addr;
        eventually("the listener closes", || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
        let request = b"POST /open HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\nhi";
        let mut answer = Vec::new();
        if tls {
            let roots = scopegate::proxy::client::trusted_roots(Some(&cert)).unwrap();
            let mut config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut stream = connector.connect(name, tcp).await.unwrap();
            let _ = stream.write_all(request).await;
            let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut answer)).await;
        } else {
            let mut stream = tcp;
            let _ = stream.write_all(request).await;
            let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut answer)).await;
        }
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(
            answer.starts_with("http/1.1 200"),
            "tls {tls}: the first request after the drain began was not answered: {answer:?}"
        );
        assert!(
            answer.contains("\r\nconnection: close\r\n"),
            "tls {tls}: {answer}"
        );
        assert_eq!(upstream.count(), 1, "tls {tls}");
        let drained = tokio::time::timeout(BOUND, &mut gw.task).await;
        assert!(drained.is_ok(), "tls {tls}: the drain did not end");
    }
}

/// A client whose TLS agreed on `h2` by ALPN must speak HTTP/2 from its
/// first byte (RFC 9113 3.3; an invalid preface is a connection error,
/// 3.4): an HTTP/1.1 request on it is not answered, nor forwarded. A client
/// that agreed on `http/1.1` is served HTTP/1.1.
#[tokio::test]
async fn a_client_that_negotiated_h2_must_send_the_h2_preface() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let gw = Gateway::start(&format!(
        "server:\n  listen: 127.0.0.1:0\n  tls:\n    cert_file: {}\n    key_file: {}\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  app:\n    url: http://{}\nroutes:\n  - path: /open\n    upstream: app\n    auth: none\n",
        cert.display(),
        key.display(),
        upstream.addr
    ))
    .await;
    let roots = scopegate::proxy::client::trusted_roots(Some(&cert)).unwrap();
    for (alpn, served) in [(&b"h2"[..], false), (&b"http/1.1"[..], true)] {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let _ = tls
            .write_all(b"GET /open HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(BOUND, tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            answer.starts_with("HTTP/1.1 200"),
            served,
            "ALPN {}: {}",
            String::from_utf8_lossy(alpn),
            answer.lines().next().unwrap_or_default()
        );
    }
    assert_eq!(
        upstream.count(),
        1,
        "only the http/1.1 request goes upstream"
    );
}
