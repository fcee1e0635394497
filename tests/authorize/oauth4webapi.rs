//! The built-in authorization server driven by an OAuth 2.0 client library
//! nobody on the team wrote: panva's `oauth4webapi`
//! (`tests/interop/client.mjs`, needs `node`), which checks every answer
//! against the RFCs it implements. Discovery (RFC 8414: the issuer and
//! endpoints), the authorization code grant with PKCE for a public and a
//! confidential client (the redirect's `state` and RFC 9207 `iss`, then
//! the token response of RFC 6749 5.1) and a denied request, refresh, client credentials with
//! both secret methods and a wrong secret, the password grant (with a wrong
//! password, and for a client not allowed it), introspection (RFC 7662),
//! revocation (RFC 7009), and the access token as a resource server checks
//! it (RFC 9068, with the keys from the metadata's `jwks_uri`). The
//! sign-in and consent pages are driven by this file's own helpers.

use super::*;

use serde_json::json;

/// `client.mjs`: one step per call.
struct Client(NodeLines);

impl Client {
    /// Starts `client.mjs` and discovers the server behind `gw`.
    fn discover(gw: &Gateway) -> (Self, Value) {
        let mut client = Self(NodeLines::start("client.mjs"));
        let metadata = client
            .step(json!({"step": "discover", "issuer": ISS, "gateway": gw.url("")}))
            .unwrap_or_else(|e| panic!("discovery: {e}"));
        (client, metadata)
    }

    /// Runs `step`: `Ok` with its result, or `Err` with what the library
    /// threw.
    fn step(&mut self, step: Value) -> Result<Value, Value> {
        // The library's requests go to a gateway on this runtime: another
        // worker serves them while this one waits for the answer.
        let answer = tokio::task::block_in_place(|| self.0.ask(&step.to_string()));
        let answer: Value = serde_json::from_str(&answer).unwrap();
        match answer.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(answer["error"].clone()),
        }
    }

    /// Runs `step`, which must succeed.
    #[track_caller]
    fn ok(&mut self, step: Value) -> Value {
        let name = step["step"].clone();
        self.step(step)
            .unwrap_or_else(|e| panic!("{name}: the library refused the answer: {e}"))
    }
}

/// The callback URL the browser is sent to once `alice` decides (`action`:
/// approve or deny) on `client`'s request: with `code` or `error`, `state`
/// and `iss`.
async fn callback(
    gw: &Gateway,
    client: &str,
    redirect_uri: &str,
    challenge: &str,
    action: &str,
) -> String {
    let p = params(client, redirect_uri, "orders:read", Some(challenge));
    let (page, session) = consent(gw, &p, "alice").await;
    let decided = decide(gw, &page, &session, action).await;
    assert_eq!(decided.status, 303, "{}", decided.text());
    decided.header("location").unwrap()
}

/// The standard config with one more client, `pw` (confidential; the
/// password grant and refresh; orders:read).
fn config_with_password_client(upstream: SocketAddr) -> String {
    let yaml = config(upstream, "").replace(
        "  users:\n",
        &format!(
            "    - client_id: pw\n      client_secret_hash: \"{}\"\n      grants: [password, refresh_token]\n      scopes: [orders:read]\n      audience: orders-api\n  users:\n",
            secret_hash()
        ),
    );
    assert!(yaml.contains("client_id: pw"));
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_client_library_accepts_every_answer_of_every_grant() {
    if !interop_node_modules("the oauth4webapi client (tests/authorize/oauth4webapi.rs)") {
        return;
    }
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with_password_client(upstream.addr)).await;
    let (mut client, metadata) = Client::discover(&gw);
    assert_eq!(metadata["issuer"], ISS);
    assert_eq!(metadata["token_endpoint"], format!("{ISS}{TOKEN}"));

    // Authorization code with PKCE, public client (`spa`).
    let c = pkce();
    let location = callback(&gw, "spa", APP_CB, &c.challenge, "approve").await;
    let tokens = client.ok(json!({
        "step": "code", "client_id": "spa", "callback": location, "state": NASTY_STATE,
        "redirect_uri": APP_CB, "code_verifier": c.verifier,
    }));
    assert_eq!(tokens["token_type"], "bearer", "{tokens}");
    assert_eq!(
        orders_status(&gw, &s(&tokens, "access_token")).await.status,
        200
    );
    let claims = client.ok(json!({
        "step": "validate_access_token", "token": s(&tokens, "access_token"),
        "audience": "orders-api",
    }));
    assert_eq!(
        (&claims["client_id"], &claims["sub"]),
        (&json!("spa"), &json!("alice")),
        "{claims}"
    );

    // A denial reaches the client as RFC 6749 4.1.2.1 `access_denied`,
    // from this issuer (RFC 9207).
    let location = callback(&gw, "spa", APP_CB, &pkce().challenge, "deny").await;
    let denied = client
        .step(json!({"step": "callback", "client_id": "spa", "callback": location, "state": NASTY_STATE}))
        .unwrap_err();
    assert_eq!(
        (&denied["kind"], &denied["error"]),
        (&json!("authorization_response"), &json!("access_denied")),
        "{denied}"
    );

    // Refresh.
    let refreshed = client.ok(json!({
        "step": "refresh", "client_id": "spa", "refresh_token": s(&tokens, "refresh_token"),
    }));
    let access = s(&refreshed, "access_token");
    assert_eq!(orders_status(&gw, &access).await.status, 200);

    // Authorization code with PKCE, confidential client (`web`), both
    // client authentication methods.
    for auth in ["basic", "post"] {
        let c = pkce();
        let location = callback(&gw, "web", WEB_CB, &c.challenge, "approve").await;
        let tokens = client.ok(json!({
            "step": "code", "client_id": "web", "secret": SECRET, "auth": auth,
            "callback": location, "state": NASTY_STATE, "redirect_uri": WEB_CB,
            "code_verifier": c.verifier,
        }));
        assert_eq!(
            orders_status(&gw, &s(&tokens, "access_token")).await.status,
            200
        );
    }

    // Client credentials, both methods; then a wrong secret, which the
    // library reads as RFC 6749 5.2 `invalid_client`.
    for auth in ["basic", "post"] {
        let tokens = client.ok(json!({
            "step": "client_credentials", "client_id": "svc", "secret": SECRET, "auth": auth,
            "scope": "orders:read",
        }));
        assert_eq!(
            orders_status(&gw, &s(&tokens, "access_token")).await.status,
            200
        );
    }
    for auth in ["basic", "post"] {
        let refused = client
            .step(json!({
                "step": "client_credentials", "client_id": "svc", "secret": "wrong",
                "auth": auth, "scope": "orders:read",
            }))
            .unwrap_err();
        // RFC 6749 5.2: with HTTP Basic tried, 401 and a challenge of that
        // scheme; with the secret in the form, 400 (401 is optional there).
        let error = if auth == "basic" {
            assert_eq!(refused["kind"], "challenge", "{refused}");
            assert_eq!(refused["status"], 401, "{refused}");
            assert_eq!(refused["challenges"][0]["scheme"], "basic", "{refused}");
            &refused["body"]["error"]
        } else {
            assert_eq!(refused["status"], 400, "{refused}");
            &refused["error"]
        };
        assert_eq!(error, "invalid_client", "{refused}");
    }

    // The password grant (RFC 6749 4.3), both methods; its refresh token
    // refreshes. A wrong password is RFC 6749 5.2 `invalid_grant` (400),
    // and a client not registered for the grant `unauthorized_client`.
    for auth in ["basic", "post"] {
        let tokens = client.ok(json!({
            "step": "password", "client_id": "pw", "secret": SECRET, "auth": auth,
            "username": "carol", "password": PASSWORD, "scope": "orders:read",
        }));
        assert_eq!(tokens["scope"], "orders:read", "{tokens}");
        let claims = client.ok(json!({
            "step": "validate_access_token", "token": s(&tokens, "access_token"),
            "audience": "orders-api",
        }));
        assert_eq!(
            (&claims["client_id"], &claims["sub"]),
            (&json!("pw"), &json!("carol")),
            "{claims}"
        );
        let refreshed = client.ok(json!({
            "step": "refresh", "client_id": "pw", "secret": SECRET, "auth": auth,
            "refresh_token": s(&tokens, "refresh_token"),
        }));
        assert_eq!(
            orders_status(&gw, &s(&refreshed, "access_token"))
                .await
                .status,
            200
        );
    }
    for (client_id, password, error) in [
        ("pw", "wrong horse", "invalid_grant"),
        ("svc", PASSWORD, "unauthorized_client"),
    ] {
        let refused = client
            .step(json!({
                "step": "password", "client_id": client_id, "secret": SECRET, "auth": "basic",
                "username": "carol", "password": password, "scope": "orders:read",
            }))
            .unwrap_err();
        assert_eq!(
            (&refused["kind"], &refused["status"], &refused["error"]),
            (&json!("response_body"), &json!(400), &json!(error)),
            "{client_id}: {refused}"
        );
    }

    // Introspection of the refreshed access token by a confidential client.
    let answer = client.ok(json!({
        "step": "introspect", "client_id": "svc", "secret": SECRET, "token": access,
    }));
    assert_eq!(
        (&answer["active"], &answer["client_id"]),
        (&json!(true), &json!("spa")),
        "{answer}"
    );

    // Revocation of the refresh token by its public client; refreshing
    // with it is then `invalid_grant`.
    let refresh_token = s(&refreshed, "refresh_token");
    client.ok(json!({"step": "revoke", "client_id": "spa", "token": refresh_token}));
    let refused = client
        .step(json!({"step": "refresh", "client_id": "spa", "refresh_token": refresh_token}))
        .unwrap_err();
    assert_eq!(
        (&refused["status"], &refused["error"]),
        (&json!(400), &json!("invalid_grant")),
        "{refused}"
    );
}
