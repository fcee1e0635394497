//! `scopegate demo`: a complete playground with no files and no other programs.
//! An in-memory ES256 key, its JWKS served on loopback, an echo upstream,
//! three routes, freshly minted tokens, and curl commands to paste.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;

/// The demo issuer's `iss`.
pub const DEMO_ISSUER: &str = "https://demo.scopegate.local";
/// The demo audience.
pub const DEMO_AUDIENCE: &str = "demo-api";

/// An ES256 signing key with its public JWKS.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwks: String,
}

impl SigningKey {
    /// Generates a fresh P-256 key.
    pub fn generate(kid: &str) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "key generation failed".to_owned())?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| "key generation failed".to_owned())?;
        let public = pair.public_key().as_ref();
        let (x, y) = match public {
            [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err("unexpected public key encoding".to_owned()),
        };
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string();
        Ok(Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwks,
        })
    }

    /// The JWKS document with the public key.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Signs claims as an RFC 9068 access token (`typ: at+jwt`).
    pub fn mint(&self, claims: &serde_json::Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }
}

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

/// An upstream that answers with what it received (method, path, headers).
pub async fn serve_echo(listener: TcpListener) {
    serve(listener, |req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
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
            "body_bytes": bytes.len(),
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
        let Ok((stream, _)) = listener.accept().await else {
            continue;
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

/// The demo configuration for a JWKS and an upstream on the given addresses.
pub fn demo_config_yaml(
    listen: SocketAddr,
    admin: SocketAddr,
    jwks: SocketAddr,
    upstream: SocketAddr,
) -> String {
    format!(
        r#"server:
  listen: {listen}
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: {admin}
issuers:
  - name: demo
    issuer: {DEMO_ISSUER}
    audiences: [{DEMO_AUDIENCE}]
    jwks_uri: http://{jwks}/jwks.json
    algorithms: [ES256]
    require_typ: at+jwt
upstreams:
  echo:
    url: http://{upstream}
routes:
  - path: /public
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

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let key = SigningKey::generate("demo-1")?;
    let jwks_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let jwks_addr = jwks_listener.local_addr().map_err(|e| e.to_string())?;
    let upstream_addr = upstream_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_static_json(jwks_listener, Arc::from(key.jwks())));
    tokio::spawn(serve_echo(upstream_listener));

    let yaml = demo_config_yaml(listen, admin, jwks_addr, upstream_addr);
    let config =
        crate::config::load_str("<demo>", Path::new("."), &yaml).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e} (try --listen 127.0.0.1:0)"))?;
    let admin_listener = TcpListener::bind(admin)
        .await
        .map_err(|e| format!("cannot listen on {admin}: {e} (try --admin-listen 127.0.0.1:0)"))?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    let admin = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let now = crate::auth::jwt::now_unix();
    let claims = |scope: &str| {
        serde_json::json!({
            "iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": "alice", "client_id": "demo-client",
            "scope": scope, "iat": now, "exp": now + 3600,
        })
    };
    let reader = key.mint(&claims("orders:read"))?;
    println!(
        "\nscopegate demo is running on http://{listen} (admin: http://{admin}/metrics)\n\n\
         # 200: a public route, no token needed\n\
         curl -i http://{listen}/public\n\n\
         # 200: a token with orders:read on a route that requires it\n\
         curl -i -H 'Authorization: Bearer {reader}' http://{listen}/orders/42\n\n\
         # 401: no token on a protected route\n\
         curl -i http://{listen}/orders/42\n\n\
         # 403: the same token lacks the `admin` scope\n\
         curl -i -H 'Authorization: Bearer {reader}' http://{listen}/admin\n\n\
         Press Ctrl-C to stop.\n"
    );
    crate::server::run(
        config,
        listener,
        admin_listener,
        crate::server::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}
