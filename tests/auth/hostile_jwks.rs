//! Generated key sets, ordinary and hostile, against a reference of RFC 7517
//! as the gateway applies it.
//!
//! Each case serves a generated JWKS document and makes the gateway fetch it
//! (a token with a `kid` nobody has forces a refetch; the cooldown is off).
//! The document holds real P-256 keys from a small pool, under generated
//! `kid`s (shared, missing, repeated) and with `alg`, `use` and `key_ops`
//! right or wrong. It also holds entries nothing can use or that do not
//! parse: symmetric and unknown key types, another curve, bad base64, a
//! missing coordinate, a numeric `kid`, entries that are no objects, and
//! private members. Sometimes the real keys sit beyond the first 64
//! entries, or the document itself is broken (`keys` not an array, twice,
//! or no object at all). Then tokens signed by each pool key under each
//! `kid` in play are presented. The reference says:
//! - a document is taken when it is a JSON object whose `keys` array has,
//!   among its first 64 entries, at least one key a signature can be
//!   checked with; otherwise the keys from before stay (and the fetch counts
//!   as `invalid`, not `success`);
//! - a token is accepted exactly when the keys in force have a usable key
//!   with the token's `kid` and the public key that signed it: EC P-256,
//!   `alg` absent or ES256, `use` absent or `sig`, `key_ops` absent or with
//!   `verify`, and no private member (`d`: published, anyone could sign
//!   with it).
//!
//! A second campaign
//! ([`a_second_verifier_agrees_on_every_key_set_the_gateway_takes`]) gives
//! each set the gateway takes to an independent verifier too, panva's
//! `jose` (`tests/interop/verify.mjs`, needs `node`), and compares the two
//! on tokens of every pool key under every `kid` and under none.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 128).

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use proptest::prelude::*;
use serde_json::Map;

/// Keys of the pool (all P-256, each signing under any `kid`).
const POOL: usize = 3;
/// `kid`s the entries and tokens use.
const KIDS: [&str; 3] = ["a", "b", "c"];
/// Entries of a key set the gateway reads at most.
const MAX_KEYS: usize = 64;

/// A pool key as an entry: under `kid` (`None`: no `kid` member), with
/// optional `alg`, `use` and `key_ops` members.
#[derive(Debug, Clone)]
struct PoolKey {
    key: usize,
    kid: Option<&'static str>,
    alg: Option<&'static str>,
    usage: Option<&'static str>,
    ops: Option<&'static [&'static str]>,
    /// A private member `d` alongside: the key is exposed, and unusable.
    private: bool,
}

impl PoolKey {
    /// Whether a signature can be checked with it: `alg` absent or ES256,
    /// `use` absent or `sig`, `key_ops` absent or with `verify`, no `d`.
    fn usable(&self) -> bool {
        !self.private
            && self.alg.is_none_or(|a| a == "ES256")
            && self.usage.is_none_or(|u| u == "sig")
            && self.ops.is_none_or(|ops| ops.contains(&"verify"))
    }
}

/// One entry of the `keys` array.
#[derive(Debug, Clone)]
enum Entry {
    Real(PoolKey),
    /// An entry that never verifies anything.
    Junk {
        kind: Junk,
        kid: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
enum Junk {
    /// A symmetric key: never a verification key here.
    Oct,
    UnknownType,
    /// A pool key's coordinates labelled P-384.
    OtherCurve,
    /// `x` not base64url.
    BadBase64,
    MissingY,
    /// `kid` a number.
    NumericKid,
    /// Not an object at all.
    NotObject,
}

/// How the document is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Document {
    Plain,
    /// With a member nobody defined.
    ExtraMember,
    /// 64 unusable entries first: the rest is never read.
    PastTheLimit,
    /// `keys` an object.
    KeysNotArray,
    /// `keys` twice.
    KeysTwice,
    /// The array without its object.
    BareArray,
}

#[derive(Debug, Clone)]
struct Case {
    entries: Vec<Entry>,
    document: Document,
}

fn entry() -> impl Strategy<Value = Entry> {
    let kid = prop_oneof![
        8 => prop::sample::select(KIDS.to_vec()).prop_map(Some),
        1 => Just(None),
    ];
    let real = (
        0..POOL,
        kid,
        prop::sample::select(vec![
            None,
            None,
            None,
            Some("ES256"),
            Some("ES384"),
            Some("RS256"),
        ]),
        prop::sample::select(vec![
            None,
            None,
            None,
            Some("sig"),
            Some("enc"),
            // Values are case-sensitive; any but `sig` is another use.
            Some("SIG"),
            Some("x-other"),
        ]),
        prop::sample::select(vec![
            None,
            None,
            None,
            Some(&["verify"][..]),
            Some(&["sign", "verify"][..]),
            Some(&["sign"][..]),
            Some(&[][..]),
        ]),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(key, kid, alg, usage, ops, private)| {
            Entry::Real(PoolKey {
                key,
                kid,
                alg,
                usage,
                ops,
                private,
            })
        });
    let junk = (
        prop::sample::select(vec![
            Junk::Oct,
            Junk::UnknownType,
            Junk::OtherCurve,
            Junk::BadBase64,
            Junk::MissingY,
            Junk::NumericKid,
            Junk::NotObject,
        ]),
        prop::sample::select(KIDS.to_vec()),
    )
        .prop_map(|(kind, kid)| Entry::Junk { kind, kid });
    prop_oneof![3 => real, 1 => junk]
}

fn case() -> impl Strategy<Value = Case> {
    let document = prop_oneof![
        12 => Just(Document::Plain),
        1 => prop::sample::select(vec![
            Document::ExtraMember,
            Document::PastTheLimit,
            Document::KeysNotArray,
            Document::KeysTwice,
            Document::BareArray,
        ]),
    ];
    (proptest::collection::vec(entry(), 0..=5), document)
        .prop_map(|(entries, document)| Case { entries, document })
}

/// The public JWK of a pool key, without `kid`, `alg` or `use`.
fn bare_jwk(signer: &Signer) -> Map<String, Value> {
    let mut jwk = signer.public_jwk().as_object().unwrap().clone();
    for member in ["kid", "alg", "use", "key_ops"] {
        jwk.remove(member);
    }
    jwk
}

fn render_entry(pool: &[Signer], entry: &Entry) -> Value {
    match entry {
        Entry::Real(real) => {
            let mut jwk = bare_jwk(&pool[real.key]);
            let optional = [
                ("kid", real.kid.map(Value::from)),
                ("alg", real.alg.map(Value::from)),
                ("use", real.usage.map(Value::from)),
                ("key_ops", real.ops.map(|ops| json!(ops))),
                // Any 32 bytes: the gateway cannot tell a real private key.
                (
                    "d",
                    real.private
                        .then(|| json!("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU")),
                ),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    jwk.insert(name.to_owned(), value);
                }
            }
            Value::Object(jwk)
        }
        Entry::Junk { kind, kid } => {
            let mut jwk = bare_jwk(&pool[0]);
            jwk.insert("kid".to_owned(), json!(kid));
            match kind {
                Junk::Oct => return json!({"kty": "oct", "k": "c2VjcmV0", "kid": kid}),
                Junk::UnknownType => return json!({"kty": "XYZ", "kid": kid}),
                Junk::OtherCurve => {
                    jwk.insert("crv".to_owned(), json!("P-384"));
                }
                Junk::BadBase64 => {
                    jwk.insert("x".to_owned(), json!("not+base64/url="));
                }
                Junk::MissingY => {
                    jwk.remove("y");
                }
                Junk::NumericKid => {
                    jwk.insert("kid".to_owned(), json!(5));
                }
                Junk::NotObject => return json!(kid),
            }
            Value::Object(jwk)
        }
    }
}

/// The document's text.
fn render(pool: &[Signer], case: &Case) -> String {
    let mut keys: Vec<Value> = case.entries.iter().map(|e| render_entry(pool, e)).collect();
    if case.document == Document::PastTheLimit {
        let filler = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "filler"});
        keys.splice(0..0, std::iter::repeat_n(filler, MAX_KEYS));
    }
    let keys = Value::Array(keys);
    match case.document {
        Document::Plain | Document::PastTheLimit => json!({ "keys": keys }).to_string(),
        Document::ExtraMember => json!({ "keys": keys, "x-note": "ignored" }).to_string(),
        Document::KeysNotArray => json!({ "keys": { "0": keys } }).to_string(),
        Document::KeysTwice => format!(r#"{{"keys":{keys},"keys":[]}}"#),
        Document::BareArray => keys.to_string(),
    }
}

/// A usable key: pool key and `kid`.
type Usable = (usize, Option<&'static str>);

/// The keys a document puts in force, or `None` if the gateway must refuse
/// it and keep the keys it had.
fn usable(case: &Case) -> Option<Vec<Usable>> {
    if !matches!(
        case.document,
        Document::Plain | Document::ExtraMember | Document::PastTheLimit
    ) {
        return None;
    }
    let read = if case.document == Document::PastTheLimit {
        &[][..]
    } else {
        &case.entries[..case.entries.len().min(MAX_KEYS)]
    };
    let keys: Vec<Usable> = read
        .iter()
        .filter_map(|entry| match entry {
            Entry::Real(real) if real.usable() => Some((real.key, real.kid)),
            Entry::Real(_) | Entry::Junk { .. } => None,
        })
        .collect();
    (!keys.is_empty()).then_some(keys)
}

/// The lab: a pool of keys, a gateway whose issuer refetches on every
/// unknown `kid`, and the keys it has in force (by the reference).
struct Lab {
    pool: Vec<Signer>,
    world: World,
    gw: Gateway,
    in_force: Mutex<Vec<Usable>>,
    next: AtomicU64,
}

impl Lab {
    async fn start() -> Self {
        let pool: Vec<Signer> = (0..POOL).map(|_| Signer::generate("a")).collect();
        // In force from the start: pool key 0 as `a`.
        let world = World {
            key: pool[0].signing_key(),
            jwks: JwksServer::start(&pool[0].jwks()).await,
            upstream: Upstream::start().await,
        };
        // No periodic refresh: every fetch in a case is one the case asked for.
        let gw = Gateway::start(
            &world.config_with("    jwks_refetch_cooldown: 0s\n    jwks_refresh_interval: 1h\n"),
        )
        .await;
        Self {
            pool,
            world,
            gw,
            in_force: Mutex::new(vec![(0, Some("a"))]),
            next: AtomicU64::new(0),
        }
    }

    /// A token signed by pool key `key` under `kid`.
    fn token(&self, key: usize, kid: &str) -> String {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        self.pool[key].sign(&header, &fresh_claims("orders:read"))
    }

    /// The status of a request with `token`.
    async fn status(&self, token: &str) -> Result<u16, String> {
        let auth = format!("Bearer {token}");
        let reply = send(
            "GET",
            &self.gw.url("/orders/1"),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await?;
        Ok(reply.status)
    }
}

async fn check(lab: &Lab, case: Case) -> Result<(), String> {
    let document = render(&lab.pool, &case);
    lab.world.jwks.set_document(&document);
    let metrics = lab.gw.metrics().await;
    let (success, invalid) = (
        jwks_fetch_results(&metrics, "success"),
        jwks_fetch_results(&metrics, "invalid"),
    );
    // Nobody has this `kid`: the gateway fetches the document now. Refused
    // (401) when the fetch brought keys; while it fails, the key may be one
    // the issuer published since, and the token gets 503.
    let taken = usable(&case);
    let stranger = format!("stranger-{}", lab.next.fetch_add(1, Ordering::Relaxed));
    let status = lab.status(&lab.token(0, &stranger)).await?;
    let expected = if taken.is_some() { 401 } else { 503 };
    if status != expected {
        return Err(format!(
            "a token of an unknown kid got {status}, not {expected}"
        ));
    }
    let metrics = lab.gw.metrics().await;
    let fetched = (
        jwks_fetch_results(&metrics, "success") - success,
        jwks_fetch_results(&metrics, "invalid") - invalid,
    );
    let want = if taken.is_some() {
        (1.0, 0.0)
    } else {
        (0.0, 1.0)
    };
    if fetched != want {
        return Err(format!(
            "fetches (success, invalid) went up by {fetched:?}, want {want:?}: {document}"
        ));
    }
    let fetch_failed = taken.is_none();
    let in_force = {
        let mut in_force = lab.in_force.lock().unwrap();
        if let Some(keys) = taken {
            *in_force = keys;
        }
        in_force.clone()
    };
    for key in 0..POOL {
        for kid in KIDS {
            let accepted = in_force.contains(&(key, Some(kid)));
            // A `kid` no usable key in force has, while fetches fail: 503
            // if no key at all has it, 401 if an unusable one kept from an
            // earlier set does (not modelled here).
            let unknown = !in_force.iter().any(|(_, k)| *k == Some(kid));
            let wanted: &[u16] = match (accepted, unknown && fetch_failed) {
                (true, _) => &[200],
                (false, true) => &[503, 401],
                (false, false) => &[401],
            };
            let status = lab.status(&lab.token(key, kid)).await?;
            if !wanted.contains(&status) {
                return Err(format!(
                    "pool key {key} as `{kid}` got {status} with {in_force:?} in force: {document}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn hostile_key_sets_get_what_rfc_7517_says() {
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    run_campaign(&runtime, &lab, 128, case(), async |lab, case| {
        check(lab, case).await
    });
}

/// A token signed by pool key `key`, under `kid` or none.
fn token_as(lab: &Lab, key: usize, kid: Option<&str>) -> String {
    let mut header = json!({"alg": "ES256", "typ": "at+jwt"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    lab.pool[key].sign(&header, &fresh_claims("orders:read"))
}

/// The key set campaign's lab, and `jose` (`tests/interop/verify.mjs`).
struct SecondOpinion {
    lab: Lab,
    jose: Mutex<Jose>,
    /// Tokens both accepted.
    accepted: AtomicU64,
    /// Differences, by the gateway's reading that explains them.
    readings: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl SecondOpinion {
    fn count(&self, reading: &'static str) {
        *self.readings.lock().unwrap().entry(reading).or_default() += 1;
    }
}

/// Whether the case's entries include junk of `kind`.
fn has_junk(case: &Case, kind: fn(&Junk) -> bool) -> bool {
    case.entries
        .iter()
        .any(|entry| matches!(entry, Entry::Junk { kind: k, .. } if kind(k)))
}

/// One generated key set, once the gateway took it, to `jose` too; then
/// tokens of every pool key under every `kid` and under none, to both.
async fn second_opinion(second: &SecondOpinion, case: Case) -> Result<(), String> {
    let lab = &second.lab;
    let document = render(&lab.pool, &case);
    lab.world.jwks.set_document(&document);
    let stranger = format!("stranger-{}", lab.next.fetch_add(1, Ordering::Relaxed));
    let taken = usable(&case);
    let status = lab.status(&lab.token(0, &stranger)).await?;
    let want = if taken.is_some() { 401 } else { 503 };
    if status != want {
        return Err(format!(
            "a token of an unknown kid got {status}, not {want}"
        ));
    }
    let Some(in_force) = taken else {
        // The gateway keeps the keys it had: nothing to compare.
        return Ok(());
    };
    *lab.in_force.lock().unwrap() = in_force;
    if let Err(refused) = second.jose.lock().unwrap().use_keys(&document) {
        // RFC 7517 5: `keys` holds JWKs. jose refuses a set with anything
        // else; the gateway skips that entry and takes the rest.
        if has_junk(&case, |k| matches!(k, Junk::NotObject)) {
            second.count("an entry that is no object");
            return Ok(());
        }
        return Err(format!(
            "jose refused ({refused}) a set the gateway took: {document}"
        ));
    }
    for key in 0..POOL {
        for kid in KIDS.iter().copied().map(Some).chain([None]) {
            let token = token_as(lab, key, kid);
            let gateway = match lab.status(&token).await? {
                200 => true,
                401 => false,
                other => return Err(format!("pool key {key} as {kid:?} got {other}: {document}")),
            };
            let jose = second.jose.lock().unwrap().verify(&token);
            match (gateway, jose) {
                (true, Ok(())) => {
                    second.accepted.fetch_add(1, Ordering::Relaxed);
                }
                (false, Err(_)) => {}
                // RFC 7515 4.1.4: a `kid` is a string. The gateway skips an
                // entry whose `kid` is not; jose matches it with a token
                // that names no `kid`.
                (false, Ok(()))
                    if kid.is_none() && has_junk(&case, |k| matches!(k, Junk::NumericKid)) =>
                {
                    second.count("an entry whose kid is no string");
                }
                (gateway, jose) => {
                    return Err(format!(
                        "pool key {key} as {kid:?}: the gateway {}, jose {jose:?}: {document}",
                        if gateway { "accepted" } else { "refused" }
                    ));
                }
            }
        }
    }
    Ok(())
}

/// With every key set the gateway takes, `jose` (given the same set) and
/// the gateway accept the same tokens, signed by each pool key under each
/// `kid` or none, but for two readings of RFC 7517 by which the gateway
/// skips an entry that `jose` does not: an entry that is no object (jose
/// refuses the whole set) and one whose `kid` is no string (jose uses it
/// for a token without `kid`).
#[test]
fn a_second_verifier_agrees_on_every_key_set_the_gateway_takes() {
    if !interop_node_modules("the jose second opinion (tests/auth/hostile_jwks.rs)") {
        return;
    }
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    let jose = Jose::start(&lab.pool[0].jwks());
    let second = SecondOpinion {
        lab,
        jose: Mutex::new(jose),
        accepted: AtomicU64::new(0),
        readings: Mutex::default(),
    };
    run_campaign(&runtime, &second, 128, case(), second_opinion);
    let accepted = second.accepted.load(Ordering::Relaxed);
    eprintln!(
        "both accepted {accepted} tokens; differences by the gateway's reading: {:?}",
        second.readings.lock().unwrap()
    );
    // Not vacuous: most sets have a usable key.
    assert!(accepted >= 32, "only {accepted} tokens accepted by both");
}
