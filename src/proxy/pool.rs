//! Connections to one upstream, kept open between requests.
//!
//! A lean pool over hyper's connection API instead of hyper-util's general
//! client: the forwarder already knows which upstream a request goes to, so
//! there is no per-request URI parsing, pool-key hashing or locking. Idle
//! HTTP/1.1 connections wait in a bounded lock-free queue and are taken back
//! only once their response body has ended; an HTTP/2 connection (h2c, or
//! `h2` negotiated by ALPN) is shared by requests, up to `http2_max_streams`
//! at once, and another is opened for the requests past that (as Envoy
//! does): long-lived streams, such as gRPC streaming calls, would otherwise
//! hold every slot of the one connection and leave later requests waiting.
//! The oldest connection is filled first; the others close once idle for
//! `pool_idle_timeout`. If no other connection can be opened, a full one
//! takes the request anyway.
//!
//! A request goes again, on another connection (over HTTP/2, one other than
//! the one that did not take it, which is offered to no more requests),
//! only where that is safe.
//! Over HTTP/1.1, once: one its pooled connection could not even start (the
//! upstream closed it while idle), or a bodiless idempotent one (RFC 9110
//! 9.2.2) whose pooled connection had been idle and broke before the answer
//! (the upstream's keep-alive ran out as the request went out). Over HTTP/2,
//! at most twice: one the connection could no longer take, a bodiless one
//! the upstream did not process (a GOAWAY whose last stream id it is above,
//! with or without an error code, or `REFUSED_STREAM`; RFC 9113 6.8 and
//! 8.7), or a bodiless idempotent one whose connection broke before the
//! answer. To make that possible such a request
//! keeps a copy of its head until it is answered: every bodiless HTTP/2 one,
//! and an HTTP/1.1 one only on a connection idle since an earlier tick of the
//! pool's clock (a second, or half `pool_idle_timeout` if that is shorter),
//! so a busy pool copies nothing.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use futures_util::task::AtomicWaker;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, HOST, TE, TRANSFER_ENCODING,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::AbortHandle;
use tower_service::Service as _;

use super::body::{ClientBody, Upload};

/// How often a request an HTTP/2 upstream did not take is sent again (each
/// time on a new connection): a few connections in a row may be going away.
const MAX_RESENDS: u8 = 2;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, TLS, timeout).
    #[error("connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while sending or before the response head.
    #[error("{0}")]
    Protocol(#[from] hyper::Error),
    /// A request to switch protocols, which only HTTP/1.1 carries, for an
    /// upstream that speaks HTTP/2 only.
    #[error("a protocol switch needs HTTP/1.1, and the upstream speaks HTTP/2 only")]
    NoHttp1,
}

impl SendError {
    /// Whether the kernel or a timer gave up waiting (an I/O error of kind
    /// `TimedOut` among its causes).
    pub fn timed_out(&self) -> bool {
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// How often a shared HTTP/2 upstream connection with requests open is
/// pinged. Not while idle: gRPC servers answer pings on a connection without
/// calls (or more often than every few minutes without data) with GOAWAY
/// `too_many_pings`.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is closed (and
/// the next request opens a new one).
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of one answer an HTTP/2 upstream may send before the client
/// takes it. A client that stops reading keeps its stream's window filled,
/// and all streams share the connection's window, so a stream's is kept at
/// a thirty-second of it: hyper's defaults (2 MiB of 5 MiB) let three such
/// clients stop every answer on the connection.
const H2_STREAM_WINDOW: u32 = 512 * 1024;
/// The response header block an HTTP/2 upstream may send: as much as hyper
/// reads from an HTTP/1.1 one (its largest read buffer), so that a response
/// with a large policy header or many cookies does not pass over HTTP/1.1
/// and fail (refused stream, 502) when ALPN picks HTTP/2. HTTP/1.1 answers
/// also keep hyper's limit of 100 fields (its parser's buffer on the stack;
/// a larger one is allocated per response), as Envoy's default does.
const H2_MAX_RESPONSE_HEADERS: u32 = 400 * 1024;
/// The connection's window: also the most an upstream connection buffers.
const H2_CONNECTION_WINDOW: u32 = 32 * H2_STREAM_WINDOW;

/// Where and how to reach one upstream.
pub struct PoolSettings {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
    /// Speak HTTP/2 without TLS (h2c).
    pub http2_only: bool,
    /// Never HTTP/2: no ALPN offered over TLS.
    pub http1_only: bool,
    /// Idle HTTP/1.1 connections kept (0: a new connection per request).
    pub max_idle: usize,
    /// Requests one HTTP/2 connection carries at once; past that, another
    /// connection is opened.
    pub http2_max_streams: usize,
    /// A connection idle longer than this is not used again (it is closed
    /// after between this less one tick, and this).
    pub idle_timeout: Duration,
    /// How long opening a connection may take: name lookup, TCP and TLS.
    pub connect_timeout: Duration,
}

/// The pool of one upstream. Shared (`Arc`) with the response bodies that
/// give their connection back.
pub struct UpstreamPool {
    connector: HttpsConnector<HttpConnector>,
    /// Offers HTTP/1.1 alone: for requests that ask to switch protocols.
    http1_connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials, and the target of
    /// HTTP/2 requests.
    target: Uri,
    /// `Host` for HTTP/1.1 requests (the port only when not the default).
    host: HeaderValue,
    http2_only: bool,
    /// h2c, or https (ALPN may pick h2): only then is there a shared
    /// HTTP/2 connection to look for.
    may_use_h2: bool,
    idle: Option<ArrayQueue<Idle>>,
    /// The open HTTP/2 connections, oldest first.
    shared_h2: ArcSwap<Vec<Arc<SharedH2>>>,
    http2_max_streams: usize,
    /// The next HTTP/2 connection's id.
    next_h2_id: AtomicU64,
    /// The last connection opened spoke HTTP/2 (always, for h2c): new
    /// connections are then opened one at a time, and requests waiting for
    /// one share it instead of each opening its own.
    speaks_h2: AtomicBool,
    /// Held while opening a connection that will be shared.
    connecting: tokio::sync::Mutex<()>,
    /// Bumped by every failed attempt made while holding `connecting`: the
    /// requests that waited for that attempt fail with it, rather than each
    /// trying again in turn (each up to `connect_timeout`) while the
    /// upstream is down.
    shared_connect_failures: AtomicU64,
    /// Whether the last of those failures was a timeout: the requests that
    /// waited for it fail as it did (504, not 502).
    shared_connect_timed_out: AtomicBool,
    /// The pool's clock, in ticks of `tick_period`: an idle connection
    /// remembers the tick it was parked in, so no clock is read per request.
    tick: AtomicU64,
    /// A second, or half the idle timeout if that is shorter.
    tick_period: Duration,
    /// Ticks after its parking tick through which a connection is usable:
    /// one more tick and the idle timeout may have passed.
    idle_ticks: u64,
    sweeping: AtomicBool,
    /// How long opening a connection may take: name lookup, TCP and TLS.
    connect_timeout: Duration,
}

struct Idle {
    sender: http1::SendRequest<ClientBody>,
    task: AbortHandle,
    parked_at: u64,
}

impl Idle {
    /// Still open, and not idle longer than `idle_ticks` before `tick`.
    fn usable(&self, tick: u64, idle_ticks: u64) -> bool {
        !self.sender.is_closed() && self.parked_at.saturating_add(idle_ticks) >= tick
    }
}

/// A shared HTTP/2 connection, and how many requests it carries now.
struct SharedH2 {
    /// Unique within the pool.
    id: u64,
    sender: http2::SendRequest<ClientBody>,
    streams: Arc<Streams>,
    /// A request took a slot since the last sweep.
    used: AtomicBool,
    /// Sweeps in a row that found it unused and carrying nothing.
    idle_sweeps: AtomicU64,
}

/// The stream slots of a shared HTTP/2 connection.
#[derive(Debug, Default)]
struct Streams {
    /// Slots taken.
    taken: AtomicUsize,
    /// A stream on it is stuck ([`StreamSlot::stall`]): the connection takes
    /// no more requests, and closes once it carries nothing else.
    stuck: AtomicBool,
    /// Closed: its socket reads and writes fail from now on.
    severed: AtomicBool,
    /// The connection's reader, woken to find it severed.
    reader: AtomicWaker,
}

impl Streams {
    /// Closes the connection, and with it every stream on it. Hyper drives
    /// an HTTP/2 connection from a task of its own, which lives while any
    /// stream does, so the socket under it is what fails.
    fn sever(&self) {
        self.severed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn severed(&self) -> std::io::Result<()> {
        if self.severed.load(Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed by the gateway: a stream on it was stuck",
            ));
        }
        Ok(())
    }
}

/// The socket of a shared HTTP/2 connection, which [`Streams::sever`] closes.
struct Severable<T> {
    io: T,
    streams: Arc<Streams>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Severable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Checked after registering, so a sever in between is not missed.
        self.streams.reader.register(cx.waker());
        self.streams.severed()?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Severable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.streams.severed()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.streams.severed()?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.streams.severed()?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// One of a shared HTTP/2 connection's `http2_max_streams`, taken until
/// dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<Streams>);

impl StreamSlot {
    /// Its stream is stuck (the upstream takes none of its upload, and
    /// does not end it): the connection takes no more requests and is
    /// closed, ending that stream, once no other request uses it.
    pub fn stall(self) {
        self.0.stuck.store(true, Ordering::Release);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.taken.fetch_sub(1, Ordering::AcqRel) == 1 && self.0.stuck.load(Ordering::Acquire)
        {
            self.0.sever();
        }
    }
}

/// A connection lent to one request, until its response body has ended: an
/// HTTP/1.1 one goes back to its pool when [`Lease::give_back`] is called
/// (unless [`Lease::answered_mid_upload`] kept it out), and is closed if the
/// lease is dropped instead; an HTTP/2 one frees its stream slot either way,
/// unless the request body is still going out ([`Lease::hold_until_upload_ends`]).
pub struct Lease(Leased);

enum Leased {
    Http1 {
        sender: http1::SendRequest<ClientBody>,
        pool: Arc<UpstreamPool>,
        /// The connection's task, for closing it mid-upload.
        task: AbortHandle,
        /// The answer began before the request body had all gone out: the
        /// connection is closed, never parked.
        answered_early: bool,
    },
    Http2(StreamSlot),
}

impl Lease {
    /// Whether the answer came over HTTP/2, where hyper ends a body at a
    /// `RST_STREAM(NO_ERROR)` as at its `END_STREAM`.
    pub fn is_http2(&self) -> bool {
        matches!(self.0, Leased::Http2(_))
    }

    /// Parks an HTTP/1.1 connection for the next request (if there is room,
    /// it is still usable, and it did not answer mid-upload); one that is
    /// not parked is closed.
    pub fn give_back(self) {
        if let Leased::Http1 {
            sender,
            pool,
            task,
            answered_early: false,
        } = self.0
        {
            pool.park(sender, task);
        }
    }

    /// The answer's head came while the request body was still going out:
    /// the rest of the body follows the answer, and an HTTP/1.1 upstream
    /// that did not read it would take it for the next request on the
    /// connection, one no route or token check saw. So the connection takes
    /// no other, however late the answer ends (after the upload or not).
    /// An HTTP/2 stream's body is its own, and nothing changes for it.
    pub fn answered_mid_upload(&mut self) {
        if let Leased::Http1 { answered_early, .. } = &mut self.0 {
            *answered_early = true;
        }
    }

    /// The answer ended while the request body is still going out: an
    /// HTTP/1.1 connection takes no other request (the upstream could read
    /// the rest as a next one) and closes once the upload has ended, and
    /// its task is returned, for closing it if the upload stalls; an HTTP/2
    /// stream is still open, and `upload` keeps its slot until hyper lets
    /// go of the body.
    pub fn hold_until_upload_ends(self, upload: &Upload) -> Option<AbortHandle> {
        match self.0 {
            Leased::Http1 { task, .. } => Some(task),
            Leased::Http2(slot) => {
                upload.hold(slot);
                None
            }
        }
    }
}

/// How one HTTP/2 try ended.
enum Http2Attempt {
    Answered(Response<Incoming>),
    Failed(hyper::Error),
    /// Not taken by the upstream: to be sent again on a new connection.
    SendAgain(Request<ClientBody>),
}

enum Sender {
    /// `was_idle`: a pooled connection parked before the current tick, which
    /// the upstream may be closing as the request goes out.
    Http1 {
        sender: http1::SendRequest<ClientBody>,
        was_idle: bool,
        task: AbortHandle,
    },
    /// `id`: which shared connection it is.
    Http2 {
        sender: http2::SendRequest<ClientBody>,
        id: u64,
        slot: StreamSlot,
    },
}

/// A slot on a shared HTTP/2 connection that is open, has one free, and is
/// not `refused_by`.
fn open_shared(
    shared: &[Arc<SharedH2>],
    refused_by: Option<u64>,
    max_streams: usize,
) -> Option<Sender> {
    shared.iter().find_map(|connection| {
        if connection.sender.is_closed() || refused_by == Some(connection.id) {
            return None;
        }
        connection
            .streams
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < max_streams).then_some(taken + 1)
            })
            .ok()?;
        let slot = StreamSlot(Arc::clone(&connection.streams));
        // A stuck connection takes no more: the slot goes back (the last
        // one severs the connection), and the request looks further. Taken
        // first, so a stall that frees the last slot meanwhile is seen.
        if connection.streams.stuck.load(Ordering::Acquire) {
            return None;
        }
        if !connection.used.load(Ordering::Relaxed) {
            connection.used.store(true, Ordering::Relaxed);
        }
        Some(Sender::Http2 {
            sender: connection.sender.clone(),
            id: connection.id,
            slot,
        })
    })
}

impl UpstreamPool {
    /// A pool with no connections yet.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        http1_connector: HttpsConnector<HttpConnector>,
        settings: PoolSettings,
    ) -> Arc<Self> {
        let PoolSettings {
            scheme,
            authority,
            http2_only,
            http1_only,
            max_idle,
            http2_max_streams,
            idle_timeout,
            connect_timeout,
        } = settings;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port == default_port => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        // HTTP/2's `:authority` as HTTP/1.1's `Host`: without a default
        // port, so the upstream sees one name whichever ALPN chose.
        let normal_authority = Authority::try_from(host.as_bytes()).unwrap_or(authority);
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(normal_authority)
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        let may_use_h2 = http2_only || (scheme == Scheme::HTTPS && !http1_only);
        let tick_period = (idle_timeout / 2)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        let idle_ticks = (idle_timeout.as_nanos() / tick_period.as_nanos()).saturating_sub(1);
        Arc::new(Self {
            connector,
            http1_connector,
            target,
            may_use_h2,
            host,
            http2_only,
            idle: (max_idle > 0).then(|| ArrayQueue::new(max_idle)),
            shared_h2: ArcSwap::from_pointee(Vec::new()),
            http2_max_streams: http2_max_streams.max(1),
            next_h2_id: AtomicU64::new(0),
            speaks_h2: AtomicBool::new(http2_only),
            connecting: tokio::sync::Mutex::new(()),
            shared_connect_failures: AtomicU64::new(0),
            shared_connect_timed_out: AtomicBool::new(false),
            tick: AtomicU64::new(0),
            tick_period,
            idle_ticks: u64::try_from(idle_ticks).unwrap_or(u64::MAX).max(1),
            sweeping: AtomicBool::new(false),
            connect_timeout,
        })
    }

    /// Sends `request` (whose URI is the origin-form path and query) and
    /// returns the response head, with the lease of its HTTP/1.1 connection.
    /// A request that asks to switch protocols (`upgrade`) goes over
    /// HTTP/1.1, the only version that carries `Upgrade`.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<ClientBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let mut pooled_failed = false;
        // The shared HTTP/2 connection that did not take the request.
        let mut refused_by: Option<u64> = None;
        let mut resends = 0;
        loop {
            let pooled = if pooled_failed {
                None
            } else {
                self.checkout(upgrade)
            };
            let fresh = pooled.is_none();
            let sender = match pooled {
                Some(sender) => sender,
                // Boxed: the connect and handshake futures are large, and
                // inline they would be moved with every request's future.
                None => Box::pin(self.connect_or_share(upgrade, refused_by)).await?,
            };
            match sender {
                // Boxed: what a resend needs would otherwise grow every
                // request's future, HTTP/1.1 ones too.
                Sender::Http2 { sender, id, slot } => {
                    match Box::pin(self.try_http2(sender, request, resends < MAX_RESENDS)).await {
                        Http2Attempt::Answered(response) => {
                            return Ok((response, Some(Lease(Leased::Http2(slot)))));
                        }
                        Http2Attempt::Failed(error) => return Err(SendError::Protocol(error)),
                        Http2Attempt::SendAgain(next) => {
                            request = next;
                            pooled_failed = true;
                            refused_by = Some(id);
                            resends += 1;
                            self.retire(id);
                        }
                    }
                }
                Sender::Http1 {
                    mut sender,
                    was_idle,
                    task,
                } => {
                    request.headers_mut().insert(HOST, self.host.clone());
                    // Back to origin form, for a request prepared for an
                    // HTTP/2 connection that did not take it: a connection
                    // opened since may have agreed on HTTP/1.1.
                    if request.uri().scheme().is_some() {
                        if let Some(path) = request.uri().path_and_query().cloned() {
                            *request.uri_mut() = Uri::from(path);
                        }
                    }
                    // RFC 9110 10.1.4: TE is for this hop, and says so.
                    let headers = request.headers();
                    if headers.contains_key(TE)
                        && !headers.get_all(CONNECTION).iter().any(|v| v == "te")
                    {
                        request
                            .headers_mut()
                            .append(CONNECTION, HeaderValue::from_static("te"));
                    }
                    *request.version_mut() = Version::HTTP_11;
                    // hyper sends a GET or HEAD body of unknown length (a
                    // chunked one, or HTTP/2 DATA without content-length)
                    // as no body at all, `Content-Length: 0`, unless told.
                    if matches!(*request.method(), Method::GET | Method::HEAD)
                        && !http_body::Body::is_end_stream(request.body())
                        && http_body::Body::size_hint(request.body()).exact().is_none()
                        && !request.headers().contains_key(CONTENT_LENGTH)
                    {
                        request
                            .headers_mut()
                            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                    }
                    // Boxed, and only off a connection that sat idle: a busy
                    // pool's requests carry no copy.
                    let again = (was_idle
                        && request.method().is_idempotent()
                        && http_body::Body::is_end_stream(request.body()))
                    .then(|| Box::new(bodiless_copy(&request)));
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let lease = Lease(Leased::Http1 {
                                sender,
                                pool: Arc::clone(self),
                                task,
                                answered_early: false,
                            });
                            return Ok((response, Some(lease)));
                        }
                        Err(mut failed) => match failed.take_message() {
                            // A pooled connection that closed before the
                            // request went out: once more, on a new one.
                            Some(unsent) if !fresh => {
                                request = unsent;
                                pooled_failed = true;
                            }
                            // Sent on an idle connection that broke under it.
                            _ => match again {
                                Some(copy) if connection_broke(failed.error()) => {
                                    tracing::debug!(error = %failed.error(), "idle upstream connection broke under the request; sending it again on a new connection");
                                    request = *copy;
                                    pooled_failed = true;
                                }
                                _ => return Err(SendError::Protocol(failed.into_error())),
                            },
                        },
                    }
                }
            }
        }
    }

    /// One try over HTTP/2; `may_resend`: a request the upstream did not
    /// take may come back to be sent again.
    async fn try_http2(
        &self,
        mut sender: http2::SendRequest<ClientBody>,
        mut request: Request<ClientBody>,
        may_resend: bool,
    ) -> Http2Attempt {
        self.for_http2(&mut request);
        // Kept only while it can be sent again: no body, and resends left.
        let again = (may_resend && http_body::Body::is_end_stream(request.body()))
            .then(|| bodiless_copy(&request));
        // The request's queue lives while any handle to its connection
        // does: this one goes now, so that a request queued just as the
        // connection ended is dropped (and comes back) with the queue,
        // rather than kept in it, unanswered, by its own handle.
        let answer = sender.try_send_request(request);
        drop(sender);
        let mut failed = match answer.await {
            Ok(response) => return Http2Attempt::Answered(response),
            Err(failed) => failed,
        };
        let next = match failed.take_message() {
            // The connection was gone before it went out.
            Some(unsent) if may_resend => Some(unsent),
            _ => again.filter(|copy| may_send_again(copy, failed.error())),
        };
        match next {
            Some(next) => {
                tracing::debug!(error = %failed.error(), "upstream did not take the request; sending it again on a new connection");
                Http2Attempt::SendAgain(next)
            }
            None => Http2Attempt::Failed(failed.into_error()),
        }
    }

    /// An open connection that can take a request now, if one is at hand
    /// (an HTTP/1.1 one for a request that asks to switch protocols).
    fn checkout(&self, upgrade: bool) -> Option<Sender> {
        if self.may_use_h2 && !upgrade {
            if let Some(shared) = open_shared(&self.shared_h2.load(), None, self.http2_max_streams)
            {
                return Some(shared);
            }
        }
        let idle = self.idle.as_ref()?;
        let tick = self.tick.load(Ordering::Relaxed);
        // Bounded: a connection that is not ready yet goes to the back.
        for _ in 0..idle.len() {
            let parked = idle.pop()?;
            if !parked.usable(tick, self.idle_ticks) {
                continue;
            }
            if parked.sender.is_ready() {
                return Some(Sender::Http1 {
                    was_idle: parked.parked_at < tick,
                    sender: parked.sender,
                    task: parked.task,
                });
            }
            let _ = idle.push(parked);
        }
        None
    }

    /// Offers the shared HTTP/2 connection `id` to no more requests: it
    /// did not take one (a GOAWAY, or a refused stream). It closes once the
    /// requests it carries let go of it.
    fn retire(&self, id: u64) {
        self.shared_h2.rcu(|open| {
            open.iter()
                .filter(|c| c.id != id)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    fn park(self: &Arc<Self>, sender: http1::SendRequest<ClientBody>, task: AbortHandle) {
        let Some(idle) = &self.idle else { return };
        if sender.is_closed() {
            return;
        }
        let parked_at = self.tick.load(Ordering::Relaxed);
        // Full: the connection is closed by dropping it.
        let _ = idle.push(Idle {
            sender,
            task,
            parked_at,
        });
    }

    /// Opens a connection; to an upstream that speaks HTTP/2, one at a time,
    /// and a request that waited its turn takes the connection opened
    /// meanwhile (unless that is the one that just `refused_by` it), so a
    /// burst of requests opens one connection, not one each; or fails at
    /// once if that attempt failed.
    async fn connect_or_share(
        self: &Arc<Self>,
        upgrade: bool,
        refused_by: Option<u64>,
    ) -> Result<Sender, SendError> {
        if upgrade || !self.speaks_h2.load(Ordering::Relaxed) {
            return self.connect(upgrade).await;
        }
        let failures_before = self.shared_connect_failures.load(Ordering::Acquire);
        let turn = self.connecting.lock().await;
        // The connection opened meanwhile agreed on HTTP/1.1, which is
        // not shared: no need to wait for each other's connections.
        if !self.speaks_h2.load(Ordering::Relaxed) {
            drop(turn);
            return self.connect(false).await;
        }
        let shared = open_shared(&self.shared_h2.load(), refused_by, self.http2_max_streams);
        if let Some(shared) = shared {
            return Ok(shared);
        }
        let opened = if self.shared_connect_failures.load(Ordering::Acquire) != failures_before {
            let kind = if self.shared_connect_timed_out.load(Ordering::Acquire) {
                std::io::ErrorKind::TimedOut
            } else {
                std::io::ErrorKind::Other
            };
            Err(SendError::Connect(Box::new(std::io::Error::new(
                kind,
                "the connection opened meanwhile for this request failed",
            ))))
        } else {
            let opened = self.connect(false).await;
            if let Err(error) = &opened {
                self.shared_connect_timed_out
                    .store(error.timed_out(), Ordering::Release);
                self.shared_connect_failures.fetch_add(1, Ordering::AcqRel);
            }
            opened
        };
        // No further connection to be had: a full one that is open takes
        // the request past `http2_max_streams` (its upstream queues it, or
        // refuses it), rather than failing it.
        opened.or_else(|error| {
            open_shared(&self.shared_h2.load(), refused_by, usize::MAX).ok_or(error)
        })
    }

    /// Opens a connection: HTTP/2 for h2c or when TLS negotiated `h2`, but
    /// HTTP/1.1 for a request that asks to switch protocols (`upgrade`).
    async fn connect(self: &Arc<Self>, upgrade: bool) -> Result<Sender, SendError> {
        if upgrade && self.http2_only {
            return Err(SendError::NoHttp1);
        }
        self.start_sweeping();
        let connector = if upgrade {
            &self.http1_connector
        } else {
            &self.connector
        };
        // The connector's own timeout covers TCP alone: a name lookup or a
        // TLS handshake that hangs would hold the request (and, to an HTTP/2
        // upstream, every request waiting its turn) for the request timeout.
        let io = tokio::time::timeout(
            self.connect_timeout,
            connector.clone().call(self.target.clone()),
        )
        .await
        .map_err(|_| {
            SendError::Connect(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting (name lookup, TCP and TLS) took longer than connect_timeout",
            )))
        })?
        .map_err(SendError::Connect)?;
        let negotiated_h2 = io.connected().is_negotiated_h2();
        // Over TLS the protocol is the one ALPN settled on (RFC 9113 3.3):
        // offered only h2, a server that chose nothing speaks HTTP/1.1.
        if self.http2_only && self.target.scheme() == Some(&Scheme::HTTPS) && !negotiated_h2 {
            return Err(SendError::Connect(Box::new(std::io::Error::other(
                "the https upstream did not agree to HTTP/2 by ALPN, which http2_only requires",
            ))));
        }
        if self.http2_only || negotiated_h2 {
            if upgrade {
                return Err(SendError::NoHttp1);
            }
            let streams = Arc::new(Streams {
                taken: AtomicUsize::new(1),
                ..Streams::default()
            });
            // Pinged while requests are open: a connection a NAT or load
            // balancer dropped without a word would otherwise take every
            // request to this upstream into a timeout until TCP gave up.
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(false)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_header_list_size(H2_MAX_RESPONSE_HEADERS)
                .handshake(Severable {
                    io,
                    streams: Arc::clone(&streams),
                })
                .await?;
            let slot = StreamSlot(Arc::clone(&streams));
            let id = self.next_h2_id.fetch_add(1, Ordering::Relaxed);
            let shared = Arc::new(SharedH2 {
                id,
                sender: sender.clone(),
                streams,
                used: AtomicBool::new(true),
                idle_sweeps: AtomicU64::new(0),
            });
            let pool = Arc::downgrade(self);
            // Closed ones go as a new one comes.
            self.shared_h2.rcu(|open| {
                let mut open: Vec<_> = open
                    .iter()
                    .filter(|c| !c.sender.is_closed())
                    .cloned()
                    .collect();
                open.push(Arc::clone(&shared));
                open
            });
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                // No longer offered: once the requests holding a handle let
                // go of it, the connection's request queue is dropped with
                // whatever a request put in it as the connection ended
                // (hyper's dispatch task drains it only as it stops, and
                // a request queued at that moment would wait for an answer
                // that never comes).
                if let Some(pool) = pool.upgrade() {
                    pool.retire(id);
                }
            });
            self.speaks_h2.store(true, Ordering::Relaxed);
            Ok(Sender::Http2 { sender, id, slot })
        } else {
            // A connection opened for a protocol switch offered HTTP/1.1
            // alone, so it says nothing of what the upstream speaks.
            if !upgrade {
                self.speaks_h2.store(false, Ordering::Relaxed);
            }
            let (sender, connection) = http1::Builder::new().handshake(io).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            })
            .abort_handle();
            Ok(Sender::Http1 {
                sender,
                was_idle: false,
                task,
            })
        }
    }

    /// HTTP/2 takes the target from the URI (`:scheme`, `:authority`), and
    /// a client's credentials go as never-indexed literals (RFC 7541
    /// 7.1.3). h2 keeps them out of this connection's HPACK table already;
    /// the mark also binds an intermediary behind (a mesh proxy), whose
    /// table may be shared by every client's requests, as this one's is.
    fn for_http2(&self, request: &mut Request<ClientBody>) {
        for (name, value) in request.headers_mut().iter_mut() {
            if name == AUTHORIZATION || name == COOKIE {
                value.set_sensitive(true);
            }
        }
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.target.scheme().cloned();
        parts.authority = self.target.authority().cloned();
        parts.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        *request.version_mut() = Version::HTTP_2;
    }

    /// Advances the pool's clock and closes connections idle too long; runs
    /// while the pool lives, started with its first connection.
    fn start_sweeping(self: &Arc<Self>) {
        if (self.idle.is_none() && !self.may_use_h2) || self.sweeping.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let period = self.tick_period;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    fn sweep(&self) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        if self.may_use_h2 {
            self.sweep_http2();
        }
        let Some(idle) = &self.idle else { return };
        for _ in 0..idle.len() {
            let Some(parked) = idle.pop() else { break };
            if parked.usable(tick, self.idle_ticks) {
                let _ = idle.push(parked);
            }
        }
    }

    /// Retires the HTTP/2 connections a burst opened past the first once
    /// they have carried nothing for `pool_idle_timeout`: the first stays,
    /// as the one shared connection always did.
    fn sweep_http2(&self) {
        let open = self.shared_h2.load();
        let idle: Vec<u64> = open
            .iter()
            .skip(1)
            .filter(|c| {
                let used = c.used.swap(false, Ordering::Relaxed);
                if used || c.streams.taken.load(Ordering::Acquire) > 0 {
                    c.idle_sweeps.store(0, Ordering::Relaxed);
                    return false;
                }
                c.idle_sweeps.fetch_add(1, Ordering::Relaxed) >= self.idle_ticks
            })
            .map(|c| c.id)
            .collect();
        for id in idle {
            self.retire(id);
        }
    }
}

/// The request again, with no body (it had none).
fn bodiless_copy(request: &Request<ClientBody>) -> Request<ClientBody> {
    let mut copy = Request::new(ClientBody::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether a bodiless request that failed before its answer's head may go
/// again: if the upstream said it did not process it, or, for an idempotent
/// method (RFC 9110 9.2.2), if the connection broke under it (a connection
/// that said GOAWAY still takes new streams in `h2`, and they end with it).
fn may_send_again(request: &Request<ClientBody>, error: &hyper::Error) -> bool {
    unprocessed(error) || (request.method().is_idempotent() && connection_broke(error))
}

/// Whether the connection closed or broke (rather than the upstream
/// refusing the request, or a timeout).
fn connection_broke(error: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    if error.is_canceled() || error.is_closed() || error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}

/// Whether an HTTP/2 upstream said it did not process the stream: a
/// `REFUSED_STREAM` reset, or the upstream's GOAWAY, whatever its error code
/// (RFC 9113 6.8 and 8.7: streams above its last stream id were not
/// processed and may be sent again). h2 0.4 fails with the GOAWAY's own
/// error only the streams above its last stream id and those it had not
/// opened yet (`recv_go_away`); one at or below it that the connection then
/// cuts off ends with a broken pipe instead, a broken connection
/// ([`connection_broke`]). The one exception is hyper's: it checks the
/// connection again right after opening a stream, and a GOAWAY read in that
/// instant fails the new stream with it, whatever its last stream id; the
/// error does not tell the two apart, and the window is as narrow for every
/// error code as for `NO_ERROR`.
fn unprocessed(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(url: &str) -> Arc<UpstreamPool> {
        crate::cli::install_crypto_provider();
        let uri: Uri = url.parse().unwrap();
        let timeout = Duration::from_secs(1);
        let (connector, http1_connector) =
            crate::proxy::client::build_upstream_connectors(None, timeout, false, false).unwrap();
        UpstreamPool::new(
            connector,
            http1_connector,
            PoolSettings {
                scheme: uri.scheme().unwrap().clone(),
                authority: uri.authority().unwrap().clone(),
                http2_only: false,
                http1_only: false,
                max_idle: 1,
                http2_max_streams: 1,
                idle_timeout: timeout,
                connect_timeout: timeout,
            },
        )
    }

    /// HTTP/2's `:authority` names the upstream as HTTP/1.1's `Host` does,
    /// without a default port, so an upstream routing on it sees one name
    /// whichever version ALPN chose.
    #[test]
    fn http2_names_the_upstream_as_http1_does() {
        for (url, name) in [
            ("https://api.example.com:443", "api.example.com"),
            ("https://api.example.com", "api.example.com"),
            ("https://api.example.com:8443", "api.example.com:8443"),
            ("http://api.example.com:80", "api.example.com"),
            ("https://[::1]:443", "[::1]"),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            let pool = pool(url);
            assert_eq!(pool.host, name, "{url}");
            let mut request = Request::get("/orders/1?x=y")
                .body(ClientBody::empty())
                .unwrap();
            pool.for_http2(&mut request);
            assert_eq!(
                request.uri().authority().map(Authority::as_str),
                Some(name),
                "{url}"
            );
            assert_eq!(request.uri().path_and_query().unwrap(), "/orders/1?x=y");
        }
    }

    /// Over HTTP/2, every `authorization` and `cookie` line is marked
    /// never-indexed (h2 then encodes it so, RFC 7541 6.2.3), and nothing
    /// else is: compressing the other fields stays allowed.
    #[test]
    fn credentials_go_to_an_http2_upstream_never_indexed() {
        let pool = pool("https://api.example.com");
        let mut request = Request::get("/orders/1")
            .header(AUTHORIZATION, "Bearer abc")
            .header(COOKIE, "a=1")
            .header(COOKIE, "b=2")
            .header("x-request-id", "r1")
            .header("accept", "*/*")
            .body(ClientBody::empty())
            .unwrap();
        pool.for_http2(&mut request);
        let headers = request.headers();
        assert_eq!(headers.get_all(COOKIE).iter().count(), 2);
        for (name, value) in headers {
            let credential = name == AUTHORIZATION || name == COOKIE;
            assert_eq!(value.is_sensitive(), credential, "{name}: {value:?}");
        }
    }
}
