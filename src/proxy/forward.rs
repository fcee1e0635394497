//! Sends a permitted request to its route's upstream and streams the answer back.

use std::error::Error as _;
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{BodyFailures, UpstreamBody};
use super::client::{build_https_client, HttpsClient};
use super::headers::{prepare_upstream_request, remove_hop_by_hop, ClientInfo};
use super::Body;
use crate::admin::metrics::Metrics;
use crate::auth::Permit;
use crate::config::Upstream;
use crate::error::GatewayError;

struct UpstreamClient {
    config: Upstream,
    client: HttpsClient<Incoming>,
    body_failures: BodyFailures,
}

/// One pooled client per upstream.
pub struct Forwarder {
    upstreams: Vec<UpstreamClient>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Builds the clients; fails on an unreadable CA file.
    pub fn new(upstreams: Vec<Upstream>, metrics: Arc<Metrics>) -> Result<Self, String> {
        let upstreams = upstreams
            .into_iter()
            .map(|config| {
                let client = build_https_client(
                    config.ca_file.as_deref(),
                    config.connect_timeout,
                    config.pool_max_idle_per_host,
                    config.http2_only,
                )
                .map_err(|e| format!("upstream {}: {e}", config.name))?;
                let failures = |kind: &str| {
                    metrics
                        .upstream_errors
                        .with_label_values(&[config.name.as_ref(), kind])
                };
                let body_failures = BodyFailures {
                    broken: failures("body"),
                    idle: failures("body_timeout"),
                };
                Ok(UpstreamClient {
                    config,
                    client,
                    body_failures,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { upstreams, metrics })
    }

    /// Forwards a request that passed its route's check. The [`Permit`] is the
    /// proof; `canonical_path` is what the route matched.
    pub async fn forward(
        &self,
        permit: Permit<'_>,
        request: Request<Incoming>,
        canonical_path: &str,
        client: ClientInfo,
    ) -> Result<Response<Body>, GatewayError> {
        let route = permit.route();
        let Some(upstream) = self.upstreams.get(route.upstream) else {
            return Err(GatewayError::UpstreamUnavailable);
        };
        let (mut parts, body) = request.into_parts();
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let upgrade = prepare_upstream_request(
            &mut parts.headers,
            &route.forward,
            permit.identity(),
            client,
            original_host,
        );
        let client_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        parts.uri = upstream_uri(&upstream.config, canonical_path, parts.uri.query())?;
        parts.version = if upstream.config.http2_only {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let outbound = Request::from_parts(parts, body);

        let sent = tokio::time::timeout(
            upstream.config.request_timeout,
            upstream.client.request(outbound),
        )
        .await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let (kind, error) = classify(&e);
                self.upstream_error(&upstream.config, kind);
                tracing::warn!(upstream = %upstream.config.name, kind, error = %e, "upstream request failed");
                return Err(error);
            }
            Err(_) => {
                self.upstream_error(&upstream.config, "timeout");
                return Err(GatewayError::UpstreamTimeout);
            }
        };

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            if let Some(client_side) = client_upgrade {
                let upstream_side = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(a), Ok(b)) = (client_side.await, upstream_side.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(a),
                            &mut TokioIo::new(b),
                        )
                        .await;
                    }
                });
            }
        } else {
            remove_hop_by_hop(response.headers_mut());
        }
        let idle_timeout = upstream.config.body_idle_timeout;
        let failures = upstream.body_failures.clone();
        Ok(response.map(|body| Either::Left(UpstreamBody::new(body, idle_timeout, failures))))
    }

    fn upstream_error(&self, upstream: &Upstream, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&upstream.name, kind])
            .inc();
    }
}

/// `scheme://authority{base_path}{canonical_path}[?query]`.
fn upstream_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
    let mut pq = String::with_capacity(
        upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq)
        .map_err(|_| GatewayError::BadPath(crate::routes::PathError::InvalidPercentEncoding))?;
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::UpstreamUnavailable)
}

/// Maps a client error to a metric kind and the response: connect timeouts are
/// 504, everything else 502.
fn classify(error: &hyper_util::client::legacy::Error) -> (&'static str, GatewayError) {
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ("connect_timeout", GatewayError::UpstreamTimeout);
            }
        }
        source = e.source();
    }
    if error.is_connect() {
        ("connect", GatewayError::UpstreamUnavailable)
    } else {
        ("protocol", GatewayError::UpstreamUnavailable)
    }
}
