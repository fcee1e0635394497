//! Faults through real loopback sockets: oversized and trickling JWKS
//! documents, upstreams that die mid-body, clients that stall mid-upload,
//! slowloris clients, more idle
//! connections than `max_connections`, file-descriptor exhaustion in the real
//! binary, and a flood of well-formed JWTs with bad signatures.
//!
//! Covered elsewhere and not repeated here: a JWKS endpoint that hangs, fails
//! or answers garbage (`tests/auth.rs`, `jwks_outage_*`), a flood of unknown
//! `kid`s (`tests/auth.rs`, `unknown_kid_flood_is_bounded_by_the_cooldown`),
//! a hanging or failing introspection endpoint (`tests/introspection.rs`),
//! and unreachable or hanging upstreams (`tests/proxy.rs`).
//!
//! Every wait is bounded; nothing asserts how long something took.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate::demo::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// A gateway config: one JWKS issuer, one upstream, `/orders/{id}` needing
/// `orders:read`, and public `/status` and `/files/{*rest}`. `server_extra`
/// and `issuer_extra` are YAML lines indented 2 and 4 spaces.
fn yaml(jwks_uri: &str, upstream: SocketAddr, server_extra: &str, issuer_extra: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
{server_extra}admin:
  listen: 127.0.0.1:0
issuers:
  - name: test
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {jwks_uri}
    algorithms: [ES256]
    leeway: 30s
{issuer_extra}upstreams:
  app:
    url: http://{upstream}
    connect_timeout: 1s
    request_timeout: 5s
    body_idle_timeout: 1s
routes:
  - path: /orders/{{id}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /status
    upstream: app
    auth: none
  - path: /files/{{*rest}}
    upstream: app
    auth: none
"#
    )
}

fn jwks_fetches(text: &str, result: &str) -> f64 {
    metric(
        text,
        "scopegate_jwks_fetches_total",
        &[("issuer", "test"), ("result", result)],
    )
}

/// Reads a request head (bounded in size and time); `None` if the peer never
/// sends a complete one.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(buf.get(..n)?);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Sends `bytes` on a new connection to `addr` and reads until the peer
/// closes it (at most 10 s): what it sent, and whether it closed.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(bytes).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut client, Duration::from_secs(10)).await;
    (String::from_utf8_lossy(&bytes).into_owned(), closed)
}

/// Reads until the peer closes, at most `bound`; also says whether it closed.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(bound, stream.read_to_end(&mut out))
        .await
        .is_ok();
    (out, closed)
}

/// Resident set size of this process, from /proc (None elsewhere).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// This process's soft open-files limit, from /proc (None elsewhere).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Opens up to `count` TCP connections to `addr` that never send a byte;
/// each connect is bounded, so a full accept queue costs time, not a hang.
async fn open_idle(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        tasks.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .ok()
                .and_then(Result::ok)
        });
    }
    let mut open = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        if let Some(stream) = done.unwrap() {
            open.push(stream);
        }
    }
    open
}

// ---------------------------------------------------------------------------
// 1. JWKS documents that are too big, never finish or break off
// ---------------------------------------------------------------------------

/// How [`RawJwks`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwksReply {
    /// 200 with the document and its Content-Length.
    Serve,
    /// The document padded past 1 MiB, with its Content-Length.
    HugeWithLength,
    /// The document padded past 1 MiB, chunked (no length up front).
    HugeChunked,
    /// The document with its Content-Length, one byte every 100 ms.
    Trickle,
    /// The document's Content-Length and half the document, then the
    /// connection closes (an IdP or a proxy in front of it that broke off).
    CutMidBody,
}

/// A JWKS endpoint written on raw sockets, so it can misbehave in the body.
struct RawJwks {
    addr: SocketAddr,
    reply: Arc<Mutex<JwksReply>>,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

/// Padding that makes a document larger than scopegate's 1 MiB JWKS limit.
const PADDING: usize = 2 * 1024 * 1024;

impl RawJwks {
    async fn start(document: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(JwksReply::Serve));
        let document = Arc::new(Mutex::new(document.to_owned()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (r, d, f) = (
            Arc::clone(&reply),
            Arc::clone(&document),
            Arc::clone(&fetches),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, d, f) = (Arc::clone(&r), Arc::clone(&d), Arc::clone(&f));
                tokio::spawn(async move {
                    if read_head(&mut stream).await.is_none() {
                        return;
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let mode = *r.lock().unwrap();
                    let document = d.lock().unwrap().clone();
                    // Write errors are expected: the gateway stops reading.
                    let _ = Self::answer(&mut stream, mode, &document).await;
                });
            }
        });
        Self {
            addr,
            reply,
            document,
            fetches,
        }
    }

    async fn answer(
        stream: &mut TcpStream,
        mode: JwksReply,
        document: &str,
    ) -> std::io::Result<()> {
        const JSON: &str = "Content-Type: application/json\r\nConnection: close";
        match mode {
            JwksReply::Serve => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\n{JSON}\r\nContent-Length: {}\r\n\r\n",
                    document.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(document.as_bytes()).await?;
            }
            JwksReply::HugeWithLength | JwksReply::HugeChunked => {
                // A usable document plus an unknown member; only its size is wrong.
                let padded = format!(
                    "{{\"padding\":\"{}\",{}",
                    "x".repeat(PADDING),
                    document.trim_start().strip_prefix('{').unwrap()
                );
                if mode == JwksReply::HugeWithLength {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\n{JSON}\r\nContent-Length: {}\r\n\r\n",
                        padded.len()
                    );
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(padded.as_bytes()).await?;
                } else {
                    let head =
                        format!("HTTP/1.1 200 OK\r\n{JSON}\r\nTransfer-Encoding: chunked\r\n\r\n");
                    stream.write_all(head.as_bytes()).await?;
                    for chunk in padded.as_bytes().chunks(64 * 1024) {
                        stream
                            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await?;
                        stream.write_all(chunk).await?;
                        stream.write_all(b"\r\n").await?;
                    }
                    stream.write_all(b"0\r\n\r\n").await?;
                }
            }
            JwksReply::Trickle => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\n{JSON}\r\nContent-Length: {}\r\n\r\n",
                    document.len()
                );
                stream.write_all(head.as_bytes()).await?;
                // Bounded: at most 100 bytes (10 s), far past jwks_timeout.
                for byte in document.as_bytes().iter().take(100) {
                    stream.write_all(&[*byte]).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            JwksReply::CutMidBody => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\n{JSON}\r\nContent-Length: {}\r\n\r\n",
                    document.len()
                );
                stream.write_all(head.as_bytes()).await?;
                let half = document.as_bytes().get(..document.len() / 2).unwrap();
                stream.write_all(half).await?;
            }
        }
        stream.flush().await
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn set(&self, reply: JwksReply, document: &str) {
        *self.reply.lock().unwrap() = reply;
        *self.document.lock().unwrap() = document.to_owned();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn oversized_trickling_or_cut_jwks_is_refused_and_loaded_keys_keep_working() {
    let key1 = SigningKey::generate("key-1").unwrap();
    let key2 = SigningKey::generate("key-2").unwrap();
    let jwks = RawJwks::start(key1.jwks()).await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(
        &jwks.uri(),
        upstream.addr,
        "",
        "    jwks_refetch_cooldown: 0s\n    jwks_timeout: 3s\n",
    ))
    .await;
    let url = gw.url("/orders/1");
    let reply = get_with_token(&url, &key1.mint(&claims("orders:read")).unwrap()).await;
    assert_eq!(reply.status, 200, "key-1 at start: {}", reply.text());

    // Each document names key-2 and would be accepted if it were not too big
    // or too slow; a key-2 token forces a refetch that must fail, and gets
    // 503 (key-2 may be published: the keys cannot be had).
    let both = merge_jwks(&[key1.jwks(), key2.jwks()]);
    for (mode, result) in [
        (JwksReply::HugeWithLength, "invalid"),
        (JwksReply::HugeChunked, "invalid"),
        (JwksReply::Trickle, "timeout"),
        // Not the document's fault: counted as the network's.
        (JwksReply::CutMidBody, "network_error"),
    ] {
        jwks.set(mode, &both);
        let fetches = jwks.fetches();
        let failed_before = jwks_fetches(&gw.metrics().await, result);
        let reply = get_with_token(&url, &key2.mint(&claims("orders:read")).unwrap()).await;
        assert_eq!(reply.status, 503, "{mode:?}: key-2: {}", reply.text());
        assert!(reply.header("retry-after").is_some(), "{mode:?}");
        assert_eq!(jwks.fetches(), fetches + 1, "{mode:?}: no refetch happened");
        let text = gw.metrics().await;
        assert_eq!(
            jwks_fetches(&text, result),
            failed_before + 1.0,
            "{mode:?}: fetch result metric: {text}"
        );
        // The keys loaded before still verify new tokens.
        let reply = get_with_token(&url, &key1.mint(&claims("orders:read")).unwrap()).await;
        assert_eq!(reply.status, 200, "{mode:?}: key-1 after: {}", reply.text());
    }
    assert_eq!(gw.readyz().await, 200, "a refused document made it unready");

    // The same document, served normally, is accepted: only size and speed
    // were wrong with it.
    jwks.set(JwksReply::Serve, &both);
    let reply = get_with_token(&url, &key2.mint(&claims("orders:read")).unwrap()).await;
    assert_eq!(
        reply.status,
        200,
        "key-2 once served normally: {}",
        reply.text()
    );
}

// ---------------------------------------------------------------------------
// 2. An upstream that dies in the middle of a response body
// ---------------------------------------------------------------------------

/// Body bytes the broken upstream sends before dying.
const SENT: usize = 16 * 1024;
/// What its Content-Length promises.
const PROMISED: usize = 1_000_000;

/// An upstream that, by path, sends a head and part of the body then closes
/// (`/files/length`: Content-Length; `/files/chunked`: chunked without the
/// last chunk; `/files/reset`: Content-Length, then a TCP reset;
/// `/files/stall`: Content-Length, then silence with the connection open), or
/// answers `ok` in full (anything else).
async fn dying_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let body = vec![b'x'; SENT];
                let _ = match path.as_str() {
                    "/files/length" | "/files/reset" | "/files/stall" => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {PROMISED}\r\n\r\n");
                        stream.write_all(head.as_bytes()).await.ok();
                        stream.write_all(&body).await.ok();
                        stream.flush().await.ok();
                        if path == "/files/reset" {
                            // Let the head get through, then reset instead of closing.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            stream.set_zero_linger().ok();
                        }
                        if path == "/files/stall" {
                            // Far past body_idle_timeout, well within the test.
                            tokio::time::sleep(Duration::from_secs(20)).await;
                        }
                        Some(())
                    }
                    "/files/chunked" => {
                        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                        stream.write_all(head.as_bytes()).await.ok();
                        let chunk = format!("{:x}\r\n", body.len());
                        stream.write_all(chunk.as_bytes()).await.ok();
                        stream.write_all(&body).await.ok();
                        stream.write_all(b"\r\n").await.ok();
                        stream.flush().await.ok()
                    }
                    _ => stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await
                        .ok(),
                };
                drop(stream);
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn upstream_dying_mid_body_truncates_the_response_and_the_gateway_keeps_serving() {
    let world = World::new().await;
    let (upstream, requests) = dying_upstream().await;
    // The reset comes 200 ms after the head: well within body_idle_timeout,
    // so a slow machine does not take it for a stall.
    let config = yaml(&world.jwks.uri(), upstream, "", "")
        .replace("body_idle_timeout: 1s", "body_idle_timeout: 3s");
    assert!(config.contains("body_idle_timeout: 3s"));
    let gw = Gateway::start(&config).await;

    let mut cut_off = 0;
    let mut stalled = 0;
    for round in 0..2 {
        for path in [
            "/files/length",
            "/files/chunked",
            "/files/reset",
            "/files/stall",
        ] {
            let label = format!("round {round}, {path}");
            let mut stream = TcpStream::connect(gw.addr).await.unwrap();
            // Keep-alive: only a gateway that gives up on the broken response
            // closes this connection.
            let request = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(15)).await;
            assert!(closed, "{label}: the gateway kept the broken response open");
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let reply = RawReply::parse(&text);
            match reply.status {
                200 => {
                    // The head went through; the body must visibly fall short.
                    let body_len = bytes.len() - (reply.head.len() + 4).min(bytes.len());
                    match reply.header("content-length") {
                        Some(length) => {
                            assert_eq!(length, PROMISED.to_string(), "{label}");
                            assert!(body_len < PROMISED, "{label}: complete body");
                        }
                        None => {
                            assert!(
                                reply.header("transfer-encoding").is_some(),
                                "{label}: {}",
                                reply.head
                            );
                            assert!(
                                !text.ends_with("0\r\n\r\n"),
                                "{label}: chunked body was terminated as if complete"
                            );
                        }
                    }
                    assert!(body_len <= SENT + 1024, "{label}: {body_len} body bytes");
                    if path == "/files/stall" {
                        stalled += 1;
                    } else {
                        cut_off += 1;
                    }
                }
                // The gateway saw the failure before answering: an error, not data.
                502 => assert_eq!(reply.error().as_deref(), Some("bad_gateway"), "{label}"),
                other => panic!("{label}: status {other}: {}", reply.head),
            }

            // Still serving, on the same upstream.
            let ok = get(&gw.url("/files/ok"), &[]).await.unwrap();
            assert_eq!(ok.status, 200, "{label}: {}", ok.text());
            assert_eq!(ok.text(), "ok", "{label}");
        }
    }
    // 2 rounds x (4 broken + 4 ok): no request was retried or lost.
    assert_eq!(requests.load(Ordering::SeqCst), 16);
    assert!(!gw.task.is_finished(), "the gateway stopped");
    let text = gw.metrics().await;
    assert!(
        metric(
            &text,
            "scopegate_requests_total",
            &[("route", "/files/{*rest}")]
        ) >= 16.0,
        "requests were not counted: {text}"
    );
    // Each body that broke after its head went out is counted by kind.
    let body_failures = |kind| {
        metric(
            &text,
            "scopegate_upstream_errors_total",
            &[("upstream", "app"), ("kind", kind)],
        )
    };
    assert_eq!(stalled, 2, "the stalled upstream's head never came through");
    assert_eq!(body_failures("body_timeout"), f64::from(stalled), "{text}");
    assert_eq!(body_failures("body"), f64::from(cut_off), "{text}");
}

/// Sends `bytes` down `tx` one byte at a time, `gap` apart, then ends the
/// body (drops `tx`).
async fn trickle(tx: tokio::sync::mpsc::Sender<Bytes>, bytes: &'static [u8], gap: Duration) {
    for byte in bytes {
        tokio::time::sleep(gap).await;
        if tx.send(Bytes::copy_from_slice(&[*byte])).await.is_err() {
            return;
        }
    }
}

/// `body_idle_timeout` bounds each wait for a body's next frame, not the
/// whole body: an answer and an upload that trickle in, each byte well
/// within the timeout but the whole taking twice as long, arrive whole.
/// Guards the idle timer's restart on every frame (a timer armed once and
/// never pushed back, or pushed into the past, cuts them off).
#[tokio::test]
async fn bodies_trickling_within_body_idle_timeout_are_not_cut_off() {
    const BYTES: &[u8] = b"trickling!";
    let gap = Duration::from_millis(400);
    let world = World::new().await;
    // Answers `/files/answer` with a body of a byte every `gap`; anything
    // else with the length of the body it received.
    let upstream = serve_fn(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/files/answer" {
                let (tx, body) = channel_body();
                tokio::spawn(trickle(tx, BYTES, gap));
                return hyper::Response::new(body.boxed());
            }
            let received = req.into_body().collect().await;
            let said =
                received.map_or_else(|e| format!("cut: {e}"), |b| b.to_bytes().len().to_string());
            hyper::Response::new(full_body(said))
        },
    )
    .await;
    // 4 s of trickling against 2 s: each byte's wait is a fifth of it.
    let config = yaml(&world.jwks.uri(), upstream, "", "")
        .replace("body_idle_timeout: 1s", "body_idle_timeout: 2s");
    assert!(config.contains("body_idle_timeout: 2s"));
    let gw = Gateway::start(&config).await;

    let answer = get(&gw.url("/files/answer"), &[]).await;
    let answer = answer.expect("the trickling answer was cut off");
    assert_eq!((answer.status, answer.text().as_str()), (200, "trickling!"));

    let (tx, body) = channel_body();
    tokio::spawn(trickle(tx, BYTES, gap));
    let client: Client<_, ChannelBody> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = hyper::Request::post(gw.url("/files/upload"))
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("no answer to the trickling upload")
        .unwrap();
    let status = response.status();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        (status.as_u16(), &text[..]),
        (200, BYTES.len().to_string().as_bytes()),
        "the trickling upload was cut off"
    );
}

/// `connect_timeout` bounds the whole connect, TLS handshake included: an
/// https upstream whose port takes the TCP connection but never answers the
/// handshake (a hung process, a balancer before a dead backend) gets 504
/// counted as `connect_timeout` within it, not after the request timeout.
#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_a_connect_timeout() {
    let world = World::new().await;
    let upstream = silent_upstream().await;
    let yaml = yaml(&world.jwks.uri(), upstream, "", "")
        .replace("url: http://", "url: https://")
        .replace("    request_timeout: 5s\n", "    request_timeout: 60s\n");
    let gw = Gateway::start(&yaml).await;
    let reply = get(&gw.url("/files/x"), &[]).await.unwrap();
    assert_eq!(reply.status, 504, "{}", reply.text());
    let text = gw.metrics().await;
    let errors = |kind| {
        metric(
            &text,
            "scopegate_upstream_errors_total",
            &[("upstream", "app"), ("kind", kind)],
        )
    };
    assert_eq!(errors("connect_timeout"), 1.0, "{text}");
    assert_eq!(errors("timeout"), 0.0, "{text}");
}

/// An upstream that answers `ok` as soon as it has a request head, without
/// reading the body, then reports whether the gateway closed the connection
/// (within `bound`) or kept it open.
async fn early_answering_upstream(
    bound: Duration,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let (_, closed) = read_until_closed(&mut stream, bound).await;
        let _ = tx.send(closed);
    });
    (addr, rx)
}

/// Sends a request head promising 10 body bytes and 2 of them, then nothing
/// (the connection stays open).
async fn stall_mid_upload(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /files/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    stream
}

/// A gateway in front of [`early_answering_upstream`], and a client that
/// sent part of an upload and got the upstream's early answer: the gateway,
/// the client's connection, and whether the upstream connection was closed.
async fn answered_mid_upload(
    world: &World,
    bound: Duration,
) -> (Gateway, TcpStream, tokio::sync::oneshot::Receiver<bool>) {
    let (upstream, closed) = early_answering_upstream(bound).await;
    let gw = Gateway::start(&yaml(&world.jwks.uri(), upstream, "", "")).await;
    let mut client = stall_mid_upload(gw.addr).await;
    let head = read_head(&mut client).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // RFC 9112 9.6: the client learns the connection ends with this answer.
    assert!(says_close(&head), "{head}");
    (gw, client, closed)
}

/// A request the gateway refuses before its body has all come ends its
/// connection (the rest of the body is not read as a next request), and
/// the refusal says so (RFC 9112 9.6), so that a client sends nothing more
/// on it. So does one that waits for `100 Continue` (it is not asked for its
/// body), and one whose body is over 64 KiB. A refused request whose body
/// of at most 64 KiB came, or one without a body, keeps its connection.
#[tokio::test]
async fn a_refusal_before_the_whole_body_says_the_connection_closes() {
    let world = World::new().await;
    let gw = Gateway::start(&yaml(&world.jwks.uri(), world.upstream.addr, "", "")).await;
    let refusals: [(&str, u16); 5] = [
        // CONNECT (no path): its client may send tunnel bytes at once.
        ("CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n", 501),
        // No route: 404.
        ("POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nab", 404),
        // No token: 401.
        (
            "GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            401,
        ),
        // Another method than the route's: 405.
        ("POST /orders/1 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nab", 405),
        // Waiting for `100 Continue`.
        (
            "POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            404,
        ),
    ];
    // A body over 64 KiB is not skipped, whether its length says so or
    // its chunks show it.
    let over = 64 * 1024 + 1;
    let large = [
        format!("POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {over}\r\n\r\nab"),
        format!(
            "POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n{over:x}\r\n{}\r\n0\r\n\r\n",
            "x".repeat(over)
        ),
    ];
    let refusals = refusals
        .map(|(request, status)| (request.to_owned(), status))
        .into_iter()
        .chain(large.map(|request| (request, 404)));
    for (request, status) in refusals {
        let (text, closed) = send_raw(gw.addr, request.as_bytes()).await;
        let reply = RawReply::parse(&text);
        // The head and the body's start: enough to tell them apart.
        let request = &request[..request.len().min(120)];
        assert_eq!(reply.status, status, "{request:?}: {}", reply.head);
        assert!(closed, "{request:?}: the connection stayed open");
        assert!(
            says_close(&reply.head),
            "{request:?}: the close was not announced: {}",
            reply.head
        );
    }

    // With no body, or a small one that came whole (up to 64 KiB), the
    // connection goes on: a refusal, then the next request (a request
    // inside the body is body, not a request).
    let hidden = "GET /status HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let padded = format!("{hidden}{}", "x".repeat(64 * 1024 - hidden.len()));
    let firsts = [
        "GET /nowhere HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned(),
        format!(
            "POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!(
            "GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
        format!(
            "POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{padded}",
            padded.len()
        ),
        format!(
            "GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{padded}\r\n0\r\n\r\n",
            padded.len()
        ),
    ];
    let seen = world.upstream.count();
    for first in firsts {
        let second = "GET /orders/1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
        let (text, closed) = send_raw(gw.addr, format!("{first}{second}").as_bytes()).await;
        assert!(closed);
        let reply = RawReply::parse(&text);
        let first = &first[..first.len().min(120)];
        assert!(matches!(reply.status, 401 | 404), "{first:?}: {text}");
        assert!(!says_close(&reply.head), "{first:?}: {text}");
        assert_eq!(
            text.matches("HTTP/1.").count(),
            2,
            "{first:?}: the second request went unanswered, or a third appeared: {text}"
        );
    }
    assert_eq!(
        world.upstream.count(),
        seen,
        "a hidden request was forwarded"
    );
}

/// A forward that fails once the client's body was all read (a malformed
/// upstream answer: 502) leaves nothing unread, so the connection takes the
/// next request; one that fails before (no upstream listening) ends it, and
/// says so.
#[tokio::test]
async fn a_failed_forward_ends_the_connection_only_with_a_body_left_unread() {
    let world = World::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The head and the 2-byte body, then an answer with both
                // framing headers, which the gateway refuses (502).
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.ends_with(b"\r\n\r\nab") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                    .await;
                let _ = read_until_closed(&mut stream, Duration::from_secs(5)).await;
            });
        }
    });
    let upload = "POST /files/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\nab";
    let next = "GET /nowhere HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let gw = Gateway::start(&yaml(&world.jwks.uri(), upstream, "", "")).await;
    let (text, closed) = send_raw(gw.addr, format!("{upload}{next}").as_bytes()).await;
    assert!(closed);
    let reply = RawReply::parse(&text);
    assert_eq!(reply.status, 502, "{text}");
    assert!(!says_close(&reply.head), "{text}");
    assert!(
        text.contains("HTTP/1.1 404"),
        "the next request went unanswered: {text}"
    );

    // Nobody listening: the body is never read.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = gone.local_addr().unwrap();
    drop(gone);
    let gw = Gateway::start(&yaml(&world.jwks.uri(), nobody, "", "")).await;
    let (text, closed) = send_raw(
        gw.addr,
        b"POST /files/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nab",
    )
    .await;
    let reply = RawReply::parse(&text);
    assert_eq!(reply.status, 502, "{text}");
    assert!(closed && says_close(&reply.head), "{text}");
}

#[tokio::test]
async fn a_client_stalling_mid_upload_gets_408_and_holds_no_upstream_connection() {
    // 1. The upstream waits for the whole body: the gateway answers 408
    // after body_idle_timeout (1 s) instead of waiting for the upstream's
    // request_timeout (5 s, a 504), and closes the connection.
    let world = World::new().await;
    let gw = Gateway::start(&yaml(&world.jwks.uri(), world.upstream.addr, "", "")).await;
    assert_a_stalled_upload_is_the_clients(&gw).await;
    assert!(
        world.upstream.seen().iter().all(|s| s.body_len != 10),
        "the upstream got a complete body"
    );

    // 2. The upstream answers before reading the body: the client gets the
    // answer, and the stalled body no longer holds the upstream connection.
    let (_gw, client, closed) = answered_mid_upload(&world, Duration::from_secs(15)).await;
    assert!(
        closed.await.unwrap(),
        "the upstream connection was held open by a stalled client body"
    );
    drop(client);
}

/// An upstream that answers before the request body has all come (an early
/// 401 or 413, say) gets its connection closed, not pooled, even when the
/// client then sends the rest at once: the rest goes out after the answer,
/// and an upstream that did not read it would take it for the next request,
/// one no route or token check saw.
#[tokio::test]
async fn an_answer_before_the_whole_body_closes_the_upstream_connection() {
    let world = World::new().await;
    let (_gw, mut client, closed) = answered_mid_upload(&world, Duration::from_secs(5)).await;
    client.write_all(b"cdefghij").await.unwrap();
    assert!(
        closed.await.unwrap(),
        "the connection was pooled with the body's rest behind the answer"
    );
}

/// A raw HTTP/1.1 upstream that answers a POST at once, before reading its
/// body, and never reads that body (as a framework's early 401/413 or a
/// handler that ignores the body does): it writes the answer's head and its
/// first bytes, waits until the whole request body has arrived in its
/// socket (peeked, not read), then ends the answer. Every other request is
/// answered with its own path; one for `/admin` (a slow handler) only once
/// the next request on its connection has come, before that one's answer.
/// Records every request line it parses, with the number of the connection
/// it came on.
async fn early_answer_upstream() -> (SocketAddr, Arc<Mutex<Vec<(usize, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            connections += 1;
            let connection = connections;
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut held: Option<String> = None;
                while let Some(head) = next_head(&mut stream, &mut buf).await {
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push((connection, line.clone()));
                    if let Some(answer) = held.take() {
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if line.starts_with("POST ") {
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nea";
                        if stream.write_all(head).await.is_err() {
                            return;
                        }
                        // The body arrives behind the answer: peeked, never read.
                        let mut peek = vec![0u8; 64 * 1024];
                        loop {
                            match stream.peek(&mut peek).await {
                                Ok(n) if buf.len() + n >= length => break,
                                Ok(0) | Err(_) => return,
                                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                        if stream.write_all(b"rly!").await.is_err() {
                            return;
                        }
                    } else {
                        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                            path.len()
                        );
                        if path.starts_with("/admin") {
                            held = Some(answer);
                        } else if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, lines)
}

/// An upstream that answers before the request body has all gone out, and
/// ends its answer only after the rest has, gets its connection closed, not
/// pooled: the gateway tells at the answer's head, not at its end. Pooled,
/// the unread body (which the client wrote) would be the upstream's next
/// request on it, one no route or token check saw, and its answer would go
/// to the next client the pool lent the connection to. (The upstream still
/// reads those bytes as a request: they went out before it ended its
/// answer; closing the connection keeps its answer from anyone.)
#[tokio::test]
async fn an_answer_begun_before_the_whole_body_keeps_its_connection_out_of_the_pool() {
    let world = World::new().await;
    let (upstream, lines) = early_answer_upstream().await;
    let config = world
        .config()
        .replace(&world.upstream.addr.to_string(), &upstream.to_string());
    let gw = Gateway::start(&config).await;
    let write = world.token("orders:write");

    // The client's body is a request of its own, for a path no token of the
    // client's would be let through to (`/admin` needs `admin`).
    let smuggled = "GET /admin/users HTTP/1.1\r\nHost: app\r\n\r\n";
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /orders/1/items HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {write}\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // The answer began before any of the body was sent.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"ea") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Now the body; the answer ends once it is all with the upstream.
    client.write_all(smuggled.as_bytes()).await.unwrap();
    while !got.ends_with(b"early!") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }

    // Another client, another request: on a connection of its own, answered
    // with its own answer.
    let reply = get_with_token(&gw.url("/orders/2"), &world.token("orders:read")).await;
    let lines = lines.lock().unwrap().clone();
    let on = |path: &str| {
        lines
            .iter()
            .find(|(_, l)| l.contains(path))
            .map(|(c, _)| *c)
    };
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "/orders/2"),
        "the next client got the answer to the unread body: the upstream parsed {lines:?}"
    );
    assert!(
        on("/orders/2").is_some() && on("/orders/2") != on("/orders/1/items"),
        "the next request went on the early answer's connection: {lines:?}"
    );
}

/// Over HTTP/2 to the upstream the same stall is the client's too: hyper's
/// HTTP/2 client reports only a reset stream, yet the answer is 408 and no
/// upstream error is counted.
#[tokio::test]
async fn a_client_stalling_mid_upload_to_an_http2_upstream_gets_408() {
    let world = World::new().await;
    let config = yaml(&world.jwks.uri(), world.upstream.addr, "", "").replace(
        "    body_idle_timeout: 1s\n",
        "    body_idle_timeout: 1s\n    http2_only: true\n",
    );
    let gw = Gateway::start(&config).await;
    assert_a_stalled_upload_is_the_clients(&gw).await;
}

/// With `request_timeout` shorter than `body_idle_timeout` (as with the
/// defaults, 30 s and 60 s), a client that stops sending its body is still
/// the one stalling: 408 when `body_idle_timeout` runs out, not a 504 that
/// blames the upstream when `request_timeout` does.
#[tokio::test]
async fn a_client_stall_outlasting_request_timeout_is_still_the_clients() {
    let world = World::new().await;
    let config = yaml(&world.jwks.uri(), world.upstream.addr, "", "")
        .replace("    request_timeout: 5s\n", "    request_timeout: 1s\n")
        .replace("    body_idle_timeout: 1s\n", "    body_idle_timeout: 3s\n");
    assert!(config.contains("request_timeout: 1s") && config.contains("body_idle_timeout: 3s"));
    let gw = Gateway::start(&config).await;
    assert_a_stalled_upload_is_the_clients(&gw).await;
}

/// Stalls an upload to `/files/upload` on `gw` and checks the answer: 408
/// and the connection closed, counted as the route's 408 and not as the
/// upstream's failure, and the gateway still serving.
async fn assert_a_stalled_upload_is_the_clients(gw: &Gateway) {
    let mut client = stall_mid_upload(gw.addr).await;
    let (bytes, closed) = read_until_closed(&mut client, Duration::from_secs(15)).await;
    assert!(closed, "the gateway kept the stalled upload open");
    let reply = RawReply::parse(&String::from_utf8_lossy(&bytes));
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert_eq!(reply.error().as_deref(), Some("request_timeout"));
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "scopegate_requests_total",
            &[("route", "/files/{*rest}"), ("status", "408")]
        ),
        1.0,
        "{text}"
    );
    // Not the upstream's failure.
    assert_eq!(
        metric(
            &text,
            "scopegate_upstream_errors_total",
            &[("upstream", "app")]
        ),
        0.0,
        "{text}"
    );
    let ok = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// An HTTP/2 upstream whose address takes connections but never answers
/// (a TLS handshake that hangs): a burst of requests makes one attempt, and
/// the requests that waited for it fail with it (504, as it timed out)
/// instead of each trying again in turn, up to `connect_timeout` apiece.
#[tokio::test]
async fn a_burst_to_an_unanswering_http2_upstream_tries_one_connection() {
    let world = World::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let black_hole = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let (accepted, held) = (Arc::clone(&accepted), Arc::clone(&held));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.lock().unwrap().push(stream);
            }
        });
    }
    let config = yaml(&world.jwks.uri(), black_hole, "", "")
        .replace(
            &format!("url: http://{black_hole}"),
            &format!("url: https://{black_hole}"),
        )
        .replace(
            "    body_idle_timeout: 1s\n",
            "    body_idle_timeout: 1s\n    http2_only: true\n",
        );
    let gw = Gateway::start(&config).await;
    let burst: Vec<_> = (0..5)
        .map(|_| {
            let url = gw.url("/status");
            tokio::spawn(async move { get(&url, &[]).await.unwrap().status })
        })
        .collect();
    // Each fails as the attempt did: a connect timeout.
    for request in burst {
        assert_eq!(request.await.unwrap(), 504);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "each waiting request opened a connection of its own"
    );
    let text = gw.metrics().await;
    let errors = |kind| metric(&text, "scopegate_upstream_errors_total", &[("kind", kind)]);
    assert_eq!(errors("connect_timeout"), 5.0, "{text}");
    assert_eq!(errors("connect"), 0.0, "{text}");
}

// ---------------------------------------------------------------------------
// 3. Slowloris
// ---------------------------------------------------------------------------

/// How a dribbling client ended.
#[derive(Debug)]
enum Dribble {
    /// The gateway closed the connection after `sent` bytes; `reply` is what
    /// it sent back first (if anything).
    Closed { sent: usize, reply: Vec<u8> },
    /// The whole head got through.
    Completed { reply: Vec<u8> },
}

/// Sends `head` one byte per `gap`, watching for the gateway to answer or
/// close. Bounded by the head's length.
async fn dribble(addr: SocketAddr, head: &[u8], gap: Duration) -> Dribble {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    for (i, byte) in head.iter().enumerate() {
        if stream.write_all(&[*byte]).await.is_err() {
            return Dribble::Closed { sent: i, reply };
        }
        let pause = tokio::time::sleep(gap);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return Dribble::Closed { sent: i + 1, reply },
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                },
            }
        }
    }
    let (rest, _) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    reply.extend_from_slice(&rest);
    Dribble::Completed { reply }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_other_clients_are_served() {
    let world = World::new().await;
    let gw = Gateway::start(&yaml(
        &world.jwks.uri(),
        world.upstream.addr,
        "  header_read_timeout: 1s\n",
        "",
    ))
    .await;
    // ~30 s each at 500 ms a byte if nobody cuts them off.
    let http1 =
        b"GET /status HTTP/1.1\r\nHost: gw.test\r\nX-Slow: 0123456789abcdef\r\n\r\n".to_vec();
    // The HTTP/2 preface and an empty SETTINGS frame (~16 s).
    let mut http2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    http2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);

    let mut slow = tokio::task::JoinSet::new();
    for i in 0..8 {
        let head = if i % 2 == 0 {
            http1.clone()
        } else {
            http2.clone()
        };
        let addr = gw.addr;
        slow.spawn(async move {
            let outcome = dribble(addr, &head, Duration::from_millis(500)).await;
            (i, head.len(), outcome)
        });
    }

    // Meanwhile a normal client is served.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reply = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "normal client during slowloris: {}",
        reply.text()
    );

    while let Some(done) = slow.join_next().await {
        let (i, len, outcome) = done.unwrap();
        let kind = if i % 2 == 0 {
            "HTTP/1.1"
        } else {
            "HTTP/2 preface"
        };
        match outcome {
            Dribble::Closed { sent, reply } => {
                assert!(sent < len, "{kind} #{i}: closed only after the whole head");
                let reply = String::from_utf8_lossy(&reply);
                if i % 2 == 0 {
                    assert!(
                        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
                        "{kind} #{i}: {reply:?}"
                    );
                }
            }
            Dribble::Completed { reply } => panic!(
                "{kind} #{i}: the whole head was accepted one byte per 500 ms: {:?}",
                String::from_utf8_lossy(&reply)
            ),
        }
    }
    assert_eq!(
        world.upstream.count(),
        1,
        "only the normal request was forwarded"
    );
    let reply = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(reply.status, 200, "normal client after slowloris");
}

// ---------------------------------------------------------------------------
// 4. More idle connections than max_connections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_max_connections_neither_crash_nor_starve_the_gateway() {
    // Client and (in-process) gateway ends share this process's descriptors.
    let limit = open_files_limit().unwrap_or(1024);
    let idle = 2_000usize.min(usize::try_from(limit.saturating_sub(400) / 2).unwrap_or(0));
    let max_connections = 500usize.min(idle / 4);
    assert!(
        max_connections >= 50,
        "open-files limit {limit} is too low for this test"
    );

    let world = World::new().await;
    let gw = Gateway::start(&yaml(
        &world.jwks.uri(),
        world.upstream.addr,
        &format!("  header_read_timeout: 1s\n  max_connections: {max_connections}\n"),
        "",
    ))
    .await;
    let open_gauge = |text: &str| metric(text, "scopegate_open_connections", &[]);

    let sockets = open_idle(gw.addr, idle).await;
    eprintln!("{} of {idle} idle connections opened", sockets.len());
    assert!(
        sockets.len() > max_connections,
        "only {} of {idle} connections opened",
        sockets.len()
    );
    let text = gw.metrics().await;
    assert!(
        open_gauge(&text) <= max_connections as f64,
        "{} connections open, max {max_connections}",
        open_gauge(&text)
    );

    // With every slot taken by connections that never send a byte, a real
    // client must still get through: idle connections are closed after
    // header_read_timeout (the client's own bound is 30 s).
    let reply = get(&gw.url("/status"), &[]).await;
    let reply = reply.unwrap_or_else(|e| {
        panic!(
            "a normal client was starved by {} idle connections: {e}",
            sockets.len()
        )
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = gw.metrics().await;
    assert!(open_gauge(&text) <= max_connections as f64, "{text}");

    // The gateway closed the idle connections it accepted (bounded check on a
    // sample: each read is EOF, or a reset, once the gateway gave up on it).
    let mut closed = 0;
    for mut socket in sockets.into_iter().take(50) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            _ => break,
        }
    }
    assert_eq!(closed, 50, "idle connections were left open");

    // Everything dropped: the gateway serves normally and is still running.
    let reply = get(&gw.url("/status"), &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(!gw.task.is_finished(), "the gateway stopped");
}

// ---------------------------------------------------------------------------
// 5. File-descriptor exhaustion in the real binary
// ---------------------------------------------------------------------------

struct Child(std::process::Child);

impl Child {
    /// Starts `command` (the binary, or a shell that execs it) with JSON
    /// logs at `rust_log` written to `log_path`.
    fn logging_to(mut command: std::process::Command, rust_log: &str, log_path: &Path) -> Self {
        let log = std::fs::File::create(log_path).unwrap();
        Self(
            command
                .env("RUST_LOG", rust_log)
                .env("SCOPEGATE_LOG_FORMAT", "json")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Retries `GET url` until it answers 200 or `bound` has passed.
async fn served_within(url: &str, bound: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        if let Ok(Ok(reply)) = tokio::time::timeout(left, get(url, &[])).await {
            if reply.status == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A log nobody reads (a pipe left full, as by a stuck log shipper) does
/// not stop the gateway: its lines are written from a thread of their own,
/// so a request never waits for the pipe. Writing them from the threads
/// serving requests, the first few hundred access lines filled the pipe and
/// every thread after them blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_nobody_reads_does_not_stop_the_gateway() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml(&world.jwks.uri(), world.upstream.addr, "", "");
    let config_path = dir.path().join("scopegate.yaml");
    std::fs::write(&config_path, config).unwrap();
    // stderr is a pipe this test reads only up to the line that names the
    // listeners (both on port 0, so no port chosen beforehand can be taken
    // by another test first), and never again.
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("SCOPEGATE_LOG_FORMAT", "json")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (addresses, _unread) = serving_addresses_on(child.0.stderr.take().unwrap()).await;
    let (proxy, admin) = addresses.expect("the binary did not report its addresses");
    let ready = format!("http://{admin}/readyz");
    assert!(
        served_within(&ready, Duration::from_secs(30)).await,
        "the binary never became ready"
    );
    // An access line each: far more than a pipe's 64 KiB holds, and then
    // more than the 8 192 lines that may wait, so lines are dropped, and
    // counted. Over kept-alive connections, so no port runs out.
    let status: http::Uri = format!("http://{proxy}/status").parse().unwrap();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let metrics = format!("http://{admin}/metrics");
    let dropped = |text: &str| metric(text, "scopegate_log_lines_dropped_total", &[]);
    let mut counted = 0.0;
    for i in 0..40_000 {
        let request = http::Request::get(status.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .unwrap_or_else(|_| panic!("request {i} waited for the log"))
            .unwrap();
        assert_eq!(reply.status(), 200);
        let _ = reply.into_body().collect().await;
        if i % 1_000 == 999 {
            counted = dropped(&get(&metrics, &[]).await.unwrap().text());
            if counted > 0.0 {
                break;
            }
        }
    }
    assert!(counted > 0.0, "no dropped log line was counted");
    assert!(served_within(&ready, Duration::from_secs(10)).await);
}

/// Frames a peer sends only to make another crate log write one line per
/// message site per 10 s, not one each: h2 warns of every PING
/// acknowledgement it never asked for, and a connection sending 17-byte
/// ones at wire speed, before any request, filled the log (whose queue
/// then drops lines, access lines among them). The lines held back are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unasked_ping_acknowledgements_do_not_flood_the_log() {
    use h2::frame::{Frame, Ping, StreamId};
    const ACKS: u64 = 2_000;
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml(&world.jwks.uri(), world.upstream.addr, "", "");
    let config_path = dir.path().join("scopegate.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"));
    command.args(["run", "--config"]).arg(&config_path);
    let mut child = Child::logging_to(command, "info", &log_path);
    let (addr, admin) = serving_addresses(&mut child.0, &log_path)
        .await
        .expect("the binary did not report its addresses");
    assert!(
        served_within(&format!("http://{admin}/readyz"), Duration::from_secs(30)).await,
        "the binary never became ready"
    );
    let mut codec = h2_by_hand(addr).await;
    for n in 0..ACKS {
        assert!(send_frame(&mut codec, Ping::pong(n.to_be_bytes()).into()).await);
    }
    // A request after them on the same connection: h2 reads its frames in
    // order, so its access line comes after whatever they logged.
    assert!(send_frame(&mut codec, get_on_stream_one("/status")).await);
    let answered = async {
        while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut codec).await {
            if let Frame::Headers(h) = frame {
                if h.stream_id() == StreamId::from(1) {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .unwrap_or(false),
        "the request after the acknowledgements was not answered"
    );
    let mut log = String::new();
    for _ in 0..200 {
        log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("scopegate::access") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.contains("scopegate::access"), "no access line: {log}");
    let warned = log.lines().filter(|l| l.contains("PING ack")).count();
    assert!(
        warned <= 1,
        "{warned} log lines for {ACKS} unasked PING acknowledgements"
    );
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await.unwrap();
    let held_back = metric(&metrics.text(), "scopegate_log_lines_held_back_total", &[]);
    assert!(
        held_back >= (ACKS - 1) as f64,
        "{held_back} lines held back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_in_the_binary_is_survived() {
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml(
        &world.jwks.uri(),
        world.upstream.addr,
        "  header_read_timeout: 1s\n",
        "",
    );
    let config_path = dir.path().join("scopegate.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("stderr.log");
    // Only the child's limit is lowered, by its shell, before exec.
    let mut command = std::process::Command::new("sh");
    command
        .args([
            "-c",
            "ulimit -n 128 && exec \"$0\" run --config \"$1\"",
            env!("CARGO_BIN_EXE_scopegate"),
        ])
        .arg(&config_path);
    let mut child = Child::logging_to(command, "warn,scopegate::server=info", &log_path);
    let (addr, admin) = serving_addresses(&mut child.0, &log_path)
        .await
        .expect("the binary did not report its addresses");
    let admin = format!("http://{admin}/readyz");
    assert!(
        served_within(&admin, Duration::from_secs(10)).await,
        "the binary never became ready"
    );

    // Far more connections than descriptors: accept must fail with EMFILE.
    let sockets = open_idle(addr, 400).await;
    eprintln!("{} of 400 idle connections opened", sockets.len());
    assert!(
        sockets.len() > 128,
        "only {} connections opened",
        sockets.len()
    );
    // While the client ends stay open, and after they are gone, a normal
    // client gets through: the gateway closes connections that send nothing
    // within header_read_timeout, which frees its descriptors.
    let status = format!("http://{addr}/status");
    assert!(
        served_within(&status, Duration::from_secs(40)).await,
        "a normal client was never served while {} idle connections were held",
        sockets.len()
    );
    drop(sockets);
    assert!(
        served_within(&status, Duration::from_secs(20)).await,
        "not serving after the idle connections closed"
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the binary exited under descriptor exhaustion"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("accept failed"),
        "the descriptor limit was never reached (the test proved nothing): {log}"
    );
}

// ---------------------------------------------------------------------------
// 6. A flood of well-formed JWTs with bad signatures
// ---------------------------------------------------------------------------

const FLOOD: usize = 20_000;
const FLOOD_WORKERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_flood_is_refused_without_growing_the_cache() {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};

    let world = World::new().await;
    // A bad signature may be of a key replaced under the same `kid`: one
    // refetch per cooldown (30 s by default, which a flood on a loaded
    // machine can outlast). An hour here: none during the flood.
    let cooldown = "    jwks_refetch_cooldown: 1h\n";
    let gw = Gateway::start(&yaml(&world.jwks.uri(), world.upstream.addr, "", cooldown)).await;
    let url = gw.url("/orders/1");

    // Warm up (and cache one valid token), then take the baseline.
    let valid = world.token("orders:read");
    assert_eq!(get_with_token(&url, &valid).await.status, 200);
    let before = gw.metrics().await;
    let cache = |text: &str, result: &str| {
        metric(
            text,
            "scopegate_token_cache_requests_total",
            &[("kind", "jwt"), ("result", result)],
        )
    };
    let (hits0, misses0) = (cache(&before, "hit"), cache(&before, "miss"));
    let fetches0 = world.jwks.fetches();
    let forwarded0 = world.upstream.count();
    let rss0 = rss_kib();

    // Same header and claims as a real token, known kid, random signature.
    let header = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": world.key.kid()}).to_string(),
    );
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..FLOOD_WORKERS {
        let (client, next, url, header) = (
            client.clone(),
            Arc::clone(&next),
            url.clone(),
            header.clone(),
        );
        workers.spawn(async move {
            let random = SystemRandom::new();
            let mut statuses: Vec<(u16, String)> = Vec::new();
            let mut refused = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= FLOOD {
                    break;
                }
                let mut claims = claims("orders:read");
                claims["jti"] = serde_json::json!(format!("flood-{i}"));
                let mut signature = [0u8; 64];
                random.fill(&mut signature).unwrap();
                let token = format!(
                    "{header}.{}.{}",
                    URL_SAFE_NO_PAD.encode(claims.to_string()),
                    URL_SAFE_NO_PAD.encode(signature)
                );
                let request = http::Request::get(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response =
                    tokio::time::timeout(Duration::from_secs(30), client.request(request))
                        .await
                        .expect("a flood request timed out")
                        .expect("a flood request failed");
                let status = response.status().as_u16();
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = response.into_body().collect().await;
                if status == 401 && challenge.contains("invalid_token") {
                    refused += 1;
                } else if statuses.len() < 5 {
                    statuses.push((status, challenge));
                }
            }
            (refused, statuses)
        });
    }
    let mut refused = 0;
    let mut unexpected = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (n, odd) = done.unwrap();
        refused += n;
        unexpected.extend(odd);
    }
    assert_eq!(
        refused, FLOOD,
        "not all refused as invalid_token: {unexpected:?}"
    );

    let after = gw.metrics().await;
    // Each was looked up, missed and verified (a flood shows as misses).
    assert_eq!(cache(&after, "miss"), misses0 + FLOOD as f64, "{after}");
    assert_eq!(cache(&after, "hit"), hits0, "a bad token hit the cache");
    // None was cached: one forged token sent twice is verified twice.
    let forged = format!(
        "{header}.{}.{}",
        URL_SAFE_NO_PAD.encode(claims("orders:read").to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    );
    for _ in 0..2 {
        assert_eq!(get_with_token(&url, &forged).await.status, 401);
    }
    let after = gw.metrics().await;
    assert_eq!(
        cache(&after, "miss"),
        misses0 + FLOOD as f64 + 2.0,
        "a bad token was cached"
    );
    assert_eq!(cache(&after, "hit"), hits0, "a bad token hit the cache");
    assert_eq!(
        metric(
            &after,
            "scopegate_auth_decisions_total",
            &[("issuer", "test"), ("reason", "bad_signature")]
        ),
        // The flood and the forged token sent twice.
        FLOOD as f64 + 2.0,
        "{after}"
    );
    assert_eq!(
        world.jwks.fetches(),
        fetches0,
        "bad signatures with a known kid caused JWKS fetches within the cooldown"
    );
    assert_eq!(
        world.upstream.count(),
        forwarded0,
        "a flood request was forwarded"
    );
    if let (Some(rss0), Some(rss1)) = (rss0, rss_kib()) {
        let grown = rss1.saturating_sub(rss0);
        eprintln!("RSS {rss0} KiB -> {rss1} KiB (+{grown} KiB) over {FLOOD} bad tokens");
        assert!(grown < 256 * 1024, "RSS grew by {grown} KiB");
    }

    // The cached valid token still works, from the cache.
    assert_eq!(get_with_token(&url, &valid).await.status, 200);
    let text = gw.metrics().await;
    assert_eq!(cache(&text, "hit"), hits0 + 1.0, "{text}");
}

// ---------------------------------------------------------------------------
// Idle connections after their last request
// ---------------------------------------------------------------------------

/// An HTTP/2 client that goes quiet after its requests is disconnected after
/// `server.idle_timeout`, but never while a response is still streaming,
/// however long that takes.
#[tokio::test]
async fn idle_http2_connections_are_closed_but_busy_ones_are_not() {
    let world = World::new().await;
    let upstream = serve_fn(
        |request: hyper::Request<hyper::body::Incoming>| async move {
            if request.uri().path() == "/files/slow" {
                // Quiet for longer than the gateway's idle_timeout, mid-response.
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"first,")).await;
                    tokio::time::sleep(Duration::from_millis(4000)).await;
                    let _ = tx.send(Bytes::from_static(b"last")).await;
                });
                hyper::Response::new(body.boxed())
            } else {
                hyper::Response::new(full_body("ok"))
            }
        },
    )
    .await;
    // The upstream's own pause must stay within body_idle_timeout. The idle
    // timeout leaves a slow machine time to send each request.
    let config = yaml(&world.jwks.uri(), upstream, "  idle_timeout: 3s\n", "")
        .replace("body_idle_timeout: 1s", "body_idle_timeout: 30s");
    assert!(config.contains("body_idle_timeout: 30s"));
    let gw = Gateway::start(&config).await;

    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let closed = Arc::new(tokio::sync::Notify::new());
    let closed_tx = Arc::clone(&closed);
    let driver = tokio::spawn(async move {
        let _ = connection.await;
        closed_tx.notify_one();
    });

    let request = |path: &str| {
        hyper::Request::get(format!("http://gw.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // A response that pauses 4 s (past idle_timeout) arrives whole.
    let response = sender.send_request(request("/files/slow")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first,last");
    // The connection is still usable right after.
    let response = sender.send_request(request("/files/ok")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    // Then it sits idle, and the gateway hangs up.
    tokio::time::timeout(Duration::from_secs(15), closed.notified())
        .await
        .expect("the gateway kept an idle HTTP/2 connection open");
    driver.await.unwrap();
    assert!(sender.send_request(request("/files/ok")).await.is_err());

    // New connections are served as before.
    let ok = get(&gw.url("/files/ok"), &[]).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// A client by hand: a connection to `addr` that has sent the HTTP/2
/// preface and an empty SETTINGS frame.
async fn h2_by_hand(addr: SocketAddr) -> H2Codec {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut codec: H2Codec = h2::Codec::new(tcp);
    assert!(send_frame(&mut codec, h2::frame::Settings::default().into()).await);
    codec
}

/// A GET of `path` on stream 1, ending the stream.
fn get_on_stream_one(path: &str) -> h2::frame::Frame<Bytes> {
    use h2::frame::{Headers, Pseudo, StreamId};
    let uri = http::Uri::try_from(format!("http://gw.test{path}")).unwrap();
    let pseudo = Pseudo::request(http::Method::GET, uri, None);
    let mut get = Headers::new(StreamId::from(1), pseudo, http::HeaderMap::new());
    get.set_end_stream();
    get.into()
}

/// Reads every frame until the gateway closes the connection, answering
/// SETTINGS and PINGs as a client must; `seen` gets every other frame and
/// may answer it. False if the connection was still open after `bound`.
async fn read_h2_until_closed(
    codec: &mut H2Codec,
    bound: Duration,
    mut seen: impl FnMut(h2::frame::Frame<Bytes>) -> Option<h2::frame::Frame<Bytes>>,
) -> bool {
    use h2::frame::{Frame, Ping, Settings};
    let read = async {
        while let Some(Ok(frame)) = futures_util::StreamExt::next(codec).await {
            let reply = match frame {
                Frame::Settings(s) if !s.is_ack() => Some(Settings::ack().into()),
                Frame::Ping(p) if !p.is_ack() => Some(Ping::pong(p.into_payload()).into()),
                frame => seen(frame),
            };
            if let Some(reply) = reply {
                if !send_frame(codec, reply).await {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(bound, read).await.is_ok()
}

/// An idle HTTP/2 connection is closed with a GOAWAY (RFC 9113 6.8), as
/// when the gateway drains: the client learns which of its requests were
/// taken, and may send one that crossed the close again. It was dropped,
/// which a client cannot tell from a connection that broke.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_a_goaway() {
    use h2::frame::{Frame, StreamId};
    let world = World::new().await;
    let upstream = serve_fn(
        |_request: hyper::Request<hyper::body::Incoming>| async move {
            hyper::Response::new(full_body("ok"))
        },
    )
    .await;
    let config = yaml(&world.jwks.uri(), upstream, "  idle_timeout: 1s\n", "");
    assert!(config.contains("idle_timeout: 1s"));
    let gw = Gateway::start(&config).await;
    // A client by hand: one GET, then nothing; every frame the gateway
    // sends is read until it closes.
    let mut codec = h2_by_hand(gw.addr).await;
    assert!(send_frame(&mut codec, get_on_stream_one("/files/ok")).await);
    let (mut answered, mut goaway) = (false, None);
    let closed = read_h2_until_closed(&mut codec, Duration::from_secs(15), |frame| {
        match frame {
            Frame::Headers(h) => answered = h.stream_id() == StreamId::from(1),
            Frame::GoAway(g) => goaway = Some((g.last_stream_id(), g.reason())),
            _ => {}
        }
        None
    })
    .await;
    assert!(closed, "the gateway kept an idle HTTP/2 connection open");
    assert!(answered, "the request was not answered");
    assert_eq!(
        goaway,
        Some((StreamId::from(1), h2::Reason::NO_ERROR)),
        "closed without a GOAWAY naming the request it took"
    );
}

/// An HTTP/2 connection whose first request does not come within
/// `header_read_timeout` is closed with a GOAWAY naming no stream (RFC 9113
/// 6.8), so that a client whose first request crossed the deadline knows
/// it was not taken and may send it again. It was dropped, which reads as a
/// broken connection.
#[tokio::test]
async fn an_http2_connection_without_a_first_request_is_closed_with_a_goaway() {
    use h2::frame::{Frame, StreamId};
    let world = World::new().await;
    let config = yaml(
        &world.jwks.uri(),
        world.upstream.addr,
        "  header_read_timeout: 1s\n",
        "",
    );
    let gw = Gateway::start(&config).await;
    let mut codec = h2_by_hand(gw.addr).await;
    let mut goaway = None;
    let closed = read_h2_until_closed(&mut codec, Duration::from_secs(15), |frame| {
        if let Frame::GoAway(g) = frame {
            goaway = Some((g.last_stream_id(), g.reason()));
        }
        None
    })
    .await;
    assert!(
        closed,
        "the gateway kept a connection without a request open"
    );
    assert_eq!(
        goaway,
        Some((StreamId::from(0), h2::Reason::NO_ERROR)),
        "closed without a GOAWAY saying no request was taken"
    );
}

/// A first request that comes just after `header_read_timeout`, before the
/// client has answered the GOAWAY's PING, is taken (the last GOAWAY names
/// it), so it is answered, though its upstream takes longer than the
/// second the close waits otherwise: cut off then, the client would have
/// been told it was processed and got no answer.
#[tokio::test]
async fn a_first_request_taken_as_the_connection_closes_is_answered() {
    use h2::frame::{Frame, StreamId};
    let world = World::new().await;
    let upstream = serve_fn(
        |_request: hyper::Request<hyper::body::Incoming>| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            hyper::Response::new(full_body("ok"))
        },
    )
    .await;
    let config = yaml(
        &world.jwks.uri(),
        upstream,
        "  header_read_timeout: 1s\n",
        "",
    );
    let gw = Gateway::start(&config).await;
    let mut codec = h2_by_hand(gw.addr).await;
    // The request, once the GOAWAY (and its PING) came: past the deadline.
    let (mut sent, mut answered, mut last_goaway) = (false, false, None);
    let closed = read_h2_until_closed(&mut codec, Duration::from_secs(30), |frame| {
        match frame {
            Frame::GoAway(g) => {
                last_goaway = Some(g.last_stream_id());
                if !sent {
                    sent = true;
                    return Some(get_on_stream_one("/status"));
                }
            }
            Frame::Headers(h) => answered |= h.stream_id() == StreamId::from(1),
            _ => {}
        }
        None
    })
    .await;
    assert!(closed, "the connection was kept open");
    assert!(sent, "no GOAWAY came");
    assert_eq!(
        last_goaway,
        Some(StreamId::from(1)),
        "the request was not taken"
    );
    assert!(answered, "the request taken was not answered");
}

/// An answer of known length ends on its last DATA frame (END_STREAM set
/// there) to an HTTP/2 client, not on an empty DATA frame after it: the
/// gateway tells hyper the upstream's body has ended as its last bytes
/// come, so the client need not wait on one more frame, and the stream's
/// slot frees with the answer's last bytes.
#[tokio::test]
async fn an_http2_answer_ends_with_its_last_data_frame() {
    use h2::frame::{Frame, Ping, Settings, StreamId};
    let world = World::new().await;
    let upstream = serve_fn(
        |_request: hyper::Request<hyper::body::Incoming>| async move {
            hyper::Response::new(full_body("hello"))
        },
    )
    .await;
    let gw = Gateway::start(&yaml(&world.jwks.uri(), upstream, "", "")).await;
    let mut codec = h2_by_hand(gw.addr).await;
    assert!(send_frame(&mut codec, get_on_stream_one("/files/ok")).await);
    // Every DATA frame of stream 1 (payload, END_STREAM), to the stream's end.
    let mut data = Vec::new();
    let read = async {
        while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut codec).await {
            let reply: Frame<Bytes> = match frame {
                Frame::Settings(s) if !s.is_ack() => Settings::ack().into(),
                Frame::Ping(p) if !p.is_ack() => Ping::pong(p.into_payload()).into(),
                Frame::Headers(h) if h.stream_id() == StreamId::from(1) => {
                    assert!(!h.is_end_stream(), "the answer came without its body");
                    continue;
                }
                Frame::Data(d) if d.stream_id() == StreamId::from(1) => {
                    let end = d.is_end_stream();
                    data.push((d.payload().clone(), end));
                    if end {
                        return;
                    }
                    continue;
                }
                _ => continue,
            };
            assert!(send_frame(&mut codec, reply).await, "the gateway closed");
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the answer never ended");
    assert_eq!(
        data,
        [(Bytes::from_static(b"hello"), true)],
        "the answer's end came apart from its last bytes"
    );
}

/// An upstream answering `/files/big` with `chunks` parts of 64 KiB, and
/// anything else with `ok`.
async fn big_answer_upstream(chunks: usize) -> std::net::SocketAddr {
    serve_fn(
        move |request: hyper::Request<hyper::body::Incoming>| async move {
            if request.uri().path() != "/files/big" {
                return hyper::Response::new(full_body("ok"));
            }
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..chunks {
                    if tx.send(chunk.clone()).await.is_err() {
                        break;
                    }
                }
            });
            hyper::Response::new(body.boxed())
        },
    )
    .await
}

/// A gateway in front of `upstream` that hangs up on a connection whose
/// response has waited 3 s for its client (`server.idle_timeout`), with no
/// body timeout that could end the response first.
async fn stalled_reader_gateway(world: &World, upstream: SocketAddr) -> Gateway {
    let config = yaml(&world.jwks.uri(), upstream, "  idle_timeout: 3s\n", "")
        .replace("body_idle_timeout: 1s", "body_idle_timeout: 1h");
    assert!(config.contains("body_idle_timeout: 1h"));
    Gateway::start(&config).await
}

/// Asks `gw` for `/files/big` on a new HTTP/2 connection whose streams get
/// `window` bytes of flow-control window, and returns the 200 response's
/// body (unread: dropping it would reset the stream), the connection's PING
/// handle, its task, and a handle for more requests on it.
async fn big_answer_over_http2(
    gw: &Gateway,
    window: u32,
) -> (
    h2::RecvStream,
    h2::PingPong,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    h2::client::SendRequest<Bytes>,
) {
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(stream)
        .await
        .unwrap();
    let pings = connection.ping_pong().expect("a ping handle");
    let h2_connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("http://gw.test/files/big")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (response.into_body(), pings, h2_connection, client)
}

/// Whether `gw` comes to count no open client connection within about 20 s.
async fn no_connection_stays_open(gw: &Gateway) -> bool {
    for _ in 0..200 {
        if metric(&gw.metrics().await, "scopegate_open_connections", &[]) == 0.0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The stalled HTTP/2 connection (its task, `h2_connection`) ends within
/// 10 s (a GOAWAY'd one closes within two idle timeouts of 3 s), is no
/// longer counted open, and `gw` still serves.
async fn closed_and_still_serving(
    gw: &Gateway,
    h2_connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let ended = tokio::time::timeout(Duration::from_secs(10), h2_connection).await;
    assert!(ended.is_ok(), "the HTTP/2 connection was not closed");
    assert!(
        no_connection_stays_open(gw).await,
        "the stalled connection is still counted open"
    );
    assert_eq!(get(&gw.url("/status"), &[]).await.unwrap().status, 200);
}

/// An HTTP/2 client that keeps every window shut but sends PINGs is
/// still a client that stopped reading: the gateway's PING answers are no
/// part of a response, and the connection is closed as stalled.
#[tokio::test]
async fn pings_do_not_keep_a_stalled_http2_response_open() {
    let world = World::new().await;
    let upstream = big_answer_upstream(1024).await;
    let gw = stalled_reader_gateway(&world, upstream).await;
    // The body is kept, unread: the connection is stalled, not idle.
    let (_unread, mut pings, h2_connection, _requests) = big_answer_over_http2(&gw, 0).await;
    // A PING every half second until the gateway hangs up (60 s at most,
    // 20 idle timeouts).
    let mut pongs = 0;
    let pinging = tokio::time::timeout(Duration::from_secs(60), async {
        while pings.ping(h2::Ping::opaque()).await.is_ok() {
            pongs += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        pinging.is_ok(),
        "PINGs kept a stalled HTTP/2 connection open"
    );
    assert!(pongs >= 1, "no PING was answered");
    closed_and_still_serving(&gw, h2_connection).await;
}

/// Nor do requests on other streams: each is a response begun and ended
/// on the connection, but the one left unread still waits for its client,
/// holding its upstream connection and `max_requests` place. Within six
/// idle timeouts (3 s each here) of being left, the connection says GOAWAY,
/// and closes once nothing else moves on it.
#[tokio::test]
async fn other_requests_do_not_keep_an_unread_http2_response_open() {
    let world = World::new().await;
    let upstream = big_answer_upstream(1024).await;
    let gw = stalled_reader_gateway(&world, upstream).await;
    let (_unread, _pings, h2_connection, requests) = big_answer_over_http2(&gw, 0).await;
    // A bodiless request every half second until the gateway says GOAWAY
    // (60 s at most, 20 idle timeouts).
    let mut answered = 0;
    let requesting = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let request = http::Request::head("http://gw.test/status")
                .body(())
                .unwrap();
            let sent = match requests.clone().ready().await {
                Ok(mut ready) => ready.send_request(request, true),
                Err(e) => break e,
            };
            let response = match sent {
                Ok((response, _)) => response.await,
                Err(e) => break e,
            };
            match response {
                Ok(response) => {
                    assert_eq!(response.status(), 200);
                    answered += 1;
                }
                Err(e) => break e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let refused =
        requesting.expect("requests on other streams kept an unread HTTP/2 response open");
    // Told, not cut off: the requests in flight on the other streams may
    // finish, and the next ones go to a new connection.
    assert!(refused.is_go_away(), "{refused:?}");
    assert!(answered >= 2, "only {answered} requests were answered");
    closed_and_still_serving(&gw, h2_connection).await;
}

/// An HTTP/2 connection to a gateway with `idle_timeout: 3s` on which the
/// client left `/files/big` unread and reads `/files/ticks` (`ticks` lines,
/// one per 500 ms) as they come.
struct UnreadBesideTicks {
    gw: Gateway,
    _world: World,
    h2_connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
    client: h2::client::SendRequest<Bytes>,
    /// Bytes of ticks read, and how the ticks stream ended.
    read: usize,
    ended: Result<(), h2::Error>,
}

impl UnreadBesideTicks {
    async fn run(ticks: usize) -> Self {
        let world = World::new().await;
        let upstream = serve_fn(
            move |request: hyper::Request<hyper::body::Incoming>| async move {
                let (tx, body) = channel_body();
                let big = request.uri().path() == "/files/big";
                tokio::spawn(async move {
                    for _ in 0..if big { 1024 } else { ticks } {
                        let chunk = if big {
                            Bytes::from(vec![b'x'; 64 * 1024])
                        } else {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            Bytes::from_static(b"tick\n")
                        };
                        if tx.send(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                hyper::Response::new(body.boxed())
            },
        )
        .await;
        let gw = stalled_reader_gateway(&world, upstream).await;
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .handshake::<_, Bytes>(stream)
            .await
            .unwrap();
        let h2_connection = tokio::spawn(connection);
        let mut this = Self {
            gw,
            _world: world,
            h2_connection,
            client,
            read: 0,
            ended: Ok(()),
        };
        // Left unread: its window is never given back.
        let _unread = this.get("/files/big").await.unwrap();
        let mut ticks = this.get("/files/ticks").await.unwrap().into_body();
        while let Some(data) = ticks.data().await {
            match data {
                Ok(data) => {
                    this.read += data.len();
                    let _ = ticks.flow_control().release_capacity(data.len());
                }
                Err(e) => {
                    this.ended = Err(e);
                    break;
                }
            }
        }
        this
    }

    /// A GET on a new stream.
    async fn get(&self, path: &str) -> Result<http::Response<h2::RecvStream>, h2::Error> {
        let request = http::Request::get(format!("http://gw.test{path}"))
            .body(())
            .unwrap();
        let mut ready = self.client.clone().ready().await?;
        let (response, _) = ready.send_request(request, true)?;
        response.await
    }
}

/// The streams the client does read are not cut for the one it left
/// unread: the GOAWAY sends its next requests elsewhere, and the connection
/// closes once those in flight are done (here a 25 s stream of ticks, read
/// as they come, going on well past the GOAWAY at 15-18 s).
#[tokio::test]
async fn a_response_left_unread_does_not_cut_the_streams_that_are_read() {
    let run = UnreadBesideTicks::run(50).await;
    assert!(
        run.ended.is_ok(),
        "a stream the client reads was cut: {:?}",
        run.ended
    );
    assert_eq!(run.read, 50 * 5, "the ticks ended early");
    // Past the GOAWAY: a new request is refused as such.
    let refused = run
        .get("/status")
        .await
        .expect_err("a stream after the GOAWAY");
    assert!(refused.is_go_away(), "{refused:?}");
    // Closed once nothing is read any more: in two idle timeouts.
    let ended = tokio::time::timeout(Duration::from_secs(10), run.h2_connection).await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(no_connection_stays_open(&run.gw).await);
}

/// But not for ever: a stream kept moving (ticks for 60 s) lasts six idle
/// timeouts past the GOAWAY (18 s here, so the connection closes 33-36 s
/// in), and the unread response with it.
#[tokio::test]
async fn a_connection_winding_down_for_an_unread_response_closes_in_time() {
    let run = UnreadBesideTicks::run(120).await;
    assert!(run.ended.is_err(), "the ticks outlived the wind-down");
    assert!(
        (30 * 5..90 * 5).contains(&run.read),
        "{} bytes of ticks: not cut 33-36 s in",
        run.read
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), run.h2_connection).await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(no_connection_stays_open(&run.gw).await);
}

/// The other side: an HTTP/2 client that reads slowly, far slower than one
/// 64 KiB part per `idle_timeout` (1 KiB a second here, against 3 s), is
/// still reading, and keeps its connection, for longer than an unread
/// response may wait (six idle timeouts): the upstream's 64 KiB parts are
/// handed to it 8 KiB at a time.
#[tokio::test]
async fn a_slow_http2_reader_is_not_taken_for_a_stalled_one() {
    let world = World::new().await;
    let upstream = big_answer_upstream(1024).await;
    let gw = stalled_reader_gateway(&world, upstream).await;
    let (mut body, _pings, h2_connection, _requests) = big_answer_over_http2(&gw, 1024).await;
    // Read for 24 s (eight idle timeouts), taking what comes and letting
    // 1 KiB more come each second.
    let (mut received, mut unreleased) = (0, 0);
    let reading = tokio::time::Instant::now();
    let mut released = reading;
    while reading.elapsed() < Duration::from_secs(24) {
        match tokio::time::timeout(Duration::from_millis(250), body.data()).await {
            Ok(Some(Ok(data))) => {
                received += data.len();
                unreleased += data.len();
            }
            Ok(other) => panic!("the response ended after {received} bytes: {other:?}"),
            Err(_) => {}
        }
        if released.elapsed() >= Duration::from_secs(1) {
            let _ = body.flow_control().release_capacity(unreleased);
            unreleased = 0;
            released = tokio::time::Instant::now();
        }
    }
    assert!(received >= 16 * 1024, "only {received} bytes came");
    assert!(
        !h2_connection.is_finished(),
        "a slow reader was disconnected"
    );
    assert_eq!(
        metric(&gw.metrics().await, "scopegate_open_connections", &[]),
        1.0
    );
}

/// A client that stops reading a response holds its connection, and the
/// upstream connection behind it, with no body timeout running (nothing polls
/// the body): over HTTP/1.1 its socket buffers fill, over HTTP/2 it leaves the
/// stream's flow-control window shut. Either way the gateway hangs up once
/// the response has waited for the client for `server.idle_timeout`.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    const CHUNKS: usize = 4096;
    let world = World::new().await;
    let upstream = big_answer_upstream(CHUNKS).await;
    let gw = stalled_reader_gateway(&world, upstream).await;

    let mut h1 = TcpStream::connect(gw.addr).await.unwrap();
    h1.write_all(b"GET /files/big HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut h1).await.expect("no response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The body is kept, unread: the connection is stalled, not idle.
    let (_unread, _pings, h2_connection, _requests) = big_answer_over_http2(&gw, 0).await;

    assert!(
        no_connection_stays_open(&gw).await,
        "connections whose client stopped reading stay open"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_connection).await;
    assert!(ended.is_ok(), "the HTTP/2 connection was not closed");
    let (body, closed) = read_until_closed(&mut h1, Duration::from_secs(5)).await;
    assert!(closed, "the HTTP/1.1 connection was not closed");
    assert!(
        body.len() < 64 * 1024 * CHUNKS,
        "the whole body came through"
    );

    // The gateway still serves.
    assert_eq!(get(&gw.url("/status"), &[]).await.unwrap().status, 200);
}
