//! Authorization server metadata discovery (`auth::discovery::discover`,
//! RFC 8414 then OpenID Connect) against an in-process server on
//! 127.0.0.1 that answers with the fuzzed document, `{ISSUER}` in it
//! replaced by the issuer (`http://127.0.0.1:<port>`, which changes from run
//! to run). The first byte is flags: endpoints must be https (bit 0), the
//! RFC 8414 URL answers 404 (bit 1). The input as text also goes to
//! `metadata_urls`.
//!
//! Checks: metadata is used only from a JSON object whose `issuer` is
//! exactly the issuer (RFC 8414 3.3); a refusal names a document for another
//! issuer; an endpoint taken is one the document has, http(s), and https or
//! on this host when https is required; an unusable `jwks_uri` is not used;
//! `metadata_urls` gives the RFC 8414 URL, then the OpenID Connect one, both
//! on the issuer's scheme and authority.
#![no_main]

#[path = "common/json_server.rs"]
mod json_server;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::Empty;
use libfuzzer_sys::fuzz_target;
use scopegate::auth::discovery::{discover, metadata_urls, DiscoveryError};
use scopegate::proxy::client::{build_https_client, HttpsClient};
use serde_json::Value;

/// The document, and whether the RFC 8414 URL answers 404.
type Answer = (Bytes, bool);

struct Fixture {
    runtime: tokio::runtime::Runtime,
    issuer: String,
    answer: Arc<Mutex<Answer>>,
    client: HttpsClient<Empty<Bytes>>,
}

/// The document, or 404 at the RFC 8414 URL when that is asked.
fn answer(answer: &Mutex<Answer>, path: &str) -> (StatusCode, Bytes) {
    let (body, rfc8414_missing) = answer.lock().expect("answer").clone();
    if rfc8414_missing && path.starts_with("/.well-known/oauth-authorization-server") {
        (StatusCode::NOT_FOUND, body)
    } else {
        (StatusCode::OK, body)
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answer = Arc::new(Mutex::new((Bytes::new(), false)));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("listener");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let served = Arc::clone(&answer);
        runtime.spawn(json_server::serve(listener, move |path: &str| {
            self::answer(&served, path)
        }));
        let client = {
            let _entered = runtime.enter();
            build_https_client(None, Duration::from_secs(5), 1, false).expect("client")
        };
        Fixture {
            runtime,
            issuer,
            answer,
            client,
        }
    })
}

/// What the document says, read with serde_json's own (last member wins).
/// `None` also for JSON that `Value` cannot hold but the crate reads (a
/// member it ignores with a number out of `f64`'s range, `1e999`): such a
/// document is not judged.
fn document(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    serde_json::from_slice(body).ok()
}

fn on_loopback(uri: &Uri) -> bool {
    uri.host().is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn check_endpoint(uri: &Uri, published: Option<&Value>, https: bool) {
    let published = published
        .and_then(Value::as_str)
        .expect("an endpoint the document does not have");
    assert!(
        matches!(uri.scheme_str(), Some("http" | "https")),
        "{uri} from {published:?}"
    );
    assert!(uri.authority().is_some(), "{uri}");
    if https {
        assert!(
            uri.scheme_str() == Some("https") || on_loopback(uri),
            "plain http {uri} taken"
        );
    }
}

fn check_urls(issuer: &str) {
    // Config validation refuses an issuer with a query or fragment (RFC
    // 8414 2), which the OpenID Connect URL, appended, would land in.
    if issuer.contains(['?', '#']) {
        return;
    }
    let Ok(urls) = metadata_urls(issuer) else {
        return;
    };
    assert_eq!(urls.len(), 2, "{issuer:?}");
    let uri: Uri = issuer.parse().expect("parsed once");
    for url in &urls {
        assert_eq!(url.scheme_str(), uri.scheme_str(), "{issuer:?} -> {url}");
        assert_eq!(url.authority(), uri.authority(), "{issuer:?} -> {url}");
    }
    assert!(
        urls[0]
            .path()
            .starts_with("/.well-known/oauth-authorization-server"),
        "{issuer:?} -> {}",
        urls[0]
    );
    assert!(
        urls[1]
            .path()
            .ends_with("/.well-known/openid-configuration"),
        "{issuer:?} -> {}",
        urls[1]
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(body) {
        check_urls(text);
    }
    let fixture = fixture();
    let issuer = fixture.issuer.as_str();
    // `{ISSUER}` stands for the issuer, whose port changes.
    let text = String::from_utf8_lossy(body).replace("{ISSUER}", issuer);
    let body = Bytes::from(text);
    let https = flags & 1 != 0;
    *fixture.answer.lock().expect("answer") = (body.clone(), flags & 2 != 0);
    let found = fixture
        .runtime
        .block_on(discover(issuer, https, &fixture.client));
    let Some(doc) = document(&body) else {
        if found.is_ok() {
            assert!(
                body.trim_ascii_start().starts_with(b"{"),
                "metadata from {body:?}"
            );
        }
        return;
    };
    match found {
        Ok(metadata) => {
            assert_eq!(
                doc.get("issuer").and_then(Value::as_str),
                Some(issuer),
                "metadata for another issuer used"
            );
            if let Some(uri) = &metadata.jwks_uri {
                check_endpoint(uri, doc.get("jwks_uri"), https);
                assert!(metadata.unusable_jwks_uri.is_none());
            }
            if metadata.unusable_jwks_uri.is_some() {
                assert!(doc.get("jwks_uri").is_some_and(Value::is_string));
            }
            if let Some(uri) = &metadata.introspection_endpoint {
                check_endpoint(uri, doc.get("introspection_endpoint"), https);
            }
        }
        Err(DiscoveryError::Refused(why)) => {
            let named = doc.get("issuer").and_then(Value::as_str);
            assert!(
                named.is_some_and(|n| n != issuer),
                "refused {named:?}: {why}"
            );
        }
        Err(DiscoveryError::Unavailable(_)) => {}
    }
});
