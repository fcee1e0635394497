//! Shared helpers for integration tests: an in-process recording upstream, a
//! controllable JWKS server, token minting, and a gateway on port-0 listeners.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scopegate::demo::SigningKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod reference;
pub mod route_maps;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "orders-api";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// How the upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    /// 200 with a small JSON echo.
    Echo,
    /// Never answers (for timeouts).
    Hang,
}

/// A recording upstream on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<UpstreamMode>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(UpstreamMode::Echo));
        let (s, m) = (Arc::clone(&seen), Arc::clone(&mode));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, mode) = (Arc::clone(&s), Arc::clone(&m));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, mode) = (Arc::clone(&seen), Arc::clone(&mode));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let record = Seen {
                                method: parts.method.to_string(),
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/".into(), |p| p.to_string()),
                                headers: parts.headers.clone(),
                                body_len: body.len(),
                            };
                            seen.lock().unwrap().push(record.clone());
                            let current = *mode.lock().unwrap();
                            if current == UpstreamMode::Hang {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            let mut echo = serde_json::json!({
                                "path": record.path_and_query,
                                "body_len": record.body_len,
                            });
                            // A campaign's case id: which request an answer
                            // is to.
                            if let Some(case) =
                                record.headers.get("x-case").and_then(|v| v.to_str().ok())
                            {
                                echo["case"] = case.into();
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                echo.to_string(),
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, mode }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The requests after the first `skip` (what arrived since a count).
    pub fn seen_since(&self, skip: usize) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .get(skip..)
            .map(<[Seen]>::to_vec)
            .unwrap_or_default()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn set_mode(&self, mode: UpstreamMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

/// How the JWKS server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksMode {
    /// 200 with the current document.
    Serve,
    /// 500.
    Fail,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a key set whose keys nothing can use: `key-1` as a point off
    /// the P-256 curve, and a P-256 key pinned to ES384.
    Unusable,
    /// Never answers.
    Hang,
    /// Serves the document once [`JwksServer::release`] is called.
    Hold,
}

/// A key set of [`JwksMode::Unusable`] keys.
pub const UNUSABLE_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"key-1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"y_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},{"kty":"EC","crv":"P-256","kid":"key-2","alg":"ES384","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

/// A JWKS endpoint whose document and behaviour tests can change.
pub struct JwksServer {
    pub addr: SocketAddr,
    document: Arc<Mutex<String>>,
    mode: Arc<Mutex<JwksMode>>,
    fetches: Arc<AtomicUsize>,
    released: Arc<tokio::sync::Notify>,
}

impl JwksServer {
    pub async fn start(document: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document.to_owned()));
        let mode = Arc::new(Mutex::new(JwksMode::Serve));
        let fetches = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(tokio::sync::Notify::new());
        let (d, m, f, r) = (
            Arc::clone(&document),
            Arc::clone(&mode),
            Arc::clone(&fetches),
            Arc::clone(&released),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (d, m, f, r) = (
                    Arc::clone(&d),
                    Arc::clone(&m),
                    Arc::clone(&f),
                    Arc::clone(&r),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let (d, m, f, r) = (
                            Arc::clone(&d),
                            Arc::clone(&m),
                            Arc::clone(&f),
                            Arc::clone(&r),
                        );
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            let mode = m.lock().unwrap().clone();
                            let (status, body) = match mode {
                                JwksMode::Serve => (StatusCode::OK, d.lock().unwrap().clone()),
                                JwksMode::Fail => {
                                    (StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned())
                                }
                                JwksMode::Garbage => (StatusCode::OK, "<html>not json".to_owned()),
                                JwksMode::Unusable => (StatusCode::OK, UNUSABLE_JWKS.to_owned()),
                                JwksMode::Hang => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    (StatusCode::OK, String::new())
                                }
                                JwksMode::Hold => {
                                    r.notified().await;
                                    (StatusCode::OK, d.lock().unwrap().clone())
                                }
                            };
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            document,
            mode,
            fetches,
            released,
        }
    }

    /// Lets one fetch held by [`JwksMode::Hold`] (the next, if none is
    /// waiting) answer.
    pub fn release(&self) {
        self.released.notify_one();
    }

    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn set_document(&self, document: &str) {
        *self.document.lock().unwrap() = document.to_owned();
    }

    pub fn set_mode(&self, mode: JwksMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Merges the `keys` arrays of several JWKS documents.
pub fn merge_jwks(documents: &[&str]) -> String {
    let mut keys = Vec::new();
    for d in documents {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        keys.extend(v["keys"].as_array().unwrap().iter().cloned());
    }
    serde_json::json!({ "keys": keys }).to_string()
}

pub fn now() -> u64 {
    scopegate::auth::jwt::now_unix()
}

/// Standard valid claims with the given scope.
pub fn claims(scope: &str) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "billing",
        "scope": scope, "iat": now, "exp": now + 600,
    })
}

/// A running gateway with its shutdown trigger.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), scopegate::server::ServerError>>,
}

impl Gateway {
    /// Starts scopegate with this YAML (listen addresses are replaced by port 0).
    pub async fn start(yaml: &str) -> Self {
        Self::try_start(yaml).await.unwrap()
    }

    pub async fn try_start(yaml: &str) -> Result<Self, scopegate::config::ConfigError> {
        scopegate::cli::install_crypto_provider();
        let config = scopegate::config::load_str("test.yaml", Path::new("."), yaml)?;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(scopegate::server::run(
            config,
            listener,
            admin_listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut gateway = Self {
            addr,
            admin,
            stop: Some(stop),
            task,
        };
        gateway.wait_ready().await;
        Ok(gateway)
    }

    /// Polls /readyz until it answers 200 (bounded); a gateway that
    /// stopped instead is reported with what `run` returned.
    pub async fn wait_ready(&mut self) {
        for _ in 0..200 {
            if let Ok(r) = get(&format!("http://{}/readyz", self.admin), &[]).await {
                if r.status == 200 {
                    return;
                }
            }
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!("the gateway stopped before it was ready: {ended:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers shutdown (SIGTERM equivalent).
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the gateway and waits (bounded) for its task to end, which
    /// must be a clean one.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        let ended = tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the gateway did not stop");
        ended.unwrap().unwrap();
    }

    pub async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin), &[])
            .await
            .unwrap()
            .text()
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn www_authenticate(&self) -> String {
        self.header("www-authenticate").unwrap_or_default()
    }
}

pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "client timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    send("GET", url, headers, Bytes::new()).await
}

/// GET with `Authorization: Bearer <token>`.
pub async fn get_with_token(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    get(url, &[("authorization", &auth)]).await.unwrap()
}

/// Sends raw bytes and reads until the server closes or `limit` bytes arrive.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A standard test setup: one ES256 key, its JWKS server, a recording upstream.
pub struct World {
    pub key: SigningKey,
    pub jwks: JwksServer,
    pub upstream: Upstream,
}

impl World {
    pub async fn new() -> Self {
        let key = SigningKey::generate("key-1").unwrap();
        let jwks = JwksServer::start(key.jwks()).await;
        let upstream = Upstream::start().await;
        Self {
            key,
            jwks,
            upstream,
        }
    }

    pub fn token(&self, scope: &str) -> String {
        self.key.mint(&claims(scope)).unwrap()
    }

    /// The standard config: `/orders/{id}` (GET, orders:read), `/orders/{*rest}`
    /// (POST/PUT/DELETE, any of orders:write/orders:admin), `/status` public,
    /// `/admin` (admin), `/admin/{*rest}` (admin).
    pub fn config(&self) -> String {
        self.config_with("")
    }

    /// The standard config with extra top-level YAML appended to the issuer
    /// (indented 4 spaces, e.g. "    jwks_refetch_cooldown: 1h\n").
    pub fn config_with(&self, issuer_extra: &str) -> String {
        format!(
            r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
issuers:
  - name: test
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {jwks}
    algorithms: [ES256]
    leeway: 30s
{issuer_extra}upstreams:
  app:
    url: http://{upstream}
    connect_timeout: 1s
    request_timeout: 2s
routes:
  - path: /orders/{{id}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /orders/{{*rest}}
    methods: [POST, PUT, DELETE]
    upstream: app
    any_scopes: [orders:write, orders:admin]
  - path: /status
    upstream: app
    auth: none
  - path: /admin
    upstream: app
    scopes: [admin]
  - path: /admin/{{*rest}}
    upstream: app
    scopes: [admin]
"#,
            jwks = self.jwks.uri(),
            upstream = self.upstream.addr,
        )
    }
}

impl Gateway {
    /// Wraps a server the test started itself (e.g. with `run_with_reload`).
    pub fn from_parts(
        addr: SocketAddr,
        admin: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), scopegate::server::ServerError>>,
    ) -> Self {
        Self {
            addr,
            admin,
            stop: Some(stop),
            task,
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers for tests/proxy.rs: scripted upstreams, streamed bodies, raw replies.
// ---------------------------------------------------------------------------

/// A boxed body for scripted upstreams and clients.
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

/// A body fed one data frame per message through a channel; it ends when the
/// sender is dropped.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// An upstream on 127.0.0.1:0 that takes connections, reads what first
/// arrives on each (a request head, a TLS ClientHello) and then neither
/// reads nor writes again: a hung process, or a port whose TLS handshake
/// never ends. Connections stay open while the test runs.
pub async fn silent_upstream() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut first = [0u8; 1024];
            let _ = stream.read(&mut first).await;
            held.push(stream);
        }
    });
    addr
}

/// A streamed body and the sender that feeds it.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, ChannelBody { rx })
}

/// An upstream on 127.0.0.1:0 (HTTP/1.1 with upgrades, and h2c) whose every
/// request is answered by `handler`.
pub async fn serve_fn<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    serve_fn_over(None, handler).await
}

/// Like [`serve_fn`], over TLS with `acceptor` (which offers h2 and
/// HTTP/1.1 by ALPN when it is scopegate's own).
pub async fn serve_fn_tls<F, Fut>(acceptor: tokio_rustls::TlsAcceptor, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    serve_fn_over(Some(acceptor), handler).await
}

async fn serve_fn_over<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 response as text: status, head and body.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawReply {
    /// Parses what [`raw`] returned (one response; empty input gives status 0).
    pub fn parse(text: &str) -> Self {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The JSON `error` field of the body, if the body is JSON.
    pub fn error(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v["error"].as_str().map(str::to_owned)
    }
}

/// [`raw`] and [`RawReply::parse`].
pub async fn raw_reply(addr: SocketAddr, request: &[u8]) -> RawReply {
    RawReply::parse(&raw(addr, request).await)
}

// ---------------------------------------------------------------------------
// Helpers for tests/introspection.rs: gateways that may stay unready.
// ---------------------------------------------------------------------------

impl Gateway {
    /// Starts scopegate with this YAML without waiting for /readyz (for setups
    /// that must stay unready, e.g. refused discovery).
    pub async fn start_unready(yaml: &str) -> Self {
        scopegate::cli::install_crypto_provider();
        let config = scopegate::config::load_str("test.yaml", Path::new("."), yaml).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(scopegate::server::run(
            config,
            listener,
            admin_listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Self::from_parts(addr, admin, stop, task)
    }

    /// The status of `GET /readyz` on the admin listener (0 if it does not answer).
    pub async fn readyz(&self) -> u16 {
        get(&format!("http://{}/readyz", self.admin), &[])
            .await
            .map_or(0, |r| r.status)
    }
}

/// The sum of a metric's samples whose labels include all of `labels`.
/// Asserts that scopegate refuses `yaml` with a message naming `fragment`
/// and a line to point at.
pub fn assert_config_refused(yaml: &str, fragment: &str) {
    let error = scopegate::config::load_str("test.yaml", std::path::Path::new("."), yaml)
        .err()
        .unwrap_or_else(|| panic!("must be refused ({fragment}):\n{yaml}"));
    assert!(error.message.contains(fragment), "{error}");
    assert!(error.line.is_some(), "{error}");
}

pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The value of the one series of `name` with `labels`, or `None` where
/// no such series is exported (unlike [`metric`], which reads that as 0).
pub fn exported(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let labelled = rest.starts_with('{')
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (labelled || (rest.is_empty() && labels.is_empty()))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
}

/// The argon2 PHC hash of `secret`, computed once per secret and test binary
/// (hashing is slow on purpose, and configs are built many times).
pub fn argon2_hash(secret: &str) -> String {
    static HASHES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, String>>,
    > = std::sync::OnceLock::new();
    let hashes = HASHES.get_or_init(Default::default);
    if let Some(hash) = hashes.lock().unwrap().get(secret) {
        return hash.clone();
    }
    let hash = scopegate::issuer::clients::hash_secret(secret).unwrap();
    hashes
        .lock()
        .unwrap()
        .entry(secret.to_owned())
        .or_insert(hash)
        .clone()
}

// ---------------------------------------------------------------------------
// Raw HTTP/1 exchanges, for the hostile-input tests.
// ---------------------------------------------------------------------------

/// A multi-threaded runtime for a test that drives async cases from a
/// synchronous proptest runner.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Part `index` (0 header, 1 payload) of a compact JWT, decoded but not
/// verified; `Null` if there is no such part or it is no base64url JSON.
pub fn jwt_part(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    token
        .split('.')
        .nth(index)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Whether this runs under CI (`CI` set, and not empty, `0` or `false`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// For a test that cannot run here for the reason `why` (a tool is not
/// installed): fails under CI, which must run everything; elsewhere says
/// why and returns, and the caller skips.
pub fn skip_unless_ci(why: &str) {
    assert!(!under_ci(), "{why} (CI is set, so this fails)");
    eprintln!("SKIPPED: {why}");
}

/// `tests/interop`: the Node.js package of the interoperability tests
/// (`oidc-provider`, and `jose` as a second JWT verifier), pinned by its
/// `package-lock.json`.
pub fn interop_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Whether `node` is there, and so are `tests/interop`'s packages
/// (installed with `npm ci` when not). When not, `test` cannot run: that
/// fails under CI and is otherwise said and skipped.
pub fn interop_node_modules(test: &str) -> bool {
    use std::process::{Command, Stdio};
    let cannot_run = |why: &str| {
        skip_unless_ci(&format!("{test} cannot run: {why}"));
        false
    };
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            eprintln!("node {}", String::from_utf8_lossy(&out.stdout).trim());
        }
        Ok(out) => return cannot_run(&format!("`node --version` failed: {}", out.status)),
        Err(e) => return cannot_run(&format!("`node` not found ({e}); install Node.js 20+")),
    }
    let dir = interop_dir();
    if ["oidc-provider", "jose"]
        .iter()
        .all(|package| dir.join("node_modules").join(package).is_dir())
    {
        return true;
    }
    eprintln!("tests/interop/node_modules is missing or old: running `npm ci`");
    match Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
    {
        Ok(status) if status.success() => true,
        Ok(status) => cannot_run(&format!(
            "`npm ci` in tests/interop failed ({status}); is the npm registry reachable?"
        )),
        Err(e) => cannot_run(&format!("`npm` not found ({e})")),
    }
}

/// A Node.js script of `tests/interop` that answers one line on stdout
/// for each line it reads on stdin; killed when dropped.
pub struct NodeLines {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl NodeLines {
    /// Starts `node <script>` in `tests/interop`.
    pub fn start(script: &str) -> Self {
        use std::process::{Command, Stdio};
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(interop_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node {script}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Writes `line`, and reads the answer line.
    pub fn ask(&mut self, line: &str) -> String {
        use std::io::{BufRead, Write};
        let mut answer = String::new();
        let read = writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .and_then(|()| self.stdout.read_line(&mut answer));
        if !matches!(read, Ok(n) if n > 0) {
            // Its own words, if any, went to the test's stderr.
            let status = self.child.wait();
            panic!("the node script ended ({status:?}, {read:?}) at the line {line:?}");
        }
        answer.trim_end().to_owned()
    }
}

impl Drop for NodeLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// panva's `jose` (`tests/interop/verify.mjs`, the JOSE library under
/// `oidc-provider`), a JWT verifier nobody on the team wrote, asked about
/// the tokens of the hostile token and key set campaigns.
pub struct Jose(NodeLines);

impl Jose {
    /// Starts `verify.mjs` with the key set `jwks` and the policy of the
    /// standard config: `iss`, `aud`, `typ: at+jwt`, ES256, `exp` required,
    /// the leeway.
    pub fn start(jwks: &str) -> Self {
        let mut jose = Self(NodeLines::start("verify.mjs"));
        assert_eq!(jose.use_policy(jwks, &["ES256"]), Ok(()));
        jose
    }

    /// Puts the key set `jwks` in force, and the standard policy with
    /// `algorithms` allowed: `Ok`, or `jose`'s refusal of the set.
    pub fn use_policy(&mut self, jwks: &str, algorithms: &[&str]) -> Result<(), String> {
        let setup = serde_json::json!({
            "jwks": serde_json::from_str::<serde_json::Value>(jwks).unwrap(),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "typ": "at+jwt",
            "algorithms": algorithms,
            "clockTolerance": reference::LEEWAY,
        });
        match self.0.ask(&setup.to_string()).as_str() {
            "ready" => Ok(()),
            refused => Err(refused.to_owned()),
        }
    }

    /// Puts the key set `jwks` in force in place of the one before: `Ok`,
    /// or `jose`'s refusal of the set.
    pub fn use_keys(&mut self, jwks: &str) -> Result<(), String> {
        let jwks: serde_json::Value = serde_json::from_str(jwks).unwrap();
        let line = serde_json::json!({ "jwks": jwks }).to_string();
        match self.0.ask(&line).as_str() {
            "ready" => Ok(()),
            refused => Err(refused.to_owned()),
        }
    }

    /// `Ok` if `jose` accepts the token, else its refusal.
    pub fn verify(&mut self, token: &str) -> Result<(), String> {
        match self.0.ask(token).as_str() {
            "ok" => Ok(()),
            refused => Err(refused.to_owned()),
        }
    }
}

/// A proptest runner for the hostile-input tests: `SCOPEGATE_HOSTILE_CASES`
/// cases (for a campaign) or `default_cases`, and no failure files.
pub fn hostile_runner(default_cases: u32) -> proptest::test_runner::TestRunner {
    let cases = std::env::var("SCOPEGATE_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })
}

/// Runs `case` against `lab` on each of `default_cases` generated values
/// (or `SCOPEGATE_HOSTILE_CASES`), failing the test on the first failure.
pub fn run_campaign<L, S: proptest::strategy::Strategy>(
    runtime: &tokio::runtime::Runtime,
    lab: &L,
    default_cases: u32,
    strategy: S,
    case: impl AsyncFn(&L, S::Value) -> Result<(), String>,
) {
    hostile_runner(default_cases)
        .run(&strategy, |value| {
            runtime
                .block_on(case(lab, value))
                .map_err(proptest::test_runner::TestCaseError::fail)
        })
        .unwrap();
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The next request head on a kept-alive connection of a hand-written
/// upstream (without its blank line), read into `buf`, which keeps whatever
/// follows it; `None` once the peer closes or the read fails.
pub async fn next_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `bytes` (a write the peer cuts short is not an error: it may answer
/// and close before reading everything) and reads until the peer closes the
/// connection: the bytes read, and whether it closed cleanly rather than
/// with a reset. `Err` if it did neither within `bound`.
pub async fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    bound: Duration,
) -> Result<(Vec<u8>, bool), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    })
    .await;
    match read {
        Ok(clean) => Ok((out, clean)),
        Err(_) => Err(format!(
            "the peer neither answered nor closed within {bound:?}; got {:?}",
            String::from_utf8_lossy(&out)
        )),
    }
}

/// Whether a response head says `Connection: close` (a token of the field).
pub fn says_close(head: &str) -> bool {
    head.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("connection")
                && value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    })
}

/// One HTTP/1 response read off a raw stream.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line and header lines.
    pub head: String,
    pub body: Vec<u8>,
    /// The stream ended inside this response's body.
    pub cut: bool,
}

impl Answer {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// Every value of a header (case-insensitive name).
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }
}

/// Sends `requests`, one after another on one connection, and reads until
/// the gateway closes it: the answers (`methods` as for [`answers`]) and
/// their statuses, fewer of them if the connection ended early.
pub async fn answers_on_one_connection(
    addr: SocketAddr,
    requests: &[u8],
    methods: &[&str],
) -> (Vec<Answer>, Vec<u16>) {
    let (bytes, _) = exchange(addr, requests, Duration::from_secs(20))
        .await
        .unwrap();
    let (answers, _) = answers(&bytes, methods).unwrap();
    let statuses = answers.iter().map(|a| a.status).collect();
    (answers, statuses)
}

/// The HTTP/1 responses in `bytes`, in order, without interim ones (1xx
/// but 101); `methods[n]` is the n-th request's method (a HEAD answer has no
/// body; missing means GET). Also whether the bytes end inside a response
/// (its head, or the body of the last answer, then marked `cut`). `Err` for
/// bytes that are not HTTP/1 responses.
pub fn answers(bytes: &[u8], methods: &[&str]) -> Result<(Vec<Answer>, bool), String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return Ok((out, true));
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP/1 status line: {head:?}"))?;
        pos += end + 4;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut answer = Answer {
            status,
            head,
            body: Vec::new(),
            cut: false,
        };
        let method = methods.get(out.len()).copied().unwrap_or("GET");
        let chunked = answer
            .headers("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length = answer
            .header("content-length")
            .map(|v| v.parse::<usize>().map_err(|_| format!("bad length {v:?}")))
            .transpose()?;
        if method == "HEAD" || status == 204 || status == 304 {
        } else if chunked {
            // Chunks, then trailer lines up to an empty one.
            let mut trailers = false;
            loop {
                let Some(line_end) = find(&bytes[pos..], b"\r\n") else {
                    answer.body.extend_from_slice(&bytes[pos..]);
                    answer.cut = true;
                    pos = bytes.len();
                    break;
                };
                let line = String::from_utf8_lossy(&bytes[pos..pos + line_end]).into_owned();
                pos += line_end + 2;
                if trailers {
                    if line.is_empty() {
                        break;
                    }
                    continue;
                }
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    trailers = true;
                    continue;
                }
                if bytes.len() < pos + size + 2 {
                    answer.body.extend_from_slice(&bytes[pos..]);
                    answer.cut = true;
                    pos = bytes.len();
                    break;
                }
                answer.body.extend_from_slice(&bytes[pos..pos + size]);
                pos += size + 2;
            }
        } else if let Some(n) = length {
            let take = n.min(bytes.len() - pos);
            answer.body = bytes[pos..pos + take].to_vec();
            answer.cut = take < n;
            pos += take;
        } else {
            answer.body = bytes[pos..].to_vec();
            pos = bytes.len();
        }
        let cut = answer.cut;
        out.push(answer);
        if cut {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

/// The server side of a raw h2c connection, for upstreams that write their
/// frames by hand: `h2`'s codec (its `unstable` API), which reads and writes
/// whole frames but leaves every protocol decision to the test.
pub type H2Codec = h2::Codec<tokio::net::TcpStream, Bytes>;

/// Takes the client preface and sends empty SETTINGS; `None` if the
/// client went away first.
pub async fn h2_accept(mut tcp: tokio::net::TcpStream) -> Option<H2Codec> {
    use tokio::io::AsyncReadExt;
    let _ = tcp.set_nodelay(true);
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await.ok()?;
    let mut codec = h2::Codec::new(tcp);
    send_frame(&mut codec, h2::frame::Settings::default().into())
        .await
        .then_some(codec)
}

/// Writes and flushes one frame; false once the connection is gone.
pub async fn send_frame(codec: &mut H2Codec, frame: h2::frame::Frame<Bytes>) -> bool {
    if std::future::poll_fn(|cx| codec.poll_ready(cx))
        .await
        .is_err()
    {
        return false;
    }
    codec.buffer(frame).is_ok() && std::future::poll_fn(|cx| codec.flush(cx)).await.is_ok()
}

/// The next HEADERS frame, answering SETTINGS and PING on the way (and
/// skipping everything else); `None` at the connection's end.
pub async fn next_h2_headers(codec: &mut H2Codec) -> Option<h2::frame::Headers> {
    use h2::frame::{Frame, Ping, Settings};
    while let Some(Ok(frame)) = futures_util::StreamExt::next(codec).await {
        let reply: Frame<Bytes> = match frame {
            Frame::Headers(headers) => return Some(headers),
            Frame::Settings(s) if !s.is_ack() => Settings::ack().into(),
            Frame::Ping(p) if !p.is_ack() => Ping::pong(p.into_payload()).into(),
            _ => continue,
        };
        if !send_frame(codec, reply).await {
            return None;
        }
    }
    None
}

/// A raw h2c server on 127.0.0.1:0: each connection, past its preface,
/// goes to `handle` as a codec (see [`H2Codec`]).
pub async fn serve_raw_h2<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(H2Codec) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let handle = Arc::clone(&handle);
            tokio::spawn(async move {
                if let Some(codec) = h2_accept(tcp).await {
                    handle(codec).await;
                }
            });
        }
    });
    addr
}

/// A PKCS#8 P-256 private key as PEM.
pub fn p256_pem() -> String {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref()))
}

/// A PKCS#8 RSA-2048 private key as PEM.
pub fn rsa_pem() -> String {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
    pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref()))
}

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files in `dir`.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    write_certified(dir, &certified.cert, &certified.signing_key)
}

/// [`self_signed`], valid until 1 January of `year` (00:00 UTC).
pub fn self_signed_until(
    dir: &std::path::Path,
    year: i32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    write_certified(dir, &cert, &key)
}

/// `cert.pem` and `key.pem` in `dir`.
fn write_certified(
    dir: &std::path::Path,
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// The proxy and admin addresses a child scopegate logged to `log` (run it
/// with `SCOPEGATE_LOG_FORMAT=json`, at least `info` for `scopegate::server`,
/// and both listeners on port 0, so no port chosen beforehand can be taken
/// by another test first). `None` if `child` exits, or after about 10 s.
pub async fn serving_addresses(
    child: &mut std::process::Child,
    log: &Path,
) -> Option<(SocketAddr, SocketAddr)> {
    for _ in 0..400 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let serving = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|v| v["message"] == "scopegate serving");
        if let Some(v) = serving {
            let listen = v["listen"].as_str()?.parse().ok()?;
            let admin = v["admin"].as_str()?.parse().ok()?;
            return Some((listen, admin));
        }
        if child.try_wait().ok()?.is_some() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// The proxy and admin addresses a child scopegate logged on `stderr`, a
/// pipe (as [`serving_addresses`] reads them from a file), and the pipe
/// with the rest unread: keep it to leave the pipe open and unread, drop it
/// to close it. `None` if the pipe ends first.
pub async fn serving_addresses_on(
    stderr: std::process::ChildStderr,
) -> (
    Option<(SocketAddr, SocketAddr)>,
    std::io::BufReader<std::process::ChildStderr>,
) {
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "scopegate serving" {
                let at = |name: &str| v[name].as_str()?.parse::<SocketAddr>().ok();
                return (at("listen").zip(at("admin")), lines);
            }
            line.clear();
        }
        (None, lines)
    })
    .await
    .unwrap()
}

/// A loopback address nothing listens on, and nothing else can take while
/// the returned socket lives: it is bound but never listens, so connections
/// to it are refused (a port merely closed could be given to another test).
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A loopback port that was free a moment ago, for a process that must be
/// told its port (a child `scopegate`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `url` answers a GET with `status` within about 10 s.
pub async fn wait_for_status(url: &str, status: u16) -> bool {
    wait_for_status_with(url, &[], status).await
}

/// Whether `url` answers a GET with `headers` with `status` within about 10 s.
pub async fn wait_for_status_with(url: &str, headers: &[(&str, &str)], status: u16) -> bool {
    for _ in 0..400 {
        if get(url, headers).await.map(|r| r.status) == Ok(status) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}

/// Whether `gw`'s metrics come to satisfy `wanted` within about 10 s.
pub async fn wait_for_metrics(gw: &Gateway, wanted: impl Fn(&str) -> bool) -> bool {
    for _ in 0..400 {
        if wanted(&gw.metrics().await) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// Hot reload

/// Writes `text` as a new ConfigMap revision and swaps `..data` to it,
/// exactly as the kubelet does (new timestamped dir, symlink renamed over).
pub fn kubelet_write(dir: &Path, revision: u32, text: &str) {
    let rev = dir.join(format!("..2026_11_22_{revision:02}"));
    std::fs::create_dir(&rev).unwrap();
    std::fs::write(rev.join("scopegate.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(rev.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("scopegate.yaml").exists() {
        std::os::unix::fs::symlink("..data/scopegate.yaml", dir.join("scopegate.yaml")).unwrap();
    }
}

/// A gateway that follows its config file.
pub struct Reloading {
    pub gateway: Gateway,
}

/// Serves the config at `path` and watches it.
pub async fn start_reloading(path: std::path::PathBuf) -> Reloading {
    scopegate::cli::install_crypto_provider();
    let config = scopegate::config::load_file(&path).unwrap();
    start_reloading_with(path, config).await
}

/// Serves `config` (loaded from `path`, perhaps before the file changed)
/// and watches `path`.
pub async fn start_reloading_with(
    path: std::path::PathBuf,
    config: scopegate::config::Config,
) -> Reloading {
    let mut gateway = spawn_reloading(path, config).await;
    gateway.wait_ready().await;
    Reloading { gateway }
}

/// [`start_reloading`] with the fallback poll every `poll` (instead of
/// every 30 s).
pub async fn start_reloading_polled(path: std::path::PathBuf, poll: Duration) -> Reloading {
    scopegate::cli::install_crypto_provider();
    let config = scopegate::config::load_file(&path).unwrap();
    let mut gateway = spawn_reloading_every(path, config, Some(poll)).await;
    gateway.wait_ready().await;
    Reloading { gateway }
}

/// [`start_reloading`] without waiting for `/readyz`: for a config with an
/// issuer that is not to become ready.
pub async fn start_reloading_unready(path: std::path::PathBuf) -> Gateway {
    scopegate::cli::install_crypto_provider();
    let config = scopegate::config::load_file(&path).unwrap();
    spawn_reloading(path, config).await
}

/// Starts serving `config` and watching `path` on port-0 listeners.
async fn spawn_reloading(path: std::path::PathBuf, config: scopegate::config::Config) -> Gateway {
    spawn_reloading_every(path, config, None).await
}

/// [`spawn_reloading`], polling every `poll` where given.
async fn spawn_reloading_every(
    path: std::path::PathBuf,
    config: scopegate::config::Config,
    poll: Option<Duration>,
) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = match poll {
        None => tokio::spawn(scopegate::server::run_with_reload(
            path,
            config,
            listener,
            admin_listener,
            shutdown,
        )),
        Some(poll) => tokio::spawn(scopegate::server::run_with_reload_polling_every(
            poll,
            path,
            config,
            listener,
            admin_listener,
            shutdown,
        )),
    };
    Gateway::from_parts(addr, admin, stop, task)
}

// ---------------------------------------------------------------------------
// Log capture: what the gateway would write to its log.
// ---------------------------------------------------------------------------

/// Every log event of every crate, at every level (`log` records too), in
/// both of scopegate's formats (text and JSON lines), as the test's thread
/// saw them. The capture is per thread: the test must run the gateway on a
/// current-thread runtime (plain `#[tokio::test]`).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Starts capturing; capturing stops when the guard is dropped.
    pub fn capture() -> (Self, tracing::dispatcher::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        // While a single dispatcher is registered, tracing-core decides
        // whether a call site logs at all by the dispatcher of the thread
        // that reaches it first, and keeps that answer: another test's
        // thread, with none, would silence it here. A second dispatcher,
        // kept for the process, makes it ask every registered one instead.
        static SECOND: OnceLock<tracing::Dispatch> = OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let logs = Self::default();
        let (text, json) = (logs.clone(), logs.clone());
        let guard = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || text.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(move || json.clone()),
            )
            .set_default();
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The text-format access log line naming this request id. It is
    /// written once the answer has gone, so it may come after the client
    /// has read it: waits for it (bounded).
    pub async fn access_line(&self, request_id: &str) -> Option<String> {
        let wanted = format!("request_id=\"{request_id}\"");
        for _ in 0..200 {
            let text = self.text();
            let line = text
                .lines()
                .find(|l| l.contains("scopegate::access") && l.contains(&wanted));
            if let Some(line) = line {
                return Some(line.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    /// The access log line of the request `reply` answers (by its
    /// `X-Request-Id`); fails with the whole log when there is none.
    pub async fn access_line_of(&self, reply: &Reply) -> String {
        let id = reply
            .header("x-request-id")
            .expect("the answer has no X-Request-Id");
        match self.access_line(&id).await {
            Some(line) => line,
            None => panic!("no access line for {id}:\n{}", self.text()),
        }
    }

    /// Fails naming the first of `secrets` (label, value) some line carries.
    #[track_caller]
    pub fn assert_none_of(&self, secrets: &[(&str, &str)]) {
        let text = self.text();
        assert!(
            text.lines().count() > 20,
            "too few log lines to prove anything:\n{text}"
        );
        for (what, secret) in secrets {
            assert!(!secret.is_empty(), "{what} is empty");
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("the log carries {what}: {line}");
            }
        }
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `redis-server` on loopback `port`, working in `dir`, with persistence
/// off and its output discarded; more arguments may follow.
pub fn redis_server_command(port: u16, dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new("redis-server");
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// A `redis-server` child on a free loopback port (no persistence), killed
/// on drop.
pub struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    /// Starts one, or `None` (with a message) when `redis-server` is not
    /// installed; on CI (env `CI` set) a missing server fails the test.
    pub async fn start() -> Option<Self> {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            skip_unless_ci("redis-server is not installed; the redis store test cannot run");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Another process may take the free port first: then try another.
        for _ in 0..5 {
            let port = free_port();
            let mut child = redis_server_command(port, dir.path()).spawn().unwrap();
            for _ in 0..400 {
                if ours(port, dir.path()).await {
                    return Some(Self {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server never answered PING");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Whether the Redis on `port` answers (bounded) and is the one working in
/// `dir`, not another test's that took the port first.
async fn ours(port: u16, dir: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"CONFIG GET dir\r\n").await.is_err() {
        return false;
    }
    // Redis reports the directory it changed to, symbolic links resolved.
    let wanted = dir.canonicalize().unwrap().to_string_lossy().into_owned();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(&reply).contains(&wanted) {
            return true;
        }
    }
    false
}

/// A TCP forwarder standing for a Redis server's address (a DNS name or a
/// virtual IP): each connection made to it goes to where it leads at that
/// moment ([`Self::lead_to`]), or, once it [`Self::hangs`], nowhere.
pub struct RedisAddress {
    pub addr: SocketAddr,
    /// Where new connections go; `None`: they are taken and never answered.
    target: Arc<Mutex<Option<String>>>,
    /// The connections being forwarded, to drop when it hangs.
    forwarding: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl RedisAddress {
    /// Listens on a loopback port, leading to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(Some(target.to_owned())));
        let forwarding = Arc::new(Mutex::new(Vec::new()));
        let (to, tasks) = (Arc::clone(&target), Arc::clone(&forwarding));
        tokio::spawn(async move {
            // Connections taken while it hangs: held open, never answered.
            let mut held = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let Some(server) = to.lock().unwrap().clone() else {
                    held.push(client);
                    continue;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            target,
            forwarding,
        }
    }

    /// `redis://` to this address.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// New connections go to `target` (`host:port`); open ones stay where
    /// they lead.
    pub fn lead_to(&self, target: &str) {
        *self.target.lock().unwrap() = Some(target.to_owned());
    }

    /// As a proxy in front of a server whose host went down: open
    /// connections are closed, and new ones are taken and never answered.
    pub fn hangs(&self) {
        *self.target.lock().unwrap() = None;
        for task in self.forwarding.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Browser forms: the sign-in and consent pages' fields and cookies.
// ---------------------------------------------------------------------------

/// Undoes the HTML escaping of a page's attribute values.
pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The page's hidden form fields, unescaped, in document order.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    const OPEN: &str = "<input type=\"hidden\" name=\"";
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(OPEN) {
        rest = &rest[i + OPEN.len()..];
        let end = rest.find('"').unwrap();
        let name = rest[..end].to_owned();
        rest = &rest[end..];
        let v = rest.find("value=\"").unwrap() + "value=\"".len();
        rest = &rest[v..];
        let end = rest.find('"').unwrap();
        out.push((name, unescape(&rest[..end])));
        rest = &rest[end..];
    }
    out
}

/// The whole `Set-Cookie` header for cookie `name`, if set.
pub fn set_cookie(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// `name=value` of a cookie the reply set (for a `Cookie` header).
pub fn cookie_pair(r: &Reply, name: &str) -> String {
    let header = set_cookie(r, name).unwrap_or_else(|| {
        panic!(
            "no {name} cookie set (status {}): {:?}",
            r.status, r.headers
        )
    });
    header.split(';').next().unwrap().trim().to_owned()
}
