//! Generated route maps, and requests against them, through a gateway
//! started on each map: the route→scope map as the config states it.
//!
//! Each case writes a map of one to five routes under their own prefix
//! (`/r0`, `/r1`, ...): a pattern (a literal, a `{param}`, a `{*rest}`), a
//! method list or none, and either `auth: none` or a bearer route with
//! `scopes` (all required), `any_scopes` (one required) and `issuers`
//! drawn at random; now and then a twin of a route, on the same pattern
//! with other methods. Two issuers (`a`, `b`) share one key set. Then
//! requests: a method (`HEAD` and `PATCH` too), a path that fits a route,
//! has a segment too many or too few, or fits none, and a token (none, one
//! of either issuer with some scopes, an expired one), and now and then a
//! query, which may name an access token; the path spelled as routed, in
//! upper case, or with a trailing slash, to a map with or without
//! `route_matching` for an upstream that routes case-insensitively and
//! ignores a trailing slash. The reference says:
//! - a path that fits no pattern (under the map's matching rules; a
//!   `{*rest}` takes a trailing slash in) is 404; one whose pattern has no route for
//!   the method is 405, with `Allow` naming the methods of its routes (and
//!   `HEAD` wherever `GET` is); `HEAD` goes to a `HEAD`, else a `GET`, else
//!   an any-method route of the pattern. Both come before any token check;
//! - a public route forwards whatever the token and query;
//! - a bearer route: an access token in the query is 400 `invalid_request`
//!   whatever the header; no token is 401 with a bare challenge; an expired
//!   one, or one of an issuer the route does not list, 401 `invalid_token`;
//!   one without every `scopes` entry and one of the `any_scopes`, 403
//!   `insufficient_scope`; else the request is forwarded once, as sent
//!   (query and all), with the token's scopes as `x-auth-scopes`;
//! - nothing else reaches the upstream.
//!
//! The maps, requests and reference are in `tests/support/route_maps.rs`.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 96).

use super::*;

use support::route_maps::{self, Map, Req};

async fn check(world: &World, (map, requests): (Map, Vec<Req>)) -> Result<(), String> {
    let gw = Gateway::try_start(&route_maps::yaml(world, &map))
        .await
        .map_err(|e| format!("the map was refused: {e}"))?;
    for (n, req) in requests.iter().enumerate() {
        route_maps::judge(world, &gw, &map, req)
            .await
            .map_err(|e| format!("request {n}: {e}"))?;
    }
    Ok(())
}

#[test]
fn generated_route_maps_get_what_their_config_says() {
    let runtime = runtime();
    let world = runtime.block_on(World::new());
    run_campaign(
        &runtime,
        &world,
        96,
        route_maps::map_with_requests(1..=6),
        async |world, case| check(world, case).await,
    );
}
