//! Configuration: every shipped file passes `scopegate check`, every kind of
//! mistake is refused with `file:line:column: message` and exit status 1,
//! and generated broken files neither panic nor lose the position
//! ([`hostile_configs`]).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::hostile_runner;

fn scopegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scopegate"))
}

fn check(path: &Path) -> (bool, String, String) {
    let out = scopegate()
        .env("SCOPEGATE_INTROSPECTION_SECRET", "example-secret")
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = yaml_files(&root.join("config"));
    assert!(files.len() >= 2, "config/ should hold the examples");
    for overlay in ["base", "overlays/jwt", "overlays/introspection"] {
        let file = root
            .join("deploy/kubernetes")
            .join(overlay)
            .join("scopegate.yaml");
        if file.exists() {
            files.push(file);
        }
    }
    // Kubernetes mounts the introspection secret; stand in for it here.
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("introspection-client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let file = if text.contains("/var/run/secrets/scopegate/") {
            let copy = secrets.path().join(file.file_name().unwrap());
            let text = text.replace(
                "/var/run/secrets/scopegate/introspection-client-secret",
                secret.to_str().unwrap(),
            );
            std::fs::write(&copy, text).unwrap();
            copy
        } else {
            file
        };
        let (ok, stdout, stderr) = check(&file);
        assert!(ok, "{}: {stderr}", file.display());
        assert!(stdout.contains("configuration OK"), "{stdout}");
        assert!(
            stdout.contains("->"),
            "the route table is printed: {stdout}"
        );
    }
}

const ISSUER: &str = "issuers:
  - name: corp
    issuer: https://idp.example.com
    audiences: [api]
    jwks_uri: https://idp.example.com/jwks
";
const UPSTREAM: &str = "upstreams:
  app:
    url: http://127.0.0.1:3000
";

/// (name, yaml, expected "line:column", expected message fragment)
fn bad_configs() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let base = format!("{ISSUER}{UPSTREAM}");
    vec![
        (
            "unknown key",
            "server:\n  listen: 0.0.0.0:8080\n  lisen: x\n".into(),
            "3:3",
            "unknown field `lisen`",
        ),
        (
            "a list of methods whose items are all commented out (null)",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    methods:\n      # - GET\n    scopes: [x]\n"),
            "12:12",
            "has no value (null): write the value, or leave the key out",
        ),
        (
            "a route's issuers written as null",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    issuers: ~\n"),
            "12:14",
            "has no value (null)",
        ),
        (
            "server tls written as null",
            "server:\n  tls: null\n".into(),
            "2:8",
            "has no value (null)",
        ),
        (
            "unknown top-level key",
            format!("{base}rootes: []\n"),
            "9:1",
            "unknown field `rootes`",
        ),
        (
            "syntax error",
            format!("{base}routes:\n  - path: /a\n    upstream: [app\n"),
            "11:15",
            "",
        ),
        (
            "unknown trailing_slash rule",
            format!("{base}route_matching:\n  trailing_slash: sometimes\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:19",
            "trailing_slash must be strict or ignore, not `sometimes`",
        ),
        (
            "a route that folded case could never match",
            format!("{base}route_matching:\n  case_sensitive: false\nroutes:\n  - path: /Admin\n    upstream: app\n"),
            "12:11",
            "requests are routed as `/admin`",
        ),
        (
            "a route whose trailing slash would be dropped",
            format!("{base}route_matching:\n  trailing_slash: ignore\nroutes:\n  - path: /admin/\n    upstream: app\n"),
            "12:11",
            "requests are routed as `/admin`",
        ),
        (
            "a route with path parameters",
            format!("{base}routes:\n  - path: /a;v=1\n    upstream: app\n"),
            "10:11",
            "requests are routed as `/a`",
        ),
        (
            "zero pool idle timeout",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    pool_idle_timeout: 0s\nroutes:\n  - path: /a\n    upstream: app\n"),
            "9:24",
            "pool_idle_timeout must be greater than zero",
        ),
        (
            "an HTTP/2 connection that could carry no request",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    http2_max_streams: 0\nroutes:\n  - path: /a\n    upstream: app\n"),
            "9:24",
            "http2_max_streams must be at least 1",
        ),
        (
            "an upstream that is the gateway itself",
            format!("server:\n  listen: 0.0.0.0:8080\n{ISSUER}upstreams:\n  app:\n    url: http://localhost:8080\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:10",
            "upstream `app` is this gateway's own listener",
        ),
        (
            "an upstream on the admin port of this host",
            format!("admin:\n  listen: 127.0.0.1:9090\n{ISSUER}upstreams:\n  app:\n    url: http://localhost:9090\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:10",
            "is this gateway's own listener",
        ),
        (
            "a CA bundle for a plain http upstream",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    ca_file: ca.pem\nroutes:\n  - path: /a\n    upstream: app\n"),
            "9:14",
            "ca_file is for an https upstream",
        ),
        (
            "a token cache that holds nothing",
            format!("{base}cache:\n  max_entries: 0\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:16",
            "cache.max_entries must be at least 1",
        ),
        (
            "an empty required typ",
            format!("{ISSUER}    require_typ: \"\"\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:18",
            "require_typ must name a type",
        ),
        (
            "an idle pool that reserves absurd room",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    pool_max_idle_per_host: 18446744073709551615\nroutes:\n  - path: /a\n    upstream: app\n"),
            "9:29",
            "pool_max_idle_per_host may be at most 4096",
        ),
        (
            "absurd body idle timeout",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    body_idle_timeout: 500000000000y\nroutes:\n  - path: /a\n    upstream: app\n"),
            "9:24",
            "longer than the most any setting takes (10years)",
        ),
        (
            "absurd idle timeout",
            format!("server:\n  idle_timeout: 11y\n{base}routes:\n  - path: /a\n    upstream: app\n"),
            "2:17",
            "longer than the most any setting takes",
        ),
        (
            "unknown upstream",
            format!("{base}routes:\n  - path: /a\n    upstream: nope\n"),
            "11:15",
            "unknown upstream `nope`",
        ),
        (
            "unknown issuer on a route, at its name",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    issuers: [other]\n"),
            "12:15",
            "unknown issuer `other`",
        ),
        (
            "an issuer listed twice on a route, at its second listing",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    issuers: [corp, corp]\n"),
            "12:21",
            "issuer `corp` listed twice",
        ),
        (
            "an unknown issuer among a route's issuers, at its own line",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    issuers:\n      - corp\n      - other\n"),
            "14:9",
            "unknown issuer `other`",
        ),
        (
            "conflicting routes",
            format!(
                "{base}routes:\n  - path: /a\n    methods: [GET]\n    upstream: app\n  - path: /a\n    methods: [GET, POST]\n    upstream: app\n"
            ),
            "13:11",
            "route",
        ),
        (
            "non-canonical route path",
            format!("{base}routes:\n  - path: /a/../b\n    upstream: app\n"),
            "10:11",
            "route",
        ),
        (
            "lower-case method, at the method",
            format!("{base}routes:\n  - path: /a\n    methods: [get]\n    upstream: app\n"),
            "11:15",
            "not an HTTP method",
        ),
        (
            "a method never forwarded, at the method",
            format!("{base}routes:\n  - path: /a\n    methods: [GET, TRACE]\n    upstream: app\n"),
            "11:20",
            "never forwarded",
        ),
        (
            "a method listed twice, at its second listing",
            format!("{base}routes:\n  - path: /a\n    methods:\n      - GET\n      - GET\n    upstream: app\n"),
            "13:9",
            "method `GET` listed twice",
        ),
        (
            "empty methods",
            format!("{base}routes:\n  - path: /a\n    methods: []\n    upstream: app\n"),
            "11:14",
            "methods must not be empty",
        ),
        (
            "empty issuers",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    issuers: []\n"),
            "12:14",
            "issuers must not be empty",
        ),
        (
            // No token holds one of none: the route must not read it as
            // "no scope required".
            "empty any_scopes",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    any_scopes: []\n"),
            "12:17",
            "any_scopes must not be empty",
        ),
        (
            "public route with any_scopes, at them",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    auth: none\n    any_scopes: [x]\n"),
            "13:17",
            "a route with `auth: none` cannot list scopes, any_scopes or issuers",
        ),
        (
            "public route with scopes, at them",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    auth: none\n    scopes: [x]\n"),
            "13:13",
            "a route with `auth: none` cannot list scopes, any_scopes or issuers",
        ),
        (
            "public route with issuers, at them",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    auth: none\n    issuers: [corp]\n"),
            "13:14",
            "a route with `auth: none` cannot list scopes, any_scopes or issuers",
        ),
        (
            "public route with issuers and then scopes, at the first written",
            format!("{base}routes:\n  - path: /a\n    issuers: [corp]\n    upstream: app\n    auth: none\n    scopes: [x]\n"),
            "11:14",
            "a route with `auth: none` cannot list scopes, any_scopes or issuers",
        ),
        (
            "bad scope token",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    scopes: [\"a b\"]\n"),
            "12:14",
            "not a valid scope token",
        ),
        (
            "bad scope token among any_scopes, at that scope",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    any_scopes:\n      - ok\n      - \"a b\"\n"),
            "14:9",
            "`a b` is not a valid scope token",
        ),
        (
            "bad duration",
            "server:\n  shutdown_grace: 5 parsecs\n".into(),
            "2:19",
            "duration",
        ),
        (
            "zero idle timeout",
            "server:\n  idle_timeout: 0s\n".into(),
            "2:17",
            "server.idle_timeout must be greater than zero",
        ),
        (
            "zero header read timeout",
            "server:\n  header_read_timeout: 0ms\n".into(),
            "2:24",
            "server.header_read_timeout must be greater than zero",
        ),
        (
            "ca_file without certificates",
            format!(
                "{ISSUER}upstreams:\n  app:\n    url: https://127.0.0.1:3000\n    ca_file: {}/Cargo.toml\nroutes:\n  - path: /a\n    upstream: app\n",
                env!("CARGO_MANIFEST_DIR")
            ),
            "9:14",
            "no certificates found",
        ),
        (
            "TLS files that hold no certificate",
            format!(
                "server:\n  tls:\n    cert_file: {0}/Cargo.toml\n    key_file: {0}/Cargo.toml\n",
                env!("CARGO_MANIFEST_DIR")
            ),
            "3:5",
            "server.tls",
        ),
        (
            "a store with an unknown field",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"redis://h\", password: x }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:32",
            "unknown field `password`, expected one of file, redis, ca_file, password_file, password_env",
        ),
        (
            "a redis store over TLS without certificate checks",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"rediss://h:6380/#insecure\" }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:19",
            "`#insecure` would turn certificate checks off",
        ),
        (
            "a CA for a plain redis store",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"redis://h:6379\", ca_file: ca.pem }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:46",
            "the store's ca_file is for a rediss:// (TLS) URL",
        ),
        (
            "a redis CA file that is missing",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"rediss://h:6380\", ca_file: missing-ca.pem }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:47",
            "ca_file: cannot read",
        ),
        (
            "a redis URL without braces",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: \"redis://:hunter2@h\"\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:10",
            "store must be `memory`",
        ),
        (
            "a redis URL that does not parse",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"redis://h:notaport\" }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:19",
            "redis store URL must be",
        ),
        (
            "a redis URL on port 0",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"redis://h:0/0\" }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:19",
            "the redis store URL has no valid port (1-65535)",
        ),
        (
            "a store written as a list",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: [memory]\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:3",
            "invalid type: sequence, expected the store: `memory`",
        ),
        (
            "a store field named by its index",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ 0: x.redb }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:12",
            "unknown field `0`",
        ),
        (
            "a store naming both a file and redis",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ file: x.redb, redis: \"redis://h\" }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:33",
            "the store is either `{ file: PATH }` or `{ redis: URL }`, not both",
        ),
        (
            "a file store with a redis setting",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ file: x.redb, password_env: X }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:40",
            "`password_env` is a setting of the redis store, not of a file store",
        ),
        (
            "a store naming no backend",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{}}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:10",
            "store must be `memory`, `{ file: PATH }` or `{ redis: URL }`",
        ),
        (
            "refresh families that end at once",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  refresh_family_max_age: 0s\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:27",
            "refresh_family_max_age must be a whole number of seconds, at least 1s",
        ),
        (
            "access tokens that would be born expired",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  access_token_ttl: 500ms\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:21",
            "access_token_ttl must be a whole number of seconds, at least 1s",
        ),
        (
            "a refresh token lifetime with a fraction",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  refresh_token_ttl: 90.5s\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:22",
            "refresh_token_ttl must be a whole number of seconds",
        ),
        (
            "a client secret hash whose check would take 4 TiB",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:27",
            "client_secret_hash: argon2 parameters m=4294967295,t=2,p=1 are over",
        ),
        (
            "a password hash with no hash part",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [https://app.test/cb]\n      scopes: [a]\n      audience: api\n  users:\n    - username: alice\n      password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ\"\nroutes:\n  - path: /a\n    upstream: app\n"),
            "14:22",
            "password_hash: no hash after the salt",
        ),
        (
            "public client left with the default grant",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  clients:\n    - client_id: spa\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "7:7",
            "a public client (no client_secret_hash) cannot use `client_credentials`",
        ),
        (
            "admin on the proxy's port",
            "server:\n  listen: 0.0.0.0:8080\nadmin:\n  listen: 127.0.0.1:8080\n".into(),
            "4:11",
            "overlaps server.listen",
        ),
        (
            "admin on the proxy's port, one of them IPv4-mapped",
            "server:\n  listen: \"[::ffff:127.0.0.1]:8080\"\nadmin:\n  listen: 127.0.0.1:8080\n".into(),
            "4:11",
            "overlaps server.listen",
        ),
        (
            "proxy on the default admin port",
            "server:\n  listen: 0.0.0.0:9090\n".into(),
            "2:11",
            "overlaps server.listen",
        ),
        (
            "authorization server named like an issuer by default",
            format!("{ISSUER}  - name: local\n    issuer: https://other\n    audiences: [api]\n    jwks_uri: https://o/k\nauthorization_server:\n  issuer: https://as.example.com\n  clients: []\n"),
            "11:3",
            "the authorization server's name `local` is already an issuer's",
        ),
        (
            "two routes of one name",
            format!("{UPSTREAM}routes:\n  - path: /a\n    name: orders\n    upstream: app\n    auth: none\n  - path: /b\n    name: orders\n    upstream: app\n    auth: none\n"),
            "10:11",
            "route name `orders` is already another route's",
        ),
        (
            "bad listen address",
            "server:\n  listen: localhost\n".into(),
            "2:11",
            "not a socket address",
        ),
        (
            "max_header_bytes too small",
            "server:\n  max_header_bytes: 100\n".into(),
            "2:21",
            "max_header_bytes",
        ),
        (
            "alg none, at it",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: https://a/k\n    algorithms: [none]\n".into(),
            "6:18",
            "unsupported algorithm `none`",
        ),
        (
            "HMAC algorithm, at it",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: https://a/k\n    algorithms: [ES256, HS256]\n".into(),
            "6:25",
            "only asymmetric algorithms",
        ),
        (
            "an unsupported algorithm on its own line, at it",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: https://a/k\n    algorithms:\n      - RS256\n      - ES512\n".into(),
            "8:9",
            "unsupported algorithm `ES512`",
        ),
        (
            "issuer without audiences",
            "issuers:\n  - name: a\n    issuer: https://a\n    jwks_uri: https://a/k\n".into(),
            "2:5",
            "audiences",
        ),
        (
            "an empty client id, at it",
            "issuers:\n  - name: a\n    issuer: https://a\n    client_ids: [\"\"]\n    jwks_uri: https://a/k\n".into(),
            "4:18",
            "or in `client_ids`",
        ),
        (
            "an empty audience after a good one, at it",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences:\n      - api\n      - \"\"\n    jwks_uri: https://a/k\n".into(),
            "6:9",
            "needs at least one non-empty entry in `audiences`",
        ),
        (
            "an empty client id beside an audience, at it",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [api]\n    client_ids: [web, \"\"]\n    jwks_uri: https://a/k\n".into(),
            "5:23",
            "and no empty one",
        ),
        (
            "a jwks_file with no key for the issuer's algorithms",
            format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    algorithms: [RS256, PS256]\n    jwks_file: es256-keys.json\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:16",
            "jwks_file has no key for any of the issuer's algorithms (RS256, PS256)",
        ),
        (
            "a jwks_file whose key of the issuer's algorithm verifies nothing",
            format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    algorithms: [ES256]\n    jwks_file: ed-and-off-curve.json\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:16",
            "jwks_file has no key for any of the issuer's algorithms (ES256)",
        ),
        (
            "both jwks_uri and jwks_file",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: https://a/k\n    jwks_file: k.json\n".into(),
            "6:16",
            "not both",
        ),
        (
            "jwks_uri not http",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: file:///etc/passwd\n".into(),
            "5:15",
            "URL",
        ),
        (
            "plain http jwks_uri for an https issuer",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: http://a/k\n".into(),
            "5:15",
            "is plain http (only a loopback address may be",
        ),
        (
            "plain http introspection endpoint for an https issuer",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    introspection:\n      endpoint: http://a/introspect\n      client_id: gw\n      client_secret_env: NEVER_READ\n".into(),
            "6:17",
            "is plain http (only a loopback address may be",
        ),
        // A ca_file where nothing speaks TLS would be silently ignored
        // (`cert.pem` is a readable CA: only the place is wrong).
        (
            "an issuer ca_file beside a jwks_file",
            format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_file: es256-keys.json\n    ca_file: cert.pem\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:14",
            "ca_file is for fetching this issuer's keys or metadata over https, which it never does: its keys come from jwks_file",
        ),
        (
            "an issuer ca_file for a plain http jwks_uri",
            format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: http://127.0.0.1:9/k\n    ca_file: cert.pem\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:14",
            "its jwks_uri is plain http",
        ),
        (
            "an issuer ca_file on an issuer that only introspects",
            format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    ca_file: cert.pem\n    introspection:\n      endpoint: https://a/introspect\n      client_id: gw\n      client_secret_env: PATH\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "5:14",
            "it only introspects",
        ),
        (
            "an introspection ca_file for a plain http endpoint",
            format!("issuers:\n  - name: a\n    issuer: http://a\n    audiences: [x]\n    introspection:\n      endpoint: http://a/introspect\n      client_id: gw\n      client_secret_env: PATH\n      ca_file: cert.pem\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "9:16",
            "ca_file is for an https introspection endpoint: this one is plain http",
        ),
        (
            "introspection answers kept for two hours when refused",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    introspection:\n      endpoint: https://a/introspect\n      client_id: gw\n      client_secret_env: PATH\n      negative_cache_ttl: 2h\n".into(),
            "9:27",
            "cache_ttl may be at most 24h and negative_cache_ttl at most 1h",
        ),
        (
            "introspection answers required to name an audience no token has",
            "issuers:\n  - name: a\n    issuer: https://a\n    client_ids: [x]\n    introspection:\n      endpoint: https://a/introspect\n      client_id: gw\n      client_secret_env: PATH\n      require_audience: true\n".into(),
            "9:25",
            "require_audience needs `audiences` on the issuer: with only `client_ids`, the tokens name no API",
        ),
        (
            "discovery with an issuer that is no URL",
            "issuers:\n  - name: a\n    issuer: idp.example.com\n    audiences: [x]\n    discovery: true\n".into(),
            "3:13",
            "with `discovery: true` the issuer must be its URL",
        ),
        (
            "discovery with an issuer that has a query",
            "issuers:\n  - name: a\n    issuer: https://idp.example.com/t?x=1\n    audiences: [x]\n    discovery: true\n".into(),
            "3:13",
            "with `discovery: true` the issuer must not have a query (RFC 8414 2)",
        ),
        (
            "duplicate issuer names",
            format!("{ISSUER}  - name: corp\n    issuer: https://other\n    audiences: [api]\n    jwks_uri: https://o/k\n"),
            "6:11",
            "duplicate issuer name `corp`",
        ),
        (
            "reserved identity header, at its name",
            "forward:\n  identity_headers: { Authorization: sub }\n".into(),
            "2:23",
            "cannot be an identity header",
        ),
        (
            "the authorization server named like no issuer",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  name: \"-\"\n  clients: []\n"),
            "6:9",
            "must not be empty or `-`",
        ),
        (
            "two authorization server endpoints on one path",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  introspection_path: /oauth2/token\n  clients: []\n"),
            "6:23",
            "authorization server path `/oauth2/token` is given to two endpoints, token_path and introspection_path",
        ),
        (
            "an authorization server endpoint on another's default path",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  token_path: /.well-known/jwks.json\n  clients: []\n"),
            "6:15",
            "authorization server path `/.well-known/jwks.json` is given to two endpoints, token_path and jwks_path",
        ),
        (
            "the sign-in page at the root, whose cookies every path would get",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  authorize_path: /\n  clients: []\n"),
            "6:19",
            "authorize_path `/` would give the sign-in cookies to every path",
        ),
        (
            "a route below the sign-in page",
            format!("{UPSTREAM}routes:\n  - path: /oauth2/authorize/{{*rest}}\n    upstream: app\n    auth: none\nauthorization_server:\n  issuer: https://as.example.com\n  clients: []\n"),
            "5:11",
            "route `/oauth2/authorize/{*rest}` is below the sign-in page's path `/oauth2/authorize`",
        ),
        (
            "a route that matches below the sign-in page",
            format!("{UPSTREAM}routes:\n  - path: /{{a}}/authorize/{{b}}\n    upstream: app\n    auth: none\nauthorization_server:\n  issuer: https://as.example.com\n  clients: []\n"),
            "9:3",
            "a route matches `/oauth2/authorize/-`, below the sign-in page's path",
        ),
        (
            "an endpoint on the authorization server's metadata path",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  jwks_path: /.well-known/oauth-authorization-server\n  clients: []\n"),
            "6:14",
            "authorization server path `/.well-known/oauth-authorization-server` is given to two endpoints, jwks_path and the metadata's, made from the issuer\n",
        ),
        (
            "an authorization server issuer with a query",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com/?t=1\n  clients: []\n"),
            "5:11",
            "must not have a query",
        ),
        (
            "resource metadata under a route",
            format!("{base}routes:\n  - path: /.well-known/oauth-protected-resource\n    upstream: app\n    auth: none\nresource:\n  resource: https://api.example.com\n"),
            "14:13",
            "the resource metadata path `/.well-known/oauth-protected-resource` is also a GET route's",
        ),
        (
            "a resource whose path is not canonical",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: https://api.example.com/caf%c3%a9\n"),
            "13:13",
            "the resource's path is not canonical",
        ),
        (
            "a browser sign-in at a plain-http issuer on another host",
            format!("{UPSTREAM}authorization_server:\n  issuer: http://auth.example.com\n  clients:\n    - client_id: spa\n      grants: [authorization_code]\n      audience: api\n      redirect_uris: [\"https://app.example.com/cb\"]\n"),
            "5:11",
            "an http:// issuer on another host than loopback cannot sign users in",
        ),
        (
            "an authorization server issuer whose path is not canonical",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com/t//1\n  clients: []\n"),
            "5:11",
            "the issuer's path is not canonical",
        ),
        (
            "resource documentation that is no web page",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: https://api.example.com\n  resource_documentation: ftp://docs.example.com\n"),
            "14:27",
            "resource_documentation: `ftp://docs.example.com` must be an http:// or https:// URL",
        ),
        (
            "resource metadata naming an authorization server with a query",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: https://api.example.com\n  authorization_servers: [\"https://as.example.com/?tenant=1\"]\n"),
            "14:27",
            "authorization_servers: `https://as.example.com/?tenant=1` is no issuer identifier",
        ),
        (
            "an upstream that may take no request",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    max_requests: 0\nroutes:\n  - path: /a\n    upstream: app\n"),
            "9:19",
            "max_requests must be from 1 to 1000000",
        ),
        (
            "one identity header in two spellings, at the second",
            "forward:\n  identity_headers: { X-User: sub, x_user: email }\n".into(),
            "2:36",
            "`x_user` is another spelling of an identity header already listed",
        ),
        (
            "one identity header, once spelled with dots, at that spelling",
            "forward:\n  identity_headers: { X-User: sub, x.user: email }\n".into(),
            "2:36",
            "`x.user` is another spelling of an identity header already listed",
        ),
        (
            "reserved identity header, spelled with dots",
            "forward:\n  identity_headers: { X.Forwarded.For: sub }\n".into(),
            "2:23",
            "cannot be an identity header",
        ),
        (
            "reserved identity header, spelled with underscores",
            "forward:\n  identity_headers: { X_Forwarded_For: sub }\n".into(),
            "2:23",
            "cannot be an identity header",
        ),
        (
            // Told where written, not first in the names' sorted order.
            "one identity header in two spellings, the second sorting first",
            "forward:\n  identity_headers:\n    x_user: email\n    X-User: sub\n".into(),
            "4:5",
            "`X-User` is another spelling of an identity header already listed",
        ),
        (
            "an identity header name that is no header name, at it",
            "forward:\n  identity_headers:\n    X-Tenant: tid\n    \"X User\": sub\n".into(),
            "4:5",
            "`X User` is not a valid header name",
        ),
        (
            "an identity header without a claim, at its value",
            "forward:\n  identity_headers:\n    X-Tenant: tid\n    X-User: \"\"\n".into(),
            "4:13",
            "`X-User` needs a claim name",
        ),
        (
            "a reserved identity header on a route, at its name",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    forward:\n      identity_headers:\n        X-Tenant: tid\n        Authorization: sub\n"),
            "15:9",
            "`Authorization` cannot be an identity header",
        ),
        (
            "a removed header that frames the request, at it",
            "forward:\n  remove_headers:\n    - X-Tenant\n    - Content-Length\n".into(),
            "4:7",
            "remove_headers cannot remove `Content-Length`",
        ),
        (
            "a removed header that is no header name, on a route, at it",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    forward:\n      remove_headers: [X-Tenant, \"X Tenant\"]\n"),
            "13:34",
            "`X Tenant` is not a header name",
        ),
        (
            "a trusted proxy that is no address, at it",
            format!("{base}routes:\n  - path: /a\n    upstream: app\ntrusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.300\n"),
            "14:5",
            "trusted_proxies: `10.0.0.300` is neither an address nor a CIDR block",
        ),
        (
            "an IPv4-mapped trusted proxy block, at it",
            format!("{base}routes:\n  - path: /a\n    upstream: app\ntrusted_proxies: [127.0.0.1, \"::ffff:10.0.0.0/104\"]\n"),
            "12:30",
            "trusted_proxies: `::ffff:10.0.0.0/104` is neither an address nor a CIDR block",
        ),
        (
            "an unknown grant, at it",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants:\n        - authorization_code\n        - implicit\n      redirect_uris: [https://app.test/cb]\n      audience: api\n".into(),
            "7:11",
            "unknown grant `implicit`",
        ),
        (
            "a grant a public client cannot use, at it",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code, password]\n      redirect_uris: [https://app.test/cb]\n      audience: api\n".into(),
            "5:36",
            "a public client (no client_secret_hash) cannot use `password`",
        ),
        (
            "bearer routes without issuers",
            format!("{UPSTREAM}routes:\n  - path: /p\n    upstream: app\n    auth: none\n  - path: /a\n    upstream: app\n"),
            "8:5",
            "no issuers",
        ),
        (
            "credentials in an upstream URL",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://user:pw@127.0.0.1:3000\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:10",
            "user:password@",
        ),
        (
            "a fragment in an upstream URL",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000/#top\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:10",
            "#fragment",
        ),
        (
            "dot segments in an upstream base path",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000/a/../admin\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:10",
            "canonical",
        ),
        // A port the URL parser keeps but cannot read would be taken for
        // the scheme's default (80, 443): the gateway would call another
        // port than the one written.
        (
            "an upstream port beyond 65535",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:300000\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:10",
            "`http://127.0.0.1:300000` has no valid port (1-65535)",
        ),
        (
            "an IPv6 upstream port beyond 65535",
            format!("{ISSUER}upstreams:\n  app:\n    url: \"http://[::1]:65536/\"\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:10",
            "has no valid port",
        ),
        (
            "an upstream port with a sign",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:+80\nroutes:\n  - path: /a\n    upstream: app\n"),
            "8:10",
            "has no valid port",
        ),
        (
            "a jwks_uri port that is no number",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: https://a:3000x/k\n".into(),
            "5:15",
            "`https://a:3000x/k` has no valid port (1-65535)",
        ),
        // Without discovery nothing is fetched from the issuer, but written
        // as a URL it is one: no token's `iss` has a port beyond 65535.
        (
            "an issuer's port beyond 65535",
            "issuers:\n  - name: a\n    issuer: https://a:300000\n    audiences: [x]\n    jwks_uri: https://a/k\n".into(),
            "3:13",
            "an issuer written as a URL must be a valid one: `https://a:300000` has no valid port (1-65535)",
        ),
        (
            "an introspection endpoint on port 0",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    introspection:\n      endpoint: https://a:0/introspect\n      client_id: gw\n      client_secret_env: PATH\n".into(),
            "6:17",
            "has no valid port",
        ),
        (
            "a built-in server's issuer with an empty port",
            format!("{UPSTREAM}authorization_server:\n  issuer: \"https://as.example.com:\"\n  clients: []\nroutes:\n  - path: /a\n    upstream: app\n"),
            "5:11",
            "has no valid port",
        ),
        (
            "a resource identifier port beyond 65535",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: https://api.example.com:70000\n"),
            "13:13",
            "has no valid port",
        ),
        (
            "a route named like unmatched requests",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    name: unmatched\n"),
            "12:11",
            "reserved",
        ),
        (
            "a route named like the built-in server's requests",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    name: authorization_server\n"),
            "12:11",
            "reserved",
        ),
        (
            "an issuer named like denials of no issuer",
            format!(
                "{}{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n",
                ISSUER.replace("name: corp", "name: \"-\"")
            ),
            "2:11",
            "reserved",
        ),
        (
            "a leeway of an hour",
            format!("{ISSUER}    leeway: 1h\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:13",
            "leeway may be at most 5m",
        ),
        (
            "a refresh token reuse grace of minutes",
            format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  refresh_token_reuse_grace: 2m\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
            "6:30",
            "refresh_token_reuse_grace may be at most 60s",
        ),
        (
            "a leeway of half a second, which would be none",
            format!("{ISSUER}    leeway: 500ms\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
            "6:13",
            "leeway must be a whole number of seconds",
        ),
        (
            "nothing to serve",
            format!("{ISSUER}{UPSTREAM}"),
            "1:1",
            "nothing to serve",
        ),
        (
            "a quote in the resource identifier",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: 'https://api.example.com/a\"b'\n"),
            "13:13",
            "only visible ASCII",
        ),
        (
            "an http resource identifier",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: http://api.example.com\n"),
            "13:13",
            "https",
        ),
        (
            "a javascript: redirect URI",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [\"javascript:alert(1)\"]\n      scopes: [a]\n      audience: api\n".into(),
            "6:23",
            "redirect_uris",
        ),
        (
            "a plain-http redirect URI off this host",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [https://app.test/cb, \"http://app.test/cb\"]\n      scopes: [a]\n      audience: api\n".into(),
            "6:44",
            "plain http only to this host",
        ),
        (
            "a redirect URI that is not ASCII",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [\"https://app.test/cb/\u{e9}\"]\n      scopes: [a]\n      audience: api\n".into(),
            "6:23",
            "must be ASCII",
        ),
        (
            "max_connections beyond what the server can count",
            format!("{base}server:\n  max_connections: 3000000000000000000\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:20",
            "max_connections must be between 1 and 1000000",
        ),
        (
            "workers beyond any machine",
            format!("{base}server:\n  workers: 100000\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:12",
            "workers must be between",
        ),
        (
            "a username that is also a client_id",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: alice\n      grants: [authorization_code]\n      redirect_uris: [https://app.test/cb]\n      scopes: [a]\n      audience: api\n  users:\n    - username: alice\n      password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$4o1D5wbiMrWBxZyrM75fgQ$E9Wel4v4obrjtyTxmMjD3fRmEb+dkVye/fy1g40qs5I\"\n".into(),
            "10:17",
            "also a client_id",
        ),
        (
            "a user's scope that is no scope token",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [https://app.test/cb]\n      scopes: [a]\n      audience: api\n  users:\n    - username: alice\n      scopes: [\"a b\"]\n      password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$4o1D5wbiMrWBxZyrM75fgQ$E9Wel4v4obrjtyTxmMjD3fRmEb+dkVye/fy1g40qs5I\"\n".into(),
            "11:16",
            "user `alice`: scopes: `a b` is not a valid scope token",
        ),
        (
            "a client's scope that is no scope token",
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [https://app.test/cb]\n      scopes: [\"a\\\\b\"]\n      audience: api\n".into(),
            "7:16",
            "scopes: `a\\b` is not a valid scope token",
        ),
        (
            "a supported scope that is no scope token",
            format!("{base}routes:\n  - path: /a\n    upstream: app\nresource:\n  resource: https://api.example.com\n  scopes_supported: [\"a b\"]\n"),
            "14:22",
            "scopes_supported: `a b` is not a valid scope token",
        ),
        (
            "scope_claim other than scope, scp, roles or permissions",
            "issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_uri: https://a/k\n    scope_claim: groups\n".into(),
            "6:18",
            "scope_claim",
        ),
        (
            "a list anchored where valid, aliased where one value is expected",
            format!("{base}routes:\n  - path: /a\n    scopes: &s [orders:read]\n    upstream: *s\n"),
            "12:15",
            "expected a single value, not a list or a mapping (the value is an alias `*` of the anchor at line 11, column 16)",
        ),
        (
            "two YAML documents",
            "---\nroutes: []\n---\nroutes: []\n".into(),
            "4:1",
            "a second YAML document (`---`): the config is one document",
        ),
        (
            "a route's scopes left empty",
            format!("{base}routes:\n  - path: /a\n    upstream: app\n    scopes:\n"),
            "12:11",
            "a key left empty has no value (null): write the value, or leave the key out",
        ),
        (
            "an issuer's audiences left empty",
            "issuers:\n  - name: corp\n    issuer: https://idp.example.com\n    audiences:\n    jwks_uri: https://idp.example.com/jwks\n".into(),
            "4:14",
            "a key left empty has no value (null)",
        ),
        (
            "an issuer's algorithms left empty",
            format!("{ISSUER}    algorithms:\n{UPSTREAM}"),
            "6:15",
            "a key left empty has no value (null)",
        ),
        (
            "a document that is one scalar",
            "hello\n".into(),
            "1:1",
            "expected a mapping of settings (`key: value` lines); the file as a whole is one such mapping",
        ),
        (
            "a duration written as a list",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    connect_timeout: [2s]\n"),
            "9:22",
            "expected a single value, not a list or a mapping",
        ),
        (
            "a URL tagged as a number",
            format!("{ISSUER}upstreams:\n  app:\n    url: !!int 5\n"),
            "8:16",
            "a tag (`!!int`, `!!str`, ...) does not fit here",
        ),
        (
            // The parser would drop the tag and take the variable's name
            // `MY_SECRET` as the variable to read.
            "a secret tagged `!env`",
            format!("{ISSUER}    introspection:\n      endpoint: https://idp.example.com/introspect\n      client_id: gw\n      client_secret_env: !env PATH\n"),
            "9:31",
            "`!env` tags are not supported; scopegate reads secrets from *_env / *_file keys",
        ),
        (
            "a URL tagged `!include`",
            format!("{ISSUER}upstreams:\n  app:\n    url: !include x\n"),
            "8:19",
            "`!include` tags are not supported",
        ),
        (
            "a key with a custom tag",
            format!("{ISSUER}{UPSTREAM}!env routes:\n  - path: /a\n    upstream: app\n"),
            "9:6",
            "`!env` tags are not supported",
        ),
        (
            "a mapping with a custom tag",
            format!("{ISSUER}{UPSTREAM}forward: !secret\n  strip_authorization: true\nroutes:\n  - path: /a\n    upstream: app\n"),
            "10:3",
            "`!secret` tags are not supported",
        ),
        (
            "a duration without a unit",
            format!("{ISSUER}upstreams:\n  app:\n    url: http://127.0.0.1:3000\n    connect_timeout: 2\n"),
            "9:22",
            "`2` is not a duration: it needs a unit, e.g. `2s`",
        ),
        (
            "a switch written as a number",
            "server:\n  request_id: 1\n".into(),
            "2:15",
            "expected `true` or `false`",
        ),
        (
            "a route that clashes with an earlier one",
            format!("{base}routes:\n  - path: /orders/{{id}}\n    upstream: app\n  - path: /orders/{{x}}\n    upstream: app\n"),
            "12:11",
            "already routed by route #1 of `routes` (`/orders/{id}`)",
        ),
    ]
}

#[test]
fn config_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    // The key set some rows name: one ES256 key.
    let es256 = scopegate::demo::SigningKey::generate("k").unwrap();
    std::fs::write(dir.path().join("es256-keys.json"), es256.jwks()).unwrap();
    // An Ed25519 key (RFC 8037 A.2's) and a P-256 one off its curve, which
    // fits ES256 by type but verifies nothing.
    let off_curve: serde_json::Value = serde_json::from_str(support::UNUSABLE_JWKS).unwrap();
    std::fs::write(
        dir.path().join("ed-and-off-curve.json"),
        format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},{}]}}"#,
            off_curve["keys"][0]
        ),
    )
    .unwrap();
    // A readable CA bundle, for rows whose ca_file is refused for its place.
    support::self_signed(dir.path());
    let mut failures = Vec::new();
    for (name, yaml, position, fragment) in bad_configs() {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let (ok, _, stderr) = check(&file);
        if ok {
            failures.push(format!("{name}: accepted"));
            continue;
        }
        // Rows with an authorization server but no signing key are told that
        // first, when they get as far as the routes.
        let stderr: String = stderr
            .lines()
            .filter(|l| !l.contains("generated an ephemeral ES256 key"))
            .map(|l| format!("{l}\n"))
            .collect();
        let expected_prefix = if position.is_empty() {
            format!("{}: ", file.display())
        } else {
            format!("{}:{position}: ", file.display())
        };
        if !stderr.starts_with(&expected_prefix)
            || !stderr.contains(fragment)
            || stderr.lines().count() != 1
        {
            failures.push(format!(
                "{name}: expected {expected_prefix:?} and {fragment:?}, got {stderr:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Only a tag is refused, not a `!` in a value: quoted, in a block scalar,
/// in a comment or inside plain text; the core tags, and the bare `!`
/// (which makes a value text), are read as before.
#[test]
fn an_exclamation_mark_that_is_no_tag_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "issuers:\n  - name: \"!env a\"\n    issuer: 'https://a/!include'\n    audiences: [x!y, !!str b]\n    jwks_uri: https://a/k # !env NOT_A_TAG\n    require_typ: |\n      !env at+jwt\n    introspection:\n      client_id: ! gw\n      client_secret_env: PATH\n      endpoint: >-\n        https://a/!x\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n    scopes: [\"!read\", 'write!']\n"
    );
    let loaded = scopegate::config::load_str("bang.yaml", dir.path(), &yaml);
    let config = loaded.unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let issuer = &config.issuers[0];
    assert_eq!(&*issuer.name, "!env a");
    assert_eq!(issuer.issuer, "https://a/!include");
    assert_eq!(issuer.audiences, ["x!y", "b"]);
    assert_eq!(issuer.require_typ.as_deref(), Some("!env at+jwt\n"));
}

/// An issuer's or introspection's `ca_file` is taken wherever a client it
/// serves may speak TLS: an https `jwks_uri` or endpoint, discovery at an
/// https issuer, or keys and endpoints discovery has yet to find.
#[test]
fn a_ca_file_is_accepted_wherever_it_may_be_used() {
    let dir = tempfile::tempdir().unwrap();
    support::self_signed(dir.path());
    std::fs::write(
        dir.path().join("keys.json"),
        scopegate::demo::SigningKey::generate("k").unwrap().jwks(),
    )
    .unwrap();
    let routes = format!("{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n");
    let introspection =
        "    introspection:\n      client_id: gw\n      client_secret_env: PATH\n      ca_file: cert.pem\n";
    for issuer in [
        "    issuer: https://a\n    jwks_uri: https://a/k\n    ca_file: cert.pem\n".to_owned(),
        "    issuer: http://a\n    discovery: true\n    ca_file: cert.pem\n".to_owned(),
        "    issuer: https://a\n    discovery: true\n    jwks_file: keys.json\n    ca_file: cert.pem\n"
            .to_owned(),
        "    issuer: https://a\n    discovery: true\n    jwks_uri: http://127.0.0.1:9/k\n    ca_file: cert.pem\n"
            .to_owned(),
        format!("    issuer: http://a\n    discovery: true\n    jwks_file: keys.json\n{introspection}"),
    ] {
        let yaml = format!("issuers:\n  - name: a\n    audiences: [x]\n{issuer}{routes}");
        let loaded = scopegate::config::load_str("ca.yaml", dir.path(), &yaml);
        assert!(loaded.is_ok(), "{:?}\n{yaml}", loaded.err());
    }
}

/// An issuer need not be a URL (`iss` is any string to compare), and one
/// written as a URL with a port that exists, a path or upper-case scheme is
/// taken as it is.
#[test]
fn an_issuer_that_is_no_url_or_a_valid_one_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!("{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n");
    for issuer in [
        "accounts.google.com",
        "urn:example:idp",
        "https://idp.example.com:8443/realms/x",
        "HTTPS://idp.example.com",
    ] {
        let yaml = format!(
            "issuers:\n  - name: a\n    issuer: \"{issuer}\"\n    audiences: [x]\n    jwks_uri: https://a/k\n{routes}"
        );
        let loaded = scopegate::config::load_str("iss.yaml", dir.path(), &yaml);
        assert!(loaded.is_ok(), "{:?}\n{yaml}", loaded.err());
    }
}

/// A redirect URI may be plain http only to this host, where no network
/// lies between the browser and the app (RFC 8252 7.3's loopback redirect
/// of native apps, and a developer's `localhost`); https and native apps'
/// schemes go anywhere.
#[test]
fn redirect_uris_to_this_host_may_be_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    for uri in [
        "http://127.0.0.1/callback",
        "http://127.0.0.1:8123/cb",
        "http://[::1]/cb",
        "http://localhost:3000/cb",
        "http://LOCALHOST/cb",
        "http://app.localhost/cb",
        "https://app.example.com/cb",
        "com.example.app:/cb",
    ] {
        let yaml = format!(
            "authorization_server:\n  issuer: https://as.test\n  clients:\n    - client_id: web\n      grants: [authorization_code]\n      redirect_uris: [\"{uri}\"]\n      scopes: [a]\n      audience: api\n"
        );
        let loaded = scopegate::config::load_str("redirect.yaml", dir.path(), &yaml);
        assert!(loaded.is_ok(), "{uri}: {:?}", loaded.err());
    }
}

/// A `jwks_file` may hold keys scopegate cannot verify with beside those it
/// can (a point off the curve here): the config is valid, their tokens get
/// `bad_signature`, and the load warns at the file's place, naming them, as
/// a fetched set's load does. A file of usable keys only gets no warning.
#[test]
fn unusable_keys_in_a_jwks_file_are_named_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let usable = scopegate::demo::SigningKey::generate("current").unwrap();
    let mut document: serde_json::Value = serde_json::from_str(usable.jwks()).unwrap();
    let file = dir.path().join("scopegate.yaml");
    std::fs::write(
        &file,
        format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    jwks_file: keys.json\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("keys.json"), document.to_string()).unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("cannot verify with"), "{stderr}");

    let unusable: serde_json::Value = serde_json::from_str(support::UNUSABLE_JWKS).unwrap();
    let mut off_curve = unusable["keys"][0].clone();
    off_curve["kid"] = "retired".into();
    document["keys"].as_array_mut().unwrap().push(off_curve);
    std::fs::write(dir.path().join("keys.json"), document.to_string()).unwrap();
    let stderr = check_warns(
        &file,
        "5:16",
        "jwks_file has keys scopegate cannot verify with (kids [\"retired\"]",
    );
    // Logs to a pipe carry no colour codes (`kubectl logs` would keep them).
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");

    // A private key beside them is not used, and named; alone, it is an
    // error naming it.
    let mut private = document["keys"][0].clone();
    private["kid"] = "leaked".into();
    private["d"] = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU".into();
    document["keys"]
        .as_array_mut()
        .unwrap()
        .push(private.clone());
    std::fs::write(dir.path().join("keys.json"), document.to_string()).unwrap();
    check_warns(
        &file,
        "5:16",
        "jwks_file has private keys (kids [\"leaked\"] carry `d`)",
    );
    // Entries past the first 64 are not read, and said so.
    let mut many = document.clone();
    let filler = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
    many["keys"]
        .as_array_mut()
        .unwrap()
        .extend(std::iter::repeat_n(filler, 64));
    std::fs::write(dir.path().join("keys.json"), many.to_string()).unwrap();
    let count = many["keys"].as_array().unwrap().len() - 64;
    check_warns(
        &file,
        "5:16",
        &format!("jwks_file has {count} entries past the first 64, which are not read"),
    );
    let only = serde_json::json!({ "keys": [private] });
    std::fs::write(dir.path().join("keys.json"), only.to_string()).unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("5:16"), "{stderr}");
    assert!(
        stderr.contains("the keys with kid leaked publish their private part"),
        "{stderr}"
    );
}

/// `jwks_refetch_cooldown: 0s` is taken (tests refetch at once) and warned
/// about where keys are fetched: each forged token would cost the identity
/// provider a fetch. A key file is never fetched, and the default is quiet.
#[test]
fn a_zero_jwks_refetch_cooldown_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    let config = |keys: &str, cooldown: &str| {
        format!("issuers:\n  - name: a\n    issuer: https://a\n    audiences: [x]\n    {keys}\n{cooldown}{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n")
    };
    let zero = "    jwks_refetch_cooldown: 0s\n";
    std::fs::write(&file, config("jwks_uri: https://a/k", zero)).unwrap();
    check_warns(&file, "6:28", "issuer `a` has `jwks_refetch_cooldown: 0s`");
    std::fs::write(
        dir.path().join("keys.json"),
        scopegate::demo::SigningKey::generate("k").unwrap().jwks(),
    )
    .unwrap();
    for quiet in [
        config("jwks_uri: https://a/k", ""),
        config("jwks_uri: https://a/k", "    jwks_refetch_cooldown: 1s\n"),
        config("jwks_file: keys.json", zero),
    ] {
        std::fs::write(&file, &quiet).unwrap();
        let (ok, _, stderr) = check(&file);
        assert!(ok, "{stderr}");
        assert!(
            !stderr.contains("jwks_refetch_cooldown"),
            "{quiet}\n{stderr}"
        );
    }
}

/// A client secret (user password) hash whose argon2 cost differs from the
/// one most client (user) hashes take is warned about at its line: a client
/// id (user name) that does not exist is refused as slowly as the usual
/// ones, so the time of a refusal would tell that the odd one exists. Each
/// kind is its own: users hashed otherwise than the clients, but alike, get
/// no warning; nor does a hash differing only in lanes, which cost no time.
#[test]
fn odd_argon2_parameters_are_warned_about_at_their_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    let hash = |parameters: &str| {
        format!(
            "$argon2id$v=19${parameters}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
        )
    };
    let (usual, lanes, heavy) = (
        hash("m=19456,t=2,p=1"),
        hash("m=19456,t=2,p=4"),
        hash("m=65536,t=3,p=4"),
    );
    let text = |clients: [&str; 3], users: [&str; 3]| {
        let mut text = format!(
            "{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  clients:\n"
        );
        for (i, h) in clients.iter().enumerate() {
            text += &format!(
                "    - client_id: c{i}\n      client_secret_hash: \"{h}\"\n      audience: api\n"
            );
        }
        text += "  users:\n";
        for (i, h) in users.iter().enumerate() {
            text += &format!("    - username: u{i}\n      password_hash: \"{h}\"\n");
        }
        text + "routes:\n  - path: /a\n    upstream: app\n"
    };
    // Clients alike (one differing in lanes only), users alike among
    // themselves: no warning.
    std::fs::write(
        &file,
        text([&usual, &lanes, &usual], [&heavy, &heavy, &heavy]),
    )
    .unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("argon2 parameters"), "{stderr}");

    // One user hashed heavier than the other two: warned at its line.
    std::fs::write(
        &file,
        text([&usual, &usual, &usual], [&usual, &heavy, &usual]),
    )
    .unwrap();
    let stderr = check_warns(
        &file,
        "20:22",
        "argon2 parameters `$argon2id$v=19$m=65536,t=3,p=4` cost otherwise than the `$argon2id$v=19$m=19456,t=2,p=1` most user password hashes here take",
    );
    assert_eq!(stderr.matches("argon2 parameters").count(), 1, "{stderr}");
}

/// Runs `check` on `file`, which must pass with a warning at `position`
/// (line:column) that begins with `message`, said plainly as a compiler
/// does (`file:line:column: warning: ...` as the whole line, with no log
/// timestamp or level) whatever `RUST_LOG` says; its stderr.
fn check_warns(file: &Path, position: &str, message: &str) -> String {
    let warning = format!("{}:{position}: warning: {message}", file.display());
    let mut stderr = String::new();
    for log_level in [None, Some("error"), Some("off")] {
        let mut command = scopegate();
        if let Some(level) = log_level {
            command.env("RUST_LOG", level);
        }
        let out = command
            .args(["check", "--config"])
            .arg(file)
            .output()
            .unwrap();
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with(&warning)),
            "RUST_LOG={log_level:?}: {warning}\n{stderr}"
        );
        assert!(!stderr.contains("WARN"), "{stderr}");
    }
    stderr
}

/// A `RUST_LOG` that cannot be read, or a bare word that is no level
/// (`warning`, which tracing reads as a target), is said on stderr; an empty
/// one is taken as unset (tracing would read it as "nothing": every log
/// off); a good one is taken silently.
#[test]
fn an_unreadable_rust_log_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    // A valid config that logs a warning when `run` loads it (an ephemeral
    // key; `check` says warnings without the log), on a port that is taken,
    // so that `run` ends there.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let hash =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
    std::fs::write(
        &file,
        format!("server:\n  listen: {taken}\nadmin:\n  listen: 127.0.0.1:0\n{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  clients:\n    - client_id: svc\n      client_secret_hash: \"{hash}\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
    )
    .unwrap();
    let run = |filter: &str| {
        let out = scopegate()
            .env("RUST_LOG", filter)
            .args(["run", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains(&format!("cannot listen on {taken}")),
            "{stderr}"
        );
        stderr
    };
    let logged = |stderr: &str| stderr.contains("WARN") && stderr.contains("ephemeral");
    let stderr = run("scopegate=debg");
    assert!(
        stderr.contains("scopegate: RUST_LOG: ") && stderr.contains("logging at info"),
        "{stderr}"
    );
    assert!(logged(&stderr), "{stderr}");
    let stderr = run("warning");
    assert!(
        stderr.contains("scopegate: RUST_LOG: `warning` is no level"),
        "{stderr}"
    );
    for quiet in [
        "",
        "  ",
        "scopegate=debug",
        "warn,hyper=info",
        "INFO",
        "3",
        "error, warn",
    ] {
        let stderr = run(quiet);
        assert!(!stderr.contains("RUST_LOG"), "{quiet:?}: {stderr}");
        assert!(logged(&stderr), "{quiet:?}: {stderr}");
    }
}

/// `check` warns where a route that needs a token seems to cover a request
/// that goes to a public route: a method its `methods` leave out, the
/// bare prefix of a `{*rest}` route, which the catch-all does not match,
/// and a route's path with a trailing slash, unless `route_matching` folds
/// it (Express, Rails and Laravel route `/admin/` as `/admin`). The config
/// stays valid (exit 0), and a table without such a public route gets no
/// warning.
#[test]
fn check_warns_where_requests_fall_through_to_weaker_routes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    let routes = "routes:\n  - path: /reports/\n    upstream: app\n    scopes: [reports]\n  - path: /admin\n    methods: [GET]\n    upstream: app\n    scopes: [admin]\n  - path: /upload\n    methods: [POST]\n    upstream: app\n    scopes: [upload]\n  - path: /files/{*rest}\n    upstream: app\n    scopes: [files]\n  - path: /orders/{id}\n    methods: [GET, PUT, POST, PATCH, DELETE, OPTIONS]\n    upstream: app\n";
    std::fs::write(
        &file,
        format!(
            "{ISSUER}{UPSTREAM}{routes}  - path: /{{*page}}\n    upstream: app\n    auth: none\n"
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    for expected in [
        "warning: POST,PUT,PATCH,DELETE,OPTIONS /admin: route `GET /admin` needs a token (bearer [admin]), but these fall through to public route `/{*page}`",
        "warning: GET,HEAD,PUT,PATCH,DELETE,OPTIONS /upload: route `POST /upload` needs a token (bearer [upload]), but these fall through",
        "warning: GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS /files: route `/files/{*rest}` needs a token (bearer [files]), but these are not matched by its catch-all",
        "warning: GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS /files/: route `/files/{*rest}`",
        "warning: GET /admin/: route `GET /admin` needs a token (bearer [admin]), but these are another path (a trailing slash more or less; `route_matching: { trailing_slash: ignore }` if the app routes both alike) and fall through to public route `/{*page}`",
        "warning: GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS /reports: route `/reports/` needs a token (bearer [reports]), but these are another path",
        "warning: POST /upload/: route `POST /upload`",
        "warning: GET,PUT,POST,PATCH,DELETE,OPTIONS /orders/x/: route `GET,PUT,POST,PATCH,DELETE,OPTIONS /orders/{id}`",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    // Each at its route's path, as a compiler warns.
    let at_admin = format!(
        "{}:13:11: warning: POST,PUT,PATCH,DELETE,OPTIONS /admin:",
        file.display()
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(&at_admin)),
        "{at_admin}\n{stderr}"
    );
    // Every method listed: nothing falls through from /orders/{id} itself.
    assert!(!stderr.contains(" /orders/x:"), "{stderr}");
    // With trailing slashes folded, `/admin/` is `/admin`'s: no such warning.
    std::fs::write(
        &file,
        format!(
            "{ISSUER}{UPSTREAM}route_matching:\n  trailing_slash: ignore\n{}  - path: /{{*page}}\n    upstream: app\n    auth: none\n",
            // A pattern with a trailing slash could never match here.
            routes.replace("  - path: /reports/\n    upstream: app\n    scopes: [reports]\n", "")
        ),
    )
    .unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("trailing slash"), "{stderr}");
    assert!(
        stderr.contains("warning: POST,PUT,PATCH,DELETE,OPTIONS /admin:"),
        "{stderr}"
    );
    // Without the public catch-all there is nothing weaker to fall to.
    std::fs::write(&file, format!("{ISSUER}{UPSTREAM}{routes}")).unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Resource metadata beside a catch-all route (which keeps every other
/// path), naming a plain-http authorization server on this host, with a
/// documentation link that has a #fragment, is fine.
#[test]
fn resource_metadata_beside_a_catch_all_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    std::fs::write(
        &file,
        format!("{ISSUER}{UPSTREAM}routes:\n  - path: /{{*rest}}\n    upstream: app\nresource:\n  resource: https://api.example.com\n  authorization_servers: [http://127.0.0.1:8080]\n  resource_documentation: https://docs.example.com/api#orders\n"),
    )
    .unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
}

/// An issuer's endpoints may be plain http beyond this host (an in-cluster
/// Keycloak Service) only when the issuer says so, or is itself a plain
/// `http://` URL: an issuer that is an https URL in another spelling, or no
/// URL at all, gets no exception.
#[test]
fn plain_http_issuer_endpoints_need_an_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
    for endpoints in [
        "    jwks_uri: http://keycloak.auth.svc:8080/realms/x/certs\n",
        "    introspection:\n      endpoint: http://keycloak.auth.svc:8080/introspect\n      client_id: gw\n      client_secret_file: secret\n",
    ] {
        for issuer in ["https://idp.example.com", "HTTPS://idp.example.com", "accounts.example.com"] {
            let yaml = |opt_in: &str| {
                format!("issuers:\n  - name: corp\n    issuer: {issuer}\n    audiences: [api]\n{opt_in}{endpoints}{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n")
            };
            std::fs::write(&file, yaml("")).unwrap();
            let (ok, _, stderr) = check(&file);
            assert!(!ok, "{issuer} {endpoints}");
            assert!(stderr.contains("allow_plain_http_endpoints: true"), "{stderr}");
            std::fs::write(&file, yaml("    allow_plain_http_endpoints: true\n")).unwrap();
            let (ok, _, stderr) = check(&file);
            assert!(ok, "{issuer} {endpoints}: {stderr}");
        }
        let plain = format!("issuers:\n  - name: corp\n    issuer: http://keycloak.auth.svc:8080/realms/x\n    audiences: [api]\n{endpoints}{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n");
        std::fs::write(&file, plain).unwrap();
        let (ok, _, stderr) = check(&file);
        assert!(ok, "http issuer, {endpoints}: {stderr}");
    }
}

/// A built-in server signs users in at a plain-http issuer only on this
/// host (browsers keep `Secure` cookies from loopback origins); one on
/// another host takes client secrets and passwords only when the config
/// says something else encrypts every hop (`allow_plain_http`, a service
/// mesh; RFC 6749 3.2 requires TLS), and signs no one in even then.
#[test]
fn a_plain_http_issuer_serves_only_on_loopback_or_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    let yaml = |issuer: &str, extra: &str, grants: &str| {
        format!("{UPSTREAM}authorization_server:\n  issuer: {issuer}\n{extra}  clients:\n    - client_id: c\n      grants: [{grants}]\n      audience: api\n      redirect_uris: [\"https://app.example.com/cb\"]\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\nroutes:\n  - path: /a\n    upstream: app\n")
    };
    const MESH: &str = "  allow_plain_http: true\n";
    const NO_SIGN_IN: Option<&str> = Some("cannot sign users in");
    const NO_TLS: Option<&str> = Some("in cleartext (RFC 6749 3.2 requires TLS)");
    for (issuer, extra, grants, refused) in [
        ("http://127.0.0.1:8080", "", "authorization_code", None),
        ("http://localhost:8080", "", "authorization_code", None),
        ("http://[::1]:8080", "", "authorization_code", None),
        ("http://auth.localhost:8080", "", "authorization_code", None),
        ("https://auth.example.com", "", "authorization_code", None),
        (
            "http://127.0.0.1:8080",
            "",
            "client_credentials, password",
            None,
        ),
        ("http://auth.example.com", "", "client_credentials", NO_TLS),
        ("http://auth.example.com", "", "password", NO_TLS),
        (
            "http://auth.example.com",
            MESH,
            "client_credentials, password",
            None,
        ),
        (
            "http://auth.example.com",
            "",
            "authorization_code",
            NO_SIGN_IN,
        ),
        (
            "http://auth.example.com",
            MESH,
            "authorization_code",
            NO_SIGN_IN,
        ),
        (
            "http://10.0.0.7:8080",
            "",
            "client_credentials, authorization_code",
            NO_SIGN_IN,
        ),
    ] {
        std::fs::write(&file, yaml(issuer, extra, grants)).unwrap();
        let (ok, _, stderr) = check(&file);
        assert_eq!(ok, refused.is_none(), "{issuer} {extra} {grants}: {stderr}");
        if let Some(why) = refused {
            assert!(stderr.contains(why), "{issuer} {grants}: {stderr}");
        }
    }
}

/// A Redis store over TLS, trusting a CA file next to the config.
#[test]
fn a_redis_store_over_tls_with_its_ca_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["redis.internal".into()]).unwrap();
    std::fs::write(dir.path().join("redis-ca.pem"), certified.cert.pem()).unwrap();
    let file = dir.path().join("scopegate.yaml");
    std::fs::write(
        &file,
        format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {{ redis: \"rediss://:pw@redis.internal:6380/0\", ca_file: redis-ca.pem }}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n"),
    )
    .unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok, "{stderr}");
}

/// A Redis password belongs in a Secret: one in the URL is warned about at
/// its line and column (a ConfigMap shows it), `password_file` and
/// `password_env` are taken without a warning (not both, and not beside a
/// password in the URL), and plain `redis://` to another host is warned
/// about (the password and every grant cross in clear text).
#[test]
fn redis_passwords_belong_in_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("redis-password"), "pw\n").unwrap();
    let file = dir.path().join("scopegate.yaml");
    let config = |store: &str| {
        format!("{UPSTREAM}authorization_server:\n  issuer: https://as.example.com\n  store: {store}\n  clients:\n    - client_id: svc\n      client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n      audience: api\nroutes:\n  - path: /a\n    upstream: app\n")
    };
    std::fs::write(
        &file,
        config("{ redis: \"rediss://:pw@redis.internal:6380/0\" }"),
    )
    .unwrap();
    let stderr = check_warns(&file, "6:19", "the redis URL holds a password");
    assert!(!stderr.contains(":pw@"), "{stderr}");
    std::fs::write(
        &file,
        config("{ redis: \"redis://redis.internal:6379/0\", password_file: redis-password }"),
    )
    .unwrap();
    check_warns(
        &file,
        "6:19",
        "the redis store is plain redis:// on another host",
    );
    std::fs::write(
        &file,
        config("{ redis: \"rediss://redis.internal:6380/0\", password_file: redis-password }"),
    )
    .unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(ok && !stderr.contains("redis"), "{stderr}");
    for (store, message) in [
        (
            "{ redis: \"rediss://:pw@redis.internal:6380/0\", password_file: redis-password }",
            "6:72: the redis URL has a password, and password_file or password_env gives another",
        ),
        (
            "{ redis: \"rediss://redis.internal:6380/0\", password_file: redis-password, password_env: X }",
            "6:98: set either password_file or password_env, not both",
        ),
        (
            "{ redis: \"rediss://redis.internal:6380/0\", password_env: SCOPEGATE_TEST_UNSET_REDIS }",
            "6:67: environment variable `SCOPEGATE_TEST_UNSET_REDIS` is not set",
        ),
    ] {
        std::fs::write(&file, config(store)).unwrap();
        let (ok, _, stderr) = check(&file);
        assert!(!ok, "{store}");
        assert!(stderr.contains(&format!("{}:{message}", file.display())), "{store}: {stderr}");
    }
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let (ok, _, stderr) = check(Path::new("/nonexistent/scopegate.yaml"));
    assert!(!ok);
    assert!(
        stderr.starts_with("/nonexistent/scopegate.yaml: cannot read"),
        "{stderr}"
    );
    // Where to name one, for `run` too (its default path is relative).
    assert!(
        stderr.contains("--config PATH or SCOPEGATE_CONFIG"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = scopegate()
        .env_remove("SCOPEGATE_CONFIG")
        .arg("run")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("config/scopegate.yaml: cannot read")
            && stderr.contains(
                "config/scopegate.yaml: no such file: name the config with --config PATH"
            ),
        "{stderr}"
    );
}

/// Runs `command` on a config file whose `routes:` is a number (written
/// to `dir`), passed by `name`; the run must exit 1 naming the file, line
/// and column.
fn refuses_a_broken_file(dir: &Path, name: impl FnOnce(&mut Command, &Path)) {
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "routes: 5\n").unwrap();
    let mut command = scopegate();
    name(&mut command, &file);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:1:9: ", file.display())),
        "{stderr}"
    );
}

#[test]
fn run_with_a_bad_config_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    refuses_a_broken_file(dir.path(), |command, file| {
        command.args(["run", "--config"]).arg(file);
    });
}

/// A refused config ends `check` and `run` with status 1 also when stderr
/// cannot take the message (`2>/dev/full`; a closed pipe is the same):
/// printed with `eprintln!`, it was a panic, and the status 101.
#[cfg(target_os = "linux")]
#[test]
fn a_bad_config_exits_1_when_stderr_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "routes: 5\n").unwrap();
    let exits = ["check", "run"].map(|command| {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let status = scopegate()
            .args([command, "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(full)
            .status()
            .unwrap();
        (command, status.code())
    });
    assert_eq!(exits, [("check", Some(1)), ("run", Some(1))]);
}

/// `SCOPEGATE_CONFIG` names the file when `--config` does not: here a
/// broken one, so that reading the default file (which is valid) instead
/// would pass `check`.
#[test]
fn config_from_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    refuses_a_broken_file(dir.path(), |command, file| {
        command.arg("check").env("SCOPEGATE_CONFIG", file);
    });
}

/// A file that is not UTF-8 (a Latin-1 `é` in a comment) is refused at its
/// first byte that is not, like any other error.
#[test]
fn a_config_that_is_no_utf8_is_refused_at_its_first_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.yaml");
    std::fs::write(&file, b"routes: []\n# caf\xe9\n").unwrap();
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "{}:2:6: the file is not UTF-8 text",
            file.display()
        )),
        "{stderr}"
    );
}

#[path = "config/hostile_configs.rs"]
mod hostile_configs;

/// A reload keeps the running key sets and caches when the issuers' part of
/// the config is the same; a CA bundle rewritten in place under the same name
/// is not the same.
#[test]
fn a_ca_bundle_rewritten_in_place_changes_the_issuers_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.yaml");
    std::fs::write(
        &config,
        r#"issuers:
  - name: idp
    issuer: https://idp.test
    audiences: [api]
    jwks_uri: https://idp.test/jwks
    ca_file: ca.pem
upstreams:
  app:
    url: http://127.0.0.1:9
routes:
  - path: /a
    upstream: app
    scopes: [a]
"#,
    )
    .unwrap();
    let fingerprint = || {
        scopegate::config::load_file(&config)
            .unwrap()
            .auth_fingerprint()
    };
    let (first, _) = support::self_signed(dir.path());
    std::fs::rename(&first, dir.path().join("ca.pem")).unwrap();
    let before = fingerprint();
    assert_eq!(fingerprint(), before, "the same files, another fingerprint");
    let (second, _) = support::self_signed(dir.path());
    std::fs::rename(&second, dir.path().join("ca.pem")).unwrap();
    assert_ne!(fingerprint(), before);
}

/// `run` on a listen address that is taken exits with status 1 and names
/// the address, for the proxy listener and for the admin one.
#[test]
fn a_listen_address_in_use_ends_run_with_an_error() {
    use std::io::Read;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scopegate.yaml");
    for (server, admin) in [
        (taken.as_str(), "127.0.0.1:0"),
        ("127.0.0.1:0", taken.as_str()),
    ] {
        std::fs::write(
            &file,
            format!("server:\n  listen: {server}\nadmin:\n  listen: {admin}\n{UPSTREAM}routes:\n  - path: /a\n    upstream: app\n    auth: none\n"),
        )
        .unwrap();
        let mut child = scopegate()
            .args(["run", "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = None;
        for _ in 0..600 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = status.unwrap_or_else(|| panic!("run kept going on {taken}: {stderr}"));
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {taken}")),
            "{stderr}"
        );
    }
}

/// `hash-secret` with the secret piped in: the hash is of exactly the bytes
/// given, less the one line break a `echo` adds, and nothing comes of no
/// secret at all.
#[test]
fn hash_secret_from_a_pipe_hashes_that_secret() {
    use std::io::Write;
    let run = |input: &str| {
        let mut child = scopegate()
            .arg("hash-secret")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run("pi ped-s3cret\n");
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(verifies(hash.trim_end(), "pi ped-s3cret"), "{hash}");
    assert!(!verifies(hash.trim_end(), "pi ped-s3cret\n"), "{hash}");

    let out = run("");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage:"),
        "{out:?}"
    );
}

fn verifies(hash: &str, secret: &str) -> bool {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(hash).unwrap();
    Argon2::default()
        .verify_password(secret.as_bytes(), &parsed)
        .is_ok()
}

/// `hash-secret` typed at a terminal asks for the secret twice with echo
/// off: the secret never shows on the terminal, and the hash is of it.
#[cfg(unix)]
#[test]
fn hash_secret_at_a_terminal_asks_twice_without_echo() {
    let mut terminal = pty::Session::start(&["hash-secret"]);
    terminal.wait_for("secret: ");
    terminal.type_line("typed-s3cret");
    terminal.wait_for("again: ");
    terminal.type_line("typed-s3cret");
    let (status, stdout, shown) = terminal.finish();
    assert!(status.success(), "{status:?} {shown}");
    assert!(verifies(stdout.trim_end(), "typed-s3cret"), "{stdout}");
    assert!(!shown.contains("typed-s3cret"), "echoed: {shown:?}");
}

/// An empty secret at the terminal: said so, nothing hashed, exit 1.
#[cfg(unix)]
#[test]
fn hash_secret_at_a_terminal_refuses_an_empty_secret() {
    let mut terminal = pty::Session::start(&["hash-secret"]);
    terminal.wait_for("secret: ");
    terminal.type_line("");
    let (status, stdout, shown) = terminal.finish();
    assert_eq!(status.code(), Some(1), "{shown}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(shown.contains("the secret is empty"), "{shown:?}");
}

/// Two different secrets at the terminal: nothing is hashed, exit 1.
#[cfg(unix)]
#[test]
fn hash_secret_at_a_terminal_refuses_two_different_secrets() {
    let mut terminal = pty::Session::start(&["hash-secret"]);
    terminal.wait_for("secret: ");
    terminal.type_line("first-try");
    terminal.wait_for("again: ");
    terminal.type_line("first-trx");
    let (status, stdout, shown) = terminal.finish();
    assert_eq!(status.code(), Some(1), "{shown}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(shown.contains("the two secrets differ"), "{shown:?}");
    assert!(!shown.contains("first-tr"), "echoed: {shown:?}");
}

/// scopegate run with a pseudo-terminal as its stdin and stderr (what a
/// person at a terminal has) and stdout piped.
#[cfg(unix)]
mod pty {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::process::{Child, ExitStatus, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Longest wait for the program's next output before the test fails
    /// (a guard against hanging, not a timing check).
    const HANG_GUARD: Duration = Duration::from_secs(120);

    pub struct Session {
        child: Child,
        master: File,
        output: mpsc::Receiver<Vec<u8>>,
        shown: Vec<u8>,
    }

    impl Session {
        pub fn start(args: &[&str]) -> Self {
            use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
            let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
            grantpt(&master).unwrap();
            unlockpt(&master).unwrap();
            let name = ptsname(&master, Vec::new()).unwrap();
            let terminal = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(name.to_str().unwrap())
                .unwrap();
            let mut command = super::scopegate();
            command
                .args(args)
                .stdin(Stdio::from(terminal.try_clone().unwrap()))
                .stderr(Stdio::from(terminal))
                .stdout(Stdio::piped());
            let child = command.spawn().unwrap();
            // The terminal's last copy is the child's: once it exits, the
            // master's reads end.
            drop(command);
            let master = File::from(master);
            let mut reader = master.try_clone().unwrap();
            let (tx, output) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            Self {
                child,
                master,
                output,
                shown: Vec::new(),
            }
        }

        pub fn wait_for(&mut self, text: &str) {
            while !String::from_utf8_lossy(&self.shown).contains(text) {
                match self.output.recv_timeout(HANG_GUARD) {
                    Ok(chunk) => self.shown.extend(chunk),
                    Err(e) => panic!(
                        "{text:?} never shown ({e}); shown: {:?}",
                        String::from_utf8_lossy(&self.shown)
                    ),
                }
            }
        }

        pub fn type_line(&mut self, line: &str) {
            self.master.write_all(line.as_bytes()).unwrap();
            self.master.write_all(b"\r").unwrap();
        }

        /// Waits for the exit; its status, stdout and all the terminal showed.
        pub fn finish(mut self) -> (ExitStatus, String, String) {
            let mut stdout = String::new();
            self.child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            let status = self.child.wait().unwrap();
            loop {
                match self.output.recv_timeout(HANG_GUARD) {
                    Ok(chunk) => self.shown.extend(chunk),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("the terminal never closed: {e}"),
                }
            }
            let shown = String::from_utf8_lossy(&self.shown).into_owned();
            (status, stdout, shown)
        }
    }

    impl Drop for Session {
        /// A failed test leaves no program waiting on the terminal.
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
