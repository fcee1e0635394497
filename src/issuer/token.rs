//! The token endpoint: client credentials, refresh token (rotated on every
//! use, replay revokes the family: RFC 9700 4.14.2), password, and
//! authorization code with PKCE.

use std::collections::HashMap;

use http::StatusCode;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clients::{self, Busy};
use super::store::{Digest, RefreshRecord, Standing, Use};
use super::{json_response, random_token, read_form, AuthorizationServer, OAuthError};
use crate::auth::cache::digest;
use crate::auth::jwt::now_unix;
use crate::config::{Client, Grant, ResponseStyle};
use crate::proxy::Body;

/// What a successful grant yields before rendering.
struct Issued {
    access_token: String,
    expires_in: u64,
    scope: String,
    refresh: Option<IssuedRefresh>,
}

struct IssuedRefresh {
    token: String,
    expires_in: u64,
    issued_at: u64,
    refresh_count: u32,
}

/// Whether and how a refresh token accompanies the access token.
enum RefreshPlan {
    /// No refresh token.
    None,
    /// No refresh token, but the access token belongs to a revocable grant
    /// (its id).
    SessionOnly(String),
    /// A new grant with refresh tokens (its id).
    NewFamily(String),
    /// Rotation of a grant's refresh token: the presented one is used up as
    /// the new one is stored.
    Rotate {
        /// The grant's record, with the presented token current in it.
        previous: Box<RefreshRecord>,
        /// The grant's handle, which the new token carries too.
        handle: String,
        /// The presented token's generation and digest.
        presented: (u32, Digest),
    },
}

/// A refresh token as presented: `<handle>.<generation>.<secret>`. The
/// handle names the grant (it is never stored, only its digest), the
/// generation says how many rotations led to the token, and the secret
/// makes the token the one the grant holds the digest of.
pub(super) struct PresentedRefresh<'a> {
    /// The grant's handle.
    pub handle: &'a str,
    /// The grant's key in the store: the digest of the handle.
    pub grant: Digest,
    /// How many rotations led to this token.
    pub generation: u32,
    /// The digest of the whole token.
    pub digest: Digest,
}

impl<'a> PresentedRefresh<'a> {
    /// Reads a refresh token; `None` for one of no grant's form.
    pub(super) fn parse(token: &'a str) -> Option<Self> {
        let mut parts = token.splitn(3, '.');
        let (handle, generation, secret) = (parts.next()?, parts.next()?, parts.next()?);
        // One spelling per generation: digits, no sign, no leading zero.
        let canonical = !generation.is_empty()
            && generation.bytes().all(|b| b.is_ascii_digit())
            && (generation == "0" || !generation.starts_with('0'));
        if handle.is_empty() || secret.is_empty() || !canonical {
            return None;
        }
        Some(PresentedRefresh {
            handle,
            grant: digest(handle),
            generation: generation.parse().ok()?,
            digest: digest(token),
        })
    }
}

/// The grant label of a token request without a grant type this server
/// knows.
const NO_GRANT: &str = "-";

/// The answer to a refresh token that no grant has as it stands.
fn unknown_refresh() -> OAuthError {
    OAuthError::invalid_grant("unknown or expired refresh token")
}

/// A new refresh token of the grant with `handle`, of `generation`.
fn refresh_token(handle: &str, generation: u32) -> Result<String, OAuthError> {
    Ok(format!("{handle}.{generation}.{}", random_token()?))
}

/// The refresh token, and the grant's record with it, that replace the
/// grant's `current` record when the token whose digest is `presented` is
/// used (the current one, or in the reuse grace the one it replaced).
/// RFC 6749 6: the grant's scope, not the narrower one this access token
/// may have asked for.
fn next_refresh(
    settings: &crate::config::AuthorizationServerSettings,
    current: &RefreshRecord,
    handle: &str,
    presented: &Digest,
    now: u64,
) -> Result<(String, RefreshRecord), OAuthError> {
    let generation = current
        .refresh_count
        .checked_add(1)
        .ok_or_else(|| OAuthError::invalid_grant("refresh token used up"))?;
    let token = refresh_token(handle, generation)?;
    // The token replaced now may be used once more within the grace; a
    // retry's own use leaves that as it was, so that retries cannot
    // stretch it.
    let (previous, retry_until) = if *presented == current.token {
        let grace = settings.refresh_token_reuse_grace.as_secs();
        (Some(*presented), if grace > 0 { now + grace } else { 0 })
    } else {
        (current.previous, current.retry_until)
    };
    let record = RefreshRecord {
        issued_at: now,
        expires_at: (now + settings.refresh_token_ttl.as_secs()).min(current.family_expires_at),
        refresh_count: generation,
        token: digest(&token),
        previous,
        retry_until,
        // The access token minted with this refresh token.
        access_expires_at: current
            .access_expires_at
            .max(now + settings.access_token_ttl.as_secs()),
        ..current.clone()
    };
    Ok((token, record))
}

/// The token request parameters of the grants this server knows (RFC 6749
/// 4, 6; RFC 7636 4.5) and of common extensions (RFC 8707, RFC 7523): in
/// the query, each is refused rather than ignored.
const TOKEN_PARAMETERS: &[&str] = &[
    "scope",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "username",
    "password",
    "resource",
    "audience",
    "client_assertion",
    "client_assertion_type",
];

impl AuthorizationServer {
    /// The token endpoint (RFC 6749 3.2), counted by grant type and result.
    pub(crate) async fn token(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, OAuthError> {
        let mut grant = NO_GRANT;
        let answer = self.token_request(request, &mut grant).await;
        let result = match &answer {
            Ok(_) => "issued",
            Err(e) => e.code,
        };
        self.metrics
            .issuer_token_requests
            .with_label_values(&[grant, result])
            .inc();
        answer
    }

    /// The token endpoint's answer; `grant_label` becomes the request's
    /// grant type once it is read and known to this server.
    async fn token_request(
        &self,
        request: Request<Incoming>,
        grant_label: &mut &'static str,
    ) -> Result<Response<Body>, OAuthError> {
        let req = read_form(request).await?;
        let query_credentials = req.query_has_credentials();
        let grant_type = match (req.form.get("grant_type"), req.query.get("grant_type")) {
            // RFC 6749 3.2: a parameter is sent once.
            (Some(_), Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "grant_type is sent in both the query and the body",
                ))
            }
            (Some(g), None) | (None, Some(g)) => g.clone(),
            (None, None) => return Err(OAuthError::invalid_request("grant_type is required")),
        };
        let grant = Grant::parse(&grant_type);
        if let Some(grant) = grant {
            *grant_label = grant.as_str();
        }
        // The seed's style puts `grant_type` in the query; another token
        // request parameter there (a `scope`, above all) would be silently
        // ignored and the token granted more than was asked for, so it is
        // refused. Parameters this server does not know are ignored (RFC
        // 6749 3.2), as in the body; credentials get their own refusal below.
        let misplaced = TOKEN_PARAMETERS
            .iter()
            .find(|name| req.query.contains_key(**name));
        if let Some(name) = misplaced {
            return Err(OAuthError::invalid_request(format!(
                "{name} belongs in the body, not the query"
            )));
        }
        let presented = clients::presented(&req.headers, &req.form, query_credentials)?;
        let grant = grant.ok_or_else(OAuthError::unsupported_grant_type)?;
        let allow_public = matches!(grant, Grant::AuthorizationCode | Grant::RefreshToken);
        let client = self.clients.authenticate(presented, allow_public).await?;
        if !client.grants.contains(&grant) {
            return Err(OAuthError::unauthorized_client(format!(
                "this client may not use the {} grant",
                grant.as_str()
            )));
        }
        let issued = match grant {
            Grant::ClientCredentials => self.client_credentials(&client, &req.form).await?,
            Grant::RefreshToken => self.refresh(&client, &req.form).await?,
            Grant::Password => self.password(&client, &req.form).await?,
            Grant::AuthorizationCode => self.authorization_code(&client, &req.form).await?,
        };
        Ok(self.render(issued))
    }

    async fn client_credentials(
        &self,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<Issued, OAuthError> {
        let scope = requested_scope(form.get("scope"), &client.scopes, None, ScopeLimit::Client)?;
        let plan = if client.grants.contains(&Grant::RefreshToken) {
            RefreshPlan::NewFamily(random_token()?)
        } else {
            RefreshPlan::None
        };
        self.issue(client, &client.client_id, false, &scope, plan)
            .await
    }

    async fn password(
        &self,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<Issued, OAuthError> {
        let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
            return Err(OAuthError::invalid_request(
                "username and password are required",
            ));
        };
        // Counted per client: a client that guesses wrong passwords locks
        // the user out of the password grant through it, not through every
        // client nor out of the sign-in page.
        // The id's length keeps `a` + `b:c` apart from `a:b` + `c`.
        let id = &client.client_id;
        let limiter_key = format!("password:{}:{id}:{username}", id.len());
        let mut attempt = self
            .clients
            .begin_check(&limiter_key)
            .await
            .ok_or_else(OAuthError::too_many_user_attempts)?;
        let user = self.users.get(username.as_str());
        let ok = self
            .clients
            .verify_password(
                user.map(|u| u.password_hash.as_str()),
                password,
                Some(&mut attempt),
            )
            .await
            .map_err(|Busy| OAuthError::busy())?;
        let Some(user) = user.filter(|_| ok) else {
            attempt.failed();
            return Err(OAuthError::invalid_grant("wrong username or password"));
        };
        drop(attempt);
        let scope = requested_scope(
            form.get("scope"),
            &client.scopes,
            user.scopes.as_deref(),
            ScopeLimit::ClientAndUser,
        )?;
        let plan = if client.grants.contains(&Grant::RefreshToken) {
            RefreshPlan::NewFamily(random_token()?)
        } else {
            RefreshPlan::None
        };
        self.issue(client, &user.username, true, &scope, plan).await
    }

    async fn refresh(
        &self,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<Issued, OAuthError> {
        let token = form
            .get("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let presented = PresentedRefresh::parse(token).ok_or_else(unknown_refresh)?;
        // Every check runs before the token is used up, and the new token
        // replaces it only then: a refused request (a scope too wide, a
        // store that is full) leaves the grant as it was, instead of burning
        // the token so that the client's corrected retry reads as a replay
        // and revokes the grant (RFC 9700 4.14.2 means a use that was
        // honoured).
        let record = self
            .store
            .get_refresh(&presented.grant)
            .await
            .map_err(|e| self.store_failed(&e))?
            .ok_or_else(unknown_refresh)?;
        // A request by the wrong client must neither burn the owner's token
        // nor, with a rotated one, end the owner's grant.
        if record.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "refresh token was issued to another client",
            ));
        }
        let standing = record.standing(now_unix(), presented.generation, &presented.digest);
        if standing == Standing::Unknown {
            return Err(unknown_refresh());
        }
        // A rotated token of a grant that has already ended (revoked, by a
        // replay or its client) ends nothing more: it is no new replay.
        if self
            .store
            .is_family_revoked(&record.family)
            .await
            .map_err(|e| self.store_failed(&e))?
        {
            return Err(OAuthError::invalid_grant("the grant has been revoked"));
        }
        match standing {
            Standing::Current => {}
            Standing::Retry => {
                tracing::info!(client_id = %client.client_id, "refresh token used again within refresh_token_reuse_grace; the token its first use got is replaced");
            }
            Standing::Rotated => return Err(self.refresh_replayed(&record).await),
            Standing::Unknown => return Err(unknown_refresh()),
        }
        let granted = self.rights_now(client, &record.subject, record.user_grant, &record.scope)?;
        let scope = requested_scope(form.get("scope"), &granted, None, ScopeLimit::Grant)?;
        let subject = record.subject.clone();
        let user_grant = record.user_grant;
        self.issue(
            client,
            &subject,
            user_grant,
            &scope,
            RefreshPlan::Rotate {
                previous: Box::new(record),
                handle: presented.handle.to_owned(),
                presented: (presented.generation, presented.digest),
            },
        )
        .await
    }

    /// A grant's scopes as the config stands now (a reload may have
    /// changed it since the grant): a user removed since ends it, and scopes
    /// since taken from the client or the user are not minted again. A
    /// grant of scopes none of which is left is `invalid_scope`, not a
    /// token of no scope, whose response would name none and so tell the
    /// client it got the scope it asked for (RFC 6749 3.3, 5.1; a refresh
    /// without `scope` asks for the grant's, RFC 6749 6).
    pub(super) fn rights_now(
        &self,
        client: &Client,
        subject: &str,
        user_grant: bool,
        scope: &str,
    ) -> Result<Vec<String>, OAuthError> {
        let user_scopes = if !user_grant && subject == client.client_id {
            None
        } else {
            match self.users.get(subject) {
                Some(user) => user.scopes.as_deref(),
                None => {
                    return Err(OAuthError::invalid_grant(
                        "the user of this grant no longer exists",
                    ))
                }
            }
        };
        let granted: Vec<String> = scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .filter(|s| client.scopes.iter().any(|c| c == s))
            .filter(|s| user_scopes.is_none_or(|u| u.iter().any(|x| x == s)))
            .map(str::to_owned)
            .collect();
        if granted.is_empty() && scope.split(' ').any(|s| !s.is_empty()) {
            return Err(OAuthError::invalid_scope(
                "none of the grant's scopes is allowed for this client and user any more",
            ));
        }
        Ok(granted)
    }

    /// A rotated refresh token presented again means theft (RFC 9700
    /// 4.14.2): ends the grant, and returns the answer to give.
    async fn refresh_replayed(&self, record: &RefreshRecord) -> OAuthError {
        if let Err(e) = self
            .store
            .revoke_family(&record.family, self.grant_revoked_until(Some(record)))
            .await
        {
            return self.store_failed(&e);
        }
        self.metrics
            .issuer_replays
            .with_label_values(&["refresh_token"])
            .inc();
        tracing::warn!(client_id = %record.client_id, "refresh token replayed; grant revoked");
        OAuthError::invalid_grant("refresh token already used; the grant has been revoked")
    }

    async fn authorization_code(
        &self,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<Issued, OAuthError> {
        let code = form
            .get("code")
            .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
        let now = now_unix();
        let record = match self
            .store
            .use_code(&digest(code))
            .await
            .map_err(|e| self.store_failed(&e))?
        {
            Use::NotFound => return Err(OAuthError::invalid_grant("unknown or expired code")),
            // Another client presenting a code it learned (a leaked
            // redirect) gets nothing, and ends nothing either, as with a
            // rotated refresh token.
            Use::Reused(record) if record.client_id != client.client_id => {
                return Err(OAuthError::invalid_grant(
                    "code was issued to another client",
                ))
            }
            Use::Reused(record) => {
                // RFC 6749 4.1.2: a code used twice revokes what it issued.
                self.store
                    .revoke_family(&record.family, self.grant_revoked_until(None))
                    .await
                    .map_err(|e| self.store_failed(&e))?;
                self.metrics
                    .issuer_replays
                    .with_label_values(&["code"])
                    .inc();
                tracing::warn!(client_id = %record.client_id, "authorization code replayed; its tokens are revoked");
                return Err(OAuthError::invalid_grant(
                    "code already used; the tokens issued from it are revoked",
                ));
            }
            Use::Fresh(record) => record,
        };
        if record.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "code was issued to another client",
            ));
        }
        let sent = form.get("redirect_uri");
        if (record.redirect_uri_sent || sent.is_some()) && sent != Some(&record.redirect_uri) {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if record.expires_at <= now {
            return Err(OAuthError::invalid_grant("code expired"));
        }
        match (&record.code_challenge, form.get("code_verifier")) {
            (Some(challenge), Some(verifier)) => {
                if !pkce_verifier_ok(verifier) {
                    return Err(OAuthError::invalid_grant(
                        "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]",
                    ));
                }
                if s256(verifier) != *challenge {
                    return Err(OAuthError::invalid_grant(
                        "code_verifier does not match the challenge",
                    ));
                }
            }
            (Some(_), None) => return Err(OAuthError::invalid_grant("code_verifier is required")),
            (None, Some(_)) => {
                return Err(OAuthError::invalid_grant(
                    "code_verifier sent for a code issued without a challenge (no PKCE downgrade)",
                ))
            }
            (None, None) if client.secret_hash.is_none() => {
                return Err(OAuthError::invalid_grant("public clients must use PKCE"))
            }
            (None, None) => {}
        }
        // Approved before a reload, redeemed after it: the grant as the
        // config stands now, as a refresh would have it.
        let scope = self
            .rights_now(client, &record.subject, true, &record.scope)?
            .join(" ");
        let plan = if client.grants.contains(&Grant::RefreshToken) {
            RefreshPlan::NewFamily(record.family.clone())
        } else {
            RefreshPlan::SessionOnly(record.family.clone())
        };
        self.issue(client, &record.subject, true, &scope, plan)
            .await
    }

    /// Mints an access token (and a refresh token, as `plan` says) for
    /// `subject`, a user when `user_grant`, else the client itself.
    async fn issue(
        &self,
        client: &Client,
        subject: &str,
        user_grant: bool,
        scope: &str,
        plan: RefreshPlan,
    ) -> Result<Issued, OAuthError> {
        let now = now_unix();
        let settings = &self.settings;
        let expires_in = settings.access_token_ttl.as_secs();
        let family = match &plan {
            RefreshPlan::None => None,
            RefreshPlan::SessionOnly(family) | RefreshPlan::NewFamily(family) => {
                Some(family.clone())
            }
            RefreshPlan::Rotate { previous, .. } => Some(previous.family.clone()),
        };
        let mut claims = json!({
            "iss": settings.issuer,
            "sub": subject,
            "aud": client.audience,
            "client_id": client.client_id,
            "scope": scope,
            "iat": now,
            "exp": now + expires_in,
            "jti": random_token()?,
        });
        // Before the token exists: a revocation of its grant from now on
        // outlives it, whatever a reload does to the lifetime meanwhile.
        self.minted_ends.note_access(now + expires_in);
        if let Some(family) = &family {
            claims["sid"] = Value::String(family.clone());
        }
        let access_token = super::keys::SigningKey::sign_with_first(
            &settings.keys,
            &self.signing_places,
            "at+jwt",
            claims,
        )
        .await
        .map_err(OAuthError::server_error)?;

        let refresh = match plan {
            RefreshPlan::None | RefreshPlan::SessionOnly(_) => None,
            RefreshPlan::NewFamily(family) => {
                // The handle that names the grant is kept by no one but the
                // client: not in the store (only its digest), nor in the
                // access tokens, whose `sid` is the grant's id, a random value
                // of its own, so that whoever is shown an access token, or
                // reads a code's record, cannot name the grant.
                let handle = random_token()?;
                let family_expires_at = now + settings.refresh_family_max_age.as_secs();
                let token = refresh_token(&handle, 0)?;
                let record = RefreshRecord {
                    family,
                    client_id: client.client_id.clone(),
                    subject: subject.to_owned(),
                    scope: scope.to_owned(),
                    audience: client.audience.clone(),
                    issued_at: now,
                    expires_at: (now + settings.refresh_token_ttl.as_secs()).min(family_expires_at),
                    family_expires_at,
                    refresh_count: 0,
                    token: digest(&token),
                    previous: None,
                    retry_until: 0,
                    user_grant,
                    access_expires_at: now + expires_in,
                };
                self.minted_ends.note_refresh(record.expires_at);
                self.store
                    .put_refresh(&digest(&handle), &record)
                    .await
                    .map_err(|e| self.store_failed(&e))?;
                Some((token, record))
            }
            RefreshPlan::Rotate {
                previous,
                handle,
                presented: (generation, presented),
            } => {
                let grant = digest(&handle);
                let mut current = *previous;
                // Twice at most: a concurrent rotation that landed since the
                // grant was read makes this one a retry of it, when the
                // reuse grace allows that, and the next record is made anew.
                let mut tries = 2;
                loop {
                    tries -= 1;
                    let (token, record) =
                        next_refresh(settings, &current, &handle, &presented, now)?;
                    self.minted_ends.note_refresh(record.expires_at);
                    let rotated = self
                        .store
                        .rotate_refresh(&grant, generation, &presented, &record)
                        .await
                        .map_err(|e| self.store_failed(&e))?;
                    match rotated {
                        Use::Fresh(_) => break Some((token, record)),
                        Use::NotFound => return Err(unknown_refresh()),
                        Use::Reused(now_stored)
                            if tries > 0
                                && now_stored.standing(now, generation, &presented)
                                    == Standing::Retry =>
                        {
                            current = now_stored;
                        }
                        // Another request rotated it since it was checked.
                        Use::Reused(now_stored) => {
                            return Err(self.refresh_replayed(&now_stored).await)
                        }
                    }
                }
            }
        };
        let refresh = refresh.map(|(token, record)| IssuedRefresh {
            token,
            expires_in: record.expires_at.saturating_sub(now),
            issued_at: now,
            refresh_count: record.refresh_count,
        });
        Ok(Issued {
            access_token,
            expires_in,
            scope: scope.to_owned(),
            refresh,
        })
    }

    fn render(&self, issued: Issued) -> Response<Body> {
        let body = match self.settings.response_style {
            ResponseStyle::Standard => {
                let mut body = json!({
                    "token_type": "Bearer",
                    "access_token": issued.access_token,
                    "expires_in": issued.expires_in,
                    "scope": issued.scope,
                    "status": "approved",
                });
                if let Some(r) = issued.refresh {
                    body["refresh_token"] = r.token.into();
                    body["refresh_token_expires_in"] = r.expires_in.into();
                    body["refresh_token_issued_at"] = r.issued_at.into();
                    body["refresh_count"] = r.refresh_count.into();
                }
                // No scope granted: `""` is no scope value (RFC 6749 3.3
                // wants one or more), so the field is left out. The seed's
                // own style keeps its `""`.
                if issued.scope.is_empty() {
                    if let Some(fields) = body.as_object_mut() {
                        fields.remove("scope");
                    }
                }
                body
            }
            ResponseStyle::Apigee => {
                // The seed's sample: BearerToken, numbers as strings, issue time in ms.
                let mut body = json!({
                    "token_type": "BearerToken",
                    "access_token": issued.access_token,
                    "scope": issued.scope,
                    "status": "approved",
                    "expires_in": issued.expires_in.to_string(),
                });
                if let Some(r) = issued.refresh {
                    body["refresh_token"] = r.token.into();
                    body["refresh_token_expires_in"] = r.expires_in.to_string().into();
                    body["refresh_token_issued_at"] = (r.issued_at * 1000).to_string().into();
                    body["refresh_count"] = r.refresh_count.to_string().into();
                }
                body
            }
        };
        json_response(StatusCode::OK, body.to_string())
    }

    pub(crate) fn store_failed(&self, error: &super::store::StoreError) -> OAuthError {
        self.count_store_error(error);
        if let Some(suppressed) = self.store_failure_log.allow() {
            tracing::error!(store = self.store.kind(), error = %error, suppressed, "authorization server store failed");
        }
        OAuthError::unavailable()
    }

    /// Counts a failed store operation.
    pub(crate) fn count_store_error(&self, error: &super::store::StoreError) {
        self.metrics
            .issuer_store_errors
            .with_label_values(&[self.store.kind(), error.reason()])
            .inc();
    }
}

/// RFC 7636 4.1: 43-128 characters of the unreserved set.
pub(crate) fn pkce_verifier_ok(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL(SHA256(verifier))` (RFC 7636 4.2): the PKCE S256 challenge.
pub fn s256(verifier: &str) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// What limits the scopes a token request may ask for, named in its
/// `invalid_scope` refusal so that an operator looks in the right place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScopeLimit {
    /// The client's `scopes`.
    Client,
    /// The client's `scopes` and the user's.
    ClientAndUser,
    /// The grant being refreshed (as the client and user allow now).
    Grant,
}

impl ScopeLimit {
    fn words(self) -> &'static str {
        match self {
            Self::Client => "for this client",
            Self::ClientAndUser => "for this client and user",
            Self::Grant => "by the grant this refresh token belongs to",
        }
    }
}

/// The granted scope: the requested one (a subset of what is allowed), or
/// everything allowed when none is requested. A `scope` of blanks names no
/// scope and reads as left out (RFC 6749 3.3's default), as an empty one
/// does: granting no scope for it would give a token good for nothing, and
/// at the authorization endpoint a consent page listing none.
pub(crate) fn requested_scope(
    requested: Option<&String>,
    allowed: &[String],
    also_allowed: Option<&[String]>,
    limited_by: ScopeLimit,
) -> Result<String, OAuthError> {
    let permitted = |s: &str| {
        allowed.iter().any(|a| a == s) && also_allowed.is_none_or(|x| x.iter().any(|a| a == s))
    };
    match requested.filter(|s| s.split(' ').any(|t| !t.is_empty())) {
        Some(requested) => {
            let mut out: Vec<&str> = Vec::new();
            for scope in requested.split(' ').filter(|s| !s.is_empty()) {
                if !permitted(scope) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope `{scope}` is not allowed {}",
                        limited_by.words()
                    )));
                }
                if !out.contains(&scope) {
                    out.push(scope);
                }
            }
            Ok(out.join(" "))
        }
        None => Ok(allowed
            .iter()
            .filter(|s| permitted(s))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")),
    }
}
