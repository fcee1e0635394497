//! The issuer's state store: one suite of behaviours, run against every
//! backend (memory, file, redis, and redis over TLS).
//!
//! The redis variants start their own `redis-server` (Debian package
//! `redis-server`) on a free loopback port, with persistence off, and kill it
//! afterwards; the TLS one with a certificate from a CA of the test's own. Without `redis-server` on `PATH` it is skipped with a message,
//! unless `CI` is set, in which case it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scopegate::issuer::store::{
    CodeRecord, Digest, RedisTarget, RefreshRecord, Store, StoreConfig, StoreError, Use,
};
use tempfile::TempDir;
use tokio::sync::Barrier;

// ---------------------------------------------------------------- helpers

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A digest for a test label (the store never sees raw tokens either).
fn digest(label: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, label.as_bytes());
    d.as_ref().try_into().unwrap()
}

fn refresh(family: &str, expires_at: u64, family_expires_at: u64) -> RefreshRecord {
    RefreshRecord {
        family: family.to_owned(),
        client_id: "web".to_owned(),
        subject: "alice".to_owned(),
        scope: "orders:read orders:write".to_owned(),
        audience: "orders-api".to_owned(),
        issued_at: now(),
        expires_at,
        family_expires_at,
        refresh_count: 2,
        token: digest("current-token"),
        previous: None,
        retry_until: 0,
        user_grant: true,
        access_expires_at: now() + 3600,
    }
}

/// `current` rotated: the next generation, whose token is `token`,
/// expiring at `expires_at`.
fn rotated(current: &RefreshRecord, token: &str, expires_at: u64) -> RefreshRecord {
    RefreshRecord {
        refresh_count: current.refresh_count + 1,
        token: digest(token),
        expires_at,
        ..current.clone()
    }
}

fn code(family: &str, expires_at: u64) -> CodeRecord {
    CodeRecord {
        client_id: "web".to_owned(),
        redirect_uri: "https://app.test/cb".to_owned(),
        redirect_uri_sent: true,
        scope: "orders:read".to_owned(),
        subject: "alice".to_owned(),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned()),
        expires_at,
        family: family.to_owned(),
    }
}

fn is_fresh<T>(u: &Use<T>) -> bool {
    matches!(u, Use::Fresh(_))
}

fn is_reused<T>(u: &Use<T>) -> bool {
    matches!(u, Use::Reused(_))
}

// ---------------------------------------------------------------- backends

/// A `redis-server` child on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    url: String,
    /// With TLS: `rediss://` to the TLS port, and the CA's certificate.
    tls: Option<(String, Vec<u8>)>,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server, or `None` (after saying why) if `redis-server` is not
    /// installed and `CI` is unset.
    fn start() -> Option<RedisServer> {
        Self::start_with(false)
    }

    /// [`Self::start`], also listening for TLS with a certificate for
    /// 127.0.0.1 signed by a CA made here.
    fn start_tls() -> Option<RedisServer> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            let msg = "redis-server is not installed (Debian: apt-get install redis-server); \
                       the redis state-store tests cannot run";
            support::skip_unless_ci(msg);
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = tls.then(|| write_tls_files(dir.path()));
        // Retry on the (unlikely) chance another process takes the port first.
        for _ in 0..5 {
            let port = support::free_port();
            let tls_port = support::free_port();
            let mut command = support::redis_server_command(port, dir.path());
            if tls {
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(dir.path().join("server.pem"))
                    .arg("--tls-key-file")
                    .arg(dir.path().join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.path().join("ca.pem"))
                    .args(["--tls-auth-clients", "no"]);
            }
            let mut child = command.spawn().expect("spawn redis-server");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken? try another
                }
                if ours(port, dir.path()) {
                    return Some(RedisServer {
                        child,
                        url: format!("redis://127.0.0.1:{port}/0"),
                        tls: ca_pem.map(|ca| (format!("rediss://127.0.0.1:{tls_port}/0"), ca)),
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start answering PING");
    }
}

/// Writes a CA (`ca.pem`) and a certificate for 127.0.0.1 it signed
/// (`server.pem`, `server.key`) to `dir`; returns the CA's PEM.
fn write_tls_files(dir: &std::path::Path) -> Vec<u8> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "scopegate test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    ca_cert.pem().into_bytes()
}

/// Whether the Redis on `port` answers and is the one working in `dir`
/// (not another test's that took the port first).
fn ours(port: u16, dir: &std::path::Path) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    // Redis reports the directory it changed to, symbolic links resolved.
    let wanted = dir.canonicalize().unwrap().to_string_lossy().into_owned();
    if s.write_all(b"CONFIG GET dir\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(&reply).contains(&*wanted) {
            return true;
        }
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend under test: two handles that must behave as replicas sharing
/// state (for memory and file: clones of one store; for redis: two separate
/// connections), plus whatever keeps the backend alive.
struct Harness {
    a: Store,
    b: Store,
    kind: &'static str,
    redis_server: Option<RedisServer>,
    _dir: Option<TempDir>,
}

async fn memory() -> Option<Harness> {
    let a = Store::open(&StoreConfig::Memory).await.unwrap();
    Some(Harness {
        b: a.clone(),
        a,
        kind: "memory",
        redis_server: None,
        _dir: None,
    })
}

async fn file() -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&StoreConfig::File(dir.path().join("state.redb")))
        .await
        .unwrap();
    Some(Harness {
        b: a.clone(),
        a,
        kind: "file",
        redis_server: None,
        _dir: Some(dir),
    })
}

async fn redis() -> Option<Harness> {
    let server = RedisServer::start()?;
    let config = StoreConfig::Redis(server.url.clone().into());
    Some(two_connections(server, config).await)
}

/// Two connections over TLS to a server whose certificate the test's own CA
/// signed.
async fn redis_tls() -> Option<Harness> {
    let server = RedisServer::start_tls()?;
    let (url, ca) = server.tls.clone().unwrap();
    let config = StoreConfig::Redis(RedisTarget {
        url,
        ca_pem: Some(ca),
        password: None,
    });
    Some(two_connections(server, config).await)
}

/// Two stores on `server` by `config`, as two replicas would have.
async fn two_connections(server: RedisServer, config: StoreConfig) -> Harness {
    Harness {
        a: Store::open(&config).await.unwrap(),
        b: Store::open(&config).await.unwrap(),
        kind: "redis",
        redis_server: Some(server),
        _dir: None,
    }
}

// ---------------------------------------------------------------- the suite

async fn kind_is_reported(h: &Harness) {
    assert_eq!(h.a.kind(), h.kind);
    assert_eq!(
        format!("{:?}", h.a),
        format!("Store {{ kind: {:?} }}", h.kind)
    );
}

/// A grant's current refresh token rotates once; the replaced one, and any
/// earlier generation, is then a replay on every replica; a token the
/// grant never had is unknown.
async fn refresh_rotation_is_single_use(h: &Harness) {
    let t = now();
    let g = digest("grant-1");
    let rec = refresh("fam-1", t + 3600, t + 86_400);
    let current = digest("current-token");
    let next = rotated(&rec, "next-token", t + 3000);
    assert_eq!(
        h.a.rotate_refresh(&g, 2, &current, &next).await.unwrap(),
        Use::NotFound
    );
    h.a.put_refresh(&g, &rec).await.unwrap();
    assert_eq!(
        h.a.rotate_refresh(&g, 2, &current, &next).await.unwrap(),
        Use::Fresh(rec.clone())
    );
    // The other replica sees it rotated, and answers with the grant as it
    // stands now.
    let other = rotated(&rec, "other-token", t + 3000);
    assert_eq!(
        h.b.rotate_refresh(&g, 2, &current, &other).await.unwrap(),
        Use::Reused(next.clone())
    );
    assert_eq!(
        h.b.rotate_refresh(&g, 0, &digest("first-token"), &other)
            .await
            .unwrap(),
        Use::Reused(next.clone())
    );
    assert_eq!(h.b.get_refresh(&g).await.unwrap(), Some(next.clone()));
    // The current generation with another token, a generation not reached,
    // another grant: unknown.
    let after = rotated(&next, "after-token", t + 3000);
    assert_eq!(
        h.a.rotate_refresh(&g, 3, &current, &after).await.unwrap(),
        Use::NotFound
    );
    assert_eq!(
        h.a.rotate_refresh(&g, 4, &digest("next-token"), &after)
            .await
            .unwrap(),
        Use::NotFound
    );
    assert_eq!(
        h.a.rotate_refresh(&digest("grant-2"), 3, &digest("next-token"), &after)
            .await
            .unwrap(),
        Use::NotFound
    );
    assert_eq!(
        h.b.rotate_refresh(&g, 3, &digest("next-token"), &after)
            .await
            .unwrap(),
        Use::Fresh(next)
    );
}

/// Within its reuse grace, the token a grant's current one replaced may be
/// used once more (a client whose answer was lost), on any replica; then it
/// is a replay like any rotated one.
async fn a_replaced_token_is_a_retry_once_within_its_grace(h: &Harness) {
    let t = now();
    let g = digest("grant-retry");
    let rec = RefreshRecord {
        previous: Some(digest("replaced-token")),
        retry_until: t + 60,
        ..refresh("fam-retry", t + 3600, t + 86_400)
    };
    h.a.put_refresh(&g, &rec).await.unwrap();
    let retried = RefreshRecord {
        refresh_count: 3,
        token: digest("retried-token"),
        ..rec.clone()
    };
    assert_eq!(
        h.b.rotate_refresh(&g, 1, &digest("replaced-token"), &retried)
            .await
            .unwrap(),
        Use::Fresh(rec)
    );
    let again = rotated(&retried, "again-token", t + 3600);
    assert_eq!(
        h.a.rotate_refresh(&g, 1, &digest("replaced-token"), &again)
            .await
            .unwrap(),
        Use::Reused(retried.clone())
    );
    assert_eq!(h.a.get_refresh(&g).await.unwrap(), Some(retried));
}

async fn get_refresh_does_not_consume(h: &Harness) {
    let t = now();
    let g = digest("grant-get");
    let rec = refresh("fam-get", t + 3600, t + 86_400);
    assert_eq!(h.a.get_refresh(&g).await.unwrap(), None);
    h.a.put_refresh(&g, &rec).await.unwrap();
    for _ in 0..3 {
        assert_eq!(h.b.get_refresh(&g).await.unwrap(), Some(rec.clone()));
    }
    let next = rotated(&rec, "next-token", t + 3600);
    let outcome = h.a.rotate_refresh(&g, 2, &rec.token, &next).await.unwrap();
    assert_eq!(outcome, Use::Fresh(rec));
    assert_eq!(h.b.get_refresh(&g).await.unwrap(), Some(next));
}

/// 16 tasks (alternating between the two replicas) present the same token at
/// once, each with a token of its own to replace it; exactly one may win,
/// and the grant then holds the winner's. Repeated to give races a chance.
async fn concurrent_refresh_rotation_has_one_winner(h: &Harness) {
    let t = now();
    for round in 0..10 {
        let g = digest(&format!("grant-race-{round}"));
        let rec = refresh("fam-race", t + 3600, t + 86_400);
        h.a.put_refresh(&g, &rec).await.unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = if i % 2 == 0 { h.a.clone() } else { h.b.clone() };
                let barrier = Arc::clone(&barrier);
                // As the token endpoint makes it, with a reuse grace: the
                // presented token stays usable once more. Those that lose
                // must not land on the winner's record as retries.
                let next = RefreshRecord {
                    previous: Some(rec.token),
                    retry_until: t + 60,
                    ..rotated(&rec, &format!("next-{i}"), t + 3600)
                };
                tokio::spawn(async move {
                    barrier.wait().await;
                    let outcome = store
                        .rotate_refresh(&g, 2, &digest("current-token"), &next)
                        .await
                        .unwrap();
                    (outcome, next)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut reused = 0;
        for task in tasks {
            let (outcome, next) = task.await.unwrap();
            if is_fresh(&outcome) {
                winners.push(next);
            }
            reused += usize::from(is_reused(&outcome));
        }
        assert_eq!((winners.len(), reused), (1, 15), "{} round {round}", h.kind);
        assert_eq!(h.b.get_refresh(&g).await.unwrap().as_ref(), winners.first());
    }
}

async fn family_revocation(h: &Harness) {
    let t = now();
    assert!(!h.a.is_family_revoked("fam-r").await.unwrap());
    h.a.revoke_family("fam-r", t + 3600).await.unwrap();
    assert!(h.a.is_family_revoked("fam-r").await.unwrap());
    assert!(h.b.is_family_revoked("fam-r").await.unwrap());
    // Families and access tokens are separate namespaces.
    assert!(!h.b.is_access_revoked("fam-r").await.unwrap());
    assert!(!h.b.is_family_revoked("fam-other").await.unwrap());
    // Revoking again with an earlier end does not shorten it: still
    // revoked once that earlier end has passed.
    h.b.revoke_family("fam-r", t + 1).await.unwrap();
    h.b.revoke_family("fam-r", t.saturating_sub(10))
        .await
        .unwrap();
    while now() <= t + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.a.is_family_revoked("fam-r").await.unwrap());
}

async fn access_revocation(h: &Harness) {
    let t = now();
    assert!(!h.a.is_access_revoked("jti-1").await.unwrap());
    h.a.revoke_access("jti-1", t + 900).await.unwrap();
    assert!(h.a.is_access_revoked("jti-1").await.unwrap());
    assert!(h.b.is_access_revoked("jti-1").await.unwrap());
    assert!(!h.b.is_access_revoked("jti-2").await.unwrap());
    assert!(!h.b.is_family_revoked("jti-1").await.unwrap());
    // Both asked at once, as the gateway does for each request: either
    // revoked is revoked, each in its own namespace.
    h.b.revoke_family("fam-either", t + 900).await.unwrap();
    for (jti, sid, revoked) in [
        (Some("jti-1"), Some("fam-none"), true),
        (Some("jti-2"), Some("fam-either"), true),
        (Some("jti-2"), None, false),
        (None, Some("fam-either"), true),
        (Some("fam-either"), Some("jti-1"), false),
        (None, None, false),
    ] {
        assert_eq!(
            h.a.is_either_revoked(jti, sid).await.unwrap(),
            revoked,
            "{} {jti:?} {sid:?}",
            h.kind
        );
    }
}

async fn code_is_single_use(h: &Harness) {
    let t = now();
    let d = digest("code-1");
    let rec = code("fam-c", t + 60);
    assert_eq!(h.a.use_code(&d).await.unwrap(), Use::NotFound);
    h.a.put_code(&d, &rec).await.unwrap();
    assert_eq!(h.b.use_code(&d).await.unwrap(), Use::Fresh(rec.clone()));
    assert_eq!(h.a.use_code(&d).await.unwrap(), Use::Reused(rec.clone()));
    assert_eq!(h.b.use_code(&d).await.unwrap(), Use::Reused(rec));
    // Codes and grants are separate namespaces.
    assert_eq!(h.a.get_refresh(&d).await.unwrap(), None);
}

async fn concurrent_code_use_has_one_winner(h: &Harness) {
    let t = now();
    for round in 0..10 {
        let d = digest(&format!("code-race-{round}"));
        let rec = code("fam-code-race", t + 60);
        h.b.put_code(&d, &rec).await.unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = if i % 2 == 0 { h.a.clone() } else { h.b.clone() };
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.use_code(&d).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let fresh: Vec<_> = outcomes.iter().filter(|u| is_fresh(u)).collect();
        assert_eq!(
            fresh,
            [&Use::Fresh(rec.clone())],
            "{} round {round}",
            h.kind
        );
        assert_eq!(outcomes.iter().filter(|u| is_reused(u)).count(), 15);
    }
}

/// Records already past their end behave as absent; revocations ending in
/// the past are not in force.
async fn expired_entries_are_absent(h: &Harness) {
    let t = now();
    // A grant whose current token expired, family too.
    let d = digest("grant-expired");
    let rec = refresh("fam-x", t - 100, t - 50);
    let next = rotated(&rec, "next-token", t + 60);
    h.a.put_refresh(&d, &rec).await.unwrap();
    let outcome = h.a.rotate_refresh(&d, 2, &rec.token, &next).await.unwrap();
    assert_eq!(outcome, Use::NotFound);
    assert_eq!(h.a.get_refresh(&d).await.unwrap(), None);
    // Its current token expired but the family still running: absent, and
    // so are its rotated tokens.
    let d = digest("grant-expired-family-live");
    let rec = refresh("fam-x", t - 100, t + 3600);
    h.a.put_refresh(&d, &rec).await.unwrap();
    assert_eq!(h.b.get_refresh(&d).await.unwrap(), None);
    let outcome = h.b.rotate_refresh(&d, 2, &rec.token, &next).await.unwrap();
    assert_eq!(outcome, Use::NotFound);
    let outcome = h.b.rotate_refresh(&d, 1, &rec.token, &next).await.unwrap();
    assert_eq!(outcome, Use::NotFound);
    // Expired code (within the replay grace, but never used): absent.
    let d = digest("code-expired");
    h.a.put_code(&d, &code("fam-x", t - 1)).await.unwrap();
    assert_eq!(h.a.use_code(&d).await.unwrap(), Use::NotFound);
    assert_eq!(h.a.use_code(&d).await.unwrap(), Use::NotFound);
    let d = digest("code-long-expired");
    h.a.put_code(&d, &code("fam-x", t - 3600)).await.unwrap();
    assert_eq!(h.a.use_code(&d).await.unwrap(), Use::NotFound);
    // Revocations that already ended.
    h.a.revoke_family("fam-ended", t - 1).await.unwrap();
    assert!(!h.b.is_family_revoked("fam-ended").await.unwrap());
    h.a.revoke_access("jti-ended", t - 1).await.unwrap();
    assert!(!h.b.is_access_revoked("jti-ended").await.unwrap());
    h.a.revoke_access("jti-now", t).await.unwrap();
    assert!(!h.b.is_access_revoked("jti-now").await.unwrap());
}

/// A used value stays recognisable as a replay after it expires: a rotated
/// refresh token for as long as its grant's current one lives, a code for
/// the replay grace. A grant whose current token expired is gone, with
/// everything that it had. (Waits ~5 s for the clock.)
async fn replays_are_detected_after_expiry(h: &Harness) {
    let t = now();
    // The setup must run before `t + ENDS` (at least ENDS - 1 seconds, as
    // `t` is rounded down; a slow disk sync takes part of them).
    const ENDS: u64 = 6;
    let rotated_grant = digest("grant-short-rotated");
    let idle_grant = digest("grant-short-idle");
    let used_code = digest("code-short-used");
    let rec = refresh("fam-short", t + ENDS, t + 3600);
    let next = rotated(&rec, "next-token", t + 3600);
    h.a.put_refresh(&rotated_grant, &rec).await.unwrap();
    h.a.put_refresh(&idle_grant, &rec).await.unwrap();
    let crec = code("fam-short", t + ENDS);
    h.a.put_code(&used_code, &crec).await.unwrap();
    let outcome =
        h.a.rotate_refresh(&rotated_grant, 2, &rec.token, &next)
            .await;
    assert!(is_fresh(&outcome.unwrap()));
    assert!(is_fresh(&h.b.use_code(&used_code).await.unwrap()));

    while now() < t + ENDS {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let later = rotated(&next, "later-token", t + 3600);
    let outcome =
        h.b.rotate_refresh(&rotated_grant, 2, &rec.token, &later)
            .await;
    assert_eq!(outcome.unwrap(), Use::Reused(next));
    assert_eq!(h.b.get_refresh(&idle_grant).await.unwrap(), None);
    let outcome = h.b.rotate_refresh(&idle_grant, 2, &rec.token, &later).await;
    assert_eq!(outcome.unwrap(), Use::NotFound);
    assert_eq!(h.a.use_code(&used_code).await.unwrap(), Use::Reused(crec));
}

/// Runs every behaviour against one backend, one `#[tokio::test]` each.
macro_rules! suite {
    ($backend:ident: $($behaviour:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    let Some(h) = super::$backend().await else { return };
                    super::$behaviour(&h).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($behaviour:ident),* $(,)?) => {
        suite!(memory: $($behaviour),*);
        suite!(file: $($behaviour),*);
        suite!(redis: $($behaviour),*);
        suite!(redis_tls: $($behaviour),*);
    };
}

all_backends!(
    kind_is_reported,
    refresh_rotation_is_single_use,
    a_replaced_token_is_a_retry_once_within_its_grace,
    get_refresh_does_not_consume,
    concurrent_refresh_rotation_has_one_winner,
    family_revocation,
    access_revocation,
    code_is_single_use,
    concurrent_code_use_has_one_winner,
    expired_entries_are_absent,
    replays_are_detected_after_expiry,
);

// ---------------------------------------------------------------- backend-specific

/// A restart loses nothing: state written through one store is all there
/// after the store is dropped and the file reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("state.redb");
    let t = now();
    let used = digest("persist-rotated");
    let unused = digest("persist-unused");
    let used_code = digest("persist-code-used");
    let unused_code = digest("persist-code-unused");
    let rec = refresh("fam-p", t + 3600, t + 86_400);
    let next = rotated(&rec, "next-token", t + 3600);
    let crec = code("fam-p", t + 60);
    {
        let store = Store::open(&StoreConfig::File(path.clone())).await.unwrap();
        store.put_refresh(&used, &rec).await.unwrap();
        store.put_refresh(&unused, &rec).await.unwrap();
        let outcome = store.rotate_refresh(&used, 2, &rec.token, &next).await;
        assert!(is_fresh(&outcome.unwrap()));
        store.put_code(&used_code, &crec).await.unwrap();
        store.put_code(&unused_code, &crec).await.unwrap();
        assert!(is_fresh(&store.use_code(&used_code).await.unwrap()));
        store.revoke_family("fam-p", t + 3600).await.unwrap();
        store.revoke_access("jti-p", t + 900).await.unwrap();
        // While open, the file is locked against a second opener.
        let second = Store::open(&StoreConfig::File(path.clone())).await;
        assert!(matches!(second, Err(StoreError::Backend(_))), "{second:?}");
    }
    let store = Store::open(&StoreConfig::File(path.clone())).await.unwrap();
    assert_eq!(store.kind(), "file");
    assert_eq!(
        store
            .rotate_refresh(&used, 2, &rec.token, &next)
            .await
            .unwrap(),
        Use::Reused(next.clone())
    );
    assert_eq!(store.get_refresh(&unused).await.unwrap(), Some(rec.clone()));
    assert_eq!(
        store
            .rotate_refresh(&unused, 2, &rec.token, &next)
            .await
            .unwrap(),
        Use::Fresh(rec)
    );
    assert_eq!(
        store.use_code(&used_code).await.unwrap(),
        Use::Reused(crec.clone())
    );
    assert_eq!(
        store.use_code(&unused_code).await.unwrap(),
        Use::Fresh(crec)
    );
    assert!(store.is_family_revoked("fam-p").await.unwrap());
    assert!(store.is_access_revoked("jti-p").await.unwrap());
    assert!(!store.is_access_revoked("jti-q").await.unwrap());
}

/// The memory store is private to its process: a second one shares nothing.
#[tokio::test]
async fn memory_stores_are_separate() {
    let t = now();
    let a = Store::open(&StoreConfig::Memory).await.unwrap();
    let b = Store::open(&StoreConfig::Memory).await.unwrap();
    let d = digest("mem-sep");
    a.put_refresh(&d, &refresh("f", t + 60, t + 600))
        .await
        .unwrap();
    assert_eq!(b.get_refresh(&d).await.unwrap(), None);
}

/// Bad configuration fails at open, and errors never echo a Redis password.
#[tokio::test]
async fn open_errors_do_not_leak_secrets() {
    let err = Store::open(&StoreConfig::Redis("redis://:hunter2@127.0.0.1:1/0".into()))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    let err = Store::open(&StoreConfig::Redis("not a url :hunter2@".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let config = StoreConfig::Redis("redis://:hunter2@cache:6379/0".into());
    assert!(!format!("{config:?}").contains("hunter2"));
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(&StoreConfig::File(
        dir.path().join("missing/dir/state.redb"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

/// Every key the redis backend writes is namespaced and carries a TTL, so
/// Redis itself bounds the state; keys hold digests, never raw values.
#[tokio::test]
async fn redis_keys_are_prefixed_and_expire() {
    let Some(h) = redis().await else { return };
    let t = now();
    let grant = digest("raw-grant-handle");
    let ac = digest("raw-code");
    let rec = refresh("fam-k", t + 60, t + 600);
    h.a.put_refresh(&grant, &rec).await.unwrap();
    let next = rotated(&rec, "next-token", t + 90);
    let outcome = h.a.rotate_refresh(&grant, 2, &rec.token, &next).await;
    assert!(is_fresh(&outcome.unwrap()));
    h.a.put_code(&ac, &code("fam-k", t + 60)).await.unwrap();
    assert!(is_fresh(&h.b.use_code(&ac).await.unwrap()));
    h.a.revoke_family("fam-k", t + 600).await.unwrap();
    h.a.revoke_access("jti-k", t + 60).await.unwrap();

    let url = &h.redis_server.as_ref().unwrap().url;
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let hex = |d: &Digest| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut expected = vec![
        format!("scopegate:grant:{}", hex(&grant)),
        format!("scopegate:ac:{}", hex(&ac)),
        format!("scopegate:ac:used:{}", hex(&ac)),
        "scopegate:revoked:family:fam-k".to_owned(),
        "scopegate:revoked:jti:jti-k".to_owned(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    for key in &keys {
        let at: i64 = ::redis::cmd("EXPIRETIME")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(at > t as i64, "{key} has no expiry ({at})");
        assert!(
            at <= (t + 600 + 600) as i64,
            "{key} expires too late ({at})"
        );
    }
    // A grant lives as long as its current token (here, the rotated one):
    // one key, however often it rotates.
    let at: i64 = ::redis::cmd("EXPIRETIME")
        .arg(format!("scopegate:grant:{}", hex(&grant)))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(at, (t + 90) as i64);
    // Code markers live for the replay grace.
    let at: i64 = ::redis::cmd("EXPIRETIME")
        .arg(format!("scopegate:ac:used:{}", hex(&ac)))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(at, (t + 60 + 600) as i64);
    // A later, longer revocation extends the key; a shorter one does not cut it.
    h.b.revoke_access("jti-k", t + 120).await.unwrap();
    h.b.revoke_access("jti-k", t + 30).await.unwrap();
    let at: i64 = ::redis::cmd("EXPIRETIME")
        .arg("scopegate:revoked:jti:jti-k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(at, (t + 120) as i64);
}

/// `Store::put_code`: "Writing a digest that is already marked used keeps
/// it used". On redis the used-marker is a key of its own: a record written
/// again (here with a later end) moves the marker's end with it, or once the
/// marker ran out the record would still be there, unmarked, and the used
/// code redeemable again. (The memory and file stores keep the mark in the
/// record.)
#[tokio::test]
async fn redis_rewriting_a_used_code_keeps_its_marker_as_long_as_the_record() {
    let Some(h) = redis().await else { return };
    let t = now();
    let d = digest("a code written twice");
    h.a.put_code(&d, &code("fam-twice", t + 60)).await.unwrap();
    assert!(is_fresh(&h.b.use_code(&d).await.unwrap()));
    h.a.put_code(&d, &code("fam-twice", t + 3600))
        .await
        .unwrap();
    assert!(is_reused(&h.b.use_code(&d).await.unwrap()));

    let url = &h.redis_server.as_ref().unwrap().url;
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    let mut ends = Vec::new();
    for key in [
        format!("scopegate:ac:{hex}"),
        format!("scopegate:ac:used:{hex}"),
    ] {
        let at: i64 = ::redis::cmd("EXPIRETIME")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        ends.push(at);
    }
    assert_eq!(ends[0], (t + 3600 + 600) as i64);
    assert_eq!(
        ends[1],
        ends[0],
        "the used-marker ends {} s before the code's record: from then on the used code \
         is redeemable again",
        ends[0] - ends[1]
    );
    // Written again with an earlier end, the record does not cut the
    // marker's; and a code never used gets no marker.
    h.a.put_code(&d, &code("fam-twice", t + 60)).await.unwrap();
    let at: i64 = ::redis::cmd("EXPIRETIME")
        .arg(format!("scopegate:ac:used:{hex}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(at, ends[0]);
    let unused = digest("a code never used, written twice");
    h.a.put_code(&unused, &code("fam-unused", t + 60))
        .await
        .unwrap();
    h.a.put_code(&unused, &code("fam-unused", t + 3600))
        .await
        .unwrap();
    let hex: String = unused.iter().map(|b| format!("{b:02x}")).collect();
    let exists: bool = ::redis::cmd("EXISTS")
        .arg(format!("scopegate:ac:used:{hex}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "a marker was made for a code never used");
    assert!(is_fresh(&h.b.use_code(&unused).await.unwrap()));
}

/// A Redis that runs no Lua scripts (here, an ACL user without
/// `@scripting`) is refused when the store opens, naming what it lacks:
/// every refresh would fail on it.
#[tokio::test]
async fn a_redis_that_runs_no_scripts_is_refused_when_the_store_opens() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = ::redis::Client::open(server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (user, scripting) in [("scripts", "+@scripting"), ("noscripts", "-@scripting")] {
        ::redis::cmd("ACL")
            .arg(&["SETUSER", user, "on", ">pw", "~*", "+@all", scripting])
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let url = |user: &str| {
        server
            .url
            .replacen("redis://", &format!("redis://{user}:pw@"), 1)
    };
    let store = Store::open(&StoreConfig::Redis(url("scripts").into())).await;
    assert!(store.is_ok(), "{:?}", store.err());
    let err = Store::open(&StoreConfig::Redis(url("noscripts").into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`EVAL`"), "{err}");
}

/// Over TLS the server's certificate is checked: without the CA that signed
/// it (the Mozilla roots only) the store does not open, and the error does
/// not echo the password.
#[tokio::test]
async fn a_redis_whose_certificate_is_not_trusted_is_refused() {
    let Some(server) = RedisServer::start_tls() else {
        return;
    };
    let (url, _) = server.tls.clone().unwrap();
    let url = url.replace("rediss://", "rediss://:hunter2@");
    let err = Store::open(&StoreConfig::Redis(url.into()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

/// A server in cluster mode that holds every slot (as a managed service's
/// proxy presents one) takes the gateway's revocation check of both ids at
/// once: one `EXISTS` of the two keys would be refused (`CROSSSLOT`), their
/// slots differing.
#[tokio::test]
async fn a_revocation_check_of_both_ids_works_in_cluster_mode() {
    if RedisServer::start().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = None;
    for _ in 0..5 {
        let port = support::free_port();
        let mut child = support::redis_server_command(port, dir.path())
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.path().join(format!("nodes-{port}.conf")))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !ours(port, dir.path()) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if ours(port, dir.path()) {
            server = Some((child, port));
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut child, port) = server.expect("a cluster-mode redis-server did not start");
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = ::redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut ready = false;
    for _ in 0..200 {
        let info: String = ::redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut connection)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the one-node cluster never came up");
    let store = Store::open(&StoreConfig::Redis(url.as_str().into()))
        .await
        .unwrap();
    let t = now();
    assert!(!store
        .is_either_revoked(Some("jti-c"), Some("fam-c"))
        .await
        .unwrap());
    store.revoke_family("fam-c", t + 900).await.unwrap();
    assert!(store
        .is_either_revoked(Some("jti-c"), Some("fam-c"))
        .await
        .unwrap());
    let _ = child.kill();
    let _ = child.wait();
}

/// A password given apart from the URL (`password_file`, `password_env`)
/// is the one the store authenticates with: a server that requires it is
/// opened with it, and refused without it (the error not echoing it).
#[tokio::test]
async fn a_redis_password_apart_from_the_url_is_used() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = ::redis::Client::open(server.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("hunter2-apart")
        .query_async(&mut connection)
        .await
        .unwrap();
    let target = |password: Option<&str>| {
        let mut target = RedisTarget::from(server.url.as_str());
        target.password = password.map(|p| scopegate::config::Secret::new(p.to_owned()));
        StoreConfig::Redis(target)
    };
    let store = Store::open(&target(Some("hunter2-apart"))).await.unwrap();
    assert!(!store.is_access_revoked("jti-1").await.unwrap());
    let err = Store::open(&target(None)).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = Store::open(&target(Some("wrong-pw-7f3a")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("wrong-pw-7f3a"), "{err:?}");
    assert!(!format!("{:?}", target(Some("hunter2-apart"))).contains("hunter2"));
}

/// A server that refuses the store's password for a while after its
/// connection broke (a password rolled back, a restart before its ACL was
/// loaded) is used again once it takes it: the connection manager keeps
/// the refusal as its connection for good, so the store connects anew.
/// Before, every command failed until a restart.
#[tokio::test]
async fn a_redis_that_refused_the_password_for_a_while_is_used_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = ::redis::Client::open(server.url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let require = |password: &'static str| {
        let mut command = ::redis::cmd("CONFIG");
        command.arg("SET").arg("requirepass").arg(password);
        command
    };
    let () = require("pw-one").query_async(&mut admin).await.unwrap();
    let mut target = RedisTarget::from(server.url.as_str());
    target.password = Some(scopegate::config::Secret::new("pw-one".to_owned()));
    let store = Store::open(&StoreConfig::Redis(target)).await.unwrap();
    assert!(!store.is_access_revoked("jti-1").await.unwrap());

    // The password changes, and every connection but the admin's breaks.
    let () = require("pw-two").query_async(&mut admin).await.unwrap();
    let _: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if let Err(e) = store.is_access_revoked("jti-1").await {
            refused = format!("{e}").contains("uthentication");
            if refused {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the store never met the refused password");

    // Put back: the store works again.
    let () = require("pw-one").query_async(&mut admin).await.unwrap();
    let mut answered = None;
    for _ in 0..100 {
        answered = Some(store.is_access_revoked("jti-1").await);
        if answered.as_ref().is_some_and(Result::is_ok) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(answered, Some(Ok(false))),
        "still failing 10 s after the password was put back: {answered:?}"
    );
}

/// A stand-in for a Redis server speaking RESP: PING, `EXPIREAT` with two
/// arguments answered as Redis does, with three (`GT`) answered `gt_reply`,
/// anything else `+OK`. Returns its address and how often `GT` was asked.
async fn fake_redis(
    gt_reply: &'static str,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expireat_gt = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked = Arc::clone(&expireat_gt);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let asked = Arc::clone(&asked);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                let mut line = String::new();
                loop {
                    // One command: `*N` then N bulk strings.
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim_start_matches('*').trim().parse().unwrap();
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        read.read_line(&mut line).await.unwrap();
                        let len: usize = line.trim_start_matches('$').trim().parse().unwrap();
                        let mut arg = vec![0; len + 2];
                        read.read_exact(&mut arg).await.unwrap();
                        arg.truncate(len);
                        args.push(String::from_utf8(arg).unwrap().to_ascii_uppercase());
                    }
                    let reply = match args.first().map(String::as_str) {
                        Some("PING") => "+PONG\r\n",
                        Some("EXPIREAT") if args.len() == 4 => {
                            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            gt_reply
                        }
                        Some("EXPIREAT") => ":0\r\n",
                        _ => "+OK\r\n",
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, expireat_gt)
}

/// A Redis older than 7.0, which refuses `EXPIREAT ... GT` (so every
/// revocation's MULTI would fail whole), is refused when the store opens,
/// with what it lacks, instead of answering 503 to every revocation; so is
/// a read-only replica, named as such. The servers here are stand-ins
/// speaking RESP as Redis 6.2 and a Redis 7 replica answer.
#[tokio::test]
async fn a_redis_older_than_7_is_refused_when_the_store_opens() {
    for (reply, says) in [
        (
            "-ERR wrong number of arguments for 'expireat' command\r\n",
            "Redis 7.0 or newer",
        ),
        (
            "-READONLY You can't write against a read only replica.\r\n",
            "read-only replica; the store needs the primary",
        ),
    ] {
        let (addr, asked) = fake_redis(reply).await;
        let config = StoreConfig::Redis(RedisTarget {
            url: format!("redis://{addr}"),
            ca_pem: None,
            password: None,
        });
        let Err(error) = Store::open(&config).await else {
            panic!("opened over {reply:?}");
        };
        let text = error.to_string();
        assert!(text.contains(says), "{text}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

/// A failover that demotes the server the store is connected to, without
/// closing the connection, and gives its address to the new primary (DNS
/// or a virtual IP moved; here a forwarder switched): the write that the
/// demoted server refuses (`READONLY`) makes the store connect again in
/// the background, and later writes land on the new primary. Before, every
/// write failed until a restart.
#[tokio::test]
async fn a_demoted_redis_is_left_for_the_new_primary() {
    let (Some(old), Some(new)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let address = |url: &str| {
        url.trim_start_matches("redis://")
            .trim_end_matches("/0")
            .to_owned()
    };
    let (old_addr, new_addr) = (address(&old.url), address(&new.url));
    // The address the store knows.
    let forwarder = support::RedisAddress::start(&old_addr).await;
    let store = Store::open(&StoreConfig::Redis(forwarder.url().into()))
        .await
        .unwrap();
    let t = now();
    store.revoke_access("before", t + 60).await.unwrap();

    // Failover: the new primary takes the address, the old one becomes its
    // replica (read-only) and keeps the store's connection.
    forwarder.lead_to(&new_addr);
    let old_client = ::redis::Client::open(old.url.as_str()).unwrap();
    let mut old_conn = old_client.get_multiplexed_async_connection().await.unwrap();
    let (host, port) = new_addr.split_once(':').unwrap();
    let () = ::redis::cmd("REPLICAOF")
        .arg(host)
        .arg(port)
        .query_async(&mut old_conn)
        .await
        .unwrap();
    let refused = store.revoke_access("after", t + 60).await;
    assert!(refused.is_err(), "the demoted server took a write");

    let mut landed = false;
    for _ in 0..100 {
        if store.revoke_access("after", t + 60).await.is_ok() {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(landed, "writes never reached the new primary");
    let new_client = ::redis::Client::open(new.url.as_str()).unwrap();
    let mut new_conn = new_client.get_multiplexed_async_connection().await.unwrap();
    let revoked: bool = ::redis::cmd("EXISTS")
        .arg("scopegate:revoked:jti:after")
        .query_async(&mut new_conn)
        .await
        .unwrap();
    assert!(revoked);
    assert!(store.is_access_revoked("after").await.unwrap());
}
