//! Generated broken configurations: the shipped files, each changed in one
//! to three places (a value replaced by one of the wrong type, range or
//! spelling; a line deleted, repeated, indented differently or preceded by
//! an unknown key or a tab; the text cut short), loaded in-process.
//!
//! Whatever the text, loading must not panic, and a refusal must name the
//! file, a line and a column inside the text, in one line.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 2048).

use super::*;

use proptest::prelude::*;

/// An argon2id hash (of a secret nobody kept).
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$4o1D5wbiMrWBxZyrM75fgQ$E9Wel4v4obrjtyTxmMjD3fRmEb+dkVye/fy1g40qs5I";

/// Words of the YAML parser's Rust API, which mean nothing to the person
/// editing the file.
const RUST_TALK: &[&str] = &[
    "DuplicateKeyPolicy",
    "Option<",
    "invalid u64",
    "invalid u32",
    "invalid usize",
    "Spanned",
];

/// What a value may be replaced with.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "0s",
    "0ms",
    "5 parsecs",
    "18446744073709551616",
    "1e309",
    "99999999999999999999s",
    "true",
    "null",
    "~",
    "[]",
    "{}",
    "[a, b]",
    "{a: 1}",
    "\"\"",
    "''",
    "!!binary aGk=",
    "*nope",
    "&anchor 1",
    "http://",
    "ftp://x",
    "http://[::1",
    "https://user:pass@host/",
    "http://127.0.0.1:99999",
    "http://app.example.com/callback",
    "http://127.0.0.1:-9/cb",
    "/a/../b",
    "/{x}/{x}",
    "/a/{*rest}/b",
    "/a%2Fb",
    "GET",
    "get",
    "\"a b\"",
    "\"\\u0000\"",
    "0.0.0.0:99999",
    "[::]:8080",
    "'\u{1F980}'",
    "|\n  block",
    ">-",
    "'unterminated",
    "\"unterminated",
    "ES256",
    "none",
    "client_secret_post",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// The value after `key:` or `- ` on a line.
    Replace {
        line: usize,
        value: &'static str,
    },
    Delete(usize),
    Repeat(usize),
    /// `bogus: 1` before the line, at its indentation.
    Unknown(usize),
    /// Two more spaces of indentation.
    Indent(usize),
    /// One space less.
    Dedent(usize),
    /// A tab before the line.
    Tab(usize),
    /// The text cut after this many per mille of it.
    Truncate(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<prop::sample::Index>();
    prop_oneof![
        8 => (line.clone(), prop::sample::select(VALUES))
            .prop_map(|(line, value)| Mutation::Replace { line: line.index(usize::MAX), value }),
        1 => line.clone().prop_map(|l| Mutation::Delete(l.index(usize::MAX))),
        1 => line.clone().prop_map(|l| Mutation::Repeat(l.index(usize::MAX))),
        1 => line.clone().prop_map(|l| Mutation::Unknown(l.index(usize::MAX))),
        1 => line.clone().prop_map(|l| Mutation::Indent(l.index(usize::MAX))),
        1 => line.clone().prop_map(|l| Mutation::Dedent(l.index(usize::MAX))),
        1 => line.prop_map(|l| Mutation::Tab(l.index(usize::MAX))),
        1 => (0u16..1000).prop_map(Mutation::Truncate),
    ]
}

/// Applies `mutation` to the lines of a file.
fn apply(lines: &mut Vec<String>, mutation: &Mutation) {
    // Content lines only (not blank, not comments).
    let content: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, _)| i)
        .collect();
    let at = |n: usize| content.get(n % content.len().max(1)).copied();
    match *mutation {
        Mutation::Replace { line, value } => {
            let Some(i) = at(line) else { return };
            let text = &lines[i];
            let cut = text
                .find(": ")
                .map(|p| p + 2)
                .or_else(|| text.find("- ").map(|p| p + 2))
                .unwrap_or(text.len());
            lines[i] = format!("{}{value}", &text[..cut]);
        }
        Mutation::Delete(line) => {
            if let Some(i) = at(line) {
                lines.remove(i);
            }
        }
        Mutation::Repeat(line) => {
            if let Some(i) = at(line) {
                let copy = lines[i].clone();
                lines.insert(i, copy);
            }
        }
        Mutation::Unknown(line) => {
            if let Some(i) = at(line) {
                let text = &lines[i];
                let indent = &text[..text.len() - text.trim_start().len()];
                let indent = indent.replace('-', " ");
                lines.insert(i, format!("{indent}bogus: 1"));
            }
        }
        Mutation::Indent(line) => {
            if let Some(i) = at(line) {
                lines[i] = format!("  {}", lines[i]);
            }
        }
        Mutation::Dedent(line) => {
            if let Some(i) = at(line) {
                if let Some(rest) = lines[i].strip_prefix(' ') {
                    lines[i] = rest.to_owned();
                }
            }
        }
        Mutation::Tab(line) => {
            if let Some(i) = at(line) {
                lines[i] = format!("\t{}", lines[i]);
            }
        }
        Mutation::Truncate(per_mille) => {
            let text = lines.join("\n");
            let mut end = text.len() * usize::from(per_mille) / 1000;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            *lines = text[..end].lines().map(str::to_owned).collect();
        }
    }
}

/// A configuration that sets every key the schema has, so that every one
/// of them gets broken somewhere in the campaign. `{pem}` is a signing key
/// file, `{cert}` and `{key}` a certificate and its key, `{jwks}` a key set
/// file, `{hash}` an argon2 hash.
const EVERY_KEY: &str = r#"server:
  listen: 127.0.0.1:8080
  tls:
    cert_file: {cert}
    key_file: {key}
  max_header_bytes: 16384
  workers: 1
  shutdown_grace: 20s
  shutdown_delay: 2s
  header_read_timeout: 10s
  max_connections: 1000
  idle_timeout: 60s
admin:
  listen: 127.0.0.1:9090
issuers:
  - name: corp
    issuer: https://idp.example.com
    audiences: [orders-api]
    jwks_uri: https://idp.example.com/jwks
    ca_file: {cert}
    algorithms: [ES256, RS256]
    leeway: 30s
    require_typ: at+jwt
    scope_claim: scope
    jwks_refresh_interval: 5m
    jwks_refetch_cooldown: 30s
    jwks_timeout: 5s
  - name: partners
    issuer: https://partners.example.com
    audiences: [orders-api]
    jwks_file: {jwks}
    algorithms: [ES256]
    scope_claim: scp
  - name: opaque
    issuer: https://opaque.example.com
    audiences: [orders-api]
    discovery: false
    introspection:
      endpoint: https://opaque.example.com/introspect
      client_id: scopegate
      client_secret_env: SCOPEGATE_INTROSPECTION_SECRET
      auth_method: client_secret_post
      timeout: 2s
      cache_ttl: 5m
      negative_cache_ttl: 5s
      ca_file: {cert}
upstreams:
  app:
    url: https://127.0.0.1:3000
    connect_timeout: 2s
    request_timeout: 30s
    body_idle_timeout: 30s
    ca_file: {cert}
    pool_max_idle_per_host: 32
    pool_idle_timeout: 90s
forward:
  strip_authorization: true
  identity_headers:
    X-Auth-Subject: sub
    X-Auth-Scopes: scope
cache:
  max_entries: 1000
routes:
  - name: read
    path: /orders/{id}
    methods: [GET, HEAD]
    upstream: app
    scopes: [orders:read]
    issuers: [corp, partners]
  - path: /orders/{*rest}
    methods: [POST]
    upstream: app
    any_scopes: [orders:write, orders:admin]
    issuers: [opaque]
    forward:
      strip_authorization: false
  - path: /health
    upstream: app
    auth: none
resource:
  resource: https://api.example.com/orders
  authorization_servers: [https://idp.example.com]
  scopes_supported: [orders:read, orders:write]
  resource_name: Orders
  resource_documentation: https://docs.example.com/orders
authorization_server:
  issuer: https://api.example.com
  name: local
  token_path: /oauth2/token
  authorize_path: /oauth2/authorize
  introspection_path: /oauth2/introspect
  revocation_path: /oauth2/revoke
  jwks_path: /.well-known/jwks.json
  signing_keys:
    - kid: 2026-11
      alg: ES256
      private_key_file: {pem}
  access_token_ttl: 1h
  refresh_token_ttl: 30m
  refresh_family_max_age: 30d
  response_style: standard
  store: memory
  clients:
    - client_id: billing
      name: Billing
      client_secret_hash: "{hash}"
      grants: [client_credentials, refresh_token]
      scopes: [orders:read, orders:write]
      audience: orders-api
    - client_id: spa
      grants: [authorization_code, refresh_token]
      scopes: [orders:read]
      audience: orders-api
      redirect_uris: [https://app.example.com/callback]
  users:
    - username: alice
      password_hash: "{hash}"
      scopes: [orders:read]
"#;

/// The shipped configurations (the Kubernetes ones with their secret file
/// in `dir`) and [`EVERY_KEY`] (with a memory store, and with a Redis one),
/// as (directory for relative paths, text).
fn bases(dir: &Path) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let secret = dir.join("introspection-client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let pem = dir.join("signing.pem");
    std::fs::write(&pem, support::p256_pem()).unwrap();
    let (cert, key) = support::self_signed(dir);
    let every_key = EVERY_KEY
        .replace("{pem}", pem.to_str().unwrap())
        .replace("{cert}", cert.to_str().unwrap())
        .replace("{key}", key.to_str().unwrap())
        .replace(
            "{jwks}",
            root.join("config/keys/partners.jwks.json")
                .to_str()
                .unwrap(),
        )
        .replace("{hash}", HASH);
    let mut files = yaml_files(&root.join("config"));
    for overlay in ["base", "overlays/jwt", "overlays/introspection"] {
        files.push(
            root.join("deploy/kubernetes")
                .join(overlay)
                .join("scopegate.yaml"),
        );
    }
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap().replace(
                "/var/run/secrets/scopegate/introspection-client-secret",
                secret.to_str().unwrap(),
            );
            (file.parent().unwrap().to_owned(), text)
        })
        .chain([
            // The Redis store's keys, in place of `memory`.
            (
                dir.to_owned(),
                every_key.replace(
                    "  store: memory\n",
                    &format!(
                        "  store:\n    redis: rediss://redis.internal:6380/0\n    ca_file: {}\n    password_file: {}\n",
                        cert.display(),
                        secret.display()
                    ),
                ),
            ),
            (dir.to_owned(), every_key),
        ])
        .collect()
}

#[test]
fn broken_configs_are_refused_at_a_place_in_the_file_without_panics() {
    // The shipped introspection config reads its secret from here.
    std::env::set_var("SCOPEGATE_INTROSPECTION_SECRET", "example-secret");
    let dir = tempfile::tempdir().unwrap();
    let bases = bases(dir.path());
    for (base_dir, text) in &bases {
        let loaded = scopegate::config::load_str("shipped.yaml", base_dir, text);
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }
    let strategy = (0..bases.len(), proptest::collection::vec(mutation(), 1..=3));
    hostile_runner(2048)
        .run(&strategy, |(base, mutations)| {
            let (base_dir, text) = &bases[base];
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            for m in &mutations {
                apply(&mut lines, m);
            }
            let text = lines.join("\n") + "\n";
            let loaded = std::panic::catch_unwind(|| {
                scopegate::config::load_str("campaign.yaml", base_dir, &text)
            })
            .map_err(|_| TestCaseError::fail(format!("panicked on:\n{text}")))?;
            let Err(error) = loaded else {
                return Ok(());
            };
            let shown = error.to_string();
            prop_assert!(!shown.contains('\n'), "more than one line: {shown}");
            // The secrets the files and the environment hold.
            prop_assert!(
                !shown.contains("s3cret") && !shown.contains("example-secret"),
                "a secret in: {shown}"
            );
            prop_assert!(
                !RUST_TALK.iter().any(|word| shown.contains(word)),
                "speaks of the parser's Rust API: {shown}"
            );
            match (error.line, error.column) {
                (Some(line), Some(column)) => {
                    let lines = u64::try_from(text.lines().count()).unwrap();
                    prop_assert!(
                        (1..=lines + 1).contains(&line) && column >= 1,
                        "{shown}: outside the text of {lines} lines"
                    );
                    let prefix = format!("campaign.yaml:{line}:{column}: ");
                    prop_assert!(shown.starts_with(&prefix), "{shown}");
                }
                _ => prop_assert!(false, "no position: {shown}\n{text}"),
            }
            Ok(())
        })
        .unwrap();
}
