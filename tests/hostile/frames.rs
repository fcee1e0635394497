//! Hostile HTTP/2 below the client library: connections written frame by
//! frame, with header blocks encoded by hand (HPACK literals with and without
//! indexing, static and dynamic table references, size updates), split over
//! CONTINUATION frames, padded, prioritised, and mixed with control frames.
//!
//! Each generated connection carries one to four requests (the requests of
//! the HTTP/1.1 campaign's vocabulary: methods, paths, tokens) laid out well
//! or badly (pseudo-header fields missing, repeated, after a regular field,
//! unknown, `:status` in a request; connection-specific fields; upper-case
//! names; CR, LF or NUL in values; conflicting lengths), plus control frames
//! that are fine (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, unknown types) or
//! connection errors (bad SETTINGS values, zero or overflowing window
//! increments, frames on stream 0, even or idle stream ids, CONTINUATION out
//! of place, PUSH_PROMISE from a client, oversized frames, bad padding,
//! undecodable header blocks).
//!
//! A reference (RFC 9113 and RFC 7541, as the `h2` crate applies them) says
//! what each request is: one the gateway must answer, one that must be
//! refused (stream reset, or a 4xx) and never forwarded, or the connection's
//! end. The gateway's frames are read back with the `h2` crate's codec, and:
//! - the upstream oracle of the HTTP/1.1 campaign holds for whatever was
//!   forwarded, and nothing sent after a connection error was forwarded;
//! - a connection error ends the connection with GOAWAY and an error code,
//!   and nothing else does; while it lives, the connection answers PING;
//! - every request the reference calls well-formed gets a response (or, for
//!   a refused one, a reset or a 4xx), judged like an HTTP/1.1 answer; a
//!   plain, allowed request gets 200;
//! - a fresh client is served after every case.

use super::*;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

// ---------------------------------------------------------------------------
// Frames and HPACK, written by hand.
// ---------------------------------------------------------------------------

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The payload of the PING that ends every script.
const LAST_PING: [u8; 8] = *b"lastping";

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

fn setting(id: u16, value: u32) -> Vec<u8> {
    let mut bytes = id.to_be_bytes().to_vec();
    bytes.extend_from_slice(&value.to_be_bytes());
    bytes
}

/// An HPACK integer (RFC 7541 5.1) with an `n`-bit prefix after `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: u64) {
    let max = (1u64 << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, bytes: &[u8]) {
    hpack_int(out, 0, 7, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Entries of RFC 7541's static table that requests use.
const STATIC: &[(u64, &str, &str)] = &[
    (1, ":authority", ""),
    (2, ":method", "GET"),
    (3, ":method", "POST"),
    (4, ":path", "/"),
    (6, ":scheme", "http"),
    (7, ":scheme", "https"),
    (8, ":status", "200"),
    (23, "authorization", ""),
    (28, "content-length", ""),
    (32, "cookie", ""),
    (38, "host", ""),
    (57, "transfer-encoding", ""),
];

/// The decoder's dynamic table as the gateway must see it (RFC 7541 4).
struct DynamicTable {
    /// Newest first.
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl DynamicTable {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        self.size += 32 + name.len() + value.len();
        self.entries.push_front((name.to_vec(), value.to_vec()));
        self.evict();
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let Some((name, value)) = self.entries.pop_back() else {
                break;
            };
            self.size -= 32 + name.len() + value.len();
        }
    }

    /// The HPACK index of an entry equal to `(name, value)`, if one is there.
    fn find(&self, name: &[u8], value: &[u8]) -> Option<u64> {
        self.entries
            .iter()
            .position(|(n, v)| n == name && v == value)
            .map(|i| 62 + i as u64)
    }
}

/// How one field is written.
#[derive(Debug, Clone, Copy)]
enum Repr {
    /// Literal name and value, not indexed.
    Literal,
    /// Literal, never indexed (the sensitive form).
    NeverIndexed,
    /// Literal, added to the dynamic table.
    Indexing,
    /// The name from the static table where it has one.
    StaticName,
    /// A full reference to an equal entry (static or dynamic) where there is
    /// one, else added to the dynamic table.
    Reference,
}

/// Something that makes a header block undecodable.
#[derive(Debug, Clone, Copy)]
enum HpackFault {
    /// Index 0, which is no entry.
    IndexZero,
    /// An index past both tables.
    IndexPastTables,
    /// A dynamic table size above the 4096 the gateway allows.
    SizeUpdateTooLarge,
    /// A size update after the block's first field.
    SizeUpdateLate,
    /// A Huffman-coded string that holds the EOS symbol.
    HuffmanEos,
    /// An integer longer than any decoder takes.
    EndlessInteger,
    /// A string whose length runs past the block.
    StringPastEnd,
}

fn encode_field(
    out: &mut Vec<u8>,
    table: &mut DynamicTable,
    name: &[u8],
    value: &[u8],
    repr: Repr,
) {
    let static_name = STATIC
        .iter()
        .find(|(_, n, _)| n.as_bytes() == name)
        .map(|(i, _, _)| *i);
    let static_full = STATIC
        .iter()
        .find(|(_, n, v)| n.as_bytes() == name && v.as_bytes() == value && !v.is_empty())
        .map(|(i, _, _)| *i);
    let literal = |out: &mut Vec<u8>, flags: u8, n: u32, name_index: Option<u64>| {
        match name_index {
            Some(index) => hpack_int(out, flags, n, index),
            None => {
                out.push(flags);
                hpack_str(out, name);
            }
        }
        hpack_str(out, value);
    };
    match repr {
        Repr::Literal => literal(out, 0x00, 4, None),
        Repr::NeverIndexed => literal(out, 0x10, 4, None),
        Repr::StaticName => literal(out, 0x00, 4, static_name),
        Repr::Indexing => {
            literal(out, 0x40, 6, static_name);
            table.insert(name, value);
        }
        Repr::Reference => match static_full.or_else(|| table.find(name, value)) {
            Some(index) => hpack_int(out, 0x80, 7, index),
            None => {
                literal(out, 0x40, 6, static_name);
                table.insert(name, value);
            }
        },
    }
}

fn encode_fault(out: &mut Vec<u8>, fault: HpackFault) {
    match fault {
        HpackFault::IndexZero => out.push(0x80),
        HpackFault::IndexPastTables => hpack_int(out, 0x80, 7, 5000),
        HpackFault::SizeUpdateTooLarge => hpack_int(out, 0x20, 5, 1 << 20),
        HpackFault::SizeUpdateLate => hpack_int(out, 0x20, 5, 100),
        HpackFault::HuffmanEos => {
            out.push(0x00);
            hpack_str(out, b"x-huff");
            // Thirty ones: EOS, which a decoder must refuse (RFC 7541 5.2).
            out.extend_from_slice(&[0x84, 0xff, 0xff, 0xff, 0xff]);
        }
        HpackFault::EndlessInteger => {
            out.push(0xff);
            out.extend(std::iter::repeat_n(0xff, 12));
            out.push(0x01);
        }
        HpackFault::StringPastEnd => {
            out.push(0x00);
            hpack_str(out, b"x-cut");
            hpack_int(out, 0, 7, 200);
            out.extend_from_slice(b"only a few bytes");
        }
    }
}

// ---------------------------------------------------------------------------
// Generated connections.
// ---------------------------------------------------------------------------

/// How a request's pseudo-header fields are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Normal,
    /// `:method`, `:scheme` and `:path` after a regular field.
    PseudoAfterRegular,
    /// A second `:path` (`/admin`) after the first.
    RepeatedPath,
    MissingMethod,
    MissingScheme,
    /// No `:path` (RFC 9113 8.3.1; `h2` lets it through).
    MissingPath,
    /// `:status` in a request.
    StatusInRequest,
    /// `:protocol` on a request that is not CONNECT.
    Protocol,
    /// A pseudo-header field HTTP/2 does not define.
    UnknownPseudo,
    /// CONNECT's own form: `:authority` only.
    ConnectForm,
}

/// Fields a request may carry besides its pseudo-header fields and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Extra {
    SpoofIdentity,
    ForwardedFor,
    /// A `host` that is not the `:authority`.
    EvilHost,
    /// The cookie split in crumbs (RFC 9113 8.2.3).
    CookieCrumbs,
    TeTrailers,
    EmptyValue,
    ManySmallFields,
    // Connection-specific fields (RFC 9113 8.2.2): a malformed request.
    Connection,
    TransferEncoding,
    Upgrade,
    KeepAlive,
    ProxyConnection,
    TeGzip,
    // Not a field HPACK may carry in HTTP/2: the connection ends.
    UpperCaseName,
    SpaceInName,
    CrLfInValue,
    NulInValue,
    /// Over the gateway's header list limit (16 KiB).
    LongValue,
    /// Over four times that: `h2` ends the connection (`ENHANCE_YOUR_CALM`).
    HugeValue,
    /// A WebDAV `Destination` within the `/admin/{*rest}` route, which a
    /// plain `COPY` or `MOVE` needs (RFC 4918 9.8.3, 9.9.3).
    Destination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// No `content-length`.
    Absent,
    Correct,
    /// One more than the body.
    Wrong,
    NotANumber,
    /// The correct length, then a second, different one.
    Two,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// On the stream before (or stream 0 for the first).
    Other,
    /// On itself (RFC 9113 5.3.1: a stream error).
    OnItself,
}

#[derive(Debug, Clone)]
struct H2Req {
    method: &'static str,
    path: String,
    scheme: Option<&'static str>,
    authority: Option<&'static str>,
    auth: Auth,
    layout: Layout,
    extras: Vec<H2Extra>,
    body: Vec<u8>,
    length: Length,
    /// How each field is written, in turn (repeated as needed).
    reprs: Vec<Repr>,
    /// Fragments of the header block (1: no CONTINUATION).
    fragments: usize,
    /// Padding bytes on the HEADERS frame and the DATA frames.
    padding: Option<u8>,
    priority: Option<Priority>,
    /// A size update to the same 4096 at the block's start (allowed).
    size_update: bool,
    fault: Option<HpackFault>,
    /// A DATA frame whose pad length is past its end.
    bad_padding: bool,
    /// An allowed request with nothing odd: must get 200 if the connection
    /// lives.
    plain: bool,
}

/// A control frame between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    // Fine.
    Ping,
    Settings,
    UnknownSetting,
    WindowUpdate,
    PriorityOnIdle,
    UnknownFrame,
    // Connection errors (RFC 9113).
    EnablePushTwo,
    WindowTooLarge,
    FrameSizeTooSmall,
    SettingsLength,
    PingLength,
    WindowUpdateZero,
    WindowOverflow,
    DataOnStreamZero,
    HeadersOnStreamZero,
    EvenStream,
    RstOnIdle,
    LoneContinuation,
    PushPromise,
    OversizedFrame,
    HeadersInterrupted,
}

impl Control {
    fn ends_connection(self) -> bool {
        !matches!(
            self,
            Control::Ping
                | Control::Settings
                | Control::UnknownSetting
                | Control::WindowUpdate
                | Control::PriorityOnIdle
                | Control::UnknownFrame
        )
    }
}

#[derive(Debug, Clone)]
enum Step {
    Request(Box<H2Req>),
    Control(Control),
}

/// What the reference says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Well-formed: answered with a response.
    Answer,
    /// Malformed: reset (or answered 4xx) and never forwarded.
    Refuse,
    /// Its header block or frames end the connection.
    EndConnection,
    /// Malformed, and the connection may end over it: never forwarded.
    RefuseOrEnd,
}

/// What `h2` makes of a header block's fields while it decodes them
/// (frame/headers.rs): a pseudo-header field after a regular one, a repeated
/// one, a connection-specific field or `te` other than `trailers` make the
/// request malformed. `h2` decodes each fragment as it comes, and a fragment
/// that ends inside a field returns "need more" before the malformed mark of
/// the fields it did decode is looked at: that mark is lost (an `h2` bug;
/// the request goes on with the first of two `:path`s, the fields it dropped
/// gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoded {
    Clean,
    /// Malformed, noticed at the end of a fragment (the last or not).
    Malformed {
        in_last: bool,
    },
    /// Malformed, and the mark lost; `h2` goes on without the fields it
    /// refused, and then finds `:method` missing if it refused that.
    Forgotten {
        method_lost: bool,
    },
}

/// Replays `h2`'s decoding of `fields` (field `i` takes the block's bytes
/// `spans[i]`) over fragments that end at the offsets `cuts`.
fn decode_like_h2(
    fields: &[(Vec<u8>, Vec<u8>)],
    spans: &[std::ops::Range<usize>],
    cuts: &[usize],
) -> Decoded {
    const CONNECTION_SPECIFIC: [&[u8]; 5] = [
        b"connection",
        b"transfer-encoding",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
    ];
    let mut regular_seen = false;
    let mut pseudo_seen: Vec<&[u8]> = Vec::new();
    let mut forgotten = false;
    let mut method_lost = false;
    let mut next = 0;
    for (k, &cut) in cuts.iter().enumerate() {
        let mut malformed = false;
        while next < fields.len() && spans[next].end <= cut {
            let (name, value) = &fields[next];
            if name.starts_with(b":") {
                if regular_seen || pseudo_seen.contains(&name.as_slice()) {
                    malformed = true;
                    method_lost |= regular_seen && name == b":method";
                } else {
                    pseudo_seen.push(name);
                }
            } else if CONNECTION_SPECIFIC.contains(&name.as_slice())
                || (name == b"te" && value != b"trailers")
            {
                malformed = true;
            } else {
                regular_seen = true;
            }
            next += 1;
        }
        // The fragment ends inside the next field.
        let need_more = next < fields.len() && spans[next].start < cut;
        if malformed && need_more {
            forgotten = true;
        } else if malformed {
            return Decoded::Malformed {
                in_last: k + 1 == cuts.len(),
            };
        }
    }
    if forgotten {
        Decoded::Forgotten { method_lost }
    } else {
        Decoded::Clean
    }
}

/// Whether a connection ends, by the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ends {
    No,
    Maybe,
    Yes,
}

impl H2Req {
    fn verdict(&self, decoded: Decoded) -> Verdict {
        // `h2` resets a stream that depends on itself before it decodes the
        // block (so the block's faults go unseen, and the block must not add
        // to the table; see `render_request`).
        if self.priority == Some(Priority::OnItself) && !self.bad_padding {
            // ... and then takes a CONTINUATION of that block for one out of
            // place (RFC 9113 would read it), which ends the connection.
            let continued = self
                .extras
                .iter()
                .any(|e| matches!(e, H2Extra::LongValue | H2Extra::HugeValue));
            return if continued {
                Verdict::EndConnection
            } else {
                Verdict::Refuse
            };
        }
        let ends = self.fault.is_some()
            || self.bad_padding
            || self.layout == Layout::UnknownPseudo
            || self.extras.iter().any(|e| {
                matches!(
                    e,
                    H2Extra::UpperCaseName
                        | H2Extra::SpaceInName
                        | H2Extra::CrLfInValue
                        | H2Extra::NulInValue
                        | H2Extra::HugeValue
                )
            });
        if ends {
            return Verdict::EndConnection;
        }
        if self.extras.contains(&H2Extra::LongValue) {
            // Over the limit, `h2` reads on or ends the connection,
            // depending on how the fragments fall.
            return Verdict::RefuseOrEnd;
        }
        match decoded {
            Decoded::Malformed { in_last: false } => return Verdict::EndConnection,
            Decoded::Malformed { in_last: true } => return Verdict::Refuse,
            Decoded::Forgotten { method_lost: true } => return Verdict::Refuse,
            Decoded::Clean | Decoded::Forgotten { method_lost: false } => {}
        }
        let connect = self.method == "CONNECT";
        let has_scheme = self.scheme.is_some()
            && !matches!(self.layout, Layout::MissingScheme | Layout::ConnectForm);
        let has_path = !matches!(self.layout, Layout::ConnectForm | Layout::MissingPath);
        // CONNECT's own form: no `:scheme`, no `:path` (RFC 9113 8.5).
        let connect_form = connect && !has_scheme && !has_path;
        // What `h2` finds once the block is whole (server.rs), and what the
        // gateway must refuse.
        let malformed = matches!(
            self.layout,
            Layout::MissingMethod | Layout::StatusInRequest | Layout::Protocol
        ) || (connect && !connect_form)
            || (!connect && !has_scheme)
            // No `:path`, or not in origin form (RFC 9113 8.3.1; `*` has no
            // route).
            || (!connect && (!has_path || !self.path.starts_with('/')))
            || self.priority == Some(Priority::OnItself);
        if !malformed && connect_form && !self.body.is_empty() {
            // hyper ends the whole connection (no GOAWAY) over a CONNECT
            // that declares a body (hyper 1.12, proto/h2/server.rs).
            match self.length {
                Length::Correct => return Verdict::EndConnection,
                Length::Wrong => return Verdict::RefuseOrEnd,
                _ => {}
            }
        }
        // CONNECT with no `:authority` is malformed too (RFC 9113 8.5); `h2`
        // lets it through, and the gateway must refuse it.
        let malformed = malformed
            || matches!(
                self.length,
                Length::Wrong | Length::NotANumber | Length::Two
            )
            || (connect_form && self.authority.is_none());
        if malformed {
            Verdict::Refuse
        } else {
            Verdict::Answer
        }
    }

    /// The fields of the header block, in order, with the case id.
    fn fields(&self, tokens: &Tokens, case: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let f = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        let mut pseudo = Vec::new();
        if self.layout != Layout::MissingMethod {
            pseudo.push(f(":method", self.method));
        }
        if self.layout != Layout::MissingScheme && self.layout != Layout::ConnectForm {
            if let Some(scheme) = self.scheme {
                pseudo.push(f(":scheme", scheme));
            }
        }
        if let Some(authority) = self.authority {
            pseudo.push(f(":authority", authority));
        }
        if !matches!(self.layout, Layout::ConnectForm | Layout::MissingPath) {
            let mut path = self.path.clone();
            let glue = if path.contains('?') { '&' } else { '?' };
            match self.auth {
                Auth::InQuery(t) => {
                    path = format!("{path}{glue}access_token={}", tokens.get(t));
                }
                Auth::HeaderAndQuery(_, name) => {
                    let name = QUERY_NAMES[name].0;
                    path = format!("{path}{glue}{name}={}", tokens.get(Tok::Admin));
                }
                _ => {}
            }
            pseudo.push(f(":path", &path));
        }
        match self.layout {
            Layout::RepeatedPath => pseudo.push(f(":path", "/admin")),
            Layout::StatusInRequest => pseudo.push(f(":status", "200")),
            Layout::Protocol => pseudo.push(f(":protocol", "websocket")),
            Layout::UnknownPseudo => pseudo.push(f(":x-evil", "1")),
            _ => {}
        }

        let mut regular = vec![f(CASE, &case.to_string())];
        for value in self.auth.values(tokens) {
            regular.push(f("authorization", &value));
        }
        for extra in &self.extras {
            match extra {
                H2Extra::SpoofIdentity => {
                    regular.push(f("x-auth-subject", SPOOFED));
                    regular.push(f("x-auth-scopes", &format!("admin {SPOOFED}")));
                    regular.push(f("x-auth-client-id", SPOOFED));
                }
                H2Extra::ForwardedFor => {
                    regular.push(f("x-forwarded-for", "10.0.0.1"));
                    regular.push(f("x-auth-subject", SPOOFED));
                }
                H2Extra::EvilHost => regular.push(f("host", "evil.example")),
                H2Extra::CookieCrumbs => {
                    regular.push(f("cookie", "a=1"));
                    regular.push(f("cookie", "b=2"));
                }
                H2Extra::TeTrailers => regular.push(f("te", "trailers")),
                H2Extra::EmptyValue => regular.push(f("x-empty", "")),
                H2Extra::ManySmallFields => {
                    for n in 0..40 {
                        regular.push(f(&format!("x-f{n}"), "v"));
                    }
                }
                H2Extra::Connection => regular.push(f("connection", "close")),
                H2Extra::TransferEncoding => regular.push(f("transfer-encoding", "chunked")),
                H2Extra::Upgrade => regular.push(f("upgrade", "websocket")),
                H2Extra::KeepAlive => regular.push(f("keep-alive", "timeout=5")),
                H2Extra::ProxyConnection => regular.push(f("proxy-connection", "keep-alive")),
                H2Extra::TeGzip => regular.push(f("te", "gzip")),
                H2Extra::UpperCaseName => regular.push(f("X-Upper", "1")),
                H2Extra::SpaceInName => regular.push(f("x bad", "1")),
                H2Extra::CrLfInValue => regular.push(f(
                    "x-inject",
                    "a\r\nx-auth-subject: spoofed\r\nauthorization: Bearer x",
                )),
                H2Extra::NulInValue => regular.push(f("x-nul", "a\0b")),
                H2Extra::LongValue => regular.push(f("x-long", &"a".repeat(20_000))),
                H2Extra::HugeValue => regular.push(f("x-huge", &"a".repeat(70_000))),
                H2Extra::Destination => regular.push(f("destination", "/admin/users/4")),
            }
        }
        let n = self.body.len();
        match self.length {
            Length::Absent => {}
            Length::Correct => regular.push(f("content-length", &n.to_string())),
            Length::Wrong => regular.push(f("content-length", &(n + 1).to_string())),
            Length::NotANumber => regular.push(f("content-length", "1x")),
            Length::Two => {
                regular.push(f("content-length", &n.to_string()));
                regular.push(f("content-length", &(n + 2).to_string()));
            }
        }

        if self.layout == Layout::PseudoAfterRegular {
            let first = regular.remove(0);
            let mut fields = vec![first];
            fields.extend(pseudo);
            fields.extend(regular);
            fields
        } else {
            pseudo.extend(regular);
            pseudo
        }
    }
}

fn h2_extra() -> impl Strategy<Value = H2Extra> {
    use H2Extra::*;
    prop_oneof![
        3 => prop::sample::select(vec![
            SpoofIdentity, ForwardedFor, EvilHost, CookieCrumbs, TeTrailers, EmptyValue,
            ManySmallFields,
        ]),
        1 => prop::sample::select(vec![
            Connection, TransferEncoding, Upgrade, KeepAlive, ProxyConnection, TeGzip,
        ]),
        1 => prop::sample::select(vec![
            UpperCaseName, SpaceInName, CrLfInValue, NulInValue, LongValue, HugeValue,
        ]),
    ]
}

fn repr() -> impl Strategy<Value = Repr> {
    prop::sample::select(vec![
        Repr::Literal,
        Repr::NeverIndexed,
        Repr::Indexing,
        Repr::StaticName,
        Repr::Reference,
    ])
}

fn fault() -> impl Strategy<Value = HpackFault> {
    prop::sample::select(vec![
        HpackFault::IndexZero,
        HpackFault::IndexPastTables,
        HpackFault::SizeUpdateTooLarge,
        HpackFault::SizeUpdateLate,
        HpackFault::HuffmanEos,
        HpackFault::EndlessInteger,
        HpackFault::StringPastEnd,
    ])
}

/// The frame-level choices every request gets.
#[allow(clippy::type_complexity)]
fn framing() -> impl Strategy<Value = (Vec<Repr>, usize, Option<u8>, Option<Priority>, bool)> {
    (
        proptest::collection::vec(repr(), 1..6),
        prop_oneof![3 => Just(1usize), 1 => 2usize..5],
        proptest::option::weighted(0.2, any::<u8>()),
        proptest::option::weighted(
            0.2,
            prop_oneof![4 => Just(Priority::Other), 1 => Just(Priority::OnItself)],
        ),
        proptest::bool::weighted(0.1),
    )
}

fn plain_h2() -> impl Strategy<Value = H2Req> {
    (
        prop::sample::select(ALLOWED.to_vec()),
        framing(),
        body_bytes(),
    )
        .prop_map(
            |((method, path, tok), (reprs, fragments, padding, priority, size_update), body)| {
                let has_body = matches!(method, "POST" | "PUT");
                H2Req {
                    method,
                    path: path.to_owned(),
                    scheme: Some("http"),
                    authority: Some("gw.test"),
                    auth: tok.map_or(Auth::Absent, Auth::Bearer),
                    layout: Layout::Normal,
                    extras: if matches!(method, "COPY" | "MOVE") {
                        vec![H2Extra::Destination]
                    } else {
                        vec![]
                    },
                    body: if has_body { body } else { vec![] },
                    length: if has_body {
                        Length::Correct
                    } else {
                        Length::Absent
                    },
                    reprs,
                    fragments,
                    padding,
                    priority: priority.filter(|p| *p == Priority::Other),
                    size_update,
                    fault: None,
                    bad_padding: false,
                    plain: true,
                }
            },
        )
}

fn any_h2() -> impl Strategy<Value = H2Req> {
    let target = prop_oneof![
        8 => prop::sample::select(TARGETS.to_vec()).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("orders/7".to_owned()),
    ];
    let layout = prop_oneof![
        12 => Just(Layout::Normal),
        1 => Just(Layout::PseudoAfterRegular),
        1 => Just(Layout::RepeatedPath),
        1 => Just(Layout::MissingMethod),
        1 => Just(Layout::MissingScheme),
        1 => Just(Layout::MissingPath),
        1 => Just(Layout::StatusInRequest),
        1 => Just(Layout::Protocol),
        1 => Just(Layout::UnknownPseudo),
        1 => Just(Layout::ConnectForm),
    ];
    let length = prop_oneof![
        4 => Just(Length::Absent),
        4 => Just(Length::Correct),
        1 => Just(Length::Wrong),
        1 => Just(Length::NotANumber),
        1 => Just(Length::Two),
    ];
    (
        (
            prop::sample::select(METHODS.to_vec()),
            target,
            prop::sample::select(vec![Some("http"), Some("https"), Some("ftp"), None]),
            prop::sample::select(vec![
                Some("gw.test"),
                Some("evil.example"),
                Some("gw.test:80"),
                None,
            ]),
            auth(),
            layout,
        ),
        (
            proptest::collection::vec(h2_extra(), 0..3),
            body_bytes(),
            length,
            framing(),
            proptest::option::weighted(0.1, fault()),
            proptest::bool::weighted(0.05),
        ),
    )
        .prop_map(
            |(
                (method, path, scheme, authority, auth, layout),
                (extras, body, length, framing, fault, bad_padding),
            )| {
                let (reprs, fragments, padding, priority, size_update) = framing;
                H2Req {
                    method,
                    path,
                    scheme,
                    authority,
                    auth,
                    layout,
                    extras,
                    body,
                    length,
                    reprs,
                    fragments,
                    padding,
                    priority,
                    size_update,
                    fault,
                    bad_padding,
                    plain: false,
                }
            },
        )
}

fn control() -> impl Strategy<Value = Control> {
    use Control::*;
    prop_oneof![
        6 => prop::sample::select(vec![
            Ping, Settings, UnknownSetting, WindowUpdate, PriorityOnIdle, UnknownFrame,
        ]),
        1 => prop::sample::select(vec![
            EnablePushTwo, WindowTooLarge, FrameSizeTooSmall, SettingsLength, PingLength,
            WindowUpdateZero, WindowOverflow, DataOnStreamZero, HeadersOnStreamZero, EvenStream,
            RstOnIdle, LoneContinuation, PushPromise, OversizedFrame, HeadersInterrupted,
        ]),
    ]
}

/// A plain request with one or two odd things (a respelled path, another
/// token or two, spoofed identity, an odd field or layout).
fn tweaked_h2() -> impl Strategy<Value = H2Req> {
    (
        plain_h2(),
        prop_oneof![2 => Just(None), 1 => (0u8..16).prop_map(Some)],
        prop_oneof![2 => Just(None), 1 => auth().prop_map(Some)],
        proptest::collection::vec(h2_extra(), 0..=2),
        prop_oneof![
            4 => Just(Layout::Normal),
            1 => Just(Layout::PseudoAfterRegular),
            1 => Just(Layout::RepeatedPath),
        ],
        // The request's own token and another, in either order.
        proptest::option::weighted(0.15, (any::<bool>(), tok())),
    )
        .prop_map(|(mut req, spelling, auth, extras, layout, doubled)| {
            if let Some(how) = spelling {
                req.path = respell(&req.path, how);
            }
            req.auth = auth.unwrap_or(req.auth);
            if let (Some((own_first, other)), Auth::Bearer(own)) = (doubled, &req.auth) {
                req.auth = if own_first {
                    Auth::Twice(*own, other)
                } else {
                    Auth::Twice(other, *own)
                };
            }
            req.extras = extras;
            req.layout = layout;
            req.plain = false;
            req
        })
}

fn script() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => plain_h2().prop_map(|r| Step::Request(Box::new(r))),
        3 => tweaked_h2().prop_map(|r| Step::Request(Box::new(r))),
        3 => any_h2().prop_map(|r| Step::Request(Box::new(r))),
        2 => control().prop_map(Step::Control),
    ];
    proptest::collection::vec(step, 1..7)
}

// ---------------------------------------------------------------------------
// Rendering: the bytes, and what each request is.
// ---------------------------------------------------------------------------

struct Rendered {
    bytes: Vec<u8>,
    /// The requests sent before the connection surely ended.
    requests: Vec<Sending>,
    /// Whether the script ends the connection, by the reference.
    ends: Ends,
}

struct Sending {
    stream: u32,
    case: u64,
    verdict: Verdict,
    plain: bool,
    /// Sent after a step that may have ended the connection.
    after_maybe: bool,
}

fn render_script(script: &[Step], tokens: &Tokens, ledger: &mut Ledger) -> Rendered {
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &setting(0x2, 0));
    let mut table = DynamicTable::new();
    let mut next_stream = 1u32;
    let mut requests = Vec::new();
    let mut ended = Ends::No;
    for step in script {
        match step {
            Step::Control(control) => {
                render_control(&mut out, *control, next_stream);
                if control.ends_connection() {
                    ended = Ends::Yes;
                }
            }
            Step::Request(req) => {
                let case = ledger.id(Sent {
                    method: req.method.to_owned(),
                    presented: req.auth.presented(),
                    never: None,
                    query_token: req.auth.query_token(),
                    forwarded: (None, None),
                });
                let stream = next_stream;
                next_stream += 2;
                let verdict = render_request(&mut out, req, stream, case, tokens, &mut table);
                let never = if ended == Ends::Yes {
                    Some("sent after a connection error")
                } else {
                    match verdict {
                        Verdict::Answer => None,
                        Verdict::Refuse | Verdict::RefuseOrEnd => Some("malformed in HTTP/2"),
                        Verdict::EndConnection => Some("that ends the HTTP/2 connection"),
                    }
                };
                if let Some(sent) = ledger.sent.get_mut(&case) {
                    sent.never = never;
                }
                if ended != Ends::Yes {
                    requests.push(Sending {
                        stream,
                        case,
                        verdict,
                        plain: req.plain,
                        after_maybe: ended == Ends::Maybe,
                    });
                }
                ended = ended.max(match verdict {
                    Verdict::EndConnection => Ends::Yes,
                    Verdict::RefuseOrEnd => Ends::Maybe,
                    _ => Ends::No,
                });
            }
        }
    }
    frame(&mut out, PING, 0, 0, &LAST_PING);
    Rendered {
        bytes: out,
        requests,
        ends: ended,
    }
}

fn render_control(out: &mut Vec<u8>, control: Control, next_stream: u32) {
    let last = next_stream.saturating_sub(2);
    match control {
        Control::Ping => frame(out, PING, 0, 0, b"pingpong"),
        Control::Settings => {
            let mut payload = setting(0x3, 100);
            payload.extend(setting(0x4, 1 << 20));
            payload.extend(setting(0x1, 4096));
            frame(out, SETTINGS, 0, 0, &payload);
        }
        Control::UnknownSetting => frame(out, SETTINGS, 0, 0, &setting(0x99, 7)),
        Control::WindowUpdate => frame(out, WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()),
        Control::PriorityOnIdle => {
            // RFC 9113 5.3.2: allowed on any stream, no state change.
            let mut payload = last.to_be_bytes().to_vec();
            payload.push(16);
            frame(out, PRIORITY, 0, next_stream + 100, &payload);
        }
        Control::UnknownFrame => frame(out, 0xfa, 0xff, 0, b"ignore me"),
        Control::EnablePushTwo => frame(out, SETTINGS, 0, 0, &setting(0x2, 2)),
        Control::WindowTooLarge => frame(out, SETTINGS, 0, 0, &setting(0x4, 1 << 31)),
        Control::FrameSizeTooSmall => frame(out, SETTINGS, 0, 0, &setting(0x5, 16_383)),
        Control::SettingsLength => frame(out, SETTINGS, 0, 0, &[0, 3, 0, 0, 0]),
        Control::PingLength => frame(out, PING, 0, 0, b"short"),
        Control::WindowUpdateZero => frame(out, WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()),
        Control::WindowOverflow => {
            frame(out, WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes());
        }
        Control::DataOnStreamZero => frame(out, DATA, 0, 0, b"data"),
        Control::HeadersOnStreamZero => frame(out, HEADERS, END_HEADERS, 0, &[0x82]),
        Control::EvenStream => frame(out, HEADERS, END_HEADERS | END_STREAM, 2, &[0x82]),
        Control::RstOnIdle => frame(out, RST_STREAM, 0, next_stream + 200, &8u32.to_be_bytes()),
        Control::LoneContinuation => frame(out, CONTINUATION, END_HEADERS, next_stream, &[0x82]),
        Control::PushPromise => {
            let mut payload = (next_stream + 1).to_be_bytes().to_vec();
            payload.push(0x82);
            // On an idle stream: `h2` drops frames on streams it reset.
            frame(out, PUSH_PROMISE, END_HEADERS, next_stream, &payload);
        }
        Control::OversizedFrame => frame(out, 0xfa, 0, 0, &vec![0; 16_385]),
        Control::HeadersInterrupted => {
            // A header block, broken by a PING before its CONTINUATION.
            frame(out, HEADERS, END_STREAM, next_stream, &[0x82, 0x86]);
            frame(out, PING, 0, 0, b"pingpong");
            frame(out, CONTINUATION, END_HEADERS, next_stream, &[0x84]);
        }
    }
}

fn render_request(
    out: &mut Vec<u8>,
    req: &H2Req,
    stream: u32,
    case: u64,
    tokens: &Tokens,
    table: &mut DynamicTable,
) -> Verdict {
    let fields = req.fields(tokens, case);
    let mut block = Vec::new();
    if req.size_update {
        hpack_int(&mut block, 0x20, 5, 4096);
        table.resize(4096);
    }
    // A stream error before decoding (a stream depending on itself) leaves
    // the block unread; what it would add to the table is not relied on.
    let no_indexing = req.priority == Some(Priority::OnItself);
    let mut spans = Vec::new();
    for (n, (name, value)) in fields.iter().enumerate() {
        let mut repr = req.reprs[n % req.reprs.len()];
        if no_indexing && matches!(repr, Repr::Indexing | Repr::Reference) {
            repr = Repr::Literal;
        }
        let start = block.len();
        encode_field(&mut block, table, name, value, repr);
        spans.push(start..block.len());
    }
    // Last, so that no field after it could make its bytes decodable.
    if let Some(fault) = req.fault {
        encode_fault(&mut block, fault);
    }

    let has_body = !req.body.is_empty() || req.bad_padding;
    // HEADERS (with padding and priority), then CONTINUATION fragments.
    let fragments = if no_indexing { 1 } else { req.fragments };
    // No frame over the default SETTINGS_MAX_FRAME_SIZE (16 384).
    let size = block.len().div_ceil(fragments).clamp(1, 16_000);
    let mut pieces: Vec<&[u8]> = block.chunks(size).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let cuts: Vec<usize> = pieces
        .iter()
        .scan(0, |end, piece| {
            *end += piece.len();
            Some(*end)
        })
        .collect();
    let verdict = req.verdict(decode_like_h2(&fields, &spans, &cuts));
    for (n, piece) in pieces.iter().enumerate() {
        let last = n + 1 == pieces.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        if n == 0 {
            if !has_body {
                flags |= END_STREAM;
            }
            let mut payload = Vec::new();
            if let Some(pad) = req.padding {
                flags |= PADDED;
                payload.push(pad);
            }
            if let Some(priority) = req.priority {
                flags |= PRIORITY_FLAG;
                let on = match priority {
                    Priority::Other => stream.saturating_sub(2),
                    Priority::OnItself => stream,
                };
                payload.extend_from_slice(&on.to_be_bytes());
                payload.push(200);
            }
            payload.extend_from_slice(piece);
            if let Some(pad) = req.padding {
                payload.extend(std::iter::repeat_n(0, usize::from(pad)));
            }
            frame(out, HEADERS, flags, stream, &payload);
        } else {
            frame(out, CONTINUATION, flags, stream, piece);
        }
    }
    if !has_body {
        return verdict;
    }
    if req.bad_padding {
        // Pad length 200 in a frame of 5 bytes (RFC 9113 6.1).
        frame(out, DATA, PADDED | END_STREAM, stream, &[200, 1, 2, 3, 4]);
        return verdict;
    }
    let half = req.body.len() / 2;
    let parts = [&req.body[..half], &req.body[half..]];
    for (n, part) in parts.iter().enumerate() {
        let last = n == 1;
        let mut flags = if last { END_STREAM } else { 0 };
        let mut payload = Vec::new();
        let pad = req.padding.map(|p| p % 16);
        if let Some(pad) = pad {
            flags |= PADDED;
            payload.push(pad);
        }
        payload.extend_from_slice(part);
        if let Some(pad) = pad {
            payload.extend(std::iter::repeat_n(0, usize::from(pad)));
        }
        if !part.is_empty() || last {
            frame(out, DATA, flags, stream, &payload);
        }
    }
    verdict
}

// ---------------------------------------------------------------------------
// Reading the gateway's frames.
// ---------------------------------------------------------------------------

/// The read half of a connection, for `h2`'s codec (which only reads here).
struct ReadHalf(tokio::net::tcp::OwnedReadHalf);

impl AsyncRead for ReadHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What one stream got back.
#[derive(Debug, Default)]
struct StreamResult {
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
    ended: bool,
    reset: Option<h2::Reason>,
}

#[derive(Debug, Default)]
struct ConnectionResult {
    streams: HashMap<u32, StreamResult>,
    goaway: Option<(u32, h2::Reason)>,
    last_ping_acked: bool,
    closed: bool,
}

impl ConnectionResult {
    fn settled(&self, rendered: &Rendered) -> bool {
        if self.closed {
            return true;
        }
        let streams_done = rendered.requests.iter().all(|r| {
            self.streams
                .get(&r.stream)
                .is_some_and(|s| s.ended || s.reset.is_some())
        });
        (self.last_ping_acked || self.goaway.is_some()) && streams_done
    }
}

async fn converse(addr: SocketAddr, rendered: &Rendered) -> Result<ConnectionResult, String> {
    use h2::frame::Frame;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (read, mut write) = tcp.into_split();
    let bytes = rendered.bytes.clone();
    // Written while the answers are read: the gateway may stop reading.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        let _ = write.flush().await;
        write
    });
    let mut codec: h2::Codec<ReadHalf, bytes::Bytes> = h2::Codec::new(ReadHalf(read));
    let mut result = ConnectionResult::default();
    let deadline = tokio::time::Instant::now() + BOUND;
    while !result.settled(rendered) {
        let next = tokio::time::timeout_at(deadline, codec.next())
            .await
            .map_err(|_| format!("no end within {BOUND:?}; so far: {result:?}"))?;
        let frame = match next {
            None => {
                result.closed = true;
                continue;
            }
            Some(Err(e)) => {
                // A reset connection ends the conversation like a close.
                if matches!(e, h2::proto::Error::Io(..)) {
                    result.closed = true;
                    continue;
                }
                return Err(format!(
                    "the gateway sent a frame its peer cannot read: {e}"
                ));
            }
            Some(Ok(frame)) => frame,
        };
        match frame {
            Frame::Headers(headers) => {
                let id = u32::from(headers.stream_id());
                let end = headers.is_end_stream();
                let (pseudo, fields) = headers.into_parts();
                let entry = result.streams.entry(id).or_default();
                if let Some(status) = pseudo.status {
                    entry.status = Some(status.as_u16());
                    entry.head = format!("HTTP/2 {}\r\n", status.as_u16());
                    for (name, value) in &fields {
                        entry.head.push_str(&format!(
                            "{name}: {}\r\n",
                            String::from_utf8_lossy(value.as_bytes())
                        ));
                    }
                }
                entry.ended |= end;
            }
            Frame::Data(data) => {
                let entry = result
                    .streams
                    .entry(u32::from(data.stream_id()))
                    .or_default();
                entry.ended |= data.is_end_stream();
                entry.body.extend_from_slice(data.payload());
            }
            Frame::Reset(reset) => {
                let entry = result
                    .streams
                    .entry(u32::from(reset.stream_id()))
                    .or_default();
                entry.reset = Some(reset.reason());
            }
            Frame::GoAway(goaway) => {
                result.goaway = Some((u32::from(goaway.last_stream_id()), goaway.reason()));
            }
            Frame::Ping(ping) if ping.is_ack() && *ping.payload() == LAST_PING => {
                result.last_ping_acked = true;
            }
            _ => {}
        }
    }
    // The writer is done or stuck on a connection the gateway dropped.
    writer.abort();
    Ok(result)
}

// ---------------------------------------------------------------------------
// One case.
// ---------------------------------------------------------------------------

async fn run_frames_case(lab: &Lab, script: &[Step]) -> Result<(), String> {
    let rendered = render_script(script, &lab.tokens, &mut lab.ledger.borrow_mut());
    let result = converse(lab.gateway.addr, &rendered).await?;

    // A connection error ends the connection with an error code; nothing
    // else ends it.
    let ended = result.goaway.is_some() || result.closed;
    match (&result.goaway, rendered.ends) {
        (Some((_, reason)), _) if *reason == h2::Reason::NO_ERROR => {
            return Err(format!(
                "a connection error ended with NO_ERROR: {result:?}"
            ));
        }
        (None, Ends::Yes) if !result.closed => {
            return Err(format!("a connection error went unnoticed: {result:?}"));
        }
        (_, Ends::No) if ended => {
            return Err(format!("a sound connection was ended: {result:?}"));
        }
        _ if !ended && !result.last_ping_acked => {
            return Err(format!("PING not answered: {result:?}"));
        }
        _ => {}
    }

    // A fresh client is served, and by then every forwarded request of the
    // script has been recorded.
    fresh_client_served(lab).await?;

    let counts = check_upstream(lab)?;
    let requests = script.iter().filter_map(|s| match s {
        Step::Request(r) => Some(r),
        Step::Control(_) => None,
    });
    for (sending, req) in rendered.requests.iter().zip(requests) {
        let Sending {
            stream,
            case: id,
            verdict,
            plain,
            after_maybe,
        } = sending;
        // RFC 9113 6.8: streams above GOAWAY's last id were not processed.
        if let Some((last, _)) = result.goaway {
            if *stream > last && counts.get(id).is_some_and(|n| *n > 0) {
                return Err(format!("stream {stream} forwarded, above GOAWAY's {last}"));
            }
        }
        // Whether it was read at all depends on a step before it.
        if *after_maybe && ended {
            continue;
        }
        let got = result.streams.get(stream);
        let what = format!(
            "stream {stream} (case {id}, {verdict:?}): {got:?}, {req:?}; connection: goaway {:?}, closed {}, PING answered {}",
            result.goaway, result.closed, result.last_ping_acked
        );
        let answered = got.and_then(|s| s.status.map(|status| (status, s)));
        match (verdict, answered) {
            // The connection's end may take in-flight requests with it.
            (_, None) if ended => {}
            (Verdict::Refuse | Verdict::RefuseOrEnd, None)
                if got.is_some_and(|s| s.reset.is_some()) => {}
            // CONNECT and TRACE are refused (501) before anything else.
            (Verdict::Refuse | Verdict::RefuseOrEnd, Some((status, _)))
                if (400..500).contains(&status)
                    || (status == 501 && matches!(req.method, "CONNECT" | "TRACE")) => {}
            (Verdict::Refuse | Verdict::RefuseOrEnd, _) => {
                return Err(format!("not refused: {what}"))
            }
            (Verdict::Answer, None) => return Err(format!("no answer: {what}")),
            (Verdict::Answer, Some((status, s))) => {
                let answer = Answer {
                    status,
                    head: s.head.clone(),
                    body: s.body.clone(),
                    cut: false,
                };
                judge(&answer, None, req.method, *id, &counts, &lab.tokens)
                    .map_err(|e| format!("{e}; {what}"))?;
                if *plain && status != 200 {
                    return Err(format!("a plain, allowed request was refused: {what}"));
                }
            }
            (Verdict::EndConnection, _) => {}
        }
    }
    Ok(())
}

#[test]
fn hand_built_http2_frames_fail_closed() {
    campaign(256, script(), async |lab, script| {
        run_frames_case(lab, &script).await
    });
}

// ---------------------------------------------------------------------------
// Floods.
// ---------------------------------------------------------------------------

/// A GET for the public `/status` route, as one header block.
fn status_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    encode_field(
        &mut block,
        &mut DynamicTable::new(),
        b":path",
        b"/status",
        Repr::StaticName,
    );
    encode_field(
        &mut block,
        &mut DynamicTable::new(),
        b":authority",
        b"gw.test",
        Repr::StaticName,
    );
    block
}

/// Writes `bytes` while reading the gateway's frames, until it ends the
/// connection or answers the last PING; returns the GOAWAY (if any), whether
/// the PING was answered, and how many streams it answered or reset.
async fn flood(addr: SocketAddr, bytes: Vec<u8>) -> (Option<(u32, h2::Reason)>, bool, usize) {
    let rendered = Rendered {
        bytes,
        requests: Vec::new(),
        ends: Ends::Maybe,
    };
    let result = converse(addr, &rendered).await.unwrap();
    (result.goaway, result.last_ping_acked, result.streams.len())
}

/// CVE-2023-44487: streams opened and reset at once, thousands of them in
/// a few writes. The connection is ended with `ENHANCE_YOUR_CALM` after a
/// few dozen, and (almost) none of them reaches the upstream.
#[test]
fn rapid_reset_flood_ends_the_connection() {
    let (runtime, lab) = lab();
    let mut bytes = PREFACE.to_vec();
    frame(&mut bytes, SETTINGS, 0, 0, &[]);
    let block = status_block();
    for n in 0..5_000u32 {
        let stream = 2 * n + 1;
        frame(
            &mut bytes,
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &block,
        );
        frame(&mut bytes, RST_STREAM, 0, stream, &8u32.to_be_bytes());
    }
    frame(&mut bytes, PING, 0, 0, &LAST_PING);
    let before = lab.world.upstream.count();
    let (goaway, pong, _) = runtime.block_on(flood(lab.gateway.addr, bytes));
    let forwarded = lab.world.upstream.count() - before;
    let (last, reason) = goaway.expect("the flood must end the connection with GOAWAY");
    assert_eq!(reason, h2::Reason::ENHANCE_YOUR_CALM);
    assert!(!pong, "the PING after the flood was answered");
    assert!(last < 200, "GOAWAY after stream {last} of 10 000");
    assert!(forwarded <= 100, "{forwarded} reset streams forwarded");
    runtime.block_on(fresh_client_served(&lab)).unwrap();
}

/// CVE-2024-27316 and kin: one header block that never ends, in 100 000
/// CONTINUATION frames that each add a field. The connection is ended with
/// `ENHANCE_YOUR_CALM` long before, and nothing is forwarded.
#[test]
fn continuation_flood_ends_the_connection() {
    let (runtime, lab) = lab();
    let mut bytes = PREFACE.to_vec();
    frame(&mut bytes, SETTINGS, 0, 0, &[]);
    frame(&mut bytes, HEADERS, END_STREAM, 1, &status_block());
    for _ in 0..100_000 {
        frame(&mut bytes, CONTINUATION, 0, 1, &[0x40, 1, b'x', 1, b'y']);
    }
    frame(&mut bytes, CONTINUATION, END_HEADERS, 1, &[]);
    frame(&mut bytes, PING, 0, 0, &LAST_PING);
    let before = lab.world.upstream.count();
    let (goaway, pong, streams) = runtime.block_on(flood(lab.gateway.addr, bytes));
    let (_, reason) = goaway.expect("the flood must end the connection with GOAWAY");
    assert_eq!(reason, h2::Reason::ENHANCE_YOUR_CALM);
    assert!(!pong && streams == 0, "the block was read to its end");
    assert_eq!(lab.world.upstream.count(), before);
    runtime.block_on(fresh_client_served(&lab)).unwrap();
}
