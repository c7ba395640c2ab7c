//! Every verification outcome, for each algorithm, with a fixed `now`.

use super::mint::{mint, SigningKey, TokenSpec};
use super::*;
use std::path::Path;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"a-development-secret-of-32-bytes!";

fn pem(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth/testdata").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec(sub: &str) -> TokenSpec {
    TokenSpec {
        sub: sub.into(),
        rooms: vec!["live-*".into(), "lobby".into()],
        comment: true,
        ttl_s: 60,
        ..TokenSpec::default()
    }
}

fn keys(public: &[&str]) -> KeySet {
    let mut set = KeySet::default();
    set.add_hmac_secret(SECRET).expect("long enough");
    for name in public {
        set.add_public_pem(&pem(name), Path::new(name)).expect("public key");
    }
    set
}

fn verifier(rules: Rules) -> Verifier {
    Verifier::new(keys(&["ec.pem", "rsa.pem", "ed.pem"]), rules)
}

fn signer(alg: &str) -> SigningKey {
    match alg {
        "HS256" => SigningKey::hmac(SECRET),
        "ES256" => SigningKey::from_pem(alg, &pem("ec-private.pem")).expect("key"),
        "RS256" => SigningKey::from_pem(alg, &pem("rsa-private.pem")).expect("key"),
        "EdDSA" => SigningKey::from_pem(alg, &pem("ed-private.pem")).expect("key"),
        other => panic!("{other}"),
    }
}

#[test]
fn every_algorithm_verifies_and_yields_the_claims() {
    let v = verifier(Rules::default());
    for alg in ["HS256", "ES256", "RS256", "EdDSA"] {
        let token = mint(&spec("alice"), &signer(alg), NOW).expect("mint");
        let claims = v.verify(&token, NOW + 10).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(&*claims.sub, "alice", "{alg}");
        assert_eq!(claims.exp, NOW + 60);
        assert!(claims.comment && !claims.admin);
        assert!(claims.may_join("live-7").is_ok() && claims.may_join("vip").is_err());
    }
}

#[test]
fn expired_tokens_are_refused_after_the_leeway() {
    let v = verifier(Rules::default());
    let token = mint(&spec("a"), &signer("ES256"), NOW).expect("mint");
    assert!(v.verify(&token, NOW + 65).is_ok(), "5 s leeway");
    assert_eq!(v.verify(&token, NOW + 66), Err(AuthError::Expired { exp: NOW + 60, now: NOW + 66, leeway_s: 5 }));
}

#[test]
fn a_wrong_key_is_a_bad_signature() {
    let v = verifier(Rules::default());
    let other = SigningKey::from_pem("ES256", &pem("ec2-private.pem")).expect("key");
    let token = mint(&spec("a"), &other, NOW).expect("mint");
    assert_eq!(v.verify(&token, NOW), Err(AuthError::BadSignature));
    let token = mint(&spec("a"), &SigningKey::hmac(b"another-secret-that-is-32-bytes-long"), NOW).expect("mint");
    assert_eq!(v.verify(&token, NOW), Err(AuthError::BadSignature));
}

#[test]
fn an_algorithm_without_a_key_is_refused() {
    let v = Verifier::new(keys(&[]), Rules::default());
    let token = mint(&spec("a"), &signer("RS256"), NOW).expect("mint");
    assert!(matches!(v.verify(&token, NOW), Err(AuthError::AlgorithmNotAllowed("RS256", _))));
    // The classic confusion: an HS256 token "signed" with a public key's bytes.
    let ec_public = pem("ec.pem");
    let v = Verifier::new(keys(&["ec.pem"]), Rules::default());
    let forged = mint(&spec("a"), &SigningKey::hmac(&ec_public), NOW).expect("mint");
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));
}

#[test]
fn rotation_tries_each_key_and_kid_selects_one() {
    let v = Verifier::new(keys(&["ec.pem", "ec2.pem"]), Rules::default());
    let second = SigningKey::from_pem("ES256", &pem("ec2-private.pem")).expect("key");
    let token = mint(&spec("a"), &second, NOW).expect("mint");
    assert!(v.verify(&token, NOW).is_ok(), "no kid: every ES256 key is tried");
    let mut with_kid = spec("a");
    with_kid.kid = Some("ec2".into());
    assert!(v.verify(&mint(&with_kid, &second, NOW).expect("mint"), NOW).is_ok());
    with_kid.kid = Some("ec".into());
    assert_eq!(
        v.verify(&mint(&with_kid, &second, NOW).expect("mint"), NOW),
        Err(AuthError::BadSignature),
        "a kid naming a key uses that key only"
    );
    with_kid.kid = Some("unknown".into());
    assert!(v.verify(&mint(&with_kid, &second, NOW).expect("mint"), NOW).is_ok(), "unknown kid: try each");
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let rules = Rules { issuer: Some("https://id.example".into()), audience: Some("roomcast".into()), leeway_s: 5 };
    let v = verifier(rules);
    let mut s = spec("a");
    let hs = signer("HS256");
    s.audience = Some("roomcast".into());
    assert_eq!(v.verify(&mint(&s, &hs, NOW).expect("mint"), NOW), Err(AuthError::WrongIssuer), "iss missing");
    s.issuer = Some("https://id.example".into());
    s.audience = None;
    assert_eq!(v.verify(&mint(&s, &hs, NOW).expect("mint"), NOW), Err(AuthError::WrongAudience), "aud missing");
    s.audience = Some("other".into());
    assert_eq!(v.verify(&mint(&s, &hs, NOW).expect("mint"), NOW), Err(AuthError::WrongAudience));
    s.audience = Some("roomcast".into());
    assert!(v.verify(&mint(&s, &hs, NOW).expect("mint"), NOW).is_ok());
    s.issuer = Some("https://evil.example".into());
    assert_eq!(v.verify(&mint(&s, &hs, NOW).expect("mint"), NOW), Err(AuthError::WrongIssuer));
    // Without a configured audience a token that names one is refused (RFC 7519 4.1.3).
    let v = verifier(Rules::default());
    let mut s = spec("a");
    s.audience = Some("someone-else".into());
    assert_eq!(v.verify(&mint(&s, &hs, NOW).expect("mint"), NOW), Err(AuthError::WrongAudience));
}

#[test]
fn garbage_is_malformed_and_errors_never_echo_the_token() {
    let v = verifier(Rules::default());
    let secretish = "eyJhbGciOiJIUzI1NiJ9.SECRET-PART.sig";
    for token in ["", "abc", "a.b", "a.b.c", secretish, "eyJhbGciOiJub25lIn0.e30.", &"x".repeat(5000)] {
        let err = v.verify(token, NOW).expect_err("refused");
        let text = err.to_string();
        assert!(!text.contains("SECRET") && !text.contains("xxxx"), "{text}");
        assert_eq!(err.error_code(), ErrorCode::Unauthorized);
    }
    assert_eq!(v.verify(&"x".repeat(5000), NOW), Err(AuthError::TooLong));
}

#[test]
fn the_cache_answers_repeat_tokens_until_they_expire() {
    let v = verifier(Rules::default());
    let mut cache = TokenCache::new(16);
    let token = mint(&spec("a"), &signer("EdDSA"), NOW).expect("mint");
    let first = v.verify_cached(&mut cache, &token, NOW).expect("valid");
    let second = v.verify_cached(&mut cache, &token, NOW + 1).expect("valid");
    assert!(Arc::ptr_eq(&first, &second), "the second answer is the cached claims");
    assert_eq!(cache.len(), 1);
    assert!(matches!(v.verify_cached(&mut cache, &token, NOW + 66), Err(AuthError::Expired { .. })));
    // A bad token is never cached as good.
    let bad = format!("{token}x");
    assert!(v.verify_cached(&mut cache, &bad, NOW).is_err());
    assert!(v.verify_cached(&mut cache, &bad, NOW).is_err());
}

#[test]
fn the_authenticator_covers_development_tokens_refresh_and_deadlines() {
    let mut open = Authenticator::new(None, 16);
    assert!(!open.required());
    assert_eq!(open.authenticate(None, NOW * 1000), Ok(Authenticated::Development));
    let mut auth = Authenticator::new(Some(Arc::new(verifier(Rules::default()))), 16);
    assert_eq!(auth.authenticate(None, NOW * 1000), Err(AuthError::Missing));
    let token = mint(&spec("alice"), &signer("HS256"), NOW).expect("mint");
    let Ok(Authenticated::Verified(claims)) = auth.authenticate(Some(&token), NOW * 1000) else { panic!("verified") };
    assert_eq!(auth.deadline_ms(&claims), Some((NOW + 65) * 1000));
    // Refresh: same sub, later exp, new rooms apply.
    let mut later = spec("alice");
    later.rooms = vec!["lobby".into()];
    let fresh = auth
        .refresh(&claims, &mint(&later, &signer("ES256"), NOW + 30).expect("mint"), (NOW + 30) * 1000)
        .expect("refreshed");
    assert_eq!(fresh.exp, NOW + 90);
    assert!(fresh.may_join("live-1").is_err() && fresh.may_join("lobby").is_ok());
    let bob = mint(&spec("bob"), &signer("HS256"), NOW).expect("mint");
    assert_eq!(auth.refresh(&claims, &bob, NOW * 1000), Err(AuthError::SubjectChanged));
    assert_eq!(auth.cached(), 3);
}

#[test]
fn key_loading_reads_secrets_from_files_and_refuses_weak_or_wrong_keys() {
    let dir = std::env::temp_dir().join(format!("roomcast-auth-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, [SECRET, b"\n"].concat()).expect("write");
    let set = KeySet::load(Some(&format!("@{}", secret_file.display())), &[]).expect("loads");
    assert_eq!(set.algorithms(), "HS256");
    assert!(matches!(KeySet::load(Some("short"), &[]), Err(KeyError::WeakSecret(5))));
    assert!(matches!(KeySet::load(Some("@/nonexistent/secret"), &[]), Err(KeyError::Read { .. })));
    let private = dir.join("private.pem");
    std::fs::write(&private, pem("ec-private.pem")).expect("write");
    let err = KeySet::load(None, &[private]).expect_err("a private key is not a public key");
    assert!(err.to_string().contains("private.pem"), "{err}");
    let public = dir.join("2026-12.pem");
    std::fs::write(&public, pem("ed.pem")).expect("write");
    let set = KeySet::load(None, &[public]).expect("loads");
    assert_eq!(set.describe(), "1 key(s) (EdDSA); kids: [2026-12]");
    assert!(!format!("{set:?}").contains("MC"), "Debug shows no key bytes");
    let _ = std::fs::remove_dir_all(dir);
}
