//! Signing keys of the built-in authorization server (and the demo): loading
//! PKCS#8 PEM files, generating keys, publishing the public JWKS, and signing
//! RFC 9068 access tokens.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

/// A private signing key with its public JWK.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    signer: Signer,
    public_jwk: Value,
    jwks: String,
}

/// A private key parsed once, at load (a parse per signature would check an
/// RSA key anew each time, some milliseconds).
enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rsa(
        aws_lc_rs::rsa::KeyPair,
        &'static dyn aws_lc_rs::signature::RsaEncoding,
    ),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh ES256 (P-256) key.
    pub fn generate(kid: &str) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "key generation failed".to_owned())?;
        Self::from_pkcs8(kid, Algorithm::ES256, pkcs8.as_ref())
    }

    /// Loads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(kid: &str, alg: Algorithm, pem: &[u8]) -> Result<Self, String> {
        let key = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| format!("bad PEM: {e}"))?
            .ok_or_else(|| "no private key in the PEM file".to_owned())?;
        match key {
            rustls_pki_types::PrivateKeyDer::Pkcs8(der) => {
                Self::from_pkcs8(kid, alg, der.secret_pkcs8_der())
            }
            _ => Err("the key must be PKCS#8 (`-----BEGIN PRIVATE KEY-----`); convert it with `openssl pkcs8 -topk8 -nocrypt`".to_owned()),
        }
    }

    /// From PKCS#8 DER.
    pub fn from_pkcs8(kid: &str, alg: Algorithm, der: &[u8]) -> Result<Self, String> {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let (signer, public_jwk) = match alg {
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| "not a P-256 PKCS#8 key".to_owned())?;
                let (x, y) = match pair.public_key().as_ref() {
                    [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err("unexpected EC public key encoding".to_owned()),
                };
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
                (Signer::Es256(pair), jwk)
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(der)
                    .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
                    .map_err(|_| "not an Ed25519 PKCS#8 key".to_owned())?;
                let jwk =
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
                (Signer::EdDsa(pair), jwk)
            }
            Algorithm::RS256 | Algorithm::PS256 => {
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
                    .map_err(|_| "not an RSA PKCS#8 key (2048 bits or more)".to_owned())?;
                let public = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(
                    pair.public_key(),
                );
                let jwk = json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)});
                let padding: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    if alg == Algorithm::PS256 {
                        &aws_lc_rs::signature::RSA_PSS_SHA256
                    } else {
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256
                    };
                (Signer::Rsa(pair, padding), jwk)
            }
            other => return Err(format!("unsupported signing algorithm {other:?}")),
        };
        let mut public_jwk = public_jwk;
        public_jwk["kid"] = kid.into();
        public_jwk["use"] = "sig".into();
        public_jwk["alg"] = algorithm_name(alg).into();
        let jwks = json!({ "keys": [public_jwk.clone()] }).to_string();
        let key = Self {
            kid: kid.to_owned(),
            alg,
            signer,
            public_jwk,
            jwks,
        };
        key.check_signs()?;
        Ok(key)
    }

    /// Signs a probe and verifies it with the published public key, so that
    /// a key that cannot sign, or whose JWK is not its own, fails at load
    /// rather than on every token request.
    fn check_signs(&self) -> Result<(), String> {
        let probe = self
            .sign_typed("probe", &json!({ "probe": true }))
            .map_err(|e| format!("the key cannot sign {}: {e}", algorithm_name(self.alg)))?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(self.public_jwk.clone())
            .map_err(|e| format!("public JWK: {e}"))?;
        let decoding =
            jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("public JWK: {e}"))?;
        let mut validation = jsonwebtoken::Validation::new(self.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(&probe, &decoding, &validation)
            .map(drop)
            .map_err(|e| format!("a signature of the key does not verify with its public JWK: {e}"))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// A JWKS document holding only this key.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Signs claims as an RFC 9068 access token (`typ: at+jwt`).
    pub fn mint(&self, claims: &Value) -> Result<String, String> {
        self.sign_typed("at+jwt", claims)
    }

    /// Signs claims with an explicit `typ`, so tokens of different purposes
    /// can never be mistaken for each other.
    pub fn sign_typed(&self, typ: &str, claims: &Value) -> Result<String, String> {
        let header = json!({ "typ": typ, "alg": algorithm_name(self.alg), "kid": self.kid });
        let mut jws = URL_SAFE_NO_PAD.encode(header.to_string());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jws);
        let failed = |_| format!("signing with {} failed", algorithm_name(self.alg));
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Es256(pair) => pair
                .sign(&rng, jws.as_bytes())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            Signer::EdDsa(pair) => pair.sign(jws.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(pair, padding) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(*padding, &rng, jws.as_bytes(), &mut signature)
                    .map_err(failed)?;
                signature
            }
        };
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        Ok(jws)
    }

    /// [`Self::sign_typed`] with the first of `keys`, on the blocking pool
    /// for RSA (milliseconds of CPU, which would stall every connection of
    /// the worker), at most as many at once as `places` allows (a wait for
    /// a place ends with its request; a signature begun runs to its end);
    /// ES256 and EdDSA take tens of microseconds and sign here.
    pub async fn sign_with_first(
        keys: &std::sync::Arc<Vec<SigningKey>>,
        places: &std::sync::Arc<tokio::sync::Semaphore>,
        typ: &'static str,
        claims: Value,
    ) -> Result<String, String> {
        let first = keys.first().ok_or_else(|| "no signing key".to_owned())?;
        if !matches!(first.signer, Signer::Rsa(..)) {
            return first.sign_typed(typ, &claims);
        }
        let place = std::sync::Arc::clone(places)
            .acquire_owned()
            .await
            .map_err(|_| "signing is shut".to_owned())?;
        let keys = std::sync::Arc::clone(keys);
        tokio::task::spawn_blocking(move || {
            // Held until the signature is made.
            let _place = place;
            keys.first()
                .ok_or_else(|| "no signing key".to_owned())
                .and_then(|key| key.sign_typed(typ, &claims))
        })
        .await
        .map_err(|e| format!("signing stopped: {e}"))?
    }

    /// Places for RSA signatures at once: one per CPU.
    pub fn signing_places() -> std::sync::Arc<tokio::sync::Semaphore> {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        std::sync::Arc::new(tokio::sync::Semaphore::new(cpus))
    }
}

/// The JOSE name of an algorithm.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unknown",
    }
}

/// A JWKS document with every key's public part.
pub fn jwks_document(keys: &[SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>() }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};

    fn rsa_pkcs8() -> Vec<u8> {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der: Pkcs8V1Der<'static> = pair.as_der().unwrap();
        der.as_ref().to_vec()
    }

    /// An RSA signature (milliseconds of CPU) is made off the runtime: on a
    /// one-thread runtime, another task runs while it is made. An ES256 one
    /// (tens of microseconds) is made in place.
    #[test]
    fn rsa_signatures_leave_the_runtime_free() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rsa = SigningKey::from_pkcs8("r", Algorithm::RS256, &rsa_pkcs8()).unwrap();
        let es = SigningKey::generate("e").unwrap();
        runtime.block_on(async {
            let ticks = std::sync::Arc::new(AtomicUsize::new(0));
            let counted = std::sync::Arc::clone(&ticks);
            let spinner = tokio::spawn(async move {
                loop {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            });
            tokio::task::yield_now().await;
            for (key, others_ran) in [(rsa, true), (es, false)] {
                let keys = std::sync::Arc::new(vec![key]);
                let before = ticks.load(Ordering::SeqCst);
                let places = SigningKey::signing_places();
                let token =
                    SigningKey::sign_with_first(&keys, &places, "at+jwt", json!({"sub": "a"}))
                        .await
                        .unwrap();
                assert_eq!(token.split('.').count(), 3);
                assert_eq!(
                    ticks.load(Ordering::SeqCst) > before,
                    others_ran,
                    "{:?}",
                    keys[0].algorithm()
                );
            }
            spinner.abort();
        });
    }

    /// An RSA signature takes a place first (places closed: refused at
    /// once, not begun); an ES256 one needs none.
    #[tokio::test]
    async fn rsa_signatures_take_a_place() {
        use futures_util::FutureExt;
        let rsa = std::sync::Arc::new(vec![SigningKey::from_pkcs8(
            "r",
            Algorithm::RS256,
            &rsa_pkcs8(),
        )
        .unwrap()]);
        let es = std::sync::Arc::new(vec![SigningKey::generate("e").unwrap()]);
        let none_free = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        none_free.close();
        let refused =
            SigningKey::sign_with_first(&rsa, &none_free, "at+jwt", json!({})).now_or_never();
        assert!(matches!(refused, Some(Err(_))), "signed without a place");
        let signed =
            SigningKey::sign_with_first(&es, &none_free, "at+jwt", json!({})).now_or_never();
        assert!(matches!(signed, Some(Ok(_))), "{signed:?}");
        let one = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        assert!(SigningKey::sign_with_first(&rsa, &one, "at+jwt", json!({}))
            .await
            .is_ok());
        assert_eq!(one.available_permits(), 1, "the place was not given back");
    }

    /// Every supported algorithm signs tokens that verify with its own
    /// published key; RSA keys come as PKCS#8.
    #[test]
    fn every_algorithm_signs_what_its_public_key_verifies() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let rsa = rsa_pkcs8();
        for (alg, der) in [
            (Algorithm::ES256, ec.as_ref()),
            (Algorithm::EdDSA, ed.as_ref()),
            (Algorithm::RS256, &rsa[..]),
            (Algorithm::PS256, &rsa[..]),
        ] {
            let key = SigningKey::from_pkcs8("k", alg, der).unwrap();
            let token = key.mint(&json!({ "sub": "s" })).unwrap();
            let jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            let claims = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
            assert_eq!(claims.claims["sub"], "s", "{alg:?}");
            assert_eq!(claims.header.typ.as_deref(), Some("at+jwt"), "{alg:?}");
        }
    }

    /// A key of another algorithm than the one configured is refused at load.
    #[test]
    fn a_key_of_another_algorithm_is_refused() {
        let rsa = rsa_pkcs8();
        let error = SigningKey::from_pkcs8("k", Algorithm::ES256, &rsa).unwrap_err();
        assert!(error.contains("P-256"), "{error}");
    }
}
