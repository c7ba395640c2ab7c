//! Criterion benches of JWT verification at the upgrade: one token per algorithm (HS256,
//! ES256, RS256 with a 2048-bit key, EdDSA), verified from scratch ("uncached": signature,
//! `iss`/`aud`, claims) and answered from the worker's token cache ("cached": a SHA-256 of the
//! token and a map lookup), with a realistic claim set. `ring_reference` verifies a
//! signature of the same size with `ring` (already in the tree through rustls), to show what a
//! ring-backed jsonwebtoken `CryptoProvider` would save over the RustCrypto backend.
//!
//! Run: `cargo bench --bench auth`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use roomcast::auth::mint::{mint, SigningKey, TokenSpec};
use roomcast::auth::{KeySet, Rules, TokenCache, Verifier};
use std::hint::black_box;
use std::path::Path;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"a-development-secret-of-32-bytes!";

fn pem(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth/testdata").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn setup() -> (Verifier, Vec<(&'static str, String)>) {
    let mut keys = KeySet::default();
    keys.add_hmac_secret(SECRET).expect("secret");
    for name in ["ec.pem", "rsa.pem", "ed.pem"] {
        keys.add_public_pem(&pem(name), Path::new(name)).expect("key");
    }
    let rules = Rules { issuer: Some("https://id.example".into()), audience: Some("roomcast".into()), leeway_s: 5 };
    let spec = TokenSpec {
        sub: "viewer-123456".into(),
        name: Some("Viewer One".into()),
        rooms: vec!["live-*".into(), "lobby".into()],
        comment: true,
        issuer: Some("https://id.example".into()),
        audience: Some("roomcast".into()),
        ttl_s: 3600,
        ..TokenSpec::default()
    };
    let tokens = [
        ("HS256", SigningKey::hmac(SECRET)),
        ("ES256", SigningKey::from_pem("ES256", &pem("ec-private.pem")).expect("key")),
        ("RS256", SigningKey::from_pem("RS256", &pem("rsa-private.pem")).expect("key")),
        ("EdDSA", SigningKey::from_pem("EdDSA", &pem("ed-private.pem")).expect("key")),
    ]
    .into_iter()
    .map(|(alg, key)| (alg, mint(&spec, &key, NOW).expect("mint")))
    .collect();
    (Verifier::new(keys, rules), tokens)
}

fn verify(c: &mut Criterion) {
    let (verifier, tokens) = setup();
    let mut g = c.benchmark_group("jwt_verify_uncached");
    for (alg, token) in &tokens {
        verifier.verify(token, NOW).expect("valid");
        g.bench_with_input(BenchmarkId::from_parameter(alg), token, |b, token| {
            b.iter(|| verifier.verify(black_box(token), NOW))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("jwt_verify_cached");
    for (alg, token) in &tokens {
        let mut cache = TokenCache::new(16_384);
        verifier.verify_cached(&mut cache, token, NOW).expect("valid");
        g.bench_with_input(BenchmarkId::from_parameter(alg), token, |b, token| {
            b.iter(|| verifier.verify_cached(&mut cache, black_box(token), NOW))
        });
    }
    g.finish();
}

fn ring_reference(c: &mut Criterion) {
    use ring::signature::{self, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let message = vec![b'm'; 300];
    let mut g = c.benchmark_group("ring_reference_verify");
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let ec = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let sig = ec.sign(&rng, &message).expect("sign");
    let public =
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ec.public_key().as_ref().to_vec());
    g.bench_function("ES256", |b| b.iter(|| public.verify(black_box(&message), sig.as_ref())));
    let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let ed = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let sig = ed.sign(&message);
    let public = signature::UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());
    g.bench_function("EdDSA", |b| b.iter(|| public.verify(black_box(&message), sig.as_ref())));
    g.finish();
}

criterion_group!(benches, verify, ring_reference);
criterion_main!(benches);
