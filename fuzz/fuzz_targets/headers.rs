//! Header hygiene (`proxy::headers`) on arbitrary header maps: the first
//! byte is flags (strip `Authorization`, from a trusted proxy, TLS, the
//! HTTP version for `Via`), then `name: value` lines.
//!
//! Checks, for `prepare_upstream_request` (a permitted request on its way
//! to the upstream): no hop-by-hop field is left but `Upgrade` with
//! `Connection: upgrade` for a WebSocket upgrade it reports (and `TE:
//! trailers`); no field the client's `Connection` names survives unless the
//! gateway sets it itself; the operator's removed names go in every
//! spelling; `X-Forwarded-For` is one line ending in the client's address;
//! every other field keeps its values in order; the map grows by at most
//! the three `X-Forwarded-*` fields. `add_via` appends this hop last. For
//! an answer (`take_connection_options`, `remove_hop_by_hop_from_answer`)
//! and trailers: the named options are no hop-by-hop names, nothing named
//! or hop-by-hop survives (but the answer's `Trailer`, without the named
//! fields).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{AUTHORIZATION, CONNECTION, COOKIE, HOST, TE, TRAILER, UPGRADE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scopegate::config::ForwardPolicy;
use scopegate::proxy::headers::{
    add_via, dashed_spelling, prepare_upstream_request, remove_hop_by_hop_from_answer,
    remove_hop_by_hop_from_trailers, take_connection_options, RemovedHeaders, X_FORWARDED_FOR,
    X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use scopegate::proxy::ClientInfo;

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

const REMOVED: [&str; 2] = ["x-user", "x-scopes"];
const REWRITTEN: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

fn parse(lines: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// The field names `Connection` lists (a reference reading: comma-separated
/// tokens, blanks trimmed, case-insensitive).
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a HeaderValue> {
    headers.get_all(name).iter().collect()
}

fn check_request(flags: u8, original: &HeaderMap) {
    let strip = flags & 1 != 0;
    let trusted = flags & 2 != 0;
    let tls = flags & 4 != 0;
    let ip = if flags & 32 != 0 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    };
    let policy = ForwardPolicy {
        strip_authorization: strip,
        cors_preflight: false,
        identity_headers: Vec::new(),
        remove_headers: RemovedHeaders::new(
            REMOVED.map(HeaderName::from_static),
            REWRITTEN.map(HeaderName::from_static),
        ),
    };
    let client = ClientInfo::new(ip, tls);
    let mut headers = original.clone();
    let upgrade =
        prepare_upstream_request(&mut headers, &policy, None, &client, None, trusted, None);

    let named = connection_tokens(original);
    let set_by_gateway = |name: &str| {
        [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "te",
        ]
        .contains(&name)
            || (upgrade && (name == "upgrade" || name == "connection"))
    };
    for name in headers.keys() {
        let name = name.as_str();
        assert!(
            !is_hop_by_hop(name) || set_by_gateway(name),
            "hop-by-hop {name} left: {headers:?}"
        );
        assert!(
            !named.iter().any(|n| n == name) || set_by_gateway(name),
            "{name} named in Connection survived: {original:?} -> {headers:?}"
        );
        let dashed = dashed_spelling(name);
        assert!(!REMOVED.contains(&dashed.as_str()), "{name} kept");
        assert!(
            !REWRITTEN.contains(&dashed.as_str()) || REWRITTEN.contains(&name),
            "{name} kept in another spelling"
        );
    }
    if upgrade {
        assert_eq!(values(&headers, &CONNECTION), ["upgrade"]);
        let asked = values(&headers, &UPGRADE);
        assert!(!asked.is_empty(), "an upgrade without Upgrade");
        assert!(asked.iter().all(|v| v
            .as_bytes()
            .to_ascii_lowercase()
            .windows(9)
            .any(|w| w == b"websocket")));
    } else {
        assert!(!headers.contains_key(CONNECTION) && !headers.contains_key(UPGRADE));
    }
    if let Some(te) = headers.get(TE) {
        assert_eq!(te, "trailers");
        assert_eq!(values(&headers, &TE).len(), 1);
    }
    if strip {
        assert!(!headers.contains_key(AUTHORIZATION));
    }
    let forwarded_for = values(&headers, &X_FORWARDED_FOR);
    assert_eq!(forwarded_for.len(), 1, "{headers:?}");
    let chain = forwarded_for[0].to_str().expect("ASCII");
    assert!(chain.ends_with(&ip.to_string()), "{chain}");
    let proto = values(&headers, &X_FORWARDED_PROTO);
    assert_eq!(proto.len(), 1);
    if !trusted {
        assert_eq!(proto[0], if tls { "https" } else { "http" });
        assert_eq!(headers.get(&X_FORWARDED_HOST), original.get(HOST));
    }
    assert!(!headers.contains_key(HOST));
    // Everything else passes as it came.
    for name in original.keys() {
        let n = name.as_str();
        let dashed = dashed_spelling(n);
        let touched = is_hop_by_hop(n)
            || named.iter().any(|t| t == n)
            || REMOVED.contains(&dashed.as_str())
            || REWRITTEN.contains(&dashed.as_str())
            || *name == COOKIE
            || *name == HOST
            || (strip && *name == AUTHORIZATION);
        if !touched {
            assert_eq!(
                values(&headers, name),
                values(original, name),
                "{n} changed"
            );
        }
    }
    assert!(
        headers.len() <= original.len() + 3,
        "{} fields from {}",
        headers.len(),
        original.len()
    );

    let version = match (flags >> 3) & 3 {
        0 => http::Version::HTTP_10,
        1 => http::Version::HTTP_11,
        2 => http::Version::HTTP_2,
        _ => http::Version::HTTP_3,
    };
    let vias = values(&headers, &VIA).len();
    add_via(&mut headers, version);
    let all = values(&headers, &VIA);
    assert_eq!(all.len(), vias + 1);
    assert!(all[vias].as_bytes().ends_with(b" scopegate"));
}

fn check_answer(original: &HeaderMap) {
    let named = connection_tokens(original);
    let mut headers = original.clone();
    let options = take_connection_options(&mut headers);
    if let Some(options) = &options {
        assert!(!options.is_empty());
        for option in options.iter() {
            assert!(!is_hop_by_hop(option.as_str()) && option.as_str() != "upgrade");
            assert!(named.iter().any(|n| n == option.as_str()));
        }
    }
    let upgrade = remove_hop_by_hop_from_answer(&mut headers);
    for name in headers.keys() {
        let n = name.as_str();
        let kept = *name == TRAILER || (upgrade && (*name == UPGRADE || *name == CONNECTION));
        assert!(!is_hop_by_hop(n) || kept, "{n} left in an answer");
        assert!(
            !named.iter().any(|t| t == n) || (upgrade && (*name == UPGRADE || *name == CONNECTION)),
            "{n} named in Connection left in an answer: {original:?} -> {headers:?}"
        );
    }
    // The Trailer header no longer announces a named field.
    for value in headers.get_all(TRAILER) {
        for field in value.as_bytes().split(|&b| b == b',') {
            let field = String::from_utf8_lossy(field.trim_ascii()).to_ascii_lowercase();
            assert!(
                !options
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|o| o.as_str() == field),
                "{field} still announced"
            );
        }
    }

    let mut trailers = original.clone();
    remove_hop_by_hop_from_trailers(&mut trailers);
    for name in trailers.keys() {
        let n = name.as_str();
        assert!(!is_hop_by_hop(n), "{n} left in trailers");
        assert!(
            !named.iter().any(|t| t == n),
            "{n} named in Connection left in trailers"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, lines)) = data.split_first() else {
        return;
    };
    let original = parse(lines);
    check_request(flags, &original);
    check_answer(&original);
});
