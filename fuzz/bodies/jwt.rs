//! Arbitrary tokens through the verifier. Half the inputs are used as raw token text; the
//! other half become `header.claims.signature` with the header and claims taken from the input
//! and a valid HS256 signature, so the fuzzer reaches the claim checks behind the signature.
//! Invariants: never panics; accepted claims are valid (`sub` 1..=128 bytes without control
//! characters, not expired at `now` with the leeway); an error's text never contains the token.
use roomcast::auth::{KeySet, Rules, Verifier};
use std::path::Path;
use std::sync::OnceLock;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"a-development-secret-of-32-bytes!";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut keys = KeySet::default();
        keys.add_hmac_secret(SECRET).expect("secret");
        let pems: [(&str, &[u8]); 3] = [
            ("ec.pem", include_bytes!("../../src/auth/testdata/ec.pem")),
            ("rsa.pem", include_bytes!("../../src/auth/testdata/rsa.pem")),
            ("ed.pem", include_bytes!("../../src/auth/testdata/ed.pem")),
        ];
        for (name, pem) in pems {
            keys.add_public_pem(pem, Path::new(name)).expect("key");
        }
        Verifier::new(keys, Rules { issuer: None, audience: Some("roomcast".into()), leeway_s: 5 })
    })
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let split = usize::from(mode / 2).min(rest.len());
        let (header, claims) = rest.split_at(split);
        let signing_input = format!("{}.{}", b64url(header), b64url(claims));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(tag.as_ref()))
    };
    match verifier().verify(&token, NOW) {
        Ok(claims) => {
            assert!(!claims.sub.is_empty() && claims.sub.len() <= 128);
            assert!(!claims.sub.chars().any(char::is_control));
            assert!(claims.exp + 5 >= NOW, "expired claims accepted");
        }
        Err(e) => {
            let text = e.to_string();
            // Longer than any fixed message, so a hit is an echo, not a coincidence (a short
            // token can be a substring of "malformed token: ...").
            if token.len() > 200 {
                assert!(!text.contains(&token), "the error echoes the token: {text}");
            }
        }
    }
}
