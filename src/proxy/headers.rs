//! Header hygiene between client and upstream: hop-by-hop removal (RFC 9110
//! 7.6.1), forwarding headers, and identity headers that only scopegate sets.

use std::net::IpAddr;

use std::fmt::Write as _;

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

use crate::auth::VerifiedToken;
use crate::config::ForwardPolicy;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// Returns true if the message asked for a protocol upgrade, in which case the
/// `Upgrade` header is kept and `Connection: upgrade` restored.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let mut upgrade_requested = false;
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| {
                let token = token.trim();
                if token.eq_ignore_ascii_case("upgrade") {
                    upgrade_requested = true;
                }
                HeaderName::from_bytes(token.as_bytes()).ok()
            })
            .collect();
        for name in named {
            if name != UPGRADE || !upgrade_requested {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    let upgrade = upgrade_requested && headers.contains_key(UPGRADE);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
    upgrade
}

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// Peer address of the client connection.
    pub ip: IpAddr,
    /// Whether the client connection used TLS.
    pub tls: bool,
}

/// Rewrites a permitted request's headers for the upstream. `original_host` is
/// the client's `Host` (or `:authority`).
pub fn prepare_upstream_request(
    headers: &mut HeaderMap,
    policy: &ForwardPolicy,
    identity: Option<&VerifiedToken>,
    client: ClientInfo,
    original_host: Option<HeaderValue>,
) -> bool {
    let upgrade = remove_hop_by_hop(headers);
    for name in &policy.remove_headers {
        headers.remove(name);
    }
    if policy.strip_authorization {
        headers.remove(AUTHORIZATION);
    }
    headers.remove(HOST);

    // Only the first X-Forwarded-For line is kept (as before); the client's
    // address is appended without going through `format!`.
    let mut xff = String::with_capacity(64);
    if let Some(prior) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        xff.push_str(prior);
        xff.push_str(", ");
    }
    let _ = write!(xff, "{}", client.ip);
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(xff) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };

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
    fn upgrade_is_kept_when_requested() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(remove_hop_by_hop(&mut h));
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }
}
