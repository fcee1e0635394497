//! A reference for the members that JWT access tokens (RFC 7519, RFC 9068)
//! and introspection answers (RFC 7662) share, for the campaigns that
//! generate both: time members (NumericDate), `aud`, `scope` (RFC 6749 3.3),
//! the identity header values the gateway derives from them, and the scope
//! rules of the standard test routes. Generators pick a right value mostly
//! and a wrong one now and then, so that most cases have at most one fault.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::AUDIENCE;

/// The leeway the test gateways allow on time members.
pub const LEEWAY: i64 = 30;

/// A time member: seconds from now, a fraction, or a wrong type.
#[derive(Debug, Clone, Copy)]
pub enum Time {
    Missing,
    /// `now + offset`, an integer.
    At(i64),
    /// `now + offset + 0.5`.
    Fraction(i64),
    /// `now + offset` as a string.
    Text(i64),
    Negative,
    /// 1e300: valid for ever.
    Huge,
    Null,
    Bool,
}

impl Time {
    /// The member's JSON value at `now`, `None` when missing.
    pub fn render(self, now: i64) -> Option<Value> {
        Some(match self {
            Time::Missing => return None,
            Time::At(offset) => json!(now + offset),
            Time::Fraction(offset) => json!(now as f64 + offset as f64 + 0.5),
            Time::Text(offset) => json!((now + offset).to_string()),
            Time::Negative => json!(-5),
            Time::Huge => json!(1e300),
            Time::Null => Value::Null,
            Time::Bool => json!(true),
        })
    }
}

/// A time member at one of the `good` offsets from now (or missing, a
/// fraction, far ahead) mostly, and now and then a `bad` offset or a value
/// of the wrong type. `missing` weighs a missing member (out of about 60).
pub fn time(good: &[i64], bad: &[i64], missing: u32) -> impl Strategy<Value = Time> {
    prop_oneof![
        missing => Just(Time::Missing),
        32 => prop::sample::select(good.to_vec()).prop_map(Time::At),
        4 => prop::sample::select(good.to_vec()).prop_map(Time::Fraction),
        4 => Just(Time::Huge),
        1 => prop::sample::select(bad.to_vec()).prop_map(Time::At),
        1 => prop::sample::select(vec![Time::Negative, Time::Null, Time::Bool]),
        1 => prop::sample::select(good.to_vec()).prop_map(Time::Text),
    ]
}

/// One of `good` mostly, one of `bad` now and then.
pub fn pick(good: Vec<Option<Value>>, bad: Vec<Option<Value>>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        20 => prop::sample::select(good),
        1 => prop::sample::select(bad),
    ]
    .boxed()
}

/// `aud`: ours (alone or in a list) or missing mostly; now and then another
/// audience, an empty list, a list with a non-string, or another type.
/// `required` moves a missing `aud` to the wrong ones.
pub fn audience(required: bool) -> BoxedStrategy<Option<Value>> {
    let mut good = vec![
        Some(json!(AUDIENCE)),
        Some(json!(["another-api", AUDIENCE])),
    ];
    let mut bad = vec![
        Some(json!("another-api")),
        Some(json!(["another-api"])),
        Some(json!([AUDIENCE, 5])),
        Some(json!([])),
        Some(json!(5)),
        Some(Value::Null),
    ];
    if required {
        bad.push(None);
    } else {
        good.push(None);
    }
    pick(good, bad)
}

/// `scope`: values that satisfy some of the standard routes, then odd but
/// well-typed ones (which satisfy none), then ones of the wrong type.
pub fn scope() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        12 => prop::sample::select(vec![
            Some(json!("orders:read")),
            Some(json!("orders:read orders:write")),
            Some(json!("  orders:admin   admin ")),
            Some(json!("orders:read orders:write admin")),
        ]),
        3 => prop::sample::select(vec![
            None,
            Some(json!("")),
            Some(json!("orders:readx ORDERS:READ orders")),
            Some(json!("orders:read\torders:write")),
            Some(json!("orders:read x\tadmin")),
            Some(json!("orders:read orders:\u{e9}crire")),
            Some(json!("orders:read \"admin\"")),
        ]),
        1 => prop::sample::select(vec![Some(json!(["orders:read"])), Some(json!(7))]),
    ]
}

/// `scp` (the claim Azure AD and Okta put scopes in): lists of scope
/// tokens, or a space-separated string, mostly; then a list with a token
/// holding a space or a tab, or a non-string, and other types.
pub fn scp() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        12 => prop::sample::select(vec![
            Some(json!(["orders:read"])),
            Some(json!(["orders:read", "orders:write"])),
            Some(json!(["orders:admin", "admin"])),
            Some(json!(["orders:read", "", "admin"])),
            Some(json!("orders:read admin")),
        ]),
        3 => prop::sample::select(vec![
            Some(json!([])),
            Some(json!(["orders:read admin"])),
            Some(json!(["orders:read", "x\tadmin"])),
            Some(json!(["orders:read", 7])),
            Some(json!([["admin"]])),
            Some(json!(7)),
            Some(json!({ "admin": true })),
            Some(Value::Null),
        ]),
    ]
}

/// Where the scopes go: `scope` alone mostly, `scp` alone, both, or neither.
fn scope_members() -> impl Strategy<Value = (Option<Value>, Option<Value>)> {
    prop_oneof![
        8 => scope().prop_map(|scope| (scope, None)),
        4 => scp().prop_map(|scp| (None, scp)),
        2 => (scope(), scp()),
        1 => Just((None, None)),
    ]
}

/// `cnf` (RFC 7800): mostly missing; now and then a DPoP key thumbprint
/// (RFC 9449), a certificate thumbprint (RFC 8705), or an empty or null one.
/// A bearer token proves no such binding, so any `cnf` refuses it.
pub fn confirmation() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        30 => Just(None),
        1 => prop::sample::select(vec![
            Some(json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiGuA4I" })),
            Some(json!({ "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2" })),
            Some(json!({})),
            Some(Value::Null),
        ]),
    ]
}

/// A member that becomes an identity header (`sub`, `client_id`): text,
/// other JSON types, and text a header cannot carry.
pub fn identity_member() -> impl Strategy<Value = Option<Value>> {
    prop::sample::select(vec![
        None,
        Some(json!("bob")),
        Some(json!("bob")),
        Some(json!("")),
        Some(json!(42)),
        Some(json!(1.5)),
        Some(json!(false)),
        Some(json!(["a", "b"])),
        Some(json!(["billing admin"])),
        Some(json!(["a", ""])),
        Some(json!(" bob")),
        Some(json!("bob\t")),
        Some(json!(["a", 1])),
        Some(json!({ "name": "bob" })),
        Some(Value::Null),
        Some(json!("bo\u{1}b")),
        Some(json!("bob\r\nx-auth-subject: admin")),
    ])
}

/// `depth` arrays, one inside the other.
pub fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(0), |inner, _| json!([inner]))
}

/// A member nobody defined, which must be ignored.
pub fn unknown_member() -> impl Strategy<Value = Option<Value>> {
    prop::sample::select(vec![
        None,
        Some(json!("ignored")),
        Some(json!({ "nested": [1, {"a": null}], "active": false, "scope": "admin" })),
        Some(nested(50)),
    ])
}

/// The members JWT access tokens and introspection answers share beyond
/// `iss` and `aud`, each `None` (or [`Time::Missing`]) when missing.
#[derive(Debug, Clone)]
pub struct CommonMembers {
    pub exp: Time,
    pub nbf: Time,
    pub iat: Time,
    pub scope: Option<Value>,
    pub scp: Option<Value>,
    pub cnf: Option<Value>,
    pub sub: Option<Value>,
    pub client_id: Option<Value>,
    /// A member nobody defined, which must be ignored.
    pub extra: Option<Value>,
}

impl CommonMembers {
    /// Generated members; `exp_missing` weighs a missing `exp` (out of
    /// about 60: small where it is required). No `exp` lies a few seconds
    /// ahead, whose cache entry could end between a token's two uses.
    pub fn generate(exp_missing: u32) -> impl Strategy<Value = CommonMembers> {
        (
            time(&[-10, 600, 3600], &[-3600], exp_missing),
            time(&[-3600, -10, 10], &[3600], 20),
            time(&[-3600, -10, 10], &[3600], 20),
            scope_members(),
            confirmation(),
            identity_member(),
            identity_member(),
            unknown_member(),
        )
            .prop_map(
                |(exp, nbf, iat, (scope, scp), cnf, sub, client_id, extra)| Self {
                    exp,
                    nbf,
                    iat,
                    scope,
                    scp,
                    cnf,
                    sub,
                    client_id,
                    extra,
                },
            )
    }

    /// Adds the members present to `object`, times at `now`, the unknown
    /// one as `x_extension`.
    pub fn render_into(&self, object: &mut serde_json::Map<String, Value>, now: i64) {
        let members = [
            ("exp", self.exp.render(now)),
            ("nbf", self.nbf.render(now)),
            ("iat", self.iat.render(now)),
            ("scope", self.scope.clone()),
            ("scp", self.scp.clone()),
            ("cnf", self.cnf.clone()),
            ("sub", self.sub.clone()),
            ("client_id", self.client_id.clone()),
            ("x_extension", self.extra.clone()),
        ];
        for (name, value) in members {
            if let Some(value) = value {
                object.insert(name.to_owned(), value);
            }
        }
    }
}

/// A NumericDate as RFC 7519 defines it (any JSON number, fractions
/// dropped); `Err` for another type or a negative one.
pub fn numeric_date(value: Option<&Value>) -> Result<Option<f64>, ()> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 => Ok(Some(f.floor())),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

/// Checks `exp` (when `exp_required`, it must be there), `nbf` and `iat`
/// against `now` with [`LEEWAY`]: the `exp`, if any, or `Err` if refused.
pub fn lifetime(
    object: &serde_json::Map<String, Value>,
    now: i64,
    exp_required: bool,
) -> Result<Option<f64>, ()> {
    let now = now as f64;
    let leeway = LEEWAY as f64;
    let exp = numeric_date(object.get("exp"))?;
    let nbf = numeric_date(object.get("nbf"))?;
    let iat = numeric_date(object.get("iat"))?;
    if exp_required && exp.is_none()
        // Valid before exp (RFC 7519 4.1.4), which counts in whole seconds.
        || exp.is_some_and(|exp| now >= exp.floor() + leeway)
        || nbf.is_some_and(|nbf| nbf > now + leeway)
        || iat.is_some_and(|iat| iat > now + leeway)
    {
        return Err(());
    }
    Ok(exp)
}

/// Whether a present or missing `aud` names our audience (a string, or an
/// array of strings containing it); `required` refuses a missing one.
pub fn audience_ok(value: Option<&Value>, required: bool) -> bool {
    match value {
        None => !required,
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.contains(&json!(AUDIENCE))
        }
        Some(_) => false,
    }
}

/// The scopes a `scope` member grants (RFC 6749 3.3: space-separated
/// tokens of `%x21 / %x23-5B / %x5D-7E`), or `Err` if it is not a string
/// or a token holds any other character (a tab, a quote, non-ASCII).
pub fn scopes(value: Option<&Value>) -> Result<Vec<&str>, ()> {
    let allowed = |c: char| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c);
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => {
            let tokens: Vec<&str> = s.split(' ').filter(|s| !s.is_empty()).collect();
            if tokens.iter().all(|t| t.chars().all(allowed)) {
                Ok(tokens)
            } else {
                Err(())
            }
        }
        Some(_) => Err(()),
    }
}

/// Which member carries a token's scopes (the issuer's `scope_claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeClaim {
    Scope,
    Scp,
}

/// The scopes `object` grants under `claim`, or `Err` when its member is
/// malformed. The other member is ignored. Either may also be a list, each
/// entry one scope token (an empty one counts as none).
pub fn granted(
    object: &serde_json::Map<String, Value>,
    claim: ScopeClaim,
) -> Result<Vec<&str>, ()> {
    let member = match claim {
        ScopeClaim::Scope => object.get("scope"),
        ScopeClaim::Scp => object.get("scp"),
    };
    match member {
        Some(Value::Array(items)) => {
            let mut granted = Vec::new();
            for item in items {
                match item {
                    Value::String(s) if !s.contains(' ') => granted.extend(scopes(Some(item))?),
                    _ => return Err(()),
                }
            }
            Ok(granted)
        }
        member => scopes(member),
    }
}

/// A member as an identity header value: strings as they are, numbers and
/// booleans as JSON writes them, arrays of strings space-separated; nothing
/// for other types, for text a header cannot carry, for text with a blank
/// at either end (a parser would trim it), or for an array element that is
/// empty or holds a blank (it would read as other elements).
pub fn identity(value: Option<&Value>) -> Option<String> {
    let blank = |c: char| c == ' ' || c == '\t';
    let text = match value? {
        Value::String(s) if s.starts_with(blank) || s.ends_with(blank) => return None,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts = items
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()?;
            if parts.iter().any(|p| p.is_empty() || p.contains(blank)) {
                return None;
            }
            parts.join(" ")
        }
        Value::Null | Value::Object(_) => return None,
    };
    text.bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .then_some(text)
}

/// The identity headers a forwarded request must carry (subject, client
/// id, scopes), each absent or exactly one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Option<String>,
}

impl IdentityHeaders {
    /// What the gateway derives from an accepted token's members.
    pub fn of(object: &serde_json::Map<String, Value>, scopes: &[&str]) -> Self {
        Self {
            subject: identity(object.get("sub")),
            client_id: identity(object.get("client_id")),
            scopes: (!scopes.is_empty()).then(|| scopes.join(" ")),
        }
    }

    /// `Err` naming the first header the upstream got otherwise.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), String> {
        for (name, value) in [
            ("x-auth-subject", &self.subject),
            ("x-auth-client-id", &self.client_id),
            ("x-auth-scopes", &self.scopes),
        ] {
            let got: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
            let want: Vec<&[u8]> = value.iter().map(String::as_bytes).collect();
            if got != want {
                return Err(format!("{name}: upstream got {got:?}, want {value:?}"));
            }
        }
        Ok(())
    }
}

/// Identity headers a client sends, which must never reach the upstream.
pub const SPOOFED_IDENTITY: [(&str, &str); 3] = [
    ("x-auth-subject", "spoofed"),
    ("x-auth-client-id", "spoofed"),
    ("x-auth-scopes", "admin"),
];

/// One of the standard test routes (`World::config`, the introspection
/// tests' `gateway_yaml`).
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// `GET /orders/1`: needs `orders:read`.
    Read,
    /// `POST /orders/7`: needs `orders:write` or `orders:admin`.
    Write,
    /// `GET /admin`: needs `admin`.
    Admin,
}

impl Route {
    /// Any of the three.
    pub fn any() -> impl Strategy<Value = Route> {
        prop::sample::select(vec![Route::Read, Route::Write, Route::Admin])
    }

    /// Method and path.
    pub fn request(self) -> (&'static str, &'static str) {
        match self {
            Route::Read => ("GET", "/orders/1"),
            Route::Write => ("POST", "/orders/7"),
            Route::Admin => ("GET", "/admin"),
        }
    }

    /// Whether a token with `scopes` may use it.
    pub fn allows(self, scopes: &[&str]) -> bool {
        match self {
            Route::Read => scopes.contains(&"orders:read"),
            Route::Write => scopes.contains(&"orders:write") || scopes.contains(&"orders:admin"),
            Route::Admin => scopes.contains(&"admin"),
        }
    }
}

/// What one use of a token must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 503 `temporarily_unavailable` with `Retry-After`, no challenge.
    Unavailable,
    /// 400 `invalid_request` (RFC 6750 3.1): not a bearer token at all.
    BadRequest,
    /// 401 `invalid_token` (RFC 6750 3.1).
    Invalid,
    /// 403 `insufficient_scope`.
    InsufficientScope,
    /// 200, the request forwarded once with these identity headers.
    Forwarded(IdentityHeaders),
}

impl Outcome {
    /// `Err` unless `reply` (to `method`) and what the upstream saw
    /// meanwhile (`seen`) are this outcome; nothing but a forwarded request
    /// may reach the upstream.
    pub fn judge(
        &self,
        reply: &super::Reply,
        seen: &[super::Seen],
        method: &str,
    ) -> Result<(), String> {
        let challenge = reply.www_authenticate();
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let bearer = |code: &str| {
            challenge.starts_with("Bearer ") && challenge.contains(&format!("error=\"{code}\""))
        };
        let ok = match self {
            Outcome::Unavailable => {
                reply.status == 503
                    && reply.header("retry-after").is_some()
                    && error == "temporarily_unavailable"
                    && reply.header("www-authenticate").is_none()
            }
            Outcome::BadRequest => {
                reply.status == 400 && bearer("invalid_request") && error == "invalid_request"
            }
            Outcome::Invalid => {
                reply.status == 401 && bearer("invalid_token") && error == "invalid_token"
            }
            Outcome::InsufficientScope => {
                reply.status == 403 && bearer("insufficient_scope") && error == "insufficient_scope"
            }
            Outcome::Forwarded(identity) => {
                let [request] = seen else {
                    return Err(format!("forwarded {} times", seen.len()));
                };
                if reply.status != 200 || request.method != method {
                    return Err(format!("got {} {}", reply.status, reply.text()));
                }
                return identity.check(&request.headers);
            }
        };
        if !ok {
            return Err(format!(
                "got {} {challenge:?} {}",
                reply.status,
                reply.text()
            ));
        }
        if !seen.is_empty() {
            return Err(format!("refused with {}, yet forwarded", reply.status));
        }
        Ok(())
    }
}
