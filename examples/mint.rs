//! Writes ES256 key material and pre-minted access tokens for the load
//! benchmark (`benches/load/run.sh`).
//!
//! ```text
//! cargo run --release --example mint -- --out DIR [--count N] [--ttl-secs S]
//! ```
//!
//! Files written to `DIR`:
//!
//! - `private.pem`: the P-256 signing key, PKCS#8 (`BEGIN PRIVATE KEY`);
//! - `public.pem`: its public key, SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`),
//!   which HAProxy's `jwt_verify` loads;
//! - `jwks.json`: a JWKS holding the public key, for scopegate's `jwks_file`;
//! - `tokens.txt`: `N` distinct compact JWS access tokens, one per line, with
//!   the same `iss`, `aud`, `scope` and `exp` and a unique `jti`/`sub`;
//! - `negatives.txt`: validly signed tokens that each break one claim check,
//!   one per line as `NAME STATUS TOKEN` (the status a gateway checking `iss`,
//!   `aud`, `exp` and the scope must answer), so the benchmark can show that
//!   every contender really makes the checks it is credited with.
//!
//! Tokens are signed directly with aws-lc-rs (one key parse, two threads), so
//! a few hundred thousand take seconds. The first one is checked with
//! scopegate's own verifier before anything is written.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use clap::Parser;

/// Command line of the token minter.
#[derive(Debug, Parser)]
#[command(about = "Writes ES256 keys, a JWKS and pre-minted tokens for benchmarks")]
struct Args {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Number of tokens to write.
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// Token lifetime from now, in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    ttl_secs: u64,
    /// `iss` of every token.
    #[arg(long, default_value = "https://issuer.bench.local")]
    issuer: String,
    /// `aud` of every token.
    #[arg(long, default_value = "bench-api")]
    audience: String,
    /// `scope` of every token.
    #[arg(long, default_value = "orders:read profile")]
    scope: String,
    /// `kid` of the key.
    #[arg(long, default_value = "bench-es256")]
    kid: String,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mint: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(&args.out).map_err(|e| io("create output directory", e))?;

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "P-256 key generation failed".to_owned())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| "generated key does not parse".to_owned())?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| "cannot encode the public key".to_owned())?;
    let (x, y) = match pair.public_key().as_ref() {
        [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => return Err("unexpected EC public key encoding".to_owned()),
    };
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": args.kid,
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    }]})
    .to_string();

    let now = scopegate::auth::jwt::now_unix();
    let exp = now + args.ttl_secs;
    let header = URL_SAFE_NO_PAD
        .encode(serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": args.kid}).to_string());
    let claims_of = |i: usize| {
        serde_json::json!({
            "iss": args.issuer, "aud": args.audience, "sub": format!("user-{i}"),
            "client_id": "bench-client", "scope": args.scope,
            "iat": now, "exp": exp, "jti": format!("bench-{i}"),
        })
    };
    let sign = |claims: &serde_json::Value| -> Result<String, String> {
        let mut token = format!(
            "{header}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes())
        );
        let signature = pair
            .sign(&rng, token.as_bytes())
            .map_err(|_| "signing failed".to_owned())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    };
    let mint = |i: usize| sign(&claims_of(i));

    check_first_token(&mint(0)?, &jwks, &args.issuer, &args.audience)?;

    // Two halves signed on two threads, written in order.
    let half = args.count.div_ceil(2);
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| (0..half).map(mint).collect::<Result<Vec<_>, _>>());
        let b = s.spawn(|| (half..args.count).map(mint).collect::<Result<Vec<_>, _>>());
        (a.join(), b.join())
    });
    let first = first.map_err(|_| "signing thread panicked".to_owned())??;
    let second = second.map_err(|_| "signing thread panicked".to_owned())??;

    let path = args.out.join("tokens.txt");
    let file = std::fs::File::create(&path).map_err(|e| io("create tokens.txt", e))?;
    let mut out = BufWriter::new(file);
    for token in first.iter().chain(&second) {
        writeln!(out, "{token}").map_err(|e| io("write tokens.txt", e))?;
    }
    out.flush().map_err(|e| io("write tokens.txt", e))?;

    write(
        &args.out.join("private.pem"),
        &pem("PRIVATE KEY", pkcs8.as_ref()),
    )?;
    write(
        &args.out.join("public.pem"),
        &pem("PUBLIC KEY", spki.as_ref()),
    )?;
    write(&args.out.join("jwks.json"), &jwks)?;
    write(
        &args.out.join("negatives.txt"),
        &negatives(&claims_of(args.count), &args.scope, now, sign)?,
    )?;
    println!(
        "wrote {} tokens (exp {exp}) and ES256 key material to {}",
        args.count,
        args.out.display()
    );
    Ok(())
}

/// One validly signed token per claim check, each breaking that check alone:
/// `NAME STATUS TOKEN` lines. The scope case keeps every scope but the first
/// (the one the benchmark's route requires).
fn negatives(
    good: &serde_json::Value,
    scope: &str,
    now: u64,
    sign: impl Fn(&serde_json::Value) -> Result<String, String>,
) -> Result<String, String> {
    let other_scopes = scope.split(' ').skip(1).collect::<Vec<_>>().join(" ");
    let cases: [(&str, u16, &str, Option<serde_json::Value>); 5] = [
        (
            "wrong-issuer",
            401,
            "iss",
            Some("https://other.example".into()),
        ),
        ("wrong-audience", 401, "aud", Some("other-api".into())),
        ("expired", 401, "exp", Some(now.saturating_sub(3600).into())),
        ("no-exp", 401, "exp", None),
        ("missing-scope", 403, "scope", Some(other_scopes.into())),
    ];
    let mut out = String::new();
    for (name, status, claim, value) in cases {
        let mut claims = good.clone();
        let map = claims
            .as_object_mut()
            .ok_or_else(|| "claims are not an object".to_owned())?;
        match value {
            Some(value) => map.insert(claim.to_owned(), value),
            None => map.remove(claim),
        };
        out.push_str(&format!("{name} {status} {}\n", sign(&claims)?));
    }
    Ok(out)
}

/// Verifies one token with scopegate's own code path, so a bad key or claim
/// shows up here rather than as thousands of 401s under load.
fn check_first_token(token: &str, jwks: &str, issuer: &str, audience: &str) -> Result<(), String> {
    let keys = scopegate::auth::jwks::KeySet::from_json(jwks.as_bytes())
        .map_err(|e| format!("own JWKS rejected: {e}"))?;
    let jwt = scopegate::auth::jwt::parse_compact(token)
        .map_err(|e| format!("own token rejected: {e:?}"))?;
    let alg = jsonwebtoken::Algorithm::ES256;
    let verified = keys
        .candidates(jwt.kid.as_deref(), alg)
        .any(|k| k.verify(jwt.signing_input, jwt.signature, alg));
    if !verified {
        return Err("own token does not verify against own JWKS".to_owned());
    }
    scopegate::auth::jwt::check_audience(&jwt.claims, &[audience.to_owned()])
        .map_err(|e| format!("own token audience: {e:?}"))?;
    if jwt.claims.get("iss").and_then(|v| v.as_str()) != Some(issuer) {
        return Err("own token has the wrong issuer".to_owned());
    }
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}
