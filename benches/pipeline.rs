//! Criterion micro-benchmarks of scopegate's per-request work, without sockets:
//!
//! - `jwt_verify/{cold,warm,signature}/{ES256,RS256,PS256,EdDSA}`: a full
//!   verification from scratch ([`Authenticator::verify`]: parse, signature,
//!   claims, identity values), a cache hit ([`Authenticator::authenticate`] on
//!   a header map whose token is already cached), and the signature check
//!   alone (`KeySet::candidates` + `VerificationKey::verify`);
//! - `route_lookup/{10,1000,10000}`: [`RouteTable::route`] (what a request
//!   does: the routing form of the path, then the lookup) of a route in the
//!   middle of tables of generated, parameterised patterns;
//! - `webdav_below/{typical,deep}`: [`RouteTable::serves_alone_below`], the
//!   check a `PROPFIND` or `COPY` of a collection makes before its token is
//!   read, on a 4-segment path and on a 7 000-segment one (14 KB, within
//!   the default head limit) under a public catch-all;
//! - `canonicalize/{typical,dirty}`: path canonicalisation;
//! - `pipeline/warm`: canonicalise → lookup → authenticate (cache hit) →
//!   authorize, i.e. one request's gateway work minus forwarding;
//!   `pipeline/warm_with_headers` adds the upstream header rewrite
//!   ([`prepare_upstream_request`] on a copy of the request's headers);
//!   `pipeline/cold`: the same four steps with a token never seen before
//!   (the cache-miss path: digest, checks, verification, cache insert).
//!
//! Keys are generated at start-up (aws-lc-rs) and the issuer's JWKS is a temp
//! file (`jwks_file`), so no network is used. Run with
//! `cargo bench --bench pipeline -- --quick` for a fast pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaPublicKeyComponents, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{BatchSize, BenchmarkId, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::admin::metrics::Metrics;
use scopegate::auth::jwks::KeySet;
use scopegate::auth::{authorize, Authenticator};
use scopegate::config::{Access, Config};
use scopegate::proxy::headers::{prepare_upstream_request, ClientInfo};
use scopegate::routes::{canonicalize, Lookup, RouteSpec, RouteTable};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.bench.local";
const AUDIENCE: &str = "bench-api";

/// One signing key of the benchmark issuer.
struct BenchKey {
    alg: Algorithm,
    name: &'static str,
    kid: &'static str,
    encoding: EncodingKey,
    jwk: Value,
}

impl BenchKey {
    fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_owned());
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads one DER TLV: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        (
            bytes.iter().fold(0, |acc, &b| acc << 8 | usize::from(b)),
            rest,
        )
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`.
///
/// jsonwebtoken's aws-lc RSA signer calls `RsaKeyPair::from_der`, which parses
/// PKCS#1 only: `EncodingKey::from_rsa_der` with PKCS#8 DER fails at signing
/// time with `InvalidRsaKey`, so the wrapper has to come off.
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = der_tlv(pkcs8).expect("PrivateKeyInfo");
    let (_, _version, rest) = der_tlv(info).expect("version");
    let (_, _algorithm, rest) = der_tlv(rest).expect("AlgorithmIdentifier");
    let (tag, key, _) = der_tlv(rest).expect("privateKey");
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    key.to_vec()
}

fn rsa_key(alg: Algorithm, name: &'static str, kid: &'static str) -> BenchKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    BenchKey {
        alg,
        name,
        kid,
        encoding: EncodingKey::from_rsa_der(&pkcs1_from_pkcs8(pkcs8.as_ref())),
        jwk: json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)}),
    }
}

fn generate_keys() -> Vec<BenchKey> {
    let rng = SystemRandom::new();
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref()).unwrap();
    let (x, y) = ec.public_key().as_ref()[1..].split_at(32);
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let mut keys = vec![
        BenchKey {
            alg: Algorithm::ES256,
            name: "ES256",
            kid: "es",
            encoding: EncodingKey::from_ec_der(ec_pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)}),
        },
        rsa_key(Algorithm::RS256, "RS256", "rs"),
        rsa_key(Algorithm::PS256, "PS256", "ps"),
        BenchKey {
            alg: Algorithm::EdDSA,
            name: "EdDSA",
            kid: "ed",
            encoding: EncodingKey::from_ed_der(ed_pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed.public_key().as_ref())}),
        },
    ];
    for key in &mut keys {
        key.jwk["kid"] = key.kid.into();
        key.jwk["alg"] = key.name.into();
        key.jwk["use"] = "sig".into();
    }
    keys
}

fn claims() -> Value {
    let now = scopegate::auth::jwt::now_unix();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "bench-client",
        "scope": "orders:read profile", "iat": now, "exp": now + 3600,
    })
}

/// A config with one issuer (all four keys, from a JWKS file) and a few routes.
fn load_config(jwks_path: &Path) -> Config {
    let yaml = format!(
        r#"server:
  listen: 127.0.0.1:0
  workers: 1
admin:
  listen: 127.0.0.1:0
issuers:
  - name: bench
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: {jwks}
    algorithms: [ES256, RS256, PS256, EdDSA]
    require_typ: at+jwt
upstreams:
  app:
    url: http://127.0.0.1:9
routes:
  - path: /health
    upstream: app
    auth: none
  - path: /api/v1/orders/{{id}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /api/v1/orders/{{id}}/items/{{item}}
    methods: [GET]
    upstream: app
    scopes: [orders:read]
  - path: /api/v1/orders/{{*rest}}
    methods: [POST, PUT, DELETE]
    upstream: app
    scopes: [orders:write]
"#,
        jwks = jwks_path.display()
    );
    scopegate::config::load_str("bench.yaml", Path::new("."), &yaml).unwrap()
}

/// Everything the auth and pipeline benchmarks share.
struct Fixture {
    _dir: tempfile::TempDir,
    keys: Vec<BenchKey>,
    key_set: KeySet,
    auth: Arc<Authenticator>,
    config: Config,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    scopegate::cli::install_crypto_provider();
    let keys = generate_keys();
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string();
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, &jwks).unwrap();
    let key_set = KeySet::from_json(jwks.as_bytes()).unwrap();
    assert_eq!(key_set.len(), keys.len(), "every JWK is usable");

    let mut config = load_config(&jwks_path);
    let metrics = Arc::new(Metrics::new().unwrap());
    let auth = Arc::new(
        Authenticator::new(
            std::mem::take(&mut config.issuers),
            std::mem::take(&mut config.identity_claims),
            config.cache_max_entries,
            metrics,
        )
        .unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        keys,
        key_set,
        auth,
        config,
        runtime,
    }
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn bench_jwt(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("jwt_verify");
    let claims = claims();
    for key in &f.keys {
        let token = key.mint(&claims);
        // Sanity: every algorithm verifies through the public path.
        f.runtime.block_on(f.auth.verify(&token)).unwrap();

        group.bench_function(BenchmarkId::new("cold", key.name), |b| {
            b.to_async(&f.runtime)
                .iter(|| async { black_box(f.auth.verify(black_box(&token)).await.unwrap()) });
        });

        let jwt = scopegate::auth::jwt::parse_compact(&token).unwrap();
        group.bench_function(BenchmarkId::new("signature", key.name), |b| {
            b.iter(|| {
                let ok = f
                    .key_set
                    .candidates(jwt.kid.as_deref(), key.alg)
                    .any(|k| k.verify(jwt.signing_input, black_box(jwt.signature), key.alg));
                assert!(ok);
            });
        });

        let headers = bearer_headers(&token);
        f.runtime
            .block_on(f.auth.authenticate(&headers, None, None))
            .unwrap();
        group.bench_function(BenchmarkId::new("warm", key.name), |b| {
            b.to_async(&f.runtime).iter(|| async {
                black_box(
                    f.auth
                        .authenticate(black_box(&headers), None, None)
                        .await
                        .unwrap(),
                )
            });
        });
    }
    group.finish();
}

/// `n` routes: a mix of one-, two-parameter and catch-all patterns under a
/// shared `/api` prefix, so the tree has depth and fan-out.
fn generated_routes(n: usize) -> Vec<RouteSpec<usize>> {
    (0..n)
        .map(|i| {
            let path = match i % 3 {
                0 => format!("/api/v{}/svc{i}/{{id}}", i % 4),
                1 => format!("/api/v{}/svc{i}/{{id}}/items/{{item}}", i % 4),
                _ => format!("/api/v{}/svc{i}/files/{{*rest}}", i % 4),
            };
            RouteSpec {
                path,
                methods: Some(vec![Method::GET, Method::HEAD]),
                value: i,
            }
        })
        .collect()
}

fn bench_routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10, 1_000, 10_000] {
        let table = RouteTable::build(generated_routes(n)).unwrap();
        // The two-parameter route nearest the middle.
        let mid = (n / 2..n).find(|i| i % 3 == 1).unwrap();
        let path = format!("/api/v{}/svc{mid}/12345/items/abc-678", mid % 4);
        assert_eq!(table.route(&Method::GET, &path), Ok(Lookup::Matched(&mid)));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(table.route(&Method::GET, black_box(&path))));
        });
    }
    group.finish();
}

fn bench_webdav_below(c: &mut Criterion) {
    let mut group = c.benchmark_group("webdav_below");
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    let mut routes = generated_routes(100);
    routes.push(RouteSpec {
        path: "/{*page}".into(),
        methods: None,
        value: usize::MAX,
    });
    let table = RouteTable::build(routes).unwrap();
    for (name, path) in [
        ("typical", "/dav/team/projects/2026".to_owned()),
        ("deep", "/a".repeat(7000)),
    ] {
        let Ok(Lookup::Matched(route)) = table.route(&propfind, &path) else {
            panic!("the catch-all serves {name}");
        };
        assert!(table.serves_alone_below(&propfind, &path, route));
        group.bench_function(name, |b| {
            b.iter(|| black_box(table.serves_alone_below(&propfind, black_box(&path), route)));
        });
    }
    group.finish();
}

fn bench_canonicalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonicalize");
    let typical = "/api/v1/orders/12345/items/abc-678";
    let dirty = "/api//v1/./orders/%7ejohn/../12345/%61bc/items%2c/./x/..";
    assert!(matches!(
        canonicalize(typical),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
    assert!(matches!(
        canonicalize(dirty),
        Ok(std::borrow::Cow::Owned(_))
    ));
    group.bench_function("typical", |b| {
        b.iter(|| black_box(canonicalize(black_box(typical)).unwrap()));
    });
    group.bench_function("dirty", |b| {
        b.iter(|| black_box(canonicalize(black_box(dirty)).unwrap()));
    });
    group.finish();
}

fn bench_pipeline(c: &mut Criterion, f: &Fixture) {
    let es256 = f.keys.iter().find(|k| k.alg == Algorithm::ES256).unwrap();
    let headers = bearer_headers(&es256.mint(&claims()));
    let raw_path = "/api/v1/orders/12345/items/abc-678";
    let routes = &f.config.routes;
    let one_request = || async {
        let path = canonicalize(black_box(raw_path)).unwrap();
        let Lookup::Matched(route) = routes.route(&Method::GET, &path).unwrap() else {
            panic!("no route");
        };
        let Access::Bearer {
            issuers,
            introspector,
            ..
        } = &route.access
        else {
            panic!("public route");
        };
        let token = f
            .auth
            .authenticate(black_box(&headers), issuers.as_deref(), *introspector)
            .await
            .unwrap();
        black_box(authorize(route, Some(token)).unwrap())
    };
    f.runtime.block_on(one_request()); // fills the cache
    c.bench_function("pipeline/warm", |b| {
        b.to_async(&f.runtime).iter(one_request);
    });

    // The same, plus the header rewrite forwarding does to the request (the
    // clone stands for the header map hyper parsed, which the proxy owns).
    let client = ClientInfo::new(IpAddr::from([127, 0, 0, 1]), false);
    let with_headers = || async {
        let path = canonicalize(black_box(raw_path)).unwrap();
        let Lookup::Matched(route) = routes.route(&Method::GET, &path).unwrap() else {
            panic!("no route");
        };
        let Access::Bearer {
            issuers,
            introspector,
            ..
        } = &route.access
        else {
            panic!("public route");
        };
        let token = f
            .auth
            .authenticate(black_box(&headers), issuers.as_deref(), *introspector)
            .await
            .unwrap();
        let permit = authorize(route, Some(token)).unwrap();
        let mut upstream = headers.clone();
        prepare_upstream_request(
            &mut upstream,
            &route.forward,
            permit.identity(),
            &client,
            None,
            false,
            None,
        );
        black_box(upstream)
    };
    c.bench_function("pipeline/warm_with_headers", |b| {
        b.to_async(&f.runtime).iter(with_headers);
    });

    // Every request a token the cache has not seen (ES256 signatures are
    // randomised, so each mint differs): the miss path's digest, character
    // check, verification and cache insert. Minting is setup, not timed.
    let cold_request = |headers: HeaderMap| async move {
        let path = canonicalize(black_box(raw_path)).unwrap();
        let Lookup::Matched(route) = routes.route(&Method::GET, &path).unwrap() else {
            panic!("no route");
        };
        let Access::Bearer {
            issuers,
            introspector,
            ..
        } = &route.access
        else {
            panic!("public route");
        };
        let token = f
            .auth
            .authenticate(&headers, issuers.as_deref(), *introspector)
            .await
            .unwrap();
        black_box(authorize(route, Some(token)).unwrap());
    };
    c.bench_function("pipeline/cold", |b| {
        b.to_async(&f.runtime).iter_batched(
            || bearer_headers(&es256.mint(&claims())),
            cold_request,
            BatchSize::SmallInput,
        );
    });
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    bench_jwt(c, &f);
    bench_routes(c);
    bench_webdav_below(c);
    bench_canonicalize(c);
    bench_pipeline(c, &f);
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, minus the public
    // group function they generate (which `missing_docs` would flag).
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
