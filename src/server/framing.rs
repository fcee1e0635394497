//! Spots what hyper hides from the service in an HTTP/1 request head: both
//! `Content-Length` and `Transfer-Encoding`, `Content-Length` repeated with
//! the same value, and a fragment (`#...`) in the request target.
//!
//! hyper settles the first on its own (Transfer-Encoding wins and the
//! connection is closed after the response) and drops the `Content-Length`
//! header, keeps one of two equal `Content-Length` lines, and the `http`
//! crate cuts a fragment off the target, so the checks in
//! [`super::pipeline`] never see any of them. [`FramingWatch`] wraps a client
//! connection and follows the bytes hyper reads: request heads, then
//! `Content-Length` or chunked bodies, so it knows where every head starts. A
//! flawed head is remembered by its position on the connection and
//! [`Requests::next`] marks that request with its [`HeadFlaw`]; the pipeline
//! refuses it with 400 and closes the connection. When the stream stops being
//! plain HTTP/1 (the HTTP/2 preface, a protocol switch the service answered)
//! the watch stops. Where it cannot follow what hyper may accept (a
//! `Content-Length` or chunk-size line longer than it keeps, a chunked body's
//! line ending in a bare LF, an oversized head) it stops too, and fails
//! closed: the request in hand, or the next one, is marked
//! [`HeadFlaw::Unfollowable`]. A request that only asks for a switch
//! (`Upgrade`, `CONNECT`) is followed like any other, since the connection
//! stays HTTP/1 unless the answer is `101` (or a `CONNECT` succeeds).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Request extension: what was wrong with this request's head on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadFlaw {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndCoding,
    /// More than one `Content-Length` line (hyper keeps one of equal ones).
    RepeatedLength,
    /// A `#` in the request target (RFC 9112 3.2: no fragment on the wire).
    Fragment,
    /// The watch lost the stream at or before this request where hyper may
    /// read on another way: a `Content-Length` or chunk-size line longer
    /// than the watch keeps, or a chunked body's line ending in a bare LF
    /// (hyper ends a chunk line, and the trailers, only at CR LF).
    Unfollowable,
}

impl HeadFlaw {
    fn code(self) -> u8 {
        match self {
            Self::LengthAndCoding => 1,
            Self::RepeatedLength => 2,
            Self::Fragment => 3,
            Self::Unfollowable => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::LengthAndCoding),
            2 => Some(Self::RepeatedLength),
            3 => Some(Self::Fragment),
            4 => Some(Self::Unfollowable),
            _ => None,
        }
    }
}

/// Largest request head followed; hyper refuses far smaller ones.
const HEAD_LIMIT: usize = 2 * 1024 * 1024;
/// Bytes of a line kept for inspection (header names, lengths, chunk sizes).
const LINE_KEEP: usize = 256;
/// No request has been found flawed.
const NONE: usize = usize::MAX;

/// Counts the requests of one connection in the order hyper dispatches them.
#[derive(Debug)]
pub(crate) struct Requests {
    /// The index of the flawed request, [`NONE`] if none was found.
    flawed: AtomicUsize,
    /// Its [`HeadFlaw::code`].
    flaw: AtomicU8,
    next: AtomicUsize,
    /// The connection switched protocols: its bytes are no longer requests.
    switched: AtomicBool,
}

impl Default for Requests {
    /// No request flawed yet, none dispatched, not switched.
    fn default() -> Self {
        Self {
            flawed: AtomicUsize::new(NONE),
            flaw: AtomicU8::new(0),
            next: AtomicUsize::new(0),
            switched: AtomicBool::new(false),
        }
    }
}

impl Requests {
    /// Called once per request, in order: what was wrong with its head.
    pub(crate) fn next(&self) -> Option<HeadFlaw> {
        let index = self.next.fetch_add(1, Ordering::AcqRel);
        if self.flawed.load(Ordering::Acquire) != index {
            return None;
        }
        HeadFlaw::from_code(self.flaw.load(Ordering::Acquire))
    }

    /// Called when a request's answer switched the connection to another
    /// protocol (before hyper writes that answer), so the watch stops reading
    /// the tunnel's bytes as requests.
    pub(crate) fn switched(&self) {
        self.switched.store(true, Ordering::Release);
    }
}

/// A client connection whose request framing is watched.
pub(crate) struct FramingWatch<I> {
    inner: I,
    tracker: Tracker,
    requests: Arc<Requests>,
}

impl<I> FramingWatch<I> {
    /// Wraps `inner`; the returned [`Requests`] goes to the connection's service.
    pub(crate) fn new(inner: I) -> (Self, Arc<Requests>) {
        let requests = Arc::new(Requests::default());
        let watch = Self {
            inner,
            tracker: Tracker::default(),
            requests: Arc::clone(&requests),
        };
        (watch, requests)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingWatch<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if this.requests.switched.load(Ordering::Acquire) {
                this.tracker.state = State::Stopped;
            } else if let Some((index, flaw)) = buf
                .filled()
                .get(before..)
                .and_then(|new| this.tracker.feed(new))
            {
                // The flaw first: `next` reads it once the index matches.
                this.requests.flaw.store(flaw.code(), Ordering::Release);
                this.requests.flawed.store(index, Ordering::Release);
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingWatch<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where in the request stream the next byte belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// A request head, line by line.
    #[default]
    Head,
    /// A `Content-Length` body: bytes left.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data: bytes left.
    ChunkData(u64),
    /// The line break after chunk data.
    ChunkEnd,
    /// Trailer lines up to the empty line.
    Trailers,
    /// Not following any more.
    Stopped,
}

/// What the current head said about framing.
#[derive(Debug, Default)]
struct HeadFacts {
    request_line: bool,
    /// The request line's first space has been read (the target follows).
    target_started: bool,
    /// A `#` after the request line's first space.
    fragment: bool,
    bytes: usize,
    content_length: Option<Option<u64>>,
    /// `Content-Length` lines seen.
    lengths: usize,
    transfer_encoding: bool,
}

impl HeadFacts {
    /// Reads a piece of the request line for a `#` in its target.
    fn scan_request_line(&mut self, part: &[u8]) {
        let target = if self.target_started {
            part
        } else {
            match memchr::memchr(b' ', part) {
                Some(at) => {
                    self.target_started = true;
                    part.get(at + 1..).unwrap_or_default()
                }
                None => return,
            }
        };
        self.fragment |= memchr::memchr(b'#', target).is_some();
    }
}

#[derive(Default)]
struct Tracker {
    state: State,
    /// The current line, at most [`LINE_KEEP`] bytes of it.
    line: Vec<u8>,
    /// The current line was longer than what `line` keeps.
    truncated: bool,
    /// The current line's last byte so far was CR.
    line_ends_in_cr: bool,
    head: HeadFacts,
    /// Complete heads seen so far.
    heads: usize,
}

/// Shows the kept line's length, not its bytes: a request line's target may
/// carry a token in its query (`?access_token=`), and a header line a
/// credential.
impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("state", &self.state)
            .field("line_len", &self.line.len())
            .field("truncated", &self.truncated)
            .field("line_ends_in_cr", &self.line_ends_in_cr)
            .field("head", &self.head)
            .field("heads", &self.heads)
            .finish()
    }
}

impl Tracker {
    /// Follows `bytes`; returns the index of a request whose head was
    /// flawed, and how.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<(usize, HeadFlaw)> {
        while !bytes.is_empty() {
            match self.state {
                State::Stopped => return None,
                State::Body(left) | State::ChunkData(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = bytes.get(take..).unwrap_or_default();
                    let left = left - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), n) => State::Body(n),
                        (_, 0) => State::ChunkEnd,
                        (_, n) => State::ChunkData(n),
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let (part, rest, complete) = match memchr::memchr(b'\n', bytes) {
                        Some(at) => (
                            bytes.get(..at).unwrap_or_default(),
                            bytes.get(at + 1..).unwrap_or_default(),
                            true,
                        ),
                        None => (bytes, &[][..], false),
                    };
                    bytes = rest;
                    if self.state == State::Head {
                        // The LF only once: a line may come in many reads.
                        self.head.bytes += part.len() + usize::from(complete);
                        if self.head.bytes > HEAD_LIMIT {
                            return self.lose_track(self.heads);
                        }
                        if !self.head.request_line {
                            // The whole target, however long the line.
                            self.head.scan_request_line(part);
                        }
                    }
                    let crlf = part.last().map_or(self.line_ends_in_cr, |&b| b == b'\r');
                    if complete && self.line.is_empty() {
                        // The whole line is in this read: no copy needed.
                        // Lines over LINE_KEEP count as truncated either way.
                        let truncated = part.len() > LINE_KEEP;
                        let kept = part.get(..LINE_KEEP.min(part.len())).unwrap_or_default();
                        if let Some(index) = self.end_of_line(kept, truncated, crlf) {
                            return Some(index);
                        }
                        continue;
                    }
                    self.line_ends_in_cr = crlf;
                    let room = LINE_KEEP.saturating_sub(self.line.len());
                    self.line
                        .extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
                    self.truncated |= part.len() > room;
                    if complete {
                        let line = std::mem::take(&mut self.line);
                        let found = self.end_of_line(&line, self.truncated, crlf);
                        self.line = line;
                        self.line.clear();
                        self.truncated = false;
                        self.line_ends_in_cr = false;
                        if let Some(index) = found {
                            return Some(index);
                        }
                    }
                }
            }
        }
        None
    }

    /// Handles one complete line (`truncated`: only its first
    /// [`LINE_KEEP`] bytes are in `line`; `crlf`: it ended in CR LF).
    fn end_of_line(
        &mut self,
        line: &[u8],
        truncated: bool,
        crlf: bool,
    ) -> Option<(usize, HeadFlaw)> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.state {
            State::Head => return self.head_line(line, truncated),
            // A bare LF in a chunked body: hyper refuses it in a chunk line
            // but reads on past it in a trailer, where the watch would not.
            State::ChunkSize | State::ChunkEnd | State::Trailers if !crlf => {
                return self.lose_track(self.heads);
            }
            State::ChunkSize => {
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let size = std::str::from_utf8(line.get(..digits).unwrap_or_default())
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                self.state = match size {
                    // Long chunk extensions are fine once the size is read,
                    // but a size longer than the line kept is not read.
                    _ if truncated && digits == line.len() => return self.lose_track(self.heads),
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => return self.lose_track(self.heads),
                };
            }
            State::ChunkEnd if line.is_empty() => self.state = State::ChunkSize,
            State::Trailers if line.is_empty() => self.state = State::Head,
            State::Trailers => {}
            _ => return self.lose_track(self.heads),
        }
        None
    }

    /// Stops following the stream where hyper may read on another way; the
    /// request at `index` (the one in hand, or the next) is then refused,
    /// since the watch can no longer vouch for its framing.
    fn lose_track(&mut self, index: usize) -> Option<(usize, HeadFlaw)> {
        self.state = State::Stopped;
        Some((index, HeadFlaw::Unfollowable))
    }

    fn head_line(&mut self, line: &[u8], truncated: bool) -> Option<(usize, HeadFlaw)> {
        if !self.head.request_line {
            if line.is_empty() {
                // Empty lines before a request line are skipped.
                return None;
            }
            self.head.request_line = true;
            if line.starts_with(b"PRI * HTTP/2") {
                self.state = State::Stopped;
            }
            return None;
        }
        if !line.is_empty() {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => (
                    line.get(..at).unwrap_or_default(),
                    line.get(at + 1..).unwrap_or_default(),
                ),
                None => (line, &[][..]),
            };
            if name.eq_ignore_ascii_case(b"content-length") {
                let value = value.trim_ascii();
                // Digits only, as hyper's server reads it (it refuses lists
                // such as `5, 5` and signs).
                let parsed =
                    (!truncated && !value.is_empty() && value.iter().all(u8::is_ascii_digit))
                        .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                        .flatten();
                if self.head.content_length.is_none() {
                    self.head.content_length = Some(parsed);
                }
                self.head.lengths += 1;
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                self.head.transfer_encoding = true;
            }
            return None;
        }

        // End of the head.
        let index = self.heads;
        self.heads += 1;
        let head = std::mem::take(&mut self.head);
        let flaw = if head.content_length.is_some() && head.transfer_encoding {
            Some(HeadFlaw::LengthAndCoding)
        } else if head.lengths > 1 {
            Some(HeadFlaw::RepeatedLength)
        } else if head.fragment {
            Some(HeadFlaw::Fragment)
        } else {
            None
        };
        if let Some(flaw) = flaw {
            // The refusal closes the connection: nothing after it is read.
            self.state = State::Stopped;
            return Some((index, flaw));
        }
        self.state = if head.transfer_encoding {
            State::ChunkSize
        } else {
            match head.content_length {
                None | Some(Some(0)) => State::Head,
                Some(Some(n)) => State::Body(n),
                // Unparseable (hyper refuses it) or longer than the line
                // kept (hyper may take it): this request is not trusted.
                Some(None) => return self.lose_track(index),
            }
        };
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` cut at `cuts` (positions, any order, wrapped into
    /// range); returns the flawed request's index and flaw, and the tracker.
    fn run_cut(stream: &[u8], cuts: &[usize]) -> (Option<(usize, HeadFlaw)>, Tracker) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut tracker = Tracker::default();
        let mut found = None;
        let mut start = 0;
        for end in cuts.into_iter().chain([stream.len()]) {
            if let Some(i) = stream.get(start..end).and_then(|piece| tracker.feed(piece)) {
                found = Some(i);
            }
            start = start.max(end);
        }
        (found, tracker)
    }

    /// Feeds `stream` in pieces of `step` (at least 1) bytes.
    fn run(stream: &[u8], step: usize) -> (Option<(usize, HeadFlaw)>, Tracker) {
        let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
        run_cut(stream, &cuts)
    }

    fn all_steps(stream: &[u8]) -> Option<(usize, HeadFlaw)> {
        let (first, _) = run(stream, stream.len().max(1));
        for step in 1..stream.len().max(1) {
            assert_eq!(run(stream, step).0, first, "step {step}");
        }
        first
    }

    #[test]
    fn debug_shows_no_bytes_of_the_line() {
        let (_, tracker) = run(
            b"GET /a?access_token=s3cr3t-t0ken HTTP/1.1\r\nAuthorization: Bearer s3cr3t",
            7,
        );
        let shown = format!("{tracker:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("115, 51"),
            "{shown}"
        );
        assert!(shown.contains("line_len"), "{shown}");
    }

    #[test]
    fn both_headers_are_found_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length:5\r\n\r\n",
            b"\r\nPOST / HTTP/1.1\nTRANSFER-ENCODING: gzip, chunked\ncontent-length: 0\n\n",
        ] {
            assert_eq!(
                all_steps(head),
                Some((0, HeadFlaw::LengthAndCoding)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn later_requests_are_found_after_bodies_of_both_kinds() {
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 31\r\n\r\n\
            Content-Length: 1\r\nTransfer-E\r\n\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            1a;ext=1\r\nTransfer-Encoding: chunked\r\n\
            0\r\nX-Trailer: 1\r\n\r\n\
            GET /c HTTP/1.1\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(all_steps(stream), Some((3, HeadFlaw::LengthAndCoding)));
    }

    /// hyper keeps one of two equal `Content-Length` lines, and the `http`
    /// crate drops a target's fragment: the watch reports both.
    #[test]
    fn repeated_lengths_and_fragments_are_found() {
        let repeated = b"GET / HTTP/1.1\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(all_steps(repeated), Some((1, HeadFlaw::RepeatedLength)));
        let long_target = format!("GET /{}#top HTTP/1.1\r\n\r\n", "a".repeat(1000));
        for stream in [
            &b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\r\nGET http://a/b?c#d HTTP/1.1\r\n\r\n",
            b"GET /# HTTP/1.0\n\n",
            long_target.as_bytes(),
        ] {
            assert_eq!(
                all_steps(stream),
                Some((0, HeadFlaw::Fragment)),
                "{}",
                String::from_utf8_lossy(stream)
            );
        }
        // A `#` in a header, a body or an encoded target is no fragment.
        let fine = b"POST /a%23b HTTP/1.1\r\nX-Tag: #1\r\nContent-Length: 2\r\n\r\n#!\
            GET / HTTP/1.1\r\nReferer: http://a/#x\r\n\r\n";
        assert_eq!(all_steps(fine), None);
        // Nothing after a flawed head is read: the refusal closes the connection.
        let (_, tracker) = run(repeated, repeated.len());
        assert_eq!(tracker.state, State::Stopped);
    }

    #[test]
    fn long_lines_read_the_same_whole_or_in_pieces() {
        // A Content-Length padded past LINE_KEEP is not read however the
        // bytes arrive; hyper takes it, so its request is refused rather
        // than its body skipped by a guess.
        for padding in ["0".repeat(400), " ".repeat(300)] {
            let padded = format!(
                "GET / HTTP/1.1\r\n\r\n\
                 POST / HTTP/1.1\r\nX-Long: {}\r\nContent-Length: {padding}3\r\n\r\nabc\
                 POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "v".repeat(1000),
            );
            assert_eq!(
                all_steps(padded.as_bytes()),
                Some((1, HeadFlaw::Unfollowable))
            );
            let (_, tracker) = run(padded.as_bytes(), padded.len());
            assert_eq!(tracker.state, State::Stopped);
        }
        // The longest length line kept is read.
        let name = "Content-Length: ";
        let fits = format!(
            "POST / HTTP/1.1\r\n{name}{}3\r\n\r\nabc\
             GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0".repeat(LINE_KEEP - name.len() - 2)
        );
        assert_eq!(
            all_steps(fits.as_bytes()),
            Some((1, HeadFlaw::LengthAndCoding))
        );
        // A long header that is not a length changes nothing.
        let long = format!(
            "GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n\
             POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "v".repeat(1000)
        );
        assert_eq!(
            all_steps(long.as_bytes()),
            Some((1, HeadFlaw::LengthAndCoding))
        );
    }

    #[test]
    fn ordinary_requests_are_not_flagged() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\
            X-T: 1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
            GET / HTTP/1.1\r\n\r\n";
        let (found, tracker) = run(stream, stream.len());
        // Trailers are no head, however they read.
        assert_eq!(found, None);
        assert_eq!(tracker.heads, 5);
        assert_eq!(tracker.state, State::Head);
        assert_eq!(all_steps(stream), None);
    }

    /// A head is measured by its bytes however many reads bring it: hyper
    /// takes heads up to 1 MiB (`max_buf_size`'s cap), which HEAD_LIMIT
    /// must never refuse.
    #[test]
    fn a_large_head_read_a_byte_at_a_time_is_followed() {
        let stream = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n\
             GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "v".repeat(1024 * 1024 + 1024)
        );
        for step in [1, 7, stream.len()] {
            assert_eq!(
                run(stream.as_bytes(), step).0,
                Some((1, HeadFlaw::LengthAndCoding)),
                "step {step}"
            );
        }
    }

    /// A head of HEAD_LIMIT bytes, every line and its end counted, is
    /// followed; one byte more is not.
    #[test]
    fn a_head_of_exactly_the_limit_is_followed() {
        let smuggled = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = |size: usize| {
            let fixed = "GET / HTTP/1.1\r\nX-Big: \r\n\r\n".len();
            format!(
                "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "v".repeat(size - fixed)
            )
        };
        for (size, found) in [
            (HEAD_LIMIT, (1, HeadFlaw::LengthAndCoding)),
            (HEAD_LIMIT + 1, (0, HeadFlaw::Unfollowable)),
        ] {
            let stream = format!("{}{smuggled}", head(size));
            assert_eq!(stream.len(), size + smuggled.len());
            for step in [4096, stream.len()] {
                assert_eq!(
                    run(stream.as_bytes(), step).0,
                    Some(found),
                    "{size} by {step}"
                );
            }
        }
    }

    #[test]
    fn stops_at_the_http2_preface() {
        let stream =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        let (found, tracker) = run(stream, stream.len());
        assert_eq!(found, None);
        assert_eq!(tracker.state, State::Stopped);
    }

    /// Where the watch cannot follow, the request in hand (a length it
    /// cannot read) or the next one (after a chunked body it cannot read)
    /// is refused: hyper might read on where the watch would not.
    #[test]
    fn fails_closed_where_it_cannot_follow() {
        let smuggled = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases = [
            ("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_owned(), 0),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc".to_owned(),
                0,
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                    "v".repeat(HEAD_LIMIT)
                ),
                0,
            ),
            // A chunk size longer than the line kept (hyper takes any
            // number of leading zeros).
            (
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}3\r\nabc\r\n0\r\n\r\n",
                    "0".repeat(LINE_KEEP)
                ),
                1,
            ),
            // Trailers end only at CR LF CR LF for hyper: a bare LF ends
            // neither a trailer nor the trailers.
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\n\n\
                 POST / HTTP/1.1\nContent-Length: 40\n\n\r\n\r\n"
                    .to_owned(),
                1,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n"
                    .to_owned(),
                1,
            ),
            // Chunk data longer than its size: hyper refuses the body.
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n"
                    .to_owned(),
                1,
            ),
            // hyper refuses a bare LF after a chunk size or chunk data.
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
                    .to_owned(),
                1,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n"
                    .to_owned(),
                1,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n".to_owned(),
                1,
            ),
        ];
        for (first, index) in cases {
            let stream = format!("{first}{smuggled}");
            let label = String::from_utf8_lossy(stream.as_bytes().get(..300).unwrap_or_default())
                .into_owned();
            let expected = Some((index, HeadFlaw::Unfollowable));
            if stream.len() < 4096 {
                assert_eq!(all_steps(stream.as_bytes()), expected, "{label}");
            }
            let (found, tracker) = run(stream.as_bytes(), 1000);
            assert_eq!(found, expected, "{label}");
            assert_eq!(tracker.state, State::Stopped);
        }
    }

    /// A request that asks for a protocol switch is followed like any
    /// other (the connection stays HTTP/1 unless the answer switches it), as
    /// are long chunk extensions.
    #[test]
    fn switch_requests_and_long_chunk_extensions_are_followed() {
        let ambiguous = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let long_extension = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext={}\r\nabc\r\n0\r\n\r\n",
            "x".repeat(400)
        );
        for first in [
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "CONNECT a:1 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length:  03 \r\n\r\nabc",
            &long_extension,
        ] {
            let stream = format!("{first}{ambiguous}");
            assert_eq!(
                all_steps(stream.as_bytes()),
                Some((1, HeadFlaw::LengthAndCoding)),
                "{first}"
            );
        }
    }

    /// Once the service says the connection switched, nothing more is read
    /// as requests.
    #[tokio::test]
    async fn a_switched_connection_is_not_watched() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut watch, requests) = FramingWatch::new(server);
        let mut buf = [0u8; 512];
        client
            .write_all(b"GET / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
            .await
            .unwrap();
        let _ = watch.read(&mut buf).await.unwrap();
        assert_eq!(watch.tracker.state, State::Head);
        requests.switched();
        client
            .write_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let _ = watch.read(&mut buf).await.unwrap();
        assert_eq!(watch.tracker.state, State::Stopped);
        assert_eq!(requests.next(), None);
        assert_eq!(requests.next(), None);
    }

    /// One generated request: its bytes, what the watch must find wrong
    /// with its head, and whether it must lose track in its body.
    fn request() -> impl Strategy<Value = (Vec<u8>, Option<HeadFlaw>, bool)> {
        let eol = prop_oneof![Just("\r\n"), Just("\n")];
        let name_case = |name: &'static str| {
            prop_oneof![
                Just(name.to_owned()),
                Just(name.to_ascii_uppercase()),
                Just(name.to_ascii_lowercase()),
            ]
        };
        // Body text that looks like framing, to prove bodies are skipped.
        let body_bytes = prop::collection::vec(
            prop_oneof![
                Just(b"\r\n".to_vec()),
                Just(b"Content-Length: 1\r\n".to_vec()),
                Just(b"Transfer-Encoding: chunked\r\n\r\n".to_vec()),
                prop::collection::vec(any::<u8>(), 0..8),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat());
        (
            prop::collection::vec(eol.clone(), 0..2),
            prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
            eol,
            prop::collection::vec(0..300usize, 0..3),
            prop::option::of(name_case("Content-Length")),
            prop::option::of(name_case("Transfer-Encoding")),
            any::<bool>(),
            prop::collection::vec(body_bytes, 1..4),
            // Chunk extensions, up to past the bytes of a line kept.
            0..300usize,
            // Asks for a protocol switch (that the answer does not make).
            any::<bool>(),
            (
                // A fragment on the target; the Content-Length line twice.
                any::<bool>(),
                any::<bool>(),
                // Leading zeros of the length, up to past the bytes kept; of
                // every chunk size, none, one or as many as are kept.
                prop_oneof![Just(0usize), 0..300usize],
                prop::sample::select(vec![0usize, 1, LINE_KEEP]),
                // The trailers: CR LF throughout, a trailer ending in a bare
                // LF, or a bare LF ending them.
                prop::sample::select(vec!["X-Trailer: 1\r\n\r\n", "X-Trailer: 1\n\r\n", "\n"]),
            ),
        )
            .prop_map(
                |(
                    blank,
                    method,
                    eol,
                    pads,
                    length,
                    chunked,
                    length_first,
                    bodies,
                    extension,
                    upgrade,
                    (fragment, repeated, length_zeros, chunk_zeros, trailers),
                )| {
                    let mut head = blank.concat();
                    let target = if fragment { "/x#f" } else { "/x" };
                    head.push_str(&format!("{method} {target} HTTP/1.1{eol}Host: a{eol}"));
                    if upgrade {
                        head.push_str(&format!("Upgrade: websocket{eol}Connection: upgrade{eol}"));
                    }
                    for pad in pads {
                        head.push_str(&format!("X-Pad: {}{eol}", "v".repeat(pad)));
                    }
                    let content: Vec<u8> = bodies.concat();
                    let zeros = "0".repeat(length_zeros);
                    let length_line = length
                        .as_ref()
                        .map(|name| format!("{name}: {zeros}{}{eol}", content.len()));
                    // Longer than the watch keeps, the CR included.
                    let length_unread = length_line
                        .as_ref()
                        .is_some_and(|line| line.len() - 1 > LINE_KEEP);
                    let chunked_line = chunked.as_ref().map(|name| format!("{name}: chunked{eol}"));
                    if repeated {
                        head.extend(length_line.clone());
                    }
                    let (first, second) = if length_first {
                        (length_line, chunked_line)
                    } else {
                        (chunked_line, length_line)
                    };
                    head.extend(first);
                    head.extend(second);
                    head.push_str(eol);
                    let mut bytes = head.into_bytes();
                    let pad = "0".repeat(chunk_zeros);
                    if chunked.is_some() {
                        for part in &bodies {
                            if !part.is_empty() {
                                let ext = "e".repeat(extension);
                                bytes.extend(format!("{pad}{:x};x={ext}\r\n", part.len()).bytes());
                                bytes.extend(part);
                                bytes.extend(b"\r\n");
                            }
                        }
                        bytes.extend(format!("{pad}0\r\n{trailers}").bytes());
                    } else if length.is_some() {
                        bytes.extend(&content);
                    }
                    let flaw = if length.is_some() && chunked.is_some() {
                        Some(HeadFlaw::LengthAndCoding)
                    } else if length.is_some() && repeated {
                        Some(HeadFlaw::RepeatedLength)
                    } else if fragment {
                        Some(HeadFlaw::Fragment)
                    } else if length_unread {
                        Some(HeadFlaw::Unfollowable)
                    } else {
                        None
                    };
                    let body_unread = flaw.is_none()
                        && chunked.is_some()
                        && (chunk_zeros == LINE_KEEP || trailers != "X-Trailer: 1\r\n\r\n");
                    (bytes, flaw, body_unread)
                },
            )
    }

    proptest::proptest! {
        /// On generated request streams the first flawed head is found,
        /// or the request after a body the watch cannot read, wherever the
        /// reads split the bytes; with neither, every head is counted and
        /// the tracker ends waiting for the next one.
        #[test]
        fn first_flawed_request_is_found_however_the_stream_is_read(
            requests in prop::collection::vec(request(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let count = requests.len();
            let mut expected = None;
            let mut stops = false;
            for (i, (_, flaw, body_unread)) in requests.iter().enumerate() {
                if let Some(flaw) = flaw {
                    expected = Some((i, *flaw));
                } else if *body_unread {
                    // The next request, whether or not one is sent.
                    expected = Some((i + 1, HeadFlaw::Unfollowable));
                } else {
                    continue;
                }
                stops = true;
                break;
            }
            let stream: Vec<u8> =
                requests.into_iter().flat_map(|(bytes, _, _)| bytes).collect();
            for cuts in [&[][..], &cuts] {
                let (found, tracker) = run_cut(&stream, cuts);
                prop_assert_eq!(found, expected);
                if stops {
                    prop_assert_eq!(tracker.state, State::Stopped);
                } else {
                    prop_assert_eq!(tracker.heads, count);
                    prop_assert_eq!(tracker.state, State::Head);
                }
            }
        }

        /// Arbitrary bytes: no panic, and the same answer in any pieces.
        #[test]
        fn arbitrary_bytes_read_the_same_in_any_pieces(
            stream in prop::collection::vec(any::<u8>(), 0..2048),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            prop_assert_eq!(run_cut(&stream, &cuts).0, run_cut(&stream, &[]).0);
        }
    }

    #[test]
    fn requests_are_matched_by_position() {
        let requests = Requests {
            flawed: AtomicUsize::new(2),
            flaw: AtomicU8::new(HeadFlaw::Fragment.code()),
            ..Requests::default()
        };
        assert_eq!(requests.next(), None);
        assert_eq!(requests.next(), None);
        assert_eq!(requests.next(), Some(HeadFlaw::Fragment));
        assert_eq!(requests.next(), None);
    }
}
