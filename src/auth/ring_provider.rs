//! jsonwebtoken's signature primitives backed by `ring`, installed as its process-wide
//! `CryptoProvider`.
//!
//! Why it exists: jsonwebtoken 10 leaves the cryptography to a provider; its bundled ones are
//! RustCrypto (`rust_crypto`) and aws-lc-rs (`aws_lc_rs`). Measured on this machine
//! (`cargo bench --bench auth`, 2026-12-01, other builds running), RustCrypto verified ES256
//! in ~350-500 us and RS256 in ~230-330 us; ring verifies them in ~42 us and ~20 us (EdDSA
//! ~34 us, HS256 ~2.6 us). At a reconnect storm of 19,000 fresh ES256 tokens that is
//! 0.8 s of worker CPU instead of 7-9 s. aws-lc-rs is as
//! fast but builds a large C library; `ring` is already in the tree through rustls. This
//! module is the glue upstream's own `aws_lc` provider is (aws-lc-rs keeps ring's API), for
//! the four algorithms roomcast accepts (HS256, ES256, RS256, EdDSA); any other is refused
//! with `InvalidAlgorithm`. It must never implement a primitive itself, and never be asked for
//! JWK support (not used: those entry points are upstream's "unimplemented" stubs).

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, UnparsedPublicKey};

/// Install the provider (idempotent; a provider installed before by someone else stays).
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

fn sig_error(e: impl std::error::Error + Send + Sync + 'static) -> signature::Error {
    signature::Error::from_source(e)
}

/// ring's errors carry no detail; this says which step failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(&'static str);

fn public_bytes(key: &DecodingKey) -> Result<&[u8], Error> {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => Ok(bytes),
        DecodingKeyKind::RsaModulusExponent { .. } => Err(ErrorKind::InvalidKeyFormat.into()),
    }
}

/// A verifier over ring's `UnparsedPublicKey` (ECDSA, RSA, Ed25519 take the same shape).
struct PublicKeyVerifier {
    alg: Algorithm,
    key: UnparsedPublicKey<Vec<u8>>,
}

impl Verifier<Vec<u8>> for PublicKeyVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        self.key.verify(msg, signature).map_err(|_| sig_error(Failed("signature does not verify")))
    }
}

impl JwtVerifier for PublicKeyVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// HMAC verification (constant time, in ring).
struct HmacVerifier(ring::hmac::Key);

impl Verifier<Vec<u8>> for HmacVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        ring::hmac::verify(&self.0, msg, signature).map_err(|_| sig_error(Failed("HMAC does not verify")))
    }
}

impl JwtVerifier for HmacVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let (family, params): (AlgorithmFamily, &'static dyn sig::VerificationAlgorithm) = match alg {
        Algorithm::HS256 => {
            if key.family() != AlgorithmFamily::Hmac {
                return Err(ErrorKind::InvalidKeyFormat.into());
            }
            let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_bytes(key)?);
            return Ok(Box::new(HmacVerifier(hmac)));
        }
        Algorithm::ES256 => (AlgorithmFamily::Ec, &sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::RS256 => (AlgorithmFamily::Rsa, &sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::EdDSA => (AlgorithmFamily::Ed, &sig::ED25519),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    // jsonwebtoken's PEM parsing leaves exactly what ring expects: the EC point, the PKCS#1
    // RSAPublicKey, the 32-byte Ed25519 key.
    Ok(Box::new(PublicKeyVerifier { alg: *alg, key: UnparsedPublicKey::new(params, public_bytes(key)?.to_vec()) }))
}

enum SigningKind {
    Hmac(ring::hmac::Key),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

struct RingSigner {
    alg: Algorithm,
    kind: SigningKind,
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.kind {
            SigningKind::Hmac(key) => Ok(ring::hmac::sign(key, msg).as_ref().to_vec()),
            SigningKind::Ecdsa(pair) => {
                Ok(pair.sign(&rng, msg).map_err(|_| sig_error(Failed("ECDSA signing failed")))?.as_ref().to_vec())
            }
            SigningKind::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(&sig::RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .map_err(|_| sig_error(Failed("RSA signing failed")))?;
                Ok(out)
            }
            SigningKind::Ed(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let der = key.inner();
    let rng = ring::rand::SystemRandom::new();
    let (family, kind) = match alg {
        Algorithm::HS256 => {
            (AlgorithmFamily::Hmac, SigningKind::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, der)))
        }
        Algorithm::ES256 => (
            AlgorithmFamily::Ec,
            SigningKind::Ecdsa(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
            ),
        ),
        Algorithm::RS256 => (
            AlgorithmFamily::Rsa,
            SigningKind::Rsa(sig::RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?),
        ),
        Algorithm::EdDSA => (
            AlgorithmFamily::Ed,
            SigningKind::Ed(
                // OpenSSL writes PKCS#8 v1 Ed25519 keys (without the public key), which ring
                // accepts only through this constructor.
                sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| ErrorKind::InvalidEddsaKey)?,
            ),
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingSigner { alg: *alg, kind }))
}
