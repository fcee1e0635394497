//! Algorithm confusion across key types, judged by two verifiers: the
//! gateway and panva's `jose` (`tests/interop/verify.mjs`, needs `node`).
//!
//! The other campaigns sign with P-256 keys only. Here each case serves a
//! key set of four keys of four types (RSA-2048, P-256, P-384, Ed25519),
//! each under a generated `kid` (its own, one shared with the others, or
//! none) and `alg` member (none, one its type signs with, or any), to one
//! of four gateways, each allowing other algorithms (all nine the gateway
//! implements, or a few). Then it presents tokens signed by a pool key with
//! an algorithm the key makes (RS256-512 and PS256-512 for RSA, ES256,
//! ES384, EdDSA), or with HMAC keyed by a public key (the classic
//! confusion), under a header `alg` that is mostly the one it was signed
//! with and now and then another one, `none` or `HS256`, and under any
//! `kid` or none. RFC 8725 3.1: a verifier uses only the algorithms it
//! allows, each with a key of its type; RFC 7517 4.4: a key whose `alg`
//! names another algorithm is not for this one.
//!
//! `jose` gets the same key set, the same allowed algorithms and the same
//! tokens. The gateway must never accept a token `jose` refuses, nor refuse
//! one it accepts. A key set the gateway does not take (no key for the
//! algorithms it allows: the keys from before stay) is not compared.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 96).

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use jsonwebtoken::EncodingKey;
use proptest::prelude::*;
use scopegate::issuer::keys::algorithm_name;
use serde_json::Map;

/// The asymmetric algorithms the gateway implements (RFC 7518 3.1, RFC 8037).
const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// What each of the lab's gateways allows (its `algorithms`).
const POLICIES: [&[&str]; 4] = [
    &ASYMMETRIC,
    &["RS256"],
    &["PS256", "ES256"],
    &["ES384", "EdDSA", "RS512"],
];

/// `kid`s of the pool keys, and one they may share.
const NAMES: [&str; 4] = ["rsa", "p256", "p384", "ed"];
const SHARED_KID: &str = "k";

/// What each pool key signs with, in the order of [`NAMES`].
const KEY_ALGORITHMS: [&[Algorithm]; 4] = [
    &[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ],
    &[Algorithm::ES256],
    &[Algorithm::ES384],
    &[Algorithm::EdDSA],
];

/// A key of the pool: its private key, and its public JWK's key members.
struct PoolKey {
    encoding: EncodingKey,
    public: Map<String, Value>,
}

/// The key members of a public JWK made by [`SigningKey`] (no `kid`, `use`
/// or `alg`: the cases choose those).
fn key_members(key: &SigningKey) -> Map<String, Value> {
    let mut members = key.public_jwk().as_object().unwrap().clone();
    for name in ["kid", "use", "alg"] {
        members.remove(name);
    }
    members
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", der))
}

/// RSA-2048, P-256, P-384 and Ed25519, in the order of [`NAMES`].
fn pool() -> Vec<PoolKey> {
    let random = SystemRandom::new();
    let rsa = rsa_pem();
    let p256 = p256_pem();
    let p384_der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &random).unwrap();
    let p384 =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, p384_der.as_ref()).unwrap();
    // An uncompressed point: 0x04, then x and y of 48 bytes each.
    let point = p384.public_key().as_ref();
    let p384_public = json!({
        "kty": "EC", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..97]),
    });
    let ed_der = Ed25519KeyPair::generate_pkcs8(&random).unwrap();
    let ed = SigningKey::from_pkcs8("ed", Algorithm::EdDSA, ed_der.as_ref()).unwrap();
    vec![
        PoolKey {
            encoding: EncodingKey::from_rsa_pem(rsa.as_bytes()).unwrap(),
            public: key_members(
                &SigningKey::from_pem("rsa", Algorithm::RS256, rsa.as_bytes()).unwrap(),
            ),
        },
        PoolKey {
            encoding: EncodingKey::from_ec_pem(p256.as_bytes()).unwrap(),
            public: key_members(
                &SigningKey::from_pem("p256", Algorithm::ES256, p256.as_bytes()).unwrap(),
            ),
        },
        PoolKey {
            encoding: EncodingKey::from_ec_pem(pem_of(p384_der.as_ref()).as_bytes()).unwrap(),
            public: p384_public.as_object().unwrap().clone(),
        },
        PoolKey {
            encoding: EncodingKey::from_ed_pem(pem_of(ed_der.as_ref()).as_bytes()).unwrap(),
            public: key_members(&ed),
        },
    ]
}

/// A pool key's entry in the set: its `kid` and `alg` members.
#[derive(Debug, Clone)]
struct EntrySpec {
    kid: Option<&'static str>,
    alg: Option<&'static str>,
}

/// How a token is signed.
#[derive(Debug, Clone, Copy)]
enum Signing {
    /// With the gateway's `n`th allowed algorithm (modulo their number), by
    /// the pool key that makes it.
    Allowed { n: usize },
    /// By pool key `key`, with the `n`th algorithm it makes.
    Key { key: usize, n: usize },
    /// HS256, keyed by pool key `key`'s public JWK text.
    Hmac { key: usize },
}

/// The header's `kid`.
#[derive(Debug, Clone, Copy)]
enum Kid {
    /// The one the signing key's entry has (none if it has none).
    Entry,
    Named(&'static str),
    Absent,
}

#[derive(Debug, Clone)]
struct TokenSpec {
    signing: Signing,
    /// The header's `alg`; `None`: the one it was signed with.
    alg: Option<&'static str>,
    kid: Kid,
}

#[derive(Debug, Clone)]
struct Case {
    policy: usize,
    entries: Vec<EntrySpec>,
    tokens: Vec<TokenSpec>,
}

fn entry(key: usize) -> impl Strategy<Value = EntrySpec> {
    let kid = prop::sample::select(vec![
        Some(NAMES[key]),
        Some(NAMES[key]),
        Some(SHARED_KID),
        None,
    ]);
    let alg = prop_oneof![
        3 => Just(None),
        2 => prop::sample::select(KEY_ALGORITHMS[key].to_vec())
            .prop_map(|alg| Some(algorithm_name(alg))),
        1 => prop::sample::select(ASYMMETRIC.to_vec()).prop_map(Some),
    ];
    (kid, alg).prop_map(|(kid, alg)| EntrySpec { kid, alg })
}

fn token_spec() -> impl Strategy<Value = TokenSpec> {
    let signing = prop_oneof![
        5 => (0..9usize).prop_map(|n| Signing::Allowed { n }),
        3 => (0..NAMES.len(), 0..6usize).prop_map(|(key, n)| Signing::Key { key, n }),
        1 => (0..NAMES.len()).prop_map(|key| Signing::Hmac { key }),
    ];
    let mut other: Vec<&'static str> = ASYMMETRIC.to_vec();
    other.extend(["HS256", "none"]);
    let alg = prop_oneof![
        4 => Just(None),
        1 => prop::sample::select(other).prop_map(Some),
    ];
    let mut names = NAMES.to_vec();
    names.push(SHARED_KID);
    let kid = prop_oneof![
        3 => Just(Kid::Entry),
        1 => prop::sample::select(names).prop_map(Kid::Named),
        1 => Just(Kid::Absent),
    ];
    (signing, alg, kid).prop_map(|(signing, alg, kid)| TokenSpec { signing, alg, kid })
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..POLICIES.len(),
        (entry(0), entry(1), entry(2), entry(3)),
        prop::collection::vec(token_spec(), 6),
    )
        .prop_map(|(policy, (a, b, c, d), tokens)| Case {
            policy,
            entries: vec![a, b, c, d],
            tokens,
        })
}

/// The lab: the pool, one gateway per policy (all reading the same key
/// set, refetching it on every unknown `kid`), and `jose`.
struct Lab {
    pool: Vec<PoolKey>,
    world: World,
    gateways: Vec<Gateway>,
    jose: Mutex<Jose>,
    next: AtomicU64,
    /// Tokens both accepted, and both refused.
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Key sets a gateway did not take.
    not_taken: AtomicU64,
}

/// The key set of `entries`.
fn document(pool: &[PoolKey], entries: &[EntrySpec]) -> String {
    let keys: Vec<Value> = pool
        .iter()
        .zip(entries)
        .map(|(key, spec)| {
            let mut jwk = key.public.clone();
            if let Some(kid) = spec.kid {
                jwk.insert("kid".into(), json!(kid));
            }
            if let Some(alg) = spec.alg {
                jwk.insert("alg".into(), json!(alg));
            }
            Value::Object(jwk)
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

impl Lab {
    async fn start() -> Self {
        let pool = pool();
        let (_, world) = lab().await;
        // Every key under its own `kid`, so that each gateway starts with a
        // key for what it allows.
        let plain: Vec<EntrySpec> = NAMES
            .iter()
            .map(|name| EntrySpec {
                kid: Some(name),
                alg: None,
            })
            .collect();
        let initial = document(&pool, &plain);
        world.jwks.set_document(&initial);
        let mut gateways = Vec::new();
        for policy in POLICIES {
            let config = world
                .config_with(
                    "    require_typ: at+jwt\n    jwks_refetch_cooldown: 0s\n    jwks_refresh_interval: 1h\n",
                )
                .replace(
                    "algorithms: [ES256]",
                    &format!("algorithms: [{}]", policy.join(", ")),
                );
            assert!(config.contains(policy[0]));
            gateways.push(Gateway::start(&config).await);
        }
        let jose = Jose::start(&initial);
        Self {
            pool,
            world,
            gateways,
            jose: Mutex::new(jose),
            next: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            not_taken: AtomicU64::new(0),
        }
    }

    /// A token signed by pool key `key` with `with` (HS256 keyed by its
    /// public JWK's text if `None`), under `alg` (or the one it was signed
    /// with) and `kid`.
    fn token(
        &self,
        (key, with): (usize, Option<Algorithm>),
        alg: Option<&str>,
        kid: Option<&str>,
    ) -> String {
        let Some(with) = with else {
            let secret = Value::Object(self.pool[key].public.clone()).to_string();
            return self.sign(
                alg.unwrap_or("HS256"),
                kid,
                Algorithm::HS256,
                &EncodingKey::from_secret(secret.as_bytes()),
            );
        };
        let alg = alg.unwrap_or_else(|| algorithm_name(with));
        self.sign(alg, kid, with, &self.pool[key].encoding)
    }

    fn sign(&self, alg: &str, kid: Option<&str>, with: Algorithm, key: &EncodingKey) -> String {
        let mut header = json!({"alg": alg, "typ": "at+jwt"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            b64(header.to_string()),
            b64(fresh_claims("orders:read").to_string())
        );
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, with).unwrap();
        format!("{input}.{signature}")
    }

    /// The status of a request with `token` to gateway `policy`.
    async fn status(&self, policy: usize, token: &str) -> Result<u16, String> {
        let auth = format!("Bearer {token}");
        let reply = send(
            "GET",
            &self.gateways[policy].url("/orders/1"),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await?;
        Ok(reply.status)
    }
}

/// The pool key `signing` uses, and its algorithm (`None`: HMAC), for a
/// gateway allowing `policy`.
fn resolve(policy: &[&str], signing: Signing) -> (usize, Option<Algorithm>) {
    match signing {
        Signing::Allowed { n } => {
            let name = policy[n % policy.len()];
            KEY_ALGORITHMS
                .iter()
                .enumerate()
                .find_map(|(key, algs)| {
                    let with = algs.iter().find(|alg| algorithm_name(**alg) == name)?;
                    Some((key, Some(*with)))
                })
                .unwrap()
        }
        Signing::Key { key, n } => {
            let signs = KEY_ALGORITHMS[key];
            (key, Some(signs[n % signs.len()]))
        }
        Signing::Hmac { key } => (key, None),
    }
}

async fn check(lab: &Lab, case: Case) -> Result<(), String> {
    let document = document(&lab.pool, &case.entries);
    let policy = POLICIES[case.policy];
    lab.world.jwks.set_document(&document);
    // A `kid` nobody has, signed with the first algorithm the gateway
    // allows: the gateway fetches the set now, and takes it if it holds a
    // key for an algorithm it allows.
    let gw = &lab.gateways[case.policy];
    let success = jwks_fetch_results(&gw.metrics().await, "success");
    let stranger = format!("stranger-{}", lab.next.fetch_add(1, Ordering::Relaxed));
    let token = lab.token(
        resolve(policy, Signing::Allowed { n: 0 }),
        None,
        Some(&stranger),
    );
    let status = lab.status(case.policy, &token).await?;
    let taken = jwks_fetch_results(&gw.metrics().await, "success") - success == 1.0;
    if status != if taken { 401 } else { 503 } {
        return Err(format!(
            "a token of an unknown kid got {status} (set taken: {taken}): {document}"
        ));
    }
    if !taken {
        lab.not_taken.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    lab.jose
        .lock()
        .unwrap()
        .use_policy(&document, policy)
        .map_err(|refused| {
            format!("jose refused ({refused}) a set the gateway took: {document}")
        })?;
    for spec in &case.tokens {
        let signing = resolve(policy, spec.signing);
        let kid = match spec.kid {
            Kid::Entry => case.entries[signing.0].kid,
            Kid::Named(kid) => Some(kid),
            Kid::Absent => None,
        };
        let token = lab.token(signing, spec.alg, kid);
        let gateway = match lab.status(case.policy, &token).await? {
            200 => true,
            401 => false,
            other => return Err(format!("{spec:?} got {other} from {policy:?}: {document}")),
        };
        let verdict = lab.jose.lock().unwrap().verify(&token);
        match (gateway, &verdict) {
            (true, Ok(())) => lab.accepted.fetch_add(1, Ordering::Relaxed),
            (false, Err(_)) => lab.refused.fetch_add(1, Ordering::Relaxed),
            _ => {
                return Err(format!(
                    "{spec:?} allowing {policy:?}: the gateway {}, jose {verdict:?}: {document}",
                    if gateway { "accepted" } else { "refused" }
                ))
            }
        };
    }
    Ok(())
}

/// With every key set of four key types the gateway takes, and each set of
/// allowed algorithms, `jose` and the gateway accept the same tokens, of
/// every key and algorithm, confused or not.
#[test]
fn a_second_verifier_agrees_on_every_algorithm_and_key_type() {
    if !interop_node_modules("the jose second opinion (tests/auth/hostile_algorithms.rs)") {
        return;
    }
    let runtime = runtime();
    let lab = runtime.block_on(Lab::start());
    run_campaign(&runtime, &lab, 96, case(), async |lab, case| {
        check(lab, case).await
    });
    let accepted = lab.accepted.load(Ordering::Relaxed);
    let refused = lab.refused.load(Ordering::Relaxed);
    eprintln!(
        "both accepted {accepted} tokens and refused {refused}; {} sets not taken",
        lab.not_taken.load(Ordering::Relaxed)
    );
    // Not vacuous: both verdicts are common.
    assert!(accepted >= 64, "only {accepted} tokens accepted by both");
    assert!(refused >= 64, "only {refused} tokens refused by both");
}
