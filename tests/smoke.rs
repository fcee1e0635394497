//! End-to-end smoke: the standard world answers 200, 401 and 403, and the
//! demo's printed instructions work as printed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
use support::*;

#[tokio::test]
async fn allowed_missing_and_insufficient() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;

    let ok = get_with_token(&gw.url("/orders/42?x=1"), &world.token("orders:read")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, "/orders/42?x=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");

    let missing = get(&gw.url("/orders/42"), &[]).await.unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.www_authenticate(), "Bearer realm=\"scopegate\"");

    let forbidden = get_with_token(&gw.url("/admin"), &world.token("orders:read")).await;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden
        .www_authenticate()
        .contains("error=\"insufficient_scope\""));
    assert!(forbidden.www_authenticate().contains("scope=\"admin\""));
    assert_eq!(world.upstream.count(), 1);
}

/// The admin listener answers the kubelet's probes and Prometheus, and
/// nothing else.
#[tokio::test]
async fn admin_endpoints_answer_probes_and_refuse_other_methods() {
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let admin = |path: &str| format!("http://{}{path}", gw.admin);

    let healthz = get(&admin("/healthz"), &[]).await.unwrap();
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"));
    assert_eq!(gw.readyz().await, 200);
    let metrics = get(&admin("/metrics"), &[]).await.unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4")
    );
    assert!(metrics.text().contains("scopegate_"), "{}", metrics.text());
    // No reloader runs here (`server::run`): the config in force loaded
    // whole, so an alert on a failed reload stays quiet.
    assert!(
        metrics
            .text()
            .contains("\nscopegate_config_last_reload_success 1\n"),
        "{}",
        metrics.text()
    );
    assert_eq!(get(&admin("/nope"), &[]).await.unwrap().status, 404);

    let post = send("POST", &admin("/metrics"), &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
}

/// An admin connection that sends no request is closed after the server's
/// `header_read_timeout`, as on the proxy listener, so idle connections
/// cannot hold the admin listener's slots that probes need.
#[tokio::test]
async fn a_silent_admin_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let world = World::new().await;
    let config = world.config().replace(
        "  shutdown_grace: 5s\n",
        "  shutdown_grace: 5s\n  header_read_timeout: 1s\n",
    );
    assert!(config.contains("header_read_timeout"));
    let gw = Gateway::start(&config).await;
    let mut silent = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    let mut byte = [0u8; 1];
    // Waited for well within the default of 10 s, so that a listener
    // ignoring the configured 1 s would be caught.
    let read = tokio::time::timeout(std::time::Duration::from_secs(7), silent.read(&mut byte))
        .await
        .expect("the silent admin connection was kept open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(gw.readyz().await, 200);
}

/// An admin request head is held to 16 KiB: probes and scrapers send a few
/// hundred bytes, and hyper's default buffer (about 400 KiB) would let the
/// admin listener's 128 connections hold some 50 MB. A head just under the
/// bound is still answered.
#[tokio::test]
async fn an_oversized_admin_request_head_gets_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let status_of = |filler: usize| async move {
        let mut stream = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        );
        // The server may answer and close before the whole head is written.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(status_of(12 * 1024).await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_of(64 * 1024).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(gw.readyz().await, 200);
}

/// Connections kept busy on the admin listener (130 of them, each sending a
/// request every half second, as a runaway scraper or an attacker would)
/// do not keep a probe's new connection waiting: beyond 64, a new one
/// closes the oldest. Before, the probe waited in the backlog for good, and
/// the kubelet would restart the pod. (The listener serves at most 128
/// connections at once, so that many busy ones stop a probe only without
/// the closing.)
#[tokio::test]
async fn busy_admin_connections_do_not_keep_probes_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::new().await;
    let gw = Gateway::start(&world.config()).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..130 {
        let mut stream = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
        stream.write_all(request).await.unwrap();
        // Answered unless it waits for a place (or was closed already).
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(&mut buf))
            .await;
        held.push(stream);
    }
    let busy = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            for stream in &mut held {
                if stream.write_all(request).await.is_ok() {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(100),
                        stream.read(&mut buf),
                    )
                    .await;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    let probe = tokio::time::timeout(std::time::Duration::from_secs(20), gw.readyz())
        .await
        .expect("the probe waited behind busy admin connections");
    assert_eq!(probe, 200);
    busy.abort();
}

/// The open-file limit scopegate starts with is raised to the hard one: a
/// login shell's soft limit (often 1 024) is far below `max_connections`.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_one() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // (soft, hard) "Max open files" of a process, from /proc.
    let limits = |pid: &str| -> (String, String) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let mut fields = line["Max open files".len()..].split_whitespace();
        let soft = fields.next().unwrap().to_owned();
        (soft, fields.next().unwrap().to_owned())
    };
    let (_, hard) = limits("self");
    let low = hard.parse::<u64>().map_or(256, |h| (h / 2).min(256));
    let mut demo = Command::new("bash")
        .args([
            "-c",
            &format!("ulimit -Sn {low} && exec \"$0\" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0"),
            env!("CARGO_BIN_EXE_scopegate"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = demo.id().to_string();
    let stdout = demo.stdout.take().unwrap();
    // It prints its steps once it is up (and has set its limits).
    let printed = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("scopegate demo is running"))
    })
    .await
    .unwrap();
    let (soft, its_hard) = limits(&pid);
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(printed, "the demo did not start");
    assert_eq!(its_hard, hard);
    assert_eq!(
        soft, hard,
        "the soft limit stayed at {soft} (started at {low})"
    );
}

/// A reader that stops reading the demo's steps (`scopegate demo | head`)
/// does not stop the demo: printing into a closed pipe was a panic, and the
/// process exited with it.
#[cfg(unix)]
#[tokio::test]
async fn the_demo_keeps_serving_when_its_output_is_closed() {
    use std::process::{Command, Stdio};
    for attempt in 1..=3 {
        let listen = free_port();
        let mut demo = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Closed before the demo prints (it hashes its secrets first).
        drop(demo.stdout.take());
        let served = wait_for_status(&format!("http://127.0.0.1:{listen}/public"), 200).await;
        let exited = demo.try_wait().unwrap();
        let _ = demo.kill();
        let _ = demo.wait();
        // Served by the demo itself, not by whatever took the port first
        // (then the demo exits with 1 before printing anything; a panic is
        // 101).
        if served && exited.is_none() {
            return;
        }
        let port_taken = exited.is_some_and(|status| status.code() == Some(1));
        assert!(
            port_taken && attempt < 3,
            "the demo did not serve; it exited: {exited:?}"
        );
    }
}

/// `scopegate demo` (the README's first command) prints shell steps; steps
/// 1 to 6, run by bash as printed, get a token, 200, a refreshed token, 403,
/// 401 and 200, the token introspected as active, then revoked and refused
/// (401); step 7's authorize URL, opened and signed in to as the
/// printed user (the pages' forms posted back as a browser would), gives a
/// code that step 7's curl, run by bash with the code in place of
/// PASTE_CODE_HERE, exchanges for an access token. Its default admin port (9090, Prometheus's) is taken here,
/// as on many developers' machines: it takes a free one instead.
#[cfg(unix)]
#[tokio::test]
async fn demo_steps_work_as_printed() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    for tool in ["bash", "curl"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            support::skip_unless_ci(&format!(
                "{tool} is not installed: the demo's steps need it"
            ));
            return;
        }
    }
    // Taken by this test, or by whatever already holds it.
    let _prometheus = std::net::TcpListener::bind("127.0.0.1:9090");
    // The demo names its own address in what it prints, so it is given a
    // port; another test may take that port first, and then the demo exits
    // before printing its last step: try another.
    // What the demo logs, for the message if it fails.
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("demo.log");
    let mut attempts = 0;
    let (mut demo, listen, printed) = loop {
        attempts += 1;
        let listen = free_port();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut demo = Demo(
            Command::new(env!("CARGO_BIN_EXE_scopegate"))
                .args(["demo", "--listen", &format!("127.0.0.1:{listen}")])
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let stdout = demo.0.stdout.take().unwrap();
        let (complete, printed) = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let done = line.starts_with("Press Ctrl-C");
                lines.push(line);
                if done {
                    return (true, lines.join("\n"));
                }
            }
            (false, lines.join("\n"))
        })
        .await
        .unwrap();
        if complete || attempts == 3 {
            break (demo, listen, printed);
        }
    };
    assert!(
        printed.contains("(admin: http://127.0.0.1:") && !printed.contains("127.0.0.1:9090"),
        "{printed}"
    );
    let steps = printed
        .split_once("# 1.")
        .and_then(|(_, steps)| steps.split_once("# 7."))
        .map(|(steps, _)| format!("# 1.{steps}"))
        .expect("no steps 1 to 6 printed");
    let browser_step = printed
        .split_once("# 7.")
        .map(|(_, step)| step.to_owned())
        .expect("no step 7 printed");
    if !wait_for_status(&format!("http://127.0.0.1:{listen}/public"), 200).await {
        panic!(
            "the demo's /public never answered 200 (demo process: {:?}); it printed:\n{printed}\nand logged:\n{}",
            demo.0.try_wait(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    let out = Command::new("bash")
        .args(["-c", &format!("set -e\n{steps}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `curl -i` prints each answer's body with no line break after it.
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| text.get(at + 9..at + 12).unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["200", "403", "401", "200", "401"], "{text}");
    assert!(text.contains("\"refresh_count\":1"), "{text}");
    assert!(text.contains("\"active\":true"), "{text}");
    assert!(text.contains("the token is not active"), "{text}");

    // Step 7: the URL to open, who signs in, and the exchange to run.
    let authorize_url = browser_step
        .lines()
        .find(|l| l.starts_with("http://"))
        .unwrap_or_else(|| panic!("no authorize URL in step 7:{browser_step}"));
    let (username, password) = browser_step
        .split_once("sign in as ")
        .and_then(|(_, rest)| rest.split_once(','))
        .and_then(|(who, _)| who.split_once(" / "))
        .unwrap_or_else(|| panic!("no user named in step 7:{browser_step}"));
    let exchange = browser_step
        .split_once("\ncurl ")
        .map(|(_, rest)| format!("curl {}", rest.split("\n\n").next().unwrap()))
        .unwrap_or_else(|| panic!("no curl in step 7:{browser_step}"));
    assert!(exchange.contains("PASTE_CODE_HERE"), "{exchange}");

    // The browser: the sign-in page, its form posted back with the CSRF
    // cookie, then the consent page's approval with the session cookie.
    let form_post = |action: &str, form: &[(String, String)], cookie: String| {
        let url = format!("http://127.0.0.1:{listen}{action}");
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        async move {
            send(
                "POST",
                &url,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookie),
                ],
                bytes::Bytes::from(body),
            )
            .await
            .unwrap()
        }
    };
    let action = |page: &Reply| {
        let html = page.text();
        let (_, rest) = html.split_once("action=\"").expect("no form on the page");
        rest.split('"').next().unwrap().to_owned()
    };
    let page = get(authorize_url, &[]).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.text());
    let mut form = hidden_fields(&page.text());
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    let consent = form_post(
        &action(&page),
        &form,
        cookie_pair(&page, "__Secure-sg_csrf"),
    )
    .await;
    assert_eq!(consent.status, 200, "{}", consent.text());
    let mut form = hidden_fields(&consent.text());
    form.push(("action".into(), "approve".into()));
    let approved = form_post(
        &action(&consent),
        &form,
        cookie_pair(&consent, "__Secure-sg_session"),
    )
    .await;
    assert_eq!(approved.status, 303, "{}", approved.text());
    let location = approved.header("location").unwrap();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {location}"));

    // As printed, with the code pasted in; `-w` adds the status after the body.
    let exchange = format!(
        "{} -w '\\n%{{http_code}}'",
        exchange.replace("PASTE_CODE_HERE", &code)
    );
    let out = Command::new("bash")
        .args(["-c", &exchange])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{exchange}\n{text}");
    let token: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("step 7's exchange did not answer JSON ({e}): {text}"));
    let access = token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {text}"));
    assert_eq!(
        get_with_token(&format!("http://127.0.0.1:{listen}/orders/42"), access)
            .await
            .status,
        200
    );
}

/// A running `scopegate demo`, killed when dropped.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `scopegate demo` with `args` (its stderr to `stderr`), and
/// returns it once it has printed the line saying where it runs, with that
/// line.
async fn start_demo(args: &[&str], stderr: std::process::Stdio) -> (Demo, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let running = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("scopegate demo is running"))
    })
    .await
    .unwrap()
    .expect("the demo did not say where it runs");
    (demo, running)
}

/// The address in `line` right after `before` (up to the next `/` or
/// space).
fn address_after(line: &str, before: &str) -> std::net::SocketAddr {
    let (_, rest) = line.split_once(before).unwrap();
    let end = rest.find(['/', ' ', ')']).unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// The most memory process `pid` has held at once (VmHWM), in KiB.
#[cfg(target_os = "linux")]
fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .to_owned();
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// The demo's echo upstream counts a request body as it comes rather than
/// keeping it: /public needs no token, and a body held whole let anyone
/// fill the demo's memory (a 400 MB POST, 837 MB). 256 MiB sent to /public
/// are reported whole, and the demo's peak memory grows by far less.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_demo_echo_counts_a_body_without_keeping_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (demo, running) = start_demo(
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        std::process::Stdio::null(),
    )
    .await;
    let listen = address_after(&running, "running on http://");
    let before = peak_memory_kib(demo.0.id());
    let chunk = vec![b'x'; 1 << 20];
    let chunks = 256;
    let body_len = chunk.len() * chunks;
    let mut tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let head = format!(
        "POST /public HTTP/1.1\r\nHost: demo\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        tcp.write_all(&chunk).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("no answer to the upload")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["body_bytes"], body_len, "{body}");
    let grown = peak_memory_kib(demo.0.id()) - before;
    assert!(
        grown < 64 * 1024,
        "the demo's peak memory grew by {grown} KiB for a body of {} KiB",
        body_len / 1024
    );
}

/// `demo --admin-listen 0.0.0.0:0` prints its metrics URL with a loopback
/// address, as it does the proxy's (it printed `http://0.0.0.0:PORT`, no
/// address to browse to), and that URL answers; its warning says what
/// such an address exposes, the metrics, not the demo's secrets.
#[tokio::test]
async fn the_demo_names_an_unspecified_admin_address_by_loopback() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("demo.log");
    let (_demo, running) = start_demo(
        &["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"],
        std::fs::File::create(&log).unwrap().into(),
    )
    .await;
    assert!(running.contains("(admin: http://127.0.0.1:"), "{running}");
    let admin = address_after(&running, "(admin: http://");
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await.unwrap();
    assert_eq!(metrics.status, 200);
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(
        warned.contains("--admin-listen 0.0.0.0:") && warned.contains("metrics are public"),
        "{warned}"
    );
    assert!(!warned.contains("client secret"), "{warned}");
}

/// One address given for both of the demo's listeners is refused by name,
/// not reported as an address someone else holds.
#[test]
fn the_demo_refuses_one_address_for_both_listeners() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:18400",
            "--admin-listen",
            "127.0.0.1:18400",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--listen and --admin-listen both name 127.0.0.1:18400"),
        "{stderr}"
    );
}
