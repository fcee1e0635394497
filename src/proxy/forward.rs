//! Sends a permitted request to its route's upstream and streams the answer back.

use std::error::Error as _;
use std::sync::Arc;

use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::body::{
    BodyFailures, ClientBody, ClientBodyError, UploadEnd, UploadFailure, UpstreamBody,
};
use super::client::build_upstream_connectors;
use super::headers::{
    add_via, announce_close, count_forward, only_chunked, prepare_upstream_request,
    remove_hop_by_hop, remove_hop_by_hop_from_answer, take_connection_options, ClientInfo,
};
use super::places::{Place, Places};
use super::pool::{PoolSettings, SendError, UpstreamPool};
use super::request_id::RequestId;
use super::Body;
use crate::admin::metrics::Metrics;
use crate::admin::throttle::LogThrottle;
use crate::auth::Permit;
use crate::config::Upstream;
use crate::error::GatewayError;

struct UpstreamClient {
    config: Upstream,
    pool: Arc<UpstreamPool>,
    /// `max_requests` places, one held by each request in flight until its
    /// answer's body and its upload have ended (or its tunnel has).
    places: Arc<Places>,
    body_failures: BodyFailures,
    /// The failure lines, one per interval.
    failure_log: LogThrottle,
}

/// A request that may go upstream: its route's [`Permit`] and a place
/// among the upstream's `max_requests`, held until its answer and upload
/// have ended.
pub struct Admitted<'a> {
    permit: Permit<'a>,
    place: Place,
}

/// One connection pool per upstream.
pub struct Forwarder {
    upstreams: Vec<UpstreamClient>,
    /// Peers whose `X-Forwarded-Proto` and `X-Forwarded-Host` are kept.
    trusted_proxies: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Each upstream's name and `max_requests` places, for the forwarder
    /// that replaces this one on a reload.
    pub fn places(&self) -> Vec<(Arc<str>, Arc<Places>)> {
        self.upstreams
            .iter()
            .map(|u| (Arc::clone(&u.config.name), Arc::clone(&u.places)))
            .collect()
    }

    /// Whether the upstream at `index` puts a `base_path` in front of the
    /// paths it is sent.
    pub fn has_base_path(&self, index: usize) -> bool {
        self.upstreams
            .get(index)
            .is_some_and(|u| !u.config.base_path.is_empty())
    }

    /// Whether `client` is a trusted proxy (`trusted_proxies`), whose
    /// forwarding headers and request id are kept.
    pub fn trusts(&self, client: &ClientInfo) -> bool {
        !self.trusted_proxies.is_empty()
            && self
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&client.ip()))
    }

    /// Builds the clients; fails on an unreadable CA file. `kept` are the
    /// places of the forwarder before a reload ([`Forwarder::places`]),
    /// whose requests in flight still count against `max_requests`.
    pub fn new(
        upstreams: Vec<Upstream>,
        trusted_proxies: Vec<ipnet::IpNet>,
        metrics: Arc<Metrics>,
        kept: &[(Arc<str>, Arc<Places>)],
    ) -> Result<Self, String> {
        let upstreams = upstreams
            .into_iter()
            .map(|config| {
                let (connector, http1_connector) = build_upstream_connectors(
                    config.ca_file.as_deref(),
                    config.connect_timeout,
                    config.http2_only,
                    config.http1_only,
                )
                .map_err(|e| format!("upstream {}: {e}", config.name))?;
                let pool = UpstreamPool::new(
                    connector,
                    http1_connector,
                    PoolSettings {
                        scheme: config.scheme.clone(),
                        authority: config.authority.clone(),
                        http2_only: config.http2_only,
                        http1_only: config.http1_only,
                        max_idle: config.pool_max_idle_per_host,
                        http2_max_streams: config.http2_max_streams,
                        idle_timeout: config.pool_idle_timeout,
                        connect_timeout: config.connect_timeout,
                    },
                );
                let failures = |kind: &str| {
                    metrics
                        .upstream_errors
                        .with_label_values(&[config.name.as_ref(), kind])
                };
                // At 0 before the first failure, for alerts.
                for kind in [
                    "connect",
                    "connect_timeout",
                    "timeout",
                    "protocol",
                    "overloaded",
                ] {
                    failures(kind);
                }
                let body_failures = BodyFailures {
                    broken: failures("body"),
                    idle: failures("body_timeout"),
                };
                // Kept across a reload while the upstream keeps its name and
                // its limit: requests of the config before count too.
                let places = kept
                    .iter()
                    .find(|(name, places)| {
                        *name == config.name && places.max() == config.max_requests
                    })
                    .map_or_else(
                        || Places::new(config.max_requests),
                        |(_, places)| Arc::clone(places),
                    );
                Ok(UpstreamClient {
                    places,
                    config,
                    pool,
                    body_failures,
                    failure_log: LogThrottle::default(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            upstreams,
            trusted_proxies,
            metrics,
        })
    }

    /// Gives a permitted request a place among its upstream's
    /// `max_requests`, for [`Forwarder::forward`]; refused at once (not
    /// queued, as a queue would hold the client's request and its
    /// connection all the same) when every place is taken.
    pub fn admit<'a>(&self, permit: Permit<'a>) -> Result<Admitted<'a>, GatewayError> {
        let upstream = self
            .upstreams
            .get(permit.route().upstream)
            .ok_or(GatewayError::UpstreamUnavailable)?;
        match upstream.places.take() {
            Some(place) => Ok(Admitted { permit, place }),
            None => {
                self.upstream_error(&upstream.config, "overloaded");
                Err(GatewayError::UpstreamOverloaded)
            }
        }
    }

    /// Forwards a request that passed its route's check and found a place
    /// upstream ([`Forwarder::admit`]): its [`Permit`] is the proof.
    /// `canonical_path` is what the route matched when canonicalisation
    /// changed the request's path (`None`: the path as received). `upload` is
    /// set to the request body's [`UploadEnd`] once the body is on its way,
    /// so that the caller of a failed forward can tell whether it was all
    /// read.
    pub async fn forward(
        &self,
        admitted: Admitted<'_>,
        request: Request<Incoming>,
        canonical_path: Option<&str>,
        client: &ClientInfo,
        request_id: Option<&RequestId>,
        upload: &mut Option<UploadEnd>,
    ) -> Result<Response<Body>, GatewayError> {
        let Admitted { permit, place } = admitted;
        let route = permit.route();
        let Some(upstream) = self.upstreams.get(route.upstream) else {
            return Err(GatewayError::UpstreamUnavailable);
        };
        // Taken by a tunnel, or else carried by the answer's body.
        let mut place = Some(place);
        // A tunnel lasts no longer than the gateway accepts the token that
        // opened it (read now, the clock only if a tunnel opens).
        let token_accepted_until = permit.identity().map(|token| token.accepted_until);
        let (mut parts, body) = request.into_parts();
        let client_http1 = parts.version < http::Version::HTTP_2;
        if parts.method == http::Method::OPTIONS {
            count_forward(&mut parts.headers);
        }
        let upgrade = prepare_upstream_request(
            &mut parts.headers,
            &route.forward,
            permit.identity(),
            client,
            parts.uri.authority(),
            self.trusts(client),
            request_id,
        );
        add_via(&mut parts.headers, parts.version);
        let (client_upgrade, websocket_accept) = if upgrade {
            (
                parts.extensions.remove::<OnUpgrade>(),
                parts.headers.get(SEC_WEBSOCKET_KEY).map(websocket_accept),
            )
        } else {
            (None, None)
        };
        parts.uri = upstream_uri(&upstream.config, &parts.uri, canonical_path)?;
        let mut body = ClientBody::new(body, upstream.config.body_idle_timeout);
        let upload_end = body.upload_end();
        upload.clone_from(&upload_end);
        let outbound = Request::from_parts(parts, body);

        let send = upstream.pool.send(outbound, upgrade);
        let sent = match upload_end.as_deref() {
            None => tokio::time::timeout(upstream.config.request_timeout, send).await,
            // Boxed: only requests with a body pay for the longer wait.
            Some(upload) => {
                Box::pin(after_upload(send, upstream.config.request_timeout, upload)).await
            }
        };
        let (mut response, mut lease) = match sent {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => {
                // The client's body failing is the client's, however the
                // upstream connection reports it.
                let (kind, error) = match upload_end.as_deref().and_then(|u| u.failed.get()) {
                    Some(UploadFailure::Idle) => (None, GatewayError::RequestBodyTimeout),
                    Some(UploadFailure::Broken) => (None, GatewayError::RequestBodyBroken),
                    None => classify(&e),
                };
                match kind {
                    Some(kind) => {
                        self.upstream_error(&upstream.config, kind);
                        if let Some(suppressed) = upstream.failure_log.allow() {
                            let error = crate::error::with_causes(&e);
                            tracing::warn!(upstream = %upstream.config.name, kind, %error, suppressed, "upstream request failed");
                        }
                    }
                    // The client's request body failed, not the upstream.
                    None => {
                        tracing::debug!(upstream = %upstream.config.name, error = %e, "request body failed");
                    }
                }
                return Err(error);
            }
            Err(_) => {
                self.upstream_error(&upstream.config, "timeout");
                return Err(GatewayError::UpstreamTimeout);
            }
        };

        // The answer began before the request body had all gone out (an
        // early 401 or 413): the rest follows it, and an HTTP/1.1 upstream
        // that did not read it would take it for the next request on the
        // connection, one no route or token check saw. Told now, at the
        // head, whatever the client's HTTP version: by the time the answer
        // ends, the rest may have gone out, and the connection would be
        // parked with it unread. (As soon as the head reaches this task:
        // hyper's connection task may still send the rest in between.)
        if let (Some(lease), Some(upload)) = (lease.as_mut(), upload_end.as_deref()) {
            if upload.going_out() {
                lease.answered_mid_upload();
            }
        }

        // The client gets this gateway's HTTP version (RFC 9110 2.5), not an
        // HTTP/1.0 upstream's (hyper writes the version it is given, and a
        // client reads an HTTP/1.0 answer as closing the connection).
        *response.version_mut() = http::Version::HTTP_11;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        // Fields the answer's `Connection` names, for its trailers.
        let mut connection_options = None;
        if switching {
            let Some(client_side) = client_upgrade else {
                return Err(self.bad_answer(upstream, "a protocol switch nobody asked for"));
            };
            // RFC 6455 4.1: a switch without the accept value made from the
            // request's key is no WebSocket handshake; an upstream that
            // answered 101 while still reading HTTP would take whatever the
            // client sends next as requests no route or token check saw.
            let headers = response.headers();
            let handshake = websocket_accept
                .is_some_and(|accept| headers.get(SEC_WEBSOCKET_ACCEPT) == Some(&accept))
                && headers.get(UPGRADE).is_some_and(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
                });
            if !handshake {
                return Err(self.bad_answer(
                    upstream,
                    "a protocol switch without a matching WebSocket handshake",
                ));
            }
            // The switch's own hop-by-hop headers (`Keep-Alive`, what its
            // `Connection` names) stay on this hop; the client gets the
            // switch itself.
            let headers = response.headers_mut();
            remove_hop_by_hop(headers);
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            let upstream_side = hyper::upgrade::on(&mut response);
            let tunnel = super::tunnel::join(
                client_side,
                upstream_side,
                upstream.config.body_idle_timeout,
                token_accepted_until.map(super::tunnel::deadline),
                client.hold(),
            );
            // The tunnel is a request in flight for as long as it lasts.
            let tunnel_place = place.take();
            tokio::spawn(async move {
                tunnel.await;
                drop(tunnel_place);
            });
        } else {
            // RFC 9112 6.3: hyper read the body by Transfer-Encoding, but the
            // Content-Length beside it (response splitting, perhaps) would go
            // on to the client with a body it does not describe.
            let headers = response.headers();
            if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
                return Err(self.bad_answer(upstream, "both Content-Length and Transfer-Encoding"));
            }
            // hyper undoes `chunked` only; a coding before it (`gzip,
            // chunked`) would reach the client undone and unlabelled. A body
            // of known length (most) came without Transfer-Encoding.
            if http_body::Body::size_hint(response.body())
                .exact()
                .is_none()
                && !only_chunked(headers)
            {
                return Err(self.bad_answer(upstream, "a transfer coding other than chunked"));
            }
            single_content_length(response.headers_mut());
            connection_options = take_connection_options(response.headers_mut());
            if remove_hop_by_hop_from_answer(response.headers_mut()) {
                // An offer to switch (`Upgrade: h2c` on a 200, as Apache
                // sends) is this hop's alone: the client asked for nothing.
                // A 426 must name what to upgrade to (RFC 9110 15.5.22), with
                // the `Connection: upgrade` every sender of `Upgrade` sends
                // (7.8), so that the next hop does not pass it on.
                if response.status() != StatusCode::UPGRADE_REQUIRED {
                    response.headers_mut().remove(UPGRADE);
                    response.headers_mut().remove(CONNECTION);
                }
            }
            // The upstream answered before the client's HTTP/1 request body
            // had all come: the answer says that the connection ends with
            // it (RFC 9112 9.6), as hyper may not read the rest of the body
            // on to a next request, and the connection closes lingering,
            // so that a client still sending gets the answer, not a reset.
            if client_http1 && upload_end.as_ref().is_some_and(|u| u.ended.get().is_none()) {
                announce_close(response.headers_mut());
                client.linger_on_close();
            }
        }
        let idle_timeout = upstream.config.body_idle_timeout;
        let failures = upstream.body_failures.clone();
        // An upgraded connection is the tunnel's now, never pooled again.
        let lease = lease.filter(|_| !switching);
        Ok(response.map(|body| {
            Either::Left(UpstreamBody::new(
                body,
                idle_timeout,
                failures,
                lease,
                upload_end,
                place,
                connection_options,
            ))
        }))
    }

    /// An answer the upstream must not send: counted as a protocol error
    /// and refused with 502; its connection is closed, not pooled.
    fn bad_answer(&self, upstream: &UpstreamClient, what: &'static str) -> GatewayError {
        self.upstream_error(&upstream.config, "protocol");
        if let Some(suppressed) = upstream.failure_log.allow() {
            tracing::warn!(upstream = %upstream.config.name, what, suppressed, "upstream answer refused");
        }
        GatewayError::UpstreamUnavailable
    }

    fn upstream_error(&self, upstream: &Upstream, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&upstream.name, kind])
            .inc();
    }
}

/// `{base_path}{path}[?query]` in origin form (the pool sets the target for
/// HTTP/2), where `path` is `canonical_path` or else the received one.
fn upstream_uri(
    upstream: &Upstream,
    received: &Uri,
    canonical_path: Option<&str>,
) -> Result<Uri, GatewayError> {
    if let (None, true, Some(pq)) = (
        canonical_path,
        upstream.base_path.is_empty(),
        received.path_and_query(),
    ) {
        // Shares the received bytes: no copy, no second parse. Not when
        // they hold no path (`GET http://host?x`), which `path()` shows
        // as `/` but an HTTP/2 `:path` may not be.
        if pq.as_str().starts_with('/') {
            return Ok(Uri::from(pq.clone()));
        }
    }
    let path = canonical_path.unwrap_or(received.path());
    let query = received.query();
    let mut pq = String::with_capacity(
        upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    // The parts were each a valid target's: only the length can fail.
    let pq = PathAndQuery::try_from(pq).map_err(|_| GatewayError::TargetTooLong)?;
    Ok(Uri::from(pq))
}

/// Waits for the upstream's answer for `timeout` from when the request
/// body was all sent, so that an upload longer than the timeout is not cut
/// off with 504: while it runs, `body_idle_timeout` bounds the client's
/// stalls, and an upload that made no progress for a whole `timeout` (an
/// upstream that stopped taking it) ends the wait.
async fn after_upload<F: std::future::Future>(
    send: F,
    timeout: std::time::Duration,
    upload: &super::body::Upload,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut send = std::pin::pin!(send);
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut frames = upload.frames.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        match tokio::time::timeout_at(deadline, send.as_mut()).await {
            Ok(out) => return Ok(out),
            Err(elapsed) => {
                let now = tokio::time::Instant::now();
                let read = upload.frames.load(std::sync::atomic::Ordering::Relaxed);
                // A client that stopped sending is its own stall, which
                // `body_idle_timeout` ends with 408: only an upload the
                // upstream stopped taking ends the wait here (504).
                let client_stalled = upload
                    .waiting_on_client
                    .load(std::sync::atomic::Ordering::Relaxed);
                deadline = match upload.ended.get() {
                    Some(end) if *end + timeout <= now => return Err(elapsed),
                    Some(end) => *end + timeout,
                    None if read == frames && !client_stalled => return Err(elapsed),
                    None => now + timeout,
                };
                frames = read;
            }
        }
    }
}

/// The `Sec-WebSocket-Accept` a WebSocket server answers `key` with (RFC
/// 6455 4.2.2: base64 of the SHA-1 of the key and a fixed GUID).
pub fn websocket_accept(key: &HeaderValue) -> HeaderValue {
    use base64::Engine as _;
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    hash.update(key.as_bytes());
    hash.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let encoded = base64::engine::general_purpose::STANDARD.encode(hash.finish());
    // Base64 is visible ASCII.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Maps a send error to the response and, when the upstream is to blame, a
/// metric kind: timeouts are 504, other upstream failures 502; a
/// request body the client let stall is 408, one that broke off 400 (`None`:
/// not the upstream's failure).
fn classify(error: &SendError) -> (Option<&'static str>, GatewayError) {
    let mut source = error.source();
    while let Some(e) = source {
        match e.downcast_ref::<ClientBodyError>() {
            Some(ClientBodyError::Idle(_)) => return (None, GatewayError::RequestBodyTimeout),
            Some(ClientBodyError::Broken(_)) => return (None, GatewayError::RequestBodyBroken),
            None => {}
        }
        source = e.source();
    }
    // The kernel or the connect timer gave up: while connecting, or on an
    // open connection (counted as the request timeout is).
    if error.timed_out() {
        let kind = if matches!(error, SendError::Connect(_)) {
            "connect_timeout"
        } else {
            "timeout"
        };
        return (Some(kind), GatewayError::UpstreamTimeout);
    }
    match error {
        SendError::Connect(_) => (Some("connect"), GatewayError::UpstreamUnavailable),
        SendError::Protocol(_) | SendError::NoHttp1 => {
            (Some("protocol"), GatewayError::UpstreamUnavailable)
        }
    }
}

/// A `Content-Length` the upstream sent as a list of one number (`5, 5`,
/// or two lines), which hyper accepts when they agree, as that number: RFC
/// 9110 8.6 forbids passing the list on, and HTTP/2 clients reset the
/// stream over it.
fn single_content_length(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return;
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let number = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .and_then(|n| HeaderValue::from_bytes(n).ok());
    if let Some(number) = number {
        headers.insert(CONTENT_LENGTH, number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_list_of_one_length_is_sent_as_the_length() {
        for lines in [&["5, 5"][..], &["5", "5"], &[" 5 ,5"], &["5"]] {
            let mut headers = http::HeaderMap::new();
            for line in lines {
                headers.append(CONTENT_LENGTH, HeaderValue::from_static(line));
            }
            single_content_length(&mut headers);
            let got: Vec<_> = headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(got, ["5"], "{lines:?}");
        }
    }

    #[test]
    fn websocket_accept_is_rfc_6455s_sample() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(websocket_accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn upstream(base_path: &str) -> Upstream {
        Upstream {
            name: "app".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: "127.0.0.1:8080".parse().unwrap(),
            base_path: base_path.to_owned(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_secs(1),
            ca_file: None,
            http2_only: false,
            http1_only: false,
            http2_max_streams: 100,
            pool_max_idle_per_host: 1,
            pool_idle_timeout: Duration::from_secs(90),
            max_requests: 1,
            url_at: serde_saphyr::Location::UNKNOWN,
        }
    }

    #[test]
    fn upstream_uri_joins_base_path_canonical_path_and_query() {
        // (base path, received target, canonical path, expected)
        let cases = [
            ("", "/orders/42?a=%2F", None, "/orders/42?a=%2F"),
            ("", "http://gw.test/orders/42?a=1", None, "/orders/42?a=1"),
            (
                "",
                "/x/../orders/42?a=1",
                Some("/orders/42"),
                "/orders/42?a=1",
            ),
            ("/v1", "/orders/42?a=1", None, "/v1/orders/42?a=1"),
            ("/v1", "//orders/42", Some("/orders/42"), "/v1/orders/42"),
        ];
        for (base, received, canonical, expected) in cases {
            let received: Uri = received.parse().unwrap();
            let uri = upstream_uri(&upstream(base), &received, canonical).unwrap();
            assert_eq!(uri.to_string(), expected, "{base} {received} {canonical:?}");
            assert!(uri.scheme().is_none() && uri.authority().is_none());
        }
    }
}
