//! `scopegate demo`: a complete playground with no files and no other programs.
//! The built-in authorization server (an in-memory key, a confidential and a
//! public client, a user), an echo upstream, five routes, and curl commands
//! to paste.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The demo issuer's `iss`.
pub const DEMO_ISSUER: &str = "https://demo.scopegate.local";
/// The demo audience.
pub const DEMO_AUDIENCE: &str = "demo-api";

pub use crate::issuer::keys::SigningKey;

/// Serves a fixed JSON body on every path (a stand-in IdP's JWKS endpoint).
pub async fn serve_static_json(listener: TcpListener, body: Arc<str>) {
    serve(listener, move |_req| {
        let body = Arc::clone(&body);
        async move {
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
    })
    .await;
}

/// An upstream that answers with what it received (method, path, headers,
/// and the body's length).
pub async fn serve_echo(listener: TcpListener) {
    serve(listener, |req: Request<Incoming>| async move {
        let (parts, mut body) = req.into_parts();
        // Counted as it comes, not kept: /public needs no token, and a
        // body held whole would let anyone fill the demo's memory.
        let mut body_bytes: usize = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                body_bytes = body_bytes.saturating_add(data.len());
            }
        }
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .filter(|(name, _)| *name != header::AUTHORIZATION)
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let echo = serde_json::json!({
            "upstream": "echo",
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        let mut r = Response::new(Full::new(Bytes::from(format!("{echo:#}\n"))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    })
    .await;
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                crate::server::accept_failed(&e).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The demo client's id (API key) and secret.
pub const DEMO_CLIENT: (&str, &str) = ("demo-app", "demo-secret");
/// The demo user's name and password (authorization code flow).
pub const DEMO_USER: (&str, &str) = ("alice", "wonderland");
/// The demo public client (a browser app using PKCE).
pub const DEMO_PUBLIC_CLIENT: &str = "demo-spa";

/// The demo configuration: the built-in authorization server with the seed's
/// token path, and an echo upstream. `listen` is the address clients use
/// (in the issuer and redirect URIs); the browser client, whose sign-in
/// cookies browsers keep only from loopback over plain http, is there only
/// when it is a loopback address.
pub fn demo_config_yaml(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    secret_hash: &str,
    password_hash: &str,
) -> String {
    let (client_id, _) = DEMO_CLIENT;
    let (username, _) = DEMO_USER;
    let browser_client = if signs_in_browsers(listen) {
        format!(
            r#"    - client_id: {DEMO_PUBLIC_CLIENT}
      name: Demo single-page app
      grants: [authorization_code, refresh_token]
      scopes: [orders:read]
      audience: {DEMO_AUDIENCE}
      redirect_uris: ["http://{listen}/callback"]
"#
        )
    } else {
        String::new()
    };
    // Reachable from other machines over plain http, as the warning says:
    // its secrets are public anyway.
    let plain_http = if signs_in_browsers(listen) {
        ""
    } else {
        "  allow_plain_http: true\n"
    };
    format!(
        r#"server:
  listen: "{listen}"
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: "{admin}"
authorization_server:
  issuer: "http://{listen}"
{plain_http}  token_path: /auth/v2/accesstoken
  access_token_ttl: 1h
  refresh_token_ttl: 30m
  clients:
    - client_id: {client_id}
      client_secret_hash: "{secret_hash}"
      grants: [client_credentials, refresh_token]
      scopes: [orders:read]
      audience: {DEMO_AUDIENCE}
{browser_client}  users:
    - username: {username}
      password_hash: "{password_hash}"
upstreams:
  echo:
    url: "http://{upstream}"
routes:
  - path: /public
    upstream: echo
    auth: none
  - path: /callback
    upstream: echo
    auth: none
  - path: /orders
    methods: [GET]
    upstream: echo
    scopes: [orders:read]
  - path: /orders/{{id}}
    methods: [GET]
    upstream: echo
    scopes: [orders:read]
  - path: /admin
    upstream: echo
    scopes: [admin]
"#
    )
}

/// Whether browsers can sign in at `http://{listen}`: they keep the
/// sign-in page's `Secure` cookies over plain http from loopback only.
fn signs_in_browsers(listen: SocketAddr) -> bool {
    format!("http://{listen}")
        .parse()
        .is_ok_and(|uri| crate::config::validate::browsers_keep_secure_cookies(&uri))
}

/// The address clients on this machine reach `bound` at: a loopback one for
/// an unspecified address (`0.0.0.0:8080`, which takes loopback's
/// connections too), which no URL can name.
fn reachable_at(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

/// The demo's proxy address unless `--listen` names another.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The demo's admin address unless `--admin-listen` names another (Prometheus's
/// own default port, so often taken on a developer's machine).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Binds `chosen`, or else the default address, or, when that is taken, a
/// free loopback port (the printed steps use whichever was bound).
async fn bind_demo(
    chosen: Option<SocketAddr>,
    default: &str,
    flag: &str,
) -> Result<TcpListener, String> {
    if let Some(addr) = chosen {
        return TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e} (try {flag} 127.0.0.1:0)"));
    }
    match TcpListener::bind(default).await {
        Ok(listener) => Ok(listener),
        Err(e) => {
            crate::cli::say(format_args!(
                "{default} is not free ({e}); using another loopback port instead"
            ));
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1:0: {e}"))
        }
    }
}

/// Runs the demo until Ctrl-C, on `listen` and `admin` if given.
pub async fn run(listen: Option<SocketAddr>, admin: Option<SocketAddr>) -> Result<(), String> {
    if let (Some(listen), Some(admin)) = (listen, admin) {
        if listen == admin && listen.port() != 0 {
            return Err(format!(
                "--listen and --admin-listen both name {listen}: give the admin listener another port"
            ));
        }
    }
    let upstream_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the demo's echo upstream on 127.0.0.1:0: {e}"))?;
    let upstream_addr = upstream_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_echo(upstream_listener));
    let listener = bind_demo(listen, DEFAULT_LISTEN, "--listen").await?;
    let admin_listener = bind_demo(admin, DEFAULT_ADMIN_LISTEN, "--admin-listen").await?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let admin = admin_listener.local_addr().map_err(|e| e.to_string())?;
    if !bound.ip().to_canonical().is_loopback() {
        crate::cli::say(format_args!(
            "warning: --listen {bound} is reachable from other machines: the demo's secrets (client secret, alice's password) are public, and its echo upstream shows every request's headers"
        ));
    }
    if !admin.ip().to_canonical().is_loopback() {
        crate::cli::say(format_args!(
            "warning: --admin-listen {admin} is reachable from other machines: its metrics are public"
        ));
    }

    let (client_id, client_secret) = DEMO_CLIENT;
    let hash = crate::issuer::clients::hash_secret(client_secret)?;
    let (username, password) = DEMO_USER;
    let password_hash = crate::issuer::clients::hash_secret(password)?;
    let listen = reachable_at(bound);
    let yaml = demo_config_yaml(listen, admin, upstream_addr, &hash, &password_hash);
    // Named as the proxy's address is: `0.0.0.0` is no address to browse to.
    let admin = reachable_at(admin);
    let verifier = crate::issuer::random_token().map_err(|e| e.description)?;
    let challenge = crate::issuer::token::s256(&verifier);
    let authorize_url = format!(
        "http://{listen}/oauth2/authorize?response_type=code&client_id={DEMO_PUBLIC_CLIENT}&redirect_uri=http%3A%2F%2F{listen}%2Fcallback&scope=orders%3Aread&state=demo-state&code_challenge={challenge}&code_challenge_method=S256"
    );
    let config =
        crate::config::load_str("<demo>", Path::new("."), &yaml).map_err(|e| e.to_string())?;
    let field = |name: &str| format!("sed -n 's/.*\"{name}\":\"\\([^\"]*\\)\".*/\\1/p'");
    let browser_step = if signs_in_browsers(listen) {
        format!(
            "# 7. Authorization code + PKCE in a browser: open this URL, sign in as {username} / {password},\n\
             #    allow access; the echo upstream at /callback shows the code. Then exchange it:\n\
             {authorize_url}\n\
             curl -s -X POST http://{listen}/auth/v2/accesstoken -d grant_type=authorization_code -d client_id={DEMO_PUBLIC_CLIENT} \\\n\
             \x20    -d redirect_uri=http://{listen}/callback -d code_verifier={verifier} -d code=PASTE_CODE_HERE\n\n"
        )
    } else {
        format!(
            "# 7. No browser sign-in on {listen}: browsers keep its cookies over plain http from loopback only\n\
             #    (run the demo on 127.0.0.1 or 0.0.0.0 for it).\n\n"
        )
    };
    let steps = format!(
        "\nscopegate demo is running on http://{listen} (admin: http://{admin}/metrics)\n\n\
         # 1. Get a token exactly as the seed's client credentials example does:\n\
         RESP=$(curl -s -X POST 'http://{listen}/auth/v2/accesstoken?grant_type=client_credentials' \\\n\
         \x20    -H 'Content-Type: application/x-www-form-urlencoded' -H 'Cache-Control: no-cache' \\\n\
         \x20    -d 'client_id={client_id}&client_secret={client_secret}'); echo \"$RESP\"\n\
         TOKEN=$(printf %s \"$RESP\" | {token}); REFRESH=$(printf %s \"$RESP\" | {refresh})\n\n\
         # 2. 200: call a protected route that requires orders:read\n\
         curl -i -H \"Authorization: Bearer $TOKEN\" http://{listen}/orders/42\n\n\
         # 3. Refresh the token (refresh_count goes to 1; the old refresh token is now spent)\n\
         curl -s -X POST http://{listen}/auth/v2/accesstoken -u {client_id}:{client_secret} \\\n\
         \x20    -d grant_type=refresh_token -d \"refresh_token=$REFRESH\"\n\n\
         # 4. 403: the token lacks the `admin` scope\n\
         curl -i -H \"Authorization: Bearer $TOKEN\" http://{listen}/admin\n\n\
         # 5. 401: no token at all; 200: a public route\n\
         curl -i http://{listen}/orders/42\n\
         curl -i http://{listen}/public\n\n\
         # 6. Introspect the token (RFC 7662: \"active\":true), revoke it (RFC 7009), and see it refused (401)\n\
         curl -s -X POST http://{listen}/oauth2/introspect -u {client_id}:{client_secret} -d \"token=$TOKEN\"; echo\n\
         curl -s -X POST http://{listen}/oauth2/revoke -u {client_id}:{client_secret} -d \"token=$TOKEN\"\n\
         curl -i -H \"Authorization: Bearer $TOKEN\" http://{listen}/orders/42\n\n\
         {browser_step}\
         Metadata: http://{listen}/.well-known/oauth-authorization-server  Keys: http://{listen}/.well-known/jwks.json\n\
         Press Ctrl-C to stop.\n",
        token = field("access_token"),
        refresh = field("refresh_token"),
    );
    // Written, not `println!`ed: a reader that stops reading (`| head`)
    // must not take the running demo down with a panic.
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_all(steps.as_bytes())
            .and_then(|()| stdout.flush())
        {
            tracing::warn!(error = %e, "could not print the demo's steps");
        }
    }
    crate::server::run(
        config,
        listener,
        admin_listener,
        crate::server::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_loads_on_ipv4_and_ipv6_addresses() {
        let hash = crate::issuer::clients::hash_secret("s3cret-value").unwrap();
        for (listen, admin, upstream) in [
            ("127.0.0.1:8080", "127.0.0.1:9090", "127.0.0.1:8081"),
            ("[::1]:8080", "[::1]:9090", "[::1]:8081"),
            // Off loopback: no browser client (its http issuer would be
            // refused), plain http allowed by name, the rest as on loopback.
            ("10.0.0.5:8080", "127.0.0.1:9090", "127.0.0.1:8081"),
        ] {
            let yaml = demo_config_yaml(
                listen.parse().unwrap(),
                admin.parse().unwrap(),
                upstream.parse().unwrap(),
                &hash,
                &hash,
            );
            let loaded = crate::config::load_str("<demo>", Path::new("."), &yaml);
            assert!(loaded.is_ok(), "{listen}: {:?}", loaded.err());
            assert_eq!(
                yaml.contains(DEMO_PUBLIC_CLIENT),
                !listen.starts_with("10."),
                "{listen}"
            );
            // Its secrets are public: plain http off loopback is said so.
            assert_eq!(
                yaml.contains("allow_plain_http: true"),
                listen.starts_with("10."),
                "{listen}"
            );
        }
    }

    #[test]
    fn an_unspecified_listen_address_is_named_by_loopback() {
        for (bound, named) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("10.0.0.5:8080", "10.0.0.5:8080"),
        ] {
            let at = reachable_at(bound.parse().unwrap());
            assert_eq!(at, named.parse::<SocketAddr>().unwrap(), "{bound}");
        }
    }
}
