//! Generated JWT access tokens, ordinary and hostile, against a reference of
//! RFC 7515, RFC 7519, RFC 9068 and RFC 8725 as the gateway applies them.
//!
//! Each case signs a fresh token with the issuer's key (or, as a fault,
//! with another key of the same `kid`, alone or embedded as `jwk`), from a
//! generated header (`alg`, `typ`, `kid`, `crit`, now and then a `b64`
//! outside `crit` (RFC 7797), and members the gateway must ignore: `jku`,
//! `x5u`, `x5c`) and generated claims (`iss`, `aud`,
//! `exp`, `nbf`, `iat`, `scope`, `sub`, `client_id` each right, wrong or of
//! the wrong type, and unknown ones nested deep; scopes in `scope`, `scp`,
//! both or neither; now and then a `cnf`), sometimes spelled wrong (a
//! duplicate claim, a padded segment, a changed signature, a fourth
//! segment). Three gateways require `typ: at+jwt`: one reads scopes from
//! `scope`, another from `scp` (`scope_claim`), and a third reads `scope`
//! and takes the token's `client_id` for its audience (`client_ids: [bob]`
//! and no `audiences`, as for Amazon Cognito: a token with any `aud` is then
//! meant for another API); each case goes to one.
//! The token is used on one route, then on another; the reference says,
//! for each use:
//! - a token with any fault is refused with 401 `invalid_token` (RFC 6750),
//!   both times, and never cached; one that is no b64token at all (a padded
//!   segment before the last) with 400 `invalid_request`. A `cnf` (RFC 7800:
//!   bound to a key the bearer does not prove) is such a fault, and so is a
//!   malformed member of the configured scope claim; the other is ignored;
//! - a valid token without the route's scopes gets 403 `insufficient_scope`;
//!   with them the request is forwarded with the token's `sub`, `client_id`
//!   and scopes as identity headers and never the client's own;
//! - the second use of a valid token comes from the verified-token cache,
//!   unless its `exp` has passed (within the leeway): a cache entry never
//!   outlives its token.
//!
//! A second campaign ([`a_second_verifier_accepts_every_token_the_gateway_accepts`])
//! sends the main gateway's tokens to an independent verifier too, panva's
//! `jose` (`tests/interop/verify.mjs`, needs `node`): the gateway must
//! never accept what `jose` refuses, and may refuse what `jose` accepts
//! only by one of the stricter readings [`stricter_reading`] names.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 256; 512
//! for the second campaign).

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use serde_json::Map;
use support::reference::{
    self, CommonMembers, IdentityHeaders, Outcome, Route, ScopeClaim, SPOOFED_IDENTITY,
};

/// The JOSE header's members, each `None` when missing.
#[derive(Debug, Clone)]
struct JoseHeader {
    alg: Option<Value>,
    typ: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
    /// RFC 7797's `b64`, which is only valid listed in `crit`.
    b64: Option<Value>,
    /// A member the gateway must not act on.
    ignored: Option<(&'static str, Value)>,
}

/// The claims, each `None` when missing.
#[derive(Debug, Clone)]
struct Claims {
    iss: Option<Value>,
    aud: Option<Value>,
    common: CommonMembers,
}

/// How the token is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Signed by the issuer's key, spelled right.
    Signed,
    /// `jti` twice in the claims (RFC 7515 4: refused).
    DuplicateClaim,
    /// The payload segment with base64 padding: no RFC 6750 b64token.
    PaddedPayload,
    /// The signature segment with base64 padding (a b64token, but no
    /// base64url of RFC 7515 2).
    PaddedSignature,
    /// One bit of the signature changed.
    AlteredSignature,
    /// Signed by another key with the same `kid`.
    OtherKey,
    /// Signed by another key that the header embeds as `jwk`.
    OtherKeyEmbedded,
    /// A fourth segment.
    ExtraSegment,
}

#[derive(Debug, Clone)]
struct Case {
    header: JoseHeader,
    claims: Claims,
    form: Form,
    /// Which gateway: the one reading `scope` or the one reading `scp`.
    claim: ScopeClaim,
    /// To the gateway that checks `client_id` instead (which reads `scope`).
    by_client: bool,
    first: Route,
    second: Route,
}

fn jose_header() -> impl Strategy<Value = JoseHeader> {
    let alg = reference::pick(
        vec![Some(json!("ES256"))],
        vec![
            Some(json!("none")),
            Some(json!("HS256")),
            Some(json!("es256")),
            Some(json!("RS256")),
            Some(json!(1)),
            None,
        ],
    );
    let typ = reference::pick(
        vec![
            Some(json!("at+jwt")),
            Some(json!("application/at+jwt")),
            Some(json!("AT+JWT")),
        ],
        vec![
            Some(json!("JWT")),
            Some(json!("at+jwt ")),
            Some(json!("application/jwt")),
            Some(json!(1)),
            None,
        ],
    );
    let kid = reference::pick(
        vec![Some(json!("key-1")), None],
        vec![Some(json!("key-2")), Some(json!("")), Some(json!(5))],
    );
    let crit = prop_oneof![
        40 => Just(None),
        1 => prop::sample::select(vec![
            Some(json!([])),
            Some(json!(["exp"])),
            Some(json!("exp")),
        ]),
    ];
    let b64 = prop_oneof![
        30 => Just(None),
        1 => prop::sample::select(vec![Some(json!(false)), Some(json!(true))]),
    ];
    let ignored = prop::sample::select(vec![
        None,
        None,
        None,
        Some(("jku", json!("http://127.0.0.1:9/keys"))),
        Some(("x5u", json!("http://127.0.0.1:9/cert.pem"))),
        Some(("x5c", json!([FAKE_CERT]))),
    ]);
    (alg, typ, kid, crit, b64, ignored).prop_map(|(alg, typ, kid, crit, b64, ignored)| JoseHeader {
        alg,
        typ,
        kid,
        crit,
        b64,
        ignored,
    })
}

fn claims_strategy() -> impl Strategy<Value = Claims> {
    let iss = reference::pick(
        vec![Some(json!(ISSUER))],
        vec![
            Some(json!(format!("{ISSUER}/"))),
            Some(json!("https://evil.test")),
            Some(json!([ISSUER])),
            Some(Value::Null),
            None,
        ],
    );
    // `exp` is required, so missing is a fault.
    (iss, reference::audience(true), CommonMembers::generate(1))
        .prop_map(|(iss, aud, common)| Claims { iss, aud, common })
}

fn case() -> impl Strategy<Value = Case> {
    let form = prop_oneof![
        30 => Just(Form::Signed),
        1 => prop::sample::select(vec![
            Form::DuplicateClaim,
            Form::PaddedPayload,
            Form::PaddedSignature,
            Form::AlteredSignature,
            Form::OtherKey,
            Form::OtherKeyEmbedded,
            Form::ExtraSegment,
        ]),
    ];
    (
        jose_header(),
        claims_strategy(),
        form,
        prop_oneof![
            2 => prop::sample::select(vec![ScopeClaim::Scope, ScopeClaim::Scp])
                .prop_map(|claim| (claim, false)),
            1 => Just((ScopeClaim::Scope, true)),
        ],
        // For the gateway that checks `client_id`, whose tokens mostly
        // carry no `aud` (any `aud` is a fault there).
        prop_oneof![3 => Just(None), 1 => reference::audience(false)],
        Route::any(),
        Route::any(),
    )
        .prop_map(
            |(header, mut claims, form, (claim, by_client), client_aud, first, second)| {
                if by_client {
                    claims.aud = client_aud;
                }
                Case {
                    header,
                    claims,
                    form,
                    claim,
                    by_client,
                    first,
                    second,
                }
            },
        )
}

/// Members that are `Some`, as a JSON object.
fn object<'a>(members: impl IntoIterator<Item = (&'a str, Option<Value>)>) -> Map<String, Value> {
    members
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect()
}

fn header_object(header: &JoseHeader) -> Map<String, Value> {
    let mut object = object([
        ("alg", header.alg.clone()),
        ("typ", header.typ.clone()),
        ("kid", header.kid.clone()),
        ("crit", header.crit.clone()),
        ("b64", header.b64.clone()),
    ]);
    if let Some((name, value)) = &header.ignored {
        object.insert((*name).to_owned(), value.clone());
    }
    object
}

fn claims_object(claims: &Claims, now: i64, jti: &str) -> Map<String, Value> {
    let mut object = object([
        ("iss", claims.iss.clone()),
        ("aud", claims.aud.clone()),
        ("jti", Some(json!(jti))),
    ]);
    claims.common.render_into(&mut object, now);
    object
}

/// The compact token.
fn token(
    lab: &Lab,
    form: Form,
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
) -> String {
    let header_json = Value::Object(header.clone()).to_string();
    let claims_json = Value::Object(claims.clone()).to_string();
    match form {
        Form::Signed => lab.signer.sign_json(&header_json, &claims_json),
        Form::DuplicateClaim => {
            let jti = &claims["jti"];
            let inner = claims_json.strip_suffix('}').unwrap_or(&claims_json);
            lab.signer
                .sign_json(&header_json, &format!("{inner},\"jti\":{jti}}}"))
        }
        Form::PaddedPayload => lab
            .signer
            .sign_segments(&b64(&header_json), &format!("{}=", b64(&claims_json))),
        Form::PaddedSignature => format!("{}=", lab.signer.sign_json(&header_json, &claims_json)),
        Form::AlteredSignature => {
            let token = lab.signer.sign_json(&header_json, &claims_json);
            let mut signature = signature_of(&token);
            signature[10] ^= 0x01;
            with_signature(&token, &b64(signature))
        }
        Form::OtherKey => lab.other.sign_json(&header_json, &claims_json),
        Form::OtherKeyEmbedded => {
            let mut header = header.clone();
            header.insert("jwk".to_owned(), lab.other.public_jwk());
            lab.other
                .sign_json(&Value::Object(header).to_string(), &claims_json)
        }
        Form::ExtraSegment => format!("{}.e30", lab.signer.sign_json(&header_json, &claims_json)),
    }
}

/// A valid token's granted scopes, and whether it may be cached.
struct Valid<'a> {
    scopes: Vec<&'a str>,
    cached: bool,
}

/// Whether the token is valid by the RFCs (and `require_typ: at+jwt`) to
/// a gateway reading scopes from `claim`, and taking `client_id` for its
/// audience if `by_client`; `None` for a token with any fault.
fn valid<'a>(
    form: Form,
    header: &Map<String, Value>,
    claims: &'a Map<String, Value>,
    claim: ScopeClaim,
    by_client: bool,
    now: i64,
) -> Option<Valid<'a>> {
    if form != Form::Signed
        || header.contains_key("crit")
        || header.contains_key("b64")
        || claims.contains_key("cnf")
    {
        return None;
    }
    if header.get("alg") != Some(&json!("ES256")) {
        return None;
    }
    match header.get("kid") {
        None => {}
        Some(kid) if kid == &json!("key-1") => {}
        Some(_) => return None,
    }
    // RFC 9068 2.1 and RFC 7515 4.1.9: `at+jwt`, any case, with or without
    // the `application/` prefix.
    let typ = header.get("typ")?.as_str()?.to_ascii_lowercase();
    if typ.strip_prefix("application/").unwrap_or(&typ) != "at+jwt" {
        return None;
    }
    // With `client_ids` and no `audiences`, a token with any `aud` is meant
    // for another API (an empty one, Ory Hydra's, names none).
    let intended = if by_client {
        claims.get("client_id") == Some(&json!(CLIENT_ID))
            && claims.get("aud").is_none_or(|aud| *aud == json!([]))
    } else {
        reference::audience_ok(claims.get("aud"), true)
    };
    if claims.get("iss") != Some(&json!(ISSUER)) || !intended {
        return None;
    }
    let exp = reference::lifetime(claims, now, true).ok()??;
    Some(Valid {
        scopes: reference::granted(claims, claim).ok()?,
        cached: exp > now as f64,
    })
}

/// The one client id of the gateway that checks `client_id` (one of the
/// values the claims' generator picks most).
const CLIENT_ID: &str = "bob";

/// The lab: the issuer's key, another key with the same `kid`, and three
/// gateways requiring `typ: at+jwt`, one reading scopes from `scope`, one
/// from `scp`, one reading `scope` and checking `client_id`, not `aud`.
struct Lab {
    signer: Signer,
    other: Signer,
    world: World,
    gw: Gateway,
    gw_scp: Gateway,
    gw_client: Gateway,
    next: AtomicU64,
}

impl Lab {
    async fn start() -> Self {
        let (signer, world) = lab().await;
        let gw = Gateway::start(&world.config_with("    require_typ: at+jwt\n")).await;
        let gw_scp =
            Gateway::start(&world.config_with("    require_typ: at+jwt\n    scope_claim: scp\n"))
                .await;
        let audiences = format!("    audiences: [{AUDIENCE}]\n");
        let by_client = world
            .config_with("    require_typ: at+jwt\n")
            .replace(&audiences, &format!("    client_ids: [{CLIENT_ID}]\n"));
        assert!(by_client.contains("client_ids"));
        let gw_client = Gateway::start(&by_client).await;
        Self {
            signer,
            other: Signer::generate("key-1"),
            world,
            gw,
            gw_scp,
            gw_client,
            next: AtomicU64::new(0),
        }
    }

    /// The gateway reading scopes from `claim`, or the one checking
    /// `client_id`.
    fn gateway(&self, claim: ScopeClaim, by_client: bool) -> &Gateway {
        match (claim, by_client) {
            (_, true) => &self.gw_client,
            (ScopeClaim::Scope, false) => &self.gw,
            (ScopeClaim::Scp, false) => &self.gw_scp,
        }
    }
}

/// One use of the token on `route` of `gw`, judged against `want`; `hit`
/// says whether it must come from the verified-token cache.
async fn use_token(
    gw: &Gateway,
    lab: &Lab,
    route: Route,
    token: &str,
    want: &Outcome,
    hit: bool,
) -> Result<(), String> {
    let (method, path) = route.request();
    let hits_before = cache_hits(&gw.metrics().await);
    let seen_before = lab.world.upstream.count();
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(SPOOFED_IDENTITY);
    let reply = send(method, &gw.url(path), &headers, Bytes::new()).await?;
    let seen = lab.world.upstream.seen_since(seen_before);
    let hits = cache_hits(&gw.metrics().await) - hits_before;
    if hits != f64::from(u8::from(hit)) {
        return Err(format!("{hits} cache hit(s), want {}", u8::from(hit)));
    }
    want.judge(&reply, &seen, method)
        .map_err(|e| format!("{method} {path}, want {want:?}: {e}"))
}

async fn check(lab: &Lab, case: Case) -> Result<(), String> {
    let jti = format!("case-{}", lab.next.fetch_add(1, Ordering::Relaxed));
    let now = i64::try_from(now()).unwrap();
    let header = header_object(&case.header);
    let claims = claims_object(&case.claims, now, &jti);
    let token = token(lab, case.form, &header, &claims);
    let valid = valid(case.form, &header, &claims, case.claim, case.by_client, now);
    let outcome = |route: Route| match &valid {
        None if case.form == Form::PaddedPayload => Outcome::BadRequest,
        None => Outcome::Invalid,
        Some(v) if route.allows(&v.scopes) => {
            Outcome::Forwarded(IdentityHeaders::of(&claims, &v.scopes))
        }
        Some(_) => Outcome::InsufficientScope,
    };
    let gw = lab.gateway(case.claim, case.by_client);
    use_token(gw, lab, case.first, &token, &outcome(case.first), false).await?;
    let hit = valid.as_ref().is_some_and(|v| v.cached);
    use_token(gw, lab, case.second, &token, &outcome(case.second), hit)
        .await
        .map_err(|e| format!("second use: {e}"))
}

#[test]
fn hostile_tokens_get_what_the_jose_rfcs_say() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    run_campaign(&runtime, &lab, 256, case(), async |lab, case| {
        check(lab, case).await
    });
    // Still serving an ordinary token.
    runtime.block_on(async {
        let token = lab.signer.mint(&fresh_claims("orders:read"));
        let ok = get_with_token(&lab.gw.url("/orders/1"), &token).await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        let token = lab
            .signer
            .mint(&with(fresh_claims(""), "scp", json!(["orders:read"])));
        let ok = get_with_token(&lab.gw_scp.url("/orders/1"), &token).await;
        assert_eq!(ok.status, 200, "{}", ok.text());
    });
}

/// The main gateway's verdict on a token: `Ok` if it took the token as
/// valid (200, or 403 for a valid token without the route's scopes), `Err`
/// with the status if it refused it (401, or 400 for no b64token).
async fn gateway_verdict(gw: &Gateway, token: &str) -> Result<(), u16> {
    let reply = get(
        &gw.url("/orders/1"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    match reply.status {
        200 | 403 => Ok(()),
        400 | 401 => Err(reply.status),
        other => panic!("unexpected {other}: {}", reply.text()),
    }
}

/// The second opinion's lab: the main gateway of [`Lab`], and `jose`.
struct SecondOpinion {
    lab: Lab,
    jose: std::sync::Mutex<Jose>,
    /// Tokens both accepted.
    accepted: AtomicU64,
    /// Tokens `jose` alone accepted, by the gateway's stricter reading.
    stricter: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// Every token the gateway accepts, `jose` accepts too (the gateway is
/// never the laxer of two independent verifiers); every token `jose`
/// accepts and the gateway refuses is refused for one of the stricter
/// readings the module docs and [`stricter_reading`] name.
#[test]
fn a_second_verifier_accepts_every_token_the_gateway_accepts() {
    if !interop_node_modules("the jose second opinion (tests/auth/hostile_tokens.rs)") {
        return;
    }
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    let jose = Jose::start(&lab.signer.jwks());
    // The setup agrees on an ordinary token and an expired one.
    let ordinary = lab.signer.mint(&fresh_claims("orders:read"));
    let expired = lab.signer.mint(&with(
        fresh_claims("orders:read"),
        "exp",
        json!(now() - 3600),
    ));
    let second = SecondOpinion {
        lab,
        jose: std::sync::Mutex::new(jose),
        accepted: AtomicU64::new(0),
        stricter: std::sync::Mutex::default(),
    };
    {
        let mut jose = second.jose.lock().unwrap();
        assert_eq!(jose.verify(&ordinary), Ok(()));
        assert!(jose.verify(&expired).is_err());
    }
    let main_gateway = case().prop_map(|mut case| {
        case.by_client = false;
        case.claim = ScopeClaim::Scope;
        case
    });
    run_campaign(&runtime, &second, 512, main_gateway, second_opinion);
    let accepted = second.accepted.load(Ordering::Relaxed);
    eprintln!(
        "both accepted {accepted} tokens; the gateway alone refused, by reading: {:?}",
        second.stricter.lock().unwrap()
    );
    // Not vacuous: most generated tokens are valid.
    assert!(accepted >= 64, "only {accepted} tokens accepted by both");
}

/// One generated token to the main gateway and to `jose`.
async fn second_opinion(second: &SecondOpinion, case: Case) -> Result<(), String> {
    let lab = &second.lab;
    let jti = format!("second-{}", lab.next.fetch_add(1, Ordering::Relaxed));
    let now = i64::try_from(now()).unwrap();
    let header = header_object(&case.header);
    let claims = claims_object(&case.claims, now, &jti);
    let token = token(lab, case.form, &header, &claims);
    let gateway = gateway_verdict(&lab.gw, &token).await;
    let jose = second.jose.lock().unwrap().verify(&token);
    let token = || format!("header {header:?}, claims {claims:?}, {:?}", case.form);
    match (gateway, jose) {
        (Ok(()), Ok(())) => {
            second.accepted.fetch_add(1, Ordering::Relaxed);
        }
        (Err(_), Err(_)) => {}
        (Ok(()), Err(refused)) => {
            return Err(format!(
                "the gateway accepted a token jose refuses ({refused}): {}",
                token()
            ));
        }
        (Err(status), Ok(())) => {
            let why = stricter_reading(case.form, &header, &claims, now).ok_or_else(|| {
                format!(
                    "the gateway refused ({status}) a token jose accepts, by no stricter reading: {}",
                    token()
                )
            })?;
            *second.stricter.lock().unwrap().entry(why).or_default() += 1;
        }
    }
    Ok(())
}

/// The reading of the RFCs by which the gateway refuses a token that
/// `jose` accepts, if the token has one. `jose` keeps the last of duplicate
/// members (`JSON.parse`) where RFC 7515 4 allows refusing them; decodes a
/// padded segment, which RFC 7515 2's base64url is not; picks a key for a
/// `kid` that is no string (RFC 7515 4.1.4: a string); takes `b64`
/// outside `crit` as absent where RFC 7797 6 makes it invalid there; ignores
/// `cnf` (RFC 7800: a proof a bearer cannot show) and a malformed `scope`
/// (RFC 6749 3.3), which the gateway, enforcing scopes, cannot; checks `iat`
/// only for being a number, where the gateway refuses one in the future or
/// before 1970 (RFC 7519 2: a NumericDate counts from 1970), as it does a
/// negative `nbf`; and looks for its audience in an `aud` list that holds
/// other than strings (RFC 7519 4.1.3: StringOrURI values).
fn stricter_reading(
    form: Form,
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
    now: i64,
) -> Option<&'static str> {
    let leeway = reference::LEEWAY as f64;
    let number = |name: &str| claims.get(name).and_then(Value::as_f64);
    if form == Form::DuplicateClaim {
        Some("duplicate claim")
    } else if matches!(form, Form::PaddedPayload | Form::PaddedSignature) {
        Some("padded segment")
    } else if header.get("kid").is_some_and(|kid| !kid.is_string()) {
        Some("kid not a string")
    } else if header.contains_key("b64") {
        Some("b64 outside crit")
    } else if claims.contains_key("cnf") {
        Some("cnf")
    } else if reference::scopes(claims.get("scope")).is_err() {
        Some("malformed scope")
    } else if number("iat").is_some_and(|iat| iat < 0.0 || iat > now as f64 + leeway) {
        Some("iat in the future or negative")
    } else if number("nbf").is_some_and(|nbf| nbf < 0.0) {
        Some("negative nbf")
    } else if claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|items| !items.iter().all(Value::is_string))
    {
        Some("aud list with other than strings")
    } else {
        None
    }
}
