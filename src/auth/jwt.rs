//! Strict JWS compact parsing and JWT claim validation (RFC 7515, 7519, 9068).
//!
//! We parse the header and claims ourselves, strictly (canonical base64url,
//! duplicate-free JSON objects, typed claims), choose the issuer from `iss`, and
//! check the signature with that issuer's keys, which `jsonwebtoken` decoded
//! from the JWKS and aws-lc-rs parsed once per algorithm (see `jwks`).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Why a token was refused. Each variant is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three non-empty dot-separated segments (JWE, JSON serialization, junk).
    #[error("malformed token")]
    Malformed,
    /// A segment is not canonical unpadded base64url.
    #[error("bad base64url")]
    BadEncoding,
    /// The JOSE header is not a valid, duplicate-free JSON object.
    #[error("bad header")]
    BadHeader,
    /// The header marks extensions critical (`crit`); none are supported.
    #[error("unsupported critical header")]
    UnsupportedCritical,
    /// The algorithm is not on the issuer's allow-list (including `none`).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `typ` differs from the issuer's `require_typ`.
    #[error("wrong typ")]
    WrongType,
    /// The claims are not a valid, duplicate-free JSON object.
    #[error("bad claims")]
    BadClaims,
    /// A registered claim has the wrong JSON type (`"exp": "123"`).
    #[error("claim of the wrong type")]
    WrongClaimType,
    /// No `exp`.
    #[error("missing exp")]
    MissingExpiry,
    /// `iss` names no configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// The issuer is configured but not accepted on this route.
    #[error("issuer not accepted on this route")]
    IssuerNotAccepted,
    /// No key of the issuer has this `kid` (or fits the algorithm).
    #[error("unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is in the past (beyond leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("issued in the future")]
    IssuedInFuture,
    /// `aud` names none of the issuer's audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// The token was revoked or is inactive.
    #[error("inactive")]
    Inactive,
    /// The token is bound to a key or certificate (`cnf`: DPoP, RFC 9449;
    /// mutual TLS, RFC 8705) that a bearer request cannot prove.
    #[error("sender-constrained")]
    SenderConstrained,
}

impl TokenError {
    /// Bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadEncoding => "bad_encoding",
            Self::BadHeader => "bad_header",
            Self::UnsupportedCritical => "unsupported_crit",
            Self::AlgorithmNotAllowed => "alg_not_allowed",
            Self::WrongType => "wrong_typ",
            Self::BadClaims => "bad_claims",
            Self::WrongClaimType => "wrong_claim_type",
            Self::MissingExpiry => "missing_exp",
            Self::UnknownIssuer => "unknown_issuer",
            Self::IssuerNotAccepted => "issuer_not_accepted",
            Self::UnknownKey => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "iat_in_future",
            Self::WrongAudience => "wrong_audience",
            Self::Inactive => "inactive",
            Self::SenderConstrained => "sender_constrained",
        }
    }

    /// Short `error_description` (never echoes token content).
    pub fn description(&self) -> &'static str {
        match self {
            Self::Malformed => "the token is not a compact JWS",
            Self::BadEncoding => "the token is not canonical base64url",
            Self::BadHeader => "the token header is invalid",
            Self::UnsupportedCritical => "the token uses unsupported critical header parameters",
            Self::AlgorithmNotAllowed => "the token algorithm is not allowed",
            Self::WrongType => "the token type is not accepted",
            Self::BadClaims => "the token claims are invalid",
            Self::WrongClaimType => "a token claim has the wrong type",
            Self::MissingExpiry => "the token has no expiry",
            Self::UnknownIssuer => "the token issuer is not trusted",
            Self::IssuerNotAccepted => "the token issuer is not accepted on this route",
            Self::UnknownKey => "the token signing key is unknown",
            Self::BadSignature => "the token signature is invalid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::IssuedInFuture => "the token was issued in the future",
            Self::WrongAudience => "the token is not meant for this audience",
            Self::Inactive => "the token is not active",
            Self::SenderConstrained => {
                "the token is bound to a proof the bearer scheme cannot carry"
            }
        }
    }
}

/// A compact JWS split and decoded, signature not yet checked.
pub struct UnverifiedJwt<'t> {
    /// `base64(header) "." base64(payload)`: what the signature covers.
    pub signing_input: &'t str,
    /// The base64url signature segment.
    pub signature: &'t str,
    /// The header's `alg`.
    pub alg: String,
    /// The header's `kid`, if any.
    pub kid: Option<String>,
    /// The header's `typ`, if any.
    pub typ: Option<String>,
    /// The claims object.
    pub claims: Map<String, Value>,
}

impl std::fmt::Debug for UnverifiedJwt<'_> {
    /// The header's fields and the claims' names only: the signing input and
    /// signature together are the bearer token, and the claims' values
    /// (`sub`, `email`, ...) are a person's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("typ", &self.typ)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Splits and decodes a compact JWS; everything but the signature is checked
/// for shape here.
pub fn parse_compact(token: &str) -> Result<UnverifiedJwt<'_>, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header_bytes = decode_segment(h)?;
    let payload_bytes = decode_segment(p)?;
    decode_segment(s)?;
    let mut header = strict_object(&header_bytes).ok_or(TokenError::BadHeader)?;
    if let Some(crit) = header.remove("crit") {
        // RFC 7515 4.1.11: an array of names this implementation understands; we
        // understand none, and an empty or malformed list is invalid too.
        let _ = crit;
        return Err(TokenError::UnsupportedCritical);
    }
    if header.contains_key("b64") {
        // RFC 7797 6: `b64` is a critical extension, valid only listed in
        // `crit`; the signer of a token carrying it meant another payload.
        return Err(TokenError::UnsupportedCritical);
    }
    let alg = match header.remove("alg") {
        Some(Value::String(alg)) => alg,
        _ => return Err(TokenError::BadHeader),
    };
    let kid = optional_string(&mut header, "kid").map_err(|_| TokenError::BadHeader)?;
    let typ = optional_string(&mut header, "typ").map_err(|_| TokenError::BadHeader)?;
    let claims = strict_object(&payload_bytes).ok_or(TokenError::BadClaims)?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or(TokenError::Malformed)?;
    Ok(UnverifiedJwt {
        signing_input,
        signature: s,
        alg,
        kid,
        typ,
        claims,
    })
}

/// Strict base64url: unpadded, canonical trailing bits.
fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::BadEncoding)
}

fn optional_string(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ()> {
    match map.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// Parses a JSON object, refusing duplicate member names at the top level
/// (RFC 7515 4: "MUST reject" or use the last; we reject).
pub fn strict_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let object = StrictObject::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(object.0)
}

struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object without duplicate keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.insert(key, value).is_some() {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                }
                Ok(StrictObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Maps a header `alg` to an algorithm if it is on the allow-list (exact,
/// case-sensitive: `none`, `None` and `HS256` are never on it).
pub fn allowed_algorithm(alg: &str, allowed: &[Algorithm]) -> Option<Algorithm> {
    let parsed = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    };
    allowed.contains(&parsed).then_some(parsed)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long until `exp` (seconds since the epoch), to the nanosecond: a
/// cache entry kept for whole seconds counted from a whole second would
/// outlive the token by up to one.
pub fn time_until(exp: u64) -> std::time::Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    std::time::Duration::from_secs(exp).saturating_sub(now)
}

/// The time claims of a token, checked.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// `exp`, seconds since the epoch (fractions dropped).
    pub expires_at: u64,
}

/// Checks `exp` (required), `nbf` and `iat` against `now` with `leeway` seconds.
pub fn check_lifetime(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
) -> Result<Lifetime, TokenError> {
    let exp = numeric_date(claims.get("exp"), f64::floor)?.ok_or(TokenError::MissingExpiry)?;
    // RFC 7519 4.1.4: valid only *before* `exp` (plus the leeway); `now`
    // is whole seconds, so the last second is refused, not granted.
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    // `nbf` and `iat` round up, as `exp` rounds down: a fraction of a
    // second early is still early.
    if let Some(nbf) = numeric_date(claims.get("nbf"), f64::ceil)? {
        if nbf > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims.get("iat"), f64::ceil)? {
        if iat > now.saturating_add(leeway) {
            return Err(TokenError::IssuedInFuture);
        }
    }
    Ok(Lifetime { expires_at: exp })
}

/// A NumericDate: a JSON number (integer or fraction), never a string; a
/// fraction is made whole by `round` (the direction that errs on refusal).
fn numeric_date(value: Option<&Value>, round: fn(f64) -> f64) -> Result<Option<u64>, TokenError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64() {
                if f.is_finite() && f >= 0.0 {
                    // Fractions are allowed (RFC 7519 2); saturating cast is intended.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(Some(round(f) as u64))
                } else {
                    Err(TokenError::WrongClaimType)
                }
            } else {
                Err(TokenError::WrongClaimType)
            }
        }
        Some(_) => Err(TokenError::WrongClaimType),
    }
}

/// `aud` (string or array of strings) must contain one of `accepted`.
pub fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), TokenError> {
    match claims.get("aud") {
        Some(Value::String(aud)) if accepted.iter().any(|a| a == aud) => Ok(()),
        Some(Value::String(_)) | None => Err(TokenError::WrongAudience),
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                match item {
                    Value::String(aud) => found |= accepted.iter().any(|a| a == aud),
                    _ => return Err(TokenError::WrongClaimType),
                }
            }
            if found {
                Ok(())
            } else {
                Err(TokenError::WrongAudience)
            }
        }
        Some(_) => Err(TokenError::WrongClaimType),
    }
}

/// Checks that `client_id` is a string naming one of `accepted`, for an
/// identity provider whose access tokens carry no `aud` (Amazon Cognito's
/// carry the app client's id there instead).
pub fn check_client_id(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), TokenError> {
    match claims.get("client_id") {
        Some(Value::String(id)) if accepted.iter().any(|a| a == id) => Ok(()),
        Some(Value::String(_)) | None => Err(TokenError::WrongAudience),
        Some(_) => Err(TokenError::WrongClaimType),
    }
}

/// Whether `aud` is there and names something. An empty array names no
/// audience: Ory Hydra (fosite) writes `"aud": []` into every token and
/// introspection answer granted none, where other servers leave `aud` out.
pub fn names_an_audience(claims: &Map<String, Value>) -> bool {
    match claims.get("aud") {
        None => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

/// Checks that a token is meant for this API: `aud` names one of
/// `audiences`, and `client_id` one of `client_ids`, for each list that is
/// not empty (the config has at least one). With no `audiences`, a token
/// that has an `aud` is meant for some other API (RFC 7519 4.1.3: this one
/// identifies itself with none of its values); an empty `aud` names none.
pub fn check_intended(
    claims: &Map<String, Value>,
    audiences: &[String],
    client_ids: &[String],
) -> Result<(), TokenError> {
    if !audiences.is_empty() {
        check_audience(claims, audiences)?;
    } else if names_an_audience(claims) {
        return Err(TokenError::WrongAudience);
    }
    if !client_ids.is_empty() {
        check_client_id(claims, client_ids)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:?}` of a parsed token shows neither the token (signing input and
    /// signature) nor a claim's value.
    #[test]
    fn debug_of_a_parsed_token_shows_no_part_of_it() {
        let header = b64(r#"{"alg":"ES256","kid":"k1"}"#);
        let payload = b64(r#"{"sub":"person-7f3a9c","exp":4000000000}"#);
        let token = format!("{header}.{payload}.c2lnbmF0dXJlLTVlMWQ");
        let parsed = parse_compact(&token).unwrap();
        let shown = format!("{parsed:?}");
        for secret in [
            header.as_str(),
            &payload,
            "c2lnbmF0dXJlLTVlMWQ",
            "person-7f3a9c",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("ES256") && shown.contains("\"sub\""),
            "{shown}"
        );
    }

    #[test]
    fn time_until_exp_counts_the_second_already_begun() {
        // `exp` one whole second after the current whole second is less
        // than a second away (unless the clock stands exactly on a second).
        let left = time_until(now_unix() + 1);
        assert!(left < std::time::Duration::from_secs(1), "{left:?}");
        assert_eq!(time_until(now_unix()), std::time::Duration::ZERO);
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    #[test]
    fn splits_exactly_three_segments() {
        let t = token(r#"{"alg":"ES256","kid":"k"}"#, r#"{"iss":"x"}"#);
        let parsed = parse_compact(&t).unwrap();
        assert_eq!(parsed.alg, "ES256");
        assert_eq!(parsed.kid.as_deref(), Some("k"));
        assert_eq!(parsed.claims["iss"], "x");
        for bad in ["a.b", "a.b.c.d.e", "a..c", ".b.c", "a.b.", ""] {
            assert!(parse_compact(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_padding_and_non_canonical_base64() {
        let good = token(r#"{"alg":"ES256"}"#, r#"{"iss":"x"}"#);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[2] = "c2ln=".to_owned();
        assert_eq!(
            parse_compact(&parts.join(".")).unwrap_err(),
            TokenError::BadEncoding
        );
        parts[2] = "c2lo".to_owned(); // canonical would be c2ln... "sig" = c2ln
        assert!(parse_compact(&parts.join(".")).is_ok());
        parts[2] = "c2lnZ".to_owned(); // 5 chars: impossible length
        assert_eq!(
            parse_compact(&parts.join(".")).unwrap_err(),
            TokenError::BadEncoding
        );
        parts[2] = "c2lnZA+".to_owned();
        assert_eq!(
            parse_compact(&parts.join(".")).unwrap_err(),
            TokenError::BadEncoding
        );
    }

    #[test]
    fn rejects_crit_duplicates_and_bad_types() {
        let crit = token(r#"{"alg":"ES256","crit":[]}"#, "{}");
        assert_eq!(
            parse_compact(&crit).unwrap_err(),
            TokenError::UnsupportedCritical
        );
        let b64 = token(r#"{"alg":"ES256","b64":false}"#, "{}");
        assert_eq!(
            parse_compact(&b64).unwrap_err(),
            TokenError::UnsupportedCritical
        );
        let dup = token(r#"{"alg":"ES256","alg":"none"}"#, "{}");
        assert_eq!(parse_compact(&dup).unwrap_err(), TokenError::BadHeader);
        let dup_claims = token(r#"{"alg":"ES256"}"#, r#"{"sub":"a","sub":"b"}"#);
        assert_eq!(
            parse_compact(&dup_claims).unwrap_err(),
            TokenError::BadClaims
        );
        let kid_number = token(r#"{"alg":"ES256","kid":1}"#, "{}");
        assert_eq!(
            parse_compact(&kid_number).unwrap_err(),
            TokenError::BadHeader
        );
        let array_payload = token(r#"{"alg":"ES256"}"#, "[]");
        assert_eq!(
            parse_compact(&array_payload).unwrap_err(),
            TokenError::BadClaims
        );
        let trailing = token(r#"{"alg":"ES256"} x"#, "{}");
        assert_eq!(parse_compact(&trailing).unwrap_err(), TokenError::BadHeader);
    }

    #[test]
    fn algorithm_allow_list_is_exact() {
        let allowed = [Algorithm::ES256];
        assert_eq!(allowed_algorithm("ES256", &allowed), Some(Algorithm::ES256));
        for alg in [
            "none", "None", "NONE", "nOnE", "HS256", "es256", "RS256", "",
        ] {
            assert_eq!(allowed_algorithm(alg, &allowed), None, "{alg}");
        }
    }

    #[test]
    fn lifetime_checks() {
        let claims = |v: Value| v.as_object().cloned().unwrap();
        let now = 1_000_000;
        assert!(check_lifetime(&claims(serde_json::json!({"exp": now + 10})), now, 0).is_ok());
        assert!(check_lifetime(&claims(serde_json::json!({"exp": 1_000_010.5})), now, 0).is_ok());
        assert_eq!(
            check_lifetime(&claims(serde_json::json!({"exp": now - 31})), now, 30).unwrap_err(),
            TokenError::Expired
        );
        assert!(check_lifetime(&claims(serde_json::json!({"exp": now - 29})), now, 30).is_ok());
        // Valid only before exp + leeway: its very second is refused.
        for (exp, leeway) in [(now, 0), (now - 30, 30)] {
            assert_eq!(
                check_lifetime(&claims(serde_json::json!({ "exp": exp })), now, leeway)
                    .unwrap_err(),
                TokenError::Expired,
                "exp {exp}, leeway {leeway}"
            );
        }
        assert!(check_lifetime(&claims(serde_json::json!({"exp": now + 1})), now, 0).is_ok());
        assert_eq!(
            check_lifetime(&claims(serde_json::json!({"exp": "9999999999"})), now, 0).unwrap_err(),
            TokenError::WrongClaimType
        );
        assert_eq!(
            check_lifetime(&claims(serde_json::json!({})), now, 0).unwrap_err(),
            TokenError::MissingExpiry
        );
        assert_eq!(
            check_lifetime(
                &claims(serde_json::json!({"exp": now + 100, "nbf": now + 60})),
                now,
                30
            )
            .unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(
            check_lifetime(
                &claims(serde_json::json!({"exp": now + 100, "iat": now + 60})),
                now,
                30
            )
            .unwrap_err(),
            TokenError::IssuedInFuture
        );
        assert_eq!(
            check_lifetime(&claims(serde_json::json!({"exp": -5})), now, 30).unwrap_err(),
            TokenError::WrongClaimType
        );
        // `now` is whole seconds (1 000 000.x): an `nbf` or `iat` a fraction
        // past it is still ahead, and refused without leeway.
        for (claim, error) in [
            ("nbf", TokenError::NotYetValid),
            ("iat", TokenError::IssuedInFuture),
        ] {
            let ahead = claims(serde_json::json!({"exp": now + 100, claim: 1_000_000.9}));
            assert_eq!(
                check_lifetime(&ahead, now, 0).unwrap_err(),
                error,
                "{claim}"
            );
            assert!(check_lifetime(&ahead, now + 1, 0).is_ok(), "{claim}");
            assert!(check_lifetime(&ahead, now, 1).is_ok(), "{claim}");
        }
    }

    #[test]
    fn audience_checks() {
        let accepted = vec!["api".to_owned()];
        let claims = |v: Value| v.as_object().cloned().unwrap();
        assert!(check_audience(&claims(serde_json::json!({"aud": "api"})), &accepted).is_ok());
        assert!(
            check_audience(&claims(serde_json::json!({"aud": ["x", "api"]})), &accepted).is_ok()
        );
        assert_eq!(
            check_audience(&claims(serde_json::json!({"aud": "apix"})), &accepted).unwrap_err(),
            TokenError::WrongAudience
        );
        assert_eq!(
            check_audience(&claims(serde_json::json!({})), &accepted).unwrap_err(),
            TokenError::WrongAudience
        );
        assert_eq!(
            check_audience(&claims(serde_json::json!({"aud": ["api", 1]})), &accepted).unwrap_err(),
            TokenError::WrongClaimType
        );
    }
}
