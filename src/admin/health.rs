//! The admin listener: `GET /metrics`, `/healthz` (alive), `/readyz` (keys
//! loaded and not shutting down).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::metrics::Metrics;

/// Answers whether the gateway should receive traffic.
pub type ReadinessProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Admin connections kept open at once: a new one beyond them closes the
/// oldest, so connections held open (by a scraper gone wrong, or on
/// purpose) cannot keep the kubelet's probes waiting in the backlog until
/// their timeout, and the pod restarted.
const MAX_CONNECTIONS: usize = 64;
/// The admin connections open, oldest first: an id and the signal that
/// closes it.
type OpenConnections = Mutex<VecDeque<(u64, Arc<Notify>)>>;

/// The longest an admin connection stays open (a scraper reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The most bytes an admin request head may take. Probes and scrapers send a
/// few hundred; hyper's default (about 400 KiB) would let the 128
/// connections hold some 50 MB.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves the admin endpoints (HTTP/1.1, as probes and scrapers speak)
/// until `shutdown` changes, then closes its connections and returns once
/// they have ended. A connection gets `header_read_timeout` for
/// each request head, as on the proxy listener, so idle or slow connections
/// cannot hold the few slots the kubelet's probes need.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: ReadinessProbe,
    header_read_timeout: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // A hard bound on connection tasks, well above MAX_CONNECTIONS: closing
    // the oldest takes a moment.
    let slots = Arc::new(tokio::sync::Semaphore::new(2 * MAX_CONNECTIONS));
    // One render at a time: a render begun runs to its end (on the blocking
    // pool) even when its connection is closed, so renders must not pile up.
    let rendering = Arc::new(tokio::sync::Semaphore::new(1));
    let open: Arc<OpenConnections> = Arc::default();
    let mut next_id: u64 = 0;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    // Ended with the server: an open connection (a scraper's keep-alive
    // one) would otherwise answer from, and hold, a config already gone.
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            _ = shutdown.changed() => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                crate::server::accept_failed(&e).await;
                continue;
            }
        };
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        let close = Arc::new(Notify::new());
        {
            let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.len() >= MAX_CONNECTIONS {
                if let Some((_, oldest)) = open.pop_front() {
                    oldest.notify_one();
                }
            }
            open.push_back((id, Arc::clone(&close)));
        }
        let metrics = Arc::clone(&metrics);
        let ready = Arc::clone(&ready);
        let rendering = Arc::clone(&rendering);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: Request<Incoming>| {
                let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
                let rendering = Arc::clone(&rendering);
                async move { Ok::<_, Infallible>(answer(&req, metrics, &ready, rendering).await) }
            }),
        );
        let open = Arc::clone(&open);
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {}
                // Closed to make room: dropped, in whatever state it is.
                () = close.notified() => {}
            }
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(open_id, _)| *open_id != id);
            drop(slot);
        });
    }
    drop(listener);
    for (_, close) in open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
    {
        close.notify_one();
    }
    tasks.close();
    tasks.wait().await;
}

async fn answer(
    req: &Request<Incoming>,
    metrics: Arc<Metrics>,
    ready: &ReadinessProbe,
    rendering: Arc<tokio::sync::Semaphore>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            // Off the runtime: with many routes the text is large, and a
            // one-worker gateway would stall its requests for each scrape.
            let Ok(turn) = rendering.acquire_owned().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable\n");
            };
            let rendered = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                metrics.render()
            })
            .await;
            let Ok(rendered) = rendered else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n");
            };
            let mut r = Response::new(Full::new(Bytes::from(rendered)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}
