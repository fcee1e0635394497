//! Issuer key sets: parsing JWKS documents, fetching and refreshing them, and
//! refetching on unknown `kid`s without letting a flood of kids flood the IdP.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{
    self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, VerificationAlgorithm,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde::Deserialize;

use crate::admin::metrics::Metrics;
use crate::proxy::client::{build_https_client, HttpsClient};

/// Why a key kept in a set may verify nothing, for the warnings naming such
/// keys.
pub const UNUSABLE_KEY_CAUSES: &str = "an alg their type does not fit, a point off the curve or coordinates not of its full size, an RSA modulus outside 2048-8192 bits or an exponent aws-lc refuses, or an x5c certificate that is not theirs";
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Keys kept from one document at most.
pub const MAX_KEYS: usize = 64;
/// Refresh interval bounds applied to `Cache-Control: max-age`.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// See [`MIN_REFRESH`].
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Why a JWKS document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS document: {0}")]
    Invalid(String),
    /// No key in it is usable for signature verification.
    #[error("no usable signature verification keys")]
    NoUsableKeys,
    /// Its only keys that could verify carry private members: published,
    /// they let anyone sign tokens, so they are never used.
    #[error("no usable signature verification keys: the keys with kid {0} publish their private part (`d`), so anyone can sign with them, and they are not used")]
    ExposedPrivateKeys(String),
}

/// JWK members that only a private key has (RFC 7518 6.2.2, 6.3.2; RFC 8037
/// 2): a key set publishing one publishes the key that signs tokens.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// One public key and the algorithms it may verify.
pub struct VerificationKey {
    kid: Option<String>,
    kind: KeyKind,
    alg: Option<Algorithm>,
    /// The key parsed once for each algorithm it fits, so that checking a
    /// token never re-parses it (an RSA key's parse is ~15 % of a verify).
    /// An algorithm the key fits but could not be parsed for (a point off
    /// the curve, an RSA modulus out of range) has no entry and verifies
    /// nothing.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
    /// SHA-256 of the public key material: tells a replaced key from the
    /// one it replaced when both carry the same `kid`.
    material: [u8; 32],
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .field("material", &self.material)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// The algorithms a key of this kind can verify, and how aws-lc-rs
    /// checks each (RFC 7518 3.1, RFC 8037).
    fn algorithms(self) -> &'static [(Algorithm, Verification)] {
        match self {
            Self::Rsa => &RSA_ALGORITHMS,
            Self::P256 => &P256_ALGORITHMS,
            Self::P384 => &P384_ALGORITHMS,
            Self::Ed25519 => &ED25519_ALGORITHMS,
        }
    }

    /// The bytes of one coordinate of an EC key of this kind (RFC 7518
    /// 6.2.1.2), `None` for other kinds.
    fn coordinate_bytes(self) -> Option<usize> {
        match self {
            Self::P256 => Some(32),
            Self::P384 => Some(48),
            Self::Rsa | Self::Ed25519 => None,
        }
    }
}

/// How aws-lc-rs checks one JWS algorithm.
#[derive(Clone, Copy)]
enum Verification {
    /// From the key's raw bytes (EC point, Ed25519 key).
    Raw(&'static dyn VerificationAlgorithm),
    /// From the RSA modulus and exponent.
    Rsa(&'static RsaParameters),
}

static RSA_ALGORITHMS: [(Algorithm, Verification); 6] = [
    (
        Algorithm::RS256,
        Verification::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
    ),
    (
        Algorithm::RS384,
        Verification::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
    ),
    (
        Algorithm::RS512,
        Verification::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
    ),
    (
        Algorithm::PS256,
        Verification::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
    ),
    (
        Algorithm::PS384,
        Verification::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
    ),
    (
        Algorithm::PS512,
        Verification::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
    ),
];
static P256_ALGORITHMS: [(Algorithm, Verification); 1] = [(
    Algorithm::ES256,
    Verification::Raw(&sig::ECDSA_P256_SHA256_FIXED),
)];
static P384_ALGORITHMS: [(Algorithm, Verification); 1] = [(
    Algorithm::ES384,
    Verification::Raw(&sig::ECDSA_P384_SHA384_FIXED),
)];
static ED25519_ALGORITHMS: [(Algorithm, Verification); 1] =
    [(Algorithm::EdDSA, Verification::Raw(&sig::ED25519))];

impl VerificationKey {
    /// Whether this key may verify `alg`: the key type must fit and, when the
    /// JWK names an `alg`, it must be that one.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.algorithms().iter().any(|(a, _)| *a == alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether it can check `alg` signatures (not only fits `alg` by type).
    pub fn can_verify(&self, alg: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Verifies `signature` (base64url) over `signing_input` with `alg`.
    pub fn verify(&self, signing_input: &str, signature: &str, alg: Algorithm) -> bool {
        let Some((_, key)) = self.verifiers.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        let mut raw = [0u8; MAX_SIGNATURE_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(signature, &mut raw) {
            Ok(len) => raw
                .get(..len)
                .is_some_and(|raw| key.verify_sig(signing_input.as_bytes(), raw).is_ok()),
            Err(_) => false,
        }
    }

    /// The key id, if the JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// A parsed, immutable set of verification keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
    /// The `kid`s (`-` for none) of keys skipped for their private members.
    exposed: Vec<String>,
    /// Entries past the first [`MAX_KEYS`], not read.
    unread: usize,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Whether aws-lc will verify signatures with this RSA key. Its parse takes
/// a key of any size; its verification then refuses a modulus outside
/// 2048-8192 bits and an exponent that is even, 1, or over 33 bits, so a set
/// of only such keys would replace working keys with ones that verify
/// nothing.
fn rsa_key_verifies(n: &[u8], e: &[u8]) -> bool {
    fn bits(bytes: &[u8]) -> usize {
        let digits = unsigned(bytes);
        match digits.first() {
            Some(first) => digits.len() * 8 - first.leading_zeros() as usize,
            None => 0,
        }
    }
    let odd = e.last().is_some_and(|last| last & 1 == 1);
    (2048..=8192).contains(&bits(n)) && odd && (2..=33).contains(&bits(e))
}

/// An unsigned big-endian integer without its leading zero bytes, which DER
/// adds to keep it positive and JWKs sometimes carry.
pub(crate) fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

impl KeySet {
    /// Parses a JWKS document, keeping the signature keys it can use and
    /// skipping the rest (encryption keys, symmetric keys, unknown curves,
    /// and keys published with their private part).
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwksError> {
        let raw: RawJwks =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Invalid(e.to_string()))?;
        let mut keys = Vec::new();
        let mut exposed = Vec::new();
        let unread = raw.keys.len().saturating_sub(MAX_KEYS);
        for value in raw.keys.into_iter().take(MAX_KEYS) {
            // Whoever can read the key set can sign with such a key: its
            // signatures prove nothing.
            if let Some(jwk) = value.as_object() {
                if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
                    let kid = jwk
                        .get("kid")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("-");
                    exposed.push(kid.chars().take(64).collect());
                    continue;
                }
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some(key) = Self::usable(&jwk) {
                keys.push(key);
            }
        }
        // Keys no algorithm can use (an `alg` their type does not fit, a
        // point off the curve, an RSA modulus under 2048 bits) stay, so that
        // a token naming one is a bad signature rather than an unknown key
        // (both are worth one refetch per cooldown, as the key may have been
        // replaced); but a set of only such keys verifies nothing, and a
        // refresh serving one must keep the keys that work.
        if !keys.iter().any(|k| !k.verifiers.is_empty()) {
            return Err(if exposed.is_empty() {
                JwksError::NoUsableKeys
            } else {
                JwksError::ExposedPrivateKeys(exposed.join(", "))
            });
        }
        Ok(Self {
            keys,
            exposed,
            unread,
        })
    }

    fn usable(jwk: &Jwk) -> Option<VerificationKey> {
        // RFC 7517 4.2: a key meant for signatures says `sig`, or nothing;
        // `enc`, and any other value (`SIG`, an application's own), names
        // another use, which a key must not be put to beside it.
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            return None;
        }
        // RFC 7517 4.3: `key_ops` without "verify" is not a verification key.
        if jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            return None;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => return None,
            },
            // Symmetric keys never verify tokens here: no HMAC with published keys.
            _ => return None,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(key_algorithm(a)?),
        };
        // RFC 7518 6.2.1.2-3: `x` and `y` are each the full size of a
        // coordinate. jsonwebtoken joins them as they are, so a point split
        // elsewhere (all of it in `x`, a byte moved into `y`) would parse as
        // the same key: such a key is malformed, kept, and verifies nothing.
        let malformed = match (&jwk.algorithm, kind.coordinate_bytes()) {
            (AlgorithmParameters::EllipticCurve(p), Some(size)) => {
                let full = |c: &str| URL_SAFE_NO_PAD.decode(c).is_ok_and(|c| c.len() == size);
                !(full(&p.x) && full(&p.y))
            }
            _ => false,
        };
        let decoded = DecodingKey::from_jwk(jwk).ok()?;
        // RFC 7517 4.7: a certificate in `x5c` for another key leaves the
        // set saying two things about this one.
        let malformed = malformed || crate::auth::x5c::contradicts_key(jwk, decoded.kind());
        let mut material = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        match decoded.kind() {
            DecodingKeyKind::SecretOrDer(bytes) => material.update(bytes),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                // Lengths first, so that no two (n, e) pairs hash alike.
                material.update(&(n.len() as u64).to_be_bytes());
                material.update(n);
                material.update(e);
            }
        }
        let mut key = VerificationKey {
            kid: jwk.common.key_id.clone(),
            kind,
            alg,
            verifiers: Vec::new(),
            material: crate::auth::cache::digest_of(material.finish()),
        };
        for &(candidate, verification) in kind.algorithms() {
            if malformed || !key.fits(candidate) {
                continue;
            }
            let parsed = match (decoded.kind(), verification) {
                (DecodingKeyKind::SecretOrDer(bytes), Verification::Raw(algorithm)) => {
                    ParsedPublicKey::new(algorithm, bytes)
                }
                (DecodingKeyKind::RsaModulusExponent { n, e }, Verification::Rsa(params))
                    if rsa_key_verifies(n, e) =>
                {
                    RsaPublicKeyComponents { n, e }.to_parsed_public_key(params)
                }
                _ => continue,
            };
            if let Ok(parsed) = parsed {
                key.verifiers.push((candidate, parsed));
            }
        }
        Some(key)
    }

    /// Whether every key of `other` is in this set too, under the same
    /// `kid` and for every algorithm it could verify: a key renamed, or
    /// pinned to another algorithm, is withdrawn as its tokens go, though
    /// its material stays.
    pub fn holds_every_key_of(&self, other: &KeySet) -> bool {
        other.keys.iter().all(|old| {
            self.keys.iter().any(|new| {
                new.material == old.material
                    && new.kid == old.kid
                    && old
                        .verifiers
                        .iter()
                        .all(|(alg, _)| new.verifiers.iter().any(|(kept, _)| kept == alg))
            })
        })
    }

    /// The keys that may verify a token with this `kid` and `alg`: the one key
    /// with that id, or, for a token without `kid`, every key that fits.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .filter(move |k| k.fits(alg))
    }

    /// Whether some key can verify `alg` signatures (not only fits it by
    /// type: a key kept as unusable cannot).
    pub fn verifies(&self, alg: Algorithm) -> bool {
        self.keys
            .iter()
            .any(|k| k.verifiers.iter().any(|(a, _)| *a == alg))
    }

    /// Whether a key with this id exists.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Number of keys kept (those no algorithm can use among them).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The `kid`s (`-` for none) of the keys kept that no algorithm can use:
    /// a token naming one gets `bad_signature`.
    pub fn unusable_kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|k| k.verifiers.is_empty())
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect()
    }

    /// The `kid`s (`-` for none) of the keys skipped because they were
    /// published with their private part.
    pub fn exposed_kids(&self) -> &[String] {
        &self.exposed
    }

    /// How many entries past the first [`MAX_KEYS`] were not read.
    pub fn unread_entries(&self) -> usize {
        self.unread
    }

    /// True when no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Largest signature of any algorithm a key verifies: RSA with an 8 192-bit
/// modulus, aws-lc-rs's upper bound.
const MAX_SIGNATURE_BYTES: usize = 1024;

fn key_algorithm(a: jsonwebtoken::jwk::KeyAlgorithm) -> Option<Algorithm> {
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    Some(match a {
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The live key set of one issuer, with its fetch machinery.
pub struct IssuerKeys {
    issuer_name: Arc<str>,
    current: ArcSwapOption<KeySet>,
    remote: Option<RemoteSource>,
    /// False when the issuer has no keys at all (introspection only).
    needed: AtomicBool,
    /// Bumped whenever a new key set drops a key the previous one had:
    /// tokens verified before then must be verified again.
    generation: AtomicU64,
}

struct RemoteSource {
    /// Set from the config, or later by discovery.
    uri: ArcSwapOption<Uri>,
    client: HttpsClient<Empty<Bytes>>,
    timeout: Duration,
    cooldown: Duration,
    default_refresh: Duration,
    /// Serialises fetches so that concurrent triggers share one (shared
    /// with the task a refetch runs in).
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    /// Counts finished fetch attempts; waiters compare it to skip a refetch.
    attempts: AtomicU64,
    /// When the last fetch started (cooldown for unknown kids).
    last_attempt: Mutex<Option<Instant>>,
    /// When the keys of the last successful fetch are due for a refresh: a
    /// refresher started by a reload that kept them waits until then.
    refresh_due: Mutex<Option<Instant>>,
    /// Whether the last fetch attempt failed (the set may lack keys the
    /// issuer has published since).
    last_failed: AtomicBool,
    /// The issuer's allowed algorithms: a set with no key for any of them
    /// is refused like one of no usable keys (empty: not checked). Set anew
    /// by a reload that keeps the keys (see [`IssuerKeys::set_algorithms`]).
    algorithms: arc_swap::ArcSwap<Vec<Algorithm>>,
}

/// Outcome of one fetch, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// New keys installed.
    Success,
    /// The IdP answered with a non-200 status.
    HttpError,
    /// Connection failure.
    NetworkError,
    /// No answer within the timeout.
    Timeout,
    /// The body was too large or not a usable JWKS.
    Invalid,
}

impl FetchResult {
    /// Every outcome, for series made before the first fetch.
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::HttpError,
        Self::NetworkError,
        Self::Timeout,
        Self::Invalid,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::HttpError => "http_error",
            Self::NetworkError => "network_error",
            Self::Timeout => "timeout",
            Self::Invalid => "invalid",
        }
    }
}

impl IssuerKeys {
    /// Keys that never change (a `jwks_file`).
    pub fn fixed(issuer_name: Arc<str>, keys: Arc<KeySet>) -> Self {
        Self {
            issuer_name,
            current: ArcSwapOption::new(Some(keys)),
            remote: None,
            needed: AtomicBool::new(true),
            generation: AtomicU64::new(0),
        }
    }

    /// No keys: the issuer's tokens are only introspected.
    pub fn absent(issuer_name: Arc<str>) -> Self {
        Self {
            issuer_name,
            current: ArcSwapOption::empty(),
            remote: None,
            needed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// Keys fetched from `uri` (or from a URL discovery sets later); empty
    /// until the first successful fetch.
    pub fn remote(
        issuer_name: Arc<str>,
        uri: Option<Uri>,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
        cooldown: Duration,
        default_refresh: Duration,
        algorithms: Vec<Algorithm>,
    ) -> Result<Self, String> {
        let client = build_https_client(ca_file, timeout, 4, false)?;
        Ok(Self {
            issuer_name,
            current: ArcSwapOption::empty(),
            needed: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            remote: Some(RemoteSource {
                uri: ArcSwapOption::new(uri.map(Arc::new)),
                client,
                timeout,
                cooldown,
                default_refresh,
                fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
                attempts: AtomicU64::new(0),
                last_attempt: Mutex::new(None),
                refresh_due: Mutex::new(None),
                last_failed: AtomicBool::new(false),
                algorithms: arc_swap::ArcSwap::from_pointee(algorithms),
            }),
        })
    }

    /// Changes whenever a key is withdrawn; a token verified under another
    /// generation must be verified again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current key set, if any has been loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Fetch attempts finished so far (0 for keys from a file).
    fn fetch_attempts(&self) -> u64 {
        self.remote
            .as_ref()
            .map_or(0, |r| r.attempts.load(Ordering::Acquire))
    }

    /// True once keys are available.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// True when the last attempt to fetch the keys failed: a token naming
    /// a key not in the set may name one published since.
    pub fn last_fetch_failed(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| r.last_failed.load(Ordering::Acquire))
    }

    /// The algorithms fetched sets are checked against, as a reload that
    /// kept these keys configures them.
    pub fn set_algorithms(&self, algorithms: Vec<Algorithm>) {
        if let Some(remote) = &self.remote {
            remote.algorithms.store(Arc::new(algorithms));
        }
    }

    /// True when keys are loaded or not needed.
    pub fn is_ready(&self) -> bool {
        !self.needed.load(Ordering::Acquire) || self.is_loaded()
    }

    /// Sets the JWKS URL found by discovery; `None` means the issuer publishes
    /// no keys, so none are needed.
    pub fn set_discovered_uri(&self, uri: Option<Uri>) {
        match (&self.remote, uri) {
            (Some(remote), Some(uri)) if remote.uri.load().is_none() => {
                remote.uri.store(Some(Arc::new(uri)));
            }
            (Some(remote), None) if remote.uri.load().is_none() => {
                self.needed.store(false, Ordering::Release);
            }
            _ => {}
        }
    }

    /// True while the issuer's keys wait for a `jwks_uri` from discovery.
    pub fn awaits_discovered_uri(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.uri.load().is_none())
    }

    /// True when the issuer has (or will have) keys to verify JWTs with.
    pub fn publishes_keys(&self) -> bool {
        self.needed.load(Ordering::Acquire)
    }

    /// Whether a JWKS URL is known (so the refresher has work).
    pub fn has_uri(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.uri.load().is_some())
    }

    /// Called when no key we have verifies a token (an unknown `kid`, or a
    /// bad signature): refetches unless a fetch happened within the
    /// cooldown, sharing a fetch already under way.
    ///
    /// The fetch runs in a task of its own, which finishes even when the
    /// request that started it is dropped (an HTTP/2 stream reset): its
    /// cooldown has begun, and a fetch cancelled with it would have left
    /// every token of a newly published key refused until the next refresh.
    pub async fn refetch_for_unmatched_token(self: &Arc<Self>, metrics: &Arc<Metrics>) {
        let Some(remote) = &self.remote else {
            return;
        };
        let seen = remote.attempts.load(Ordering::Acquire);
        let guard = Arc::clone(&remote.fetch_lock).lock_owned().await;
        if remote.attempts.load(Ordering::Acquire) != seen || remote.in_cooldown() {
            return; // someone fetched while we waited, or just before
        }
        let (keys, metrics) = (Arc::clone(self), Arc::clone(metrics));
        let fetch = tokio::spawn(async move {
            let _guard = guard;
            if let Some(remote) = &keys.remote {
                keys.fetch_now(remote, &metrics).await;
            }
        });
        // A fetch that panicked has left the keys as they were.
        let _ = fetch.await;
    }

    /// Fetches now (refresher path), regardless of cooldown; returns the delay
    /// until the next refresh.
    pub async fn refresh(&self, metrics: &Metrics) -> (FetchResult, Duration) {
        let Some(remote) = &self.remote else {
            return (FetchResult::Success, MAX_REFRESH);
        };
        let _guard = remote.fetch_lock.lock().await;
        self.fetch_now(remote, metrics).await
    }

    async fn fetch_now(&self, remote: &RemoteSource, metrics: &Metrics) -> (FetchResult, Duration) {
        if let Ok(mut last) = remote.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        let (result, max_age) = match self.fetch(remote).await {
            Ok((set, max_age)) => {
                tracing::info!(issuer = %self.issuer_name, keys = set.len(), "JWKS loaded");
                let unusable = set.unusable_kids();
                if !unusable.is_empty() {
                    tracing::warn!(
                        issuer = %self.issuer_name,
                        kids = ?unusable,
                        "JWKS has keys scopegate cannot verify with ({UNUSABLE_KEY_CAUSES}): tokens naming them get bad_signature"
                    );
                }
                if set.unread_entries() > 0 {
                    tracing::warn!(
                        issuer = %self.issuer_name,
                        unread = set.unread_entries(),
                        "JWKS has entries past the first {MAX_KEYS}, which are not read"
                    );
                }
                if !set.exposed_kids().is_empty() {
                    tracing::error!(
                        issuer = %self.issuer_name,
                        kids = ?set.exposed_kids(),
                        "JWKS publishes private keys (`d`): anyone can sign tokens with them, so they are not used; the issuer must replace them"
                    );
                }
                let previous = self.current.swap(Some(Arc::new(set)));
                let dropped = previous.is_some_and(|old| {
                    self.current
                        .load()
                        .as_ref()
                        .is_some_and(|new| !new.holds_every_key_of(&old))
                });
                if dropped {
                    // Before, tokens signed by a withdrawn key stayed in the
                    // verified-token cache until they expired.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                (FetchResult::Success, max_age)
            }
            Err((result, cause)) => {
                tracing::warn!(
                    issuer = %self.issuer_name,
                    result = result.label(),
                    cause = %cause,
                    keeping_previous = self.is_loaded(),
                    "JWKS fetch failed"
                );
                (result, None)
            }
        };
        remote
            .last_failed
            .store(result != FetchResult::Success, Ordering::Release);
        remote.attempts.fetch_add(1, Ordering::AcqRel);
        metrics
            .jwks_fetches
            .with_label_values(&[&self.issuer_name, result.label()])
            .inc();
        let next = next_refresh(max_age, remote.default_refresh);
        if result == FetchResult::Success {
            if let Ok(mut due) = remote.refresh_due.lock() {
                *due = Some(Instant::now() + next);
            }
        }
        (result, next)
    }

    /// How long loaded keys stay fresh, per the fetch that brought them;
    /// `None` when a fetch is due now (none loaded, none fetched, or due).
    fn fresh_for(&self) -> Option<Duration> {
        let remote = self.remote.as_ref()?;
        let due = (*remote.refresh_due.lock().ok()?)?;
        let left = due.checked_duration_since(Instant::now())?;
        (self.is_loaded() && !left.is_zero()).then_some(left)
    }

    /// The key set at the issuer's `jwks_uri`, and how long its answer
    /// says it keeps; or the failure's label and its cause, for the log.
    async fn fetch(
        &self,
        remote: &RemoteSource,
    ) -> Result<(KeySet, Option<Duration>), (FetchResult, String)> {
        let uri = remote.uri.load_full().ok_or((
            FetchResult::NetworkError,
            "no jwks_uri (discovery has not found one)".to_owned(),
        ))?;
        let request = Request::get((*uri).clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| (FetchResult::Invalid, e.to_string()))?;
        let work = async {
            let response = remote
                .client
                .request(request)
                .await
                .map_err(|e| (FetchResult::NetworkError, crate::error::with_causes(&e)))?;
            if response.status() != StatusCode::OK {
                return Err((
                    FetchResult::HttpError,
                    format!("the server answered {}", response.status()),
                ));
            }
            let max_age = freshness_left(response.headers());
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    // Too long is the document's fault; a connection that
                    // broke off mid-body is the network's.
                    let result = if e.is::<http_body_util::LengthLimitError>() {
                        FetchResult::Invalid
                    } else {
                        FetchResult::NetworkError
                    };
                    (
                        result,
                        format!(
                            "reading the key set (at most {MAX_JWKS_BYTES} bytes): {}",
                            crate::error::with_causes(&*e)
                        ),
                    )
                })?
                .to_bytes();
            let set =
                KeySet::from_json(&body).map_err(|e| (FetchResult::Invalid, e.to_string()))?;
            // As a `jwks_file` is refused: every token would be refused with
            // it, while the keys in force may still verify some.
            let algorithms = remote.algorithms.load();
            if !algorithms.is_empty() && !algorithms.iter().any(|&alg| set.verifies(alg)) {
                return Err((
                    FetchResult::Invalid,
                    format!("no key of the set fits the issuer's algorithms {algorithms:?}"),
                ));
            }
            Ok((set, max_age))
        };
        tokio::time::timeout(remote.timeout, work)
            .await
            .map_err(|_| {
                (
                    FetchResult::Timeout,
                    format!("no answer within {:?}", remote.timeout),
                )
            })?
    }
}

impl RemoteSource {
    fn in_cooldown(&self) -> bool {
        self.last_attempt
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|t| t.elapsed() < self.cooldown)
    }
}

/// When to fetch a key set again: after `jwks_refresh_interval`
/// (`interval`), or sooner when the identity provider's `max-age` says so,
/// never later (a key it withdraws must stop passing within the operator's
/// interval, not its cache lifetime: Google's is about 6 h), and within
/// [`MIN_REFRESH`]..[`MAX_REFRESH`].
fn next_refresh(max_age: Option<Duration>, interval: Duration) -> Duration {
    max_age
        .map_or(interval, |age| age.min(interval))
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// How long a JWKS answer with these headers stays fresh: its `max-age`
/// less the `Age` it has spent in a shared cache on its way (RFC 9111
/// 4.2.3); `None` when it gives no `max-age`.
fn freshness_left(headers: &http::HeaderMap) -> Option<Duration> {
    // One list however many field lines carry it (RFC 9110 5.3).
    let cache_control: Vec<&str> = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let max_age = parse_max_age(&cache_control.join(","))?;
    // An Age that is no delta-seconds is ignored (RFC 9111 5.1).
    let age = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    Some(max_age.saturating_sub(age))
}

/// Reads `max-age` from a Cache-Control value (`no-store`/`no-cache` mean 0,
/// as does a `max-age` given twice with different values: RFC 9111 4.2.1
/// has such an answer considered stale).
pub fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            let this = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
            match max_age {
                None => max_age = Some(this),
                Some(seen) if seen != this => return Some(Duration::ZERO),
                Some(_) => {}
            }
        }
    }
    max_age.flatten()
}

/// Keeps one remote issuer's keys fresh until `shutdown` fires: retries with
/// backoff while the IdP fails, then follows its Cache-Control.
pub async fn run_refresher(
    keys: Arc<IssuerKeys>,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    // Keys a reload kept are fetched when they are due, not again at once
    // (every pod of a ConfigMap update would call the provider together).
    if let Some(fresh) = keys.fresh_for() {
        if !rest(&keys, &mut shutdown, fresh, backoff).await {
            return;
        }
    }
    loop {
        let (result, next) = keys.refresh(&metrics).await;
        let delay = next_delay(result, next, &mut backoff);
        if !rest(&keys, &mut shutdown, delay, backoff).await {
            return;
        }
    }
}

/// How long a refresher rests after a fetch with `result`, `next` being
/// the key set's [`next_refresh`], `backoff` the wait after a failure
/// (doubled for the next one, reset by a success). Spread at random so that
/// replicas do not fetch in step: after a success only shorter, since
/// `next` is the longest a key set may go unfetched.
fn next_delay(result: FetchResult, next: Duration, backoff: &mut Duration) -> Duration {
    if result == FetchResult::Success {
        *backoff = Duration::from_millis(250);
        crate::auth::jittered_within(next)
    } else {
        let delay = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
        crate::auth::jittered(delay)
    }
}

/// Waits `delay`, and again for as long as the keys were fetched meanwhile
/// by someone else: a refresher a reload started for the same key set (the
/// old one runs until the new config serves), or a refetch for an unknown
/// `kid`. So two refreshers of one key set fetch no more often than one.
/// `retry` is the wait after a fetch of theirs that failed. False once shut
/// down.
async fn rest(
    keys: &IssuerKeys,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    mut delay: Duration,
    retry: Duration,
) -> bool {
    loop {
        let seen = keys.fetch_attempts();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return false,
        }
        if keys.fetch_attempts() == seen {
            return true;
        }
        delay = keys.fresh_for().unwrap_or(retry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `jwks_refresh_interval` (or a shorter `max-age`) is the longest a
    /// key set goes unfetched: the spread of the rest after a success only
    /// shortens it (a withdrawn key must stop passing within the bound),
    /// while a retry's backoff is spread either way.
    #[test]
    fn the_rest_after_a_fetch_never_passes_the_refresh_interval() {
        for interval in [MIN_REFRESH, Duration::from_secs(300), MAX_REFRESH] {
            let next = next_refresh(None, interval);
            let mut backoff = Duration::from_secs(8);
            let rests: std::collections::BTreeSet<Duration> = (0..2000)
                .map(|_| next_delay(FetchResult::Success, next, &mut backoff))
                .collect();
            let (shortest, longest) = (rests.first().copied(), rests.last().copied());
            assert!(longest <= Some(interval), "{interval:?}: {longest:?}");
            assert!(
                shortest >= Some(interval.mul_f64(0.8)),
                "{interval:?}: {shortest:?}"
            );
            assert!(rests.len() > 20, "{interval:?}: not spread: {rests:?}");
            assert_eq!(backoff, Duration::from_millis(250), "a success resets it");
        }
        let retries: Vec<Duration> = (0..200)
            .map(|_| {
                let mut backoff = Duration::from_secs(10);
                next_delay(FetchResult::NetworkError, Duration::ZERO, &mut backoff)
            })
            .collect();
        assert!(retries.iter().any(|&d| d > Duration::from_secs(10)));
        assert!(retries.iter().all(|&d| d <= Duration::from_secs(12)));
    }

    /// A fetch by someone else while a refresher rests (another refresher
    /// of the same key set, a refetch for an unknown `kid`) counts as its
    /// own: it rests on, `retry` longer when no fresh keys came, instead of
    /// fetching as well.
    #[tokio::test(start_paused = true)]
    async fn a_fetch_by_someone_else_extends_the_rest() {
        crate::cli::install_crypto_provider();
        let second = Duration::from_secs(1);
        let keys = IssuerKeys::remote(
            Arc::from("t"),
            None,
            None,
            second,
            second,
            60 * second,
            Vec::new(),
        );
        let keys = Arc::new(keys.unwrap());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let resting = |keys: &Arc<IssuerKeys>| {
            let (keys, mut shutdown) = (Arc::clone(keys), shutdown.clone());
            tokio::spawn(async move { rest(&keys, &mut shutdown, 10 * second, 3 * second).await })
        };
        let (bumped, control) = (resting(&keys), resting(&keys));
        tokio::time::sleep(5 * second).await;
        let remote = keys.remote.as_ref().unwrap();
        // Two refreshers: `control` would see this too; it rests on as well.
        remote.attempts.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(6 * second).await;
        assert!(!bumped.is_finished() && !control.is_finished());
        tokio::time::sleep(3 * second).await;
        assert!(bumped.await.unwrap() && control.await.unwrap());
        // Without a fetch meanwhile, the rest is `delay` long.
        let alone = resting(&keys);
        tokio::time::sleep(11 * second).await;
        assert!(alone.is_finished());
    }

    /// Serves `answers` (whole HTTP/1.1 responses), one a connection and in
    /// order, at a JWKS URL of its own; the task ends after the last. A
    /// client that hangs up early (an answer past the size limit) is no error.
    async fn serve(answers: Vec<String>) -> (Uri, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    request.extend_from_slice(&buf[..n]);
                }
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        let uri = format!("http://{addr}/jwks.json").parse().unwrap();
        (uri, server)
    }

    /// An HTTP/1.1 response with this status, header lines (each ending in
    /// CRLF) and JSON body.
    fn answer(status: &str, head: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Keys fetched from `uri`, refetched for unknown kids at most once a
    /// `cooldown`, refreshed hourly, checked against `algorithms`.
    fn remote_keys(
        uri: Option<Uri>,
        cooldown: Duration,
        algorithms: Vec<Algorithm>,
    ) -> Arc<IssuerKeys> {
        crate::cli::install_crypto_provider();
        let keys = IssuerKeys::remote(
            Arc::from("t"),
            uri,
            None,
            Duration::from_secs(5),
            cooldown,
            Duration::from_secs(3600),
            algorithms,
        );
        Arc::new(keys.unwrap())
    }

    /// A fresh P-256 public key as a JWK with this `kid`.
    fn p256_jwk(kid: &str) -> serde_json::Value {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        })
    }

    /// A JWKS document of these keys.
    fn jwks_of(keys: &[&serde_json::Value]) -> String {
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// The refresh a fetch of a key set schedules when the JWKS server
    /// answers with `head` (header lines, each ending in CRLF) and a set of
    /// one usable key; the operator's interval is an hour.
    async fn refresh_after(head: &str) -> (FetchResult, Duration) {
        let body = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let (uri, server) = serve(vec![answer("200 OK", head, body)]).await;
        let keys = remote_keys(Some(uri), Duration::ZERO, Vec::new());
        let metrics = Metrics::new().unwrap();
        let scheduled = keys.refresh(&metrics).await;
        server.await.unwrap();
        scheduled
    }

    /// Cache-Control is a list (RFC 9110 5.3, RFC 9111 5.2): its
    /// directives may come on several field lines, and mean what they would
    /// on one, so a `max-age` or `no-store` on a second line shortens the
    /// refresh as it does on the first.
    #[tokio::test]
    async fn cache_control_over_several_field_lines_is_one_list() {
        let cases: [(&[&str], Duration); 4] = [
            (&["public, max-age=120"], Duration::from_secs(120)),
            (&["public", "max-age=120"], Duration::from_secs(120)),
            (&["max-age=120", "public"], Duration::from_secs(120)),
            (&["public, max-age=600", "no-store"], MIN_REFRESH),
        ];
        for (lines, want) in cases {
            let head: String = lines
                .iter()
                .map(|line| format!("Cache-Control: {line}\r\n"))
                .collect();
            let scheduled = refresh_after(&head).await;
            assert_eq!(scheduled, (FetchResult::Success, want), "{lines:?}");
        }
    }

    /// A key set that has waited in a shared cache (a CDN in front of the
    /// identity provider) has used up `Age` seconds of its `max-age` (RFC
    /// 9111 4.2.3): its refresh comes that much sooner. A `max-age` given
    /// twice with different values leaves its freshness unknown, so the set
    /// is refreshed soon (RFC 9111 4.2.1: "considered stale").
    #[tokio::test]
    async fn age_is_taken_off_max_age() {
        let cases = [
            ("Cache-Control: max-age=900\r\nAge: 300\r\n", 600),
            ("Cache-Control: max-age=900\r\nAge: 2000\r\n", 60),
            ("Age: 100\r\nCache-Control: public, max-age=1000\r\n", 900),
            // An Age that is no delta-seconds is ignored (RFC 9111 5.1).
            ("Cache-Control: max-age=900\r\nAge: soon\r\n", 900),
            // Without max-age the operator's interval stands, whatever the age.
            ("Cache-Control: public\r\nAge: 3000\r\n", 3600),
            ("Cache-Control: max-age=900, max-age=2000\r\n", 60),
            (
                "Cache-Control: max-age=900\r\nCache-Control: max-age=2000\r\n",
                60,
            ),
            ("Cache-Control: max-age=900, max-age=900\r\n", 900),
        ];
        for (head, want) in cases {
            let scheduled = refresh_after(head).await;
            assert_eq!(
                scheduled,
                (FetchResult::Success, Duration::from_secs(want)),
                "{head:?}"
            );
        }
    }

    #[test]
    fn the_providers_max_age_may_only_shorten_the_refresh_interval() {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(next_refresh(None, minutes(5)), minutes(5));
        assert_eq!(next_refresh(Some(minutes(360)), minutes(5)), minutes(5));
        assert_eq!(next_refresh(Some(minutes(2)), minutes(5)), minutes(2));
        assert_eq!(next_refresh(Some(Duration::ZERO), minutes(5)), MIN_REFRESH);
        // A day at most ([`MAX_REFRESH`]), whatever the interval.
        assert_eq!(next_refresh(None, minutes(60 * 48)), minutes(60 * 24));
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("private"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
        assert_eq!(
            parse_max_age("max-age=abc, max-age=60"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_max_age("max-age=60, max-age=abc"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn rejects_documents_without_usable_keys() {
        assert!(KeySet::from_json(b"{}").is_err());
        assert!(KeySet::from_json(b"not json").is_err());
        assert!(KeySet::from_json(br#"{"keys":[]}"#).is_err());
        let oct = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(matches!(
            KeySet::from_json(oct),
            Err(JwksError::NoUsableKeys)
        ));
    }

    /// A set of only keys that no algorithm can use (a point off the curve,
    /// an `alg` that does not fit its type) is no key set, so a refresh that
    /// serves one keeps the keys that work instead of replacing them with
    /// nothing; beside a usable key, such keys do no harm.
    #[test]
    fn keys_no_algorithm_can_use_are_skipped() {
        let good = r#"{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let off_curve = r#"{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a1"}"#;
        let misfit = r#"{"kty":"EC","crv":"P-256","kid":"m","alg":"ES384","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        for broken in [off_curve, misfit] {
            let only = format!(r#"{{"keys":[{broken}]}}"#);
            assert!(
                matches!(
                    KeySet::from_json(only.as_bytes()),
                    Err(JwksError::NoUsableKeys)
                ),
                "{broken}"
            );
            let with_good = format!(r#"{{"keys":[{broken},{good}]}}"#);
            let set = KeySet::from_json(with_good.as_bytes()).unwrap();
            assert!(set
                .candidates(Some("e"), Algorithm::ES256)
                .any(|k| !k.verifiers.is_empty()));
        }
    }

    /// RSA keys aws-lc parses but would refuse to verify with (a modulus
    /// outside 2048-8192 bits, an exponent of 1, even, or over 33 bits) get
    /// no verifier: a set of only such keys is refused, so a refresh serving
    /// one keeps the keys that work.
    #[test]
    fn rsa_keys_that_cannot_verify_are_skipped() {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{KeyPair, RsaKeyPair};

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let components: RsaPublicKeyComponents<Vec<u8>> = rsa.public_key().into();
        let (n, e) = (components.n, components.e);
        let jwk = |kid: &str, n: &[u8], e: &[u8]| {
            serde_json::json!({
                "kty": "RSA",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
            })
        };
        let set_of = |keys: Vec<serde_json::Value>| {
            KeySet::from_json(serde_json::json!({ "keys": keys }).to_string().as_bytes())
        };
        let good = jwk("good", &n, &e);
        assert!(set_of(vec![good.clone()]).is_ok());

        let short = &n[n.len() - 128..];
        let long = n.repeat(5);
        let cases: [(&str, &[u8], &[u8]); 5] = [
            ("1024-bit modulus", short, &e),
            ("10240-bit modulus", &long, &e),
            ("exponent 1", &n, &[1]),
            ("even exponent", &n, &[1, 0, 0]),
            ("41-bit exponent", &n, &[1, 0, 0, 0, 0, 1]),
        ];
        for (case, n, e) in cases {
            let bad = jwk("bad", n, e);
            assert!(
                matches!(set_of(vec![bad.clone()]), Err(JwksError::NoUsableKeys)),
                "{case}"
            );
            let set = set_of(vec![bad, good.clone()]).unwrap();
            assert!(set.has_kid("bad"), "{case}");
            assert!(
                set.candidates(Some("bad"), Algorithm::RS256)
                    .all(|k| k.verifiers.is_empty()),
                "{case}"
            );
        }
    }

    /// RFC 7517 4.2: only a key whose `use` is `sig`, or absent, verifies
    /// signatures; `enc` and any other value (values are case-sensitive)
    /// name another use, as jose and Nimbus read them too.
    #[test]
    fn only_keys_for_signatures_verify() {
        let jwk = |usage: &str| {
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"e","use":"{usage}","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}]}}"#
            )
        };
        assert!(KeySet::from_json(jwk("sig").as_bytes()).is_ok());
        for other in ["enc", "SIG", "Sig", "sig ", "", "verify", "x-tls"] {
            assert!(
                matches!(
                    KeySet::from_json(jwk(other).as_bytes()),
                    Err(JwksError::NoUsableKeys)
                ),
                "use {other:?}"
            );
        }
    }

    /// A key published with its private part can be used by anyone to
    /// sign: it is skipped, and named when nothing else is left.
    #[test]
    fn keys_published_with_their_private_part_verify_nothing() {
        const PUBLIC: &str = r#""kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0""#;
        for member in PRIVATE_MEMBERS {
            let exposed = format!(r#"{{{PUBLIC},"kid":"leaked","{member}":"AQAB"}}"#);
            let only = format!(r#"{{"keys":[{exposed}]}}"#);
            match KeySet::from_json(only.as_bytes()) {
                Err(JwksError::ExposedPrivateKeys(kids)) => assert_eq!(kids, "leaked"),
                other => panic!("{member}: {other:?}"),
            }
            let beside = format!(r#"{{"keys":[{exposed},{{{PUBLIC},"kid":"public"}}]}}"#);
            let set = KeySet::from_json(beside.as_bytes()).unwrap();
            assert_eq!(set.exposed_kids(), ["leaked"], "{member}");
            assert_eq!(set.candidates(Some("leaked"), Algorithm::ES256).count(), 0);
            assert_eq!(set.candidates(Some("public"), Algorithm::ES256).count(), 1);
        }
    }

    #[test]
    fn entries_past_the_limit_are_counted_unread() {
        let key = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        for (entries, unread) in [(1, 0), (MAX_KEYS, 0), (MAX_KEYS + 3, 3)] {
            let document = format!(r#"{{"keys":[{}]}}"#, vec![key; entries].join(","));
            let set = KeySet::from_json(document.as_bytes()).unwrap();
            assert_eq!(set.unread_entries(), unread, "{entries} entries");
        }
    }

    #[test]
    fn keys_fit_only_their_algorithms() {
        let ec = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let set = KeySet::from_json(ec).unwrap();
        assert_eq!(set.candidates(Some("e"), Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(Some("e"), Algorithm::ES384).count(), 0);
        assert_eq!(set.candidates(Some("e"), Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(Some("x"), Algorithm::ES256).count(), 0);
        let kids = |set: &KeySet| -> Vec<Option<String>> {
            let candidates = set.candidates(None, Algorithm::ES256);
            candidates.map(|k| k.kid().map(str::to_owned)).collect()
        };
        assert_eq!(kids(&set), [Some("e".to_owned())]);
        assert!(set.has_kid("e") && !set.has_kid("x"));
        assert!(set.verifies(Algorithm::ES256) && !set.verifies(Algorithm::ES384));
        assert!(!set.is_empty() && KeySet::default().is_empty());
        // A key without `kid` has none, and fits a token without one only.
        let unnamed = String::from_utf8_lossy(ec).replace(r#""kid":"e","#, "");
        let set = KeySet::from_json(unnamed.as_bytes()).unwrap();
        assert_eq!(kids(&set), [None]);
        assert_eq!(set.candidates(Some(""), Algorithm::ES256).count(), 0);
    }

    #[test]
    fn keys_are_parsed_once_for_each_algorithm_they_fit() {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};

        let algorithms = |set: &KeySet| -> Vec<Algorithm> {
            set.keys[0].verifiers.iter().map(|(a, _)| *a).collect()
        };
        let ec = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert_eq!(
            algorithms(&KeySet::from_json(ec).unwrap()),
            [Algorithm::ES256]
        );

        // A point off the curve is kept beside a usable key (its kid is known,
        // so a token naming it is a bad signature, not an unknown key) but
        // verifies nothing.
        let off_curve = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"y_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},{"kty":"EC","crv":"P-256","kid":"g","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let set = KeySet::from_json(off_curve).unwrap();
        assert!(algorithms(&set).is_empty());
        assert!(set.has_kid("e"));

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let components: RsaPublicKeyComponents<Vec<u8>> = rsa.public_key().into();
        let jwk = |alg: Option<&str>| {
            let mut jwk = serde_json::json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(&components.n),
                "e": URL_SAFE_NO_PAD.encode(&components.e),
            });
            if let Some(alg) = alg {
                jwk["alg"] = alg.into();
            }
            serde_json::json!({ "keys": [jwk] }).to_string()
        };
        let any = KeySet::from_json(jwk(None).as_bytes()).unwrap();
        let rsa_algorithms: Vec<Algorithm> =
            KeyKind::Rsa.algorithms().iter().map(|(a, _)| *a).collect();
        assert_eq!(algorithms(&any), rsa_algorithms);
        let pinned = KeySet::from_json(jwk(Some("PS384")).as_bytes()).unwrap();
        assert_eq!(algorithms(&pinned), [Algorithm::PS384]);

        // The parsed key verifies a real signature, with its algorithm only.
        let message = "eyJhbGciOiJSUzI1NiJ9.e30";
        let mut signature = vec![0; rsa.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        rsa.sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut signature)
            .unwrap();
        let signature = URL_SAFE_NO_PAD.encode(&signature);
        assert!(any.keys[0].verify(message, &signature, Algorithm::RS256));
        assert!(!any.keys[0].verify(message, &signature, Algorithm::RS384));
        assert!(!pinned.keys[0].verify(message, &signature, Algorithm::RS256));
        assert!(!any.keys[0].verify("eyJhbGciOiJSUzI1NiJ9.e31", &signature, Algorithm::RS256));
        // Not base64url, or longer than any signature: refused, no panic.
        assert!(!any.keys[0].verify(message, "*", Algorithm::RS256));
        let huge = URL_SAFE_NO_PAD.encode([0u8; MAX_SIGNATURE_BYTES + 1]);
        assert!(!any.keys[0].verify(message, &huge, Algorithm::RS256));
    }

    /// Each algorithm is checked with its own hash and padding: a signature
    /// made with one verifies as that algorithm and as no other.
    #[test]
    fn every_algorithm_verifies_its_own_signatures_only() {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair, RsaKeyPair};

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let message = "eyJhbGciOiJub25lIn0.e30";
        let mut made: Vec<(Algorithm, String, String)> = Vec::new();

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let components: RsaPublicKeyComponents<Vec<u8>> = rsa.public_key().into();
        let rsa_jwk = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        });
        let paddings: [(Algorithm, &'static dyn sig::RsaEncoding); 6] = [
            (Algorithm::RS256, &sig::RSA_PKCS1_SHA256),
            (Algorithm::RS384, &sig::RSA_PKCS1_SHA384),
            (Algorithm::RS512, &sig::RSA_PKCS1_SHA512),
            (Algorithm::PS256, &sig::RSA_PSS_SHA256),
            (Algorithm::PS384, &sig::RSA_PSS_SHA384),
            (Algorithm::PS512, &sig::RSA_PSS_SHA512),
        ];
        for (alg, padding) in paddings {
            let mut signature = vec![0; rsa.public_modulus_len()];
            rsa.sign(padding, &rng, message.as_bytes(), &mut signature)
                .unwrap();
            made.push((alg, rsa_jwk.to_string(), URL_SAFE_NO_PAD.encode(&signature)));
        }

        let curves = [
            (
                Algorithm::ES256,
                "P-256",
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            ),
            (
                Algorithm::ES384,
                "P-384",
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            ),
        ];
        for (alg, curve, signing) in curves {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let half = (point.len() - 1) / 2;
            let jwk = serde_json::json!({
                "kty": "EC",
                "crv": curve,
                "x": URL_SAFE_NO_PAD.encode(&point[1..=half]),
                "y": URL_SAFE_NO_PAD.encode(&point[1 + half..]),
            });
            let signature = pair.sign(&rng, message.as_bytes()).unwrap();
            made.push((alg, jwk.to_string(), URL_SAFE_NO_PAD.encode(signature)));
        }

        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        let signature = pair.sign(message.as_bytes());
        made.push((
            Algorithm::EdDSA,
            jwk.to_string(),
            URL_SAFE_NO_PAD.encode(signature),
        ));

        let every_kind = [KeyKind::Rsa, KeyKind::P256, KeyKind::P384, KeyKind::Ed25519];
        for (alg, jwk, signature) in &made {
            let set = KeySet::from_json(format!(r#"{{"keys":[{jwk}]}}"#).as_bytes()).unwrap();
            for &(other, _) in every_kind.iter().flat_map(|kind| kind.algorithms()) {
                assert_eq!(
                    set.keys[0].verify(message, signature, other),
                    other == *alg,
                    "signed as {alg:?}, checked as {other:?}"
                );
            }
        }
    }

    /// RFC 7517 4.3: a key whose `key_ops` lists no "verify" is not for
    /// checking signatures, whatever else it may do.
    #[test]
    fn keys_whose_operations_lack_verify_are_skipped() {
        let with_ops = |ops: serde_json::Value| {
            let mut jwk = p256_jwk("e");
            jwk["key_ops"] = ops;
            jwks_of(&[&jwk])
        };
        let set = KeySet::from_json(with_ops(serde_json::json!(["verify"])).as_bytes()).unwrap();
        assert!(set.verifies(Algorithm::ES256));
        for ops in [
            serde_json::json!(["sign"]),
            serde_json::json!(["encrypt", "wrapKey"]),
            serde_json::json!([]),
        ] {
            assert!(
                matches!(
                    KeySet::from_json(with_ops(ops.clone()).as_bytes()),
                    Err(JwksError::NoUsableKeys)
                ),
                "key_ops {ops}"
            );
        }
    }

    /// RFC 7518 6.2.1.2-3: `x` and `y` each fill a coordinate. The same
    /// point split elsewhere (a byte of `y` moved into `x`, or all of it in
    /// `x`) is a malformed key: kept under its kid, verifying nothing.
    #[test]
    fn ec_points_split_off_their_coordinates_verify_nothing() {
        let good = p256_jwk("good");
        let coordinate = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(good[name].as_str().unwrap())
                .unwrap()
        };
        let (x, y) = (coordinate("x"), coordinate("y"));
        let moved = [[x.as_slice(), &y[..1]].concat(), y[1..].to_vec()];
        let all_in_x = [[x.as_slice(), &y].concat(), Vec::new()];
        for [x, y] in [moved, all_in_x] {
            let mut split = good.clone();
            split["kid"] = "split".into();
            split["x"] = URL_SAFE_NO_PAD.encode(&x).into();
            split["y"] = URL_SAFE_NO_PAD.encode(&y).into();
            let set = KeySet::from_json(jwks_of(&[&split, &good]).as_bytes()).unwrap();
            assert!(set.has_kid("split"), "{split}");
            assert!(set
                .candidates(Some("split"), Algorithm::ES256)
                .all(|k| !k.can_verify(Algorithm::ES256)));
            assert!(set
                .candidates(Some("good"), Algorithm::ES256)
                .all(|k| k.can_verify(Algorithm::ES256)));
        }
    }

    /// Each JWS algorithm a JWK's `alg` names pins the key to it: it
    /// verifies that algorithm only. An `alg` scopegate does not verify
    /// with (HMAC, an encryption algorithm) leaves the key unused.
    #[test]
    fn a_keys_alg_pins_it_to_that_algorithm() {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{
            EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING,
        };

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let components: RsaPublicKeyComponents<Vec<u8>> = rsa.public_key().into();
        let rsa = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        });
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let p384 = serde_json::json!({
            "kty": "EC",
            "crv": "P-384",
            "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
            "y": URL_SAFE_NO_PAD.encode(&point[49..]),
        });
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let ed25519 = serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        let p256 = p256_jwk("e");
        let pinned = |jwk: &serde_json::Value, alg: &str| {
            let mut jwk = jwk.clone();
            jwk["alg"] = alg.into();
            KeySet::from_json(jwks_of(&[&jwk]).as_bytes())
        };
        let cases = [
            (&rsa, "RS256", Algorithm::RS256),
            (&rsa, "RS384", Algorithm::RS384),
            (&rsa, "RS512", Algorithm::RS512),
            (&rsa, "PS256", Algorithm::PS256),
            (&rsa, "PS384", Algorithm::PS384),
            (&rsa, "PS512", Algorithm::PS512),
            (&p256, "ES256", Algorithm::ES256),
            (&p384, "ES384", Algorithm::ES384),
            (&ed25519, "EdDSA", Algorithm::EdDSA),
        ];
        for (jwk, name, alg) in cases {
            let set = pinned(jwk, name).unwrap();
            let verifying: Vec<Algorithm> = set.keys[0].verifiers.iter().map(|(a, _)| *a).collect();
            assert_eq!(verifying, [alg], "{name}");
        }
        for other in ["HS256", "RSA-OAEP"] {
            assert!(
                matches!(pinned(&rsa, other), Err(JwksError::NoUsableKeys)),
                "{other}"
            );
        }
    }

    /// A new set holds an old one only when each old key is still there
    /// under its `kid` and for every algorithm it verified: a key withdrawn,
    /// renamed, or pinned to another algorithm is not held.
    #[test]
    fn a_key_set_holds_another_only_with_each_of_its_keys_as_it_was() {
        let (a, b) = (p256_jwk("a"), p256_jwk("b"));
        let set =
            |keys: &[&serde_json::Value]| KeySet::from_json(jwks_of(keys).as_bytes()).unwrap();
        let both = set(&[&a, &b]);
        let only_a = set(&[&a]);
        assert!(both.holds_every_key_of(&both));
        assert!(both.holds_every_key_of(&only_a));
        assert!(!only_a.holds_every_key_of(&both), "b withdrawn");
        let mut renamed = a.clone();
        renamed["kid"] = "renamed".into();
        assert!(!set(&[&renamed, &b]).holds_every_key_of(&only_a), "renamed");
        let mut repinned = a.clone();
        repinned["alg"] = "ES384".into();
        assert!(
            !set(&[&repinned, &b]).holds_every_key_of(&only_a),
            "repinned"
        );
    }

    /// Tokens verified before a refresh are verified again (the generation
    /// moves on) once a key they may have used is withdrawn, and only then:
    /// not when the same set, or a larger one, comes back.
    #[tokio::test]
    async fn a_withdrawn_key_moves_the_generation_on() {
        let (a, b, c) = (p256_jwk("a"), p256_jwk("b"), p256_jwk("c"));
        let documents = [
            jwks_of(&[&a, &b]),
            jwks_of(&[&a, &b]),
            jwks_of(&[&a, &b, &c]),
            jwks_of(&[&a, &c]),
        ];
        let answers = documents.iter().map(|d| answer("200 OK", "", d)).collect();
        let (uri, server) = serve(answers).await;
        let keys = remote_keys(Some(uri), Duration::ZERO, Vec::new());
        let metrics = Metrics::new().unwrap();
        for (fetch, generation) in [(1, 0), (2, 0), (3, 0), (4, 1)] {
            assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Success);
            assert_eq!(keys.generation(), generation, "after fetch {fetch}");
        }
        server.await.unwrap();
    }

    /// A token no key verifies refetches the set at most once a cooldown;
    /// without one, it refetches.
    #[tokio::test]
    async fn an_unmatched_token_refetches_at_most_once_a_cooldown() {
        let body = jwks_of(&[&p256_jwk("a")]);
        let metrics = Arc::new(Metrics::new().unwrap());
        for (cooldown, fetches) in [(Duration::from_secs(3600), 1), (Duration::ZERO, 3)] {
            let answers = vec![answer("200 OK", "", &body); fetches];
            let (uri, server) = serve(answers).await;
            let keys = remote_keys(Some(uri), cooldown, Vec::new());
            assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Success);
            keys.refetch_for_unmatched_token(&metrics).await;
            keys.refetch_for_unmatched_token(&metrics).await;
            assert_eq!(keys.fetch_attempts(), fetches as u64, "{cooldown:?}");
            assert!(!keys.last_fetch_failed(), "{cooldown:?}");
            server.await.unwrap();
        }
    }

    /// A fetch that fails (an error status, even with a key set as its
    /// body; a set of no usable key) keeps the keys in force and is reported
    /// until a fetch succeeds.
    #[tokio::test]
    async fn a_failed_fetch_keeps_the_keys_and_is_reported() {
        let good = jwks_of(&[&p256_jwk("a")]);
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        let answers = vec![
            answer("200 OK", "", &good),
            answer("500 Internal Server Error", "", &good),
            answer("200 OK", "", oct),
            answer("200 OK", "", &good),
        ];
        let (uri, server) = serve(answers).await;
        let keys = remote_keys(Some(uri), Duration::ZERO, Vec::new());
        let metrics = Metrics::new().unwrap();
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Success);
        assert!(!keys.last_fetch_failed());
        let first = keys.current().unwrap();
        for failure in [FetchResult::HttpError, FetchResult::Invalid] {
            assert_eq!(keys.refresh(&metrics).await.0, failure);
            assert!(keys.last_fetch_failed(), "{failure:?}");
            assert!(Arc::ptr_eq(&keys.current().unwrap(), &first), "{failure:?}");
        }
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Success);
        assert!(!keys.last_fetch_failed());
        assert!(!Arc::ptr_eq(&keys.current().unwrap(), &first));
        server.await.unwrap();
    }

    /// A fetched set with no key for any of the issuer's algorithms is
    /// refused (it would refuse every token); one with such a key is taken.
    #[tokio::test]
    async fn a_set_without_keys_for_the_issuers_algorithms_is_refused() {
        let body = jwks_of(&[&p256_jwk("a")]);
        let answers = vec![answer("200 OK", "", &body), answer("200 OK", "", &body)];
        let (uri, server) = serve(answers).await;
        let keys = remote_keys(Some(uri), Duration::ZERO, vec![Algorithm::RS256]);
        let metrics = Metrics::new().unwrap();
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Invalid);
        assert!(!keys.is_loaded());
        keys.set_algorithms(vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Success);
        assert!(keys.is_loaded());
        server.await.unwrap();
    }

    /// A key set of any size up to 1 MiB ([`MAX_JWKS_BYTES`]) is read; a
    /// longer answer is refused, not read to its end.
    #[tokio::test]
    async fn answers_are_read_up_to_the_size_limit() {
        let document = |size: usize| {
            let mut document = jwks_of(&[&p256_jwk("a")]);
            document.pop();
            document.push_str(r#","padding":""#);
            let fill = size - document.len() - 2;
            document.push_str(&"a".repeat(fill));
            document.push_str(r#""}"#);
            assert_eq!(document.len(), size);
            document
        };
        let mib = 1024 * 1024;
        let answers = vec![
            answer("200 OK", "", &document(mib)),
            answer("200 OK", "", &document(mib + 1)),
        ];
        let (uri, server) = serve(answers).await;
        let keys = remote_keys(Some(uri), Duration::ZERO, Vec::new());
        let metrics = Metrics::new().unwrap();
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Success);
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::Invalid);
        server.await.unwrap();
    }

    /// After each failure the wait doubles, up to 30 s; a success resets it.
    #[test]
    fn failures_back_off_doubling_up_to_thirty_seconds() {
        let mut backoff = Duration::from_millis(250);
        let mut waits = Vec::new();
        for _ in 0..10 {
            next_delay(FetchResult::Timeout, Duration::ZERO, &mut backoff);
            waits.push(backoff.as_millis());
        }
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        next_delay(FetchResult::Success, MIN_REFRESH, &mut backoff);
        assert_eq!(backoff, Duration::from_millis(250));
    }

    /// A refresher whose fetches fail keeps retrying, backing off (a handful
    /// of attempts in ten seconds, not hundreds), until it is shut down.
    #[tokio::test(start_paused = true)]
    async fn a_refresher_retries_with_backoff_until_shut_down() {
        // No URL: every fetch fails at once, without the network.
        let keys = remote_keys(None, Duration::ZERO, Vec::new());
        let metrics = Arc::new(Metrics::new().unwrap());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let refresher = tokio::spawn(run_refresher(Arc::clone(&keys), metrics, shutdown));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let attempts = keys.fetch_attempts();
        assert!((4..=8).contains(&attempts), "{attempts} attempts");
        assert!(!refresher.is_finished());
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(60), refresher)
            .await
            .unwrap()
            .unwrap();
    }

    /// Keys a reload kept are not fetched again at once, but once they are
    /// due; from then on their refresher goes on as any other (here,
    /// retrying a provider that fails).
    #[tokio::test(start_paused = true)]
    async fn a_refresher_for_kept_keys_fetches_once_they_are_due_and_goes_on() {
        // No URL: every fetch fails at once, without the network.
        let keys = remote_keys(None, Duration::ZERO, Vec::new());
        let set = KeySet::from_json(jwks_of(&[&p256_jwk("a")]).as_bytes()).unwrap();
        keys.current.store(Some(Arc::new(set)));
        let due = Instant::now() + Duration::from_secs(30);
        *keys.remote.as_ref().unwrap().refresh_due.lock().unwrap() = Some(due);
        let metrics = Arc::new(Metrics::new().unwrap());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let refresher = tokio::spawn(run_refresher(Arc::clone(&keys), metrics, shutdown));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(keys.fetch_attempts(), 0, "fetched before they were due");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let attempts = keys.fetch_attempts();
        assert!(attempts >= 2, "{attempts} attempts once due");
        assert!(!refresher.is_finished());
        stop.send(true).unwrap();
        refresher.await.unwrap();
    }

    /// A `jwks_uri` from the config stands: discovery neither replaces it
    /// nor, naming none, makes the issuer's keys unneeded.
    #[test]
    fn discovery_does_not_override_a_configured_jwks_uri() {
        let configured: Uri = "https://idp.example/keys".parse().unwrap();
        let keys = remote_keys(Some(configured.clone()), Duration::ZERO, Vec::new());
        keys.set_discovered_uri(Some("https://elsewhere.example/keys".parse().unwrap()));
        keys.set_discovered_uri(None);
        let remote = keys.remote.as_ref().unwrap();
        assert_eq!(remote.uri.load_full().as_deref(), Some(&configured));
        assert!(keys.publishes_keys());

        let discovered: Uri = "https://idp.example/discovered".parse().unwrap();
        let keys = remote_keys(None, Duration::ZERO, Vec::new());
        assert!(keys.awaits_discovered_uri());
        keys.set_discovered_uri(Some(discovered.clone()));
        keys.set_discovered_uri(Some(configured));
        let remote = keys.remote.as_ref().unwrap();
        assert_eq!(remote.uri.load_full().as_deref(), Some(&discovered));
    }

    /// A successful fetch keeps its keys fresh until the refresh it
    /// scheduled (a refresher a reload starts for them waits until then);
    /// a failed fetch does not move that time, and keys never loaded are
    /// never fresh, whatever time is noted.
    #[tokio::test]
    async fn keys_stay_fresh_until_the_refresh_their_fetch_scheduled() {
        let body = jwks_of(&[&p256_jwk("a")]);
        let answers = vec![
            answer("200 OK", "Cache-Control: max-age=600\r\n", &body),
            answer("500 Internal Server Error", "", &body),
        ];
        let (uri, server) = serve(answers).await;
        let keys = remote_keys(Some(uri), Duration::ZERO, Vec::new());
        let metrics = Metrics::new().unwrap();
        assert_eq!(keys.fresh_for(), None, "nothing fetched yet");
        let next = Duration::from_secs(600);
        assert_eq!(keys.refresh(&metrics).await, (FetchResult::Success, next));
        let fresh = keys.fresh_for().expect("fresh after a successful fetch");
        let soon = next - Duration::from_secs(60);
        assert!(soon < fresh && fresh <= next, "{fresh:?}");
        assert_eq!(keys.refresh(&metrics).await.0, FetchResult::HttpError);
        let still = keys.fresh_for().expect("a failed fetch leaves them fresh");
        assert!(soon < still && still <= fresh, "{still:?}");
        server.await.unwrap();

        let unloaded = remote_keys(None, Duration::ZERO, Vec::new());
        let remote = unloaded.remote.as_ref().unwrap();
        *remote.refresh_due.lock().unwrap() = Some(Instant::now() + next);
        assert_eq!(unloaded.fresh_for(), None, "no keys loaded");
    }

    /// RFC 7517 4.7: a key whose `x5c` certificate holds another key says
    /// two things about itself: it is kept under its `kid` (a token naming
    /// it is a bad signature) but verifies nothing.
    #[test]
    fn a_key_its_certificate_contradicts_verifies_nothing() {
        let rfc: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/vectors/rfc7517/appendix_b.json"))
                .unwrap();
        let mut contradicted = p256_jwk("contradicted");
        contradicted["x5c"] = rfc["x5c"].clone();
        let good = p256_jwk("good");
        let set = KeySet::from_json(jwks_of(&[&contradicted, &good]).as_bytes()).unwrap();
        assert!(set.has_kid("contradicted"));
        assert!(!set.keys[0].can_verify(Algorithm::ES256));
        assert!(set.keys[1].can_verify(Algorithm::ES256));
        assert_eq!(set.unusable_kids(), ["contradicted"]);
        // The RFC's own key agrees with its certificate, and verifies.
        let set = KeySet::from_json(jwks_of(&[&rfc]).as_bytes()).unwrap();
        assert!(set.verifies(Algorithm::RS256));
        assert!(set.unusable_kids().is_empty());
    }

    /// An issuer's keys are ready once loaded, or once discovery finds it
    /// publishes none (its tokens are then only introspected); until then
    /// they are not, and a configured `jwks_uri` awaits no discovery.
    #[test]
    fn keys_are_ready_once_loaded_or_known_to_be_unneeded() {
        let pending = remote_keys(None, Duration::ZERO, Vec::new());
        assert!(!pending.is_ready());
        assert!(pending.publishes_keys() && pending.awaits_discovered_uri());
        assert!(!pending.has_uri());
        pending.set_discovered_uri(None);
        assert!(pending.is_ready() && !pending.publishes_keys());

        let configured: Uri = "https://idp.example/keys".parse().unwrap();
        let remote = remote_keys(Some(configured), Duration::ZERO, Vec::new());
        assert!(remote.has_uri() && !remote.awaits_discovered_uri());
        assert!(!remote.is_ready());
        let set = KeySet::from_json(jwks_of(&[&p256_jwk("a")]).as_bytes()).unwrap();
        remote.current.store(Some(Arc::new(set)));
        assert!(remote.is_ready() && remote.publishes_keys());

        let absent = IssuerKeys::absent(Arc::from("t"));
        assert!(absent.is_ready() && !absent.publishes_keys());
        assert!(!absent.has_uri() && !absent.awaits_discovered_uri());
    }

    /// A zero cooldown holds no refetch back, even one that follows a fetch
    /// within the clock's resolution; a cooldown holds one back while it
    /// lasts.
    #[test]
    fn a_zero_cooldown_never_holds_a_refetch_back() {
        let none = remote_keys(None, Duration::ZERO, Vec::new());
        let remote = none.remote.as_ref().unwrap();
        assert!(!remote.in_cooldown(), "no fetch yet");
        // A start the clock cannot tell from now (`elapsed` is then zero).
        *remote.last_attempt.lock().unwrap() = Some(Instant::now() + Duration::from_secs(60));
        assert!(!remote.in_cooldown());

        let minute = remote_keys(None, Duration::from_secs(60), Vec::new());
        let remote = minute.remote.as_ref().unwrap();
        *remote.last_attempt.lock().unwrap() = Some(Instant::now());
        assert!(remote.in_cooldown());
    }
}
