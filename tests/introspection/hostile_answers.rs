//! Generated introspection answers, ordinary and hostile, against a
//! reference of RFC 7662 as the gateway applies it.
//!
//! Each case gives a fresh opaque token an answer from the endpoint: a status,
//! and a body that is an answer object (members `active`, `token_type`,
//! `iss`, `aud`, `exp`, `nbf`, `iat`, `scope`, `sub`, `client_id` each
//! missing, right, wrong, or of the wrong JSON type; unknown members, some
//! nested deep) or something that only looks like one (a duplicate `active`,
//! an array, trailing bytes, a byte order mark, an empty or oversized body).
//! The token is then used twice on one of three routes. The reference says,
//! for both uses:
//! - an answer that is not a 200 with exactly one JSON object is no answer:
//!   503 `temporarily_unavailable` with `Retry-After`, never cached (the
//!   second use asks again);
//! - an answer whose `active` is not the JSON `true`, or whose `token_type`,
//!   `iss`, `aud`, `exp`, `nbf`, `iat` or `scope` is wrong or of the wrong
//!   type, is an inactive token: 401 `invalid_token` (RFC 6750), cached (the
//!   second use does not ask);
//! - an active token without the route's scopes gets 403
//!   `insufficient_scope`; with them the request is forwarded, carrying the
//!   answer's `sub`, `client_id` and scopes as identity headers and never the
//!   client's own;
//! - an active answer is cached until its `exp` and no longer: one whose
//!   `exp` has passed but is within the leeway is accepted and asked again.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 256).

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use serde_json::Map;

/// The gateway's leeway for time members (the default).
const LEEWAY: i64 = 30;
/// Largest answer body the gateway reads.
const MAX_ANSWER: usize = 64 * 1024;
/// What the client claims to be, which must never reach the upstream.
const SPOOFED: &str = "spoofed";

/// A time member: seconds from now, a fraction, or a wrong type.
#[derive(Debug, Clone, Copy)]
enum Time {
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
    fn render(self, now: i64) -> Option<Value> {
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

/// The answer object's members, each `None` when missing.
#[derive(Debug, Clone)]
struct Members {
    active: Option<Value>,
    token_type: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    exp: Time,
    nbf: Time,
    iat: Time,
    scope: Option<Value>,
    sub: Option<Value>,
    client_id: Option<Value>,
    /// An unknown member, which must be ignored.
    extra: Option<Value>,
}

/// How the answer is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// The object, as JSON.
    Object,
    /// The object with trailing whitespace (still one object).
    TrailingSpace,
    /// Padded with an unknown member to just under the size limit.
    Large,
    /// Padded past the size limit.
    Oversized,
    /// `"active":true` added after the object's own members: a duplicate
    /// key when the object has `active`.
    DuplicateActive,
    /// The object inside an array.
    Array,
    /// Bytes after the object.
    TrailingGarbage,
    /// A byte order mark before it.
    ByteOrderMark,
    Empty,
    /// Unknown members nested beyond serde_json's recursion limit.
    TooDeep,
}

/// Where the token is used.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `GET /orders/1`: needs `orders:read`.
    Read,
    /// `POST /orders/7`: needs `orders:write` or `orders:admin`.
    Write,
    /// `GET /admin`: needs `admin`.
    Admin,
}

impl Route {
    fn request(self) -> (&'static str, &'static str) {
        match self {
            Route::Read => ("GET", "/orders/1"),
            Route::Write => ("POST", "/orders/7"),
            Route::Admin => ("GET", "/admin"),
        }
    }

    fn allows(self, scopes: &[&str]) -> bool {
        match self {
            Route::Read => scopes.contains(&"orders:read"),
            Route::Write => scopes.contains(&"orders:write") || scopes.contains(&"orders:admin"),
            Route::Admin => scopes.contains(&"admin"),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    status: u16,
    members: Members,
    body: Body,
    route: Route,
}

/// What one use of the token must get.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Unavailable,
    Inactive,
    /// Refused for its scopes; `cached` as for `Forwarded`.
    InsufficientScope {
        cached: bool,
    },
    /// Forwarded with these identity headers (subject, client id, scopes).
    Forwarded {
        subject: Option<String>,
        client_id: Option<String>,
        scopes: Option<String>,
        /// Whether the answer is cached (its `exp` has not passed).
        cached: bool,
    },
}

/// One of `good` mostly, one of `bad` now and then: most cases then have
/// at most one fault, so every fault is seen alone and every outcome often.
fn pick(good: Vec<Option<Value>>, bad: Vec<Option<Value>>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        20 => prop::sample::select(good),
        1 => prop::sample::select(bad),
    ]
    .boxed()
}

/// A time member at one of the `good` offsets from now (or missing, a
/// fraction, far ahead) mostly, and now and then a `bad` offset or a value
/// of the wrong type.
fn time(good: &[i64], bad: &[i64]) -> impl Strategy<Value = Time> {
    prop_oneof![
        20 => Just(Time::Missing),
        32 => prop::sample::select(good.to_vec()).prop_map(Time::At),
        4 => prop::sample::select(good.to_vec()).prop_map(Time::Fraction),
        4 => Just(Time::Huge),
        1 => prop::sample::select(bad.to_vec()).prop_map(Time::At),
        1 => prop::sample::select(vec![Time::Negative, Time::Null, Time::Bool]),
        1 => prop::sample::select(good.to_vec()).prop_map(Time::Text),
    ]
}

fn members() -> impl Strategy<Value = Members> {
    let active = pick(
        vec![Some(json!(true))],
        vec![
            Some(json!(false)),
            Some(json!("true")),
            Some(json!(1)),
            Some(Value::Null),
            None,
        ],
    );
    let token_type = pick(
        vec![
            None,
            Some(json!("Bearer")),
            Some(json!("bearer")),
            Some(json!("access_token")),
        ],
        vec![
            Some(json!("refresh_token")),
            Some(json!("N_A")),
            Some(json!(1)),
        ],
    );
    let iss = pick(
        vec![None, Some(json!(OPAQUE_ISSUER))],
        vec![
            Some(json!(format!("{OPAQUE_ISSUER}/"))),
            Some(json!(OPAQUE_ISSUER.to_uppercase())),
            Some(json!("https://evil.test")),
            Some(json!([OPAQUE_ISSUER])),
            Some(Value::Null),
        ],
    );
    let aud = pick(
        vec![
            None,
            Some(json!(AUDIENCE)),
            Some(json!(["another-api", AUDIENCE])),
        ],
        vec![
            Some(json!("another-api")),
            Some(json!(["another-api"])),
            Some(json!([AUDIENCE, 5])),
            Some(json!([])),
            Some(json!(5)),
            Some(Value::Null),
        ],
    );
    // Scopes that satisfy some routes, then odd but well-typed ones (which
    // satisfy none), then ones of the wrong type.
    let scope = prop_oneof![
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
        ]),
        1 => prop::sample::select(vec![Some(json!(["orders:read"])), Some(json!(7))]),
    ];
    let identity = || {
        prop::sample::select(vec![
            None,
            Some(json!("bob")),
            Some(json!("bob")),
            Some(json!("")),
            Some(json!(42)),
            Some(json!(1.5)),
            Some(json!(false)),
            Some(json!(["a", "b"])),
            Some(json!(["a", 1])),
            Some(json!({ "name": "bob" })),
            Some(Value::Null),
            Some(json!("bo\u{1}b")),
            Some(json!("bob\r\nx-auth-subject: admin")),
        ])
    };
    let extra = prop::sample::select(vec![
        None,
        Some(json!("ignored")),
        Some(json!({ "nested": [1, {"a": null}], "active": false })),
        Some(nested(50)),
    ]);
    (
        (active, token_type, iss, aud),
        // No `exp` a few seconds ahead: its cache entry could end between
        // the two uses.
        (
            time(&[-10, 600, 3600], &[-3600]),
            time(&[-3600, -10, 10], &[3600]),
            time(&[-3600, -10, 10], &[3600]),
        ),
        (scope, identity(), identity(), extra),
    )
        .prop_map(
            |((active, token_type, iss, aud), (exp, nbf, iat), (scope, sub, client_id, extra))| {
                Members {
                    active,
                    token_type,
                    iss,
                    aud,
                    exp,
                    nbf,
                    iat,
                    scope,
                    sub,
                    client_id,
                    extra,
                }
            },
        )
}

/// `depth` arrays, one inside the other.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(0), |inner, _| json!([inner]))
}

fn case() -> impl Strategy<Value = Case> {
    let status = prop_oneof![
        40 => Just(200u16),
        1 => prop::sample::select(vec![204u16, 401, 404, 500, 503]),
    ];
    let body = prop_oneof![
        40 => Just(Body::Object),
        1 => prop::sample::select(vec![
            Body::TrailingSpace,
            Body::Large,
            Body::Oversized,
            Body::DuplicateActive,
            Body::Array,
            Body::TrailingGarbage,
            Body::ByteOrderMark,
            Body::Empty,
            Body::TooDeep,
        ]),
        1 => prop::sample::select(vec![Body::TrailingSpace, Body::Large, Body::DuplicateActive]),
    ];
    let route = prop::sample::select(vec![Route::Read, Route::Write, Route::Admin]);
    (status, members(), body, route).prop_map(|(status, members, body, route)| Case {
        status,
        members,
        body,
        route,
    })
}

/// The answer object at `now`.
fn object(members: &Members, now: i64) -> Map<String, Value> {
    let mut object = Map::new();
    let fields = [
        ("active", members.active.clone()),
        ("token_type", members.token_type.clone()),
        ("iss", members.iss.clone()),
        ("aud", members.aud.clone()),
        ("exp", members.exp.render(now)),
        ("nbf", members.nbf.render(now)),
        ("iat", members.iat.render(now)),
        ("scope", members.scope.clone()),
        ("sub", members.sub.clone()),
        ("client_id", members.client_id.clone()),
        ("x_extension", members.extra.clone()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            object.insert(name.to_owned(), value);
        }
    }
    object
}

/// The body the endpoint sends.
fn body(kind: Body, object: &Map<String, Value>) -> Vec<u8> {
    let json = Value::Object(object.clone()).to_string();
    let padded = |size: usize| {
        let mut padded = object.clone();
        let room = size.saturating_sub(json.len() + 20);
        padded.insert("x_padding".to_owned(), json!("p".repeat(room)));
        Value::Object(padded).to_string()
    };
    match kind {
        Body::Object => json.into_bytes(),
        Body::TrailingSpace => format!("{json} \r\n\t").into_bytes(),
        Body::Large => padded(MAX_ANSWER - 100).into_bytes(),
        Body::Oversized => padded(MAX_ANSWER + 100).into_bytes(),
        Body::DuplicateActive => {
            let inner = json.strip_suffix('}').unwrap_or(&json);
            let comma = if object.is_empty() { "" } else { "," };
            format!("{inner}{comma}\"active\":true}}").into_bytes()
        }
        Body::Array => format!("[{json}]").into_bytes(),
        Body::TrailingGarbage => format!("{json}x").into_bytes(),
        Body::ByteOrderMark => format!("\u{feff}{json}").into_bytes(),
        Body::Empty => Vec::new(),
        Body::TooDeep => {
            let mut deep = object.clone();
            deep.insert("x_deep".to_owned(), nested(300));
            Value::Object(deep).to_string().into_bytes()
        }
    }
}

/// A NumericDate as RFC 7519 defines it (any JSON number, fractions
/// dropped); `Err` for another type or a negative one.
fn numeric_date(value: Option<&Value>) -> Result<Option<f64>, ()> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 => Ok(Some(f.floor())),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

/// A member as an identity header value: strings as they are, numbers and
/// booleans as JSON writes them, arrays of strings space-separated; nothing
/// for other types or for text a header cannot carry.
fn identity(value: Option<&Value>) -> Option<String> {
    let text = match value? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?
            .join(" "),
        Value::Null | Value::Object(_) => return None,
    };
    text.bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .then_some(text)
}

/// What each use of the token must get, by RFC 7662 (and RFC 7519's
/// NumericDate, RFC 6749's scope syntax) as the gateway applies them.
fn expected(case: &Case, object: &Map<String, Value>, body: &[u8], now: i64) -> Expected {
    let one_object = match case.body {
        Body::Object | Body::TrailingSpace | Body::Large => true,
        Body::DuplicateActive => !object.contains_key("active"),
        Body::Oversized
        | Body::Array
        | Body::TrailingGarbage
        | Body::ByteOrderMark
        | Body::Empty
        | Body::TooDeep => false,
    };
    if case.status != 200 || body.len() > MAX_ANSWER || !one_object {
        return Expected::Unavailable;
    }
    // The one `active` that `DuplicateActive` adds to an object without one.
    let mut object = object.clone();
    if case.body == Body::DuplicateActive {
        object.insert("active".to_owned(), json!(true));
    }
    if object.get("active") != Some(&json!(true)) {
        return Expected::Inactive;
    }
    if let Some(kind) = object.get("token_type") {
        let access = kind
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("bearer") || k == "access_token");
        if !access {
            return Expected::Inactive;
        }
    }
    if object
        .get("iss")
        .is_some_and(|iss| iss != &json!(OPAQUE_ISSUER))
    {
        return Expected::Inactive;
    }
    match object.get("aud") {
        None => {}
        Some(Value::String(aud)) if aud == AUDIENCE => {}
        Some(Value::Array(items))
            if items.iter().all(Value::is_string) && items.contains(&json!(AUDIENCE)) => {}
        Some(_) => return Expected::Inactive,
    }
    let now_f = now as f64;
    let leeway = LEEWAY as f64;
    let (Ok(exp), Ok(nbf), Ok(iat)) = (
        numeric_date(object.get("exp")),
        numeric_date(object.get("nbf")),
        numeric_date(object.get("iat")),
    ) else {
        return Expected::Inactive;
    };
    if exp.is_some_and(|exp| now_f > exp + leeway)
        || nbf.is_some_and(|nbf| nbf > now_f + leeway)
        || iat.is_some_and(|iat| iat > now_f + leeway)
    {
        return Expected::Inactive;
    }
    let scopes: Vec<&str> = match object.get("scope") {
        None => Vec::new(),
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        Some(_) => return Expected::Inactive,
    };
    let cached = exp.is_none_or(|exp| exp > now_f);
    if !case.route.allows(&scopes) {
        return Expected::InsufficientScope { cached };
    }
    Expected::Forwarded {
        subject: identity(object.get("sub")),
        client_id: identity(object.get("client_id")),
        scopes: (!scopes.is_empty()).then(|| scopes.join(" ")),
        cached,
    }
}

/// Each token's answer: status and body.
type Answers = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

/// The lab: an endpoint answering each token as a case says, a recording
/// upstream and a gateway that caches negative answers for an hour (so
/// that the second use of an inactive token must come from the cache).
struct Lab {
    answers: Answers,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    upstream: Upstream,
    gw: Gateway,
    _secret: SecretFile,
    next: AtomicU64,
}

impl Lab {
    async fn start() -> Self {
        let answers: Answers = Arc::default();
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (a, c) = (Arc::clone(&answers), Arc::clone(&calls));
        let idp = spawn_server(move |req: Request<Incoming>| {
            let (a, c) = (Arc::clone(&a), Arc::clone(&c));
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let token = url::form_urlencoded::parse(&body)
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                *c.lock().unwrap().entry(token.clone()).or_default() += 1;
                let (status, body) = a
                    .lock()
                    .unwrap()
                    .get(&token)
                    .cloned()
                    .unwrap_or((200, br#"{"active":false}"#.to_vec()));
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
        })
        .await;
        let upstream = Upstream::start().await;
        let secret = SecretFile::new(CLIENT_SECRET);
        let issuers = opaque_issuer(
            &format!("http://{idp}/introspect"),
            &secret.credentials(),
            "      negative_cache_ttl: 1h\n",
        );
        let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;
        Self {
            answers,
            calls,
            upstream,
            gw,
            _secret: secret,
            next: AtomicU64::new(0),
        }
    }

    fn calls(&self, token: &str) -> usize {
        self.calls.lock().unwrap().get(token).copied().unwrap_or(0)
    }
}

/// One use of the token, judged against `want`.
async fn use_token(
    lab: &Lab,
    case: &Case,
    token: &str,
    want: &Expected,
    asked: bool,
) -> Result<(), String> {
    let (method, path) = case.route.request();
    let calls_before = lab.calls(token);
    let seen_before = lab.upstream.count();
    let auth = format!("Bearer {token}");
    let reply = send(
        method,
        &lab.gw.url(path),
        &[
            ("authorization", &auth),
            ("x-auth-subject", SPOOFED),
            ("x-auth-client-id", SPOOFED),
            ("x-auth-scopes", "admin"),
        ],
        Bytes::new(),
    )
    .await?;
    let calls = lab.calls(token) - calls_before;
    let seen = lab.upstream.seen_since(seen_before);
    let context = || {
        format!(
            "want {want:?}, got {} {:?} {}, {calls} call(s), {} forwarded",
            reply.status,
            reply.header("www-authenticate"),
            reply.text(),
            seen.len()
        )
    };
    if calls != usize::from(asked) {
        return Err(format!(
            "expected {} introspection call(s): {}",
            usize::from(asked),
            context()
        ));
    }
    let challenge = reply.www_authenticate();
    match want {
        Expected::Unavailable => {
            if reply.status != 503
                || reply.header("retry-after").is_none()
                || reply.json()["error"] != "temporarily_unavailable"
                || reply.header("www-authenticate").is_some()
            {
                return Err(context());
            }
        }
        Expected::Inactive => {
            if reply.status != 401
                || !challenge.starts_with("Bearer ")
                || !challenge.contains("error=\"invalid_token\"")
                || reply.json()["error"] != "invalid_token"
            {
                return Err(context());
            }
        }
        Expected::InsufficientScope { .. } => {
            if reply.status != 403
                || !challenge.starts_with("Bearer ")
                || !challenge.contains("error=\"insufficient_scope\"")
            {
                return Err(context());
            }
        }
        Expected::Forwarded {
            subject,
            client_id,
            scopes,
            ..
        } => {
            let [request] = seen.as_slice() else {
                return Err(context());
            };
            if reply.status != 200 || request.method != method {
                return Err(context());
            }
            for (name, value) in [
                ("x-auth-subject", subject),
                ("x-auth-client-id", client_id),
                ("x-auth-scopes", scopes),
            ] {
                let got: Vec<_> = request.headers.get_all(name).iter().collect();
                let want: Vec<_> = value.iter().map(String::as_bytes).collect();
                if got.iter().map(|v| v.as_bytes()).collect::<Vec<_>>() != want {
                    return Err(format!("{name}: upstream got {got:?}: {}", context()));
                }
            }
            return Ok(());
        }
    }
    if !seen.is_empty() {
        return Err(format!("forwarded: {}", context()));
    }
    Ok(())
}

async fn check(lab: &Lab, case: Case) -> Result<(), String> {
    let n = lab.next.fetch_add(1, Ordering::Relaxed);
    let token = format!("opaque-case-{n}");
    let now = i64::try_from(now()).unwrap();
    let object = object(&case.members, now);
    let body = body(case.body, &object);
    let want = expected(&case, &object, &body, now);
    lab.answers
        .lock()
        .unwrap()
        .insert(token.clone(), (case.status, body));
    use_token(lab, &case, &token, &want, true).await?;
    // The second use: from the cache, except where nothing may be cached.
    let asked_again = match &want {
        Expected::Unavailable => true,
        Expected::Forwarded { cached, .. } | Expected::InsufficientScope { cached } => !cached,
        Expected::Inactive => false,
    };
    use_token(lab, &case, &token, &want, asked_again).await
}

#[test]
fn hostile_introspection_answers_get_what_rfc_7662_says() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    run_campaign(&runtime, &lab, 256, case(), async |lab, case| {
        check(lab, case).await
    });
    // The endpoint and the gateway still agree on an ordinary answer.
    runtime.block_on(async {
        let token = "opaque-after-the-campaign";
        lab.answers.lock().unwrap().insert(
            token.to_owned(),
            (200, active("orders:read").to_string().into_bytes()),
        );
        let ok = get_with_token(&lab.gw.url("/orders/1"), token).await;
        assert_eq!(ok.status, 200, "{}", ok.text());
    });
}
