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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{BodyExt, Either};

    use super::*;
    use crate::admin::metrics::Metrics;
    use crate::config::{AuthorizationServerPaths, AuthorizationServerSettings, User};
    use crate::issuer::keys::SigningKey;
    use crate::issuer::store::{CodeRecord, Store, StoreConfig};

    /// Every user's password.
    const PASSWORD: &str = "wonderland";
    /// A PKCE verifier of the allowed form, and the one the codes' challenges are of.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const REDIRECT: &str = "https://app.test/cb";

    fn client(id: &str, public: bool, grants: &[Grant], scopes: &[&str]) -> Client {
        Client {
            client_id: id.into(),
            secret_hash: (!public)
                .then(|| "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into()),
            grants: grants.to_vec(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            audience: "orders-api".into(),
            redirect_uris: vec![REDIRECT.into()],
            name: id.into(),
        }
    }

    /// Clients: `svc` and `other` (client credentials and refresh), `plain`
    /// (client credentials only), `pw` (password and refresh), `web`
    /// (confidential, code and refresh), `spa` (public, code only). Users:
    /// `alice` (orders:read only) and `bob` (any scope). Access tokens live
    /// an hour, refresh tokens 30 minutes, grants a day; no reuse grace.
    fn settings() -> AuthorizationServerSettings {
        use Grant::*;
        let password_hash = clients::hash_secret(PASSWORD).unwrap();
        AuthorizationServerSettings {
            issuer: "https://as.test".into(),
            issuer_index: 0,
            paths: AuthorizationServerPaths {
                token: "/token".into(),
                authorize: "/authorize".into(),
                introspection: "/introspect".into(),
                revocation: "/revoke".into(),
                jwks: "/jwks".into(),
                metadata: "/metadata".into(),
            },
            keys: Arc::new(vec![SigningKey::generate("k1").unwrap()]),
            ephemeral_key: false,
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(1800),
            refresh_family_max_age: Duration::from_secs(86400),
            refresh_token_reuse_grace: Duration::ZERO,
            response_style: ResponseStyle::Standard,
            store: StoreConfig::Memory,
            clients: vec![
                client(
                    "svc",
                    false,
                    &[ClientCredentials, RefreshToken],
                    &["orders:read", "reports:read"],
                ),
                client(
                    "other",
                    false,
                    &[ClientCredentials, RefreshToken],
                    &["orders:read", "reports:read"],
                ),
                client("plain", false, &[ClientCredentials], &["orders:read"]),
                client(
                    "pw",
                    false,
                    &[Password, RefreshToken],
                    &["orders:read", "admin"],
                ),
                client(
                    "web",
                    false,
                    &[AuthorizationCode, RefreshToken],
                    &["orders:read", "reports:read"],
                ),
                client("spa", true, &[AuthorizationCode], &["orders:read"]),
            ],
            users: vec![
                User {
                    username: "alice".into(),
                    password_hash: password_hash.clone(),
                    scopes: Some(vec!["orders:read".into()]),
                },
                User {
                    username: "bob".into(),
                    password_hash,
                    scopes: None,
                },
            ],
        }
    }

    async fn server_with(settings: AuthorizationServerSettings) -> AuthorizationServer {
        let store = Store::open(&StoreConfig::Memory).await.unwrap();
        AuthorizationServer::new(settings, store, Arc::new(Metrics::new().unwrap()), None)
    }

    async fn server() -> AuthorizationServer {
        server_with(settings()).await
    }

    fn client_of<'a>(server: &'a AuthorizationServer, id: &str) -> &'a Client {
        server.clients.client(id).unwrap()
    }

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The verified claims of an access token the server minted.
    fn claims(server: &AuthorizationServer, issued: &Issued) -> serde_json::Map<String, Value> {
        server
            .verify_own(&issued.access_token, "at+jwt", 0)
            .expect("a valid access token of this server")
    }

    fn refresh_of(issued: &Issued) -> &str {
        &issued.refresh.as_ref().expect("a refresh token").token
    }

    async fn stored_grant(server: &AuthorizationServer, refresh_token: &str) -> RefreshRecord {
        let presented = PresentedRefresh::parse(refresh_token).unwrap();
        server
            .store
            .get_refresh(&presented.grant)
            .await
            .unwrap()
            .expect("the grant is stored")
    }

    async fn refresh_with(
        server: &AuthorizationServer,
        client: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Issued, OAuthError> {
        server
            .refresh(client_of(server, client), &form(pairs))
            .await
    }

    async fn client_credentials(server: &AuthorizationServer, client: &str) -> Issued {
        server
            .client_credentials(client_of(server, client), &HashMap::new())
            .await
            .unwrap()
    }

    fn assert_refused(result: Result<Issued, OAuthError>, code: &str) -> OAuthError {
        match result {
            Ok(issued) => panic!("expected {code}, got a token of scope {:?}", issued.scope),
            Err(e) => {
                assert_eq!(e.code, code, "{e:?}");
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
                e
            }
        }
    }

    /// A code of `client` for alice (orders:read), unexpired, with an S256
    /// challenge of [`VERIFIER`] and `redirect_uri` named in its request.
    fn code_record(client: &str) -> CodeRecord {
        CodeRecord {
            client_id: client.into(),
            redirect_uri: REDIRECT.into(),
            redirect_uri_sent: true,
            scope: "orders:read".into(),
            subject: "alice".into(),
            code_challenge: Some(s256(VERIFIER)),
            expires_at: now_unix() + 60,
            family: random_token().unwrap(),
        }
    }

    async fn put_code(server: &AuthorizationServer, record: &CodeRecord) -> String {
        let code = random_token().unwrap();
        server.store.put_code(&digest(&code), record).await.unwrap();
        code
    }

    async fn redeem(
        server: &AuthorizationServer,
        client: &str,
        code: &str,
        extra: &[(&str, &str)],
    ) -> Result<Issued, OAuthError> {
        let mut pairs = vec![("code", code)];
        pairs.extend_from_slice(extra);
        server
            .authorization_code(client_of(server, client), &form(&pairs))
            .await
    }

    const WITH_PKCE: &[(&str, &str)] = &[("redirect_uri", REDIRECT), ("code_verifier", VERIFIER)];

    async fn body_of(response: Response<Body>) -> Value {
        let Either::Right(full) = response.into_body() else {
            panic!("a body the server made");
        };
        serde_json::from_slice(&full.collect().await.unwrap().to_bytes()).unwrap()
    }

    #[test]
    fn refresh_tokens_parse_only_in_their_one_spelling() {
        let parsed = PresentedRefresh::parse("h4ndle.12.s3cret.with.dots").unwrap();
        assert_eq!(parsed.handle, "h4ndle");
        assert_eq!(parsed.generation, 12);
        assert_eq!(parsed.grant, digest("h4ndle"));
        assert_eq!(parsed.digest, digest("h4ndle.12.s3cret.with.dots"));
        assert_eq!(PresentedRefresh::parse("h.0.s").unwrap().generation, 0);
        for token in [
            "",
            "h",
            "h.0",
            "h.0.",
            ".0.s",
            "h..s",
            "h.01.s",
            "h.00.s",
            "h.+1.s",
            "h.-1.s",
            "h.1a.s",
            "h.a.s",
            "h.4294967296.s",
        ] {
            assert!(PresentedRefresh::parse(token).is_none(), "{token:?}");
        }
    }

    /// RFC 7636 4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
    #[test]
    fn pkce_verifiers_are_43_to_128_unreserved_characters() {
        for len in [43, 128] {
            assert!(pkce_verifier_ok(&"a".repeat(len)), "{len}");
        }
        for len in [0, 42, 129] {
            assert!(!pkce_verifier_ok(&"a".repeat(len)), "{len}");
        }
        assert!(pkce_verifier_ok(&format!("Az09-._~{}", "x".repeat(35))));
        for bad in ['+', '/', '=', ' ', '%', 'é'] {
            let verifier = format!("{bad}{}", "x".repeat(42));
            assert!(!pkce_verifier_ok(&verifier), "{verifier:?}");
        }
    }

    /// RFC 7636 appendix B.
    #[test]
    fn s256_is_rfc_7636s_challenge() {
        assert_eq!(
            s256(VERIFIER),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn requested_scopes_must_be_allowed_and_default_to_all_allowed() {
        let allowed: Vec<String> = vec!["orders:read".into(), "reports:read".into()];
        let user: Vec<String> = vec!["orders:read".into(), "admin".into()];
        let ask = |s: Option<&str>, also: Option<&[String]>| {
            requested_scope(
                s.map(str::to_owned).as_ref(),
                &allowed,
                also,
                ScopeLimit::Client,
            )
        };
        assert_eq!(ask(Some("reports:read"), None).unwrap(), "reports:read");
        assert_eq!(
            ask(Some(" orders:read  orders:read reports:read "), None).unwrap(),
            "orders:read reports:read"
        );
        for default in [None, Some(""), Some("   ")] {
            assert_eq!(ask(default, None).unwrap(), "orders:read reports:read");
            assert_eq!(ask(default, Some(&user)).unwrap(), "orders:read");
        }
        assert_eq!(
            ask(Some("orders:read"), Some(&user)).unwrap(),
            "orders:read"
        );
        for (scope, also) in [
            ("admin", None),
            ("orders:read admin", None),
            ("orders:rea", None),
            ("reports:read", Some(&user[..])),
            ("admin", Some(&user[..])),
        ] {
            let e = ask(Some(scope), also).unwrap_err();
            assert_eq!(e.code, "invalid_scope", "{scope}");
        }
    }

    #[tokio::test]
    async fn client_credentials_tokens_are_the_clients_own_with_refresh_only_with_that_grant() {
        let server = server().await;
        let issued = client_credentials(&server, "svc").await;
        assert_eq!(issued.expires_in, 3600);
        assert_eq!(issued.scope, "orders:read reports:read");
        let minted = claims(&server, &issued);
        assert_eq!(minted["sub"], "svc");
        assert_eq!(minted["client_id"], "svc");
        assert_eq!(minted["aud"], "orders-api");
        assert_eq!(minted["scope"], "orders:read reports:read");
        let iat = minted["iat"].as_u64().unwrap();
        assert_eq!(minted["exp"].as_u64().unwrap(), iat + 3600);
        let refresh = issued.refresh.as_ref().unwrap();
        assert_eq!(refresh.refresh_count, 0);
        assert_eq!(refresh.expires_in, 1800);
        let record = stored_grant(&server, &refresh.token).await;
        assert_eq!(minted["sid"].as_str(), Some(record.family.as_str()));
        assert_eq!(
            (record.client_id.as_str(), record.subject.as_str()),
            ("svc", "svc")
        );
        assert!(!record.user_grant);
        assert_eq!(record.expires_at, iat + 1800);
        assert_eq!(record.family_expires_at, iat + 86400);
        assert_eq!(record.access_expires_at, iat + 3600);

        let plain = client_credentials(&server, "plain").await;
        assert!(plain.refresh.is_none());
        assert!(claims(&server, &plain).get("sid").is_none());
    }

    /// A refresh token never outlives its grant's `refresh_family_max_age`.
    #[tokio::test]
    async fn a_grants_first_refresh_token_ends_with_the_grant() {
        let server = server_with(AuthorizationServerSettings {
            refresh_family_max_age: Duration::from_secs(600),
            ..settings()
        })
        .await;
        let issued = client_credentials(&server, "svc").await;
        assert_eq!(issued.refresh.as_ref().unwrap().expires_in, 600);
        let record = stored_grant(&server, refresh_of(&issued)).await;
        assert_eq!(record.expires_at, record.family_expires_at);
        assert_eq!(record.family_expires_at, record.issued_at + 600);
    }

    /// The access tokens minted before a reload that shortened their
    /// lifetime keep a revocation of their grant in force until they die.
    #[tokio::test]
    async fn a_revocation_after_a_reload_outlives_the_tokens_minted_before_it() {
        let first = server().await;
        let issued = client_credentials(&first, "plain").await;
        let exp = claims(&first, &issued)["exp"].as_u64().unwrap();
        let reloaded = AuthorizationServer::new(
            AuthorizationServerSettings {
                access_token_ttl: Duration::from_secs(60),
                refresh_token_ttl: Duration::from_secs(60),
                ..settings()
            },
            first.store.clone(),
            Arc::new(Metrics::new().unwrap()),
            Some(&first),
        );
        assert_eq!(
            reloaded.grant_revoked_until(None),
            crate::issuer::revoked_until(exp)
        );
    }

    #[tokio::test]
    async fn password_grant_checks_the_password_and_the_users_scopes() {
        let server = server().await;
        let pw = client_of(&server, "pw");
        let issued = server
            .password(pw, &form(&[("username", "alice"), ("password", PASSWORD)]))
            .await
            .unwrap();
        assert_eq!(issued.scope, "orders:read");
        assert_eq!(claims(&server, &issued)["sub"], "alice");
        let record = stored_grant(&server, refresh_of(&issued)).await;
        assert!(record.user_grant);
        assert_eq!(record.subject, "alice");

        for (user, password) in [("alice", "wonderlend"), ("mallory", PASSWORD)] {
            let refused = server
                .password(pw, &form(&[("username", user), ("password", password)]))
                .await;
            assert_refused(refused, "invalid_grant");
        }
        let refused = server
            .password(
                pw,
                &form(&[
                    ("username", "alice"),
                    ("password", PASSWORD),
                    ("scope", "admin"),
                ]),
            )
            .await;
        assert_refused(refused, "invalid_scope");
        let refused = server.password(pw, &form(&[("username", "alice")])).await;
        assert_refused(refused, "invalid_request");
    }

    #[tokio::test]
    async fn a_refresh_rotates_the_token_and_keeps_the_grant() {
        let server = server().await;
        let first = client_credentials(&server, "svc").await;
        let sid = claims(&server, &first)["sid"].clone();
        let second = refresh_with(&server, "svc", &[("refresh_token", refresh_of(&first))])
            .await
            .unwrap();
        assert_eq!(second.scope, "orders:read reports:read");
        assert_eq!(second.refresh.as_ref().unwrap().refresh_count, 1);
        let minted = claims(&server, &second);
        assert_eq!(minted["sid"], sid);
        assert_eq!(minted["sub"], "svc");
        let (handle, _) = refresh_of(&first).split_once('.').unwrap();
        assert!(
            refresh_of(&second).starts_with(&format!("{handle}.1.")),
            "{}",
            refresh_of(&second)
        );
        let record = stored_grant(&server, refresh_of(&second)).await;
        assert_eq!(record.refresh_count, 1);
        assert_eq!(record.token, digest(refresh_of(&second)));
    }

    /// RFC 6749 6: a refresh may narrow the scope, never widen it past the
    /// grant's; a refused one leaves the token usable.
    #[tokio::test]
    async fn a_refresh_cannot_widen_the_grants_scope() {
        let server = server().await;
        let issued = server
            .client_credentials(
                client_of(&server, "svc"),
                &form(&[("scope", "orders:read")]),
            )
            .await
            .unwrap();
        let token = refresh_of(&issued);
        let wider = refresh_with(
            &server,
            "svc",
            &[
                ("refresh_token", token),
                ("scope", "orders:read reports:read"),
            ],
        )
        .await;
        assert_refused(wider, "invalid_scope");
        let same = refresh_with(&server, "svc", &[("refresh_token", token)])
            .await
            .unwrap();
        assert_eq!(same.scope, "orders:read");
    }

    #[tokio::test]
    async fn a_refresh_token_of_another_client_is_refused_and_left_to_its_owner() {
        let server = server().await;
        let issued = client_credentials(&server, "svc").await;
        let token = refresh_of(&issued);
        let refused = refresh_with(&server, "other", &[("refresh_token", token)]).await;
        assert_refused(refused, "invalid_grant");
        refresh_with(&server, "svc", &[("refresh_token", token)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_refresh_token_that_is_not_the_grants_is_refused() {
        let server = server().await;
        let issued = client_credentials(&server, "svc").await;
        let token = refresh_of(&issued);
        let (handle, _) = token.split_once('.').unwrap();
        for forged in [
            format!("{handle}.0.not-the-secret"),
            format!("{handle}.1.not-the-secret"),
            "unknown.0.secret".to_owned(),
            "no-generation".to_owned(),
        ] {
            let refused = refresh_with(&server, "svc", &[("refresh_token", &forged)]).await;
            assert_refused(refused, "invalid_grant");
        }
        let refused = refresh_with(&server, "svc", &[]).await;
        assert_refused(refused, "invalid_request");
        refresh_with(&server, "svc", &[("refresh_token", token)])
            .await
            .unwrap();
    }

    /// RFC 9700 4.14.2: a rotated token presented again ends the grant.
    #[tokio::test]
    async fn a_replayed_refresh_token_revokes_the_grant() {
        let server = server().await;
        let first = client_credentials(&server, "svc").await;
        let old = refresh_of(&first);
        let second = refresh_with(&server, "svc", &[("refresh_token", old)])
            .await
            .unwrap();
        let family = stored_grant(&server, refresh_of(&second)).await.family;
        let replay = refresh_with(&server, "svc", &[("refresh_token", old)]).await;
        assert_refused(replay, "invalid_grant");
        assert!(server.store.is_family_revoked(&family).await.unwrap());
        let after = refresh_with(&server, "svc", &[("refresh_token", refresh_of(&second))]).await;
        assert_refused(after, "invalid_grant");
    }

    /// A rotation that finds the grant rotated since it was read (by the
    /// replaced token's first use, whose answer was lost) is a retry within
    /// the reuse grace, and a replay without it.
    #[tokio::test]
    async fn a_rotation_racing_another_is_a_retry_only_within_the_grace() {
        for (grace, retried) in [(30, true), (0, false)] {
            let server = server_with(AuthorizationServerSettings {
                refresh_token_reuse_grace: Duration::from_secs(grace),
                ..settings()
            })
            .await;
            let svc = client_of(&server, "svc");
            let first = client_credentials(&server, "svc").await;
            let token = refresh_of(&first);
            let read_before = stored_grant(&server, token).await;
            refresh_with(&server, "svc", &[("refresh_token", token)])
                .await
                .unwrap();
            let presented = PresentedRefresh::parse(token).unwrap();
            let raced = server
                .issue(
                    svc,
                    "svc",
                    false,
                    &read_before.scope,
                    RefreshPlan::Rotate {
                        previous: Box::new(read_before.clone()),
                        handle: presented.handle.to_owned(),
                        presented: (presented.generation, presented.digest),
                    },
                )
                .await;
            let revoked = server
                .store
                .is_family_revoked(&read_before.family)
                .await
                .unwrap();
            if retried {
                let issued = raced.unwrap();
                assert_eq!(issued.refresh.as_ref().unwrap().refresh_count, 2);
                assert!(!revoked);
            } else {
                assert_refused(raced, "invalid_grant");
                assert!(revoked);
            }
        }
    }

    fn record_of_generation(generation: u32, now: u64) -> RefreshRecord {
        RefreshRecord {
            family: "fam".into(),
            client_id: "svc".into(),
            subject: "svc".into(),
            scope: "orders:read".into(),
            audience: "orders-api".into(),
            issued_at: 1,
            expires_at: now + 5,
            family_expires_at: now + 100_000,
            refresh_count: generation,
            token: digest("current"),
            previous: Some(digest("older")),
            retry_until: 7,
            user_grant: false,
            access_expires_at: 9,
        }
    }

    #[test]
    fn a_rotation_records_the_next_generation_and_what_may_be_retried() {
        let now = now_unix();
        let with_grace = AuthorizationServerSettings {
            refresh_token_reuse_grace: Duration::from_secs(10),
            ..settings()
        };
        let current = record_of_generation(3, now);
        let (token, next) =
            next_refresh(&with_grace, &current, "hndl", &current.token, now).unwrap();
        assert!(token.starts_with("hndl.4."), "{token}");
        assert_eq!(next.token, digest(&token));
        assert_eq!(next.refresh_count, 4);
        assert_eq!(next.issued_at, now);
        assert_eq!(next.expires_at, now + 1800);
        assert_eq!(next.previous, Some(current.token));
        assert_eq!(next.retry_until, now + 10);
        assert_eq!(next.access_expires_at, now + 3600);
        assert_eq!(next.family, current.family);
        assert_eq!(next.family_expires_at, current.family_expires_at);

        // Without a grace, the replaced token may not be used again.
        let (_, next) = next_refresh(&settings(), &current, "hndl", &current.token, now).unwrap();
        assert_eq!((next.previous, next.retry_until), (Some(current.token), 0));

        // A retry of the replaced token leaves what may be retried as it was.
        let (_, next) = next_refresh(&with_grace, &current, "hndl", &digest("older"), now).unwrap();
        assert_eq!(
            (next.previous, next.retry_until),
            (Some(digest("older")), 7)
        );

        // Never past the grant's end, nor before its access tokens' end.
        let ending = RefreshRecord {
            family_expires_at: now + 20,
            access_expires_at: now + 7200,
            ..current.clone()
        };
        let (_, next) = next_refresh(&with_grace, &ending, "hndl", &ending.token, now).unwrap();
        assert_eq!(next.expires_at, now + 20);
        assert_eq!(next.access_expires_at, now + 7200);

        let used_up = record_of_generation(u32::MAX, now);
        let e = next_refresh(&with_grace, &used_up, "hndl", &used_up.token, now).unwrap_err();
        assert_eq!(e.code, "invalid_grant");
    }

    #[tokio::test]
    async fn a_grants_rights_follow_the_config_as_it_stands() {
        let server = server().await;
        let svc = client_of(&server, "svc");
        let web = client_of(&server, "web");
        let rights = |client, subject, user_grant, scope| {
            server.rights_now(client, subject, user_grant, scope)
        };
        let both = vec!["orders:read".to_owned(), "reports:read".to_owned()];
        let orders = vec!["orders:read".to_owned()];
        assert_eq!(
            rights(svc, "svc", false, "orders:read reports:read").unwrap(),
            both
        );
        // A scope since taken from the client is not minted again.
        assert_eq!(
            rights(svc, "svc", false, "orders:read  admin").unwrap(),
            orders
        );
        // Nor one the user may not grant.
        assert_eq!(
            rights(web, "alice", true, "orders:read reports:read").unwrap(),
            orders
        );
        assert_eq!(
            rights(web, "bob", true, "orders:read reports:read").unwrap(),
            both
        );
        // A record of before `user_grant` whose subject is not its client's.
        assert_eq!(
            rights(web, "alice", false, "orders:read reports:read").unwrap(),
            orders
        );
        assert!(rights(svc, "svc", false, "").unwrap().is_empty());
        for (client, subject, user_grant, scope, code) in [
            (web, "carol", true, "orders:read", "invalid_grant"),
            (web, "web", true, "orders:read", "invalid_grant"),
            (svc, "svc", false, "admin", "invalid_scope"),
            (web, "alice", true, "reports:read", "invalid_scope"),
        ] {
            let e = rights(client, subject, user_grant, scope).unwrap_err();
            assert_eq!(e.code, code, "{subject} {scope}");
        }
    }

    #[tokio::test]
    async fn a_code_is_exchanged_with_its_pkce_verifier_and_redirect_uri() {
        let server = server().await;
        let record = code_record("web");
        let code = put_code(&server, &record).await;
        let issued = redeem(&server, "web", &code, WITH_PKCE).await.unwrap();
        assert_eq!(issued.scope, "orders:read");
        assert_eq!(issued.expires_in, 3600);
        let minted = claims(&server, &issued);
        assert_eq!(minted["sub"], "alice");
        assert_eq!(minted["sid"].as_str(), Some(record.family.as_str()));
        let grant = stored_grant(&server, refresh_of(&issued)).await;
        assert_eq!(grant.family, record.family);
        assert!(grant.user_grant);

        // A client without the refresh grant gets no refresh token, but a
        // grant its token names all the same.
        let record = CodeRecord {
            redirect_uri_sent: false,
            ..code_record("spa")
        };
        let code = put_code(&server, &record).await;
        let issued = redeem(&server, "spa", &code, &[("code_verifier", VERIFIER)])
            .await
            .unwrap();
        assert!(issued.refresh.is_none());
        assert_eq!(
            claims(&server, &issued)["sid"].as_str(),
            Some(record.family.as_str())
        );
    }

    /// RFC 6749 4.1.3: the `redirect_uri` of the authorization request, if
    /// it named one, and no other.
    #[tokio::test]
    async fn a_code_needs_the_redirect_uri_its_request_named() {
        let server = server().await;
        let other = "https://evil.test/cb";
        for (named, sent, ok) in [
            (true, Some(REDIRECT), true),
            (true, None, false),
            (true, Some(other), false),
            (false, None, true),
            (false, Some(REDIRECT), true),
            (false, Some(other), false),
        ] {
            let record = CodeRecord {
                redirect_uri_sent: named,
                ..code_record("web")
            };
            let code = put_code(&server, &record).await;
            let mut extra = vec![("code_verifier", VERIFIER)];
            extra.extend(sent.map(|uri| ("redirect_uri", uri)));
            let result = redeem(&server, "web", &code, &extra).await;
            if ok {
                result.unwrap();
            } else {
                assert_refused(result, "invalid_grant");
            }
        }
    }

    #[tokio::test]
    async fn a_code_is_refused_without_its_pkce_verifier_or_with_another() {
        let server = server().await;
        let short = "short-verifier";
        let wrong = "x".repeat(43);
        for (challenge, verifier) in [
            (Some(s256(VERIFIER)), Some(wrong.as_str())),
            (Some(s256(VERIFIER)), None),
            // Matching, but not of RFC 7636's form.
            (Some(s256(short)), Some(short)),
            // No downgrade: a verifier for a code without a challenge.
            (None, Some(VERIFIER)),
        ] {
            let record = CodeRecord {
                code_challenge: challenge,
                ..code_record("web")
            };
            let code = put_code(&server, &record).await;
            let mut extra = vec![("redirect_uri", REDIRECT)];
            extra.extend(verifier.map(|v| ("code_verifier", v)));
            let refused = redeem(&server, "web", &code, &extra).await;
            assert_refused(refused, "invalid_grant");
        }
    }

    /// A public client must use PKCE; a confidential one may do without.
    #[tokio::test]
    async fn only_a_confidential_client_may_exchange_a_code_without_pkce() {
        let server = server().await;
        for (client, ok) in [("web", true), ("spa", false)] {
            let record = CodeRecord {
                code_challenge: None,
                ..code_record(client)
            };
            let code = put_code(&server, &record).await;
            let result = redeem(&server, client, &code, &[("redirect_uri", REDIRECT)]).await;
            if ok {
                result.unwrap();
            } else {
                assert_refused(result, "invalid_grant");
            }
        }
    }

    #[tokio::test]
    async fn an_expired_unknown_or_other_clients_code_is_refused() {
        let server = server().await;
        let expired = CodeRecord {
            expires_at: now_unix(),
            ..code_record("web")
        };
        let code = put_code(&server, &expired).await;
        assert_refused(
            redeem(&server, "web", &code, WITH_PKCE).await,
            "invalid_grant",
        );
        let code = put_code(&server, &code_record("web")).await;
        assert_refused(
            redeem(&server, "spa", &code, WITH_PKCE).await,
            "invalid_grant",
        );
        assert_refused(
            redeem(&server, "web", "no-such-code", WITH_PKCE).await,
            "invalid_grant",
        );
        let refused = server
            .authorization_code(client_of(&server, "web"), &form(WITH_PKCE))
            .await;
        assert_refused(refused, "invalid_request");
    }

    /// RFC 6749 4.1.2: a code used twice revokes what it issued; presented
    /// by another client, it ends nothing.
    #[tokio::test]
    async fn a_code_used_again_by_its_client_revokes_its_grant_and_by_another_does_not() {
        let server = server().await;
        let record = code_record("web");
        let code = put_code(&server, &record).await;
        let issued = redeem(&server, "web", &code, WITH_PKCE).await.unwrap();
        assert_refused(
            redeem(&server, "spa", &code, WITH_PKCE).await,
            "invalid_grant",
        );
        assert!(!server
            .store
            .is_family_revoked(&record.family)
            .await
            .unwrap());
        refresh_with(&server, "web", &[("refresh_token", refresh_of(&issued))])
            .await
            .unwrap();

        assert_refused(
            redeem(&server, "web", &code, WITH_PKCE).await,
            "invalid_grant",
        );
        assert!(server
            .store
            .is_family_revoked(&record.family)
            .await
            .unwrap());
    }

    fn issued(scope: &str, refresh: bool) -> Issued {
        Issued {
            access_token: "at".into(),
            expires_in: 3600,
            scope: scope.into(),
            refresh: refresh.then(|| IssuedRefresh {
                token: "h.2.s".into(),
                expires_in: 1800,
                issued_at: 1_700_000_000,
                refresh_count: 2,
            }),
        }
    }

    #[tokio::test]
    async fn the_standard_response_is_rfc_6749s_with_the_seed_fields() {
        let server = server().await;
        let response = server.render(issued("orders:read", true));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[http::header::CACHE_CONTROL], "no-store");
        assert_eq!(
            body_of(response).await,
            json!({
                "token_type": "Bearer",
                "access_token": "at",
                "expires_in": 3600,
                "scope": "orders:read",
                "status": "approved",
                "refresh_token": "h.2.s",
                "refresh_token_expires_in": 1800,
                "refresh_token_issued_at": 1_700_000_000u64,
                "refresh_count": 2,
            })
        );
        let body = body_of(server.render(issued("", false))).await;
        assert!(body.get("scope").is_none(), "{body}");
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert_eq!(body["expires_in"], 3600);
    }

    #[tokio::test]
    async fn the_apigee_response_has_numbers_as_strings_and_the_issue_time_in_ms() {
        let server = server_with(AuthorizationServerSettings {
            response_style: ResponseStyle::Apigee,
            ..settings()
        })
        .await;
        assert_eq!(
            body_of(server.render(issued("", true))).await,
            json!({
                "token_type": "BearerToken",
                "access_token": "at",
                "expires_in": "3600",
                "scope": "",
                "status": "approved",
                "refresh_token": "h.2.s",
                "refresh_token_expires_in": "1800",
                "refresh_token_issued_at": "1700000000000",
                "refresh_count": "2",
            })
        );
    }
}
