//! Extracting the one bearer token from a request (RFC 6750 section 2.1).

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::GatewayError;

/// Longest token accepted. Tokens carrying many groups or roles (Azure AD,
/// Keycloak) pass 8 KiB; the request head's limit (`max_header_bytes`,
/// 16 KiB by default) usually binds first.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Returns the token of the request's single `Authorization: Bearer` header.
///
/// No header is [`GatewayError::MissingToken`] and a header of another
/// scheme (`Basic`, ...) is [`GatewayError::OtherScheme`]: both a 401 without
/// an error code, since RFC 6750 section 3.1 counts an unsupported method as
/// no authentication information. Any other shape (two headers, a malformed
/// `Bearer` header, bad characters) is a 400 `invalid_request`.
pub fn extract(headers: &HeaderMap) -> Result<&str, GatewayError> {
    extract_unchecked(headers).and_then(check_characters)
}

/// Like [`extract`], but leaves the token's characters to
/// [`check_characters`]: the hot path skips that check for bytes whose
/// verdict is cached, since they were checked before it was cached.
pub fn extract_unchecked(headers: &HeaderMap) -> Result<&[u8], GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(GatewayError::MissingToken);
    };
    if values.next().is_some() {
        return Err(GatewayError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    parse_unchecked(value.as_bytes())
}

/// Parses one `Authorization` header value as `Bearer <b64token>`.
pub fn parse(value: &[u8]) -> Result<&str, GatewayError> {
    parse_unchecked(value).and_then(check_characters)
}

/// Checks the scheme and the token's length, not its characters. One or
/// more spaces may follow the scheme (RFC 6750 2.1: `"Bearer" 1*SP
/// b64token`).
fn parse_unchecked(value: &[u8]) -> Result<&[u8], GatewayError> {
    const SCHEME: &[u8] = b"bearer ";
    let is_bearer = value
        .get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME));
    if !is_bearer {
        return Err(not_bearer(value));
    }
    let mut token = value.get(SCHEME.len()..).unwrap_or_default();
    while let [b' ', rest @ ..] = token {
        token = rest;
    }
    if token.is_empty() {
        return Err(GatewayError::InvalidRequest("the bearer token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(GatewayError::InvalidRequest("the bearer token is too long"));
    }
    Ok(token)
}

/// Why a value that does not start with `Bearer SP` is refused: another
/// well-formed scheme (its name, an RFC 9110 token, ends at the first space
/// or tab) has no bearer credentials; anything else is malformed.
fn not_bearer(value: &[u8]) -> GatewayError {
    let scheme_len = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let scheme = value.get(..scheme_len).unwrap_or_default();
    let other_scheme = !scheme.is_empty()
        && !scheme.eq_ignore_ascii_case(b"bearer")
        && scheme.iter().all(|&b| is_tchar(b));
    if other_scheme {
        GatewayError::OtherScheme
    } else {
        GatewayError::InvalidRequest("the Authorization header is not a well-formed Bearer header")
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks that a token from [`extract_unchecked`] is an RFC 6750 b64token.
pub fn check_characters(token: &[u8]) -> Result<&str, GatewayError> {
    if !is_b64token(token) {
        return Err(GatewayError::InvalidRequest(
            "the bearer token has characters outside RFC 6750 b64token",
        ));
    }
    // b64token characters are ASCII, so this cannot fail; map it anyway.
    std::str::from_utf8(token)
        .map_err(|_| GatewayError::InvalidRequest("the bearer token is not ASCII"))
}

/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    body_len > 0
        && token
            .get(..body_len)
            .is_some_and(|body| body.iter().all(|&b| B64TOKEN[usize::from(b)]))
}

/// The b64token alphabet as a lookup table (one load per byte on the hot path).
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn accepts_one_bearer_token_in_any_scheme_case() {
        for v in ["Bearer abc.def-_~+/=", "bearer abc", "BEARER abc=="] {
            let h = headers(&[v]);
            assert!(extract(&h).is_ok(), "{v}");
        }
        assert_eq!(extract(&headers(&["Bearer a.b.c"])).unwrap(), "a.b.c");
        // RFC 6750 2.1: `"Bearer" 1*SP b64token`.
        assert_eq!(extract(&headers(&["Bearer   a.b.c"])).unwrap(), "a.b.c");
    }

    #[test]
    fn missing_header_is_missing_token() {
        assert!(matches!(
            extract(&HeaderMap::new()),
            Err(GatewayError::MissingToken)
        ));
    }

    #[test]
    fn other_schemes_carry_no_bearer_credentials() {
        for v in [
            "Basic dXNlcjpwYXNz",
            "Token abc",
            "Bearerabc",
            "Digest",
            "DPoP abc",
        ] {
            let h = headers(&[v]);
            assert!(
                matches!(extract(&h), Err(GatewayError::OtherScheme)),
                "{v:?}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_invalid_requests() {
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        for v in [
            "",
            " Bearer abc",
            "Bas/ic abc",
            "Bearer=abc",
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Bearer \tabc",
            "Bearer\tabc",
            "Bearer a b",
            "Bearer a,b",
            "Bearer ===",
            "Bearer a=b",
            long.as_str(),
        ] {
            let h = headers(&[v]);
            assert!(
                matches!(extract(&h), Err(GatewayError::InvalidRequest(_))),
                "{v:?}"
            );
        }
        let two = headers(&["Bearer a", "Basic b"]);
        assert!(matches!(
            extract(&two),
            Err(GatewayError::InvalidRequest(_))
        ));
    }
}
