//! RFC 7662 introspection answers: `Introspector::introspect` (the public
//! entry point: the HTTP call, `strict_object`, `interpret`, the cache) with
//! an in-process endpoint on 127.0.0.1 that answers 200 with the fuzzed
//! body. A new token per input, so nothing comes from the cache.
//!
//! The first byte picks the introspector (plain; `require_token_type` with
//! `client_ids`; `scp` scopes with `iss` and `aud` required) and the token's own
//! `exp` (none, in an hour, past); the rest is the answer's body.
//!
//! Checks: the only outcomes are an identity, `Inactive` and
//! `IntrospectionUnavailable`; a body that is no JSON object is
//! unavailable; an answer whose `active` is not `true` (a JSON boolean),
//! that has `cnf`, names another `iss` (or none where one is required), an
//! `aud` other than this API's (or none where one is required), a
//! `client_id` not accepted, a refresh or ID
//! token, or an `exp` past (with the leeway) never yields an identity; an
//! identity's scopes are ones the answer granted, it ends no later than the
//! answer's and the token's own `exp` (plus the leeway), and belongs to this
//! issuer.
#![no_main]

#[path = "common/json_server.rs"]
mod json_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use scopegate::admin::metrics::Metrics;
use scopegate::auth::cache::digest;
use scopegate::auth::introspect::{Introspector, IssuerFacts};
use scopegate::auth::jwt::{now_unix, TokenError};
use scopegate::config::{ClientAuth, Introspection, ScopeClaim, Secret};
use scopegate::error::GatewayError;
use serde_json::Value;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "orders-api";
const CLIENT: &str = "app";
const LEEWAY: u64 = 30;

struct Setup {
    introspector: Arc<Introspector>,
    audiences: &'static [&'static str],
    client_ids: &'static [&'static str],
    iss_required: bool,
    require_token_type: bool,
    require_audience: bool,
    scope_claim: &'static str,
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// What the endpoint answers with next.
    answer: Arc<Mutex<Bytes>>,
    setups: Vec<Setup>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answer = Arc::new(Mutex::new(Bytes::new()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("listener");
        let endpoint: Uri = format!("http://{}/introspect", listener.local_addr().expect("addr"))
            .parse()
            .expect("endpoint");
        let served = Arc::clone(&answer);
        runtime.spawn(json_server::serve(listener, move |_: &str| {
            (StatusCode::OK, served.lock().expect("answer").clone())
        }));
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let _entered = runtime.enter();
        let make = |audiences: &'static [&'static str],
                    client_ids: &'static [&'static str],
                    scope_claim: ScopeClaim,
                    require_token_type: bool,
                    require_audience: bool,
                    auth: ClientAuth| {
            Introspector::new(
                IssuerFacts {
                    index: 0,
                    name: Arc::from("fuzz"),
                    issuer: ISSUER.to_owned(),
                    audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
                    client_ids: client_ids.iter().map(|s| (*s).to_owned()).collect(),
                    leeway_secs: LEEWAY,
                    scope_claim,
                },
                Introspection {
                    endpoint: Some(endpoint.clone()),
                    client_id: "gateway".to_owned(),
                    client_secret: Secret::new("gateway-secret".to_owned()),
                    auth,
                    timeout: Duration::from_secs(5),
                    cache_ttl: Duration::from_secs(60),
                    negative_cache_ttl: Duration::ZERO,
                    ca_file: None,
                    require_token_type,
                    require_audience,
                },
                1024,
                Arc::from(vec![
                    "sub".to_owned(),
                    "email".to_owned(),
                    "scope".to_owned(),
                ]),
                Arc::clone(&metrics),
            )
            .map(Arc::new)
            .expect("introspector")
        };
        let plain = make(
            &[AUDIENCE],
            &[],
            ScopeClaim::Scope,
            false,
            false,
            ClientAuth::Basic,
        );
        let typed = make(&[], &[CLIENT], ScopeClaim::Scope, true, false, ClientAuth::Post);
        let scp = make(&[AUDIENCE], &[], ScopeClaim::Scp, false, true, ClientAuth::Basic);
        scp.require_iss();
        let setups = vec![
            Setup {
                introspector: plain,
                audiences: &[AUDIENCE],
                client_ids: &[],
                iss_required: false,
                require_token_type: false,
                require_audience: false,
                scope_claim: "scope",
            },
            Setup {
                introspector: typed,
                audiences: &[],
                client_ids: &[CLIENT],
                iss_required: false,
                require_token_type: true,
                require_audience: false,
                scope_claim: "scope",
            },
            Setup {
                introspector: scp,
                audiences: &[AUDIENCE],
                client_ids: &[],
                iss_required: true,
                require_token_type: false,
                require_audience: true,
                scope_claim: "scp",
            },
        ];
        drop(_entered);
        Fixture {
            runtime,
            answer,
            setups,
        }
    })
}

/// Whether `aud` names one of `accepted` (a string or an array of them).
fn aud_names(aud: &Value, accepted: &[&str]) -> bool {
    match aud {
        Value::String(s) => accepted.contains(&s.as_str()),
        Value::Array(items) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| accepted.contains(&s))),
        _ => false,
    }
}

fn names_any_audience(aud: &Value) -> bool {
    !matches!(aud, Value::Array(items) if items.is_empty())
}

fn string_is(value: Option<&Value>, accepted: &[&str]) -> bool {
    value
        .and_then(Value::as_str)
        .is_some_and(|s| accepted.iter().any(|a| s.eq_ignore_ascii_case(a)))
}

/// Everything the answer may have granted as a scope: the words of its
/// `scope` and of the configured claim.
fn granted_words<'a>(answer: &'a serde_json::Map<String, Value>, claim: &str) -> Vec<&'a str> {
    let mut words = Vec::new();
    for name in ["scope", claim] {
        match answer.get(name) {
            Some(Value::String(s)) => words.extend(s.split(' ')),
            Some(Value::Array(items)) => words.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    words
}

/// What an identity requires of the answer (read independently of the
/// crate, from serde_json's own parse).
fn check_allowed(
    setup: &Setup,
    answer: &serde_json::Map<String, Value>,
    token_exp: Option<u64>,
    token: &scopegate::auth::VerifiedToken,
    before: u64,
    after: u64,
) {
    assert_eq!(answer.get("active"), Some(&Value::Bool(true)));
    assert!(!answer.contains_key("cnf"));
    match answer.get("iss") {
        None => assert!(!setup.iss_required),
        Some(iss) => assert_eq!(iss.as_str(), Some(ISSUER)),
    }
    assert!(answer.contains_key("aud") || !setup.require_audience);
    if let Some(aud) = answer.get("aud") {
        if setup.audiences.is_empty() {
            assert!(!names_any_audience(aud), "aud {aud}");
        } else {
            assert!(aud_names(aud, setup.audiences), "aud {aud}");
        }
    }
    if !setup.client_ids.is_empty() {
        assert!(
            string_is(answer.get("client_id"), setup.client_ids),
            "client_id {:?}",
            answer.get("client_id")
        );
    }
    if let Some(kind) = answer.get("token_type") {
        assert!(string_is(Some(kind), &["bearer", "access_token"]), "{kind}");
    }
    if let Some(kind) = answer.get("token_use") {
        assert!(string_is(Some(kind), &["access_token", "access"]), "{kind}");
    }
    assert!(!string_is(
        answer.get("typ"),
        &["refresh", "offline", "id", "logout", "serialized-id"]
    ));
    if setup.require_token_type {
        assert!(
            answer.contains_key("token_type")
                || answer.contains_key("token_use")
                || string_is(answer.get("typ"), &["bearer"])
        );
    }
    let exp = answer.get("exp").map(|exp| {
        // A number (integer or not) that has not passed.
        let exp = exp.as_f64().expect("exp is a number");
        assert!(
            exp + LEEWAY as f64 > before as f64 - 1.0,
            "exp {exp} at {before}"
        );
        exp
    });
    if let Some(own) = token_exp {
        assert!(
            own + LEEWAY > before,
            "the token's own exp {own} at {before}"
        );
        assert!(token.expires_at <= own, "{} > own {own}", token.expires_at);
    }
    if let Some(exp) = exp {
        assert!(
            token.expires_at as f64 <= exp.max(0.0) + 1.0,
            "{} > {exp}",
            token.expires_at
        );
    }
    assert!(token.accepted_until >= token.expires_at);
    assert!(token.accepted_until <= token.expires_at.saturating_add(LEEWAY));
    assert_eq!(token.issuer, 0);
    assert_eq!(token.keys_generation, 0);
    let _ = after;
    let words = granted_words(answer, setup.scope_claim);
    for scope in token.scopes.joined().split(' ').filter(|s| !s.is_empty()) {
        assert!(words.contains(&scope), "{scope} not granted: {answer:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    static TOKENS: AtomicU64 = AtomicU64::new(0);
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let setup = &fixture.setups[usize::from(flags & 3) % fixture.setups.len()];
    let now = now_unix();
    let token_exp = match (flags >> 2) & 3 {
        1 => Some(now + 3600),
        2 => Some(now - 100),
        _ => None,
    };
    *fixture.answer.lock().expect("answer") = Bytes::copy_from_slice(body);
    let token = format!("opaque-{}", TOKENS.fetch_add(1, Ordering::Relaxed));
    let before = now_unix();
    let outcome = fixture.runtime.block_on(setup.introspector.introspect(
        &token,
        digest(&token),
        token_exp,
    ));
    let after = now_unix();
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    match outcome {
        Ok(identity) => {
            let answer = parsed.expect("an identity from a body that is no JSON object");
            check_allowed(setup, &answer, token_exp, &identity, before, after);
        }
        Err(GatewayError::IntrospectionUnavailable) => {}
        Err(GatewayError::InvalidToken(TokenError::Inactive)) => {
            // serde_json keeps a repeated member's last value, the crate
            // refuses the answer (unavailable): so only a refusal of an
            // answer serde_json reads as one object is checked here.
            assert!(
                parsed.is_some(),
                "Inactive for a body that is no JSON object"
            );
        }
        Err(e) => panic!("unexpected outcome {e:?}"),
    }
});
