//! Prometheus metrics. One [`Metrics`] owns its registry and is passed around,
//! so tests run isolated. Labels are bounded: route and issuer names from the
//! config, fixed reason codes; never paths, subjects or tokens.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::config::Config;
use crate::server::pipeline::RESERVED_ROUTE_NAMES;

/// The issuer label of decisions made before any issuer was known (no
/// token, or one no configured issuer claims).
pub const NO_ISSUER: &str = "-";

/// The process's log writer's count of lines it dropped, its queue full
/// (nobody reads the log). The logger is the process's, not a server's, so
/// its count is too; each [`Metrics`] exports it.
static DROPPED_LOG_LINES: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Has `scopegate_log_lines_dropped_total` follow `counter`, the count of
/// the log writer the process installed.
pub fn count_dropped_log_lines(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = DROPPED_LOG_LINES.set(counter);
}

static HELD_BACK_LOG_LINES: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicU64>> =
    std::sync::OnceLock::new();

/// Has `scopegate_log_lines_held_back_total` follow `counter`, the count of
/// the other crates' lines the process's log holds back
/// ([`crate::admin::throttle::ForeignLines`]).
pub fn count_held_back_log_lines(counter: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let _ = HELD_BACK_LOG_LINES.set(counter);
}

/// The kinds of `scopegate_client_head_errors_total`.
const HEAD_ERROR_KINDS: [&str; 2] = ["too_large", "malformed"];

/// Every metric scopegate exports.
pub struct Metrics {
    registry: Registry,
    /// `scopegate_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `scopegate_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `scopegate_auth_decisions_total{issuer,decision,reason}`.
    pub auth_decisions: IntCounterVec,
    /// `scopegate_token_cache_requests_total{kind="jwt",result="hit"}`.
    pub token_cache_hits: IntCounter,
    /// `scopegate_token_cache_requests_total{kind="jwt",result="miss"}`.
    pub token_cache_misses: IntCounter,
    /// `scopegate_token_cache_requests_total{kind="introspection",result="hit"}`.
    pub token_cache_introspection_hits: IntCounter,
    /// `scopegate_token_cache_requests_total{kind="introspection",result="miss"}`.
    pub token_cache_introspection_misses: IntCounter,
    /// `scopegate_introspection_requests_total{issuer,result}`.
    pub introspection_requests: IntCounterVec,
    /// `scopegate_introspection_duration_seconds{issuer}`.
    pub introspection_duration: HistogramVec,
    /// `scopegate_jwks_fetches_total{issuer,result}`.
    pub jwks_fetches: IntCounterVec,
    /// `scopegate_discovery_attempts_total{issuer,result}`.
    pub discovery_attempts: IntCounterVec,
    /// `scopegate_upstream_errors_total{upstream,kind}`.
    pub upstream_errors: IntCounterVec,
    /// `scopegate_open_connections`.
    pub open_connections: IntGauge,
    /// `scopegate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `scopegate_config_last_reload_success` (1 or 0).
    pub config_last_reload_success: IntGauge,
    /// `scopegate_tls_certificate_rotations_total{result}`: the running
    /// config's certificate files reloaded on their own, while the config
    /// file is refused.
    pub tls_certificate_rotations: IntCounterVec,
    /// `scopegate_tls_certificate_expiry_timestamp_seconds`: when the served
    /// certificate stops being valid (its `notAfter`), 0 without TLS; an
    /// alert on it covers every way a renewal can fail to reach clients.
    pub tls_certificate_expiry: IntGauge,
    /// `scopegate_config_restart_required` (1 or 0).
    pub config_restart_required: IntGauge,
    /// `scopegate_issuer_token_requests_total{grant,result}`.
    pub issuer_token_requests: IntCounterVec,
    /// `scopegate_issuer_replays_total{kind}`.
    pub issuer_replays: IntCounterVec,
    /// `scopegate_issuer_store_errors_total{store,kind}`.
    pub issuer_store_errors: IntCounterVec,
    /// `scopegate_client_head_errors_total{kind}`.
    pub client_head_errors: IntCounterVec,
    /// `scopegate_log_lines_dropped_total`, brought up to the log writer's
    /// count at each render.
    log_lines_dropped: IntCounter,
    /// `scopegate_log_lines_held_back_total`, likewise.
    log_lines_held_back: IntCounter,
    /// Held while `log_lines_dropped` and `log_lines_held_back` catch up, so that two renders at
    /// once do not both add the same lines.
    log_lines_catching_up: Mutex<()>,
    /// The names the running config labels series with, once known.
    running_names: Mutex<Option<LabelNames>>,
    /// The names of a config a reload is setting up: its first JWKS fetches
    /// count before it runs.
    pending_names: Mutex<Option<LabelNames>>,
}

/// The route, issuer and upstream names a config gives metric labels: after
/// a reload, the series of names no longer configured are dropped
/// (by `Metrics::forget_all_but`), so a renamed route does not leave a frozen
/// series behind for as long as the process lives.
#[derive(Debug, Default, Clone)]
pub struct LabelNames {
    routes: HashSet<Arc<str>>,
    issuers: HashSet<Arc<str>>,
    upstreams: HashSet<Arc<str>>,
}

impl LabelNames {
    /// The names `config` labels series with.
    pub fn of(config: &Config) -> Self {
        Self {
            routes: config
                .routes
                .iter()
                .map(|(_, _, route)| Arc::clone(&route.name))
                .collect(),
            issuers: config.issuers.iter().map(|i| Arc::clone(&i.name)).collect(),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| Arc::clone(&u.name))
                .collect(),
        }
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "scopegate_requests_total",
                "Requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_request_duration_seconds",
                "Time from request head to response head, by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )?;
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "scopegate_auth_decisions_total",
                "Authorization decisions by issuer, decision and reason",
            ),
            &["issuer", "decision", "reason"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "scopegate_token_cache_requests_total",
                "Verified-token cache lookups by token kind and result",
            ),
            &["kind", "result"],
        )?;
        let introspection_requests = IntCounterVec::new(
            Opts::new(
                "scopegate_introspection_requests_total",
                "Introspection calls by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        let introspection_duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_introspection_duration_seconds",
                "Introspection call latency by issuer",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["issuer"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "scopegate_jwks_fetches_total",
                "JWKS fetches by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        let discovery_attempts = IntCounterVec::new(
            Opts::new(
                "scopegate_discovery_attempts_total",
                "Issuer metadata discovery attempts by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "scopegate_upstream_errors_total",
                "Upstream failures by upstream and kind",
            ),
            &["upstream", "kind"],
        )?;
        let open_connections =
            IntGauge::new("scopegate_open_connections", "Open client connections")?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "scopegate_config_reloads_total",
                "Configuration reloads by result",
            ),
            &["result"],
        )?;
        let config_last_reload_success = IntGauge::new(
            "scopegate_config_last_reload_success",
            "1 if the last configuration reload succeeded, else 0",
        )?;
        // The config in force was loaded whole: 1 until a reload fails, also
        // where none is tried (`demo`, `server::run`), so an alert on 0
        // does not fire on a healthy process.
        config_last_reload_success.set(1);
        let tls_certificate_rotations = IntCounterVec::new(
            Opts::new(
                "scopegate_tls_certificate_rotations_total",
                "The running certificate's files reloaded on their own while the configuration file is refused, by result (rotated: served now; refused: they do not load, the previous certificate keeps serving)",
            ),
            &["result"],
        )?;
        for result in ["rotated", "refused"] {
            tls_certificate_rotations.with_label_values(&[result]);
        }
        let tls_certificate_expiry = IntGauge::new(
            "scopegate_tls_certificate_expiry_timestamp_seconds",
            "When the certificate served to new TLS connections expires (its notAfter, seconds since the Unix epoch); 0 without TLS",
        )?;
        let config_restart_required = IntGauge::new(
            "scopegate_config_restart_required",
            "1 if the applied configuration changed settings that take effect only after a restart, else 0",
        )?;
        let issuer_token_requests = IntCounterVec::new(
            Opts::new(
                "scopegate_issuer_token_requests_total",
                "Token requests to the built-in authorization server by grant type (- if none it knows) and result (issued, or the RFC 6749 error code)",
            ),
            &["grant", "result"],
        )?;
        let issuer_replays = IntCounterVec::new(
            Opts::new(
                "scopegate_issuer_replays_total",
                "Used codes and rotated refresh tokens presented again by their client, each ending its grant (RFC 9700 4.14.2), by kind",
            ),
            &["kind"],
        )?;
        let issuer_store_errors = IntCounterVec::new(
            Opts::new(
                "scopegate_issuer_store_errors_total",
                "Failed operations on the built-in authorization server's store by store and kind",
            ),
            &["store", "kind"],
        )?;
        // Series an alert keys on exist at 0 before their first event, so
        // that `increase()` sees that event (a series' first sample is no
        // increase).
        for result in crate::server::reload::RELOAD_RESULTS {
            config_reloads.with_label_values(&[result]);
        }
        let client_head_errors = IntCounterVec::new(
            Opts::new(
                "scopegate_client_head_errors_total",
                "HTTP/1 request heads refused by the parser, which answered itself, by kind (too_large: 431, over max_header_bytes; malformed: 400)",
            ),
            &["kind"],
        )?;
        for kind in HEAD_ERROR_KINDS {
            client_head_errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(client_head_errors.clone()))?;
        let log_lines_dropped = IntCounter::new(
            "scopegate_log_lines_dropped_total",
            "Log lines dropped because more than 8192 waited to be written (nobody reads the log fast enough): access lines among them are missing from the audit trail",
        )?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        let log_lines_held_back = IntCounter::new(
            "scopegate_log_lines_held_back_total",
            "Lines of other crates (h2, rustls: a peer can have them written at will) held back: at most one per message site per 10 s is written",
        )?;
        registry.register(Box::new(log_lines_held_back.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(issuer_token_requests.clone()))?;
        registry.register(Box::new(issuer_replays.clone()))?;
        registry.register(Box::new(issuer_store_errors.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(auth_decisions.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        registry.register(Box::new(discovery_attempts.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(config_restart_required.clone()))?;
        registry.register(Box::new(tls_certificate_rotations.clone()))?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        registry.register(Box::new(introspection_requests.clone()))?;
        registry.register(Box::new(introspection_duration.clone()))?;
        Ok(Self {
            token_cache_hits: cache.with_label_values(&["jwt", "hit"]),
            token_cache_misses: cache.with_label_values(&["jwt", "miss"]),
            token_cache_introspection_hits: cache.with_label_values(&["introspection", "hit"]),
            token_cache_introspection_misses: cache.with_label_values(&["introspection", "miss"]),
            introspection_requests,
            introspection_duration,
            registry,
            requests,
            request_duration,
            auth_decisions,
            jwks_fetches,
            discovery_attempts,
            upstream_errors,
            open_connections,
            config_reloads,
            config_last_reload_success,
            config_restart_required,
            tls_certificate_rotations,
            tls_certificate_expiry,
            issuer_token_requests,
            issuer_replays,
            issuer_store_errors,
            client_head_errors,
            log_lines_dropped,
            log_lines_held_back,
            log_lines_catching_up: Mutex::new(()),
            running_names: Mutex::new(None),
            pending_names: Mutex::new(None),
        })
    }

    /// Counts a request head the HTTP/1 parser refused (`kind` one of
    /// `too_large`, `malformed`).
    pub fn count_head_error(&self, kind: &str) {
        if HEAD_ERROR_KINDS.contains(&kind) {
            self.client_head_errors.with_label_values(&[kind]).inc();
        }
    }

    /// The registry, for metrics other modules add.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records the names of the config now running, and drops every series
    /// labelled with a route, issuer or upstream name it does not hold.
    pub fn running(&self, names: LabelNames) {
        if let Ok(mut running) = self.running_names.lock() {
            *running = Some(names);
        }
        if let Ok(mut pending) = self.pending_names.lock() {
            *pending = None;
        }
        self.forget_retired();
    }

    /// Keeps the series of a config a reload is setting up (besides the
    /// running one's) until [`Self::running`] or [`Self::refused`].
    pub fn preparing(&self, names: LabelNames) {
        if let Ok(mut pending) = self.pending_names.lock() {
            *pending = Some(names);
        }
    }

    /// The reload being set up was refused: its names' series go.
    pub fn refused(&self) {
        if let Ok(mut pending) = self.pending_names.lock() {
            *pending = None;
        }
        self.forget_retired();
    }

    /// Drops the series labelled with names neither the running config nor
    /// one being set up holds: a retired config's last requests and
    /// background fetches, or a refused reload's setup, may have written
    /// them after [`Self::running`] dropped them. Every scrape does this
    /// first, so no such series is ever exported.
    pub fn forget_retired(&self) {
        let Ok(running) = self.running_names.lock() else {
            return;
        };
        let Some(running) = running.as_ref() else {
            return;
        };
        match self.pending_names.lock() {
            Ok(pending) => self.forget_all_but(&[Some(running), pending.as_ref()]),
            Err(_) => self.forget_all_but(&[Some(running)]),
        }
    }

    /// Drops every series labelled with a route, issuer or upstream name
    /// that none of `kept` holds (the labels scopegate itself gives, such
    /// as `unmatched` and the issuer `-` of tokenless denials, stay).
    fn forget_all_but(&self, kept: &[Option<&LabelNames>]) {
        let kept = || kept.iter().flatten();
        let route = |name: &str| {
            RESERVED_ROUTE_NAMES.contains(&name) || kept().any(|k| k.routes.contains(name))
        };
        let issuer = |name: &str| name == NO_ISSUER || kept().any(|k| k.issuers.contains(name));
        let upstream = |name: &str| kept().any(|k| k.upstreams.contains(name));
        forget_series(&self.requests, "route", route);
        forget_series(&self.request_duration, "route", route);
        forget_series(&self.auth_decisions, "issuer", issuer);
        forget_series(&self.jwks_fetches, "issuer", issuer);
        forget_series(&self.discovery_attempts, "issuer", issuer);
        forget_series(&self.introspection_requests, "issuer", issuer);
        forget_series(&self.introspection_duration, "issuer", issuer);
        forget_series(&self.upstream_errors, "upstream", upstream);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.forget_retired();
        if let Ok(_catching_up) = self.log_lines_catching_up.lock() {
            let catch_up = |counter: &IntCounter, now: u64| {
                let told = counter.get();
                if now > told {
                    counter.inc_by(now - told);
                }
            };
            if let Some(dropped) = DROPPED_LOG_LINES.get() {
                let now = u64::try_from(dropped.dropped_lines()).unwrap_or(u64::MAX);
                catch_up(&self.log_lines_dropped, now);
            }
            if let Some(held_back) = HELD_BACK_LOG_LINES.get() {
                let now = held_back.load(std::sync::atomic::Ordering::Relaxed);
                catch_up(&self.log_lines_held_back, now);
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error
        // yields what was written so far.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Removes the series of `vec` whose `label` is a name `keep` refuses.
fn forget_series<B: MetricVecBuilder>(
    vec: &MetricVec<B>,
    label: &str,
    keep: impl Fn(&str) -> bool,
) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get(label).is_some_and(|name| !keep(name)) {
                // The labels were read from this vector: they fit it.
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retired or refused config's background work may write its series
    /// after they were dropped; no scrape shows them. A config being set up
    /// keeps its own.
    #[test]
    fn a_late_write_under_a_retired_name_is_never_exported() {
        let metrics = Metrics::new().unwrap();
        let names = |name: &str| {
            let set: HashSet<Arc<str>> = [Arc::from(name)].into();
            LabelNames {
                routes: set.clone(),
                issuers: set.clone(),
                upstreams: set,
            }
        };
        let fetched = |issuer: &str| {
            metrics
                .jwks_fetches
                .with_label_values(&[issuer, "success"])
                .inc()
        };
        let exported = |issuer: &str| {
            String::from_utf8(metrics.render())
                .unwrap()
                .contains(&format!("issuer=\"{issuer}\""))
        };
        metrics.running(names("old"));
        fetched("old");
        metrics.running(names("new"));
        fetched("old");
        fetched("new");
        metrics.preparing(names("next"));
        fetched("next");
        assert!(!exported("old"));
        assert!(exported("new") && exported("next"));
        metrics.refused();
        assert!(!exported("next"));
        fetched("next");
        assert!(!exported("next"));
        assert!(exported("new"));
    }

    #[test]
    fn forgetting_drops_exactly_the_series_of_names_gone() {
        let metrics = Metrics::new().unwrap();
        for issuer in ["kept", "gone", NO_ISSUER] {
            metrics
                .auth_decisions
                .with_label_values(&[issuer, "deny", "expired"])
                .inc();
            metrics
                .jwks_fetches
                .with_label_values(&[issuer, "ok"])
                .inc();
            metrics
                .discovery_attempts
                .with_label_values(&[issuer, "success"])
                .inc();
            metrics
                .introspection_requests
                .with_label_values(&[issuer, "active"])
                .inc();
            metrics
                .introspection_duration
                .with_label_values(&[issuer])
                .observe(0.1);
        }
        for upstream in ["kept", "gone"] {
            metrics
                .upstream_errors
                .with_label_values(&[upstream, "connect"])
                .inc();
        }
        for route in ["kept", "gone", "unmatched", "authorization_server"] {
            metrics
                .requests
                .with_label_values(&[route, "GET", "200"])
                .inc();
            metrics
                .request_duration
                .with_label_values(&[route])
                .observe(0.1);
        }
        let kept: HashSet<Arc<str>> = [Arc::from("kept")].into();
        metrics.forget_all_but(&[Some(&LabelNames {
            routes: kept.clone(),
            issuers: kept.clone(),
            upstreams: kept,
        })]);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(!text.contains("\"gone\""), "{text}");
        for series in [
            r#"scopegate_auth_decisions_total{decision="deny",issuer="kept",reason="expired"} 1"#,
            r#"scopegate_auth_decisions_total{decision="deny",issuer="-",reason="expired"} 1"#,
            r#"scopegate_jwks_fetches_total{issuer="kept",result="ok"} 1"#,
            r#"scopegate_discovery_attempts_total{issuer="kept",result="success"} 1"#,
            r#"scopegate_introspection_requests_total{issuer="kept",result="active"} 1"#,
            r#"scopegate_introspection_duration_seconds_count{issuer="kept"} 1"#,
            r#"scopegate_upstream_errors_total{kind="connect",upstream="kept"} 1"#,
            r#"scopegate_requests_total{method="GET",route="kept",status="200"} 1"#,
            r#"scopegate_requests_total{method="GET",route="unmatched",status="200"} 1"#,
            r#"scopegate_request_duration_seconds_count{route="authorization_server"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing: {text}");
        }
    }
}
