//! JWKS, RFC 8414 metadata, RFC 7662 introspection and RFC 7009 revocation.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clients;
use super::store::{RefreshRecord, Standing};
use super::token::PresentedRefresh;
use super::{json_response, read_form, AuthorizationServer, OAuthError, LEEWAY_SECS};
use crate::auth::jwt::now_unix;
use crate::config::{Client, Grant};
use crate::proxy::Body;

/// The RFC 8414 authorization server metadata document of `s`.
pub(crate) fn metadata_document(s: &super::AuthorizationServerSettings) -> String {
    let base = origin(&s.issuer);
    let url = |path: &str| format!("{base}{path}");
    let mut scopes: Vec<&str> = s
        .clients
        .iter()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut grants: Vec<&str> = s
        .clients
        .iter()
        .flat_map(|c| c.grants.iter().map(|g| g.as_str()))
        .collect();
    grants.sort_unstable();
    grants.dedup();
    let body = json!({
        "issuer": s.issuer,
        "token_endpoint": url(&s.paths.token),
        "authorization_endpoint": url(&s.paths.authorize),
        "jwks_uri": url(&s.paths.jwks),
        "introspection_endpoint": url(&s.paths.introspection),
        "revocation_endpoint": url(&s.paths.revocation),
        "grant_types_supported": grants,
        "response_types_supported": ["code"],
        // Left out, it would mean ["query", "fragment"] (RFC 8414 2).
        "response_modes_supported": ["query"],
        "scopes_supported": scopes,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    });
    body.to_string()
}

impl AuthorizationServer {
    pub(crate) fn jwks(&self) -> Response<Body> {
        let mut response = Response::new(Either::Right(Full::new(self.jwks_body.clone())));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        response
    }

    /// RFC 8414 authorization server metadata.
    pub(crate) fn metadata(&self) -> Response<Body> {
        let mut response = Response::new(Either::Right(Full::new(self.metadata_body.clone())));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        response
    }

    /// RFC 7662: for authenticated clients; access tokens (JWT) and refresh tokens.
    pub(crate) async fn introspect(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, OAuthError> {
        let req = read_form(request).await?;
        let presented = clients::presented(&req.headers, &req.form, req.query_has_credentials())?;
        // RFC 7662 2.3: a resource server's invalid credentials get a 401
        // however they were sent (its callers are services, not browsers).
        let caller = self
            .clients
            .authenticate(presented, false)
            .await
            .map_err(OAuthError::challenged)?;
        let token = req
            .form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let answer = match self.active_access_token(token, 0).await? {
            Some(claims) => {
                let mut answer = json!({ "active": true, "token_type": "Bearer" });
                for field in [
                    "scope",
                    "client_id",
                    "sub",
                    "aud",
                    "iss",
                    "exp",
                    "iat",
                    "jti",
                ] {
                    if let Some(v) = claims.get(field) {
                        answer[field] = v.clone();
                    }
                }
                answer
            }
            None => self.refresh_token_answer(token, &caller).await?,
        };
        Ok(json_response(StatusCode::OK, answer.to_string()))
    }

    /// The grant a presented refresh token names, with where the token
    /// stands in it; `None` when it names none (not of a refresh token's
    /// form, an unknown grant, one whose current token has expired).
    async fn refresh_grant(
        &self,
        token: &str,
    ) -> Result<Option<(RefreshRecord, Standing)>, OAuthError> {
        let Some(presented) = PresentedRefresh::parse(token) else {
            return Ok(None);
        };
        let record = self
            .store
            .get_refresh(&presented.grant)
            .await
            .map_err(|e| self.store_failed(&e))?;
        Ok(record.map(|record| {
            let standing = record.standing(now_unix(), presented.generation, &presented.digest);
            (record, standing)
        }))
    }

    /// Whether a refresh token can still be redeemed: the grant's current
    /// one (or, within the reuse grace, the one it replaced), and the grant
    /// not revoked.
    async fn refresh_is_live(
        &self,
        record: &RefreshRecord,
        standing: Standing,
    ) -> Result<bool, OAuthError> {
        if !matches!(standing, Standing::Current | Standing::Retry) {
            return Ok(false);
        }
        let revoked = self
            .store
            .is_family_revoked(&record.family)
            .await
            .map_err(|e| self.store_failed(&e))?;
        Ok(!revoked)
    }

    /// A refresh token is active only to the client it was issued to: it is
    /// no credential a resource server may accept (RFC 7662 4), and any
    /// other client learning that it is live gains nothing but the means
    /// to probe. It is active only while a refresh with it would pass as the
    /// config stands now (the client still has the grant type, the user
    /// still exists), with the scope such a refresh could have.
    async fn refresh_token_answer(
        &self,
        token: &str,
        caller: &Client,
    ) -> Result<Value, OAuthError> {
        let inactive = json!({ "active": false });
        let Some((record, standing)) = self.refresh_grant(token).await? else {
            return Ok(inactive);
        };
        if record.client_id != caller.client_id
            || !caller.grants.contains(&Grant::RefreshToken)
            || !self.refresh_is_live(&record, standing).await?
        {
            return Ok(inactive);
        }
        let Ok(scope) = self.rights_now(caller, &record.subject, record.user_grant, &record.scope)
        else {
            return Ok(inactive);
        };
        // A token used once more within the reuse grace ends with it.
        let exp = match standing {
            Standing::Retry => record.expires_at.min(record.retry_until),
            _ => record.expires_at,
        };
        // `token_type` is an access token's type (RFC 7662 2.2 by RFC 6749
        // 5.1): a refresh token says what it is in `token_use`, as Ory
        // Hydra's answers do (and as the gateway's introspection reads).
        Ok(json!({
            "active": true,
            "token_use": "refresh_token",
            "scope": scope.join(" "),
            "client_id": record.client_id,
            "sub": record.subject,
            // The audience a refresh would mint for now.
            "aud": caller.audience,
            "iss": self.settings.issuer,
            "iat": record.issued_at,
            "exp": exp,
        }))
    }

    /// The claims of a valid, unrevoked access token signed by this server,
    /// its lifetime stretched by `leeway` seconds.
    async fn active_access_token(
        &self,
        token: &str,
        leeway: u64,
    ) -> Result<Option<serde_json::Map<String, Value>>, OAuthError> {
        let Some(claims) = self.verify_own(token, "at+jwt", leeway) else {
            return Ok(None);
        };
        if self.is_revoked(&claims).await? {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    /// Whether an access token's `jti` or grant (`sid`) was revoked.
    pub async fn is_revoked(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<bool, OAuthError> {
        let jti = claims.get("jti").and_then(Value::as_str);
        let sid = claims.get("sid").and_then(Value::as_str);
        // Counted and logged once, by `store_failed`: `revoked_ids` is the
        // gateway's, with its throttled log line.
        self.check_revoked_ids(jti, sid)
            .await
            .map_err(|e| self.store_failed(&e))
    }

    /// Revocation check by ids (the gateway's hot path uses this for tokens
    /// of the built-in issuer). A store failure is logged with its cause
    /// (throttled); the request is refused with 503 `store_unavailable`.
    pub async fn revoked_ids(
        &self,
        jti: Option<&str>,
        sid: Option<&str>,
    ) -> Result<bool, super::store::StoreError> {
        let checked = self.check_revoked_ids(jti, sid).await;
        if let Err(e) = &checked {
            self.count_store_error(e);
            if let Some(suppressed) = self.revocation_check_log.allow() {
                tracing::warn!(error = %e, suppressed, "revocation check failed: the store did not answer");
            }
        }
        checked
    }

    async fn check_revoked_ids(
        &self,
        jti: Option<&str>,
        sid: Option<&str>,
    ) -> Result<bool, super::store::StoreError> {
        self.store.is_either_revoked(jti, sid).await
    }

    /// RFC 7009: revokes refresh tokens (their whole grant) and access tokens
    /// issued to the calling client; unknown or invalid tokens are not an
    /// error, and another client's valid token is refused (RFC 7009 2.1).
    pub(crate) async fn revoke(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, OAuthError> {
        let req = read_form(request).await?;
        let presented = clients::presented(&req.headers, &req.form, req.query_has_credentials())?;
        let client = self.clients.authenticate(presented, true).await?;
        let token = req
            .form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let grant = self
            .refresh_grant(token)
            .await?
            .filter(|(_, standing)| *standing != Standing::Unknown);
        if let Some((record, standing)) = grant {
            if record.client_id != client.client_id {
                // Another client's token that is no longer valid is as good
                // as unknown (RFC 7009 2.2).
                if !self.refresh_is_live(&record, standing).await? {
                    return Ok(revoked_answer());
                }
                return Err(not_issued_to_caller());
            }
            // The grant's current token or a rotated one, by its client:
            // either way the grant ends.
            self.store
                .revoke_family(&record.family, self.grant_revoked_until(Some(&record)))
                .await
                .map_err(|e| self.store_failed(&e))?;
        } else if let Some(claims) = self.active_access_token(token, LEEWAY_SECS).await? {
            // A token the gateway still accepts (within its leeway past
            // `exp`) can still be revoked, and stays revoked that long.
            let owner = claims.get("client_id").and_then(Value::as_str);
            let jti = claims.get("jti").and_then(Value::as_str);
            let exp = claims
                .get("exp")
                .and_then(Value::as_u64)
                .unwrap_or_else(now_unix);
            if let (Some(owner), Some(jti)) = (owner, jti) {
                if owner != client.client_id {
                    return Err(not_issued_to_caller());
                }
                self.store
                    .revoke_access(jti, super::revoked_until(exp))
                    .await
                    .map_err(|e| self.store_failed(&e))?;
            }
        }
        Ok(revoked_answer())
    }
}

/// `scheme://authority` of the issuer, where its endpoints live.
fn origin(issuer: &str) -> String {
    match issuer.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(s), Some(a)) => format!("{s}://{a}"),
            _ => issuer.trim_end_matches('/').to_owned(),
        },
        Err(_) => issuer.trim_end_matches('/').to_owned(),
    }
}

/// RFC 7009 2.2: the status says it all; the body is an empty JSON object,
/// so that a client parsing by content type finds JSON.
fn revoked_answer() -> Response<Body> {
    json_response(StatusCode::OK, "{}".to_owned())
}

/// RFC 7009 2.1: a client revoking a valid token issued to another is
/// refused, so that it learns the token stays valid.
fn not_issued_to_caller() -> OAuthError {
    OAuthError::unauthorized_client("the token was not issued to this client")
}
