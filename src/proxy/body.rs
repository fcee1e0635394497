//! Bodies in flight through the gateway, both cut off when their sender goes
//! quiet for longer than the upstream's `body_idle_timeout`:
//!
//! - [`UpstreamBody`]: the upstream's response on its way to the client,
//!   counted when it fails part-way. Its HTTP/1.1 connection goes back to the
//!   pool when the body has ended (unless the answer began before the request
//!   body had all gone out), and is closed if the body is dropped before.
//! - [`ClientBody`]: the client's request body on its way to the upstream, so
//!   that a client that stops sending mid-upload cannot hold an upstream
//!   connection for ever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use super::places::Place;
use super::pool::{Lease, StreamSlot};

/// Counters of one upstream's mid-body failures.
#[derive(Clone)]
pub struct BodyFailures {
    /// The upstream's body broke (reset, early close, bad framing).
    pub broken: IntCounter,
    /// The upstream sent nothing for longer than `body_idle_timeout`.
    pub idle: IntCounter,
}

/// The longest wait for a body's next frame. The timer is armed only when a
/// body makes us wait, so bodies that arrive with their head (and bodiless
/// messages) cost none.
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
        }
    }

    /// A frame arrived: the next wait gets the whole timeout again.
    fn restart(&mut self) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep.as_mut().reset(Instant::now() + self.timeout);
        }
    }

    /// The body is waiting: ready once it has waited too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
    }
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream connection failed while streaming.
    #[error("upstream body failed: {0}")]
    Upstream(#[source] hyper::Error),
    /// The upstream went quiet mid-body.
    #[error("upstream body idle for more than {0:?}")]
    Idle(Duration),
    /// The upstream ended the body before its end: short of the length it
    /// announced, or before `END_STREAM` (an HTTP/2 `RST_STREAM(NO_ERROR)`,
    /// which hyper reads as the end).
    #[error("upstream body ended before its announced length or END_STREAM")]
    Cut,
}

pin_project! {
    /// An upstream response body with an idle timeout between frames.
    #[project = UpstreamBodyProj]
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        idle: IdleTimer,
        failures: BodyFailures,
        lease: Option<Lease>,
        upload: Option<UploadEnd>,
        // The upstream's `max_requests` place, given back once the body
        // has ended, and the upload too.
        place: Option<Place>,
        // Fields the answer's `Connection` named, which its trailers lose too.
        connection_options: Option<Box<[http::HeaderName]>>,
        // It arrives on an HTTP/2 stream, whose end hyper also reports for
        // a reset without error.
        http2: bool,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            this.project().settle(Answer::Broken);
        }
    }
}

impl UpstreamBody {
    /// Wraps `inner`; `failures` counts how it ends badly; `lease` is the
    /// connection it arrives on, given back once it has ended (and the
    /// request body, `upload`, if any, was sent whole), as `place` is;
    /// `connection_options` are the fields the answer's `Connection` named,
    /// removed from its trailers too.
    pub fn new(
        inner: Incoming,
        idle_timeout: Duration,
        failures: BodyFailures,
        lease: Option<Lease>,
        upload: Option<UploadEnd>,
        place: Option<Place>,
        connection_options: Option<Box<[http::HeaderName]>>,
    ) -> Self {
        let http2 = lease.as_ref().is_some_and(Lease::is_http2);
        let mut body = Self {
            inner,
            idle: IdleTimer::new(idle_timeout),
            failures,
            lease,
            upload,
            place,
            connection_options,
            http2,
        };
        if body.inner.is_end_stream() {
            settle(
                &mut body.lease,
                &mut body.place,
                body.upload.as_ref(),
                &body.idle,
                &body.failures,
                Answer::Ended,
            );
        }
        body
    }
}

/// How the answer's body stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// It ended.
    Ended,
    /// It broke off, or was dropped before its end.
    Broken,
}

/// Settles the answer's connection. An ended answer's goes back (an
/// HTTP/1.1 one parked, an HTTP/2 stream's slot freed); a broken answer's is
/// not used again, nor is an HTTP/1.1 one whose answer began before the
/// upload had all gone out ([`Lease::answered_mid_upload`]: `give_back`
/// closes it). Unless the request body is still going out: then the
/// rest follows the answer, and an HTTP/1.1 upstream that did not read it
/// would take it for the next request, one no route or token check saw
/// (nginx closes such connections too), so it takes no other; an HTTP/2
/// stream's slot is held until then; and [`watch_upload`] ends an upload
/// the upstream stops taking.
fn settle(
    lease: &mut Option<Lease>,
    place: &mut Option<Place>,
    upload: Option<&UploadEnd>,
    idle: &IdleTimer,
    failures: &BodyFailures,
    answer: Answer,
) {
    // The upstream's place goes with the connection: held while the upload
    // still goes out, given back otherwise.
    let place = place.take();
    let Some(lease) = lease.take() else { return };
    match upload {
        Some(upload) if upload.going_out() => hold_and_watch(lease, place, upload, idle, failures),
        _ if answer == Answer::Ended => lease.give_back(),
        _ => {}
    }
}

impl UpstreamBodyProj<'_> {
    fn settle(&mut self, answer: Answer) {
        settle(
            self.lease,
            self.place,
            self.upload.as_ref(),
            self.idle,
            self.failures,
            answer,
        );
    }
}

fn hold_and_watch(
    lease: Lease,
    place: Option<Place>,
    upload: &UploadEnd,
    idle: &IdleTimer,
    failures: &BodyFailures,
) {
    let connection = lease.hold_until_upload_ends(upload);
    // Outside a runtime (one shutting down drops its bodies) there is
    // nothing left to watch.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let watch = watch_upload(
            Arc::downgrade(upload),
            connection,
            idle.timeout,
            failures.idle.clone(),
        );
        runtime.spawn(async move {
            watch.await;
            drop(place);
        });
    }
}

/// Where an upload that goes on after its answer stands, as
/// [`watch_upload`] sees it every `body_idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadMark {
    /// Still being read from the client, this many frames so far.
    Reading(u64),
    /// The client is the one to send more: its own `body_idle_timeout`
    /// applies.
    ClientsTurn,
    /// Read from the client to its end (or let go of), not yet all sent.
    Read,
}

impl UploadMark {
    fn of(upload: &Weak<Upload>) -> Self {
        match upload.upgrade() {
            Some(u) if u.ended.get().is_none() && !u.released.load(Ordering::Acquire) => {
                if u.waiting_on_client.load(Ordering::Relaxed) {
                    Self::ClientsTurn
                } else {
                    Self::Reading(u.frames.load(Ordering::Relaxed))
                }
            }
            _ => Self::Read,
        }
    }
}

/// Watches an upload that goes on after its answer ended, when no one waits
/// for the upstream any more. If the upstream takes none of it for
/// `timeout` (it answered, and neither reads the rest nor ends the stream
/// or connection), its HTTP/1.1 connection (`connection`, the task) is
/// closed, or its HTTP/2 stream's connection takes no more requests and is
/// closed, ending the stream, once it carries nothing else; `stalled`
/// counts it. Progress is a frame read from the client; once the body has
/// all been read, that the HTTP/1.1 connection finished or hyper let go of
/// the HTTP/2 body within another `timeout`.
async fn watch_upload(
    upload: Weak<Upload>,
    connection: Option<AbortHandle>,
    timeout: Duration,
    stalled: IntCounter,
) {
    let mut seen = UploadMark::of(&upload);
    loop {
        tokio::time::sleep(timeout).await;
        let done = match &connection {
            Some(task) => task.is_finished(),
            None => upload
                .upgrade()
                .is_none_or(|u| u.released.load(Ordering::Acquire)),
        };
        if done {
            return;
        }
        let now = UploadMark::of(&upload);
        if now != seen || now == UploadMark::ClientsTurn {
            seen = now;
            continue;
        }
        stalled.inc();
        tracing::debug!(
            ?timeout,
            "the upstream took none of an answered request's upload for body_idle_timeout; closing its connection"
        );
        match connection {
            Some(task) => task.abort(),
            None => {
                if let Some(slot) = upload.upgrade().and_then(|u| u.take_slot()) {
                    slot.stall();
                }
            }
        }
        return;
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                this.idle.restart();
                // Trailers are an answer's last frame. An HTTP/1 chunked
                // body never reads as ended before its final `None`, which
                // the client side, done at the trailers, does not ask for:
                // the whole answer would close its connection as broken.
                if this.inner.is_end_stream() || frame.is_trailers() {
                    this.settle(Answer::Ended);
                }
                if let Some(trailers) = frame.trailers_mut() {
                    super::headers::remove_hop_by_hop_from_trailers(trailers);
                    for name in this.connection_options.iter().flat_map(|n| n.iter()) {
                        trailers.remove(name);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // An HTTP/2 upstream stream is reset under a streaming answer
                // when the client's upload failed: the client's failure, not
                // the upstream's.
                if this
                    .upload
                    .as_ref()
                    .is_none_or(|u| u.failed.get().is_none())
                {
                    this.failures.broken.inc();
                }
                this.settle(Answer::Broken);
                Poll::Ready(Some(Err(BodyError::Upstream(e))))
            }
            Poll::Ready(None) => {
                // hyper ends an HTTP/2 body at `RST_STREAM(NO_ERROR)` (or a
                // `GOAWAY(NO_ERROR)` disowning the stream) as at
                // `END_STREAM`: before `END_STREAM` (RFC 9113 8.1 allows the
                // reset only after a complete answer) the answer is cut, with
                // or without a length announced (its trailers, gRPC's status
                // among them, may be what is missing). With `END_STREAM`, h2
                // has held the body to its `content-length`.
                let cut = if *this.http2 {
                    !this.inner.is_end_stream()
                } else {
                    this.inner.size_hint().lower() > 0
                };
                if cut {
                    this.failures.broken.inc();
                    this.settle(Answer::Broken);
                    return Poll::Ready(Some(Err(BodyError::Cut)));
                }
                this.settle(Answer::Ended);
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.idle.poll_expired(cx));
                this.failures.idle.inc();
                this.settle(Answer::Broken);
                Poll::Ready(Some(Err(BodyError::Idle(this.idle.timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a client's request body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// The client connection failed mid-body (reset, early close, bad framing).
    #[error("request body broke off: {0}")]
    Broken(#[source] hyper::Error),
    /// The client sent nothing for longer than `body_idle_timeout`.
    #[error("request body idle for more than {0:?}")]
    Idle(Duration),
}

/// How far the upload of a request body has got, for the request timeout
/// to start from its end ([`ClientBody::upload_end`]).
#[derive(Debug, Default)]
pub struct Upload {
    /// When the body was read to its end.
    pub ended: OnceLock<Instant>,
    /// Frames read so far: an upload whose upstream stopped taking it
    /// makes no progress.
    pub frames: AtomicU64,
    /// The last read found the client had sent nothing more yet: a stall
    /// that is the client's (its `body_idle_timeout` answers it, with 408),
    /// not the upstream's.
    pub waiting_on_client: AtomicBool,
    /// Why the body stopped early, if it did: an HTTP/2 upstream connection
    /// reports only that it reset the stream, not that the client failed.
    pub failed: OnceLock<UploadFailure>,
    /// The body's reader was dropped: hyper has sent all of it that it
    /// will (or gave up).
    released: AtomicBool,
    /// The HTTP/2 stream slot of a request answered before its body had all
    /// gone out: freed when the last of the body's reader and the answer
    /// lets go of this, or given up on if the upstream stops taking the
    /// upload.
    stream_slot: Mutex<Option<StreamSlot>>,
}

impl Upload {
    /// Keeps `slot` until the body's reader and the answer let go of this.
    pub fn hold(&self, slot: StreamSlot) {
        *self
            .stream_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(slot);
    }

    fn take_slot(&self) -> Option<StreamSlot> {
        self.stream_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether the body is still on its way: not all read from the client,
    /// or not yet all handed on by hyper (whose HTTP/2 sender holds a frame
    /// until the upstream's window opens for it).
    pub fn going_out(&self) -> bool {
        self.ended.get().is_none() || !self.released.load(Ordering::Acquire)
    }
}

/// How a client's request body stopped early ([`ClientBodyError`] without
/// its source, kept for the one waiting for the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFailure {
    /// Nothing for longer than `body_idle_timeout`.
    Idle,
    /// The client connection failed mid-body.
    Broken,
}

/// A request body's [`Upload`], shared with the one waiting for the answer.
pub type UploadEnd = Arc<Upload>;

/// A client's request body with an idle timeout between frames.
pub struct ClientBody {
    /// `None`: no body (a bodiless request sent again).
    inner: Option<Incoming>,
    idle: IdleTimer,
    /// Set when the body has been read to its end, if anyone asked.
    upload_end: Option<UploadEnd>,
}

impl ClientBody {
    /// Wraps a request body; `idle_timeout` bounds each wait for more of it.
    pub fn new(inner: Incoming, idle_timeout: Duration) -> Self {
        Self {
            inner: Some(inner),
            idle: IdleTimer::new(idle_timeout),
            upload_end: None,
        }
    }

    /// When the body will have been read to its end; `None` for a body that
    /// is already at its end (no allocation then, as for most requests).
    pub fn upload_end(&mut self) -> Option<UploadEnd> {
        if http_body::Body::is_end_stream(self) {
            return None;
        }
        Some(Arc::clone(self.upload_end.get_or_insert_default()))
    }

    /// No body: for sending a bodiless request again.
    pub fn empty() -> Self {
        Self {
            inner: None,
            idle: IdleTimer::new(Duration::ZERO),
            upload_end: None,
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(upload) = &self.upload_end {
            upload.released.store(true, Ordering::Release);
        }
    }
}

impl ClientBody {
    fn ended(&self) {
        if let Some(upload) = &self.upload_end {
            let _ = upload.ended.set(Instant::now());
        }
    }

    fn failed(&self, failure: UploadFailure) {
        if let Some(upload) = &self.upload_end {
            let _ = upload.failed.set(failure);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut polled = Pin::new(&mut *inner).poll_frame(cx);
        // Request trailers are dropped (RFC 9110 6.5.1 lets a recipient
        // discard them): they would reach an HTTP/2 upstream past the header
        // hygiene of the request head, spoofed identity headers and all.
        while let Poll::Ready(Some(Ok(frame))) = &polled {
            if !frame.is_trailers() {
                break;
            }
            this.idle.restart();
            polled = Pin::new(&mut *inner).poll_frame(cx);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.restart();
                if let Some(upload) = &this.upload_end {
                    upload.waiting_on_client.store(false, Ordering::Relaxed);
                    upload.frames.fetch_add(1, Ordering::Relaxed);
                    if inner.is_end_stream() {
                        let _ = upload.ended.set(Instant::now());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed(UploadFailure::Broken);
                Poll::Ready(Some(Err(ClientBodyError::Broken(e))))
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(upload) = &this.upload_end {
                    upload.waiting_on_client.store(true, Ordering::Relaxed);
                }
                ready!(this.idle.poll_expired(cx));
                this.failed(UploadFailure::Idle);
                Poll::Ready(Some(Err(ClientBodyError::Idle(this.idle.timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
