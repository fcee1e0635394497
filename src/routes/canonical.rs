//! Request-path canonicalisation.
//!
//! The gateway authorises and forwards the *canonical* form of the request
//! path, so that two spellings of the same resource (`/a/./b`, `/a//b`,
//! `/a/%62`) can never be routed or scoped differently, and so that
//! spellings that backends disagree about (`%2F`, `\`, `%00`) are refused
//! outright instead of being interpreted.

use std::borrow::Cow;

/// Why a request path was refused by [`canonicalize`].
///
/// Every variant is a client error; [`PathError::reason`] gives a stable
/// label for logs and metrics and `Display` a short description that is safe
/// to send back (it never echoes the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty, `*`, or does not start with `/`.
    #[error("path must be absolute (start with '/')")]
    NotAbsolute,
    /// The path contains `#`, i.e. a fragment leaked into the request target.
    #[error("path must not contain a fragment ('#')")]
    Fragment,
    /// The path contains a control character, raw or percent-encoded.
    #[error("path contains a control character")]
    ControlChar,
    /// The path contains a raw non-ASCII byte.
    #[error("path contains a non-ASCII character")]
    NonAscii,
    /// A `%` is not followed by two hexadecimal digits.
    #[error("path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
    /// The path contains `%2F`, which backends disagree on splitting.
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    /// The path contains `%5C`, which some backends treat as a separator.
    #[error("path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    /// The path contains `%00`, which can truncate strings in backends.
    #[error("path contains an encoded NUL byte (%00)")]
    EncodedNul,
    /// The path contains a raw `\`, which some backends treat as `/`.
    #[error("path contains a backslash")]
    Backslash,
    /// A segment is `.` or `..` with parameters (`..;x`), which Tomcat and
    /// Jetty resolve as a dot segment after dropping the parameters.
    #[error("path contains a dot segment with parameters (..;)")]
    DotSegmentParameters,
    /// Read with its `;` parameters dropped or its `%3A`-style escapes
    /// decoded, as some servers do, the path is another route's than as
    /// received, as others do ([`super::RouteTable::route`]).
    #[error("path is another route's depending on how a server reads ';' or escapes like %3A")]
    AmbiguousRoute,
}

impl PathError {
    /// Short, stable `snake_case` label for log fields and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::Fragment => "fragment",
            PathError::ControlChar => "control_char",
            PathError::NonAscii => "non_ascii",
            PathError::InvalidPercentEncoding => "invalid_percent_encoding",
            PathError::EncodedSlash => "encoded_slash",
            PathError::EncodedBackslash => "encoded_backslash",
            PathError::EncodedNul => "encoded_nul",
            PathError::Backslash => "backslash",
            PathError::DotSegmentParameters => "dot_segment_parameters",
            PathError::AmbiguousRoute => "ambiguous_route",
        }
    }

    /// Precedence when a path has several problems (lower wins), following
    /// the order in which the rules are documented on [`canonicalize`].
    fn rank(self) -> u8 {
        match self {
            PathError::NotAbsolute => 0,
            PathError::Fragment => 1,
            PathError::ControlChar => 2,
            PathError::NonAscii => 3,
            PathError::InvalidPercentEncoding
            | PathError::EncodedSlash
            | PathError::EncodedBackslash
            | PathError::EncodedNul => 4,
            PathError::Backslash => 5,
            PathError::DotSegmentParameters => 6,
            PathError::AmbiguousRoute => 7,
        }
    }
}

/// Returns the canonical form of a request path, or why it is refused.
///
/// `path` is the path component of the request target (no query). Rules:
///
/// 1. it must start with `/` ([`PathError::NotAbsolute`]);
/// 2. `#` is refused ([`PathError::Fragment`]), as are raw control bytes
///    ([`PathError::ControlChar`]) and raw non-ASCII bytes
///    ([`PathError::NonAscii`]);
/// 3. every `%` must start a `%XX` escape; `%2F`, `%5C`, `%00` and other
///    encoded control characters are refused; escapes of unreserved
///    characters (`A-Z a-z 0-9 - . _ ~`) are decoded, all other escapes are
///    kept with upper-case hex digits (the first bad escape wins);
/// 4. a raw `\` is refused ([`PathError::Backslash`]);
/// 5. a segment that is `.` or `..` (raw or `%2E`) before a `;` is refused
///    ([`PathError::DotSegmentParameters`]): servers that drop path
///    parameters first would resolve it, beyond the route it matched here;
/// 6. runs of `/` are merged, then dot segments are removed as in
///    RFC 3986 §5.2.4 (a final `.` or `..` segment leaves a trailing `/`).
///
/// Case, `;` and a trailing `/` are preserved. The result starts with `/`,
/// contains no `//` and no `.`/`..` segment, and canonicalising it again
/// returns it unchanged. A path that is already canonical is returned as
/// [`Cow::Borrowed`] without allocating.
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }

    let mut error: Option<PathError> = None;
    let mut note = |e: PathError| match error {
        Some(old) if old.rank() <= e.rank() => {}
        _ => error = Some(e),
    };
    let mut rewrite = false;
    // Start of the current segment (just after its leading '/').
    let mut seg_start = 1;
    let mut i = 1;
    while i <= bytes.len() {
        let Some(&b) = bytes.get(i) else {
            // End of input: close the last segment (empty = trailing slash).
            let seg = bytes.get(seg_start..i);
            rewrite |= is_raw_dot_segment(seg);
            if is_dot_segment_with_parameters(seg) {
                note(PathError::DotSegmentParameters);
            }
            break;
        };
        match b {
            b'/' => {
                let seg = bytes.get(seg_start..i);
                rewrite |= seg.is_some_and(<[u8]>::is_empty) || is_raw_dot_segment(seg);
                if is_dot_segment_with_parameters(seg) {
                    note(PathError::DotSegmentParameters);
                }
                seg_start = i + 1;
            }
            b'#' => note(PathError::Fragment),
            0x00..=0x1F | 0x7F => note(PathError::ControlChar),
            0x80..=0xFF => note(PathError::NonAscii),
            b'\\' => note(PathError::Backslash),
            b'%' => match escape_at(bytes, i) {
                Some((value, lower)) => {
                    match classify_escape(value) {
                        Escape::Refused(e) => note(e),
                        Escape::Decode => rewrite = true,
                        Escape::Keep => rewrite |= lower,
                    }
                    i += 2;
                }
                None => note(PathError::InvalidPercentEncoding),
            },
            _ => {}
        }
        i += 1;
    }

    if let Some(e) = error {
        return Err(e);
    }
    if !rewrite {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(rebuild(path)))
}

/// Whether a path has a segment that readers resolve by rules of their
/// own: an empty one (`//` inside it, which RFC 3986 keeps as a segment,
/// so that `/a//../b` is `/a/b` to it, while servers that merge slashes
/// first read `/b`) or a dot segment, raw or `%2E`. A path forwarded as
/// received, not canonical (WebDAV's `Destination`), must have none, so
/// that every reader takes it as the path checked.
pub fn has_segments_to_resolve(path: &str) -> bool {
    let inner = path.strip_prefix('/').unwrap_or(path);
    let mut segments = inner.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || is_dot_segment(segment.as_bytes()) {
            return true;
        }
    }
    false
}

/// Whether `path` is its own canonical form: a path the config names must
/// be, since requests are matched (and served) canonical.
pub fn is_canonical(path: &str) -> bool {
    canonicalize(path).is_ok_and(|c| c == path)
}

/// A canonical path as servers that normalise before routing read it:
/// each segment without its `;` parameters (Tomcat and Jetty drop them, so
/// `/admin;x/users` is their `/admin/users`), and the escapes of the
/// sub-delimiters, `:` and `@` decoded (Go and Spring decode them, so
/// `/v1/docs%3Apurge` is their `/v1/docs:purge`), as are those of
/// `[ ] ^ | " { }`, which also arrive raw; `%3B`, `%25`, `%3F`, `%23`, `%20`
/// and the rest, which have one spelling in a request, stay encoded. Route patterns must be in this form,
/// and [`super::RouteTable::route`] requires it and the path as received to
/// lead to the same route. Borrowed, without allocating, when there is
/// nothing to change.
pub fn route_form(canonical: &str) -> Cow<'_, str> {
    let bytes = canonical.as_bytes();
    let changes = bytes.iter().enumerate().any(|(i, &b)| {
        b == b';' || (b == b'%' && escape_at(bytes, i).is_some_and(|(v, _)| is_routed_decoded(v)))
    });
    if !changes {
        return Cow::Borrowed(canonical);
    }
    let mut out = String::with_capacity(canonical.len());
    let mut segments = canonical.get(1..).unwrap_or_default().split('/').peekable();
    while let Some(segment) = segments.next() {
        let segment = segment.split(';').next().unwrap_or_default();
        if segment.is_empty() {
            // Only the last empty segment counts: the trailing slash.
            if segments.peek().is_none() {
                out.push('/');
            }
            continue;
        }
        out.push('/');
        let mut rest = segment;
        while let Some(at) = rest.find('%') {
            out.push_str(rest.get(..at).unwrap_or_default());
            match escape_at(rest.as_bytes(), at) {
                Some((value, _)) if is_routed_decoded(value) => {
                    out.push(char::from(value));
                }
                _ => out.push_str(rest.get(at..at + 3).unwrap_or("%")),
            }
            rest = rest.get(at + 3..).unwrap_or_default();
        }
        out.push_str(rest);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// How routing treats case and a trailing slash, set to match the
/// upstream's own router: where it takes `/ADMIN` or `/admin/` for
/// `/admin`, so must scopegate, or a broader route (a public catch-all)
/// would let them past `/admin`'s scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchRules {
    /// Route `/ADMIN` as `/admin` (Express, ASP.NET Core).
    pub case_insensitive: bool,
    /// Route `/admin/` as `/admin` (Express, ASP.NET Core, Spring 5).
    pub ignore_trailing_slash: bool,
}

/// [`route_form`] under `rules`: letters outside escapes lower-cased when
/// routing ignores case, a trailing slash (but the root's) dropped when it
/// ignores that. Borrowed, without allocating, when nothing changes.
pub fn route_form_with(canonical: &str, rules: MatchRules) -> Cow<'_, str> {
    fold(route_form(canonical), rules)
}

/// `path` with only `rules` applied: letters outside escapes lower-cased
/// when case is ignored, a trailing slash (but the root's) dropped when that
/// is. Borrowed as given when nothing changes.
pub fn fold(path: Cow<'_, str>, rules: MatchRules) -> Cow<'_, str> {
    let mut path = path;
    if rules.case_insensitive && has_upper_case_outside_escapes(&path) {
        path = Cow::Owned(lower_case_outside_escapes(&path));
    }
    if rules.ignore_trailing_slash && path.len() > 1 && path.ends_with('/') {
        path = match path {
            Cow::Borrowed(s) => Cow::Borrowed(s.get(..s.len() - 1).unwrap_or(s)),
            Cow::Owned(mut s) => {
                s.pop();
                Cow::Owned(s)
            }
        };
    }
    path
}

/// The characters whose Unicode case mappings hold an ASCII letter, as
/// their UTF-8 in canonical escapes: the Kelvin sign is `k` to Java's
/// `toLowerCase`, `ſ` and `ı` are `S` and `I` to its `toUpperCase` and
/// `equalsIgnoreCase`, `ß` and the `ﬁ` ligatures are `ss` and `fi` to full
/// case folding. (Python's `str.lower`, `upper` and `casefold` over every
/// code point find these twenty and no others.)
const FOLDING_INTO_ASCII: [&str; 20] = [
    "%C3%9F",
    "%C4%B0",
    "%C4%B1",
    "%C5%89",
    "%C5%BF",
    "%C7%B0",
    "%E1%BA%96",
    "%E1%BA%97",
    "%E1%BA%98",
    "%E1%BA%99",
    "%E1%BA%9A",
    "%E1%BA%9E",
    "%E2%84%AA",
    "%EF%AC%80",
    "%EF%AC%81",
    "%EF%AC%82",
    "%EF%AC%83",
    "%EF%AC%84",
    "%EF%AC%85",
    "%EF%AC%86",
];

/// Whether a canonical path holds a character that a server folding case
/// by Unicode reads as ASCII letters ([`FOLDING_INTO_ASCII`]): Spring with
/// case-insensitive matching routes `/%E2%84%AAube` as `/kube`, where
/// folding ASCII alone, as scopegate does, leaves it another path (and
/// a public catch-all's).
pub fn has_case_folding_into_ascii(path: &str) -> bool {
    path.contains('%') && FOLDING_INTO_ASCII.iter().any(|c| path.contains(c))
}

/// Whether a letter outside a `%XX` escape is upper case.
fn has_upper_case_outside_escapes(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => i += 3,
            b'A'..=b'Z' => return true,
            _ => i += 1,
        }
    }
    false
}

/// `path` with letters outside `%XX` escapes lower-cased (escapes keep
/// their upper-case hex digits, the canonical spelling).
fn lower_case_outside_escapes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut escape = 0;
    for c in path.chars() {
        if c == '%' {
            escape = 2;
            out.push(c);
        } else if escape > 0 {
            escape -= 1;
            out.push(c);
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The characters [`route_form`] decodes: those that arrive both raw and
/// escaped, which servers that decode before routing (Go, Spring) read as
/// one. These are the RFC 3986 sub-delimiters but `;`, `:` and `@`, which a
/// path segment may hold as they are, and `[ ] ^ | " { }`, which it may not
/// but which clients send raw and the HTTP parser lets through.
fn is_routed_decoded(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b'='
            | b':'
            | b'@'
            | b'['
            | b']'
            | b'^'
            | b'|'
            | b'"'
            | b'{'
            | b'}'
    )
}

/// What to do with a syntactically valid `%XX` escape.
enum Escape {
    /// Refuse the whole path.
    Refused(PathError),
    /// Replace by the literal (unreserved) character.
    Decode,
    /// Keep encoded, with upper-case hex digits.
    Keep,
}

fn classify_escape(value: u8) -> Escape {
    match value {
        b'/' => Escape::Refused(PathError::EncodedSlash),
        b'\\' => Escape::Refused(PathError::EncodedBackslash),
        0x00 => Escape::Refused(PathError::EncodedNul),
        0x01..=0x1F | 0x7F => Escape::Refused(PathError::ControlChar),
        v if is_unreserved(v) => Escape::Decode,
        _ => Escape::Keep,
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Upper-case hex digit for a nibble (`n < 16`).
fn upper_hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// Decodes the escape whose `%` is at `i`: (byte value, uses lower-case hex).
fn escape_at(bytes: &[u8], i: usize) -> Option<(u8, bool)> {
    let hi = *bytes.get(i + 1)?;
    let lo = *bytes.get(i + 2)?;
    let value = hex_value(hi)? << 4 | hex_value(lo)?;
    Some((value, hi.is_ascii_lowercase() || lo.is_ascii_lowercase()))
}

fn is_raw_dot_segment(seg: Option<&[u8]>) -> bool {
    matches!(seg, Some(b".") | Some(b".."))
}

/// Whether a raw segment is `.` or `..` (each dot raw or `%2E`) followed by
/// `;` and parameters.
fn is_dot_segment_with_parameters(seg: Option<&[u8]>) -> bool {
    let Some(seg) = seg else {
        return false;
    };
    let Some(semicolon) = seg.iter().position(|&b| b == b';') else {
        return false;
    };
    is_dot_segment(seg.get(..semicolon).unwrap_or_default())
}

/// Whether a raw segment is `.` or `..`, each dot raw or `%2E`.
fn is_dot_segment(seg: &[u8]) -> bool {
    let mut dots = 0;
    let mut rest = seg;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return false,
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// Builds the canonical form of a path that passed validation.
fn rebuild(path: &str) -> String {
    // `out` holds "/seg1/seg2" without the trailing slash; `starts` records
    // where each pushed segment begins so that ".." can truncate it.
    let mut out = String::with_capacity(path.len());
    let mut starts: Vec<usize> = Vec::new();
    let mut seg = String::new();
    let mut trailing_slash = false;
    let rest = path.get(1..).unwrap_or_default();
    let mut raw_segments = rest.split('/').peekable();
    while let Some(raw) = raw_segments.next() {
        let last = raw_segments.peek().is_none();
        seg.clear();
        decode_segment(raw, &mut seg);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                if let Some(start) = starts.pop() {
                    out.truncate(start);
                }
            }
            s => {
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
            }
        }
        if last {
            trailing_slash = matches!(seg.as_str(), "" | "." | "..");
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Appends `raw` to `out`, decoding unreserved escapes and upper-casing the
/// hex digits of the others. `raw` has already been validated.
fn decode_segment(raw: &str, out: &mut String) {
    let bytes = raw.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while let Some(pos) = bytes
        .get(i..)
        .and_then(|b| b.iter().position(|&c| c == b'%'))
    {
        let at = i + pos;
        out.push_str(raw.get(copied..at).unwrap_or_default());
        match escape_at(bytes, at) {
            Some((value, _)) if is_unreserved(value) => out.push(char::from(value)),
            Some((value, _)) => {
                out.push('%');
                out.push(upper_hex_digit(value >> 4));
                out.push(upper_hex_digit(value & 0x0F));
            }
            // Unreachable after validation; keep the byte rather than panic.
            None => {
                out.push('%');
                copied = at + 1;
                i = at + 1;
                continue;
            }
        }
        copied = at + 3;
        i = at + 3;
    }
    out.push_str(raw.get(copied..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use PathError::*;

    #[test]
    fn route_form_with_rules_folds_case_and_trailing_slash() {
        let both = MatchRules {
            case_insensitive: true,
            ignore_trailing_slash: true,
        };
        let case = MatchRules {
            case_insensitive: true,
            ..MatchRules::default()
        };
        let slash = MatchRules {
            ignore_trailing_slash: true,
            ..MatchRules::default()
        };
        for (canonical, rules, routed) in [
            ("/ADMIN", both, "/admin"),
            ("/Admin/", both, "/admin"),
            ("/", both, "/"),
            ("/a/%C3%A9/B", case, "/a/%C3%A9/b"),
            ("/a/%C3%A9/B/", slash, "/a/%C3%A9/B"),
            ("/Admin;X/Users/", both, "/admin/users"),
            ("/V1/Docs%3APurge", case, "/v1/docs:purge"),
            ("/admin/", MatchRules::default(), "/admin/"),
            ("/Admin", MatchRules::default(), "/Admin"),
        ] {
            assert_eq!(
                route_form_with(canonical, rules),
                routed,
                "{canonical} {rules:?}"
            );
            assert_eq!(route_form_with(routed, rules), routed, "{routed} {rules:?}");
        }
        assert!(matches!(
            route_form_with("/admin/", slash),
            Cow::Borrowed(_)
        ));
        assert!(matches!(route_form_with("/admin", both), Cow::Borrowed(_)));
    }

    #[test]
    fn route_form_drops_parameters_and_decodes_reserved_escapes() {
        for (canonical, routed) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/", "/a/"),
            ("/admin;jsessionid=1/users", "/admin/users"),
            ("/admin;x", "/admin"),
            ("/a/;x", "/a/"),
            ("/;x/b", "/b"),
            ("/;x", "/"),
            ("/a;x;y=1/b;z/", "/a/b/"),
            ("/v1/docs%3Apurge", "/v1/docs:purge"),
            (
                "/u/%40me/%21%24%26%27%28%29%2A%2B%2C%3D",
                "/u/@me/!$&'()*+,=",
            ),
            ("/a%3Bb/c", "/a%3Bb/c"),
            ("/a%25b%3F%23%20c", "/a%25b%3F%23%20c"),
            ("/a%3A;b%3A", "/a:"),
            ("/s/a%5Bb%5D%5E%7C%22%7B%7D", "/s/a[b]^|\"{}"),
            ("/s/a[b]^|\"{}", "/s/a[b]^|\"{}"),
            ("/a%3C%3E%60", "/a%3C%3E%60"),
        ] {
            assert_eq!(route_form(canonical), routed, "{canonical}");
            // Routed forms are fixed points.
            assert_eq!(route_form(routed), routed, "{routed}");
        }
        assert!(matches!(route_form("/orders/42"), Cow::Borrowed(_)));
        assert!(matches!(route_form("/a%20b"), Cow::Borrowed(_)));
    }

    /// Where `route_form` changes a path (drops parameters, decodes `%3A`),
    /// the escapes it does not decode must come through whole: a mangled one
    /// (`/admin/abc%` for `/admin;x/abc%25`) is a path no server reads, and
    /// could agree with the path as received on a route Tomcat's reading
    /// (`/admin/abc%25`) does not take.
    #[test]
    fn route_form_keeps_other_escapes_whole_where_it_changes_the_path() {
        for (canonical, routed) in [
            ("/admin;x/%25", "/admin/%25"),
            ("/admin;x/%25b%3F", "/admin/%25b%3F"),
            ("/admin;x/abc%25", "/admin/abc%25"),
            ("/a;x/b%20c%C3%A9", "/a/b%20c%C3%A9"),
            ("/v1/docs%3Apurge%20now", "/v1/docs:purge%20now"),
            ("/a%3B%3A%23", "/a%3B:%23"),
        ] {
            assert_eq!(route_form(canonical), routed, "{canonical}");
            assert_eq!(route_form(routed), routed, "{routed}");
        }
    }

    /// An upstream that ignores case reads every letter outside an escape
    /// folded, the ones right after an escape too: `/my%20Docs` is its
    /// `/my%20docs`, and left unfolded here it would miss that route for a
    /// broader one.
    #[test]
    fn route_form_with_ignored_case_folds_letters_after_escapes() {
        let case = MatchRules {
            case_insensitive: true,
            ..MatchRules::default()
        };
        for (canonical, routed) in [
            ("/my%20Docs", "/my%20docs"),
            ("/%C3%A9B", "/%C3%A9b"),
            ("/%C3%A9/%20X/Y%25Z", "/%C3%A9/%20x/y%25z"),
        ] {
            assert_eq!(route_form_with(canonical, case), routed, "{canonical}");
            assert_eq!(route_form_with(routed, case), routed, "{routed}");
        }
    }

    /// Capitals inside escapes are hex digits, which folding keeps: a path
    /// with no others is passed on as it is, not copied.
    #[test]
    fn folding_case_borrows_a_path_whose_only_capitals_are_hex_digits() {
        let case = MatchRules {
            case_insensitive: true,
            ..MatchRules::default()
        };
        for path in ["/a/%C3%A9", "/%3C%3E", "/caf%C3%A9/x%2A"] {
            assert!(
                matches!(fold(Cow::Borrowed(path), case), Cow::Borrowed(p) if p == path),
                "{path}"
            );
        }
    }

    /// Characters whose case folding is ASCII (the Kelvin sign, `ß`, `ﬁ`,
    /// the dotless i) are found in their escapes, and nothing else is.
    #[test]
    fn case_folding_into_ascii_is_found_only_in_its_escapes() {
        for path in ["/%E2%84%AAube", "/a/%C3%9F", "/x%EF%AC%81le", "/%C4%B1d/"] {
            assert!(has_case_folding_into_ascii(path), "{path}");
        }
        for path in ["/", "/kube", "/a%20b", "/%C3%A9", "/%E2%84%AB", "/a%25"] {
            assert!(!has_case_folding_into_ascii(path), "{path}");
        }
    }

    /// The config's paths must be canonical: one that is not would never be
    /// matched, requests being matched canonical, and its requests would go
    /// to whichever broader route takes the canonical spelling.
    #[test]
    fn is_canonical_only_for_paths_canonicalize_returns_unchanged() {
        for path in ["/", "/admin", "/a/b/", "/a;b/%3A", "/%C3%A9"] {
            assert!(is_canonical(path), "{path}");
        }
        for path in [
            "",
            "admin",
            "/a//b",
            "/a/./b",
            "/a/../admin",
            "/%61dmin",
            "/a/%3a",
            "/a%2Fb",
        ] {
            assert!(!is_canonical(path), "{path}");
        }
    }

    /// (input, expected canonical form or error)
    const CASES: &[(&str, Result<&str, PathError>)] = &[
        // Already canonical.
        ("/", Ok("/")),
        ("/a", Ok("/a")),
        ("/a/b/c", Ok("/a/b/c")),
        ("/a/", Ok("/a/")),
        ("/admin", Ok("/admin")),
        ("/administrator", Ok("/administrator")),
        ("/Admin", Ok("/Admin")),
        ("/a;b=c/d;e", Ok("/a;b=c/d;e")),
        ("/a/;x/b", Ok("/a/;x/b")),
        ("/a/...;x/b", Ok("/a/...;x/b")),
        ("/a/..b;x/b", Ok("/a/..b;x/b")),
        ("/a/%2e%2e%2e;/b", Ok("/a/...;/b")),
        ("/orders/..;/admin", Err(DotSegmentParameters)),
        ("/orders/..;x=1/admin", Err(DotSegmentParameters)),
        ("/a/.;/b", Err(DotSegmentParameters)),
        ("/a/%2e%2E;/b", Err(DotSegmentParameters)),
        ("/a/.%2e;jsessionid=1", Err(DotSegmentParameters)),
        ("/a/..;", Err(DotSegmentParameters)),
        ("/a/%3A", Ok("/a/%3A")),
        ("/a/%25", Ok("/a/%25")),
        ("/a/...", Ok("/a/...")),
        ("/a/.b/c.", Ok("/a/.b/c.")),
        ("/a/..b", Ok("/a/..b")),
        ("/~user/a-b_c.d", Ok("/~user/a-b_c.d")),
        ("/a+b/c=d", Ok("/a+b/c=d")),
        // Slash merging.
        ("//", Ok("/")),
        ("///", Ok("/")),
        ("//a///b", Ok("/a/b")),
        ("/a//", Ok("/a/")),
        ("//admin", Ok("/admin")),
        // Dot segments.
        ("/.", Ok("/")),
        ("/./", Ok("/")),
        ("/..", Ok("/")),
        ("/../", Ok("/")),
        ("/../..", Ok("/")),
        ("/a/..", Ok("/")),
        ("/a/../", Ok("/")),
        ("/a/./b/../c", Ok("/a/c")),
        ("/a/b/..", Ok("/a/")),
        ("/a/b/.", Ok("/a/b/")),
        ("/a/b/../../../c", Ok("/c")),
        ("/a//../b", Ok("/b")),
        ("/../admin", Ok("/admin")),
        ("/public/../admin", Ok("/admin")),
        // Percent-encoded dots and unreserved characters.
        ("/%2e%2e", Ok("/")),
        ("/a/%2e%2e/b", Ok("/b")),
        ("/a/b/%2E%2e/", Ok("/a/")),
        ("/a/%2e/b", Ok("/a/b")),
        ("/a/.%2E/b", Ok("/b")),
        ("/%2e%2e%2e", Ok("/...")),
        ("/%41dmin", Ok("/Admin")),
        ("/%61dmin", Ok("/admin")),
        ("/a%2Db%5Fc%7Ed%30", Ok("/a-b_c~d0")),
        // Other escapes are kept, upper-cased.
        ("/a/%3a", Ok("/a/%3A")),
        ("/a/%c3%a9", Ok("/a/%C3%A9")),
        ("/a%20b", Ok("/a%20b")),
        ("/%2525", Ok("/%2525")),
        ("/%252e%252e", Ok("/%252e%252e")),
        // Refusals.
        ("", Err(NotAbsolute)),
        ("*", Err(NotAbsolute)),
        ("a/b", Err(NotAbsolute)),
        ("%2Fa", Err(NotAbsolute)),
        ("/a#b", Err(Fragment)),
        ("/a\nb", Err(ControlChar)),
        ("/a\tb", Err(ControlChar)),
        ("/a\u{7f}", Err(ControlChar)),
        ("/caf\u{e9}", Err(NonAscii)),
        ("/a%zz", Err(InvalidPercentEncoding)),
        ("/a%4", Err(InvalidPercentEncoding)),
        ("/a%", Err(InvalidPercentEncoding)),
        ("/a%%41", Err(InvalidPercentEncoding)),
        ("/a%2fb", Err(EncodedSlash)),
        ("/a%2Fb", Err(EncodedSlash)),
        ("/..%2f..%2fetc", Err(EncodedSlash)),
        ("/a%5cb", Err(EncodedBackslash)),
        ("/a%5Cb", Err(EncodedBackslash)),
        ("/a%00", Err(EncodedNul)),
        ("/a%0a", Err(ControlChar)),
        ("/a%7F", Err(ControlChar)),
        ("/a%1f", Err(ControlChar)),
        ("/a\\b", Err(Backslash)),
        ("/..\\admin", Err(Backslash)),
        // Precedence between several problems.
        ("/a\\#", Err(Fragment)),
        ("/%2f#", Err(Fragment)),
        ("/\\%2f", Err(EncodedSlash)),
        ("/%zz%2f", Err(InvalidPercentEncoding)),
        ("/%2f%zz", Err(EncodedSlash)),
        ("/\u{e9}\n", Err(ControlChar)),
    ];

    #[test]
    fn table() {
        assert!(CASES.len() >= 40);
        for (input, expected) in CASES {
            let got = canonicalize(input);
            assert_eq!(got.as_deref(), expected.as_deref(), "input {input:?}");
        }
    }

    /// The bytes of an escape are skipped once it is read, but nothing
    /// more: the escape right after it, and the one after that, are checked
    /// too, or `%2F` behind a decoded `%41` or `%2E` would get through.
    #[test]
    fn escapes_right_after_other_escapes_are_still_refused() {
        for (input, expected) in [
            ("/abc%41%2Fadmin", EncodedSlash),
            ("/orders/%2E%2E%2Fadmin", EncodedSlash),
            ("/orders/%2e%2e%5cadmin", EncodedBackslash),
            ("/abc%41%00", EncodedNul),
        ] {
            assert_eq!(canonicalize(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn segments_to_resolve_are_empty_or_dot_segments() {
        for path in [
            "/",
            "/a",
            "/a/",
            "/a/b.txt",
            "/a/...",
            "/a/.b",
            "/a%2Fb",
            "/a/%2e%2ex",
        ] {
            assert!(!has_segments_to_resolve(path), "{path}");
        }
        for path in [
            "//a",
            "/a//b",
            "/a//",
            "/a/./b",
            "/a/../b",
            "/a/..",
            "/a/.",
            "/a/%2e%2E/b",
            "/a/%2E",
            "/a/.%2e/",
        ] {
            assert!(has_segments_to_resolve(path), "{path}");
        }
    }

    #[test]
    fn borrowed_exactly_when_unchanged() {
        for (input, expected) in CASES {
            if let Ok(c) = canonicalize(input) {
                let unchanged = Ok(*input) == *expected;
                assert_eq!(matches!(c, Cow::Borrowed(_)), unchanged, "input {input:?}");
            }
        }
    }

    #[test]
    fn canonical_output_is_fixed_point() {
        for (input, _) in CASES {
            if let Ok(c) = canonicalize(input) {
                let again = canonicalize(&c);
                assert!(
                    matches!(again, Ok(Cow::Borrowed(s)) if s == c),
                    "input {input:?}"
                );
            }
        }
    }

    #[test]
    fn reasons_are_distinct_snake_case() {
        let all = [
            NotAbsolute,
            Fragment,
            ControlChar,
            NonAscii,
            InvalidPercentEncoding,
            EncodedSlash,
            EncodedBackslash,
            EncodedNul,
            Backslash,
            DotSegmentParameters,
            AmbiguousRoute,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            let r = e.reason();
            assert!(r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(seen.insert(r));
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(EncodedSlash.reason(), "encoded_slash");
    }

    fn assert_canonical_shape(c: &str) {
        assert!(c.starts_with('/'), "{c:?}");
        assert!(!c.contains("//"), "{c:?}");
        assert!(!c.contains("/./"), "{c:?}");
        assert!(!c.contains("/../"), "{c:?}");
        assert!(!c.ends_with("/."), "{c:?}");
        assert!(!c.ends_with("/.."), "{c:?}");
    }

    /// Paths built from the characters that matter to canonicalisation.
    fn interesting_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%41".to_string()),
            Just("%3a".to_string()),
            Just("%25".to_string()),
            Just("%".to_string()),
            Just(";".to_string()),
            "[a-zA-Z0-9._~-]{1,3}",
            "%[0-9a-fA-F]{2}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = canonicalize(&s);
        }

        #[test]
        fn never_panics_on_slash_prefixed(s in "/[\\x00-\\x7f]{0,40}") {
            let _ = canonicalize(&s);
        }

        #[test]
        fn idempotent_and_well_formed(p in interesting_path()) {
            if let Ok(c) = canonicalize(&p) {
                assert_canonical_shape(&c);
                let again = canonicalize(&c);
                prop_assert_eq!(again.as_deref(), Ok(c.as_ref()));
                prop_assert!(matches!(again, Ok(Cow::Borrowed(_))));
            }
        }

        #[test]
        fn idempotent_on_arbitrary_ascii(p in "/[ -~]{0,40}") {
            if let Ok(c) = canonicalize(&p) {
                assert_canonical_shape(&c);
                let again = canonicalize(&c);
                prop_assert_eq!(again.as_deref(), Ok(c.as_ref()));
            }
        }

        /// Percent-encoding any non-'/' characters never changes the result
        /// (but for a `;` after a dot segment).
        #[test]
        fn encoding_is_transparent(p in "(/[a-zA-Z0-9._~:@!$&'()*+,;=-]{0,6}){1,6}/?") {
            let encoded: String = p
                .split('/')
                .map(|seg| {
                    percent_encoding::utf8_percent_encode(seg, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("/");
            let plain = canonicalize(&p).map(Cow::into_owned);
            // A raw `;` starts parameters, `%3B` does not: `.;` is refused
            // where `.%3B` is an ordinary segment.
            prop_assume!(plain != Err(DotSegmentParameters));
            let via_escapes = canonicalize(&encoded).map(Cow::into_owned);
            // Reserved characters stay encoded, so compare after encoding
            // those in the plain form too.
            let plain = plain.map(|c| {
                c.split('/')
                    .map(|seg| {
                        percent_encoding::utf8_percent_encode(seg, RESERVED_SUBSET).to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            });
            prop_assert_eq!(plain, via_escapes);
        }
    }

    /// Every printable ASCII character that is not unreserved.
    const RESERVED_SUBSET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
}
