//! Generated authorization server metadata, ordinary and hostile, against a
//! reference of RFC 8414 (and OpenID Connect Discovery) as the gateway
//! applies it.
//!
//! Each case serves a document, or none, at each of the two well-known
//! paths: a status, and a body that is a metadata object (`issuer`,
//! `jwks_uri`, `introspection_endpoint`, each right, missing, null, of
//! another type, or a URL unfit to call: relative, empty, with a fragment,
//! with user information, `ftp:`; an issuer with a trailing slash, in
//! upper case, or another's; an unknown member) or something that only
//! looks like one (a duplicate `issuer`, an array, trailing bytes, a byte
//! order mark, an empty or oversized body, HTML). A fresh gateway with a
//! `discovery: true` issuer (introspection credentials, no endpoints)
//! makes its first attempt; the reference says what it finds:
//! - no metadata document from either URL (another status than 200, no JSON
//!   object, no string `issuer`, an endpoint that is not a string):
//!   `unavailable`. A document for another issuer is passed over, to the
//!   other URL, and is `refused` if no document for this issuer follows;
//!   one whose `jwks_uri` is unfit to call ends the search: `refused`.
//!   Either way the gateway is not ready, and the issuer's tokens get 503
//!   with no call anywhere;
//! - otherwise the document is applied: a JWT passes exactly when the
//!   `jwks_uri` is right (and is never forwarded otherwise); an opaque
//!   token is introspected exactly when the `introspection_endpoint` is,
//!   and gets 503 with no call otherwise; the gateway is ready exactly
//!   then. The attempt counts as `success`, or `incomplete` without that
//!   endpoint.
//!
//! Each attempt is counted in `scopegate_discovery_attempts_total`, which
//! is how the case knows the first one is over.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 128).

use super::*;

use proptest::prelude::*;

/// Largest metadata document the gateway reads.
const MAX_METADATA: usize = 256 * 1024;

/// A member's value, rendered against the lab's real URL for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Missing,
    Null,
    Number,
    /// The right URL.
    Right,
    /// The right URL with a trailing slash.
    Slash,
    /// The right URL in upper case.
    Upper,
    /// Another server's.
    Another,
    Relative,
    Empty,
    Fragment,
    UserInfo,
    Ftp,
}

impl Member {
    fn render(self, right: &str) -> Option<Value> {
        let host = right.trim_start_matches("http://");
        Some(match self {
            Member::Missing => return None,
            Member::Null => Value::Null,
            Member::Number => json!(5),
            Member::Right => json!(right),
            Member::Slash => json!(format!("{right}/")),
            Member::Upper => json!(right.to_uppercase()),
            Member::Another => json!("https://impostor.test"),
            Member::Relative => json!("/jwks"),
            Member::Empty => json!(""),
            Member::Fragment => json!(format!("{right}#k")),
            Member::UserInfo => json!(format!("http://user@{host}")),
            Member::Ftp => json!(format!("ftp://{host}")),
        })
    }

    /// The string the gateway reads (`None` when it reads none), or `Err`
    /// when the document does not parse for it.
    fn read(self, right: &str) -> Result<Option<String>, ()> {
        match self.render(right) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(()),
        }
    }
}

/// How the document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Object,
    /// The object with an unknown member (ignored).
    Extended,
    DuplicateIssuer,
    Array,
    TrailingBytes,
    ByteOrderMark,
    Empty,
    Oversized,
    Html,
}

#[derive(Debug, Clone, Copy)]
struct Document {
    status: u16,
    body: Body,
    issuer: Member,
    jwks_uri: Member,
    introspection_endpoint: Member,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    rfc8414: Option<Document>,
    openid: Option<Document>,
}

fn endpoint_member() -> impl Strategy<Value = Member> {
    prop_oneof![
        12 => Just(Member::Right),
        3 => Just(Member::Missing),
        1 => prop::sample::select(vec![
            Member::Null,
            Member::Number,
            Member::Relative,
            Member::Empty,
            Member::Fragment,
            Member::UserInfo,
            Member::Ftp,
        ]),
    ]
}

fn document() -> impl Strategy<Value = Document> {
    let status = prop_oneof![
        12 => Just(200u16),
        1 => prop::sample::select(vec![302u16, 404, 500]),
    ];
    let body = prop_oneof![
        16 => Just(Body::Object),
        2 => Just(Body::Extended),
        1 => prop::sample::select(vec![
            Body::DuplicateIssuer,
            Body::Array,
            Body::TrailingBytes,
            Body::ByteOrderMark,
            Body::Empty,
            Body::Oversized,
            Body::Html,
        ]),
    ];
    let issuer = prop_oneof![
        12 => Just(Member::Right),
        1 => prop::sample::select(vec![
            Member::Missing,
            Member::Null,
            Member::Number,
            Member::Slash,
            Member::Upper,
            Member::Another,
        ]),
    ];
    (status, body, issuer, endpoint_member(), endpoint_member()).prop_map(
        |(status, body, issuer, jwks_uri, introspection_endpoint)| Document {
            status,
            body,
            issuer,
            jwks_uri,
            introspection_endpoint,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::option::weighted(0.85, document()),
        prop::option::weighted(0.5, document()),
    )
        .prop_map(|(rfc8414, openid)| Case { rfc8414, openid })
}

/// The lab: one issuer (the metadata server), its keys, its introspection
/// endpoint and an upstream, for every case's gateway.
struct Lab {
    world: World,
    idp: IntrospectionServer,
    meta: MetadataServer,
    secret: SecretFile,
}

impl Lab {
    async fn start() -> Self {
        let world = World::new().await;
        let idp = IntrospectionServer::start().await;
        idp.require_client(basic_check());
        let meta = MetadataServer::start().await;
        let mut answer = active("orders:read");
        answer["iss"] = meta.base().into();
        idp.answer("opaque-discovered", answer);
        Self {
            world,
            idp,
            meta,
            secret: SecretFile::new(CLIENT_SECRET),
        }
    }

    /// The body `doc` is served with.
    fn body(&self, doc: &Document) -> String {
        let members = [
            ("issuer", doc.issuer.render(&self.meta.base())),
            ("jwks_uri", doc.jwks_uri.render(&self.world.jwks.uri())),
            (
                "introspection_endpoint",
                doc.introspection_endpoint.render(&self.idp.endpoint()),
            ),
        ];
        let mut object = serde_json::Map::new();
        for (name, value) in members {
            if let Some(value) = value {
                object.insert(name.to_owned(), value);
            }
        }
        let text = Value::Object(object.clone()).to_string();
        let inner = text.strip_suffix('}').unwrap_or(&text);
        let sep = if object.is_empty() { "" } else { "," };
        match doc.body {
            Body::Object => text,
            Body::Extended => format!("{inner}{sep}\"response_types_supported\":[\"code\"]}}"),
            Body::DuplicateIssuer => format!("{inner}{sep}\"issuer\":\"https://impostor.test\"}}"),
            Body::Array => format!("[{text}]"),
            Body::TrailingBytes => format!("{text}x"),
            Body::ByteOrderMark => format!("\u{feff}{text}"),
            Body::Empty => String::new(),
            Body::Oversized => format!("{inner}{sep}\"x_pad\":\"{}\"}}", "a".repeat(MAX_METADATA)),
            Body::Html => "<html><body>metadata</body></html>".to_owned(),
        }
    }

    /// What the gateway makes of `doc`: `None` when it is no metadata
    /// object, else the `issuer`, `jwks_uri` and `introspection_endpoint`
    /// it reads.
    fn read(&self, doc: &Document) -> Option<(String, Option<String>, Option<String>)> {
        let issuer = match doc.body {
            _ if doc.status != 200 => return None,
            Body::Object | Body::Extended => doc.issuer,
            // The added `issuer` is the only one when the object had none.
            Body::DuplicateIssuer if doc.issuer == Member::Missing => Member::Another,
            _ => return None,
        };
        let issuer = issuer.read(&self.meta.base()).ok()??;
        let jwks_uri = doc.jwks_uri.read(&self.world.jwks.uri()).ok()?;
        let introspection = doc.introspection_endpoint.read(&self.idp.endpoint()).ok()?;
        Some((issuer, jwks_uri, introspection))
    }
}

/// What the first attempt finds.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// `unavailable` or `refused`.
    Nothing(&'static str),
    /// Applied: `success`, or `incomplete` without an introspection endpoint.
    Endpoints { keys: bool, introspection: bool },
}

fn expected(lab: &Lab, case: &Case) -> Found {
    let mut nothing = "unavailable";
    for doc in [case.rfc8414, case.openid].into_iter().flatten() {
        let Some((issuer, jwks_uri, introspection)) = lab.read(&doc) else {
            continue;
        };
        // RFC 8414 3.3: metadata for another issuer MUST NOT be used; the
        // other URL may still serve this issuer's.
        if issuer != lab.meta.base() {
            nothing = "refused";
            continue;
        }
        // A `jwks_uri` published but unfit to call is no "no keys".
        if jwks_uri.is_some() && doc.jwks_uri != Member::Right {
            return Found::Nothing("refused");
        }
        return Found::Endpoints {
            keys: jwks_uri.is_some(),
            introspection: introspection.is_some() && doc.introspection_endpoint == Member::Right,
        };
    }
    Found::Nothing(nothing)
}

async fn check(lab: &Lab, case: Case) -> Result<(), String> {
    let want = expected(lab, &case);
    for (path, doc) in [(RFC8414_PATH, case.rfc8414), (OIDC_PATH, case.openid)] {
        let (status, body) = match doc {
            Some(doc) => (doc.status, lab.body(&doc)),
            None => (404, "not found".to_owned()),
        };
        lab.meta
            .set_raw(path, StatusCode::from_u16(status).unwrap(), body);
    }
    let (calls, fetches, forwarded) = (
        lab.idp.count(),
        lab.world.jwks.fetches(),
        lab.world.upstream.count(),
    );
    let issuers = discovered_issuer(&lab.meta.base(), &lab.secret);
    let gw = Gateway::start_unready(&gateway_yaml(lab.world.upstream.addr, &issuers, "")).await;
    let results = ["success", "incomplete", "unavailable", "refused"];
    let first =
        wait_for_metrics(&gw, |m| results.iter().any(|r| found_attempts(m, r) >= 1.0)).await;
    if !first {
        return Err("no discovery attempt was counted".to_owned());
    }
    let counted = gw.metrics().await;
    let got: Vec<&str> = results
        .into_iter()
        .filter(|r| found_attempts(&counted, r) >= 1.0)
        .collect();
    let mut claims = claims("orders:read");
    claims["iss"] = lab.meta.base().into();
    let jwt = lab.world.key.mint(&claims).unwrap();
    let (jwt_url, opaque_url) = (gw.url("/orders/1"), gw.url("/orders/2"));
    let unavailable = |r: &Reply, what: &str| {
        let fine = r.status == 503
            && r.header("retry-after").is_some()
            && r.json()["error"] == "temporarily_unavailable";
        match fine {
            true => Ok(()),
            false => Err(format!("{what}: want 503, got {} {}", r.status, r.text())),
        }
    };
    match want {
        Found::Nothing(result) => {
            if got != [result] {
                return Err(format!("counted {got:?}, want [{result}]"));
            }
            if gw.readyz().await != 503 {
                return Err("ready without metadata".to_owned());
            }
            unavailable(&get_with_token(&jwt_url, &jwt).await, "the JWT")?;
            unavailable(
                &get_with_token(&opaque_url, "opaque-discovered").await,
                "the opaque token",
            )?;
            let used = (
                lab.idp.count() - calls,
                lab.world.jwks.fetches() - fetches,
                lab.world.upstream.count() - forwarded,
            );
            if used != (0, 0, 0) {
                return Err(format!(
                    "introspected, fetched keys, forwarded: {used:?}, want none"
                ));
            }
        }
        Found::Endpoints {
            keys,
            introspection,
        } => {
            let result = if introspection {
                "success"
            } else {
                "incomplete"
            };
            if got != [result] {
                return Err(format!("counted {got:?}, want [{result}]"));
            }
            if keys {
                let auth = format!("Bearer {jwt}");
                if !wait_for_status_with(&jwt_url, &[("authorization", &auth)], 200).await {
                    return Err("the JWT never passed, with the keys published".to_owned());
                }
            } else if get_with_token(&jwt_url, &jwt).await.status == 200 {
                return Err("the JWT passed without keys".to_owned());
            }
            let before = lab.world.upstream.count();
            let calls = lab.idp.count();
            let r = get_with_token(&opaque_url, "opaque-discovered").await;
            if introspection {
                if r.status != 200 || lab.idp.count() != calls + 1 {
                    return Err(format!("the opaque token: got {} {}", r.status, r.text()));
                }
            } else {
                unavailable(&r, "the opaque token without an endpoint")?;
                if lab.idp.count() != calls || lab.world.upstream.count() != before {
                    return Err("introspected or forwarded without an endpoint".to_owned());
                }
            }
            let ready = gw.readyz().await;
            if (ready == 200) != introspection {
                return Err(format!(
                    "readiness {ready} with an introspection endpoint: {introspection}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn hostile_metadata_gets_what_rfc_8414_says() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    run_campaign(&runtime, &lab, 128, case(), async |lab, case| {
        check(lab, case).await
    });
}
