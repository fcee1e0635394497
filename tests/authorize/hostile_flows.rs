//! Generated sign-in flows, from the first page to the last token request,
//! against a reference of RFC 6749 4.1 (with RFC 7636 PKCE) as the built-in
//! server applies it, and of what the user agreed to.
//!
//! Each case starts from a valid authorization request (any registered
//! client and redirect URI, with or without `scope`, a nasty `state`) and
//! posts the sign-in form, then the consent form, as a browser would, but
//! now and then changes what it posts: a hidden field (client, redirect
//! URI, scope, PKCE challenge, state, a repeated or an unknown parameter),
//! the CSRF token or cookie, the user, the password, the session cookie
//! (missing, forged, another user's, a device cookie, an access token), or
//! the button. Every code it gets is then redeemed one to three times, by
//! its client or another (unknown, or not allowed the grant), with the
//! right verifier or not, with the redirect URI or without. The reference
//! says:
//! - a form with a repeated `client_id` or `redirect_uri`, or a client or
//!   redirect URI that does not check out, gets an error page, never a
//!   redirect; any other fault in the request (another parameter sent
//!   twice too) redirects to its own redirect URI with the error, the
//!   `state` as posted (none when posted twice) and `iss`;
//! - sign-in needs the double-submit CSRF pair and the user's password; a
//!   wrong one gets the sign-in page again (400, or 429 once limited) and no
//!   session;
//! - approve and deny need a valid session and its CSRF token; without a
//!   session the sign-in page comes back; a code goes only to the posted
//!   redirect URI, registered for the posted client;
//! - a request with scopes none of which the user may grant is
//!   `invalid_scope` at its redirect URI, after sign-in, on a signed-in
//!   visit and at approval (RFC 6749 3.3), where a code of no scope would
//!   get a token response naming none;
//! - the code redeems once, only for its client, its redirect URI and its
//!   PKCE verifier; any use after the first revokes what it issued (the
//!   access token at the gateway, the refresh token at the token endpoint);
//! - the token is for the session's user and the code's client, and grants
//!   the requested scopes that the client and the user may have, and, when
//!   nothing was changed in the consent form, exactly the scopes the consent
//!   page showed.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 160).

use super::hostile_requests::{registered, repeated_names, scopes, REDIRECTS};
use super::*;

use proptest::prelude::*;

/// Clients registered for the authorization code grant.
const CODE_CLIENTS: [&str; 4] = ["spa", "spa2", "web", "wide"];

/// A change to the form a page gave.
#[derive(Debug, Clone)]
enum Tamper {
    Client(&'static str),
    RedirectUri(&'static str),
    Scope(&'static str),
    /// Both `code_challenge` and `code_challenge_method` removed.
    DropChallenge,
    /// Another valid challenge, of [`Flow::other`]'s verifier.
    OtherChallenge,
    State(&'static str),
    /// A parameter sent twice.
    Repeat(&'static str),
    /// A parameter the server does not know, which it ignores.
    Unknown,
}

/// The CSRF pair of the sign-in form (double submit: cookie and field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginCsrf {
    /// As the page gave them.
    Page,
    /// Both from another sign-in page: a pair, so it passes.
    OtherPage,
    NoField,
    NoCookie,
    /// The field from another page, the cookie from this one.
    Mismatched,
}

/// The cookie sent with the consent form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    /// The session this flow's sign-in set.
    Own,
    Missing,
    /// Its payload changed.
    Forged,
    /// Bob's session (a valid one, of another user).
    Bob,
    /// Bob's device cookie's value, under the session cookie's name.
    Device,
    /// An access token, under the session cookie's name.
    AccessToken,
}

/// The CSRF field of the consent form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsentCsrf {
    /// The one the consent page gave (this flow's session's).
    Page,
    /// Bob's session's.
    Bob,
    /// The sign-in page's double-submit token.
    SignInPage,
    Missing,
}

/// Who asks for the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presenter {
    /// The code's client (with its secret if it has one).
    Own,
    /// Another public client registered for codes.
    OtherClient,
    /// A client nobody registered.
    Unknown,
    /// A confidential client not allowed the grant, with its secret.
    NotAllowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verifier {
    /// The verifier of the flow's challenge.
    Flow,
    /// The verifier of [`Tamper::OtherChallenge`]'s challenge.
    Other,
    Missing,
    /// Too short to be one.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedirectAt {
    /// The redirect URI of the code.
    Same,
    Missing,
    /// Another URI registered for `spa`.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    presenter: Presenter,
    verifier: Verifier,
    redirect: RedirectAt,
}

#[derive(Debug, Clone)]
struct Flow {
    client: &'static str,
    /// A registered URI of the client; `None` to leave it out (allowed when
    /// the client has only one).
    redirect_uri: Option<&'static str>,
    scope: Option<&'static str>,
    /// Whether the request has a PKCE challenge (public clients always).
    pkce: bool,
    state: Option<&'static str>,
    user: &'static str,
    right_password: bool,
    login_csrf: LoginCsrf,
    login_tamper: Option<Tamper>,
    /// After signing in, fetch the authorization request again: the
    /// consent page comes from the session, not from the sign-in.
    revisit: bool,
    session: Session,
    consent_csrf: ConsentCsrf,
    action: &'static str,
    consent_tamper: Option<Tamper>,
    attempts: Vec<Attempt>,
}

fn tamper() -> impl Strategy<Value = Option<Tamper>> {
    prop_oneof![
        12 => Just(None),
        1 => prop::sample::select(vec!["spa", "spa2", "web", "wide", "svc", "nobody"])
            .prop_map(|c| Some(Tamper::Client(c))),
        1 => prop::sample::select(&REDIRECTS[..])
        .prop_map(|u| Some(Tamper::RedirectUri(u))),
        1 => prop::sample::select(vec!["orders:read", "orders:read admin", "reports:read", "admin", " ", ""])
            .prop_map(|s| Some(Tamper::Scope(s))),
        1 => prop::sample::select(vec![
            Some(Tamper::DropChallenge),
            Some(Tamper::OtherChallenge),
            Some(Tamper::State("other<state>")),
            Some(Tamper::State("")),
            Some(Tamper::Repeat("client_id")),
            Some(Tamper::Repeat("response_type")),
            Some(Tamper::Repeat("scope")),
            Some(Tamper::Repeat("state")),
            Some(Tamper::Unknown),
        ]),
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let presenter = prop_oneof![
        8 => Just(Presenter::Own),
        1 => prop::sample::select(vec![Presenter::OtherClient, Presenter::Unknown, Presenter::NotAllowed]),
    ];
    let verifier = prop_oneof![
        8 => Just(Verifier::Flow),
        1 => prop::sample::select(vec![Verifier::Other, Verifier::Missing, Verifier::Malformed]),
    ];
    let redirect = prop_oneof![
        8 => Just(RedirectAt::Same),
        1 => prop::sample::select(vec![RedirectAt::Missing, RedirectAt::Other]),
    ];
    (presenter, verifier, redirect).prop_map(|(presenter, verifier, redirect)| Attempt {
        presenter,
        verifier,
        redirect,
    })
}

fn flow() -> impl Strategy<Value = Flow> {
    let start = prop::sample::select(CODE_CLIENTS.to_vec()).prop_flat_map(|client| {
        let uris: Vec<Option<&'static str>> = match client {
            "spa" => registered(client).iter().copied().map(Some).collect(),
            _ => vec![Some(registered(client)[0]), None],
        };
        (
            Just(client),
            prop::sample::select(uris),
            prop::sample::select(vec![
                None,
                Some("orders:read"),
                Some(scopes(client)[1 % scopes(client).len()]),
                Some(" "),
                Some("orders:read orders:read"),
            ]),
            // A confidential client may leave PKCE out.
            if client == "web" {
                any::<bool>().boxed()
            } else {
                Just(true).boxed()
            },
            prop::sample::select(vec![Some(NASTY_STATE), Some("s"), None]),
        )
    });
    // Wrong passwords only for users whose sign-ins may be limited (`dave`
    // signs in right now and then, and may get 429 for it), so that the
    // sign-in limit (five failures a minute) never locks out the others.
    let user = prop_oneof![
        6 => prop::sample::select(vec!["alice", "bob", "carol"]).prop_map(|u| (u, true)),
        1 => (prop::sample::select(vec!["dave", "mallory", "ALICE"]), any::<bool>()),
    ];
    let sign_in = (
        user,
        prop_oneof![
            12 => Just(LoginCsrf::Page),
            1 => prop::sample::select(vec![
                LoginCsrf::OtherPage,
                LoginCsrf::NoField,
                LoginCsrf::NoCookie,
                LoginCsrf::Mismatched,
            ]),
        ],
        tamper(),
        prop::bool::weighted(0.3),
    );
    let consent = (
        prop_oneof![
            12 => Just(Session::Own),
            1 => prop::sample::select(vec![
                Session::Missing,
                Session::Forged,
                Session::Bob,
                Session::Device,
                Session::AccessToken,
            ]),
        ],
        prop_oneof![
            12 => Just(ConsentCsrf::Page),
            1 => prop::sample::select(vec![ConsentCsrf::Bob, ConsentCsrf::SignInPage, ConsentCsrf::Missing]),
        ],
        prop_oneof![
            10 => Just("approve"),
            2 => Just("deny"),
            1 => Just("APPROVE"),
        ],
        tamper(),
    );
    (
        start,
        sign_in,
        consent,
        prop::collection::vec(attempt(), 1..=3),
    )
        .prop_map(
            |(
                (client, redirect_uri, scope, pkce, state),
                ((user, right_password), login_csrf, login_tamper, revisit),
                (session, consent_csrf, action, consent_tamper),
                attempts,
            )| Flow {
                client,
                redirect_uri,
                scope,
                pkce,
                state,
                user,
                right_password,
                login_csrf,
                login_tamper,
                revisit,
                session,
                consent_csrf,
                action,
                consent_tamper,
                attempts,
            },
        )
}

/// Applies `tamper` to a page's form; `other` is the challenge that
/// [`Tamper::OtherChallenge`] puts in.
fn tampered(mut form: Params, tamper: Option<&Tamper>, other: &str) -> Params {
    match tamper {
        None => form,
        Some(Tamper::Client(c)) => with(form, "client_id", c),
        Some(Tamper::RedirectUri(u)) => with(form, "redirect_uri", u),
        Some(Tamper::Scope(s)) => with(form, "scope", s),
        Some(Tamper::DropChallenge) => {
            without(without(form, "code_challenge"), "code_challenge_method")
        }
        Some(Tamper::OtherChallenge) => with(form, "code_challenge", other),
        Some(Tamper::State(s)) => with(form, "state", s),
        Some(Tamper::Repeat(name)) => {
            let again = form.iter().find(|(k, _)| k == name).cloned();
            form.extend(again);
            form
        }
        Some(Tamper::Unknown) => {
            form.push(("prompt".into(), "none".into()));
            form
        }
    }
}

/// An authorization request as the server reads a form: the fields it uses.
#[derive(Debug, Clone)]
struct Request {
    client: &'static str,
    redirect_uri: String,
    redirect_uri_sent: bool,
    /// The requested scopes the client may have (its own when none were).
    scope: Vec<&'static str>,
    state: Option<String>,
    challenge: Option<String>,
}

/// Why a form's request is refused.
#[derive(Debug)]
enum Refusal {
    /// An error page, never a redirect.
    Page,
    /// A redirect to the request's URI with this error.
    Redirect {
        to: String,
        error: &'static str,
        state: Option<String>,
    },
}

/// The request a form makes, by RFC 6749 4.1.1 and 4.1.2.1, RFC 7636 4.3
/// and the clients of `config`.
fn request_of(form: &Params) -> Result<Request, Refusal> {
    // RFC 6749 3.1: a parameter without a value counts as not sent.
    let sent: Vec<&(String, String)> = form.iter().filter(|(_, v)| !v.is_empty()).collect();
    let repeated = repeated_names(form);
    if repeated.contains(&"client_id") || repeated.contains(&"redirect_uri") {
        return Err(Refusal::Page);
    }
    let get = |name: &str| {
        sent.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let client = get("client_id")
        .and_then(|c| CODE_CLIENTS.iter().find(|k| **k == c))
        .copied()
        .ok_or(Refusal::Page)?;
    let allowed = registered(client);
    let redirect_uri = match get("redirect_uri") {
        Some(uri) if allowed.contains(&uri) => uri.to_owned(),
        Some(_) => return Err(Refusal::Page),
        None if client == "spa" => return Err(Refusal::Page),
        None => allowed[0].to_owned(),
    };
    let state = get("state")
        .filter(|_| !repeated.contains(&"state"))
        .map(str::to_owned);
    let refuse = |error| {
        Err(Refusal::Redirect {
            to: redirect_uri.clone(),
            error,
            state: state.clone(),
        })
    };
    if !repeated.is_empty() {
        return refuse("invalid_request");
    }
    match get("response_type") {
        Some("code") => {}
        Some(_) => return refuse("unsupported_response_type"),
        None => return refuse("invalid_request"),
    }
    let tokens: Option<Vec<&str>> = get("scope")
        .map(|s| s.split(' ').filter(|t| !t.is_empty()).collect())
        // What the consent page shows, and the form then posts, is the
        // client's own scopes when the request named none.
        .filter(|t: &Vec<&str>| !t.is_empty());
    let mut scope: Vec<&'static str> = Vec::new();
    match tokens {
        None => scope.extend(scopes(client)),
        Some(tokens) => {
            for token in tokens {
                let Some(known) = scopes(client).iter().find(|s| **s == token) else {
                    return refuse("invalid_scope");
                };
                if !scope.contains(known) {
                    scope.push(known);
                }
            }
        }
    }
    let challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (Some(c), Some("S256")) => Some(c.to_owned()),
        (None, None) => None,
        _ => return refuse("invalid_request"),
    };
    if challenge.is_none() && client != "web" {
        return refuse("invalid_request");
    }
    Ok(Request {
        client,
        redirect_uri_sent: get("redirect_uri").is_some(),
        redirect_uri,
        scope,
        state,
        challenge,
    })
}

/// The scopes of `request` that `user` may grant (`carol` only `orders:read`).
fn user_scope(request: &Request, user: &str) -> Vec<&'static str> {
    request
        .scope
        .iter()
        .copied()
        .filter(|s| user != "carol" || *s == "orders:read")
        .collect()
}

/// The refusal of `request` once `user` signed in, when it has scopes and
/// the user may grant none of them: `invalid_scope` at its redirect URI.
fn no_scope_refusal(request: &Request, user: &str) -> Option<Refusal> {
    (!request.scope.is_empty() && user_scope(request, user).is_empty()).then(|| Refusal::Redirect {
        to: request.redirect_uri.clone(),
        error: "invalid_scope",
        state: request.state.clone(),
    })
}

/// `Err` unless `r` is an HTML page with one of `status`, the security
/// headers and no redirect.
fn page(r: &Reply, status: &[u16], what: &str) -> Result<(), String> {
    page_faults(r, status).map_err(|e| format!("{what}: {e}"))
}

/// `Err` unless `r` redirects to `to` with `params` (`None`: any value),
/// `iss`, and no parameter twice.
fn redirected(
    r: &Reply,
    to: &str,
    params: &[(&str, Option<&str>)],
    what: &str,
) -> Result<HashMap<String, String>, String> {
    let (base, got) = redirect_parts(r).map_err(|e| format!("{what}: {e}"))?;
    let wanted = params.iter().all(|(name, value)| match value {
        Some(v) => got.get(*name).map(String::as_str) == Some(*v),
        None => got.contains_key(*name),
    });
    if base != to || !wanted || got.get("iss").map(String::as_str) != Some(ISS) {
        return Err(format!(
            "{what}: want a redirect to {to} with {params:?}, got {base} {got:?}"
        ));
    }
    Ok(got)
}

/// `Err` unless `r` is `refusal`.
fn refused(r: &Reply, refusal: &Refusal, what: &str) -> Result<(), String> {
    match refusal {
        Refusal::Page => page(r, &[400], what),
        Refusal::Redirect { to, error, state } => {
            let got = redirected(
                r,
                to,
                &[("error", Some(error)), ("error_description", None)],
                what,
            )?;
            if got.get("state") != state.as_ref() || got.contains_key("code") {
                return Err(format!(
                    "{what}: state {:?} (want {state:?}) or a code in {got:?}",
                    got.get("state")
                ));
            }
            Ok(())
        }
    }
}

/// The scopes a consent page lists (each item names its scope last).
fn shown_scopes(html: &str) -> Vec<String> {
    html.split("<li>")
        .skip(1)
        .filter_map(|item| {
            let item = unescape(item.split("</li>").next()?);
            if item == "Know who you are" {
                return None;
            }
            Some(match item.strip_suffix(')') {
                Some(rest) => rest.rsplit_once('(')?.1.to_owned(),
                None => item.strip_prefix("Use ")?.to_owned(),
            })
        })
        .collect()
}

/// The gateway, Bob's device cookie's value, and an access token (neither
/// of which is a session).
struct Lab {
    _upstream: Upstream,
    gw: Gateway,
    bob_device: String,
    access_token: String,
}

impl Lab {
    async fn start() -> Self {
        let (upstream, gw) = start().await;
        let c = pkce();
        let p = params("spa", APP_CB, "orders:read", Some(&c.challenge));
        let (page, bob_session) = consent(&gw, &p, "bob").await;
        let bob_device = cookie_pair(&page, &device_cookie("bob"))
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        let code = code_with_session(&gw, &p, &bob_session).await;
        let r = spa_exchange(&gw, &code, Some(&c.verifier)).await;
        let access_token = s(&r.json(), "access_token");
        Self {
            _upstream: upstream,
            gw,
            bob_device,
            access_token,
        }
    }
}

/// A fresh session of Bob's (sessions end after ten minutes, and a
/// campaign may run longer) and its CSRF token.
async fn bob_session(gw: &Gateway) -> (String, String) {
    let p = params("spa", APP_CB, "orders:read", Some(&pkce().challenge));
    let (page, session) = consent(gw, &p, "bob").await;
    (session, field(&hidden_fields(&page.text()), "csrf"))
}

/// The code's redemption state.
#[derive(Default)]
struct Redemption {
    used: bool,
    /// The access and refresh token of the one successful redemption.
    issued: Option<(String, Option<String>)>,
    /// A use after the first by the code's own client: what it issued is
    /// revoked (another client's is refused and ends nothing).
    replayed: bool,
}

/// One token request with `code`, judged; updates `state`.
async fn redeem(
    gw: &Gateway,
    code: &str,
    record: &Request,
    user: &str,
    verifiers: (&str, &str),
    attempt: Attempt,
    state: &mut Redemption,
) -> Result<(), String> {
    let (client, secret) = match attempt.presenter {
        Presenter::Own => (record.client, (record.client == "web").then_some(SECRET)),
        Presenter::OtherClient if record.client == "spa" => ("spa2", None),
        Presenter::OtherClient => ("spa", None),
        Presenter::Unknown => ("nobody", None),
        Presenter::NotAllowed => ("svc", Some(SECRET)),
    };
    let other_uri = if record.redirect_uri == APP_CB2 {
        APP_CB
    } else {
        APP_CB2
    };
    let redirect_uri = match attempt.redirect {
        RedirectAt::Same => Some(record.redirect_uri.as_str()),
        RedirectAt::Missing => None,
        RedirectAt::Other => Some(other_uri),
    };
    let verifier = match attempt.verifier {
        Verifier::Flow => Some(verifiers.0),
        Verifier::Other => Some(verifiers.1),
        Verifier::Missing => None,
        Verifier::Malformed => Some("too-short"),
    };
    let r = exchange(
        gw,
        Exchange {
            client,
            secret,
            code,
            redirect_uri,
            verifier,
        },
    )
    .await;
    let what = format!("token request {attempt:?}");
    let error = |status: &[u16], code: &str| -> Result<(), String> {
        let body = r.json();
        if !status.contains(&r.status)
            || body["error"] != code
            || body.get("access_token").is_some()
        {
            return Err(format!(
                "{what}: want {status:?} {code}, got {} {}",
                r.status,
                r.text()
            ));
        }
        Ok(())
    };
    match attempt.presenter {
        // Refused before the code is looked at: it stays unused.
        // RFC 6749 5.2: 401 only for credentials in `Authorization`.
        Presenter::Unknown => return error(&[400, 429], "invalid_client"),
        Presenter::NotAllowed => return error(&[400], "unauthorized_client"),
        Presenter::Own | Presenter::OtherClient => {}
    }
    if state.used {
        state.replayed |= attempt.presenter == Presenter::Own;
        return error(&[400], "invalid_grant");
    }
    state.used = true;
    let redirect_ok = if record.redirect_uri_sent {
        redirect_uri == Some(record.redirect_uri.as_str())
    } else {
        redirect_uri.is_none_or(|u| u == record.redirect_uri)
    };
    let verifier_ok = match (&record.challenge, verifier) {
        (Some(challenge), Some(v)) => s256(v) == *challenge,
        (None, None) => true,
        _ => false,
    };
    if attempt.presenter != Presenter::Own || !redirect_ok || !verifier_ok {
        return error(&[400], "invalid_grant");
    }
    let body = r.json();
    if r.status != 200 || body["token_type"] != "Bearer" {
        return Err(format!(
            "{what}: want tokens, got {} {}",
            r.status,
            r.text()
        ));
    }
    let access = body["access_token"].as_str().unwrap_or_default().to_owned();
    let claims = jwt_part(&access, 1);
    let want_scope = user_scope(record, user).join(" ");
    if claims["sub"] != user
        || claims["client_id"] != record.client
        || claims["scope"] != want_scope.as_str()
    {
        return Err(format!(
            "{what}: want a token of {user} for {} with `{want_scope}`, got {claims}",
            record.client
        ));
    }
    let refresh = body["refresh_token"].as_str().map(str::to_owned);
    // Only `spa` is registered for refresh tokens.
    if refresh.is_some() != (record.client == "spa") {
        return Err(format!(
            "{what}: refresh token {refresh:?} for {}",
            record.client
        ));
    }
    state.issued = Some((access, refresh));
    Ok(())
}

/// After the redemptions: the access token works at the gateway as its
/// scopes say, and the refresh token refreshes, unless a replay revoked them.
async fn check_issued(gw: &Gateway, state: &Redemption, scope: &[&str]) -> Result<(), String> {
    let Some((access, refresh)) = &state.issued else {
        return Ok(());
    };
    let r = orders_status(gw, access).await;
    let want = match (state.replayed, scope.contains(&"orders:read")) {
        (true, _) => 401,
        (false, true) => 200,
        (false, false) => 403,
    };
    if r.status != want {
        return Err(format!(
            "the access token (replayed: {}): want {want}, got {} {}",
            state.replayed,
            r.status,
            r.www_authenticate()
        ));
    }
    if let Some(refresh) = refresh {
        let r = send(
            "POST",
            &gw.url(TOKEN),
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(encode(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "spa"),
            ])),
        )
        .await?;
        let want = if state.replayed { 400 } else { 200 };
        if r.status != want {
            return Err(format!(
                "the refresh token (replayed: {}): want {want}, got {} {}",
                state.replayed,
                r.status,
                r.text()
            ));
        }
    }
    Ok(())
}

async fn check(lab: &Lab, flow: Flow) -> Result<(), String> {
    let gw = &lab.gw;
    let (own, other) = (pkce(), pkce());
    // 1. The authorization request: valid, so the sign-in page.
    let mut start = vec![
        ("response_type".to_owned(), "code".to_owned()),
        ("client_id".to_owned(), flow.client.to_owned()),
    ];
    let mut add = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            start.push((k.to_owned(), v.to_owned()));
        }
    };
    add("redirect_uri", flow.redirect_uri);
    add("scope", flow.scope);
    add("state", flow.state);
    if flow.pkce {
        add("code_challenge", Some(&own.challenge));
        add("code_challenge_method", Some("S256"));
    }
    let sign_in_page = get_authorize(gw, &start, None).await;
    page(&sign_in_page, &[200], "sign-in page")?;
    let csrf_cookie = cookie_pair(&sign_in_page, "__Secure-sg_csrf");
    let csrf = csrf_cookie
        .split_once('=')
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    let another_page = get_authorize(gw, &start, None).await;
    let another_cookie = cookie_pair(&another_page, "__Secure-sg_csrf");
    let another_csrf = field(&hidden_fields(&another_page.text()), "csrf");

    // 2. Sign-in.
    let mut form = tampered(
        hidden_fields(&sign_in_page.text()),
        flow.login_tamper.as_ref(),
        &other.challenge,
    );
    let cookie = match flow.login_csrf {
        LoginCsrf::Page => Some(csrf_cookie.clone()),
        LoginCsrf::OtherPage => {
            form = with(form, "csrf", &another_csrf);
            Some(another_cookie.clone())
        }
        LoginCsrf::NoField => {
            form = without(form, "csrf");
            Some(csrf_cookie.clone())
        }
        LoginCsrf::NoCookie => None,
        LoginCsrf::Mismatched => {
            form = with(form, "csrf", &another_csrf);
            Some(csrf_cookie.clone())
        }
    };
    let password = if flow.right_password {
        PASSWORD
    } else {
        "wrong password"
    };
    form.push(("username".into(), flow.user.into()));
    form.push(("password".into(), password.into()));
    let r = post_authorize(gw, &form, cookie.as_deref()).await;
    let no_session = |r: &Reply, what: &str| match set_cookie(r, "__Secure-sg_session") {
        Some(c) => Err(format!("{what}: a session cookie was set: {c}")),
        None => Ok(()),
    };
    let signed_in_request = match request_of(&form) {
        Err(refusal) => {
            no_session(&r, "refused sign-in")?;
            return refused(&r, &refusal, "sign-in form");
        }
        Ok(request) => request,
    };
    if !matches!(flow.login_csrf, LoginCsrf::Page | LoginCsrf::OtherPage) {
        no_session(&r, "sign-in without the CSRF pair")?;
        return page(&r, &[403], "sign-in without the CSRF pair");
    }
    let known = ["alice", "bob", "carol", "dave"].contains(&flow.user);
    // `dave` only ever gets wrong passwords from other cases, so he may be
    // limited; the others never do.
    if !known || !flow.right_password || (flow.user == "dave" && r.status == 429) {
        no_session(&r, "failed sign-in")?;
        page(&r, &[400, 429], "failed sign-in")?;
        return if r.text().contains("<h1>Sign in</h1>") {
            Ok(())
        } else {
            Err("a failed sign-in did not show the sign-in page".to_owned())
        };
    }
    let consent_page = |r: &Reply, what: &str| {
        page(r, &[200], what)?;
        match r.text().contains("<h1>Allow access?</h1>") {
            true => Ok(()),
            false => Err(format!("{what}: no consent page: {}", r.text())),
        }
    };
    if let Some(refusal) = no_scope_refusal(&signed_in_request, flow.user) {
        return refused(&r, &refusal, "signed in, no scope the user may grant");
    }
    consent_page(&r, "signed in")?;
    let own_session = cookie_pair(&r, "__Secure-sg_session");
    let (consent_page, shown_request) = if flow.revisit {
        let again = get_authorize(gw, &start, Some(&own_session)).await;
        let request = request_of(&start).map_err(|e| format!("the first request: {e:?}"))?;
        if let Some(refusal) = no_scope_refusal(&request, flow.user) {
            return refused(
                &again,
                &refusal,
                "signed in again, no scope the user may grant",
            );
        }
        consent_page(&again, "signed in, the request again")?;
        (again, request)
    } else {
        (r, signed_in_request)
    };
    let shown = shown_scopes(&consent_page.text());
    let want_shown = user_scope(&shown_request, flow.user);
    if shown != want_shown {
        return Err(format!(
            "the consent page shows {shown:?}, want {want_shown:?}"
        ));
    }

    // 3. Consent.
    let mut form = tampered(
        hidden_fields(&consent_page.text()),
        flow.consent_tamper.as_ref(),
        &other.challenge,
    );
    let (bob_session, bob_csrf) =
        if flow.session == Session::Bob || flow.consent_csrf == ConsentCsrf::Bob {
            bob_session(gw).await
        } else {
            Default::default()
        };
    match flow.consent_csrf {
        ConsentCsrf::Page => {}
        ConsentCsrf::Bob => form = with(form, "csrf", &bob_csrf),
        ConsentCsrf::SignInPage => form = with(form, "csrf", &csrf),
        ConsentCsrf::Missing => form = without(form, "csrf"),
    }
    form.push(("action".into(), flow.action.into()));
    let forged = {
        let mut parts: Vec<String> = own_session.split('.').map(str::to_owned).collect();
        let last = parts[1].pop().unwrap_or('A');
        parts[1].push(if last == 'A' { 'B' } else { 'A' });
        parts.join(".")
    };
    let cookie = match flow.session {
        Session::Own => Some(own_session.clone()),
        Session::Missing => None,
        Session::Forged => Some(forged),
        Session::Bob => Some(bob_session),
        Session::Device => Some(format!("__Secure-sg_session={}", lab.bob_device)),
        Session::AccessToken => Some(format!("__Secure-sg_session={}", lab.access_token)),
    };
    let r = post_authorize(gw, &form, cookie.as_deref()).await;
    let request = match request_of(&form) {
        Err(refusal) => return refused(&r, &refusal, "consent form"),
        Ok(request) => request,
    };
    if !["approve", "deny"].contains(&flow.action) {
        return page(&r, &[400], "unknown action");
    }
    let (user, session_csrf) = match flow.session {
        Session::Own => (
            flow.user,
            field(&hidden_fields(&consent_page.text()), "csrf"),
        ),
        Session::Bob => ("bob", bob_csrf),
        _ => {
            page(&r, &[200], "consent without a session")?;
            return if r.text().contains("Your session ended") {
                Ok(())
            } else {
                Err(format!("consent without a session: {}", r.text()))
            };
        }
    };
    if form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v) != Some(&session_csrf) {
        return page(&r, &[403], "consent with another CSRF token");
    }
    let state = request.state.as_deref();
    if flow.action == "deny" {
        let got = redirected(
            &r,
            &request.redirect_uri,
            &[("error", Some("access_denied"))],
            "deny",
        )?;
        if got.get("state").map(String::as_str) != state || got.contains_key("code") {
            return Err(format!("deny: state {state:?} or a code: {got:?}"));
        }
        return Ok(());
    }
    if let Some(refusal) = no_scope_refusal(&request, user) {
        return refused(&r, &refusal, "approve, no scope the user may grant");
    }
    let got = redirected(&r, &request.redirect_uri, &[("code", None)], "approve")?;
    if got.get("state").map(String::as_str) != state {
        return Err(format!("approve: want state {state:?}: {got:?}"));
    }
    let code = got.get("code").cloned().unwrap_or_default();
    // What the user saw is what the token grants, unless the form changed.
    if flow.consent_tamper.is_none()
        && flow.session == Session::Own
        && user_scope(&request, user) != want_shown
    {
        return Err(format!(
            "consented to {want_shown:?}, the code grants {:?}",
            user_scope(&request, user)
        ));
    }

    // 4. Redemption.
    let mut state = Redemption::default();
    for attempt in &flow.attempts {
        redeem(
            gw,
            &code,
            &request,
            user,
            (&own.verifier, &other.verifier),
            *attempt,
            &mut state,
        )
        .await?;
    }
    check_issued(gw, &state, &user_scope(&request, user)).await
}

#[test]
fn hostile_sign_in_flows_get_what_rfc_6749_says() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    run_campaign(&runtime, &lab, 160, flow(), async |lab, flow| {
        check(lab, flow).await
    });
}
