//! `routes::canonicalize` on arbitrary strings: never panics; an accepted path
//! canonicalises to a fixed point with no `//`, no dot segments, no refused
//! escapes and upper-case hex, and is never longer than its input.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use scopegate::routes::canonicalize;

fn check_shape(input: &str, c: &str) {
    assert!(c.starts_with('/'), "{input:?} -> {c:?}");
    assert!(!c.contains("//"), "{input:?} -> {c:?}");
    for segment in c.split('/') {
        assert!(segment != "." && segment != "..", "{input:?} -> {c:?}");
    }
    assert!(c.len() <= input.len(), "{input:?} -> {c:?} grew");
    let bytes = c.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        assert!(
            (0x20..0x7F).contains(&b) && b != b'\\' && b != b'#',
            "{input:?} -> {c:?}"
        );
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).expect("truncated escape in output");
            assert!(
                hex.iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "{input:?} -> {c:?}: escape not upper-case hex"
            );
            let text = std::str::from_utf8(hex).expect("ascii");
            let value = u8::from_str_radix(text, 16).expect("hex");
            assert!(
                !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
                "{input:?} -> {c:?}: unreserved character left encoded"
            );
            assert!(
                value != b'/' && value != b'\\' && value >= 0x20 && value != 0x7F,
                "{input:?} -> {c:?}: refused escape in output"
            );
        }
    }
}

fuzz_target!(|input: &str| {
    let Ok(c) = canonicalize(input) else {
        return;
    };
    check_shape(input, &c);
    match canonicalize(&c) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, c.as_ref(), "{input:?}"),
        other => panic!("{input:?} -> {c:?} -> {other:?}: not a fixed point"),
    }
    // Borrowed exactly when nothing changed.
    assert_eq!(matches!(c, Cow::Borrowed(_)), c == input, "{input:?}");
});
