//! Hot reload and shutdown: a kubelet-style `..data` swap, SIGHUP, a bad
//! config that is refused, a reload under load with no failed request, and
//! SIGTERM letting in-flight requests finish; and a campaign of generated
//! config updates ([`hostile_reloads`]).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::net::TcpListener;

fn yaml(upstream: std::net::SocketAddr, public_path: &str, extra_issuer: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 10s
admin:
  listen: 127.0.0.1:0
{extra_issuer}upstreams:
  app:
    url: http://{upstream}
routes:
  - path: {public_path}
    upstream: app
    auth: none
"#
    )
}

/// Whether `token` is accepted on `url` within about 10 s.
async fn passes_eventually(url: &str, token: &str) -> bool {
    for _ in 0..400 {
        if get_with_token(url, token).await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Writes `text` into `dir` as the kubelet would (first `..data`), and
/// serves it with the directory watched.
async fn serve_kubelet_dir(dir: &Path, text: &str) -> Gateway {
    kubelet_write(dir, 1, text);
    start_reloading(dir.join("scopegate.yaml")).await.gateway
}

#[tokio::test]
async fn kubelet_data_swap_is_picked_up_and_old_routes_go_away() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &yaml(upstream.addr, "/one", "")).await;
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 200);
    assert_eq!(get(&gw.url("/two"), &[]).await.unwrap().status, 404);
    let one = r#"scopegate_requests_total{method="GET",route="/one",status="200"} 1"#;
    let metrics = gw.metrics().await;
    assert!(metrics.contains(one), "{metrics}");
    assert!(
        metrics.contains(r#"scopegate_request_duration_seconds_count{route="/one"} 1"#),
        "{metrics}"
    );

    kubelet_write(dir.path(), 2, &yaml(upstream.addr, "/two", ""));
    assert!(
        wait_for_status(&gw.url("/two"), 200).await,
        "new route never appeared"
    );
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 404);

    // And a second swap after the first (a watch on the file itself would be lost by now).
    kubelet_write(dir.path(), 3, &yaml(upstream.addr, "/three", ""));
    assert!(
        wait_for_status(&gw.url("/three"), 200).await,
        "second swap missed"
    );
    let metrics = gw.metrics().await;
    for present in [
        r#"scopegate_config_reloads_total{result="success"} 2"#,
        // Whole lines: the HELP text reads "..._success 1 if the last ...".
        "\nscopegate_config_last_reload_success 1\n",
        r#"scopegate_requests_total{method="GET",route="/three",status="200"}"#,
        r#"scopegate_requests_total{method="GET",route="unmatched",status="404"} "#,
        "scopegate_config_restart_required 0",
    ] {
        assert!(metrics.contains(present), "{present} missing: {metrics}");
    }
    // The removed routes' series went with them.
    for gone in [r#"route="/one""#, r#"route="/two""#] {
        assert!(!metrics.contains(gone), "{gone} stayed: {metrics}");
    }
}

/// A reload that leaves the issuers and what a verified token yields as they
/// were (here it only adds a route) keeps the verified-token cache: a token
/// verified before it is a cache hit after it, not verified again.
#[tokio::test]
async fn a_reload_that_only_adds_a_route_keeps_the_verified_tokens() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &world.config()).await;
    let token = world.token("orders:read");
    let url = gw.url("/orders/1");
    assert_eq!(get_with_token(&url, &token).await.status, 200);
    let cache = |metrics: &str, result: &str| {
        metric(
            metrics,
            "scopegate_token_cache_requests_total",
            &[("kind", "jwt"), ("result", result)],
        )
    };
    let metrics = gw.metrics().await;
    let (hits, misses) = (cache(&metrics, "hit"), cache(&metrics, "miss"));
    assert_eq!(misses, 1.0, "{metrics}");

    let more = format!(
        "{}  - path: /more\n    upstream: app\n    auth: none\n",
        world.config()
    );
    kubelet_write(dir.path(), 2, &more);
    assert!(
        wait_for_status(&gw.url("/more"), 200).await,
        "the new route never appeared"
    );
    assert_eq!(get_with_token(&url, &token).await.status, 200);
    let metrics = gw.metrics().await;
    assert_eq!(cache(&metrics, "hit"), hits + 1.0, "{metrics}");
    assert_eq!(cache(&metrics, "miss"), misses, "{metrics}");
}

/// The slow poll reloads a change that neither the directory watch nor a
/// signal reports: the config path is a symlink into a directory that is not
/// watched, where the file is replaced (by a rename, so that no poll reads it
/// half written). Twice: the first change might be taken by the one look the
/// reloader has when it starts; the second comes after that look.
#[tokio::test]
async fn the_poll_reloads_a_change_that_no_watch_reports() {
    let upstream = Upstream::start().await;
    let watched = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real.yaml");
    std::fs::write(&target, yaml(upstream.addr, "/one", "")).unwrap();
    let path = watched.path().join("scopegate.yaml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let gw = start_reloading_polled(path, Duration::from_millis(500))
        .await
        .gateway;
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 200);
    for (reloads, route) in [(1, "/two"), (2, "/three")] {
        let next = elsewhere.path().join("next.yaml");
        std::fs::write(&next, yaml(upstream.addr, route, "")).unwrap();
        std::fs::rename(&next, &target).unwrap();
        assert!(
            wait_for_status(&gw.url(route), 200).await,
            "{route} never appeared"
        );
        let metrics = gw.metrics().await;
        let success = format!("scopegate_config_reloads_total{{result=\"success\"}} {reloads}\n");
        assert!(metrics.contains(&success), "{metrics}");
    }
}

/// A reload that changes a setting only a restart applies says so in a
/// metric (an alert can ask for the restart), and stops saying so once the
/// file is back to what runs.
#[tokio::test]
async fn a_change_that_needs_a_restart_is_flagged_until_undone() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let started = yaml(upstream.addr, "/one", "");
    let gw = serve_kubelet_dir(dir.path(), &started).await;
    let flagged = |metrics: &str, value: u8| {
        metrics.contains(&format!("scopegate_config_restart_required {value}\n"))
    };
    assert!(flagged(&gw.metrics().await, 0));

    // A route change is applied as ever; the grace period waits for a restart.
    let changed =
        yaml(upstream.addr, "/two", "").replace("shutdown_grace: 10s", "shutdown_grace: 20s");
    assert_ne!(changed, yaml(upstream.addr, "/two", ""));
    kubelet_write(dir.path(), 2, &changed);
    assert!(
        wait_for_status(&gw.url("/two"), 200).await,
        "never reloaded"
    );
    let metrics = gw.metrics().await;
    assert!(flagged(&metrics, 1), "{metrics}");

    kubelet_write(dir.path(), 3, &yaml(upstream.addr, "/three", ""));
    assert!(
        wait_for_status(&gw.url("/three"), 200).await,
        "never reloaded"
    );
    let metrics = gw.metrics().await;
    assert!(flagged(&metrics, 0), "{metrics}");
}

/// A reload that changes what the verified-token cache holds (a route's
/// identity headers) keeps each unchanged issuer's loaded keys: it is not
/// held up, or refused, because the identity provider is down just then,
/// and it fetches nothing before it is ready.
#[tokio::test]
async fn a_reload_keeps_unchanged_issuers_keys_while_their_provider_is_down() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &world.config()).await;
    let mut claims = claims("orders:read");
    claims["tenant"] = "acme".into();
    let token = world.key.mint(&claims).unwrap();
    assert_eq!(
        get_with_token(&gw.url("/orders/1"), &token).await.status,
        200
    );

    world.jwks.set_mode(JwksMode::Fail);
    let fetches = world.jwks.fetches();
    let with_header = world.config().replace(
        "    scopes: [orders:read]\n",
        "    scopes: [orders:read]\n    forward:\n      identity_headers: { X-Tenant: tenant }\n",
    );
    assert_ne!(with_header, world.config());
    kubelet_write(dir.path(), 2, &with_header);
    let mut applied = false;
    for _ in 0..400 {
        let reply = get_with_token(&gw.url("/orders/2"), &token).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        if world
            .upstream
            .last()
            .headers
            .get("x-tenant")
            .is_some_and(|v| v == "acme")
        {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        applied,
        "the reload was not applied while the provider was down"
    );
    // Time for a refresher that fetched at once to have done so, and for
    // its first retries (from 250 ms) too, on a loaded machine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        world.jwks.fetches(),
        fetches,
        "the kept keys were fetched again before they were due"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("scopegate_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );

    // A change to what is checked per token (the issuer's audiences), not
    // to where its keys come from, keeps the keys too.
    let mut elsewhere = support::claims("orders:read");
    elsewhere["aud"] = "extra-api".into();
    let extra = world.key.mint(&elsewhere).unwrap();
    assert_eq!(
        get_with_token(&gw.url("/orders/3"), &extra).await.status,
        401
    );
    let more_audiences = with_header.replace(
        &format!("    audiences: [{AUDIENCE}]\n"),
        &format!("    audiences: [{AUDIENCE}, extra-api]\n"),
    );
    assert_ne!(more_audiences, with_header);
    kubelet_write(dir.path(), 3, &more_audiences);
    assert!(
        passes_eventually(&gw.url("/orders/3"), &extra).await,
        "the audience change was not applied while the provider was down"
    );
    assert_eq!(
        get_with_token(&gw.url("/orders/4"), &token).await.status,
        200
    );
    // Neither reload fetched the kept keys again.
    assert_eq!(world.jwks.fetches(), fetches);
}

/// A reload that changes only an issuer's `algorithms` keeps its keys, and
/// the key sets fetched after it are checked against the new list: a set of
/// only an Ed25519 key (RFC 8037 A.2's) is refused under `[ES256]` and taken
/// under `[ES256, EdDSA]`.
#[tokio::test]
async fn key_sets_fetched_after_a_reload_are_checked_against_its_algorithms() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = world.config_with("    jwks_refetch_cooldown: 0s\n");
    let gw = serve_kubelet_dir(dir.path(), &config).await;
    let url = gw.url("/orders/1");
    assert_eq!(
        get_with_token(&url, &world.token("orders:read"))
            .await
            .status,
        200
    );
    world.jwks.set_document(
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    );
    let stranger = scopegate::demo::SigningKey::generate("not-published").unwrap();
    let fetched = |result: &'static str| {
        move |m: &str| {
            metric(
                m,
                "scopegate_jwks_fetches_total",
                &[("issuer", "test"), ("result", result)],
            )
        }
    };
    let token = stranger.mint(&claims("orders:read")).unwrap();
    assert_eq!(get_with_token(&url, &token).await.status, 503);
    assert_eq!(fetched("invalid")(&gw.metrics().await), 1.0);
    let successes = fetched("success")(&gw.metrics().await);

    let wider = config.replace(
        "    algorithms: [ES256]\n",
        "    algorithms: [ES256, EdDSA]\n",
    );
    assert_ne!(wider, config);
    kubelet_write(dir.path(), 2, &wider);
    assert!(
        wait_for_metrics(&gw, |m| m
            .contains("scopegate_config_reloads_total{result=\"success\"} 1"))
        .await
    );
    // The refetch now takes the set, which lacks the stranger's key.
    assert_eq!(get_with_token(&url, &token).await.status, 401);
    let metrics = gw.metrics().await;
    assert_eq!(fetched("success")(&metrics), successes + 1.0, "{metrics}");
    assert_eq!(fetched("invalid")(&metrics), 1.0, "{metrics}");
}

/// A reload to `algorithms` that none of the kept keys fit does not keep
/// them: the gateway would read as ready and refuse every token. The issuer
/// fetches its keys as at a start, where such a set counts as `invalid`,
/// and the reload, waiting for them, is refused; the running config goes
/// on serving.
#[tokio::test]
async fn a_reload_to_algorithms_no_kept_key_fits_is_refused() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = world.config();
    let gw = serve_kubelet_dir(dir.path(), &config).await;
    let url = gw.url("/orders/1");
    let token = world.token("orders:read");
    assert_eq!(get_with_token(&url, &token).await.status, 200);
    let rsa_only = config.replace("    algorithms: [ES256]\n", "    algorithms: [RS256]\n");
    assert_ne!(rsa_only, config);
    kubelet_write(dir.path(), 2, &rsa_only);
    // The reload waits up to 30 s for keys that fit.
    let decided = |m: &str| {
        metric(
            m,
            "scopegate_config_reloads_total",
            &[("result", "not_ready")],
        ) >= 1.0
            || metric(
                m,
                "scopegate_config_reloads_total",
                &[("result", "success")],
            ) >= 1.0
    };
    let mut seen = false;
    for _ in 0..60 {
        if wait_for_metrics(&gw, decided).await {
            seen = true;
            break;
        }
    }
    assert!(seen, "the reload was not decided");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scopegate_config_reloads_total",
            &[("result", "success")]
        ),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "scopegate_jwks_fetches_total",
            &[("issuer", "test"), ("result", "invalid")]
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(get_with_token(&url, &token).await.status, 200);
    assert_eq!(gw.readyz().await, 200);
}

/// A reload refused after it was set up (here its new issuer's keys never
/// came) leaves the running config's key fetches checked against the
/// running config's algorithms. The refused config's (`[EdDSA]`, which the
/// issuer's EC keys do not fit) were handed to the shared key store while
/// it was set up, so a rotation was refused as a set with no usable key:
/// the withdrawn key stayed trusted and the new one got 503.
#[tokio::test]
async fn a_refused_reload_leaves_the_running_key_checks_as_they_were() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = world.config_with("    jwks_refetch_cooldown: 0s\n");
    let gw = serve_kubelet_dir(dir.path(), &config).await;
    let url = gw.url("/orders/1");
    let old_token = world.token("orders:read");
    assert_eq!(get_with_token(&url, &old_token).await.status, 200);

    let (_reserved, dead) = refusing_address();
    let refused = config
        .replace("    algorithms: [ES256]\n", "    algorithms: [EdDSA]\n")
        .replace(
            "upstreams:\n",
            &format!("  - name: doomed\n    issuer: https://doomed.test\n    audiences: [x]\n    jwks_uri: http://{dead}/jwks\nupstreams:\n"),
        );
    assert!(refused.contains("[EdDSA]") && refused.contains("doomed"));
    kubelet_write(dir.path(), 2, &refused);
    // The reload waits up to 30 s for the new issuer's keys.
    let not_ready = |m: &str| {
        metric(
            m,
            "scopegate_config_reloads_total",
            &[("result", "not_ready")],
        ) >= 1.0
    };
    let mut seen = false;
    for _ in 0..60 {
        if wait_for_metrics(&gw, not_ready).await {
            seen = true;
            break;
        }
    }
    assert!(seen, "the reload was not refused");

    // The issuer rotates: the old key is withdrawn, a new one published.
    let rotated = scopegate::demo::SigningKey::generate("key-rotated").unwrap();
    world.jwks.set_document(rotated.jwks());
    let new_token = rotated.mint(&claims("orders:read")).unwrap();
    let reply = get_with_token(&url, &new_token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(get_with_token(&url, &old_token).await.status, 401);
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &yaml(upstream.addr, "/one", "")).await;

    kubelet_write(
        dir.path(),
        2,
        "routes:\n  - path: /two\n    upstream: nowhere\n",
    );
    let refused = r#"scopegate_config_reloads_total{result="invalid"} 1"#;
    assert!(
        wait_for_metrics(&gw, |m| m.contains(refused)).await,
        "the bad config was not reported"
    );
    assert!(gw
        .metrics()
        .await
        .contains("\nscopegate_config_last_reload_success 0\n"));
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 200);
    assert_eq!(get(&gw.url("/two"), &[]).await.unwrap().status, 404);

    kubelet_write(dir.path(), 3, &yaml(upstream.addr, "/two", ""));
    assert!(wait_for_status(&gw.url("/two"), 200).await);
    assert!(gw
        .metrics()
        .await
        .contains("\nscopegate_config_last_reload_success 1\n"));
}

/// A reload whose upstream is a listener the gateway serves on, as bound
/// (its config says port 0, and a reload cannot move it), is refused at the
/// upstream's url: every request to that upstream would come back to the
/// gateway.
#[tokio::test]
async fn a_reload_with_an_upstream_on_a_running_listener_is_refused() {
    let (logs, _capturing) = Logs::capture();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &yaml(upstream.addr, "/one", "")).await;
    let looping = yaml(upstream.addr, "/one", "").replace(
        "upstreams:\n",
        &format!("upstreams:\n  itself:\n    url: http://{}\n", gw.addr),
    ) + "  - path: /loop\n    upstream: itself\n    auth: none\n";
    assert!(looping.contains("upstream: itself"), "{looping}");

    kubelet_write(dir.path(), 2, &looping);
    let refused = r#"scopegate_config_reloads_total{result="invalid"} 1"#;
    assert!(
        wait_for_metrics(&gw, |m| m.contains(refused)).await,
        "the looping config was not refused"
    );
    assert_eq!(get(&gw.url("/loop"), &[]).await.unwrap().status, 404);
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 200);
    // The refusal names the line and column of the upstream's url.
    let url_line = looping
        .lines()
        .position(|l| l.contains(&format!("url: http://{}", gw.addr)))
        .unwrap()
        + 1;
    let at = format!(":{url_line}:10: upstream `itself` is this gateway's own running listener");
    assert!(
        logs.text().lines().any(|l| l.contains(&at)),
        "`{at}` not logged:\n{}",
        logs.text()
    );
}

/// A reload keeps an upstream's `max_requests` count while the upstream
/// keeps its name and limit: a request still in flight on the config before
/// holds its place (each reload started a fresh count, so reloads let
/// through as many more requests as the limit).
#[tokio::test]
async fn a_reload_keeps_the_requests_in_flight_counted() {
    use http_body_util::BodyExt;
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    // The first answer's body ends when the test says so; later ones are whole.
    let answered = Arc::new(AtomicUsize::new(0));
    let upstream = serve_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
        let gate = Arc::clone(&gate);
        let first = answered.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let (tx, body) = channel_body();
            tx.send(bytes::Bytes::from_static(b"ok")).await.unwrap();
            if first {
                tokio::spawn(async move {
                    gate.notified().await;
                    drop(tx);
                });
            }
            hyper::Response::new(body.boxed())
        }
    })
    .await;
    let limited = |path: &str| {
        yaml(upstream, path, "").replace(
            &format!("    url: http://{upstream}\n"),
            &format!("    url: http://{upstream}\n    max_requests: 1\n"),
        )
    };
    assert!(limited("/one").contains("max_requests: 1"));
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &limited("/one")).await;

    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = hyper::Request::get(gw.url("/one"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let open = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open.status(), 200);

    kubelet_write(dir.path(), 2, &limited("/two"));
    assert!(wait_for_status(&gw.url("/one"), 404).await, "no reload");
    let refused = get(&gw.url("/two"), &[]).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());

    release.notify_one();
    let body = open.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    let reply = get(&gw.url("/two"), &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn reload_in_the_middle_of_a_burst_fails_no_request() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let base = world.config();
    let gw = serve_kubelet_dir(dir.path(), &base).await;
    let token = world.token("orders:read");

    let url = gw.url("/orders/7");
    // Clients send until the last reload has taken effect, each request
    // counted by the number of reloads seen before it was sent.
    let done = Arc::new(AtomicBool::new(false));
    let reloads_seen = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, token) = (url.clone(), token.clone());
        let (done, reloads_seen) = (Arc::clone(&done), Arc::clone(&reloads_seen));
        clients.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let before = reloads_seen.load(Ordering::SeqCst);
                sent.push((before, get_with_token(&url, &token).await.status));
            }
            sent
        }));
    }
    // Five reloads while the burst runs: each adds a route, so each is a real change.
    for revision in 2..7 {
        let text = format!("{base}  - path: /extra{revision}\n    upstream: app\n    auth: none\n");
        kubelet_write(dir.path(), revision, &text);
        assert!(wait_for_status(&gw.url(&format!("/extra{revision}")), 200).await);
        reloads_seen.fetch_add(1, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for client in clients {
        let sent = client.await.unwrap();
        assert!(sent.iter().all(|(_, s)| *s == 200), "{sent:?}");
        // Each client's requests spanned the reloads: some were sent before
        // the first had taken effect, some between later ones.
        let spans: std::collections::BTreeSet<usize> = sent.iter().map(|(seen, _)| *seen).collect();
        assert!(spans.len() >= 2 && spans.contains(&0), "{spans:?}");
    }
    // The issuers did not change, so keys were kept: one JWKS fetch in all.
    assert_eq!(world.jwks.fetches(), 1);
}

// ---- the real binary: SIGHUP and SIGTERM ----

struct Process {
    child: Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    /// Holds the child's log, outside the directory the reloader watches.
    _log_dir: tempfile::TempDir,
}

impl Process {
    /// How the process exited, if it did within about 30 s.
    async fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        exit_status(&mut self.child).await
    }
}

/// How `child` exited, if it did within about 30 s.
async fn exit_status(child: &mut Child) -> Option<std::process::ExitStatus> {
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs the binary on `text` (written to `config`; its listeners on port
/// 0) until it is ready.
async fn spawn_binary(config: &Path, text: &str) -> Process {
    spawn_binary_with(config, text, false).await
}

/// [`spawn_binary`], its stderr a log file or, if `stderr_closed`, a
/// pipe that is closed once it has named the listeners (as when the
/// reader of `scopegate run 2>&1 | jq` has quit).
async fn spawn_binary_with(config: &Path, text: &str, stderr_closed: bool) -> Process {
    std::fs::write(config, text).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("scopegate.log");
    let stderr = if stderr_closed {
        Stdio::piped()
    } else {
        Stdio::from(std::fs::File::create(&log).unwrap())
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["run", "--config"])
        .arg(config)
        .env("SCOPEGATE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let addresses = match child.stderr.take() {
        Some(pipe) => serving_addresses_on(pipe).await.0,
        None => serving_addresses(&mut child, &log).await,
    };
    let (addr, admin) = addresses.expect("the binary did not report its addresses");
    let process = Process {
        child,
        addr,
        admin,
        _log_dir: log_dir,
    };
    assert!(
        wait_for_status(&format!("http://{}/readyz", process.admin), 200).await,
        "the binary never became ready"
    );
    process
}

/// The binary while it is still starting: it is opening its store, a
/// "Redis" that takes connections and never answers, and has connected.
struct Starting {
    child: Child,
    /// The store's listener and the binary's connection to it.
    _store: (TcpListener, tokio::net::TcpStream),
    _config_dir: tempfile::TempDir,
    _upstream: Upstream,
}

impl Drop for Starting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_on_a_silent_store() -> Starting {
    let redis = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redis_addr = redis.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    let hash = argon2_hash("s3cret-value");
    let server = format!(
        "authorization_server:\n  issuer: https://as.test\n  store: {{ redis: \"redis://{redis_addr}/0\" }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"{hash}\"\n      scopes: [orders:read]\n      audience: orders-api\n"
    );
    let upstream = Upstream::start().await;
    std::fs::write(&config, yaml(upstream.addr, "/one", &server)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (held, _) = tokio::time::timeout(Duration::from_secs(30), redis.accept())
        .await
        .expect("the gateway never connected to its store")
        .unwrap();
    Starting {
        child,
        _store: (redis, held),
        _config_dir: dir,
        _upstream: upstream,
    }
}

/// A SIGHUP while the gateway is still starting (here: waiting for a store
/// that does not answer) is taken, not the end of the process: a sidecar
/// that sends one on every ConfigMap change may send it that early.
#[tokio::test]
async fn a_sighup_during_startup_does_not_end_the_process() {
    let mut starting = start_on_a_silent_store().await;
    signal(&starting.child, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = starting.child.try_wait().unwrap();
    assert_eq!(status, None, "the SIGHUP ended the process");
}

/// A SIGTERM or SIGINT (Ctrl-C) while the gateway is still starting ends
/// the start, and the process exits with success, as after a shutdown
/// before any request. The signal was held until the setup was done: here
/// until the store's timeout, and the process then exited with status 1
/// (the store did not open).
#[tokio::test]
async fn a_shutdown_signal_during_startup_stops_the_start() {
    for name in ["TERM", "INT"] {
        let mut starting = start_on_a_silent_store().await;
        signal(&starting.child, name);
        let exited = exit_status(&mut starting.child).await;
        assert_eq!(exited.and_then(|s| s.code()), Some(0), "{name}: {exited:?}");
    }
}

#[tokio::test]
async fn sighup_reloads_files_the_watch_cannot_see() {
    rotate_key_file_then_sighup("key-1", "key-2").await;
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_is_reloaded() {
    rotate_key_file_then_sighup("key-1", "key-1").await;
}

/// Serves tokens of a key under `old_kid`, replaces the key file by another
/// key under `new_kid` and sends SIGHUP: the new key's tokens must pass and
/// the old key's, even one verified and cached before, must not.
async fn rotate_key_file_then_sighup(old_kid: &str, new_kid: &str) {
    let upstream = Upstream::start().await;
    let key1 = scopegate::demo::SigningKey::generate(old_kid).unwrap();
    let key2 = scopegate::demo::SigningKey::generate(new_kid).unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let jwks = keys_dir.path().join("jwks.json");
    std::fs::write(&jwks, key1.jwks()).unwrap();
    let config = config_dir.path().join("scopegate.yaml");
    let process = spawn_binary(
        &config,
        &format!(
            r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
admin:
  listen: 127.0.0.1:0
issuers:
  - name: test
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: {jwks}
    algorithms: [ES256]
upstreams:
  app:
    url: http://{upstream}
routes:
  - path: /orders/{{id}}
    upstream: app
    scopes: [orders:read]
"#,
            jwks = jwks.display(),
            upstream = upstream.addr,
        ),
    )
    .await;
    let url = format!("http://{}/orders/1", process.addr);
    let token1 = key1.mint(&claims("orders:read")).unwrap();
    let token2 = key2.mint(&claims("orders:read")).unwrap();
    assert_eq!(get_with_token(&url, &token1).await.status, 200);
    assert_eq!(get_with_token(&url, &token2).await.status, 401);

    // Rotate the key file (outside the watched directory), then SIGHUP.
    std::fs::write(&jwks, key2.jwks()).unwrap();
    signal(&process.child, "HUP");
    let accepted = passes_eventually(&url, &token2).await;
    assert!(accepted, "SIGHUP did not reload the key file");
    assert_eq!(
        get_with_token(&url, &token1).await.status,
        401,
        "a token of the replaced key still passes"
    );
}

/// A config with one public route, `/slow`, to `upstream`, and the given
/// `shutdown_delay` and `shutdown_grace`.
fn slow_route_config(upstream: std::net::SocketAddr, delay: &str, grace: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_delay: {delay}\n  shutdown_grace: {grace}\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  app:\n    url: http://{upstream}\nroutes:\n  - path: /slow\n    upstream: app\n    auth: none\n"
    )
}

/// An upstream that holds every request until `release` sends `true`;
/// `arrived` counts the requests it holds or held.
async fn gated_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::watch::Sender<bool>,
    Arc<AtomicUsize>,
) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, gate) = tokio::sync::watch::channel(false);
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&arrived);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let gate = gate.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let mut gate = gate.clone();
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"done")),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, release, arrived)
}

/// Waits (about 10 s at most) until `count` holds at least `n`.
async fn wait_for_count(count: &AtomicUsize, n: usize) -> bool {
    for _ in 0..400 {
        if count.load(Ordering::SeqCst) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A request in flight on a route a reload removed finishes on the old
/// configuration, and counts under the old route's name after the reload
/// dropped that name's series: the series goes again once the old
/// configuration is retired, not only at the next reload. That request is
/// the old configuration's last holder: its drop (caches, route table) is
/// left to the blocking pool, not done on the thread serving requests.
#[tokio::test]
async fn a_removed_routes_last_request_leaves_no_series_behind() {
    let (logs, _capture) = Logs::capture();
    let (upstream, release, arrived) = gated_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &yaml(upstream, "/one", "")).await;
    let url = gw.url("/one");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    assert!(
        wait_for_count(&arrived, 1).await,
        "the request never arrived"
    );

    kubelet_write(dir.path(), 2, &yaml(upstream, "/two", ""));
    let reloaded = r#"scopegate_config_reloads_total{result="success"} 1"#;
    assert!(wait_for_metrics(&gw, |m| m.contains(reloaded)).await);
    release.send(true).unwrap();
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!((reply.status, reply.text().as_str()), (200, "done"));
    assert!(
        wait_for_metrics(&gw, |m| !m.contains(r#"route="/one""#)).await,
        "{}",
        gw.metrics().await
    );
    // The capture sees this thread's events only.
    assert!(
        !logs.text().contains("a retired configuration is released"),
        "the old configuration was dropped on the runtime's thread"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let (upstream, release, arrived) = gated_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    let mut process = spawn_binary(&config, &slow_route_config(upstream, "6s", "20s")).await;
    let url = format!("http://{}/slow", process.addr);
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    // The requests reach the upstream before the signal.
    assert!(
        wait_for_count(&arrived, 5).await,
        "not every request arrived"
    );
    signal(&process.child, "TERM");
    // Unready at once, while still serving during shutdown_delay: a request
    // sent now still gets through.
    assert!(wait_for_status(&format!("http://{}/readyz", process.admin), 503).await);
    let late = tokio::spawn(async move { get(&url, &[]).await });
    assert!(
        wait_for_count(&arrived, 6).await,
        "a request during shutdown_delay was not served"
    );
    release.send(true).unwrap();
    for request in in_flight.into_iter().chain([late]) {
        let reply = request.await.unwrap().unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "done");
    }
    let exited = process.exit_status().await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "scopegate did not exit cleanly: {exited:?}"
    );
}

/// A drain that uses up `shutdown_grace` says so for the requests it cut,
/// and only for them: the reloader, idle, ends without a word (a wait for
/// it, begun once the grace was gone, used to time out at once and say it
/// was still running), and the process exits.
#[tokio::test]
async fn a_grace_used_up_names_only_the_requests_cut() {
    let (upstream, _release, arrived) = gated_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    let mut process = spawn_binary(&config, &slow_route_config(upstream, "0s", "1s")).await;
    let url = format!("http://{}/slow", process.addr);
    let _held = tokio::spawn(async move { get(&url, &[]).await });
    assert!(
        wait_for_count(&arrived, 1).await,
        "the request never arrived"
    );
    signal(&process.child, "TERM");
    assert!(
        process.exit_status().await.is_some(),
        "scopegate did not exit"
    );
    let log = std::fs::read_to_string(process._log_dir.path().join("scopegate.log")).unwrap();
    assert!(
        log.contains("shutdown grace expired with requests still in flight"),
        "{log}"
    );
    assert!(!log.contains("reloader"), "{log}");
}

/// A second signal during the drain stops the process at once, with a
/// failure status (130, as after a Ctrl-C), instead of waiting out
/// `shutdown_delay` and `shutdown_grace` (here two minutes each).
#[tokio::test]
async fn a_second_signal_stops_the_drain_at_once() {
    second_signal_stops_the_drain(false).await;
}

/// The same with stderr a closed pipe (`scopegate run 2>&1 | jq`, jq
/// gone): the line saying why the process ends cannot be written, and
/// that is no reason not to end it. Printed with `eprintln!`, it was a
/// panic, caught in the signal's task, and the process drained on.
#[tokio::test]
async fn a_second_signal_stops_the_drain_with_stderr_closed() {
    second_signal_stops_the_drain(true).await;
}

async fn second_signal_stops_the_drain(stderr_closed: bool) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    let mut process = spawn_binary_with(
        &config,
        &format!(
            "server:\n  listen: 127.0.0.1:0\n  shutdown_delay: 120s\n  shutdown_grace: 120s\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  app:\n    url: http://{}\nroutes:\n  - path: /a\n    upstream: app\n    auth: none\n",
            upstream.addr
        ),
        stderr_closed,
    )
    .await;
    signal(&process.child, "TERM");
    // The first one is being honoured: unready, still serving.
    assert!(wait_for_status(&format!("http://{}/readyz", process.admin), 503).await);
    signal(&process.child, "INT");
    let exited = process.exit_status().await;
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(130),
        "the second signal did not stop the drain: {exited:?}"
    );
}

/// A gateway whose built-in server has no configured key, behind a public
/// route at `public_path`: a reload must keep the generated key.
fn ephemeral_issuer_yaml(upstream: std::net::SocketAddr, public_path: &str) -> String {
    let hash = argon2_hash("s3cret-value");
    yaml(
        upstream,
        public_path,
        &format!(
            r#"authorization_server:
  issuer: https://as.test
  clients:
    - client_id: svc
      client_secret_hash: "{hash}"
      scopes: [orders:read]
      audience: orders-api
"#
        ),
    )
    .replace(
        "routes:\n",
        "routes:\n  - path: /orders/{id}\n    upstream: app\n    scopes: [orders:read]\n",
    )
}

#[tokio::test]
async fn a_reload_keeps_the_generated_signing_key_and_its_tokens() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &ephemeral_issuer_yaml(upstream.addr, "/one")).await;
    let token = || async {
        let reply = send(
            "POST",
            &gw.url("/oauth2/token"),
            &[("content-type", "application/x-www-form-urlencoded")],
            bytes::Bytes::from_static(
                b"grant_type=client_credentials&client_id=svc&client_secret=s3cret-value",
            ),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["access_token"].as_str().unwrap().to_owned()
    };
    let before = token().await;
    assert_eq!(
        get_with_token(&gw.url("/orders/1"), &before).await.status,
        200
    );

    kubelet_write(dir.path(), 2, &ephemeral_issuer_yaml(upstream.addr, "/two"));
    assert!(
        wait_for_status(&gw.url("/two"), 200).await,
        "the reload never happened"
    );
    let after = token().await;
    for (which, token) in [("before", &before), ("after", &after)] {
        let reply = get_with_token(&gw.url("/orders/2"), token).await;
        assert_eq!(reply.status, 200, "token issued {which} the reload");
    }
}

/// A key file next to the config rewritten in place, with not a byte of the
/// config changed and no signal: the reload follows the files a config names.
#[tokio::test]
async fn a_key_file_rewritten_in_place_is_followed_without_a_signal() {
    let upstream = Upstream::start().await;
    let key1 = scopegate::demo::SigningKey::generate("key-1").unwrap();
    let key2 = scopegate::demo::SigningKey::generate("key-1").unwrap();
    let (dir, jwks) = dir_with_jwks(&key1);
    let text = yaml(upstream.addr, "/one", &jwks_file_issuer()).replace(
        "routes:\n",
        "routes:\n  - path: /orders/{id}\n    upstream: app\n    scopes: [orders:read]\n",
    );
    let config = dir.path().join("scopegate.yaml");
    std::fs::write(&config, text).unwrap();
    let gw = start_reloading(config).await.gateway;
    let url = gw.url("/orders/1");
    let token1 = key1.mint(&claims("orders:read")).unwrap();
    let token2 = key2.mint(&claims("orders:read")).unwrap();
    assert_eq!(get_with_token(&url, &token1).await.status, 200);
    assert_eq!(get_with_token(&url, &token2).await.status, 401);

    std::fs::write(&jwks, key2.jwks()).unwrap();
    let accepted = passes_eventually(&url, &token2).await;
    assert!(accepted, "the rewritten key file was not followed");
    assert_eq!(get_with_token(&url, &token1).await.status, 401);
}

/// A config refused for a reason of the moment (here its state store's
/// directory did not exist yet) is tried again, though its text is the same.
#[tokio::test]
async fn a_config_refused_for_the_moment_is_tried_again() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    std::fs::write(&config, yaml(upstream.addr, "/one", "")).unwrap();
    let gw = start_reloading(config.clone()).await.gateway;

    let hash = argon2_hash("s3cret-value");
    let server = format!(
        "authorization_server:\n  issuer: https://as.test\n  store: {{ file: later/state.redb }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"{hash}\"\n      scopes: [orders:read]\n      audience: orders-api\n"
    );
    std::fs::write(&config, yaml(upstream.addr, "/two", &server)).unwrap();
    let refused = || async {
        metric(
            &gw.metrics().await,
            "scopegate_config_reloads_total",
            &[("result", "setup_failed")],
        ) >= 1.0
    };
    let mut seen = false;
    for _ in 0..400 {
        if refused().await {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "the reload was not refused");
    assert_eq!(get(&gw.url("/two"), &[]).await.unwrap().status, 404);

    // The cause goes away; any event in the directory (or the poll) retries.
    std::fs::create_dir(dir.path().join("later")).unwrap();
    assert!(
        wait_for_status(&gw.url("/two"), 200).await,
        "the refused config was never tried again"
    );
}

/// A file put back to the running config after a refusal of the moment
/// (here a store whose directory does not exist) reads as reloaded again:
/// `scopegate_config_last_reload_success` goes back to 1, though nothing
/// new was applied.
#[tokio::test]
async fn a_file_put_back_after_a_refusal_reads_as_in_force() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    let running = yaml(upstream.addr, "/one", "");
    std::fs::write(&config, &running).unwrap();
    let gw = start_reloading(config.clone()).await.gateway;

    let hash = argon2_hash("s3cret-value");
    let server = format!(
        "authorization_server:\n  issuer: https://as.test\n  store: {{ file: never/state.redb }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"{hash}\"\n      scopes: [orders:read]\n      audience: orders-api\n"
    );
    std::fs::write(&config, yaml(upstream.addr, "/two", &server)).unwrap();
    assert!(
        wait_for_metrics(&gw, |m| metric(
            m,
            "scopegate_config_reloads_total",
            &[("result", "setup_failed")]
        ) >= 1.0
            && m.contains("\nscopegate_config_last_reload_success 0\n"))
        .await,
        "the reload was not refused"
    );

    std::fs::write(&config, &running).unwrap();
    assert!(
        wait_for_metrics(&gw, |m| m
            .contains("\nscopegate_config_last_reload_success 1\n"))
        .await,
        "the file put back did not read as in force"
    );
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 200);
    let text = gw.metrics().await;
    let applied = metric(
        &text,
        "scopegate_config_reloads_total",
        &[("result", "success")],
    );
    assert_eq!(applied, 0.0, "{text}");
}

/// A config refused because a key file it names did not exist yet (a Secret
/// volume the kubelet updates after the ConfigMap's) is applied once the
/// file appears, though the config's own text does not change again.
#[tokio::test]
async fn a_config_refused_for_a_missing_key_file_is_applied_when_the_file_appears() {
    let upstream = Upstream::start().await;
    let key = scopegate::demo::SigningKey::generate("key-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    std::fs::write(&config, yaml(upstream.addr, "/one", "")).unwrap();
    let gw = start_reloading(config.clone()).await.gateway;

    let protected = yaml(upstream.addr, "/one", &jwks_file_issuer()).replace(
        "routes:\n",
        "routes:\n  - path: /orders/{id}\n    upstream: app\n    scopes: [orders:read]\n",
    );
    std::fs::write(&config, protected).unwrap();
    let refused = r#"scopegate_config_reloads_total{result="invalid"} 1"#;
    assert!(
        wait_for_metrics(&gw, |m| m.contains(refused)).await,
        "the config naming a missing key file was not refused"
    );
    let url = gw.url("/orders/1");
    assert_eq!(get(&url, &[]).await.unwrap().status, 404);

    std::fs::write(dir.path().join("jwks.json"), key.jwks()).unwrap();
    let token = key.mint(&claims("orders:read")).unwrap();
    assert!(
        passes_eventually(&url, &token).await,
        "the refused config was not tried again when its key file appeared"
    );
}

/// A TLS client trusting only `cert`, keeping its sessions to resume.
fn tls_client(cert: &Path) -> tokio_rustls::TlsConnector {
    let roots = scopegate::proxy::client::trusted_roots(Some(cert)).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Whether a TLS handshake with the gateway succeeds trusting only `cert`.
async fn trusts(addr: std::net::SocketAddr, cert: &Path) -> bool {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tls_client(cert).connect(name, stream).await.is_ok()
}

/// GETs `path` over a new TLS connection of `client`: the status line, and
/// whether the handshake resumed a session. The answer is read to its end,
/// so that the session tickets sent after the handshake are kept.
async fn tls_get(
    addr: std::net::SocketAddr,
    client: &tokio_rustls::TlsConnector,
    path: &str,
) -> (String, Option<rustls::HandshakeKind>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = client.connect(name, stream).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    let request = format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    (answer.lines().next().unwrap_or_default().to_owned(), kind)
}

/// A reload that leaves the certificate and key as they were keeps the
/// TLS acceptor, and with it the sessions clients resume: a route change
/// does not cost every client a full handshake.
#[tokio::test]
async fn a_reload_keeps_tls_sessions_resumable() {
    use rustls::HandshakeKind::{Full, Resumed};
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key) = self_signed(dir.path());
    let config = dir.path().join("scopegate.yaml");
    let text = |path: &str| with_tls(&yaml(upstream.addr, path, ""));
    std::fs::write(&config, text("/one")).unwrap();
    let gw = start_reloading(config.clone()).await.gateway;
    let ok = "HTTP/1.1 200 OK".to_owned();
    let client = tls_client(&cert);
    assert_eq!(
        tls_get(gw.addr, &client, "/one").await,
        (ok.clone(), Some(Full))
    );
    assert_eq!(
        tls_get(gw.addr, &client, "/one").await,
        (ok.clone(), Some(Resumed))
    );

    std::fs::write(&config, text("/two")).unwrap();
    // Another client waits for the reload, so that `client` next connects
    // only once the new config serves.
    let watcher = tls_client(&cert);
    let mut reloaded = false;
    for _ in 0..400 {
        if tls_get(gw.addr, &watcher, "/two").await.0 == ok {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reloaded, "the new config was not served");
    assert_eq!(tls_get(gw.addr, &client, "/two").await, (ok, Some(Resumed)));
}

/// A certificate rotated in place (cert-manager rewriting a Secret volume)
/// is served to new connections after the reload it causes.
#[tokio::test]
async fn a_certificate_rotated_in_place_is_served() {
    let lab = TlsRotation::start().await;
    assert!(trusts(lab.gw.addr, &lab.old_cert).await);
    assert!(!trusts(lab.gw.addr, &lab.next.0).await);

    lab.rotate().await;
    assert!(!trusts(lab.gw.addr, &lab.old_cert).await);
}

/// The years in which the first certificate of [`TlsRotation`] and the
/// next one expire, and those instants in seconds since the Unix epoch.
const SERVED_UNTIL: i32 = 2050;
const NEXT_UNTIL: i32 = 2040;
const SERVED_EXPIRY: f64 = 2_524_608_000.0;
const NEXT_EXPIRY: f64 = 2_208_988_800.0;

/// A reloading gateway serving `cert.pem` over TLS, beside the certificate
/// and key it is to be rotated to (and a copy of the first certificate).
struct TlsRotation {
    gw: Gateway,
    config: PathBuf,
    /// The config without `server.tls`.
    plain: String,
    served: (PathBuf, PathBuf),
    next: (PathBuf, PathBuf),
    old_cert: PathBuf,
    _upstream: Upstream,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl TlsRotation {
    async fn start() -> Self {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let served = self_signed_until(dir.path(), SERVED_UNTIL);
        let next_dir = tempfile::tempdir().unwrap();
        let next = self_signed_until(next_dir.path(), NEXT_UNTIL);
        let config = dir.path().join("scopegate.yaml");
        let plain = yaml(upstream.addr, "/one", "");
        std::fs::write(&config, with_tls(&plain)).unwrap();
        let gw = start_reloading(config.clone()).await.gateway;
        let old_cert = next_dir.path().join("old-cert.pem");
        std::fs::copy(&served.0, &old_cert).unwrap();
        Self {
            gw,
            config,
            plain,
            served,
            next,
            old_cert,
            _upstream: upstream,
            _dirs: (dir, next_dir),
        }
    }

    /// Writes a config that is refused (an unknown key), and waits until
    /// the refusal is reported.
    async fn refuse_config(&self) {
        std::fs::write(&self.config, with_tls(&self.plain) + "unknown_key: 1\n").unwrap();
        assert!(
            wait_for_metrics(&self.gw, |m| m
                .contains("\nscopegate_config_last_reload_success 0\n"))
            .await,
            "the broken config was not refused"
        );
    }

    /// Writes refused config number `attempt` (another value of the
    /// unknown key), and waits until it is the `attempt`th counted
    /// `invalid`: one more reload, done with its certificate check once
    /// the next one is counted.
    async fn refuse_config_again(&self, attempt: u32) {
        let text = format!("{}unknown_key: {attempt}\n", with_tls(&self.plain));
        std::fs::write(&self.config, text).unwrap();
        let invalid = format!("\nscopegate_config_reloads_total{{result=\"invalid\"}} {attempt}\n");
        assert!(
            wait_for_metrics(&self.gw, |m| m.contains(&invalid)).await,
            "refused config {attempt} was not counted"
        );
    }

    /// Writes the next certificate and key over the served ones, and waits
    /// until the gateway serves it (it reloads on the change).
    async fn rotate(&self) {
        std::fs::copy(&self.next.1, &self.served.1).unwrap();
        std::fs::copy(&self.next.0, &self.served.0).unwrap();
        let mut rotated = false;
        for _ in 0..400 {
            if trusts(self.gw.addr, &self.next.0).await {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(rotated, "the rotated certificate is not served");
    }
}

/// `text` with `server.tls` serving `cert.pem` and `key.pem` beside it.
fn with_tls(text: &str) -> String {
    text.replace(
        "  shutdown_delay: 0s\n",
        "  shutdown_delay: 0s\n  tls:\n    cert_file: cert.pem\n    key_file: key.pem\n",
    )
}

/// A certificate renewed in place while the config file is refused (a
/// broken ConfigMap) is served all the same: the rest of the config waits
/// for its fix, the certificate does not wait for it (perhaps past its
/// expiry).
#[tokio::test]
async fn a_certificate_rotated_while_the_config_is_refused_is_served() {
    let lab = TlsRotation::start().await;
    lab.refuse_config().await;

    lab.rotate().await;
    assert!(!trusts(lab.gw.addr, &lab.old_cert).await);
    let metrics = lab.gw.metrics().await;
    assert!(
        metrics.contains("\nscopegate_tls_certificate_rotations_total{result=\"rotated\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nscopegate_config_last_reload_success 0\n"));
}

/// The served certificate's expiry.
fn certificate_expiry(metrics: &str) -> Option<f64> {
    exported(
        metrics,
        "scopegate_tls_certificate_expiry_timestamp_seconds",
        &[],
    )
}

/// `scopegate_tls_certificate_expiry_timestamp_seconds` says when the
/// certificate new connections get expires, as it changes: at start, after
/// the reload a rotation causes, and after a rotation while the config is
/// refused. A file that does not load changes nothing; without TLS it is 0.
#[tokio::test]
async fn the_served_certificates_expiry_is_exported() {
    let plain = Gateway::start(&World::new().await.config()).await;
    assert_eq!(certificate_expiry(&plain.metrics().await), Some(0.0));

    let lab = TlsRotation::start().await;
    assert_eq!(
        certificate_expiry(&lab.gw.metrics().await),
        Some(SERVED_EXPIRY)
    );
    lab.rotate().await;
    assert!(
        wait_for_metrics(&lab.gw, |m| certificate_expiry(m) == Some(NEXT_EXPIRY)).await,
        "{}",
        lab.gw.metrics().await
    );

    lab.refuse_config().await;
    let third_dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_until(third_dir.path(), 2045);
    // The certificate alone first: it does not load with the served key.
    std::fs::copy(&cert, &lab.served.0).unwrap();
    let refused = "\nscopegate_tls_certificate_rotations_total{result=\"refused\"} 1\n";
    assert!(wait_for_metrics(&lab.gw, |m| m.contains(refused)).await);
    assert_eq!(
        certificate_expiry(&lab.gw.metrics().await),
        Some(NEXT_EXPIRY)
    );
    std::fs::copy(&key, &lab.served.1).unwrap();
    assert!(
        wait_for_metrics(&lab.gw, |m| certificate_expiry(m) == Some(2_366_841_600.0)).await,
        "{}",
        lab.gw.metrics().await
    );
    assert!(trusts(lab.gw.addr, &cert).await);
}

/// Certificate files that do not load while the config file is refused (a
/// certificate rotated without its key, so far) keep the served
/// certificate, and are counted once; the pair once whole is served.
#[tokio::test]
async fn a_rotated_certificate_that_does_not_load_keeps_the_served_one() {
    let lab = TlsRotation::start().await;
    lab.refuse_config().await;

    std::fs::copy(&lab.next.0, &lab.served.0).unwrap();
    let refused = "\nscopegate_tls_certificate_rotations_total{result=\"refused\"} 1\n";
    assert!(
        wait_for_metrics(&lab.gw, |m| m.contains(refused)).await,
        "a certificate without its key was not refused"
    );
    assert!(trusts(lab.gw.addr, &lab.old_cert).await);
    assert!(!trusts(lab.gw.addr, &lab.next.0).await);

    lab.rotate().await;
    let metrics = lab.gw.metrics().await;
    assert!(metrics.contains(refused), "{metrics}");
}

/// A certificate file that cannot be read (a key renamed in its Secret)
/// while the config file is refused is told once, as a pair that does not
/// load is: not again at every reload that finds it still missing.
#[tokio::test]
async fn an_unreadable_certificate_file_is_counted_once() {
    let lab = TlsRotation::start().await;
    lab.refuse_config().await;

    let key = std::fs::read(&lab.served.1).unwrap();
    std::fs::remove_file(&lab.served.1).unwrap();
    let refused = "\nscopegate_tls_certificate_rotations_total{result=\"refused\"} 1\n";
    assert!(
        wait_for_metrics(&lab.gw, |m| m.contains(refused)).await,
        "a missing key file was not refused"
    );
    // Three more refused configs, three more reloads: each looks at the
    // certificate files after counting its refusal, and before the next
    // reload begins.
    for attempt in 2..=4 {
        lab.refuse_config_again(attempt).await;
    }
    let metrics = lab.gw.metrics().await;
    assert!(metrics.contains(refused), "{metrics}");
    assert!(trusts(lab.gw.addr, &lab.old_cert).await);

    // Put back, and seen so by two reloads; then missing again: news again.
    std::fs::write(&lab.served.1, &key).unwrap();
    for attempt in 5..=6 {
        lab.refuse_config_again(attempt).await;
    }
    std::fs::remove_file(&lab.served.1).unwrap();
    assert!(
        wait_for_metrics(&lab.gw, |m| m.contains(
            "\nscopegate_tls_certificate_rotations_total{result=\"refused\"} 2\n"
        ))
        .await,
        "the key file missing a second time was not told"
    );
}

/// A config file that cannot be read (deleted, say) is refused once, not at
/// every reload that finds it still missing; the certificate files it named
/// are still followed meanwhile.
#[tokio::test]
async fn a_missing_config_file_is_counted_once_and_certificates_still_rotate() {
    let lab = TlsRotation::start().await;
    std::fs::remove_file(&lab.config).unwrap();
    let invalid = "\nscopegate_config_reloads_total{result=\"invalid\"} 1\n";
    assert!(
        wait_for_metrics(&lab.gw, |m| m.contains(invalid)
            && m.contains("\nscopegate_config_last_reload_success 0\n"))
        .await,
        "the missing config file was not refused"
    );
    // Two reloads more: the key alone (refused: not the certificate's),
    // then the certificate.
    std::fs::copy(&lab.next.1, &lab.served.1).unwrap();
    assert!(
        wait_for_metrics(&lab.gw, |m| m.contains(
            "\nscopegate_tls_certificate_rotations_total{result=\"refused\"} 1\n"
        ))
        .await,
        "the key without its certificate was not refused"
    );
    lab.rotate().await;
    let metrics = lab.gw.metrics().await;
    assert!(metrics.contains(invalid), "{metrics}");
    assert!(metrics.contains("\nscopegate_config_last_reload_success 0\n"));

    // Unreadable as text (not UTF-8) at the same place twice, with other
    // bytes each time: each is news.
    for (count, bytes) in [(2, &b"routes: \xff\n"[..]), (3, &b"routes: \xfe\n"[..])] {
        std::fs::write(&lab.config, bytes).unwrap();
        let invalid = format!("\nscopegate_config_reloads_total{{result=\"invalid\"}} {count}\n");
        assert!(
            wait_for_metrics(&lab.gw, |m| m.contains(&invalid)).await,
            "unreadable config {count} was not counted"
        );
    }
}

/// A reload that turns `server.tls` off (which takes a restart) keeps the
/// certificate last served, not the one the process started with: that
/// one may have expired since, or been rotated away from for a leaked key.
#[tokio::test]
async fn a_reload_turning_tls_off_keeps_the_rotated_certificate() {
    let lab = TlsRotation::start().await;
    assert!(trusts(lab.gw.addr, &lab.old_cert).await);

    lab.rotate().await;

    std::fs::write(&lab.config, &lab.plain).unwrap();
    assert!(
        wait_for_metrics(&lab.gw, |m| m
            .contains("\nscopegate_config_restart_required 1\n"))
        .await,
        "the reload turning TLS off was not applied"
    );
    assert!(
        trusts(lab.gw.addr, &lab.next.0).await,
        "after a reload turning TLS off, the listener went back to its first certificate"
    );
    assert!(!trusts(lab.gw.addr, &lab.old_cert).await);
}

/// A key that does not belong to its certificate (one rotated without the
/// other) is refused with both files named, at the `tls:` line.
#[test]
fn a_key_of_another_certificate_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key) = self_signed(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_other_cert, other_key) = self_signed(other.path());
    let config = dir.path().join("scopegate.yaml");
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = yaml(upstream, "/one", "").replace(
        "  shutdown_delay: 0s\n",
        &format!(
            "  shutdown_delay: 0s\n  tls:\n    cert_file: cert.pem\n    key_file: {}\n",
            other_key.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    scopegate::cli::install_crypto_provider();
    let error = scopegate::config::load_file(&config)
        .unwrap_err()
        .to_string();
    let expected = format!(
        "the private key in {} does not belong to the certificate in {}",
        other_key.display(),
        cert.display()
    );
    assert!(error.contains(&expected), "{error}");
    assert!(
        error.starts_with(&format!("{}:", config.display())),
        "{error}"
    );
}

/// A key no signer takes (Ed448) is refused naming the key file, not the
/// certificate.
#[test]
fn a_key_of_an_unusable_kind_is_blamed_on_the_key_file() {
    const ED448: &str = "-----BEGIN PRIVATE KEY-----\nMEcCAQAwBQYDK2VxBDsEOchgFYXB+wHcRTHgFOXYuCc8gptnF0rH2NPWNRLzMidJ\nGZzfpo0BkQEHaDCIhkisOTi8VPEAhHIoXw==\n-----END PRIVATE KEY-----\n";
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    std::fs::write(&key, ED448).unwrap();
    let config = dir.path().join("scopegate.yaml");
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = with_tls(&yaml(upstream, "/one", ""));
    std::fs::write(&config, text).unwrap();
    scopegate::cli::install_crypto_provider();
    let error = scopegate::config::load_file(&config)
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("{}: ", key.display())), "{error}");
    assert!(!error.contains(&format!("{}: ", cert.display())), "{error}");
}

/// A ConfigMap update that lands between loading the config and starting to
/// watch it is not taken for the running config: the watch compares the file
/// with what was loaded, not with a second read.
#[tokio::test]
async fn an_update_landing_before_the_watch_starts_is_applied() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scopegate.yaml");
    std::fs::write(&path, yaml(upstream.addr, "/one", "")).unwrap();
    scopegate::cli::install_crypto_provider();
    let loaded = scopegate::config::load_file(&path).unwrap();
    std::fs::write(&path, yaml(upstream.addr, "/two", "")).unwrap();

    let gw = start_reloading_with(path, loaded).await.gateway;
    assert!(
        wait_for_status(&gw.url("/two"), 200).await,
        "the update that landed first was never applied"
    );
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 404);
}

/// The `issuers:` block of issuer `test`, whose keys are the `jwks.json`
/// beside the config.
fn jwks_file_issuer() -> String {
    format!(
        "issuers:\n  - name: test\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_file: jwks.json\n    algorithms: [ES256]\n"
    )
}

/// A config directory holding `key`'s JWKS as `jwks.json`, and that file.
fn dir_with_jwks(key: &scopegate::demo::SigningKey) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, key.jwks()).unwrap();
    (dir, jwks)
}

/// The FIFO tests' setup: a config (`text`, not yet written) with a public
/// route `/one` and issuer `test` reading `key`'s JWKS from `jwks`.
#[cfg(target_os = "linux")]
struct FifoCase {
    _upstream: Upstream,
    key: scopegate::demo::SigningKey,
    _dir: tempfile::TempDir,
    jwks: PathBuf,
    config: PathBuf,
    text: String,
}

#[cfg(target_os = "linux")]
impl FifoCase {
    async fn new() -> Self {
        let upstream = Upstream::start().await;
        let key = scopegate::demo::SigningKey::generate("key-1").unwrap();
        let (dir, jwks) = dir_with_jwks(&key);
        let config = dir.path().join("scopegate.yaml");
        let text = yaml(upstream.addr, "/one", &jwks_file_issuer());
        Self {
            _upstream: upstream,
            key,
            _dir: dir,
            jwks,
            config,
            text,
        }
    }
}

/// Puts a FIFO at `path`: made aside and renamed over it, so that no
/// reload finds the file missing or opens the FIFO too early.
#[cfg(target_os = "linux")]
fn fifo_over(path: &Path) {
    let fifo = path.with_extension("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    std::fs::rename(&fifo, path).unwrap();
}

/// Blocks until a reload (started by the directory event) opens the FIFO at
/// `path`, and returns its write end: the reload then waits in `read` for
/// as long as the test holds it.
#[cfg(target_os = "linux")]
fn hold_fifo(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    /// `O_NONBLOCK` on Linux: opening a FIFO's write end this way succeeds
    /// only while a reader has it open.
    const O_NONBLOCK: i32 = 0o4000;
    for _ in 0..500 {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(path);
        if let Ok(file) = opened {
            return file;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no reload opened {}", path.display());
}

/// Puts a plain file holding `contents` at `path`, by rename.
#[cfg(target_os = "linux")]
fn plain_over(path: &Path, contents: &str) {
    let plain = path.with_extension("tmp");
    std::fs::write(&plain, contents).unwrap();
    std::fs::rename(&plain, path).unwrap();
}

/// Serves `contents` to the next reader of the FIFO at `path`.
#[cfg(target_os = "linux")]
/// Waits (about 10 s at most) until this process (the gateway runs in it)
/// holds `path` open no more.
fn wait_until_closed_here(path: &Path) {
    let path = path.canonicalize().unwrap();
    let open = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
    };
    for _ in 0..1000 {
        if !open() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} stayed open", path.display());
}

fn serve_fifo_once(path: &Path, contents: &str) {
    use std::io::Write;
    let mut writer = hold_fifo(path);
    writer.write_all(contents.as_bytes()).unwrap();
}

/// A reload remembers the files a config names as validation read them, not
/// as a later read finds them: here the key file changes between the two
/// (a FIFO shows the reload's look at the files a new key set, then gives
/// validation the old one, then becomes a plain file with the new one), and
/// the new key set must still be taken up. Before, the later read's digest
/// was taken as loaded, and the gateway kept the old keys for good.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_key_file_changing_while_a_reload_reads_it_is_still_followed() {
    let case = FifoCase::new().await;
    let next = scopegate::demo::SigningKey::generate("key-2").unwrap();
    let text = case.text.replace(
        "routes:\n",
        "routes:\n  - path: /orders/{id}\n    upstream: app\n    scopes: [orders:read]\n",
    );
    std::fs::write(&case.config, text).unwrap();
    let gw = start_reloading(case.config.clone()).await.gateway;
    let url = gw.url("/orders/1");
    let token = next.mint(&claims("orders:read")).unwrap();
    assert_eq!(get_with_token(&url, &token).await.status, 401);

    fifo_over(&case.jwks);
    let (jwks, old, new) = (
        case.jwks.clone(),
        case.key.jwks().to_owned(),
        next.jwks().to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        serve_fifo_once(&jwks, &new);
        // The reader closes the FIFO once it has read to the end; a writer
        // opened before that would join this read instead of the next.
        wait_until_closed_here(&jwks);
        serve_fifo_once(&jwks, &old);
        plain_over(&jwks, &new);
    })
    .await
    .unwrap();
    assert!(
        passes_eventually(&url, &token).await,
        "the key file as it settled was never loaded"
    );
}

/// A reload reads files on the blocking pool, not on the runtime: with a
/// named file turned into a FIFO that the test holds open, the reload waits
/// in `read`, and the gateway, on this test's one runtime thread, must go on
/// serving meanwhile.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_reload_waiting_on_a_file_does_not_stop_traffic() {
    use std::io::{Read, Write};

    let case = FifoCase::new().await;
    std::fs::write(&case.config, &case.text).unwrap();
    let gw = start_reloading(case.config.clone()).await.gateway;
    let (addr, jwks, key) = (gw.addr, case.jwks.clone(), case.key);

    fifo_over(&jwks);
    let status = tokio::task::spawn_blocking(move || {
        let mut writer = hold_fifo(&jwks);
        // The reload now waits for the file's bytes; a request meanwhile:
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /one HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        // Put a plain file back for later reloads (before the write below
        // raises an event), then let this one finish.
        plain_over(&jwks, key.jwks());
        writer.write_all(key.jwks().as_bytes()).unwrap();
        drop(writer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "no answer while a reload waited on a file: {status:?}"
    );
}

/// A reload stuck on a file (here a FIFO the test holds open) does not keep
/// a stopped gateway from exiting.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn sigterm_exits_while_a_reload_waits_on_a_file() {
    let case = FifoCase::new().await;
    let mut process = spawn_binary(&case.config, &case.text).await;

    fifo_over(&case.jwks);
    let jwks = case.jwks.clone();
    let writer = tokio::task::spawn_blocking(move || hold_fifo(&jwks))
        .await
        .unwrap();

    // The reload now waits for bytes that never come.
    signal(&process.child, "TERM");
    let exited = process.exit_status().await;
    drop(writer);
    assert!(
        exited.is_some_and(|s| s.success()),
        "scopegate did not exit while a reload waited: {exited:?}"
    );
}

/// A gateway serving a public `/one`, reloaded to a config that adds a
/// public `/two` and the issuer `name`, whose JWKS endpoint fails until the
/// test says otherwise. The upstream and directory live as long as the rest.
async fn reloading_to_a_new_issuer(
    name: &str,
) -> (Gateway, JwksServer, Upstream, tempfile::TempDir) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_kubelet_dir(dir.path(), &yaml(upstream.addr, "/one", "")).await;
    let jwks = JwksServer::start(
        scopegate::demo::SigningKey::generate("key-1")
            .unwrap()
            .jwks(),
    )
    .await;
    jwks.set_mode(JwksMode::Fail);
    let issuer = format!(
        "issuers:\n  - name: {name}\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n",
        jwks.uri()
    );
    kubelet_write(dir.path(), 2, &yaml(upstream.addr, "/two", &issuer));
    (gw, jwks, upstream, dir)
}

/// The series of a config a reload is still setting up (its issuer's first
/// JWKS fetches) are exported while it waits for its keys, though the
/// running config does not name it, and kept once it runs.
#[tokio::test]
async fn a_reloads_new_issuer_is_reported_while_the_reload_waits_for_its_keys() {
    let (gw, jwks, _upstream, _dir) = reloading_to_a_new_issuer("second").await;
    // Counted, not only exported at 0 (as every result is from the start).
    let fetches = |m: &str, result| {
        metric(
            m,
            "scopegate_jwks_fetches_total",
            &[("issuer", "second"), ("result", result)],
        )
    };
    assert!(
        wait_for_metrics(&gw, |m| fetches(m, "http_error") >= 1.0).await,
        "the setting-up issuer's failed fetch was not reported: {}",
        gw.metrics().await
    );
    assert_eq!(get(&gw.url("/two"), &[]).await.unwrap().status, 404);

    jwks.set_mode(JwksMode::Serve);
    assert!(wait_for_status(&gw.url("/two"), 200).await);
    let metrics = gw.metrics().await;
    assert!(fetches(&metrics, "http_error") >= 1.0, "{metrics}");
    assert_eq!(fetches(&metrics, "success"), 1.0, "{metrics}");
}

/// A reload still waiting for its new issuer's keys when the server stops
/// is given up, and the key refresher it started with it: no fetch follows
/// the stop (before, the refresher went on until the reload's 30 s wait for
/// the keys ran out, after `run` had returned).
#[tokio::test]
async fn a_reload_waiting_for_keys_at_shutdown_leaves_no_refresher_behind() {
    let (mut gw, jwks, _upstream, _dir) = reloading_to_a_new_issuer("late").await;
    // The refresher retries after 250 ms, 500 ms, 1 s, 2 s, ...: by its
    // third fetch it is running.
    let mut running = false;
    for _ in 0..200 {
        if jwks.fetches() >= 3 {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running, "the reload's refresher never fetched three times");
    gw.trigger_shutdown();
    let stopped = jwks.fetches();
    tokio::time::timeout(Duration::from_secs(30), &mut gw.task)
        .await
        .expect("the gateway did not stop")
        .unwrap()
        .unwrap();
    // A running refresher would fetch at least twice more from the stop
    // to the end of this (after 1 s, then 2 s, then 4 s); one may have been
    // on its way at the stop.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = jwks.fetches();
    assert!(
        after <= stopped + 1,
        "{} fetches after the gateway stopped",
        after - stopped
    );
}

/// A reload refused because its new issuer's keys never came leaves none
/// of that issuer's series behind, though its fetches wrote them.
#[tokio::test]
async fn a_refused_reloads_series_are_dropped() {
    let (gw, _jwks, _upstream, _dir) = reloading_to_a_new_issuer("doomed").await;
    assert!(wait_for_metrics(&gw, |m| m.contains(r#"issuer="doomed""#)).await);
    // The reload waits up to 30 s for the issuer's keys.
    let refused = r#"scopegate_config_reloads_total{result="not_ready"} 1"#;
    let mut seen = false;
    for _ in 0..60 {
        if wait_for_metrics(&gw, |m| m.contains(refused)).await {
            seen = true;
            break;
        }
    }
    assert!(seen, "the reload was not refused");
    let metrics = gw.metrics().await;
    assert!(!metrics.contains(r#"issuer="doomed""#), "{metrics}");
    assert_eq!(get(&gw.url("/one"), &[]).await.unwrap().status, 200);
}

/// A reloading gateway with the built-in server and one confidential
/// client, `svc` (secret `s3cret-value`), serving `/one` until [`Self::serve`]
/// rewrites its config.
struct ReloadingIssuer {
    gw: Gateway,
    config: PathBuf,
    server: String,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl ReloadingIssuer {
    async fn start() -> Self {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("scopegate.yaml");
        let hash = argon2_hash("s3cret-value");
        let server = format!(
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: svc\n      client_secret_hash: \"{hash}\"\n      scopes: [orders:read]\n      audience: orders-api\n"
        );
        std::fs::write(&config, yaml(upstream.addr, "/one", &server)).unwrap();
        let gw = start_reloading(config.clone()).await.gateway;
        Self {
            gw,
            config,
            server,
            upstream,
            _dir: dir,
        }
    }

    /// Rewrites the config to serve `path` instead, and waits for it.
    async fn serve(&self, path: &str) {
        std::fs::write(&self.config, yaml(self.upstream.addr, path, &self.server)).unwrap();
        assert!(wait_for_status(&self.gw.url(path), 200).await, "no reload");
    }

    /// A client-credentials grant for `svc` with `secret`.
    async fn grant(&self, secret: &str) -> Reply {
        send(
            "POST",
            &self.gw.url("/oauth2/token"),
            &[("content-type", "application/x-www-form-urlencoded")],
            bytes::Bytes::from(format!(
                "grant_type=client_credentials&client_id=svc&client_secret={secret}"
            )),
        )
        .await
        .unwrap()
    }
}

/// A reload keeps the client secrets the built-in server checked: guesses
/// by others after a reload do not lock out a client that authenticated
/// before it (a secret checked before is no guess).
#[tokio::test]
async fn a_reload_keeps_the_client_secrets_checked_before_it() {
    let issuer = ReloadingIssuer::start().await;
    let r = issuer.grant("s3cret-value").await;
    assert_eq!(r.status, 200, "{}", r.text());

    issuer.serve("/two").await;
    let mut last = 0;
    for attempt in 1..=6 {
        last = issuer.grant(&format!("guess-{attempt}")).await.status;
    }
    assert_eq!(last, 429, "the guesses were not limited");
    let r = issuer.grant("s3cret-value").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A reload keeps the failures the built-in server counted: guesses made
/// before it still count toward the limit after it (a reload gave every
/// client id and user name fresh guesses).
#[tokio::test]
async fn a_reload_keeps_the_failures_counted_before_it() {
    let issuer = ReloadingIssuer::start().await;
    for attempt in 1..=5 {
        let r = issuer.grant(&format!("guess-{attempt}")).await;
        assert_eq!(r.status, 400, "guess {attempt}: {}", r.text());
    }

    issuer.serve("/two").await;
    let r = issuer.grant("guess-6").await;
    assert_eq!(r.status, 429, "the reload reset the count: {}", r.text());
    let r = issuer.grant("s3cret-value").await;
    assert_eq!(r.status, 429, "{}", r.text());
}

#[path = "reload/hostile_reloads.rs"]
mod hostile_reloads;

/// An issuer whose keys never loaded does not hold up a reload that keeps
/// it as it was: a key removed from another issuer's file takes effect
/// (before, the reload waited for every issuer, was refused as not ready
/// after 30 s, and the removed key stayed trusted while the other identity
/// provider stayed down).
#[tokio::test]
async fn an_issuer_down_since_start_does_not_hold_up_other_changes() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let down = JwksServer::start(scopegate::demo::SigningKey::generate("k").unwrap().jwks()).await;
    down.set_mode(JwksMode::Fail);
    let key = scopegate::demo::SigningKey::generate("key-1").unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, key.jwks()).unwrap();
    let issuers = format!(
        "issuers:\n  - name: corp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_file: keys.json\n  - name: down\n    issuer: https://down.test\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n",
        down.uri()
    );
    // The file's standard map, with a route that needs a token.
    let config = dir.path().join("scopegate.yaml");
    std::fs::write(
        &config,
        yaml(upstream.addr, "/public", &issuers)
            + "  - path: /orders\n    upstream: app\n    scopes: [orders:read]\n",
    )
    .unwrap();
    let gw = start_reloading_unready(config).await;
    let t = now();
    let token = key
        .mint(&serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "c",
            "scope": "orders:read", "iat": t, "exp": t + 600,
        }))
        .unwrap();
    assert!(passes_eventually(&gw.url("/orders"), &token).await);
    assert_eq!(
        get(&format!("http://{}/readyz", gw.admin), &[])
            .await
            .unwrap()
            .status,
        503,
        "the down issuer's keys loaded"
    );

    // The key is withdrawn from corp's file.
    let other = scopegate::demo::SigningKey::generate("key-2").unwrap();
    std::fs::write(&keys, other.jwks()).unwrap();
    // Any result: every one is exported at 0 from the start.
    let reloaded = |m: &str| metric(m, "scopegate_config_reloads_total", &[]) >= 1.0;
    let mut outcome = String::new();
    for _ in 0..60 {
        if wait_for_metrics(&gw, reloaded).await {
            outcome = gw.metrics().await;
            break;
        }
    }
    assert!(
        outcome.contains(r#"scopegate_config_reloads_total{result="success"} 1"#),
        "{outcome}"
    );
    assert_eq!(get_with_token(&gw.url("/orders"), &token).await.status, 401);
}

/// Once shutdown starts, and through `shutdown_delay` while new connections
/// are still taken, clients are moved on rather than left on connections
/// the drain will close under them: an idle HTTP/1.1 connection is closed
/// at once, a new one is served with `Connection: close`, and an HTTP/2
/// connection gets its GOAWAY (and, with nothing in flight, ends).
#[tokio::test]
async fn shutdown_moves_clients_on_during_the_delay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BOUND: Duration = Duration::from_secs(20);
    let world = World::new().await;
    let config = world
        .config()
        .replace("  shutdown_delay: 0s\n", "  shutdown_delay: 30s\n");
    assert!(config.contains("shutdown_delay: 30s"));
    let mut gw = Gateway::start(&config).await;
    let request = "GET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    let mut kept = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(request.as_bytes()).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = ended_tx.send(connection.await);
    });
    let mut h2 = h2.ready().await.unwrap();
    let (answer, _) = h2
        .send_request(
            http::Request::get("http://gw.test/status")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);

    gw.trigger_shutdown();
    assert!(wait_for_status(&format!("http://{}/readyz", gw.admin), 503).await);
    // The idle HTTP/1.1 connection is closed.
    let read = tokio::time::timeout(BOUND, kept.read(&mut buf))
        .await
        .expect("the idle connection was kept");
    assert_eq!(read.map_err(|e| e.kind()), Ok(0));
    // The HTTP/2 one got its GOAWAY and ended.
    let ended = tokio::time::timeout(BOUND, ended)
        .await
        .expect("the HTTP/2 connection was kept");
    assert!(ended.is_ok());
    // A new connection is served, and told to go.
    let mut new = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    new.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, new.read_to_end(&mut answer))
        .await
        .expect("the new connection was kept")
        .unwrap();
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}
