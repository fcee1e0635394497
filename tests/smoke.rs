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

/// The admin listener answers the kubelet's probes and Prometheus, and
/// nothing else.
#[tokio::test]
async fn admin_endpoints_answer_probes_and_refuse_other_methods() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let admin = |path: &str| format!("http://{}{path}", gw.admin);

    let healthz = get(&admin("/healthz"), &[]).await.unwrap();
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"));
    assert_eq!(gw.readyz().await, 200);
    let metrics = get(&admin("/metrics"), &[]).await.unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4")
    );
    assert!(metrics.text().contains("scopegate_"), "{}", metrics.text());
    assert_eq!(get(&admin("/nope"), &[]).await.unwrap().status, 404);

    let post = send("POST", &admin("/metrics"), &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
}
