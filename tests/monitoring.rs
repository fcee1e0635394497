//! The alert rules (`deploy/kubernetes/components/alerts`) and the Grafana
//! dashboard (`deploy/kubernetes/components/dashboard`) name only metrics,
//! labels and label values that scopegate exports. A renamed metric or result
//! would leave an alert that never fires or a panel that stays empty, which
//! promtool's own unit tests (`rules.test.yaml`, run by `deploy/validate.sh`)
//! cannot see: they feed the rules series by the names the rules use.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::*;

/// Each alert's name and expression, from the PrometheusRule.
fn alert_rules() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/components/alerts/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rule: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let mut alerts = Vec::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().expect("every rule is an alert");
            let expr = r["expr"].as_str().expect("every alert has an expr");
            alerts.push((name.to_owned(), expr.to_owned()));
        }
    }
    assert!(alerts.len() >= 10, "{alerts:?}");
    alerts
}

/// Each dashboard panel's title and query expressions.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/components/dashboard/scopegate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push((format!("panel `{title}`"), expr.to_owned()));
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

/// Labels Prometheus adds to a target's series when it scrapes them (pod
/// discovery, the PodMonitor): not scopegate's to export.
const TARGET_LABELS: [&str; 4] = ["namespace", "pod", "job", "instance"];

/// A label matcher of a selector: label, operator, value.
type Matcher = (String, String, String);

/// The selectors of an expression (`scopegate_x{label="v",...}`), by metric
/// name, with their matchers; and the labels its `without (...)` and
/// `by (...)` clauses name.
fn selectors(expr: &str) -> (Vec<(String, Vec<Matcher>)>, Vec<String>) {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("scopegate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        rest = &tail[end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').unwrap();
            for part in inner[..close].split(',').filter(|p| !p.trim().is_empty()) {
                let op_at = part.find(['=', '!']).unwrap();
                let label = part[..op_at].trim().to_owned();
                let after = &part[op_at..];
                let op_len = after.find('"').unwrap();
                let op = after[..op_len].trim().to_owned();
                let value = after[op_len..].trim().trim_matches('"').to_owned();
                matchers.push((label, op, value));
            }
            rest = &inner[close + 1..];
        }
        found.push((name, matchers));
    }
    let mut grouping = Vec::new();
    for clause in ["without (", "by ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(clause) {
            let inner = &rest[at + clause.len()..];
            let close = inner.find(')').unwrap();
            grouping.extend(inner[..close].split(',').map(|l| l.trim().to_owned()));
            rest = &inner[close..];
        }
    }
    (found, grouping)
}

/// Every series of `/metrics` text: metric name and labels.
fn series(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut all = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').unwrap().0),
            None => (line.split_once(' ').unwrap().0, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (label, value) = pair.split_once('=').unwrap();
                (label.to_owned(), value.trim_matches('"').to_owned())
            })
            .collect();
        all.push((name.to_owned(), labels));
    }
    all
}

/// A gateway with every source of the metrics the alerts use: an issuer
/// with a key set, one with introspection, one found by discovery (which
/// never succeeds here, so the gateway stays unready), an upstream and the
/// built-in authorization server.
async fn gateway_with_everything(world: &World, secret: &Path, metadata: &Upstream) -> Gateway {
    let silent = silent_upstream().await;
    let hash = argon2_hash("s3cret-value");
    let yaml = format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
authorization_server:
  issuer: https://as.test
  clients:
    - client_id: svc
      client_secret_hash: "{hash}"
      scopes: [orders:read]
      audience: orders-api
issuers:
  - name: keys
    issuer: https://issuer.test
    audiences: [orders-api]
    jwks_uri: {jwks}
  - name: opaque
    issuer: https://opaque.test
    audiences: [orders-api]
    introspection:
      endpoint: http://{silent}/introspect
      client_id: gateway
      client_secret_file: {secret}
      timeout: 200ms
  - name: found
    issuer: http://{metadata}
    audiences: [orders-api]
    discovery: true
upstreams:
  app:
    url: http://{upstream}
routes:
  - path: /status
    upstream: app
    auth: none
  - path: /orders
    upstream: app
    issuers: [keys]
    scopes: [orders:read]
  - path: /opaque
    upstream: app
    issuers: [opaque]
"#,
        jwks = world.jwks.uri(),
        secret = secret.display(),
        metadata = metadata.addr,
        upstream = world.upstream.addr,
    );
    Gateway::start_unready(&yaml).await
}

/// What the alerts or panels name that `/metrics` text lacks, one line each.
fn missing(alerts: &[(String, String)], text: &str) -> Vec<String> {
    let exported = series(text);
    let mut missing = Vec::new();
    for (alert, expr) in alerts {
        let (selected, grouping) = selectors(expr);
        if selected.is_empty() {
            missing.push(format!("{alert}: no scopegate metric in {expr}"));
        }
        for (name, matchers) in &selected {
            let of_metric: Vec<&BTreeMap<String, String>> = exported
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, labels)| labels)
                .collect();
            if of_metric.is_empty() {
                missing.push(format!("{alert}: no `{name}`"));
                continue;
            }
            let has_label = |label: &str| of_metric.iter().any(|l| l.contains_key(label));
            let labels = grouping
                .iter()
                .chain(matchers.iter().map(|(label, _, _)| label));
            for label in labels {
                if !TARGET_LABELS.contains(&label.as_str()) && !has_label(label) {
                    missing.push(format!("{alert}: `{name}` has no label `{label}`"));
                }
            }
            for (label, op, value) in matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                // Values an equality names, or a regex that is a list of
                // plain alternatives, must each be one scopegate exports.
                let literal = value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|');
                let values: Vec<&str> = match op.as_str() {
                    "=" | "!=" => vec![value.as_str()],
                    "=~" | "!~" if literal => value.split('|').collect(),
                    _ => Vec::new(),
                };
                for v in values {
                    if !of_metric
                        .iter()
                        .any(|l| l.get(label).map(String::as_str) == Some(v))
                    {
                        missing.push(format!("{alert}: `{name}` has no {label}=\"{v}\""));
                    }
                }
            }
        }
    }
    missing
}

#[tokio::test]
async fn alerts_and_dashboard_name_only_metrics_and_label_values_scopegate_exports() {
    let world = World::new().await;
    let metadata = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("introspection-secret");
    std::fs::write(&secret, "secret").unwrap();
    let gw = gateway_with_everything(&world, &secret, &metadata).await;
    let named: Vec<(String, String)> = alert_rules()
        .into_iter()
        .chain(dashboard_queries())
        .collect();
    // Most are exported at 0 from the start. A request's status, a token
    // request's result, an introspection call's latency (the endpoint
    // never answers: a timeout) and the first key fetch's and discovery
    // attempt's results come with the events: a bounded wait for them.
    let token = gw.url("/oauth2/token");
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let mut text = String::new();
    for _ in 0..400 {
        let _ = get(&gw.url("/status"), &[]).await;
        let _ = send(
            "POST",
            &token,
            &form,
            "grant_type=client_credentials".into(),
        )
        .await;
        let _ = get(
            &gw.url("/opaque"),
            &[("authorization", "Bearer opaque-token")],
        )
        .await;
        text = gw.metrics().await;
        if missing(&named, &text).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let missing = missing(&named, &text);
    assert!(missing.is_empty(), "{missing:#?}\n{text}");
}

/// The parser above reads what the rules are written with.
#[test]
fn selectors_are_read_with_their_matchers_and_grouping_clauses() {
    let (selected, grouping) = selectors(
        "sum without (result, kind) (rate(scopegate_a_total{result=~\"x|y\", kind!=\"z\"}[5m])) / sum by (le) (scopegate_b) == 0",
    );
    assert_eq!(
        selected,
        vec![
            (
                "scopegate_a_total".to_owned(),
                vec![
                    ("result".to_owned(), "=~".to_owned(), "x|y".to_owned()),
                    ("kind".to_owned(), "!=".to_owned(), "z".to_owned()),
                ]
            ),
            ("scopegate_b".to_owned(), Vec::new()),
        ]
    );
    assert_eq!(grouping, ["result", "kind", "le"]);
}
