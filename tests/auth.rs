//! Authentication and authorization end to end: bearer extraction (RFC 6750),
//! strict JWS/JWT checks (RFC 7515, 7519, 9068) and the classic JWT attacks,
//! scope look-alikes, per-route issuer restriction, the verified-token cache,
//! key rotation, unknown-`kid` floods, JWKS outages, readiness without keys,
//! and what the metrics say (and never say); and campaigns of generated
//! hostile tokens ([`hostile_tokens`]) and key sets ([`hostile_jwks`]), of
//! algorithms and key types confused ([`hostile_algorithms`]), and of
//! generated route maps and requests against them ([`hostile_routes`]).
//!
//! Every request goes through a real gateway on 127.0.0.1:0; every rejected
//! request is checked for its exact status, `WWW-Authenticate` challenge, JSON
//! `error`, and for never having reached the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::auth::jwt::TokenError;
use scopegate::demo::SigningKey;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Keys that can sign anything (arbitrary headers, raw segments).
// ---------------------------------------------------------------------------

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A P-256 key that signs raw JWS signing inputs, so tests control every byte
/// of the header and payload segments.
struct Signer {
    kid: String,
    der: Vec<u8>,
    pair: EcdsaKeyPair,
}

impl Signer {
    fn generate(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let der = pkcs8.as_ref().to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
        Self {
            kid: kid.to_owned(),
            der,
            pair,
        }
    }

    /// The same key as a `SigningKey` (for `World`).
    fn signing_key(&self) -> SigningKey {
        SigningKey::from_pkcs8(&self.kid, Algorithm::ES256, &self.der).unwrap()
    }

    fn jwks(&self) -> String {
        self.signing_key().jwks().to_owned()
    }

    fn public_jwk(&self) -> Value {
        self.signing_key().public_jwk().clone()
    }

    /// Standard base64 of the DER of a self-signed certificate for this
    /// key, as a JWK's `x5c` carries it.
    fn certificate(&self) -> String {
        let key = rcgen::KeyPair::try_from(self.der.as_slice()).unwrap();
        let params = rcgen::CertificateParams::new(vec!["keys.example".into()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    /// Raw `r || s` (64 bytes) over `input`.
    fn signature(&self, input: &str) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// The standard header: ES256, `typ: at+jwt`, this key's `kid`.
    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid})
    }

    /// Signs already-encoded segments exactly as given.
    fn sign_segments(&self, header: &str, payload: &str) -> String {
        let input = format!("{header}.{payload}");
        let signature = b64(self.signature(&input));
        format!("{input}.{signature}")
    }

    /// Signs raw JSON texts (duplicate keys and all).
    fn sign_json(&self, header: &str, payload: &str) -> String {
        self.sign_segments(&b64(header), &b64(payload))
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_json(&header.to_string(), &claims.to_string())
    }

    fn mint(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// A world whose key is a [`Signer`] (so tests can also hand-craft tokens).
async fn lab() -> (Signer, World) {
    let signer = Signer::generate("key-1");
    let world = World {
        key: signer.signing_key(),
        jwks: JwksServer::start(&signer.jwks()).await,
        upstream: Upstream::start().await,
    };
    (signer, world)
}

/// `claims` with `key` set to `value`.
fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// `claims` without `key`.
fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// A random hex string (unique kids and jtis).
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard claims with a fresh `jti`, so every token is a different string.
fn fresh_claims(scope: &str) -> Value {
    with(claims(scope), "jti", json!(random_hex(8)))
}

/// A DER INTEGER from a big-endian unsigned value.
fn der_integer(value: &[u8]) -> Vec<u8> {
    let first = value
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(value.len() - 1);
    let mut digits = value[first..].to_vec();
    if digits[0] & 0x80 != 0 {
        digits.insert(0, 0);
    }
    let mut out = vec![0x02, u8::try_from(digits.len()).unwrap()];
    out.extend(digits);
    out
}

/// The ASN.1 DER form (`SEQUENCE { INTEGER r, INTEGER s }`) of a raw ECDSA
/// P-256 signature `r || s`.
fn raw_to_der(raw: &[u8]) -> Vec<u8> {
    assert_eq!(raw.len(), 64);
    let mut body = der_integer(&raw[..32]);
    body.extend(der_integer(&raw[32..]));
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

/// Replaces the signature segment of a compact token.
fn with_signature(token: &str, signature: &str) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{signature}")
}

/// The decoded signature bytes of a compact token.
fn signature_of(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.rsplit_once('.').unwrap().1)
        .unwrap()
}

// ---------------------------------------------------------------------------
// Expected outcomes and their exact shapes.
// ---------------------------------------------------------------------------

/// Not a real certificate: the gateway must not even look at `x5c`.
const FAKE_CERT: &str = "MIIBszCCAVmgAwIBAgIUbm90LWEtcmVhbC1jZXJ0aWZpY2F0ZTAKBggqhkjOPQQDAjA=";
const REALM_CHALLENGE: &str = "Bearer realm=\"scopegate\"";
const INSUFFICIENT: &str = "the token does not grant the scopes this route requires";

#[derive(Debug, Clone, Copy)]
enum Want {
    /// 200, forwarded once.
    Allow,
    /// 401, bare challenge.
    NoToken,
    /// 400 `invalid_request`.
    BadRequest,
    /// 401 `invalid_token` with this error's description.
    Invalid(TokenError),
    /// 403 `insufficient_scope` naming these scopes.
    Forbidden(&'static str),
    /// 503 with `Retry-After`.
    Unavailable,
}

/// Checks a reply against what was wanted; `forwarded` is how many requests
/// the upstream saw while this one was handled.
fn check(reply: &Reply, forwarded: usize, want: Want, label: &str) {
    let body = reply.json();
    let www = reply.www_authenticate();
    let ctx = format!(
        "{label}: got {} www-authenticate={www:?} body={}",
        reply.status,
        reply.text()
    );
    let error = body["error"].as_str().unwrap_or_default();
    match want {
        Want::Allow => {
            assert_eq!(reply.status, 200, "{ctx}");
            assert_eq!(forwarded, 1, "{ctx}: not forwarded exactly once");
            return;
        }
        Want::NoToken => {
            assert_eq!(reply.status, 401, "{ctx}");
            assert_eq!(www, REALM_CHALLENGE, "{ctx}");
            assert_eq!(error, "unauthorized", "{ctx}");
        }
        Want::BadRequest => {
            assert_eq!(reply.status, 400, "{ctx}");
            let prefix =
                "Bearer realm=\"scopegate\", error=\"invalid_request\", error_description=\"";
            let description = www
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{ctx}: challenge shape"));
            assert!(
                !description.is_empty() && !description.contains('"'),
                "{ctx}"
            );
            assert_eq!(error, "invalid_request", "{ctx}");
            assert_eq!(body["error_description"], description, "{ctx}");
        }
        Want::Invalid(reason) => {
            assert_eq!(reply.status, 401, "{ctx}");
            let expected = format!(
                "Bearer realm=\"scopegate\", error=\"invalid_token\", error_description=\"{}\"",
                reason.description()
            );
            assert_eq!(www, expected, "{ctx}: expected {reason:?}");
            assert_eq!(error, "invalid_token", "{ctx}");
            assert_eq!(body["error_description"], reason.description(), "{ctx}");
        }
        Want::Forbidden(scope) => {
            assert_eq!(reply.status, 403, "{ctx}");
            let expected = format!(
                "Bearer realm=\"scopegate\", error=\"insufficient_scope\", error_description=\"{INSUFFICIENT}\", scope=\"{scope}\""
            );
            assert_eq!(www, expected, "{ctx}");
            assert_eq!(error, "insufficient_scope", "{ctx}");
        }
        Want::Unavailable => {
            assert_eq!(reply.status, 503, "{ctx}");
            assert_eq!(reply.header("retry-after").as_deref(), Some("5"), "{ctx}");
            assert_eq!(reply.header("www-authenticate"), None, "{ctx}");
            assert_eq!(error, "temporarily_unavailable", "{ctx}");
        }
    }
    assert_eq!(
        reply.header("cache-control").as_deref(),
        Some("no-store"),
        "{ctx}"
    );
    assert_eq!(
        forwarded, 0,
        "{ctx}: a rejected request reached the upstream"
    );
}

/// Sends a request and returns the reply and how many requests the upstream
/// saw meanwhile.
async fn request(
    world: &World,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Reply, usize) {
    let before = world.upstream.count();
    let reply = send(
        method,
        url,
        headers,
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
    .unwrap();
    (reply, world.upstream.count() - before)
}

/// `method path` with `Authorization: Bearer <token>`, checked against `want`.
async fn expect(
    world: &World,
    gw: &Gateway,
    method: &str,
    path: &str,
    token: &str,
    want: Want,
    label: &str,
) {
    let auth = format!("Bearer {token}");
    let (reply, forwarded) = request(
        world,
        method,
        &gw.url(path),
        &[("authorization", &auth)],
        "",
    )
    .await;
    check(&reply, forwarded, want, label);
}

/// [`expect`] for a `GET` of `path`, and that it made the gateway fetch
/// the standard world's key set `refetches` times.
async fn expect_refetches(
    world: &World,
    gw: &Gateway,
    path: &str,
    token: &str,
    want: Want,
    label: &str,
    refetches: usize,
) {
    let before = world.jwks.fetches();
    expect(world, gw, "GET", path, token, want, label).await;
    assert_eq!(
        world.jwks.fetches() - before,
        refetches,
        "{label}: key set fetches"
    );
}

/// A token of a key nobody published, on `/orders/1`: one refetch of the
/// key set, then `want`.
async fn expect_unpublished_key(world: &World, gw: &Gateway, want: Want, label: &str) {
    let stranger = Signer::generate("not-published");
    let token = stranger.mint(&fresh_claims("orders:read"));
    expect_refetches(world, gw, "/orders/1", &token, want, label, 1).await;
}

fn cache_hits(text: &str) -> f64 {
    metric(
        text,
        "scopegate_token_cache_requests_total",
        &[("kind", "jwt"), ("result", "hit")],
    )
}

fn jwks_fetch_results(text: &str, result: &str) -> f64 {
    metric(
        text,
        "scopegate_jwks_fetches_total",
        &[("issuer", "test"), ("result", result)],
    )
}

// ---------------------------------------------------------------------------
// 1. Bearer extraction (RFC 6750 2.1).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bearer_header_extraction() {
    let world = World::new().await;
    // A head large enough for the longest token (64 KiB).
    let gw = Gateway::start(&world.config().replacen(
        "server:\n",
        "server:\n  max_header_bytes: 131072\n",
        1,
    ))
    .await;
    let valid = world.token("orders:read");

    let long = "a".repeat(scopegate::auth::bearer::MAX_TOKEN_LEN + 1);
    let at_limit = "a".repeat(scopegate::auth::bearer::MAX_TOKEN_LEN);
    // An Azure AD token with many groups passes 8 KiB.
    let groups = (0..300)
        .map(|n| format!("00000000-0000-0000-0000-{n:012}"))
        .collect::<Vec<_>>();
    let mut grouped = claims("orders:read");
    grouped["groups"] = serde_json::json!(groups);
    let grouped = world.key.mint(&grouped).unwrap();
    assert!(grouped.len() > 12 * 1024, "{}", grouped.len());
    let rows: Vec<(&str, Vec<String>, Want)> = vec![
        ("no Authorization header", vec![], Want::NoToken),
        // RFC 6750 3.1: another scheme is no bearer credentials at all.
        (
            "Basic scheme",
            vec!["Basic dXNlcjpwYXNz".into()],
            Want::NoToken,
        ),
        ("scheme only", vec!["Bearer".into()], Want::BadRequest),
        ("empty token", vec!["Bearer ".into()], Want::BadRequest),
        // RFC 6750 2.1: `"Bearer" 1*SP b64token`.
        ("two spaces", vec![format!("Bearer  {valid}")], Want::Allow),
        (
            "space and tab",
            vec![format!("Bearer \t{valid}")],
            Want::BadRequest,
        ),
        (
            "tab separator",
            vec![format!("Bearer\t{valid}")],
            Want::BadRequest,
        ),
        (
            "no separator (a scheme of another name)",
            vec![format!("Bearer{valid}")],
            Want::NoToken,
        ),
        (
            "comma in token",
            vec![format!("Bearer {valid},x")],
            Want::BadRequest,
        ),
        (
            "space in token",
            vec![format!("Bearer {valid} x")],
            Want::BadRequest,
        ),
        (
            "quoted token",
            vec![format!("Bearer \"{valid}\"")],
            Want::BadRequest,
        ),
        (
            "a token of over 12 KiB (300 groups)",
            vec![format!("Bearer {grouped}")],
            Want::Allow,
        ),
        (
            "token over 64 KiB",
            vec![format!("Bearer {long}")],
            Want::BadRequest,
        ),
        (
            "token of exactly 64 KiB reaches the JWT parser",
            vec![format!("Bearer {at_limit}")],
            Want::Invalid(TokenError::Malformed),
        ),
        (
            "two Authorization headers",
            vec![format!("Bearer {valid}"), format!("Bearer {valid}")],
            Want::BadRequest,
        ),
        (
            "second header is not bearer",
            vec![format!("Bearer {valid}"), "Basic dXNlcjpwYXNz".into()],
            Want::BadRequest,
        ),
        (
            "padding after the signature is b64token but not base64url",
            vec![format!("Bearer {valid}=")],
            Want::Invalid(TokenError::BadEncoding),
        ),
        (
            "lower-case scheme",
            vec![format!("bearer {valid}")],
            Want::Allow,
        ),
        (
            "upper-case scheme",
            vec![format!("BEARER {valid}")],
            Want::Allow,
        ),
        (
            "mixed-case scheme",
            vec![format!("bEaReR {valid}")],
            Want::Allow,
        ),
    ];
    for (label, values, want) in rows {
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("authorization", v.as_str()))
            .collect();
        let (reply, forwarded) = request(&world, "GET", &gw.url("/orders/1"), &headers, "").await;
        check(&reply, forwarded, want, label);
    }

    // Tokens anywhere but the header are never accepted (RFC 6750 2.2/2.3 are
    // not supported). One in the query is refused, with or without one in
    // the header (RFC 6750 3.1: one method only): forwarded, it would reach
    // an upstream that may read it, unchecked.
    let query = format!("/orders/1?access_token={valid}");
    let (reply, forwarded) = request(&world, "GET", &gw.url(&query), &[], "").await;
    check(
        &reply,
        forwarded,
        Want::BadRequest,
        "token in the query string",
    );
    let header = format!("Bearer {valid}");
    // Every spelling some framework reads as `access_token`: escaped
    // (all decode names), in another case (ASP.NET Core), with `.`, space or
    // `[` for `_` (PHP), as an array, after a `;` (Rack 2).
    for query in [
        format!("/orders/1?access_token={valid}"),
        "/orders/1?page=2&access_token=other".to_owned(),
        "/orders/1?access%5Ftoken=other".to_owned(),
        "/orders/1?%61ccess_token=other".to_owned(),
        "/orders/1?Access_Token=other".to_owned(),
        "/orders/1?ACCESS_TOKEN=other".to_owned(),
        "/orders/1?access.token=other".to_owned(),
        "/orders/1?access+token=other".to_owned(),
        "/orders/1?access%20token=other".to_owned(),
        "/orders/1?access[token=other".to_owned(),
        "/orders/1?%20access_token=other".to_owned(),
        "/orders/1?access_token[]=other".to_owned(),
        "/orders/1?access_token%5B0%5D=other".to_owned(),
        "/orders/1?page=2;access_token=other".to_owned(),
        "/orders/1?[access_token]=other".to_owned(),
        "/orders/1?%5Daccess_token=other".to_owned(),
        "/orders/1?access_token%5D=other".to_owned(),
        "/orders/1?access_token%00=other".to_owned(),
        "/orders/1?access_token".to_owned(),
        // In the path's parameters, which find-my-way (Fastify) reads as
        // the query from the first `;` on.
        "/orders/1;access_token=other".to_owned(),
        "/orders/1;v=2;Access_Token=other".to_owned(),
    ] {
        let (reply, forwarded) = request(
            &world,
            "GET",
            &gw.url(&query),
            &[("authorization", &header)],
            "",
        )
        .await;
        check(&reply, forwarded, Want::BadRequest, &query);
    }
    // A parameter that only contains the name, or a value that does, is no
    // token.
    for query in [
        "/orders/1?not_access_token=1",
        "/orders/1?access_tokens=1",
        "/orders/1?access_token_hint=1",
        "/orders/1?q=access_token",
        "/orders/1?access-token=1",
        "/orders/1;v=2",
        "/orders/1;access-token=1",
    ] {
        let (reply, forwarded) = request(
            &world,
            "GET",
            &gw.url(query),
            &[("authorization", &header)],
            "",
        )
        .await;
        check(&reply, forwarded, Want::Allow, query);
    }

    let form = format!("access_token={valid}");
    let (reply, forwarded) = request(
        &world,
        "POST",
        &gw.url("/orders/1"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    check(&reply, forwarded, Want::NoToken, "token in a form body");
}

// ---------------------------------------------------------------------------
// 2. JWT rows.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn jwt_time_issuer_and_audience_claims() {
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config()).await;
    let now = now();
    let base = || fresh_claims("orders:read");

    let rows: Vec<(&str, Value, Want)> = vec![
        ("valid", base(), Want::Allow),
        (
            "expired beyond leeway",
            with(base(), "exp", json!(now - 120)),
            Want::Invalid(TokenError::Expired),
        ),
        (
            "expired within leeway",
            with(
                with(base(), "exp", json!(now - 10)),
                "iat",
                json!(now - 600),
            ),
            Want::Allow,
        ),
        (
            "fractional exp",
            with(base(), "exp", json!(now as f64 + 600.5)),
            Want::Allow,
        ),
        (
            "nbf in the future beyond leeway",
            with(base(), "nbf", json!(now + 120)),
            Want::Invalid(TokenError::NotYetValid),
        ),
        (
            "nbf in the future within leeway",
            with(base(), "nbf", json!(now + 10)),
            Want::Allow,
        ),
        (
            "iat far in the future",
            with(base(), "iat", json!(now + 3600)),
            Want::Invalid(TokenError::IssuedInFuture),
        ),
        (
            "exp at u64::MAX",
            with(base(), "exp", json!(u64::MAX)),
            Want::Allow,
        ),
        (
            "exp as a huge float",
            with(base(), "exp", json!(1e300)),
            Want::Allow,
        ),
        (
            "missing exp",
            without(base(), "exp"),
            Want::Invalid(TokenError::MissingExpiry),
        ),
        (
            "exp as a string",
            with(base(), "exp", json!("9999999999")),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "negative exp",
            with(base(), "exp", json!(-1)),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "nbf as a string",
            with(base(), "nbf", json!("0")),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "wrong iss",
            with(base(), "iss", json!("https://evil.test")),
            Want::Invalid(TokenError::UnknownIssuer),
        ),
        (
            "iss with a trailing slash",
            with(base(), "iss", json!(format!("{ISSUER}/"))),
            Want::Invalid(TokenError::UnknownIssuer),
        ),
        (
            "iss not a string",
            with(base(), "iss", json!(["https://idp.test"])),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "iss a number",
            with(base(), "iss", json!(123)),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "missing iss",
            without(base(), "iss"),
            Want::Invalid(TokenError::UnknownIssuer),
        ),
        (
            "wrong aud",
            with(base(), "aud", json!("other-api")),
            Want::Invalid(TokenError::WrongAudience),
        ),
        (
            "aud prefix look-alike",
            with(base(), "aud", json!(format!("{AUDIENCE}x"))),
            Want::Invalid(TokenError::WrongAudience),
        ),
        (
            "aud array containing the audience",
            with(base(), "aud", json!(["other-api", AUDIENCE])),
            Want::Allow,
        ),
        (
            "aud array without the audience",
            with(base(), "aud", json!(["other-api", "third"])),
            Want::Invalid(TokenError::WrongAudience),
        ),
        (
            "aud array with a non-string",
            with(base(), "aud", json!([AUDIENCE, 1])),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "aud an object",
            with(base(), "aud", json!({ "aud": AUDIENCE })),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "missing aud",
            without(base(), "aud"),
            Want::Invalid(TokenError::WrongAudience),
        ),
        (
            "bound to a DPoP key",
            with(
                base(),
                "cnf",
                json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" }),
            ),
            Want::Invalid(TokenError::SenderConstrained),
        ),
        (
            "bound to a client certificate",
            with(
                base(),
                "cnf",
                json!({ "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2" }),
            ),
            Want::Invalid(TokenError::SenderConstrained),
        ),
    ];
    for (label, claims, want) in rows {
        let token = signer.mint(&claims);
        expect(&world, &gw, "GET", "/orders/1", &token, want, label).await;
    }
}

#[tokio::test]
async fn jwt_algorithm_and_signature_attacks() {
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config()).await;
    let claims = fresh_claims("orders:read");
    let valid = signer.mint(&claims);
    let payload = b64(claims.to_string());
    let valid_signature = signature_of(&valid);
    let mut rows: Vec<(String, String, Want)> = Vec::new();

    // alg: none in every spelling, with an empty signature (not a compact JWS)
    // and with a non-empty one (the valid ES256 signature bytes).
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": alg, "typ": "at+jwt", "kid": "key-1"}).to_string());
        rows.push((
            format!("alg {alg}, empty signature"),
            format!("{header}.{payload}."),
            Want::Invalid(TokenError::Malformed),
        ));
        rows.push((
            format!("alg {alg}, non-empty signature"),
            format!("{header}.{payload}.{}", b64(&valid_signature)),
            Want::Invalid(TokenError::AlgorithmNotAllowed),
        ));
        rows.push((
            format!("alg {alg} without kid, non-empty signature"),
            format!(
                "{}.{payload}.{}",
                b64(json!({ "alg": alg }).to_string()),
                b64("x")
            ),
            Want::Invalid(TokenError::AlgorithmNotAllowed),
        ));
    }

    // Algorithms off the allow-list, signed by the right key where possible.
    for alg in ["es256", "ES384", "RS256", "EdDSA", ""] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": "key-1"});
        rows.push((
            format!("alg {alg:?} signed by the issuer key"),
            signer.sign(&header, &claims),
            Want::Invalid(TokenError::AlgorithmNotAllowed),
        ));
    }
    rows.push((
        "alg missing".into(),
        signer.sign(&json!({"typ": "at+jwt", "kid": "key-1"}), &claims),
        Want::Invalid(TokenError::BadHeader),
    ));
    rows.push((
        "alg not a string".into(),
        signer.sign(&json!({"alg": ["ES256"], "kid": "key-1"}), &claims),
        Want::Invalid(TokenError::BadHeader),
    ));

    // Algorithm confusion: HS256 with the issuer's public key material as the
    // HMAC secret.
    let jwk = signer.public_jwk();
    let x = jwk["x"].as_str().unwrap().to_owned();
    let y = jwk["y"].as_str().unwrap().to_owned();
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(&x).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(&y).unwrap());
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("the JWKS text", signer.jwks().into_bytes()),
        ("the JWK text", jwk.to_string().into_bytes()),
        ("x (base64url text)", x.clone().into_bytes()),
        ("x (decoded)", URL_SAFE_NO_PAD.decode(&x).unwrap()),
        ("y (base64url text)", y.into_bytes()),
        ("the uncompressed point", point),
    ];
    for (what, secret) in &secrets {
        for kid in [Some("key-1"), None] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            header.typ = Some("at+jwt".into());
            let token =
                jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
            rows.push((
                format!("HS256 keyed with {what}, kid {kid:?}"),
                token,
                Want::Invalid(TokenError::AlgorithmNotAllowed),
            ));
        }
    }

    // Signature bytes.
    rows.push((
        "signature of zeros (r = s = 0)".into(),
        with_signature(&valid, &b64([0u8; 64])),
        Want::Invalid(TokenError::BadSignature),
    ));
    rows.push((
        "signature of 0xff".into(),
        with_signature(&valid, &b64([0xffu8; 64])),
        Want::Invalid(TokenError::BadSignature),
    ));
    rows.push((
        "DER-encoded ECDSA signature".into(),
        with_signature(&valid, &b64(raw_to_der(&valid_signature))),
        Want::Invalid(TokenError::BadSignature),
    ));
    rows.push((
        "signature truncated to 63 bytes".into(),
        with_signature(&valid, &b64(&valid_signature[..63])),
        Want::Invalid(TokenError::BadSignature),
    ));
    rows.push((
        "signature truncated to r only".into(),
        with_signature(&valid, &b64(&valid_signature[..32])),
        Want::Invalid(TokenError::BadSignature),
    ));
    let mut extended = valid_signature.clone();
    extended.push(0);
    rows.push((
        "signature with a trailing byte".into(),
        with_signature(&valid, &b64(&extended)),
        Want::Invalid(TokenError::BadSignature),
    ));
    let mut flipped = valid_signature.clone();
    flipped[10] ^= 1;
    rows.push((
        "signature with one bit flipped".into(),
        with_signature(&valid, &b64(&flipped)),
        Want::Invalid(TokenError::BadSignature),
    ));
    rows.push((
        "empty signature segment".into(),
        with_signature(&valid, ""),
        Want::Invalid(TokenError::Malformed),
    ));
    let other = Signer::generate("key-1");
    rows.push((
        "signed by another ES256 key with the same kid".into(),
        other.mint(&claims),
        Want::Invalid(TokenError::BadSignature),
    ));
    rows.push((
        "signed by another key, no kid".into(),
        other.sign(&json!({"alg": "ES256", "typ": "at+jwt"}), &claims),
        Want::Invalid(TokenError::BadSignature),
    ));
    let tampered = with(claims.clone(), "scope", json!("orders:read admin"));
    rows.push((
        "payload changed after signing".into(),
        format!(
            "{}.{}.{}",
            valid.split('.').next().unwrap(),
            b64(tampered.to_string()),
            b64(&valid_signature)
        ),
        Want::Invalid(TokenError::BadSignature),
    ));
    // Positive controls: the same key without kid, and the valid token itself.
    rows.push((
        "valid, no kid".into(),
        signer.sign(&json!({"alg": "ES256", "typ": "at+jwt"}), &claims),
        Want::Allow,
    ));
    rows.push(("valid".into(), valid.clone(), Want::Allow));

    for (label, token, want) in &rows {
        expect(&world, &gw, "GET", "/orders/1", token, *want, label).await;
    }
}

/// A token without `kid` is tried against a few keys of its `alg` at most
/// (8), but keys the set keeps unusable (here off their curve) take no
/// check and are not among them: a usable key after eight of those still
/// verifies it.
#[tokio::test]
async fn unusable_keys_do_not_crowd_a_usable_one_out_of_a_kid_less_tokens_tries() {
    let signer = Signer::generate("key-1");
    let unusable: Value = serde_json::from_str(support::UNUSABLE_JWKS).unwrap();
    let mut off_curve = unusable["keys"][0].clone();
    off_curve.as_object_mut().unwrap().remove("kid");
    let mut good = signer.public_jwk();
    good.as_object_mut().unwrap().remove("kid");
    let mut keys = vec![off_curve; 8];
    keys.push(good);
    let world = World {
        key: signer.signing_key(),
        jwks: JwksServer::start(&json!({ "keys": keys }).to_string()).await,
        upstream: Upstream::start().await,
    };
    let gw = Gateway::start(&world.config()).await;
    let claims = fresh_claims("orders:read");
    let kid_less = signer.sign(&json!({"alg": "ES256", "typ": "at+jwt"}), &claims);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &kid_less,
        Want::Allow,
        "no kid",
    )
    .await;
    let other = Signer::generate("key-1");
    let forged = other.sign(&json!({"alg": "ES256", "typ": "at+jwt"}), &claims);
    let want = Want::Invalid(TokenError::BadSignature);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &forged,
        want,
        "another key",
    )
    .await;
    gw.stop().await;

    // Eight usable keys ahead of it are as many as are tried: the usable
    // key after them is not.
    let mut keys: Vec<Value> = (0..8)
        .map(|_| {
            let mut key = Signer::generate("key-1").public_jwk();
            key.as_object_mut().unwrap().remove("kid");
            key
        })
        .collect();
    let mut good = signer.public_jwk();
    good.as_object_mut().unwrap().remove("kid");
    keys.push(good);
    world
        .jwks
        .set_document(&json!({ "keys": keys }).to_string());
    let gw = Gateway::start(&world.config()).await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &kid_less,
        Want::Invalid(TokenError::BadSignature),
        "no kid, the ninth usable key",
    )
    .await;
}

/// A token whose `alg` is allowed but fits no key it could be checked
/// with is told apart from a bad signature: naming a key of another type
/// (a P-256 `key-1` for an EdDSA token), its algorithm is not allowed with
/// that key; naming none, while no key of its type is held, its key is
/// unknown.
#[tokio::test]
async fn a_token_fitting_no_key_is_told_apart_from_a_bad_signature() {
    let (signer, world) = lab().await;
    let config = world
        .config()
        .replace("algorithms: [ES256]", "algorithms: [ES256, EdDSA]");
    let gw = Gateway::start(&config).await;
    let claims = fresh_claims("orders:read");
    // Shaped as an Ed25519 signature (64 bytes); no key checks it anyway.
    let rows = [
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "key-1"}),
            TokenError::AlgorithmNotAllowed,
            "EdDSA naming the P-256 key-1",
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt"}),
            TokenError::UnknownKey,
            "EdDSA naming no key, none of its type held",
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "key-2"}),
            TokenError::UnknownKey,
            "EdDSA naming a key not held",
        ),
    ];
    for (header, error, label) in rows {
        let token = signer.sign(&header, &claims);
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &token,
            Want::Invalid(error),
            label,
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_header_attacks_crit_embedded_keys_and_kids() {
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config()).await;
    let claims = fresh_claims("orders:read");
    let attacker = Signer::generate("key-1");
    let evil = Signer::generate("evil");
    // An attacker-run JWKS endpoint with the attacker's keys; it must never be
    // contacted.
    let attacker_jwks = JwksServer::start(&merge_jwks(&[&attacker.jwks(), &evil.jwks()])).await;
    let fetches_at_ready = world.jwks.fetches();
    let mut rows: Vec<(String, String, Want)> = Vec::new();

    // crit: nothing is understood, so any crit (even empty) is refused, even
    // when the rest of the token is perfectly valid.
    for (what, header) in [
        (
            "unknown crit",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "crit": ["x-custom"], "x-custom": true}),
        ),
        (
            "empty crit",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "crit": []}),
        ),
        (
            "crit naming a registered header",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "crit": ["exp"]}),
        ),
        (
            "crit not an array",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "crit": "b64"}),
        ),
        // RFC 7797 6: `b64` is only ever used listed in `crit`; a signer that
        // set it meant a payload other than the one this token's bytes decode
        // to, so without `crit` it is refused as well, false or true.
        (
            "b64 false without crit",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "b64": false}),
        ),
        (
            "b64 true without crit",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "b64": true}),
        ),
    ] {
        rows.push((
            what.into(),
            signer.sign(&header, &claims),
            Want::Invalid(TokenError::UnsupportedCritical),
        ));
    }

    // Embedded or referenced keys, signed by the attacker's key.
    let attacker_jwk = attacker.public_jwk();
    let evil_jwk = evil.public_jwk();
    let embedded = [
        (
            "jwk header, kid of the issuer's key",
            &attacker,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "jwk": attacker_jwk}),
            TokenError::BadSignature,
        ),
        (
            "jwk header, no kid",
            &attacker,
            json!({"alg": "ES256", "typ": "at+jwt", "jwk": attacker_jwk}),
            TokenError::BadSignature,
        ),
        (
            "jwk header, attacker kid",
            &evil,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "evil", "jwk": evil_jwk}),
            TokenError::UnknownKey,
        ),
        (
            "jku header, kid of the issuer's key",
            &attacker,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "jku": attacker_jwks.uri()}),
            TokenError::BadSignature,
        ),
        (
            "jku header, attacker kid",
            &evil,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "evil", "jku": attacker_jwks.uri()}),
            TokenError::UnknownKey,
        ),
        (
            "x5u header",
            &evil,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "evil", "x5u": attacker_jwks.uri()}),
            TokenError::UnknownKey,
        ),
        (
            "x5c header",
            &attacker,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "x5c": [FAKE_CERT]}),
            TokenError::BadSignature,
        ),
    ];
    for (what, key, header, reason) in embedded {
        rows.push((
            what.into(),
            key.sign(&header, &claims),
            Want::Invalid(reason),
        ));
    }

    // Odd kids, signed by the issuer's real key: the kid is a lookup key, nothing
    // more, and a kid that matches no key is refused even with a good signature.
    let long_kid = "k".repeat(3000);
    for kid in [
        "../../etc/passwd",
        "' OR 1=1--",
        "key-1 ",
        "KEY-1",
        "key-1\u{0}",
        "",
        "*",
        long_kid.as_str(),
    ] {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        rows.push((
            format!("kid {:?}", kid.chars().take(24).collect::<String>()),
            signer.sign(&header, &claims),
            Want::Invalid(TokenError::UnknownKey),
        ));
    }
    rows.push((
        "kid not a string".into(),
        signer.sign(&json!({"alg": "ES256", "typ": "at+jwt", "kid": 1}), &claims),
        Want::Invalid(TokenError::BadHeader),
    ));
    rows.push(("valid".into(), signer.mint(&claims), Want::Allow));

    for (label, token, want) in &rows {
        expect(&world, &gw, "GET", "/orders/1", token, *want, label).await;
    }
    assert_eq!(
        attacker_jwks.fetches(),
        0,
        "the gateway followed a key URL from a token header"
    );
    assert!(
        world.jwks.fetches() <= fetches_at_ready + 1,
        "unknown kids caused more than one refetch within the cooldown"
    );
}

/// A claims object with a padding claim adjusted until the payload's base64url
/// length is not a multiple of 4 (so it has trailing bits and needs padding).
fn unaligned_payload(claims: &Value, remainder: usize) -> String {
    for n in 0..4 {
        let payload = b64(with(claims.clone(), "pad", json!("a".repeat(n))).to_string());
        if payload.len() % 4 == remainder {
            return payload;
        }
    }
    unreachable!("no padding length gives remainder {remainder}")
}

#[tokio::test]
async fn jwt_encoding_and_json_strictness() {
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config()).await;
    let claims = fresh_claims("orders:read");
    let header = b64(signer.header().to_string());
    let claims_text = claims.to_string();
    let mut rows: Vec<(String, String, Want)> = Vec::new();

    // Duplicate members, each token properly signed by the issuer's key.
    let header_text = signer.header().to_string();
    let dup_headers = [
        r#"{"alg":"ES256","alg":"ES256","typ":"at+jwt","kid":"key-1"}"#.to_owned(),
        r#"{"alg":"ES256","typ":"at+jwt","kid":"key-1","alg":"none"}"#.to_owned(),
        r#"{"alg":"ES256","typ":"at+jwt","kid":"nope","kid":"key-1"}"#.to_owned(),
    ];
    for dup in &dup_headers {
        rows.push((
            format!("duplicate header member {dup}"),
            signer.sign_json(dup, &claims_text),
            Want::Invalid(TokenError::BadHeader),
        ));
    }
    let body = claims_text.strip_prefix('{').unwrap();
    for extra in [
        r#""sub":"mallory","#.to_owned(),
        format!(r#""iss":"{ISSUER}","#),
        r#""scope":"admin","#.to_owned(),
        r#""exp":1,"#.to_owned(),
    ] {
        rows.push((
            format!("duplicate claim {extra}"),
            signer.sign_json(&header_text, &format!("{{{extra}{body}")),
            Want::Invalid(TokenError::BadClaims),
        ));
    }
    for (what, payload) in [
        ("payload an array", "[]".to_owned()),
        ("payload a string", "\"claims\"".to_owned()),
        ("payload with trailing data", format!("{claims_text} x")),
        ("payload with a second object", format!("{claims_text}{{}}")),
        ("payload not JSON", "not json".to_owned()),
    ] {
        rows.push((
            what.into(),
            signer.sign_json(&header_text, &payload),
            Want::Invalid(TokenError::BadClaims),
        ));
    }
    rows.push((
        "header an array".into(),
        signer.sign_json("[\"ES256\"]", &claims_text),
        Want::Invalid(TokenError::BadHeader),
    ));
    // Whitespace inside the JSON is fine (it is still one object).
    rows.push((
        "pretty-printed JSON".into(),
        signer.sign_json(
            &serde_json::to_string_pretty(&signer.header()).unwrap(),
            &serde_json::to_string_pretty(&claims).unwrap(),
        ),
        Want::Allow,
    ));

    // Padding. RFC 6750's b64token allows '=' only at the very end, so a padded
    // header or payload is refused by the bearer syntax check (400) before any
    // JWS parsing; a padded signature (the last segment) is b64token-valid and
    // refused by the strict base64url decoder (401). Each is signed over the
    // padded text, so the padding alone is what is wrong.
    let unaligned = unaligned_payload(&claims, 2);
    let unaligned3 = unaligned_payload(&claims, 3);
    let valid = signer.mint(&claims);
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    if parts[0].len().is_multiple_of(4) {
        // Make the header need padding too.
        parts[0] =
            b64(json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "p": "a"}).to_string());
        if parts[0].len().is_multiple_of(4) {
            parts[0] = b64(
                json!({"alg": "ES256", "typ": "at+jwt", "kid": "key-1", "p": "ab"}).to_string(),
            );
        }
    }
    assert_ne!(parts[0].len() % 4, 0);
    let header_padding = "=".repeat(4 - parts[0].len() % 4);
    let padded_rows = [
        (
            "padded payload (==)",
            signer.sign_segments(&header, &format!("{unaligned}==")),
            Want::BadRequest,
        ),
        (
            "half-padded payload (=)",
            signer.sign_segments(&header, &format!("{unaligned}=")),
            Want::BadRequest,
        ),
        (
            "padded payload (=)",
            signer.sign_segments(&header, &format!("{unaligned3}=")),
            Want::BadRequest,
        ),
        (
            "padded header",
            signer.sign_segments(&format!("{}{header_padding}", parts[0]), &parts[1]),
            Want::BadRequest,
        ),
        (
            "padded signature (==)",
            format!("{valid}=="),
            Want::Invalid(TokenError::BadEncoding),
        ),
        (
            "padded signature (=)",
            format!("{valid}="),
            Want::Invalid(TokenError::BadEncoding),
        ),
    ];
    for (label, token, want) in padded_rows {
        rows.push((label.into(), token, want));
    }
    // Control: the unpadded forms of the same segments verify.
    rows.push((
        "unpadded header variant".into(),
        signer.sign_segments(&parts[0], &parts[1]),
        Want::Allow,
    ));

    // Non-canonical base64url: unused trailing bits set in the last character.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for remainder in [2, 3] {
        let canonical = unaligned_payload(&claims, remainder);
        let last = *canonical.as_bytes().last().unwrap();
        let index = ALPHABET.iter().position(|&c| c == last).unwrap();
        let noncanonical_char = ALPHABET[index ^ 1] as char;
        let noncanonical = format!("{}{noncanonical_char}", &canonical[..canonical.len() - 1]);
        // The canonical form verifies, the non-canonical one must not.
        rows.push((
            format!("canonical payload, {remainder} trailing chars"),
            signer.sign_segments(&header, &canonical),
            Want::Allow,
        ));
        rows.push((
            format!("non-canonical payload, {remainder} trailing chars"),
            signer.sign_segments(&header, &noncanonical),
            Want::Invalid(TokenError::BadEncoding),
        ));
    }

    // The standard base64 alphabet ('+' and '/') is not base64url.
    let tilde_claims = with(claims.clone(), "note", json!("~~~~~~~~~~~~"));
    let mut standard = None;
    for n in 0..3 {
        let payload = b64(with(tilde_claims.clone(), "pad", json!("a".repeat(n))).to_string());
        if payload.contains('-') || payload.contains('_') {
            standard = Some(payload.replace('-', "+").replace('_', "/"));
            break;
        }
    }
    let standard = standard.expect("no '-' or '_' in the encoded payload");
    rows.push((
        "standard base64 alphabet in the payload".into(),
        signer.sign_segments(&header, &standard),
        Want::Invalid(TokenError::BadEncoding),
    ));
    rows.push((
        "not base64 at all".into(),
        signer.sign_segments("~~~~", &b64(&claims_text)),
        Want::Invalid(TokenError::BadEncoding),
    ));

    // Shapes that are not a compact JWS.
    let jwe_header = b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"key-1"}"#);
    rows.push((
        "JWE (five segments)".into(),
        format!(
            "{jwe_header}.{}.{}.{}.{}",
            b64([1u8; 256]),
            b64([2u8; 12]),
            b64(&claims_text),
            b64([3u8; 16])
        ),
        Want::Invalid(TokenError::Malformed),
    ));
    rows.push((
        "four segments".into(),
        format!("{valid}.{}", b64("x")),
        Want::Invalid(TokenError::Malformed),
    ));
    rows.push((
        "two segments".into(),
        valid.rsplit_once('.').unwrap().0.to_owned(),
        Want::Invalid(TokenError::Malformed),
    ));
    rows.push((
        "empty header segment".into(),
        format!(".{}", valid.split_once('.').unwrap().1),
        Want::Invalid(TokenError::Malformed),
    ));
    rows.push((
        "opaque token".into(),
        "2YotnFZFEjr1zCsicMWpAA".into(),
        Want::Invalid(TokenError::Malformed),
    ));
    rows.push(("valid".into(), valid.clone(), Want::Allow));

    for (label, token, want) in &rows {
        expect(&world, &gw, "GET", "/orders/1", token, *want, label).await;
    }

    // JWS JSON serialization: '{', '"' and ':' are not b64token characters, so
    // it never gets past the bearer syntax check.
    let parts: Vec<&str> = valid.split('.').collect();
    let json_serialization = json!({
        "payload": parts[1],
        "signatures": [{"protected": parts[0], "signature": parts[2]}],
    })
    .to_string();
    let flattened = json!({
        "payload": parts[1], "protected": parts[0], "signature": parts[2],
    })
    .to_string();
    for (label, token) in [
        ("JWS JSON serialization", json_serialization),
        ("flattened JWS JSON serialization", flattened),
    ] {
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &token,
            Want::BadRequest,
            label,
        )
        .await;
    }
}

#[tokio::test]
async fn required_typ() {
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config_with("    require_typ: at+jwt\n")).await;
    let claims = fresh_claims("orders:read");
    let header = |typ: Option<&str>| match typ {
        Some(typ) => json!({"alg": "ES256", "kid": "key-1", "typ": typ}),
        None => json!({"alg": "ES256", "kid": "key-1"}),
    };
    let wrong = Want::Invalid(TokenError::WrongType);
    let rows = [
        (Some("at+jwt"), Want::Allow),
        (Some("application/at+jwt"), Want::Allow),
        (Some("AT+JWT"), Want::Allow),
        (Some("Application/AT+JWT"), Want::Allow),
        (Some("JWT"), wrong),
        (Some("jwt"), wrong),
        (Some("at+jwt "), wrong),
        (Some("application/jwt"), wrong),
        (Some("text/at+jwt"), wrong),
        (Some(""), wrong),
        (None, wrong),
    ];
    for (typ, want) in rows {
        let token = signer.sign(&header(typ), &claims);
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &token,
            want,
            &format!("typ {typ:?}"),
        )
        .await;
    }
    let numeric = signer.sign(&json!({"alg": "ES256", "kid": "key-1", "typ": 1}), &claims);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &numeric,
        Want::Invalid(TokenError::BadHeader),
        "typ not a string",
    )
    .await;

    // Without require_typ, a typ of no access token (a logout token, a
    // security event, a DPoP proof, ...) is refused; any other, or none,
    // passes.
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config()).await;
    for (typ, want) in [
        (Some("JWT"), Want::Allow),
        (None, Want::Allow),
        (Some("at+jwt"), Want::Allow),
        (Some("logout+jwt"), wrong),
        (Some("application/secevent+jwt"), wrong),
        (Some("DPoP+JWT"), wrong),
        (Some("token-introspection+jwt"), wrong),
    ] {
        let token = signer.sign(&header(typ), &claims);
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &token,
            want,
            &format!("typ {typ:?} without require_typ"),
        )
        .await;
    }
    // Claims that say the token is no access token, whatever its header:
    // Cognito's `token_use`, Keycloak's `typ`.
    for (claim, value, want) in [
        ("token_use", json!("id"), wrong),
        ("token_use", json!("access"), Want::Allow),
        ("token_use", json!(1), wrong),
        ("typ", json!("ID"), wrong),
        ("typ", json!("Refresh"), wrong),
        ("typ", json!("Logout"), wrong),
        ("typ", json!("Bearer"), Want::Allow),
    ] {
        let mut claims = claims.clone();
        claims[claim] = value.clone();
        let token = signer.sign(&header(Some("JWT")), &claims);
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &token,
            want,
            &format!("{claim}: {value}"),
        )
        .await;
    }
}

#[tokio::test]
async fn scope_look_alikes_and_scope_claim_types() {
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config()).await;
    let admin = Want::Forbidden("admin");
    let malformed = Want::Invalid(TokenError::WrongClaimType);
    let rows: Vec<(&str, Value, Want)> = vec![
        ("admin", json!("admin"), Want::Allow),
        (
            "admin among others",
            json!("orders:read admin x"),
            Want::Allow,
        ),
        ("admin:read", json!("admin:read"), admin),
        ("Admin", json!("Admin"), admin),
        ("ADMIN", json!("ADMIN"), admin),
        ("administrator", json!("administrator"), admin),
        ("adm", json!("adm"), admin),
        ("comma-separated", json!("admin,orders:read"), admin),
        // Characters RFC 6749 3.3 leaves out of scope tokens make the claim
        // malformed: an upstream splitting the scopes header on any blank
        // would read `admin` in "orders:read x\tadmin".
        ("tab-separated", json!("admin\torders:read"), malformed),
        (
            "a tab inside one of several",
            json!("orders:read x\tadmin"),
            malformed,
        ),
        ("quoted", json!("\"admin\""), malformed),
        ("non-ASCII", json!("admin orders:\u{e9}crire"), malformed),
        ("empty scope", json!(""), admin),
        // Spring Authorization Server's shape: an array of single scopes.
        (
            "scope as a JSON array",
            json!(["orders:read", "admin"]),
            Want::Allow,
        ),
        ("scope array without admin", json!(["orders:read"]), admin),
        (
            "scope array entry with a space",
            json!(["x admin"]),
            malformed,
        ),
        (
            "scope array with a non-string",
            json!(["admin", 1]),
            malformed,
        ),
        (
            "scope array entry with a tab",
            json!(["x\tadmin"]),
            malformed,
        ),
        ("scope as an object", json!({"admin": true}), malformed),
        ("scope as a boolean", json!(true), malformed),
    ];
    for (label, scope, want) in rows {
        let token = signer.mint(&with(fresh_claims(""), "scope", scope));
        expect(&world, &gw, "GET", "/admin", &token, want, label).await;
    }
    // `scp` is ignored when the issuer reads `scope`.
    let scp_only = without(with(fresh_claims(""), "scp", json!(["admin"])), "scope");
    expect(
        &world,
        &gw,
        "GET",
        "/admin",
        &signer.mint(&scp_only),
        admin,
        "scp with scope_claim scope",
    )
    .await;
    let no_scope = without(fresh_claims(""), "scope");
    expect(
        &world,
        &gw,
        "GET",
        "/admin",
        &signer.mint(&no_scope),
        admin,
        "no scope claim at all",
    )
    .await;

    // An issuer that reads `scp`.
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config_with("    scope_claim: scp\n")).await;
    let scp = |value: Value| without(with(fresh_claims(""), "scp", value), "scope");
    let rows: Vec<(&str, Value, Want)> = vec![
        ("scp array", scp(json!(["admin"])), Want::Allow),
        ("scp string", scp(json!("admin other")), Want::Allow),
        (
            "scp array of several",
            scp(json!(["x", "admin"])),
            Want::Allow,
        ),
        ("scp look-alike", scp(json!(["Admin", "admin:read"])), admin),
        ("scp empty array", scp(json!([])), admin),
        (
            "scope claim ignored when scp is read",
            with(fresh_claims("admin"), "scp", json!(["orders:read"])),
            admin,
        ),
        (
            "scp with a non-string",
            scp(json!(["admin", 1])),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "scp an object",
            scp(json!({"0": "admin"})),
            Want::Invalid(TokenError::WrongClaimType),
        ),
        (
            "scp entry with a space (one malformed scope, not two)",
            scp(json!(["x admin"])),
            Want::Invalid(TokenError::WrongClaimType),
        ),
    ];
    for (label, claims, want) in rows {
        expect(
            &world,
            &gw,
            "GET",
            "/admin",
            &signer.mint(&claims),
            want,
            label,
        )
        .await;
    }

    // Issuers that grant by `roles` (Microsoft Entra ID's app-only tokens)
    // or `permissions` (Auth0's RBAC), as arrays of single scopes.
    for claim in ["roles", "permissions"] {
        let (signer, world) = lab().await;
        let config = world.config_with(&format!("    scope_claim: {claim}\n"));
        let gw = Gateway::start(&config).await;
        let granting = |value: Value| without(with(fresh_claims(""), claim, value), "scope");
        let rows: Vec<(&str, Value, Want)> = vec![
            ("admin", granting(json!(["admin"])), Want::Allow),
            ("others", granting(json!(["orders:read"])), admin),
            ("none", without(fresh_claims("admin"), "scope"), admin),
            (
                "scope ignored",
                with(fresh_claims("admin"), claim, json!(["orders:read"])),
                admin,
            ),
            ("a space inside", granting(json!(["x admin"])), malformed),
        ];
        for (label, claims, want) in rows {
            let label = format!("{claim}: {label}");
            expect(
                &world,
                &gw,
                "GET",
                "/admin",
                &signer.mint(&claims),
                want,
                &label,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn any_scopes_route() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    // One set that suffices: RFC 6750 has no "one of".
    let any = Want::Forbidden("orders:write");
    for (scope, want) in [
        ("orders:write", Want::Allow),
        ("orders:admin", Want::Allow),
        ("orders:write orders:admin", Want::Allow),
        ("orders:read orders:write", Want::Allow),
        ("orders:read", any),
        ("orders:writer", any),
        ("orders", any),
        ("", any),
    ] {
        let auth = format!("Bearer {}", world.key.mint(&fresh_claims(scope)).unwrap());
        let (reply, forwarded) = request(
            &world,
            "POST",
            &gw.url("/orders/1"),
            &[("authorization", &auth)],
            "{}",
        )
        .await;
        check(
            &reply,
            forwarded,
            want,
            &format!("POST with scope {scope:?}"),
        );
    }
}

/// The CORS preflight map: preflights pass by default (`forward:`), but not
/// to `/orders/{*rest}`; `/reports/{id}` has an `OPTIONS` route of its own.
fn preflight_config(world: &World) -> String {
    let routes = world.config();
    let (head, _) = routes.split_once("routes:\n").unwrap();
    format!(
        "{head}forward:\n  cors_preflight: true\nroutes:\n{}",
        r#"  - path: /orders/{id}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /orders/{*rest}
    methods: [POST, PUT, DELETE]
    upstream: app
    any_scopes: [orders:write, orders:admin]
    forward:
      cors_preflight: false
  - path: /admin
    upstream: app
    scopes: [admin]
  - path: /reports/{id}
    methods: [GET]
    upstream: app
    scopes: [reports:read]
  - path: /reports/{id}
    methods: [OPTIONS]
    upstream: app
    scopes: [reports:admin]
"#
    )
}

/// A preflight case: what it is, path, headers, body, status.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, u16);

/// A browser's CORS preflight carries no credentials: on a route with
/// `cors_preflight` it reaches the app without a token (which the app then
/// answers), and only a request that is exactly a preflight for a method
/// that route serves does; anything else is judged as before.
#[tokio::test]
async fn cors_preflights_reach_the_app_only_where_a_route_allows_them() {
    let world = World::new().await;
    let gw = Gateway::start(&preflight_config(&world)).await;
    let token = format!("Bearer {}", world.token("orders:read admin"));
    let origin = ("origin", "https://app.example");
    let asks = |method| ("access-control-request-method", method);
    let preflight = [origin, asks("GET")];
    // What it is, path, headers, body, status (200: forwarded).
    let cases: Vec<Case> = vec![
        (
            "GET, with a spoofed identity",
            "/orders/7",
            vec![origin, asks("GET"), ("x-auth-subject", "mallory")],
            "",
            200,
        ),
        (
            "with Connection: keep-alive",
            "/orders/7",
            vec![origin, asks("GET"), ("connection", "keep-alive")],
            "",
            200,
        ),
        (
            "from an opaque origin",
            "/orders/7",
            vec![("origin", "null"), asks("GET")],
            "",
            200,
        ),
        (
            "HEAD, served by the GET route",
            "/orders/7",
            vec![origin, asks("HEAD")],
            "",
            200,
        ),
        (
            "POST to a route serving every method",
            "/admin",
            vec![origin, asks("POST")],
            "",
            200,
        ),
        (
            "DELETE: its route sets cors_preflight: false",
            "/orders/7",
            vec![origin, asks("DELETE")],
            "",
            405,
        ),
        (
            "PATCH: no route serves it",
            "/orders/7",
            vec![origin, asks("PATCH")],
            "",
            405,
        ),
        ("no Origin", "/orders/7", vec![asks("GET")], "", 405),
        (
            "an empty Origin",
            "/orders/7",
            vec![("origin", ""), asks("GET")],
            "",
            405,
        ),
        (
            "Connection names Origin (removed before the app)",
            "/orders/7",
            vec![origin, asks("GET"), ("connection", "keep-alive, Origin")],
            "",
            405,
        ),
        (
            "Connection names the method asked",
            "/orders/7",
            vec![
                origin,
                asks("GET"),
                ("connection", "access-control-request-method"),
            ],
            "",
            405,
        ),
        (
            // No handshake either: that is a GET (RFC 6455 4.1).
            "a WebSocket upgrade",
            "/admin",
            vec![
                origin,
                asks("GET"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            "",
            400,
        ),
        (
            "an Upgrade header",
            "/admin",
            vec![origin, asks("GET"), ("upgrade", "websocket")],
            "",
            401,
        ),
        ("no method asked", "/orders/7", vec![origin], "", 405),
        (
            "two methods asked",
            "/orders/7",
            vec![origin, asks("GET"), asks("GET")],
            "",
            405,
        ),
        (
            "a lower-case method asked (refused as a request)",
            "/admin",
            vec![origin, asks("post")],
            "",
            401,
        ),
        (
            "OPTIONS asked",
            "/orders/7",
            vec![origin, asks("OPTIONS")],
            "",
            405,
        ),
        (
            "OPTIONS asked, of a route serving every method",
            "/admin",
            vec![origin, asks("OPTIONS")],
            "",
            200,
        ),
        (
            "CONNECT asked (never forwarded)",
            "/admin",
            vec![origin, asks("CONNECT")],
            "",
            401,
        ),
        (
            "not a method",
            "/orders/7",
            vec![origin, asks("G T")],
            "",
            405,
        ),
        (
            "with credentials",
            "/orders/7",
            vec![origin, asks("GET"), ("authorization", &token)],
            "",
            405,
        ),
        ("with a body", "/orders/7", preflight.to_vec(), "abc", 405),
        (
            "with an access_token in the query",
            "/orders/7?access_token=x",
            preflight.to_vec(),
            "",
            405,
        ),
        (
            "no Origin, to a route serving every method",
            "/admin",
            vec![asks("POST")],
            "",
            401,
        ),
        (
            "a route of its own matches OPTIONS",
            "/reports/9",
            preflight.to_vec(),
            "",
            401,
        ),
        ("no route at all", "/nowhere", preflight.to_vec(), "", 404),
    ];
    let mut passed = 0;
    for (label, path, headers, body, want) in &cases {
        let before = world.upstream.count();
        let reply = send(
            "OPTIONS",
            &gw.url(path),
            headers,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, *want, "{label}: {}", reply.text());
        let seen = world.upstream.seen_since(before);
        if *want != 200 {
            assert!(seen.is_empty(), "{label}: forwarded");
            continue;
        }
        passed += 1;
        let [seen] = seen.as_slice() else {
            panic!("{label}: forwarded {} times", seen.len())
        };
        assert_eq!(seen.method, "OPTIONS", "{label}");
        assert_eq!(seen.path_and_query, *path, "{label}");
        // What made it a preflight reaches the app as sent.
        for name in ["origin", "access-control-request-method"] {
            let sent = headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            let got = seen.headers.get(name).and_then(|v| v.to_str().ok());
            assert_eq!(got, sent, "{label}: {name}");
        }
        for name in ["authorization", "x-auth-subject", "x-auth-scopes"] {
            assert!(
                !seen.headers.contains_key(name),
                "{label}: {name} forwarded"
            );
        }
    }

    // Over HTTP/2 as well, where a request without a body ends its stream
    // with its headers.
    let before = world.upstream.count();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = http::Request::options(gw.url("/orders/7"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(world.upstream.seen_since(before).len(), 1);
    passed += 1;

    // Counted as their own reason, under no issuer.
    let metrics = gw.metrics().await;
    let counted = metric(
        &metrics,
        "scopegate_auth_decisions_total",
        &[
            ("issuer", "-"),
            ("decision", "allow"),
            ("reason", "preflight"),
        ],
    );
    assert_eq!(counted, f64::from(passed), "{metrics}");

    // The requests a route serves still need their tokens.
    let reply = get(&gw.url("/orders/7"), &[origin]).await.unwrap();
    assert_eq!(reply.status, 401);
    let reply = get(&gw.url("/orders/7"), &[("authorization", &token)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

/// On a route whose app answers preflights, the gateway's own refusals are
/// readable by the app's script on another origin (else an expired token's
/// 401 reaches it as a network error); answers of the app, and refusals on
/// other routes, are left as they are.
#[tokio::test]
async fn refusals_on_cors_routes_are_readable_cross_origin() {
    let world = World::new().await;
    let gw = Gateway::start(&preflight_config(&world)).await;
    let origin = ("origin", "https://app.example");
    let read_only = format!("Bearer {}", world.token("orders:read"));
    let admin_only = format!("Bearer {}", world.token("admin"));
    // (what, method, path, headers, status, readable)
    let cases = [
        ("no token", "GET", "/orders/7", vec![origin], 401, true),
        (
            "a forged token",
            "GET",
            "/orders/7",
            vec![origin, ("authorization", "Bearer a.b.c")],
            401,
            true,
        ),
        (
            "a token without the scope",
            "GET",
            "/orders/7",
            vec![origin, ("authorization", admin_only.as_str())],
            403,
            true,
        ),
        (
            "a path no route serves",
            "PATCH",
            "/admin/x",
            vec![origin],
            404,
            false,
        ),
        (
            "cors_preflight: false on its route",
            "DELETE",
            "/orders/7",
            vec![origin],
            401,
            false,
        ),
        (
            "forwarded: the app's own answer",
            "GET",
            "/orders/7",
            vec![origin, ("authorization", read_only.as_str())],
            200,
            false,
        ),
    ];
    for (what, method, path, headers, status, readable) in cases {
        let reply = send(method, &gw.url(path), &headers, Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        let allowed = reply.header("access-control-allow-origin");
        let exposed = reply.header("access-control-expose-headers");
        if readable {
            assert_eq!(allowed.as_deref(), Some("*"), "{what}");
            assert!(
                exposed.is_some_and(|e| e.contains("WWW-Authenticate")),
                "{what}"
            );
            assert!(reply.header("access-control-allow-credentials").is_none());
        } else {
            assert_eq!(allowed, None, "{what}");
        }
    }
}

/// Without `cors_preflight`, a preflight is an `OPTIONS` like any other.
#[tokio::test]
async fn cors_preflights_need_a_token_by_default() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "GET"),
    ];
    for (path, want) in [("/orders/7", 405), ("/admin", 401)] {
        let reply = send("OPTIONS", &gw.url(path), &preflight, Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, want, "{path}");
    }
    // Nor where the app would not see it as one: `remove_headers` takes
    // out what makes it a preflight.
    for removed in ["Origin", "Access-Control-Request-Method"] {
        let yaml = world.config().replace(
            "routes:\n",
            &format!("forward:\n  cors_preflight: true\n  remove_headers: [{removed}]\nroutes:\n"),
        );
        let gw = Gateway::start(&yaml).await;
        let reply = send("OPTIONS", &gw.url("/admin"), &preflight, Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{removed} removed");
    }
    assert_eq!(world.upstream.count(), 0);
}

// ---------------------------------------------------------------------------
// 3. Route issuer restriction.
// ---------------------------------------------------------------------------

const SECOND_ISSUER: &str = "https://idp2.test";

/// The standard world's gateway (with `first_extra` for its issuer) and a
/// second issuer, `second`, whose key has the id `kid`, and which alone
/// `/second` (GET, orders:read) accepts. Returns its key, its key server
/// (to keep it serving) and the gateway.
async fn with_second_issuer(
    world: &World,
    kid: &str,
    first_extra: &str,
) -> (SigningKey, JwksServer, Gateway) {
    let second = SigningKey::generate(kid).unwrap();
    let second_jwks = JwksServer::start(second.jwks()).await;
    let extra = format!(
        "{first_extra}  - name: second\n    issuer: {SECOND_ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n    algorithms: [ES256]\n",
        second_jwks.uri()
    );
    let yaml = format!(
        "{}  - path: /second\n    upstream: app\n    scopes: [orders:read]\n    issuers: [second]\n",
        world.config_with(&extra)
    );
    (second, second_jwks, Gateway::start(&yaml).await)
}

#[tokio::test]
async fn route_issuer_restriction_holds_on_cache_hits() {
    let world = World::new().await;
    // The second issuer's key has the same kid as the first's: key sets must
    // be per issuer.
    let (second, _second_jwks, gw) = with_second_issuer(&world, "key-1", "").await;

    let second_claims = || with(fresh_claims("orders:read"), "iss", json!(SECOND_ISSUER));
    let first_token = world.key.mint(&fresh_claims("orders:read")).unwrap();
    let second_token = second.mint(&second_claims()).unwrap();
    let not_accepted = Want::Invalid(TokenError::IssuerNotAccepted);

    let rows: Vec<(&str, &str, String, Want)> = vec![
        (
            "first issuer on a second-only route (not cached yet)",
            "/second",
            world.token("orders:read"),
            not_accepted,
        ),
        (
            "second issuer on its route",
            "/second",
            second_token.clone(),
            Want::Allow,
        ),
        (
            "second issuer on an unrestricted route",
            "/orders/1",
            second_token.clone(),
            Want::Allow,
        ),
        (
            "second issuer's claims signed by the first issuer's key",
            "/second",
            world.key.mint(&second_claims()).unwrap(),
            Want::Invalid(TokenError::BadSignature),
        ),
        (
            "first issuer's claims signed by the second issuer's key",
            "/orders/1",
            second.mint(&fresh_claims("orders:read")).unwrap(),
            Want::Invalid(TokenError::BadSignature),
        ),
        (
            "first issuer on an unrestricted route (caches it)",
            "/orders/1",
            first_token.clone(),
            Want::Allow,
        ),
    ];
    for (label, path, token, want) in &rows {
        expect(&world, &gw, "GET", path, token, *want, label).await;
    }

    // The first issuer's token is now cached; the restriction still holds.
    let hits_before = cache_hits(&gw.metrics().await);
    expect(
        &world,
        &gw,
        "GET",
        "/second",
        &first_token,
        not_accepted,
        "cached first-issuer token on the second-only route",
    )
    .await;
    let hits_after = cache_hits(&gw.metrics().await);
    assert_eq!(
        hits_after,
        hits_before + 1.0,
        "the restricted request did not take the cache-hit path"
    );
    // And the cached token still works where it is accepted.
    expect(
        &world,
        &gw,
        "GET",
        "/orders/2",
        &first_token,
        Want::Allow,
        "cached first-issuer token on an unrestricted route",
    )
    .await;
}

#[tokio::test]
async fn a_route_refuses_another_issuers_token_before_fetching_keys_for_it() {
    let world = World::new().await;
    let (_second, _second_jwks, gw) =
        with_second_issuer(&world, "key-2", "    jwks_refetch_cooldown: 0s\n").await;
    // The first issuer's claims under a key it has not published: where
    // that issuer is accepted, the unknown kid makes the gateway fetch its
    // key set again.
    let unpublished = SigningKey::generate("key-9")
        .unwrap()
        .mint(&fresh_claims("orders:read"))
        .unwrap();

    expect_refetches(
        &world,
        &gw,
        "/second",
        &unpublished,
        Want::Invalid(TokenError::IssuerNotAccepted),
        "first issuer's token on a second-only route",
        0,
    )
    .await;
    expect_refetches(
        &world,
        &gw,
        "/orders/1",
        &unpublished,
        Want::Invalid(TokenError::UnknownKey),
        "the same token where its issuer is accepted",
        1,
    )
    .await;
}

// ---------------------------------------------------------------------------
// 4. The verified-token cache.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cache_hits_are_counted_and_scopes_still_checked() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let token = world.key.mint(&fresh_claims("orders:read")).unwrap();

    let start = cache_hits(&gw.metrics().await);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &token,
        Want::Allow,
        "first use",
    )
    .await;
    let after_first = cache_hits(&gw.metrics().await);
    assert_eq!(after_first, start, "the first use cannot be a cache hit");
    let misses = metric(
        &gw.metrics().await,
        "scopegate_token_cache_requests_total",
        &[("kind", "jwt"), ("result", "miss")],
    );
    assert!(misses >= 1.0, "the first use was not counted as a miss");

    expect(
        &world,
        &gw,
        "GET",
        "/orders/2",
        &token,
        Want::Allow,
        "second use",
    )
    .await;
    let after_second = cache_hits(&gw.metrics().await);
    assert_eq!(
        after_second,
        after_first + 1.0,
        "the second use was not a cache hit"
    );

    // Same cached token on a route it lacks the scope for.
    expect(
        &world,
        &gw,
        "GET",
        "/admin",
        &token,
        Want::Forbidden("admin"),
        "cached token without the admin scope",
    )
    .await;
    let after_third = cache_hits(&gw.metrics().await);
    assert_eq!(
        after_third,
        after_second + 1.0,
        "the /admin request missed the cache"
    );

    // A far-future exp is cached (bounded) and served from the cache too.
    let forever = world
        .key
        .mint(&with(fresh_claims("orders:read"), "exp", json!(u64::MAX)))
        .unwrap();
    for attempt in ["first", "second"] {
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &forever,
            Want::Allow,
            &format!("exp u64::MAX, {attempt} use"),
        )
        .await;
    }
    assert_eq!(
        cache_hits(&gw.metrics().await),
        after_third + 1.0,
        "the far-future token was not served from the cache"
    );

    // A rejected token is not cached as valid: the same bad token stays bad.
    let expired = world
        .key
        .mint(&with(
            fresh_claims("orders:read"),
            "exp",
            json!(now() - 120),
        ))
        .unwrap();
    for attempt in ["first", "second"] {
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &expired,
            Want::Invalid(TokenError::Expired),
            &format!("expired token, {attempt} attempt"),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// 5. Key rotation.
// ---------------------------------------------------------------------------

/// A key published again under another `kid`, or pinned to an algorithm
/// its tokens do not use, is withdrawn for them though its material stays:
/// a token verified and cached before stops passing once the new set is
/// loaded, as a fresh copy of it would.
#[tokio::test]
async fn a_key_renamed_or_repinned_withdraws_its_cached_tokens() {
    for (what, field, value) in [
        ("renamed", "kid", "key-9"),
        ("pinned to ES384", "alg", "ES384"),
    ] {
        let (key1, world) = lab().await;
        let gw = Gateway::start(&world.config_with("    jwks_refetch_cooldown: 0s\n")).await;
        let cached = key1.mint(&fresh_claims("orders:read"));
        expect(&world, &gw, "GET", "/orders/1", &cached, Want::Allow, what).await;

        let mut jwk = key1.public_jwk();
        jwk[field] = value.into();
        let other = Signer::generate("key-2");
        world
            .jwks
            .set_document(&json!({ "keys": [jwk, other.public_jwk()] }).to_string());
        // An unknown kid makes the gateway fetch the new set.
        let stranger = Signer::generate("key-3");
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &stranger.mint(&fresh_claims("orders:read")),
            Want::Invalid(TokenError::UnknownKey),
            what,
        )
        .await;
        let reply = get_with_token(&gw.url("/orders/1"), &cached).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text());
        // The other key of the new set works.
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &other.mint(&fresh_claims("orders:read")),
            Want::Allow,
            what,
        )
        .await;
    }
}

/// A key-set refetch goes on when the request that started it is dropped
/// (its HTTP/2 stream reset mid-fetch): its cooldown has begun, and a fetch
/// cancelled with the request left a newly published key unknown, and
/// every token signed with it refused, until the next scheduled refresh.
#[tokio::test]
async fn a_refetch_outlives_the_request_that_started_it() {
    let (key1, world) = lab().await;
    let gw = Gateway::start(
        &world.config_with("    jwks_refetch_cooldown: 2s\n    jwks_refresh_interval: 1h\n"),
    )
    .await;
    // Past the cooldown of the fetch at start, so that the next unknown kid
    // refetches. The one after the dropped request comes well within its
    // cooldown: it is the dropped fetch's result that lets it through.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let key2 = Signer::generate("key-2");
    let token = key2.mint(&fresh_claims("orders:read"));
    world
        .jwks
        .set_document(&merge_jwks(&[&key1.jwks(), &key2.jwks()]));
    world.jwks.set_mode(JwksMode::Hold);
    let fetches = world.jwks.fetches();

    let request = http::Request::get(gw.url("/orders/1"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let pending = tokio::spawn(async move { client.request(request).await });
    let mut waited = 0;
    while world.jwks.fetches() == fetches {
        waited += 1;
        assert!(waited < 500, "the unknown kid fetched no key set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pending.abort();
    let abandoned =
        r#"scopegate_requests_total{method="GET",route="GET /orders/{id}",status="499"}"#;
    assert!(
        wait_for_metrics(&gw, |text| text.contains(abandoned)).await,
        "the reset request was not dropped"
    );
    world.jwks.release();
    world.jwks.set_mode(JwksMode::Serve);
    expect_refetches(
        &world,
        &gw,
        "/orders/1",
        &token,
        Want::Allow,
        "key-2, fetched for the dropped request",
        0,
    )
    .await;
}

#[tokio::test]
async fn key_rotation_refetches_on_unknown_kid() {
    let (key1, world) = lab().await;
    let gw = Gateway::start(&world.config_with("    jwks_refetch_cooldown: 0s\n")).await;
    let key2 = Signer::generate("key-2");
    let old_token = key1.mint(&fresh_claims("orders:read"));
    let new_token = key2.mint(&fresh_claims("orders:read"));

    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &old_token,
        Want::Allow,
        "key-1 before rotation",
    )
    .await;
    expect_refetches(
        &world,
        &gw,
        "/orders/1",
        &new_token,
        Want::Invalid(TokenError::UnknownKey),
        "key-2 before it is published",
        1,
    )
    .await;

    world
        .jwks
        .set_document(&merge_jwks(&[&key1.jwks(), &key2.jwks()]));
    expect_refetches(
        &world,
        &gw,
        "/orders/1",
        &new_token,
        Want::Allow,
        "key-2 after it is published (the earlier refusal was not cached)",
        1,
    )
    .await;
    let fresh_old = key1.mint(&fresh_claims("orders:read"));
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &fresh_old,
        Want::Allow,
        "key-1 still published",
    )
    .await;

    // key-1 retired: once a refetch has happened, new key-1 tokens fail.
    world.jwks.set_document(&key2.jwks());
    let stranger = Signer::generate("key-3");
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &stranger.mint(&fresh_claims("orders:read")),
        Want::Invalid(TokenError::UnknownKey),
        "unknown key-3 (triggers a refetch)",
    )
    .await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &key1.mint(&fresh_claims("orders:read")),
        Want::Invalid(TokenError::UnknownKey),
        "key-1 after it was retired",
    )
    .await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &fresh_old,
        Want::Invalid(TokenError::UnknownKey),
        "a key-1 token verified and cached before key-1 was retired",
    )
    .await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &key2.mint(&fresh_claims("orders:read")),
        Want::Allow,
        "key-2 after key-1 was retired",
    )
    .await;
}

/// A key replaced under the same `kid` (or an issuer that publishes one key
/// without any `kid`): the new key's tokens fail their signature against the
/// keys held, which refetches once per cooldown, so they pass as soon as the
/// new key is published, not at the next periodic refresh.
#[tokio::test]
async fn a_key_replaced_under_the_same_kid_refetches_on_a_bad_signature() {
    let (old_key, world) = lab().await;
    let gw = Gateway::start(
        &world.config_with("    jwks_refetch_cooldown: 0s\n    jwks_refresh_interval: 1h\n"),
    )
    .await;
    let new_key = Signer::generate("key-1");
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &old_key.mint(&fresh_claims("orders:read")),
        Want::Allow,
        "the old key-1",
    )
    .await;
    world.jwks.set_document(&new_key.jwks());
    expect_refetches(
        &world,
        &gw,
        "/orders/1",
        &new_key.mint(&fresh_claims("orders:read")),
        Want::Allow,
        "the new key-1, published under the same kid",
        1,
    )
    .await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &old_key.mint(&fresh_claims("orders:read")),
        Want::Invalid(TokenError::BadSignature),
        "the old key-1 after it was replaced",
    )
    .await;
}

/// ES384 (P-384) and EdDSA (Ed25519) tokens verify end to end when they are
/// the issuer's allowed algorithm, as ES256 ones do everywhere else here:
/// the header's `alg` maps to them, and their keys are read from the set.
#[tokio::test]
async fn es384_and_eddsa_tokens_verify_end_to_end() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    let (_, world) = lab().await;
    let random = SystemRandom::new();
    let p384 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &random).unwrap();
    let p384 = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, p384.as_ref()).unwrap();
    // An uncompressed point: 0x04, then x and y of 48 bytes each.
    let point = p384.public_key().as_ref();
    let p384_jwk = json!({
        "kty": "EC", "crv": "P-384", "kid": "p384", "use": "sig",
        "x": b64(&point[1..49]), "y": b64(&point[49..97]),
    });
    let header = json!({"alg": "ES384", "typ": "at+jwt", "kid": "p384"});
    let input = format!(
        "{}.{}",
        b64(header.to_string()),
        b64(fresh_claims("orders:read").to_string())
    );
    let signature = p384.sign(&random, input.as_bytes()).unwrap();
    let p384_token = format!("{input}.{}", b64(signature.as_ref()));

    let ed25519 = Ed25519KeyPair::generate_pkcs8(&random).unwrap();
    let ed25519 = SigningKey::from_pkcs8("ed", Algorithm::EdDSA, ed25519.as_ref()).unwrap();
    let ed25519_token = ed25519.mint(&fresh_claims("orders:read")).unwrap();

    for (alg, jwk, token) in [
        ("ES384", p384_jwk, p384_token),
        ("EdDSA", ed25519.public_jwk().clone(), ed25519_token),
    ] {
        world
            .jwks
            .set_document(&json!({ "keys": [jwk] }).to_string());
        let config = world
            .config_with("")
            .replace("algorithms: [ES256]", &format!("algorithms: [{alg}]"));
        let gw = Gateway::start(&config).await;
        expect(&world, &gw, "GET", "/orders/1", &token, Want::Allow, alg).await;
        gw.stop().await;
    }
}

/// A key replaced under the same `kid` by one of another type (an Ed25519
/// key-1 by a P-256 key-1): the token's `alg` is allowed but fits no key
/// held, which refetches once per cooldown as a bad signature does.
#[tokio::test]
async fn a_key_replaced_under_the_same_kid_by_another_type_refetches() {
    let (new_key, world) = lab().await;
    let ed25519 =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let old_key = SigningKey::from_pkcs8("key-1", Algorithm::EdDSA, ed25519.as_ref()).unwrap();
    world.jwks.set_document(old_key.jwks());
    let config = world
        .config_with("    jwks_refetch_cooldown: 0s\n    jwks_refresh_interval: 1h\n")
        .replace("algorithms: [ES256]", "algorithms: [ES256, EdDSA]");
    let gw = Gateway::start(&config).await;

    world.jwks.set_document(&new_key.jwks());
    expect_refetches(
        &world,
        &gw,
        "/orders/1",
        &new_key.mint(&fresh_claims("orders:read")),
        Want::Allow,
        "the new P-256 key-1, published in place of the Ed25519 one",
        1,
    )
    .await;
}

/// RFC 7518 6.2.1.2-3: an EC key's `x` and `y` are each the full size of a
/// coordinate (32 bytes on P-256). A key whose two members hold the right
/// bytes split elsewhere (the whole point in `x` and nothing in `y`, or a
/// byte of `x` moved into `y`) is malformed, and jose and Nimbus refuse it:
/// it is kept (its `kid` is known) but verifies nothing, as a point off the
/// curve is.
#[tokio::test]
async fn ec_keys_whose_coordinates_are_not_full_size_verify_nothing() {
    let (signer, world) = lab().await;
    let jwk = signer.public_jwk();
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    let (x, y) = (coordinate("x"), coordinate("y"));
    assert_eq!((x.len(), y.len()), (32, 32));
    let point = [x.as_slice(), y.as_slice()].concat();
    let splits: [(&str, &[u8], &[u8]); 3] = [
        ("whole-point-in-x", &point, &[]),
        ("x-one-byte-short", &point[..31], &point[31..]),
        ("y-one-byte-short", &point[..33], &point[33..]),
    ];
    let mut keys = vec![jwk.clone()];
    for (kid, x, y) in splits {
        let mut split = jwk.clone();
        split["kid"] = json!(kid);
        split["x"] = json!(b64(x));
        split["y"] = json!(b64(y));
        keys.push(split);
    }
    world
        .jwks
        .set_document(&json!({ "keys": keys }).to_string());
    let gw = Gateway::start(&world.config_with("    jwks_refetch_cooldown: 0s\n")).await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&fresh_claims("orders:read")),
        Want::Allow,
        "the key with full-size coordinates",
    )
    .await;
    for (kid, _, _) in splits {
        let token = signer.sign(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
            &fresh_claims("orders:read"),
        );
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &token,
            Want::Invalid(TokenError::BadSignature),
            kid,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// 6. Unknown-kid flood.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_is_bounded_by_the_cooldown() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let fetches_at_ready = world.jwks.fetches();
    assert!(fetches_at_ready >= 1);
    let attacker = Signer::generate("unused");
    let before = world.upstream.count();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let kid = format!("flood-{i}-{}", random_hex(8));
        let token = attacker.sign(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
            &fresh_claims("orders:read"),
        );
        let url = gw.url("/orders/1");
        tasks.spawn(async move {
            let auth = format!("Bearer {token}");
            (kid, get(&url, &[("authorization", &auth)]).await.unwrap())
        });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        let (kid, reply) = done.unwrap();
        check(&reply, 0, Want::Invalid(TokenError::UnknownKey), &kid);
        answered += 1;
    }
    assert_eq!(answered, 50);
    assert_eq!(
        world.upstream.count(),
        before,
        "a flood request reached the upstream"
    );
    assert!(
        world.jwks.fetches() <= fetches_at_ready + 1,
        "50 unknown kids caused {} JWKS fetches",
        world.jwks.fetches() - fetches_at_ready
    );
    // The real key still works after the flood.
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &world.token("orders:read"),
        Want::Allow,
        "valid token after the flood",
    )
    .await;
}

// ---------------------------------------------------------------------------
// 7. JWKS outage at runtime.
// ---------------------------------------------------------------------------

/// Keys already loaded keep working while the JWKS endpoint misbehaves in
/// `mode`; a refetch forced by an unknown kid fails with `result` in
/// `scopegate_jwks_fetches_total` and does not drop the loaded keys. The
/// token naming it gets 503 (its key may be one published during the
/// outage), and 401 once a fetch succeeds without it.
async fn outage(mode: JwksMode, result: &str, cause: &str) {
    let (logs, _capturing) = Logs::capture();
    let (signer, world) = lab().await;
    let gw =
        Gateway::start(&world.config_with("    jwks_refetch_cooldown: 0s\n    jwks_timeout: 3s\n"))
            .await;
    let label = |what: &str| format!("{mode:?}: {what}");
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&fresh_claims("orders:read")),
        Want::Allow,
        &label("before the outage"),
    )
    .await;
    assert_eq!(jwks_fetch_results(&gw.metrics().await, result), 0.0);

    world.jwks.set_mode(mode.clone());
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&fresh_claims("orders:read")),
        Want::Allow,
        &label("new token during the outage"),
    )
    .await;

    // An unknown kid forces a refetch, which fails.
    expect_unpublished_key(
        &world,
        &gw,
        Want::Unavailable,
        &label("unknown kid during the outage"),
    )
    .await;
    let text = gw.metrics().await;
    assert_eq!(
        jwks_fetch_results(&text, result),
        1.0,
        "{}: {text}",
        label("fetch result metric")
    );
    // The log says why, beyond the metric's label.
    let logged = logs.text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("JWKS fetch failed") && l.contains(cause)),
        "{}: `{cause}` not logged:\n{logged}",
        label("fetch failure's cause")
    );

    // A token naming no key (RFC 7517 4.5 makes `kid` optional) that no
    // key held verifies may be of a key published since, as an unknown
    // kid may: 503 too, not a 401 sending its client back to the issuer.
    let stranger = Signer::generate("not-published");
    let kid_less = json!({"alg": "ES256", "typ": "at+jwt"});
    let kid_less_token = stranger.sign(&kid_less, &fresh_claims("orders:read"));
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &kid_less_token,
        Want::Unavailable,
        &label("no kid, unpublished key, during the outage"),
    )
    .await;

    // The failed fetch did not drop the keys we had.
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&fresh_claims("orders:read")),
        Want::Allow,
        &label("new token after the failed refetch"),
    )
    .await;

    // The endpoint is back and does not have the key: the token is refused.
    world.jwks.set_mode(JwksMode::Serve);
    expect_unpublished_key(
        &world,
        &gw,
        Want::Invalid(TokenError::UnknownKey),
        &label("unknown kid after the outage"),
    )
    .await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &kid_less_token,
        Want::Invalid(TokenError::BadSignature),
        &label("no kid, unpublished key, after the outage"),
    )
    .await;
}

#[tokio::test]
async fn jwks_outage_http_error_keeps_cached_keys() {
    outage(JwksMode::Fail, "http_error", "answered 500").await;
}

#[tokio::test]
async fn jwks_outage_garbage_keeps_cached_keys() {
    outage(JwksMode::Garbage, "invalid", "not a JWKS document").await;
}

/// A key set that parses but whose keys nothing can use (the issuer's `kid`
/// among them) is no better than garbage: the working keys stay.
#[tokio::test]
async fn jwks_of_only_unusable_keys_keeps_cached_keys() {
    outage(
        JwksMode::Unusable,
        "invalid",
        "no usable signature verification keys",
    )
    .await;
}

/// A fetched key set with no key for the issuer's algorithms (an Ed25519
/// key, RFC 8037 A.2's, where only ES256 is allowed) is refused as a set of
/// no usable keys is, as a `jwks_file` like it is: the keys in force stay,
/// and the fetch counts as `invalid`, its cause logged.
#[tokio::test]
async fn a_key_set_with_no_key_for_the_allowed_algorithms_keeps_the_keys_in_force() {
    let (logs, _capturing) = Logs::capture();
    let (signer, world) = lab().await;
    let gw = Gateway::start(&world.config_with("    jwks_refetch_cooldown: 0s\n")).await;
    // A token of the key in force, accepted.
    let accepted = async |when: &str| {
        let token = signer.mint(&fresh_claims("orders:read"));
        expect(&world, &gw, "GET", "/orders/1", &token, Want::Allow, when).await;
    };
    accepted("before").await;
    // An Ed25519 key alone; and beside it a P-256 key off its curve, which
    // fits ES256 by type but verifies nothing.
    let ed25519 = r#"{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    let off_curve: Value = serde_json::from_str(UNUSABLE_JWKS).unwrap();
    for (n, document) in [
        format!(r#"{{"keys":[{ed25519}]}}"#),
        format!(r#"{{"keys":[{ed25519},{}]}}"#, off_curve["keys"][0]),
    ]
    .into_iter()
    .enumerate()
    {
        world.jwks.set_document(&document);
        expect_unpublished_key(
            &world,
            &gw,
            Want::Unavailable,
            &format!("unknown kid, the set refused: {document}"),
        )
        .await;
        let text = gw.metrics().await;
        assert_eq!(
            jwks_fetch_results(&text, "invalid"),
            (n + 1) as f64,
            "{text}"
        );
    }
    assert!(
        logs.text()
            .contains("no key of the set fits the issuer's algorithms [ES256]"),
        "{}",
        logs.text()
    );
    accepted("after").await;
}

/// A key set may hold keys scopegate cannot verify with beside those it
/// can (a point off the curve here; an RSA key under 2048 bits is another):
/// they are kept, so that a token naming one is a bad signature, and the
/// load names them, since their tokens would otherwise fail without a hint.
#[tokio::test]
async fn unusable_keys_beside_usable_ones_are_named_when_the_set_loads() {
    let (logs, _capturing) = Logs::capture();
    let (signer, world) = lab().await;
    let mut document: Value = serde_json::from_str(&signer.jwks()).unwrap();
    let unusable: Value = serde_json::from_str(UNUSABLE_JWKS).unwrap();
    let mut off_curve = unusable["keys"][0].clone();
    off_curve["kid"] = "retired".into();
    document["keys"].as_array_mut().unwrap().push(off_curve);
    world.jwks.set_document(&document.to_string());
    let gw = Gateway::start(&world.config()).await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&fresh_claims("orders:read")),
        Want::Allow,
        "a token of the usable key",
    )
    .await;
    let retired = Signer::generate("retired");
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &retired.mint(&fresh_claims("orders:read")),
        Want::Invalid(TokenError::BadSignature),
        "a token naming the unusable key",
    )
    .await;
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("cannot verify with")
            && l.contains("retired")
            && !l.contains("key-1")),
        "{text}"
    );
}

/// A key set longer than scopegate reads (64 entries) loads its first 64,
/// and the load says how many it left unread; one that publishes a private
/// key (`d`) loads without that key (its tokens name a key unknown), and
/// the load names it as an error. A set with neither loads without either
/// message.
#[tokio::test]
async fn unread_entries_and_published_private_keys_are_named_when_the_set_loads() {
    let (logs, _capturing) = Logs::capture();
    let (signer, world) = lab().await;
    // The text format's lines (the JSON ones repeat them).
    let lines_with = |needle: &str| {
        logs.text()
            .lines()
            .filter(|l| !l.starts_with('{') && l.contains(needle))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (unread, private) = ("past the first 64", "publishes private keys");
    let token = signer.mint(&fresh_claims("orders:read"));
    let plain = Gateway::start(&world.config()).await;
    expect(
        &world,
        &plain,
        "GET",
        "/orders/1",
        &token,
        Want::Allow,
        "plain set",
    )
    .await;
    assert_eq!(lines_with(unread), Vec::<String>::new());
    assert_eq!(lines_with(private), Vec::<String>::new());

    let keys = vec![signer.public_jwk(); 66];
    world
        .jwks
        .set_document(&json!({ "keys": keys }).to_string());
    let long = Gateway::start(&world.config()).await;
    expect(
        &world,
        &long,
        "GET",
        "/orders/1",
        &token,
        Want::Allow,
        "66 entries",
    )
    .await;
    let lines = lines_with(unread);
    assert!(
        lines.len() == 1 && lines[0].contains("unread=2"),
        "{lines:?}"
    );

    let leaker = Signer::generate("leaked");
    let mut leaked = leaker.public_jwk();
    leaked["d"] = "AQAB".into();
    world
        .jwks
        .set_document(&json!({ "keys": [signer.public_jwk(), leaked] }).to_string());
    let exposed = Gateway::start(&world.config()).await;
    expect(
        &world,
        &exposed,
        "GET",
        "/orders/1",
        &token,
        Want::Allow,
        "its public key",
    )
    .await;
    let leaked_token = leaker.mint(&fresh_claims("orders:read"));
    expect(
        &world,
        &exposed,
        "GET",
        "/orders/1",
        &leaked_token,
        Want::Invalid(TokenError::UnknownKey),
        "a token of the published private key",
    )
    .await;
    let lines = lines_with(private);
    assert!(
        lines.len() == 1
            && lines[0].contains("ERROR")
            && lines[0].contains("leaked")
            && !lines[0].contains("key-1"),
        "{lines:?}"
    );
}

/// RFC 7517 4.7-4.9: a key whose `x5c` certificate holds another key, or
/// whose thumbprint is not that certificate's, says two things about itself
/// and verifies nothing; a key with its own certificate and thumbprint
/// verifies as any other.
#[tokio::test]
async fn a_key_verifies_only_beside_its_own_certificate() {
    let (logs, _capturing) = Logs::capture();
    let (signer, world) = lab().await;
    let impostor = Signer::generate("impostor");
    let thumbprinted = Signer::generate("thumbprinted");
    let misprinted = Signer::generate("misprinted");

    let mut own = signer.public_jwk();
    own["x5c"] = json!([signer.certificate()]);
    let mut borrowed = impostor.public_jwk();
    borrowed["x5c"] = json!([signer.certificate()]);
    let certificate = thumbprinted.certificate();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&certificate)
        .unwrap();
    let sha256 = b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der));
    let mut printed = thumbprinted.public_jwk();
    printed["x5c"] = json!([certificate]);
    printed["x5t#S256"] = sha256.clone().into();
    let mut wrongly_printed = misprinted.public_jwk();
    wrongly_printed["x5c"] = json!([misprinted.certificate()]);
    wrongly_printed["x5t#S256"] = sha256.into();
    world
        .jwks
        .set_document(&json!({"keys": [own, borrowed, printed, wrongly_printed]}).to_string());

    let gw = Gateway::start(&world.config()).await;
    for (key, want, why) in [
        (&signer, Want::Allow, "a key with its own certificate"),
        (
            &thumbprinted,
            Want::Allow,
            "a key with its certificate's thumbprint",
        ),
        (
            &impostor,
            Want::Invalid(TokenError::BadSignature),
            "a key beside another key's certificate",
        ),
        (
            &misprinted,
            Want::Invalid(TokenError::BadSignature),
            "a key beside another certificate's thumbprint",
        ),
    ] {
        let token = key.mint(&fresh_claims("orders:read"));
        expect(&world, &gw, "GET", "/orders/1", &token, want, why).await;
    }
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("cannot verify with")
            && l.contains("x5c")
            && l.contains("impostor")
            && l.contains("misprinted")
            && !l.contains("key-1")
            && !l.contains("thumbprinted")),
        "{text}"
    );
}

/// Amazon Cognito's access tokens carry no `aud`, but the app client's id
/// as `client_id`: an issuer with `client_ids` (and no `audiences`) takes
/// a token issued to one of them, and refuses one issued to another client,
/// or to none, or one with an `aud` (meant for some API). With both lists,
/// both are checked.
#[tokio::test]
async fn client_ids_stand_for_an_audience_where_tokens_have_none() {
    let (signer, world) = lab().await;
    let cognito = |client_id: Option<Value>| {
        let mut claims = fresh_claims("orders:read");
        claims.as_object_mut().unwrap().remove("aud");
        claims["token_use"] = "access".into();
        if let Some(id) = client_id {
            claims["client_id"] = id;
        }
        signer.mint(&claims)
    };
    let audiences = format!("    audiences: [{AUDIENCE}]\n");
    let config = world.config();
    assert!(config.contains(&audiences));
    let gw = Gateway::start(&config.replace(&audiences, "    client_ids: [app-1, app-9]\n")).await;
    for (client_id, want, what) in [
        (
            Some("app-1".into()),
            Want::Allow,
            "issued to a listed client",
        ),
        (
            Some("app-2".into()),
            Want::Invalid(TokenError::WrongAudience),
            "issued to another client",
        ),
        (
            None,
            Want::Invalid(TokenError::WrongAudience),
            "no client_id",
        ),
        (
            Some(json!(["app-1"])),
            Want::Invalid(TokenError::WrongClaimType),
            "a client_id that is no string",
        ),
    ] {
        expect(
            &world,
            &gw,
            "GET",
            "/orders/1",
            &cognito(client_id),
            want,
            what,
        )
        .await;
    }
    // An `aud` names another API: this one, with no audiences, is none.
    let mut claims = fresh_claims("orders:read");
    claims["client_id"] = "app-1".into();
    let want = Want::Invalid(TokenError::WrongAudience);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&claims),
        want,
        "with an aud",
    )
    .await;
    // Ory Hydra's `"aud": []` for a token granted no audience names none.
    let mut hydra = fresh_claims("orders:read");
    hydra["client_id"] = "app-1".into();
    hydra["aud"] = json!([]);
    let token = signer.mint(&hydra);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &token,
        Want::Allow,
        "aud: []",
    )
    .await;
    gw.stop().await;

    let both = config.replace(&audiences, &format!("{audiences}    client_ids: [app-1]\n"));
    let gw = Gateway::start(&both).await;
    let mut claims = fresh_claims("orders:read");
    claims["client_id"] = "app-1".into();
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &signer.mint(&claims),
        Want::Allow,
        "both",
    )
    .await;
    claims["client_id"] = "app-2".into();
    let token = signer.mint(&claims);
    let want = Want::Invalid(TokenError::WrongAudience);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &token,
        want,
        "the audience alone",
    )
    .await;
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &cognito(Some("app-1".into())),
        Want::Invalid(TokenError::WrongAudience),
        "the client alone",
    )
    .await;
    // With audiences, an empty `aud` names none of them (RFC 7519 4.1.3).
    let mut claims = fresh_claims("orders:read");
    claims["client_id"] = "app-1".into();
    claims["aud"] = json!([]);
    let want = Want::Invalid(TokenError::WrongAudience);
    let token = signer.mint(&claims);
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &token,
        want,
        "aud: [] with audiences",
    )
    .await;
}

/// The failures an alert keys on (a key set that will not load, an
/// upstream that will not answer) are exported at 0 before the first one,
/// so that `increase()` sees it.
#[tokio::test]
async fn failure_counters_start_at_zero() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let text = gw.metrics().await;
    for result in ["http_error", "network_error", "timeout", "invalid"] {
        let labels = [("issuer", "test"), ("result", result)];
        let value = exported(&text, "scopegate_jwks_fetches_total", &labels);
        assert_eq!(value, Some(0.0), "{result}: {text}");
    }
    for kind in [
        "connect",
        "connect_timeout",
        "timeout",
        "protocol",
        "overloaded",
        "body",
    ] {
        let labels = [("upstream", "app"), ("kind", kind)];
        let value = exported(&text, "scopegate_upstream_errors_total", &labels);
        assert_eq!(value, Some(0.0), "{kind}: {text}");
    }
    // Only what the config has: no discovery, no introspection here.
    assert!(
        !text.contains("scopegate_discovery_attempts_total{"),
        "{text}"
    );
    assert!(
        !text.contains("scopegate_introspection_requests_total{"),
        "{text}"
    );
}

#[tokio::test]
async fn jwks_outage_hang_keeps_cached_keys() {
    outage(JwksMode::Hang, "timeout", "no answer within 3s").await;
}

// ---------------------------------------------------------------------------
// 8. JWKS unavailable at start.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unready_until_keys_arrive() {
    let world = World::new().await;
    world.jwks.set_mode(JwksMode::Fail);
    let gw = Gateway::start_unready(&world.config()).await;

    // Wait (bounded) until the gateway has tried and failed at least once.
    let mut tried = false;
    for _ in 0..200 {
        if world.jwks.fetches() >= 1 && gw.readyz().await != 0 {
            tried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(tried, "the gateway never tried to fetch its keys");
    assert_eq!(gw.readyz().await, 503, "ready without keys");

    let token = world.token("orders:read");
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &token,
        Want::Unavailable,
        "valid token while no keys are loaded",
    )
    .await;
    // Syntax problems and missing tokens are still answered as such.
    let (reply, forwarded) = request(&world, "GET", &gw.url("/orders/1"), &[], "").await;
    check(&reply, forwarded, Want::NoToken, "no token while unready");
    // Public routes do not need keys.
    let (reply, forwarded) = request(&world, "GET", &gw.url("/status"), &[], "").await;
    check(&reply, forwarded, Want::Allow, "public route while unready");

    world.jwks.set_mode(JwksMode::Serve);
    let mut ready = false;
    // The refresher backs off (250 ms doubling); 40 s bounds it generously.
    for _ in 0..400 {
        if gw.readyz().await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "never became ready after the JWKS came back");
    expect(
        &world,
        &gw,
        "GET",
        "/orders/1",
        &token,
        Want::Allow,
        "same token once keys are loaded",
    )
    .await;
}

// ---------------------------------------------------------------------------
// 9. Metrics.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn decisions_are_counted_and_logged_without_secrets() {
    let (logs, _capturing) = Logs::capture();
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let subject = format!("subject-{}", random_hex(6));
    let client = format!("client-{}", random_hex(6));
    let personal = |scope: &str| {
        with(
            with(fresh_claims(scope), "sub", json!(subject)),
            "client_id",
            json!(client),
        )
    };
    let allowed = world.key.mint(&personal("orders:read")).unwrap();
    let expired = world
        .key
        .mint(&with(personal("orders:read"), "exp", json!(now() - 120)))
        .unwrap();

    let elsewhere = world
        .key
        .mint(&with(
            personal("orders:read"),
            "iss",
            json!("https://evil.test"),
        ))
        .unwrap();
    for (path, token, want, what) in [
        ("/orders/1", &allowed, Want::Allow, "allowed"),
        (
            "/orders/1",
            &expired,
            Want::Invalid(TokenError::Expired),
            "expired",
        ),
        (
            "/admin",
            &allowed,
            Want::Forbidden("admin"),
            "insufficient scope",
        ),
        (
            "/orders/1",
            &elsewhere,
            Want::Invalid(TokenError::UnknownIssuer),
            "unknown issuer",
        ),
    ] {
        expect(&world, &gw, "GET", path, token, want, what).await;
    }
    let (reply, forwarded) = request(&world, "GET", &gw.url("/orders/1"), &[], "").await;
    check(&reply, forwarded, Want::NoToken, "no token");
    let basic = [("authorization", "Basic dXNlcjpwYXNz")];
    let (reply, forwarded) = request(&world, "GET", &gw.url("/orders/1"), &basic, "").await;
    check(&reply, forwarded, Want::NoToken, "another scheme");
    for _ in 0..2 {
        let (reply, _) = request(&world, "GET", &gw.url("/status"), &[], "").await;
        assert_eq!(reply.status, 200);
    }

    let text = gw.metrics().await;
    let decisions =
        |labels: &[(&str, &str)]| metric(&text, "scopegate_auth_decisions_total", labels);
    assert_eq!(
        decisions(&[("issuer", "test"), ("decision", "allow"), ("reason", "ok")]),
        1.0,
        "{text}"
    );
    // A public route's requests, each counted (under `-`).
    assert_eq!(
        decisions(&[("issuer", "-"), ("decision", "allow"), ("reason", "public")]),
        2.0,
        "{text}"
    );
    // A refused token is counted under the issuer its `iss` names; a
    // request without one under `-`.
    assert_eq!(
        decisions(&[
            ("issuer", "test"),
            ("decision", "deny"),
            ("reason", "expired")
        ]),
        1.0,
        "{text}"
    );
    assert_eq!(
        decisions(&[
            ("issuer", "test"),
            ("decision", "deny"),
            ("reason", "insufficient_scope")
        ]),
        1.0,
        "{text}"
    );
    // An `iss` no issuer is configured for is no label.
    assert_eq!(
        decisions(&[
            ("issuer", "-"),
            ("decision", "deny"),
            ("reason", "unknown_issuer")
        ]),
        1.0,
        "{text}"
    );
    assert!(!text.contains("evil.test"), "{text}");
    assert_eq!(
        decisions(&[
            ("issuer", "-"),
            ("decision", "deny"),
            ("reason", "missing_token")
        ]),
        1.0,
        "{text}"
    );
    assert_eq!(
        decisions(&[
            ("issuer", "-"),
            ("decision", "deny"),
            ("reason", "other_scheme")
        ]),
        1.0,
        "{text}"
    );

    for secret in [&subject, &client, &allowed, &expired, &elsewhere] {
        assert!(!text.contains(secret.as_str()), "metrics leak {secret}");
    }
    for segment in allowed
        .split('.')
        .chain(expired.split('.'))
        .chain(elsewhere.split('.'))
    {
        assert!(!text.contains(segment), "metrics leak a token segment");
    }

    // The log names each request, and none of its credentials.
    let reply = get_with_token(&gw.url("/admin"), &allowed).await;
    assert_eq!(reply.status, 403);
    let line = logs.access_line_of(&reply).await;
    for field in [
        "route=\"/admin\"",
        "method=\"GET\"",
        "status=403",
        "reason=\"insufficient_scope\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    // An answered request's reason is the decision's: a public route took
    // no token, a checked one passed.
    let public = get(&gw.url("/status"), &[]).await.unwrap();
    let checked = get_with_token(&gw.url("/orders/1"), &allowed).await;
    for (reply, reason) in [(&public, "reason=\"public\""), (&checked, "reason=\"ok\"")] {
        assert_eq!(reply.status, 200);
        let line = logs.access_line_of(reply).await;
        assert!(
            line.contains("status=200 ") && line.contains(reason),
            "{reason}: {line}"
        );
    }
    // Stopped, so that what it logs as connections end is read too.
    gw.stop().await;
    let signature = |token: &str| token.rsplit('.').next().unwrap().to_owned();
    logs.assert_none_of(&[
        ("the allowed token", &allowed),
        ("the expired token", &expired),
        ("the other issuer's token", &elsewhere),
        ("a signature", &signature(&allowed)),
        ("a signature", &signature(&expired)),
        ("a signature", &signature(&elsewhere)),
        ("Basic credentials", "dXNlcjpwYXNz"),
    ]);
}

#[path = "auth/hostile_tokens.rs"]
mod hostile_tokens;

#[path = "auth/hostile_jwks.rs"]
mod hostile_jwks;

#[path = "auth/hostile_algorithms.rs"]
mod hostile_algorithms;

#[path = "auth/hostile_routes.rs"]
mod hostile_routes;
