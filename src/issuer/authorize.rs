//! The authorization endpoint (RFC 6749 4.1 with PKCE, RFC 7636, and RFC 9207
//! `iss`): sign-in and consent pages, then a redirect with a single-use code.
//!
//! No server-side session table: the sign-in session is a short-lived JWT in
//! an `HttpOnly; Secure; SameSite=Lax` cookie, signed with the server's key,
//! so any replica sharing the keys and the store can continue the flow. Every
//! form carries a CSRF token (double-submit before sign-in, bound to the
//! session after it).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::clients::Busy;
use super::keys::SigningKey;
use super::store::CodeRecord;
use super::token::{requested_scope, ScopeLimit};
use super::{random_token, read_form_pairs, AuthorizationServer};
use crate::auth::cache::digest;
use crate::auth::jwt::now_unix;
use crate::config::{Client, Grant};
use crate::proxy::Body;

/// Lifetime of an authorization code (seconds).
const CODE_TTL: u64 = 60;
/// Lifetime of a sign-in session (seconds).
const SESSION_TTL: u64 = 600;
/// The cookies' `__Secure-` prefix: a browser takes such a cookie only from
/// an HTTPS page and with `Secure`, so a plain-http page on a sibling host
/// cannot plant one (cookie tossing, which would defeat the double-submit
/// CSRF check before sign-in). Not `__Host-`, which requires `Path=/`: the
/// cookies would then go to every API behind the gateway.
const SESSION_COOKIE: &str = "__Secure-sg_session";
const CSRF_COOKIE: &str = "__Secure-sg_csrf";
/// Marks a browser that signed a user in before, so that failed sign-ins
/// from anywhere else cannot lock that user out of it (OWASP's device
/// cookies): its attempts are counted under the cookie, not the user name.
/// One per user ([`device_cookie_name`]), so users sharing a browser do
/// not overwrite each other's.
const DEVICE_COOKIE: &str = "__Secure-sg_device_";
/// The `aud` of device tokens: no API's, so no resource server that checks
/// audiences takes one for an access token.
const DEVICE_AUDIENCE: &str = "scopegate:device";
/// Lifetime of a device cookie (seconds): 30 days, renewed by every sign-in.
const DEVICE_TTL: u64 = 30 * 24 * 3600;
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#1a1a1a}h1{font-size:1.4rem}label{display:block;margin-top:1rem}input{display:block;width:100%;padding:.5rem;margin-top:.25rem;font-size:1rem;box-sizing:border-box}button{margin-top:1.25rem;margin-right:.5rem;padding:.6rem 1.2rem;font-size:1rem}ul{padding-left:1.2rem}.error{color:#a40000}";

/// A validated authorization request.
#[derive(Debug, Clone)]
struct AuthRequest {
    client: Client,
    redirect_uri: String,
    /// The request named `redirect_uri` (RFC 6749 4.1.3: then, and only
    /// then, the token request must repeat it).
    redirect_uri_sent: bool,
    scope: String,
    state: Option<String>,
    code_challenge: Option<String>,
}

/// Failure before the redirect URI is trusted: an error page, never a redirect.
struct PageError(StatusCode, String);

impl AuthorizationServer {
    /// `GET` shows sign-in or consent; `POST` handles their forms. `HEAD`
    /// is answered as `GET` (RFC 9110 9.3.2), without the body.
    pub(crate) async fn authorize(&self, request: Request<Incoming>) -> Response<Body> {
        let method = match request.method() {
            &Method::HEAD => Method::GET,
            other => other.clone(),
        };
        let headers = request.headers().clone();
        let params = if method == Method::GET {
            request
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        } else if method == Method::POST {
            match read_form_pairs(request).await {
                Ok(pairs) => pairs,
                // Its own status: 408 for a form that stopped arriving.
                Err(e) => {
                    let title = if e.status == StatusCode::REQUEST_TIMEOUT {
                        "Request timed out"
                    } else {
                        "Invalid request"
                    };
                    return self.page(e.status, title, &e.description, None);
                }
            }
        } else {
            let mut page = self.page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "Use GET or POST.",
                None,
            );
            page.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD, POST"),
            );
            return page;
        };
        let mut map = HashMap::new();
        let mut repeated: Vec<String> = Vec::new();
        // RFC 6749 3.1: a parameter without a value counts as not sent.
        for (k, v) in params.into_iter().filter(|(_, v)| !v.is_empty()) {
            match map.entry(k) {
                Entry::Occupied(sent) => {
                    if !repeated.contains(sent.key()) {
                        repeated.push(sent.key().clone());
                    }
                }
                Entry::Vacant(first) => {
                    first.insert(v);
                }
            }
        }
        // A repeated client or redirect URI leaves no redirect URI to trust.
        if let Some(k) = repeated
            .iter()
            .find(|k| *k == "client_id" || *k == "redirect_uri")
        {
            return self.page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                &format!("The parameter {k} is repeated."),
                None,
            );
        }
        // 1. Client and redirect URI first: until they check out, never redirect.
        let (client, redirect_uri) = match self.client_and_redirect(&map) {
            Ok(pair) => pair,
            Err(PageError(status, message)) => {
                return self.page(status, "This sign-in link is not valid", &message, None)
            }
        };
        // A `state` sent twice is none to echo.
        let state = map
            .get("state")
            .filter(|_| !repeated.iter().any(|k| k == "state"))
            .cloned();
        // 2. The rest is reported to the client at its redirect URI: any
        // other parameter sent twice is `invalid_request` (RFC 6749 4.1.2.1).
        if let Some(k) = repeated.first() {
            return self.redirect_error(
                &redirect_uri,
                "invalid_request",
                &format!("the parameter {k} is repeated"),
                state.as_deref(),
            );
        }
        let request = match self.validate_rest(client, redirect_uri.clone(), state.clone(), &map) {
            Ok(r) => r,
            Err((code, description)) => {
                return self.redirect_error(&redirect_uri, code, description, state.as_deref())
            }
        };
        let session = self.session(&headers);
        if method == Method::GET {
            return match session {
                Some((user, csrf)) => self.consent_page(&request, &user, &csrf),
                None => self.login_page(&request, &headers, None, StatusCode::OK),
            };
        }
        match map.get("action").map(String::as_str) {
            Some("login") => self.login(&request, &map, &headers).await,
            Some("approve") | Some("deny") => {
                let Some((user, csrf)) = session else {
                    return self.login_page(
                        &request,
                        &headers,
                        Some("Your session ended. Sign in again."),
                        StatusCode::OK,
                    );
                };
                if map.get("csrf") != Some(&csrf) {
                    return self.page(
                        StatusCode::FORBIDDEN,
                        "Request refused",
                        "The form expired or was not sent by this page.",
                        None,
                    );
                }
                if map.get("action").map(String::as_str) == Some("deny") {
                    return self.redirect_error(
                        &request.redirect_uri,
                        "access_denied",
                        "the user denied the request",
                        request.state.as_deref(),
                    );
                }
                self.approve(&request, &user).await
            }
            _ => self.page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "Unknown action.",
                None,
            ),
        }
    }

    fn client_and_redirect(
        &self,
        map: &HashMap<String, String>,
    ) -> Result<(Client, String), PageError> {
        let bad = |m: &str| PageError(StatusCode::BAD_REQUEST, m.to_owned());
        let client_id = map
            .get("client_id")
            .ok_or_else(|| bad("The request names no client."))?;
        // A client without the grant but with registered redirect URIs is
        // told so at its redirect URI (`unauthorized_client`, RFC 6749
        // 4.1.2.1); one with none gets the page below.
        let client = self
            .clients
            .client(client_id)
            .ok_or_else(|| bad("The application is not registered for sign-in."))?;
        let redirect_uri = match map.get("redirect_uri") {
            Some(uri) => uri.clone(),
            None if client.redirect_uris.len() == 1 => {
                client.redirect_uris.first().cloned().unwrap_or_default()
            }
            None => return Err(bad("The request names no redirect URI.")),
        };
        if !client
            .redirect_uris
            .iter()
            .any(|r| redirect_matches(r, &redirect_uri))
        {
            return Err(bad(
                "The redirect URI is not registered for this application.",
            ));
        }
        Ok((client.clone(), redirect_uri))
    }

    fn validate_rest(
        &self,
        client: Client,
        redirect_uri: String,
        state: Option<String>,
        map: &HashMap<String, String>,
    ) -> Result<AuthRequest, (&'static str, &'static str)> {
        if !client.grants.contains(&Grant::AuthorizationCode) {
            return Err((
                "unauthorized_client",
                "this client may not use the authorization code grant",
            ));
        }
        // Answers go in the query only (the metadata says so).
        if map.get("response_mode").is_some_and(|mode| mode != "query") {
            return Err(("invalid_request", "only response_mode=query is supported"));
        }
        match map.get("response_type").map(String::as_str) {
            Some("code") => {}
            Some(_) => {
                return Err((
                    "unsupported_response_type",
                    "only response_type=code is supported (no implicit grant)",
                ))
            }
            None => return Err(("invalid_request", "response_type is required")),
        }
        // A `scope` of blanks reads as left out, as the form's scope field
        // will be when posted back empty.
        let scope = requested_scope(map.get("scope"), &client.scopes, None, ScopeLimit::Client)
            .map_err(|_| {
                (
                    "invalid_scope",
                    "a requested scope is not allowed for this client",
                )
            })?;
        let code_challenge = match (
            map.get("code_challenge"),
            map.get("code_challenge_method").map(String::as_str),
        ) {
            (Some(challenge), Some("S256")) => Some(challenge.clone()),
            (None, Some(_)) => {
                return Err((
                    "invalid_request",
                    "code_challenge_method without code_challenge",
                ))
            }
            (Some(_), Some(_)) => {
                return Err((
                    "invalid_request",
                    "code_challenge_method must be S256 (plain is not allowed)",
                ))
            }
            (Some(_), None) => {
                return Err(("invalid_request", "code_challenge_method=S256 is required"))
            }
            (None, None) => None,
        };
        if let Some(c) = &code_challenge {
            let ok = c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err((
                    "invalid_request",
                    "code_challenge is not a base64url SHA-256",
                ));
            }
        }
        if client.secret_hash.is_none() && code_challenge.is_none() {
            return Err((
                "invalid_request",
                "public clients must use PKCE (code_challenge)",
            ));
        }
        Ok(AuthRequest {
            client,
            redirect_uri,
            redirect_uri_sent: map.contains_key("redirect_uri"),
            scope,
            state,
            code_challenge,
        })
    }

    async fn login(
        &self,
        request: &AuthRequest,
        map: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let csrf_cookie = cookie(headers, CSRF_COOKIE);
        if csrf_cookie.is_none() || map.get("csrf") != csrf_cookie.as_ref() {
            return self.page(
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form expired or was not sent by this page.",
                None,
            );
        }
        let username = map.get("username").cloned().unwrap_or_default();
        let password = map.get("password").cloned().unwrap_or_default();
        // A browser this user signed in from before has its own budget of
        // failures; every other one shares the user name's.
        let limiter_key = match self.device(headers, &username) {
            Some(device) => format!("device:{device}"),
            None => format!("user:{username}"),
        };
        let Some(mut attempt) = self.clients.begin_check(&limiter_key).await else {
            let mut page = self.login_page(
                request,
                headers,
                Some("Too many failed sign-ins. Wait a minute and try again."),
                StatusCode::TOO_MANY_REQUESTS,
            );
            page.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from_static(super::FAILURES_RETRY_AFTER),
            );
            return page;
        };
        let user = self.users.get(&username);
        let checked = self
            .clients
            .verify_password(
                user.map(|u| u.password_hash.as_str()),
                &password,
                Some(&mut attempt),
            )
            .await;
        let ok = match checked {
            Ok(ok) => ok,
            Err(Busy) => {
                let mut page = self.login_page(
                    request,
                    headers,
                    Some("Too many sign-ins at once. Try again in a moment."),
                    StatusCode::SERVICE_UNAVAILABLE,
                );
                page.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return page;
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            attempt.failed();
            // 400, not 401: a form sign-in has no `WWW-Authenticate`
            // challenge to send, which RFC 9110 15.5.2 requires with 401.
            return self.login_page(
                request,
                headers,
                Some("Wrong user name or password."),
                StatusCode::BAD_REQUEST,
            );
        };
        let (Ok(csrf), Ok(device)) = (random_token(), random_token()) else {
            return self.no_randomness();
        };
        let now = now_unix();
        let keys = &self.settings.keys;
        let session = match SigningKey::sign_with_first(
            keys,
            &self.signing_places,
            "session+jwt",
            json!({ "iss": self.settings.issuer, "sub": user.username, "csrf": csrf, "iat": now, "exp": now + SESSION_TTL }),
        )
        .await
        {
            Ok(s) => s,
            Err(_) => return self.page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "Could not start a session.", None),
        };
        let device = SigningKey::sign_with_first(
            keys,
            &self.signing_places,
            "device+jwt",
            json!({ "iss": self.settings.issuer, "sub": user.username, "aud": DEVICE_AUDIENCE, "jti": device, "iat": now, "exp": now + DEVICE_TTL }),
        )
        .await;
        let mut response = self.consent_page(request, &user.username, &csrf);
        let mut cookies = vec![format!(
            "{SESSION_COOKIE}={session}; HttpOnly; Secure; SameSite=Lax; Path={}; Max-Age={SESSION_TTL}",
            self.settings.paths.authorize
        )];
        // Without it the next sign-in counts as from an unknown browser.
        if let Ok(device) = device {
            cookies.push(format!(
                "{}={device}; HttpOnly; Secure; SameSite=Lax; Path={}; Max-Age={DEVICE_TTL}",
                device_cookie_name(&user.username),
                self.settings.paths.authorize
            ));
        }
        for cookie in cookies {
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(SET_COOKIE, v);
            }
        }
        response
    }

    /// The id of this browser's device cookie when it is valid and was set
    /// by a sign-in of `username`.
    fn device(&self, headers: &HeaderMap, username: &str) -> Option<String> {
        let token = cookie(headers, &device_cookie_name(username))?;
        let claims = self.verify_own(&token, "device+jwt", 0)?;
        if claims.get("sub")?.as_str()? != username
            || claims.get("aud")?.as_str()? != DEVICE_AUDIENCE
        {
            return None;
        }
        Some(claims.get("jti")?.as_str()?.to_owned())
    }

    /// The signed-in user and the session's CSRF token, from the cookie.
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let claims = self.verify_own(&token, "session+jwt", 0)?;
        let user = claims.get("sub")?.as_str()?.to_owned();
        let csrf = claims.get("csrf")?.as_str()?.to_owned();
        self.users.contains_key(&user).then_some((user, csrf))
    }

    async fn approve(&self, request: &AuthRequest, user: &str) -> Response<Body> {
        let Some(scope) = self.grantable_scope(request, user) else {
            return self.no_grantable_scope(request);
        };
        let (Ok(code), Ok(family)) = (random_token(), random_token()) else {
            return self.no_randomness();
        };
        let record = CodeRecord {
            client_id: request.client.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            redirect_uri_sent: request.redirect_uri_sent,
            scope,
            subject: user.to_owned(),
            code_challenge: request.code_challenge.clone(),
            expires_at: now_unix() + CODE_TTL,
            family,
        };
        if let Err(e) = self.store.put_code(&digest(&code), &record).await {
            self.count_store_error(&e);
            if let Some(suppressed) = self.store_failure_log.allow() {
                tracing::error!(store = self.store.kind(), error = %e, suppressed, "could not store an authorization code");
            }
            // The redirect URI is validated: the client hears of it (RFC 6749
            // 4.1.2.1), where a page would leave it waiting.
            return self.redirect_error(
                &request.redirect_uri,
                "temporarily_unavailable",
                "the authorization server is temporarily unavailable",
                request.state.as_deref(),
            );
        }
        let mut params = vec![("code", code.as_str())];
        if let Some(state) = &request.state {
            params.push(("state", state));
        }
        params.push(("iss", &self.settings.issuer));
        redirect(&request.redirect_uri, &params)
    }

    /// The requested scopes that `user` may grant (their `scopes`; all when
    /// unset), as the password grant limits them.
    fn user_scope(&self, request: &AuthRequest, user: &str) -> String {
        let allowed = self.users.get(user).and_then(|u| u.scopes.as_deref());
        request
            .scope
            .split(' ')
            .filter(|s| !s.is_empty() && allowed.is_none_or(|a| a.iter().any(|x| x == s)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// [`Self::user_scope`]; `None` when the request has scopes and `user`
    /// may grant none of them, which [`Self::no_grantable_scope`] answers:
    /// a code of no scope would get a token response without `scope`,
    /// which tells the client it got what it asked for (RFC 6749 3.3, 5.1),
    /// so it is refused, as the password grant refuses the same request.
    fn grantable_scope(&self, request: &AuthRequest, user: &str) -> Option<String> {
        let scope = self.user_scope(request, user);
        (!scope.is_empty() || request.scope.is_empty()).then_some(scope)
    }

    /// The `invalid_scope` redirect of a request whose scopes the user may
    /// grant none of.
    fn no_grantable_scope(&self, request: &AuthRequest) -> Response<Body> {
        self.redirect_error(
            &request.redirect_uri,
            "invalid_scope",
            "the user may grant none of the requested scopes",
            request.state.as_deref(),
        )
    }

    fn redirect_error(
        &self,
        redirect_uri: &str,
        code: &str,
        description: &str,
        state: Option<&str>,
    ) -> Response<Body> {
        let description = super::error_description(description.to_owned());
        let mut params = vec![("error", code), ("error_description", description.as_str())];
        if let Some(state) = state {
            params.push(("state", state));
        }
        params.push(("iss", &self.settings.issuer));
        redirect(redirect_uri, &params)
    }

    /// The page for a request that needed random values the system could
    /// not give ([`random_token`] fails closed).
    fn no_randomness(&self) -> Response<Body> {
        self.page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            "No randomness available.",
            None,
        )
    }

    /// The sign-in form. Its CSRF token is the browser's cookie when it
    /// holds one of ours, so that another sign-in page opened meanwhile (a
    /// second tab) does not make this one's form expire.
    fn login_page(
        &self,
        request: &AuthRequest,
        headers: &HeaderMap,
        error: Option<&str>,
        status: StatusCode,
    ) -> Response<Body> {
        let held = cookie(headers, CSRF_COOKIE).filter(|c| is_random_token(c));
        let Some(csrf) = held.or_else(|| random_token().ok()) else {
            return self.no_randomness();
        };
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>Sign in</h1><p><strong>{}</strong> wants to access your account.</p>",
            esc(&request.client.name)
        );
        if let Some(error) = error {
            let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
        }
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{action}\">{hidden}<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"login\">\
             <label for=\"username\">User name<input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
             <label for=\"password\">Password<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>",
            action = esc(&self.settings.paths.authorize),
            hidden = hidden_fields(request),
        );
        let mut response = self.page(status, "Sign in", "", Some((&body, &request.redirect_uri)));
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={csrf}; HttpOnly; Secure; SameSite=Lax; Path={}; Max-Age={SESSION_TTL}",
            self.settings.paths.authorize
        )) {
            response.headers_mut().append(SET_COOKIE, v);
        }
        response
    }

    /// The consent page, or the `invalid_scope` redirect of
    /// [`Self::no_grantable_scope`].
    fn consent_page(&self, request: &AuthRequest, user: &str, csrf: &str) -> Response<Body> {
        let Some(granted) = self.grantable_scope(request, user) else {
            return self.no_grantable_scope(request);
        };
        let mut scopes = String::new();
        for scope in granted.split(' ').filter(|s| !s.is_empty()) {
            let _ = write!(scopes, "<li>{}</li>", esc(&describe_scope(scope)));
        }
        if scopes.is_empty() {
            scopes.push_str("<li>Know who you are</li>");
        }
        let body = format!(
            "<h1>Allow access?</h1><p>Signed in as <strong>{user}</strong>.</p>\
             <p><strong>{client}</strong> asks to:</p><ul>{scopes}</ul>\
             <form method=\"post\" action=\"{action}\">{hidden}<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" name=\"action\" value=\"approve\">Allow</button>\
             <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>",
            user = esc(user),
            client = esc(&request.client.name),
            action = esc(&self.settings.paths.authorize),
            hidden = hidden_fields(request),
            csrf = esc(csrf),
        );
        self.page(
            StatusCode::OK,
            "Allow access?",
            "",
            Some((&body, &request.redirect_uri)),
        )
    }

    /// A complete page with the security headers; `content` is trusted HTML
    /// plus the redirect URI the page's forms may lead to.
    fn page(
        &self,
        status: StatusCode,
        title: &str,
        message: &str,
        content: Option<(&str, &str)>,
    ) -> Response<Body> {
        let (body, form_target) = match content {
            Some((html, redirect)) => (html.to_owned(), form_target_source(redirect)),
            None => (
                format!("<h1>{}</h1><p>{}</p>", esc(title), esc(message)),
                None,
            ),
        };
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
            esc(title)
        );
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(html))));
        *response.status_mut() = status;
        let style_hash = {
            use base64::Engine;
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, STYLE.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(d.as_ref())
        };
        let form_action = match form_target {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_owned(),
        };
        let csp = format!(
            "default-src 'none'; style-src 'sha256-{style_hash}'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
        );
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        if let Ok(v) = HeaderValue::from_str(&csp) {
            headers.insert("content-security-policy", v);
        }
        response
    }
}

/// Exact match, except that a loopback redirect URI may use any port (RFC 8252 7.3).
pub fn redirect_matches(registered: &str, presented: &str) -> bool {
    // RFC 6749 3.1.2: never a fragment (`http::Uri` would drop it unseen).
    if presented.contains('#') {
        return false;
    }
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (
        registered.parse::<http::Uri>(),
        presented.parse::<http::Uri>(),
    ) else {
        return false;
    };
    let loopback =
        |u: &http::Uri| matches!(u.host(), Some("127.0.0.1") | Some("[::1]") | Some("::1"));
    // RFC 8252 7.3 lets only the port vary: no user information either.
    let userinfo = |u: &http::Uri| u.authority().is_some_and(|a| a.as_str().contains('@'));
    loopback(&r)
        && !userinfo(&p)
        && p.authority().is_some_and(|a| is_port_or_none(a, p.host()))
        && r.scheme_str() == Some("http")
        && p.scheme_str() == Some("http")
        && r.host() == p.host()
        && r.path_and_query() == p.path_and_query()
}

/// Whether what follows `host` in `authority` (which has no user
/// information) is nothing or a port as browsers read one: `:` and decimal
/// digits up to 65535, or none (the scheme's default). `http::Uri` keeps
/// any text there (`-9`, `99999`), and a redirect to such a URI is one to
/// an invalid URI, which RFC 6749 4.1.2.1 forbids.
fn is_port_or_none(authority: &http::uri::Authority, host: Option<&str>) -> bool {
    let Some(rest) = host.and_then(|h| authority.as_str().strip_prefix(h)) else {
        return false;
    };
    let Some(port) = rest.strip_prefix(':') else {
        return rest.is_empty();
    };
    let significant = port.trim_start_matches('0');
    port.bytes().all(|b| b.is_ascii_digit())
        && (significant.is_empty() || significant.parse::<u16>().is_ok())
}

/// The CSP source that lets a form lead to `uri` (Chrome holds the redirect
/// after the approve form's post to `form-action`): its origin for a web
/// address, its scheme for an app's private-use scheme (`com.example.app:`,
/// RFC 8252 7.1) and for an IPv6 literal, which a CSP host cannot name.
fn form_target_source(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    let scheme = u.scheme();
    let nameable = |host: &str| {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    match u.host() {
        Some(url::Host::Domain(host)) if nameable(host) => Some(match u.port() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        }),
        Some(url::Host::Ipv4(ip)) => Some(match u.port() {
            Some(port) => format!("{scheme}://{ip}:{port}"),
            None => format!("{scheme}://{ip}"),
        }),
        _ => Some(format!("{scheme}:")),
    }
}

fn redirect(base: &str, params: &[(&str, &str)]) -> Response<Body> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    let separator = if base.contains('?') { '&' } else { '?' };
    let location = format!("{base}{separator}{}", query.finish());
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn hidden_fields(request: &AuthRequest) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            esc(value)
        );
    };
    field("response_type", "code");
    field("client_id", &request.client.client_id);
    if request.redirect_uri_sent {
        field("redirect_uri", &request.redirect_uri);
    }
    field("scope", &request.scope);
    if let Some(state) = &request.state {
        field("state", state);
    }
    if let Some(challenge) = &request.code_challenge {
        field("code_challenge", challenge);
        field("code_challenge_method", "S256");
    }
    out
}

/// `__Secure-sg_device_` and 16 hex digits of the SHA-256 of `username`: a name per
/// user that does not show the user name.
fn device_cookie_name(username: &str) -> String {
    let digest = digest(username);
    let mut name = String::from(DEVICE_COOKIE);
    for byte in digest.iter().take(8) {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// Whether `value` has the form of [`random_token`]'s output (43
/// base64url characters), the only CSRF token taken back from a cookie.
fn is_random_token(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The value of our cookie `name`, found pair by pair (RFC 6265 5.4): a
/// browser sends every cookie of the host on one line, and another
/// application's value with UTF-8 in it must not hide ours.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            Some((&pair[..at], &pair[at + 1..]))
        })
        .find(|(k, _)| *k == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// `orders:read` → "Read your orders"; anything else is shown as is.
fn describe_scope(scope: &str) -> String {
    let verb = |v: &str| match v {
        "read" => Some("Read"),
        "write" => Some("Change"),
        "admin" => Some("Administer"),
        "delete" => Some("Delete"),
        _ => None,
    };
    match scope.split_once(':') {
        Some((resource, action)) => match verb(action) {
            Some(v) => format!("{v} your {resource} ({scope})"),
            None => format!("Use {scope}"),
        },
        None => format!("Use {scope}"),
    }
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_targets_are_sources_a_csp_can_name() {
        for (redirect, source) in [
            ("http://127.0.0.1:8080/cb", "http://127.0.0.1:8080"),
            ("https://app.example.com/cb?x=1", "https://app.example.com"),
            (
                "https://app.example.com:8443/cb",
                "https://app.example.com:8443",
            ),
            ("com.example.app:/oauth2redirect", "com.example.app:"),
            ("http://[::1]:8080/cb", "http:"),
            // Hosts a CSP host-source cannot spell, or an empty one.
            ("https://app_1.example.com/cb", "https:"),
            ("https://app;1.example.com/cb", "https:"),
            ("com.example.app:///cb", "com.example.app:"),
        ] {
            assert_eq!(
                form_target_source(redirect).as_deref(),
                Some(source),
                "{redirect}"
            );
        }
    }

    #[test]
    fn only_a_token_of_our_own_form_is_taken_back_from_a_cookie() {
        for _ in 0..32 {
            let token = random_token().unwrap();
            assert!(is_random_token(&token), "{token}");
        }
        let base = "aZ09-_".repeat(7);
        assert!(is_random_token(&format!("{base}x")));
        for other in [".", "!", "=", "+", "/", "\"", "<", "\u{e9}"] {
            assert!(!is_random_token(&format!("{base}{other}")), "{other}");
        }
        assert!(!is_random_token(&base));
        assert!(!is_random_token(&format!("{base}xy")));
        assert!(!is_random_token(""));
    }

    #[test]
    fn redirect_uri_matching() {
        assert!(redirect_matches(
            "https://app.example/cb",
            "https://app.example/cb"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example/cb/"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example:444/cb"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53123/cb"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1:8000/cb",
            "http://127.0.0.1:9/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:9/other"
        ));
        assert!(!redirect_matches(
            "http://localhost/cb",
            "http://localhost:9/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.2:9/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://user@127.0.0.1:9/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:9@evil.test/cb"
        ));
        for port in ["-9", "+9", "65536", "9a"] {
            assert!(
                !redirect_matches(
                    "http://127.0.0.1/cb",
                    &format!("http://127.0.0.1:{port}/cb")
                ),
                "{port}"
            );
        }
        for port in ["65535", "08080", ""] {
            assert!(
                redirect_matches(
                    "http://127.0.0.1/cb",
                    &format!("http://127.0.0.1:{port}/cb")
                ),
                "{port}"
            );
        }
        assert!(redirect_matches("http://[::1]/cb", "http://[::1]:9/cb"));
        assert!(!redirect_matches("http://[::1]/cb", "http://[::1]:+9/cb"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    /// The consent page names each scope the form asks for: the four
    /// actions a scope ends in as words, anything else as the scope itself.
    #[test]
    fn consent_lists_known_actions_in_words_and_others_as_they_are() {
        for (scope, shown) in [
            ("orders:read", "Read your orders (orders:read)"),
            ("orders:write", "Change your orders (orders:write)"),
            ("users:admin", "Administer your users (users:admin)"),
            ("files:delete", "Delete your files (files:delete)"),
            ("files:share", "Use files:share"),
            ("openid", "Use openid"),
        ] {
            assert_eq!(describe_scope(scope), shown, "{scope}");
        }
    }
}
