//! `issuer::clients::presented` (client credentials of a token,
//! introspection or revocation request: HTTP Basic with form-urlencoded id
//! and secret, RFC 6749 2.3.1, or the form body) on arbitrary
//! `Authorization` values and form bodies: never panics; what it accepts is
//! what the header or form says (a Basic answer re-encoded parses back to
//! itself); a refusal is `invalid_request` or `invalid_client`, the latter a
//! 401 with the Basic challenge; and any id and secret, form-urlencoded into
//! Basic, come back exactly (an empty secret as none).
#![no_main]

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use scopegate::issuer::clients::{presented, Presented};
use scopegate::issuer::OAuthError;

/// RFC 6749 2.3.1: each part form-urlencoded, then `id:secret` in base64.
fn basic(id: &str, secret: &str, scheme: &str) -> HeaderValue {
    let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let secret: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    HeaderValue::from_str(&format!(
        "{scheme} {}",
        STANDARD.encode(format!("{id}:{secret}"))
    ))
    .expect("base64 is a valid header value")
}

fn one_header(value: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    headers
}

fn check_refusal(e: &OAuthError) {
    match e.code {
        "invalid_request" => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
            assert!(!e.basic_challenge, "{e:?}");
        }
        "invalid_client" => {
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{e:?}");
            assert!(e.basic_challenge, "{e:?}");
        }
        other => panic!("unexpected refusal {other}: {e:?}"),
    }
}

fn same(a: &Presented, b: &Presented) -> bool {
    a.client_id == b.client_id && a.secret == b.secret && a.basic == b.basic
}

/// Any id and secret survive Basic's encoding, with or without a form
/// `client_id` that repeats the id.
fn round_trip(id: &str, secret: &str, scheme: &str) {
    let headers = one_header(basic(id, secret, scheme));
    let want = Presented {
        client_id: id.to_owned(),
        secret: (!secret.is_empty()).then(|| secret.to_owned()),
        basic: true,
    };
    let got = presented(&headers, &HashMap::new(), false)
        .unwrap_or_else(|e| panic!("{id:?}:{secret:?} refused: {e:?}"))
        .expect("Basic credentials are credentials");
    assert!(same(&got, &want), "{id:?}:{secret:?} -> {got:?}");
    // The form may name the same client beside Basic (RFC 6749 3.2.1)...
    let mut form = HashMap::from([("client_id".to_owned(), id.to_owned())]);
    let got = presented(&headers, &form, false)
        .unwrap_or_else(|e| panic!("{id:?} named twice refused: {e:?}"))
        .expect("credentials");
    assert!(same(&got, &want), "{id:?}:{secret:?} -> {got:?}");
    // ...but a second secret is a second method, and the query is no place.
    form.insert("client_secret".to_owned(), secret.to_owned());
    let e = presented(&headers, &form, false).expect_err("two methods");
    assert_eq!(e.code, "invalid_request");
    let e = presented(&headers, &HashMap::new(), true).expect_err("credentials in the query");
    assert_eq!(e.code, "invalid_request");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let second = lines.next().unwrap_or_default();
    let form_bytes = lines.next().unwrap_or_default();
    let id = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let secret = String::from_utf8_lossy(lines.next().unwrap_or_default());

    let scheme = ["Basic", "basic", "BASIC", "bAsIc"][usize::from(flags >> 6)];
    round_trip(&id, &secret, scheme);

    // Arbitrary headers and forms.
    let mut headers = HeaderMap::new();
    let mut values = 0;
    for (on, value) in [(flags & 1 != 0, first), (flags & 2 != 0, second)] {
        if let (true, Ok(value)) = (on, HeaderValue::from_bytes(value)) {
            headers.append(AUTHORIZATION, value);
            values += 1;
        }
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(form_bytes)
        .into_owned()
        .collect();
    let query_credentials = flags & 4 != 0;
    match presented(&headers, &form, query_credentials) {
        Err(e) => {
            check_refusal(&e);
            if query_credentials || values > 1 {
                assert_eq!(e.code, "invalid_request", "{e:?}");
            }
        }
        Ok(p) => {
            assert!(!query_credentials && values <= 1);
            match p {
                None => assert!(values == 0 && !form.contains_key("client_id")),
                Some(p) if p.basic => {
                    let value = headers
                        .get(AUTHORIZATION)
                        .expect("Basic came from the header");
                    assert!(value.as_bytes()[..6].eq_ignore_ascii_case(b"basic "));
                    assert!(p.secret.as_ref().is_none_or(|s| !s.is_empty()));
                    assert!(!form.contains_key("client_secret"));
                    if let Some(id) = form.get("client_id") {
                        assert_eq!(*id, p.client_id);
                    }
                    // Re-encoded, the credentials read back the same.
                    let again = one_header(basic(
                        &p.client_id,
                        p.secret.as_deref().unwrap_or(""),
                        "Basic",
                    ));
                    let back = presented(&again, &HashMap::new(), false)
                        .expect("re-encoded")
                        .expect("credentials");
                    assert!(same(&back, &p), "{p:?} -> {back:?}");
                }
                Some(p) => {
                    assert_eq!(values, 0);
                    assert_eq!(Some(&p.client_id), form.get("client_id"));
                    assert_eq!(p.secret.as_ref(), form.get("client_secret"));
                }
            }
        }
    }
});
