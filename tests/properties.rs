//! Property tests through the public API: the bearer parser against an
//! independent RFC 6750 reference, hop-by-hop header removal against an
//! independent RFC 9110 reference, path spellings that must converge (or be
//! refused), and token lifetimes: a token accepted once stays accepted until
//! `exp` (plus leeway) and is never accepted after, both in
//! `auth::jwt::check_lifetime` and through a real `Authenticator`.
//!
//! The canonicaliser's idempotence and output shape are properties in
//! `src/routes/canonical.rs`; the ones here add what those do not cover.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::Cell;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use scopegate::admin::metrics::Metrics;
use scopegate::auth::bearer::{self, MAX_TOKEN_LEN};
use scopegate::auth::jwt::{check_lifetime, TokenError};
use scopegate::auth::Authenticator;
use scopegate::demo::SigningKey;
use scopegate::error::GatewayError;
use scopegate::proxy::headers::remove_hop_by_hop;
use scopegate::routes::canonicalize;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// Bearer extraction (RFC 6750 2.1).
// ---------------------------------------------------------------------------

/// The reference: `"Bearer" 1*SP b64token`, scheme case-insensitive, at most
/// `MAX_TOKEN_LEN` token bytes, where
/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// A two-state scan, written independently of the implementation.
fn reference(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 {
        return None;
    }
    let (scheme, token) = value.split_at(7);
    let expected = b"bearer ";
    for (got, want) in scheme.iter().zip(expected) {
        if got.to_ascii_lowercase() != *want {
            return None;
        }
    }
    // `"Bearer" 1*SP b64token` (RFC 6750 2.1).
    let spaces = token.iter().take_while(|&&b| b == b' ').count();
    let token = &token[spaces..];
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut token_chars = 0usize;
    let mut in_padding = false;
    for &b in token {
        let is_token_char = matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9')
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        if b == b'=' {
            in_padding = true;
        } else if is_token_char && !in_padding {
            token_chars += 1;
        } else {
            return None;
        }
    }
    (token_chars >= 1).then_some(token)
}

/// The reference for refusals: a value whose scheme (up to the first space
/// or tab) is an RFC 9110 token other than `bearer` is another scheme, not
/// bearer credentials (RFC 6750 3.1); any other refusal is malformed.
fn other_scheme(value: &[u8]) -> bool {
    let scheme: Vec<u8> = value
        .iter()
        .copied()
        .take_while(|&b| b != b' ' && b != b'\t')
        .collect();
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !scheme.is_empty()
        && !scheme.eq_ignore_ascii_case(b"bearer")
        && scheme.iter().all(|&b| tchar(b))
}

fn assert_matches_reference(value: &[u8]) -> Result<(), TestCaseError> {
    match (bearer::parse(value), reference(value)) {
        (Ok(token), Some(expected)) => prop_assert_eq!(token.as_bytes(), expected),
        (Err(e), None) => prop_assert!(
            if other_scheme(value) {
                matches!(e, GatewayError::OtherScheme)
            } else {
                matches!(e, GatewayError::InvalidRequest(_))
            },
            "{:?}: {:?}",
            value,
            e
        ),
        (got, want) => prop_assert!(false, "{:?}: parse {:?}, reference {:?}", value, got, want),
    }
    Ok(())
}

/// Header values built from the pieces that matter: scheme spellings and
/// separators, token characters, `=`, and characters outside b64token.
fn bearer_like() -> impl Strategy<Value = Vec<u8>> {
    let scheme = prop_oneof![
        Just(b"Bearer ".to_vec()),
        Just(b"bearer ".to_vec()),
        Just(b"BEARER ".to_vec()),
        Just(b"bEaReR ".to_vec()),
        Just(b"Bearer".to_vec()),
        Just(b"Bearer  ".to_vec()),
        Just(b"Bearer   ".to_vec()),
        Just(b"Bearer \t".to_vec()),
        Just(b"Bearer\t".to_vec()),
        Just(b"Bearer=".to_vec()),
        Just(b"Basic ".to_vec()),
        Just(b"Bearerx".to_vec()),
        Just(b"DPoP ".to_vec()),
        Just(b"Basic".to_vec()),
        Just(b"B@sic ".to_vec()),
        Just(b" Bearer ".to_vec()),
        Just(Vec::new()),
    ];
    let piece = prop_oneof![
        4 => proptest::collection::vec(
            proptest::sample::select(
                b"ABCXYZabcxyz0189-._~+/".to_vec()
            ),
            1..6
        ),
        2 => Just(b"=".to_vec()),
        1 => Just(b"==".to_vec()),
        1 => proptest::collection::vec(
            proptest::sample::select(
                b" \t,;\"'\\:=%*!@#$&()[]{}<>?\x00\x7f\x80\xff\r\n".to_vec()
            ),
            1..2
        ),
    ];
    (scheme, proptest::collection::vec(piece, 0..8))
        .prop_map(|(scheme, pieces)| [scheme, pieces.concat()].concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes: never panics, agrees with the reference.
    #[test]
    fn bearer_parse_agrees_with_reference_on_bytes(value in proptest::collection::vec(any::<u8>(), 0..64)) {
        assert_matches_reference(&value)?;
    }

    /// Bearer-shaped values, where acceptance is actually decided.
    #[test]
    fn bearer_parse_agrees_with_reference_on_bearer_like(value in bearer_like()) {
        assert_matches_reference(&value)?;
    }

    /// Around the length limit, with and without padding.
    #[test]
    fn bearer_length_limit_agrees_with_reference(
        len in (MAX_TOKEN_LEN - 3)..=(MAX_TOKEN_LEN + 3),
        pad in 0usize..3,
    ) {
        let body = "a".repeat(len.saturating_sub(pad).max(1));
        let value = format!("Bearer {body}{}", "=".repeat(pad));
        assert_matches_reference(value.as_bytes())?;
    }

    /// `extract` on one header is `parse`; two headers are always refused,
    /// and no header is the distinct "missing token" error.
    #[test]
    fn bearer_extract_is_parse_of_the_single_header(
        first in bearer_like(),
        second in proptest::option::of(bearer_like()),
    ) {
        let Ok(first_value) = HeaderValue::from_bytes(&first) else {
            return Ok(()); // not a header value at all: hyper never hands it over
        };
        let mut headers = HeaderMap::new();
        prop_assert!(matches!(bearer::extract(&headers), Err(GatewayError::MissingToken)));
        headers.append(AUTHORIZATION, first_value);
        match second.and_then(|s| HeaderValue::from_bytes(&s).ok()) {
            None => {
                let extracted = bearer::extract(&headers).map(str::to_owned).ok();
                let parsed = bearer::parse(&first).map(str::to_owned).ok();
                prop_assert_eq!(extracted, parsed);
            }
            Some(second_value) => {
                headers.append(AUTHORIZATION, second_value);
                prop_assert!(matches!(
                    bearer::extract(&headers),
                    Err(GatewayError::InvalidRequest(_))
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Hop-by-hop headers (RFC 9110 7.6.1).
// ---------------------------------------------------------------------------

/// Always hop-by-hop, named or not (with the legacy `Proxy-Connection`).
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

/// The reference: what must be left of `headers`, as (name, value) pairs in
/// order, and whether an upgrade was asked for. Every header named by a
/// `Connection` token goes, and every hop-by-hop header; `Upgrade` stays (with
/// `Connection: upgrade`) only when a token says `upgrade` and it is present.
fn hop_by_hop_reference(headers: &[(String, String)]) -> (Vec<(String, String)>, bool) {
    let tokens: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let upgrade = tokens.iter().any(|t| t == "upgrade")
        && headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("upgrade"));
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            if n == "upgrade" {
                return upgrade;
            }
            !HOP_BY_HOP.contains(&n.as_str()) && !tokens.contains(&n)
        })
        .cloned()
        .collect();
    if upgrade {
        kept.push(("connection".into(), "upgrade".into()));
    }
    (kept, upgrade)
}

/// Header names, hop-by-hop or not, in mixed case.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(HOP_BY_HOP.to_vec()).prop_map(str::to_owned),
        proptest::sample::select(vec![
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "x-a",
            "X-B",
            "x-c",
            "accept"
        ])
        .prop_map(str::to_owned),
    ]
}

/// A header value; for `Connection`, a token list with odd spacing.
fn header_value(name: &str) -> BoxedStrategy<String> {
    if name.eq_ignore_ascii_case("connection") {
        proptest::collection::vec(
            prop_oneof![
                header_name(),
                Just("close".to_owned()),
                Just(String::new()),
                Just("bad name".to_owned()),
            ],
            0..4,
        )
        .prop_map(|tokens| tokens.join(" , "))
        .boxed()
    } else {
        "[a-z0-9=]{0,6}".boxed()
    }
}

fn message_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(
        header_name().prop_flat_map(|n| {
            let value = header_value(&n);
            (Just(n), value)
        }),
        0..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// What is left (names, values and their order) and the upgrade verdict
    /// agree with the reference.
    #[test]
    fn hop_by_hop_removal_agrees_with_reference(headers in message_headers()) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let upgrade = remove_hop_by_hop(&mut map);
        let (mut expected, expected_upgrade) = hop_by_hop_reference(&headers);
        prop_assert_eq!(upgrade, expected_upgrade);
        // HeaderMap groups values by name in first-seen order of the names.
        let mut got: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let key = |(n, _): &(String, String)| n.to_ascii_lowercase();
        for pair in &mut expected {
            pair.0 = pair.0.to_ascii_lowercase();
        }
        got.sort_by_key(key);
        expected.sort_by_key(key);
        prop_assert_eq!(got, expected);
    }
}

// ---------------------------------------------------------------------------
// Paths: every spelling of a resource converges; refused spellings stay refused.
// (Idempotence and output shape are covered in src/routes/canonical.rs.)
// ---------------------------------------------------------------------------

/// Segments that are canonical as they stand: unreserved characters, never
/// `.` or `..`.
fn canonical_path() -> impl Strategy<Value = (Vec<String>, bool)> {
    (
        proptest::collection::vec("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,4}", 0..5),
        any::<bool>(),
    )
}

fn join(segments: &[String], trailing_slash: bool) -> String {
    let mut path = format!("/{}", segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        path.push('/');
    }
    path
}

/// Percent-encodes some characters of a segment (mixed-case hex).
fn encode_some(segment: &str, mask: u64, lower: bool) -> String {
    segment
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            if mask >> (i % 64) & 1 == 1 {
                if lower {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            } else {
                char::from(b).to_string()
            }
        })
        .collect()
}

/// One way of spelling the lead-in to a segment that adds nothing.
fn noise() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(""),
        Just("/"),
        Just("./"),
        Just(".//"),
        Just("%2e/"),
        Just("%2E/"),
        Just("x/../"),
        Just("x/%2e%2E/"),
        Just("x/y/../../"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Adding empty segments, `.`/`..` detours (raw or encoded) and escapes of
    /// unreserved characters never changes where a path points.
    #[test]
    fn equivalent_spellings_converge(
        (segments, trailing_slash) in canonical_path(),
        noises in proptest::collection::vec(noise(), 5),
        masks in proptest::collection::vec(any::<u64>(), 5),
        lower in any::<bool>(),
    ) {
        let canonical = join(&segments, trailing_slash);
        let itself = canonicalize(&canonical).map(|c| c.into_owned());
        prop_assert_eq!(itself, Ok(canonical.clone()));
        let mut spelled = String::from("/");
        for (i, segment) in segments.iter().enumerate() {
            spelled.push_str(noises[i]);
            spelled.push_str(&encode_some(segment, masks[i], lower));
            if i + 1 < segments.len() || trailing_slash {
                spelled.push('/');
            }
        }
        let converged = canonicalize(&spelled).map(|c| c.into_owned());
        prop_assert_eq!(
            converged,
            Ok(canonical),
            "spelled {:?}",
            spelled
        );
    }

    /// A refused piece anywhere in an otherwise fine path refuses the path:
    /// no amount of dot segments around it can launder it. (A lone `%` is
    /// not in the list: before two hex digits of the path it is a valid escape.)
    #[test]
    fn refused_pieces_are_never_laundered(
        (segments, trailing_slash) in canonical_path(),
        at in any::<prop::sample::Index>(),
        piece in prop_oneof![
            Just("%2F"), Just("%2f"), Just("%5C"), Just("%5c"), Just("%00"), Just("\\"),
            Just("#"), Just("%0a"), Just("%7F"), Just("%%"), Just("%z"), Just("%g0"), Just("\u{e9}"),
        ],
        detour in prop_oneof![Just(""), Just("/.."), Just("/../.."), Just("/./")],
    ) {
        let path = join(&segments, trailing_slash);
        let cut = path
            .char_indices()
            .map(|(i, _)| i)
            .chain([path.len()])
            .filter(|&i| i >= 1)
            .collect::<Vec<_>>();
        let i = cut[at.index(cut.len())];
        let spelled = format!("{}{piece}{detour}{}", &path[..i], &path[i..]);
        prop_assert!(canonicalize(&spelled).is_err(), "{:?} was accepted", spelled);
    }
}

// ---------------------------------------------------------------------------
// Token lifetime: accepted before exp + leeway, never from then on, monotonic in now.
// ---------------------------------------------------------------------------

const NOW: u64 = 1_700_000_000;

fn claims(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

/// `exp` as an integer or with a fraction (which is dropped).
fn exp_value(exp: u64, fraction: Option<u8>) -> Value {
    match fraction {
        None => json!(exp),
        Some(f) => json!(exp as f64 + f64::from(f % 100) / 100.0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Accepted iff `now < exp + leeway`; the lifetime reports `exp`.
    #[test]
    fn lifetime_accepts_iff_now_within_exp_plus_leeway(
        offset in -100_000i64..100_000,
        leeway in prop_oneof![Just(0u64), 0u64..600],
        fraction in proptest::option::of(any::<u8>()),
    ) {
        let exp = NOW.checked_add_signed(offset).unwrap();
        let got = check_lifetime(&claims(json!({"exp": exp_value(exp, fraction)})), NOW, leeway);
        if NOW < exp + leeway {
            prop_assert_eq!(got.map(|l| l.expires_at), Ok(exp));
        } else {
            prop_assert_eq!(got.map(|l| l.expires_at), Err(TokenError::Expired));
        }
    }

    /// For any claims (with or without `nbf`/`iat`): accepted at `t1` means
    /// accepted at every later `t2` before `exp + leeway`, and refused as
    /// expired at every `t2` from then on.
    #[test]
    fn accepted_once_accepted_until_exp_and_never_after(
        exp_offset in -1_000i64..1_000,
        nbf_offset in proptest::option::of(-1_000i64..1_000),
        iat_offset in proptest::option::of(-1_000i64..1_000),
        leeway in 0u64..120,
        t1_offset in -2_000i64..2_000,
        step in 0u64..2_000,
    ) {
        let at = |offset: i64| NOW.checked_add_signed(offset).unwrap();
        let exp = at(exp_offset);
        let mut value = json!({"exp": exp});
        if let Some(nbf) = nbf_offset {
            value["nbf"] = json!(at(nbf));
        }
        if let Some(iat) = iat_offset {
            value["iat"] = json!(at(iat));
        }
        let claims = claims(value);
        let (t1, t2) = (at(t1_offset), at(t1_offset) + step);
        if check_lifetime(&claims, t1, leeway).is_ok() {
            let later = check_lifetime(&claims, t2, leeway).map(|l| l.expires_at);
            if t2 < exp + leeway {
                prop_assert_eq!(later, Ok(exp), "accepted at {} but not at {}", t1, t2);
            } else {
                prop_assert_eq!(later, Err(TokenError::Expired));
            }
        }
        // From exp + leeway on nothing is accepted, whatever the other claims say.
        prop_assert_eq!(
            check_lifetime(&claims, exp + leeway + step, leeway).map(|l| l.expires_at),
            Err(TokenError::Expired)
        );
    }

    /// Extreme and malformed `exp` values never panic; non-numbers and
    /// negatives are type errors at any time.
    #[test]
    fn lifetime_extremes(
        exp in prop_oneof![
            any::<u64>().prop_map(|e| json!(e)),
            any::<f64>().prop_map(|e| serde_json::Number::from_f64(e).map_or(Value::Null, Value::Number)),
            any::<i64>().prop_map(|e| json!(e)),
            ".{0,8}".prop_map(Value::String),
        ],
        now in any::<u64>(),
        leeway in any::<u64>(),
    ) {
        let got = check_lifetime(&claims(json!({"exp": exp.clone()})), now, leeway);
        match &exp {
            Value::Number(n) if n.as_u64().is_some()
                || n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0) => {
                let floor = n.as_u64().unwrap_or_else(|| {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let f = n.as_f64().unwrap().floor() as u64;
                    f
                });
                prop_assert_eq!(got.is_ok(), now < floor.saturating_add(leeway), "{:?}", exp);
            }
            Value::Null => prop_assert_eq!(got.map(|l| l.expires_at), Err(TokenError::WrongClaimType)),
            _ => prop_assert_eq!(got.map(|l| l.expires_at), Err(TokenError::WrongClaimType)),
        }
    }
}

// ---------------------------------------------------------------------------
// The same through a real Authenticator (jwks_file keys, real signatures).
// ---------------------------------------------------------------------------

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "orders-api";
const LEEWAY: i64 = 30;

struct Lab {
    key: SigningKey,
    authenticator: Authenticator,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn lab() -> Lab {
    scopegate::cli::install_crypto_provider();
    let key = SigningKey::generate("key-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks()).unwrap();
    let yaml = format!(
        r#"server:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
issuers:
  - name: test
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: jwks.json
    algorithms: [ES256]
    leeway: {LEEWAY}s
upstreams:
  app:
    url: http://127.0.0.1:9
routes:
  - path: /orders/{{id}}
    upstream: app
    scopes: [orders:read]
"#
    );
    let config = scopegate::config::load_str("properties.yaml", dir.path(), &yaml).unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let authenticator = Authenticator::new(
        config.issuers,
        config.identity_claims,
        config.cache_max_entries,
        Arc::clone(&metrics),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Lab {
        key,
        authenticator,
        metrics,
        runtime,
        _dir: dir,
    }
}

/// Offsets of `exp` from the wall clock, kept 3 s away from the acceptance
/// boundary (`-LEEWAY`) so a clock tick during the case cannot flip it.
fn exp_offset() -> impl Strategy<Value = i64> {
    prop_oneof![-900i64..(-LEEWAY - 3), (-LEEWAY + 3)..900]
}

#[test]
fn authenticator_accepts_until_exp_plus_leeway_and_again_from_the_cache() {
    let lab = lab();
    // Tokens whose exp was clearly / possibly still ahead when verified.
    let (surely_cached, maybe_cached) = (Cell::new(0u64), Cell::new(0u64));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&(exp_offset(), any::<u32>()), |(offset, nonce)| {
            let now = scopegate::auth::jwt::now_unix();
            let exp = now.checked_add_signed(offset).unwrap();
            let token = lab
                .key
                .mint(&json!({
                    "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "orders:read",
                    "iat": now - 1_000, "exp": exp, "jti": format!("{nonce}-{offset}"),
                }))
                .unwrap();
            let should_accept = offset >= -LEEWAY;
            if offset >= 3 {
                surely_cached.set(surely_cached.get() + 1);
            }
            if offset >= 1 {
                maybe_cached.set(maybe_cached.get() + 1);
            }

            let verified = lab.runtime.block_on(lab.authenticator.verify(&token));
            match &verified {
                Ok(v) => {
                    prop_assert!(should_accept, "offset {} accepted", offset);
                    prop_assert_eq!(v.expires_at, exp);
                }
                Err(GatewayError::InvalidToken(TokenError::Expired)) => {
                    prop_assert!(!should_accept, "offset {} refused", offset);
                }
                Err(e) => prop_assert!(false, "offset {}: unexpected {:?}", offset, e),
            }

            // Through authenticate twice: the second answer may come from the
            // cache and must be the same decision.
            let mut headers = HeaderMap::new();
            headers.append(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            for round in 0..2 {
                let got = lab
                    .runtime
                    .block_on(lab.authenticator.authenticate(&headers, None, None))
                    .map_err(|refused| refused.error);
                match got {
                    Ok(v) => {
                        prop_assert!(should_accept, "round {}: offset {} accepted", round, offset);
                        prop_assert_eq!(v.expires_at, exp);
                    }
                    Err(GatewayError::InvalidToken(TokenError::Expired)) => {
                        prop_assert!(!should_accept, "round {}: offset {} refused", round, offset);
                    }
                    Err(e) => prop_assert!(false, "round {}: unexpected {:?}", round, e),
                }
            }
            Ok(())
        })
        .unwrap();
    // Exactly the tokens whose exp was still ahead were cached, and each was
    // then answered from the cache once; expired ones were never cached.
    lab.runtime
        .block_on(lab.authenticator.cache().run_pending_tasks());
    let (low, high) = (surely_cached.get(), maybe_cached.get());
    let entries = lab.authenticator.cache().entry_count();
    assert!(
        (low..=high).contains(&entries),
        "{entries} cached, want {low}..={high}"
    );
    let hits = lab.metrics.token_cache_hits.get();
    assert!(
        (low..=high).contains(&hits),
        "{hits} cache hits, want {low}..={high}"
    );
    assert!(low > 0, "no case had a future exp");
}
