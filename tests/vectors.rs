//! Public JOSE test vectors (Wycheproof, RFC 7520) run against the gateway's
//! JWT parsing (`auth::jwt`) and key handling (`auth::jwks`). The files are in
//! `tests/vectors/`, see its README for where they come from.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use scopegate::auth::check_signature;
use scopegate::auth::jwks::{JwksError, KeySet};
use scopegate::auth::jwt::{
    allowed_algorithm, parse_compact, strict_object, TokenError, UnverifiedJwt,
};
use serde_json::{json, Value};

/// Every algorithm the gateway can ever accept.
const SUPPORTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `valid` cases of `json_web_signature_test.json` that the gateway refuses on
/// purpose. The test fails if one of them starts to verify, or if any other
/// valid case is refused.
const JWS_STRICTER: &[(u64, &str)] = &[
    (1, "HS256: HMAC is never accepted"),
    (
        346,
        "the JWK pins \"alg\": \"PS256\" but the token is PS384; the gateway enforces a JWK's alg",
    ),
    (347, "ES512 (P-521) is not supported"),
    (348, "HS256: HMAC is never accepted"),
    (
        350,
        "the JWK pins \"alg\": \"PS256\" but the token is PS384; the gateway enforces a JWK's alg",
    ),
    (351, "ES512 (P-521) is not supported"),
    (352, "HS256: HMAC is never accepted"),
    (357, "HS256: HMAC is never accepted"),
    (358, "HS256: HMAC is never accepted"),
    (359, "HS256: HMAC is never accepted"),
    (372, "HS256: HMAC is never accepted"),
    (373, "HS256: HMAC is never accepted"),
    (376, "HS256: HMAC is never accepted"),
    (377, "HS256: HMAC is never accepted"),
];

fn vector_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(rel)
}

fn load(rel: &str) -> Value {
    let text = std::fs::read_to_string(vector_path(rel)).expect(rel);
    serde_json::from_str(&text).expect(rel)
}

fn jwks(keys: &[&Value]) -> Result<KeySet, JwksError> {
    KeySet::from_json(json!({ "keys": keys }).to_string().as_bytes())
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect(s))
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Why the gateway refused a token, or that it accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Rejected(String),
}

/// Splits a compact JWS whose only fault (for `parse_compact`) is its payload
/// shape: three segments, all strict base64url, header non-empty and a
/// duplicate-free object without `crit`, a string `alg`, an optional string
/// `kid`, and a non-empty signature. The payload may be anything, even empty.
fn split_strict(jws: &str) -> Option<(&str, &str, String, Option<String>)> {
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if h.is_empty() || s.is_empty() {
        return None;
    }
    URL_SAFE_NO_PAD.decode(p).ok()?;
    URL_SAFE_NO_PAD.decode(s).ok()?;
    let header = strict_object(&URL_SAFE_NO_PAD.decode(h).ok()?)?;
    if header.contains_key("crit") {
        return None;
    }
    let alg = header.get("alg")?.as_str()?.to_owned();
    let kid = match header.get("kid") {
        None => None,
        Some(kid) => Some(kid.as_str()?.to_owned()),
    };
    Some((&jws[..h.len() + 1 + p.len()], s, alg, kid))
}

/// What the gateway does with a compact JWS, up to and including the
/// signature check (`auth::check_signature`), but without the claim checks.
/// `via_split` is set when the payload is not a JSON object (or is empty):
/// `parse_compact` refuses those (`BadClaims`, or `Malformed` for an empty
/// segment) before the signature is looked at, so the signature path is then
/// exercised on the split token instead.
fn gateway_verdict(jws: &str, keys: Option<&KeySet>, via_split: &mut bool) -> Verdict {
    let jwt = match parse_compact(jws) {
        Ok(jwt) => jwt,
        Err(e @ (TokenError::BadClaims | TokenError::Malformed)) => match split_strict(jws) {
            Some((signing_input, signature, alg, kid)) => {
                *via_split = true;
                UnverifiedJwt {
                    signing_input,
                    signature,
                    alg,
                    kid,
                    typ: None,
                    claims: serde_json::Map::new(),
                }
            }
            None => return Verdict::Rejected(e.reason().to_owned()),
        },
        Err(e) => return Verdict::Rejected(e.reason().to_owned()),
    };
    let Some(alg) = allowed_algorithm(&jwt.alg, SUPPORTED) else {
        return Verdict::Rejected(format!("alg_not_allowed ({})", jwt.alg));
    };
    let Some(keys) = keys else {
        return Verdict::Rejected("no_usable_key".to_owned());
    };
    match check_signature(keys, &jwt, alg) {
        Ok(()) => Verdict::Accepted,
        Err(e) => Verdict::Rejected(e.reason().to_owned()),
    }
}

#[derive(Default, Debug)]
struct Counts {
    valid_accepted: usize,
    invalid_rejected: usize,
    acceptable_accepted: usize,
    acceptable_rejected: usize,
    stricter: usize,
    skipped: usize,
    via_split: usize,
}

#[test]
fn wycheproof_json_web_signature() {
    let doc = load("wycheproof/json_web_signature_test.json");
    let stricter: BTreeMap<u64, &str> = JWS_STRICTER.iter().copied().collect();
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    let mut seen_stricter = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let keys = match group.get("public") {
            Some(public) => jwks(&[public]).ok(),
            None => {
                // The HMAC groups: the only key is the symmetric `private` one.
                let private = &group["private"];
                assert_eq!(private["kty"], "oct", "{}", group["comment"]);
                assert!(
                    matches!(jwks(&[private]), Err(JwksError::NoUsableKeys)),
                    "an oct key must never be a usable verification key"
                );
                None
            }
        };
        for test in group["tests"].as_array().unwrap() {
            total += 1;
            let tc = test["tcId"].as_u64().unwrap();
            let result = str_field(test, "result");
            let mut via_split = false;
            let verdict = gateway_verdict(str_field(test, "jws"), keys.as_ref(), &mut via_split);
            counts.via_split += usize::from(via_split);
            let accepted = verdict == Verdict::Accepted;
            match (result, accepted) {
                ("valid", true) if stricter.contains_key(&tc) => failures.push(format!(
                    "tcId {tc}: listed as stricter-than-vector ({}) but now accepted",
                    stricter[&tc]
                )),
                ("valid", true) => counts.valid_accepted += 1,
                ("valid", false) if stricter.contains_key(&tc) => {
                    counts.stricter += 1;
                    seen_stricter.push(tc);
                }
                ("valid", false) => failures.push(format!(
                    "tcId {tc} ({}): valid but rejected: {verdict:?}",
                    test["comment"]
                )),
                ("invalid", false) => {
                    counts.invalid_rejected += 1;
                    if let Verdict::Rejected(why) = &verdict {
                        let label = why.split(' ').next().unwrap_or_default().to_owned();
                        *reasons.entry(label).or_insert(0usize) += 1;
                    }
                }
                ("invalid", true) => failures.push(format!(
                    "tcId {tc} ({}, group {}): invalid but accepted",
                    test["comment"], group["comment"]
                )),
                ("acceptable", true) => counts.acceptable_accepted += 1,
                ("acceptable", false) => counts.acceptable_rejected += 1,
                (other, _) => failures.push(format!("tcId {tc}: unknown result {other}")),
            }
        }
    }
    for &(tc, why) in JWS_STRICTER {
        let reported = failures
            .iter()
            .any(|f| f.starts_with(&format!("tcId {tc}:")));
        if !seen_stricter.contains(&tc) && !reported {
            failures.push(format!(
                "tcId {tc} ({why}): listed as stricter but not seen"
            ));
        }
    }
    println!(
        "json_web_signature_test.json: {total} tests; valid accepted {}, invalid rejected {}, \
         stricter-than-vector {}, acceptable accepted/rejected {}/{} \
         (signature path checked on the split token for {} non-object payloads)",
        counts.valid_accepted,
        counts.invalid_rejected,
        counts.stricter,
        counts.acceptable_accepted,
        counts.acceptable_rejected,
        counts.via_split,
    );
    println!("json_web_signature_test.json: invalid rejected by reason: {reasons:?}");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(total, doc["numberOfTests"].as_u64().unwrap());
    assert_eq!(
        counts.valid_accepted + counts.invalid_rejected + counts.stricter,
        total as usize
    );
}

/// Runs a Wycheproof signature-primitive file through a one-key JWKS and
/// `VerificationKey::verify`. The signing input is the message itself, so
/// only messages that are valid UTF-8 can be passed (the rest are skipped).
fn run_primitive_file(
    file: &str,
    jwk_field: &str,
    alg: Algorithm,
    extra: &[(&str, &str)],
) -> Counts {
    let doc = load(file);
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let tests = group["tests"].as_array().unwrap();
        total += tests.len();
        let Some(jwk) = group.get(jwk_field) else {
            counts.skipped += tests.len();
            continue;
        };
        let mut jwk = jwk.clone();
        for (k, v) in extra {
            jwk[*k] = json!(v);
        }
        let set = jwks(&[&jwk]).unwrap_or_else(|e| panic!("{file}: {jwk}: {e}"));
        let kid = jwk["kid"].as_str();
        let keys: Vec<_> = set.candidates(kid, alg).collect();
        assert_eq!(keys.len(), 1, "{file}: {jwk}");
        let key = keys[0];
        for test in tests {
            let tc = test["tcId"].as_u64().unwrap();
            let Ok(msg) = String::from_utf8(hex(str_field(test, "msg"))) else {
                counts.skipped += 1;
                continue;
            };
            let sig = URL_SAFE_NO_PAD.encode(hex(str_field(test, "sig")));
            let ok = key.verify(&msg, &sig, alg);
            match (str_field(test, "result"), ok) {
                ("valid", true) => counts.valid_accepted += 1,
                ("invalid", false) => counts.invalid_rejected += 1,
                ("acceptable", true) => counts.acceptable_accepted += 1,
                ("acceptable", false) => counts.acceptable_rejected += 1,
                (result, _) => failures.push(format!(
                    "{file} tcId {tc} ({}, {:?}): {result} but verify returned {ok}",
                    test["comment"], test["flags"]
                )),
            }
        }
    }
    println!(
        "{file}: {total} tests; valid accepted {}, invalid rejected {}, \
         acceptable accepted/rejected {}/{}, skipped {} (non-UTF-8 message or no JWK)",
        counts.valid_accepted,
        counts.invalid_rejected,
        counts.acceptable_accepted,
        counts.acceptable_rejected,
        counts.skipped,
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(total, doc["numberOfTests"].as_u64().unwrap() as usize);
    assert_eq!(
        counts.valid_accepted
            + counts.invalid_rejected
            + counts.acceptable_accepted
            + counts.acceptable_rejected
            + counts.skipped,
        total
    );
    counts
}

#[test]
fn wycheproof_ecdsa_p256_sha256_p1363() {
    let counts = run_primitive_file(
        "wycheproof/ecdsa_secp256r1_sha256_p1363_test.json",
        "publicKeyJwk",
        Algorithm::ES256,
        &[("alg", "ES256")],
    );
    assert!(
        counts.valid_accepted > 100 && counts.invalid_rejected > 50,
        "{counts:?}"
    );
}

#[test]
fn wycheproof_rsa_pkcs1_2048_sha256() {
    // The JWK already says "alg": "RS256".
    let counts = run_primitive_file(
        "wycheproof/rsa_signature_2048_sha256_test.json",
        "keyJwk",
        Algorithm::RS256,
        &[],
    );
    assert!(
        counts.valid_accepted > 0 && counts.invalid_rejected > 200,
        "{counts:?}"
    );
}

#[test]
fn wycheproof_ed25519() {
    let counts = run_primitive_file(
        "wycheproof/ed25519_test.json",
        "publicKeyJwk",
        Algorithm::EdDSA,
        &[],
    );
    assert!(
        counts.valid_accepted > 0 && counts.invalid_rejected > 50,
        "{counts:?}"
    );
    // The JWK is the raw public key: kty OKP, crv Ed25519, x = base64url(pk).
    let doc = load("wycheproof/ed25519_test.json");
    for group in doc["testGroups"].as_array().unwrap() {
        let jwk = &group["publicKeyJwk"];
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(
            str_field(jwk, "x"),
            URL_SAFE_NO_PAD.encode(hex(str_field(&group["publicKey"], "pk")))
        );
    }
}

/// Splits a compact JWS into (signing input, signature, header).
fn split(compact: &str) -> (&str, &str, serde_json::Map<String, Value>) {
    let (signing_input, signature) = compact.rsplit_once('.').unwrap();
    let (h, _) = signing_input.split_once('.').unwrap();
    let header = strict_object(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    (signing_input, signature, header)
}

fn rfc7520_compact(file: &str) -> String {
    str_field(&load(file)["output"], "compact").to_owned()
}

#[test]
fn rfc7520_signatures() {
    let rsa_jwk = load("rfc7520/jwk/3_3.rsa_public_key.json");
    let ec_jwk = load("rfc7520/jwk/3_1.ec_public_key.json");
    let mac_jwk = load("rfc7520/jwk/3_5.symmetric_key_mac_computation.json");
    let rsa = jwks(&[&rsa_jwk]).unwrap();
    let kid = "bilbo.baggins@hobbiton.example";

    // 4.1 RS256 and 4.2 PS384: the payload is text, not a claims object.
    for (file, alg) in [
        ("rfc7520/jws/4_1.rsa_v15_signature.json", Algorithm::RS256),
        ("rfc7520/jws/4_2.rsa-pss_signature.json", Algorithm::PS384),
    ] {
        let compact = rfc7520_compact(file);
        assert_eq!(
            parse_compact(&compact).unwrap_err(),
            TokenError::BadClaims,
            "{file}"
        );
        let (input, sig, header) = split(&compact);
        assert_eq!(header["kid"], kid);
        let header_alg = header["alg"].as_str().unwrap();
        assert_eq!(
            allowed_algorithm(header_alg, SUPPORTED),
            Some(alg),
            "{file}"
        );
        let keys: Vec<_> = rsa.candidates(Some(kid), alg).collect();
        assert_eq!(keys.len(), 1, "{file}");
        assert!(keys[0].verify(input, sig, alg), "{file} must verify");
        let mut verdict_split = false;
        assert_eq!(
            gateway_verdict(&compact, Some(&rsa), &mut verdict_split),
            Verdict::Accepted
        );
        // Same key, other RSA algorithms: no.
        for other in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::PS256,
            Algorithm::PS384,
        ] {
            if other != alg {
                assert!(!keys[0].verify(input, sig, other), "{file} as {other:?}");
            }
        }
        // One flipped signature bit: no.
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[10] ^= 1;
        assert!(!keys[0].verify(input, &URL_SAFE_NO_PAD.encode(raw), alg));
    }
    println!("rfc7520: 4.1 RS256 and 4.2 PS384 verify");

    // 4.3 ES512 (P-521): unsupported, refused at the algorithm and the key.
    let compact = rfc7520_compact("rfc7520/jws/4_3.ecdsa_signature.json");
    let (_, _, header) = split(&compact);
    assert_eq!(header["alg"], "ES512");
    assert_eq!(allowed_algorithm("ES512", SUPPORTED), None);
    assert!(matches!(jwks(&[&ec_jwk]), Err(JwksError::NoUsableKeys)));
    let mut s = false;
    assert!(matches!(
        gateway_verdict(&compact, Some(&rsa), &mut s),
        Verdict::Rejected(_)
    ));

    // 4.4 HS256: refused at the algorithm, and the oct key is never usable.
    let compact = rfc7520_compact("rfc7520/jws/4_4.hmac-sha2_integrity_protection.json");
    let (_, _, header) = split(&compact);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(allowed_algorithm("HS256", SUPPORTED), None);
    assert!(matches!(jwks(&[&mac_jwk]), Err(JwksError::NoUsableKeys)));
    assert!(matches!(
        gateway_verdict(&compact, Some(&rsa), &mut s),
        Verdict::Rejected(_)
    ));
    println!("rfc7520: 4.3 ES512 and 4.4 HS256 rejected (unsupported / HMAC)");
}

/// The Wycheproof ES256 key (group `es256`) and its valid token (tcId 18).
fn wycheproof_es256() -> (Value, String) {
    let doc = load("wycheproof/json_web_signature_test.json");
    for group in doc["testGroups"].as_array().unwrap() {
        for test in group["tests"].as_array().unwrap() {
            if test["tcId"] == 18 {
                assert_eq!(group["public"]["alg"], "ES256");
                return (group["public"].clone(), str_field(test, "jws").to_owned());
            }
        }
    }
    panic!("tcId 18 not found");
}

#[test]
fn algorithm_and_key_confusion() {
    let rsa_jwk = load("rfc7520/jwk/3_3.rsa_public_key.json");
    let rsa_token = rfc7520_compact("rfc7520/jws/4_1.rsa_v15_signature.json");
    let (ec_jwk, ec_token) = wycheproof_es256();
    let rsa = jwks(&[&rsa_jwk]).unwrap();
    let ec = jwks(&[&ec_jwk]).unwrap();
    let (rsa_input, rsa_sig, _) = split(&rsa_token);
    let (ec_input, ec_sig, ec_header) = split(&ec_token);
    let ec_kid = ec_header["kid"].as_str().unwrap();

    // Sanity: each verifies with its own key.
    let mut s = false;
    assert_eq!(
        gateway_verdict(&rsa_token, Some(&rsa), &mut s),
        Verdict::Accepted
    );
    assert_eq!(
        gateway_verdict(&ec_token, Some(&ec), &mut s),
        Verdict::Accepted
    );

    // The RSA key set has no key for ES256, and the RSA key refuses an ES256 signature.
    assert_eq!(rsa.candidates(None, Algorithm::ES256).count(), 0);
    assert_eq!(rsa.candidates(None, Algorithm::ES384).count(), 0);
    assert_eq!(rsa.candidates(None, Algorithm::EdDSA).count(), 0);
    for key in rsa.candidates(None, Algorithm::RS256) {
        assert!(!key.verify(ec_input, ec_sig, Algorithm::ES256));
        assert!(!key.verify(ec_input, ec_sig, Algorithm::RS256));
    }
    assert!(matches!(
        gateway_verdict(&ec_token, Some(&rsa), &mut s),
        Verdict::Rejected(_)
    ));

    // And vice versa.
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        assert_eq!(ec.candidates(None, alg).count(), 0, "{alg:?}");
        assert_eq!(ec.candidates(Some(ec_kid), alg).count(), 0, "{alg:?}");
    }
    for key in ec.candidates(None, Algorithm::ES256) {
        assert!(!key.verify(rsa_input, rsa_sig, Algorithm::RS256));
        assert!(!key.verify(rsa_input, rsa_sig, Algorithm::ES256));
    }
    assert!(matches!(
        gateway_verdict(&rsa_token, Some(&ec), &mut s),
        Verdict::Rejected(_)
    ));

    // Both keys under the same kid: each algorithm only finds its key type.
    let mut rsa_same_kid = rsa_jwk.clone();
    rsa_same_kid["kid"] = json!(ec_kid);
    let both = jwks(&[&rsa_same_kid, &ec_jwk]).unwrap();
    assert_eq!(both.len(), 2);
    let es: Vec<_> = both.candidates(Some(ec_kid), Algorithm::ES256).collect();
    assert_eq!(es.len(), 1);
    assert!(es[0].verify(ec_input, ec_sig, Algorithm::ES256));
    let rs: Vec<_> = both.candidates(Some(ec_kid), Algorithm::RS256).collect();
    assert_eq!(rs.len(), 1);
    assert!(rs[0].verify(rsa_input, rsa_sig, Algorithm::RS256));
    assert!(!rs[0].verify(ec_input, ec_sig, Algorithm::ES256));

    // A JWK that names its alg only fits that alg.
    let mut rsa_ps = rsa_jwk.clone();
    rsa_ps["alg"] = json!("PS256");
    let ps_only = jwks(&[&rsa_ps]).unwrap();
    assert_eq!(ps_only.candidates(None, Algorithm::RS256).count(), 0);
    assert_eq!(ps_only.candidates(None, Algorithm::PS256).count(), 1);
    assert!(matches!(
        gateway_verdict(&rsa_token, Some(&ps_only), &mut s),
        Verdict::Rejected(_)
    ));

    // HMAC with the RSA public key as the secret (classic confusion): the
    // algorithm is never allowed, whatever the keys.
    assert_eq!(allowed_algorithm("HS256", SUPPORTED), None);
    let header = URL_SAFE_NO_PAD
        .encode(json!({"alg": "HS256", "kid": "bilbo.baggins@hobbiton.example"}).to_string());
    let forged = format!(
        "{header}.{}.{}",
        URL_SAFE_NO_PAD.encode("{}"),
        URL_SAFE_NO_PAD.encode([0u8; 32])
    );
    assert!(matches!(
        gateway_verdict(&forged, Some(&rsa), &mut s),
        Verdict::Rejected(r) if r.starts_with("alg_not_allowed")
    ));

    // Encryption keys are skipped: "use": "enc", or key_ops without "verify".
    let mut enc = rsa_jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc-key");
    assert!(matches!(jwks(&[&enc]), Err(JwksError::NoUsableKeys)));
    let mixed = jwks(&[&enc, &ec_jwk]).unwrap();
    assert_eq!(mixed.len(), 1);
    assert!(!mixed.has_kid("enc-key"));
    assert!(mixed.has_kid(ec_kid));
    let mut ops = rsa_jwk.clone();
    ops.as_object_mut().unwrap().remove("use");
    ops["key_ops"] = json!(["encrypt", "wrapKey"]);
    assert!(matches!(jwks(&[&ops]), Err(JwksError::NoUsableKeys)));
    ops["key_ops"] = json!(["verify"]);
    assert_eq!(jwks(&[&ops]).unwrap().len(), 1);
    println!("algorithm/key confusion: all mismatches refused");
}
