//! A JWK's X.509 members (RFC 7517 4.7-4.9): the certificate in `x5c` and
//! its `x5t` / `x5t#S256` thumbprints must describe the key the JWK's own
//! members give. A key set that says two things about one key is broken or
//! tampered with, so such a key verifies nothing here, as go-jose (under
//! Kubernetes and Ory Oathkeeper) refuses it too.
//!
//! Only the first certificate is read: it is the one holding the key. Its
//! chain, validity dates and issuer are not checked, since identity providers
//! commonly publish self-signed or long-expired certificates beside keys that
//! are still in force.

use aws_lc_rs::digest::{self, Algorithm as DigestAlgorithm};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::DecodingKeyKind;

use crate::auth::jwks::unsigned;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// DER contents of the object identifiers a certificate's key may carry.
mod oid {
    /// rsaEncryption, 1.2.840.113549.1.1.1.
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// id-RSASSA-PSS, 1.2.840.113549.1.1.10: an RSA key restricted to PSS
    /// (RFC 4055 1.2), as a PS256 key's certificate may say.
    pub const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    /// id-ecPublicKey, 1.2.840.10045.2.1.
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// prime256v1 (P-256), 1.2.840.10045.3.1.7.
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// secp384r1 (P-384), 1.3.132.0.34.
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// id-Ed25519, 1.3.101.112.
    pub const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
}

/// Whether the JWK's X.509 members contradict `public_key`, the key its
/// other members give: a first `x5c` certificate that is not base64 DER X.509
/// or holds another key, or a thumbprint that is not that certificate's.
/// A JWK without `x5c` (or with an empty one) has nothing to contradict; a
/// lone thumbprint names a certificate not at hand and is not checked.
pub fn contradicts_key(jwk: &Jwk, public_key: &DecodingKeyKind) -> bool {
    let Some(first) = jwk
        .common
        .x509_chain
        .as_ref()
        .and_then(|chain| chain.first())
    else {
        return false;
    };
    // RFC 7517 4.7: base64, not base64url.
    let Ok(der) = STANDARD.decode(first) else {
        return true;
    };
    let thumbprints = [
        (
            &jwk.common.x509_sha1_fingerprint,
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
        ),
        (&jwk.common.x509_sha256_fingerprint, &digest::SHA256),
    ];
    if thumbprints.into_iter().any(|(thumbprint, algorithm)| {
        thumbprint
            .as_deref()
            .is_some_and(|t| !is_thumbprint_of(t, &der, algorithm))
    }) {
        return true;
    }
    match X509Certificate::from_der(&der) {
        Ok(([], certificate)) => !holds_key(certificate.public_key(), &jwk.algorithm, public_key),
        _ => true,
    }
}

/// RFC 7517 4.8-4.9: a base64url digest of the certificate's DER.
fn is_thumbprint_of(thumbprint: &str, der: &[u8], algorithm: &'static DigestAlgorithm) -> bool {
    URL_SAFE_NO_PAD
        .decode(thumbprint)
        .is_ok_and(|t| t == digest::digest(algorithm, der).as_ref())
}

/// Whether the certificate's key is of the JWK's type (and curve) and has
/// the same public numbers.
fn holds_key(
    spki: &SubjectPublicKeyInfo<'_>,
    parameters: &AlgorithmParameters,
    public_key: &DecodingKeyKind,
) -> bool {
    let algorithm = spki.algorithm.algorithm.as_bytes();
    let point = spki.subject_public_key.data.as_ref();
    match (parameters, public_key) {
        (AlgorithmParameters::RSA(_), DecodingKeyKind::RsaModulusExponent { n, e }) => {
            // Both carry RSAPublicKey (RFC 4055 1.2); PSS parameters, if
            // any, only narrow what the key may sign with.
            (algorithm == oid::RSA_ENCRYPTION || algorithm == oid::RSASSA_PSS)
                && match RSAPublicKey::from_der(point) {
                    Ok(([], rsa)) => {
                        unsigned(rsa.modulus) == unsigned(n)
                            && unsigned(rsa.exponent) == unsigned(e)
                    }
                    _ => false,
                }
        }
        // jsonwebtoken holds an EC key as the uncompressed point 04 || x || y.
        (AlgorithmParameters::EllipticCurve(ec), DecodingKeyKind::SecretOrDer(uncompressed)) => {
            let curve = match ec.curve {
                EllipticCurve::P256 => oid::P256,
                EllipticCurve::P384 => oid::P384,
                _ => return false,
            };
            let named_curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|o| o.as_bytes() == curve);
            algorithm == oid::EC_PUBLIC_KEY && named_curve && same_point(point, uncompressed)
        }
        (AlgorithmParameters::OctetKeyPair(okp), DecodingKeyKind::SecretOrDer(x)) => {
            okp.curve == EllipticCurve::Ed25519
                && algorithm == oid::ED25519
                && point == x.as_slice()
        }
        _ => false,
    }
}

/// Whether a certificate's EC point is the JWK's, `04 || x || y`. A
/// certificate holds it so (SEC 1 2.3.3) or compressed to `x` and the parity
/// of `y` (`02` even, `03` odd), which name the same point of the curve:
/// of the two points with that `x`, one has an even `y` and one an odd.
fn same_point(point: &[u8], uncompressed: &[u8]) -> bool {
    match (point.split_first(), uncompressed.split_first()) {
        (Some((&tag @ (0x02 | 0x03), x)), Some((0x04, xy))) if xy.len() == 2 * x.len() => {
            let (jwk_x, y) = xy.split_at(x.len());
            x == jwk_x && y.last().is_some_and(|last| last & 1 == tag & 1)
        }
        _ => point == uncompressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::DecodingKey;
    use serde_json::{json, Value};

    /// RFC 7517 Appendix B: an RSA key with the certificate holding it.
    const RFC7517_APPENDIX_B: &str = include_str!("../../tests/vectors/rfc7517/appendix_b.json");

    fn contradicts(jwk: &Value) -> bool {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        contradicts_key(&jwk, key.kind())
    }

    fn b64url(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A key of `algorithm`, its JWK (from the key's own raw public bytes,
    /// not from a certificate) and the DER of a certificate holding it.
    fn certified(algorithm: &'static rcgen::SignatureAlgorithm) -> (Value, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let raw = key.public_key_raw();
        let jwk = if algorithm == &rcgen::PKCS_ED25519 {
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)})
        } else {
            let (crv, size) = if algorithm == &rcgen::PKCS_ECDSA_P256_SHA256 {
                ("P-256", 32)
            } else {
                ("P-384", 48)
            };
            let (x, y) = raw[1..].split_at(size);
            json!({"kty": "EC", "crv": crv, "x": b64url(x), "y": b64url(y)})
        };
        let params = rcgen::CertificateParams::new(vec!["keys.example".into()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        (jwk, der)
    }

    fn with_x5c(mut jwk: Value, der: &[u8]) -> Value {
        jwk["x5c"] = json!([STANDARD.encode(der)]);
        jwk
    }

    const KINDS: [&rcgen::SignatureAlgorithm; 3] = [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ];

    #[test]
    fn the_rfcs_own_example_agrees_with_its_certificate() {
        let jwk: Value = serde_json::from_str(RFC7517_APPENDIX_B).unwrap();
        assert!(!contradicts(&jwk));
        // The same certificate beside another modulus, or another exponent.
        let mut other = jwk.clone();
        let mut n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        n[100] ^= 1;
        other["n"] = b64url(&n).into();
        assert!(contradicts(&other));
        let mut other = jwk.clone();
        other["e"] = "AQAD".into();
        assert!(contradicts(&other));
        // The certificate's key marked for RSASSA-PSS only is the same key;
        // under an identifier of no key type (sha256WithRSAEncryption, of
        // the same length) it is none.
        let der = STANDARD.decode(jwk["x5c"][0].as_str().unwrap()).unwrap();
        let spki_oid = [oid::RSA_ENCRYPTION, &[0x05, 0x00]].concat();
        let at = der
            .windows(spki_oid.len())
            .position(|w| w == spki_oid.as_slice())
            .unwrap();
        for (last, agrees) in [(0x0a, true), (0x0b, false)] {
            let mut relabelled = der.clone();
            relabelled[at + oid::RSA_ENCRYPTION.len() - 1] = last;
            assert_eq!(
                contradicts(&with_x5c(jwk.clone(), &relabelled)),
                !agrees,
                "1.2.840.113549.1.1.{last}"
            );
        }
        // A leading zero byte on the modulus is the same number.
        let mut padded = jwk.clone();
        n[100] ^= 1;
        padded["n"] = b64url(&[&[0][..], &n].concat()).into();
        assert!(!contradicts(&padded));
    }

    #[test]
    fn a_certificate_agrees_only_with_its_own_key() {
        for kind in KINDS {
            let (jwk, der) = certified(kind);
            assert!(!contradicts(&with_x5c(jwk.clone(), &der)), "{jwk}");
            // Another key of the same type and curve.
            let (_, other) = certified(kind);
            assert!(contradicts(&with_x5c(jwk.clone(), &other)), "{jwk}");
            // A key of every other type or curve.
            for other_kind in KINDS.into_iter().filter(|k| *k != kind) {
                let (_, other) = certified(other_kind);
                assert!(contradicts(&with_x5c(jwk.clone(), &other)), "{jwk}");
            }
            let rsa: Value = serde_json::from_str(RFC7517_APPENDIX_B).unwrap();
            let rsa_der = STANDARD.decode(rsa["x5c"][0].as_str().unwrap()).unwrap();
            assert!(contradicts(&with_x5c(jwk.clone(), &rsa_der)), "{jwk}");
            // And the other way round: an RSA key with this certificate.
            assert!(contradicts(&with_x5c(rsa, &der)), "{jwk}");
        }
    }

    #[test]
    fn only_the_first_certificate_holds_the_key() {
        let (jwk, der) = certified(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, issuer) = certified(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut chain = jwk.clone();
        chain["x5c"] = json!([STANDARD.encode(&der), STANDARD.encode(&issuer)]);
        assert!(!contradicts(&chain));
        chain["x5c"] = json!([STANDARD.encode(&issuer), STANDARD.encode(&der)]);
        assert!(contradicts(&chain));
    }

    #[test]
    fn a_certificate_that_does_not_read_contradicts_the_key() {
        let (jwk, der) = certified(&rcgen::PKCS_ECDSA_P256_SHA256);
        let encoded = STANDARD.encode(&der);
        let unreadable = [
            // base64url, which RFC 7517 4.7 rules out for x5c.
            URL_SAFE_NO_PAD.encode(&der),
            "not base64!".to_owned(),
            STANDARD.encode(&der[..der.len() - 1]),
            // Bytes past the certificate.
            STANDARD.encode([&der[..], &[0]].concat()),
            STANDARD.encode(b"0"),
            String::new(),
        ];
        for x5c in unreadable {
            if x5c == encoded {
                continue;
            }
            let mut bad = jwk.clone();
            bad["x5c"] = json!([x5c]);
            assert!(contradicts(&bad), "{x5c}");
        }
    }

    #[test]
    fn without_a_certificate_there_is_nothing_to_contradict() {
        let (jwk, der) = certified(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(!contradicts(&jwk));
        let mut empty = jwk.clone();
        empty["x5c"] = json!([]);
        assert!(!contradicts(&empty));
        // A lone thumbprint names a certificate that is not at hand.
        let mut lone = jwk.clone();
        lone["x5t#S256"] = b64url(&[0; 32]).into();
        lone["x5t"] = b64url(&[0; 20]).into();
        assert!(!contradicts(&lone));
        assert!(!contradicts(&with_x5c(jwk, &der)));
    }

    /// A certificate may hold an EC key compressed (SEC 1 2.3.3): `x` and
    /// the parity of `y`, the JWK's point only with `y`'s parity.
    #[test]
    fn a_compressed_point_is_the_same_key() {
        struct RawKey(Vec<u8>, &'static rcgen::SignatureAlgorithm);
        impl rcgen::PublicKeyData for RawKey {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                self.1
            }
        }
        let signer = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca.example".into()]).unwrap();
        let issuer = rcgen::Issuer::new(ca, signer);
        let holding = |kind, point: Vec<u8>| {
            rcgen::CertificateParams::new(vec!["keys.example".into()])
                .unwrap()
                .signed_by(&RawKey(point, kind), &issuer)
                .unwrap()
                .der()
                .to_vec()
        };
        for kind in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let (jwk, der) = certified(kind);
            let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap());
            let (x, y) = (coordinate("x").unwrap(), coordinate("y").unwrap());
            let odd = y.last().unwrap() & 1;
            let compressed = |tag: u8, x: &[u8]| [&[tag][..], x].concat();
            // Uncompressed, as rcgen writes it, and through the same path.
            assert!(!contradicts(&with_x5c(jwk.clone(), &der)), "{jwk}");
            let uncompressed = [&[4][..], &x, &y].concat();
            assert!(!contradicts(&with_x5c(
                jwk.clone(),
                &holding(kind, uncompressed)
            )));
            let right = holding(kind, compressed(0x02 | odd, &x));
            assert!(!contradicts(&with_x5c(jwk.clone(), &right)), "{jwk}");
            // The other point with this x, another x, and junk lengths.
            let mut other_x = x.clone();
            other_x[7] ^= 1;
            let long_x = [&x[..], &x[..], &[0][..]].concat();
            for wrong in [
                compressed(0x03 ^ odd, &x),
                compressed(0x02 | odd, &other_x),
                compressed(0x02 | odd, &x[1..]),
                compressed(0x02 | odd, &long_x),
                compressed(0x04, &x),
            ] {
                let der = holding(kind, wrong.clone());
                assert!(contradicts(&with_x5c(jwk.clone(), &der)), "{wrong:?}");
            }
        }
    }

    #[test]
    fn thumbprints_must_be_the_certificates() {
        let (jwk, der) = certified(&rcgen::PKCS_ECDSA_P256_SHA256);
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        let sha256 = digest::digest(&digest::SHA256, &der);
        let (_, other) = certified(&rcgen::PKCS_ECDSA_P256_SHA256);
        let other_sha256 = digest::digest(&digest::SHA256, &other);
        for (member, right, wrong) in [
            ("x5t", b64url(sha1.as_ref()), b64url(sha256.as_ref())),
            (
                "x5t#S256",
                b64url(sha256.as_ref()),
                b64url(other_sha256.as_ref()),
            ),
            (
                "x5t#S256",
                b64url(sha256.as_ref()),
                STANDARD.encode(sha256.as_ref()),
            ),
        ] {
            let mut jwk = with_x5c(jwk.clone(), &der);
            jwk[member] = right.into();
            assert!(!contradicts(&jwk), "{member}");
            jwk[member] = wrong.clone().into();
            assert!(contradicts(&jwk), "{member} {wrong}");
        }
        let mut both = with_x5c(jwk, &der);
        both["x5t"] = b64url(sha1.as_ref()).into();
        both["x5t#S256"] = b64url(sha256.as_ref()).into();
        assert!(!contradicts(&both));
    }
}
