//! The authorization code flow in a real browser: headless Chromium, driven
//! through chromedriver (WebDriver), signs in on scopegate's sign-in page,
//! approves on its consent page (a screenshot of which is saved to
//! `target/test-output/consent.png`), and is redirected to a loopback
//! callback that the test runs. The test then redeems the code with PKCE,
//! calls a protected route with the access token, and replays the code.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`. Without them
//! the test says so and passes, unless `CI` is set, in which case it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use http::{Response, StatusCode};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
const ISS: &str = "https://as.browser.test";
const CLIENT: &str = "orders-viewer";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const STATE: &str = "st-9 &x=/?é";
/// Bound on every wait for the browser or the callback (a hang fails, it never blocks CI).
const WAIT: Duration = Duration::from_secs(30);

/// The Chromium flags the test runs with (a fresh profile is added).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=900,700",
];

/// Whether Chromium and chromedriver are installed; if not, says so, and
/// fails when `CI` is set.
fn browser_available() -> bool {
    let chromium = Path::new(CHROMIUM).exists();
    let driver = std::process::Command::new(CHROMEDRIVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if chromium && driver {
        return true;
    }
    let msg = format!(
        "the browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver); \
         chromium found: {chromium}, chromedriver found: {driver}"
    );
    skip_unless_ci(&msg);
    false
}

/// A chromedriver process on a free loopback port; killed when dropped.
struct ChromeDriver {
    child: tokio::process::Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> Self {
        // Retry on the (unlikely) chance another process takes the port first.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = tokio::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("cannot run chromedriver");
            let url = format!("http://127.0.0.1:{port}");
            for _ in 0..100 {
                if let Ok(r) = get(&format!("{url}/status"), &[]).await {
                    if r.status == 200 && r.json()["value"]["ready"] == true {
                        return Self { child, url };
                    }
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill().await;
        }
        panic!("chromedriver did not become ready");
    }

    /// A WebDriver session with headless Chromium and a fresh profile.
    async fn session(&self, profile: &Path) -> Client {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn config(upstream: SocketAddr, redirect_uri: &str, password_hash: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_delay: 0s
  shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
authorization_server:
  issuer: {ISS}
  clients:
    - client_id: {CLIENT}
      name: Orders Viewer
      grants: [authorization_code]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [{redirect_uri}]
  users:
    - username: {USER}
      password_hash: "{password_hash}"
upstreams:
  app:
    url: http://{upstream}
routes:
  - path: /orders/{{id}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
"#
    )
}

/// A loopback "client application": records the query of every `/callback` request.
async fn callback_listener() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_fn(move |req| {
        let tx = tx.clone();
        async move {
            if req.uri().path() == "/callback" {
                let _ = tx.send(req.uri().query().unwrap_or_default().to_owned());
            }
            let mut r = Response::new(full_body(
                "<!doctype html><title>Client</title><p>Signed in; back at the client.</p>",
            ));
            *r.status_mut() = StatusCode::OK;
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
    })
    .await;
    (addr, rx)
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-output")
        .join("consent.png")
}

fn query_map(query: &str) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

async fn token_request(gw: &Gateway, form: &[(&str, &str)]) -> Reply {
    let mut body = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        body.append_pair(k, v);
    }
    send(
        "POST",
        &gw.url("/oauth2/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Bytes::from(body.finish()),
    )
    .await
    .unwrap()
}

/// What the browser does, and what the test checks around it.
async fn flow(
    browser: &Client,
    gw: &Gateway,
    redirect_uri: &str,
    callbacks: &mut mpsc::UnboundedReceiver<String>,
) {
    let verifier = scopegate::issuer::random_token().unwrap();
    let challenge = scopegate::issuer::token::s256(&verifier);
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "orders:read")
        .append_pair("state", STATE)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let authorize = gw.url(&format!("/oauth2/authorize?{}", query.finish()));

    // 1. The sign-in page.
    browser.goto(&authorize).await.unwrap();
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys(USER)
        .await
        .unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // 2. The consent page (reached only if the browser sent the Secure,
    // HttpOnly CSRF cookie back over http://127.0.0.1).
    let allow = match browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("button[value=approve]"))
        .await
    {
        Ok(button) => button,
        Err(e) => panic!(
            "no consent page after signing in ({e}); the browser shows: {}",
            browser.source().await.unwrap_or_default()
        ),
    };
    let source = browser.source().await.unwrap();
    assert!(source.contains("Allow access?"), "{source}");
    assert!(
        source.contains("Read your orders (orders:read)"),
        "{source}"
    );
    assert!(source.contains("Orders Viewer"), "{source}");
    // The session and CSRF cookies exist but are invisible to scripts (HttpOnly).
    let cookies = browser.get_all_cookies().await.unwrap();
    let names: Vec<&str> = cookies.iter().map(|c| c.name()).collect();
    assert!(names.contains(&"__Secure-sg_session"), "{names:?}");
    for c in &cookies {
        assert_eq!(c.http_only(), Some(true), "{c:?}");
        assert_eq!(c.secure(), Some(true), "{c:?}");
    }
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    println!("consent page screenshot: {}", path.display());

    // 3. Allow: the browser is redirected to the callback with code, state, iss.
    allow.click().await.unwrap();
    let query = tokio::time::timeout(WAIT, callbacks.recv())
        .await
        .expect("the callback was not called")
        .expect("the callback listener stopped");
    let q = query_map(&query);
    assert_eq!(q.get("state").map(String::as_str), Some(STATE), "{query}");
    assert_eq!(q.get("iss").map(String::as_str), Some(ISS), "{query}");
    assert!(!q.contains_key("error"), "{query}");
    let code = q.get("code").expect("no code").clone();

    // 4. Redeem the code with PKCE, use the token, replay the code.
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier.as_str()),
    ];
    let r = token_request(gw, &form).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["scope"], "orders:read");
    let r = get_with_token(&gw.url("/orders/42"), &access).await;
    assert_eq!(r.status, 200, "{} {}", r.text(), r.www_authenticate());
    let r = token_request(gw, &form).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.text());
    // The replay revoked what the first redemption issued.
    let r = get_with_token(&gw.url("/orders/42"), &access).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_consent_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let (callback, mut callbacks) = callback_listener().await;
    let redirect_uri = format!("http://{callback}/callback");
    let upstream = Upstream::start().await;
    let hash = scopegate::issuer::clients::hash_secret(PASSWORD).unwrap();
    let gw = Gateway::start(&config(upstream.addr, &redirect_uri, &hash)).await;

    let profile = tempfile::tempdir().unwrap();
    let driver = ChromeDriver::start().await;
    let browser = driver.session(profile.path()).await;
    let outcome = AssertUnwindSafe(flow(&browser, &gw, &redirect_uri, &mut callbacks))
        .catch_unwind()
        .await;
    // Always end the browser and the driver, then report.
    let _ = browser.close().await;
    driver.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(upstream.last().path_and_query, "/orders/42");
}
