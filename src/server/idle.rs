//! Closing client connections that sit idle: no request in flight for
//! `server.idle_timeout`. HTTP/1.1 keep-alive is already bounded by hyper's
//! header read timeout; an HTTP/2 connection has no such bound, so without
//! this an idle client would hold a `max_connections` slot forever.
//!
//! And closing those whose client stopped reading: a response waiting for the
//! client to take its next part (an HTTP/1.1 socket buffer full, an HTTP/2
//! flow-control window left shut) is polled by nobody, so no body timeout
//! runs; a connection on which such a response waited a whole
//! `idle_timeout` while the client took not a byte is stalled, and closed.
//! An HTTP/2 one on which a response waited for the client to take one
//! part (of at most [`MAX_PART`] bytes) for five to six `idle_timeout`s,
//! whatever else the client took meanwhile, says GOAWAY and closes once
//! nothing else moves on it (six `idle_timeout`s later at the most, which
//! `serve_connection` sees to): reading other streams (or sending requests
//! on them), the client would otherwise keep a response it never reads, and
//! the upstream connection and `max_requests` place behind it, for ever. A
//! part is taken once the client gives back window for it (8 KiB plus its
//! own window-update step, in five minutes at the default 60s). (An
//! HTTP/1.1 connection carries one response at a time, and hyper takes a
//! part from the body only once a few hundred KiB of the last ones have gone
//! out: a slow reader may take long over one.)

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// What one connection is doing: requests in flight (a response counts until
/// its body is done or dropped), when the last one ended, and how many
/// responses wait for the client to read.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` at which the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Responses whose next part is the client's to take, by the check
    /// period (modulo [`PERIODS`]) in which they began to wait.
    awaiting_client: [AtomicUsize; PERIODS],
    /// The check period now: `quiet_for` moves it on once per `timeout`
    /// while requests are in flight.
    period: AtomicUsize,
    /// The client speaks HTTP/2: many responses share the connection.
    multiplexed: AtomicBool,
    /// The connection said GOAWAY for a response its client left unread:
    /// it lasts while its other streams move, and only the whole-connection
    /// rules apply to it now.
    winding_down: AtomicBool,
    /// Bumped whenever a response starts or stops waiting for the client: a
    /// count, not a clock, so that the request path reads no time for it.
    progress: AtomicU64,
}

/// Why a connection is closed without an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Nothing in flight for the timeout.
    Idle,
    /// A response waited for the client to read, with nothing else
    /// happening, for at least the timeout (and at most twice it).
    Stalled,
    /// Over HTTP/2, a response waited for the client to take its next part
    /// for at least five times the timeout (and at most six times it),
    /// while the client took other parts.
    StalledResponse,
}

/// How many check periods a response's wait is counted by: one that still
/// waits when its period's count comes round again has waited at least
/// `PERIODS - 1` whole periods.
const PERIODS: usize = 6;

/// The largest part of a response handed to an HTTP/2 connection at once:
/// a larger one (a few hundred KiB from an HTTP/1.1 upstream) is handed out
/// in parts of this size, so that the time a part waits for its client
/// tells a slow reader from a stalled one (half an HTTP/2 frame's default
/// size).
pub const MAX_PART: usize = 8 * 1024;

impl Activity {
    /// A connection opened now, with nothing in flight.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            awaiting_client: Default::default(),
            period: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
            winding_down: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        })
    }

    /// After [`Quiet::StalledResponse`] (and a GOAWAY): from now on only an
    /// idle or wholly stalled connection is quiet, so that the streams the
    /// client does read may finish.
    pub fn wind_down(&self) {
        self.winding_down.store(true, Ordering::Release);
    }

    /// Counts a part of a response the client took.
    fn took(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as started; it ends when the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            activity: Arc::clone(self),
            awaiting_client: None,
        }
    }

    /// How long the connection has had nothing in flight (`None`: busy).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
    }

    /// Resolves once the connection has been idle, or stalled, for `timeout`.
    pub async fn quiet_for(&self, timeout: Duration) -> Quiet {
        // The progress count seen at the last look while a response waited.
        let mut waiting_since: Option<u64> = None;
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= timeout => return Quiet::Idle,
                Some(idle) => {
                    waiting_since = None;
                    timeout - idle
                }
                None => {
                    // Read before the count of waiting responses: any change
                    // to that count after this read bumps `progress`.
                    let progress = self.progress.load(Ordering::Acquire);
                    let waiting = self
                        .awaiting_client
                        .iter()
                        .any(|count| count.load(Ordering::Acquire) > 0);
                    if waiting && waiting_since == Some(progress) {
                        return Quiet::Stalled;
                    }
                    waiting_since = waiting.then_some(progress);
                    // The next period's count is the one of responses that
                    // began to wait `PERIODS - 1` checks ago (or more), all
                    // of them busy ones, `timeout` apart (a waiting response
                    // is in flight): any still waiting has waited too long.
                    let next = (self.period.load(Ordering::Acquire) + 1) % PERIODS;
                    let overdue = self.multiplexed.load(Ordering::Acquire)
                        && !self.winding_down.load(Ordering::Acquire)
                        && self
                            .awaiting_client
                            .get(next)
                            .is_some_and(|count| count.load(Ordering::Acquire) > 0);
                    if overdue {
                        return Quiet::StalledResponse;
                    }
                    self.period.store(next, Ordering::Release);
                    timeout
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

pin_project! {
    /// The client connection's I/O: every byte of a response the client
    /// takes is progress (a slow reader is still reading, however large the
    /// response's parts). Over HTTP/1.1 that is every byte written; over
    /// HTTP/2 only DATA frames' bytes count, not the answers to a client's
    /// PING or SETTINGS frames, which a client with every window shut could
    /// send for ever.
    pub struct Watched<I> {
        #[pin]
        io: I,
        activity: Arc<Activity>,
        protocol: Protocol,
    }
}

/// What the client speaks, as far as its first bytes tell.
#[derive(Debug)]
enum Protocol {
    /// This many bytes of the HTTP/2 preface have come so far.
    Undecided(usize),
    /// HTTP/1.x: every write is response bytes.
    Http1,
    /// HTTP/2: where the writes are in the frame sequence.
    Http2(FrameCursor),
}

/// The client preface of HTTP/2 (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocol {
    /// Reads the client's first bytes.
    fn read(&mut self, bytes: &[u8]) {
        let Protocol::Undecided(matched) = self else {
            return;
        };
        let wanted = PREFACE.get(*matched..).unwrap_or_default();
        let n = bytes.len().min(wanted.len());
        if bytes.get(..n) != wanted.get(..n) {
            *self = Protocol::Http1;
        } else if *matched + n == PREFACE.len() {
            *self = Protocol::Http2(FrameCursor::default());
        } else {
            *matched += n;
        }
    }

    /// Whether `written`, the bytes just written, carry response bytes.
    fn response_bytes(&mut self, written: &[u8]) -> bool {
        match self {
            Protocol::Http2(cursor) => cursor.advance(written),
            _ => !written.is_empty(),
        }
    }
}

/// A position in the HTTP/2 frames the server writes: the header of the
/// next frame so far, or how much of the current frame's payload is left.
#[derive(Debug, Default)]
struct FrameCursor {
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    in_data: bool,
}

/// HTTP/2 frame type DATA (RFC 9113 6.1).
const DATA: u8 = 0x0;

impl FrameCursor {
    /// Moves past `bytes`; true if any of them was a DATA frame's payload.
    fn advance(&mut self, mut bytes: &[u8]) -> bool {
        let mut data = false;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                data |= self.in_data;
                self.payload_left -= n;
                bytes = bytes.get(n..).unwrap_or_default();
                continue;
            }
            let n = (self.header.len() - self.header_len).min(bytes.len());
            if let (Some(to), Some(from)) = (
                self.header.get_mut(self.header_len..self.header_len + n),
                bytes.get(..n),
            ) {
                to.copy_from_slice(from);
            }
            self.header_len += n;
            bytes = bytes.get(n..).unwrap_or_default();
            if self.header_len == self.header.len() {
                let [l0, l1, l2, kind, ..] = self.header;
                self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                self.in_data = kind == DATA;
                self.header_len = 0;
            }
        }
        data
    }
}

impl<I> Watched<I> {
    /// Counts writes to `io` as progress of `activity`'s connection.
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            protocol: Protocol::Undecided(0),
        }
    }
}

impl<I: tokio::io::AsyncRead> tokio::io::AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.io.poll_read(cx, buf);
        if let Protocol::Undecided(_) = this.protocol {
            this.protocol
                .read(buf.filled().get(before..).unwrap_or_default());
            if let Protocol::Http2(_) = this.protocol {
                this.activity.multiplexed.store(true, Ordering::Release);
            }
        }
        poll
    }
}

impl<I: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let poll = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            if this
                .protocol
                .response_bytes(buf.get(..n).unwrap_or_default())
            {
                this.activity.took();
            }
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let poll = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = poll {
            let mut took = false;
            for slice in bufs {
                if n == 0 {
                    break;
                }
                let written = slice.get(..n.min(slice.len())).unwrap_or_default();
                n -= written.len();
                took |= this.protocol.response_bytes(written);
            }
            if took {
                this.activity.took();
            }
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    /// Its response waits for the client to take the next part: since the
    /// check period with this number.
    awaiting_client: Option<usize>,
}

impl InFlight {
    fn await_client(&mut self, waiting: bool) {
        if self.awaiting_client.is_some() == waiting {
            return;
        }
        let activity = &self.activity;
        let counts = &activity.awaiting_client;
        match self.awaiting_client.take() {
            Some(period) => {
                if let Some(count) = counts.get(period) {
                    count.fetch_sub(1, Ordering::AcqRel);
                }
            }
            None => {
                let period = activity.period.load(Ordering::Acquire);
                if let Some(count) = counts.get(period) {
                    count.fetch_add(1, Ordering::AcqRel);
                }
                self.awaiting_client = Some(period);
            }
        }
        activity.progress.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.await_client(false);
        let activity = &self.activity;
        let now = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight until the
    /// body is finished or dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
        // Over HTTP/2, what is left of a part larger than `MAX_PART`, handed
        // out before anything else.
        rest: Bytes,
    }
}

impl<B> Tracked<B> {
    /// Holds `in_flight` for as long as `inner` lives. The response head is
    /// handed over: until the body is first polled, the client has it.
    pub fn new(inner: B, mut in_flight: InFlight) -> Self {
        in_flight.await_client(true);
        Self {
            inner,
            in_flight,
            rest: Bytes::new(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        // Asked for more: what was handed out is taken. A part handed out
        // now waits for the client until the next ask; waiting for the
        // upstream is the body's own timeout's business.
        this.in_flight.await_client(false);
        let poll = if this.rest.is_empty() {
            this.inner.poll_frame(cx)
        } else {
            Poll::Ready(Some(Ok(Frame::data(std::mem::take(this.rest)))))
        };
        let Poll::Ready(Some(Ok(frame))) = poll else {
            return poll;
        };
        this.in_flight.await_client(true);
        let multiplexed = || this.in_flight.activity.multiplexed.load(Ordering::Relaxed);
        match frame.into_data() {
            Ok(mut data) if data.len() > MAX_PART && multiplexed() => {
                *this.rest = data.split_off(MAX_PART);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(frame) => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let rest = u64::try_from(self.rest.len()).unwrap_or(u64::MAX);
        let mut total = SizeHint::new();
        total.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            total.set_upper(upper.saturating_add(rest));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_frames_are_response_bytes_over_http2() {
        let mut protocol = Protocol::Undecided(0);
        // The preface, in two reads.
        let (a, b) = PREFACE.split_at(5);
        protocol.read(a);
        assert!(matches!(protocol, Protocol::Undecided(5)));
        protocol.read(b);
        assert!(matches!(protocol, Protocol::Http2(_)));
        let frame = |kind: u8, payload: &[u8]| {
            let len = payload.len();
            let mut out = vec![
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                0,
                0,
                0,
                0,
                1,
            ];
            out.extend_from_slice(payload);
            out
        };
        let settings_ack = frame(0x4, b"");
        let ping_ack = frame(0x6, b"12345678");
        let data = frame(DATA, b"hello");
        assert!(!protocol.response_bytes(&settings_ack));
        assert!(!protocol.response_bytes(&ping_ack));
        // A DATA frame split anywhere, between control frames, counts.
        let mut stream = ping_ack.clone();
        stream.extend_from_slice(&data);
        stream.extend_from_slice(&ping_ack);
        let (first, rest) = stream.split_at(ping_ack.len() + 4);
        assert!(!protocol.response_bytes(first), "only DATA's header so far");
        assert!(protocol.response_bytes(rest));
        assert!(!protocol.response_bytes(&ping_ack));
        // An empty DATA frame (END_STREAM alone) carries no response bytes.
        assert!(!protocol.response_bytes(&frame(DATA, b"")));
        // HTTP/1.1: every write is response bytes.
        let mut h1 = Protocol::Undecided(0);
        h1.read(b"GET / HTTP/1.1\r\n");
        assert!(matches!(h1, Protocol::Http1));
        assert!(h1.response_bytes(b"HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_counts_from_the_last_request_that_ended() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let first = activity.start();
        let second = activity.start();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(activity.idle_for(), None, "busy connections are never idle");
        drop(first);
        assert_eq!(activity.idle_for(), None, "one request is still in flight");
        drop(second);
        assert_eq!(activity.idle_for(), Some(Duration::ZERO));
        tokio::time::advance(Duration::from_secs(4)).await;
        let waited = Instant::now();
        assert_eq!(activity.quiet_for(timeout).await, Quiet::Idle);
        assert_eq!(waited.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_does_not_take_stalls_the_connection() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        // Waiting for the upstream (nothing handed to the client) is busy.
        let mut upstream_wait = activity.start();
        let quiet = tokio::time::timeout(Duration::from_secs(100), activity.quiet_for(timeout));
        assert!(quiet.await.is_err(), "a request waiting for its upstream");
        // A response part the client never takes: stalled within 2 timeouts.
        upstream_wait.await_client(true);
        let waited = Instant::now();
        assert_eq!(activity.quiet_for(timeout).await, Quiet::Stalled);
        assert!(waited.elapsed() >= timeout && waited.elapsed() <= timeout * 2);
        // The client taking parts, however slowly, is progress.
        let looked = activity.quiet_for(timeout);
        tokio::pin!(looked);
        for _ in 0..10 {
            tokio::select! {
                quiet = &mut looked => panic!("{quiet:?} while the client reads"),
                () = tokio::time::sleep(timeout / 2) => {}
            }
            upstream_wait.await_client(false);
            upstream_wait.await_client(true);
        }
        drop(upstream_wait);
        let waiting: usize = activity
            .awaiting_client
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .sum();
        assert_eq!(waiting, 0);
    }

    /// Over HTTP/2, a large part is handed out in parts of `MAX_PART`, the
    /// body's length and end unchanged; over HTTP/1.1 as it came.
    #[tokio::test]
    async fn large_parts_are_split_over_http2_only() {
        use http_body_util::{BodyExt, Full};
        let whole = Bytes::from(vec![7u8; 2 * MAX_PART + 100]);
        for multiplexed in [false, true] {
            let activity = Activity::new();
            activity.multiplexed.store(multiplexed, Ordering::Release);
            let mut body = Tracked::new(Full::new(whole.clone()), activity.start());
            let mut parts = Vec::new();
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                parts.push(data.len());
                let left = (whole.len() - parts.iter().sum::<usize>()) as u64;
                assert_eq!(body.size_hint().exact(), Some(left), "{multiplexed}");
                assert_eq!(body.is_end_stream(), left == 0, "{multiplexed}");
            }
            let want = if multiplexed {
                vec![MAX_PART, MAX_PART, 100]
            } else {
                vec![whole.len()]
            };
            assert_eq!(parts, want);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_left_unread_stalls_whatever_else_the_client_takes() {
        let timeout = Duration::from_secs(10);
        // Another stream's parts are taken (and its requests come and go)
        // all the while.
        let others = |activity: Arc<Activity>| async move {
            loop {
                tokio::time::sleep(timeout / 4).await;
                activity.took();
                drop(activity.start());
            }
        };
        // Over HTTP/1.1 whatever is taken is the waiting response's own.
        let activity = Activity::new();
        let mut unread = activity.start();
        unread.await_client(true);
        tokio::select! {
            quiet = activity.quiet_for(timeout) => panic!("{quiet:?} over HTTP/1.1"),
            () = others(Arc::clone(&activity)) => unreachable!(),
            () = tokio::time::sleep(timeout * 20) => {}
        }
        // Over HTTP/2 it is not.
        let activity = Activity::new();
        activity.multiplexed.store(true, Ordering::Release);
        let mut unread = activity.start();
        unread.await_client(true);
        let waited = Instant::now();
        let quiet = tokio::select! {
            quiet = activity.quiet_for(timeout) => quiet,
            () = others(Arc::clone(&activity)) => unreachable!(),
        };
        assert_eq!(quiet, Quiet::StalledResponse);
        assert!(
            waited.elapsed() >= timeout * 5 && waited.elapsed() <= timeout * 6,
            "{:?}",
            waited.elapsed()
        );
        // A response whose parts the client takes, one per half timeout, is
        // no stalled one, however many periods it lasts.
        let mut read = activity.start();
        read.await_client(true);
        drop(unread);
        let looked = activity.quiet_for(timeout);
        tokio::pin!(looked);
        for _ in 0..20 {
            tokio::select! {
                quiet = &mut looked => panic!("{quiet:?} while the client reads"),
                () = tokio::time::sleep(timeout / 2) => {}
            }
            read.await_client(false);
            read.await_client(true);
        }
    }
}
