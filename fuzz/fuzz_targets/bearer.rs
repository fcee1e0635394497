//! `auth::bearer::parse` on arbitrary bytes: never panics, and accepts exactly
//! `Bearer 1*SP b64token` (RFC 6750 2.1, scheme case-insensitive),
//! checked against an independent reference; a refusal is `OtherScheme`
//! exactly when the scheme is another RFC 9110 token (RFC 6750 3.1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::auth::bearer::{parse, MAX_TOKEN_LEN};
use scopegate::error::GatewayError;

/// Reference for refusals: the scheme (up to the first space or tab) is a
/// token other than `bearer`.
fn other_scheme(value: &[u8]) -> bool {
    let end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let scheme = &value[..end];
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !scheme.is_empty() && !scheme.eq_ignore_ascii_case(b"bearer") && scheme.iter().all(tchar)
}

/// Reference: a two-state scan (token characters, then only `=`).
fn reference(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    let spaces = token.iter().take_while(|&&b| b == b' ').count();
    let token = &token[spaces..];
    if !scheme.eq_ignore_ascii_case(b"Bearer ") || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut body = 0usize;
    let mut padding = false;
    for &b in token {
        let token_char = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        match (padding, token_char, b == b'=') {
            (false, true, _) => body += 1,
            (_, _, true) => padding = true,
            _ => return None,
        }
    }
    (body > 0).then_some(token)
}

fuzz_target!(|data: &[u8]| {
    let got = parse(data);
    match (got, reference(data)) {
        (Ok(token), Some(expected)) => assert_eq!(token.as_bytes(), expected),
        (Err(e), None) => assert_eq!(
            matches!(e, GatewayError::OtherScheme),
            other_scheme(data),
            "parse {data:?}: {e:?}"
        ),
        (got, expected) => panic!("parse {data:?}: got {got:?}, reference {expected:?}"),
    }
});
