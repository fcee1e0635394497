//! Generated token lifecycles against a model of the grants they belong to.
//!
//! Each case issues fresh tokens (client credentials for `svc` and `other`,
//! each with a refresh token, and for `plain`, without), then runs a
//! generated sequence of operations on them, on tokens never issued, and on
//! forgeries signed with the server's own key (a session's `typ`, a generic
//! or no `typ`, expired, another issuer; with a faultless one, never issued
//! but valid, as their control):
//! RFC 7662 introspection, RFC 7009 revocation, refresh (with rotation, and
//! RFC 9700 4.14.2 replay detection ending the grant), and use at the
//! gateway. Callers authenticate with the form body or Basic, with a wrong
//! secret, or not at all. The model says what each operation must answer
//! and what it changes:
//! - an access token is active until revoked by its own client or until its
//!   grant ends; a refresh token until used or until its grant ends;
//! - revoking a refresh token ends its grant, only for its own client;
//!   unknown and inactive tokens are answered 200, and other clients' active
//!   ones 400 `unauthorized_client`, and left be;
//! - refreshing rotates; a used refresh token presented again by its client
//!   ends the grant; another client's is refused and left be;
//! - with `refresh_token_reuse_grace` (half the cases, 60s, longer than a
//!   case), the token a rotation replaced may be used once more, and stays
//!   active until then: that use rotates again (the token the first use got
//!   is then a replay), and a third use ends the grant;
//! - introspection of anything inactive, or of another client's refresh
//!   token, says `{"active": false}` and nothing more; the gateway accepts exactly the active access tokens, and after
//!   the sequence every access token issued in the case is tried again.
//!
//! The same sequences run as well where the store outlives a gateway: on a
//! file store whose gateway restarts between steps now and then, and on two
//! replicas sharing a redis store, each step on either of them (and each
//! restarting now and then). One model holds for all of them.
//!
//! Wrong secrets go only to client `web`, which never needs to succeed here,
//! so the failure limiter's 429 never hides an answer the model expects.

use super::*;

use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Caller {
    Form(&'static str),
    Basic(&'static str),
    /// `web` with a wrong secret.
    WrongSecret,
    Anonymous,
}

#[derive(Debug, Clone)]
enum Pick {
    /// One of the tokens issued so far in the case (index modulo their count).
    Issued(usize),
    /// One of the caller's own refresh tokens (or access tokens), or one of
    /// another client's, so that rotations, replays and revocations by the
    /// owner, and attempts by others, are frequent.
    Of {
        own: bool,
        refresh: bool,
        index: usize,
    },
    /// Never issued.
    Unknown(String),
    /// Signed with the server's key, but not an access token it would issue
    /// (index into [`forgeries`]).
    Forged(usize),
    /// No `token` parameter (or, at the gateway, no token).
    Missing,
}

#[derive(Debug, Clone)]
enum Op {
    Introspect(Caller, Pick),
    Revoke(Caller, Pick),
    Refresh(Caller, Pick),
    Use(Pick),
}

/// The clients that authenticate rightly here (`web` only ever wrongly).
const CALLERS: [&str; 3] = ["svc", "other", "plain"];

fn caller() -> impl Strategy<Value = Caller> {
    let client = proptest::sample::select(&CALLERS[..]);
    prop_oneof![
        6 => client.clone().prop_map(Caller::Form),
        4 => client.prop_map(Caller::Basic),
        1 => Just(Caller::WrongSecret),
        1 => Just(Caller::Anonymous),
    ]
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => (0..64usize).prop_map(Pick::Issued),
        6 => (
            proptest::bool::weighted(0.7),
            proptest::bool::weighted(0.7),
            0..64usize
        )
            .prop_map(|(own, refresh, index)| Pick::Of { own, refresh, index }),
        2 => prop_oneof![
            "[A-Za-z0-9_-]{1,43}",
            Just("a.b.c".to_owned()),
            Just(String::new()),
            // alg none, this issuer, no signature.
            Just("eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2FzLnRlc3QifQ.".to_owned()),
        ]
        .prop_map(Pick::Unknown),
        2 => (0..FORGERIES.len()).prop_map(Pick::Forged),
        1 => Just(Pick::Missing),
    ]
}

/// Mostly the caller's own refresh tokens: rotations and replays.
fn refresh_pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => (0..64usize).prop_map(|index| Pick::Of { own: true, refresh: true, index }),
        2 => (0..64usize).prop_map(|index| Pick::Of { own: false, refresh: true, index }),
        2 => pick(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (caller(), pick()).prop_map(|(c, p)| Op::Introspect(c, p)),
        2 => (caller(), pick()).prop_map(|(c, p)| Op::Revoke(c, p)),
        4 => (caller(), refresh_pick()).prop_map(|(c, p)| Op::Refresh(c, p)),
        2 => pick().prop_map(Op::Use),
    ]
}

#[derive(Debug)]
enum Kind {
    Access { grant: Option<usize>, revoked: bool },
    Refresh { grant: usize },
}

/// A grant (refresh token family) as the model sees it.
#[derive(Debug)]
struct Grant {
    ended: bool,
    /// The refresh token that rotates it now (an index into the tokens).
    current: usize,
    /// Within the reuse grace: the token `current` replaced, which may be
    /// used once more.
    retry: Option<usize>,
}

#[derive(Debug)]
struct Issued {
    value: String,
    client: &'static str,
    kind: Kind,
}

/// The tokens of one case and their grants (refresh token families).
#[derive(Debug, Default)]
struct Model {
    tokens: Vec<Issued>,
    grants: Vec<Grant>,
    forged: Vec<String>,
    /// Whether the gateway has a `refresh_token_reuse_grace`.
    grace: bool,
}

impl Model {
    /// Whether token `i` is active.
    fn active(&self, i: usize) -> bool {
        match self.tokens[i].kind {
            Kind::Access { grant, revoked } => {
                !revoked && grant.is_none_or(|g| !self.grants[g].ended)
            }
            Kind::Refresh { grant } => {
                let g = &self.grants[grant];
                !g.ended && (g.current == i || g.retry == Some(i))
            }
        }
    }

    /// Adds what a token response carried, for `client` in `grant`.
    fn add(
        &mut self,
        client: &'static str,
        answer: &Value,
        grant: Option<usize>,
    ) -> Result<(), String> {
        let access = answer["access_token"].as_str().ok_or("no access_token")?;
        let grant = match (answer["refresh_token"].as_str(), grant) {
            (Some(refresh), grant) => {
                let current = self.tokens.len();
                let grant = match grant {
                    Some(g) => {
                        self.grants[g].current = current;
                        g
                    }
                    None => {
                        self.grants.push(Grant {
                            ended: false,
                            current,
                            retry: None,
                        });
                        self.grants.len() - 1
                    }
                };
                self.tokens.push(Issued {
                    value: refresh.to_owned(),
                    client,
                    kind: Kind::Refresh { grant },
                });
                Some(grant)
            }
            (None, None) => None,
            (None, Some(_)) => {
                return Err(format!("a refresh without a new refresh token: {answer}"))
            }
        };
        self.tokens.push(Issued {
            value: access.to_owned(),
            client,
            kind: Kind::Access {
                grant,
                revoked: false,
            },
        });
        Ok(())
    }

    /// The token `pick` names for `caller` (a client that authenticates,
    /// if any): its index among the issued ones, and its value.
    fn pick(&self, pick: &Pick, caller: Option<&str>) -> Option<(Option<usize>, String)> {
        let issued = |i: usize| Some((Some(i), self.tokens[i].value.clone()));
        match pick {
            Pick::Issued(i) => issued(i % self.tokens.len()),
            Pick::Of {
                own,
                refresh,
                index,
            } => {
                let candidates: Vec<usize> = (0..self.tokens.len())
                    .filter(|&i| {
                        let t = &self.tokens[i];
                        caller.is_none_or(|c| (c == t.client) == *own)
                            && matches!(t.kind, Kind::Refresh { .. }) == *refresh
                    })
                    .collect();
                match candidates.len() {
                    0 => issued(index % self.tokens.len()),
                    n => issued(candidates[index % n]),
                }
            }
            // RFC 6749 3.1: a parameter without a value counts as not sent.
            Pick::Unknown(value) if value.is_empty() => None,
            Pick::Unknown(value) => Some((None, value.clone())),
            Pick::Forged(i) => Some((None, self.forged[*i].clone())),
            Pick::Missing => None,
        }
    }
}

/// The client a caller authenticates as, or the error it must get (and
/// whether the limiter's 429 may stand for it).
fn authenticated(caller: Caller) -> Result<&'static str, (u16, bool)> {
    match caller {
        Caller::Form(id) | Caller::Basic(id) => Ok(id),
        // A failed client authentication in the form is a 400 (RFC 6749
        // 5.2); with no credentials at all, a 401 with a challenge.
        Caller::WrongSecret => Err((400, true)),
        Caller::Anonymous => Err((401, false)),
    }
}

/// Form parameters and headers that authenticate `caller`.
fn credentials(caller: Caller) -> (Vec<String>, Vec<(&'static str, String)>) {
    match caller {
        Caller::Form(id) => (vec![creds(id)], Vec::new()),
        Caller::Basic(id) => (Vec::new(), vec![("authorization", basic(id, SECRET))]),
        Caller::WrongSecret => (
            vec!["client_id=web&client_secret=wrong".to_owned()],
            Vec::new(),
        ),
        Caller::Anonymous => (Vec::new(), Vec::new()),
    }
}

async fn post(
    gw: &Gateway,
    path: &str,
    caller: Caller,
    mut params: Vec<String>,
) -> Result<Reply, String> {
    let (auth, headers) = credentials(caller);
    params.extend(auth);
    let mut all = vec![(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    all.extend(headers);
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send("POST", &gw.url(path), &refs, Bytes::from(params.join("&"))).await
}

/// Checks an RFC 6749 5.2 error answer.
fn refused(r: &Reply, code: &str, status: u16, may_be_limited: bool) -> Result<(), String> {
    let json: Value =
        serde_json::from_slice(&r.body).map_err(|_| format!("not JSON: {}", r.text()))?;
    let status_ok = r.status == status || (may_be_limited && r.status == 429);
    if !status_ok || json["error"] != code {
        return Err(format!(
            "expected {status} {code}, got {} {}",
            r.status,
            r.text()
        ));
    }
    if (r.status == 401) != r.www_authenticate().starts_with("Basic ") {
        return Err(format!(
            "a Basic challenge if and only if 401: {} {:?}",
            r.status,
            r.www_authenticate()
        ));
    }
    Ok(())
}

/// Posts the token `pick` names to an RFC 7662 or 7009 endpoint as
/// `caller`: the answer, the client that authenticated and the token's
/// index, or `None` when the answer was the error (checked) that a caller
/// who does not authenticate, or a request without a token, must get.
async fn token_call(
    gw: &Gateway,
    model: &Model,
    path: &str,
    caller: Caller,
    pick: &Pick,
) -> Result<Option<(Reply, &'static str, Option<usize>)>, String> {
    let picked = model.pick(pick, authenticated(caller).ok());
    let params = picked
        .iter()
        .map(|(_, v)| format!("token={}", enc(v)))
        .collect();
    let r = post(gw, path, caller, params).await?;
    match (authenticated(caller), picked) {
        (Err((status, limited)), _) => {
            // RFC 7662 2.3: introspection answers 401 however they came.
            let status = if path == INTROSPECT { 401 } else { status };
            refused(&r, "invalid_client", status, limited).map(|()| None)
        }
        (Ok(_), None) => refused(&r, "invalid_request", 400, false).map(|()| None),
        (Ok(client), Some((index, _))) => Ok(Some((r, client, index))),
    }
}

async fn run_op(gw: &Gateway, model: &mut Model, op: &Op) -> Result<(), String> {
    match op {
        Op::Use(pick) => {
            let (index, value) = model.pick(pick, None).unzip();
            let r = match &value {
                Some(token) => get_with_token(&gw.url("/orders/7"), token).await,
                None => get(&gw.url("/orders/7"), &[]).await?,
            };
            let active = index.flatten().is_some_and(|i| {
                matches!(model.tokens[i].kind, Kind::Access { .. }) && model.active(i)
            });
            // RFC 6750 3.1: an empty token is a malformed request.
            let wanted = match (active, value.as_deref()) {
                (true, _) => 200,
                (false, Some("")) => 400,
                (false, _) => 401,
            };
            if r.status != wanted {
                return Err(format!(
                    "the gateway answered {}, not {wanted}: {}",
                    r.status,
                    r.www_authenticate()
                ));
            }
        }
        Op::Introspect(caller, pick) => {
            let Some((r, client, index)) = token_call(gw, model, INTROSPECT, *caller, pick).await?
            else {
                return Ok(());
            };
            let json: Value =
                serde_json::from_slice(&r.body).map_err(|_| format!("not JSON: {}", r.text()))?;
            // A refresh token is active only to the client it was issued to.
            let shown = |&i: &usize| {
                let t = &model.tokens[i];
                model.active(i) && (matches!(t.kind, Kind::Access { .. }) || t.client == client)
            };
            match index.filter(shown).map(|i| &model.tokens[i]) {
                Some(t) => {
                    // What the answer calls it: an access token by its
                    // `token_type`, a refresh token in `token_use` alone.
                    let (kind, token_type, token_use) = match t.kind {
                        Kind::Access { .. } => ("access token", Some("Bearer"), None),
                        Kind::Refresh { .. } => ("refresh token", None, Some("refresh_token")),
                    };
                    let seen = (
                        json["active"].as_bool(),
                        json["token_type"].as_str(),
                        json["token_use"].as_str(),
                        json["client_id"].as_str(),
                    );
                    if r.status != 200
                        || seen != (Some(true), token_type, token_use, Some(t.client))
                    {
                        return Err(format!(
                            "expected an active {kind} of {}: {}",
                            t.client,
                            r.text()
                        ));
                    }
                }
                None => {
                    if r.status != 200 || json != serde_json::json!({ "active": false }) {
                        return Err(format!(
                            "expected {{\"active\": false}} alone: {} {}",
                            r.status,
                            r.text()
                        ));
                    }
                }
            }
        }
        Op::Revoke(caller, pick) => {
            let Some((r, client, index)) = token_call(gw, model, REVOKE, *caller, pick).await?
            else {
                return Ok(());
            };
            // RFC 7009 2.1: another client's valid token is refused, and
            // left be.
            if let Some(i) = index {
                let token = &model.tokens[i];
                if token.client != client && model.active(i) {
                    return refused(&r, "unauthorized_client", 400, false);
                }
            }
            if r.status != 200 {
                return Err(format!("revocation answered {}: {}", r.status, r.text()));
            }
            if let Some(i) = index {
                let active = model.active(i);
                let token = &mut model.tokens[i];
                if token.client == client {
                    match &mut token.kind {
                        Kind::Refresh { grant } => model.grants[*grant].ended = true,
                        Kind::Access { revoked, .. } if active => *revoked = true,
                        Kind::Access { .. } => {}
                    }
                }
            }
        }
        Op::Refresh(caller, pick) => {
            let mut params = vec!["grant_type=refresh_token".to_owned()];
            let param = model.pick(pick, authenticated(*caller).ok());
            params.extend(
                param
                    .iter()
                    .map(|(_, v)| format!("refresh_token={}", enc(v))),
            );
            let r = post(gw, TOKEN, *caller, params).await?;
            let client = match authenticated(*caller) {
                Ok(client) => client,
                Err((status, limited)) => return refused(&r, "invalid_client", status, limited),
            };
            if client == "plain" {
                return refused(&r, "unauthorized_client", 400, false);
            }
            let Some((index, _)) = param else {
                return refused(&r, "invalid_request", 400, false);
            };
            let Some(i) = index.filter(|&i| matches!(model.tokens[i].kind, Kind::Refresh { .. }))
            else {
                return refused(&r, "invalid_grant", 400, false);
            };
            if model.tokens[i].client != client {
                return refused(&r, "invalid_grant", 400, false);
            }
            let Kind::Refresh { grant } = model.tokens[i].kind else {
                unreachable!("a refresh token");
            };
            let g = &mut model.grants[grant];
            if g.ended {
                return refused(&r, "invalid_grant", 400, false);
            }
            // The current token rotates (and, with the grace, may then be
            // used once more); the one it replaced, within the grace, is a
            // retry that rotates again but leaves nothing to retry; any
            // other is a replay, which ends the grant.
            let retry = if g.current == i {
                model.grace.then_some(i)
            } else if g.retry == Some(i) {
                None
            } else {
                g.ended = true;
                return refused(&r, "invalid_grant", 400, false);
            };
            if r.status != 200 {
                return Err(format!("expected a rotation: {} {}", r.status, r.text()));
            }
            model.add(client, &r.json(), Some(grant))?;
            model.grants[grant].retry = retry;
        }
    }
    Ok(())
}

/// What each forgery changes in a token the server would issue: a session's
/// type, a generic or no type, expired, another issuer.
const FORGERIES: [(Option<&str>, i64, &str); 5] = [
    (Some("session+jwt"), 3600, ISS),
    (Some("JWT"), 3600, ISS),
    (None, 3600, ISS),
    (Some("at+jwt"), -3600, ISS),
    (Some("at+jwt"), 3600, "https://elsewhere.test"),
];

/// A token for `svc` signed with the server's key (kid `k1`): with `typ`,
/// expiring `exp_in` seconds from now, from `iss`, with id `jti`.
fn mint(
    key: &jsonwebtoken::EncodingKey,
    (typ, exp_in, iss): (Option<&str>, i64, &str),
    jti: &str,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    header.typ = typ.map(str::to_owned);
    let claims = serde_json::json!({
        "iss": iss, "sub": "svc", "aud": "orders-api", "client_id": "svc",
        "scope": "orders:read", "iat": now - 10, "exp": now + exp_in, "jti": jti,
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// The `authorization_server:` lines of a gateway with the reuse grace.
const GRACE: &str = "  refresh_token_reuse_grace: 60s\n";

/// Gateways whose built-in server signs with a key the test also holds:
/// without and with the reuse grace.
struct Lab {
    gws: [Gateway; 2],
    key: jsonwebtoken::EncodingKey,
    forged: Vec<String>,
    _upstream: Upstream,
    _keys: tempfile::TempDir,
}

/// A case's first tokens, issued by `gw` (with the reuse grace or not):
/// the control of the forgeries, and a client credentials grant for each
/// client.
async fn first_tokens(
    gw: &Gateway,
    grace: bool,
    key: &jsonwebtoken::EncodingKey,
    forged: &[String],
) -> Result<Model, String> {
    let mut model = Model {
        forged: forged.to_vec(),
        grace,
        ..Model::default()
    };
    // The control of the forgeries: without a fault, a token signed with the
    // server's key is one of its access tokens, though it never issued it.
    model.tokens.push(Issued {
        value: mint(
            key,
            (Some("at+jwt"), 3600, ISS),
            &scopegate::issuer::random_token().unwrap(),
        ),
        client: "svc",
        kind: Kind::Access {
            grant: None,
            revoked: false,
        },
    });
    for client in ["svc", "other", "plain"] {
        model.add(client, &client_credentials(gw, client).await, None)?;
    }
    Ok(model)
}

async fn check(lab: &Lab, (grace, ops): (bool, Vec<Op>)) -> Result<(), String> {
    let gw = &lab.gws[usize::from(grace)];
    let mut model = first_tokens(gw, grace, &lab.key, &lab.forged).await?;
    for (n, op) in ops.iter().enumerate() {
        run_op(gw, &mut model, op)
            .await
            .map_err(|e| format!("operation {n} of {ops:?}: {e}"))?;
    }
    for i in 0..model.tokens.len() {
        if matches!(model.tokens[i].kind, Kind::Access { .. }) {
            run_op(gw, &mut model, &Op::Use(Pick::Issued(i)))
                .await
                .map_err(|e| format!("after {ops:?}, access token {i}: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn token_lifecycles_follow_their_grants() {
    let runtime = runtime();
    let keys = tempfile::tempdir().unwrap();
    let (path, pem) = write_key(keys.path(), "signing.pem");
    let keys_yaml = signing_key_yaml("k1", &path);
    let (upstream, gw) = runtime.block_on(start(&keys_yaml));
    let with_grace = runtime.block_on(Gateway::start(&config(
        upstream.addr,
        &format!("{keys_yaml}{GRACE}"),
    )));
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let lab = Lab {
        gws: [gw, with_grace],
        forged: FORGERIES.iter().map(|f| mint(&key, *f, "forged")).collect(),
        key,
        _upstream: upstream,
        _keys: keys,
    };
    run_campaign(
        &runtime,
        &lab,
        128,
        (any::<bool>(), proptest::collection::vec(op(), 1..12)),
        check,
    );
}

/// A step of the campaigns on a store that outlives a gateway: an operation
/// on one of the replicas, or a restart of one.
#[derive(Debug, Clone)]
enum Step {
    On(usize, Op),
    Restart(usize),
}

/// Whether the case's deployment has the reuse grace, and its steps.
fn steps(replicas: usize) -> impl Strategy<Value = (bool, Vec<Step>)> {
    (
        any::<bool>(),
        proptest::collection::vec(
            prop_oneof![
                8 => (0..replicas, op()).prop_map(|(r, op)| Step::On(r, op)),
                1 => (0..replicas).prop_map(Step::Restart),
            ],
            1..16,
        ),
    )
}

/// Gateways sharing a store that keeps state across restarts: a file (one
/// gateway at a time can hold it) or a redis server (replicas).
struct Shared {
    upstream: Upstream,
    key: jsonwebtoken::EncodingKey,
    key_path: std::path::PathBuf,
    forged: Vec<String>,
    replicas: usize,
    redis: Option<RedisServer>,
    _keys: tempfile::TempDir,
}

impl Shared {
    /// Its upstream serves on `runtime`.
    fn new(runtime: &tokio::runtime::Runtime, replicas: usize, redis: Option<RedisServer>) -> Self {
        let keys = tempfile::tempdir().unwrap();
        let (key_path, pem) = write_key(keys.path(), "signing.pem");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        Self {
            upstream: runtime.block_on(Upstream::start()),
            forged: FORGERIES.iter().map(|f| mint(&key, *f, "forged")).collect(),
            key,
            key_path,
            replicas,
            redis,
            _keys: keys,
        }
    }

    /// The config of a case's gateways: the redis server's, or a file of
    /// the case's own in `dir`; with the reuse grace or not.
    fn yaml(&self, dir: &Path, grace: bool) -> String {
        let store = match &self.redis {
            Some(redis) => format!("{{ redis: \"{}\" }}", redis.url()),
            None => format!("{{ file: \"{}\" }}", dir.join("state.redb").display()),
        };
        config(
            self.upstream.addr,
            &format!(
                "{}  store: {store}\n{}",
                signing_key_yaml("k1", &self.key_path),
                if grace { GRACE } else { "" }
            ),
        )
    }
}

/// Runs `steps` on the replicas of a fresh deployment; every token stays
/// what the one model says, whichever replica is asked and however often
/// they restarted. Tokens are new in every case, so a redis server shared
/// by the cases holds nothing a case knows of.
async fn check_shared(lab: &Shared, (grace, steps): (bool, Vec<Step>)) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let yaml = lab.yaml(dir.path(), grace);
    let mut gws = Vec::new();
    for _ in 0..lab.replicas {
        gws.push(Gateway::start(&yaml).await);
    }
    let mut model = first_tokens(&gws[0], grace, &lab.key, &lab.forged).await?;
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::On(r, op) => run_op(&gws[*r], &mut model, op)
                .await
                .map_err(|e| format!("step {n} of {steps:?}: {e}"))?,
            // Stopped before the next opens the store: a file is held by
            // one gateway at a time.
            Step::Restart(r) => {
                gws.remove(*r).stop().await;
                gws.insert(*r, Gateway::start(&yaml).await);
            }
        }
    }
    for (r, gw) in gws.iter().enumerate() {
        for i in 0..model.tokens.len() {
            if matches!(model.tokens[i].kind, Kind::Access { .. }) {
                run_op(gw, &mut model, &Op::Use(Pick::Issued(i)))
                    .await
                    .map_err(|e| {
                        format!("after {steps:?}, access token {i} at replica {r}: {e}")
                    })?;
            }
        }
    }
    for gw in gws {
        gw.stop().await;
    }
    Ok(())
}

/// The lifecycle campaign on a file store, restarted now and then: used
/// refresh tokens, ended grants and revocations survive each restart.
#[test]
fn token_lifecycles_survive_restarts_on_a_file_store() {
    let runtime = runtime();
    let lab = Shared::new(&runtime, 1, None);
    run_campaign(&runtime, &lab, 48, steps(1), check_shared);
}

/// The lifecycle campaign on two replicas sharing a redis store, each
/// operation on either of them, and each now and then restarted.
#[test]
fn token_lifecycles_hold_across_replicas_on_a_redis_store() {
    let runtime = runtime();
    let Some(redis) = runtime.block_on(RedisServer::start()) else {
        return;
    };
    let lab = Shared::new(&runtime, 2, Some(redis));
    run_campaign(&runtime, &lab, 48, steps(2), check_shared);
}
