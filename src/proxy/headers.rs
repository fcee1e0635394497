//! Header hygiene between client and upstream: hop-by-hop removal (RFC 9110
//! 7.6.1), forwarding headers, and identity headers that only scopegate sets.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, COOKIE, HOST, MAX_FORWARDS, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::uri::Authority;
use http::HeaderMap;

use crate::auth::VerifiedToken;
use crate::config::ForwardPolicy;
use crate::proxy::request_id::{RequestId, X_REQUEST_ID};
use crate::proxy::tunnel::ConnectionHold;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 7.6.1 and the legacy ones). Header `i` is bit
/// `1 << i` of a presence mask ([`hop_by_hop_bit`]): one pass over a message's
/// header names tells which are present, and absent ones cost no lookup.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
const CONNECTION_BIT: u16 = 1 << 0;
const UPGRADE_BIT: u16 = 1 << 8;
const TRAILER_BIT: u16 = 1 << 6;

/// The bit of a hop-by-hop header name (lower case, as [`HeaderName`]s are),
/// 0 for any other name. A `match` rather than a search of [`HOP_BY_HOP`]:
/// 300 instructions a request less (callgrind); a test keeps the two agreed.
fn hop_by_hop_bit(name: &str) -> u16 {
    match name {
        "connection" => 1 << 0,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authenticate" => 1 << 3,
        "proxy-authorization" => 1 << 4,
        "te" => 1 << 5,
        "trailer" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "upgrade" => 1 << 8,
        _ => 0,
    }
}

/// Says that the connection ends with this HTTP/1 message (RFC 9112 9.6),
/// keeping the `upgrade` a 426 with `Upgrade` says (RFC 9110 7.8).
pub fn announce_close(headers: &mut HeaderMap) {
    let value = if headers.get(CONNECTION).is_some_and(|v| v == "upgrade") {
        "upgrade, close"
    } else {
        "close"
    };
    headers.insert(CONNECTION, HeaderValue::from_static(value));
}

/// Whether a message's `Transfer-Encoding`, if any, is `chunked` alone: the
/// one coding hyper undoes. Any other (`gzip, chunked`) would be passed on
/// with its header, which is hop-by-hop, gone and the coding not undone
/// (RFC 9112 6.1, 7).
pub fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(coding), None) => coding.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// Returns true if the message asked for a protocol upgrade, in which case the
/// `Upgrade` header is kept and `Connection: upgrade` restored.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    remove_hop_by_hop_but(headers, 0)
}

/// Whether the request's `Connection` header names `name`: such a field
/// is removed before the request goes on ([`remove_hop_by_hop`]), so the
/// upstream never sees it, whatever the gateway read in it. Compares
/// bytes, as the removal reads the names.
pub fn connection_names(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| {
            token
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
}

/// [`remove_hop_by_hop`] for an answer: its `Trailer` header (no hop-by-hop
/// header in RFC 9110 6.6.2) is kept, since hyper sends an HTTP/1.1 client
/// only the trailer fields it announces; request trailers are dropped, so a
/// request's goes.
pub fn remove_hop_by_hop_from_answer(headers: &mut HeaderMap) -> bool {
    remove_hop_by_hop_but(headers, TRAILER_BIT)
}

/// The fields an answer's `Connection` header names beyond the hop-by-hop
/// ones (`Connection: x-hop`), `None` when it names none (as nearly
/// always): RFC 9110 7.6.1 has them removed from the trailers too, which
/// arrive after the head, and from the `Trailer` header announcing them
/// (done here, so call it before the head's hop-by-hop removal).
pub fn take_connection_options(headers: &mut HeaderMap) -> Option<Box<[HeaderName]>> {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !token.eq_ignore_ascii_case(b"upgrade")
                && !HOP_BY_HOP
                    .iter()
                    .any(|name| token.eq_ignore_ascii_case(name.as_bytes()))
        })
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect();
    if named.is_empty() {
        return None;
    }
    if headers.contains_key(TRAILER) {
        let announced: Vec<&[u8]> = headers
            .get_all(TRAILER)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|field| {
                !field.is_empty()
                    && !named
                        .iter()
                        .any(|name| field.eq_ignore_ascii_case(name.as_str().as_bytes()))
            })
            .collect();
        let kept = HeaderValue::from_bytes(&announced.join(&b", "[..])).ok();
        headers.remove(TRAILER);
        if let Some(kept) = kept.filter(|v| !v.is_empty()) {
            headers.insert(TRAILER, kept);
        }
    }
    Some(named.into_boxed_slice())
}

/// [`remove_hop_by_hop`] for an answer's trailer fields, which no upgrade
/// comes with: an HTTP/1.1 upstream's chunked trailer may carry any field,
/// and `connection` or `keep-alive` sent on to an HTTP/2 client (RFC 9113
/// 8.2.2) made h2 reset the stream after its data, trailers (`grpc-status`)
/// lost.
pub fn remove_hop_by_hop_from_trailers(trailers: &mut HeaderMap) {
    if remove_hop_by_hop(trailers) {
        trailers.remove(CONNECTION);
        trailers.remove(UPGRADE);
    }
}

fn remove_hop_by_hop_but(headers: &mut HeaderMap, kept: u16) -> bool {
    let present = headers
        .keys()
        .fold(0, |mask, name| mask | hop_by_hop_bit(name.as_str()))
        & !kept;
    if present == 0 {
        return false;
    }
    let mut upgrade_requested = false;
    if present & CONNECTION_BIT != 0 {
        // The names are collected first (the header cannot be removed while
        // it is read). Usually the header lists only hop-by-hop names
        // (`keep-alive`) and nothing is allocated.
        let mut named: Vec<HeaderName> = Vec::new();
        // Read as bytes: a line with a byte past ASCII in it still names
        // the headers it lists.
        let tokens = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        for token in tokens {
            let hop_by_hop = HOP_BY_HOP
                .into_iter()
                .enumerate()
                .find(|(_, name)| token.eq_ignore_ascii_case(name.as_bytes()));
            if token.eq_ignore_ascii_case(b"upgrade") {
                upgrade_requested = true;
            } else if let Some((index, name)) = hop_by_hop {
                // Hop-by-hop names are removed below, if present; one kept
                // otherwise (an answer's `Trailer`) goes when named here.
                if kept & (1 << index) != 0 {
                    named.push(HeaderName::from_static(name));
                }
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                // A token that is no valid header name names nothing.
                named.push(name);
            }
        }
        headers.remove(CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.into_iter().enumerate() {
        let bit = 1 << index;
        if present & bit & !(CONNECTION_BIT | UPGRADE_BIT) != 0 {
            headers.remove(name);
        }
    }
    let upgrade = upgrade_requested && present & UPGRADE_BIT != 0;
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(UPGRADE);
    }
    upgrade
}

/// Removes every header `names` holds, in whatever spelling the request has
/// it. One binary search per header the request has, not one lookup per name
/// removed; nothing is allocated unless a header is removed.
fn remove_all(headers: &mut HeaderMap, names: &RemovedHeaders) {
    let mut found: Vec<HeaderName> = Vec::new();
    for key in headers.keys() {
        if let Ok(index) = names
            .0
            .binary_search_by(|removed| by_length_then_dashed_name(&removed.name, key))
        {
            let removed = &names.0[index];
            if !(removed.dashed_kept && removed.name == *key) {
                found.push(key.clone());
            }
        }
    }
    for key in found {
        headers.remove(key);
    }
}

/// Orders a (dashed) name of a set against a request's header name with its
/// `_` and `.` read as `-`.
fn by_length_then_dashed_name(name: &HeaderName, key: &HeaderName) -> std::cmp::Ordering {
    let (name, key) = (name.as_str().as_bytes(), key.as_str().as_bytes());
    name.len()
        .cmp(&key.len())
        .then_with(|| name.iter().copied().cmp(key.iter().map(|&b| dashed(b))))
}

/// A header name as CGI-style servers file it, `_` and `.` read as `-`:
/// the spelling config checks compare names in, as removal does.
pub fn dashed_spelling(name: &str) -> String {
    name.bytes().map(|b| char::from(dashed(b))).collect()
}

/// A header name's byte as CGI-style servers file it: `_` and `.` as `-`.
fn dashed(byte: u8) -> u8 {
    DASHED[usize::from(byte)]
}

/// [`dashed`] as a table: a load per byte of each name compared, where two
/// comparisons cost about 700 instructions a request (callgrind: 65 664 with
/// them, 64 930 with the table).
static DASHED: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        #[allow(clippy::cast_possible_truncation)]
        let b = byte as u8;
        table[byte] = if b == b'_' || b == b'.' { b'-' } else { b };
        byte += 1;
    }
    table
};

/// Client-sent headers a route removes before forwarding, in every spelling:
/// CGI-style servers (Rack and Puma, gunicorn, uWSGI) file `X-Auth_Subject`
/// and `x_auth_subject` under the same variable as `X-Auth-Subject`, and
/// PHP files `X-Auth.Subject` there too (it reads `.` in a variable name as
/// `_`). Kept
/// sorted by dashed name, so that each request header costs one binary
/// search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovedHeaders(Vec<Removed>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Removed {
    /// The name with every `_` as `-`.
    name: HeaderName,
    /// Whether the dashed spelling itself stays (scopegate reads and
    /// rewrites it, as `X-Forwarded-For`); its other spellings go.
    dashed_kept: bool,
}

impl RemovedHeaders {
    /// `names` removed in every spelling, and every spelling of `rewritten`
    /// but the dashed one, which scopegate rewrites itself.
    pub fn new(
        names: impl IntoIterator<Item = HeaderName>,
        rewritten: impl IntoIterator<Item = HeaderName>,
    ) -> Self {
        let dashed_name = |name: HeaderName| {
            if !name.as_str().contains(['_', '.']) {
                return Some(name);
            }
            HeaderName::from_bytes(dashed_spelling(name.as_str()).as_bytes()).ok()
        };
        let mut all: Vec<Removed> = names
            .into_iter()
            .filter_map(dashed_name)
            .map(|name| Removed {
                name,
                dashed_kept: false,
            })
            .chain(
                rewritten
                    .into_iter()
                    .filter_map(dashed_name)
                    .map(|name| Removed {
                        name,
                        dashed_kept: true,
                    }),
            )
            .collect();
        // A name removed in every spelling wins over the same name kept.
        all.sort_by(|a, b| {
            by_length_then_dashed_name(&a.name, &b.name).then(a.dashed_kept.cmp(&b.dashed_kept))
        });
        all.dedup_by(|later, first| later.name == first.name);
        Self(all)
    }

    /// The names removed in every spelling (dashed).
    pub fn iter(&self) -> impl Iterator<Item = &HeaderName> {
        self.0.iter().filter(|r| !r.dashed_kept).map(|r| &r.name)
    }
}

impl FromIterator<HeaderName> for RemovedHeaders {
    fn from_iter<I: IntoIterator<Item = HeaderName>>(names: I) -> Self {
        Self::new(names, [])
    }
}

/// Where a request came from, for the forwarding headers, and the client
/// connection's slot, which a tunnel it becomes keeps.
#[derive(Debug)]
pub struct ClientInfo {
    /// Whether the client connection used TLS.
    tls: bool,
    /// The peer address (an IPv4-mapped one as IPv4).
    ip: IpAddr,
    /// The peer address, rendered once per connection for `X-Forwarded-For`.
    address: HeaderValue,
    /// The connection's slot (`None` outside a server, as in benchmarks).
    hold: Option<Arc<ConnectionHold>>,
    /// Set when an answer closes the connection with the request's body
    /// unread: the rest is read and dropped before the socket is.
    lingers: std::sync::atomic::AtomicBool,
    /// The server's "shutting down" flag (`None` outside a server).
    leaving: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl ClientInfo {
    /// A client connection from `ip`, over TLS or not.
    pub fn new(ip: IpAddr, tls: bool) -> Self {
        // An IP address renders to ASCII digits, dots, colons and hex letters.
        // An IPv4 client of a dual-stack (`[::]`) listener arrives as
        // `::ffff:a.b.c.d`; the upstream's allow-lists know `a.b.c.d`.
        let ip = ip.to_canonical();
        let address = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            tls,
            ip,
            address,
            hold: None,
            lingers: std::sync::atomic::AtomicBool::new(false),
            leaving: None,
        }
    }

    /// The same client, of a server that sets `leaving` when it shuts down.
    pub fn of_server(self, leaving: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            leaving: Some(leaving),
            ..self
        }
    }

    /// Whether the server is shutting down: the client should take its
    /// next request elsewhere.
    pub fn server_leaving(&self) -> bool {
        self.leaving
            .as_ref()
            .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The connection ends with an answer while the client may still be
    /// sending a body: its connection is read on for a while before its
    /// socket closes (a lingering close, RFC 9112 9.6).
    pub fn linger_on_close(&self) {
        self.lingers
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Self::linger_on_close`] was called.
    pub fn lingers(&self) -> bool {
        self.lingers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same client, holding its connection's slot.
    pub fn holding(self, hold: Arc<ConnectionHold>) -> Self {
        Self {
            hold: Some(hold),
            ..self
        }
    }

    /// The peer's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The connection's slot, for a tunnel to keep.
    pub fn hold(&self) -> Option<Arc<ConnectionHold>> {
        self.hold.clone()
    }
}

/// An HTTP/2 client may split `cookie` into several fields; an HTTP/1.1
/// server expects one line, so they are joined with `"; "` (RFC 9113
/// 8.2.3), which is as good to an HTTP/2 upstream.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Whether the one `Upgrade` header asks for WebSocket (RFC 6455 4.1) alone.
pub(crate) fn asks_for_websocket(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(UPGRADE).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    }
}

/// `X-Forwarded-For` with the client's address appended: its lines are one
/// list (RFC 9110 5.3; a proxy in front, HAProxy's `option forwardfor`
/// among them, may add its own line), so all of them are kept, joined. A
/// list that is not visible ASCII is replaced by the address alone.
fn forwarded_for(headers: &HeaderMap, address: &HeaderValue) -> HeaderValue {
    let mut line: Vec<u8> = Vec::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        if prior.to_str().is_err() {
            return address.clone();
        }
        line.extend_from_slice(prior.as_bytes());
        line.extend_from_slice(b", ");
    }
    if line.is_empty() {
        return address.clone();
    }
    line.extend_from_slice(address.as_bytes());
    HeaderValue::from_bytes(&line).unwrap_or_else(|_| address.clone())
}

/// The one `X-Forwarded-Proto` a trusted proxy in front sent, if it is
/// `http` or `https`.
fn forwarded_scheme(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&X_FORWARDED_PROTO).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let scheme = value.to_str().ok()?.trim();
    if scheme.eq_ignore_ascii_case("https") {
        Some(HeaderValue::from_static("https"))
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(HeaderValue::from_static("http"))
    } else {
        None
    }
}

/// The one `X-Forwarded-Host` a trusted proxy in front sent, if it is a
/// host (and port).
fn forwarded_host(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&X_FORWARDED_HOST).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let authority: Authority = value.to_str().ok()?.trim().parse().ok()?;
    // No userinfo: `a@b` is no host an upstream should build links with.
    if authority.as_str().contains('@') {
        return None;
    }
    HeaderValue::from_str(authority.as_str()).ok()
}

/// The `Max-Forwards` a request carries (RFC 9110 7.6.2: `1*DIGIT`), if
/// its first line is one.
fn max_forwards(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(MAX_FORWARDS)?.as_bytes().trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Too many digits for a u64: as many forwards as can be.
    Some(
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX),
    )
}

/// Whether an OPTIONS request says `Max-Forwards: 0`: this gateway is its
/// final recipient and answers it itself (RFC 9110 7.6.2).
pub fn no_forwards_left(headers: &HeaderMap) -> bool {
    max_forwards(headers) == Some(0)
}

/// Counts this hop off an OPTIONS request's `Max-Forwards` before it goes
/// on (RFC 9110 7.6.2), so that a client tracing the chain with it gets its
/// answer from the hop it named.
pub fn count_forward(headers: &mut HeaderMap) {
    if let Some(left) = max_forwards(headers).filter(|&n| n > 0) {
        headers.insert(MAX_FORWARDS, HeaderValue::from(left - 1));
    }
}

/// Adds this hop to a forwarded request's `Via` (RFC 9110 7.6.3, which
/// every HTTP-to-HTTP gateway must send): the protocol the client's request
/// came in, and the pseudonym `scopegate`. The earlier hops' lines are kept.
pub fn add_via(headers: &mut HeaderMap, received: http::Version) {
    let hop = match received {
        http::Version::HTTP_2 => "2 scopegate",
        http::Version::HTTP_10 => "1.0 scopegate",
        http::Version::HTTP_09 => "0.9 scopegate",
        http::Version::HTTP_3 => "3 scopegate",
        _ => "1.1 scopegate",
    };
    headers.append(VIA, HeaderValue::from_static(hop));
}

/// Rewrites a permitted request's headers for the upstream. `authority` is
/// the request target's authority, which stands for the client's `Host` in
/// `X-Forwarded-Host` when there is none (HTTP/2 `:authority`). From a
/// trusted proxy (`trusted_proxies`), the scheme and host it forwarded are
/// kept: behind an ingress that ends TLS, the app must see `https`.
pub fn prepare_upstream_request(
    headers: &mut HeaderMap,
    policy: &ForwardPolicy,
    identity: Option<&VerifiedToken>,
    client: &ClientInfo,
    authority: Option<&Authority>,
    from_trusted_proxy: bool,
    request_id: Option<&RequestId>,
) -> bool {
    // Taken before hop-by-hop removal: `Connection: host` must not hide it.
    // A target's authority (absolute form, HTTP/2 `:authority`) wins over
    // `Host` (RFC 9112 3.2.2, RFC 9113 8.3.1).
    let host = headers.remove(HOST);
    let original_host = authority
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or(host);
    let (forwarded_scheme, forwarded_host) = if from_trusted_proxy {
        (forwarded_scheme(headers), forwarded_host(headers))
    } else {
        (None, None)
    };
    let original_host = forwarded_host.or(original_host);
    // The operator's removals first: a client's `X-Forwarded-For` that
    // `remove_headers` names is not joined into the list below.
    remove_all(headers, &policy.remove_headers);
    // Before hop-by-hop removal: `Connection: x-forwarded-for` must not
    // erase the chain a proxy in front built.
    let forwarded_for = forwarded_for(headers, &client.address);
    // `te: trailers` is the one TE value passed on: gRPC servers refuse a
    // request without it (and it is the only one HTTP/2 allows).
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let mut upgrade = remove_hop_by_hop(headers);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && !asks_for_websocket(headers) {
        // Only WebSocket is tunnelled. Another protocol (`h2c` above all)
        // would carry requests to the upstream past route matching and token
        // checks; the request goes on as an ordinary one.
        headers.remove(UPGRADE);
        headers.remove(CONNECTION);
        upgrade = false;
    }
    join_cookies(headers);
    if policy.strip_authorization {
        headers.remove(AUTHORIZATION);
    }

    // Room for what is added below and for `Host` (the pool's), at once:
    // a map sized for the client's few headers would otherwise grow (and
    // rehash) two or three times on the way. The inserts below cannot pass
    // the map's capacity limit (they would panic): requests of more than
    // `MAX_REQUEST_HEADERS` names were refused before (`check_framing`).
    let _ = headers.try_reserve(6 + policy.identity_headers.len());
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        forwarded_scheme
            .unwrap_or_else(|| HeaderValue::from_static(if client.tls { "https" } else { "http" })),
    );
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    // After hop-by-hop removal: `Connection: x-request-id` cannot drop it.
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), id.header());
    }

    if let Some(token) = identity {
        for (name, slot) in &policy.identity_headers {
            if let Some(Some(value)) = token.identity_values.get(*slot) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request_id::RequestIds;

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_forwarded_as_ipv4() {
        for (peer, forwarded) in [
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("10.1.2.3", "10.1.2.3"),
            ("2001:db8::1", "2001:db8::1"),
            ("::1", "::1"),
        ] {
            let ip: IpAddr = peer.parse().unwrap();
            assert_eq!(ClientInfo::new(ip, false).address, forwarded, "{peer}");
        }
    }

    #[test]
    fn removal_sets_of_any_size_remove_exactly_their_names() {
        for size in [0, 1, 64, 65, 128, 129, 300] {
            let set: RemovedHeaders = (0..size)
                .map(|i| HeaderName::try_from(format!("x-name-{i}")).unwrap())
                .collect();
            let mut headers = HeaderMap::new();
            for i in [0, 63, 64, 127, 128, 299, 1000] {
                headers.insert(
                    HeaderName::try_from(format!("x-name-{i}")).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            headers.insert("x-kept", HeaderValue::from_static("v"));
            remove_all(&mut headers, &set);
            for i in [0, 63, 64, 127, 128, 299, 1000] {
                let name = format!("x-name-{i}");
                assert_eq!(
                    headers.contains_key(&name),
                    i >= size,
                    "{name} with {size} names"
                );
            }
            assert!(headers.contains_key("x-kept"));
        }
    }

    #[test]
    fn every_spelling_of_a_removed_name_goes_and_rewritten_ones_keep_theirs() {
        let set = RemovedHeaders::new(
            [HeaderName::from_static("x-auth-subject")],
            [X_FORWARDED_FOR.clone()],
        );
        let mut headers = HeaderMap::new();
        for name in [
            "x-auth-subject",
            "x_auth_subject",
            "x-auth_subject",
            "x_auth-subject",
            "x.auth.subject",
            "x-auth.subject",
            "x-forwarded-for",
            "x.forwarded.for",
            "x_forwarded_for",
            "x-forwarded_for",
            "x-auth-subjects",
            "x-auth-subjec",
        ] {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        remove_all(&mut headers, &set);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["x-auth-subjec", "x-auth-subjects", "x-forwarded-for"]
        );
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, x-auth-subject"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-auth-subject", HeaderValue::from_static("spoof"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!remove_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn announcing_close_keeps_an_upgrade() {
        let mut h = HeaderMap::new();
        announce_close(&mut h);
        assert_eq!(h.get(CONNECTION).unwrap(), "close");
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        announce_close(&mut h);
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade, close");
    }

    /// A `Connection` line with a byte past ASCII (an obs-text token) still
    /// names the headers it lists.
    #[test]
    fn a_connection_line_past_ascii_still_names_its_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_bytes(b"x-secret, \xe9t\xe9, upgrade").unwrap(),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        assert!(remove_hop_by_hop(&mut h));
        assert!(!h.contains_key("x-secret"), "{h:?}");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn hop_by_hop_bits_follow_the_name_list() {
        for (index, name) in HOP_BY_HOP.into_iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << index, "{name}");
        }
        assert_eq!(hop_by_hop_bit("x-keep"), 0);
        assert_eq!(hop_by_hop_bit("connection"), CONNECTION_BIT);
        assert_eq!(hop_by_hop_bit("trailer"), TRAILER_BIT);
        assert_eq!(hop_by_hop_bit("upgrade"), UPGRADE_BIT);
    }

    #[test]
    fn an_answers_trailer_header_goes_only_when_its_connection_header_names_it() {
        for (connection, kept) in [
            (None, true),
            (Some("keep-alive"), true),
            (Some("Trailer"), false),
            (Some("keep-alive, trailer, x-hop"), false),
        ] {
            let mut answer = HeaderMap::new();
            answer.insert("trailer", HeaderValue::from_static("x-checksum"));
            answer.insert("x-hop", HeaderValue::from_static("1"));
            if let Some(connection) = connection {
                answer.insert(CONNECTION, HeaderValue::from_str(connection).unwrap());
            }
            remove_hop_by_hop_from_answer(&mut answer);
            assert_eq!(answer.contains_key("trailer"), kept, "{connection:?}");
            assert!(!answer.contains_key(CONNECTION));
            let mut request = answer.clone();
            request.insert("trailer", HeaderValue::from_static("x-checksum"));
            remove_hop_by_hop(&mut request);
            assert!(!request.contains_key("trailer"), "{connection:?}");
        }
    }

    #[test]
    fn upgrade_is_kept_when_requested() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(remove_hop_by_hop(&mut h));
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    /// Each hop-by-hop field is removed when it is the message's only one
    /// (a lone `Connection` with what it names, a lone `Upgrade`): a mask
    /// test that only held with several present would let it reach the
    /// upstream.
    #[test]
    fn a_lone_hop_by_hop_header_is_removed_too() {
        for name in HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x-secret"));
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            assert!(!remove_hop_by_hop(&mut h), "{name}");
            assert!(!h.contains_key(name), "{name}: {h:?}");
            assert!(h.contains_key("x-keep"), "{name}: {h:?}");
            // What `Connection` names goes with it.
            assert_eq!(h.contains_key("x-secret"), name != "connection", "{name}");
        }
    }

    /// `Connection: upgrade` without an `Upgrade` header asks for no
    /// upgrade (RFC 9110 7.8): nothing is kept for one, in a request or
    /// an answer.
    #[test]
    fn connection_upgrade_without_an_upgrade_header_is_no_upgrade() {
        for answer in [false, true] {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            let upgrade = if answer {
                remove_hop_by_hop_from_answer(&mut h)
            } else {
                remove_hop_by_hop(&mut h)
            };
            assert!(!upgrade, "answer: {answer}");
            assert!(h.is_empty(), "answer: {answer}: {h:?}");
        }
    }

    /// An upgrade request keeps its `Upgrade` header when other hop-by-hop
    /// fields (`Keep-Alive`, `TE`) come with it: they go, it stays.
    #[test]
    fn an_upgrade_keeps_its_header_beside_other_hop_by_hop_fields() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(remove_hop_by_hop(&mut h));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    /// An answer's connection options are the fields its `Connection`
    /// names beyond the hop-by-hop ones, which are removed anyway; with
    /// none such there is nothing to take (and nothing allocated), and the
    /// `Trailer` header keeps only the fields not named.
    #[test]
    fn connection_options_are_the_named_fields_beyond_the_hop_by_hop_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, Trailer, TE"),
        );
        h.insert(TRAILER, HeaderValue::from_static("x-checksum"));
        assert_eq!(take_connection_options(&mut h), None);
        assert_eq!(h[TRAILER], "x-checksum");

        h.append(CONNECTION, HeaderValue::from_static("X-Hop,x-other"));
        h.insert(TRAILER, HeaderValue::from_static("x-hop, X-Checksum,"));
        let named = take_connection_options(&mut h).unwrap();
        assert_eq!(named.as_ref(), ["x-hop", "x-other"]);
        assert_eq!(h[TRAILER], "X-Checksum");

        h.insert(TRAILER, HeaderValue::from_static("X-Other"));
        assert!(take_connection_options(&mut h).is_some());
        assert!(!h.contains_key(TRAILER), "{h:?}");
    }

    /// Trailer fields lose the hop-by-hop ones, `Connection` and `Upgrade`
    /// too when they read as an upgrade (no trailer switches protocols):
    /// `connection` or `keep-alive` in an HTTP/2 client's trailers makes
    /// h2 reset the stream.
    #[test]
    fn hop_by_hop_trailer_fields_go_even_when_they_ask_for_an_upgrade() {
        let mut t = HeaderMap::new();
        t.insert(CONNECTION, HeaderValue::from_static("upgrade, x-hop"));
        t.insert(UPGRADE, HeaderValue::from_static("websocket"));
        t.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        t.insert("x-hop", HeaderValue::from_static("1"));
        t.insert("grpc-status", HeaderValue::from_static("0"));
        remove_hop_by_hop_from_trailers(&mut t);
        let left: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["grpc-status"]);
    }

    /// `chunked` alone, in any case and spacing, is the one coding hyper
    /// undoes; a coding before it, in the same line or another, is not
    /// (it would reach the client undone, its header gone).
    #[test]
    fn only_chunked_alone_counts_as_only_chunked() {
        for (lines, only) in [
            (&[][..], true),
            (&["chunked"][..], true),
            (&[" Chunked "][..], true),
            (&["gzip, chunked"][..], false),
            (&["gzip", "chunked"][..], false),
            (&["gzip"][..], false),
        ] {
            let mut h = HeaderMap::new();
            for &line in lines {
                h.append(TRANSFER_ENCODING, HeaderValue::from_static(line));
            }
            assert_eq!(only_chunked(&h), only, "{lines:?}");
        }
    }

    /// `connection_names` reads every `Connection` line as a list of
    /// tokens, without regard to case, and matches whole tokens only: a
    /// WebDAV `Depth` that `Connection` names never reaches the upstream.
    #[test]
    fn connection_names_matches_whole_tokens_of_every_line() {
        let depth = HeaderName::from_static("depth");
        let mut h = HeaderMap::new();
        assert!(!connection_names(&h, &depth));
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, depths"));
        assert!(!connection_names(&h, &depth));
        h.append(CONNECTION, HeaderValue::from_static("close ,DEPTH"));
        assert!(connection_names(&h, &depth));
    }

    /// Only one `Upgrade` line asking for WebSocket alone is tunnelled:
    /// another protocol (`h2c` above all) would carry requests to the
    /// upstream past route matching and token checks.
    #[test]
    fn only_websocket_alone_asks_for_websocket() {
        for (lines, websocket) in [
            (&[][..], false),
            (&["websocket"][..], true),
            (&[" WebSocket "][..], true),
            (&["h2c"][..], false),
            (&["websocket, h2c"][..], false),
            (&["websocket", "websocket"][..], false),
        ] {
            let mut h = HeaderMap::new();
            for &line in lines {
                h.append(UPGRADE, HeaderValue::from_static(line));
            }
            assert_eq!(asks_for_websocket(&h), websocket, "{lines:?}");
        }
    }

    /// A request's `X-Forwarded-For` lines are one list: the client's
    /// address goes at its end, after every earlier hop; a list that is not
    /// visible ASCII is replaced by the address alone.
    #[test]
    fn x_forwarded_for_appends_the_client_to_every_line_a_proxy_sent() {
        let address = HeaderValue::from_static("192.0.2.1");
        for (lines, forwarded) in [
            (&[][..], "192.0.2.1"),
            (&["203.0.113.7"][..], "203.0.113.7, 192.0.2.1"),
            (
                &["203.0.113.7, 10.0.0.1", "10.0.0.2"][..],
                "203.0.113.7, 10.0.0.1, 10.0.0.2, 192.0.2.1",
            ),
        ] {
            let mut h = HeaderMap::new();
            for &line in lines {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_static(line));
            }
            assert_eq!(forwarded_for(&h, &address), forwarded, "{lines:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"203.0.113.7, \xe9vil").unwrap(),
        );
        assert_eq!(forwarded_for(&h, &address), "192.0.2.1");
    }

    /// A trusted proxy's `X-Forwarded-Proto` is kept only when it sent one
    /// line saying `http` or `https`; anything else is no scheme.
    #[test]
    fn a_forwarded_scheme_is_one_line_of_http_or_https() {
        assert_kept_lines(
            &X_FORWARDED_PROTO,
            forwarded_scheme,
            &[
                (&[], None),
                (&["https"], Some("https")),
                (&[" HTTP "], Some("http")),
                (&["javascript"], None),
                (&["https", "http"], None),
            ],
        );
    }

    /// For each case, `read` of a map holding `lines` of `name` gives the
    /// expected value.
    fn assert_kept_lines(
        name: &HeaderName,
        read: fn(&HeaderMap) -> Option<HeaderValue>,
        cases: &[(&[&'static str], Option<&str>)],
    ) {
        for &(lines, kept) in cases {
            let mut h = HeaderMap::new();
            for &line in lines {
                h.append(name, HeaderValue::from_static(line));
            }
            assert_eq!(
                read(&h).as_ref().map(|v| v.to_str().unwrap()),
                kept,
                "{name}: {lines:?}"
            );
        }
    }

    /// A trusted proxy's `X-Forwarded-Host` is kept only when it sent one
    /// line holding a host (and port) without userinfo.
    #[test]
    fn a_forwarded_host_is_one_line_of_a_host_without_userinfo() {
        assert_kept_lines(
            &X_FORWARDED_HOST,
            forwarded_host,
            &[
                (&[], None),
                (&["api.example.com:8443"], Some("api.example.com:8443")),
                (&[" api.example.com "], Some("api.example.com")),
                (&["user@api.example.com"], None),
                (&["a b"], None),
                (&["api.example.com", "evil.example"], None),
            ],
        );
    }

    /// `Max-Forwards` is `1*DIGIT`: zero (in any spacing) leaves no forward
    /// to this gateway; a value that is not digits names no count.
    #[test]
    fn only_a_max_forwards_of_zero_leaves_no_forwards() {
        for (value, none_left) in [
            (None, false),
            (Some("0"), true),
            (Some(" 0 "), true),
            (Some("00"), true),
            (Some("1"), false),
            (Some("10"), false),
            (Some(""), false),
            (Some("-0"), false),
            (Some("0x1"), false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(value) = value {
                h.insert(MAX_FORWARDS, HeaderValue::from_static(value));
            }
            assert_eq!(no_forwards_left(&h), none_left, "{value:?}");
        }
    }

    /// Counting a hop takes one off a positive `Max-Forwards` (one too
    /// large for a u64 counts as the most there can be) and leaves zero,
    /// a value that is no count, or none as it was.
    #[test]
    fn counting_a_forward_takes_one_off_a_positive_max_forwards_only() {
        for (value, counted) in [
            (None, None),
            (Some("3"), Some("2")),
            (Some(" 1 "), Some("0")),
            (Some("0"), Some("0")),
            (
                Some("99999999999999999999999"),
                Some("18446744073709551614"),
            ),
            (Some("many"), Some("many")),
        ] {
            let mut h = HeaderMap::new();
            if let Some(value) = value {
                h.insert(MAX_FORWARDS, HeaderValue::from_static(value));
            }
            count_forward(&mut h);
            assert_eq!(
                h.get(MAX_FORWARDS).map(|v| v.to_str().unwrap()),
                counted,
                "{value:?}"
            );
        }
    }

    /// `Via` gets a line naming this hop with the protocol the client's
    /// request came in, after the lines of the hops before it.
    #[test]
    fn via_names_this_hop_with_the_version_the_request_came_in() {
        for (version, hop) in [
            (http::Version::HTTP_09, "0.9 scopegate"),
            (http::Version::HTTP_10, "1.0 scopegate"),
            (http::Version::HTTP_11, "1.1 scopegate"),
            (http::Version::HTTP_2, "2 scopegate"),
            (http::Version::HTTP_3, "3 scopegate"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(VIA, HeaderValue::from_static("1.1 edge"));
            add_via(&mut h, version);
            let lines: Vec<&str> = h.get_all(VIA).iter().map(|v| v.to_str().unwrap()).collect();
            assert_eq!(lines, ["1.1 edge", hop], "{version:?}");
        }
    }

    /// An HTTP/2 client's split `cookie` fields reach the upstream as one
    /// line joined with `"; "`; a single line is left as it is.
    #[test]
    fn split_cookie_fields_are_joined_into_one_line() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), ["a=1"]);
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(
            h.get_all(COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
    }

    fn forward_policy(strip_authorization: bool, removed: &[&'static str]) -> ForwardPolicy {
        ForwardPolicy {
            strip_authorization,
            cors_preflight: false,
            identity_headers: Vec::new(),
            remove_headers: removed
                .iter()
                .map(|&name| HeaderName::from_static(name))
                .collect(),
        }
    }

    fn client_ip() -> ClientInfo {
        ClientInfo::new("192.0.2.1".parse().unwrap(), false)
    }

    /// Only a WebSocket upgrade is passed on as one: an `h2c` (or any
    /// other) upgrade would carry requests past route matching and token
    /// checks, so it goes on as an ordinary request, its `Upgrade` and
    /// `Connection` gone.
    #[test]
    fn a_prepared_request_keeps_an_upgrade_only_to_websocket() {
        for (protocol, upgrade) in [("websocket", true), ("h2c", false)] {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(UPGRADE, HeaderValue::from_static(protocol));
            let upgraded = prepare_upstream_request(
                &mut h,
                &forward_policy(false, &[]),
                None,
                &client_ip(),
                None,
                false,
                None,
            );
            assert_eq!(upgraded, upgrade, "{protocol}");
            assert_eq!(h.contains_key(UPGRADE), upgrade, "{protocol}: {h:?}");
            assert_eq!(h.contains_key(CONNECTION), upgrade, "{protocol}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let upgraded = prepare_upstream_request(
            &mut h,
            &forward_policy(false, &[]),
            None,
            &client_ip(),
            None,
            false,
            None,
        );
        assert!(!upgraded, "an Upgrade that Connection does not name");
        assert!(!h.contains_key(UPGRADE), "{h:?}");
    }

    /// From a client not trusted as a proxy, the forwarding headers are
    /// the gateway's: its `X-Forwarded-Proto` and `X-Forwarded-Host` are
    /// replaced, its `X-Forwarded-For` is appended to even when its
    /// `Connection` names it, headers a route removes go in every
    /// spelling, hop-by-hop ones go but `te: trailers`, and the request id
    /// is set.
    #[test]
    fn a_prepared_request_carries_the_gateways_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("gw.test"));
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-forwarded-for, x-request-id"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("spoofed"));
        h.insert("x_auth_subject", HeaderValue::from_static("mallory"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        let id = RequestIds::new().unwrap().assign(&h, || false);
        let upgraded = prepare_upstream_request(
            &mut h,
            &forward_policy(true, &["x-auth-subject"]),
            None,
            &client_ip(),
            None,
            false,
            Some(&id),
        );
        assert!(!upgraded);
        let mut left: Vec<(&str, &str)> = h
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                ("cookie", "a=1; b=2"),
                ("te", "trailers"),
                ("x-forwarded-for", "203.0.113.7, 192.0.2.1"),
                ("x-forwarded-host", "gw.test"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", id.as_str()),
            ]
        );
    }

    /// From a trusted proxy, the scheme and host it forwarded are kept;
    /// without them, the request target's authority wins over `Host`, and
    /// a request with neither has no `X-Forwarded-Host`.
    #[test]
    fn a_prepared_request_keeps_a_trusted_proxys_scheme_and_host() {
        let authority: Authority = "target.test:8080".parse().unwrap();
        for (trusted, forwarded, authority, host, proto) in [
            (true, true, None, Some("api.example.com"), "https"),
            (
                false,
                true,
                Some(&authority),
                Some("target.test:8080"),
                "http",
            ),
            (
                true,
                false,
                Some(&authority),
                Some("target.test:8080"),
                "http",
            ),
            (true, false, None, Some("gw.test"), "http"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static("gw.test"));
            if forwarded {
                h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
                h.insert(
                    &X_FORWARDED_HOST,
                    HeaderValue::from_static("api.example.com"),
                );
            }
            prepare_upstream_request(
                &mut h,
                &forward_policy(false, &[]),
                None,
                &client_ip(),
                authority,
                trusted,
                None,
            );
            let case = format!("trusted {trusted}, forwarded {forwarded}, {authority:?}");
            assert_eq!(h[&X_FORWARDED_PROTO], proto, "{case}");
            assert_eq!(
                h.get(&X_FORWARDED_HOST).map(|v| v.to_str().unwrap()),
                host,
                "{case}"
            );
            assert!(!h.contains_key(HOST), "{case}");
        }
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        prepare_upstream_request(
            &mut h,
            &forward_policy(false, &[]),
            None,
            &client_ip(),
            None,
            false,
            None,
        );
        assert!(!h.contains_key(&X_FORWARDED_HOST), "{h:?}");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    /// A client of a server sees the server start leaving, keeps its
    /// connection's slot for a tunnel, and remembers a lingering close; a
    /// client outside a server (a benchmark's) has no slot and sees no
    /// server leave.
    #[test]
    fn a_servers_client_sees_it_leave_and_holds_its_connection_slot() {
        let bare = client_ip();
        assert_eq!(bare.ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(!bare.server_leaving());
        assert!(bare.hold().is_none());
        assert!(!bare.lingers());
        bare.linger_on_close();
        assert!(bare.lingers());

        let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let open = prometheus::IntGauge::new("open_connections", "open").unwrap();
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let hold = Arc::new(ConnectionHold::new(slot, open, stopping));
        let client = client_ip()
            .of_server(Arc::clone(&leaving))
            .holding(Arc::clone(&hold));
        assert!(!client.server_leaving());
        leaving.store(true, std::sync::atomic::Ordering::Release);
        assert!(client.server_leaving());
        assert!(client.hold().is_some_and(|h| Arc::ptr_eq(&h, &hold)));
    }

    /// A removal set lists the names it removes in every spelling (dashed),
    /// not those whose dashed spelling scopegate rewrites itself.
    #[test]
    fn a_removal_set_lists_only_the_names_removed_in_every_spelling() {
        let set = RemovedHeaders::new(
            [HeaderName::from_static("x-auth_subject")],
            [X_FORWARDED_FOR.clone()],
        );
        let listed: Vec<&str> = set.iter().map(HeaderName::as_str).collect();
        assert_eq!(listed, ["x-auth-subject"]);
    }

    /// A lone `cookie` line is passed on as it is, the same value with the
    /// same marks: there is nothing to join.
    #[test]
    fn a_lone_cookie_line_keeps_its_never_index_mark() {
        let mut value = HeaderValue::from_static("session=s3cr3t");
        value.set_sensitive(true);
        let mut h = HeaderMap::new();
        h.insert(COOKIE, value);
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1, "{h:?}");
        assert_eq!(h[COOKIE], "session=s3cr3t");
        assert!(h[COOKIE].is_sensitive(), "{h:?}");
    }

    /// A route may set more identity headers than the six fields the
    /// gateway adds itself (the map is sized for both at once): each the
    /// token has a value for is set, and one it has none for is absent,
    /// whatever spelling of it the client sent.
    #[test]
    fn every_identity_header_of_a_route_comes_from_the_token_alone() {
        let names: Vec<HeaderName> = (0..8)
            .map(|i| HeaderName::try_from(format!("x-id-{i}")).unwrap())
            .collect();
        let policy = ForwardPolicy {
            identity_headers: names.iter().cloned().zip(0..).collect(),
            remove_headers: names.iter().cloned().collect(),
            ..forward_policy(false, &[])
        };
        // Claims c0 to c6 hold v0 to v6; c7 is absent.
        let claims: serde_json::Map<String, serde_json::Value> = (0..7)
            .map(|i| (format!("c{i}"), format!("v{i}").into()))
            .collect();
        let claim_names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let token = crate::auth::build_verified(
            0,
            &claims,
            crate::auth::Scopes::default(),
            0,
            0,
            std::time::Instant::now(),
            &claim_names,
        );
        let mut h = HeaderMap::new();
        h.insert("x-id-0", HeaderValue::from_static("spoofed"));
        h.insert("x_id_7", HeaderValue::from_static("spoofed"));
        h.insert("x-id-7", HeaderValue::from_static("spoofed"));
        prepare_upstream_request(
            &mut h,
            &policy,
            Some(&token),
            &client_ip(),
            None,
            false,
            None,
        );
        for (i, name) in names.iter().enumerate() {
            let expected = (i < 7).then(|| format!("v{i}"));
            assert_eq!(
                h.get(name).map(|v| v.to_str().unwrap().to_owned()),
                expected,
                "{name}"
            );
        }
        assert!(!h.contains_key("x_id_7"), "{h:?}");
    }
}
