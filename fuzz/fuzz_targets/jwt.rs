//! `auth::jwt::parse_compact` on arbitrary strings and `KeySet::from_json` on
//! arbitrary bytes; parsed tokens also go through the claim checks and a
//! signature check against a fixed P-256 key (RFC 7515 A.3).
#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use scopegate::auth::jwks::{KeySet, MAX_KEYS};
use scopegate::auth::jwt::{
    allowed_algorithm, check_audience, check_lifetime, parse_compact, TokenError,
};

/// The RFC 7515 A.3 example key.
const RFC7515_A3_JWKS: &[u8] = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a3",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

/// 64 zero bytes, base64url: the length of an ES256 or Ed25519 signature.
const ZERO_SIGNATURE_64: &str =
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

const ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

fn fixed_keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::from_json(RFC7515_A3_JWKS).expect("RFC 7515 A.3 key"))
}

fn check_token(token: &str) {
    let jwt = match parse_compact(token) {
        Ok(jwt) => jwt,
        Err(e) => {
            assert!(!e.reason().is_empty());
            return;
        }
    };
    // The pieces are exactly the token's three segments.
    assert_eq!(format!("{}.{}", jwt.signing_input, jwt.signature), token);
    assert_eq!(jwt.signing_input.matches('.').count(), 1, "{token:?}");
    assert!(!jwt.signature.is_empty() && !jwt.signature.contains('.'));
    // Parsing is deterministic.
    let again = parse_compact(token).expect("parsed once, parses again");
    assert_eq!(again.claims, jwt.claims);
    assert_eq!((again.alg, again.kid), (jwt.alg.clone(), jwt.kid.clone()));

    for now in [0, 1_300_819_380, u64::MAX] {
        match check_lifetime(&jwt.claims, now, 30) {
            Ok(lifetime) => assert!(now <= lifetime.expires_at.saturating_add(30)),
            Err(e) => assert!(!matches!(e, TokenError::Malformed | TokenError::BadHeader)),
        }
    }
    let _ = check_audience(&jwt.claims, &["api".to_owned()]);

    if let Some(alg) = allowed_algorithm(&jwt.alg, ALGORITHMS) {
        for key in fixed_keys().candidates(jwt.kid.as_deref(), alg) {
            assert!(key.fits(alg));
            let _ = key.verify(jwt.signing_input, jwt.signature, alg);
        }
    }
}

fn check_jwks(bytes: &[u8]) {
    if let Ok(set) = KeySet::from_json(bytes) {
        assert!(!set.is_empty() && set.len() <= MAX_KEYS);
        for alg in ALGORITHMS {
            for key in set.candidates(None, *alg) {
                assert!(key.fits(*alg));
                if let Some(kid) = key.kid() {
                    assert!(set.has_kid(kid));
                }
                // A fuzzed key was parsed once, when the set loaded; checking
                // junk signatures with it (too short, all zero, not base64url)
                // must not panic. No verdict is asserted: a small-order
                // Ed25519 key can accept an all-zero signature.
                for signature in ["AAAA", ZERO_SIGNATURE_64, "*"] {
                    let _ = key.verify("e30.e30", signature, *alg);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_jwks(data);
    if let Ok(token) = std::str::from_utf8(data) {
        check_token(token);
    }
});
