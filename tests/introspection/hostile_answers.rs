//! Generated introspection answers, ordinary and hostile, against a
//! reference of RFC 7662 as the gateway applies it.
//!
//! Each case gives a fresh opaque token an answer from the endpoint: a status,
//! and a body that is an answer object (members `active`, `token_type`,
//! `token_use` (Ory Hydra's name for the kind), `iss`, `aud`, `exp`, `nbf`,
//! `iat`, `scope`, `scp`, `cnf`, `sub`, `client_id` each missing, right,
//! wrong, or of the wrong JSON type; unknown members, some nested deep) or something that only looks like one (a duplicate `active`,
//! an array, trailing bytes, a byte order mark, an empty or oversized body).
//! The token is then used twice on one of three routes. The reference says,
//! for both uses:
//! - an answer that is not a 200 with exactly one JSON object is no answer:
//!   503 `temporarily_unavailable` with `Retry-After`, never cached (the
//!   second use asks again);
//! - an answer whose `active` is not the JSON `true`, or whose `token_type`,
//!   `token_use`, `iss`, `aud`, `exp`, `nbf`, `iat` or scopes are wrong or of
//!   the wrong type, or that has a `cnf` (RFC 7800: bound to a key the bearer
//!   does not prove), is an inactive token: 401 `invalid_token` (RFC 6750),
//!   cached (the second use does not ask; one refused only for an `nbf` or
//!   `iat` ahead of the clock is remembered only until it becomes valid).
//!   The issuer's `scope_claim` is `scp`: the answer's `scope` (RFC 7662
//!   2.2) counts when it is there, and its `scp` only otherwise;
//! - an active token without the route's scopes gets 403
//!   `insufficient_scope`; with them the request is forwarded, carrying the
//!   answer's `sub`, `client_id` and scopes as identity headers and never the
//!   client's own;
//! - an active answer is cached until its `exp` and no longer: one whose
//!   `exp` has passed but is within the leeway is accepted and asked again;
//! - to an issuer with `require_token_type: true`, an answer naming no kind
//!   (neither `token_type` nor `token_use`) is inactive too.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 256).

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use serde_json::Map;
use support::reference::{
    self, CommonMembers, IdentityHeaders, Outcome, Route, ScopeClaim, SPOOFED_IDENTITY,
};

/// Largest answer body the gateway reads.
const MAX_ANSWER: usize = 64 * 1024;

/// The answer object's members, each `None` when missing.
#[derive(Debug, Clone)]
struct Members {
    active: Option<Value>,
    token_type: Option<Value>,
    token_use: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    common: CommonMembers,
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

#[derive(Debug, Clone)]
struct Case {
    status: u16,
    members: Members,
    body: Body,
    route: Route,
}

/// What each use of the token must get, and whether the answer may be
/// cached (the second use then asks the endpoint nothing).
#[derive(Debug, Clone)]
struct Expected {
    outcome: Outcome,
    cached: bool,
}

impl Expected {
    fn new(outcome: Outcome, cached: bool) -> Self {
        Self { outcome, cached }
    }
}

fn members() -> impl Strategy<Value = Members> {
    let active = reference::pick(
        vec![Some(json!(true))],
        vec![
            Some(json!(false)),
            Some(json!("true")),
            Some(json!(1)),
            Some(Value::Null),
            None,
        ],
    );
    let token_type = reference::pick(
        vec![
            None,
            Some(json!("Bearer")),
            Some(json!("bearer")),
            Some(json!("access_token")),
            Some(json!("ACCESS_TOKEN")),
        ],
        vec![
            Some(json!("refresh_token")),
            Some(json!("N_A")),
            Some(json!(1)),
        ],
    );
    // fosite (Ory Hydra) leaves `token_type` out for a refresh token and
    // names its kind here.
    let token_use = reference::pick(
        vec![
            None,
            Some(json!("access_token")),
            Some(json!("ACCESS_TOKEN")),
            Some(json!("access")),
        ],
        vec![
            Some(json!("refresh_token")),
            Some(json!("id_token")),
            Some(json!(1)),
        ],
    );
    let iss = reference::pick(
        vec![None, Some(json!(OPAQUE_ISSUER))],
        vec![
            Some(json!(format!("{OPAQUE_ISSUER}/"))),
            Some(json!(OPAQUE_ISSUER.to_uppercase())),
            Some(json!("https://evil.test")),
            Some(json!([OPAQUE_ISSUER])),
            Some(Value::Null),
        ],
    );
    let aud = reference::audience(false);
    (
        active,
        (token_type, token_use),
        iss,
        aud,
        CommonMembers::generate(20),
    )
        .prop_map(
            |(active, (token_type, token_use), iss, aud, common)| Members {
                active,
                token_type,
                token_use,
                iss,
                aud,
                common,
            },
        )
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
    let route = Route::any();
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
        ("active", &members.active),
        ("token_type", &members.token_type),
        ("token_use", &members.token_use),
        ("iss", &members.iss),
        ("aud", &members.aud),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            object.insert(name.to_owned(), value.clone());
        }
    }
    members.common.render_into(&mut object, now);
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
            deep.insert("x_deep".to_owned(), reference::nested(300));
            Value::Object(deep).to_string().into_bytes()
        }
    }
}

/// What each use of the token must get, by RFC 7662 (and RFC 7519's
/// NumericDate, RFC 6749's scope syntax) as the gateway applies them.
fn expected(
    case: &Case,
    object: &Map<String, Value>,
    body: &[u8],
    now: i64,
    require_token_type: bool,
) -> Expected {
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
    // Inactive answers are cached for `negative_cache_ttl` (an hour here).
    let inactive = Expected::new(Outcome::Invalid, true);
    if case.status != 200 || body.len() > MAX_ANSWER || !one_object {
        return Expected::new(Outcome::Unavailable, false);
    }
    // The one `active` that `DuplicateActive` adds to an object without one.
    let mut object = object.clone();
    if case.body == Body::DuplicateActive {
        object.insert("active".to_owned(), json!(true));
    }
    if object.get("active") != Some(&json!(true)) {
        return inactive;
    }
    if let Some(kind) = object.get("token_type") {
        let access = kind.as_str().is_some_and(|k| {
            k.eq_ignore_ascii_case("bearer") || k.eq_ignore_ascii_case("access_token")
        });
        if !access {
            return inactive;
        }
    }
    if object.get("token_use").is_some_and(|kind| {
        !kind.as_str().is_some_and(|k| {
            k.eq_ignore_ascii_case("access_token") || k.eq_ignore_ascii_case("access")
        })
    }) {
        return inactive;
    }
    // With `require_token_type`, one of them must name the kind (what is
    // left of them here names an access token).
    if require_token_type && !object.contains_key("token_type") && !object.contains_key("token_use")
    {
        return inactive;
    }
    if object
        .get("iss")
        .is_some_and(|iss| iss != &json!(OPAQUE_ISSUER))
    {
        return inactive;
    }
    if !reference::audience_ok(object.get("aud"), false) {
        return inactive;
    }
    // One valid later is remembered until then, which the generated dates
    // put beyond this case.
    let Ok(exp) = reference::lifetime(&object, now, false) else {
        return inactive;
    };
    if object.contains_key("cnf") {
        return inactive;
    }
    let claim = if object.contains_key("scope") {
        ScopeClaim::Scope
    } else {
        ScopeClaim::Scp
    };
    let Ok(scopes) = reference::granted(&object, claim) else {
        return inactive;
    };
    let cached = exp.is_none_or(|exp| exp > now as f64);
    if !case.route.allows(&scopes) {
        return Expected::new(Outcome::InsufficientScope, cached);
    }
    Expected::new(
        Outcome::Forwarded(IdentityHeaders::of(&object, &scopes)),
        cached,
    )
}

/// Each token's answer: status and body.
type Answers = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

/// The lab: an endpoint answering each token as a case says, a recording
/// upstream and a gateway that caches negative answers for an hour (so
/// that the second use of an inactive token must come from the cache) and
/// reads `scp` where an answer has no `scope`.
struct Lab {
    answers: Answers,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    upstream: Upstream,
    gw: Gateway,
    _secret: SecretFile,
    next: AtomicU64,
    /// The issuer takes only answers that name an access token.
    require_token_type: bool,
}

impl Lab {
    async fn start(require_token_type: bool) -> Self {
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
            &format!(
                "      negative_cache_ttl: 1h\n      require_token_type: {require_token_type}\n    scope_claim: scp\n"
            ),
        );
        let gw = Gateway::start(&gateway_yaml(upstream.addr, &issuers, "")).await;
        Self {
            answers,
            calls,
            upstream,
            gw,
            _secret: secret,
            next: AtomicU64::new(0),
            require_token_type,
        }
    }

    fn calls(&self, token: &str) -> usize {
        self.calls.lock().unwrap().get(token).copied().unwrap_or(0)
    }
}

/// One use of the token, judged against `want`; `asked` says whether it
/// must call the endpoint.
async fn use_token(
    lab: &Lab,
    case: &Case,
    token: &str,
    want: &Outcome,
    asked: bool,
) -> Result<(), String> {
    let (method, path) = case.route.request();
    let calls_before = lab.calls(token);
    let seen_before = lab.upstream.count();
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(SPOOFED_IDENTITY);
    let reply = send(method, &lab.gw.url(path), &headers, Bytes::new()).await?;
    let calls = lab.calls(token) - calls_before;
    let seen = lab.upstream.seen_since(seen_before);
    if calls != usize::from(asked) {
        return Err(format!(
            "{calls} introspection call(s), want {}",
            usize::from(asked)
        ));
    }
    want.judge(&reply, &seen, method)
        .map_err(|e| format!("want {want:?}: {e}"))
}

async fn check(lab: &Lab, case: Case) -> Result<(), String> {
    let n = lab.next.fetch_add(1, Ordering::Relaxed);
    let token = format!("opaque-case-{n}");
    let now = i64::try_from(now()).unwrap();
    let object = object(&case.members, now);
    let body = body(case.body, &object);
    let want = expected(&case, &object, &body, now, lab.require_token_type);
    lab.answers
        .lock()
        .unwrap()
        .insert(token.clone(), (case.status, body));
    use_token(lab, &case, &token, &want.outcome, true).await?;
    // The second use: from the cache, except where nothing may be cached.
    use_token(lab, &case, &token, &want.outcome, !want.cached)
        .await
        .map_err(|e| format!("second use: {e}"))
}

/// The same answers to an issuer that takes only those naming an access
/// token (`require_token_type: true`).
#[test]
fn hostile_introspection_answers_to_an_issuer_requiring_a_token_type() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start(true));
    run_campaign(&runtime, &lab, 128, case(), async |lab, case| {
        check(lab, case).await
    });
}

#[test]
fn hostile_introspection_answers_get_what_rfc_7662_says() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start(false));
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
