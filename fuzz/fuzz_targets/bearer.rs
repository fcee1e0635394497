//! `auth::bearer::parse` on arbitrary bytes: never panics, and accepts exactly
//! `Bearer SP b64token` (RFC 6750 2.1, scheme case-insensitive, one space),
//! checked against an independent reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::auth::bearer::{parse, MAX_TOKEN_LEN};

/// Reference: a two-state scan (token characters, then only `=`).
fn reference(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
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
        (Err(_), None) => {}
        (got, expected) => panic!("parse {data:?}: got {got:?}, reference {expected:?}"),
    }
});
