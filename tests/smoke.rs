//! End-to-end smoke: the standard world answers 200, 401 and 403.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

#[tokio::test]
async fn allowed_missing_and_insufficient() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;

    let ok = get_with_token(&gw.url("/orders/42?x=1"), &world.token("orders:read")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, "/orders/42?x=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");

    let missing = get(&gw.url("/orders/42"), &[]).await.unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.www_authenticate(), "Bearer realm=\"scopegate\"");

    let forbidden = get_with_token(&gw.url("/admin"), &world.token("orders:read")).await;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden
        .www_authenticate()
        .contains("error=\"insufficient_scope\""));
    assert!(forbidden.www_authenticate().contains("scope=\"admin\""));
    assert_eq!(world.upstream.count(), 1);
}
